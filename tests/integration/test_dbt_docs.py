"""A project's dbt docs: the manifest build stores no page, and the page put together from the
manifest shows the project in a real browser and runs nothing an owner wrote (real dbt, chromium)."""

from __future__ import annotations

import json
from pathlib import Path

from include.dbt_platform.config import get_settings
from include.dbt_platform.transformations.manifests import docs_page
from include.dbt_platform.transformations.projects import load_project
from tests.browser import chromium
from tests.harness import build_manifest

# What an owner may write in a description; the docs page must show it, never run it.
HOSTILE = "Orders. </script><script>window.ownedByDescription = 1</script><b>bold</b>"


def write_project(folder: Path, name: str) -> Path:
    project = folder / name
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text(
        f"name: {name}\nversion: '1.0.0'\nconfig-version: 2\nprofile: {name}\n"
    )
    (project / "models" / "orders.sql").write_text("select 1 as order_id\n")
    (project / "models" / "schema.yml").write_text(
        "version: 2\nmodels:\n  - name: orders\n    description: " + json.dumps(HOSTILE) + "\n"
        "    columns:\n      - name: order_id\n        description: The order.\n"
    )
    return project


def test_the_build_stores_the_manifest_and_no_docs_page(projects_dir: Path):
    path = write_project(projects_dir, "docs_project")
    build_manifest(path)
    stored = {p.name for p in (path / "target").iterdir()}
    assert "manifest.json" in stored and not stored & {"static_index.html", "index.html", "catalog.json"}, (
        stored
    )


def test_the_page_shows_the_projects_models_and_runs_nothing_an_owner_wrote(projects_dir: Path):
    path = write_project(projects_dir, "docs_project")
    build_manifest(path)
    page = docs_page(load_project(path, get_settings()))
    assert page is not None and "<title>dbt Docs</title>" in page
    assert "model.docs_project.orders" in page
    assert "</script><script>window.ownedByDescription" not in page, "the description closed the script"
    assert "INLINE DATA" not in page and "schemas.getdbt.com/dbt/catalog/v1.json" in page, "both inlined"

    (tmp := path / "docs.html").write_text(page)
    with chromium() as browser:
        tab = browser.new_page()
        tab.goto(tmp.as_uri())
        tab.wait_for_function("document.body.innerText.includes('docs_project')", timeout=60_000)
        # The model's page shows the description as text; the script in it never ran.
        tab.evaluate("window.location.hash = '#!/model/model.docs_project.orders'")
        tab.wait_for_function("document.body.innerText.includes('window.ownedByDescription')", timeout=60_000)
        assert "select 1 as order_id" in tab.evaluate("document.body.innerText")
        assert tab.evaluate("window.ownedByDescription") is None, "a description ran as script"


def test_no_page_before_the_manifest_is_built(projects_dir: Path):
    path = write_project(projects_dir, "docs_project")
    assert docs_page(load_project(path, get_settings())) is None
