"""A small Python client for the native HTTP API, sync and async, on httpx.

    with FusionClient("http://127.0.0.1:8000") as client:
        client.predict("digits-fusion", image="seven.png", audio="seven.wav", text="a seven")

Files may be paths or bytes. Errors come back as :class:`FusionClientError`
carrying the HTTP status and the server's error code and message.
"""

from __future__ import annotations

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


def _headers(timeout_ms: float | None) -> dict[str, str]:
    return {"X-Request-Timeout-Ms": f"{timeout_ms:g}"} if timeout_ms is not None else {}


class FusionClient:
    """Synchronous client."""

    def __init__(self, url: str, *, timeout: float = 30.0, token: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url, timeout=timeout, headers=headers)

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
        return _answer(
            self._http.post(_path(model, version, "predict"), files=files, headers=_headers(timeout_ms))
        )

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
        return _answer(
            self._http.post(_path(model, version, "embed"), files=files, headers=_headers(timeout_ms))
        )

    def models(self) -> dict[str, Any]:
        return _answer(self._http.get("/v1/models"))

    def model(self, model: str) -> dict[str, Any]:
        return _answer(self._http.get(f"/v1/models/{model}"))

    def ready(self) -> bool:
        return self._http.get("/health/ready").status_code == 200


class AsyncFusionClient:
    """Asynchronous client with the same calls."""

    def __init__(
        self, url: str, *, timeout: float = 30.0, token: str | None = None, limits: httpx.Limits | None = None
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=url, timeout=timeout, headers=headers, limits=limits or httpx.Limits(max_connections=256)
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
        return _answer(
            await self._http.post(_path(model, version, "predict"), files=files, headers=_headers(timeout_ms))
        )

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
        return _answer(
            await self._http.post(_path(model, version, "embed"), files=files, headers=_headers(timeout_ms))
        )

    async def models(self) -> dict[str, Any]:
        return _answer(await self._http.get("/v1/models"))

    async def ready(self) -> bool:
        return (await self._http.get("/health/ready")).status_code == 200
