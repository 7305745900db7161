"""Write a self-describing model-repository entry, or refuse to.

``export_entry`` turns a trained ``nn.Module`` into ``<repo>/<name>/`` (layout
in docs/contracts.md §2): ``config.yaml``, ``labels.txt``, ``tokenizer.json``
and ``<version>/model.onnx`` and/or ``model.pt``. It publishes nothing unless
eager PyTorch, the TorchScript file and the ONNX file, run through ONNX
Runtime, agree within ``atol`` on every output, for the caller's real inputs
and for generated batches of several sizes, lengths and presence masks. The
check runs on the files as reloaded from disk, so what is compared is exactly
what the server will load.

Everything is staged in a temporary directory next to the entry and moved into
place with renames, so a failed export leaves the repository untouched and a
reader never sees half an entry.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from models.verify import (
    MIN_OPSET,
    TensorSpec,
    config_file_problems,
    graph_input_specs,
    jit_deprecation_silenced,
    label_problems,
    onnx_file_problems,
    tokenizer_problems,
    torchscript_file_problems,
    verify_entry,
)
from service.errors import ConfigError
from service.model_config import (
    CONFIG_FILE,
    MODEL_FILES,
    Modality,
    ModelConfig,
    OutputKind,
    dump_model_config,
    load_model_config,
)

log = logging.getLogger(__name__)

#: The dynamo exporter's ONNX function library is written for opset 18; asking
#: for 17 makes it down-convert, which fails on ReduceMean/ReduceSum (axes
#: input → attribute). 18 satisfies the contract's ">= 17".
DEFAULT_OPSET = 18

#: Batch sizes of the generated parity batches (1 exercises the no-padding path).
PARITY_BATCH_SIZES = (1, 3, 8)

_TORCH_DTYPES = {"uint8": torch.uint8, "bool": torch.bool, "float32": torch.float32, "int64": torch.int64}
_ORT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

Feeds = dict[str, Tensor]
Outputs = dict[str, np.ndarray]


class ExportError(Exception):
    """The entry cannot be written; the message names the input, output or runtime at fault."""


@dataclass(frozen=True)
class ParityCase:
    """One batch that every runtime must answer alike; ``name`` says where it came from."""

    name: str
    feeds: Feeds


def export_entry(
    module: nn.Module,
    *,
    config: ModelConfig,
    labels: list[str] | None,
    tokenizer_path: Path | None,
    repo_dir: Path,
    version: int = 1,
    formats: Sequence[str] = ("onnx", "torchscript"),
    check_inputs: Sequence[Mapping[str, Tensor]] = (),
    atol: float = 1e-4,
    opset: int = DEFAULT_OPSET,
    seed: int = 0,
) -> Path:
    """Export ``module`` as version ``version`` of ``repo_dir/<config.name>/`` and return the entry dir.

    ``module.forward`` takes ``config.graph_input_names()`` (same names, same
    order) and returns one tensor or a tuple in ``config.outputs`` order.
    The written config records export facts under ``metadata.export``, and
    names only side files the entry really has (``labels_file`` is dropped
    when an embedding model has no labels, ``tokenizer_file`` when the model
    takes no text). Raises :class:`ExportError` and writes nothing when the
    request is inconsistent or the runtimes disagree.
    """
    formats = _check_request(config, formats, version, opset, atol)
    _check_forward_signature(module, config)
    vocab_size = _check_tokenizer(config, tokenizer_path)
    labels = _check_labels(config, labels)
    real_cases = [
        ParityCase(f"check_inputs[{i}]", _checked_feeds(feeds, config, f"check_inputs[{i}]"))
        for i, feeds in enumerate(check_inputs)
    ]
    cases = real_cases + generated_cases(config, vocab_size, seed)
    example = _export_example(config, vocab_size)

    was_training = module.training
    module.eval()
    repo_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{config.name}.export-", dir=repo_dir))
    try:
        entry = staging / config.name
        version_dir = entry / str(version)
        version_dir.mkdir(parents=True)
        with torch.no_grad():
            ranges = _write_models(module, config, example, version_dir, formats, opset)
            cases += boundary_cases(config, ranges, vocab_size, seed)
            _check_parity(module, config, version_dir, formats, cases, atol)
        final = _final_config(config, labels, tokenizer_path, formats, opset, atol, len(cases))
        _write_side_files(final, labels, tokenizer_path, entry)
        problems = verify_entry(entry)
        if problems:
            raise ExportError("the staged entry is inconsistent: " + "; ".join(problems))
        target = repo_dir / config.name
        _check_existing_versions(target, final, version)
        _commit(entry, target, version, staging)
    finally:
        module.train(was_training)
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s version %d (%s) to %s", config.name, version, ", ".join(formats), target)
    return target


# --------------------------------------------------------------------------- request checks


def _check_request(
    config: ModelConfig, formats: Sequence[str], version: int, opset: int, atol: float
) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(formats))
    unknown = [f for f in chosen if f not in MODEL_FILES]
    if unknown or not chosen:
        raise ExportError(f"formats must be a non-empty subset of {sorted(MODEL_FILES)}, got {list(formats)}")
    if config.backend not in chosen:
        raise ExportError(
            f"config backend {config.backend!r} is not among the exported formats {list(chosen)}; "
            "the server would find no model file to load"
        )
    if version < 1:
        raise ExportError(f"version must be a positive integer, got {version}")
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is below {MIN_OPSET}, the lowest the server accepts")
    if not atol > 0:
        raise ExportError(f"atol must be positive, got {atol}")
    problems = config_file_problems(config)
    if problems:
        raise ExportError("; ".join(problems))
    return chosen


def _check_forward_signature(module: nn.Module, config: ModelConfig) -> None:
    """The server passes inputs positionally and checks their names, so both must match."""
    want = config.graph_input_names()
    params = list(inspect.signature(module.forward).parameters.values())
    got = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for i, name in enumerate(want):
        if i >= len(got):
            raise ExportError(
                f"module.forward lacks graph input {name!r} (it takes {got}, the config needs {want})"
            )
        if got[i] != name:
            raise ExportError(
                f"module.forward parameter {i} is {got[i]!r} where the config needs graph input {name!r} "
                f"(it takes {got}, the config needs {want})"
            )
    if len(got) > len(want) or len(got) != len(params):
        raise ExportError(f"module.forward takes {[p.name for p in params]}, the config declares only {want}")


def _check_tokenizer(config: ModelConfig, tokenizer_path: Path | None) -> int | None:
    """Vocabulary size of the tokenizer when the model takes text, else ``None``."""
    if config.modalities.text is None:
        return None
    if tokenizer_path is None:
        raise ExportError(
            f"model {config.name!r} takes text, so export needs tokenizer_path (a tokenizer.json)"
        )
    problems = tokenizer_problems(tokenizer_path)
    if problems:
        raise ExportError("; ".join(problems))
    from tokenizers import Tokenizer

    return int(Tokenizer.from_file(str(tokenizer_path)).get_vocab_size())


def _check_labels(config: ModelConfig, labels: list[str] | None) -> list[str] | None:
    if labels is None:
        if config.task == "classify":
            raise ExportError(
                f"model {config.name!r} is a classifier, so export needs labels (one per logit)"
            )
        return None
    labels = list(labels)
    problems = label_problems(labels, config)
    if problems:
        raise ExportError("; ".join(problems))
    return labels


def _checked_feeds(feeds: Mapping[str, Tensor], config: ModelConfig, source: str) -> Feeds:
    """A caller's batch must carry exactly the graph inputs, with the contract's dtypes and ranks."""
    specs = graph_input_specs(config)
    missing = [s.name for s in specs if s.name not in feeds]
    extra = [n for n in feeds if n not in {s.name for s in specs}]
    if missing or extra:
        raise ExportError(f"{source}: missing inputs {missing}, unexpected inputs {extra}")
    batch = {int(feeds[s.name].shape[0]) for s in specs if feeds[s.name].dim() > 0}
    for spec in specs:
        tensor = feeds[spec.name]
        if tensor.dtype != _TORCH_DTYPES[spec.dtype] or tensor.dim() != len(spec.shape):
            raise ExportError(
                f"{source}: input {spec.name!r} is {tensor.dtype} rank {tensor.dim()}, "
                f"the contract needs {spec.dtype} rank {len(spec.shape)}"
            )
    if len(batch) != 1:
        raise ExportError(f"{source}: inputs disagree on the batch size: {sorted(batch)}")
    return {s.name: feeds[s.name].detach().cpu().contiguous() for s in specs}


def _final_config(
    config: ModelConfig,
    labels: list[str] | None,
    tokenizer_path: Path | None,
    formats: tuple[str, ...],
    opset: int,
    atol: float,
    n_cases: int,
) -> ModelConfig:
    facts: dict[str, Any] = {
        "formats": list(formats),
        "torch": torch.__version__.split("+")[0],
        "parity_atol": atol,
        "parity_batches": n_cases,
    }
    if "onnx" in formats:
        facts["opset"] = opset
    update: dict[str, Any] = {"metadata": {**config.metadata, "export": facts}}
    if labels is None:
        update["labels_file"] = None
    if config.modalities.text is None or tokenizer_path is None:
        update["tokenizer_file"] = None
    # model_copy skips validation; round-trip through the validator instead.
    return ModelConfig.model_validate({**config.model_dump(), **update})


# --------------------------------------------------------------------------- generated inputs


def _spread(low: int, high: int) -> list[int]:
    """Three distinct-ish sizes from ``low`` to ``high``, one of them odd."""
    high = max(low, high)
    return sorted({low, min(high, low + (high - low) // 3 | 1), high})


def _presence_patterns(config: ModelConfig) -> list[frozenset[Modality]]:
    """Every non-empty subset of the model's modalities, largest first."""
    present = config.modalities.present()
    subsets = [frozenset(c) for r in range(len(present), 0, -1) for c in itertools.combinations(present, r)]
    return subsets


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
    (at least one row fills it), so padding is always exercised.
    """
    n = len(rows)
    feeds: Feeds = {}
    spec = config.modalities
    if spec.image is not None:
        has = torch.tensor([Modality.image in r for r in rows], dtype=torch.bool)
        image = torch.randint(
            0, 256, (n, spec.image.height, spec.image.width, 3), generator=gen, dtype=torch.uint8
        )
        feeds["image"] = image * has.view(n, 1, 1, 1).to(torch.uint8)
        feeds["image_mask"] = has
    if spec.audio is not None:
        has = torch.tensor([Modality.audio in r for r in rows], dtype=torch.bool)
        lengths = _row_lengths(has, audio_len, max(1, audio_len // 8), gen)
        steps = torch.arange(audio_len).unsqueeze(0)
        wave = 0.3 * torch.randn(n, audio_len, generator=gen)
        feeds["audio"] = torch.where(steps < lengths.unsqueeze(1), wave, torch.zeros(()))
        feeds["audio_length"] = lengths
        feeds["audio_mask"] = has
    if spec.text is not None:
        has = torch.tensor([Modality.text in r for r in rows], dtype=torch.bool)
        lengths = _row_lengths(has, text_len, 1, gen)
        attention = (torch.arange(text_len).unsqueeze(0) < lengths.unsqueeze(1)).to(torch.int64)
        ids = torch.randint(1, max(2, vocab_size or 2), (n, text_len), generator=gen, dtype=torch.int64)
        feeds["text_ids"] = ids * attention
        feeds["text_attention"] = attention
        feeds["text_mask"] = has
    return {name: feeds[name] for name in config.graph_input_names()}


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
    patterns = _presence_patterns(config)
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
        "T": _pick(audio.min_samples, max(audio.min_samples, audio.max_samples), set()) if audio else 1,
        "L": _pick(1, text.max_tokens, set()) if text else 1,
    }
    patterns = _presence_patterns(config)
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


# --------------------------------------------------------------------------- staging


def _write_models(
    module: nn.Module,
    config: ModelConfig,
    example: tuple[Tensor, ...],
    version_dir: Path,
    formats: tuple[str, ...],
    opset: int,
) -> CapturedRanges:
    """Write the model files; returns the axis ranges the ONNX graph was captured for."""
    ranges: CapturedRanges = {}
    if "onnx" in formats:
        ranges = export_onnx(module, config, example, version_dir / MODEL_FILES["onnx"], opset)
    if "torchscript" in formats:
        export_torchscript(module, config, example, version_dir / MODEL_FILES["torchscript"])
    return ranges


def _write_side_files(
    config: ModelConfig, labels: list[str] | None, tokenizer_path: Path | None, entry: Path
) -> None:
    """config.yaml (read back to prove it validates), labels.txt and tokenizer.json."""
    if labels is not None and config.labels_file:
        (entry / config.labels_file).write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    if tokenizer_path is not None and config.tokenizer_file:
        shutil.copyfile(tokenizer_path, entry / config.tokenizer_file)
    dump_model_config(config, entry / CONFIG_FILE)
    try:
        reread = load_model_config(entry / CONFIG_FILE)
    except ConfigError as exc:
        raise ExportError(f"the written config does not load back: {exc.message}") from exc
    if reread != config:
        raise ExportError("the written config.yaml reads back different from the config given")


def _export_example(config: ModelConfig, vocab_size: int | None) -> tuple[Tensor, ...]:
    """Inputs to capture with: every dynamic size mid-range and distinct from every other size.

    ``torch.export`` pins a size that is 1 and merges sizes that happen to be
    equal, so the example avoids both; mid-range also keeps sizes derived
    inside the model (STFT frames, strided convolutions) well above 1.
    """
    audio, text, image = config.modalities.audio, config.modalities.text, config.modalities.image
    taken = {1, 2, 3} | ({image.height, image.width} if image else set())
    l_len = _pick(1, text.max_tokens, taken) if text else 1
    t_len = (
        _pick(audio.min_samples, max(audio.min_samples, audio.max_samples), taken | {l_len}) if audio else 1
    )
    patterns = _presence_patterns(config)
    rows = [patterns[0], patterns[-1]]  # batch 2
    feeds = random_batch(config, rows, t_len, l_len, vocab_size, torch.Generator().manual_seed(1))
    return tuple(feeds[n] for n in config.graph_input_names())


def _pick(low: int, high: int, taken: set[int]) -> int:
    """A size in ``[low, high]`` near the middle that is not in ``taken`` (``low`` if none is free)."""
    middle = (low + high) // 2
    for step in range(high - low + 1):
        for size in (middle + step, middle - step):
            if low <= size <= high and size not in taken:
                return size
    return low


#: Axis ranges the exported graph was captured for: name → (lowest, highest or None).
CapturedRanges = dict[str, tuple[int, int | None]]


def export_onnx(
    module: nn.Module, config: ModelConfig, example: tuple[Tensor, ...], path: Path, opset: int
) -> CapturedRanges:
    """Capture with ``torch.export`` ourselves, convert with the dynamo exporter, into one file.

    Why dynamo rather than the legacy TorchScript-based exporter: the legacy
    one silently drops graph inputs the computation does not use (the server
    feeds every input, so ONNX Runtime would reject the feed) and freezes
    data-dependent Python branches into whatever the example took, while
    ``torch.export`` keeps every declared input and refuses such branches.

    Why capture ourselves: handed a module, ``torch.onnx.export`` retries a
    failed capture with laxer strategies, one of which quietly pins a dynamic
    axis to the example's size. Here every axis is ``Dim.DYNAMIC``: pinning
    one to a constant is an error, while narrowing its range (torch assumes
    sizes >= 2, or enough samples for a few STFT frames) is allowed and
    returned, so parity can run the graph below the captured range too.
    ``external_data=False`` keeps the weights inside the file.
    """
    from torch.export import Dim

    specs = graph_input_specs(config)
    capture = tuple(
        {i: Dim.DYNAMIC for i, s in enumerate(spec.shape) if isinstance(s, str)} for spec in specs
    )
    named = {axis: Dim(axis) for axis in ("batch", "T", "L")}
    naming = tuple({i: named[s] for i, s in enumerate(spec.shape) if isinstance(s, str)} for spec in specs)
    with warnings.catch_warnings(), _quiet_logger("torch.onnx._internal.exporter._registration"):
        # Naming tells the exporter to call every batch axis "batch"; it notes that, once per input.
        warnings.filterwarnings("ignore", message=r".*axis name: .* will not be used")
        # torch.export's own pytree deprecation, raised inside torch, not by this code.
        warnings.filterwarnings(
            "ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning
        )
        try:
            program = torch.export.export(module, example, dynamic_shapes=capture, strict=False)
        except Exception as exc:  # torch.export raises many unrelated types
            raise ExportError(
                f"torch.export could not capture the module with dynamic batch/T/L: "
                f"{type(exc).__name__}: {_first_lines(exc, 6)}"
            ) from exc
        try:
            torch.onnx.export(
                program,
                f=str(path),
                input_names=config.graph_input_names(),
                output_names=[o.name for o in config.outputs],
                dynamic_shapes=naming,
                opset_version=opset,
                external_data=False,
                dynamo=True,
                verbose=False,
            )
        except Exception as exc:  # the converter raises many unrelated types
            raise ExportError(f"ONNX conversion failed: {type(exc).__name__}: {_first_lines(exc)}") from exc
    problems = onnx_file_problems(path, config)
    if problems:
        raise ExportError("the exported ONNX graph disagrees with the config: " + "; ".join(problems))
    extra = sorted(p.name for p in path.parent.iterdir() if p.name not in MODEL_FILES.values())
    if extra:
        raise ExportError(f"ONNX export wrote files besides {path.name}: {extra} (external data?)")
    return _captured_ranges(program, specs)


def _as_int(bound: Any) -> int | None:
    """A sympy range bound as an int; ``None`` for torch's unbounded ``int_oo``."""
    try:
        return int(bound)
    except (TypeError, ValueError, OverflowError, AttributeError):  # what int(int_oo) raises varies
        return None


