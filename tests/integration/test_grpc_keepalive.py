"""Clients' keepalive pings are accepted as often as configured, also between calls."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2 as pb
from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2_grpc as pb_grpc
from tests.conftest import RunningServer

#: A client that pings its idle connection every 300 ms (tritonclient and grpc
#: expose these options; load balancers' idle timeouts make users set them).
PINGING_CLIENT = [
    ("grpc.keepalive_time_ms", 300),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


def states_while_idle(server: RunningServer, seconds: float) -> list[str]:
    """Connectivity states of a pinging channel around an idle pause between two calls."""
    states: list[str] = []
    with grpc.insecure_channel(server.grpc_target, options=PINGING_CLIENT) as channel:
        stub = pb_grpc.FusionServeStub(channel)
        stub.ListModels(pb.ListModelsRequest(), timeout=10)
        channel.subscribe(lambda state: states.append(state.name))
        time.sleep(seconds)
        stub.ListModels(pb.ListModelsRequest(), timeout=10)
    return states


@pytest.mark.parametrize(
    ("min_interval_s", "kept"), [("0.2", True), ("10", False)], ids=["allowed", "too-often"]
)
def test_client_pings_within_the_policy_keep_the_connection(
    server_factory: Callable[..., RunningServer], model_repository: Path, min_interval_s: str, kept: bool
) -> None:
    server = server_factory(
        model_repository, env={"FUSIONSERVE_GRPC_MIN_CLIENT_PING_INTERVAL_S": min_interval_s}
    )
    states = states_while_idle(server, 5.0)  # the GOAWAY came after 3 s in every trial
    # Pinging more often than allowed earns a GOAWAY (too_many_pings): the channel drops to IDLE.
    assert ("IDLE" not in states) == kept, states
