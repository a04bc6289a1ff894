"""The git server's repositories on disk (``devstack/git_server.py`` serves them): bare repositories
under ``<root>/<org>/<name>.git``, each marked with the saga that created it, created and removed
atomically (built or doomed under a hidden name, then renamed), archived by renaming.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import uuid
from pathlib import Path

NAME = re.compile(r"^[a-z][a-z0-9_-]{0,99}$")
ORG = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def _git(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def _config(repo: Path, key: str) -> str | None:
    result = subprocess.run(
        ["git", "config", "--file", str(repo / "config"), key], capture_output=True, text=True
    )
    return result.stdout.strip() or None


def archived_name(name: str, saga_id: str) -> str:
    return f"{name}.archived-{saga_id.replace('-', '')[:12]}"


class Repositories:
    """The bare repositories under ``root``; every change under one lock (one server process)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.Lock()
        for stale in root.glob("*/.*.git.*"):  # a create or delete a crash interrupted
            shutil.rmtree(stale, ignore_errors=True)

    def _path(self, org: str, name: str) -> Path:
        return self.root / org / f"{name}.git"

    def describe(self, path: Path) -> dict:
        return {
            "name": path.name.removesuffix(".git"),
            "saga_id": _config(path, "platform.saga"),
            "archived": _config(path, "platform.archivedby") is not None,
            "archived_by": _config(path, "platform.archivedby"),
            "empty": not any((path / "refs" / "heads").iterdir()) and not (path / "packed-refs").exists(),
        }

    def list(self, org: str) -> list[dict]:
        folder = self.root / org
        if not folder.is_dir():
            return []
        return [self.describe(p) for p in sorted(folder.glob("*.git")) if not p.name.startswith(".")]

    def get(self, org: str, name: str) -> dict | None:
        path = self._path(org, name)
        return self.describe(path) if path.is_dir() else None

    def create(self, org: str, name: str, saga_id: str) -> tuple[int, dict]:
        with self.lock:
            path = self._path(org, name)
            if path.is_dir():
                found = self.describe(path)
                return (200, found) if found["saga_id"] == saga_id else (409, {"error": f"{name} exists"})
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
            _git("init", "--bare", "-q", "--initial-branch=main", str(staging))
            for key, value in (
                ("platform.saga", saga_id),
                ("http.receivepack", "true"),
                ("uploadpack.allowFilter", "true"),
                ("uploadpack.allowAnySHA1InWant", "true"),
                ("receive.denyNonFastForwards", "false"),
            ):
                _git("config", "--file", str(staging / "config"), key, value)
            staging.rename(path)
            return 201, self.describe(path)

    def delete(self, org: str, name: str, saga_id: str) -> dict:
        with self.lock:
            path = self._path(org, name)
            if not path.is_dir() or _config(path, "platform.saga") != saga_id:
                return {"deleted": False}
            doomed = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
            path.rename(doomed)  # gone from view at once; the files go next
            shutil.rmtree(doomed)
            return {"deleted": True}

    def archive(self, org: str, name: str, saga_id: str) -> tuple[int, dict]:
        with self.lock:
            path, aside = self._path(org, name), self._path(org, archived_name(name, saga_id))
            if aside.is_dir():
                return 200, self.describe(aside)
            if not path.is_dir():
                return 404, {"error": f"no repository {name}"}
            _git("config", "--file", str(path / "config"), "platform.archivedby", saga_id)
            _git("config", "--file", str(path / "config"), "http.receivepack", "false")
            path.rename(aside)
            return 200, self.describe(aside)

    def unarchive(self, org: str, name: str, saga_id: str) -> dict:
        with self.lock:
            path, aside = self._path(org, name), self._path(org, archived_name(name, saga_id))
            if not aside.is_dir() or path.exists() or _config(aside, "platform.archivedby") != saga_id:
                return {"unarchived": False}
            _git("config", "--file", str(aside / "config"), "--unset", "platform.archivedby")
            _git("config", "--file", str(aside / "config"), "http.receivepack", "true")
            aside.rename(path)
            return {"unarchived": True}
