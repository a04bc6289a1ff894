"""The git server of the local stack: bare repositories over git's smart-HTTP protocol, and a small
JSON API to create, archive and delete them (what GitHub or GitLab offer), on 127.0.0.1 only.

    python -m devstack.git_server --root DIR --port PORT --password-file FILE

Why smart-HTTP (``git http-backend`` behind this small server) and not ``git daemon``: the daemon has
no authentication (anyone on the machine could push) and cannot create a repository remotely. Here
every request needs HTTP basic auth (user ``dbt-platform``, the password read from a 0600 file), and
repositories are made and removed through an API, which the platform's git adapter calls as it would
call a hosted provider's. Git itself serves clones, fetches and pushes (``git http-backend`` as a CGI
program, one process per request).

Layout: ``<root>/<org>/<name>.git``, one org per Airflow installation (``platform``, ``test``...).
A repository records the saga that created it (``platform.saga`` in its git config); an archived one
is renamed ``<name>.archived-<id>.git``, refuses pushes and records the saga that archived it.

    GET    /api/orgs/<org>/repos                          every repository (archived ones too)
    POST   /api/orgs/<org>/repos            {name, saga_id}  create; the same saga again: 200; else 409
    GET    /api/orgs/<org>/repos/<name>                   one repository, or 404
    DELETE /api/orgs/<org>/repos/<name>?saga_id=<id>      remove it if that saga created it
    POST   /api/orgs/<org>/repos/<name>/archive   {saga_id}  archive (read-only, renamed; idempotent)
    POST   /api/orgs/<org>/repos/<name>/unarchive {saga_id}  undo that saga's archive (idempotent)
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from devstack.git_repositories import NAME, ORG, Repositories

USER = "dbt-platform"
GIT_PATH = re.compile(
    r"^/(?P<org>[a-z][a-z0-9_]{0,62})/(?P<repo>[a-z][a-z0-9_.-]{0,140})\.git(?P<rest>/.*)?$"
)
MAX_BODY = 512 * 1024 * 1024


class Handler(BaseHTTPRequestHandler):
    server_version = "dbt-platform-git/1"
    repos: Repositories
    password: str

    # ------------------------------------------------------------------ plumbing
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        # Method, path and status only: never a header (Authorization carries the password).
        sys.stderr.write(f"{self.log_date_time_string()} {format % args}\n")

    def _authorised(self) -> bool:
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                return False
            return hmac.compare_digest(user, USER) and hmac.compare_digest(password, self.password)
        return False

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> tuple[object, int]:
        """The request body in a temporary file (plain or chunked, as git sends large pushes)."""
        out = tempfile.TemporaryFile()
        total = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_BODY:
                    raise ValueError("request body too large")
                out.write(self.rfile.read(size))
                self.rfile.readline()
        else:
            total = int(self.headers.get("Content-Length") or 0)
            if total > MAX_BODY:
                raise ValueError("request body too large")
            shutil.copyfileobj(_Limited(self.rfile, total), out)
        out.seek(0)
        return out, total

    def _json(self) -> dict:
        body, _ = self._body()
        with body:
            try:
                data = json.loads(body.read() or b"{}")
            except ValueError:
                return {}
        return data if isinstance(data, dict) else {}

    # ------------------------------------------------------------------ routes
    def _handle(self) -> None:
        if not self._authorised():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="dbt-platform git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        url = urlsplit(self.path)
        if url.path.startswith("/api/"):
            self._api(url.path, parse_qs(url.query))
        elif match := GIT_PATH.match(url.path):
            self._git(url.path, url.query, match)
        else:
            self._reply(404, {"error": "not found"})

    do_GET = do_POST = do_DELETE = _handle  # noqa: N815 - http.server's naming

    def _api(self, path: str, query: dict) -> None:
        parts = path.strip("/").split("/")  # api orgs <org> repos [<name> [archive|unarchive]]
        if len(parts) < 4 or parts[1] != "orgs" or parts[3] != "repos" or not ORG.match(parts[2]):
            self._reply(404, {"error": "not found"})
            return
        org, rest = parts[2], parts[4:]
        if rest and not NAME.match(rest[0]):
            self._reply(400, {"error": f"invalid repository name {rest[0]!r}"})
            return
        if not rest and self.command == "GET":
            self._reply(200, {"repositories": self.repos.list(org)})
        elif not rest and self.command == "POST":
            data = self._json()
            name, saga = str(data.get("name") or ""), str(data.get("saga_id") or "")
            if not NAME.match(name) or not saga:
                self._reply(400, {"error": "name (lowercase identifier) and saga_id are required"})
                return
            self._reply(*self.repos.create(org, name, saga))
        elif len(rest) == 1 and self.command == "GET":
            found = self.repos.get(org, rest[0])
            self._reply(200, found) if found else self._reply(404, {"error": f"no repository {rest[0]}"})
        elif len(rest) == 1 and self.command == "DELETE":
            saga = (query.get("saga_id") or [""])[0]
            self._reply(200, self.repos.delete(org, rest[0], saga))
        elif len(rest) == 2 and rest[1] in ("archive", "unarchive") and self.command == "POST":
            saga = str(self._json().get("saga_id") or "")
            if not saga:
                self._reply(400, {"error": "saga_id is required"})
            elif rest[1] == "archive":
                self._reply(*self.repos.archive(org, rest[0], saga))
            else:
                self._reply(200, self.repos.unarchive(org, rest[0], saga))
        else:
            self._reply(405, {"error": "method not allowed"})

    def _git(self, path: str, query: str, match: re.Match) -> None:
        if not (self.repos.root / match["org"] / f"{match['repo']}.git").is_dir():
            self._reply(404, {"error": "no such repository"})
            return
        try:
            body, length = self._body()
        except ValueError as exc:
            self._reply(413, {"error": str(exc)})
            return
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.repos.root),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_PROJECT_ROOT": str(self.repos.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_HTTP_MAX_REQUEST_BUFFER": str(MAX_BODY),
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "REMOTE_USER": USER,
            "REMOTE_ADDR": self.client_address[0],
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(length),
        }
        if encoding := self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = encoding
        if protocol := self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = protocol
        with (
            body,
            subprocess.Popen(
                ["git", "http-backend"], stdin=body, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
            ) as proc,
        ):
            headers: list[tuple[str, str]] = []
            status = 200
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("latin-1").rstrip("\r\n")
                if not line:
                    break
                key, _, value = line.partition(":")
                if key.lower() == "status":
                    status = int(value.strip().split()[0])
                else:
                    headers.append((key, value.strip()))
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.end_headers()
            shutil.copyfileobj(proc.stdout, self.wfile)
            errors = proc.stderr.read().decode(errors="replace").strip()
        if errors:
            sys.stderr.write(f"git http-backend: {errors}\n")


class _Limited:
    """A file-like reader of exactly ``n`` bytes of ``source``."""

    def __init__(self, source, n: int) -> None:
        self.source, self.left = source, n

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        data = self.source.read(self.left if size < 0 else min(size, self.left))
        self.left -= len(data)
        return data


def serve(root: Path, port: int, password: str, host: str = "127.0.0.1") -> None:
    root.mkdir(parents=True, exist_ok=True)
    handler = type("BoundHandler", (Handler,), {"repos": Repositories(root), "password": password})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    sys.stderr.write(f"git server on http://{host}:{port}, repositories in {root}\n")
    sys.stderr.flush()
    server.serve_forever()


# ---------------------------------------------------------------------------- the stack's control


def _pidfile(stack) -> Path:
    return stack.git_dir / "git-server.pid"


def git_password(stack) -> str:
    from devstack.settings import stored_secret

    return stored_secret(stack, "git_password")


def git_up(stack) -> None:
    """Start the stack's git server (repositories under ``.local/git/repositories``)."""
    from devstack.services import start_service

    git_password(stack)
    stack.git_dir.mkdir(parents=True, exist_ok=True)
    start_service(
        "the git server",
        [sys.executable, "-m", "devstack.git_server", "--root", str(stack.git_dir / "repositories"),
         "--port", str(stack.git_port), "--password-file", str(stack.secrets_dir / "git_password")],
        pidfile=_pidfile(stack), logfile=stack.git_dir / "git-server.log", port=stack.git_port,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )  # fmt: skip


def git_down(stack) -> None:
    from devstack.services import stop_service

    stop_service(_pidfile(stack))


def git_running(stack) -> bool:
    from devstack.services import service_pid

    return service_pid(_pidfile(stack)) is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack.git_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--password-file", type=Path, required=True)
    # Loopback unless told otherwise: docker-compose.yaml binds the container's network only.
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    serve(args.root, args.port, args.password_file.read_text().strip(), args.host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
