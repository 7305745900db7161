"""Shared helpers for the deployment tests: where the files are, and which metric names they use."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = DOCKER / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
DASHBOARDS = sorted((DOCKER / "grafana" / "dashboards").glob("*.json"))
K8S = DOCKER / "k8s"
KSERVE = DOCKER / "kserve"
HPA = K8S / "hpa.yaml"
ADAPTER_CONFIG = K8S / "monitoring" / "prometheus-adapter-config.yaml"

#: The files whose metric names must exist in a live server's /metrics.
METRIC_SOURCES: tuple[Path, ...] = (*DASHBOARDS, *RULE_FILES, HPA, ADAPTER_CONFIG)

_NAME = re.compile(r"(?<![A-Za-z0-9_:])fusionserve_[a-z_]+")
_SUFFIXES = ("_bucket", "_sum", "_count")


def metric_name(token: str) -> str:
    """The metric family a series name belongs to (histogram ``_bucket/_sum/_count`` stripped)."""
    for suffix in _SUFFIXES:
        if token.endswith(suffix):
            return token[: -len(suffix)]
    return token


def metric_names_in(text: str) -> set[str]:
    """Every ``fusionserve_*`` metric named in PromQL-ish text, as family names."""
    return {metric_name(match) for match in _NAME.findall(text)}


def referenced_metrics(paths: Iterable[Path] = METRIC_SOURCES) -> dict[str, set[str]]:
    """Metric family name -> the files (relative to the repository) that use it."""
    found: dict[str, set[str]] = {}
    for path in paths:
        for name in metric_names_in(path.read_text()):
            shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            found.setdefault(name, set()).add(str(shown))
    return found


def exposed_families(exposition: str) -> set[str]:
    """Metric names declared by ``# TYPE`` lines of a Prometheus text exposition."""
    return {line.split()[2] for line in exposition.splitlines() if line.startswith("# TYPE ")}


def sampled_families(exposition: str, families: Iterable[str]) -> set[str]:
    """Which of ``families`` have at least one sample line in the exposition."""
    names = {line.split("{", 1)[0].split(" ", 1)[0] for line in exposition.splitlines() if line[:1] != "#"}
    return {f for f in families if any(n == f or metric_name(n) == f for n in names)}


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document in a file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def tool(name: str) -> str | None:
    """A command-line tool on PATH or next to this Python (a venv's ``bin/``), else None."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)
