"""A small Python client for the native HTTP API, sync and async, on httpx.

    with FusionClient("http://127.0.0.1:8000") as client:
        client.predict("digits-fusion", image="seven.png", audio="seven.wav", text="a seven")

Files may be paths or bytes. Errors come back as :class:`FusionClientError`
carrying the HTTP status and the server's error code and message.

Retries (:class:`Retries`): calls that read (models, model, ready) are
retried on connection errors and on 503/429 (honouring ``Retry-After``) with
exponential backoff and jitter. Predict and embed are retried only when asked
(``Retries(inference=True)``): the server computes them without side effects,
so a retry after a lost answer is safe, but it costs compute and a caller may
prefer to see the error.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

FileLike = str | Path | bytes | None


class FusionClientError(Exception):
    def __init__(self, status: int, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.request_id = request_id


def _read(value: FileLike) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def _form(image: FileLike, audio: FileLike, text: str | None, top_k: int | None) -> dict[str, Any]:
    """Multipart parts; text and top_k travel as plain (filename-less) form fields."""
    parts: dict[str, Any] = {}
    image_bytes, audio_bytes = _read(image), _read(audio)
    if image_bytes is not None:
        parts["image"] = ("image", image_bytes, "application/octet-stream")
    if audio_bytes is not None:
        parts["audio"] = ("audio", audio_bytes, "application/octet-stream")
    if text is not None:
        parts["text"] = (None, text)
    if not parts:
        raise ValueError("give at least one of image, audio, text")
    if top_k is not None:
        parts["top_k"] = (None, str(top_k))
    return parts


def _path(model: str, version: str | None, action: str) -> str:
    base = f"/v1/models/{model}" + (f"/versions/{version}" if version else "")
    return f"{base}/{action}"


def _answer(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        try:
            err = response.json().get("error", {})
            code, message = err.get("code", "error"), err.get("message", response.text)
        except ValueError:
            code, message = "error", response.text
        raise FusionClientError(response.status_code, code, message, response.headers.get("x-request-id"))
    result: dict[str, Any] = response.json()
    return result


@dataclass(frozen=True)
class Retries:
    """When and how often to try a call again (see the module docstring)."""

    attempts: int = 4  # tries in all, the first included
    backoff_s: float = 0.1  # the first wait; doubles each time, with full jitter
    max_backoff_s: float = 5.0
    inference: bool = False  # opt-in: retry predict/embed too
    statuses: frozenset[int] = frozenset({429, 503})

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Seconds before try ``attempt + 1`` (``Retry-After`` when the server gave one)."""
        if response is not None:
            given = response.headers.get("retry-after", "")
            if given.replace(".", "", 1).isdigit():
                return min(float(given), self.max_backoff_s)
        return random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2**attempt))

    def again(self, attempt: int, response: httpx.Response | None) -> bool:
        """Whether to try again after ``attempt`` (0-based) ended with ``response`` (None: no answer)."""
        if attempt + 1 >= self.attempts:
            return False
        return response is None or response.status_code in self.statuses


NO_RETRIES = Retries(attempts=1)


def _retrying(retries: Retries, send: Callable[[], httpx.Response]) -> httpx.Response:
    for attempt in range(retries.attempts):
        try:
            response: httpx.Response | None = send()
        except httpx.TransportError:
            response = None
            if not retries.again(attempt, None):
                raise
        if response is not None and not retries.again(attempt, response):
            return response
        time.sleep(retries.delay(attempt, response))
    raise AssertionError("unreachable")  # pragma: no cover


async def _aretrying(retries: Retries, send: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    for attempt in range(retries.attempts):
        try:
            response: httpx.Response | None = await send()
        except httpx.TransportError:
            response = None
            if not retries.again(attempt, None):
                raise
        if response is not None and not retries.again(attempt, response):
            return response
        await asyncio.sleep(retries.delay(attempt, response))
    raise AssertionError("unreachable")  # pragma: no cover


def _headers(timeout_ms: float | None) -> dict[str, str]:
    return {"X-Request-Timeout-Ms": f"{timeout_ms:g}"} if timeout_ms is not None else {}


class FusionClient:
    """Synchronous client."""

    def __init__(
        self, url: str, *, timeout: float = 30.0, token: str | None = None, retries: Retries | None = None
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url, timeout=timeout, headers=headers)
        self.retries = retries or Retries()
        self._inference_retries = self.retries if self.retries.inference else NO_RETRIES

    def _get(self, path: str) -> httpx.Response:
        return _retrying(self.retries, lambda: self._http.get(path))

    def _post(self, path: str, files: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
        return _retrying(self._inference_retries, lambda: self._http.post(path, files=files, headers=headers))

    def __enter__(self) -> FusionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def predict(
        self,
        model: str,
        *,
        image: FileLike = None,
        audio: FileLike = None,
        text: str | None = None,
        top_k: int | None = None,
        version: str | None = None,
        timeout_ms: float | None = None,
    ) -> dict[str, Any]:
        files = _form(image, audio, text, top_k)
        return _answer(self._post(_path(model, version, "predict"), files, _headers(timeout_ms)))

    def embed(
        self,
        model: str,
        *,
        image: FileLike = None,
        audio: FileLike = None,
        text: str | None = None,
        version: str | None = None,
        timeout_ms: float | None = None,
    ) -> dict[str, Any]:
        files = _form(image, audio, text, None)
        return _answer(self._post(_path(model, version, "embed"), files, _headers(timeout_ms)))

    def models(self) -> dict[str, Any]:
        return _answer(self._get("/v1/models"))

    def model(self, model: str) -> dict[str, Any]:
        return _answer(self._get(f"/v1/models/{model}"))

    def ready(self) -> bool:
        return self._http.get("/health/ready").status_code == 200


class AsyncFusionClient:
    """Asynchronous client with the same calls."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        token: str | None = None,
        limits: httpx.Limits | None = None,
        retries: Retries | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=url, timeout=timeout, headers=headers, limits=limits or httpx.Limits(max_connections=256)
        )
        self.retries = retries or Retries()
        self._inference_retries = self.retries if self.retries.inference else NO_RETRIES

    async def _get(self, path: str) -> httpx.Response:
        return await _aretrying(self.retries, lambda: self._http.get(path))

    async def _post(self, path: str, files: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
        return await _aretrying(
            self._inference_retries, lambda: self._http.post(path, files=files, headers=headers)
        )

    async def __aenter__(self) -> AsyncFusionClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def predict(
        self,
        model: str,
        *,
        image: FileLike = None,
        audio: FileLike = None,
        text: str | None = None,
        top_k: int | None = None,
        version: str | None = None,
        timeout_ms: float | None = None,
    ) -> dict[str, Any]:
        files = _form(image, audio, text, top_k)
        return _answer(await self._post(_path(model, version, "predict"), files, _headers(timeout_ms)))

    async def embed(
        self,
        model: str,
        *,
        image: FileLike = None,
        audio: FileLike = None,
        text: str | None = None,
        version: str | None = None,
        timeout_ms: float | None = None,
    ) -> dict[str, Any]:
        files = _form(image, audio, text, None)
        return _answer(await self._post(_path(model, version, "embed"), files, _headers(timeout_ms)))

    async def models(self) -> dict[str, Any]:
        return _answer(await self._get("/v1/models"))

    async def ready(self) -> bool:
        return (await self._http.get("/health/ready")).status_code == 200
