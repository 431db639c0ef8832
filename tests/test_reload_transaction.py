"""Reload is a transaction (docs/reliability.md, second fault matrix): whatever the
new config file holds, the running config goes on, the failure is one log line and
``certscope_config_last_reload_successful 0``, and ``check-config`` refuses the same
files.

Before: a Latin-1 byte, 100,000-deep nesting or a 400-digit integer made SIGHUP
end the process with a traceback; ``interval: .inf`` (``.nan``, ``999...9y``)
stopped all probing for good (``/-/ready`` 503, every later reload 500 with
``SchedulerNotRunningError``) while the metric still said 1; a billion-laughs alias
in a typed field was repr'd into a 2 GB message (13 GB of RSS here); a FIFO as the
config file blocked the main loop so that SIGTERM was ignored, and ``/dev/zero``
was read until memory ran out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from exporter.config import MAX_CONFIG_BYTES, ConfigError, load_config, parse_config
from exporter.scheduler import Scheduler
from exporter.store import ResultStore
from tests.helpers import DaemonProcess, value, wait_for
from tests.pki import Pki
from tests.test_untrusted_input import HealthWatch

GOOD = """global: {{interval: 1s, timeout: 5s}}
probes:
  - {{name: pki, kind: files, paths: ["{path}"]}}
"""

# 9 levels of 9: 387 million strings once expanded, in 400 bytes.
LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8)
)


def bad_configs(good: str, tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (file content, a part of the expected message)."""
    bad_cert = tmp_path / "not-a-certificate.pem"
    bad_cert.write_text("garbage\n")
    return {
        "latin1": (good.encode() + b"# caf\xe9\n", "not UTF-8: byte 0xe9 at offset"),
        "deep": (("x: " + "[" * 100_000 + "]" * 100_000 + "\n" + good).encode(), "nested deeper than 64 levels"),
        "int400": (good.replace("interval: 1s", "interval: " + "9" * 400).encode(), "an integer of 1329 bits"),
        "int5000": (
            good.replace("interval: 1s", "interval: " + "9" * 5000).encode(),
            "Exceeds the limit (4300 digits)",
        ),
        "inf": (good.replace("interval: 1s", "interval: .inf").encode(), "must be a finite duration"),
        "nan": (good.replace("interval: 1s", "interval: .nan").encode(), "must be a finite duration"),
        "years": (good.replace("interval: 1s", "interval: " + "9" * 400 + "y").encode(), "at most 100y"),
        "1ms": (good.replace("interval: 1s", "interval: 1ms").encode(), "must be at least 100ms, got 1ms"),
        "glob": (
            good.replace('"]}', '"], exclude: ["/tmp/[z-a]/x"]}').encode(),
            "exclude[0]: not a valid glob (bad character range z-a)",
        ),
        "laughs": (
            (LAUGHS + good.replace("timeout: 5s", "timeout: 5s, concurrency: *i")).encode(),
            "aliases expand the document to more than 1,000,000 nodes",
        ),
        "self-alias": (("x: &x [*x]\n" + good).encode(), "an alias refers to a node that contains it"),
        "unbuildable": (
            (
                good + f'  - {{name: mtls, kind: tls, targets: ["127.0.0.1:1"], '
                f"client_cert: {{cert_file: {bad_cert}, key_file: {bad_cert}}}}}\n"
            ).encode(),
            "probes[1] (mtls): cannot be built: ValueError: client_cert.cert_file",
        ),
    }


def good_config(tmp_path: Path, pki: Pki) -> str:
    """GOOD, its files probe reading a valid certificate written into ``tmp_path``."""
    certificate = tmp_path / "good.pem"
    certificate.write_bytes(pki.valid.pem)
    return GOOD.format(path=certificate)


def bad_config_files(good: str, tmp_path: Path) -> Iterator[tuple[str, Path, str]]:
    """(name, written config file, expected error) of every bad config."""
    for name, (content, expected) in bad_configs(good, tmp_path).items():
        path = tmp_path / f"{name}.yaml"
        path.write_bytes(content)
        yield name, path, expected


