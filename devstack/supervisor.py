"""A process supervisor for the distributed profile: what ``restart: always`` is in docker-compose.yaml
and a Deployment is on Kubernetes. ``python -m devstack.supervisor SPEC.json`` runs detached.

The spec (JSON, 0600, written by devstack/distributed.py) names programs: command, environment,
working directory, niceness, log file. Each program runs in its own session (so it can be killed
as a whole process group, as a host dies), its pid in ``<run_dir>/<name>.pid``. When one exits,
for any reason, it is started again after a back-off (1 s, doubling to 15 s; back to 1 s once it
ran a minute), and the supervisor's log says so. A file ``<run_dir>/<name>.hold`` keeps an exited
program down until it is removed (``make chaos`` holds a killed component down to show that the
others carry on without it). SIGTERM stops every program (SIGTERM to each group, SIGKILL after
the grace period), then the supervisor.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

GRACE_SECONDS = 30.0
BACKOFF_FIRST, BACKOFF_MAX, HEALTHY_AFTER = 1.0, 15.0, 60.0


@dataclass
class Program:
    name: str
    command: list[str]
    env: dict[str, str]
    cwd: str
    log: str
    niceness: int = 0
    proc: subprocess.Popen | None = None
    started: float = 0.0
    backoff: float = BACKOFF_FIRST
    next_start: float = 0.0
    restarts: int = field(default=0)


def _lower_priority(niceness: int) -> None:
    from devstack.airflow import _lower_priority as lower

    lower(niceness)


class Supervisor:
    def __init__(self, spec: dict) -> None:
        self.run_dir = Path(spec["run_dir"])
        self.programs = [Program(**p) for p in spec["programs"]]
        self.stopping = False
        self.log = open(spec["log"], "a", buffering=1)  # noqa: SIM115 - open for the supervisor's life

    def say(self, message: str) -> None:
        self.log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} supervisor: {message}\n")

    def pidfile(self, program: Program) -> Path:
        return self.run_dir / f"{program.name}.pid"

    def held(self, program: Program) -> bool:
        return (self.run_dir / f"{program.name}.hold").exists()

    def start(self, program: Program) -> None:
        Path(program.cwd).mkdir(parents=True, exist_ok=True)
        with open(program.log, "ab") as log:
            program.proc = subprocess.Popen(
                program.command,
                env=program.env,
                cwd=program.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=(lambda n=program.niceness: _lower_priority(n)) if program.niceness else None,  # noqa: PLW1509
            )
        program.started = time.monotonic()
        self.pidfile(program).write_text(str(program.proc.pid))

    def reap(self, program: Program) -> None:
        code = program.proc.poll() if program.proc else None
        if program.proc is None or code is None:
            return
        ran = time.monotonic() - program.started
        program.proc = None
        self.pidfile(program).unlink(missing_ok=True)
        if self.stopping:
            return
        if ran >= HEALTHY_AFTER:
            program.backoff = BACKOFF_FIRST
        program.next_start = time.monotonic() + program.backoff
        self.say(
            f"{program.name} exited (code {code}) after {ran:.0f}s; restarting in {program.backoff:.0f}s"
        )
        program.backoff = min(program.backoff * 2, BACKOFF_MAX)
        program.restarts += 1

    def loop(self) -> None:
        for program in self.programs:
            self.start(program)
        self.say("started " + ", ".join(p.name for p in self.programs))
        while not self.stopping:
            for program in self.programs:
                self.reap(program)
                if program.proc is None and not self.stopping and time.monotonic() >= program.next_start:
                    if self.held(program):
                        continue
                    self.start(program)
                    self.say(
                        f"{program.name} started again (pid {program.proc.pid}, restart {program.restarts})"
                    )
            time.sleep(0.5)
        self.stop_all()

    def stop_all(self) -> None:
        running = [p for p in self.programs if p.proc and p.proc.poll() is None]
        for program in running:
            try:
                os.killpg(program.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + GRACE_SECONDS
        while time.monotonic() < deadline and any(p.proc.poll() is None for p in running):
            time.sleep(0.2)
        for program in running:
            try:
                os.killpg(program.proc.pid, signal.SIGKILL)  # the group: task processes too
            except ProcessLookupError:
                pass
            program.proc.wait()
        for program in self.programs:
            self.pidfile(program).unlink(missing_ok=True)
        self.say("stopped")

    def request_stop(self, *_: object) -> None:
        self.stopping = True


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    supervisor = Supervisor(spec)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    try:
        supervisor.loop()
    finally:
        (supervisor.run_dir / "supervisor.pid").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
