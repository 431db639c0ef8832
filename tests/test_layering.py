"""The layers: ``probes/`` (kinds, parsing, checking) never imports ``exporter/`` (the
daemon: scheduling, store, exposition), so a kind can be used and tested alone."""

from __future__ import annotations

import ast
from pathlib import Path

PROBES = Path(__file__).resolve().parents[1] / "probes"


def test_probes_never_import_exporter() -> None:
    found = []
    for path in sorted(PROBES.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            found.extend(f"{path.name}:{node.lineno}: {name}" for name in names if name.split(".")[0] == "exporter")
    assert found == []
