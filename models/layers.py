"""Small building blocks shared by the encoders and the fusion strategies.

Everything here is written for export: no data-dependent Python control flow,
masks are applied with arithmetic and ``torch.where``, and attention uses a
finite large negative score (not ``-inf``) for masked keys. A finite value
still underflows to exactly zero weight after the softmax, so masked keys have
no influence, yet a row whose keys are all masked yields a finite (uniform)
answer instead of NaN — which matters because such rows are later replaced by
``torch.where`` and a NaN would poison the gradients.
"""

import math

import torch
from torch import Tensor, nn


def mask_scores(scores: Tensor, keep: Tensor) -> Tensor:
    """Set scores where ``keep`` (broadcastable) is false to -1e9, the one masked value.

    A literal, not a module constant: TorchScript cannot close over a global float.
    """
    return scores.masked_fill(torch.logical_not(keep), -1e9)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` [B,N,D] over the tokens where ``mask`` [B,N] is true.

    Masked tokens are zeroed (not just down-weighted) so their values, even
    non-finite ones, cannot leak; a row with no valid token gives zeros.
    """
    m = mask.unsqueeze(-1)
    total = torch.where(m, x, torch.zeros_like(x)).sum(dim=1)
    count = mask.sum(dim=1, keepdim=True).clamp(min=1).to(x.dtype)
    return total / count


def masked_max(x: Tensor, mask: Tensor) -> Tensor:
    """Max of ``x`` [B,N,D] over valid tokens; zeros for a row with none."""
    best = mask_scores(x, mask.unsqueeze(-1)).max(dim=1).values
    any_valid = mask.any(dim=1, keepdim=True)
    return torch.where(any_valid, best, torch.zeros_like(best))


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with a key mask, written out for export.

    ``nn.MultiheadAttention`` has fast paths whose behaviour on padded rows
    differs between eager, TorchScript and ONNX; spelling it out keeps the
    three identical.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, query: Tensor, context: Tensor, key_mask: Tensor) -> Tensor:
        """``query`` [B,Nq,D] attends over ``context`` [B,Nk,D] where ``key_mask`` [B,Nk]."""
        b, nq, d = query.shape
        nk = context.shape[1]
        q = self.q(query).reshape(b, nq, self.heads, self.head_dim).transpose(1, 2)
        kv = self.kv(context).reshape(b, nk, 2, self.heads, self.head_dim)
        k = kv[:, :, 0].transpose(1, 2)
        v = kv[:, :, 1].transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        scores = mask_scores(scores, key_mask[:, None, None, :])
        weights = torch.softmax(scores, dim=-1)
        mixed = torch.matmul(weights, v).transpose(1, 2).reshape(b, nq, d)
        return self.out(mixed)


class TransformerBlock(nn.Module):
    """Pre-norm transformer layer: self-attention over valid tokens, then an MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, mask))
        return x + self.drop(self.mlp(self.norm2(x)))


def mlp(inp: int, hidden: int, out: int, dropout: float = 0.1) -> nn.Sequential:
    """Two-layer perceptron used as a fusion or projection head."""
    return nn.Sequential(nn.Linear(inp, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out))
