"""Shared tools of the hostile-input tests: liveness probe, RSS, error-metric and log checks.

Every hostile request is sent while a thread polls ``/health/live``; the
tests print the slowest answer and the server's RSS before and after, and
assert generously (a shared 2-core machine), because what they guard
against is seconds of freeze and GBs of growth, not milliseconds.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

from tests.conftest import RunningServer

#: Generous bounds for a loaded 2-core box (the issue's targets: 50 ms, back to baseline);
#: before the bounds these requests froze the server for tens of seconds and took GBs.
LIVE_BOUND_S = 3.0
RSS_GROWTH_BOUND = 300 * 1024 * 1024

_CLIENT_ERRORS = re.compile(
    r'^fusionserve_requests_total\{[^}]*outcome="client_error"[^}]*\} ([0-9.e+]+)$', re.M
)


@dataclass
class LiveProbe:
    """The slowest ``/health/live`` answer seen while the probe ran (seconds)."""

    slowest_s: float = 0.0
    answers: int = 0
    failures: list[str] = field(default_factory=list)


@contextmanager
def live_probe(server: RunningServer, period_s: float = 0.01) -> Iterator[LiveProbe]:
    """Poll ``/health/live`` from a thread while the body of the ``with`` runs."""
    probe = LiveProbe()
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=server.http_url, timeout=10) as client:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    status = client.get("/health/live").status_code
                except httpx.HTTPError as exc:
                    probe.failures.append(repr(exc))
                    status = 0
                probe.slowest_s = max(probe.slowest_s, time.perf_counter() - started)
                probe.answers += 1
                if status != 200:
                    probe.failures.append(f"status {status}")
                stop.wait(period_s)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield probe
    finally:
        stop.set()
        thread.join(timeout=15)


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """Resident set size of a process (``VmHWM``: its peak), from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field}")


def reset_peak_rss(pid: int) -> None:
    """Start ``VmHWM`` afresh from the current RSS (Linux ``clear_refs`` 5); best effort."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def client_errors(server: RunningServer) -> float:
    """The sum of ``fusionserve_requests_total{outcome="client_error"}`` over every label."""
    text = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    return sum(float(v) for v in _CLIENT_ERRORS.findall(text))


def tracebacks(server: RunningServer) -> int:
    log = server.log()
    return log.count("Traceback") + log.count('"exception"')


@dataclass
class Watch:
    """What one hostile request did to the server around it."""

    probe: LiveProbe
    rss_before: int
    rss_after: int = 0
    rss_peak: int = 0

    def report(self, label: str) -> str:
        return (
            f"{label}: slowest /health/live {self.probe.slowest_s * 1000:.1f} ms over "
            f"{self.probe.answers} probes; "
            f"RSS {self.rss_before / 2**20:.0f} -> {self.rss_after / 2**20:.0f} MiB "
            f"(peak {self.rss_peak / 2**20:.0f} MiB)"
        )

    def check(self, label: str) -> None:
        print(self.report(label))
        assert not self.probe.failures, self.probe.failures[:3]
        assert self.probe.slowest_s < LIVE_BOUND_S, self.report(label)
        assert self.rss_after - self.rss_before < RSS_GROWTH_BOUND, self.report(label)


@contextmanager
def watched(server: RunningServer, label: str) -> Iterator[Watch]:
    """Liveness probe and RSS around a block that sends one hostile request; checked on exit."""
    reset_peak_rss(server.proc.pid)
    watch = Watch(LiveProbe(), rss_bytes(server.proc.pid))
    with live_probe(server) as probe:
        watch.probe = probe
        yield watch
        deadline = time.monotonic() + 10
        while probe.answers < 2 and time.monotonic() < deadline:  # at least one probe overlapped
            time.sleep(0.01)
    watch.rss_after = rss_bytes(server.proc.pid)
    watch.rss_peak = rss_bytes(server.proc.pid, "VmHWM")
    watch.check(label)
