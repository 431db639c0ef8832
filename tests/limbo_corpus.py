"""The x509-limbo corpus (../shared/corpora/limbo.json), read once for the tests
that judge chains against it (test_limbo.py in process, test_limbo_served.py
through a real server and the tls probe).  Empty when the corpus is absent."""

from __future__ import annotations

import ast
import functools
import json
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpora" / "limbo.json"


@functools.cache
def server_cases() -> list[dict[str, Any]]:
    if not CORPUS.exists():
        return []
    return [c for c in json.loads(CORPUS.read_text())["testcases"] if c["validation_kind"] == "SERVER"]


def pems(value: str | list[str]) -> list[str]:
    """The PEM blocks of a case field (a list, or a string holding one or a list)."""
    if isinstance(value, str):
        return list(ast.literal_eval(value)) if value.startswith("[") else [value] if value else []
    return list(value)