def _captured_ranges(program: Any, specs: list[TensorSpec]) -> CapturedRanges:
    """Which sizes the captured graph assumes for each named axis (from its symbolic shapes)."""
    by_symbol = {str(sym): rng for sym, rng in program.range_constraints.items()}
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and "val" in n.meta]
    user_inputs = placeholders[-len(specs) :]  # parameters and buffers come first
    ranges: CapturedRanges = {}
    for node, spec in zip(user_inputs, specs, strict=True):
        for size, dim in zip(spec.shape, node.meta["val"].shape, strict=True):
            rng = by_symbol.get(str(dim))
            if isinstance(size, str) and rng is not None and size not in ranges:
                ranges[size] = (int(rng.lower), _as_int(rng.upper))
    return ranges


def export_torchscript(
    module: nn.Module, config: ModelConfig, example: tuple[Tensor, ...], path: Path
) -> str:
    """Script the module, or trace it when scripting fails; returns ``"script"`` or ``"trace"``.

    A traced graph replays the example's Python decisions, so it is only
    trusted because the parity check later runs it on other shapes and masks.
    """
    method = "script"
    try:
        with jit_deprecation_silenced():
            compiled = torch.jit.script(module)
    except Exception as script_exc:  # scripting failures come in many types
        method = "trace"
        log.warning("torch.jit.script failed (%s); tracing instead", _first_lines(script_exc))
        try:
            with jit_deprecation_silenced():
                compiled = torch.jit.trace(module, example, check_trace=False)
        except Exception as exc:
            raise ExportError(
                f"TorchScript export failed: script: {_first_lines(script_exc)}; trace: {_first_lines(exc)}"
            ) from exc
    with jit_deprecation_silenced():
        torch.jit.save(compiled, str(path))
    problems = torchscript_file_problems(path, config)
    if problems:
        raise ExportError("the TorchScript module disagrees with the config: " + "; ".join(problems))
    return method


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Raise one logger to ERROR for a block (the exporter logs a line per missing torchvision op)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _first_lines(exc: BaseException, n: int = 3) -> str:
    return " ".join(str(exc).strip().splitlines()[:n])


