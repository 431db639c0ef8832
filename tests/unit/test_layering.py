"""The layers: ``probes/`` (kinds, parsing, checking) never imports ``exporter/`` (the
daemon: scheduling, store, exposition), so a kind can be used and tested alone."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PROBES = Path(__file__).resolve().parents[2] / "probes"


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
# (probes.metrics, probes.kinds.KINDS), never a kind (docs/architecture.md).
KIND_AGNOSTIC = ("scheduler", "store", "collector", "exposition", "tracing", "web", "crossprobe", "status_page")
EXPORTER = PROBES.parent / "exporter"


def _kind_modules() -> set[str]:
    """The modules a kind is made of: its probe and settings classes, and where its
    hooks (renders, tallies, histograms, span attributes) and so its fact types live."""
    from probes.kinds import KINDS

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
    from probes.kinds import KINDS

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


# -- what a files worker process imports ------------------------------------------------

OTHER_KINDS = ("probes.tls", "probes.ocsp", "probes.crl", "probes.kubernetes", "probes.ca")


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    listing = "import json, sys; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\n{listing}"],
        capture_output=True,
        text=True,
        check=True,
        cwd=PROBES.parent,
        timeout=60,
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_a_files_worker_imports_no_other_kind_and_nothing_of_the_daemon() -> None:
    # A spawned worker (probes.files_workers) unpickles its task, which imports
    # probes.files; every module more is paid in each worker before its first file.
    modules = _modules_after("import probes.files_workers, probes.files")
    assert "probes.files" in modules  # the check checks
    assert sorted(m for m in modules if m in OTHER_KINDS or m.split(".")[0] == "exporter") == []


def test_the_certscope_commands_script_imports_nothing_of_the_daemon_in_a_worker() -> None:
    # A spawned worker runs its parent's main script again as __mp_main__ (what
    # multiprocessing.spawn does with runpy), before its first task.  Under the
    # certscope command that is the script pip wrote for the entry point.
    script = Path(sys.executable).parent / "certscope"
    assert script.is_file(), f"{script} missing: the project is not installed in this virtualenv"
    modules = _modules_after(f"import runpy; runpy.run_path({str(script)!r}, run_name='__mp_main__')")
    assert "exporter.__main__" in modules  # the script ran
    assert "exporter.cli" not in modules
    assert sorted(m for m in modules if m.startswith("probes.")) == ["probes.version"]  # exporter.__version__
