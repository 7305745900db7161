"""Loaded model versions, their readiness, and load/unload.

The registry turns repository entries into serving objects: for each version
its preprocessor, one ``DynamicBatcher`` and a ``WorkerPool`` of backend
instances. A version is READY only after warm-up succeeded; a version that
fails is FAILED with the reason, counted in a metric, and never stops the
others from loading.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from fusionserve.service.batching import DynamicBatcher
from fusionserve.service.errors import SHOWN_CHARS, FusionServeError, ModelNotFound, NotReady, shown
from fusionserve.service.failpoints import Failpoints, wrap_backend
from fusionserve.service.metrics import Metrics
from fusionserve.service.model.config import Batching, ModelConfig
from fusionserve.service.model.repository import (
    ModelRepository,
    RepositoryEntry,
    check_version_name,
    public_reason,
)
from fusionserve.service.preprocess import Preprocessor
from fusionserve.service.runtimes import Backend, DeviceSpec, load_backend
from fusionserve.service.workers import WorkerPool
from fusionserve.service.workers.pool import stuck_threads

log = logging.getLogger("fusionserve.registry")

READY, LOADING, UNAVAILABLE, FAILED = "READY", "LOADING", "UNAVAILABLE", "FAILED"


@dataclass
class VersionState:
    state: str
    reason: str = ""


@dataclass
class VersionCounters:
    """Cumulative statistics of one version (the V2 statistics extension reads them)."""

    success_count: int = 0
    failure_count: int = 0
    inference_count: int = 0
    success_ns: int = 0


@dataclass
class LoadedVersion:
    name: str
    version: str
    config: ModelConfig
    labels: list[str] | None
    preprocessor: Preprocessor
    batcher: DynamicBatcher
    pool: WorkerPool
    counters: VersionCounters = field(default_factory=VersionCounters)
    #: Requests that hold this version (decoding, not yet queued). A version
    #: replaced by a reload or unloaded waits for them before its batcher
    #: closes, so a request accepted by the old version is answered by it.
    holders: int = 0
    _released: asyncio.Event | None = field(default=None, repr=False)

    def hold(self) -> None:
        self.holders += 1

    def release(self) -> None:
        self.holders -= 1
        if self.holders == 0 and self._released is not None:
            self._released.set()

    async def wait_released(self, timeout_s: float) -> None:
        """Until no request holds this version (or ``timeout_s`` passes)."""
        if self.holders == 0:
            return
        self._released = asyncio.Event()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._released.wait(), timeout_s)


@dataclass
class ModelState:
    """What the registry knows of one repository entry, loaded or not."""

    name: str
    config: ModelConfig | None
    labels: list[str] | None
    versions: dict[str, VersionState] = field(default_factory=dict)
    error: str | None = None
    last_load_error: str | None = None  # why the latest (re)load failed; None when it succeeded


def instance_devices(config: ModelConfig, process_count: int = 1) -> list[DeviceSpec]:
    """One DeviceSpec per instance of this process, from the config's instance groups.

    A CPU group's ``count`` is for the whole server: with N processes each runs
    ``ceil(count / N)`` (the count was chosen to fill the host's cores, which
    the processes share). A GPU group's count is per process.
    """
    devices: list[DeviceSpec] = []
    for group in config.instance_groups:
        count = group.count
        if group.kind == "cpu" and process_count > 1:
            count = max(1, math.ceil(count / process_count))
        ids = group.devices or [0]
        for device_id in ids:
            devices.extend(DeviceSpec(kind=group.kind, index=device_id) for _ in range(count))
    return devices


def instance_timeouts(config: ModelConfig, process_count: int = 1) -> list[float | None]:
    """Each instance's batch timeout in seconds, in :func:`instance_devices` order."""
    timeouts: list[float | None] = []
    for group in config.instance_groups:
        count = group.count
        if group.kind == "cpu" and process_count > 1:
            count = max(1, math.ceil(count / process_count))
        timeouts.extend(group.timeout_ms / 1000 for _ in (group.devices or [0]) for _ in range(count))
    return timeouts


