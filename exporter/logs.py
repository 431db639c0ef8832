"""Log formats: ``logfmt`` (default) and ``json``, one line per record.

A record carries what others wrote (file names, certificate names, error text), so
no character that a terminal or a log shipper acts on is written raw: line breaks,
carriage returns, ESC (terminal escape sequences), every other C0 and C1 control,
DEL, the Unicode line and paragraph separators and the bidirectional overrides
(text that displays otherwise than it reads) are escaped, in logfmt as in JSON.  A
record is always exactly one line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

# Characters escaped beyond quotes and backslashes.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_control(match: re.Match[str]) -> str:
    char = match.group()
    return _SHORT_ESCAPES.get(char) or f"\\u{ord(char):04x}"


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _logfmt_value(value: str) -> str:
    if value and not any(c in value for c in ' "=\\') and not _CONTROL.search(value):
        return value
    escaped = _CONTROL.sub(_escape_control, value.replace("\\", "\\\\").replace('"', '\\"'))
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = [
            ("ts", _timestamp(record)),
            ("level", record.levelname.lower()),
            ("logger", record.name),
            ("msg", record.getMessage()),
        ]
        if record.exc_info:
            fields.append(("exception", self.formatException(record.exc_info)))
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in fields)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        # json escapes C0 controls itself; the others in _CONTROL are escaped here.
        return _CONTROL.sub(_escape_control, json.dumps(document, ensure_ascii=False))


def setup_logging(level: str = "info", fmt: str = "logfmt") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # APScheduler logs every job execution at INFO; that is our DEBUG.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
