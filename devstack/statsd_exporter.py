"""StatsD in, Prometheus out: the local stack's stand-in for ``statsd_exporter``.

Airflow (and the saga, through Airflow's metrics layer) sends StatsD over UDP; Prometheus scrapes
``/metrics``. Prometheus' own ``statsd_exporter`` does this job everywhere it can be installed (the
Compose file runs ``prom/statsd-exporter``), but it is neither packaged by Debian 12 nor on PyPI,
and its release binary is a download from GitHub: so the native stack (``make run``, the tests)
runs this module, which reads the *same* mapping file (``config/statsd_mapping.yml``) with the same
meaning for what that file uses:

- ``mappings``: ``match`` (glob: ``*`` is one dot-separated part, ``$1``/``${1}`` refer to it; or
  ``match_type: regex``), ``match_metric_type`` (``counter``, ``gauge``, ``observer``), ``name``,
  ``labels``, ``action: drop``, ``observer_type`` (``histogram`` with ``histogram_options.buckets``,
  or ``summary``: exposed with its sum and count only); the first rule that matches wins;
- ``defaults``: ``observer_type``, ``histogram_options``, ``match_type``;
- StatsD lines ``name:value|c|g|ms|h|d[|@rate][|#tag:value,...]`` (several per packet); ``ms``
  timers become seconds, gauges take ``+``/``-`` deltas, DogStatsD tags become labels (a mapping's
  own labels win);
- a metric no rule matches keeps its name with every character other than ``[a-zA-Z0-9_]`` made
  ``_``, without labels; a sample whose name is already taken by another type or other label names
  is dropped and counted (``statsd_exporter_conflicts_total``), as statsd_exporter does.

    python -m devstack.statsd_exporter --statsd.listen-udp=127.0.0.1:9125 \
        --web.listen-address=127.0.0.1:9102 --statsd.mapping-config=config/statsd_mapping.yml

Both listeners must be loopback addresses (the stack's rule); SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import math
import re
import signal
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
OBSERVER_TYPES = {"ms": "observer", "h": "observer", "d": "observer", "c": "counter", "g": "gauge"}


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern
    metric_type: str | None
    name: str
    labels: dict[str, str]
    drop: bool
    observer_type: str
    buckets: tuple[float, ...]


def _glob(match: str) -> re.Pattern:
    return re.compile(
        "^" + r"\.".join("([^.]+)" if p == "*" else re.escape(p) for p in match.split(".")) + "$"
    )


def load_rules(path: Path) -> list[Rule]:
    config = yaml.safe_load(path.read_text()) or {}
    defaults = config.get("defaults") or {}
    rules = []
    for m in config.get("mappings") or []:
        kind = m.get("match_type", defaults.get("match_type", "glob"))
        options = m.get("histogram_options") or defaults.get("histogram_options") or {}
        rules.append(
            Rule(
                pattern=re.compile(m["match"]) if kind == "regex" else _glob(m["match"]),
                metric_type=m.get("match_metric_type"),
                name=m.get("name", ""),
                labels={str(k): str(v) for k, v in (m.get("labels") or {}).items()},
                drop=m.get("action") == "drop",
                observer_type=m.get("observer_type", defaults.get("observer_type", "summary")),
                buckets=tuple(float(b) for b in options.get("buckets") or DEFAULT_BUCKETS),
            )
        )
    return rules


def _expand(template: str, groups: tuple[str, ...]) -> str:
    return re.sub(r"\$\{(\d+)\}|\$(\d+)", lambda m: groups[int(m.group(1) or m.group(2)) - 1], template)


def escape_name(name: str) -> str:
    escaped = re.sub(r"[^a-zA-Z0-9_]", "_", name)
    return f"_{escaped}" if escaped[:1].isdigit() else escaped


@dataclass
class Family:
    kind: str  # counter, gauge, histogram, summary
    label_names: tuple[str, ...]
    buckets: tuple[float, ...] = ()
    values: dict[tuple[str, ...], list[float]] = field(default_factory=dict)


class Registry:
    """Every metric received, mapped, with its values (counts, sums, bucket counts)."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self.families: dict[str, Family] = {}
        self.lock = threading.Lock()
        self.samples = 0
        self.conflicts = 0

    def map(self, name: str, metric_type: str) -> tuple[str, dict[str, str], Rule | None] | None:
        for rule in self.rules:
            if rule.metric_type and rule.metric_type != metric_type:
                continue
            match = rule.pattern.match(name)
            if match:
                if rule.drop:
                    return None
                groups = match.groups()
                return (
                    _expand(rule.name, groups),
                    {k: _expand(v, groups) for k, v in rule.labels.items()},
                    rule,
                )
        return escape_name(name), {}, None

    def observe(
        self, name: str, value: float, statsd_type: str, tags: dict[str, str], relative: bool = False
    ) -> None:
        metric_type = OBSERVER_TYPES.get(statsd_type)
        if metric_type is None:
            return  # sets ("s") and unknown types are ignored
        mapped = self.map(name, metric_type)
        if mapped is None:
            return
        prom_name, labels, rule = mapped
        labels = {**{escape_name(k): v for k, v in tags.items()}, **labels}
        kind = metric_type
        if metric_type == "observer":
            kind = rule.observer_type if rule else "summary"
            if statsd_type == "ms":
                value /= 1000.0
        buckets = (
            rule.buckets if rule and kind == "histogram" else (DEFAULT_BUCKETS if kind == "histogram" else ())
        )
        label_names = tuple(sorted(labels))
        key = tuple(labels[n] for n in label_names)
        with self.lock:
            self.samples += 1
            family = self.families.setdefault(prom_name, Family(kind, label_names, buckets))
            if family.kind != kind or family.label_names != label_names:
                self.conflicts += 1
                return
            if kind == "counter":
                family.values.setdefault(key, [0.0])[0] += value
            elif kind == "gauge":
                family.values[key] = [value + (family.values.get(key, [0.0])[0] if relative else 0.0)]
            else:  # histogram or summary: [count, sum, bucket counts...]
                state = family.values.setdefault(key, [0.0, 0.0] + [0.0] * len(family.buckets))
                state[0] += 1
                state[1] += value
                for i, bound in enumerate(family.buckets):
                    if value <= bound:
                        state[2 + i] += 1

    def exposition(self) -> str:
        lines = []
        with self.lock:
            for name in sorted(self.families):
                family = self.families[name]
                lines.append(f"# TYPE {name} {family.kind}")
                for key, state in sorted(family.values.items()):
                    labels = dict(zip(family.label_names, key, strict=True))
                    if family.kind in ("counter", "gauge"):
                        lines.append(f"{name}{_labels(labels)} {_number(state[0])}")
                        continue
                    if family.kind == "histogram":
                        for bound, count in zip(family.buckets, state[2:], strict=True):
                            lines.append(
                                f"{name}_bucket{_labels({**labels, 'le': _number(bound)})} {_number(count)}"
                            )
                        lines.append(f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {_number(state[0])}")
                    lines.append(f"{name}_sum{_labels(labels)} {_number(state[1])}")
                    lines.append(f"{name}_count{_labels(labels)} {_number(state[0])}")
            lines.append("# TYPE statsd_exporter_samples_total counter")
            lines.append(f"statsd_exporter_samples_total {self.samples}")
            lines.append("# TYPE statsd_exporter_conflicts_total counter")
            lines.append(f"statsd_exporter_conflicts_total {self.conflicts}")
        return "\n".join(lines) + "\n"


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    escaped = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in labels.values())
    return "{" + ",".join(f'{k}="{v}"' for k, v in zip(labels, escaped, strict=True)) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def parse_line(line: str) -> tuple[str, float, str, dict[str, str], bool] | None:
    """``(name, value, type, tags, relative)`` of one StatsD line, or None when it is malformed."""
    try:
        name, rest = line.split(":", 1)
        parts = rest.split("|")
        raw, statsd_type = parts[0], parts[1]
        value, rate, tags = float(raw), 1.0, {}
        for extra in parts[2:]:
            if extra.startswith("@"):
                rate = float(extra[1:]) or 1.0
            elif extra.startswith("#"):
                for tag in filter(None, extra[1:].split(",")):
                    key, _, tag_value = tag.partition(":")
                    tags[key] = tag_value
    except (ValueError, IndexError):
        return None
    if statsd_type == "c":
        value /= rate
    return name.strip(), value, statsd_type, tags, statsd_type == "g" and raw[:1] in "+-"


