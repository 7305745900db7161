"""Checks that a model-repository entry is what its ``config.yaml`` says.

Export runs these on the files it is about to publish, and tests run them on
finished entries, so both sides agree on one definition of "consistent". The
server has its own load-time checks; this module is for the producer side and
may import torch and onnx.

Every check returns a list of human-readable problems (empty = fine) instead of
raising, so a caller sees all of them at once.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx

from fusionserve.service.errors import ConfigError
from fusionserve.service.model.config import (
    CONFIG_FILE,
    MODEL_FILES,
    ModelConfig,
    OutputKind,
    load_model_config,
)
from fusionserve.service.model.graph import TensorInfo, embedding_rows, graph_problems
from fusionserve.service.preprocess.text import tokenizer_pad_id

#: Lowest ONNX opset the server accepts (docs/contracts.md §2).
MIN_OPSET = 17

#: Special token ids every tokenizer.json must have (docs/contracts.md §2).
TOKENIZER_SPECIALS = {"[PAD]": 0, "[UNK]": 1}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its dtype and per-axis size.

    An ``int`` axis is fixed; a ``str`` axis is dynamic and names the symbol
    (``batch``, ``T``, ``L``) that the exporter gives it.
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...]


def graph_input_specs(config: ModelConfig) -> list[TensorSpec]:
    """The inputs a graph must take for ``config``, in order (its mapping; contracts.md §1 by default)."""
    return [TensorSpec(g.name, g.dtype, g.shape) for g in config.graph_inputs()]


def graph_output_specs(config: ModelConfig) -> list[TensorSpec]:
    """The outputs a graph must yield for ``config``: float32 ``[batch, dims]`` each."""
    return [TensorSpec(o.name, "float32", ("batch", o.dims)) for o in config.outputs]


@contextlib.contextmanager
def jit_deprecation_silenced() -> Iterator[None]:
    """Hide only TorchScript's "``torch.jit.X`` is deprecated" notice.

    TorchScript is a backend the server supports on purpose, so the notice is
    noise for us; every other warning (TracerWarning above all) still shows.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning
        )
        yield


def _onnx_dtype_name(elem_type: int) -> str:
    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _value_info_problems(kind: str, got: onnx.ValueInfoProto, want: TensorSpec) -> list[str]:
    tensor = got.type.tensor_type
    problems: list[str] = []
    dtype = _onnx_dtype_name(tensor.elem_type)
    if dtype != want.dtype:
        problems.append(f"{kind} {want.name!r} has dtype {dtype}, the config needs {want.dtype}")
    dims = list(tensor.shape.dim)
    if len(dims) != len(want.shape):
        problems.append(f"{kind} {want.name!r} has rank {len(dims)}, the config needs {len(want.shape)}")
        return problems
    for axis, (dim, size) in enumerate(zip(dims, want.shape, strict=True)):
        fixed = dim.dim_value if dim.HasField("dim_value") else None
        if isinstance(size, str) and fixed is not None:
            problems.append(
                f"{kind} {want.name!r} axis {axis} ({size}) is fixed to {fixed}; it must be dynamic"
            )
        elif isinstance(size, int) and fixed is not None and fixed != size:
            problems.append(f"{kind} {want.name!r} axis {axis} is {fixed}, the config says {size}")
    return problems


def _io_list_problems(
    kind: str, got: list[onnx.ValueInfoProto], want: list[TensorSpec], ordered: bool
) -> list[str]:
    got_names = [v.name for v in got]
    want_names = [s.name for s in want]
    problems = [
        f"graph lacks {kind} {n!r} that the config declares" for n in want_names if n not in got_names
    ]
    problems += [
        f"graph has {kind} {n!r} that the config does not declare" for n in got_names if n not in want_names
    ]
    if ordered and not problems and got_names != want_names:
        problems.append(f"graph {kind}s are ordered {got_names}, the config needs {want_names}")
    by_name = {v.name: v for v in got}
    for spec in want:
        if spec.name in by_name:
            problems += _value_info_problems(kind, by_name[spec.name], spec)
    return problems


def onnx_io_problems(model: onnx.ModelProto, config: ModelConfig, ordered: bool = False) -> list[str]:
    """Graph inputs/outputs versus the config: names, dtypes, ranks, dynamic axes (and order)."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    return _io_list_problems("input", inputs, graph_input_specs(config), ordered) + _io_list_problems(
        "output", list(model.graph.output), graph_output_specs(config), ordered
    )


def onnx_file_problems(path: Path, config: ModelConfig, ordered: bool = False) -> list[str]:
    """One self-contained file, opset >= 17, and I/O that matches the config.

    ``ordered`` also demands the config's input and output order (export,
    which passes inputs positionally); the server feeds by name.
    """
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises several unrelated types for a bad file
        return [f"{path}: not a readable ONNX model: {exc}"]
    problems: list[str] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < MIN_OPSET:
        problems.append(f"{path}: default-domain opset is {opset}, at least {MIN_OPSET} is needed")
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        problems.append(f"{path}: {len(external)} initializers use external data (e.g. {external[0]!r})")
    problems += [f"{path}: {p}" for p in onnx_io_problems(model, config, ordered)]
    return problems


def torchscript_file_problems(path: Path, config: ModelConfig) -> list[str]:
    """A loadable TorchScript module whose ``forward`` takes the config's inputs."""
    import torch  # lazily: ONNX-only checks need no torch

    try:
        with jit_deprecation_silenced():
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError or its own types
        return [f"{path}: not a loadable TorchScript module: {exc}"]
    arguments = module.forward.schema.arguments[1:]  # drop self
    mapped = set(config.graph_input_names())
    inputs = [TensorInfo(a.name) for a in arguments if a.name in mapped or not a.has_default_value()]
    return [f"{path}: {p}" for p in graph_problems(config, inputs, None, path.name)]


