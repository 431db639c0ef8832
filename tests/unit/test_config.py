"""Config loading: strict keys, typed values, every error with its path, all at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import ConfigError, default_config, load_config, parse_config
from probes.kinds import KINDS
from probes.settings import parse_duration


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "test.yaml")
    return caught.value.messages


def test_valid_config_becomes_frozen_typed_dataclasses(tmp_path: Path) -> None:
    password = tmp_path / "p12.pass"
    password.write_text("secret\n")
    config = parse_config(
        f"""
global: {{interval: 2m, timeout: 15s, concurrency: 4, thresholds: {{warning: 30d, critical: 5d}}}}
web: {{listen_address: "[::1]:9999"}}
probes:
  - name: pki
    kind: files
    paths: [/etc/ssl/certs/ca-certificates.crt, "/srv/**/*.pem"]
    exclude: ["**/old/**"]
    interval: 1h30m
    labels: {{team: platform}}
    max_file_size: 1MiB
    pkcs12: {{password_file: {password}}}
""",
        "inline",
    )
    probe = config.probes[0]
    assert config.global_settings.interval == 120
    assert config.global_settings.concurrency == 4
    assert probe.interval == 5400
    assert probe.timeout == 15  # inherited from global
    assert probe.thresholds.critical == 5 * 86400
    assert probe.labels == {"team": "platform"}
    assert probe.settings.paths == ("/etc/ssl/certs/ca-certificates.crt", "/srv/**/*.pem")
    assert probe.settings.max_file_size == 1024 * 1024
    with pytest.raises(AttributeError):
        probe.name = "other"  # type: ignore[misc]


def test_every_error_is_reported_at_once_with_its_path() -> None:
    messages = errors_of(
        """
global: {interval: soon, concurrency: "many", colour: blue}
probes:
  - name: a
    kind: files
    paths: [relative/path.pem, 42]
  - name: b
    kind: nope
  - name: c
    kind: files
    paths: [/x]
    intervall: 5m
    pkcs12: {password_file: /does/not/exist}
    max_file_size: huge
"""
    )
    expected = [
        "global.colour: unknown key",
        "global.interval: not a duration: 'soon'",
        "global.concurrency: must be an integer, got 'many'",
        "probes[0].paths[1]: must be a string, got int",
        # Every registered kind, sorted (so a new kind does not break this test).
        f"probes[1].kind: must be one of {', '.join(sorted(KINDS))}, got 'nope'",
        "probes[2].intervall: unknown key (did you mean 'interval'?)",
        "probes[2].pkcs12.password_file: file not found: /does/not/exist",
        "probes[2].max_file_size: must be a positive size like 16MiB or 512KiB, got 'huge'",
    ]
    for fragment in expected:
        assert any(fragment in message for message in messages), f"{fragment!r} not in {messages}"
    assert len(messages) == len(expected), messages


def test_cross_field_checks() -> None:
    messages = errors_of(
        """
global: {thresholds: {warning: 1d, critical: 2d}}
probes:
  - {name: a, kind: files, paths: [relative.pem]}
  - {name: a, kind: files, paths: [/x.pem], labels: {probe: x, "bad-label": y}}
  - {name: "has space", kind: files, paths: [/x.pem]}
"""
    )
    joined = "\n".join(messages)
    assert "global.thresholds.critical: must not be longer than warning" in joined
    assert "probes[0].paths[0]: must be absolute, got 'relative.pem'" in joined
    assert "probes[1].name: 'a' is already used by probes[0]" in joined
    assert "probes[1].labels.probe: reserved by certscope" in joined
    assert "probes[1].labels.bad-label: not a valid Prometheus label name" in joined
    assert "probes[2].name: 1-63 letters, digits" in joined


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("probes: {a: 1}", "probes: must be a list, got a mapping"),
        ("- 1\n- 2", "top level must be a mapping, got a list"),
        ("global: [1]", "global: must be a mapping, got a list"),
        ("probes:\n  - {name: a, kind: files}", "probes[0].paths: required"),
        ("global: {interval: 0s}", "global.interval: must be longer than zero"),
        ("global: {interval: true}", "global.interval: must be a duration"),
        ("probes: [{kind: files, paths: [/x]}]", "probes[0].name: required"),
        ("web: {listen_address: nowhere}", "web.listen_address: must be host:port"),
        ("global: {interval: 5m\n  bad", "invalid YAML: line"),
    ],
)
def test_bad_values(text: str, problem: str) -> None:
    assert any(problem in message for message in errors_of(text)), errors_of(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("28d", 28 * 86400), ("250ms", 0.25), ("1w", 604800)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5 m", "m5", "5mm", "-5m", "1.5.2s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_missing_config_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path / "absent.yaml"))
    assert caught.value.source.endswith("absent.yaml")
    assert "cannot read config file" in caught.value.messages[0]


def test_embedded_default_is_valid_and_watches_the_trust_store() -> None:
    config = default_config()
    kinds = {probe.name: probe.kind for probe in config.probes}
    assert kinds == {"trust_store": "files", "host_certificates": "files"}
    assert "/etc/ssl/certs/ca-certificates.crt" in config.probes[0].settings.paths


def test_check_config_command(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("probes: [{name: a, kind: files, paths: [/etc/ssl/certs]}]\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("probes: [{name: a, kind: files, paths: [x.pem], extra: 1}]\n")
    ok = subprocess.run([sys.executable, "-m", "exporter", "check-config", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "OK, 1 probe(s): a (files)" in ok.stdout
    failed = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", str(bad)], capture_output=True, text=True
    )
    assert failed.returncode == 1
    assert f"{bad}: probes[0].extra: unknown key" in failed.stderr
    assert f"{bad}: probes[0].paths[0]: must be absolute" in failed.stderr
    assert "2 error(s)" in failed.stderr


@pytest.mark.parametrize("example", sorted(Path(__file__).parents[2].glob("examples/*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(example: Path) -> None:
    assert load_config(str(example)).probes
