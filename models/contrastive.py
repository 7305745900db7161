"""The joint-embedding model that ``digits-embed`` exports, and its losses.

Each modality's pooled encoder vector is mapped to class logits, and its
embedding is the softmax-weighted mix of learned class prototypes,
L2-normalised: an item its modality identifies with confidence lands on its
class's prototype, an ambiguous one between the prototypes of its candidate
classes. Training is a label cross-entropy on each modality's logits (the
retrieval target, cross-modal recall@1 by label, is class structure), with an
optional symmetric InfoNCE over every modality pair (image-audio, image-text,
audio-text) and one learnable temperature clamped so the logits can neither
collapse nor explode. The fused embedding is the normalised mean of the
present modalities' embeddings: it lives in the same space as the
per-modality embeddings, so a fused query can retrieve any single modality.
"""

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fusionserve.models.encoders import EncoderSet
from fusionserve.models.layers import mlp

#: Bounds of the learnable logit scale (1 / temperature).
MIN_SCALE = 1.0
MAX_SCALE = 100.0


@dataclass(frozen=True)
class EmbedderSpec:
    """Everything needed to rebuild the module from a checkpoint's state dict."""

    vocab_size: int
    embed_dim: int = 64
    dim: int = 64
    sample_rate: int = 16000
    num_classes: int = 10

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalize(x: Tensor) -> Tensor:
    """L2 normalisation that stays finite for an all-zero row."""
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=1e-6)


class JointEmbedder(nn.Module):
    """Raw modality tensors and presence masks → fused, image, audio and text embeddings.

    An absent modality's own embedding output is zeros (it has nothing to
    say), and it is left out of the fused mean.
    """

    def __init__(self, spec: EmbedderSpec) -> None:
        super().__init__()
        self.spec = spec  # Python-side only; TorchScript cannot hold a dataclass
        self.embed_dim = spec.embed_dim
        self.encoders = EncoderSet(spec.vocab_size, spec.dim, spec.sample_rate)
        #: Per modality: pooled vector -> class logits.
        self.proj = nn.ModuleList([mlp(spec.dim, 2 * spec.dim, spec.num_classes) for _ in range(3)])
        #: One learned prototype per class in the shared space (normalised when used).
        self.prototypes = nn.Parameter(torch.randn(spec.num_classes, spec.embed_dim))
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def scale(self) -> Tensor:
        return self.log_scale.exp().clamp(MIN_SCALE, MAX_SCALE)

    def class_logits(self, pooled: list[Tensor]) -> list[Tensor]:
        """Pooled encoder vectors → per-modality class logits (training only; not exported)."""
        return [proj(pooled[i]) for i, proj in enumerate(self.proj)]

    def embed_logits(self, logits: list[Tensor], present: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Per-modality class logits → (fused, per-modality) normalised embeddings."""
        protos = normalize(self.prototypes)
        embeds: list[Tensor] = []
        for i in range(len(logits)):
            e = normalize(torch.softmax(logits[i], dim=-1) @ protos)
            embeds.append(torch.where(present[i][:, None], e, torch.zeros_like(e)))
        return normalize(torch.stack(embeds).sum(dim=0)), embeds

    def embed_features(self, pooled: list[Tensor], present: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Pooled encoder vectors → (fused, per-modality) normalised embeddings."""
        return self.embed_logits(self.class_logits(pooled), present)

    def forward(
        self,
        image: Tensor,
        image_mask: Tensor,
        audio: Tensor,
        audio_length: Tensor,
        audio_mask: Tensor,
        text_ids: Tensor,
        text_attention: Tensor,
        text_mask: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        _, _, pooled = self.encoders(image, audio, audio_length, text_ids, text_attention)
        fused, embeds = self.embed_features(pooled, [image_mask, audio_mask, text_mask])
        return fused, embeds[0], embeds[1], embeds[2]


#: Graph output names of the joint embedder, in ``forward``'s order.
EMBED_OUTPUTS = ("fused_embedding", "image_embedding", "audio_embedding", "text_embedding")


def info_nce(a: Tensor, b: Tensor, scale: Tensor) -> Tensor:
    """Symmetric InfoNCE between row-aligned normalised embeddings ``a`` and ``b`` [B,E]."""
    logits = scale * a @ b.t()
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (
        nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.t(), target)
    )


def pairwise_info_nce(embeds: list[Tensor], scale: Tensor) -> Tensor:
    """Mean symmetric InfoNCE over every modality pair."""
    losses = [
        info_nce(embeds[i], embeds[j], scale) for i in range(len(embeds)) for j in range(i + 1, len(embeds))
    ]
    return torch.stack(losses).mean()
