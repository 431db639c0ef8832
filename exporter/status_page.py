"""The plain HTML status page served at ``/``: what needs attention first.

Order: a one-line summary, the failing targets, the certificates by expiry, the
probes, and last the trust anchors (roots) in a collapsed section.  Roots are left out
of the expiry alerts (system stores ship expired ones), so they are left out of the
first screen too.  ``?probe=NAME&state=STATE`` filters every table (a plain GET form,
no JavaScript); the tables use a fixed layout that wraps long names, so the page fits
a 1400-pixel window.

No JavaScript and no external assets; everything is escaped.  It is rendered from a
snapshot, like ``/metrics``.
"""

from __future__ import annotations

import html
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from exporter import __version__
from exporter.store import ProbeState, Snapshot, TargetState
from probes.result import ISSUED_ROLE, CertObservation

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:2em;width:100%;table-layout:fixed}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:.9em;overflow-wrap:anywhere}
th{background:#f3f3f3}
.expired,.failing,.not-yet-valid{background:#fdd}.critical{background:#fec}.warning{background:#ffb}.ok{background:#efe}
code{font-size:.85em}
form{margin:1em 0}
summary{font-size:1.3em;font-weight:bold;cursor:pointer;margin:.5em 0}
"""

# The certificate states, most urgent first; the filter offers them in this order.
STATES = ("expired", "not-yet-valid", "critical", "warning", "ok")
MAX_CERTIFICATE_ROWS = 1000  # soonest first; /metrics has the rest
TRUST_ANCHOR_ROLE = "root"

# Column widths (percent) of the certificate tables: wide for names, narrow for numbers.
_CERTIFICATE_COLUMNS = (
    ("Expires", 11),
    ("Days left", 6),
    ("Subject", 22),
    ("Issuer", 20),
    ("Where", 23),
    ("Probe", 8),
    ("SHA-256", 10),
)


@dataclass(frozen=True, slots=True)
class StatusFilter:
    """What ``?probe=`` and ``?state=`` ask for; empty strings mean everything."""

    probe: str = ""
    state: str = ""

    @classmethod
    def from_query(cls, query: Mapping[str, list[str]]) -> StatusFilter:
        probe = query.get("probe", [""])[0]
        state = query.get("state", [""])[0]
        return cls(probe=probe, state=state if state in STATES else "")


@dataclass(frozen=True, slots=True)
class _Row:
    not_after: float
    state: str
    probe: ProbeState
    target: str
    observation: CertObservation


def render_status(
    snapshot: Snapshot, ready: bool, now: float | None = None, wanted: StatusFilter = StatusFilter()
) -> str:
    now = time.time() if now is None else now
    probes = [state for state in snapshot.probes.values() if not wanted.probe or state.info.name == wanted.probe]
    certificates: list[_Row] = []
    anchors: list[_Row] = []
    for probe in probes:
        for target, target_state in probe.targets.items():
            for observation in target_state.certificates:
                row = _Row(observation.cert.not_after, _state(observation, probe, now), probe, target, observation)
                (anchors if observation.role == TRUST_ANCHOR_ROLE else certificates).append(row)
    certificates.sort(key=lambda row: row.not_after)
    anchors.sort(key=lambda row: row.not_after)
    failing = sorted(
        (
            (probe.info.name, target, state)
            for probe in probes
            for target, state in probe.targets.items()
            if not state.result.success
        ),
        key=lambda row: (row[0], row[1]),
    )

    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>certscope</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>certscope {html.escape(__version__)}</h1>",
        f"<p>Config: <code>{html.escape(snapshot.config_source)}</code> &middot; ",
        f"{'ready' if ready else 'first round in progress'} &middot; ",
        "<a href='/metrics'>metrics</a></p>",
        _summary(failing, certificates, anchors),
        _filter_form(snapshot, wanted),
    ]
    out.extend(_failing_table(failing))
    shown = [row for row in certificates if not wanted.state or row.state == wanted.state]
    out.append(f"<h2>Certificates ({len(shown)})</h2>")
    out.append(
        "<p>Red: expired or not yet valid; orange: past the critical threshold; yellow: past the warning one. "
        "Trust anchors are listed apart, at the end.</p>"
    )
    out.extend(_certificate_table("certificates", shown, now))
    out.extend(_probe_table(probes))
    shown_anchors = [row for row in anchors if not wanted.state or row.state == wanted.state]
    expired_anchors = sum(1 for row in anchors if row.state == "expired")
    out.append(
        f"<details id='trust-anchors-section'><summary>Trust anchors ({len(shown_anchors)}; "
        f"{expired_anchors} expired)</summary>"
        "<p>Roots, from trust stores and bundles. They are left out of the expiry alerts: system stores "
        "ship expired roots, and a client never relies on a root's own expiry unless it chains to it. "
        "An expiring root that your own PKI uses is ticketed by CertscopeTrustAnchorExpiring.</p>"
    )
    out.extend(_certificate_table("trust-anchors", shown_anchors, now))
    out.append("</details></body></html>")
    return "".join(out)


def _state(observation: CertObservation, probe: ProbeState, now: float) -> str:
    cert = observation.cert
    if cert.not_before > now:
        return "not-yet-valid"
    seconds_left = cert.not_after - now
    if seconds_left <= 0:
        return "expired"
    if observation.role == ISSUED_ROLE:
        return "ok"  # an ACME canary's certificate: no thresholds apply (docs/metrics.md)
    if seconds_left <= probe.info.critical_seconds:
        return "critical"
    if seconds_left <= probe.info.warning_seconds:
        return "warning"
    return "ok"


def _summary(failing: list[tuple[str, str, TargetState]], certificates: list[_Row], anchors: list[_Row]) -> str:
    counts = Counter(row.state for row in certificates)
    parts = [f"{len(failing)} failing target{'' if len(failing) == 1 else 's'}"]
    parts.extend(f"{counts[state]} {state}" for state in STATES if state != "ok")
    needs = len(failing) + sum(counts[state] for state in STATES if state != "ok")
    css = "failing" if needs else "ok"
    return (
        f"<p id='summary' class='{css}'>Needs attention: {', '.join(parts)} &middot; "
        f"{len(certificates)} certificates, {len(anchors)} trust anchors (listed apart)</p>"
    )


def _filter_form(snapshot: Snapshot, wanted: StatusFilter) -> str:
    def option(value: str, label: str, selected: str) -> str:
        mark = " selected" if value == selected else ""
        return f"<option value='{html.escape(value, quote=True)}'{mark}>{html.escape(label)}</option>"

    probe_options = [option("", "all probes", wanted.probe)]
    probe_options.extend(option(name, name, wanted.probe) for name in sorted(snapshot.probes))
    state_options = [option("", "any state", wanted.state)]
    state_options.extend(option(state, state, wanted.state) for state in STATES)
    return (
        "<form id='filter' method='get' action='/'>"
        f"<label>Probe <select name='probe'>{''.join(probe_options)}</select></label> "
        f"<label>State <select name='state'>{''.join(state_options)}</select></label> "
        "<button type='submit'>Filter</button> <a href='/'>clear</a></form>"
    )


def _failing_table(failing: list[tuple[str, str, TargetState]]) -> list[str]:
    out = [
        f"<h2>Failing targets ({len(failing)})</h2><table id='failing'>"
        "<colgroup><col style='width:12%'><col style='width:30%'><col style='width:14%'><col></colgroup>"
        "<thead><tr><th>Probe</th><th>Target</th><th>Reason</th><th>Message</th></tr></thead><tbody>"
    ]
    for name, target, target_state in failing:
        out.append(
            f"<tr class='failing'><td>{html.escape(name)}</td><td>{html.escape(target)}</td>"
            f"<td>{target_state.result.reason.value}</td><td>{html.escape(target_state.result.message)}</td></tr>"
        )
    out.append("</tbody></table>")
    return out


def _certificate_table(table_id: str, rows: list[_Row], now: float) -> list[str]:
    columns = "".join(f"<col style='width:{width}%'>" for _, width in _CERTIFICATE_COLUMNS)
    headers = "".join(f"<th>{name}</th>" for name, _ in _CERTIFICATE_COLUMNS)
    out = [f"<table id='{table_id}'><colgroup>{columns}</colgroup><thead><tr>{headers}</tr></thead><tbody>"]
    if len(rows) > MAX_CERTIFICATE_ROWS:
        out.append(f"<tr><td colspan='7'>showing the {MAX_CERTIFICATE_ROWS} soonest to expire</td></tr>")
    for row in rows[:MAX_CERTIFICATE_ROWS]:
        cert = row.observation.cert
        out.append(
            f"<tr class='{row.state}'><td>{_date(row.not_after)}</td><td>{(row.not_after - now) / 86400:.1f}</td>"
            f"<td>{html.escape(cert.subject or '(empty)')}</td><td>{html.escape(cert.issuer)}</td>"
            f"<td>{html.escape(row.target)}[{row.observation.index}] {row.observation.role}{_where(row)}</td>"
            f"<td>{html.escape(row.probe.info.name)}</td><td><code>{cert.fingerprint_sha256[:16]}</code></td></tr>"
        )
    out.append("</tbody></table>")
    return out


def _where(row: _Row) -> str:
    """Where inside its target a certificate sits (keystore alias, kubeconfig
    cluster or user), as ``name=value`` pairs under the target."""
    labels = row.observation.labels
    if not labels:
        return ""
    return "<br>" + " ".join(f"{html.escape(name)}={html.escape(value)}" for name, value in labels)


def _probe_table(probes: list[ProbeState]) -> list[str]:
    out = [
        "<h2>Probes</h2><table id='probes'><thead><tr><th>Probe</th><th>Kind</th><th>Targets</th>"
        "<th>Failing</th><th>Source up</th><th>Last round</th></tr></thead><tbody>"
    ]
    for probe in probes:
        failing = sum(1 for state in probe.targets.values() if not state.result.success)
        up = "yes" if probe.source is None or probe.source.up else "no"
        last = f"{probe.source.round_duration_seconds:.3f} s" if probe.source else "pending"
        css = "failing" if failing or up == "no" else "ok"
        out.append(
            f"<tr class='{css}'><td>{html.escape(probe.info.name)}</td><td>{probe.info.kind}</td>"
            f"<td>{len(probe.targets)}</td><td>{failing}</td><td>{up}</td><td>{last}</td></tr>"
        )
    out.append("</tbody></table>")
    return out


def _date(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")
