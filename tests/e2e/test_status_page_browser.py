"""The status page at ``/`` as a real browser renders it (headless Chromium).

``--dump-dom`` gives the DOM after Chromium has parsed the page, so the assertions
read what a person would see rather than the bytes the daemon wrote; a screenshot
checks that the page actually paints.  Chromium comes from the Debian package
``chromium``; when it is missing the tests fail (never skip).
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
import requests

from tests.fixtures.helpers import DaemonProcess
from tests.fixtures.pki import DAY, NOW, Pki, issue, write_formats

pytestmark = pytest.mark.e2e

CHROMIUM_TIMEOUT = 60.0  # seconds, per Chromium run
P12_PASSWORD_ENV = "CERTSCOPE_TEST_P12_PASSWORD"
P12_PASSWORD = "correct horse"  # write_formats' default
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

StartDaemon = Callable[..., DaemonProcess]


def require_chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("`chromium` is not on PATH; run the install step: `apt-get install -y chromium`", pytrace=False)
    return path


def run_chromium(profile: Path, *args: str) -> str:
    """Headless Chromium with a fresh profile; returns its stdout, fails the test on error or timeout."""
    command = [
        require_chromium(),
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    # Its own session, so that whatever Chromium leaves behind can be ended by process group.
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=CHROMIUM_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"chromium did not finish in {CHROMIUM_TIMEOUT}s: {command}\n{stderr[-4000:]}", pytrace=False)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    if process.returncode != 0:
        pytest.fail(f"chromium exited with {process.returncode}: {command}\n{stderr[-4000:]}", pytrace=False)
    return stdout


@dataclass
class Table:
    headers: list[str] = field(default_factory=list)
    rows: list[tuple[list[str], dict[str, str]]] = field(default_factory=list)  # (CSS classes, header -> text)


class TableReader(HTMLParser):
    """Every ``<table id=...>`` of a document: its header cells and its body rows."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, Table] = {}
        self._table: Table | None = None
        self._row_classes: list[str] = []
        self._cells: list[str] = []
        self._cell: list[str] | None = None
        self._header_row = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table" and attributes.get("id"):
            self._table = self.tables[attributes["id"] or ""] = Table()
        elif self._table is None:
            return
        elif tag == "tr":
            self._row_classes = (attributes.get("class") or "").split()
            self._cells = []
            self._header_row = False
        elif tag in ("td", "th"):
            self._cell = []
            self._header_row = self._header_row or tag == "th"

    def handle_endtag(self, tag: str) -> None:
        if self._table is None:
            return
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None:
            self._cells.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr":
            if self._header_row:
                self._table.headers = self._cells
            else:
                self._table.rows.append((self._row_classes, dict(zip(self._table.headers, self._cells, strict=False))))

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def read_tables(dom: str) -> dict[str, Table]:
    reader = TableReader()
    reader.feed(dom)
    reader.close()
    return reader.tables


def start_on_test_pki(pki: Pki, directory: Path, start_daemon: StartDaemon) -> tuple[DaemonProcess, dict[str, Path]]:
    """The daemon on every format of the test PKI plus one broken file, first round done."""
    files = write_formats(pki, directory)
    files["empty.pem"] = directory / "empty.pem"
    files["empty.pem"].write_bytes(b"")
    config = (
        "global: {interval: 1s}\n"
        "probes:\n"
        "  - name: pki\n"
        "    kind: files\n"
        f'    paths: ["{directory}"]\n'
        f"    pkcs12: {{password_env: {P12_PASSWORD_ENV}}}\n"
    )
    daemon = start_daemon(config, env={P12_PASSWORD_ENV: P12_PASSWORD})
    daemon.wait_ready()
    return daemon, files


