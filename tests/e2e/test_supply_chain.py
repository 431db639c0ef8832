"""The SBOM command: a CycloneDX document naming certscope and every runtime
dependency at its installed version, and none of the test tools."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def test_sbom_lists_the_runtime_dependencies(tmp_path: Path) -> None:
    output = tmp_path / "sbom.cdx.json"
    venv = Path(sys.executable).parent.parent
    done = subprocess.run(
        [str(ROOT / "scripts" / "sbom"), str(output)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CERTSCOPE_VENV": str(venv)},
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(output.read_text())
    assert document["bomFormat"] == "CycloneDX" and document["specVersion"] == "1.6"
    assert document["metadata"]["component"]["name"] == "certscope"
    components = {c["name"]: c for c in document["components"]}
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for line in declared:
        name = Requirement(line).name.lower()
        assert name in components, f"{name} missing from the SBOM"
        assert components[name]["version"] == version(name)
        assert components[name]["purl"] == f"pkg:pypi/{name}@{version(name)}"
    assert "cffi" in components, "transitive dependencies are listed too"
    for test_tool in ("pytest", "hypothesis", "mypy", "cyclonedx-bom"):
        assert test_tool not in components, f"{test_tool} is a test tool, not a runtime dependency"
