"""The plain HTML status page served at ``/``: certificates by expiry, probes by state.

No JavaScript and no external assets; everything is escaped.  It is rendered from
a snapshot, like ``/metrics``.
"""

from __future__ import annotations

import html
import time
from datetime import UTC, datetime

from exporter import __version__
from exporter.store import Snapshot, TargetState

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:2em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:.9em}
th{background:#f3f3f3}
.expired,.failing,.not-yet-valid{background:#fdd}.critical{background:#fec}.warning{background:#ffb}.ok{background:#efe}
code{font-size:.85em}
"""


MAX_CERTIFICATE_ROWS = 1000  # soonest first; /metrics has the rest


def render_status(snapshot: Snapshot, ready: bool, now: float | None = None) -> str:
    now = time.time() if now is None else now
    rows = []
    for state in snapshot.probes.values():
        for target, target_state in state.targets.items():
            for observation in target_state.certificates:
                rows.append((observation.cert.not_after, state, target, observation))
    rows.sort(key=lambda row: row[0])

    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>certscope</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>certscope {html.escape(__version__)}</h1>",
        f"<p>Config: <code>{html.escape(snapshot.config_source)}</code> &middot; ",
        f"{'ready' if ready else 'first round in progress'} &middot; ",
        "<a href='/metrics'>metrics</a></p>",
        f"<h2>Certificates ({len(rows)})</h2>",
        "<p>Red: expired or not yet valid; orange: past the critical threshold; yellow: past the warning one.</p>",
        "<table id='certificates'><thead><tr><th>Expires</th><th>Days left</th><th>Subject</th>"
        "<th>Issuer</th><th>Where</th><th>Probe</th><th>SHA-256</th></tr></thead><tbody>",
    ]
    if len(rows) > MAX_CERTIFICATE_ROWS:
        out.append(f"<tr><td colspan='7'>showing the {MAX_CERTIFICATE_ROWS} soonest to expire</td></tr>")
    for not_after, state, target, observation in rows[:MAX_CERTIFICATE_ROWS]:
        cert = observation.cert
        days = (not_after - now) / 86400
        if cert.not_before > now:
            css = "not-yet-valid"
        else:
            css = _expiry_class(not_after - now, state.info.warning_seconds, state.info.critical_seconds)
        out.append(
            f"<tr class='{css}'><td>{_date(not_after)}</td><td>{days:.1f}</td>"
            f"<td>{html.escape(cert.subject or '(empty)')}</td><td>{html.escape(cert.issuer)}</td>"
            f"<td>{html.escape(target)}[{observation.index}] {observation.role}</td>"
            f"<td>{html.escape(state.info.name)}</td><td><code>{cert.fingerprint_sha256[:16]}</code></td></tr>"
        )
    out.append("</tbody></table>")
    out.append(
        "<h2>Probes</h2><table id='probes'><thead><tr><th>Probe</th><th>Kind</th><th>Targets</th>"
        "<th>Failing</th><th>Source up</th><th>Last round</th></tr></thead><tbody>"
    )
    failing_rows: list[tuple[str, str, TargetState]] = []
    for state in snapshot.probes.values():
        failing = [(t, s) for t, s in state.targets.items() if not s.result.success]
        failing_rows.extend((state.info.name, t, s) for t, s in failing)
        up = "yes" if state.source is None or state.source.up else "no"
        last = f"{state.source.round_duration_seconds:.3f} s" if state.source else "pending"
        css = "failing" if failing or up == "no" else "ok"
        out.append(
            f"<tr class='{css}'><td>{html.escape(state.info.name)}</td><td>{state.info.kind}</td>"
            f"<td>{len(state.targets)}</td><td>{len(failing)}</td><td>{up}</td><td>{last}</td></tr>"
        )
    out.append("</tbody></table>")
    out.append(
        f"<h2>Failing targets ({len(failing_rows)})</h2><table id='failing'><thead><tr><th>Probe</th>"
        "<th>Target</th><th>Reason</th><th>Message</th></tr></thead><tbody>"
    )
    for name, target, target_state in sorted(failing_rows, key=lambda row: (row[0], row[1])):
        out.append(
            f"<tr class='failing'><td>{html.escape(name)}</td><td>{html.escape(target)}</td>"
            f"<td>{target_state.result.reason.value}</td><td>{html.escape(target_state.result.message)}</td></tr>"
        )
    out.append("</tbody></table></body></html>")
    return "".join(out)


def _expiry_class(seconds_left: float, warning: float, critical: float) -> str:
    if seconds_left <= 0:
        return "expired"
    if seconds_left <= critical:
        return "critical"
    if seconds_left <= warning:
        return "warning"
    return "ok"


def _date(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")
