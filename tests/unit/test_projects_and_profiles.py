"""A dbt project's description (``dbt_project.yml`` + ``platform.yml``), its manifest check and the
profiles dbt gets: rendered without a database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from include.dbt_platform.config import get_settings
from include.dbt_platform.transformations import dbt
from include.dbt_platform.transformations.projects import (
    DbtProjectError,
    check_manifest,
    load_project,
    read_platform_file,
    write_platform_file,
)


@pytest.mark.parametrize("name", ["Upper", "has-dash", "1starts_with_digit", ""])
def test_project_names_must_be_dag_ids(tmp_path: Path, name: str):
    (tmp_path / "dbt_project.yml").write_text(f"name: '{name}'\nprofile: x\n")
    with pytest.raises(DbtProjectError, match="lowercase identifier"):
        load_project(tmp_path)


def test_platform_yml_overrides_defaults(tmp_path: Path):
    (tmp_path / "dbt_project.yml").write_text("name: sales\nprofile: sales_profile\n")
    (tmp_path / "platform.yml").write_text(
        "conn_id: sales_prod\nschema: sales_marts\nschedule: '@hourly'\nowner: ana@example.com\ntags: [sales]\n"
    )
    project = load_project(tmp_path)
    assert (project.conn_id, project.schema, project.schedule, project.owner, project.tags) == (
        "sales_prod",
        "sales_marts",
        "@hourly",
        "ana@example.com",
        ("sales",),
    )
    assert project.profile_name == "sales_profile"


@pytest.mark.parametrize("roles", ["owner:ana@example.com", "[1, 2]", "['']", "{a: b}"])
def test_access_roles_must_be_a_list_of_role_names(tmp_path: Path, roles: str):
    (tmp_path / "dbt_project.yml").write_text("name: sales\nprofile: sales\n")
    (tmp_path / "platform.yml").write_text(f"access_roles: {roles}\n")
    with pytest.raises(DbtProjectError, match="'access_roles' must be a list of Airflow role names"):
        load_project(tmp_path)
    (tmp_path / "platform.yml").write_text("access_roles: ['owner:ana@example.com', Op]\n")
    assert load_project(tmp_path).access_roles == ("owner:ana@example.com", "Op")


def test_platform_file_round_trips_through_its_one_module(tmp_path: Path):
    (tmp_path / "dbt_project.yml").write_text("name: sales\nprofile: sales\n")
    assert read_platform_file(tmp_path) == {}
    write_platform_file(
        tmp_path, {"conn_id": "dbt_sales_prod", "schema": "sales_prod", "tags": ["self-service"]}
    )
    assert read_platform_file(tmp_path)["schema"] == "sales_prod"
    assert load_project(tmp_path).conn_id == "dbt_sales_prod"
    (tmp_path / "platform.yml").write_text("- not\n- a mapping\n")
    with pytest.raises(DbtProjectError, match="must hold a mapping"):
        read_platform_file(tmp_path)


def test_a_missing_or_foreign_manifest_says_how_to_build_it(tmp_path: Path):
    (tmp_path / "dbt_project.yml").write_text("name: sales\nprofile: sales\n")
    project = load_project(tmp_path)
    with pytest.raises(DbtProjectError, match="has no manifest.*make manifests"):
        check_manifest(project)
    project.manifest_path.parent.mkdir()
    project.manifest_path.write_text(json.dumps({"metadata": {"project_name": "other"}}))
    with pytest.raises(DbtProjectError, match="belongs to project 'other'"):
        check_manifest(project)


@pytest.mark.parametrize("package_file", ["packages.yml", "dependencies.yml"])
def test_a_hub_package_is_refused_naming_it_before_dbt_runs(tmp_path: Path, package_file: str):
    from include.dbt_platform.transformations.manifests import build_manifest

    (tmp_path / "dbt_project.yml").write_text(
        "name: sales\nprofile: sales\nversion: '1'\nconfig-version: 2\n"
    )
    (tmp_path / "vendor" / "macros").mkdir(parents=True)
    (tmp_path / package_file).write_text(
        "packages:\n  - local: vendor\n  - package: dbt-labs/dbt_utils\n    version: 1.3.0\n"
        '  - package: calogica/dbt_expectations\n    version: [">=0.10.0", "<0.11.0"]\n'
    )
    with pytest.raises(DbtProjectError) as refused:
        build_manifest(tmp_path)
    message = str(refused.value)
    assert (
        "package dbt-labs/dbt_utils comes from the dbt package hub, which this platform cannot reach"
        in message
    )
    assert "package calogica/dbt_expectations comes from the dbt package hub" in message
    assert "vendor it as a local package" in message and "git URL" in message
    assert "'sales'" in message and "local: vendor" not in message
    assert not (tmp_path / "dbt_packages").exists() and not (tmp_path / "target").exists(), "dbt never ran"


def test_the_parse_profile_has_no_real_credentials(tmp_path: Path):
    (tmp_path / "dbt_project.yml").write_text("name: sales\nprofile: sales_profile\n")
    project = load_project(tmp_path)
    with dbt.parse_profile(project) as profile:
        rendered = yaml.safe_load((profile.profiles_dir / "profiles.yml").read_text())
        folder = profile.profiles_dir
    output = rendered["sales_profile"]["outputs"][profile.target]
    assert rendered["sales_profile"]["target"] == profile.target == "parse"
    assert (output["type"], output["schema"], output["user"]) == ("postgres", "sales", "dbt_parse")
    assert not folder.exists(), "the throwaway profile is removed"


def test_the_airflow_profile_comes_from_the_connection_and_keeps_the_password_out_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("AIRFLOW_CONN_UNIT_SALES", "postgres://sales_rw:s3cr3t-pw@db.example:6543/analytics")
    (tmp_path / "dbt_project.yml").write_text("name: sales\nprofile: sales_profile\n")
    (tmp_path / "platform.yml").write_text("conn_id: unit_sales\nschema: sales_prod\n")
    project = load_project(tmp_path)
    with dbt.airflow_profile(project, get_settings()) as profile:
        text = (profile.profiles_dir / "profiles.yml").read_text()
    output = yaml.safe_load(text)["sales_profile"]["outputs"][profile.target]
    assert (output["host"], output["port"], output["user"]) == ("db.example", 6543, "sales_rw")
    assert (output["dbname"], output["schema"]) == ("analytics", "sales_prod")
    assert output["threads"] == get_settings().dbt_threads
    assert "s3cr3t-pw" not in text, "the password travels as an environment variable"
    assert "s3cr3t-pw" in profile.env.values()
