"""The Python client's opt-in retries, against a mock transport (no server)."""

from __future__ import annotations

import httpx
import pytest

from fusionserve.service.client import FusionClient, FusionClientError, Retries

FAST = Retries(attempts=4, backoff_s=0.001, max_backoff_s=0.001)
ANSWER = {"model": "m", "version": "1", "modalities": ["text"], "predictions": []}


def flaky(failures: list[object]) -> tuple[httpx.MockTransport, list[str]]:
    """Fails with each item of ``failures`` in turn (an exception or a status), then answers 200."""
    calls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) <= len(failures):
            failure = failures[len(calls) - 1]
            if isinstance(failure, Exception):
                raise failure
            return httpx.Response(int(str(failure)), headers={"retry-after": "0"}, json={"error": {}})
        return httpx.Response(200, json=ANSWER if "predict" in request.url.path else {"models": []})

    return httpx.MockTransport(handle), calls


def client(transport: httpx.MockTransport, retries: Retries) -> FusionClient:
    fusion = FusionClient("http://test", retries=retries)
    fusion._http = httpx.Client(base_url="http://test", transport=transport)
    return fusion


def test_reads_are_retried_on_connection_errors_and_503() -> None:
    transport, calls = flaky([httpx.ConnectError("refused"), 503])
    assert client(transport, FAST).models() == {"models": []}
    assert len(calls) == 3


def test_predict_is_not_retried_unless_asked() -> None:
    transport, calls = flaky([httpx.RemoteProtocolError("Server disconnected")])
    with pytest.raises(httpx.RemoteProtocolError):
        client(transport, FAST).predict("m", text="x")
    assert len(calls) == 1
    transport, calls = flaky([httpx.ReadError("reset"), 503, 429])
    opted_in = Retries(attempts=4, backoff_s=0.001, max_backoff_s=0.001, inference=True)
    assert client(transport, opted_in).predict("m", text="x")["model"] == "m"
    assert len(calls) == 4


def test_retries_give_up_after_the_attempts() -> None:
    transport, calls = flaky([503] * 10)
    with pytest.raises(FusionClientError) as info:
        client(transport, FAST).models()
    assert info.value.status == 503 and len(calls) == 4
    transport, calls = flaky([httpx.ConnectError("refused")] * 10)
    with pytest.raises(httpx.ConnectError):
        client(transport, FAST).models()
    assert len(calls) == 4


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    retries = Retries(max_backoff_s=2.0)
    assert retries.delay(0, httpx.Response(503, headers={"retry-after": "1"})) == 1.0
    assert retries.delay(0, httpx.Response(503, headers={"retry-after": "60"})) == 2.0
    assert 0 <= retries.delay(3, None) <= 0.8
