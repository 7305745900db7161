"""Check a graph's inputs and outputs against the config's mapping, before serving it.

Backends describe what they loaded as :class:`TensorInfo` lists; this module
compares them with :meth:`ModelConfig.graph_inputs` and the declared outputs
and says, per problem, which config field disagrees with which graph tensor
and how. A model that fails here is refused at load with one error that names
the config file, so a wrong mapping never turns into a per-request failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fusionserve.service.errors import ConfigError
from fusionserve.service.model.config import CONFIG_FILE, GraphInput, ModelConfig

#: Output dtypes the server turns into answers (cast to float32).
OUTPUT_DTYPES = frozenset({"float32", "float16", "float64"})

#: Graph input names that suggest a role, for the hint on an unmapped input.
_ROLE_HINTS = {
    "attention": "modalities.text.attention_input",
    "token_type": "modalities.text.token_type_input",
    "length": "modalities.audio.length_input",
    "mask": "the modality's mask_input",
}


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output as the runtime reports it.

    ``dtype`` is a numpy dtype name (``None``: the runtime cannot say, as with
    TorchScript); ``shape`` has an int per fixed axis and ``None`` per dynamic
    one (``None`` as a whole: unknown rank).
    """

    name: str
    dtype: str | None = None
    shape: tuple[int | None, ...] | None = None


def config_file_for(model_path: Path) -> Path:
    """``<entry>/<version>/model.onnx`` → ``<entry>/config.yaml`` (what errors name)."""
    return model_path.parent.parent / CONFIG_FILE


def check_graph(
    config: ModelConfig, inputs: list[TensorInfo], outputs: list[TensorInfo] | None, model_path: Path
) -> None:
    """Raise one :class:`ConfigError` listing every disagreement, naming the config file."""
    problems = graph_problems(config, inputs, outputs, model_path.name)
    if problems:
        config_file = config_file_for(model_path)
        raise ConfigError(f"{config_file}: " + "; ".join(problems), file=str(config_file))


def graph_problems(
    config: ModelConfig, inputs: list[TensorInfo], outputs: list[TensorInfo] | None, model_file: str
) -> list[str]:
    """Every way the graph and the config disagree, each as ``field: config says …, graph …``."""
    problems: list[str] = []
    by_name = {t.name: t for t in inputs}
    graph_names = [t.name for t in inputs]
    for want in config.graph_inputs():
        got = by_name.get(want.name)
        if got is None:
            problems.append(
                f"{want.field}: graph input {want.name!r} is missing in {model_file} "
                f"(config says {want.name!r}; the graph's inputs are {graph_names})"
            )
            continue
        problems += _input_problems(config, want, got, model_file)
    mapped = set(config.graph_input_names())
    for name in graph_names:
        if name not in mapped:
            problems.append(
                f"modalities: graph has input {name!r} that the config does not declare ({model_file}); "
                f"map it{_hint(name)} or export the graph without it"
            )
    if outputs is not None:
        problems += _output_problems(config, outputs, model_file)
    return problems


def _hint(name: str) -> str:
    lowered = name.lower()
    return next((f" (with {field}?)" for key, field in _ROLE_HINTS.items() if key in lowered), "")


def _input_problems(config: ModelConfig, want: GraphInput, got: TensorInfo, model_file: str) -> list[str]:
    where = f"graph input {want.name!r} in {model_file}"
    problems: list[str] = []
    if got.dtype is not None and got.dtype != want.dtype:
        problems.append(f"{_dtype_field(want)}: config says {want.dtype}, {where} is {got.dtype}")
    if got.shape is None:
        return problems
    if len(got.shape) != len(want.shape):
        problems.append(
            f"{want.field}: config feeds rank {len(want.shape)} {_shape(want.shape)}, "
            f"{where} has rank {len(got.shape)} {_shape(got.shape)}"
        )
        return problems
    for axis, (size, fixed) in enumerate(zip(want.shape, got.shape, strict=True)):
        if fixed is None:
            continue  # a dynamic graph axis takes whatever the config feeds
        if size == "batch":
            problems.append(
                f"{want.field}: {where} has a fixed batch size {fixed} on axis 0; the server batches "
                "requests: export with a dynamic batch axis (dynamic_axes / dynamic_shapes)"
            )
        elif isinstance(size, str):
            problems.append(_fixed_length_problem(size, fixed, where))
        elif size != fixed:
            problems.append(
                f"{_axis_field(config, want, axis)}: config says {size} on axis {axis} "
                f"{_shape(want.shape)}, {where} has {fixed} {_shape(got.shape)}"
            )
    return problems