def handle_packet(registry: Registry, packet: bytes) -> None:
    for line in packet.decode(errors="replace").splitlines():
        parsed = parse_line(line.strip()) if line.strip() else None
        if parsed is None:
            continue
        registry.observe(*parsed)


def _loopback(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
        raise SystemExit(f"{address}: listen on a loopback address only")
    return host.strip("[]"), int(port)


class Exporter:
    """The UDP listener and the HTTP server, on loopback; ``run`` until ``stop`` is set."""

    def __init__(self, udp: tuple[str, int], web: tuple[str, int], registry: Registry) -> None:
        self.registry = registry
        self.sock = socket.socket(socket.AF_INET6 if ":" in udp[0] else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(udp)
        self.sock.settimeout(0.5)
        self.http = ThreadingHTTPServer(web, _handler(registry))
        self.stop = threading.Event()

    @property
    def addresses(self) -> tuple[tuple[str, int], tuple[str, int]]:
        """The UDP and HTTP addresses actually bound (port 0 picks a free one)."""
        return self.sock.getsockname()[:2], self.http.server_address[:2]

    def run(self) -> None:
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        try:
            while not self.stop.is_set():
                try:
                    handle_packet(self.registry, self.sock.recv(65535))
                except TimeoutError:
                    continue
        finally:
            self.http.shutdown()
            self.http.server_close()
            self.sock.close()


def _handler(registry: Registry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.split("?")[0] == "/metrics":
                body, kind, status = registry.exposition().encode(), "text/plain; version=0.0.4", 200
            else:
                body, kind, status = (
                    b"statsd exporter: /metrics\n",
                    "text/plain",
                    200 if self.path == "/" else 404,
                )
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # scrapes every few seconds: not worth a log line
            return

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="statsd_exporter", description=__doc__.split("\n\n")[0])
    parser.add_argument("--statsd.listen-udp", dest="udp", default="127.0.0.1:9125")
    parser.add_argument("--web.listen-address", dest="web", default="127.0.0.1:9102")
    parser.add_argument("--statsd.mapping-config", dest="mapping", type=Path, required=True)
    args = parser.parse_args(argv)
    exporter = Exporter(_loopback(args.udp), _loopback(args.web), Registry(load_rules(args.mapping)))
    signal.signal(signal.SIGTERM, lambda *_: exporter.stop.set())
    udp, web = exporter.addresses
    print(
        f"statsd exporter: StatsD on udp {udp[0]}:{udp[1]}, metrics on http://{web[0]}:{web[1]}/metrics",
        flush=True,
    )
    exporter.run()


if __name__ == "__main__":
    main()
