"""Serving benchmark: closed-loop load against real servers vs the in-process limit.

    python benchmarks/serving.py --repository ~/.cache/fusionserve/model-repository

What it does, in one run on one machine:

1. Writes real payloads (JPEG + WAV + text of test-split rows) as multipart bodies.
2. Measures the raw limit: the same payloads decoded with the server's own
   preprocessor and run through the same model session in-process, no HTTP, at
   batch sizes 1..64 with every core busy; the best throughput and the
   single-request latency. It does so before and after the load and keeps the
   better of the two per batch size (a drifting machine never flatters the ratio).
3. Starts the server twice on the repository — batching on (the model's config)
   and batching off (a copy with ``max_batch_size: 1``) — and drives them with
   ``wrk`` (closed loop: each connection sends its next request when the answer
   arrives) at several concurrencies, the two taking turns in rounds at each
   level so drift of a shared machine hits both alike. Reads req/s (mean over
   rounds), p50/p95/p99 (median over rounds), errors, and the mean batch size
   from the server's own ``/metrics``.
4. Prints one table with the ratios served / raw, and batching on vs off per
   level on rounds paired in time with a 95 % interval (``benchmarks.stats``):
   "slower" only where the interval leaves zero out.

The load generator shares the machine with the server; that is part of what
is measured (say so when quoting numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.stats import median_interval, relative_gains  # noqa: E402
from service.model.config import MODEL_FILES, load_model_config  # noqa: E402
from service.model.feeds import collate  # noqa: E402
from service.model.rows import RawInputs  # noqa: E402
from service.preprocess import Preprocessor  # noqa: E402
from service.registry import instance_devices  # noqa: E402
from service.runtimes import load_backend  # noqa: E402

WRK_SCRIPT = r"""
local bodies = {}
local n = 0
local idx = 0
init = function(args)
  local dir = args[1]
  n = tonumber(args[2])
  for i = 0, n - 1 do
    local f = assert(io.open(dir .. "/body_" .. i, "rb"))
    bodies[i + 1] = f:read("*all")
    f:close()
  end
  idx = math.random(n) - 1
end
request = function()
  idx = idx % n + 1
  return wrk.format("POST", wrk.path, wrk.headers, bodies[idx])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\"requests\":%d,\"duration_us\":%d,\"status_errors\":%d,\"socket_errors\":%d," ..
    "\"p50_us\":%d,\"p95_us\":%d,\"p99_us\":%d}\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


@dataclass
class Payload:
    image: bytes
    audio: bytes
    text: str


@dataclass
class LoadResult:
    setup: str
    concurrency: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    mean_batch: float


@dataclass
class RawResult:
    best_batch: int
    best_rps: float
    single_p50_ms: float
    by_batch: dict[int, float] = field(default_factory=dict)


# -- payloads ----------------------------------------------------------------
def read_payloads(folder: Path, count: int) -> list[Payload]:
    """Payloads from ``folder/*/{image.jpg,audio.wav,text.txt}`` (as ``fusionserve``'s
    ``write_sample_files`` writes them): for hosts that cannot build the dataset."""
    rows = sorted(d for d in folder.iterdir() if (d / "image.jpg").exists())[:count]
    if not rows:
        raise SystemExit(f"{folder}: no */image.jpg + audio.wav + text.txt payload folders")
    return [
        Payload(
            image=(d / "image.jpg").read_bytes(),
            audio=(d / "audio.wav").read_bytes(),
            text=(d / "text.txt").read_text(encoding="utf-8"),
        )
        for d in rows
    ]


def load_payloads(folder: Path | None, count: int, seed: int = 0) -> list[Payload]:
    """From ``--payload-dir`` when given, else built from the dataset."""
    return read_payloads(folder, count) if folder else make_payloads(count, seed)


def make_payloads(count: int, seed: int) -> list[Payload]:
    """Real test-split rows of the project's dataset, encoded as JPEG + WAV + text."""
    from models.data.dataset import build_dataset
    from models.samples import write_sample_files

    dataset = build_dataset(seed=seed)
    payloads = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(count):
            files = write_sample_files(dataset.test, i, Path(tmp) / str(i))
            payloads.append(
                Payload(
                    image=files["image.jpg"].read_bytes()
                    if "image.jpg" in files
                    else files["image"].read_bytes(),
                    audio=files["audio.wav"].read_bytes()
                    if "audio.wav" in files
                    else files["audio"].read_bytes(),
                    text=dataset.test.text[i],
                )
            )
    return payloads


