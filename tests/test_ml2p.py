"""(ML)^2P-Encoder / C^3-MLZSL: the equations on hand-made cases, the switches, and learning."""

from __future__ import annotations

import math

import pytest
import synth
import torch
import torch.nn.functional as F
from torch import nn

from zstag.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Backbone
from zstag.backbones.small import SmallBackbone
from zstag.data.labels import LabelSet
from zstag.methods.ml2p import (
    ML2P,
    ChannelAttention,
    GroupAttention,
    hard_sample_weight,
    ranknet_loss,
    variance_regulariser,
)


class TinyBackbone(Backbone):
    """Three 1x1 convolutions over average-pooled pixels: stages at strides 8/16/32, any widths."""

    name = "tiny"

    def __init__(self, channels: tuple[int, int, int] = (4, 6, 8)) -> None:
        super().__init__()
        self.channels = channels
        self.convs = nn.ModuleList(nn.Conv2d(3, c, 1) for c in channels)

    def feature_maps(self, images: torch.Tensor):
        return (conv(F.avg_pool2d(images, s)) for conv, s in zip(self.convs, (8, 16, 32)))


def make(dim: int = 6, backbone: Backbone | None = None, n_labels: int = 5, **overrides) -> tuple[ML2P, LabelSet]:
    torch.manual_seed(0)
    labels = LabelSet([f"l{i}" for i in range(n_labels)], synth.random_label_vectors(n_labels, dim))
    hp = ML2P.hyperparameters({"groups": 3, "grid": 2, **overrides})
    return ML2P(backbone or TinyBackbone(), labels, hp, embed=None), labels


def test_shapes_scores_and_explain():
    model, labels = make(dim=16, backbone=SmallBackbone(), n_labels=7)
    images = torch.randn(2, 3, 64, 64)
    code = model.encode(images)
    assert code.shape == (2, 3, 16)
    scores = model.score(code, labels)
    assert scores.shape == (2, 7)
    # Chunkable: scoring a slice of the vocabulary gives the slice of the scores.
    assert torch.allclose(model.score(code, labels.subset(slice(2, 5))), scores[:, 2:5])
    maps = model.explain(images, labels).maps
    assert maps.shape == (2, 7, 2, 2)
    assert maps.min() >= 0 and maps.max() <= 1
    total, parts = model.loss(images, torch.tensor([[1.0, 0, 0, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0]]), labels)
    assert total.ndim == 0 and set(parts) == {"rank", "reg", "omega"}
    total.backward()
    assert model.backbone.stage3[0].weight.grad is not None  # trains end to end


def test_any_channel_counts_and_dimensions():
    for channels, dim in [((5, 7, 11), 9), ((16, 16, 16), 16)]:
        model, labels = make(dim=dim, backbone=TinyBackbone(channels))
        assert model.encode(torch.randn(1, 3, 64, 64)).shape == (1, 3, dim)


def test_default_recipe_matches_the_paper():
    hp = ML2P.hyperparameters().flat()
    assert (hp["optimizer"], hp["lr"], hp["weight_decay"], hp["batch_size"], hp["epochs"]) == (
        "adam",
        5e-5,
        4e-3,
        48,
        20,
    )
    assert (hp["schedule"], hp["lr_milestones"], hp["lr_factor"]) == ("step", [7], 0.1)
    assert (hp["groups"], hp["reg_weight"], hp["finetune_backbone"]) == (7, 0.4, True)


def test_channel_attention_hand_made():
    """Q = K = V = x (identity 1x1 convolutions): out = x + x R, R = softmax over columns of x^T x / sqrt(N)."""
    att = ChannelAttention(groups=1, dim=2)
    with torch.no_grad():
        att.qkv.weight.copy_(torch.cat([torch.eye(2)] * 3, dim=1)[None])
        att.qkv.bias.zero_()
    x = torch.tensor([[1.0, 2.0], [0.0, 1.0]])  # N = 2 positions, d = 2 channels
    # x^T x = [[1, 2], [2, 5]]; each column of R is a softmax over the value channels it mixes.
    c0 = [math.exp(1 / math.sqrt(2)), math.exp(2 / math.sqrt(2))]
    c1 = [math.exp(2 / math.sqrt(2)), math.exp(5 / math.sqrt(2))]
    r = torch.tensor([[c0[0] / sum(c0), c1[0] / sum(c1)], [c0[1] / sum(c0), c1[1] / sum(c1)]])
    expected = x + x @ r
    out = att(x[None, None])[0, 0]
    assert torch.allclose(out, expected, atol=1e-6)
    # With V = all ones every output channel receives exactly 1: R's columns sum to one.
    with torch.no_grad():
        att.qkv.weight[0, :, 4:] = 0
        att.qkv.bias[0, 4:] = 1
    assert torch.allclose(att(x[None, None])[0, 0], x + 1, atol=1e-6)


