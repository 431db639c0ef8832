"""``scripts/install-test-deps``: only what is missing is installed, and npm only without one.

The script is run for real, with a PATH this test controls: a directory of stub commands
(standing for what a machine already has) and a fake ``apt-get`` placed first that
records every call and "installs" a package by creating its commands as stubs.  The
real apt-get cannot be exercised twice on a fresh machine inside one test; everything
else is the shipped script.

Rows of the table that name an absolute path (a package that ships no command, such as
PostgreSQL's server or the Go sources step-ca is built from) are checked on the real
file system; the suite runs after the install step, so they are present here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install-test-deps"

FAKE_APT_GET = """#!{python}
import json, os, sys
from pathlib import Path
with open(os.environ["FAKE_APT_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if "install" in sys.argv and os.environ.get("FAKE_APT_INSTALLS") == "1":
    table = json.loads(os.environ["FAKE_APT_TABLE"])
    packages = {{argument for argument in sys.argv[1:] if not argument.startswith("-")}} - {{"install"}}
    for command, package in table:
        if package in packages and not command.startswith("/"):
            stub = Path(os.environ["FAKE_BIN"]) / command
            stub.write_text("#!/bin/sh\\n")
            stub.chmod(0o755)
"""


def table() -> list[tuple[str, str]]:
    """The script's own table, read through its ``--list`` output (npm's row excluded)."""
    listed = subprocess.run(["bash", str(SCRIPT), "--list"], capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in listed.splitlines() if line and not line.startswith("missing:")]
    return [(row[0], row[1]) for row in rows if row[0] != "npm"]


class Machine:
    """A PATH with chosen commands present and a recording apt-get first on it."""

    def __init__(self, root: Path, present: set[str], npm: bool, apt_installs: bool = True) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        self.log = root / "apt.log"
        self.log.touch()
        self.table = table()
        (self.bin / "apt-get").write_text(FAKE_APT_GET.format(python=sys.executable))
        (self.bin / "apt-get").chmod(0o755)
        for command in present | ({"npm"} if npm else set()):
            stub = self.bin / command
            stub.write_text("#!/bin/sh\n")
            stub.chmod(0o755)
        self.apt_installs = apt_installs

    def run(self) -> subprocess.CompletedProcess[str]:
        environment = {
            "PATH": str(self.bin),
            "FAKE_APT_LOG": str(self.log),
            "FAKE_APT_TABLE": json.dumps(self.table),
            "FAKE_APT_INSTALLS": "1" if self.apt_installs else "0",
            "FAKE_BIN": str(self.bin),
        }
        # bash by absolute path: the script itself must need nothing from PATH but apt-get.
        return subprocess.run(["/bin/bash", str(SCRIPT)], env=environment, capture_output=True, text=True, timeout=60)

    def apt_calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def installed(self) -> set[str]:
        calls = [call for call in self.apt_calls() if "install" in call]
        assert len(calls) <= 1, f"more than one apt-get install: {calls}"
        return {argument for call in calls for argument in call if not argument.startswith("-")} - {"install"}


def commands() -> set[str]:
    return {command for command, _ in table() if not command.startswith("/")}


def package_of(command: str) -> str:
    return dict(table())[command]


def test_nothing_missing_asks_apt_for_nothing(tmp_path: Path) -> None:
    machine = Machine(tmp_path, present=commands(), npm=True)
    result = machine.run()
    assert result.returncode == 0, result.stderr
    assert machine.apt_calls() == [], "apt-get was called (not even `update` is wanted) with nothing missing"
    assert "all present" in result.stdout


def test_only_the_missing_packages_are_asked_for_and_never_npm_when_one_exists(tmp_path: Path) -> None:
    absent = {"prometheus", "promtool", "nginx", "cfssl"}
    machine = Machine(tmp_path, present=commands() - absent, npm=True)
    result = machine.run()
    assert result.returncode == 0, result.stderr
    assert machine.installed() == {"prometheus", "nginx", "golang-cfssl"}
    assert machine.apt_calls()[0][0] == "update", "apt-get update runs first when something is installed"
    assert "npm" not in machine.installed()
    present_packages = {package_of(command) for command in commands() - absent}
    assert not machine.installed() & (present_packages - {package_of(command) for command in absent})


def test_npm_is_asked_for_only_when_there_is_none(tmp_path: Path) -> None:
    machine = Machine(tmp_path, present=commands(), npm=False, apt_installs=False)
    result = machine.run()
    # The fake apt-get does not create npm, so the script must say npm is still missing.
    assert machine.installed() == {"npm"}
    assert result.returncode != 0
    assert "still missing" in result.stderr and "npm" in result.stderr


@pytest.mark.parametrize("absent", sorted(commands()))
def test_each_missing_command_asks_for_its_package(tmp_path: Path, absent: str) -> None:
    machine = Machine(tmp_path, present=commands() - {absent}, npm=True)
    result = machine.run()
    assert result.returncode == 0, result.stderr
    assert machine.installed() == {package_of(absent)}


def test_a_package_that_does_not_provide_its_command_fails_loudly(tmp_path: Path) -> None:
    machine = Machine(tmp_path, present=commands() - {"haproxy"}, npm=True, apt_installs=False)
    result = machine.run()
    assert result.returncode != 0
    assert "still missing after apt-get install: haproxy" in result.stderr
