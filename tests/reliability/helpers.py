"""Shared pieces of the reliability suite: gated servers, metric reads, figures printed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from tests.conftest import RunningServer, copy_entry

PREDICT = "/v1/models/digits-fusion/predict"
MODEL = "digits-fusion"


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def wait_held(gate: Path) -> None:
    """Until a compute call is blocked at the gate (``<gate>.held`` exists)."""
    held = gate.with_name(gate.name + ".held")
    for _ in range(4000):
        if held.exists():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("no compute call reached the gate")


def start_gated(
    factory: Callable[..., RunningServer],
    model_repository: Path,
    tmp_path: Path,
    env: dict[str, str] | None = None,
    grpc: bool = False,
    **config: object,
) -> tuple[RunningServer, Path]:
    """A one-model server whose compute waits for a gate file (open while warming up)."""
    gate = tmp_path / "gate"
    gate.touch()
    repo = copy_entry(model_repository, tmp_path / "repo", MODEL, **config)
    server = factory(repo, grpc=grpc, env={"FUSIONSERVE_FAILPOINTS": f"gate={gate}", **(env or {})})
    gate.unlink()
    return server, gate


def figures(title: str, **values: object) -> None:
    """Print the figures a test asserts (pytest -s shows them; the report quotes them)."""
    print(f"\n[{title}] " + " ".join(f"{k}={v}" for k, v in values.items()))
