"""Token-level fusion strategies: cross-modal attention and a single-stream transformer.

These see every token of every modality, so absence is enforced at the
attention mask: an absent modality's tokens are zeroed and never valid keys.
Each key sequence carries one always-valid token (a learned null token, or the
CLS token) so that no softmax row is ever entirely masked.
"""

import torch
from torch import Tensor, nn

from fusionserve.models.fusion_base import NUM_MODALITIES, FusionStrategy, fill_missing
from fusionserve.models.layers import MultiHeadAttention, TransformerBlock, masked_mean, mlp

#: The (query, key) modality pairs of cross-modal attention: every pair, both directions.
PAIRS = tuple((a, b) for a in range(NUM_MODALITIES) for b in range(NUM_MODALITIES) if a != b)


def _valid_tokens(tokens: Tensor, mask: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
    """Tokens of absent rows are zeroed and masked, so nothing of them can leak."""
    valid = mask & present[:, None]
    return torch.where(valid[:, :, None], tokens, torch.zeros_like(tokens)), valid


class _CrossBlock(nn.Module):
    """Query tokens attend over another modality's keys/values; residual + norm."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(hidden, heads)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, query: Tensor, keys: Tensor, key_mask: Tensor) -> Tensor:
        return self.norm(query + self.attn(query, keys, key_mask))


class CrossModalFusion(FusionStrategy):
    """Queries of one modality attend over keys/values of another, for all six directions.

    Each direction a→b yields a's tokens enriched with what b says about them,
    pooled over a's real tokens; the six pooled vectors are concatenated and
    fused by an MLP. Keys of b are prefixed with a learned null token, so a→b
    stays defined (and independent of b) when b is absent; a direction whose
    query modality is absent is replaced by a learned vector.
    """

    def __init__(self, dim: int, hidden: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.proj = nn.ModuleList([nn.Linear(dim, hidden) for _ in range(NUM_MODALITIES)])
        self.null = nn.Parameter(torch.randn(NUM_MODALITIES, hidden) * 0.02)
        self.cross = nn.ModuleList([_CrossBlock(hidden, heads) for _ in PAIRS])
        self.missing = nn.Parameter(torch.zeros(len(PAIRS), hidden))
        self.fuse = mlp(len(PAIRS) * hidden, 2 * hidden, 2 * hidden)
        self.query_of = [a for a, _ in PAIRS]
        self.key_of = [b for _, b in PAIRS]
        self.out_dim = 2 * hidden

    def forward(
        self, tokens: list[Tensor], masks: list[Tensor], pooled: list[Tensor], present: list[Tensor]
    ) -> Tensor:
        seqs: list[Tensor] = []
        valids: list[Tensor] = []
        keys: list[Tensor] = []
        key_masks: list[Tensor] = []
        for i, proj in enumerate(self.proj):
            seq, valid = _valid_tokens(proj(tokens[i]), masks[i], present[i])
            seqs.append(seq)
            valids.append(valid)
            null = self.null[i][None, None, :].expand(seq.shape[0], 1, -1)
            keys.append(torch.cat([null, seq], dim=1))
            key_masks.append(torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1))
        outs: list[Tensor] = []
        for k, block in enumerate(self.cross):
            a = self.query_of[k]
            b = self.key_of[k]
            mixed = block(seqs[a], keys[b], key_masks[b])
            outs.append(fill_missing(masked_mean(mixed, valids[a]), present[a], self.missing[k]))
        return self.fuse(torch.cat(outs, dim=-1))


class SingleStreamFusion(FusionStrategy):
    """All tokens in one sequence with modality-type and position embeddings, plus CLS.

    Self-attention runs across modalities from the first layer on; the CLS
    token, never masked, reads out the fused vector.
    """

    def __init__(
        self, dim: int, hidden: int = 64, layers: int = 2, heads: int = 4, max_len: int = 128
    ) -> None:
        super().__init__()
        self.proj = nn.ModuleList([nn.Linear(dim, hidden) for _ in range(NUM_MODALITIES)])
        self.type_embed = nn.Parameter(torch.randn(NUM_MODALITIES, hidden) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(NUM_MODALITIES, max_len, hidden) * 0.02)
        self.cls = nn.Parameter(torch.randn(hidden) * 0.02)
        self.blocks = nn.ModuleList([TransformerBlock(hidden, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(hidden)
        self.out_dim = hidden

    def forward(
        self, tokens: list[Tensor], masks: list[Tensor], pooled: list[Tensor], present: list[Tensor]
    ) -> Tensor:
        batch = tokens[0].shape[0]
        seq = [self.cls[None, None, :].expand(batch, 1, -1)]
        valid = [torch.ones_like(present[0][:, None])]
        for i, proj in enumerate(self.proj):
            n = tokens[i].shape[1]
            x = proj(tokens[i]) + self.type_embed[i][None, None, :] + self.pos_embed[i, :n][None, :, :]
            x, v = _valid_tokens(x, masks[i], present[i])
            seq.append(x)
            valid.append(v)
        x = torch.cat(seq, dim=1)
        mask = torch.cat(valid, dim=1)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x[:, 0])