def test_group_attention_hand_made():
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    # Q_x K_x^T = X X^T / sqrt(2) = diag(1, 4) / sqrt(2) with identity W_x^Q, W_x^K.
    attention = torch.tensor([[[1.0, 0.0], [0.0, 8.0]]]) / math.sqrt(2)
    for residual, expected in [(False, attention), (True, x + attention)]:
        ga = GroupAttention(dim=2, residual=residual)
        with torch.no_grad():
            for layer in (ga.query, ga.key):
                layer.weight.copy_(torch.eye(2))
                layer.bias.zero_()
        assert torch.allclose(ga(x), expected)


def test_residual_group_attention_starts_as_the_identity():
    x = torch.randn(2, 7, 5)
    assert torch.equal(GroupAttention(dim=5)(x), x)
    assert not torch.allclose(GroupAttention(dim=5, residual=False)(x), x)
    literal, _ = make(dim=6, group_residual=False)
    assert literal.group_attention.residual is False


def test_score_is_max_over_rows():
    model, _ = make(dim=2)
    code = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    labels = LabelSet(["a", "b", "c"], torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
    assert torch.allclose(model.score(code, labels), torch.tensor([[1.0, 2.0, 1.6]]))


def test_grouping_follows_the_saved_shuffle():
    """Stacked channels 4 + 6 + 8 = 18 = g * d: no projection; group k holds channels shuffle[6k:6k+6]."""
    model, _ = make(dim=6)
    assert isinstance(model.project, nn.Identity)
    perm = model.shuffle
    assert sorted(perm.tolist()) == list(range(18)) and perm.tolist() != list(range(18))
    images = torch.randn(2, 3, 64, 64)
    stacked = torch.cat([F.adaptive_max_pool2d(s, 2) for s in model.backbone.stages(images)], dim=1)  # (2, 18, 2, 2)
    tokens = model.group_tokens(images)  # (B, g, N, d)
    for k in range(3):
        for j in range(6):
            assert torch.equal(tokens[:, k, :, j], stacked[:, perm[6 * k + j]].reshape(2, 4))
    # The shuffle is a saved buffer: a model built with another seed reproduces it after loading.
    assert "shuffle" in model.state_dict()
    other, _ = make(dim=6, shuffle_seed=1)
    assert not torch.equal(other.shuffle, perm)
    other.load_state_dict(model.state_dict())
    model.eval(), other.eval()
    assert torch.equal(other.encode(images), model.encode(images))


def test_forward_pyramid_pools_to_the_grid():
    """Each pooled cell is the max of its block: 8x8 -> 2x2 takes 4x4 blocks."""
    model, _ = make(dim=6)
    images = torch.randn(1, 3, 64, 64)
    first = model.backbone.stages(images)[0]  # (1, 4, 8, 8)
    stacked = torch.cat([F.adaptive_max_pool2d(s, 2) for s in model.backbone.stages(images)], dim=1)
    assert torch.equal(stacked[0, :4, 1, 0], first[0, :, 4:, :4].amax(dim=(1, 2)))


def test_ablation_switches_change_the_architecture():
    full, _ = make(dim=6, backbone=TinyBackbone((4, 6, 8)))
    names = {n.split(".")[0] for n, _ in full.named_parameters()}
    assert {"encoder", "group_attention"} <= names
    # pyramid off: only the last stage (8 channels) is projected to g * d = 18.
    no_pyramid, _ = make(dim=6, pyramid=False)
    assert no_pyramid.project.in_channels == 8
    assert no_pyramid.group_tokens(torch.randn(1, 3, 64, 64)).shape == (1, 3, 4, 6)
    images = torch.randn(2, 3, 64, 64)
    # encoder off: the group vectors are the max over space of the grouped features.
    no_encoder, _ = make(dim=6, encoder=False)
    assert no_encoder.encoder is None
    x = no_encoder.group_tokens(images).amax(dim=2)
    assert torch.allclose(no_encoder.encode(images), no_encoder.group_attention(x))
    # group attention off: S = X.
    no_ga, _ = make(dim=6, group_attention=False)
    assert no_ga.group_attention is None
    assert torch.allclose(no_ga.encode(images), no_ga.encoder.maps(no_ga.group_tokens(images)).amax(dim=2))
    # Table 3 model 'a': shuffle and grouping only.
    bare, _ = make(dim=6, pyramid=False, encoder=False, group_attention=False)
    assert [n for n, _ in bare.named_parameters() if not n.startswith("backbone")] == ["project.weight", "project.bias"]
    assert torch.equal(bare.encode(images), bare.group_tokens(images).amax(dim=2))


def test_ranknet_loss_against_a_loop():
    scores = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 3.0, 0.0, 1.0], [2.0, 0.0, -1.0, 0.5]])
    targets = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 1, 1]])
    expected = []
    for s, t in zip(scores.tolist(), targets.tolist()):
        pos = [j for j, y in enumerate(t) if y]
        neg = [i for i, y in enumerate(t) if not y]
        pairs = [math.log(1 + math.exp(s[i] - s[j])) for j in pos for i in neg]
        expected.append(sum(pairs) / len(pairs) if pairs else 0.0)
    assert torch.allclose(ranknet_loss(scores, targets), torch.tensor(expected), atol=1e-6)
    assert expected[0] == pytest.approx(
        (
            math.log(1 + math.exp(-1.5))
            + math.log(1 + math.exp(-0.5))
            + math.log(1 + math.exp(-3))
            + math.log(1 + math.exp(-2))
        )
        / 4
    )