def process_share(batching: Batching, process_count: int) -> Batching:
    """This process's part of a queue bound that holds for the whole server.

    With N processes each one queues at most ``ceil(max_queue_size / N)`` rows,
    so the server never holds more than the bound rounded up to a multiple of N
    (not N times the bound); a process whose share is full answers 429 even if
    another has room (docs/model-config.md).
    """
    if process_count <= 1:
        return batching
    share = max(1, math.ceil(batching.max_queue_size / process_count))
    return batching.model_copy(update={"max_queue_size": share})


#: At most this many model names in an unknown-model answer.
LISTED_MODELS = 20


def unknown_model(name: str, known: list[str]) -> ModelNotFound:
    """ModelNotFound that lists the models there are and the closest name to the one asked for."""
    # A name longer than any error shows is no typo of a model's (and difflib is quadratic).
    closest = difflib.get_close_matches(name, known, n=1, cutoff=0.6) if len(name) <= SHOWN_CHARS else []
    listed = known[:LISTED_MODELS]
    message = f"unknown model {shown(name)}"
    if closest:
        message += f"; did you mean {closest[0]!r}?"
    if listed:
        more = f" and {len(known) - len(listed)} more" if len(known) > len(listed) else ""
        message += f" Models: {', '.join(listed)}{more} (GET /v1/models lists them)."
    else:
        message += "; the repository has no models"
    details: dict[str, object] = {"model": name[:SHOWN_CHARS], "available": listed}
    if closest:
        details["closest"] = closest[0]
    return ModelNotFound(message, **details)


