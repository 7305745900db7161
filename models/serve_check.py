"""``fusionserve verify ENTRY_DIR [--reference …]``: load an entry as the server will, run it, compare.

Three steps, each reporting in words and never stopping at the first problem:

1. the entry's files (``fusionserve.models.verify.verify_entry``: labels, tokenizer,
   graph inputs/outputs against the mapping, token ids against the embedding);
2. the server's own loading path (repository read, runtime, load-time graph
   check), then batches of 1 and of several rows with mixed modality subsets
   (where the graph has presence masks) through decode → feeds → run → answers;
3. with ``--reference``, the user's own preprocessing on the same files: the
   server's decoded tensors and the answers computed from them are compared
   with the reference's, and the max abs difference printed per input and per
   output (``fusionserve.models.parity.max_abs_diff``).

A reference is a Python file defining ``preprocess(files) -> dict[str, array]``
(``files`` maps ``image``/``audio`` to bytes and ``text`` to a string; the
result maps graph input names to one row, no batch axis), or an ``.npz`` of
such arrays (optionally with graph outputs too, compared with the server's).
"""

from __future__ import annotations

import importlib.util
import io
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fusionserve.models.parity import max_abs_diff
from fusionserve.models.verify import verify_entry
from fusionserve.service.errors import FusionServeError
from fusionserve.service.model.config import ModelConfig
from fusionserve.service.model.feeds import collate, split_outputs
from fusionserve.service.model.repository import ModelRepository
from fusionserve.service.model.rows import DecodedRow, RawInputs
from fusionserve.service.preprocess import Preprocessor
from fusionserve.service.runtimes import Backend, DeviceSpec, load_backend

Files = dict[str, bytes | str]


@dataclass
class Report:
    """Lines to print and whether anything disagreed."""

    lines: list[str] = field(default_factory=list)
    failed: bool = False

    def ok(self, line: str) -> None:
        self.lines.append(f"ok    {line}")

    def bad(self, line: str) -> None:
        self.lines.append(f"FAIL  {line}")
        self.failed = True

    def info(self, line: str) -> None:
        self.lines.append(f"      {line}")


def sample_files(config: ModelConfig) -> Files:
    """Plain files of every modality the model takes: a colour PNG, a 0.6 s WAV, a sentence."""
    from PIL import Image

    files: Files = {}
    spec = config.modalities
    if spec.image is not None:
        yy, xx = np.mgrid[0:240, 0:320]
        pixels = np.stack([(xx + 30 * c) % 256 for c in range(3)], axis=2) ^ (yy % 256)[:, :, None]
        out = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8), "RGB").save(out, format="PNG")
        files["image"] = out.getvalue()
    if spec.audio is not None:
        import soundfile as sf

        rate = spec.audio.sample_rate
        wave = 0.3 * np.sin(np.arange(int(0.6 * rate)) * 2 * np.pi * 440 / rate)
        out = io.BytesIO()
        sf.write(out, wave.astype(np.float32), rate, format="WAV", subtype="PCM_16")
        files["audio"] = out.getvalue()
    if spec.text is not None:
        files["text"] = "a short sentence to check the tokenizer and the text branch"
    return files


def read_files(paths: dict[str, str]) -> Files:
    """``image=a.png audio=b.wav text='…'`` → bytes and text (``text=@file.txt`` reads a file)."""
    files: Files = {}
    for name, value in paths.items():
        if name == "text":
            files[name] = Path(value[1:]).read_text(encoding="utf-8") if value.startswith("@") else value
        else:
            files[name] = Path(value).read_bytes()
    return files


def _raw(files: Files, modalities: tuple[str, ...]) -> RawInputs:
    return RawInputs(
        image=files["image"] if "image" in modalities else None,  # type: ignore[arg-type]
        audio=files["audio"] if "audio" in modalities else None,  # type: ignore[arg-type]
        text=files["text"] if "text" in modalities else None,  # type: ignore[arg-type]
    )


def _subsets(config: ModelConfig) -> list[tuple[str, ...]]:
    """Every modality subset the graph can take (each holds all modalities without a mask)."""
    present = [m.value for m in config.modalities.present()]
    required = {m.value for m in config.modalities.required()}
    subsets = [c for r in range(len(present), 0, -1) for c in itertools.combinations(present, r)]
    return [s for s in subsets if required <= set(s)]


def verify(
    entry_dir: Path, reference: Path | None = None, files: Files | None = None, atol: float = 1e-4
) -> Report:
    """Check ``entry_dir`` as the server would load it; see the module docstring."""
    report = Report()
    problems = verify_entry(entry_dir)
    for problem in problems:
        report.bad(problem)
    if not problems:
        report.ok(f"{entry_dir}: files agree with config.yaml")
    # verify runs on the user's own machine, on their own entry: TorchScript and code_file load.
    entry = ModelRepository(entry_dir.parent, allow_torchscript=True).read(entry_dir.name)
    if entry.error or entry.config is None:
        report.bad(f"the server refuses the entry: {entry.error}")
        return report
    config = entry.config
    for version in entry.versions:
        try:
            backend = load_backend(config, version.path, DeviceSpec("cpu"))
            # verify runs on the user's own machine, on their own entry: its code_file runs too.
            preprocessor = Preprocessor(config, entry.path, allow_model_code=True)
        except FusionServeError as exc:
            report.bad(f"version {version.version}: the server refuses it at load: {exc.message}")
            continue
        report.ok(f"version {version.version}: loads as the server loads it ({version.path.name})")
        used = files or sample_files(config)
        _run_batches(report, config, backend, preprocessor, used, version.version)
        if reference is not None:
            _compare_reference(report, config, backend, preprocessor, used, reference, atol)
        backend.close()
    return report


