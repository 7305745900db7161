"""The service's own Prometheus registry and every metric it exposes.

One object, created by the composition root and injected where it is needed:
no global registry, no get-or-create. Names follow Prometheus conventions and
are checked with ``promtool check metrics`` in the tests.

With several server processes (``--workers N``, ``service/supervisor.py``)
every process writes its values to files in ``PROMETHEUS_MULTIPROC_DIR``
(prometheus_client's multiprocess mode, one directory per server) and any
process answers ``/metrics`` with all of them merged: counters and histograms
summed, gauges as their ``multiprocess_mode`` says (``livesum``: the total over
live processes; ``livemin`` for readiness: 1 only when every process is ready).
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

MetricT = TypeVar("MetricT", Counter, Gauge, Histogram)

#: Latency buckets from 0.5 ms to 30 s: CPU models answer in milliseconds.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.035,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: From thumbnails to 48-megapixel phone photos.
PIXEL_BUCKETS = (1e3, 1e4, 1e5, 3e5, 1e6, 3e6, 1.2e7, 2.4e7, 4.8e7)
AUDIO_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def build_labels() -> tuple[str, str, str, str, str]:
    """version, commit, python, onnxruntime and numpy versions of this process.

    The commit comes from ``FUSIONSERVE_COMMIT`` (set in images) or the
    checkout's ``.git`` files, read once; ``unknown`` otherwise.
    """
    import os
    import platform

    import numpy

    from fusionserve.service import __version__

    try:
        import onnxruntime

        ort_version = str(onnxruntime.__version__)
    except ImportError:
        ort_version = "none"
    commit = os.environ.get("FUSIONSERVE_COMMIT") or _git_commit() or "unknown"
    return __version__, commit[:12], platform.python_version(), ort_version, numpy.__version__


def _git_commit() -> str | None:
    from pathlib import Path

    git = Path(__file__).resolve().parents[1] / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: <path>"
            git = Path(git.read_text().split(":", 1)[1].strip())
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        for base in (git, git.parent.parent if git.parent.name == "worktrees" else git):
            if (base / ref).is_file():
                return (base / ref).read_text().strip()
        packed = (git.parent.parent if git.parent.name == "worktrees" else git) / "packed-refs"
        for line in packed.read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except (OSError, IndexError):
        return None
    return None


#: The outcomes a request can have; the label values of ``requests_total``.
OUTCOMES = (
    "success",
    "client_error",
    "not_found",
    "overloaded",
    "unavailable",
    "deadline",
    "cancelled",
    "error",
)


#: The one ``model`` label value of every request for a model the server does not know.
UNKNOWN_MODEL_LABEL = "_unknown"
#: No label value is longer: a client-given value can never make a scrape large.
MAX_LABEL_CHARS = 128


def bounded(value: str) -> str:
    """A label value cut to ``MAX_LABEL_CHARS`` (marked with a trailing ``~``)."""
    return value if len(value) <= MAX_LABEL_CHARS else value[: MAX_LABEL_CHARS - 1] + "~"


class Metrics:
    """All fusionserve metrics, on a registry of their own.

    Instance counters are labelled ``model_instance`` (not ``instance``, which
    Prometheus reserves for the scraped target).
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, instance_prefix: str = "") -> None:
        # ``*_created`` series double the exposition and no dashboard reads them.
        disable_created_metrics()
        #: Set by a worker process of several ("w1-"), so instance series of
        #: different processes stay apart instead of being summed.
        self.instance_prefix = instance_prefix
        self._multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "fusionserve_requests_total",
            "Requests answered, by model, version, protocol and outcome.",
            ["model", "version", "protocol", "outcome"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "fusionserve_request_duration_seconds",
            "End-to-end time of a request inside the server.",
            ["model", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "fusionserve_queue_duration_seconds",
            "Time a row waited in the batcher queue before its batch was taken.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decode_seconds = Histogram(
            "fusionserve_decode_duration_seconds",
            "Time to decode one input, by modality.",
            ["modality"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "fusionserve_compute_duration_seconds",
            "Time the runtime spent on one batch.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.postprocess_seconds = Histogram(
            "fusionserve_postprocess_duration_seconds",
            "Time to turn one row's outputs into an answer (top-k, labels).",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "fusionserve_batch_size",
            "Rows per batch sent to the runtime.",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.padding_ratio = Histogram(
            "fusionserve_padding_ratio",
            "Fraction of a batch's variable-length input that is padding.",
            ["model", "version", "modality"],
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "fusionserve_queue_depth",
            "Rows waiting in the batcher queue.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_capacity = Gauge(
            "fusionserve_queue_capacity",
            "The queue's bound (batching.max_queue_size); depth / capacity is saturation.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.inflight = Gauge(
            "fusionserve_inflight_requests",
            "Requests inside the server now.",
            ["protocol"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.load_failures = Counter(
            "fusionserve_model_load_failures_total",
            "Model versions that failed to load or warm up.",
            ["model"],
            registry=r,
        )
        self.model_ready = Gauge(
            "fusionserve_model_ready",
            "1 when the model version is loaded, warmed up and serving.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.instances = Gauge(
            "fusionserve_instances",
            "Model instances (sessions) serving, by device kind.",
            ["model", "version", "kind"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.instance_busy_seconds = Counter(
            "fusionserve_instance_busy_seconds_total",
            "Seconds each instance spent computing; rate() gives utilisation.",
            ["model", "version", "model_instance"],
            registry=r,
        )
        self.instance_failures = Counter(
            "fusionserve_instance_failures_total",
            "Batches whose compute raised.",
            ["model", "version", "model_instance"],
            registry=r,
        )
        self.gpu_memory_used = Gauge(
            "fusionserve_gpu_memory_used_bytes",
            "GPU memory in use (NVML), by device.",
            ["device"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.gpu_utilization = Gauge(
            "fusionserve_gpu_utilization_ratio",
            "GPU utilisation 0..1 (NVML), by device.",
            ["device"],
            registry=r,
            multiprocess_mode="livemax",
        )

        # Reliability (issue 12): announced rows, stuck instances, memory held, truncation.
        self.announced_rows = Gauge(
            "fusionserve_batcher_announced_rows",
            "Rows announced to the batcher (decoding) and not yet queued; returns to 0 when idle.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.instance_restarts = Counter(
            "fusionserve_instance_restarts_total",
            "Instances taken out of the pool and replaced, by reason (timeout, loop_died).",
            ["model", "reason"],
            registry=r,
        )
        self.healthy_instances = Gauge(
            "fusionserve_healthy_instances",
            "Instances of a model version able to take a batch (not stuck, not being replaced).",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.stuck_threads = Gauge(
            "fusionserve_stuck_threads",
            "Compute threads abandoned inside a call that never returned (they cannot be killed).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.inflight_bytes = Gauge(
            "fusionserve_inflight_bytes",
            "Request body bytes held by requests being received, decoded or queued.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.inflight_bytes_limit = Gauge(
            "fusionserve_inflight_bytes_limit",
            "The memory budget for request bytes in flight (max_inflight_bytes).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.truncations = Counter(
            "fusionserve_truncations_total",
            "Inputs cut to the model's bound (text at max_tokens, audio at max_samples).",
            ["model", "modality"],
            registry=r,
        )
        # Per modality: what clients send and what the models are fed.
        self.modality_requests = Counter(
            "fusionserve_modality_requests_total",
            "Items decoded, by model and the subset of modalities they carried (at most 7 subsets).",
            ["model", "modalities"],
            registry=r,
        )
        self.received_bytes = Counter(
            "fusionserve_received_bytes_total",
            "Bytes of input received, by modality (encoded files; UTF-8 text).",
            ["modality"],
            registry=r,
        )
        self.input_pixels = Histogram(
            "fusionserve_input_image_pixels",
            "Pixels of each uploaded image as decoded, before resizing (big JPEGs decode at 1/2..1/8 scale).",
            buckets=PIXEL_BUCKETS,
            registry=r,
        )
        self.input_audio_seconds = Histogram(
            "fusionserve_input_audio_seconds",
            "Seconds of audio each item fed the model (after cropping to max_samples).",
            buckets=AUDIO_BUCKETS,
            registry=r,
        )
        self.input_text_tokens = Histogram(
            "fusionserve_input_text_tokens",
            "Tokens of each text fed the model (after truncation to max_tokens).",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.build_info = Gauge(
            "fusionserve_build_info",
            "Always 1; the labels say what is running.",
            ["version", "commit", "python", "onnxruntime", "numpy"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.build_info.labels(*build_labels()).set(1)
        # The standard process_* (CPU, memory, file descriptors) and python_* families.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    def observe_row(self, model: str, modalities: list[str], sizes: dict[str, float]) -> None:
        """One decoded item: its modality subset and the size of each input it fed the model."""
        self.child(self.modality_requests, model, "+".join(modalities) or "none").inc()
        if "image" in sizes:
            self.input_pixels.observe(sizes["image"])
        if "audio" in sizes:
            self.input_audio_seconds.observe(sizes["audio"])
        if "text" in sizes:
            self.input_text_tokens.observe(sizes["text"])

    def child(self, metric: MetricT, *labels: str) -> MetricT:
        """``metric.labels(*labels)``, memoised: the hot path asks for the same
        children on every request, and ``labels()`` validates and locks each
        time (a profile of the serving process: 17 calls per request, about 4 %
        of the event loop's Python time). Label sets are never removed here, so
        a cached child stays the exported one."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = metric.labels(*(bounded(v) for v in labels))
            if all(len(v) <= MAX_LABEL_CHARS for v in labels):
                self._children[key] = found
        return found

    def instance_label(self, index: int) -> str:
        """The ``model_instance`` label of instance ``index`` of this process."""
        return f"{self.instance_prefix}{index}"

    def exposition(self) -> tuple[bytes, str]:
        """The registry in Prometheus text format (every process's, merged), with its content type."""
        if self._multiprocess_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self._multiprocess_dir)
        return generate_latest(merged), CONTENT_TYPE_LATEST
