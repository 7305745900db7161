"""Did a change make serving faster? Two source trees served side by side, in turns.

    git worktree add /tmp/before HEAD~3
    python benchmarks/compare_trees.py --before /tmp/before --after . \\
        --repository ~/.cache/fusionserve/model-repository

On a shared machine the same server measured minutes apart can differ by more
than a change does. Here both trees serve at once (an idle server costs
nothing) and take turns with the same ``wrk`` load, alternating the order
every round; the table shows mean req/s and median percentiles per tree and
level, and the median per-round gain after vs before with its 95 % interval
(``benchmarks.stats``).
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.serving import (  # noqa: E402
    WRK_SCRIPT,
    LoadResult,
    ServerProcess,
    combine,
    load_payloads,
    measure_level,
    multipart_body,
    take_turns,
)
from benchmarks.stats import median_interval, relative_gains  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", type=Path, required=True, help="source tree of the baseline")
    parser.add_argument("--after", type=Path, required=True, help="source tree with the change")
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", default="digits-fusion")
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0, help="per round")
    parser.add_argument("--payloads", type=int, default=16)
    parser.add_argument("--payload-dir", type=Path)
    parser.add_argument("--workers", type=int, help="server processes of each tree (default: the server's)")
    args = parser.parse_args(argv)
    payloads = load_payloads(args.payload_dir, args.payloads)
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        bodies = tmp / "bodies"
        bodies.mkdir()
        boundary = uuid.uuid4().hex
        for i, payload in enumerate(payloads):
            (bodies / f"body_{i}").write_bytes(multipart_body(payload, boundary))
        script = tmp / "bench.lua"
        script.write_text(WRK_SCRIPT)
        servers = {
            name: ServerProcess(args.repository, tree=tree, workers=args.workers)
            for name, tree in trees.items()
        }
        try:
            for server in servers.values():
                server.wait_ready()

            def run(name: str, level: int, seconds: float = args.seconds) -> LoadResult:
                server, n = servers[name], len(payloads)
                pid = server.proc.pid
                return measure_level(
                    name, server.url, args.model, bodies, n, boundary, level, seconds, script, pid
                )

            for name in servers:  # warm connections and allocator
                run(name, 4, 1.0)
            print(
                "| tree | concurrency | req/s | p50 ms | p99 ms | mean batch | after vs before [95 %] "
                "| CPU µs/request: total | decoder threads | model threads | event loop and the rest |"
            )
            print("|---" * 11 + "|")
            for level in (int(c) for c in args.concurrency.split(",")):
                rounds = take_turns(["before", "after"], args.rounds, functools.partial(run, level=level))
                after = [r.rps for r in rounds["after"]]
                gain = median_interval(relative_gains(after, [r.rps for r in rounds["before"]]))
                for name in servers:
                    row = combine(rounds[name])
                    ratio = gain.as_gain() if name == "after" else ""
                    cpu = " | ".join(
                        f"{row.cpu_us.get(k, 0):.0f}" for k in ("total", "decode", "model", "rest")
                    )
                    print(
                        f"| {name} | {level} | {row.rps:.1f} | {row.p50_ms:.2f} | {row.p99_ms:.2f} | "
                        f"{row.mean_batch:.2f} | {ratio} | {cpu} |",
                        flush=True,
                    )
        finally:
            for server in servers.values():
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
