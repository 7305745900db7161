"""What a request means, independent of protocol.

Every door (native HTTP, V2 REST, V2 gRPC, native gRPC) calls this class and
nothing below it: decode the rows off the event loop, submit them to the
model version's batcher, turn the graph outputs into answers, and record one
set of metrics. Rules live here once.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from fusionserve.service import __version__
from fusionserve.service.batching.batcher import Announcement
from fusionserve.service.errors import (
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
from fusionserve.service.lanes import Lanes
from fusionserve.service.metrics import UNKNOWN_MODEL_LABEL, Metrics
from fusionserve.service.model.config import ModelConfig
from fusionserve.service.model.outputs import (
    Embedding,
    Prediction,
    check_has,
    check_include,
    check_yields_embeddings,
    embeddings,
    predictions,
)
from fusionserve.service.model.rows import DecodedRow, DeferredRow, RawInputs, RowOutputs
from fusionserve.service.offload import offload
from fusionserve.service.registry import LoadedVersion, ModelRegistry, VersionState

if TYPE_CHECKING:
    from fusionserve.service.peers import Peers

T = TypeVar("T")

#: A lone row larger than this is decoded on a decode thread even when its model is idle:
#: decoding it on the instance's thread would hold the instance (and the next
#: request) for the decode's time. Typical uploads (a 256x256 JPEG, a second
#: of WAV, a sentence) are tens of KiB.
LONE_ROW_MAX_BYTES = 1 << 20

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


def _small(raw: RawInputs) -> bool:
    """Whether a row is small enough to decode on its instance's thread (:data:`LONE_ROW_MAX_BYTES`)."""
    size = 0
    for value in (raw.image, raw.audio, raw.text):
        if value is not None:
            size += len(value) if isinstance(value, (bytes, str)) else int(value.nbytes)
    return size <= LONE_ROW_MAX_BYTES


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
        include: Sequence[str] = (),
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

    def not_ready_reasons(self) -> dict[str, str]: ...

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
        max_timeout_s: float = 300.0,
        strict_readiness: bool = True,
    ) -> None:
        self.registry = registry
        self.strict_readiness = strict_readiness
        self.metrics = metrics
        self.max_batch_items = max_batch_items
        self.max_top_k = max_top_k
        #: The longest a client may ask the server to wait (header, V2 parameter, gRPC deadline).
        self.max_timeout_s = max_timeout_s
        self._decoder = Lanes(decode_threads, "decode", "fs-decode")
        self._accepting = False
        #: SIGTERM seen: readiness is false, though work may still be accepted (the grace period).
        self.draining = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        #: The other worker processes of this server (``--workers N``), if any.
        self.peers: Peers | None = None

    # -- lifecycle ---------------------------------------------------------
    def start_accepting(self) -> None:
        self._accepting = True
        if self.peers is not None:
            self.peers.set_ready(True)

    def begin_drain(self) -> None:
        """SIGTERM: readiness false at once; new work is still taken until :meth:`stop_accepting`."""
        self.draining = True

    def stop_accepting(self) -> None:
        """Draining: new requests get NotReady; accepted ones finish."""
        self.draining = True
        self._accepting = False
        if self.peers is not None:
            self.peers.set_ready(False)

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def inflight(self) -> int:
        """Requests inside the data plane now."""
        return self._inflight

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
        """False only when the process cannot recover by itself (an orchestrator should restart it)."""
        return self.liveness() is None

    def liveness(self) -> str | None:
        """Why the process is not live, or None."""
        return self.registry.unrecoverable()

    def ready(self) -> bool:
        return not self.readiness()

    def readiness(self) -> list[str]:
        """Why the server is not ready (empty when it is); with several processes, all of them.

        Strict (``strict_readiness``, the default): every model that should load
        has loaded and has a healthy instance. Lenient: one serving model is enough.
        """
        reasons: list[str] = []
        if self.draining:
            reasons.append("draining: shutting down")
        elif not self._accepting:
            reasons.append("starting: models are loading")
        if self.strict_readiness:
            reasons.extend(self.registry.not_ready_reasons())
        elif not any(v.state == "READY" for s in self.registry.states() for v in s.versions.values()):
            reasons.append("no model is ready")
        if not reasons and self.peers is not None and not self.peers.all_ready():
            reasons.append("another server process is not ready")
        return reasons

    def not_ready_reasons(self) -> dict[str, str]:
        """Each model that is not ready and why, for ``/health/ready`` (``*``: the server itself)."""
        reasons: dict[str, str] = {}
        if not self._accepting:
            reasons["*"] = "not accepting requests: models still loading, or draining"
        for state in self.registry.states():
            waiting = {v: vs for v, vs in state.versions.items() if vs.state != "READY"}
            if state.error:
                reasons[state.name] = f"failed: {state.error}"
            elif not state.versions:
                reasons[state.name] = "no version found"
            elif waiting:
                reasons[state.name] = "; ".join(
                    f"version {v} {vs.state}" + (f": {vs.reason}" if vs.reason else "")
                    for v, vs in sorted(waiting.items())
                )
        return reasons

    def model_ready(self, model: str, version: str | None = None) -> bool:
        try:
            self.registry.get(model, version)
        except NotReady:
            return False
        return self._accepting and not self.draining

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

    async def load(self, model: str, *, broadcast: bool = True) -> None:
        """Load or reload an entry here and, with several processes, in every other one;
        LoadFailed (with what still serves) when it cannot be served."""
        self.registry.repository.entry_dir(model)  # ModelNotFound for unknown/unsafe names
        state = await self.registry.load(model)
        if broadcast and self.peers is not None:  # the others end in the same state, failed or not
            await self.peers.broadcast("load", model)
        if state.last_load_error:
            serving = sorted(v for v, s in state.versions.items() if s.state == "READY")
            still = f"; version(s) {', '.join(serving)} keep serving" if serving else ""
            raise LoadFailed(f"load of model {model!r} failed: {state.last_load_error}{still}", model=model)

    async def unload(self, model: str, *, broadcast: bool = True) -> None:
        await self.registry.unload(model)
        if broadcast and self.peers is not None:
            await self.peers.broadcast("unload", model)

    async def apply_peer_change(self, op: str, model: str) -> None:
        """A load/unload another worker process received (``fusionserve.service.peers``)."""
        if op == "load":
            await self.load(model, broadcast=False)
        elif op == "unload":
            await self.unload(model, broadcast=False)
        else:
            raise ValueError(f"unknown repository operation {op!r}")

    async def replay_peer_changes(self) -> None:
        """A worker started after load/unload calls: end in the state the others are in."""
        if self.peers is None:
            return
        last: dict[str, str] = {}
        for op, model in self.peers.recorded():
            last[model] = op
        for model, op in last.items():
            loaded = any(lv.name == model for lv in self.registry.loaded_versions())
            if op == "unload" and loaded:
                await self.registry.unload(model)
            elif op == "load" and not loaded:
                await self.registry.load(model)

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
        include: Sequence[str] = (),
        timeout_s: float | None = None,
        protocol: str = "http",
    ) -> list[Prediction]:
        """Top-k labels; ``include`` adds ``embeddings`` and/or ``attribution`` from the same run."""
        wanted = check_include(include)

        async def run(
            lv: LoadedVersion, outputs: list[RowOutputs], decoded: list[DecodedRow]
        ) -> list[Prediction]:
            mods = [row.modalities() for row in decoded]
            return predictions(lv.config, lv.labels, lv.version, outputs, mods, top_k, wanted)

        if not 1 <= top_k <= self.max_top_k:
            error = InvalidInput(f"top_k must lie in 1..{self.max_top_k}, got {top_k}", field="top_k")
            self.record_rejected(model, protocol, error)
            raise error
        return await self._serve(
            model, version, rows, timeout_s, protocol, run, check=lambda lv: check_has(lv.config, wanted)
        )

    async def embed(
        self,
        model: str,
        version: str | None,
        rows: Sequence[RawInputs],
        *,
        timeout_s: float | None = None,
        protocol: str = "http",
    ) -> list[Embedding]:
        async def run(
            lv: LoadedVersion, outputs: list[RowOutputs], decoded: list[DecodedRow]
        ) -> list[Embedding]:
            mods = [row.modalities() for row in decoded]
            tokens = [0 if row.text_ids is None else int(row.text_ids.shape[0]) for row in decoded]
            return embeddings(lv.config, lv.version, outputs, mods, tokens)

        return await self._serve(
            model,
            version,
            rows,
            timeout_s,
            protocol,
            run,
            check=lambda lv: check_yields_embeddings(lv.config),
        )

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
        finish: Callable[[LoadedVersion, list[RowOutputs], list[DecodedRow]], Awaitable[list[T]]],
        check: Callable[[LoadedVersion], None] | None = None,
    ) -> list[T]:
        started = time.monotonic()
        self._enter(protocol)
        lv: LoadedVersion | None = None
        error: BaseException | None = None
        try:
            if not self._accepting:
                raise NotReady("server is not accepting requests (starting up or draining)")
            lv = self.registry.get(model, version)
            lv.hold()  # released in _leave; a reload or unload waits for it (registry._stop_version)
            if check is not None:  # what was asked of the model: refused before any decoding
                check(lv)
            self._check_rows(rows)
            timeout = timeout_s if timeout_s is not None else lv.config.batching.default_timeout_ms / 1000
            timeout = min(timeout, self.max_timeout_s)  # a client may not hold a slot for ever
            if timeout <= 0:
                raise DeadlineExceeded("the request's deadline had already passed on arrival")
            deadline = started + timeout
            # Admission before any decoding: a request that cannot be queued
            # whole costs no CPU (and a batch-form request is all or nothing).
            lv.batcher.admit(len(rows))
            # Announce the rows so the batcher waits for them rather than
            # dispatching a smaller batch a moment before they arrive. The
            # announcement is always withdrawn, even when the caller is
            # cancelled between decoding and submitting.
            self._count_received(rows)
            lone = len(rows) == 1 and lv.batcher.free_for_a_lone_row() and _small(rows[0])
            announcement = lv.batcher.expect(len(rows))
            try:
                if lone:  # decoded and computed on the free instance's thread: one crossing
                    decoded, outputs = await self._serve_lone_row(lv, rows[0], deadline, announcement)
                else:
                    decoded = await self._decode_all(lv, rows, deadline)
                    try:
                        outputs = await _await_all(
                            [lv.batcher.submit(row, deadline, announcement=announcement) for row in decoded]
                        )
                    finally:  # answered or failed: the rows' cost is no longer held
                        lv.batcher.cost_gate.release(sum(row.reserved for row in decoded))
            finally:
                lv.batcher.withdraw(announcement)
            post_start = time.monotonic()
            if lv.preprocessor.postprocesses:
                outputs = await offload(self._decoder, lv.preprocessor.postprocess, outputs)
            answers = await finish(lv, outputs, decoded)
            self._report_truncation(lv, decoded, answers)
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

    def _count_received(self, rows: Sequence[RawInputs]) -> None:
        for raw in rows:
            for modality in ("image", "audio", "text"):
                value = getattr(raw, modality)
                if value is None:
                    continue
                size = (
                    len(value.encode("utf-8"))
                    if isinstance(value, str)
                    else int(getattr(value, "nbytes", 0) or len(value))
                )
                self.metrics.child(self.metrics.received_bytes, modality).inc(size)

    def _report_truncation(self, lv: LoadedVersion, decoded: list[DecodedRow], answers: list[Any]) -> None:
        """No silent cut: count each truncated input, and put it in its row's answer."""
        for row in decoded:
            for modality in row.truncated:
                self.metrics.child(self.metrics.truncations, lv.name, modality).inc()
        if len(answers) == len(decoded):
            for answer, row in zip(answers, decoded, strict=True):
                if row.truncated and hasattr(answer, "truncated"):
                    answer.truncated = dict(row.truncated)

    def _check_rows(self, rows: Sequence[RawInputs]) -> None:
        if not rows:
            raise UnprocessableInput("the request holds no item")
        if len(rows) > self.max_batch_items:
            raise LimitExceeded(
                f"{len(rows)} items in one request; the limit is max_batch_items={self.max_batch_items}"
            )

    async def _serve_lone_row(
        self, lv: LoadedVersion, raw: RawInputs, deadline: float, announcement: Announcement
    ) -> tuple[list[DecodedRow], list[RowOutputs]]:
        """One row for an idle model: its instance decodes and computes it (the pool gives its cost back)."""
        deferred = DeferredRow(raw, functools.partial(lv.preprocessor.decode, gate=lv.batcher.cost_gate))
        outputs = await lv.batcher.submit(deferred, deadline, announcement=announcement)
        row = deferred.decoded
        if row is None:  # outputs exist only for a decoded row
            raise InternalError("internal error: a lone row was answered without being decoded")
        self._record_decoded(lv, row)
        return [row], [outputs]

    def _record_decoded(self, lv: LoadedVersion, row: DecodedRow) -> None:
        for modality, seconds in row.decode_seconds.items():
            self.metrics.child(self.metrics.decode_seconds, modality).observe(seconds)
        self.metrics.observe_row(lv.name, row.modalities(), row.sizes)

    async def _decode_all(
        self, lv: LoadedVersion, rows: Sequence[RawInputs], deadline: float
    ) -> list[DecodedRow]:
        gate = lv.batcher.cost_gate
        futures = [offload(self._decoder, lv.preprocessor.decode, raw, gate) for raw in rows]
        results: list[DecodedRow | BaseException] = await _await_all(futures, return_exceptions=True)
        decoded: list[DecodedRow] = []
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:  # the rows that did decode give their cost back
            gate.release(sum(r.reserved for r in results if isinstance(r, DecodedRow)))
        for index, result in enumerate(results):
            if isinstance(result, FusionServeError):
                if len(rows) > 1:
                    result.message = f"items[{index}]: {result.message}"
                    result.args = (result.message,)
                raise result
            if isinstance(result, BaseException):
                raise result
            self._record_decoded(lv, result)
            decoded.append(result)
        if time.monotonic() >= deadline:
            gate.release(sum(row.reserved for row in decoded))
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
        if lv is not None:
            lv.release()
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
