"""Server settings: the one place the environment is read.

Every setting comes from a ``FUSIONSERVE_*`` environment variable or the
command line (which wins). Per-model settings live in each model's
``config.yaml`` (``fusionserve.service.model.config``), not here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FUSIONSERVE_", extra="ignore")

    model_repository: Path | None = Field(
        default=None, description="model repository; unset = the bundled default (built if missing)"
    )
    host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    grpc_port: int | None = Field(default=8001, ge=0, le=65535, description="None disables gRPC")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"

    # Processes (service/supervisor.py, docs/performance.md)
    workers: int = Field(
        default=0, ge=0, le=256, description="server processes; 0 = one per available core (cgroup-aware)"
    )

    # Work limits
    decode_threads: int = Field(default=0, ge=0, description="decoder threads; 0 = CPUs the cgroup allows")
    max_decoded_image_bytes: int = Field(
        default=160 * 1024 * 1024,
        ge=1024,
        description="memory one image may decode to (width x height x bytes per pixel; 413 beyond)",
    )
    max_body_bytes: int = Field(default=64 * 1024 * 1024, gt=0, description="largest request body")
    max_batch_items: int = Field(default=64, ge=1, description="rows in one request (batch form)")
    max_top_k: int = Field(default=100, ge=1)
    max_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="the longest a client may ask to wait (timeout header, V2 timeout, gRPC deadline)",
    )
    max_inflight_bytes: int = Field(
        default=0,
        ge=0,
        description="memory budget for request bodies and gRPC messages being received, decoded "
        "and queued; past it new HTTP requests get 503 + Retry-After before their bodies are read, "
        "gRPC inference messages RESOURCE_EXHAUSTED + grpc-retry-pushback-ms. 0 = the smaller of "
        "512 MiB and a quarter of the memory the process may use (cgroup limit included)",
    )
    max_inflight_requests: int = Field(
        default=64,
        ge=0,
        description="HTTP inference requests one server process holds at once, from their headers to "
        "their answer (per process: it protects that process's event loop); past it new ones get 503 + "
        "Retry-After as soon as their headers are read. It bounds admitted latency when the event loop, "
        "not the model queue, is the bottleneck. Raise it for models whose batches are bigger than it "
        "(a process needs max_batch_size x instances in flight to fill its instances). 0 = no bound",
    )
    max_stuck_threads: int = Field(
        default=8,
        ge=0,
        description="compute threads stuck in calls that never return before /health/live turns false",
    )
    max_tensor_rank: int = Field(default=8, ge=1, le=32, description="dimensions of one V2 tensor")
    max_tensor_elements: int = Field(
        default=64 * 1024 * 1024,
        ge=1,
        description="elements of one numeric V2 tensor (checked from its shape)",
    )
    max_tensor_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1, description="bytes of one numeric V2 tensor (shape x item size)"
    )
    grpc_max_message_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    # Transport limits (service/http/transport.py; gRPC channel arguments)
    max_url_bytes: int = Field(default=8 * 1024, ge=256, description="request target size (414 beyond)")
    max_header_bytes: int = Field(
        default=64 * 1024, ge=1024, description="request header size, HTTP and gRPC metadata (431 beyond)"
    )
    keepalive_timeout_s: int = Field(
        default=75,
        ge=1,
        description="an idle kept-alive HTTP connection is closed after this many seconds; longer "
        "than clients' own idle expiry (httpx 5 s, load balancers 60 s) so that the client, not the "
        "server, closes it: a server closing a connection as a client reuses it loses that request",
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="time to receive a request's headers (408 and close beyond)"
    )
    body_timeout_s: float = Field(
        default=60.0, gt=0, description="time to receive a request's body after its headers (408 beyond)"
    )
    max_connections: int = Field(
        default=1024, ge=1, description="open HTTP connections, and gRPC connections (refused beyond)"
    )
    grpc_max_concurrent_rpcs: int = Field(
        default=2048,
        ge=1,
        description="gRPC calls in progress, all connections (RESOURCE_EXHAUSTED beyond)",
    )
    grpc_max_concurrent_streams: int = Field(
        default=1024, ge=1, description="calls one gRPC connection may have open at once; more wait"
    )
    grpc_max_connection_age_s: float = Field(
        default=300.0, gt=0, description="gRPC connections are recycled after this (load balancing)"
    )
    grpc_keepalive_time_s: float = Field(
        default=60.0, gt=0, description="the server pings an idle gRPC connection this often"
    )
    grpc_keepalive_timeout_s: float = Field(
        default=20.0, gt=0, description="an unanswered server ping closes the connection after this"
    )
    grpc_min_client_ping_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="clients may send keepalive pings this often, calls in flight or not "
        "(more often: GOAWAY too_many_pings)",
    )

    # Lifecycle
    shutdown_grace_s: float = Field(
        default=3.0,
        ge=0,
        description="SIGTERM: keep taking new work this long (readiness already false, "
        "'Connection: close' on every answer) while load balancers stop routing here",
    )
    drain_timeout_s: float = Field(default=30.0, ge=0, description="SIGTERM: time to finish accepted work")
    shutdown_close_s: float = Field(
        default=3.0,
        ge=0,
        description="after the drain: time for connections to close and compute threads to return; "
        "the process exits at grace + drain + close + 1 s at the latest",
    )
    strict_readiness: bool = Field(
        default=True, description="ready only when every model that should load has loaded"
    )

    # Security (README "Security")
    allow_model_code: bool = Field(
        default=False,
        description="run entries' own preprocess/postprocess Python (code_file): trusted repositories only",
    )
    api_token: str | None = Field(default=None, description="bearer token for inference calls")
    admin_token: str | None = Field(default=None, description="bearer token for repository calls")
    model_control: Literal["none", "explicit"] = Field(
        default="none",
        description="none: repository load/unload refused (403); explicit: allowed, with admin_token "
        "(without one only on a loopback bind)",
    )
    allow_torchscript: bool = Field(
        default=False, description="load model.pt files (TorchScript is code: trusted repositories only)"
    )
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = Field(
        default=None, description="require client certificates signed by this CA on both doors (mTLS)"
    )
    probe_cert_file: Path | None = Field(
        default=None, description="client certificate `fusionserve healthcheck` presents under mTLS"
    )
    probe_key_file: Path | None = None

    # Testing and drills only (service/failpoints.py); unset in production.
    failpoints: str | None = Field(default=None, description="fault injection, e.g. gate=/tmp/g;fail=m:1")

    @model_validator(mode="after")
    def _safe_combination(self) -> Settings:
        if self.model_control == "explicit" and not self.admin_token and not is_loopback(self.host):
            raise ValueError(
                f"model_control=explicit on host {self.host!r} needs admin_token "
                "(FUSIONSERVE_ADMIN_TOKEN): without it anyone who reaches the port could load and "
                "unload models; bind 127.0.0.1 or set the token"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mTLS) needs TLS: set tls_cert_file and tls_key_file")
        return self


def is_loopback(host: str) -> bool:
    """Whether a bind address reaches only this machine."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_repository_dir() -> Path:
    """Where the bundled default repository is built: ``$FUSIONSERVE_HOME/model-repository``."""
    import os

    home = os.environ.get("FUSIONSERVE_HOME")
    base = Path(home) if home else Path.home() / ".cache" / "fusionserve"
    return base / "model-repository"


#: The export format of the bundled repository that this code writes (``models/entries.py``).
#: 2: ``digits-fusion`` also exports its embeddings and per-modality attribution.
BUNDLED_EXPORT_FORMAT = 2
BUNDLED_MODELS = ("digits-fusion", "digits-embed")


def default_repository_is_current(repository: Path) -> bool:
    """Whether the bundled models in ``repository`` were written by this code's export.

    A repository built by older code keeps serving (without the newer
    outputs); ``serve`` rebuilds the default one when this is False.
    """
    import yaml

    for name in BUNDLED_MODELS:
        try:
            doc = yaml.safe_load((repository / name / "config.yaml").read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return False
        metadata = doc.get("metadata") if isinstance(doc, dict) else None
        if not isinstance(metadata, dict) or metadata.get("export_format") != BUNDLED_EXPORT_FORMAT:
            return False
    return True


def default_engine_cache_dir() -> Path:
    """Where TensorRT engines are cached unless a model says otherwise (``onnx.tensorrt_cache_dir``)."""
    import os

    home = os.environ.get("FUSIONSERVE_HOME")
    base = Path(home) if home else Path.home() / ".cache" / "fusionserve"
    return base / "tensorrt-engines"
