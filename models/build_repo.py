"""``fusionserve build-repo``: the default model repository, from nothing, deterministically.

Builds the dataset, trains the encoders, every fusion strategy and the
joint-embedding heads, picks the strategy with the best validation accuracy
as ``digits-fusion``, and exports it and ``digits-embed`` (ONNX and
TorchScript, version 1, served from ONNX). The report (``report.json`` /
``report.md``) is written next to the entries.

Progress lines go through ``logging`` (the CLI shows INFO unless ``--quiet``).
Every trained checkpoint lives in a cache keyed by the dataset's content
hash, the hyperparameters, the seed and ``MODEL_CODE_VERSION``, so a second
run trains nothing; an entry already exported from the same key (and still
consistent) is left as it is.
"""

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor

from fusionserve.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fusionserve.models.encoders import EncoderSet
from fusionserve.models.entries import entry_is_current, export_checkpoint
from fusionserve.models.features import SUBSETS, PreparedData, encode_split, prepare_data
from fusionserve.models.fusion import STRATEGIES
from fusionserve.models.train import (
    TrainConfig,
    classifier_accuracy,
    configure_determinism,
    embedder_recall,
    train_embedder,
    train_encoders,
    train_fusion,
)
from fusionserve.service.model.config import CONFIG_FILE

log = logging.getLogger(__name__)

#: Bump when an architecture or the training recipe changes, so stale checkpoints are not reused.
MODEL_CODE_VERSION = "4"
FUSION_MODEL = "digits-fusion"
EMBED_MODEL = "digits-embed"


@dataclass
class BuildOptions:
    out: Path
    seed: int = 0
    cache_dir: Path | None = None
    config: TrainConfig = field(default_factory=TrainConfig)
    strategies: Sequence[str] = tuple(STRATEGIES)
    progress: bool = True
    #: Small dataset (source images per split) for tests; None = the full dataset.
    dataset_limit: int | None = None
    formats: Sequence[str] = ("onnx", "torchscript")


def default_cache_dir() -> Path:
    from fusionserve.models.data.dataset import default_cache_root

    return default_cache_root()


