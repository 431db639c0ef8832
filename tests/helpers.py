"""Run the real daemon as a child process and read what it exports."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

_LISTENING = re.compile(r"listening on (\S+):(\d+)")
Sample = tuple[dict[str, str], float]


def parse_metrics(text: str) -> dict[str, list[Sample]]:
    """Sample name -> [(labels, value)], through prometheus-client's own parser."""
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def wait_for(condition: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_error = exc
        time.sleep(0.1)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_error})" if last_error else "")
    )


class DaemonProcess:
    """``python -m exporter run`` on an OS-chosen port; stderr goes to a log file."""

    def __init__(
        self,
        config: Path | None,
        log_path: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        args = [
            sys.executable,
            "-m",
            "exporter",
            "run",
            "--web.listen-address=127.0.0.1:0",
            "--log.level=debug",
            *extra,
        ]
        if config is not None:
            args.append(f"--config.file={config}")
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=preexec,
        )
        match = wait_for(lambda: self._exited() or _LISTENING.search(self.log()), 20, "the daemon to listen")
        if not isinstance(match, re.Match):
            raise AssertionError(f"daemon exited early with {self.process.returncode}:\n{self.log()}")
        self.base_url = f"http://127.0.0.1:{match.group(2)}"

    def _exited(self) -> bool:
        return self.process.poll() is not None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.base_url + path, timeout=10, **kwargs)

    def metrics(self) -> dict[str, list[Sample]]:
        response = self.get("/metrics")
        response.raise_for_status()
        return parse_metrics(response.text)

    def wait_ready(self, timeout: float = 20.0) -> None:
        wait_for(lambda: self.get("/-/ready").status_code == 200, timeout, "/-/ready")

    def wait_metrics(
        self, predicate: Callable[[dict[str, list[Sample]]], Any], timeout: float = 15.0, what: str = "metrics"
    ) -> dict[str, list[Sample]]:
        result: dict[str, list[Sample]] = {}

        def check() -> bool:
            nonlocal result
            result = self.metrics()
            return bool(predicate(result))

        wait_for(check, timeout, what)
        return result

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def find(samples: dict[str, list[Sample]], name: str, **labels: str) -> list[Sample]:
    return [(lbl, v) for lbl, v in samples.get(name, []) if all(lbl.get(k) == want for k, want in labels.items())]


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    matches = find(samples, name, **labels)
    assert len(matches) == 1, f"expected one {name}{labels}, found {len(matches)}: {matches}"
    return matches[0][1]
