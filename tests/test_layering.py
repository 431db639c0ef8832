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


# The daemon's runtime and exposition modules: they know the kind protocol
# (probes.metrics, probes.KINDS), never a kind (docs/architecture.md).
KIND_AGNOSTIC = ("scheduler", "store", "collector", "exposition", "tracing", "web", "crossprobe", "status_page")
EXPORTER = PROBES.parent / "exporter"


def _kind_modules() -> set[str]:
    """The modules a kind is made of: its probe and settings classes, and where its
    hooks (renders, tallies, histograms, span attributes) and so its fact types live."""
    from probes import KINDS

    modules: set[str] = set()
    for kind in KINDS.values():
        functions: list[object] = [kind.build, kind.settings]
        hooks = getattr(kind, "hooks", None)  # a registry without hooks: the kinds' own modules only
        if hooks is not None:
            functions += [hooks.render, hooks.span_attributes]
            functions += [tally.update for tally in hooks.tallies]
            functions += [histogram.observe for histogram in hooks.histograms]
        modules.update(module for f in functions if f is not None and (module := getattr(f, "__module__", None)))
    return modules


def test_the_runtime_and_exposition_modules_name_no_kind() -> None:
    from probes import KINDS

    kind_modules = _kind_modules()
    assert {"probes.tls", "probes.files", "probes.ca"} <= kind_modules  # the check checks
    found = []
    for name in KIND_AGNOSTIC:
        path = EXPORTER / f"{name}.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in KINDS:
                found.append(f"{path.name}:{node.lineno}: the kind name {node.value!r}")
            imported: list[str] = []
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported = [node.module]
                if node.module == "probes":
                    imported += [f"probes.{alias.name}" for alias in node.names]
            found.extend(
                f"{path.name}:{node.lineno}: imports {module}" for module in imported if module in kind_modules
            )
    assert found == []