def cache_key(dataset_hash: str, cfg: TrainConfig, seed: int, fields: Sequence[str] | None = None) -> str:
    """Hash of what determines a checkpoint; ``fields`` limits which hyperparameters count."""
    params = cfg.to_dict()
    if fields is not None:
        params = {k: params[k] for k in fields}
    blob = json.dumps(
        {"dataset": dataset_hash, "config": params, "seed": seed, "code": MODEL_CODE_VERSION}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


#: The hyperparameters the stage-1 encoders depend on (so ``train --epochs`` reuses them).
ENCODER_FIELDS = ("encoder_epochs", "batch_size", "lr", "weight_decay", "dim")


# --------------------------------------------------------------------------- training (cached)


class Trainer:
    """Trains what the cache lacks; preparing the data only when something must train."""

    def __init__(self, ds: Any, dataset_hash: str, cfg: TrainConfig, seed: int, cache: Path, progress: bool):
        self.ds = ds
        self.dataset_hash = dataset_hash
        self.cfg = cfg
        self.seed = seed
        self.key = cache_key(dataset_hash, cfg, seed)
        self.dir = cache / "checkpoints" / self.key
        self.encoder_path = (
            cache / "checkpoints" / ("encoders-" + cache_key(dataset_hash, cfg, seed, ENCODER_FIELDS))
        )
        self.progress = progress
        self._data: PreparedData | None = None
        self._feats: dict[str, Any] | None = None
        self._encoders: Checkpoint | None = None
        #: What this run trained (empty when everything came from the cache).
        self.trained: list[str] = []

    def _meta(self, **extra: Any) -> dict[str, Any]:
        data = self.data
        return {
            "labels": data.labels,
            "tokenizer": data.tokenizer_json,
            "dataset_hash": self.dataset_hash,
            "seed": self.seed,
            "train_config": self.cfg.to_dict(),
            "check_inputs": _check_rows(data),
            **extra,
        }

    @property
    def data(self) -> PreparedData:
        if self._data is None:
            t0 = time.perf_counter()
            self._data = prepare_data(self.ds, dataset_hash=self.dataset_hash)
            log.info(f"prepared tensors and log-mel features in {time.perf_counter() - t0:.1f}s")
        return self._data

    def encoders(self) -> Checkpoint:
        if self._encoders is None:
            path = self.encoder_path / "encoders.pt"
            if not path.is_file():
                t0 = time.perf_counter()
                data = self.data
                enc, history = train_encoders(
                    data.splits["train"],
                    data.splits["val"],
                    data.logmel,
                    data.vocab_size,
                    self.cfg,
                    self.seed,
                    self.progress,
                    len(data.labels),
                )
                spec = {"vocab_size": data.vocab_size, "dim": self.cfg.dim}
                save_checkpoint(path, "encoders", spec, enc, self._meta(history=history))
                self.trained.append("encoders")
                log.info(f"trained encoders in {time.perf_counter() - t0:.1f}s: {_last(history)}")
            self._encoders = load_checkpoint(path)
        return self._encoders

    def _encoder_set(self) -> EncoderSet:
        return cast(EncoderSet, self.encoders().build())

    def features(self) -> dict[str, Any]:
        if self._feats is None:
            enc = self._encoder_set()
            data = self.data
            self._feats = {
                k: encode_split(enc, data.splits[k], data.logmel[k]) for k in ("train", "val", "test")
            }
        return self._feats

    def fusion(self, strategy: str) -> Path:
        path = self.dir / f"fusion-{strategy}.pt"
        if path.is_file():
            return path
        feats = self.features()
        t0 = time.perf_counter()
        data = self.data
        enc = self._encoder_set()
        model, history = train_fusion(
            strategy,
            enc,
            feats["train"],
            feats["val"],
            data.vocab_size,
            self.cfg,
            self.seed,
            self.progress,
            len(data.labels),
        )
        metrics = {
            "val_acc": classifier_accuracy(model, feats["val"]),
            "test_acc": classifier_accuracy(model, feats["test"]),
            "val_subsets": {s: classifier_accuracy(model, feats["val"], s) for s in SUBSETS},
            "test_subsets": {s: classifier_accuracy(model, feats["test"], s) for s in SUBSETS},
            "train_seconds": round(time.perf_counter() - t0, 1),
        }
        self.trained.append(strategy)
        save_checkpoint(
            path, "classifier", model.spec.to_dict(), model, self._meta(history=history, metrics=metrics)
        )
        log.info(
            f"{strategy}: val {metrics['val_acc']:.4f} test {metrics['test_acc']:.4f} "
            f"({metrics['train_seconds']}s)"
        )
        return path

    def embedder(self) -> Path:
        path = self.dir / "embedder.pt"
        if path.is_file():
            return path
        feats = self.features()
        t0 = time.perf_counter()
        data = self.data
        enc = self._encoder_set()
        model, history = train_embedder(
            enc,
            feats["train"],
            feats["val"],
            data.vocab_size,
            self.cfg,
            self.seed,
            self.progress,
            len(data.labels),
        )
        metrics = {
            "val_recall_at_1": embedder_recall(model, feats["val"]),
            "test_recall_at_1": embedder_recall(model, feats["test"]),
            "train_seconds": round(time.perf_counter() - t0, 1),
        }
        self.trained.append("embedder")
        save_checkpoint(
            path, "embedder", model.spec.to_dict(), model, self._meta(history=history, metrics=metrics)
        )
        log.info(f"embedder: test recall@1 {metrics['test_recall_at_1']} ({metrics['train_seconds']}s)")
        return path


def _check_rows(data: PreparedData, n: int = 6) -> dict[str, Tensor]:
    """A few real test rows with mixed presence masks, for export's parity check."""
    test = data.splits["test"].rows(slice(0, n))
    gen = torch.Generator().manual_seed(0)
    present = [torch.rand(n, generator=gen) > 0.3 for _ in range(3)]
    present[0][0] = present[1][0] = present[2][0] = True
    feeds = test.graph_inputs(present)
    return {k: v.clone() for k, v in feeds.items()}


def _last(history: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in (history[-1] if history else {}).items()}


def pick_best(results: dict[str, dict[str, Any]]) -> str:
    """Best validation accuracy with all modalities; ties go to the best mean over subsets, then name."""
    return max(
        sorted(results),
        key=lambda s: (results[s]["val_acc"], sum(results[s]["val_subsets"].values()) / len(SUBSETS)),
    )


def _export_fresh(ckpt: Checkpoint, name: str, out: Path, formats: Sequence[str], key: str) -> None:
    entry = out / name
    if entry_is_current(entry, key):
        log.info(f"{name}: already exported from this build, kept")
        return
    if (entry / CONFIG_FILE).is_file():
        shutil.rmtree(entry)  # an entry from another build: replaced, never mixed
    t0 = time.perf_counter()
    export_checkpoint(ckpt, name, out, 1, formats, key)
    log.info(f"{name}: exported in {time.perf_counter() - t0:.1f}s")


# --------------------------------------------------------------------------- the command


def _first_build(out: Path, key: str, timings: dict[str, Any]) -> dict[str, Any]:
    """Timings of the run that trained this build key: kept across cached re-runs."""
    from fusionserve.models.report import ReportError, read_report

    if timings["trained_this_run"]:
        return timings
    try:
        previous = read_report(out)
    except (ReportError, ValueError):
        return timings
    if previous.get("build_key") == key and previous.get("first_build"):
        return dict(previous["first_build"])
    return timings


def build_repo(opts: BuildOptions) -> dict[str, Any]:
    """Build the repository at ``opts.out``; returns the report (also written there)."""
    from fusionserve.models.data.dataset import build_dataset
    from fusionserve.models.report import build_report, write_report

    t_start = time.perf_counter()
    configure_determinism()
    cache = Path(opts.cache_dir) if opts.cache_dir is not None else default_cache_dir()
    ds = build_dataset(
        opts.seed, cache_dir=cache / "dataset", progress=opts.progress, limit=opts.dataset_limit
    )
    dataset_hash = ds.content_hash()
    trainer = Trainer(ds, dataset_hash, opts.config, opts.seed, cache, opts.progress)
    key = trainer.key
    log.info(f"dataset {dataset_hash[:12]} ready in {time.perf_counter() - t_start:.1f}s; build key {key}")

    fusion_ckpts = {s: load_checkpoint(trainer.fusion(s)) for s in opts.strategies}
    results = {s: c.meta["metrics"] for s, c in fusion_ckpts.items()}
    best = pick_best(results)
    embed_ckpt = load_checkpoint(trainer.embedder())
    t_trained = time.perf_counter()
    log.info(f"best strategy on validation: {best}")

    opts.out.mkdir(parents=True, exist_ok=True)
    _export_fresh(fusion_ckpts[best], FUSION_MODEL, opts.out, opts.formats, key)
    _export_fresh(embed_ckpt, EMBED_MODEL, opts.out, opts.formats, key)

    timings: dict[str, Any] = {
        "trained_this_run": trainer.trained,
        "train_seconds": round(t_trained - t_start, 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    report = build_report(
        strategies=results,
        best=best,
        embed_metrics=embed_ckpt.meta["metrics"],
        dataset_hash=dataset_hash,
        seed=opts.seed,
        build_key=key,
        timings=timings,
        unimodal=trainer.encoders().meta["history"][-1],
        first_build=_first_build(opts.out, key, timings),
    )
    write_report(report, opts.out)
    return report
