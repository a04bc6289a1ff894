"""Pushes take effect: what an owner pushes to their project's repository becomes what its
transformation DAG runs, on every worker, within a few minutes (the ``project_sync`` DAG runs this
every minute; the bundle is refreshed by the dag-processor every 30 s).

For each project in the registered-projects bundle: the head of ``main`` on the git server is read;
if it is neither the commit running nor one already rejected, that commit is fetched into a temporary
folder and deployed (:func:`.bundle.deploy`): its files replace the project's in the bundle, with the
platform's settings, its dbt packages and a manifest built by ``dbt parse``. The dag-processor parses
the new bundle commit, so the DAG shows the new models as tasks; runs started from then on run the new
code, on any worker (each fetches that bundle commit). A commit dbt cannot parse is recorded as
rejected with dbt's message: the last good version keeps running, the DAG's doc says why at its top,
and this task's log says so too. The next push is tried again.
"""

from __future__ import annotations

import logging

from include.dbt_platform.adapters import git
from include.dbt_platform.transformations import bundle

log = logging.getLogger(__name__)


def sync_projects(only: list[str] | None = None) -> dict[str, str]:
    """Deploy the newest commit of every registered project (or of those named); returns, by
    project, what happened (no secret: commit ids and dbt's parse errors)."""
    host = git.git_host()
    outcomes: dict[str, str] = {}
    for name, project in bundle.registered(host).items():
        if only and name not in only:
            continue
        newest = git.head(project.repository, host)
        rejected = (project.rejected or {}).get("commit")
        if newest is None or newest in (project.deployed, rejected):
            outcomes[name] = f"up to date at {str(project.deployed)[:12]}" + (
                f" (push {rejected[:12]} rejected: it does not parse)" if newest == rejected else ""
            )
            continue
        with git.fetched(project.repository, host, newest) as (tree, commit):
            result, reason = bundle.deploy(host, name, tree, commit)
        if result == "rejected":
            log.warning(
                "project %s: push %s is NOT deployed, dbt cannot parse it; the DAG keeps running %s. %s",
                name, commit[:12], str(project.deployed)[:12], reason,
            )  # fmt: skip
            outcomes[name] = f"kept {str(project.deployed)[:12]}: push {commit[:12]} rejected: {reason}"
        elif result == "deployed":
            log.info("project %s: deployed %s (was %s)", name, commit[:12], str(project.deployed)[:12])
            outcomes[name] = f"deployed {commit[:12]}"
        else:
            outcomes[name] = "skipped (unregistered or changed meanwhile)"
    return outcomes
