"""The workers' shared board: readiness and the closing step hold for the whole server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fusionserve.service.peers import Peers, WorkerPlace, clear_slot, create_board


@pytest.fixture
def two_peers(tmp_path: Path) -> Iterator[tuple[Peers, Peers]]:
    create_board(tmp_path, 2)
    first = Peers(WorkerPlace(0, 2, tmp_path, http_fd=-1, grpc_port=None))
    second = Peers(WorkerPlace(1, 2, tmp_path, http_fd=-1, grpc_port=None))
    yield first, second
    second.close()
    first.close()


def test_ready_only_when_every_worker_is(two_peers: tuple[Peers, Peers]) -> None:
    first, second = two_peers
    first.set_ready(True)
    assert not first.all_ready()
    second.set_ready(True)
    assert first.all_ready() and second.all_ready()


def test_the_listener_may_refuse_only_when_every_worker_has_drained(two_peers: tuple[Peers, Peers]) -> None:
    first, second = two_peers
    first.set_closing()
    assert not first.all_closing()  # the other still drains: keep taking connections
    second.set_closing()
    assert first.all_closing() and second.all_closing()


def test_a_reaped_worker_is_not_ready(two_peers: tuple[Peers, Peers], tmp_path: Path) -> None:
    first, second = two_peers
    first.set_ready(True)
    second.set_ready(True)
    clear_slot(tmp_path, 0, 2)  # the supervisor reaped worker 0
    assert not second.all_ready()


def test_a_dead_worker_holds_no_drain_open_and_its_replacement_does(tmp_path: Path) -> None:
    create_board(tmp_path, 2)
    survivor = Peers(WorkerPlace(0, 2, tmp_path, http_fd=-1, grpc_port=None))
    try:
        clear_slot(tmp_path, 1, 2)  # worker 1 died
        survivor.set_closing()
        assert survivor.all_closing()
        replacement = Peers(WorkerPlace(1, 2, tmp_path, http_fd=-1, grpc_port=None))
        try:
            assert not survivor.all_closing()  # a live worker that has not drained yet
        finally:
            replacement.close()
    finally:
        survivor.close()
