"""Reload under traffic: a new version, then a reload of the same one, through the
repository API while clients keep predicting. No request fails, and each client's
answers switch version exactly once (old version drains, new one serves when warm)."""

from __future__ import annotations

import asyncio
import itertools
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer, copy_entry
from tests.reliability.helpers import MODEL, PREDICT, figures

LOAD = f"/v2/repository/models/{MODEL}/load"


async def reload_under_traffic(
    factory: Callable[..., RunningServer], repository: Path, tmp_path: Path, clients: int
) -> None:
    repo = copy_entry(repository, tmp_path / "repo", MODEL)
    server = factory(repo, grpc=False, env={"FUSIONSERVE_MODEL_CONTROL": "explicit"})
    seen: list[list[str]] = [[] for _ in range(clients)]
    failed: list[str] = []
    stop = asyncio.Event()

    async def client(index: int) -> None:
        async with httpx.AsyncClient(base_url=server.http_url, timeout=60) as http:
            while not stop.is_set():
                answer = await http.post(PREDICT, files={"text": (None, "seven")})
                if answer.status_code != 200:
                    failed.append(f"{answer.status_code} {answer.text[:200]}")
                    continue
                seen[index].append(answer.json()["version"])

    async def until(condition: Callable[[], bool]) -> None:
        for _ in range(6000):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("timed out")

    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    async with httpx.AsyncClient(base_url=server.http_url, timeout=120) as admin:
        await until(lambda: all(len(s) >= 2 for s in seen))
        shutil.copytree(repo / MODEL / "1", repo / MODEL / "2")  # a new version appears
        loaded = await admin.post(LOAD, json={})
        assert loaded.status_code == 200, loaded.text
        marks = [len(s) for s in seen]
        await until(lambda: all(len(s) >= m + 2 for s, m in zip(seen, marks, strict=True)))
        reloaded = await admin.post(LOAD, json={})  # the same version again
        assert reloaded.status_code == 200, reloaded.text
        marks = [len(s) for s in seen]
        await until(lambda: all(len(s) >= m + 2 for s, m in zip(seen, marks, strict=True)))
        stop.set()
        await asyncio.gather(*tasks)
    switches = [sum(1 for a, b in itertools.pairwise(s) if a != b) for s in seen]
    figures(
        f"reload under traffic, {clients} clients",
        answers=sum(len(s) for s in seen),
        failed=len(failed),
        switches_per_client=sorted(set(switches)),
        last_versions=sorted({s[-1] for s in seen}),
    )
    assert not failed, failed[:5]
    assert all(s[0] == "1" and s[-1] == "2" for s in seen)
    assert switches == [1] * clients, "a client saw the version switch back or more than once"


async def test_reload_under_traffic_fails_nothing(
    model_repository: Path, server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    await reload_under_traffic(server_factory, model_repository, tmp_path, clients=16)


@pytest.mark.slow
async def test_reload_under_traffic_64_clients(
    model_repository: Path, server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    await reload_under_traffic(server_factory, model_repository, tmp_path, clients=64)