def multipart_body(payload: Payload, boundary: str) -> bytes:
    def part(name: str, data: bytes, filename: str | None = None, ctype: str | None = None) -> bytes:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        head = f"--{boundary}\r\nContent-Disposition: {disp}\r\n"
        if ctype:
            head += f"Content-Type: {ctype}\r\n"
        return head.encode() + b"\r\n" + data + b"\r\n"

    return (
        part("image", payload.image, "digit.jpg", "image/jpeg")
        + part("audio", payload.audio, "digit.wav", "audio/wav")
        + part("text", payload.text.encode())
        + f"--{boundary}--\r\n".encode()
    )


# -- servers ---------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A real ``fusionserve serve`` in a subprocess (gRPC too when asked), stopped with SIGTERM."""

    def __init__(
        self,
        repository: Path,
        extra_env: dict[str, str] | None = None,
        *,
        grpc: bool = False,
        cpus: str | None = None,
        tree: Path = ROOT,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_port = free_port() if grpc else None
        self.target = f"127.0.0.1:{self.grpc_port}"
        env = {**os.environ, "FUSIONSERVE_LOG_LEVEL": "warning", **(extra_env or {})}
        pin = ["taskset", "-c", cpus] if cpus else []  # keep the load generator off these cores
        self.proc = subprocess.Popen(
            [
                *pin,
                sys.executable,
                "-m",
                "service",
                "serve",
                "--model-repository",
                str(repository),
                "--http-port",
                str(self.port),
                "--grpc-port",
                str(self.grpc_port or -1),
            ],
            cwd=tree,  # `python -m service` imports the service package of this source tree
            env=env,
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("server did not become ready")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def batch_stats(url: str, model: str) -> tuple[float, float]:
    """(sum, count) of the batch-size histogram for a model."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    total = count = 0.0
    for line in text.splitlines():
        if not line.startswith("fusionserve_batch_size_") or f'model="{model}"' not in line:
            continue
        value = float(line.rsplit(" ", 1)[1])
        if line.startswith("fusionserve_batch_size_sum"):
            total += value
        elif line.startswith("fusionserve_batch_size_count"):
            count += value
    return total, count


def run_wrk(
    url: str,
    path: str,
    bodies_dir: Path,
    n_bodies: int,
    boundary: str,
    concurrency: int,
    seconds: float,
    script: Path,
) -> dict[str, float]:
    cmd = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{seconds:g}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        "-H",
        f"Content-Type: multipart/form-data; boundary={boundary}",
        f"{url}{path}",
        "--",
        str(bodies_dir),
        str(n_bodies),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    match = re.search(r"WRKJSON (\{.*\})", out)
    if not match:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    result: dict[str, float] = json.loads(match.group(1))
    return result


def measure_level(
    setup: str,
    url: str,
    model: str,
    bodies_dir: Path,
    n_bodies: int,
    boundary: str,
    concurrency: int,
    seconds: float,
    script: Path,
) -> LoadResult:
    """One closed-loop ``wrk`` run; the mean batch size from the server's own histogram."""
    path = f"/v1/models/{model}/predict"
    before = batch_stats(url, model)
    w = run_wrk(url, path, bodies_dir, n_bodies, boundary, concurrency, seconds, script)
    after = batch_stats(url, model)
    batches = after[1] - before[1]
    return LoadResult(
        setup=setup,
        concurrency=concurrency,
        rps=w["requests"] / (w["duration_us"] / 1e6),
        p50_ms=w["p50_us"] / 1000,
        p95_ms=w["p95_us"] / 1000,
        p99_ms=w["p99_us"] / 1000,
        errors=int(w["status_errors"] + w["socket_errors"]),
        mean_batch=(after[0] - before[0]) / batches if batches else 0.0,
    )


def take_turns(
    names: list[str], rounds: int, run: Callable[[str], LoadResult]
) -> dict[str, list[LoadResult]]:
    """``rounds`` rounds in which every setup runs once, the order reversed every other
    round, so drift of a shared machine hits all setups alike."""
    results: dict[str, list[LoadResult]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names if index % 2 == 0 else list(reversed(names)):
            results[name].append(run(name))
    return results


def progress(row: LoadResult) -> str:
    """One line per setup and level while a benchmark runs."""
    return (
        f"  {row.setup:<12} c={row.concurrency:<4} {row.rps:8.1f} req/s  p50 {row.p50_ms:7.2f} ms  "
        f"p99 {row.p99_ms:7.2f} ms  batch {row.mean_batch:5.2f}  errors {row.errors}"
    )


def combine(rounds: list[LoadResult]) -> LoadResult:
    """One row from interleaved rounds: mean throughput, median percentiles."""
    return LoadResult(
        setup=rounds[0].setup,
        concurrency=rounds[0].concurrency,
        rps=statistics.fmean(r.rps for r in rounds),
        p50_ms=statistics.median(r.p50_ms for r in rounds),
        p95_ms=statistics.median(r.p95_ms for r in rounds),
        p99_ms=statistics.median(r.p99_ms for r in rounds),
        errors=sum(r.errors for r in rounds),
        mean_batch=statistics.fmean(r.mean_batch for r in rounds),
    )


# -- the raw limit ---------------------------------------------------------
def raw_limit(
    repository: Path, model: str, payloads: list[Payload], seconds: float, batch_sizes: list[int]
) -> RawResult:
    """Decode + collate + run in-process with the server's own parts, every core busy."""
    entry = repository / model
    config = load_model_config(entry / "config.yaml")
    version_dir = max((p for p in entry.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    model_path = version_dir / MODEL_FILES[config.backend]
    devices = instance_devices(config)
    backends = [load_backend(config, model_path, d) for d in devices]
    pre = Preprocessor(config, entry)
    raws = [RawInputs(image=p.image, audio=p.audio, text=p.text) for p in payloads]
    cores = os.cpu_count() or 1

    def one_batch(start: int, size: int, backend_index: int) -> None:
        rows = [pre.decode(raws[(start + i) % len(raws)]) for i in range(size)]
        feeds, _ = collate(rows, config)
        backends[backend_index % len(backends)].run(feeds)

    # Single-request latency: decode + run one row, nothing else running.
    single = []
    for i in range(max(50, len(raws))):
        t0 = time.perf_counter()
        one_batch(i, 1, 0)
        single.append(time.perf_counter() - t0)

    result = RawResult(best_batch=1, best_rps=0.0, single_p50_ms=statistics.median(single) * 1000)
    for size in batch_sizes:
        rows_done = 0
        stop_at = time.monotonic() + seconds
        lock = threading.Lock()

        def worker(wid: int, size: int = size, stop_at: float = stop_at, lock: threading.Lock = lock) -> None:
            nonlocal rows_done
            i = wid * 7
            while time.monotonic() < stop_at:
                one_batch(i, size, wid)
                i += size
                with lock:
                    rows_done += size

        t0 = time.monotonic()
        with ThreadPoolExecutor(cores) as pool:
            list(pool.map(worker, range(cores)))
        rps = rows_done / (time.monotonic() - t0)
        result.by_batch[size] = rps
        print(f"  raw          b={size:<4} {rps:8.1f} rows/s", flush=True)
        if rps > result.best_rps:
            result.best_rps, result.best_batch = rps, size
    for backend in backends:
        backend.close()
    return result


def best_of(first: RawResult, second: RawResult) -> RawResult:
    """The raw limit from two measurements (before and after the load): the
    better one per batch size, so drift of the machine never flatters the ratio."""
    merged = RawResult(
        best_batch=1, best_rps=0.0, single_p50_ms=min(first.single_p50_ms, second.single_p50_ms)
    )
    for size in first.by_batch:
        merged.by_batch[size] = max(first.by_batch[size], second.by_batch.get(size, 0.0))
        if merged.by_batch[size] > merged.best_rps:
            merged.best_rps, merged.best_batch = merged.by_batch[size], size
    return merged


def batching_off_copy(repository: Path, model: str, dest: Path) -> Path:
    shutil.copytree(repository / model, dest / model)
    cfg_path = dest / model / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg.setdefault("batching", {})["max_batch_size"] = 1
    cfg["batching"]["preferred_batch_sizes"] = []
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


# -- report ----------------------------------------------------------------
def batching_verdict(paired: dict[int, tuple[list[LoadResult], list[LoadResult]]]) -> str:
    """Batching on vs off at each level, on rounds paired in time (``benchmarks.stats``).

    At concurrency 1 both run the same path (a lone row is dispatched at
    once), so only an interval that leaves zero out counts as slower.
    """
    parts, slower = [], []
    for level, (on, off) in sorted(paired.items()):
        gains = relative_gains([r.rps for r in on], [r.rps for r in off])
        if not gains:
            continue
        gain = median_interval(gains)
        parts.append(f"c={level} {gain.as_gain()}")
        if gain.verdict(lower_is_better=False) == "behind":
            slower.append(level)
    summary = "never slower" if not slower else f"slower at c={slower}"
    return f"batching on vs off (req/s, median of paired rounds): {summary}; " + "; ".join(parts)


def print_table(
    loads: list[LoadResult],
    raw: RawResult,
    paired: dict[int, tuple[list[LoadResult], list[LoadResult]]] | None = None,
) -> None:
    print()
    print(
        f"raw in-process limit: {raw.best_rps:.1f} rows/s at batch {raw.best_batch}; "
        f"single request {raw.single_p50_ms:.2f} ms (decode + model)"
    )
    print()
    header = "| setup | concurrency | req/s | p50 ms | p95 ms | p99 ms | errors | mean batch | served/raw |"
    print(header)
    print("|---" * 9 + "|")
    for r in loads:
        print(
            f"| {r.setup} | {r.concurrency} | {r.rps:.1f} | {r.p50_ms:.2f} | {r.p95_ms:.2f} | "
            f"{r.p99_ms:.2f} | {r.errors} | {r.mean_batch:.2f} | {r.rps / raw.best_rps:.2f} |"
        )
    on = {r.concurrency: r for r in loads if r.setup == "batching-on"}
    print()
    if on:
        top = max(on.values(), key=lambda r: r.rps)
        print(f"saturated served / raw: {top.rps / raw.best_rps:.2f} (target >= 0.80)")
        if 1 in on:
            print(
                f"p50 at c=1 minus raw single latency: {on[1].p50_ms - raw.single_p50_ms:+.2f} ms "
                "(target <= 3 ms)"
            )
    if paired:
        print(batching_verdict(paired))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", default="digits-fusion")
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--seconds", type=float, default=8.0, help="per setup and load level")
    parser.add_argument(
        "--rounds", type=int, default=4, help="the setups take turns this many times per level"
    )
    parser.add_argument("--payloads", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--payload-dir", type=Path, help="read payloads from here instead of building the dataset"
    )
    parser.add_argument("--skip-off", action="store_true", help="skip the batching-off server")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    levels = [int(c) for c in args.concurrency.split(",")]
    print(f"machine: {os.cpu_count()} cores; model {args.model}; {args.seconds:g} s per level", flush=True)
    payloads = load_payloads(args.payload_dir, args.payloads, args.seed)
    boundary = uuid.uuid4().hex
    loads: list[LoadResult] = []
    paired: dict[int, tuple[list[LoadResult], list[LoadResult]]] = {}
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        bodies = tmp / "bodies"
        bodies.mkdir()
        for i, p in enumerate(payloads):
            (bodies / f"body_{i}").write_bytes(multipart_body(p, boundary))
        script = tmp / "bench.lua"
        script.write_text(WRK_SCRIPT)
        setups = [("batching-on", args.repository)]
        if not args.skip_off:
            setups.append(("batching-off", batching_off_copy(args.repository, args.model, tmp / "off")))
        batch_sizes = [1, 4, 8, 16, 32, 64]
        raw_seconds = args.seconds / 2
        print("raw limit, before the load:", flush=True)
        raw_before = raw_limit(args.repository, args.model, payloads, raw_seconds, batch_sizes)
        # Every setup's server runs at once (an idle one costs nothing) and they
        # take turns at each level, so drift of a shared machine hits all alike.
        servers = {name: ServerProcess(repo) for name, repo in setups}
        try:
            for server in servers.values():
                server.wait_ready()
            for name, server in servers.items():  # warm connections and allocator
                measure_level(name, server.url, args.model, bodies, len(payloads), boundary, 4, 1.0, script)
            for level in levels:
                seconds = max(1.0, round(args.seconds / args.rounds))  # wrk takes whole seconds

                def run(name: str, level: int = level, seconds: float = seconds) -> LoadResult:
                    url, n = servers[name].url, len(payloads)
                    return measure_level(name, url, args.model, bodies, n, boundary, level, seconds, script)

                rounds = take_turns(list(servers), args.rounds, run)
                if "batching-off" in rounds:
                    paired[level] = (rounds["batching-on"], rounds["batching-off"])
                for name in servers:
                    loads.append(combine(rounds[name]))
                    print(progress(loads[-1]), flush=True)
        finally:
            for server in servers.values():
                server.stop()
        print("raw limit, after the load:", flush=True)
        raw_after = raw_limit(args.repository, args.model, payloads, raw_seconds, batch_sizes)
    raw = best_of(raw_before, raw_after)
    print_table(loads, raw, paired)
    if args.json:
        args.json.write_text(json.dumps({"loads": [asdict(r) for r in loads], "raw": asdict(raw)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
