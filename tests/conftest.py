from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.helpers import DaemonProcess
from tests.fixtures.pki import Pki, build_pki


@pytest.fixture(scope="session")
def pki() -> Pki:
    return build_pki()


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator:
    """start_daemon(config_text) -> a running DaemonProcess, stopped after the test."""
    started: list[DaemonProcess] = []

    def start(config_text: str | None, *extra: str, **kwargs: object) -> DaemonProcess:
        config_path = None
        if config_text is not None:
            config_path = tmp_path / f"config{len(started)}.yaml"
            config_path.write_text(config_text)
        daemon = DaemonProcess(config_path, tmp_path / f"daemon{len(started)}.log", *extra, **kwargs)  # type: ignore[arg-type]
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()
