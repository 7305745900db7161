"""A fake data plane for the V2 and gRPC doors: real configs, scripted answers, recorded calls.

It is a :class:`~fusionserve.service.dataplane.DataPlaneApi`, checked by mypy (see the end).

It answers deterministically from the inputs (so tests can check that every
row and modality arrived) and can be told to fail with any core error, which
lets door tests cover each status code without timing tricks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fusionserve.service.dataplane import DataPlaneApi, ModelInfo, VersionStats
from fusionserve.service.errors import InvalidInput, ModelNotFound
from fusionserve.service.metrics import Metrics
from fusionserve.service.model.config import parse_model_config
from fusionserve.service.model.outputs import Embedding, Prediction
from fusionserve.service.model.rows import RawInputs
from fusionserve.service.registry import VersionState

LABELS = [str(i) for i in range(10)]
CLASSIFIER = parse_model_config(
    {
        "name": "digits-fusion",
        "task": "classify",
        "modalities": {
            "image": {"height": 28, "width": 28},
            "audio": {"sample_rate": 16000, "max_samples": 16000},
            "text": {"max_tokens": 16},
        },
        "outputs": [{"name": "class_logits", "kind": "logits", "dims": 10}],
    },
    "fake",
)
EMBEDDER = parse_model_config(
    {
        "name": "digits-embed",
        "task": "embed",
        "labels_file": None,
        "modalities": {
            "image": {"height": 28, "width": 28},
            "audio": {"sample_rate": 16000, "max_samples": 16000},
            "text": {"max_tokens": 16},
        },
        "outputs": [
            {"name": "fused_embedding", "kind": "embedding", "source": "fused", "dims": 4},
            {"name": "image_embedding", "kind": "embedding", "source": "image", "dims": 4},
            {"name": "audio_embedding", "kind": "embedding", "source": "audio", "dims": 4},
            {"name": "text_embedding", "kind": "embedding", "source": "text", "dims": 4},
        ],
    },
    "fake",
)


def _size(value: bytes | np.ndarray | str | None) -> int:
    if value is None:
        return 0
    if isinstance(value, np.ndarray):
        return int(value.size)
    return len(value)


def fake_probabilities(row: RawInputs) -> np.ndarray:
    """Depends on every modality's size, so a lost or swapped input changes the answer."""
    winner = (_size(row.image) + 3 * _size(row.audio) + 7 * _size(row.text)) % 10
    probs = np.full(10, 0.05, dtype=np.float32)
    probs[winner] = 0.55
    return probs


@dataclass
class Call:
    method: str
    model: str
    version: str | None
    rows: list[RawInputs]
    timeout_s: float | None
    protocol: str
    top_k: int | None = None


@dataclass
class FakeDataPlane:
    fail_with: Exception | None = None
    max_batch_items: int = 64
    is_ready: bool = True
    calls: list[Call] = field(default_factory=list)
    rejected: list[tuple[str, str, str]] = field(default_factory=list)
    loaded: dict[str, bool] = field(default_factory=lambda: {"digits-fusion": True, "digits-embed": True})
    metrics: Metrics = field(default_factory=Metrics)
    draining: bool = False

    def _config(self, model: str) -> Any:
        if model not in self.loaded:
            raise ModelNotFound(f"unknown model {model!r}")
        return CLASSIFIER if model == "digits-fusion" else EMBEDDER

    def _check(self, model: str, version: str | None, rows: Sequence[RawInputs]) -> None:
        self._config(model)
        if version not in (None, "1"):
            raise ModelNotFound(f"model {model!r} has no version {version!r}")
        if self.fail_with is not None:
            raise self.fail_with
        if not rows:
            raise InvalidInput("the request holds no item")

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
        self.calls.append(Call("predict", model, version, list(rows), timeout_s, protocol, top_k))
        self._check(model, version, rows)
        if self._config(model).task != "classify":
            raise InvalidInput(f"model {model!r} is an embedding model: use embed, not predict")
        answers = []
        for row in rows:
            probs = fake_probabilities(row)
            order = np.argsort(-probs, kind="stable")[:top_k]
            answers.append(
                Prediction(
                    model,
                    "1",
                    row.modalities(),
                    [LABELS[i] for i in order],
                    [float(probs[i]) for i in order],
                    probs,
                )
            )
        return answers

    async def embed(
        self,
        model: str,
        version: str | None,
        rows: Sequence[RawInputs],
        *,
        timeout_s: float | None = None,
        protocol: str = "http",
    ) -> list[Embedding]:
        self.calls.append(Call("embed", model, version, list(rows), timeout_s, protocol))
        self._check(model, version, rows)
        answers = []
        for row in rows:
            per = {m: np.full(4, 1 + i, dtype=np.float32) for i, m in enumerate(("image", "audio", "text"))}
            used = row.modalities()
            answers.append(
                Embedding(model, "1", used, np.full(4, 0.5, dtype=np.float32), {m: per[m] for m in used})
            )
        return answers

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.is_ready

    def not_ready_reasons(self) -> dict[str, str]:
        return {} if self.is_ready else {"*": "not ready (scripted)"}

    def model_ready(self, model: str, version: str | None = None) -> bool:
        self._config(model)
        if version not in (None, "1"):
            raise ModelNotFound(f"model {model!r} has no version {version!r}")
        return self.is_ready and self.loaded[model]

    def model_info(self, model: str, version: str | None = None) -> ModelInfo:
        config = self._config(model)
        if version not in (None, "1"):
            raise ModelNotFound(f"model {model!r} has no version {version!r}")
        labels = LABELS if config.task == "classify" else None
        return ModelInfo(model, ["1"], "onnxruntime_onnx", config, labels, {"1": VersionState("READY")})

    def models(self) -> list[ModelInfo]:
        return [self.model_info(name) for name in self.loaded]

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "fusionserve", "version": "0.0-test", "extensions": ["binary_tensor_data"]}

    async def load(self, model: str) -> None:
        self._config(model)
        self.loaded[model] = True

    async def unload(self, model: str) -> None:
        self._config(model)
        self.loaded[model] = False

    def repository_index(self) -> list[dict[str, str]]:
        return [
            {"name": m, "version": "1", "state": "READY" if up else "UNAVAILABLE", "reason": ""}
            for m, up in self.loaded.items()
        ]

    def statistics(self, model: str | None = None, version: str | None = None) -> list[VersionStats]:
        names = [model] if model else list(self.loaded)
        for name in names:
            self._config(name)
        return [VersionStats(n, "1", 3, 1, 5, 2, 1000, 2000, 3000) for n in names]

    def record_rejected(self, model: str, protocol: str, error: BaseException) -> None:
        self.rejected.append((model, protocol, type(error).__name__))


if TYPE_CHECKING:  # mypy proves the fake is a data plane the doors accept
    _FAKE_IS_A_DATA_PLANE: DataPlaneApi = FakeDataPlane()
