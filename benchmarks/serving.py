"""Serving benchmark: closed-loop load against real servers vs the in-process limit.

    python benchmarks/serving.py --repository ~/.cache/fusionserve/model-repository

What it does, in one run on one machine:

1. Writes real payloads (JPEG + WAV + text of test-split rows) as multipart bodies.
2. Measures the raw limit: the same payloads decoded with the server's own
   preprocessor and run through the same model session in-process, no HTTP, at
   batch sizes 1..64 with every core busy; the best throughput and the
   single-request latency. It does so before and after the load and keeps the
   better of the two per batch size (a drifting machine never flatters the ratio).
3. Starts the setups side by side — ``fusionserve`` (the model's config, the
   server's default process count), ``batching-off`` (a copy with
   ``max_batch_size: 1``), ``one-process`` (``--workers 1``) and ``naive``
   (``benchmarks/naive_app.py``: the same decoders, one ORT session with its
   defaults, one call per request) — and drives them with ``wrk`` (closed loop:
   each connection sends its next request when the answer arrives) at several
   concurrencies, the setups taking turns in rounds at each level so drift of
   a shared machine hits all alike. Reads req/s (mean over rounds),
   p50/p95/p99 (median over rounds), errors, the mean batch size from the
   server's own ``/metrics``, and CPU per request by stage
   (``benchmarks/cpu_probe.py``).
4. Prints one table with the ratios served / raw, every setup against
   ``fusionserve`` per level on rounds paired in time with a 95 % interval
   (``benchmarks.stats``): a difference only where the interval leaves zero
   out; the per-stage CPU table; and with ``--plot`` draws req/s and p99
   against concurrency (``benchmarks/plot.py``).

``--workload heavy`` runs the same on ``benchmarks/heavy_model.py``'s bigger
model and payloads (built once into ``--heavy-repo``).

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

from benchmarks.cpu_probe import per_request, snapshot  # noqa: E402
from benchmarks.stats import median_interval, relative_gains  # noqa: E402
from fusionserve.service.cpus import available_cpus  # noqa: E402
from fusionserve.service.model.config import MODEL_FILES, load_model_config  # noqa: E402
from fusionserve.service.model.feeds import collate  # noqa: E402
from fusionserve.service.model.rows import RawInputs  # noqa: E402
from fusionserve.service.preprocess import Preprocessor  # noqa: E402
from fusionserve.service.registry import instance_devices  # noqa: E402
from fusionserve.service.runtimes import load_backend  # noqa: E402

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
    #: CPU microseconds per request: total, and by stage for fusionserve (benchmarks/cpu_probe.py).
    cpu_us: dict[str, float] = field(default_factory=dict)


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
    from fusionserve.models.data.dataset import build_dataset
    from fusionserve.models.samples import write_sample_files

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
        workers: int | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_port = free_port() if grpc else None
        self.target = f"127.0.0.1:{self.grpc_port}"
        env = {**os.environ, "FUSIONSERVE_LOG_LEVEL": "warning", **(extra_env or {})}
        if workers is not None:  # else the server's default: one process per core
            env["FUSIONSERVE_WORKERS"] = str(workers)
        pin = ["taskset", "-c", cpus] if cpus else []  # keep the load generator off these cores
        self.proc = subprocess.Popen(
            [
                *pin,
                sys.executable,
                "-m",
                "fusionserve",
                "serve",
                "--model-repository",
                str(repository),
                "--http-port",
                str(self.port),
                "--grpc-port",
                str(self.grpc_port or -1),
            ],
            cwd=tree,  # `python -m fusionserve` imports the service package of this source tree
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


class NaiveProcess(ServerProcess):
    """The naive baseline (``benchmarks/naive_app.py``) under uvicorn, one process."""

    def __init__(self, repository: Path, model: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_port = None
        self.target = ""
        env = {**os.environ, "NAIVE_REPOSITORY": str(repository), "NAIVE_MODEL": model}
        cmd = [sys.executable, "-m", "uvicorn", "benchmarks.naive_app:app", "--port", str(self.port)]
        self.proc = subprocess.Popen([*cmd, "--log-level", "warning", "--no-access-log"], cwd=ROOT, env=env)


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
    pid: int | None = None,
) -> LoadResult:
    """One closed-loop ``wrk`` run; the mean batch size from the server's own histogram,
    and CPU per request by stage when the server's ``pid`` is given."""
    path = f"/v1/models/{model}/predict"
    before = batch_stats(url, model)
    cpu_before = snapshot(pid) if pid else None
    w = run_wrk(url, path, bodies_dir, n_bodies, boundary, concurrency, seconds, script)
    cpu: dict[str, float] = {}
    if pid and cpu_before is not None:
        stages = per_request(cpu_before, snapshot(pid), int(w["requests"]))
        cpu = {"total": stages.total_us, "decode": stages.decode_us, "model": stages.model_us}
        cpu["rest"] = stages.rest_us
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
        cpu_us=cpu,
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
        cpu_us={k: statistics.median(r.cpu_us[k] for r in rounds) for k in rounds[0].cpu_us},
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
    cores = available_cpus()

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


