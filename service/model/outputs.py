"""Graph outputs → answers: softmax and top-k for classifiers, embeddings per modality.

The counterpart of :mod:`service.model.feeds`: feeds turn decoded rows into
the graph's inputs, this module turns one row's graph outputs into what every
door answers. It knows the config's output roles and nothing of protocols.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.errors import InvalidInput
from service.model.config import ModelConfig, OutputKind
from service.model.rows import RowOutputs


@dataclass
class Prediction:
    model: str
    version: str
    modalities: list[str]
    labels: list[str]  # top-k, best first
    scores: list[float]
    probabilities: np.ndarray  # float32 [C], labels.txt order


@dataclass
class Embedding:
    model: str
    version: str
    modalities: list[str]
    fused: np.ndarray  # float32 [D]
    per_modality: dict[str, np.ndarray]  # only the supplied modalities


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - np.max(logits)
    exp = np.exp(shifted)
    return (exp / exp.sum()).astype(np.float32)


def predictions(
    config: ModelConfig,
    labels: list[str] | None,
    version: str,
    outputs: list[RowOutputs],
    modalities: list[list[str]],
    top_k: int,
) -> list[Prediction]:
    """One :class:`Prediction` per row: probabilities in labels.txt order and the top ``top_k``."""
    if config.task != "classify":
        raise InvalidInput(f"model {config.name!r} is an embedding model: use embed, not predict")
    names = labels or []
    k = min(top_k, len(names))
    logits_name = next(o.name for o in config.outputs if o.kind == OutputKind.logits)
    answers = []
    for out, used in zip(outputs, modalities, strict=True):
        probs = softmax(np.asarray(out[logits_name]).reshape(-1))
        order = np.argsort(-probs, kind="stable")[:k]
        answers.append(
            Prediction(
                model=config.name,
                version=version,
                modalities=used,
                labels=[names[i] for i in order],
                scores=[float(probs[i]) for i in order],
                probabilities=probs,
            )
        )
    return answers


def embeddings(
    config: ModelConfig, version: str, outputs: list[RowOutputs], modalities: list[list[str]]
) -> list[Embedding]:
    """One :class:`Embedding` per row: the fused vector and one per supplied modality."""
    specs = [o for o in config.outputs if o.kind == OutputKind.embedding]
    if not specs:
        raise InvalidInput(f"model {config.name!r} yields no embedding: use predict")
    fused_spec = next((o for o in specs if o.source == "fused"), None)
    answers = []
    for out, used in zip(outputs, modalities, strict=True):
        per: dict[str, np.ndarray] = {o.source: np.asarray(out[o.name]) for o in specs if o.source in used}
        fused = np.asarray(out[fused_spec.name]) if fused_spec else _mean_normalised(list(per.values()))
        answers.append(Embedding(config.name, version, used, fused, per))
    return answers


def _mean_normalised(vectors: list[np.ndarray]) -> np.ndarray:
    mean = np.mean(np.stack(vectors), axis=0)
    norm = float(np.linalg.norm(mean))
    return (mean / norm if norm > 0 else mean).astype(np.float32)
