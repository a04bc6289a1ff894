"""A small SMTP server on loopback for the notification tests: it speaks enough of the protocol for
smtplib, refuses ``MAIL FROM`` with a chosen reply for the first N sessions, then accepts, and keeps
what it received. Real sockets, a real client: only the mail store is a list."""

from __future__ import annotations

import socketserver
import threading
from contextlib import contextmanager


class _Handler(socketserver.StreamRequestHandler):
    def reply(self, line: str) -> None:
        self.wfile.write((line + "\r\n").encode())

    def handle(self) -> None:
        server: SmtpServer = self.server  # type: ignore[assignment]
        with server.lock:
            server.sessions += 1
            refuse = server.sessions <= server.refuse_sessions
        self.reply("220 test-smtp ready")
        data: list[str] | None = None
        for raw in self.rfile:
            line = raw.decode(errors="replace").rstrip("\r\n")
            if data is not None:
                if line == ".":
                    server.received.append("\n".join(data))
                    data = None
                    self.reply("250 queued")
                else:
                    data.append(line)
                continue
            verb = line.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 test-smtp")
            elif verb == "MAIL":
                self.reply(server.refusal if refuse else "250 ok")
            elif verb == "RCPT":
                self.reply("250 ok")
            elif verb == "DATA":
                data = []
                self.reply("354 go ahead")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("250 ok")


class SmtpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, refuse_sessions: int, refusal: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.refuse_sessions, self.refusal = refuse_sessions, refusal
        self.sessions = 0
        self.received: list[str] = []
        self.lock = threading.Lock()


@contextmanager
def smtp_server(refuse_sessions: int = 0, refusal: str = "421 try again later"):
    server = SmtpServer(refuse_sessions, refusal)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