def config_copy(repository: Path, model: str, dest: Path, section: str, changes: dict[str, object]) -> Path:
    """A one-model repository at ``dest`` whose config has ``changes`` in ``section``."""
    shutil.copytree(repository / model, dest / model)
    cfg_path = dest / model / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg.setdefault(section, {}).update(changes)
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


def batching_off_copy(repository: Path, model: str, dest: Path) -> Path:
    return config_copy(
        repository, model, dest, "batching", {"max_batch_size": 1, "preferred_batch_sizes": []}
    )


# -- report ----------------------------------------------------------------
#: rounds[level][setup] = that setup's rounds at that level, paired in time across setups.
Rounds = dict[int, dict[str, list[LoadResult]]]
MAIN = "fusionserve"


def versus(rounds: Rounds, other: str, lower_is_better: bool = False) -> str:
    """``fusionserve`` against ``other`` at each level (req/s, median of paired rounds)."""
    parts, behind = [], []
    for level, by_setup in sorted(rounds.items()):
        if MAIN not in by_setup or other not in by_setup:
            continue
        gains = relative_gains([r.rps for r in by_setup[MAIN]], [r.rps for r in by_setup[other]])
        if not gains:
            continue
        gain = median_interval(gains)
        parts.append(f"c={level} {gain.as_gain()}")
        if gain.verdict(lower_is_better=lower_is_better) == "behind":
            behind.append(level)
    summary = "never behind" if not behind else f"behind at c={behind}"
    return f"{MAIN} vs {other} (req/s): {summary}; " + "; ".join(parts)


def c1_latency(rounds: Rounds, other: str) -> str:
    """p50 at concurrency 1, ``fusionserve`` minus ``other``, on paired rounds (ms)."""
    by_setup = rounds.get(1, {})
    if MAIN not in by_setup or other not in by_setup:
        return ""
    diffs = [a.p50_ms - b.p50_ms for a, b in zip(by_setup[MAIN], by_setup[other], strict=True)]
    gap = median_interval(diffs)
    return (
        f"p50 at c=1, {MAIN} minus {other}: {gap.median:+.3f} ms [{gap.low:+.3f}, {gap.high:+.3f}] "
        f"{gap.verdict(lower_is_better=True)}"
    )


def print_table(loads: list[LoadResult], raw: RawResult, rounds: Rounds | None = None) -> None:
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
    print()
    print("CPU per request (µs, all processes of the server; median over rounds):")
    print()
    print("| setup | concurrency | total | decoder threads | model threads | event loop and the rest |")
    print("|---" * 6 + "|")
    for r in loads:
        c = r.cpu_us
        if not c:
            continue
        if r.setup == "naive":  # its threads carry no role names
            print(f"| {r.setup} | {r.concurrency} | {c['total']:.0f} | | | |")
            continue
        print(
            f"| {r.setup} | {r.concurrency} | {c['total']:.0f} | {c['decode']:.0f} | "
            f"{c['model']:.0f} | {c['rest']:.0f} |"
        )
    main = {r.concurrency: r for r in loads if r.setup == MAIN}
    print()
    if main:
        top = max(main.values(), key=lambda r: r.rps)
        print(f"saturated served / raw: {top.rps / raw.best_rps:.2f} (at c={top.concurrency})")
        if 1 in main:
            print(
                f"p50 at c=1 minus raw single latency: {main[1].p50_ms - raw.single_p50_ms:+.2f} ms "
                "(target <= 1 ms)"
            )
    if rounds:
        others = sorted({name for by_setup in rounds.values() for name in by_setup} - {MAIN})
        for other in others:
            print(versus(rounds, other))
            line = c1_latency(rounds, other)
            if line:
                print(line)


def write_plot(loads: list[LoadResult], raw: RawResult, title: str, out: Path) -> None:
    from benchmarks.plot import plot

    shown = [r for r in loads if r.setup in (MAIN, "naive", "one-process")]
    plot(shown, raw.best_rps, title, out)
    print(f"plot written to {out}")


def heavy_workload(args: argparse.Namespace) -> tuple[Path, str, list[Payload]]:
    """The heavy model's repository (built once) and its payloads."""
    from benchmarks import heavy_model

    repo: Path = args.heavy_repo
    if not (repo / heavy_model.NAME / "config.yaml").exists():
        print(f"building {heavy_model.NAME} into {repo} (once)", flush=True)
        heavy_model.build(repo, args.seed)
    made = heavy_model.payloads(args.payloads, args.seed)
    return repo, heavy_model.NAME, [Payload(image=j, audio=a, text=t) for j, a, t in made]


