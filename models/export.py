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

This is the public way to export your own ``nn.Module`` (docs/model-config.md,
"Export your own module"); ``fusionserve export --module FILE:FACTORY --config
config.yaml`` is its command-line form.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fusionserve.models.parity import (
    _TORCH_DTYPES,
    CapturedRanges,
    Feeds,
    ParityCase,
    ParityError,
    boundary_cases,
    check_parity,
    first_lines,
    generated_cases,
    pick_size,
    presence_patterns,
    random_batch,
)
from fusionserve.models.verify import (
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
from fusionserve.service.errors import ConfigError
from fusionserve.service.model.config import (
    CONFIG_FILE,
    MODEL_FILES,
    ModelConfig,
    dump_model_config,
    load_model_config,
)

log = logging.getLogger(__name__)

#: The dynamo exporter's ONNX function library is written for opset 18; asking
#: for 17 makes it down-convert, which fails on ReduceMean/ReduceSum (axes
#: input → attribute). 18 satisfies the contract's ">= 17".
DEFAULT_OPSET = 18


class ExportError(Exception):
    """The entry cannot be written; the message names the input, output or runtime at fault."""


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
    tokenizer_specials: dict[str, int] | None = None,
) -> Path:
    """Export ``module`` as version ``version`` of ``repo_dir/<config.name>/`` and return the entry dir.

    ``module.forward`` takes ``config.graph_input_names()`` (same names, same
    order: the mapping's, e.g. ``pixel_values, input_ids, attention_mask``)
    and returns one tensor or a tuple in ``config.outputs`` order. The parity
    batches follow the mapping (dtypes, image normalisation and layout, fixed
    lengths, pad id). ``tokenizer_specials`` demands token ids of the
    tokenizer (the project's own models: ``[PAD]`` 0, ``[UNK]`` 1); by default
    a tokenizer keeps its own ids.
    The written config records export facts under ``metadata.export``, and
    names only side files the entry really has (``labels_file`` is dropped
    when an embedding model has no labels, ``tokenizer_file`` when the model
    takes no text). Raises :class:`ExportError` and writes nothing when the
    request is inconsistent or the runtimes disagree.
    """
    formats = _check_request(config, formats, version, opset, atol)
    _check_forward_signature(module, config)
    vocab_size = _check_tokenizer(config, tokenizer_path, tokenizer_specials)
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
            try:
                check_parity(module, config, version_dir, formats, cases, atol)
            except ParityError as exc:
                raise ExportError(str(exc)) from exc
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


def _check_tokenizer(
    config: ModelConfig, tokenizer_path: Path | None, specials: dict[str, int] | None
) -> int | None:
    """Vocabulary size of the tokenizer when the model takes text, else ``None``."""
    if config.modalities.text is None:
        return None
    if tokenizer_path is None:
        raise ExportError(
            f"model {config.name!r} takes text, so export needs tokenizer_path (a tokenizer.json)"
        )
    problems = tokenizer_problems(tokenizer_path, specials)
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
    l_len = pick_size(1, text.max_tokens, taken) if text else 1
    t_len = 1
    if audio:
        t_len = pick_size(audio.min_samples, max(audio.min_samples, audio.max_samples), taken | {l_len})
    patterns = presence_patterns(config)
    rows = [patterns[0], patterns[-1]]  # batch 2
    feeds = random_batch(config, rows, t_len, l_len, vocab_size, torch.Generator().manual_seed(1))
    return tuple(feeds[n] for n in config.graph_input_names())


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
                f"{type(exc).__name__}: {first_lines(exc, 6)}"
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
            raise ExportError(f"ONNX conversion failed: {type(exc).__name__}: {first_lines(exc)}") from exc
    problems = onnx_file_problems(path, config, ordered=True)
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
        log.warning("torch.jit.script failed (%s); tracing instead", first_lines(script_exc))
        try:
            with jit_deprecation_silenced():
                compiled = torch.jit.trace(module, example, check_trace=False)
        except Exception as exc:
            raise ExportError(
                f"TorchScript export failed: script: {first_lines(script_exc)}; trace: {first_lines(exc)}"
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


# --------------------------------------------------------------------------- parity


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
