"""The JSON Schema of a Grafana dashboard, generated from Grafana's own ``@grafana/schema`` package.

There is no Grafana server to import dashboards into, so they are validated offline against
the ``Dashboard`` type that Grafana publishes on npm: ``ts-json-schema-generator`` turns
``dist/types/raw/dashboard/x/types.gen.d.ts`` into a JSON Schema (draft 7).  Both npm
packages are pinned; they are installed once into ``~/.cache/certscope/grafana-schema``
(``CERTSCOPE_CACHE`` moves it) and the generated schema is reused from there.

One deliberate relaxation: Grafana's CUE source declares ``AnnotationQuery`` open
(``...``: "unless datasources have migrated to the target+mapping, they just spread their
query into the base object"), which is where a Prometheus annotation keeps ``expr``,
``titleFormat``, ``tagKeys`` and ``textFormat``.  The TypeScript generated from that CUE
loses the ``...``, so the JSON Schema closes the object; it is reopened here, and only there.
Everything else stays as strict as Grafana's types: unknown keys, wrong enums and wrong
types are errors.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GRAFANA_SCHEMA_VERSION = "13.2.3"
GRAFANA_SCHEMA_PACKAGE = f"@grafana/schema@{GRAFANA_SCHEMA_VERSION}"
GENERATOR_PACKAGE = "ts-json-schema-generator@2.4.0"
TYPES = Path("node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts")
DEFAULTS = Path("node_modules/@grafana/schema/dist/esm/raw/dashboard/x/types.gen.mjs")
GENERATOR = Path("node_modules/.bin/ts-json-schema-generator")
OPEN_DEFINITIONS = ("AnnotationQuery",)


class SchemaUnavailable(RuntimeError):
    """npm is missing, or the install or the generation failed."""


@dataclass(frozen=True)
class DashboardSchema:
    schema: dict[str, Any]  # as generated, strict
    schema_version: int  # defaultDashboard.schemaVersion of the same package
    path: Path

    def for_validation(self) -> dict[str, Any]:
        """The schema with the definitions Grafana's CUE declares open reopened (see the module doc)."""
        relaxed: dict[str, Any] = json.loads(json.dumps(self.schema))
        for name in OPEN_DEFINITIONS:
            relaxed["definitions"][name]["additionalProperties"] = True
        return relaxed


def cache_dir() -> Path:
    root = Path(os.environ.get("CERTSCOPE_CACHE", Path.home() / ".cache" / "certscope"))
    return root / "grafana-schema" / GRAFANA_SCHEMA_VERSION


def _run(args: list[str], cwd: Path, what: str) -> None:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise SchemaUnavailable(f"{what} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")


def load_dashboard_schema(directory: Path | None = None) -> DashboardSchema:
    """Install the packages and generate the schema unless the cache already holds it."""
    directory = directory or cache_dir()
    schema_path = directory / "dashboard.schema.json"
    if not (schema_path.is_file() and (directory / DEFAULTS).is_file()):
        npm = shutil.which("npm")
        if npm is None:
            raise SchemaUnavailable("npm is not on PATH: it fetches @grafana/schema (apt-get install npm)")
        directory.mkdir(parents=True, exist_ok=True)
        if not (directory / "package.json").exists():
            (directory / "package.json").write_text('{"name": "certscope-grafana-schema", "private": true}\n')
        _run(
            [npm, "install", "--no-audit", "--no-fund", "--save-exact", GRAFANA_SCHEMA_PACKAGE, GENERATOR_PACKAGE],
            directory,
            f"npm install {GRAFANA_SCHEMA_PACKAGE} {GENERATOR_PACKAGE}",
        )
        partial = schema_path.with_suffix(".partial")
        _run(
            [
                str(directory / GENERATOR),
                "--no-type-check",
                "--type",
                "Dashboard",
                "--path",
                str(TYPES),
                "-o",
                str(partial),
            ],
            directory,
            "ts-json-schema-generator",
        )
        partial.replace(schema_path)  # atomic: an interrupted run never leaves half a schema behind
    match = re.search(r"schemaVersion:\s*(\d+)", (directory / DEFAULTS).read_text())
    if match is None:
        raise SchemaUnavailable(f"no default schemaVersion in {directory / DEFAULTS}")
    return DashboardSchema(json.loads(schema_path.read_text()), int(match.group(1)), schema_path)
