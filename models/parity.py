"""Parity: do eager PyTorch, the TorchScript file and the ONNX file answer alike?

Export (:mod:`fusionserve.models.export`) runs these checks before it publishes an entry,
and ``fusionserve verify --reference`` reuses the comparison to prove that
the server's answers match a user's own pipeline. The cases are batches the
way the server collates them: several sizes, lengths and presence masks.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from fusionserve.models.verify import jit_deprecation_silenced
from fusionserve.service.model.config import MODEL_FILES, Modality, ModelConfig, OutputKind
from fusionserve.service.model.feeds import image_tensor

log = logging.getLogger(__name__)


_TORCH_DTYPES = {
    "uint8": torch.uint8,
    "bool": torch.bool,
    "float32": torch.float32,
    "float16": torch.float16,
    "int32": torch.int32,
    "int64": torch.int64,
}


class ParityError(Exception):
    """A runtime failed, or two disagree; the message names the output, runtime and batch."""


#: Batch sizes of the generated parity batches (1 exercises the no-padding path).
PARITY_BATCH_SIZES = (1, 3, 8)


_ORT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


Feeds = dict[str, Tensor]


Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class ParityCase:
    """One batch that every runtime must answer alike; ``name`` says where it came from."""

    name: str
    feeds: Feeds


def _spread(low: int, high: int) -> list[int]:
    """Three distinct-ish sizes from ``low`` to ``high``, one of them odd."""
    high = max(low, high)
    return sorted({low, min(high, low + (high - low) // 3 | 1), high})


def presence_patterns(config: ModelConfig) -> list[frozenset[Modality]]:
    """Every non-empty subset of the model's modalities the graph can take, largest first.

    A modality the graph has no presence mask for is in every subset.
    """
    present = config.modalities.present()
    required = set(config.modalities.required())
    subsets = [frozenset(c) for r in range(len(present), 0, -1) for c in itertools.combinations(present, r)]
    return [s for s in subsets if required <= s]


def random_batch(
    config: ModelConfig,
    rows: Sequence[frozenset[Modality]],
    audio_len: int,
    text_len: int,
    vocab_size: int | None,
    gen: torch.Generator,
) -> Feeds:
    """A batch the way the server collates it: absent rows are zeros with mask False.

    Present rows get random content of a random length up to the padded width
    (at least one row fills it), so padding is always exercised. The config's
    mapping applies: names, dtypes, image normalisation and layout, fixed
    widths, the pad id and token types.
    """
    n = len(rows)
    feeds: Feeds = {}
    spec = config.modalities
    if spec.image is not None:
        has = torch.tensor([Modality.image in r for r in rows], dtype=torch.bool)
        image = torch.randint(
            0, 256, (n, spec.image.height, spec.image.width, 3), generator=gen, dtype=torch.uint8
        )
        image = image * has.view(n, 1, 1, 1).to(torch.uint8)
        feeds["image"] = torch.from_numpy(image_tensor(image.numpy(), has.numpy(), spec.image))
        feeds["image_mask"] = has
    if spec.audio is not None and spec.audio.window == "fixed":
        audio_len = spec.audio.max_samples
    if spec.text is not None and spec.text.padding == "fixed":
        text_len = spec.text.max_tokens
    if spec.audio is not None:
        has = torch.tensor([Modality.audio in r for r in rows], dtype=torch.bool)
        lengths = _row_lengths(has, audio_len, max(1, audio_len // 8), gen)
        steps = torch.arange(audio_len).unsqueeze(0)
        wave = 0.3 * torch.randn(n, audio_len, generator=gen)
        wave = torch.where(steps < lengths.unsqueeze(1), wave, torch.zeros(()))
        feeds["audio"] = wave.to(_TORCH_DTYPES[spec.audio.dtype])
        feeds["audio_length"] = lengths
        feeds["audio_mask"] = has
    if spec.text is not None:
        has = torch.tensor([Modality.text in r for r in rows], dtype=torch.bool)
        lengths = _row_lengths(has, text_len, 1, gen)
        attention = (torch.arange(text_len).unsqueeze(0) < lengths.unsqueeze(1)).to(torch.int64)
        ids = torch.randint(1, max(2, vocab_size or 2), (n, text_len), generator=gen, dtype=torch.int64)
        pad = spec.text.pad_id or 0
        dtype = _TORCH_DTYPES[spec.text.dtype]
        feeds["text_ids"] = (ids * attention + pad * (1 - attention)).to(dtype)
        feeds["text_attention"] = attention.to(dtype)
        feeds["text_token_types"] = torch.zeros_like(attention).to(dtype)
        feeds["text_mask"] = has
    return {g.name: feeds[g.role] for g in config.graph_inputs()}


def _row_lengths(has: Tensor, width: int, shortest: int, gen: torch.Generator) -> Tensor:
    lengths = torch.randint(shortest, width + 1, (len(has),), generator=gen, dtype=torch.int64)
    if bool(has.any()):
        lengths[int(torch.nonzero(has)[0, 0])] = width
    return torch.where(has, lengths, torch.zeros((), dtype=torch.int64))


def _shape_label(config: ModelConfig, batch: int, t_len: int, l_len: int) -> str:
    audio = f" T={t_len}" if config.modalities.audio else ""
    text = f" L={l_len}" if config.modalities.text else ""
    return f"batch={batch}{audio}{text}"


def generated_cases(config: ModelConfig, vocab_size: int | None, seed: int = 0) -> list[ParityCase]:
    """Batches of sizes 1, 3 and 8 over several audio/text lengths and every presence subset.

    Batch 1 runs once per presence subset; batches 3 and 8 cycle the subsets
    over their rows (with 3 modalities, a batch of 8 holds all 7 subsets).
    """
    gen = torch.Generator().manual_seed(seed)
    audio = config.modalities.audio
    text = config.modalities.text
    audio_lens = _spread(audio.min_samples, audio.max_samples) if audio else [1]
    text_lens = _spread(1, text.max_tokens) if text else [1]
    patterns = presence_patterns(config)
    shapes: list[tuple[int, list[frozenset[Modality]]]] = [(1, [p]) for p in patterns]
    for batch in PARITY_BATCH_SIZES[1:]:
        for offset in range(2):
            shapes.append((batch, [patterns[(r + offset) % len(patterns)] for r in range(batch)]))
    cases = []
    for i, (batch, rows) in enumerate(shapes):
        t_len, l_len = audio_lens[i % len(audio_lens)], text_lens[(i + 1) % len(text_lens)]
        feeds = random_batch(config, rows, t_len, l_len, vocab_size, gen)
        present = "|".join("+".join(m.value for m in r) for r in rows[:3]) + ("|..." if batch > 3 else "")
        shape = _shape_label(config, batch, t_len, l_len)
        cases.append(ParityCase(f"generated {shape} rows={present}", feeds))
    return cases


def boundary_cases(
    config: ModelConfig, ranges: CapturedRanges, vocab_size: int | None, seed: int = 0
) -> list[ParityCase]:
    """Batches at sizes the server may feed but the ONNX graph was not captured for.

    ``torch.export`` may assume an axis has at least some size (2, or enough
    samples for several STFT frames). The graph usually still works below
    that, but only running it there proves so: one batch at the server's
    smallest size and one just below the captured range, per narrowed axis.
    """
    audio, text = config.modalities.audio, config.modalities.text
    floors = {"batch": 1, "T": audio.min_samples if audio else 1, "L": 1}
    usual = {
        "batch": 3,
        "T": pick_size(audio.min_samples, max(audio.min_samples, audio.max_samples), set()) if audio else 1,
        "L": pick_size(1, text.max_tokens, set()) if text else 1,
    }
    patterns = presence_patterns(config)
    gen = torch.Generator().manual_seed(seed + 1)
    cases = []
    for axis, (low, _) in sorted(ranges.items()):
        for size in sorted({floors[axis], low - 1}):
            if not floors[axis] <= size < low:
                continue
            sizes = {**usual, axis: size}
            rows = [patterns[r % len(patterns)] for r in range(sizes["batch"])]
            feeds = random_batch(config, rows, sizes["T"], sizes["L"], vocab_size, gen)
            shape = _shape_label(config, sizes["batch"], sizes["T"], sizes["L"])
            cases.append(ParityCase(f"below captured {axis} >= {low}: {shape}", feeds))
    if cases:
        log.info("ONNX graph captured for %s; parity adds %d batches below that", ranges, len(cases))
    return cases


def pick_size(low: int, high: int, taken: set[int]) -> int:
    """A size in ``[low, high]`` near the middle that is not in ``taken`` (``low`` if none is free)."""
    middle = (low + high) // 2
    for step in range(high - low + 1):
        for size in (middle + step, middle - step):
            if low <= size <= high and size not in taken:
                return size
    return low


#: Axis ranges the exported graph was captured for: name → (lowest, highest or None).
CapturedRanges = dict[str, tuple[int, int | None]]


def first_lines(exc: BaseException, n: int = 3) -> str:
    return " ".join(str(exc).strip().splitlines()[:n])


def _named_outputs(result: Any, config: ModelConfig, runtime: str, case: str) -> Outputs:
    values = list(result) if isinstance(result, (tuple, list)) else [result]
    names = [o.name for o in config.outputs]
    if len(values) != len(names):
        raise ParityError(f"{runtime} returned {len(values)} outputs on {case}, the config declares {names}")
    out: Outputs = {}
    for name, value in zip(names, values, strict=True):
        if not isinstance(value, Tensor):
            raise ParityError(f"{runtime} output {name!r} is a {type(value).__name__}, not a tensor ({case})")
        out[name] = value.detach().cpu().numpy()
    return out


def _check_eager(outputs: Outputs, config: ModelConfig, batch: int, case: str) -> None:
    """Eager is the reference, so it must itself honour the output contract."""
    for spec in config.outputs:
        value = outputs[spec.name]
        if value.dtype != np.float32 or value.shape != (batch, spec.dims):
            raise ParityError(
                f"eager output {spec.name!r} is {value.dtype} {list(value.shape)}, "
                f"the config needs float32 [{batch}, {spec.dims}] ({case})"
            )
        if not np.isfinite(value).all():
            raise ParityError(f"eager output {spec.name!r} has NaN or inf values ({case})")
        if spec.kind is OutputKind.embedding and spec.normalized:
            norms = np.linalg.norm(value, axis=1)
            if not np.allclose(norms[norms > 0], 1.0, atol=1e-3):
                raise ParityError(
                    f"eager output {spec.name!r} is an embedding but not L2-normalised ({case})"
                )


def _ort_session(path: Path, config: ModelConfig) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = _ORT_LEVELS[config.onnx.graph_optimization]
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_abs_diff(got: np.ndarray, want: np.ndarray) -> float:
    if got.shape != want.shape:
        return float("inf")
    if got.size == 0:
        return 0.0
    return float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))


def _compare(runtime: str, got: Outputs, want: Outputs, atol: float, case: str) -> float:
    worst = 0.0
    for name, reference in want.items():
        value = got[name]
        if value.shape != reference.shape:
            raise ParityError(
                f"{runtime} output {name!r} has shape {list(value.shape)}, "
                f"eager {list(reference.shape)} ({case})"
            )
        diff = max_abs_diff(value, reference)
        if not diff <= atol:  # also catches NaN
            raise ParityError(
                f"{runtime} disagrees with eager on output {name!r}: max abs diff {diff:.3g} > atol {atol:g} "
                f"({case})"
            )
        worst = max(worst, diff)
    return worst


def check_parity(
    module: nn.Module,
    config: ModelConfig,
    version_dir: Path,
    formats: tuple[str, ...],
    cases: list[ParityCase],
    atol: float,
) -> dict[str, float]:
    """Compare the written files with eager on every case; returns the worst diff per runtime."""
    names = config.graph_input_names()
    runners: dict[str, Any] = {}
    if "torchscript" in formats:
        with jit_deprecation_silenced():
            scripted = torch.jit.load(str(version_dir / MODEL_FILES["torchscript"]), map_location="cpu")
        runners["torchscript"] = lambda feeds: scripted(*(feeds[n] for n in names))
    if "onnx" in formats:
        session = _ort_session(version_dir / MODEL_FILES["onnx"], config)
        outputs = [o.name for o in config.outputs]
        runners["onnx"] = lambda feeds: tuple(
            torch.from_numpy(a) for a in session.run(outputs, {n: feeds[n].numpy() for n in names})
        )

    worst = dict.fromkeys(runners, 0.0)
    for index, case in enumerate(cases):
        batch = int(case.feeds[names[0]].shape[0])
        reference = _run("eager", lambda f: module(*(f[n] for n in names)), case, config)
        _check_eager(reference, config, batch, case.name)
        if index == 0:
            again = _run("eager", lambda f: module(*(f[n] for n in names)), case, config)
            for name in reference:
                if not max_abs_diff(again[name], reference[name]) <= atol:
                    raise ParityError(
                        f"eager forward is not deterministic: output {name!r} changes between two identical "
                        f"calls ({case.name}); is dropout on, or is a random number drawn in forward?"
                    )
        for runtime, run in runners.items():
            got = _run(runtime, run, case, config)
            worst[runtime] = max(worst[runtime], _compare(runtime, got, reference, atol, case.name))
    log.info("parity over %d batches: worst max abs diff %s", len(cases), worst)
    return worst


def _run(runtime: str, run: Any, case: ParityCase, config: ModelConfig) -> Outputs:
    try:
        result = run(case.feeds)
    except Exception as exc:  # any runtime failure is an export failure, named
        raise ParityError(
            f"{runtime} failed on {case.name}: {type(exc).__name__}: {first_lines(exc)}"
        ) from exc
    return _named_outputs(result, config, runtime, case.name)
