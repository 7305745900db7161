"""Graph outputs → answers: softmax and top-k for classifiers, embeddings per modality.

The counterpart of :mod:`fusionserve.service.model.feeds`: feeds turn decoded rows into
the graph's inputs, this module turns one row's graph outputs into what every
door answers. It knows the config's output roles and nothing of protocols.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fusionserve.service.errors import InvalidInput
from fusionserve.service.model.config import ModelConfig, OutputKind, OutputSpec
from fusionserve.service.model.rows import RowOutputs

#: What ``predict`` can add to its answer (``include``), besides the labels.
INCLUDE_VALUES = ("embeddings", "attribution")

#: Up to this many classes a top-k is sorted in Python (see :func:`top_indices`).
PYTHON_SORT_MAX = 64


@dataclass
class Attribution:
    """How much each modality contributed, as the model's config declares (README "Attribution")."""

    kind: str  # "logits" | "gate" | "attention"
    #: Per present modality: its class logits ``[C]`` (kind logits) or its weight ``[1]``.
    values: dict[str, np.ndarray]


@dataclass
class Prediction:
    model: str
    version: str
    modalities: list[str]
    labels: list[str]  # top-k, best first
    scores: list[float]
    probabilities: np.ndarray  # float32 [C], labels.txt order
    #: With ``include=embeddings``: the fused embedding and those of the supplied modalities.
    embedding: np.ndarray | None = None
    embeddings: dict[str, np.ndarray] | None = None
    #: With ``include=attribution``.
    attribution: Attribution | None = None
    #: Inputs cut to the model's bounds: modality -> (given, kept); empty when none.
    truncated: dict[str, tuple[int, int]] = field(default_factory=dict)


def truncated_json(truncated: dict[str, tuple[int, int]]) -> dict[str, dict[str, int]]:
    """What was cut, per modality: ``{"text": {"given": 40, "kept": 16}}`` (tokens; audio: samples).

    One form for every door: the native answer's ``truncated`` and each row of
    the V2 ``truncated`` parameter.
    """
    return {m: {"given": given, "kept": kept} for m, (given, kept) in truncated.items()}


@dataclass
class Embedding:
    model: str
    version: str
    modalities: list[str]
    fused: np.ndarray  # float32 [D]
    per_modality: dict[str, np.ndarray]  # only the supplied modalities
    tokens: int = 0  # text tokens the model read (OpenAI-style usage)
    #: Inputs cut to the model's bounds: modality -> (given, kept); empty when none.
    truncated: dict[str, tuple[int, int]] = field(default_factory=dict)


def softmax(logits: np.ndarray) -> np.ndarray:
    """In float64, in place on one copy (half the time of the expression form on 10 logits)."""
    x = logits.astype(np.float64)
    x -= x.max()
    np.exp(x, out=x)
    x /= x.sum()
    return x.astype(np.float32)


