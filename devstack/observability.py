"""The local stack's observability: metrics (StatsD -> exporter -> Prometheus), lineage, traces.

What each Airflow of the stack gets (:func:`observability_env`):

- metrics: Airflow's StatsD client on, sending to the stack's exporter (``devstack/statsd_exporter.py``
  with ``config/statsd_mapping.yml``), which Prometheus scrapes when it is installed
  (Debian's ``prometheus``; ``.ci/run`` installs it);
- lineage: the OpenLineage provider's file transport, ``<state>/lineage/openlineage.jsonl``;
- traces: the platform's trace file, ``<state>/traces/spans.jsonl`` (``include/dbt_platform/config.py``).

Ports come from ``DBT_PLATFORM_PG_PORT`` (the range +50..+69 is this module's): the stack's Airflow
uses +50 (StatsD, UDP), +51 (the exporter's /metrics), +52 (Prometheus); the tests' Airflow the same
plus 10. Other Airflows (the benchmarks') send no metrics. Everything binds 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from include.dbt_platform.config import REPO_ROOT
from include.dbt_platform.sagas import lineage_emission_policy

MAPPING_FILE = REPO_ROOT / "config" / "statsd_mapping.yml"
PORT_BASE = 50  # DBT_PLATFORM_PG_PORT + 50 .. + 69
SLOTS = {0: 0, 100: 10}  # by the target's API port offset: the stack's Airflow, the tests'
LINEAGE_NAMESPACE = "dbt-platform"
PROMETHEUS_STARTS = 3


@dataclass(frozen=True)
class ObservabilityPorts:
    statsd: int
    exporter: int
    prometheus: int


def ports_for(stack, target) -> ObservabilityPorts | None:
    slot = SLOTS.get(target.api_port - stack.airflow_port)
    if slot is None:
        return None
    base = stack.pg_port + PORT_BASE + slot
    return ObservabilityPorts(statsd=base, exporter=base + 1, prometheus=base + 2)


def lineage_file(target) -> Path:
    return target.state_dir / "lineage" / "openlineage.jsonl"


def observability_env(stack, target) -> dict[str, str]:
    """Airflow's settings for metrics and lineage (files and loopback ports: nothing secret). Makes
    the lineage file's folder: the provider's file transport does not, and drops events without it."""
    lineage_file(target).parent.mkdir(parents=True, exist_ok=True)
    transport = {"type": "file", "log_file_path": str(lineage_file(target)), "append": True}
    env = {
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(transport),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": LINEAGE_NAMESPACE,
        # Emit from a bounded thread of the task process, not a fork of it per event (the
        # provider's default): cheaper on a small machine, and a fork of a task runner can leave it
        # stuck on its supervisor's socket.
        "AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD": "True",
        # No task events from the sagas' tasks (include/dbt_platform/sagas.py: lineage_emission_policy).
        "AIRFLOW__OPENLINEAGE__EMISSION_POLICY": lineage_emission_policy(),
    }
    ports = ports_for(stack, target)
    if ports is not None:
        env |= {
            "AIRFLOW__METRICS__STATSD_ON": "True",
            "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
            "AIRFLOW__METRICS__STATSD_PORT": str(ports.statsd),
            "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
        }
    return env


def _run_dir(target) -> Path:
    return target.home / "run"


def _pid(target, name: str) -> int | None:
    path = _run_dir(target) / f"{name}.pid"
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child, and it ended: reaped now
            return None
    except ChildProcessError:
        pass  # started by another process (`make run`): not ours to reap
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def _start(target, name: str, command: list[str]) -> None:
    if _pid(target, name):
        return
    logs = target.home / "component-logs"
    logs.mkdir(parents=True, exist_ok=True)
    _run_dir(target).mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=REPO_ROOT,
        )  # fmt: skip
    (_run_dir(target) / f"{name}.pid").write_text(str(proc.pid))


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def prometheus_running(target) -> bool:
    return _pid(target, "prometheus") is not None


def prometheus_config(ports: ObservabilityPorts) -> str:
    return (
        "# Written by devstack/observability.py: scrapes the stack's StatsD exporter.\n"
        "global:\n  scrape_interval: 5s\n"
        "scrape_configs:\n"
        "  - job_name: airflow\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{ports.exporter}']\n"
    )


def observability_up(stack, target) -> ObservabilityPorts | None:
    """Start the exporter (and Prometheus, when installed) for ``target``; wait until they answer."""
    ports = ports_for(stack, target)
    if ports is None:
        return None
    _start(target, "statsd-exporter", [
        sys.executable, "-m", "devstack.statsd_exporter",
        f"--statsd.listen-udp=127.0.0.1:{ports.statsd}",
        f"--web.listen-address=127.0.0.1:{ports.exporter}",
        f"--statsd.mapping-config={MAPPING_FILE}",
    ])  # fmt: skip
    _wait_for(f"http://127.0.0.1:{ports.exporter}/metrics")
    binary = prometheus_binary()
    if binary:
        home = target.home.parent / "prometheus"
        home.mkdir(parents=True, exist_ok=True)
        (home / "prometheus.yml").write_text(prometheus_config(ports))
        # The stack's ports lie in Linux's ephemeral range: a client's outgoing connection can hold
        # Prometheus' port for a moment (bind: address already in use). Such an exit is retried.
        for attempt in range(1, PROMETHEUS_STARTS + 1):
            _start(target, "prometheus", [
                binary, f"--config.file={home / 'prometheus.yml'}", f"--storage.tsdb.path={home / 'data'}",
                f"--web.listen-address=127.0.0.1:{ports.prometheus}", "--storage.tsdb.retention.time=2d",
            ])  # fmt: skip
            try:
                _wait_for(
                    f"http://127.0.0.1:{ports.prometheus}/-/ready", alive=lambda: _pid(target, "prometheus")
                )
                break
            except RuntimeError as exc:  # Prometheus is a convenience here: the metrics are on /metrics
                observability_down(target, only=("prometheus",))
                if attempt == PROMETHEUS_STARTS or "exited" not in str(exc):
                    print(f"warning: Prometheus did not start ({exc}); see {target.home / 'component-logs'}")
                    break
                time.sleep(2)
    return ports


def _wait_for(url: str, timeout: float = 60, alive=lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            if not alive():
                raise RuntimeError(f"the server of {url} exited") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout:.0f}s") from None
            time.sleep(0.5)


def observability_down(target, timeout: float = 15, only=("prometheus", "statsd-exporter")) -> None:
    for name in only:
        pid = _pid(target, name)
        if pid:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while _pid(target, name) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _pid(target, name):
                os.killpg(pid, signal.SIGKILL)
        (_run_dir(target) / f"{name}.pid").unlink(missing_ok=True)


def describe(stack, target) -> list[str]:
    ports = ports_for(stack, target)
    from include.dbt_platform.config import get_settings

    lines = [
        f"Lineage (OpenLineage, file transport): {lineage_file(target)}",
        f"Traces (OTLP/JSON lines): {get_settings().trace_file}",
    ]
    if ports is None:
        return lines
    lines.append(
        f"Metrics (Prometheus format): http://127.0.0.1:{ports.exporter}/metrics (StatsD udp {ports.statsd})"
    )
    if _pid(target, "prometheus"):
        lines.append(f"Prometheus: http://127.0.0.1:{ports.prometheus}")
    return lines
