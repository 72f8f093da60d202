"""LESA: shared multi-attention for multi-label zero-shot tagging (Huynh & Elhamifar, CVPR 2020, Sec. 4.2).

An image is cut into R grid regions f^r (the backbone's region map after one learned 2x2
convolution). M attention modules, sharing their first layer W1, each pool the regions into one
attention feature z^m (eq. 4-5). A label c is scored by the best of those features through a
bilinear compatibility with its semantic vector v^c: s^c = max_m <W3 v^c, z^m> (eq. 6, 12). Since
z does not depend on the labels, `encode` computes it once and `score` can rank any vocabulary,
unseen labels included. Training minimises eq. 14:

    L = L_rank + lambda_div L_div + lambda_rel L_rel + lambda_dist L_dist

with the ranking hinge (eq. 13), the diversity of the unnormalised attention logits (eq. 7), the
region relevance against uniform pooling (eq. 8) and the balanced use of modules (eq. 9-11).

Variants (Sec. 5.1, Table 1-2), all hyperparameter switches:
- `attentions=1`: LESA (M=1), ranking + relevance only (diversity and distribution need M > 1).
- `cluster=true`: one attention per k-means cluster of the seen label vectors (`clusters` of them,
  at most one per seen label). Each label is scored by the module of its nearest centroid: for a
  seen label that is its own cluster, for an unseen label at tag time the cluster it would join.
  Ranking + relevance only, as in the paper.
- `use_div`, `use_rel`, `use_dist`: drop single terms of eq. 14 (the Table 2 ablation).
- `stage=last`: attend over the backbone's last (stride-32) stage instead of its region map. On
  VGG19 and ResNet the two are the same map; on our own trunks (`small`, `small-resnet`, the
  bundled backbone) the region map is the stride-16 middle stage, shaped like VGG19's conv5_4, and
  the last stage is the one their pretraining classifier read: more semantic, coarser (4x4 at
  128 px). The default model mixes heads of both (docs/benchmarks.md measures why).

Deviations from the paper, and why:
- Normalisation. Every term is a per-image quantity averaged over the images of the batch (the
  paper sums over images), so the defaults do not drift with the batch size. L_rank is averaged
  over the image's present/absent pairs instead of summed: a sum grows with |Y_i| x |C_s \\ Y_i|
  (about 2,700 pairs on NUS-WIDE) and would drown the regularisers at the paper's lambdas. This
  is not what the public code does: by the reading in issue 19 it divides the summed hinge by the
  number of *violating* pairs (hinge > 0), so its ranking term does not shrink as pairs satisfy the
  margin, while ours (all pairs) does; we keep the mean over all pairs, a smooth function of the
  scores that is exactly eq. 13 up to a per-image constant. Like the public code we sum L_rel
  over the labels, which is what the tiny lambda_rel = 1e-3 is calibrated for.
  L_div sums over ordered pairs m != n as eq. 7 writes. L_dist keeps eq. 9's utility summed over
  the images *inside* the square (balance across the data, not within each image) but as a batch
  mean: l_m is the expected number of an image's labels that module m scores.
- The 2x2 convolution (the paper gives only its size) uses "same" padding (one extra row and
  column at the bottom/right, so the grid keeps its size), batch normalisation and ReLU, like the
  public implementation; its width is `feature_dim`, the backbone's region channels by default.
- Biases: W1 has one (a two-layer network, eq. 5); w2 has none, since a per-module constant in
  e^m leaves alpha^m unchanged and would only let the model lower the cosines of eq. 7 without
  moving any attention.
- `explain` returns each label's attention map divided by its peak (see its docstring).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from zstag.backbones.base import Backbone
from zstag.data.labels import LabelSet
from zstag.methods.base import Embedder, Explanation, Method
from zstag.methods.kmeans import kmeans, nearest
from zstag.methods.settings import WIDTH_LIMIT, Hyperparameters, MethodConfig, Recipe, setting


def ranking_loss(scores: torch.Tensor, targets: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Eq. 13, per image the mean of max(margin + s^o' - s^o, 0) over present o and absent o'.

    `scores` and `targets` are (B, S). Images without any present/absent pair are left out of the
    batch mean. Positives are gathered first so memory is B x (max positives) x S, not B x S x S.
    """
    present = targets > 0
    most = int(present.sum(1).max()) if targets.numel() else 0
    if most == 0:
        return scores.sum() * 0.0
    marks, idx = targets.float().topk(most, dim=1)
    valid = (marks > 0).unsqueeze(2) & ~present.unsqueeze(1)  # (B, P, S): present o, absent o'
    hinge = (margin + scores.unsqueeze(1) - scores.gather(1, idx).unsqueeze(2)).clamp_min(0)
    pairs = valid.sum((1, 2))
    per_image = (hinge * valid).sum((1, 2)) / pairs.clamp_min(1)
    has_pairs = pairs > 0
    if not bool(has_pairs.any()):
        return scores.sum() * 0.0
    return per_image[has_pairs].mean()


