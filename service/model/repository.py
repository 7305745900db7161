"""Reads a model repository from disk: which entries exist and what each holds.

Only this module touches the repository's files. Names are validated before
they become paths, so a model or version name can never reach outside the
repository (``../`` and friends are refused, symlinks that leave it too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from service.errors import ConfigError, ModelNotFound
from service.model.config import CONFIG_FILE, MODEL_FILES, ModelConfig, load_model_config

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_VERSION = re.compile(r"^[1-9][0-9]{0,8}$")


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
        raise ModelNotFound(f"unknown model {name!r}", model=name)
    return name


def check_version_name(version: str) -> str:
    if not _VERSION.match(version):
        raise ModelNotFound(f"unknown version {version!r}", version=version)
    return version


class ModelRepository:
    """A directory of model entries laid out as ``<name>/config.yaml`` + ``<name>/<version>/``."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and _NAME.match(p.name) and (p / CONFIG_FILE).exists()
        )

    def entry_dir(self, name: str) -> Path:
        check_model_name(name)
        path = (self.root / name).resolve()
        if path.parent != self.root or not (path / CONFIG_FILE).is_file():
            raise ModelNotFound(f"unknown model {name!r}", model=name)
        return path

    def read(self, name: str) -> RepositoryEntry:
        """Read one entry; a broken entry comes back with ``error`` set, never raises ConfigError."""
        path = self.entry_dir(name)
        entry = RepositoryEntry(name=name, path=path)
        try:
            config = load_model_config(path / CONFIG_FILE)
            if config.name != name:
                raise ConfigError(
                    f"{path / CONFIG_FILE}: name: {config.name!r} does not match directory {name!r}"
                )
            entry.config = config
            entry.labels = self._read_labels(path, config)
            self._check_tokenizer(path, config)
            entry.versions = self._select_versions(path, config)
        except ConfigError as exc:
            entry.error = exc.message
        return entry

    @staticmethod
    def _read_labels(path: Path, config: ModelConfig) -> list[str] | None:
        if not config.labels_file:
            return None
        labels_path = path / config.labels_file
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
        if not tok.is_file():
            raise ConfigError(f"{tok}: tokenizer file is missing (config field tokenizer_file)")

    @staticmethod
    def _select_versions(path: Path, config: ModelConfig) -> list[VersionFiles]:
        filename = MODEL_FILES[config.backend]
        found = sorted(
            (int(p.name), p / filename)
            for p in path.iterdir()
            if p.is_dir() and _VERSION.match(p.name) and (p / filename).is_file()
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
