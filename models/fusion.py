"""Fusion strategies behind one interface, and the registry that names them.

Every strategy is an ``nn.Module`` whose ``forward`` takes, per modality in
the fixed order image, audio, text:

- ``tokens``  — token features ``[B,N_m,D]`` from the encoder,
- ``masks``   — which of those tokens are real ``[B,N_m]``,
- ``pooled``  — the encoder's pooled vector ``[B,D]``,
- ``present`` — the presence mask ``[B]`` (False: modality absent in the row),

and returns one fused vector ``[B, out_dim]``. A classifier or an embedding
head sits on top.

Absence is handled structurally so an absent modality has *no* influence, not
merely a small one: absent vectors are swapped for a learned "missing" vector
with ``torch.where``, absent tokens are masked out of every attention (with an
always-valid CLS or null token so no softmax row is empty), and averages run
over present modalities only.
"""

from collections.abc import Callable

import torch
from torch import Tensor, nn

from fusionserve.models.fusion_attention import CrossModalFusion, SingleStreamFusion
from fusionserve.models.fusion_base import NUM_MODALITIES, FusionStrategy, fill_missing
from fusionserve.models.layers import mask_scores, masked_max, masked_mean, mlp


class EarlyFusion(FusionStrategy):
    """Concatenate low-level token statistics of all modalities; one shared network.

    Each modality contributes the masked mean and max of its raw token
    features (no per-modality learned layer), so all learning happens after
    concatenation.
    """

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.missing = nn.Parameter(torch.zeros(NUM_MODALITIES, 2 * dim))
        self.net = nn.Sequential(
            nn.LayerNorm(NUM_MODALITIES * 2 * dim), mlp(NUM_MODALITIES * 2 * dim, hidden, hidden)
        )
        self.out_dim = hidden

    def forward(
        self, tokens: list[Tensor], masks: list[Tensor], pooled: list[Tensor], present: list[Tensor]
    ) -> Tensor:
        parts = []
        for i in range(len(tokens)):
            stats = torch.cat([masked_mean(tokens[i], masks[i]), masked_max(tokens[i], masks[i])], dim=-1)
            parts.append(fill_missing(stats, present[i], self.missing[i]))
        return self.net(torch.cat(parts, dim=-1))


class LateFusion(FusionStrategy):
    """Per-modality heads whose representations are averaged over present modalities.

    A linear classifier on top makes this exactly "sum of per-modality logits".
    """

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.heads = nn.ModuleList([mlp(dim, hidden, hidden) for _ in range(NUM_MODALITIES)])
        self.out_dim = hidden

    def per_modality(self, pooled: list[Tensor], present: list[Tensor]) -> Tensor:
        """Each modality's head output ``[B, M, hidden]``, zero where the modality is absent.

        A linear classifier on the mean of these over present modalities equals
        the mean of the classifier applied to each: the per-modality logits
        that export declares as this strategy's attribution.
        """
        reps = []
        for i, head in enumerate(self.heads):
            rep = head(pooled[i])
            reps.append(torch.where(present[i][:, None], rep, torch.zeros_like(rep)))
        return torch.stack(reps, dim=1)

    def forward(
        self, tokens: list[Tensor], masks: list[Tensor], pooled: list[Tensor], present: list[Tensor]
    ) -> Tensor:
        total = torch.zeros_like(pooled[0][:, :1]).expand(-1, self.out_dim)
        count = torch.zeros_like(pooled[0][:, :1])
        for i, head in enumerate(self.heads):
            rep = head(pooled[i])
            keep = present[i][:, None]
            total = total + torch.where(keep, rep, torch.zeros_like(rep))
            count = count + keep.to(rep.dtype)
        return total / count.clamp(min=1.0)