def test_every_bad_file_is_one_bounded_config_error(tmp_path: Path, pki: Pki) -> None:
    good = good_config(tmp_path, pki)
    for name, path, expected in bad_config_files(good, tmp_path):
        started = time.monotonic()
        with pytest.raises(ConfigError) as caught:
            config = load_config(str(path))
            Scheduler(ResultStore()).apply(config)  # "unbuildable" fails here, and only here
        assert time.monotonic() - started < 2, name
        text = "; ".join(caught.value.messages)
        assert expected in text, (name, text)
        assert len(text) < 1000, name
    # Not regular files: refused without reading (a FIFO would block, /dev/zero never ends).
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero"), tmp_path):
        started = time.monotonic()
        with pytest.raises(ConfigError, match="cannot read config file: not a regular file"):
            load_config(str(path))
        assert time.monotonic() - started < 1
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match="over the 4194304-byte limit"):
        load_config(str(huge))
    # Intervals the suite uses stay valid; durations are finite.
    assert parse_config("global: {interval: 100ms}", "t").global_settings.interval == 0.1
    with pytest.raises(ConfigError, match=r"thresholds\.warning: must be a finite duration"):
        parse_config("global: {thresholds: {warning: 1000000000000000000000000000000s}}", "t")


def test_check_config_refuses_what_the_daemon_refuses(tmp_path: Path, pki: Pki) -> None:
    good = good_config(tmp_path, pki)
    for name, path, expected in bad_config_files(good, tmp_path):
        done = subprocess.run(
            [sys.executable, "-m", "exporter", "check-config", str(path)], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 1, (name, done.stdout, done.stderr)
        assert expected in done.stderr, (name, done.stderr)
        assert "Traceback" not in done.stderr
    path = tmp_path / "good.yaml"
    path.write_text(good)
    done = subprocess.run([sys.executable, "-m", "exporter", "check-config", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_no_reload_stops_or_wedges_the_daemon(start_daemon: Any, tmp_path: Path, pki: Pki) -> None:
    good = good_config(tmp_path, pki)
    certificate = tmp_path / "good.pem"  # written by good_config
    daemon: DaemonProcess = start_daemon(good, "--web.enable-lifecycle")  # POST /-/reload is one of the two ways
    config_path = Path(daemon.process.args[-1].split("=", 1)[1])  # type: ignore[index, union-attr]
    daemon.wait_ready()

    def runs() -> float:
        return value(daemon.metrics(), "certscope_probe_runs_total", target=str(certificate))

    cases = list(bad_configs(good, tmp_path).items())
    with HealthWatch(daemon) as watch:
        for number, (name, (content, expected)) in enumerate(cases):
            failures_logged = daemon.log().count("config reload failed")
            config_path.write_bytes(content)
            if number % 2:
                response = requests.post(daemon.base_url + "/-/reload", timeout=10)
                assert response.status_code == 500 and expected in response.text, (name, response.text[:300])
            else:
                daemon.signal(signal.SIGHUP)
            wait_for(
                lambda: daemon.log().count("config reload failed") > failures_logged,  # noqa: B023
                10,
                f"{name}'s log line",
            )
            assert daemon.process.poll() is None, f"{name}: the daemon exited"
            metrics = daemon.metrics()
            assert value(metrics, "certscope_config_last_reload_successful") == 0, name
            # The previous config still runs, on its schedule.
            before = runs()
            wait_for(lambda: runs() >= before + 1, 5, f"a round after {name}")  # noqa: B023
            assert daemon.get("/-/ready").status_code == 200, name
            config_path.write_text(good)
            assert requests.post(daemon.base_url + "/-/reload", timeout=10).status_code == 200, name
            assert value(daemon.metrics(), "certscope_config_last_reload_successful") == 1
        # Not a regular file: a FIFO must not block the main loop, /dev/zero not be read.
        config_path.unlink()
        os.mkfifo(config_path)
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: "not a regular file" in daemon.log(), 10, "the FIFO refused")
        config_path.unlink()
        config_path.symlink_to("/dev/zero")
        response = requests.post(daemon.base_url + "/-/reload", timeout=10)
        assert response.status_code == 500 and "not a regular file" in response.text
    watch.assert_healthy(rss_bound_mib=120)

    # One line per failed reload, none of them unbounded.
    failed = [line for line in daemon.log().splitlines() if "config reload failed" in line]
    assert len(failed) == len(cases) + 2
    assert max(len(line) for line in failed) < 1000
    assert "Traceback" not in daemon.log()
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 10