def _fixed_length_problem(axis: str, fixed: int, where: str) -> str:
    if axis == "T":
        return (
            f"modalities.audio.window: config says dynamic, {where} takes exactly {fixed} samples: "
            f"set window: fixed and max_samples: {fixed}"
        )
    return (
        f"modalities.text.padding: config says longest, {where} takes exactly {fixed} tokens: "
        f"set padding: fixed and max_tokens: {fixed}"
    )


def _dtype_field(want: GraphInput) -> str:
    """The config field that sets an input's dtype (masks and lengths have a fixed one)."""
    if want.role in ("image", "audio") or (want.role.startswith("text_") and want.role != "text_mask"):
        return want.field.rsplit(".", 1)[0] + ".dtype"
    return want.field


def _axis_field(config: ModelConfig, want: GraphInput, axis: int) -> str:
    if want.role == "image":
        image = config.modalities.image
        assert image is not None
        names = ["batch", "height", "width", "channels"]
        if image.layout == "NCHW":
            names = ["batch", "channels", "height", "width"]
        return "modalities.image.layout" if names[axis] == "channels" else f"modalities.image.{names[axis]}"
    if want.role == "audio":
        return "modalities.audio.max_samples"
    if want.role.startswith("text_"):
        return "modalities.text.max_tokens"
    return want.field


def _shape(shape: tuple[int | str | None, ...]) -> str:
    return "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"


def _output_problems(config: ModelConfig, outputs: list[TensorInfo], model_file: str) -> list[str]:
    problems: list[str] = []
    by_name = {t.name: t for t in outputs}
    for i, spec in enumerate(config.outputs):
        got = by_name.get(spec.name)
        field = f"outputs[{i}]"
        if got is None:
            problems.append(
                f"{field}.name: output {spec.name!r} declared in the config is not an output of "
                f"{model_file} (graph outputs: {[t.name for t in outputs]})"
            )
            continue
        if got.dtype is not None and got.dtype not in OUTPUT_DTYPES:
            problems.append(
                f"{field}: graph output {spec.name!r} in {model_file} is {got.dtype}; "
                f"the server reads {sorted(OUTPUT_DTYPES)}"
            )
        if got.shape is None:
            continue
        if len(got.shape) != 2:
            problems.append(
                f"{field}: config needs [batch, {spec.dims}], graph output {spec.name!r} in {model_file} "
                f"has rank {len(got.shape)} {_shape(got.shape)}"
            )
        elif got.shape[1] is not None and got.shape[1] != spec.dims:
            problems.append(
                f"{field}.dims: config says {spec.dims}, graph output {spec.name!r} in {model_file} "
                f"has {got.shape[1]} columns"
            )
    return problems


#: Ops that carry token ids unchanged in value on their way to the embedding lookup.
_ID_PASSTHROUGH = frozenset({"Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Clip"})


def embedding_rows(model_path: Path, ids_input: str) -> int | None:
    """Rows of the embedding table the token ids index in an ONNX graph, if it can be found.

    Follows ``ids_input`` through value-preserving ops to the first ``Gather``
    whose table is an initializer. ``None`` when the ``onnx`` package is not
    installed (a slim serving install), the file cannot be parsed, or the
    lookup is not that simple; the check is then skipped, not failed.
    """
    try:
        import onnx
    except ImportError:
        return None
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception:  # ORT reports unreadable files with its own message
        return None
    tables = {t.name: t for t in model.graph.initializer}
    carrying = {ids_input}
    for node in model.graph.node:  # ONNX graphs are stored in topological order
        if node.op_type in _ID_PASSTHROUGH and node.input and node.input[0] in carrying:
            carrying.update(node.output)
        elif node.op_type == "Gather" and len(node.input) >= 2 and node.input[1] in carrying:
            table = tables.get(node.input[0])
            return int(table.dims[0]) if table is not None and table.dims else None
    return None
