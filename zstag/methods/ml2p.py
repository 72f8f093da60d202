"""(ML)^2P-Encoder / C^3-MLZSL (Liu et al., CVPR 2023): tagging from channel-class correlation.

Where LESA and BiAM attend over *space*, this method reads the semantics of an image from its
*channels*: the backbone's last three stages are max-pooled to one small grid and stacked (the
"Forward Pyramid"), the channels are shuffled and cut into g groups of d_w channels (d_w = the
length of a label vector), each group is encoded by the (ML)^2P-Encoder into one d_w vector, and
a Group Attention mixes the g vectors into the semantic matrix S (g x d_w). A label scores the
best inner product of its semantic vector with a row of S (Sec. 3.2-3.4).

Everything after the backbone runs batched over the groups (grouped weights applied with einsum),
because a cheap head is the paper's headline claim (Fig. 5).

Deviations from the paper, each for a reason given where it happens:
- Pooling grid. The paper pools every stage to the smallest one (7x7 at 224 px). The spatial MLP
  of eq. 4 has weights over the H*W positions, so its width must not depend on the input size;
  we pool every stage to a fixed `grid` x `grid` (default 7: identical to the paper at 224 px).
- Projection to g*d_w channels. The paper's text is silent on how 1,280 stacked VGG19 channels
  become g*d_w = 2,100; its released code uses 1x1 convolutions. We add one 1x1 convolution from
  the stacked channels to g*d_w (none when the counts already match), then shuffle.
- Scaling. Eq. 2 and eq. 7 are unscaled dot products; we divide by sqrt(H*W) and sqrt(d_w) as in
  scaled dot-product attention, so the softmax of eq. 2 does not saturate.
- Residual group attention. Eq. 7's S = (Q_x K_x^T) X is cubic in X, which stalls training near
  zero; we add X (S = X + (Q_x K_x^T) X) and initialise W_x^Q to zero, so the module starts as
  the identity. `group_residual=false` gives eq. 7 as printed, with default initialisation.
- Softmax axis of eq. 2. R = softmax(K^T Q) is normalised over the channels it mixes (its first
  index), so each output channel of V R is a convex combination of value channels.
- Variances (eq. 10-11) are population variances over a vector's d_w entries (our reading).
- L_reg's strength. Scores are <S_n, v> and zstag's label vectors have unit norm, where the paper
  feeds raw GloVe (norm c = 5-8): S must be ~c times larger for the same score margins and
  L_reg = sum var(S_n) grows like c^2, so lambda = 0.4 acts ~c^2 times stronger than for the
  authors. We keep the paper's lambda; docs/methods.md gives the measurement (held-out mAP 0.337 at
  0.4, 0.424 at 0.4/36 on the synthetic set) and `reg_weight=0.011` as the GloVe-equivalent.

On VGG19 the three stages are pool3, pool4 and conv5_4 (`zstag.backbones.torchvision_nets`); their
7x7 max-pools are pool3, pool4 and pool5, the pyramid of the released code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from zstag.backbones.base import Backbone
from zstag.data.labels import LabelSet
from zstag.methods.base import Embedder, Explanation, Method
from zstag.methods.settings import WIDTH_LIMIT, Hyperparameters, MethodConfig, Recipe, setting


def forward_pyramid(stages: list[torch.Tensor], grid: int, pyramid: bool) -> torch.Tensor:
    """Max-pool the stages to grid x grid and stack them along channels (Sec. 3.2, "Forward Pyramid").

    With `pyramid` off only the last stage is used (Table 3, model 'a').
    """
    maps = stages if pyramid else stages[-1:]
    return torch.cat([F.adaptive_max_pool2d(m, grid) for m in maps], dim=1)


class GroupedLinear(nn.Module):
    """g independent linear maps over the last axis of (B, g, T, fan_in), applied in one einsum.

    The paper trains each group's encoder independently; one weight tensor per layer instead of
    g modules keeps the hot path free of a Python loop over groups.
    """

    def __init__(self, groups: int, fan_in: int, fan_out: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(fan_in)  # the same range as nn.Linear's default initialisation
        self.weight = nn.Parameter(torch.empty(groups, fan_in, fan_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(groups, fan_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bgti,gio->bgto", x, self.weight) + self.bias[:, None, :]


class GroupedLayerNorm(nn.Module):
    """LayerNorm over the last axis of (B, g, T, d) with a separate affine map per group."""

    def __init__(self, groups: int, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.weight = nn.Parameter(torch.ones(groups, 1, dim))
        self.bias = nn.Parameter(torch.zeros(groups, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.dim,)) * self.weight + self.bias


class GroupedMLP(nn.Module):
    """W2 GELU(W1 x) per group (the bracket of eq. 4 and eq. 5)."""

    def __init__(self, groups: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = GroupedLinear(groups, dim, hidden)
        self.fc2 = GroupedLinear(groups, hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ChannelAttention(nn.Module):
    """The channel self-attention of the (ML)^2P-Encoder, eq. 1-3, for all groups at once.

    Input and output are (B, g, N, d): N = H*W positions, d = d_w channels of each group.
    """

    def __init__(self, groups: int, dim: int) -> None:
        super().__init__()
        self.qkv = GroupedLinear(groups, dim, 3 * dim)  # eq. 1: three 1x1 convolutions = per-position linear maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # each (B, g, N, d), i.e. Q^, V^ in R^{HW x d}
        # eq. 2: R = softmax(K^ Q^), K^ = K^T in R^{d x HW}; R[i, j] weighs value channel i in output j.
        r = torch.softmax(k.transpose(-1, -2) @ q / math.sqrt(x.shape[-2]), dim=-2)
        return x + v @ r  # eq. 3: residual


class ML2PEncoder(nn.Module):
    """(ML)^2P-Encoder for g groups: channel attention, then two residual MLPs (eq. 1-5).

    `maps` returns the encoded groups before the spatial max-pool; `explain` needs them.
    """

    def __init__(self, groups: int, dim: int, positions: int, reduction: int) -> None:
        super().__init__()
        self.attention = ChannelAttention(groups, dim)
        self.norm1 = GroupedLayerNorm(groups, dim)
        self.spatial_mlp = GroupedMLP(groups, positions, max(1, positions // reduction))
        self.norm2 = GroupedLayerNorm(groups, dim)
        self.channel_mlp = GroupedMLP(groups, dim, max(1, dim // reduction))

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        """(B, g, N, d) -> M (B, g, N, d)."""
        x = self.attention(x)
        # eq. 4, MLP1: mixes the H*W positions of each channel (F_mlp in R^{d x HW}).
        x = x + self.spatial_mlp(self.norm1(x).transpose(-1, -2)).transpose(-1, -2)
        # eq. 5, MLP2: mixes the channels at each position.
        return x + self.channel_mlp(self.norm2(x))


class GroupAttention(nn.Module):
    """Group attention over the g group vectors, eq. 6-7: S = (Q_x K_x^T) X, plus X when `residual`.

    As printed, S is cubic in X: when the features are small (at initialisation, or after the
    variance regulariser of eq. 11 has shrunk S) its gradient vanishes like |X|^2 and training
    sits on a plateau. The residual S = X + (Q_x K_x^T) X keeps S linear in X near zero, and with
    W_x^Q initialised to zero the module starts as the identity and learns how to mix the groups.
    The attention term is otherwise unchanged (no softmax, no value projection).
    """

    def __init__(self, dim: int, residual: bool = True) -> None:
        super().__init__()
        self.residual = residual
        self.query = nn.Linear(dim, dim)  # W_x^Q
        self.key = nn.Linear(dim, dim)  # W_x^K
        if residual:
            nn.init.zeros_(self.query.weight)
            nn.init.zeros_(self.query.bias)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, g, g) matrix that multiplies X: Q_x K_x^T / sqrt(d), plus I with the residual."""
        mix = self.query(x) @ self.key(x).transpose(-1, -2) / math.sqrt(x.shape[-1])
        if self.residual:
            mix = mix + torch.eye(x.shape[-2], device=x.device, dtype=x.dtype)
        return mix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weights(x) @ x


