"""The classifier that ``digits-fusion`` exports: encoders → fusion strategy → logits.

``forward`` takes the graph inputs of docs/contracts.md §1 in
``fusionserve.service.model.config.GRAPH_INPUTS`` order and returns ``class_logits``.
``classify_features`` is the same computation from already-encoded features,
which training uses when the encoders are frozen and their outputs cached.
"""

from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor, nn

from fusionserve.models.encoders import EncoderSet
from fusionserve.models.fusion import build_strategy


@dataclass(frozen=True)
class ClassifierSpec:
    """Everything needed to rebuild the module from a checkpoint's state dict."""

    strategy: str
    vocab_size: int
    num_classes: int = 10
    dim: int = 64
    sample_rate: int = 16000

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FusionClassifier(nn.Module):
    """Raw modality tensors and presence masks → ``class_logits`` ``[B, num_classes]``."""

    def __init__(self, spec: ClassifierSpec) -> None:
        super().__init__()
        self.spec = spec
        self.encoders = EncoderSet(spec.vocab_size, spec.dim, spec.sample_rate)
        self.fusion = build_strategy(spec.strategy, spec.dim)
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(self.fusion.out_dim, spec.num_classes))

    def classify_features(
        self, tokens: list[Tensor], masks: list[Tensor], pooled: list[Tensor], present: list[Tensor]
    ) -> Tensor:
        return self.head(self.fusion(tokens, masks, pooled, present))

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
    ) -> Tensor:
        tokens, masks, pooled = self.encoders(image, audio, audio_length, text_ids, text_attention)
        return self.classify_features(tokens, masks, pooled, [image_mask, audio_mask, text_mask])
