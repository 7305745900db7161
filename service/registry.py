"""Loaded model versions, their readiness, and load/unload.

The registry turns repository entries into serving objects: for each version
its preprocessor, one ``DynamicBatcher`` and a ``WorkerPool`` of backend
instances. A version is READY only after warm-up succeeded; a version that
fails is FAILED with the reason, counted in a metric, and never stops the
others from loading.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from service.batching import DynamicBatcher
from service.errors import SHOWN_CHARS, FusionServeError, ModelNotFound, NotReady, shown
from service.failpoints import Failpoints, wrap_backend
from service.metrics import Metrics
from service.model.config import ModelConfig
from service.model.repository import ModelRepository, RepositoryEntry, check_version_name, public_reason
from service.preprocess import Preprocessor
from service.runtimes import Backend, DeviceSpec, load_backend
from service.workers import WorkerPool

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


@dataclass
class ModelState:
    """What the registry knows of one repository entry, loaded or not."""

    name: str
    config: ModelConfig | None
    labels: list[str] | None
    versions: dict[str, VersionState] = field(default_factory=dict)
    error: str | None = None
    last_load_error: str | None = None  # why the latest (re)load failed; None when it succeeded


def instance_devices(config: ModelConfig) -> list[DeviceSpec]:
    """One DeviceSpec per instance, from the config's instance groups."""
    devices: list[DeviceSpec] = []
    for group in config.instance_groups:
        ids = group.devices or [0]
        for device_id in ids:
            devices.extend(DeviceSpec(kind=group.kind, index=device_id) for _ in range(group.count))
    return devices


class ModelRegistry:
    def __init__(
        self, repository: ModelRepository, metrics: Metrics, failpoints: Failpoints | None = None
    ) -> None:
        self.repository = repository
        self.metrics = metrics
        self.failpoints = failpoints
        self._states: dict[str, ModelState] = {}
        self._loaded: dict[str, dict[str, LoadedVersion]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

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
            raise ModelNotFound(f"unknown model {shown(name)}", model=name[:SHOWN_CHARS])
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
        return bool(self._states) and all(
            s.error is None and s.versions and all(v.state == READY for v in s.versions.values())
            for s in self._states.values()
        )

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
                    loaded.config.batching.max_queue_size
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
        assert entry.config is not None
        config = entry.config
        backends: list[Backend] = []
        try:
            for device in instance_devices(config):
                backend = await asyncio.to_thread(load_backend, config, path, device)
                backends.append(wrap_backend(backend, self.failpoints, entry.name))
            preprocessor = await asyncio.to_thread(Preprocessor, config, entry.path)
            batcher = DynamicBatcher(
                config.batching,
                model=entry.name,
                version=version,
                metrics=self.metrics,
                track_arrivals=True,
            )
            pool = WorkerPool(
                batcher, backends, config, model=entry.name, version=version, metrics=self.metrics
            )
            pool.start()
            try:
                await pool.warmup()
            except BaseException:
                batcher.close()
                await pool.stop()
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
        self, loaded: LoadedVersion, drain_timeout_s: float, *, publish: bool = True
    ) -> None:
        loaded.batcher.close()
        await loaded.batcher.drain(drain_timeout_s)
        await loaded.pool.stop()
        if publish:
            self.metrics.model_ready.labels(loaded.name, loaded.version).set(0)

    async def close(self, drain_timeout_s: float) -> None:
        """Stop taking work, finish what is queued and in flight, release every instance."""
        loaded = self.loaded_versions()
        for lv in loaded:
            lv.batcher.close()
        await asyncio.gather(*(self._stop_version(lv, drain_timeout_s) for lv in loaded))
        self._loaded.clear()