def _run_batches(
    report: Report, config: ModelConfig, backend: Backend, pre: Preprocessor, files: Files, version: str
) -> None:
    subsets = _subsets(config)
    batches = [[subsets[0]], [subsets[i % len(subsets)] for i in range(max(3, len(subsets)))]]
    for batch in batches:
        label = f"version {version}: batch of {len(batch)} ({' | '.join('+'.join(s) for s in batch)})"
        try:
            rows = [pre.decode(_raw(files, s)) for s in batch]
            outputs = _answers(config, backend, rows)
        except Exception as exc:  # report every failure in words, whatever raised it
            message = exc.message if isinstance(exc, FusionServeError) else f"{type(exc).__name__}: {exc}"
            report.bad(f"{label}: {message}")
            continue
        problems = _output_problems(config, outputs)
        for problem in problems:
            report.bad(f"{label}: {problem}")
        if not problems:
            report.ok(label)


def _answers(config: ModelConfig, backend: Backend, rows: list[DecodedRow]) -> list[dict[str, np.ndarray]]:
    feeds, _ = collate(rows, config)
    return split_outputs(backend.run(feeds), len(rows))


def _output_problems(config: ModelConfig, outputs: list[dict[str, np.ndarray]]) -> list[str]:
    problems: list[str] = []
    for spec in config.outputs:
        for i, row in enumerate(outputs):
            value = np.asarray(row[spec.name])
            if value.shape != (spec.dims,):
                problems.append(
                    f"output {spec.name!r} row {i} has shape {list(value.shape)}, config dims {spec.dims}"
                )
            elif not np.isfinite(value).all():
                problems.append(f"output {spec.name!r} row {i} has NaN or inf values")
            elif spec.kind.value == "embedding" and spec.normalized:
                norm = float(np.linalg.norm(value))
                if abs(norm - 1.0) > 1e-3:
                    problems.append(
                        f"output {spec.name!r} row {i} has norm {norm:.4f}: set normalized: false "
                        "if the graph does not L2-normalise it"
                    )
    return problems


def _load_reference(path: Path) -> Callable[[Files], dict[str, np.ndarray]]:
    if path.suffix == ".npz":
        with np.load(path) as saved:
            arrays = {k: saved[k] for k in saved.files}
        return lambda _files: arrays
    spec = importlib.util.spec_from_file_location(f"reference_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    preprocess = getattr(module, "preprocess", None)
    if not callable(preprocess):
        raise ValueError(f"{path} defines no preprocess(files) function")
    return preprocess


def _compare_reference(
    report: Report,
    config: ModelConfig,
    backend: Backend,
    pre: Preprocessor,
    files: Files,
    reference: Path,
    atol: float,
) -> None:
    present = tuple(m.value for m in config.modalities.present() if m.value in files)
    try:
        theirs = {k: np.asarray(v) for k, v in _load_reference(reference)(dict(files)).items()}
    except Exception as exc:  # the user's code: report whatever it raised
        report.bad(f"reference {reference}: {type(exc).__name__}: {exc}")
        return
    feeds, _ = collate([pre.decode(_raw(files, present))], config)
    ours = {name: array[0] for name, array in feeds.items()}
    worst = 0.0
    for name, mine in ours.items():
        if name not in theirs:
            report.info(f"input {name}: the reference gives none, not compared")
            continue
        diff = max_abs_diff(mine.astype(np.float64), theirs[name].astype(np.float64))
        worst = max(worst, diff)
        line = f"input {name}: server {mine.dtype} {list(mine.shape)}, reference {theirs[name].dtype} "
        line += f"{list(theirs[name].shape)}: max abs diff {diff:.3g}"
        (report.ok if diff <= atol else report.bad)(line)
    served = split_outputs(backend.run(feeds), 1)[0]
    ref_feeds = {
        name: np.ascontiguousarray(theirs.get(name, ours[name]).astype(ours[name].dtype))[None]
        for name in ours
    }
    try:
        from_reference = split_outputs(backend.run(ref_feeds), 1)[0]
    except Exception as exc:  # a reference of another shape cannot run: say so
        report.bad(f"the graph cannot run the reference's tensors: {type(exc).__name__}: {exc}")
        return
    for spec in config.outputs:
        mine = np.asarray(served[spec.name])
        want = theirs.get(spec.name, from_reference[spec.name])
        diff = max_abs_diff(mine, np.asarray(want))
        line = f"output {spec.name}: served vs reference preprocessing: max abs diff {diff:.3g}"
        (report.ok if diff <= atol else report.bad)(line)
