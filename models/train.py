"""Training: unimodal encoders, then fusion strategies and joint-embedding heads on top.

Stage 1 trains the three encoders, each with its own linear head on its own
modality, so every encoder learns what its modality alone can say. Stage 2
freezes them, caches their token features (``fusionserve.models.features``), and trains
each fusion strategy (with modality dropout, so every subset answers) and the
contrastive projection heads on those features. The exported models are the
frozen encoders plus the stage-2 heads, one graph from raw inputs to outputs.

Everything is seeded: each stage re-seeds from ``seed`` and the stage's name,
so a strategy's weights do not depend on which strategies trained before it.
"""

import logging
import math
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from fusionserve.models.classifier import ClassifierSpec, FusionClassifier
from fusionserve.models.contrastive import EmbedderSpec, JointEmbedder, pairwise_info_nce
from fusionserve.models.encoders import EncoderSet
from fusionserve.models.features import Features, SplitTensors, modality_dropout, subset_masks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters; part of every checkpoint's cache key."""

    encoder_epochs: int = 6
    fusion_epochs: int = 6
    embed_epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    dim: int = 64
    p_all: float = 0.4
    #: Weight of the symmetric pairwise InfoNCE next to the label cross-entropy in
    #: the embedder. The model is a contrastive joint embedding, so InfoNCE stays
    #: in; 0.5 keeps val recall@1 within a point of cross-entropy alone.
    nce_weight: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stage_seed(seed: int, stage: str) -> int:
    """A seed per (run seed, stage name), stable across processes (unlike ``hash``)."""
    return (seed * 1_000_003 + zlib.crc32(stage.encode())) % (2**31)


def configure_determinism(threads: int = 1) -> None:
    """Same seed, same weights: fixed thread count and deterministic kernels where available.

    One thread by default: these models are small, and on a shared two-core
    machine two OpenMP threads made small matmuls ~30x slower (each op waits
    at a barrier for a descheduled sibling thread).
    """
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


Metrics = dict[str, float]