class ModelRegistry:
    def __init__(
        self,
        repository: ModelRepository,
        metrics: Metrics,
        failpoints: Failpoints | None = None,
        *,
        max_stuck_threads: int = 8,
        allow_model_code: bool = False,
    ) -> None:
        self.repository = repository
        #: Run an entry's own Python (config code_file): only for a trusted repository.
        self.allow_model_code = allow_model_code
        self.metrics = metrics
        self.failpoints = failpoints
        #: More compute threads stuck than this and the process is not live (it cannot recover).
        self.max_stuck_threads = max_stuck_threads
        self._states: dict[str, ModelState] = {}
        self._loaded: dict[str, dict[str, LoadedVersion]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: Server processes sharing the model's queue bound (docs/model-config.md).
        self.process_count = 1

    # -- queries -----------------------------------------------------------
    def states(self) -> list[ModelState]:
        return [self._states[n] for n in sorted(self._states)]

    def is_known(self, name: str) -> bool:
        """Whether ``name`` is an entry the registry has seen (metrics label only these)."""
        return name in self._states

    def known(self, name: str) -> ModelState:
        """State of a model the registry has seen; ModelNotFound otherwise."""
        state = self._states.get(name)
        if state is None:
            raise unknown_model(name, sorted(self._states))
        return state

    def get(self, name: str, version: str | None = None) -> LoadedVersion:
        """The version that serves a request; raises ModelNotFound or NotReady."""
        state = self.known(name)
        if version is not None:
            check_version_name(version)
            if version not in state.versions:
                raise ModelNotFound(f"model {name!r} has no version {version!r}", model=name, version=version)
        loaded = self._loaded.get(name, {})
        if version is None:
            if not loaded:
                reason = state.error or "; ".join(v.reason for v in state.versions.values() if v.reason)
                raise NotReady(f"model {name!r} is not ready" + (f": {reason}" if reason else ""), model=name)
            version = max(loaded, key=int)
        if version not in loaded:
            vstate = state.versions[version]
            raise NotReady(
                f"model {name!r} version {version} is {vstate.state.lower()}"
                + (f": {vstate.reason}" if vstate.reason else ""),
                model=name,
                version=version,
            )
        return loaded[version]

    def loaded_versions(self) -> list[LoadedVersion]:
        return [v for versions in self._loaded.values() for v in versions.values()]

    def all_ready(self) -> bool:
        return bool(self._states) and not self.not_ready_reasons()

    def not_ready_reasons(self) -> list[str]:
        """Why not every model is ready (empty when all are): ``/health/ready`` says it."""
        if not self._states:
            return ["no model loaded"]
        reasons = []
        for name in sorted(self._states):
            state = self._states[name]
            if state.error is not None:
                reasons.append(f"model {name}: {state.error}")
                continue
            if not state.versions:
                reasons.append(f"model {name}: no version")
            for version, vs in sorted(state.versions.items()):
                if vs.state != READY:
                    reasons.append(
                        f"model {name} version {version} is {vs.state.lower()}"
                        + (f": {vs.reason}" if vs.reason else "")
                    )
        for lv in self.loaded_versions():
            if lv.pool.healthy == 0:
                reasons.append(
                    f"model {lv.name} version {lv.version}: no healthy instance "
                    "(every instance is stuck or being replaced)"
                )
        return reasons

    def unrecoverable(self) -> str | None:
        """Why the process cannot recover by itself (``/health/live`` false), or None."""
        stuck = stuck_threads()
        if stuck > self.max_stuck_threads:
            return (
                f"{stuck} compute threads are stuck in calls that never returned "
                f"(more than max_stuck_threads={self.max_stuck_threads}); restart the process"
            )
        return None

    # -- load / unload -----------------------------------------------------
    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def load_all(self) -> None:
        names = self.repository.names()
        if not names:
            log.warning("model repository %s holds no model", self.repository.root)
        await asyncio.gather(*(self.load(name) for name in names))

    async def load(self, name: str) -> ModelState:
        """(Re)load an entry from disk. Failures are recorded in the state, never raised.

        A reload builds the new versions beside the old ones, which keep
        serving; only when every new version is ready do they replace the old
        (which then drain). A reload that fails leaves the old in place and
        says why in ``last_load_error``.
        """
        async with self._lock(name):
            entry = await asyncio.to_thread(self.repository.read, name)
            old_loaded = self._loaded.get(name, {})
            old_state = self._states.get(name)
            state = ModelState(name=name, config=entry.config, labels=entry.labels, error=entry.error)
            if entry.error or entry.config is None:
                self._record_failure(name, None, entry.error or "no configuration", entry.path)
                if old_loaded and old_state is not None:
                    return self._keep_old(old_state, public_reason(entry.error or "", self.repository.root))
                await self._unload_locked(name)
                state.error = public_reason(entry.error or "", self.repository.root)
                state.last_load_error = state.error
                self._states[name] = state
                return state
            for vf in entry.versions:
                state.versions[vf.version] = VersionState(LOADING)
            if not old_loaded:
                self._states[name] = state  # a first load shows LOADING while it loads
            new_loaded: dict[str, LoadedVersion] = {}
            for vf in entry.versions:
                loaded = await self._load_version(entry, vf.version, vf.path, state)
                if loaded is not None:
                    new_loaded[vf.version] = loaded
            failed = [f"version {v}: {s.reason}" for v, s in state.versions.items() if s.state == FAILED]
            if old_loaded and old_state is not None and failed:
                for loaded in new_loaded.values():
                    await self._stop_version(loaded, 0.0, publish=False)
                return self._keep_old(old_state, "; ".join(failed))
            self._states[name] = state
            self._loaded.pop(name, None)
            if new_loaded:
                self._loaded[name] = new_loaded
            for loaded in new_loaded.values():
                self.metrics.model_ready.labels(name, loaded.version).set(1)
                self.metrics.queue_capacity.labels(name, loaded.version).set(
                    process_share(loaded.config.batching, self.process_count).max_queue_size
                )
            for version, loaded in old_loaded.items():
                await self._stop_version(loaded, 30.0, publish=version not in new_loaded)
            state.last_load_error = "; ".join(failed) or None
            return state

    def _keep_old(self, old_state: ModelState, reason: str) -> ModelState:
        """A failed reload: the versions that served keep serving; the failure is reported."""
        log.error("model %s: reload failed, the loaded version(s) keep serving: %s", old_state.name, reason)
        old_state.last_load_error = reason
        return old_state

    def _record_failure(self, name: str, version: str | None, reason: str, where: Path) -> None:
        """Count and log a load failure; the log keeps the server's paths, clients never see them."""
        self.metrics.child(self.metrics.load_failures, name).inc()  # an on-disk name: bounded label
        if version is None:
            log.error("model %s cannot be served: %s (entry %s)", name, reason, where)
        else:
            log.error("model %s version %s failed to load: %s (file %s)", name, version, reason, where)

    async def _load_version(
        self, entry: RepositoryEntry, version: str, path: Path, state: ModelState
    ) -> LoadedVersion | None:
        """Load and warm up one version; returns it (not yet serving), or None when it failed."""
        assert entry.config is not None
        config = entry.config
        backends: list[Backend] = []
        devices = instance_devices(config, self.process_count)

        def make_backend(index: int) -> Backend:
            """A fresh backend for instance ``index`` (also replaces a stuck one)."""
            return wrap_backend(load_backend(config, path, devices[index]), self.failpoints, entry.name)

        try:
            for index in range(len(devices)):
                backends.append(await asyncio.to_thread(make_backend, index))
            preprocessor = await asyncio.to_thread(Preprocessor, config, entry.path, self.allow_model_code)
            batching = process_share(config.batching, self.process_count)
            batcher = DynamicBatcher(
                batching,
                model=entry.name,
                version=version,
                metrics=self.metrics,
                track_arrivals=True,
            )
            pool = WorkerPool(
                batcher,
                backends,
                config,
                model=entry.name,
                version=version,
                metrics=self.metrics,
                timeouts_s=instance_timeouts(config, self.process_count),
                factory=make_backend,
            )
            pool.start()
            try:
                await pool.warmup()
            except BaseException:
                batcher.close()
                await pool.stop(timeout_s=1.0)  # closes the backends (or abandons a stuck one)
                backends = []
                raise
        except Exception as exc:  # a broken model must not stop the others
            for backend in backends:
                backend.close()
            reason = exc.message if isinstance(exc, FusionServeError) else f"{type(exc).__name__}: {exc}"
            state.versions[version] = VersionState(FAILED, public_reason(reason, self.repository.root))
            self._record_failure(entry.name, version, reason, path)
            if entry.name not in self._loaded or version not in self._loaded[entry.name]:
                self.metrics.model_ready.labels(entry.name, version).set(0)
            return None
        state.versions[version] = VersionState(READY)
        log.info("model %s version %s ready (%d instance(s))", entry.name, version, len(backends))
        return LoadedVersion(
            name=entry.name,
            version=version,
            config=config,
            labels=entry.labels,
            preprocessor=preprocessor,
            batcher=batcher,
            pool=pool,
        )

    async def unload(self, name: str, drain_timeout_s: float = 30.0) -> None:
        self.known(name)
        async with self._lock(name):
            await self._unload_locked(name, drain_timeout_s)
            state = self._states[name]
            for version in state.versions:
                state.versions[version] = VersionState(UNAVAILABLE, "unloaded")

    async def _unload_locked(self, name: str, drain_timeout_s: float = 30.0) -> None:
        versions = self._loaded.pop(name, {})
        for loaded in versions.values():
            await self._stop_version(loaded, drain_timeout_s)

    async def _stop_version(
        self,
        loaded: LoadedVersion,
        drain_timeout_s: float,
        thread_grace_s: float = 1.0,
        *,
        publish: bool = True,
    ) -> bool:
        """Drain and stop one version; False when work was left or a thread was abandoned.

        Requests that already chose this version (held from ``DataPlane._serve``
        until answered) finish first: closing under them would fail them.
        """
        await loaded.wait_released(drain_timeout_s)
        loaded.batcher.close()
        drained = await loaded.batcher.drain(drain_timeout_s)
        stopped = await loaded.pool.stop(timeout_s=thread_grace_s)
        if publish:
            self.metrics.model_ready.labels(loaded.name, loaded.version).set(0)
        return drained and stopped

    async def close(self, drain_timeout_s: float, thread_grace_s: float = 1.0) -> bool:
        """Stop taking work, finish what is queued and in flight, release every instance.

        Bounded: ``drain_timeout_s`` for the work, then ``thread_grace_s`` for
        the threads to leave their calls. Returns False when work was failed
        or a thread had to be abandoned.
        """
        loaded = self.loaded_versions()
        for lv in loaded:
            lv.batcher.close()
        results = await asyncio.gather(
            *(self._stop_version(lv, drain_timeout_s, thread_grace_s) for lv in loaded)
        )
        self._loaded.clear()
        return all(results)
