"""SGMA: semantic-guided multi-attention localization (Zhu et al., NeurIPS 2019), `--method sgma`.

The paper argues that zero-shot recognition needs discriminative *parts*, not just a global
feature. The model has three subnets (Sec. 3):

1. a multi-attention subnet (eq. 1-3) that turns the region map into `parts` attention maps,
   shaped by a compactness and a diversity loss (eq. 4-6);
2. a region cropping subnet (eq. 7-8) that reads each map, predicts a square (t_x, t_y, t_s)
   and cuts it out of the image with a differentiable boxcar mask, zoomed back by bilinear
   interpolation, so the recognition loss can move the squares;
3. a joint feature learning subnet (Sec. 3.3): the whole image and the part images go through
   CNN branches; each branch's pooled feature theta_i(x) is mapped by its own W_i and the
   compatibility scores s = sum_i theta_i(x)^T W_i phi(y) are fused late. It is trained with the
   embedding softmax (eq. 9) plus a class-center triplet loss (eq. 10), total eq. 11.

Inference (Sec. 3.4) adds to the compatibility path a class-center path: unseen prototypes are
the ridge-regression combination (eq. 12) of the seen prototypes, and both are summed with weight
beta (eq. 13). The seen prototypes are buffers updated during training, so `score` serves any
vocabulary from the state dict alone.

Deviations from the paper (each also in docs/methods/sgma.md):
- Multi-label protocol (single_label=false, the default): the softmax of eq. 9 becomes a
  per-label sigmoid BCE over the fused compatibility scores, and eq. 10 is applied for every
  present label against the absent ones (a present label is never a negative).
- Eq. 3 applies the sigmoid to a sum of non-negative (post-ReLU) channels, which is >= 0.5
  everywhere and saturates with 512 channels; we standardise the weighted sum over positions and
  apply a learned per-part gain and bias before the sigmoid, so maps can reach 0 off the part.
- Eq. 6 is averaged over positions (the paper sums), so lambda does not depend on the map size,
  which follows --image-size here.
- The crop net reads the map pooled to a fixed `crop_grid` (the paper's FC layers assume 448 px);
  the side t_s is bounded below by `part_min_side` of the image so a part never vanishes.
- Seen prototypes are a running mean of each class's normalised features (the paper averages
  over all training images after training; there is no end-of-training hook here), and the
  ridge prototypes are L2-normalised so every label's class-center score is a cosine.
- Class-center path for seen labels (GZSL): a label named like a seen class is scored against
  that class's own prototype (eq. 13's [Phi_cct]_y); only labels outside the training set get the
  ridge combination of eq. 12.
- Precision: the crop net, the boxes and the boxcar masks run in float32 even under the engine's
  bf16 autocast; in bf16 a 448-px grid has only 289 distinct x values and box centres snap to ~2 px.
- Eq. 10 is averaged over negatives and over the branches; the warm-up pre-trains the channel
  grouping and the cropping net but not the joint subnet (the main loop trains it at once).
- By default the part branches share the global branch's weights (shared_parts=true), the
  lighter variant the paper reports; shared_parts=false gives each part its own copy.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from typing import ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from zstag.backbones.base import Backbone
from zstag.data.labels import LabelSet
from zstag.methods.base import Embedder, Explanation, ImageCode, Method
from zstag.methods.kmeans import kmeans
from zstag.methods.settings import WIDTH_LIMIT, Hyperparameters, Recipe, SingleLabelConfig, setting

# ---------------------------------------------------------------------------------------------
# The pieces of the paper as plain functions (unit-tested on hand-made tensors)
# ---------------------------------------------------------------------------------------------


def boxcar_mask(t: torch.Tensor, height: int, width: int, k: float) -> torch.Tensor:
    """Eq. 8: V = V_x V_y, the continuous square mask of each box, (..., height, width).

    `t` (..., 3) holds (t_x, t_y, t_s) in pixels; x and y are pixel centres (j + 0.5), the same
    convention as the bilinear resampling in `crop_parts`.
    """
    xs = torch.arange(width, device=t.device, dtype=t.dtype) + 0.5
    ys = torch.arange(height, device=t.device, dtype=t.dtype) + 0.5
    tx, ty, ts = (t[..., i, None] for i in range(3))
    vx = torch.sigmoid(k * (xs - tx + 0.5 * ts)) - torch.sigmoid(k * (xs - tx - 0.5 * ts))
    vy = torch.sigmoid(k * (ys - ty + 0.5 * ts)) - torch.sigmoid(k * (ys - ty - 0.5 * ts))
    return vy[..., :, None] * vx[..., None, :]


def crop_parts(images: torch.Tensor, t: torch.Tensor, size: tuple[int, int], k: float) -> torch.Tensor:
    """x_part = x ⊙ V (eq. 8), then its square zoomed to `size` by bilinear interpolation.

    images (B, 3, H, W), t (B, n, 3) in pixels -> part images (B, n, 3, *size). Both the mask and
    the sampling grid depend on t, so the recognition loss moves the squares.
    """
    b, n = t.shape[:2]
    height, width = images.shape[-2:]
    masked = images[:, None] * boxcar_mask(t, height, width, k)[:, :, None]  # (B, n, 3, H, W)
    tx, ty, ts = t.reshape(b * n, 3).unbind(1)
    zero = torch.zeros_like(tx)
    # affine_grid (align_corners=False) maps output pixel centres onto [t - t_s/2, t + t_s/2].
    theta = torch.stack(
        [
            torch.stack([ts / width, zero, 2 * tx / width - 1], 1),
            torch.stack([zero, ts / height, 2 * ty / height - 1], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, [b * n, 3, *size], align_corners=False)
    parts = F.grid_sample(masked.flatten(0, 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return parts.view(b, n, 3, *size)


def peak_positions(maps: torch.Tensor) -> torch.Tensor:
    """(x, y) of each map's maximum as fractions of its width and height (cell centres), (..., 2)."""
    h, w = maps.shape[-2:]
    flat = maps.flatten(-2).argmax(-1)
    x = (flat % w).to(maps.dtype) + 0.5
    y = torch.div(flat, w, rounding_mode="floor").to(maps.dtype) + 0.5
    return torch.stack([x / w, y / h], -1)