def test_status_page_in_chromium(pki: Pki, tmp_path: Path, start_daemon: StartDaemon) -> None:
    require_chromium()
    daemon, files = start_on_test_pki(pki, tmp_path / "pki", start_daemon)

    dom = run_chromium(tmp_path / "profile", "--dump-dom", f"{daemon.base_url}/")
    tables = read_tables(dom)
    assert {"certificates", "probes", "failing"} <= tables.keys(), f"tables found: {list(tables)}\n{dom}"

    # Certificates, soonest expiry first: the expired leaf leads, in red.
    certificates = tables["certificates"].rows
    expired_subject = pki.expired.cert.subject.rfc4514_string()
    assert certificates, dom
    assert certificates[0][1]["Subject"] == expired_subject, certificates[0]
    days_left = [float(cells["Days left"]) for _, cells in certificates]
    assert days_left == sorted(days_left), days_left
    expired = [(classes, cells) for classes, cells in certificates if cells["Subject"] == expired_subject]
    assert certificates[: len(expired)] == expired, "the expired certificate's rows are not the first ones"
    assert f"{files['expired.pem']}[0] leaf" in [cells["Where"] for _, cells in expired]
    for classes, cells in certificates:
        assert ("expired" in classes) == (cells["Subject"] == expired_subject), (classes, cells)
    assert all(float(cells["Days left"]) < 0 for _, cells in expired), expired

    # The valid and the not-yet-valid leaves are listed, and not as expired.
    where = {cells["Where"]: (classes, cells) for classes, cells in certificates}
    for name, issued, css in (("valid.pem", pki.valid, "ok"), ("future.pem", pki.not_yet_valid, "not-yet-valid")):
        classes, cells = where[f"{files[name]}[0] leaf"]
        assert cells["Subject"] == issued.cert.subject.rfc4514_string(), cells
        assert cells["Probe"] == "pki", cells
        assert classes == [css], (classes, cells)
        assert issued.fingerprint.startswith(cells["SHA-256"]), cells

    # The probe, with its one failing target.
    [(probe_classes, probe)] = tables["probes"].rows
    assert probe["Probe"] == "pki" and probe["Kind"] == "files", probe
    assert (probe["Targets"], probe["Failing"], probe["Source up"]) == (str(len(files)), "1", "yes"), probe
    assert probe_classes == ["failing"], probe_classes

    # The broken file and nothing else is failing.
    [(failing_classes, failing)] = tables["failing"].rows
    assert (failing["Probe"], failing["Target"], failing["Reason"]) == ("pki", str(files["empty.pem"]), "empty_file")
    assert failing_classes == ["failing"], failing_classes