def ranknet_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-image RankNet loss, eq. 8-9: mean over (positive j, negative i) of log(1 + e^(s_i - s_j)).

    Positives are gathered into a padded (B, P) block so memory is B x P x S rather than B x S x S
    (S can be thousands of seen labels). Images without a positive or a negative contribute 0.
    """
    n_pos = targets.sum(1)
    n_neg = targets.shape[1] - n_pos
    most = int(n_pos.max().item()) if targets.numel() else 0
    if most == 0:
        return scores.new_zeros(scores.shape[0])
    pos_idx = targets.topk(most, dim=1).indices  # the positives come first, padding after
    pos_valid = targets.gather(1, pos_idx) > 0
    mu = scores[:, None, :] - scores.gather(1, pos_idx)[:, :, None]  # eq. 8: mu[b, j, i] = s_i - s_j
    pairs = pos_valid[:, :, None] & (targets[:, None, :] == 0)
    total = (F.softplus(mu) * pairs).sum((1, 2))
    return total / (n_pos * n_neg).clamp(min=1)  # eq. 9: 1 / (|P| |P-bar|)


def hard_sample_weight(targets: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """omega = 1 + sum over the image's positive labels of the variance of their vectors (eq. 10).

    Our reading: var(P^i) is the variance of the d entries of the i-th positive label vector, so
    omega grows with the number of positives, as the paper intends ("contains a large number of
    positive labels"). It is a constant of the data: no gradient flows through it.
    """
    return 1.0 + targets @ vectors.var(dim=1, correction=0)


def variance_regulariser(code: torch.Tensor) -> torch.Tensor:
    """L_reg of eq. 11 per image: sum over the g semantic vectors S_n of the variance of their entries.

    S (B, g, d) -> (B,). A sum of variances is non-negative, so its L1 norm is itself.
    """
    return code.var(dim=-1, correction=0).sum(-1)


@dataclass(frozen=True)
class ML2PConfig(MethodConfig):
    """(ML)^2P's architecture (Sec. 3 and 4.3: g = 7 groups, lambda = 0.4) and the Table 3 ablations."""

    groups: int = setting(7, 1, 4096)
    reg_weight: float = setting(0.4, 0, 1)  # lambda of eq. 12
    grid: int = setting(7, 1, 1024)  # pooled size of the pyramid (the 7x7 stage at 224 px)
    mlp_reduction: int = setting(
        5, 1, WIDTH_LIMIT
    )  # hidden width of the MLPs = size // 5 (released code; the paper is silent)
    shuffle_seed: int = setting(0, 0)
    pyramid: bool = setting(True)
    encoder: bool = setting(True)
    group_attention: bool = setting(True)
    group_residual: bool = setting(True)  # ours: S = X + (Q_x K_x^T) X; false = eq. 7 as printed


class ML2P(Method[torch.Tensor]):
    """C^3-MLZSL: Forward Pyramid, shuffle + groups, (ML)^2P-Encoder, Group Attention."""

    name = "ml2p"
    # Recipe, Sec. 4.1 (NUS-WIDE): Adam, weight decay 4e-3, lr 5e-5 divided by 10 at epoch 7,
    # 20 epochs, batch 48. The paper trains end to end ("Our model can support end-to-end
    # training"; only the *comparison* methods are "not fine-tuned"), so the backbone is tuned.
    default_recipe: ClassVar[Recipe] = Recipe(
        optimizer="adam",
        lr=5e-5,
        weight_decay=4e-3,
        batch_size=48,
        epochs=20,
        schedule="step",
        lr_milestones=[7],
        lr_factor=0.1,
        finetune_backbone=True,
    )
    Config: ClassVar[type[ML2PConfig]] = ML2PConfig
    shuffle: torch.Tensor  # buffer (groups * D,), declared so attribute access is typed as a tensor

    def __init__(self, backbone: Backbone, seen: LabelSet, hp: Hyperparameters[ML2PConfig], embed: Embedder) -> None:
        super().__init__(backbone, seen, hp, embed)
        config = hp.config
        self.groups = config.groups
        self.grid = config.grid
        self.pyramid = config.pyramid
        self.reg_weight = config.reg_weight
        width = self.groups * self.dim
        stacked = sum(backbone.channels) if self.pyramid else backbone.channels[-1]
        self.project = nn.Identity() if stacked == width else nn.Conv2d(stacked, width, kernel_size=1)
        # A fixed, seeded shuffle saved with the model, so tagging is deterministic.
        shuffle = torch.randperm(width, generator=torch.Generator().manual_seed(config.shuffle_seed))
        self.register_buffer("shuffle", shuffle)
        self.encoder = (
            ML2PEncoder(self.groups, self.dim, self.grid * self.grid, config.mlp_reduction) if config.encoder else None
        )
        self.group_attention = GroupAttention(self.dim, config.group_residual) if config.group_attention else None

    def group_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Pyramid, projection, shuffle and grouping: (B, 3, H, W) -> (B, g, N, d_w), N = grid^2."""
        x = self.project(forward_pyramid(self.backbone.stages(images), self.grid, self.pyramid))
        x = x[:, self.shuffle]
        b = x.shape[0]
        return x.reshape(b, self.groups, self.dim, -1).transpose(-1, -2)

    def _group_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Each group's encoded map before the spatial max-pool, (B, g, N, d_w)."""
        tokens = self.group_tokens(images)
        return self.encoder.maps(tokens) if self.encoder is not None else tokens

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        """The group-attention matrix (B, g, g) for group vectors X, the identity when switched off."""
        if self.group_attention is None:
            return torch.eye(self.groups, device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1)
        return self.group_attention.weights(x)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The semantic matrix S (B, g, d_w) of eq. 7."""
        x = self._group_maps(images).amax(dim=2)  # max-pool over space: group vectors X (B, g, d_w)
        return self._mix(x) @ x

    def score(self, code: torch.Tensor, labels: LabelSet) -> torch.Tensor:
        """max over the g rows of S of <S_n, v_l> (the max of eq. 8), (B, L)."""
        vectors = labels.vectors.to(device=code.device, dtype=code.dtype)
        return torch.einsum("bgd,ld->bgl", code, vectors).amax(dim=1)

    def loss(
        self, images: torch.Tensor, targets: torch.Tensor, seen: LabelSet
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 12: mean over the batch of (1 - lambda) omega L_rank + lambda L_reg."""
        code = self.encode(images)
        targets = targets.to(code.dtype)
        rank = ranknet_loss(self.score(code, seen), targets)
        omega = hard_sample_weight(targets, seen.vectors.to(device=code.device, dtype=code.dtype))
        reg = variance_regulariser(code)
        lam = self.reg_weight
        total = ((1 - lam) * omega * rank + lam * reg).mean()
        parts = {name: float(value.detach().mean()) for name, value in (("rank", rank), ("reg", reg), ("omega", omega))}
        return total, parts

    @torch.no_grad()
    def explain(self, images: torch.Tensor, labels: LabelSet) -> Explanation:
        """Per-label response maps (B, L, grid, grid) in [0, 1].

        For each label we take the row n* of S that produced its score (the argmax of eq. 8's max)
        and evaluate that row *before* the spatial max-pool: S_n*(p) = sum_k A[n*, k] M_k(p), with A
        the group-attention matrix and M_k group k's encoded map, so the map is the inner product
        <S_n*(p), v_l> at each position p, min-max scaled per image and label.
        """
        maps = self._group_maps(images)  # (B, g, N, d)
        x = maps.amax(dim=2)
        mix = self._mix(x)  # (B, g, g)
        vectors = labels.vectors.to(device=maps.device, dtype=maps.dtype)
        best = torch.einsum("bgd,ld->bgl", mix @ x, vectors).argmax(dim=1)  # (B, L): the row n*
        rows = torch.einsum("bgk,bknd->bgnd", mix, maps)  # S before the max-pool, per position
        response = torch.einsum("bgnd,ld->bgln", rows, vectors)  # (B, g, L, N)
        index = best[:, None, :, None].expand(-1, 1, -1, response.shape[-1])
        picked = response.gather(1, index).squeeze(1)  # (B, L, N)
        low = picked.amin(dim=-1, keepdim=True)
        high = picked.amax(dim=-1, keepdim=True)
        scaled = (picked - low) / (high - low).clamp(min=1e-12)
        return Explanation(maps=scaled.reshape(*scaled.shape[:2], self.grid, self.grid))