def gaussian_blobs(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """The ideal concentrated maps of eq. 5: a unit Gaussian at each map's peak.

    `sigma` is a fraction of the map's side, so the blob covers the same part of the image at
    any input size.
    """
    h, w = maps.shape[-2:]
    peak = peak_positions(maps.detach())
    xs = (torch.arange(w, device=maps.device, dtype=maps.dtype) + 0.5) / w
    ys = (torch.arange(h, device=maps.device, dtype=maps.dtype) + 0.5) / h
    dx2 = (xs - peak[..., 0, None]) ** 2  # (..., w)
    dy2 = (ys - peak[..., 1, None]) ** 2  # (..., h)
    return torch.exp(-(dy2[..., :, None] + dx2[..., None, :]) / (2 * sigma**2))


def compactness_loss(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Eq. 5 per map: mean squared distance to the Gaussian blob at its peak, (B, n)."""
    return ((maps - gaussian_blobs(maps, sigma)) ** 2).flatten(-2).mean(-1)


def diversity_loss(maps: torch.Tensor, margin: float) -> torch.Tensor:
    """Eq. 6 per map: m_i^z max(0, max_{k!=i} m_k^z - mrg), averaged over positions z, (B, n)."""
    n = maps.shape[1]
    if n < 2:
        return maps.new_zeros(maps.shape[:2])
    others = torch.stack([torch.cat([maps[:, :i], maps[:, i + 1 :]], 1).amax(1) for i in range(n)], 1)
    return (maps * (others - margin).clamp_min(0)).flatten(-2).mean(-1)


def center_triplet_loss(
    features: torch.Tensor, centers: torch.Tensor, targets: torch.Tensor, margin: float
) -> torch.Tensor:
    """Eq. 10: max(0, mrg + ||f - C_i||^2 - ||f - C_k||^2) for a present label i, absent k.

    features (B, D) and centers (S, D) are already L2-normalised; targets (B, S) 0/1. Averaged
    over the absent labels of each (image, present label) pair, then over the pairs; with one
    label per image this is the paper's single-label loss.
    """
    dist = (features.pow(2).sum(1, keepdim=True) + centers.pow(2).sum(1) - 2 * features @ centers.T).clamp_min(0)
    present = targets > 0
    img, lab = present.nonzero(as_tuple=True)
    if img.numel() == 0:
        return features.sum() * 0
    hinge = (margin + dist[img, lab, None] - dist[img]).clamp_min(0)  # (P, S)
    absent = (~present[img]).to(hinge.dtype)
    per_pair = (hinge * absent).sum(1) / absent.sum(1).clamp_min(1)
    return per_pair.mean()


def ridge_map(source: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. 12 in closed form: A (D, S) such that W = Phi^u A minimises ||Phi^u - W Phi^s||^2 + lam ||W||^2.

    A = Phi^s^T (Phi^s Phi^s^T + lam I)^-1, computed as (Phi^s^T Phi^s + lam I)^-1 Phi^s^T when the
    semantic dimension is the smaller one (the same matrix, cheaper for large vocabularies).
    """
    s, d = source.shape
    src = source.float()
    if d <= s:
        gram = src.T @ src + lam * torch.eye(d, device=src.device)
        return torch.linalg.solve(gram, src.T)
    gram = src @ src.T + lam * torch.eye(s, device=src.device)
    return torch.linalg.solve(gram, src).T


# ---------------------------------------------------------------------------------------------
# Subnets
# ---------------------------------------------------------------------------------------------


class MultiAttention(nn.Module):
    """Eq. 1-3: per part, channel weights a_i from the pooled descriptor, then a channel-weighted map."""

    def __init__(self, channels: int, parts: int, reduction: int) -> None:
        super().__init__()
        hidden = max(channels // reduction, 8)
        # One stacked FC pair (W1, W2) per part, as eq. 2 has its own a_i for each part.
        self.fc = nn.ModuleList(
            nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))
            for _ in range(parts)
        )
        # Gain and bias before the sigmoid of eq. 3 (a deviation, see the module docstring).
        self.gain = nn.Parameter(torch.ones(parts))
        self.bias = nn.Parameter(torch.zeros(parts))

    def channel_logits(self, descriptor: torch.Tensor) -> torch.Tensor:
        """W2 f(W1 p) of eq. 2 before the sigmoid, (B, n, C)."""
        return torch.stack([fc(descriptor) for fc in self.fc], 1)

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        """Attention maps M_i (B, n, h, w) in (0, 1) from the region map (B, C, h, w)."""
        p = regions.mean((2, 3))  # eq. 1
        a = torch.sigmoid(self.channel_logits(p))  # eq. 2
        z = torch.einsum("bnc,bchw->bnhw", a, regions)  # eq. 3, the weighted channel sum
        mean = z.mean((2, 3), keepdim=True)
        std = z.std((2, 3), keepdim=True, unbiased=False)
        z = (z - mean) / (std + 1e-5)
        return torch.sigmoid(self.gain[:, None, None] * z + self.bias[:, None, None])


class CropNet(nn.Module):
    """Eq. 7: two FC layers from an attention map to its square (t_x, t_y, t_s), shared by the parts.

    Outputs are fractions: t_x of the width, t_y of the height, t_s of the shorter side in
    [min_side, 1].
    """

    def __init__(self, grid: int, hidden: int, min_side: float) -> None:
        super().__init__()
        self.grid = grid
        self.min_side = min_side
        self.fc = nn.Sequential(nn.Linear(grid * grid, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 3))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        b, n = maps.shape[:2]
        pooled = F.adaptive_avg_pool2d(maps.flatten(0, 1)[:, None], self.grid).flatten(1)
        raw = torch.sigmoid(self.fc(pooled)).view(b, n, 3)
        side = self.min_side + (1 - self.min_side) * raw[..., 2:]
        return torch.cat([raw[..., :2], side], -1)


def to_pixels(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """CropNet's fractions -> (t_x, t_y, t_s) in pixels of a (height, width) image."""
    scale = boxes.new_tensor([width, height, min(height, width)])
    return boxes * scale


# ---------------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------------

# Sec. 3.4's two inference paths and their sum (eq. 13).
INFERENCE_PATHS = ("combined", "compatibility", "center")


@dataclass(frozen=True)
class SGMAConfig(SingleLabelConfig):
    """SGMA's subnets (Sec. 3, 4.1), losses (eq. 4-11; `single_label`: eq. 9's softmax), inference
    (eq. 12-13) and warm-up."""

    # Architecture.
    parts: int = setting(2, 1, 64)  # Sec. 4.1: two parts; more overlap without helping
    shared_parts: bool = setting(True)  # part branches share the global CNN (the paper's lighter variant)
    joint_scale: float = setting(0.5, high=4, above=0)  # joint subnet input / attention input (224 / 448 in Sec. 4.1)
    attention_reduction: int = setting(16, 1, WIDTH_LIMIT)  # W1 width = channels / reduction (not given in the paper)
    crop_grid: int = setting(28, 1, 1024)  # attention map pooled to 28x28 for CNet (VGG19 conv5_4 at 448 px)
    crop_hidden: int = setting(256, 1, WIDTH_LIMIT)
    part_min_side: float = setting(0.1, 0, 1)
    box_k: float = setting(10.0, above=0)  # k of eq. 8 (Sec. 4.1)
    # Losses.
    blob_sigma: float = setting(0.1, above=0)  # Gaussian of eq. 5, fraction of the map side (not given in the paper)
    div_margin: float = setting(0.2, 0)  # mrg of eq. 6 (Sec. 4.1)
    lambda_div: float = setting(1.0, 0)  # lambda of eq. 4 (grid-searched in the paper, value not reported)
    cct_margin: float = setting(0.8, 0)  # mrg of eq. 10 (Sec. 4.1)
    alpha_cls: float = setting(1.0, 0)  # alpha_1, alpha_2 of eq. 11 (Sec. 3.3: both 1)
    alpha_cct: float = setting(1.0, 0)
    center_momentum: float = setting(0.9, 0, 1)  # running mean of the seen prototypes
    # Inference.
    inference: str = setting("combined", choices=INFERENCE_PATHS)  # combined (eq. 13) | compatibility | center
    beta: float = setting(1.0)  # beta of eq. 13 (not reported)
    ridge_lambda: float = setting(0.1, 0)  # lambda of eq. 12 (not reported)
    # Warm-up (Sec. 4.1 initialisation).
    warmup_steps: int = setting(100, 0, 1_000_000)
    warmup_batches: int = setting(4, 1, 1_000_000)
    warmup_side: float = setting(0.25, above=0, high=1)  # pseudo-box side: a quarter of the image size
    warmup_lr: float = setting(1e-3, above=0)


class SGMA(Method[ImageCode]):
    """Global + part branches with late-fused compatibility scores and a class-center path."""

    name = "sgma"
    reads_images = True  # the cropping subnet zooms into the images themselves
    # Recipe of Sec. 4.1: SGD lr 0.05, momentum 0.9, weight decay 5e-4, batch 32,
    # lr x 0.1 on plateau down to 5e-4; the CNNs are trained end to end. The paper gives no
    # patience: a plateau is 3 epochs without a better validation mAP (lr_patience 2, ours), so two
    # noisy epochs do not cut the rate tenfold.
    default_recipe: ClassVar[Recipe] = Recipe(
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        batch_size=32,
        schedule="plateau",
        lr_factor=0.1,
        min_lr=5e-4,
        lr_patience=2,
        finetune_backbone=True,
    )
    Config: ClassVar[type[SGMAConfig]] = SGMAConfig
    # Buffers, declared so attribute access is typed as tensors.
    seen_vectors: torch.Tensor
    prototypes: torch.Tensor
    proto_count: torch.Tensor

    def __init__(self, backbone: Backbone, seen: LabelSet, hp: Hyperparameters[SGMAConfig], embed: Embedder) -> None:
        super().__init__(backbone, seen, hp, embed)
        config = self.config = hp.config
        # Inference path and beta stay plain attributes: they change no tensor, so a trained model
        # can be scored either way.
        self.inference, self.beta = config.inference, config.beta
        parts = self.parts = config.parts
        channels = backbone.region_channels
        self.attention = MultiAttention(channels, parts, config.attention_reduction)
        self.crop = CropNet(config.crop_grid, config.crop_hidden, config.part_min_side)
        # Separate part CNNs start from the backbone's current (pretrained) weights.
        copies = 0 if config.shared_parts else parts
        self.part_backbones = nn.ModuleList(copy.deepcopy(backbone) for _ in range(copies))
        branches = 1 + parts
        # W_i of s^i = theta_i(x)^T W_i phi(y): one map per branch (global first, then parts).
        self.embed_maps = nn.ModuleList(nn.Linear(channels, self.dim, bias=False) for _ in range(branches))
        # Trainable class centers C of eq. 10, one set per branch.
        self.centers = nn.Parameter(F.normalize(torch.randn(branches, self.num_seen, self.dim), dim=-1))
        self.register_buffer("seen_vectors", seen.vectors.detach().clone().float())
        self.seen_index = {name: i for i, name in enumerate(seen.names)}  # eq. 13's own prototype of a seen label
        # Seen prototypes Phi^s_cct of Sec. 3.4 and how many batches fed each class.
        self.register_buffer("prototypes", torch.zeros(branches, self.num_seen, self.dim))
        self.register_buffer("proto_count", torch.zeros(self.num_seen, dtype=torch.long))

    def train(self, mode: bool = True) -> SGMA:
        """Part CNNs follow the backbone: when the trainer has frozen it, they are frozen too.

        The trainer freezes `backbone` (requires_grad False) after building the method, so the
        copies cannot know at construction; they stop learning (no gradients) and keep their
        batch-norm statistics (eval mode) from the first `train()` call on.
        """
        super().train(mode)
        if not any(p.requires_grad for p in self.backbone.parameters()):
            self.part_backbones.requires_grad_(False)
            self.part_backbones.eval()
        return self

    # -- forward pieces ---------------------------------------------------------------------

    def _boxes(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention maps (B, n, h, w) and part squares (B, n, 3) in pixels of `images`."""
        maps = self.attention(self.backbone.regions(images))
        with torch.autocast(images.device.type, enabled=False):  # float32 boxes under bf16 autocast
            return maps, to_pixels(self.crop(maps.float()), *images.shape[-2:])

    def _branch_features(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Mapped features phi_i = theta_i(x)^T W_i of the global image and each part, (B, 1+n, D)."""
        height, width = images.shape[-2:]
        scale = self.config.joint_scale
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        whole = (
            images
            if size == (height, width)
            else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        )
        with torch.autocast(images.device.type, enabled=False):  # the masks' pixel grid in float32
            parts = crop_parts(images.float(), boxes.float(), size, self.config.box_k)  # (B, n, 3, h', w')
        b = images.shape[0]
        if len(self.part_backbones) == 0:
            batch = torch.cat([whole[:, None], parts], 1).flatten(0, 1)
            theta = self.backbone.regions(batch).mean((2, 3)).view(b, 1 + self.parts, -1)
        else:
            feats = [self.backbone.regions(whole).mean((2, 3))]
            nets = cast("Iterable[Backbone]", self.part_backbones)  # typed as Modules; they are Backbone copies
            feats += [net.regions(parts[:, i]).mean((2, 3)) for i, net in enumerate(nets)]
            theta = torch.stack(feats, 1)
        return torch.stack([w(theta[:, i]) for i, w in enumerate(self.embed_maps)], 1)

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, boxes = self._boxes(images)
        return maps, self._branch_features(images, boxes)

    # -- Method protocol ----------------------------------------------------------------------

    def encode(self, images: torch.Tensor) -> ImageCode:
        return {"phi": self._forward(images)[1]}

    def score(self, code: ImageCode, labels: LabelSet) -> torch.Tensor:
        phi = code["phi"] if isinstance(code, dict) else code
        vectors = labels.vectors.to(device=phi.device, dtype=phi.dtype)
        compat = torch.einsum("bnd,ld->bl", phi, vectors)  # late fusion: sum_i s^i
        if self.inference == "compatibility":
            return compat
        center = self._center_scores(phi, labels)
        if self.inference == "center":
            return center
        return compat + self.beta * center  # eq. 13

    def _seen_prototypes(self) -> torch.Tensor:
        """Phi^s_cct (branches, S, D): the running means, or the trained centers for unseen-in-training classes."""
        observed = (self.proto_count > 0)[None, :, None]
        return torch.where(observed, self.prototypes, F.normalize(self.centers.detach(), dim=-1))

    def _center_scores(self, phi: torch.Tensor, labels: LabelSet) -> torch.Tensor:
        """<phi_cct(x), [Phi_cct]_y> of eq. 13 with the branches concatenated, (B, L).

        A seen label (by name) is scored against its own prototype, a row of Phi^s_cct; only the
        other labels get the ridge combination of eq. 12 (reconstructing a seen label from all
        seen prototypes would blur it whenever seen vectors are correlated or outnumber D)."""
        with torch.autocast(device_type=phi.device.type, enabled=False):
            vectors = labels.vectors.to(device=phi.device, dtype=torch.float32)
            weights = vectors @ ridge_map(self.seen_vectors, self.config.ridge_lambda)  # eq. 12
            own = torch.tensor([self.seen_index.get(name, -1) for name in labels.names], device=phi.device)
            seen = own >= 0
            weights[seen] = F.one_hot(own[seen], self.num_seen).float()
            protos = F.normalize(torch.einsum("ls,nsd->nld", weights, self._seen_prototypes().float()), dim=-1)
            feats = F.normalize(phi.float(), dim=-1)
            return torch.einsum("bnd,nld->bl", feats, protos).to(phi.dtype)

    def loss(
        self, images: torch.Tensor, targets: torch.Tensor, seen: LabelSet
    ) -> tuple[torch.Tensor, dict[str, float]]:
        config = self.config
        maps, phi = self._forward(images)
        # Eq. 4-6: summed over the parts, averaged over the batch.
        cpt = compactness_loss(maps, config.blob_sigma).sum(1).mean()
        div = diversity_loss(maps, config.div_margin).sum(1).mean()
        ma = cpt + config.lambda_div * div
        compat = torch.einsum("bnd,ld->bl", phi, seen.vectors.to(device=phi.device, dtype=phi.dtype))
        if self.single_label:
            cls = F.cross_entropy(compat, targets.argmax(1))  # eq. 9
        else:
            cls = F.binary_cross_entropy_with_logits(compat, targets.to(compat.dtype))
        feats = F.normalize(phi, dim=-1)
        centers = F.normalize(self.centers, dim=-1)
        margin = config.cct_margin
        per_branch = [center_triplet_loss(feats[:, i], centers[i], targets, margin) for i in range(phi.shape[1])]
        cct = torch.stack(per_branch).mean()  # eq. 10 for each branch's phi_i
        total = ma + config.alpha_cls * cls + config.alpha_cct * cct  # eq. 11
        if self.training:
            self._update_prototypes(feats.detach(), targets)
        named = {"compactness": cpt, "diversity": div, "softmax": cls, "center_triplet": cct}
        parts = {key: float(value.detach()) for key, value in named.items()}
        return total, parts

    @torch.no_grad()
    def _update_prototypes(self, feats: torch.Tensor, targets: torch.Tensor) -> None:
        """Running mean of each present class's normalised features (Sec. 3.4's averaged prototypes).

        A class's first batches are averaged exactly; later ones enter with weight 1 - momentum,
        so the prototypes follow the features as training moves them.
        """
        t = targets.to(feats.dtype)
        counts = t.sum(0)  # (S,)
        present = counts > 0
        if not present.any():
            return
        batch_mean = torch.einsum("bs,bnd->nsd", t, feats) / counts.clamp_min(1)[None, :, None]
        self.proto_count += present.long()
        weight = torch.clamp(1.0 / self.proto_count.clamp_min(1).to(feats.dtype), min=1 - self.config.center_momentum)
        weight = (weight * present)[None, :, None]
        self.prototypes.mul_(1 - weight).add_(weight * batch_mean.to(self.prototypes.dtype))

    # -- warm-up (Sec. 4.1 initialisation) ------------------------------------------------------

    def on_train_start(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], seen: LabelSet) -> None:
        """Initialise a_i from k-means of channel peaks, then pre-train CNet on peak-centred squares.

        Uses the region maps of the first `warmup_batches` batches, `warmup_steps` Adam steps for
        each of the two stages; the backbone is only read.
        """
        steps = self.config.warmup_steps
        if steps <= 0:
            return
        with torch.no_grad():
            regions = [self.backbone.regions(images) for images, _ in islice(batches, self.config.warmup_batches)]
        if not regions:
            return
        feats = torch.cat(regions).float()
        n_img, channels = feats.shape[:2]
        lr = self.config.warmup_lr
        # Stage 1: group channels by where they peak over the images, as in MA-CNN [36].
        peaks = peak_positions(feats).transpose(0, 1).reshape(channels, 2 * n_img)
        _, groups = kmeans(peaks, min(self.parts, channels))
        pseudo = F.one_hot(groups, self.parts).T.float()  # (n, C): a_i's pseudo labels
        descriptor = feats.mean((2, 3))
        opt = torch.optim.Adam(self.attention.fc.parameters(), lr=lr)
        for _ in range(steps):
            logits = self.attention.channel_logits(descriptor)
            loss = F.binary_cross_entropy_with_logits(logits, pseudo.expand_as(logits))
            opt.zero_grad()
            loss.backward()
            opt.step()
        # Stage 2: squares of `warmup_side` centred on each map's peak as CNet's pseudo ground truth.
        with torch.no_grad():
            maps = self.attention(feats)
            side = torch.full_like(maps[..., 0, 0], self.config.warmup_side)
            target = torch.cat([peak_positions(maps), side[..., None]], -1)
        opt = torch.optim.Adam(self.crop.parameters(), lr=lr)
        for _ in range(steps):
            loss = F.mse_loss(self.crop(maps), target)
            opt.zero_grad()
            loss.backward()
            opt.step()

    # -- explanations -------------------------------------------------------------------------

    @torch.no_grad()
    def explain(self, images: torch.Tensor, labels: LabelSet) -> Explanation:
        """The part squares (B, parts, 4) as (x0, y0, x1, y1) fractions of the image, clipped to
        [0, 1]: where the parts every label is scored from were cut."""
        height, width = images.shape[-2:]
        _, t = self._boxes(images)
        tx, ty, ts = t.unbind(-1)
        x0, y0 = (tx - ts / 2) / width, (ty - ts / 2) / height
        x1, y1 = (tx + ts / 2) / width, (ty + ts / 2) / height
        return Explanation(boxes=torch.stack([x0, y0, x1, y1], -1).clamp(0, 1))