def _fit(
    params: list[nn.Parameter],
    n: int,
    step: Callable[[Tensor, torch.Generator], Tensor],
    evaluate: Callable[[], Metrics],
    *,
    epochs: int,
    cfg: TrainConfig,
    seed: int,
    desc: str,
    progress: bool,
    modules: list[nn.Module],
) -> list[Metrics]:
    """Minibatch AdamW with a cosine schedule; returns per-epoch metrics (loss + ``evaluate``)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    total = max(1, epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    history: list[Metrics] = []
    for epoch in range(1, epochs + 1):
        for m in modules:
            m.train()
        order = torch.randperm(n, generator=gen)
        running = 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"{desc} {epoch}/{epochs}", disable=not progress, leave=False)
        for i in bar:
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            loss = step(idx, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += float(loss.detach())
            bar.set_postfix(loss=f"{running / (i + 1):.3f}")
        for m in modules:
            m.eval()
        with torch.no_grad():
            metrics = {"epoch": float(epoch), "loss": running / steps_per_epoch, **evaluate()}
        history.append(metrics)
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "epoch")
        log.info("%s epoch %d/%d: %s", desc, epoch, epochs, shown)
    return history


# --------------------------------------------------------------------------- stage 1: encoders


class _UnimodalHeads(nn.Module):
    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList([nn.Linear(dim, num_classes) for _ in range(3)])


def train_encoders(
    train: SplitTensors,
    val: SplitTensors,
    logmel: dict[str, tuple[Tensor, Tensor]],
    vocab_size: int,
    cfg: TrainConfig,
    seed: int,
    progress: bool = False,
    num_classes: int = 10,
) -> tuple[EncoderSet, list[Metrics]]:
    """Train each encoder with its own linear classifier on its own modality."""
    torch.manual_seed(stage_seed(seed, "encoders"))
    encoders = EncoderSet(vocab_size, cfg.dim)
    heads = _UnimodalHeads(cfg.dim, num_classes)
    ce = nn.CrossEntropyLoss()
    mel_tr, valid_tr = logmel["train"]

    def pooled(image: Tensor, mel: Tensor, valid: Tensor, ids: Tensor, attention: Tensor) -> list[Tensor]:
        return [
            encoders.image(image).pooled,
            encoders.audio.encode_features(mel, valid).pooled,
            encoders.text(ids, attention).pooled,
        ]

    def step(idx: Tensor, _: torch.Generator) -> Tensor:
        # index only what stage 1 reads: the raw waveforms are not needed (log-mel is cached)
        vecs = pooled(
            train.image[idx], mel_tr[idx], valid_tr[idx], train.text_ids[idx], train.text_attention[idx]
        )
        label = train.label[idx]
        return sum((ce(h(v), label) for h, v in zip(heads.heads, vecs, strict=True)), torch.zeros(()))

    def evaluate() -> Metrics:
        vecs = pooled(val.image, *logmel["val"], val.text_ids, val.text_attention)
        names = ("image", "audio", "text")
        return {
            f"val_acc_{n}": _accuracy(h(v), val.label)
            for n, h, v in zip(names, heads.heads, vecs, strict=True)
        }

    params = list(encoders.parameters()) + list(heads.parameters())
    history = _fit(
        params,
        len(train),
        step,
        evaluate,
        epochs=cfg.encoder_epochs,
        cfg=cfg,
        seed=stage_seed(seed, "encoders/order"),
        desc="encoders",
        progress=progress,
        modules=[encoders, heads],
    )
    encoders.eval()
    return encoders, history


def _accuracy(logits: Tensor, label: Tensor) -> float:
    return float((logits.argmax(dim=-1) == label).float().mean())


# --------------------------------------------------------------------------- stage 2: fusion


def classifier_accuracy(model: FusionClassifier, feats: Features, subset: str = "image+audio+text") -> float:
    """Accuracy of ``model`` on cached features with every row carrying ``subset``."""
    model.eval()
    with torch.no_grad():
        present = subset_masks(subset, len(feats))
        logits = model.classify_features(feats.tokens, feats.masks, feats.pooled, present)
    return _accuracy(logits, feats.label)


def train_fusion(
    strategy: str,
    encoders: EncoderSet,
    train: Features,
    val: Features,
    vocab_size: int,
    cfg: TrainConfig,
    seed: int,
    progress: bool = False,
    num_classes: int = 10,
) -> tuple[FusionClassifier, list[Metrics]]:
    """Train ``strategy`` and a linear head on frozen-encoder features with modality dropout."""
    torch.manual_seed(stage_seed(seed, f"fusion/{strategy}"))
    spec = ClassifierSpec(strategy=strategy, vocab_size=vocab_size, num_classes=num_classes, dim=cfg.dim)
    model = FusionClassifier(spec)
    model.encoders.load_state_dict(encoders.state_dict())
    model.encoders.requires_grad_(False)
    ce = nn.CrossEntropyLoss()

    def step(idx: Tensor, gen: torch.Generator) -> Tensor:
        batch = train.rows(idx)
        present = modality_dropout(len(idx), gen, cfg.p_all)
        logits = model.classify_features(batch.tokens, batch.masks, batch.pooled, present)
        return ce(logits, batch.label)

    def evaluate() -> Metrics:
        return {
            "val_acc": classifier_accuracy(model, val),
            "val_acc_image": classifier_accuracy(model, val, "image"),
            "val_acc_audio": classifier_accuracy(model, val, "audio"),
            "val_acc_text": classifier_accuracy(model, val, "text"),
        }

    trainable = [p for p in model.parameters() if p.requires_grad]
    history = _fit(
        trainable,
        len(train),
        step,
        evaluate,
        epochs=cfg.fusion_epochs,
        cfg=cfg,
        seed=stage_seed(seed, f"fusion/{strategy}/order"),
        desc=strategy,
        progress=progress,
        modules=[model.fusion, model.head],
    )
    model.requires_grad_(True)
    model.eval()
    return model, history


# --------------------------------------------------------------------------- joint embeddings


def recall_at_1(queries: Tensor, gallery: Tensor, q_label: Tensor, g_label: Tensor) -> float:
    """Share of queries whose nearest gallery item (cosine) has the same label."""
    nearest = (queries @ gallery.t()).argmax(dim=1)
    return float((g_label[nearest] == q_label).float().mean())


#: The retrieval directions reported, as (query modality index, gallery modality index).
RETRIEVAL = {"text->image": (2, 0), "audio->image": (1, 0), "audio->text": (1, 2)}


def embedder_recall(model: JointEmbedder, feats: Features) -> Metrics:
    model.eval()
    with torch.no_grad():
        present = subset_masks("image+audio+text", len(feats))
        _, embeds = model.embed_features(feats.pooled, present)
    return {
        name: recall_at_1(embeds[q], embeds[g], feats.label, feats.label)
        for name, (q, g) in RETRIEVAL.items()
    }


def train_embedder(
    encoders: EncoderSet,
    train: Features,
    val: Features,
    vocab_size: int,
    cfg: TrainConfig,
    seed: int,
    progress: bool = False,
    num_classes: int = 10,
) -> tuple[JointEmbedder, list[Metrics]]:
    """Train the embedding heads (label cross-entropy + weighted pairwise InfoNCE) on frozen encoders."""
    torch.manual_seed(stage_seed(seed, "embedder"))
    spec = EmbedderSpec(vocab_size=vocab_size, dim=cfg.dim, num_classes=num_classes)
    model = JointEmbedder(spec)
    model.encoders.load_state_dict(encoders.state_dict())
    model.encoders.requires_grad_(False)
    ce = nn.CrossEntropyLoss()

    def step(idx: Tensor, _: torch.Generator) -> Tensor:
        batch = train.rows(idx)
        present = subset_masks("image+audio+text", len(idx))
        logits = model.class_logits(batch.pooled)
        loss = torch.stack([ce(lg, batch.label) for lg in logits]).mean()
        if cfg.nce_weight > 0:
            embeds = model.embed_logits(logits, present)[1]
            loss = loss + cfg.nce_weight * pairwise_info_nce(embeds, model.scale())
        return loss

    def evaluate() -> Metrics:
        return {f"val_r1_{k}": v for k, v in embedder_recall(model, val).items()}

    trainable = [p for p in model.parameters() if p.requires_grad]
    history = _fit(
        trainable,
        len(train),
        step,
        evaluate,
        epochs=cfg.embed_epochs,
        cfg=cfg,
        seed=stage_seed(seed, "embedder/order"),
        desc="embedder",
        progress=progress,
        modules=[model.proj],
    )
    model.requires_grad_(True)
    model.eval()
    return model, history