def read_labels(path: Path) -> list[str]:
    """One label per line (a final newline ends the last one, it adds no label)."""
    return path.read_text(encoding="utf-8").splitlines()


def label_problems(labels: list[str], config: ModelConfig, source: str = "labels") -> list[str]:
    """Labels must be non-empty, unique, single-line, and one per logit column."""
    problems: list[str] = []
    blank = [i for i, label in enumerate(labels) if not label.strip()]
    if blank:
        problems.append(f"{source}: label {blank[0]} is empty")
    if any("\n" in label or "\r" in label for label in labels):
        problems.append(f"{source}: a label contains a line break")
    dupes = sorted({label for label in labels if labels.count(label) > 1})
    if dupes:
        problems.append(f"{source}: duplicate labels {dupes}")
    for out in config.outputs:
        if out.kind is OutputKind.logits and out.dims != len(labels):
            problems.append(
                f"{source}: {len(labels)} labels, but output {out.name!r} has {out.dims} logit columns"
            )
    return problems


def tokenizer_problems(path: Path, specials: dict[str, int] | None = TOKENIZER_SPECIALS) -> list[str]:
    """A parseable HF ``tokenizer.json``, with ``specials`` at their ids (ours: ``[PAD]`` 0, ``[UNK]`` 1).

    A tokenizer brought from elsewhere keeps its own ids (``specials=None``):
    the server reads the pad id from the file and never assumes an unknown id.
    """
    from tokenizers import Tokenizer

    if not path.is_file():
        return [f"{path}: tokenizer file is missing (the model takes text)"]
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception
        return [f"{path}: not a readable tokenizers file: {exc}"]
    return [
        f"{path}: token {tok} has id {tokenizer.token_to_id(tok)}, the contract needs {want}"
        for tok, want in (specials or {}).items()
        if tokenizer.token_to_id(tok) != want
    ]


def vocabulary_problems(tokenizer_path: Path, model_path: Path, config: ModelConfig) -> list[str]:
    """Token ids the tokenizer can yield must index rows of the graph's embedding table (ONNX)."""
    from tokenizers import Tokenizer

    text = config.modalities.text
    if text is None or not tokenizer_path.is_file():
        return []
    rows = embedding_rows(model_path, text.input)
    if rows is None:
        return []
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    pad_id = text.pad_id if text.pad_id is not None else (tokenizer_pad_id(tokenizer) or 0)
    if max(vocab - 1, pad_id) < rows:
        return []
    return [
        f"{tokenizer_path}: yields ids up to {vocab - 1} (pad id {pad_id}), but the token embedding that "
        f"graph input {text.input!r} indexes in {model_path} has {rows} rows"
    ]


def _bare_file_name(name: str) -> bool:
    return bool(name) and Path(name).name == name and name not in (".", "..")


def config_file_problems(config: ModelConfig) -> list[str]:
    """Side-file names in the config must be plain names inside the entry."""
    return [
        f"config {field} {name!r} must be a plain file name inside the entry"
        for field, name in (
            ("labels_file", config.labels_file),
            ("tokenizer_file", config.tokenizer_file),
            ("code_file", config.code_file),
        )
        if name is not None and not _bare_file_name(name)
    ]


def version_dirs(entry_dir: Path) -> list[Path]:
    """The entry's version directories (positive integer names), lowest first."""
    found = [p for p in entry_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0]
    return sorted(found, key=lambda p: int(p.name))


def verify_entry(entry_dir: Path) -> list[str]:
    """Everything wrong with a repository entry, or ``[]`` when it is consistent."""
    if not entry_dir.is_dir():
        return [f"{entry_dir}: not a directory"]
    try:
        config = load_model_config(entry_dir / CONFIG_FILE)
    except ConfigError as exc:
        return [exc.message]
    problems = config_file_problems(config)
    if problems:
        return problems
    if entry_dir.name != config.name:
        problems.append(f"{entry_dir}: directory name differs from config name {config.name!r}")
    if config.labels_file and (config.task == "classify" or (entry_dir / config.labels_file).exists()):
        labels_path = entry_dir / config.labels_file
        if labels_path.is_file():
            problems += label_problems(read_labels(labels_path), config, str(labels_path))
        else:
            problems.append(f"{labels_path}: labels file is missing (task {config.task!r})")
    if config.modalities.text is not None and config.tokenizer_file:
        problems += tokenizer_problems(entry_dir / config.tokenizer_file, specials=None)
    versions = version_dirs(entry_dir)
    if not versions:
        problems.append(f"{entry_dir}: no version directory (e.g. 1/)")
    for version in versions:
        served = version / MODEL_FILES[config.backend]
        if not served.is_file():
            problems.append(f"{served}: missing, but config backend is {config.backend!r}")
        onnx_path, ts_path = version / MODEL_FILES["onnx"], version / MODEL_FILES["torchscript"]
        if onnx_path.is_file():
            problems += onnx_file_problems(onnx_path, config)
            if config.tokenizer_file:
                problems += vocabulary_problems(entry_dir / config.tokenizer_file, onnx_path, config)
        if ts_path.is_file():
            problems += torchscript_file_problems(ts_path, config)
    return problems
