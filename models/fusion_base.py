"""The interface every fusion strategy implements, and its small shared helpers.

Kept apart from the registry (``fusionserve.models.fusion``) so the attention-based
strategies in ``fusionserve.models.fusion_attention`` can subclass it without a cycle.
"""

import torch
from torch import Tensor, nn

NUM_MODALITIES = 3
#: The order in which every strategy receives its per-modality lists.
MODALITY_NAMES = ("image", "audio", "text")


class FusionStrategy(nn.Module):
    """Per-modality ``tokens`` [B,N,D], token ``masks`` [B,N], ``pooled`` [B,D] and
    ``present`` [B] (lists in ``MODALITY_NAMES`` order) → fused vector ``[B,out_dim]``.
    """

    out_dim: int

    def forward(
        self, tokens: list[Tensor], masks: list[Tensor], pooled: list[Tensor], present: list[Tensor]
    ) -> Tensor:
        raise NotImplementedError


def fill_missing(x: Tensor, present: Tensor, missing: Tensor) -> Tensor:
    """Rows where the modality is absent get the learned ``missing`` vector instead of ``x``."""
    return torch.where(present[:, None], x, missing[None, :].expand_as(x))