def start_setup(name: str, repository: Path, model: str, tmp: Path, workers: int | None) -> ServerProcess:
    if name == MAIN:
        return ServerProcess(repository, workers=workers)
    if name == "batching-off":
        return ServerProcess(batching_off_copy(repository, model, tmp / name), workers=workers)
    if name == "fixed-threads":  # no wide session for a lone batch (onnx.adaptive_intra_op: false)
        fixed = config_copy(repository, model, tmp / name, "onnx", {"adaptive_intra_op": False})
        return ServerProcess(fixed, workers=workers)
    if name == "one-process":
        return ServerProcess(repository, workers=1)
    if name == "naive":
        return NaiveProcess(repository, model)
    raise SystemExit(f"unknown setup {name!r} (fusionserve, batching-off, fixed-threads, one-process, naive)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, help="digits workload (default: the bundled repository)")
    parser.add_argument("--workload", choices=["digits", "heavy"], default="digits")
    parser.add_argument(
        "--heavy-repo",
        type=Path,
        default=Path.home() / ".cache" / "fusionserve" / "bench-heavy",
        help="where the heavy workload's model is built once",
    )
    parser.add_argument("--model", default="digits-fusion")
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--seconds", type=float, default=8.0, help="per setup and load level")
    parser.add_argument(
        "--rounds", type=int, default=4, help="the setups take turns this many times per level"
    )
    parser.add_argument("--setups", default="fusionserve,batching-off,naive", help="comma-separated")
    parser.add_argument(
        "--workers", type=int, help="fusionserve's processes (default: the server's, one per core)"
    )
    parser.add_argument("--payloads", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--payload-dir", type=Path, help="read payloads from here instead of building the dataset"
    )
    parser.add_argument("--plot", type=Path, help="draw req/s and p99 against concurrency into this PNG")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.workload == "heavy":
        repository, model, payloads = heavy_workload(args)
    else:
        from fusionserve.service.config import default_repository_dir

        repository, model = args.repository or default_repository_dir(), args.model
        payloads = load_payloads(args.payload_dir, args.payloads, args.seed)
    names = [n.strip() for n in args.setups.split(",") if n.strip()]
    print(
        f"machine: {os.cpu_count()} cores; model {model}; setups {names}; {args.seconds:g} s per level",
        flush=True,
    )
    boundary = uuid.uuid4().hex
    loads: list[LoadResult] = []
    rounds: Rounds = {}
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        bodies = tmp / "bodies"
        bodies.mkdir()
        for i, p in enumerate(payloads):
            (bodies / f"body_{i}").write_bytes(multipart_body(p, boundary))
        script = tmp / "bench.lua"
        script.write_text(WRK_SCRIPT)
        batch_sizes = [1, 4, 8, 16, 32, 64]
        raw_seconds = args.seconds / 2
        print("raw limit, before the load:", flush=True)
        raw_before = raw_limit(repository, model, payloads, raw_seconds, batch_sizes)
        # Every setup's server runs at once (an idle one costs nothing) and they
        # take turns at each level, so drift of a shared machine hits all alike.
        servers: dict[str, ServerProcess] = {}
        try:
            for name in names:  # inside the try: a bad setup name stops the ones already started
                servers[name] = start_setup(name, repository, model, tmp, args.workers)
            for server in servers.values():
                server.wait_ready()
            for name, server in servers.items():  # warm connections and allocator
                measure_level(name, server.url, model, bodies, len(payloads), boundary, 4, 1.0, script)
            for level in levels:
                seconds = max(1.0, round(args.seconds / args.rounds))  # wrk takes whole seconds

                def run(name: str, level: int = level, seconds: float = seconds) -> LoadResult:
                    server, n = servers[name], len(payloads)
                    return measure_level(
                        name, server.url, model, bodies, n, boundary, level, seconds, script, server.proc.pid
                    )

                rounds[level] = take_turns(list(servers), args.rounds, run)
                for name in servers:
                    loads.append(combine(rounds[level][name]))
                    print(progress(loads[-1]), flush=True)
        finally:
            for server in servers.values():
                server.stop()
        print("raw limit, after the load:", flush=True)
        raw_after = raw_limit(repository, model, payloads, raw_seconds, batch_sizes)
    raw = best_of(raw_before, raw_after)
    print_table(loads, raw, rounds)
    if args.plot:
        title = f"{model}, {os.cpu_count()} cores (shared machine), {args.rounds} rounds per level"
        write_plot(loads, raw, title, args.plot)
    if args.json:
        args.json.write_text(json.dumps({"loads": [asdict(r) for r in loads], "raw": asdict(raw)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
