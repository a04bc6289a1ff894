"""Git adapter: projects' repositories on a git server, and the commits the platform pushes to them.

:class:`GitHost` is the one interface for where repositories live: create one, find it, archive it,
delete it, each marked with the saga that made it (a removal checks that mark, like every other
compensation). One implementation today, :class:`LoopbackGitServer` (the local stack's git server,
``devstack/git_server.py``, whose API has the shape of a hosted provider's); a GitHub or GitLab host
is one more class with the same methods, chosen by the ``provider`` extra of the git connection.

Moving commits (clone, fetch, push) is plain git over HTTP(S), the same with any host. The host's
credentials reach git through a credential helper set in the git process's own environment: never in
a URL, an argument list, a ``.git/config`` or the task's environment. Every working copy is a
temporary folder, removed when the call ends: nothing of a repository stays on this machine's disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlsplit

from include.dbt_platform.boundaries import boundary
from include.dbt_platform.errors import (
    Conflict,
    PermanentError,
    PermissionDenied,
    TransientError,
    Unavailable,
)

SERVICE = "git"  # the circuit breaker's name for the git server
BRANCH = "main"
AUTHOR = ("-c", "user.name=dbt-platform", "-c", "user.email=dbt-platform@localhost")


@dataclass(frozen=True)
class Repository:
    name: str
    saga_id: str | None  # the saga that created it
    archived: bool
    clone_url: str


class GitHost(Protocol):
    def clone_url(self, name: str) -> str: ...
    def credentials(self) -> tuple[str, str]: ...
    def repository(self, name: str) -> Repository | None: ...
    def repositories(self) -> list[Repository]: ...
    def create_repository(self, name: str, saga_id: str) -> Repository: ...
    def delete_repository(self, name: str, saga_id: str) -> bool: ...
    def archive_repository(self, name: str, saga_id: str) -> Repository | None: ...
    def unarchive_repository(self, name: str, saga_id: str) -> bool: ...


class LoopbackGitServer:
    """The local stack's git server: ``base_url`` is ``http://127.0.0.1:<port>/<org>``."""

    def __init__(self, base_url: str, user: str, password: str) -> None:
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        self.org = parts.path.strip("/")
        self.api = f"{parts.scheme}://{parts.netloc}/api/orgs/{self.org}/repos"
        self.user, self._password = user, password

    def clone_url(self, name: str) -> str:
        return f"{self.base_url}/{name}.git"

    def credentials(self) -> tuple[str, str]:
        return self.user, self._password

    def _call(self, method: str, path: str = "", body: dict | None = None) -> tuple[int, dict]:
        token = b64encode(f"{self.user}:{self._password}".encode()).decode()
        request = urllib.request.Request(
            self.api + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            status, detail = exc.code, exc.read().decode(errors="replace")[:300]
            if status in (401, 403):
                raise PermissionDenied(f"git server refused the platform's credentials ({status})") from None
            if status >= 500:
                raise Unavailable(SERVICE, f"HTTP {status}: {detail}") from None
            return status, json.loads(detail) if detail.startswith("{") else {"error": detail}
        except (urllib.error.URLError, OSError) as exc:
            raise Unavailable(SERVICE, str(getattr(exc, "reason", exc))) from None

    def _repository(self, found: dict) -> Repository:
        return Repository(
            found["name"], found.get("saga_id"), bool(found.get("archived")), self.clone_url(found["name"])
        )

    def repository(self, name: str) -> Repository | None:
        status, found = self._call("GET", f"/{quote(name)}")
        return self._repository(found) if status == 200 else None

    def repositories(self) -> list[Repository]:
        _, found = self._call("GET")
        return [self._repository(r) for r in found.get("repositories", [])]

    def create_repository(self, name: str, saga_id: str) -> Repository:
        status, found = self._call("POST", "", {"name": name, "saga_id": saga_id})
        if status == 409:
            raise Conflict(f"a repository named '{name}' already exists")
        if status not in (200, 201):
            raise PermanentError(f"git server: creating repository '{name}' failed: {found}")
        return self._repository(found)

    def delete_repository(self, name: str, saga_id: str) -> bool:
        _, found = self._call("DELETE", f"/{quote(name)}?saga_id={quote(saga_id)}")
        return bool(found.get("deleted"))

    def archive_repository(self, name: str, saga_id: str) -> Repository | None:
        status, found = self._call("POST", f"/{quote(name)}/archive", {"saga_id": saga_id})
        if status == 404:
            return None  # no such repository (nor an archive of it by this saga)
        if status != 200:
            raise PermanentError(f"git server: archiving repository '{name}' failed: {found}")
        return self._repository(found)

    def unarchive_repository(self, name: str, saga_id: str) -> bool:
        _, found = self._call("POST", f"/{quote(name)}/unarchive", {"saga_id": saga_id})
        return bool(found.get("unarchived"))


def git_host(conn_id: str | None = None) -> GitHost:
    """The git host of the connection the settings name (type ``git``: its host is the base URL the
    repositories are under; login and password the platform's credentials)."""
    from airflow.sdk import BaseHook

    from include.dbt_platform.config import get_settings

    conn = BaseHook.get_connection(conn_id or get_settings().git_conn_id)
    provider = (conn.extra_dejson or {}).get("provider", "loopback")
    if provider != "loopback":
        raise PermanentError(f"git provider {provider!r} is not supported (only 'loopback' is)")
    return LoopbackGitServer(conn.host, conn.login or "dbt-platform", conn.password or "")


# ---------------------------------------------------------------------------- moving commits


def _environment(host: GitHost | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_CONFIG", "DBT_PLATFORM_GIT_"))}
    env.update({"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1"})
    if host is not None:
        user, password = host.credentials()
        env.update(
            {
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": "credential.helper",
                "GIT_CONFIG_VALUE_0": '!f() { cat >/dev/null; echo "username=$DBT_PLATFORM_GIT_USER"; '
                'echo "password=$DBT_PLATFORM_GIT_PASSWORD"; }; f',
                "DBT_PLATFORM_GIT_USER": user,
                "DBT_PLATFORM_GIT_PASSWORD": password,
            }
        )
    return env


def run_git(*args: str, cwd: Path | None = None, host: GitHost | None = None) -> str:
    """``git <args>``; its failures in the platform's taxonomy (the server down is transient)."""
    result = subprocess.run(
        ["git", *AUTHOR, "-c", f"init.defaultBranch={BRANCH}", *args],
        cwd=cwd, env=_environment(host), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip()
        lowered = message.lower()
        if "could not connect" in lowered or "connection refused" in lowered or "timed out" in lowered:
            raise Unavailable(SERVICE, message.splitlines()[-1])
        if "authentication failed" in lowered or "403" in lowered:
            raise PermissionDenied(f"git: {message.splitlines()[-1]}")
        if "the requested url returned error: 5" in lowered:
            raise Unavailable(SERVICE, message.splitlines()[-1])
        raise PermanentError(f"git {args[0]} failed: {message[-500:]}")
    return result.stdout.strip()


def head(url: str, host: GitHost, branch: str = BRANCH) -> str | None:
    """The commit ``branch`` points at on the server (None: no such branch, e.g. an empty repository)."""
    out = run_git("ls-remote", url, f"refs/heads/{branch}", host=host)
    return out.split()[0] if out else None


def fetch(url: str, host: GitHost, dest: Path, commit: str | None = None) -> str:
    """The tree of ``commit`` (default: the branch's head) into ``dest``, without history; its sha."""
    dest.mkdir(parents=True, exist_ok=True)
    run_git("init", "-q", cwd=dest)
    run_git("fetch", "-q", "--depth", "1", url, commit or BRANCH, cwd=dest, host=host)
    run_git("checkout", "-q", "FETCH_HEAD", cwd=dest)
    return run_git("rev-parse", "HEAD", cwd=dest)


@contextmanager
def fetched(url: str, host: GitHost, commit: str | None = None) -> Iterator[tuple[Path, str]]:
    """A temporary working tree of ``commit`` (default: the branch's head) and its sha."""
    with tempfile.TemporaryDirectory(prefix="dbt-platform-git-") as folder:
        tree = Path(folder) / "tree"
        sha = fetch(url, host, tree, commit)
        yield tree, sha


def update(url: str, host: GitHost, change: Callable[[Path], str | None], attempts: int = 6) -> str | None:
    """Commit what ``change`` does to a fresh working tree of the branch and push it.

    ``change(tree)`` edits the tree and returns the commit message, or None when there is nothing to
    do. If someone pushed meanwhile, the push is refused and it all starts again from their commit,
    so ``change`` must decide from the tree it is given. Returns the new commit's sha, or None.
    """
    for _ in range(attempts):
        with tempfile.TemporaryDirectory(prefix="dbt-platform-git-") as folder:
            tree = Path(folder) / "tree"
            tree.mkdir()
            run_git("init", "-q", cwd=tree)
            if head(url, host) is not None:
                run_git("fetch", "-q", "--depth", "1", url, BRANCH, cwd=tree, host=host)
                run_git("checkout", "-q", "-B", BRANCH, "FETCH_HEAD", cwd=tree)
            message = change(tree)
            if message is None:
                return None
            run_git("add", "-A", "-f", ".", cwd=tree)
            if not run_git("status", "--porcelain", cwd=tree):
                return None
            run_git("commit", "-q", "-m", message, cwd=tree)
            try:
                run_git("push", "-q", url, f"HEAD:refs/heads/{BRANCH}", cwd=tree, host=host)
            except PermanentError as exc:
                if "rejected" in str(exc) or "fetch first" in str(exc) or "non-fast-forward" in str(exc):
                    continue  # someone pushed first: start again from their commit
                raise
            return run_git("rev-parse", "HEAD", cwd=tree)
    raise TransientError(f"{url}: others kept pushing while the platform tried to; try again")


# ---------------------------------------------------------------------------- a project's repository


def publish_repository(
    host: GitHost, name: str, files: dict[str, str], saga_id: str
) -> tuple[Repository, str]:
    """A repository ``name`` on the host, marked with the saga, holding ``files`` as its first commit.
    Idempotent for the saga (a retry finds its repository and, once pushed, its commit); a
    repository another saga or a person made is a Conflict. Returns it and its branch's head."""
    repo = host.create_repository(name, saga_id)
    boundary("repository created on the git server, scaffold not yet pushed")
    existing = head(repo.clone_url, host)
    if existing is not None:
        return repo, existing

    def write(tree: Path) -> str:
        for rel, content in files.items():
            target = tree / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        return "Initial dbt project scaffold (dbt platform)"

    return repo, update(repo.clone_url, host, write) or head(repo.clone_url, host)


def copy_tree(source: Path, dest: Path) -> None:
    """``source``'s files into ``dest`` (emptied first), without any ``.git`` folder."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(".git"), symlinks=True)