class TensorFusion(FusionStrategy):
    """Tensor Fusion Network: outer product of ``[z_m, 1]`` over the three modalities.

    The appended constant 1 keeps the unimodal and bimodal terms inside the
    trimodal product.
    """

    def __init__(self, dim: int, hidden: int = 128, factor_dim: int = 16) -> None:
        super().__init__()
        self.proj = nn.ModuleList([nn.Linear(dim, factor_dim) for _ in range(NUM_MODALITIES)])
        self.missing = nn.Parameter(torch.zeros(NUM_MODALITIES, factor_dim))
        width = (factor_dim + 1) ** NUM_MODALITIES
        self.net = nn.Sequential(nn.Dropout(0.1), nn.Linear(width, hidden), nn.GELU())
        self.out_dim = hidden

    def forward(
        self, tokens: list[Tensor], masks: list[Tensor], pooled: list[Tensor], present: list[Tensor]
    ) -> Tensor:
        zs = []
        for i, proj in enumerate(self.proj):
            z = fill_missing(torch.tanh(proj(pooled[i])), present[i], self.missing[i])
            zs.append(torch.cat([z, torch.ones_like(z[:, :1])], dim=-1))
        outer = zs[0][:, :, None, None] * zs[1][:, None, :, None] * zs[2][:, None, None, :]
        return self.net(outer.flatten(1))


class LowRankFusion(FusionStrategy):
    """Low-rank Multimodal Fusion: the TFN weight tensor as a sum of rank-1 factors.

    ``h = Σ_r Π_m (W_m^r [z_m, 1])`` costs linear, not exponential, in the
    number of modalities.
    """

    def __init__(self, dim: int, hidden: int = 128, factor_dim: int = 32, rank: int = 8) -> None:
        super().__init__()
        self.proj = nn.ModuleList([nn.Linear(dim, factor_dim) for _ in range(NUM_MODALITIES)])
        self.missing = nn.Parameter(torch.zeros(NUM_MODALITIES, factor_dim))
        self.factors = nn.Parameter(torch.randn(NUM_MODALITIES, rank, factor_dim + 1, hidden) * 0.1)
        self.rank_weights = nn.Parameter(torch.ones(rank) / rank)
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.out_dim = hidden

    def forward(
        self, tokens: list[Tensor], masks: list[Tensor], pooled: list[Tensor], present: list[Tensor]
    ) -> Tensor:
        product = torch.ones_like(pooled[0][:, :1, None])  # [B,1,1] broadcast over rank, hidden
        for i, proj in enumerate(self.proj):
            z = fill_missing(torch.tanh(proj(pooled[i])), present[i], self.missing[i])
            z1 = torch.cat([z, torch.ones_like(z[:, :1])], dim=-1)  # [B,F+1]
            product = product * torch.einsum("bf,rfh->brh", z1, self.factors[i])
        fused = torch.einsum("brh,r->bh", product, self.rank_weights) + self.bias
        return torch.relu(fused)