def test_status_page_screenshot(pki: Pki, tmp_path: Path, start_daemon: StartDaemon) -> None:
    require_chromium()
    daemon, _ = start_on_test_pki(pki, tmp_path / "pki", start_daemon)
    screenshot = tmp_path / "status.png"

    run_chromium(tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1280,900", f"{daemon.base_url}/")

    assert screenshot.is_file(), f"chromium wrote no {screenshot}"
    png = screenshot.read_bytes()
    assert png.startswith(PNG_SIGNATURE), png[:16]
    width, height = struct.unpack(">II", png[16:24])  # IHDR, the first chunk
    assert (width, height) == (1280, 900)
    # A blank 1280x900 page compresses to a few kilobytes; tables of text take far more.
    assert len(png) > 30_000, f"{screenshot} is only {len(png)} bytes: is the page blank?"


FIRST_SCREEN_WIDTH = 1400
# Appended to a copy of the page: records the width the laid-out document needs.
MEASURE_SCRIPT = "<script>document.body.dataset.scrollWidth = document.documentElement.scrollWidth;</script>"
# The page as it would lay out without its fixed table layout and wrapping rules.
UNWRAPPED_STYLE = (
    "<style>table{table-layout:auto!important;width:auto!important}th,td{overflow-wrap:normal!important}</style>"
)


def scroll_width(page: str, profile: Path, directory: Path) -> int:
    """The document width Chromium needs for ``page`` in a 1400-pixel window."""
    copy = directory / f"measure-{len(list(directory.glob('measure-*')))}.html"
    copy.write_text(page.replace("</body>", MEASURE_SCRIPT + "</body>"))
    dom = run_chromium(profile, f"--window-size={FIRST_SCREEN_WIDTH},900", "--dump-dom", copy.as_uri())
    marker = 'data-scroll-width="'
    assert marker in dom, f"the measuring script did not run:\n{dom[:2000]}"
    start = dom.index(marker) + len(marker)
    return int(dom[start : dom.index('"', start)])


def start_on_estate_with_anchors(pki: Pki, directory: Path, start_daemon: StartDaemon) -> tuple[DaemonProcess, str]:
    """The test PKI, an expired root (a trust anchor) and a path long enough to overflow a table."""
    long_directory = directory / ("deeply_nested_certificate_directory_" * 6).rstrip("_")
    long_directory.mkdir(parents=True)
    files = write_formats(pki, long_directory)
    expired_root = issue("certscope expired test root", ca=True, not_before=NOW - 400 * DAY, not_after=NOW - 5 * DAY)
    files["expired-root.pem"] = long_directory / "expired-root.pem"
    files["expired-root.pem"].write_bytes(expired_root.pem)
    config = (
        "global: {interval: 1s}\n"
        "probes:\n"
        "  - name: pki\n"
        "    kind: files\n"
        f'    paths: ["{long_directory}"]\n'
        f"    pkcs12: {{password_env: {P12_PASSWORD_ENV}}}\n"
    )
    daemon = start_daemon(config, env={P12_PASSWORD_ENV: P12_PASSWORD})
    daemon.wait_ready()
    return daemon, expired_root.cert.subject.rfc4514_string()


def test_status_page_first_screen_puts_trust_anchors_apart_and_fits_1400_pixels(
    pki: Pki, tmp_path: Path, start_daemon: StartDaemon
) -> None:
    require_chromium()
    daemon, expired_root_subject = start_on_estate_with_anchors(pki, tmp_path / "pki", start_daemon)

    dom = run_chromium(
        tmp_path / "profile", f"--window-size={FIRST_SCREEN_WIDTH},900", "--dump-dom", f"{daemon.base_url}/"
    )
    tables = read_tables(dom)
    # What needs attention comes first: failing targets, then certificates; anchors last.
    order = [dom.index(f'<table id="{name}"') for name in ("failing", "certificates", "probes", "trust-anchors")]
    assert order == sorted(order), order
    certificates = tables["certificates"].rows
    assert certificates and all(not cells["Where"].endswith(" root") for _, cells in certificates), certificates
    assert expired_root_subject not in {cells["Subject"] for _, cells in certificates}
    # The trust anchors: collapsed, the expired root among them in red, counted in the summary.
    anchors = tables["trust-anchors"].rows
    by_subject = {cells["Subject"]: classes for classes, cells in anchors}
    assert by_subject[expired_root_subject] == ["expired"], anchors
    assert pki.root.cert.subject.rfc4514_string() in by_subject
    assert '<details id="trust-anchors-section">' in dom, "the trust anchors must start collapsed"
    assert "Trust anchors (2; 1 expired)" in dom
    # The summary counts the expired leaf (in expired.pem and chain.p7c.pem), not the expired root.
    assert "Needs attention: 0 failing targets, 2 expired, 1 not-yet-valid, 0 critical, 0 warning" in dom

    # Fits the window: the live page needs no more than 1400 pixels, while the same page
    # without its layout rules needs more (so the measurement can fail).
    page = requests.get(f"{daemon.base_url}/", timeout=10).text
    assert scroll_width(page, tmp_path / "profile", tmp_path) <= FIRST_SCREEN_WIDTH
    unwrapped = page.replace("</head>", UNWRAPPED_STYLE + "</head>")
    assert scroll_width(unwrapped, tmp_path / "profile", tmp_path) > FIRST_SCREEN_WIDTH


def test_status_page_filters_by_probe_and_state(pki: Pki, tmp_path: Path, start_daemon: StartDaemon) -> None:
    require_chromium()
    directory = tmp_path / "pki"
    files = write_formats(pki, directory)
    other = tmp_path / "other"
    other.mkdir()
    (other / "valid.pem").write_bytes(pki.valid.pem)
    config = (
        "global: {interval: 1s}\n"
        "probes:\n"
        "  - name: pki\n"
        "    kind: files\n"
        f'    paths: ["{directory}"]\n'
        f"    pkcs12: {{password_env: {P12_PASSWORD_ENV}}}\n"
        "  - name: other\n"
        "    kind: files\n"
        f'    paths: ["{other}"]\n'
    )
    daemon = start_daemon(config, env={P12_PASSWORD_ENV: P12_PASSWORD})
    daemon.wait_ready()

    everything = read_tables(run_chromium(tmp_path / "p1", "--dump-dom", f"{daemon.base_url}/"))
    assert {cells["Probe"] for _, cells in everything["certificates"].rows} == {"pki", "other"}

    expired = read_tables(run_chromium(tmp_path / "p2", "--dump-dom", f"{daemon.base_url}/?probe=pki&state=expired"))
    rows = expired["certificates"].rows
    assert rows and all(classes == ["expired"] and cells["Probe"] == "pki" for classes, cells in rows), rows
    assert {cells["Where"] for _, cells in rows} >= {f"{files['expired.pem']}[0] leaf"}
    assert [cells["Probe"] for _, cells in expired["probes"].rows] == ["pki"]

    other_only = read_tables(run_chromium(tmp_path / "p3", "--dump-dom", f"{daemon.base_url}/?probe=other"))
    assert [cells["Probe"] for _, cells in other_only["probes"].rows] == ["other"]
    assert [cells["Where"] for _, cells in other_only["certificates"].rows] == [f"{other / 'valid.pem'}[0] leaf"]
    # An unknown state is ignored rather than hiding everything.
    unknown = read_tables(run_chromium(tmp_path / "p4", "--dump-dom", f"{daemon.base_url}/?state=%3Cscript%3E"))
    assert len(unknown["certificates"].rows) == len(everything["certificates"].rows)
