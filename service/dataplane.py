"""What a request means, independent of protocol.

Every door (native HTTP, V2 REST, V2 gRPC, native gRPC) calls this class and
nothing below it: decode the rows off the event loop, submit them to the
model version's batcher, turn the graph outputs into answers, and record one
set of metrics. Rules live here once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from service import __version__
from service.errors import (
    SHOWN_CHARS,
    DeadlineExceeded,
    FusionServeError,
    InternalError,
    InvalidInput,
    LimitExceeded,
    LoadFailed,
    ModelNotFound,
    NotReady,
    Overloaded,
    UnprocessableInput,
    shown,
)
from service.metrics import UNKNOWN_MODEL_LABEL, Metrics
from service.model.config import ModelConfig
from service.model.outputs import Embedding, Prediction, embeddings, predictions
from service.model.rows import DecodedRow, RawInputs, RowOutputs
from service.offload import offload
from service.registry import LoadedVersion, ModelRegistry, VersionState

T = TypeVar("T")

PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}
EXTENSIONS = [
    "classification",
    "binary_tensor_data",
    "model_repository",
    "statistics",
    "model_configuration",
    "health",
]


@dataclass
class ModelInfo:
    name: str
    versions: list[str]
    platform: str
    config: ModelConfig | None
    labels: list[str] | None
    states: dict[str, VersionState]
    error: str | None = None

    @property
    def ready(self) -> bool:
        return any(s.state == "READY" for s in self.states.values())


@dataclass
class VersionStats:
    model: str
    version: str
    success_count: int
    failure_count: int
    inference_count: int
    execution_count: int
    queue_ns: int
    compute_ns: int
    success_ns: int


def outcome_of(error: BaseException | None) -> str:
    """The ``outcome`` label of ``fusionserve_requests_total`` for an error (or success)."""
    if error is None:
        return "success"
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    if isinstance(error, InvalidInput):
        return "client_error"
    if isinstance(error, ModelNotFound):
        return "not_found"
    if isinstance(error, Overloaded):
        return "overloaded"
    if isinstance(error, NotReady):
        return "unavailable"
    if isinstance(error, DeadlineExceeded):
        return "deadline"
    return "error"


async def _await_all(awaitables: Sequence[Awaitable[Any]], *, return_exceptions: bool = False) -> list[Any]:
    """``asyncio.gather``, without its task and callbacks for a single awaitable.

    A request usually holds one row, and its decode and its batch slot are the
    request path's hottest awaits.
    """
    if len(awaitables) == 1:
        try:
            return [await awaitables[0]]
        except Exception as exc:
            if not return_exceptions:
                raise
            return [exc]
    return list(await asyncio.gather(*awaitables, return_exceptions=return_exceptions))


class DataPlaneApi(Protocol):
    """What the doors call: :class:`DataPlane` in the server, a scripted fake in the door tests.

    Doors depend on this and nothing more, so a fake that drifts from the real
    data plane fails type checking instead of passing tests it should not.
    """

    max_batch_items: int

    async def predict(
        self,
        model: str,
        version: str | None,
        rows: Sequence[RawInputs],
        *,
        top_k: int = 5,
        timeout_s: float | None = None,
        protocol: str = "http",
    ) -> list[Prediction]: ...

    async def embed(
        self,
        model: str,
        version: str | None,
        rows: Sequence[RawInputs],
        *,
        timeout_s: float | None = None,
        protocol: str = "http",
    ) -> list[Embedding]: ...

    def live(self) -> bool: ...

    def ready(self) -> bool: ...

    def model_ready(self, model: str, version: str | None = None) -> bool: ...

    def model_info(self, model: str, version: str | None = None) -> ModelInfo: ...

    def models(self) -> list[ModelInfo]: ...

    def server_metadata(self) -> dict[str, Any]: ...

    async def load(self, model: str) -> None: ...

    async def unload(self, model: str) -> None: ...

    def repository_index(self) -> list[dict[str, str]]: ...

    def statistics(self, model: str | None = None, version: str | None = None) -> list[VersionStats]: ...

    def record_rejected(self, model: str, protocol: str, error: BaseException) -> None: ...


class DataPlane:
    """The protocol-neutral use cases: predict, embed, metadata, repository."""

    def __init__(
        self,
        registry: ModelRegistry,
        metrics: Metrics,
        *,
        decode_threads: int,
        max_batch_items: int = 64,
        max_top_k: int = 100,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.max_batch_items = max_batch_items
        self.max_top_k = max_top_k
        self._decoder = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="decode")
        self._accepting = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- lifecycle ---------------------------------------------------------
    def start_accepting(self) -> None:
        self._accepting = True

    def stop_accepting(self) -> None:
        """Draining: new requests get NotReady; accepted ones finish."""
        self._accepting = False

    async def wait_idle(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False

    def shutdown(self) -> None:
        self._decoder.shutdown(wait=False, cancel_futures=True)

    # -- health and metadata ----------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._accepting and self.registry.all_ready()

    def model_ready(self, model: str, version: str | None = None) -> bool:
        try:
            self.registry.get(model, version)
        except NotReady:
            return False
        return self._accepting

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "fusionserve", "version": __version__, "extensions": list(EXTENSIONS)}

    def models(self) -> list[ModelInfo]:
        return [self._info(s.name) for s in self.registry.states()]

    def model_info(self, model: str, version: str | None = None) -> ModelInfo:
        info = self._info(model)
        if version is not None and version not in info.states:
            raise ModelNotFound(
                f"model {model!r} has no version {shown(version)}", model=model, version=version[:SHOWN_CHARS]
            )
        return info

    def _info(self, model: str) -> ModelInfo:
        state = self.registry.known(model)
        backend = state.config.backend if state.config else "onnx"
        return ModelInfo(
            name=state.name,
            versions=sorted(state.versions, key=int),
            platform=PLATFORMS[backend],
            config=state.config,
            labels=state.labels,
            states=dict(state.versions),
            error=state.error,
        )

    # -- repository extension ---------------------------------------------
    def repository_index(self) -> list[dict[str, str]]:
        index: list[dict[str, str]] = []
        for name in self.registry.repository.names():
            try:
                state = self.registry.known(name)
            except ModelNotFound:
                index.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": "not loaded"})
                continue
            if state.error:
                index.append({"name": name, "version": "", "state": "FAILED", "reason": state.error})
            for version, vs in sorted(state.versions.items(), key=lambda kv: int(kv[0])):
                index.append({"name": name, "version": version, "state": vs.state, "reason": vs.reason})
        return index

    async def load(self, model: str) -> None:
        """Load or reload an entry; LoadFailed (with what still serves) when it cannot be served."""
        self.registry.repository.entry_dir(model)  # ModelNotFound for unknown/unsafe names
        state = await self.registry.load(model)
        if state.last_load_error:
            serving = sorted(v for v, s in state.versions.items() if s.state == "READY")
            still = f"; version(s) {', '.join(serving)} keep serving" if serving else ""
            raise LoadFailed(f"load of model {model!r} failed: {state.last_load_error}{still}", model=model)

    async def unload(self, model: str) -> None:
        await self.registry.unload(model)

    def statistics(self, model: str | None = None, version: str | None = None) -> list[VersionStats]:
        if model is not None:
            self.registry.known(model)
        stats = []
        for lv in self.registry.loaded_versions():
            if (model and lv.name != model) or (version and lv.version != version):
                continue
            c, p = lv.counters, lv.pool.stats
            stats.append(
                VersionStats(
                    model=lv.name,
                    version=lv.version,
                    success_count=c.success_count,
                    failure_count=c.failure_count,
                    inference_count=c.inference_count,
                    execution_count=p.execution_count,
                    queue_ns=lv.batcher.queue_ns,
                    compute_ns=p.compute_ns,
                    success_ns=c.success_ns,
                )
            )
        return stats

    # -- inference ---------------------------------------------------------
    async def predict(
        self,
        model: str,
        version: str | None,
        rows: Sequence[RawInputs],
        *,
        top_k: int = 5,
        timeout_s: float | None = None,
        protocol: str = "http",
    ) -> list[Prediction]:
        async def run(
            lv: LoadedVersion, outputs: list[RowOutputs], mods: list[list[str]]
        ) -> list[Prediction]:
            return predictions(lv.config, lv.labels, lv.version, outputs, mods, top_k)

        if not 1 <= top_k <= self.max_top_k:
            error = InvalidInput(f"top_k must lie in 1..{self.max_top_k}, got {top_k}", field="top_k")
            self.record_rejected(model, protocol, error)
            raise error
        return await self._serve(model, version, rows, timeout_s, protocol, run)

    async def embed(
        self,
        model: str,
        version: str | None,
        rows: Sequence[RawInputs],
        *,
        timeout_s: float | None = None,
        protocol: str = "http",
    ) -> list[Embedding]:
        async def run(lv: LoadedVersion, outputs: list[RowOutputs], mods: list[list[str]]) -> list[Embedding]:
            return embeddings(lv.config, lv.version, outputs, mods)

        return await self._serve(model, version, rows, timeout_s, protocol, run)

    def record_rejected(self, model: str, protocol: str, error: BaseException) -> None:
        """Count a request a door refused (or its client abandoned) before it reached the core."""
        label = self.model_label(model)
        self.metrics.child(self.metrics.requests, label, "", protocol, outcome_of(error)).inc()

    def model_label(self, model: str) -> str:
        """The ``model`` label for a name a client sent: known entries as is, anything else one value.

        Clients choose the names they send; labelling them as given would let
        anyone grow ``/metrics`` (and the server's memory) without bound.
        """
        return model if self.registry.is_known(model) else UNKNOWN_MODEL_LABEL

    # -- the shared path ---------------------------------------------------
    async def _serve(
        self,
        model: str,
        version: str | None,
        rows: Sequence[RawInputs],
        timeout_s: float | None,
        protocol: str,
        finish: Callable[[LoadedVersion, list[RowOutputs], list[list[str]]], Awaitable[list[T]]],
    ) -> list[T]:
        started = time.monotonic()
        self._enter(protocol)
        lv: LoadedVersion | None = None
        error: BaseException | None = None
        try:
            if not self._accepting:
                raise NotReady("server is not accepting requests (starting up or draining)")
            lv = self.registry.get(model, version)
            self._check_rows(rows)
            timeout = timeout_s if timeout_s is not None else lv.config.batching.default_timeout_ms / 1000
            if timeout <= 0:
                raise DeadlineExceeded("the request's deadline had already passed on arrival")
            deadline = started + timeout
            # Announce the rows so the batcher waits for them rather than
            # dispatching a smaller batch a moment before they arrive.
            lv.batcher.expect(len(rows))
            try:
                decoded = await self._decode_all(lv, rows, deadline)
            except BaseException:
                lv.batcher.retract(len(rows))
                raise
            outputs = await _await_all([lv.batcher.submit(row, deadline, announced=True) for row in decoded])
            post_start = time.monotonic()
            answers = await finish(lv, outputs, [row.modalities() for row in decoded])
            self.metrics.child(self.metrics.postprocess_seconds, lv.name, lv.version).observe(
                time.monotonic() - post_start
            )
            return answers
        except FusionServeError as exc:
            error = exc
            raise
        except asyncio.CancelledError as exc:  # the client went away or its gRPC deadline passed
            error = exc
            raise
        except Exception as exc:  # a real fault: answer 500, keep the cause in the log
            error = exc
            raise InternalError(f"internal error: {type(exc).__name__}: {exc}") from exc
        finally:
            self._leave(protocol, model, lv, error, len(rows), time.monotonic() - started)

    def _check_rows(self, rows: Sequence[RawInputs]) -> None:
        if not rows:
            raise UnprocessableInput("the request holds no item")
        if len(rows) > self.max_batch_items:
            raise LimitExceeded(
                f"{len(rows)} items in one request; the limit is max_batch_items={self.max_batch_items}"
            )

    async def _decode_all(
        self, lv: LoadedVersion, rows: Sequence[RawInputs], deadline: float
    ) -> list[DecodedRow]:
        futures = [offload(self._decoder, lv.preprocessor.decode, raw) for raw in rows]
        results: list[DecodedRow | BaseException] = await _await_all(futures, return_exceptions=True)
        decoded: list[DecodedRow] = []
        for index, result in enumerate(results):
            if isinstance(result, FusionServeError):
                if len(rows) > 1:
                    result.message = f"items[{index}]: {result.message}"
                    result.args = (result.message,)
                raise result
            if isinstance(result, BaseException):
                raise result
            for modality, seconds in result.decode_seconds.items():
                self.metrics.child(self.metrics.decode_seconds, modality).observe(seconds)
            decoded.append(result)
        if time.monotonic() >= deadline:
            raise DeadlineExceeded("deadline passed while decoding the inputs")
        return decoded

    def _enter(self, protocol: str) -> None:
        self._inflight += 1
        self._idle.clear()
        self.metrics.child(self.metrics.inflight, protocol).inc()

    def _leave(
        self,
        protocol: str,
        model: str,
        lv: LoadedVersion | None,
        error: BaseException | None,
        n_rows: int,
        seconds: float,
    ) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()
        self.metrics.child(self.metrics.inflight, protocol).dec()
        version = lv.version if lv else ""
        label = lv.name if lv else self.model_label(model)
        self.metrics.child(self.metrics.requests, label, version, protocol, outcome_of(error)).inc()
        self.metrics.child(self.metrics.request_seconds, label, protocol).observe(seconds)
        if lv is not None:
            if error is None:
                lv.counters.success_count += 1
                lv.counters.inference_count += n_rows
                lv.counters.success_ns += int(seconds * 1e9)
            else:
                lv.counters.failure_count += 1
