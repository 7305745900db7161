"""The graph ``digits-fusion`` exports: class logits plus everything else the model knows.

A :class:`~fusionserve.models.classifier.FusionClassifier` computes embeddings and, for
some strategies, a per-modality attribution on its way to the logits. Export
wraps it so those become extra graph outputs, declared in config.yaml, and one
request can get the label, the vectors and the attribution from one decode
and one run:

- ``class_logits`` ``[B, C]`` — unchanged.
- ``fused_embedding`` ``[B, H]`` — the fusion strategy's output (the vector
  the classifier head reads), L2-normalised.
- ``<modality>_embedding`` ``[B, D]`` — each encoder's pooled vector,
  L2-normalised (meaningful only where the modality is present).
- ``modality_attribution`` (late, gated and attention fusion only):

  ===========  ==========  ==========================================================
  strategy     kind        values
  ===========  ==========  ==========================================================
  late         logits      ``[B, M*C]``: per modality (image, audio, text) the class
                           logits its head alone gives; the model's logits are
                           their mean over the present modalities. 0 when absent.
  gated        gate        ``[B, 2]``: for audio and text, the mean update gate ``z``
                           when that modality updated the fused state (1: it rewrote
                           the state, 0: left it unchanged or was absent).
  attention    attention   ``[B, 3]``: softmax weights over image, audio and text
                           (sum to 1 over present modalities, 0 when absent).
  ===========  ==========  ==========================================================

Scriptable: one small class per output layout, since TorchScript needs a
fixed tuple type per class.
"""

import torch
from torch import Tensor, nn

from fusionserve.models.classifier import FusionClassifier
from fusionserve.models.contrastive import EMBED_OUTPUTS, normalize
from fusionserve.models.fusion import AttentionFusion, GatedFusion, LateFusion
from fusionserve.models.fusion_base import MODALITY_NAMES

ATTRIBUTION_OUTPUT = "modality_attribution"
#: Strategy → (attribution kind, the modalities its columns cover).
ATTRIBUTION: dict[str, tuple[str, tuple[str, ...]]] = {
    "late": ("logits", MODALITY_NAMES),
    "gated": ("gate", MODALITY_NAMES[1:]),
    "attention": ("attention", MODALITY_NAMES),
}


class _Explained(nn.Module):
    """What every layout shares: the wrapped classifier, its encoders and embeddings."""

    def __init__(self, inner: FusionClassifier) -> None:
        super().__init__()
        self.inner = inner

    def _encode(
        self,
        image: Tensor,
        audio: Tensor,
        audio_length: Tensor,
        text_ids: Tensor,
        text_attention: Tensor,
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        return self.inner.encoders(image, audio, audio_length, text_ids, text_attention)

    def _embeddings(self, fused: Tensor, pooled: list[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return normalize(fused), normalize(pooled[0]), normalize(pooled[1]), normalize(pooled[2])


class ClassifierWithEmbeddings(_Explained):
    """``class_logits`` and the fused and per-modality embeddings."""

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
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        tokens, masks, pooled = self._encode(image, audio, audio_length, text_ids, text_attention)
        fused = self.inner.fusion(tokens, masks, pooled, [image_mask, audio_mask, text_mask])
        e = self._embeddings(fused, pooled)
        return self.inner.head(fused), e[0], e[1], e[2], e[3]


class LateExplained(_Explained):
    """Adds the per-modality logits of late fusion, flattened to ``[B, M*C]``."""

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
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        tokens, masks, pooled = self._encode(image, audio, audio_length, text_ids, text_attention)
        present = [image_mask, audio_mask, text_mask]
        fused = self.inner.fusion(tokens, masks, pooled, present)
        reps = self.inner.fusion.per_modality(pooled, present)  # [B, M, H]
        keep = torch.stack(present, dim=1)[:, :, None]
        per = self.inner.head(reps)
        per = torch.where(keep, per, torch.zeros_like(per)).flatten(1)
        e = self._embeddings(fused, pooled)
        return self.inner.head(fused), e[0], e[1], e[2], e[3], per


class WeightsExplained(_Explained):
    """Adds the gate values (gated fusion) or attention weights (attention fusion)."""

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
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        tokens, masks, pooled = self._encode(image, audio, audio_length, text_ids, text_attention)
        present = [image_mask, audio_mask, text_mask]
        fused, weights = self.inner.fusion.explained(tokens, masks, pooled, present)
        e = self._embeddings(fused, pooled)
        return self.inner.head(fused), e[0], e[1], e[2], e[3], weights


def explained(inner: FusionClassifier) -> _Explained:
    """The export wrapper for ``inner``'s strategy."""
    if isinstance(inner.fusion, LateFusion):
        return LateExplained(inner)
    if isinstance(inner.fusion, (GatedFusion, AttentionFusion)):
        return WeightsExplained(inner)
    return ClassifierWithEmbeddings(inner)


def classifier_outputs(strategy: str, num_labels: int, fused_dims: int, dims: int) -> list[dict[str, object]]:
    """The ``outputs`` of config.yaml for the wrapper of ``strategy``, in graph order."""
    outputs: list[dict[str, object]] = [{"name": "class_logits", "kind": "logits", "dims": num_labels}]
    sources = ("fused", *MODALITY_NAMES)
    for name, source in zip(EMBED_OUTPUTS, sources, strict=True):
        outputs.append(
            {
                "name": name,
                "kind": "embedding",
                "source": source,
                "dims": fused_dims if source == "fused" else dims,
            }
        )
    if strategy in ATTRIBUTION:
        kind, columns = ATTRIBUTION[strategy]
        width = len(columns) * (num_labels if kind == "logits" else 1)
        outputs.append(
            {
                "name": ATTRIBUTION_OUTPUT,
                "kind": "attribution",
                "attribution": kind,
                "modalities": list(columns),
                "dims": width,
            }
        )
    return outputs