# --------------------------------------------------------------------------- parity


def _named_outputs(result: Any, config: ModelConfig, runtime: str, case: str) -> Outputs:
    values = list(result) if isinstance(result, (tuple, list)) else [result]
    names = [o.name for o in config.outputs]
    if len(values) != len(names):
        raise ExportError(f"{runtime} returned {len(values)} outputs on {case}, the config declares {names}")
    out: Outputs = {}
    for name, value in zip(names, values, strict=True):
        if not isinstance(value, Tensor):
            raise ExportError(f"{runtime} output {name!r} is a {type(value).__name__}, not a tensor ({case})")
        out[name] = value.detach().cpu().numpy()
    return out


def _check_eager(outputs: Outputs, config: ModelConfig, batch: int, case: str) -> None:
    """Eager is the reference, so it must itself honour the output contract."""
    for spec in config.outputs:
        value = outputs[spec.name]
        if value.dtype != np.float32 or value.shape != (batch, spec.dims):
            raise ExportError(
                f"eager output {spec.name!r} is {value.dtype} {list(value.shape)}, "
                f"the config needs float32 [{batch}, {spec.dims}] ({case})"
            )
        if not np.isfinite(value).all():
            raise ExportError(f"eager output {spec.name!r} has NaN or inf values ({case})")
        if spec.kind is OutputKind.embedding:
            norms = np.linalg.norm(value, axis=1)
            if not np.allclose(norms[norms > 0], 1.0, atol=1e-3):
                raise ExportError(
                    f"eager output {spec.name!r} is an embedding but not L2-normalised ({case})"
                )


