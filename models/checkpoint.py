"""Training checkpoints: a state dict plus everything needed to rebuild and export it.

A checkpoint is one ``torch.save`` file holding plain data only (tensors,
strings, numbers), so it loads with ``weights_only=True``: the module's
spec (constructor arguments), labels, the tokenizer JSON, the dataset hash,
seed, hyperparameters and metrics. Writes are atomic (temp file + rename), so
an interrupted build never leaves a truncated checkpoint in the cache.
"""

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fusionserve.models.classifier import ClassifierSpec, FusionClassifier
from fusionserve.models.contrastive import EmbedderSpec, JointEmbedder
from fusionserve.models.encoders import EncoderSet

FORMAT = "fusionserve-checkpoint/1"
KINDS = ("encoders", "classifier", "embedder")


class CheckpointError(Exception):
    """A checkpoint file is missing, unreadable or not one of ours."""


@dataclass
class Checkpoint:
    kind: str
    spec: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]

    def build(self) -> nn.Module:
        """The module with the checkpoint's weights, in eval mode."""
        module = build_module(self.kind, self.spec)
        module.load_state_dict(self.state_dict)
        return module.eval()


def build_module(kind: str, spec: dict[str, Any]) -> nn.Module:
    if kind == "classifier":
        return FusionClassifier(ClassifierSpec(**spec))
    if kind == "embedder":
        return JointEmbedder(EmbedderSpec(**spec))
    if kind == "encoders":
        return EncoderSet(spec["vocab_size"], spec["dim"])
    raise CheckpointError(f"unknown checkpoint kind {kind!r}; expected one of {', '.join(KINDS)}")


def save_checkpoint(
    path: Path, kind: str, spec: dict[str, Any], module: nn.Module, meta: dict[str, Any]
) -> None:
    payload = {"format": FORMAT, "kind": kind, "spec": spec, "state_dict": module.state_dict(), "meta": meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> Checkpoint:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fusionserve checkpoint (expected format {FORMAT!r})")
    if payload.get("kind") not in KINDS:
        raise CheckpointError(f"{path}: unknown checkpoint kind {payload.get('kind')!r}")
    return Checkpoint(payload["kind"], payload["spec"], payload["state_dict"], payload["meta"])
