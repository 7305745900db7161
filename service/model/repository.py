"""Reads a model repository from disk: which entries exist and what each holds.

Only this module touches the repository's files. Names are validated before
they become paths, so a model or version name can never reach outside the
repository (``../`` and friends are refused, symlinks that leave it too).
Every file an entry names (version directories, model files, ``labels_file``,
``tokenizer_file``) must resolve inside that entry. A bad entry is reported
(``RepositoryEntry.error``) and skipped like any load failure; it never stops
the server. TorchScript files are code, so they load only when the operator
trusts the repository (``allow_torchscript``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer

from fusionserve.service.errors import SHOWN_CHARS, ConfigError, ModelNotFound, shown
from fusionserve.service.model.config import CONFIG_FILE, MODEL_FILES, ModelConfig, load_model_config
from fusionserve.service.model.graph import embedding_rows
from fusionserve.service.preprocess.text import tokenizer_pad_id

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_VERSION = re.compile(r"^[1-9][0-9]{0,8}$")
#: An absolute path inside a message (not the ``//`` of a URL, not ``a/b``).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])/(?:[^\s'\",:;()\[\]{}/]+/)*([^\s'\",:;()\[\]{}/]*)")

TORCHSCRIPT_REFUSED = (
    "TorchScript model files are code and run with the server's rights; this server does not "
    "load them: start it with --allow-torchscript (FUSIONSERVE_ALLOW_TORCHSCRIPT=1) "
    "only if you trust every file in the repository"
)


def public_reason(reason: str, root: Path) -> str:
    """A load failure as clients may see it: paths relative to the repository, no absolute path.

    The log keeps the full message; what goes out over the wire names the entry
    and the reason but not where the server keeps its files.
    """
    text = reason.replace(f"{root}/", "").replace(str(root), ".")
    return _ABSOLUTE_PATH.sub(lambda m: f".../{m.group(1)}" if m.group(1) else "...", text)


def _inside(base: Path, candidate: Path) -> bool:
    """Whether ``candidate`` (symlinks followed) lies within ``base``."""
    try:
        return candidate.resolve().is_relative_to(base.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return False


@dataclass(frozen=True)
class VersionFiles:
    version: str
    path: Path  # the model file for the configured backend


@dataclass
class RepositoryEntry:
    """One model directory: its config (if valid) and the versions its policy selects."""

    name: str
    path: Path
    config: ModelConfig | None = None
    labels: list[str] | None = None
    versions: list[VersionFiles] = field(default_factory=list)
    error: str | None = None  # why the entry cannot be served


def check_model_name(name: str) -> str:
    """Refuse names that are not plain identifiers (no separators, no dot-dot)."""
    if not _NAME.match(name) or ".." in name:
        raise ModelNotFound(f"unknown model {shown(name)}", model=name[:SHOWN_CHARS])
    return name


def check_version_name(version: str) -> str:
    if not _VERSION.match(version):
        raise ModelNotFound(f"unknown version {shown(version)}", version=version[:SHOWN_CHARS])
    return version


class ModelRepository:
    """A directory of model entries laid out as ``<name>/config.yaml`` + ``<name>/<version>/``."""

    def __init__(self, root: Path, *, allow_torchscript: bool = False) -> None:
        self.root = root.resolve()
        self.allow_torchscript = allow_torchscript

    def names(self) -> list[str]:
        """Every directory that holds a config, valid name or not: bad ones load as failures."""
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.iterdir():
            if p.name.startswith("."):  # hidden, and Kubernetes' ``..data`` volume links
                continue
            try:
                if p.is_dir() and (p / CONFIG_FILE).exists():
                    found.append(p.name)
            except OSError:  # a symlink loop or an unreadable entry: reported as a failure
                found.append(p.name)
        return sorted(found)

    def entry_dir(self, name: str) -> Path:
        check_model_name(name)
        path = (self.root / name).resolve()
        if path.parent != self.root or not (path / CONFIG_FILE).is_file():
            raise ModelNotFound(f"unknown model {shown(name)}", model=name[:SHOWN_CHARS])
        return path

    def read(self, name: str) -> RepositoryEntry:
        """Read one entry; a broken or unsafe entry comes back with ``error`` set, never raises."""
        unsafe = self._unsafe_entry(name)
        if unsafe is not None:
            return RepositoryEntry(name=name, path=self.root / name, error=unsafe)
        path = self.entry_dir(name)
        entry = RepositoryEntry(name=name, path=path)
        try:
            config = load_model_config(path / CONFIG_FILE)
            if config.name != name:
                raise ConfigError(
                    f"{path / CONFIG_FILE}: name: {config.name!r} does not match directory {name!r}"
                )
            entry.config = config
            if config.backend == "torchscript" and not self.allow_torchscript:
                raise ConfigError(f"{name}: backend torchscript refused: {TORCHSCRIPT_REFUSED}")
            entry.labels = self._read_labels(path, config)
            self._check_tokenizer(path, config)
            entry.versions = self._select_versions(path, config)
            entry.config = self._resolve_text(path, config, entry.versions)
        except ConfigError as exc:
            entry.error = exc.message
        except (OSError, UnicodeDecodeError) as exc:
            entry.error = f"{name}: cannot read the entry: {type(exc).__name__}: {exc}"
        return entry

    def _unsafe_entry(self, name: str) -> str | None:
        """Why a directory on disk cannot be an entry (bad name, symlink out), or None."""
        if not _NAME.match(name) or ".." in name:
            return (
                f"entry {name!r}: not a valid model name (letters, digits, '_', '.', '-'; "
                "no '..'; at most 128 characters)"
            )
        link = self.root / name
        try:
            resolved = link.resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            return f"entry {name!r}: cannot be resolved ({type(exc).__name__})"
        if resolved.parent != self.root:
            return f"entry {name!r}: is a symbolic link that leaves the repository"
        if resolved.name != name:
            return f"entry {name!r}: is a symbolic link to another entry ({resolved.name!r})"
        return None

    @staticmethod
    def _read_labels(path: Path, config: ModelConfig) -> list[str] | None:
        if not config.labels_file:
            return None
        labels_path = path / config.labels_file
        if not _inside(path, labels_path):
            raise ConfigError(
                f"{path / CONFIG_FILE}: labels_file {config.labels_file!r} leaves the model's directory"
            )
        if not labels_path.is_file():
            raise ConfigError(f"{labels_path}: labels file is missing (config field labels_file)")
        labels = [line.strip() for line in labels_path.read_text(encoding="utf-8").splitlines()]
        labels = [label for label in labels if label]
        logit_dims = [o.dims for o in config.outputs if o.kind.value == "logits"]
        if logit_dims and logit_dims[0] != len(labels):
            raise ConfigError(f"{labels_path}: {len(labels)} labels but output has dims {logit_dims[0]}")
        return labels

    @staticmethod
    def _check_tokenizer(path: Path, config: ModelConfig) -> None:
        if config.modalities.text is None or not config.tokenizer_file:
            return
        tok = path / config.tokenizer_file
        if not _inside(path, tok):
            raise ConfigError(
                f"{path / CONFIG_FILE}: tokenizer_file {config.tokenizer_file!r} leaves the model's directory"
            )
        if not tok.is_file():
            raise ConfigError(f"{tok}: tokenizer file is missing (config field tokenizer_file)")

    @staticmethod
    def _resolve_text(path: Path, config: ModelConfig, versions: list[VersionFiles]) -> ModelConfig:
        """Fill in the pad id from the tokenizer file, and refuse ids the graph cannot embed."""
        text = config.modalities.text
        if text is None or not config.tokenizer_file:
            return config
        tokenizer_path = path / config.tokenizer_file
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception:  # tokenizers raises a bare Exception; loading the version reports it
            return config
        pad_id = text.pad_id if text.pad_id is not None else (tokenizer_pad_id(tokenizer) or 0)
        vocab = tokenizer.get_vocab_size(with_added_tokens=True)
        if config.backend == "onnx":
            for vf in versions:
                rows = embedding_rows(vf.path, text.input)
                if rows is not None and max(vocab - 1, pad_id) >= rows:
                    raise ConfigError(
                        f"{path / CONFIG_FILE}: tokenizer_file: {config.tokenizer_file} yields ids up to "
                        f"{vocab - 1} (pad id {pad_id}), but the token embedding that graph input "
                        f"{text.input!r} indexes in {vf.path.parent.name}/{vf.path.name} has {rows} rows",
                        file=str(path / CONFIG_FILE),
                        field="tokenizer_file",
                    )
        if pad_id == text.pad_id:
            return config
        modalities = config.modalities.model_copy(update={"text": text.model_copy(update={"pad_id": pad_id})})
        return config.model_copy(update={"modalities": modalities})

    @staticmethod
    def _select_versions(path: Path, config: ModelConfig) -> list[VersionFiles]:
        filename = MODEL_FILES[config.backend]
        found = sorted(
            (int(p.name), p / filename)
            for p in path.iterdir()
            if _VERSION.match(p.name) and p.is_dir() and (p / filename).is_file()
        )
        escaping = [str(v) for v, f in found if not _inside(path, f)]
        if escaping:
            raise ConfigError(
                f"{path}: version(s) {', '.join(escaping)}: {filename} resolves outside the model's directory"
            )
        policy = config.version_policy
        if policy.specific is not None:
            wanted = set(policy.specific)
            chosen = [(v, f) for v, f in found if v in wanted]
            missing = wanted - {v for v, _ in chosen}
            if missing:
                raise ConfigError(
                    f"{path / CONFIG_FILE}: version_policy.specific: versions {sorted(missing)} "
                    f"have no {filename}"
                )
        else:
            chosen = found[-(policy.latest or 1) :]
        if not chosen:
            raise ConfigError(f"{path}: no version directory holds {filename} (backend {config.backend})")
        return [VersionFiles(version=str(v), path=f) for v, f in chosen]