def _ort_session(path: Path, config: ModelConfig) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = _ORT_LEVELS[config.onnx.graph_optimization]
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _max_abs_diff(got: np.ndarray, want: np.ndarray) -> float:
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
            raise ExportError(
                f"{runtime} output {name!r} has shape {list(value.shape)}, "
                f"eager {list(reference.shape)} ({case})"
            )
        diff = _max_abs_diff(value, reference)
        if not diff <= atol:  # also catches NaN
            raise ExportError(
                f"{runtime} disagrees with eager on output {name!r}: max abs diff {diff:.3g} > atol {atol:g} "
                f"({case})"
            )
        worst = max(worst, diff)
    return worst


def _check_parity(
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
                if not _max_abs_diff(again[name], reference[name]) <= atol:
                    raise ExportError(
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
        raise ExportError(
            f"{runtime} failed on {case.name}: {type(exc).__name__}: {_first_lines(exc)}"
        ) from exc
    return _named_outputs(result, config, runtime, case.name)


# --------------------------------------------------------------------------- commit


def _check_existing_versions(target: Path, config: ModelConfig, version: int) -> None:
    """Refreshing config.yaml must not break the versions already in the entry."""
    if not target.is_dir():
        return
    problems: list[str] = []
    for other in sorted(p for p in target.iterdir() if p.is_dir() and p.name.isdigit()):
        if int(other.name) == version:
            continue
        if (other / MODEL_FILES["onnx"]).is_file():
            problems += onnx_file_problems(other / MODEL_FILES["onnx"], config)
        if (other / MODEL_FILES["torchscript"]).is_file():
            problems += torchscript_file_problems(other / MODEL_FILES["torchscript"], config)
    if problems:
        raise ExportError(
            f"{target} already holds versions that the new config would misdescribe: " + "; ".join(problems)
        )


def _commit(entry: Path, target: Path, version: int, staging: Path) -> None:
    """Move the staged entry into place with renames (atomic per directory and file)."""
    if not target.exists():
        os.rename(entry, target)
        return
    new_version = entry / str(version)
    old_version = target / str(version)
    if old_version.exists():
        os.rename(old_version, staging / "replaced-version")
    os.rename(new_version, old_version)
    for side in sorted(p for p in entry.iterdir() if p.is_file()):
        os.replace(side, target / side.name)