def diversity_loss(logits: torch.Tensor) -> torch.Tensor:
    """Eq. 7: sum over ordered pairs m != n of cos(e^m, e^n), batch mean; `logits` e is (B, M, R)."""
    unit = F.normalize(logits, dim=2, eps=1e-8)
    cos = unit @ unit.transpose(1, 2)  # (B, M, M)
    return (cos.sum((1, 2)) - cos.diagonal(dim1=1, dim2=2).sum(1)).mean()


def relevance_loss(scores: torch.Tensor, mean_scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 8: sum over seen labels of max((s_bar^o - s^o) y^o, 0), y = +1 present / -1 absent; batch mean.

    Present labels should score above uniform pooling of the regions, absent ones below it.
    """
    sign = targets * 2 - 1
    return ((mean_scores - scores) * sign).clamp_min(0).sum(1).mean()


def distribution_loss(module_scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 10 with the softmax utility of eq. 11: sum_m l_m^2, l_m averaged over the batch.

    `module_scores` is (B, M, S), <theta^o, z^m> for every module and seen label.
    """
    share = module_scores.softmax(dim=1)  # eq. 11: soft argmax over modules
    usage = (share * targets.unsqueeze(1)).sum(2).mean(0)  # (M,): l_m / B
    return usage.pow(2).sum()


class Attention(NamedTuple):
    """What the shared multi-attention computes for a batch (R = h*w regions)."""

    regions: torch.Tensor  # (B, R, F): region features f^r, the columns of F_i (eq. 3)
    logits: torch.Tensor  # (B, M, R): unnormalised weights e^m (eq. 5)
    weights: torch.Tensor  # (B, M, R): alpha^m, softmax over regions (eq. 5)
    features: torch.Tensor  # (B, M, F): attention features z^m = F alpha^m (eq. 4)
    grid: tuple[int, int]  # (h, w) of the region map


@dataclass(frozen=True)
class LESAConfig(MethodConfig):
    """LESA's architecture (Sec. 5.1), loss weights (eq. 14) and the Table 1-2 ablations."""

    attentions: int = setting(10, 1, 4096)  # M (Sec. 5.1)
    feature_dim: int = setting(
        0, 0, WIDTH_LIMIT
    )  # width of the learned 2x2 conv; 0 = the backbone's region channels (512 for VGG19)
    attention_dim: int = setting(0, 0, WIDTH_LIMIT)  # columns of the shared W1; 0 = feature_dim, as in the public code
    lambda_div: float = setting(1e-2, 0)
    lambda_rel: float = setting(1e-3, 0)
    lambda_dist: float = setting(1e-1, 0)
    margin: float = setting(1.0, 0)  # eq. 13
    use_div: bool = setting(True)
    use_rel: bool = setting(True)
    use_dist: bool = setting(True)
    cluster: bool = setting(False)  # one attention per cluster of the seen labels (Table 1)
    clusters: int = setting(10, 1, 4096)
    # The backbone map the regions come from: "region", the backbone's region map (VGG19 conv5_4,
    # the paper's), or "last", its stride-32 last stage (the same map on VGG19; see the docstring).
    stage: str = setting("region", choices=("region", "last"))


class LESA(Method[torch.Tensor]):
    """Shared multi-attention zero-shot tagger (`--method lesa`)."""

    name: ClassVar[str] = "lesa"
    # Recipe (Sec. 5.1): "default setting of RMSprop" (no momentum) at lr 0.001, batch 32,
    # lr x 0.8 whenever validation degrades, early stopping, 40 epochs on NUS-WIDE, frozen VGG.
    default_recipe: ClassVar[Recipe] = Recipe(
        optimizer="rmsprop",
        lr=1e-3,
        momentum=0.0,
        batch_size=32,
        epochs=40,
        schedule="plateau",
        lr_factor=0.8,
        early_stopping=5,
        finetune_backbone=False,
    )
    Config: ClassVar[type[LESAConfig]] = LESAConfig
    centroids: torch.Tensor  # buffer (k, D) of the cluster variant, declared so access is typed as a tensor

    def __init__(self, backbone: Backbone, seen: LabelSet, hp: Hyperparameters[LESAConfig], embed: Embedder) -> None:
        super().__init__(backbone, seen, hp, embed)
        config = hp.config
        self.cluster = config.cluster
        if self.cluster:
            k = min(config.clusters, len(seen))
            centroids, _ = kmeans(seen.vectors, k)
            self.register_buffer("centroids", centroids)
            self.attentions = k
        else:
            self.attentions = config.attentions
        self.stage = backbone.region_stage if config.stage == "region" else len(backbone.channels) - 1
        channels = backbone.channels[self.stage]
        feature_dim = config.feature_dim or channels
        attention_dim = config.attention_dim or feature_dim
        multi = self.attentions > 1 and not self.cluster  # div and dist only make sense when modules compete
        self.use_div = config.use_div and multi
        self.use_rel = config.use_rel
        self.use_dist = config.use_dist and multi
        self.lambdas = {"div": config.lambda_div, "rel": config.lambda_rel, "dist": config.lambda_dist}
        self.margin = config.margin

        self.conv = nn.Sequential(  # the extra 2x2 conv on top of the backbone (Sec. 5.1), grid kept
            nn.ZeroPad2d((0, 1, 0, 1)),
            nn.Conv2d(channels, feature_dim, kernel_size=2, bias=False),
            nn.BatchNorm2d(feature_dim),
            nn.ReLU(inplace=True),
        )
        self.hidden = nn.Linear(feature_dim, attention_dim)  # W1, shared by the M modules
        self.heads = nn.Linear(attention_dim, self.attentions, bias=False)  # columns w2^m
        self.project = nn.Linear(seen.dim, feature_dim, bias=False)  # W3: theta^c = W3 v^c (eq. 12)

    # -- the model ------------------------------------------------------------------------------

    def attend(self, images: torch.Tensor) -> Attention:
        """Region features and the M shared attentions (eq. 3-5)."""
        maps = self.conv(self.backbone.regions(images, self.stage))
        h, w = maps.shape[-2:]
        regions = maps.flatten(2).transpose(1, 2)  # (B, R, F)
        logits = self.heads(torch.tanh(self.hidden(regions))).transpose(1, 2)  # e^m = tanh(F^T W1) w2^m
        weights = logits.softmax(dim=2)  # alpha^m
        features = weights @ regions  # z^m = F alpha^m
        return Attention(regions, logits, weights, features, (h, w))

    def classifiers(self, vectors: torch.Tensor) -> torch.Tensor:
        """theta^c = W3 v^c for label vectors (L, D) -> (L, F)."""
        weight = self.project.weight
        return self.project(vectors.to(device=weight.device, dtype=weight.dtype))

    def module_scores(self, features: torch.Tensor, labels: LabelSet) -> torch.Tensor:
        """<theta^c, z^m> for every module and label: (B, M, L); theta from `prepare_labels` when there.

        Computed as (L, F) @ (F, B M) with the labels as the left operand: for 100,000 labels on a
        CPU that took 0.81 ms per image against 1.09 for einsum's choice, with equal results.
        """
        theta = labels.derived.get("lesa.theta")
        if theta is None:
            theta = self.classifiers(labels.vectors)
        scores = theta.to(features.dtype) @ features.flatten(0, 1).T  # (L, B M)
        return scores.T.unflatten(0, features.shape[:2])

    def choose(self, module_scores: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """Index (B, L) of the module that scores each label.

        Shared attention: the best responding module (the max of eq. 6). One attention per
        cluster: the module of the label's nearest centroid, whatever the image.
        """
        if not self.cluster:
            return module_scores.argmax(dim=1)
        home = nearest(vectors.to(self.centroids), self.centroids).to(module_scores.device)
        return home.unsqueeze(0).expand(module_scores.shape[0], -1)

    def select(self, module_scores: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """s^c (eq. 6, 12): each label's score from its chosen module, (B, L). For shared attention
        that is the max over modules, taken directly (4x faster than argmax + gather on a CPU for
        100,000 labels; the gradient reaches the same element)."""
        if not self.cluster:
            return module_scores.amax(dim=1)
        return module_scores.gather(1, self.choose(module_scores, vectors).unsqueeze(1)).squeeze(1)

    # -- the Method protocol --------------------------------------------------------------------

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The M attention features z (B, M, F); everything a vocabulary needs to be scored."""
        return self.attend(images).features

    @property
    def linear_in_labels(self) -> bool:
        """One module and no clusters: s^c = <W3 v^c, z> = <v^c, W3^T z> (eq. 12 with M = 1)."""
        return self.attentions == 1 and not self.cluster

    def label_directions(self, code: torch.Tensor) -> torch.Tensor:
        """W3^T z for the single module's feature z: (B, D)."""
        return code[:, 0].float() @ self.project.weight.float()

    def prepare_labels(self, labels: LabelSet) -> LabelSet:
        """theta = W3 v for the whole vocabulary, once: for 100,000 labels that projection cost as
        much as the scoring itself when it was redone for every batch (docs/performance.md)."""
        return labels.with_derived(**{"lesa.theta": self.classifiers(labels.vectors)})

    def score(self, code: torch.Tensor, labels: LabelSet) -> torch.Tensor:
        return self.select(self.module_scores(code, labels), labels.vectors)

    def loss(
        self, images: torch.Tensor, targets: torch.Tensor, seen: LabelSet
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 14 on a batch; the parts are reported unweighted, the total weighted."""
        att = self.attend(images)
        theta = self.classifiers(seen.vectors).to(att.features.dtype)
        per_module = torch.einsum("bmf,sf->bms", att.features, theta)
        scores = self.select(per_module, seen.vectors)
        targets = targets.to(scores.dtype)
        parts = {"rank": ranking_loss(scores, targets, self.margin)}
        if self.use_div:
            parts["div"] = diversity_loss(att.logits)
        if self.use_rel:
            mean_scores = att.regions.mean(1) @ theta.T  # s_bar^o = (1/R) sum_r <theta^o, f^r>, by linearity
            parts["rel"] = relevance_loss(scores, mean_scores, targets)
        if self.use_dist:
            parts["dist"] = distribution_loss(per_module, targets)
        total = parts["rank"] + sum(self.lambdas[k] * v for k, v in parts.items() if k != "rank")
        return total, {k: float(v.detach()) for k, v in parts.items()}

    @torch.no_grad()
    def explain(self, images: torch.Tensor, labels: LabelSet) -> Explanation:
        """Attention maps (B, L, h, w) in [0, 1]: alpha of the module that scores each label.

        Each map is divided by its largest weight, so the region the label is read from shows as
        1; the raw alpha sums to 1 over the R regions and would be too faint to draw at 14x14.
        """
        att = self.attend(images)
        chosen = self.choose(self.module_scores(att.features, labels), labels.vectors)  # (B, L)
        maps = att.weights.gather(1, chosen.unsqueeze(2).expand(-1, -1, att.weights.shape[2]))  # (B, L, R)
        maps = maps / maps.amax(dim=2, keepdim=True)
        return Explanation(maps=maps.unflatten(2, att.grid))
