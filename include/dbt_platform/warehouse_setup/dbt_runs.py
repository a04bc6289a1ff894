"""What ``warehouse_setup`` asks of dbt: which seeds and models, which seeds changed, running them."""

from __future__ import annotations

import hashlib
import json
import tempfile
from functools import lru_cache
from pathlib import Path

from include.dbt_platform.config import Settings, get_settings
from include.dbt_platform.transformations import dbt
from include.dbt_platform.transformations.projects import DbtProject, check_manifest
from include.dbt_platform.warehouse_setup import WarehouseSetupError
from include.dbt_platform.warehouse_setup.sql import relations


@lru_cache(maxsize=8)
def _manifest(proj: DbtProject, mtime_ns: int) -> dict:
    return check_manifest(proj)


def _manifest_nodes(proj: DbtProject, resource_type: str) -> dict[str, dict]:
    # A step asks several questions of one manifest; read it once per version of the file.
    manifest = _manifest(proj, proj.manifest_path.stat().st_mtime_ns if proj.manifest_path.exists() else 0)
    return {
        uid: node
        for uid, node in manifest.get("nodes", {}).items()
        if node.get("resource_type") == resource_type and node.get("package_name") == proj.name
    }


def seed_files(proj: DbtProject) -> dict[str, Path]:
    return {
        node["name"]: proj.path / node["original_file_path"]
        for node in _manifest_nodes(proj, "seed").values()
    }


def missing_seed_files(proj: DbtProject) -> list[str]:
    return [
        f"{name} ({path.relative_to(proj.path)})"
        for name, path in seed_files(proj).items()
        if not path.exists()
    ]


def foundation_selector(proj: DbtProject) -> str:
    models = _manifest_nodes(proj, "model").values()
    if any("foundation" in (m.get("tags") or []) for m in models):
        return "tag:foundation"
    return "path:models/staging"


def configuration_args(proj: DbtProject) -> list[str]:
    models = _manifest_nodes(proj, "model").values()
    if any("configuration" in (m.get("tags") or []) for m in models):
        return ["--select", "tag:configuration"]
    return ["--exclude", foundation_selector(proj)]


def run_dbt(proj: DbtProject, args: list[str], settings: Settings | None = None) -> dbt.DbtOutcome:
    """dbt with the project's own Airflow connection; target and logs in a throwaway folder."""
    with dbt.airflow_profile(proj, settings) as profile, tempfile.TemporaryDirectory() as work:
        return dbt.run(proj, args, profile, target_path=Path(work) / "target", log_path=Path(work) / "logs")


def compile_check(proj: DbtProject) -> None:
    outcome = run_dbt(proj, ["parse"])
    if not outcome.success:
        first = (outcome.error or "").splitlines()[:6]
        raise WarehouseSetupError(
            f"dbt cannot compile project {proj.name!r}: "
            + " ".join(line.strip() for line in first)
            + f". Fix the model or YAML it names, then re-run (locally: dbt parse --project-dir {proj.path})."
        )


# ----------------------------------------------------------------------------------- seeds


def seed_state_file(proj: DbtProject, settings: Settings | None = None) -> Path:
    settings = settings or get_settings()
    return settings.state_dir / "warehouse_setup" / f"{proj.name}.{proj.schema}.seeds.json"


def seed_checksums(proj: DbtProject) -> dict[str, str]:
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in seed_files(proj).items()}


def seed_schemas(proj: DbtProject) -> dict[str, str]:
    """Seed name -> the schema its table lands in (dbt's default generate_schema_name)."""
    found = {}
    for node in _manifest_nodes(proj, "seed").values():
        custom = (node.get("config") or {}).get("schema")
        found[node["name"]] = f"{proj.schema}_{custom}" if custom else proj.schema
    return found


def changed_seeds(proj: DbtProject, pg) -> list[str]:
    """Seeds whose file changed since they were last loaded here, or whose table is missing."""
    state_file = seed_state_file(proj)
    loaded = json.loads(state_file.read_text()) if state_file.exists() else {}
    schemas = seed_schemas(proj)
    found = {schema: relations(pg, schema) for schema in set(schemas.values())}
    present = {name for name, schema in schemas.items() if name in found[schema]}
    return sorted(
        name
        for name, digest in seed_checksums(proj).items()
        if loaded.get(name) != digest or name not in present
    )


def remember_seeds(proj: DbtProject, names: list[str]) -> None:
    state_file = seed_state_file(proj)
    state_file.parent.mkdir(parents=True, exist_ok=True)
    loaded = json.loads(state_file.read_text()) if state_file.exists() else {}
    current = seed_checksums(proj)
    loaded.update({n: current[n] for n in names})
    state_file.write_text(json.dumps(loaded, indent=1, sort_keys=True))