class _Gate(nn.Module):
    """One two-input gated unit: z = sigmoid(W_z[x1,x2]+b_z), r = sigmoid(W_r[x1,x2]+b_r),
    h = z * tanh(W_h[r*x1, x2]+b_h) + (1-z) * x2 (element-wise products)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.z = nn.Linear(2 * hidden, hidden)
        self.r = nn.Linear(2 * hidden, hidden)
        self.h = nn.Linear(2 * hidden, hidden)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return self.step(x1, x2)[0]

    def step(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        """The new state and the update gate ``z`` (how much of it came from ``x1``)."""
        both = torch.cat([x1, x2], dim=-1)
        z = torch.sigmoid(self.z(both))
        r = torch.sigmoid(self.r(both))
        cand = torch.tanh(self.h(torch.cat([r * x1, x2], dim=-1)))
        return z * cand + (1 - z) * x2, z


class GatedFusion(FusionStrategy):
    """Gated fusion with update and reset gates, folded over the three modalities.

    The two-input unit is ``_Gate``. For three inputs the running state plays
    x2 and each next modality plays x1: the state starts from the image (or a
    learned vector when the image is absent), then audio and text update it in
    turn, each with its own gate. A row without a modality skips that update
    entirely, so the absent modality cannot influence it.
    """

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.proj = nn.ModuleList([nn.Linear(dim, hidden) for _ in range(NUM_MODALITIES)])
        self.initial = nn.Parameter(torch.zeros(hidden))
        self.gates = nn.ModuleList([_Gate(hidden) for _ in range(NUM_MODALITIES - 1)])
        self.out_dim = hidden

    def forward(
        self, tokens: list[Tensor], masks: list[Tensor], pooled: list[Tensor], present: list[Tensor]
    ) -> Tensor:
        return self.explained(tokens, masks, pooled, present)[0]

    def explained(
        self, tokens: list[Tensor], masks: list[Tensor], pooled: list[Tensor], present: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """The fused state and the gate values ``[B, M-1]``: per updating modality
        (audio, then text), the mean of its update gate ``z`` over the hidden
        units — the share of the state that modality rewrote (0 when absent)."""
        xs = [torch.tanh(proj(pooled[i])) for i, proj in enumerate(self.proj)]
        state = fill_missing(xs[0], present[0], self.initial)
        gates = []
        for step, gate in enumerate(self.gates):
            updated, z = gate.step(xs[step + 1], state)
            keep = present[step + 1][:, None]
            state = torch.where(keep, updated, state)
            gates.append(torch.where(keep, z.mean(dim=-1, keepdim=True), torch.zeros_like(z[:, :1])))
        return state, torch.cat(gates, dim=-1)


class AttentionFusion(FusionStrategy):
    """Input-dependent softmax weights over the present modality vectors."""

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.proj = nn.ModuleList([nn.Linear(dim, hidden) for _ in range(NUM_MODALITIES)])
        self.score = nn.Sequential(nn.Linear(hidden, hidden // 2), nn.Tanh(), nn.Linear(hidden // 2, 1))
        self.out = nn.Sequential(nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.out_dim = hidden

    def forward(
        self, tokens: list[Tensor], masks: list[Tensor], pooled: list[Tensor], present: list[Tensor]
    ) -> Tensor:
        return self.explained(tokens, masks, pooled, present)[0]

    def explained(
        self, tokens: list[Tensor], masks: list[Tensor], pooled: list[Tensor], present: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """The fused vector and the softmax weights over modalities ``[B, M]`` (0 when absent)."""
        vs = []
        for i, proj in enumerate(self.proj):
            v = proj(pooled[i])
            vs.append(torch.where(present[i][:, None], v, torch.zeros_like(v)))
        stacked = torch.stack(vs, dim=1)  # [B,M,H]
        keep = torch.stack(present, dim=1)  # [B,M]
        scores = mask_scores(self.score(stacked).squeeze(-1), keep)
        weights = torch.softmax(scores, dim=1)
        return self.out((weights.unsqueeze(-1) * stacked).sum(dim=1)), weights


StrategyFactory = Callable[[int], FusionStrategy]

#: Name → constructor taking the encoder feature dim.
STRATEGIES: dict[str, StrategyFactory] = {
    "early": EarlyFusion,
    "late": LateFusion,
    "tensor": TensorFusion,
    "lowrank": LowRankFusion,
    "gated": GatedFusion,
    "attention": AttentionFusion,
    "crossmodal": CrossModalFusion,
    "singlestream": SingleStreamFusion,
}


class UnknownStrategyError(ValueError):
    """Raised for a fusion strategy name that is not in the registry."""


def build_strategy(name: str, dim: int) -> FusionStrategy:
    """Instantiate the strategy registered as ``name`` for encoder features of size ``dim``."""
    try:
        factory = STRATEGIES[name]
    except KeyError:
        known = ", ".join(sorted(STRATEGIES))
        raise UnknownStrategyError(f"unknown fusion strategy {name!r}; known strategies: {known}") from None
    return factory(dim)