def top_indices(values: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` largest of a 1-D array, best first, ties to the lower index, NaN last.

    Sorted in Python up to :data:`PYTHON_SORT_MAX` values: numpy's sorts release
    the GIL, and on the event loop every release hands it to a busy decoder or
    model thread and waits to get it back (a 10-class ``argsort``: 1.8 µs
    alone, 163 µs next to one busy thread; docs/performance.md, "Fourth step").
    """
    if values.size > PYTHON_SORT_MAX:
        return [int(i) for i in np.argsort(-values, kind="stable")[:k]]
    listed = values.tolist()
    numbers = [i for i, v in enumerate(listed) if v == v]  # NaN == NaN is False
    order = sorted(numbers, key=listed.__getitem__, reverse=True)  # stable, reverse too
    if len(numbers) < len(listed):  # NaN last, in index order, as numpy sorts them
        order += [i for i, v in enumerate(listed) if v != v]
    return order[:k]


def predictions(
    config: ModelConfig,
    labels: list[str] | None,
    version: str,
    outputs: list[RowOutputs],
    modalities: list[list[str]],
    top_k: int,
    include: frozenset[str] = frozenset(),
) -> list[Prediction]:
    """One :class:`Prediction` per row: probabilities in labels.txt order and the top ``top_k``;
    ``include`` adds the embeddings and/or the attribution from the same graph run."""
    if config.task != "classify":
        raise InvalidInput(f"model {config.name!r} is an embedding model: use embed, not predict")
    names = labels or []
    k = min(top_k, len(names))
    logits = next(o for o in config.outputs if o.kind == OutputKind.logits)
    answers = []
    for out, used in zip(outputs, modalities, strict=True):
        values = np.asarray(out[logits.name]).reshape(-1)
        probs = values.astype(np.float32) if logits.softmax_applied else softmax(values)
        order = top_indices(probs, k)
        answer = Prediction(
            model=config.name,
            version=version,
            modalities=used,
            labels=[names[i] for i in order],
            scores=[float(probs[i]) for i in order],
            probabilities=probs,
        )
        if "embeddings" in include:
            answer.embedding, answer.embeddings = _embeddings_of(config, out, used)
        if "attribution" in include:
            answer.attribution = _attribution_of(config, out, used)
        answers.append(answer)
    return answers


def embeddings(
    config: ModelConfig,
    version: str,
    outputs: list[RowOutputs],
    modalities: list[list[str]],
    tokens: list[int] | None = None,
) -> list[Embedding]:
    """One :class:`Embedding` per row: the fused vector and one per supplied modality."""
    check_yields_embeddings(config)
    answers = []
    for i, (out, used) in enumerate(zip(outputs, modalities, strict=True)):
        fused, per = _embeddings_of(config, out, used)
        answers.append(Embedding(config.name, version, used, fused, per, tokens[i] if tokens else 0))
    return answers


def check_yields_embeddings(config: ModelConfig) -> None:
    if not any(o.kind == OutputKind.embedding for o in config.outputs):
        raise InvalidInput(f"model {config.name!r} yields no embedding: use predict")


def check_include(include: Sequence[str]) -> frozenset[str]:
    """The ``include`` values of a predict request; a 400 naming the allowed ones otherwise."""
    if not include:
        return frozenset()
    unknown = sorted(set(include) - set(INCLUDE_VALUES))
    if unknown:
        raise InvalidInput(
            f"include: unknown value(s) {unknown}; allowed: {list(INCLUDE_VALUES)}", field="include"
        )
    return frozenset(include)


def check_has(config: ModelConfig, wanted: frozenset[str]) -> None:
    """400 when ``include`` asks for outputs the model's config does not declare."""
    kinds = {o.kind for o in config.outputs}
    rebuild = " (an entry exported before fusionserve 0.2 has none: rebuild it with build-repo)"
    if "embeddings" in wanted and OutputKind.embedding not in kinds:
        raise InvalidInput(
            f"include=embeddings: model {config.name!r} yields no embedding{rebuild}", field="include"
        )
    if "attribution" in wanted and OutputKind.attribution not in kinds:
        raise InvalidInput(
            f"include=attribution: model {config.name!r} declares no per-modality attribution "
            f"(only late, gated and attention fusion have one){rebuild}",
            field="include",
        )


def _embeddings_of(
    config: ModelConfig, out: RowOutputs, used: list[str]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The fused embedding and those of the modalities the row carried."""
    specs = [o for o in config.outputs if o.kind == OutputKind.embedding]
    per: dict[str, np.ndarray] = {o.source: _vector(out[o.name], o) for o in specs if o.source in used}
    fused_spec = next((o for o in specs if o.source == "fused"), None)
    fused = _vector(out[fused_spec.name], fused_spec) if fused_spec else _mean_normalised(list(per.values()))
    return fused, per


def _attribution_of(config: ModelConfig, out: RowOutputs, used: list[str]) -> Attribution:
    spec = next(o for o in config.outputs if o.kind == OutputKind.attribution)
    columns = list(spec.modalities or [])
    values = np.asarray(out[spec.name], dtype=np.float32).reshape(len(columns), -1)
    return Attribution(
        kind=str(spec.attribution),
        values={m: values[i] for i, m in enumerate(columns) if m in used},
    )


def _vector(value: np.ndarray, spec: OutputSpec) -> np.ndarray:
    """One row's embedding as float32 ``[D]``, L2-normalised here when the graph did not."""
    vector = np.asarray(value, dtype=np.float32).reshape(-1)
    if spec.normalized:
        return vector
    norm = float(np.linalg.norm(vector))
    return vector / np.float32(norm) if norm > 0 else vector


def _mean_normalised(vectors: list[np.ndarray]) -> np.ndarray:
    mean = np.mean(np.stack(vectors), axis=0)
    norm = float(np.linalg.norm(mean))
    return (mean / norm if norm > 0 else mean).astype(np.float32)