def test_omega_is_one_plus_the_variances_of_the_positive_vectors():
    vectors = torch.tensor([[1.0, 0, 0, 0], [0.5, 0.5, 0.5, 0.5], [0.6, 0.8, 0, 0]])
    # Population variances of the entries: 1/4 - 1/16, 0, 1/4 - 0.35^2.
    targets = torch.tensor([[1.0, 1, 0], [1, 0, 1], [0, 0, 0]])
    assert torch.allclose(hard_sample_weight(targets, vectors), torch.tensor([1.1875, 1.315, 1.0]))


def test_total_loss_against_a_loop():
    model, labels = make(dim=6, reg_weight=0.3)
    images = torch.randn(3, 3, 64, 64)
    targets = torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0]])
    total, parts = model.loss(images, targets, labels)
    code = model.encode(images).detach()
    vec = labels.vectors
    terms = []
    for b in range(3):
        s = [max(float(code[b, n] @ vec[l]) for n in range(3)) for l in range(5)]
        pos = [j for j in range(5) if targets[b, j]]
        neg = [i for i in range(5) if not targets[b, i]]
        pairs = [math.log1p(math.exp(s[i] - s[j])) for j in pos for i in neg]
        rank = sum(pairs) / len(pairs) if pairs else 0.0

        def pvar(v: list[float]) -> float:
            m = sum(v) / len(v)
            return sum((e - m) ** 2 for e in v) / len(v)

        omega = 1 + sum(pvar(vec[j].tolist()) for j in pos)
        reg = sum(pvar(code[b, n].tolist()) for n in range(3))  # eq. 11, per image
        terms.append(0.7 * omega * rank + 0.3 * reg)
    assert float(total.detach()) == pytest.approx(sum(terms) / 3, rel=1e-5)
    assert parts["reg"] == pytest.approx(float(variance_regulariser(code).mean()), rel=1e-5)


def test_explain_uses_the_scoring_row():
    """Model 'a' (no encoder, no attention): the map of label l is <token of group n*, v_l> per position."""
    model, labels = make(dim=6, pyramid=True, encoder=False, group_attention=False)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = model.group_tokens(images)  # (B, g, N, d)
    maps = model.explain(images, labels).maps
    for b in range(2):
        for l in range(len(labels)):
            v = labels.vectors[l]
            best = max(range(3), key=lambda n: float(tokens[b, n].amax(dim=0) @ v))
            r = tokens[b, best] @ v
            expected = (r - r.min()) / (r.max() - r.min())
            assert torch.allclose(maps[b, l].flatten(), expected, atol=1e-5)


def _normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


STEPS = 80  # Adam steps of batch 32: about 1 TFLOP of training, well under 40 s on two cores
MARGIN = 0.08  # over the mAP of random scores (about 0.18 here); the model reaches about 0.29


def test_learns_synthetic_shapes():
    """From scratch with the paper's loss (lambda = 0.4), held-out mAP clearly beats random scores."""
    torch.manual_seed(0)
    train_x, train_y = synth.make_tensors(384, size=64, seed=1)
    test_x, test_y = synth.make_tensors(96, size=64, seed=2)
    train_x, test_x = _normalise(train_x), _normalise(test_x)
    labels = LabelSet(synth.LABELS, synth.random_label_vectors(len(synth.LABELS), 32))
    hp = ML2P.hyperparameters({"grid": 2, "finetune_backbone": True})
    model = ML2P(SmallBackbone(), labels, hp, embed=None)
    synth.fit(model, labels, train_x, train_y, steps=STEPS)
    with torch.no_grad():
        scores = model(test_x, labels)
    random_map = synth.mean_ap(torch.rand(scores.shape, generator=torch.Generator().manual_seed(0)), test_y)
    assert synth.mean_ap(scores, test_y) > random_map + MARGIN
