"""LESA (zstag/methods/lesa.py): each equation pinned on tiny hand-made tensors, the variants,
and a short from-scratch training run on the synthetic shapes."""

from __future__ import annotations

import math

import pytest
import synth
import torch

from zstag.backbones.base import IMAGENET_MEAN, IMAGENET_STD
from zstag.backbones.small import SmallBackbone
from zstag.core.errors import UsageError
from zstag.data.labels import LabelSet
from zstag.methods.kmeans import kmeans, nearest
from zstag.methods.lesa import LESA, distribution_loss, diversity_loss, ranking_loss, relevance_loss

DIM = 16


def make(overrides: dict | None = None, seen: LabelSet | None = None, seed: int = 0) -> LESA:
    torch.manual_seed(seed)
    seen = seen or seen_labels()
    return LESA(SmallBackbone(), seen, LESA.hyperparameters(overrides), embed=None)


def seen_labels(dim: int = DIM) -> LabelSet:
    return LabelSet(list(synth.LABELS), synth.random_label_vectors(len(synth.LABELS), dim))


def normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


@pytest.fixture
def one_thread():
    """Train on one thread: on the shared 2-core machine, two spinning threads per test process
    are several times slower than one when other processes compete for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    images, targets = synth.make_tensors(4, size=64, seed=3)
    return normalise(images), targets


# -- shapes and defaults -----------------------------------------------------------------------


def test_shapes_and_defaults(batch):
    images, targets = batch
    seen = seen_labels()
    model = make(seen=seen)
    assert model.attentions == 10
    assert model.conv[1].out_channels == SmallBackbone.channels[1]  # feature_dim = region channels
    assert model.hidden.out_features == model.hidden.in_features  # attention_dim = feature_dim
    z = model.encode(images)
    assert z.shape == (4, 10, 256)
    assert model.score(z, seen).shape == (4, len(seen))
    att = model.attend(images)
    assert att.grid == (4, 4)  # 64 px / stride 16, kept by the padded 2x2 conv
    assert att.logits.shape == att.weights.shape == (4, 10, 16)
    total, parts = model.loss(images, targets, seen)
    assert total.ndim == 0 and set(parts) == {"rank", "div", "rel", "dist"}
    hp = LESA.hyperparameters().flat()
    assert (hp["optimizer"], hp["lr"], hp["batch_size"], hp["lr_factor"]) == ("rmsprop", 1e-3, 32, 0.8)
    assert (hp["lambda_div"], hp["lambda_rel"], hp["lambda_dist"]) == (1e-2, 1e-3, 1e-1)
    assert hp["finetune_backbone"] is False and hp["early_stopping"] > 0


def test_explicit_dimensions(batch):
    model = make({"feature_dim": 64, "attention_dim": 8, "attentions": 3})
    assert model.encode(batch[0]).shape == (4, 3, 64)
    assert model.hidden.out_features == 8


# -- eq. 4-6, 12: attention and scores -------------------------------------------------------------


def test_stage_last_attends_over_the_last_stage(batch):
    """`stage=last` takes the regions from the stride-32 stage (on our trunks the region map is the
    stride-16 middle one): the 2x2 conv reads that stage's channels and the grid is its size."""
    images = batch[0][:2]
    model = make({"stage": "last", "attentions": 2}).eval()
    assert model.conv[1].in_channels == model.conv[1].out_channels == SmallBackbone.channels[2]
    with torch.no_grad():
        att = model.attend(images)
        expected = model.conv(model.backbone.stages(images)[2]).flatten(2).transpose(1, 2)
    assert att.grid == (2, 2)  # 64 px / stride 32
    torch.testing.assert_close(att.regions, expected)
    with pytest.raises(UsageError, match="stage"):
        LESA.hyperparameters({"stage": "first"})


def test_attention_matches_eq_4_5(batch):
    model = make({"attentions": 3})
    images = batch[0][:2]
    att = model.attend(images)
    maps = model.conv(model.backbone.regions(images))
    W1, b1, W2 = model.hidden.weight, model.hidden.bias, model.heads.weight
    for i in range(2):
        Fi = maps[i].flatten(1)  # (F, R): columns are regions, as in eq. 3
        e = (torch.tanh(Fi.T @ W1.T + b1) @ W2.T).T  # (M, R)
        alpha = torch.exp(e) / torch.exp(e).sum(1, keepdim=True)
        torch.testing.assert_close(att.logits[i], e, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(att.weights[i], alpha, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(att.features[i], (Fi @ alpha.T).T, rtol=1e-4, atol=1e-5)


def test_score_is_max_over_modules_of_bilinear(batch):
    seen = seen_labels()
    model = make({"attentions": 4}, seen=seen)
    with torch.no_grad():
        z = model.encode(batch[0])
        scores = model.score(z, seen)
    W3 = model.project.weight.detach()
    for i in range(z.shape[0]):
        for c in range(len(seen)):
            expected = max(float((W3 @ seen.vectors[c]) @ z[i, m]) for m in range(4))
            assert math.isclose(float(scores[i, c]), expected, rel_tol=1e-4, abs_tol=1e-5)


def test_score_scores_any_vocabulary_in_chunks(batch):
    seen = seen_labels()
    model = make(seen=seen)
    z = model.encode(batch[0])
    unseen = LabelSet(["a", "b", "c"], synth.random_label_vectors(3, DIM, seed=7))
    both = LabelSet(seen.names + unseen.names, torch.cat([seen.vectors, unseen.vectors]))
    full = model.score(z, both)
    assert LESA.chunkable
    torch.testing.assert_close(full[:, -3:], model.score(z, unseen))
    torch.testing.assert_close(full[:, :5], model.score(z, both.subset(slice(0, 5))))


@pytest.mark.parametrize("overrides", [{}, {"cluster": True, "clusters": 2}])
def test_prepared_labels_score_the_same_without_the_projection(batch, overrides, monkeypatch):
    """prepare_labels computes theta = W3 v once; scoring prepared labels (or slices of them) gives
    the scores of unprepared ones and never projects again."""
    seen = seen_labels()
    model = make(overrides, seen=seen).eval()
    vocab = LabelSet([f"v{i}" for i in range(7)], synth.random_label_vectors(7, DIM, seed=11))
    with torch.no_grad():
        z = model.encode(batch[0])
        plain = model.score(z, vocab)
        prepared = model.prepare_labels(vocab)
        assert set(prepared.derived) == {"lesa.theta"} and prepared.derived["lesa.theta"].shape == (
            7,
            model.project.out_features,
        )
        monkeypatch.setattr(model, "classifiers", lambda vectors: pytest.fail("projected again"))
        torch.testing.assert_close(model.score(z, prepared), plain)
        torch.testing.assert_close(model.score(z, prepared.subset(slice(2, 5))), plain[:, 2:5])
        torch.testing.assert_close(model.score(z, prepared.subset([6, 0])), plain[:, [6, 0]])


# -- eq. 13: ranking -----------------------------------------------------------------------------


def test_ranking_loss_hand_case():
    scores = torch.tensor([[2.0, 0.5, 1.0], [2.0, 0.5, 1.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # image 0: present 2.0 beats both absent scores by >= 1 -> 0.
    # image 1: pairs (0.5 vs 2.0): 1 + 2 - 0.5 = 2.5, (0.5 vs 1.0): 1 + 1 - 0.5 = 1.5 -> mean 2.
    assert float(ranking_loss(scores, targets)) == pytest.approx((0.0 + 2.0) / 2)
    assert float(ranking_loss(scores[1:], targets[1:], margin=0.0)) == pytest.approx((1.5 + 0.5) / 2)


def test_ranking_loss_equals_brute_force_double_loop():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(5, 7, generator=g) * 2
    targets = (torch.rand(5, 7, generator=g) < 0.35).float()
    targets[3] = 0  # no present label: no pairs, left out of the mean
    targets[4] = 1  # no absent label: likewise
    targets[0, :3] = torch.tensor([1.0, 1.0, 0.0])
    per_image = []
    for i in range(5):
        pos = [o for o in range(7) if targets[i, o] == 1]
        neg = [o for o in range(7) if targets[i, o] == 0]
        if pos and neg:
            pairs = [max(1 + float(scores[i, n]) - float(scores[i, p]), 0.0) for p in pos for n in neg]
            per_image.append(sum(pairs) / len(pairs))
    assert float(ranking_loss(scores, targets)) == pytest.approx(sum(per_image) / len(per_image), rel=1e-5)


def test_ranking_loss_without_pairs_is_zero_with_graph():
    scores = torch.randn(2, 3, requires_grad=True)
    loss = ranking_loss(scores, torch.zeros(2, 3))
    assert float(loss.detach()) == 0.0 and loss.requires_grad


# -- eq. 7: diversity ----------------------------------------------------------------------------


def test_diversity_is_sum_of_off_diagonal_cosines():
    e = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]]])  # unnormalised on purpose
    # cos(1,2) = 0, cos(1,3) = cos(2,3) = 1/sqrt(2); ordered pairs m != n count each twice.
    assert float(diversity_loss(e)) == pytest.approx(2 * (0 + 2 / math.sqrt(2)))
    same = torch.tensor([[[1.0, 2.0], [3.0, 6.0]], [[1.0, 0.0], [-1.0, 0.0]]])
    assert float(diversity_loss(same)) == pytest.approx((2.0 + -2.0) / 2, abs=1e-6)  # batch mean


# -- eq. 8: relevance ----------------------------------------------------------------------------


def test_relevance_sign_convention():
    scores = torch.tensor([[3.0, 1.0, 3.0, 1.0]])
    mean_scores = torch.tensor([[2.0, 2.0, 2.0, 2.0]])
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    # present above the mean: 0; present below: 2 - 1 = 1; absent above: 3 - 2 = 1; absent below: 0.
    assert float(relevance_loss(scores, mean_scores, targets)) == pytest.approx(2.0)
    assert float(relevance_loss(scores[:, [0, 3]], mean_scores[:, [0, 3]], targets[:, [0, 3]])) == 0.0


def test_mean_region_score_is_average_over_regions(batch):
    """s_bar^o in eq. 8 is (1/R) sum_r <theta^o, f^r>; the model computes it by linearity."""
    seen = seen_labels()
    model = make(seen=seen)
    att = model.attend(batch[0][:1])
    theta = model.classifiers(seen.vectors)
    per_region = att.regions[0] @ theta.T  # (R, S)
    torch.testing.assert_close(att.regions[0].mean(0) @ theta.T, per_region.mean(0), rtol=1e-4, atol=1e-5)


# -- eq. 9-11: distribution ----------------------------------------------------------------------


def test_distribution_loss_matches_definition():
    module_scores = torch.tensor(
        [[[0.0, 1.0, 2.0], [1.0, 1.0, 0.0]], [[3.0, 0.0, 0.0], [0.0, 0.0, 1.0]]]
    )  # (B=2, M=2, S=3)
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    usage = [0.0, 0.0]
    for i in range(2):
        for o in range(3):
            if targets[i, o]:
                ex = [math.exp(float(module_scores[i, m, o])) for m in range(2)]
                for m in range(2):
                    usage[m] += ex[m] / sum(ex) / 2  # eq. 11, averaged over the batch
    expected = sum(u * u for u in usage)  # eq. 10
    assert float(distribution_loss(module_scores, targets)) == pytest.approx(expected, rel=1e-6)


def test_distribution_loss_counts_argmax_when_scores_are_far_apart():
    """With well separated scores the softmax of eq. 11 is the indicator of eq. 9."""
    module_scores = torch.tensor([[[50.0, 0.0, 0.0], [0.0, 50.0, 50.0]]])  # labels 1, 2 use module 1
    targets = torch.ones(1, 3)
    assert float(distribution_loss(module_scores, targets)) == pytest.approx(1.0**2 + 2.0**2, rel=1e-6)
    balanced = torch.tensor([[[50.0, 0.0], [0.0, 50.0]]])
    assert float(distribution_loss(balanced, torch.ones(1, 2))) < float(
        distribution_loss(module_scores[:, :, 1:], torch.ones(1, 2))
    )


# -- eq. 14 and switches -------------------------------------------------------------------------


def test_total_is_weighted_sum_and_switches_drop_terms(batch):
    images, targets = batch
    seen = seen_labels()
    model = make(seen=seen)  # train-mode batch norm: outputs depend on the batch only, so passes agree
    total, parts = model.loss(images, targets, seen)
    expected = parts["rank"] + 1e-2 * parts["div"] + 1e-3 * parts["rel"] + 1e-1 * parts["dist"]
    assert float(total.detach()) == pytest.approx(expected, rel=1e-5)
    for term in ("div", "rel", "dist"):
        ablated = make({f"use_{term}": False}, seen=seen)
        ablated.load_state_dict(model.state_dict())
        total_a, parts_a = ablated.loss(images, targets, seen)
        assert term not in parts_a
        assert float(total_a.detach()) == pytest.approx(
            float(total.detach()) - model.lambdas[term] * parts[term], rel=1e-5
        )


def test_single_attention_turns_off_div_and_dist(batch):
    images, targets = batch
    seen = seen_labels()
    model = make({"attentions": 1}, seen=seen)
    _, parts = model.loss(images, targets, seen)
    assert set(parts) == {"rank", "rel"}
    z = model.encode(images)
    assert z.shape[1] == 1
    torch.testing.assert_close(model.score(z, seen), (z[:, 0] @ model.classifiers(seen.vectors).T))


def test_gradients_reach_every_part_and_backbone_when_finetuned(batch):
    images, targets = batch
    seen = seen_labels()
    model = make({"finetune_backbone": True}, seen=seen)
    total, _ = model.loss(images, targets, seen)
    total.backward()
    for name in ("conv.1.weight", "hidden.weight", "heads.weight", "project.weight", "backbone.stage4.0.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name


def test_frozen_backbone_still_trains_the_head(batch):
    images, targets = batch
    seen = seen_labels()
    model = make(seen=seen)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    model.backbone.eval()
    total, _ = model.loss(images, targets, seen)
    total.backward()
    assert model.project.weight.grad is not None
    assert all(p.grad is None for p in model.backbone.parameters())


# -- one attention per cluster ---------------------------------------------------------------------


def test_kmeans_is_deterministic_and_finds_clear_groups():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[5.0, 0.0], [0.0, 5.0], [-5.0, -5.0]])
    points = torch.cat([c + 0.1 * torch.randn(6, 2, generator=g) for c in centres])
    cents, assign = kmeans(points, 3)
    again, assign2 = kmeans(points, 3)
    assert torch.equal(cents, again) and torch.equal(assign, assign2)
    groups = assign.view(3, 6)
    assert all(len(set(row.tolist())) == 1 for row in groups) and len(set(groups[:, 0].tolist())) == 3
    for k in range(3):
        torch.testing.assert_close(cents[k], points[assign == k].mean(0))
    assert torch.equal(nearest(points, cents), assign)
    with pytest.raises(ValueError):
        kmeans(points, 19)


def test_cluster_variant_scores_each_label_with_its_cluster_module(batch):
    images, targets = batch
    seen = seen_labels()
    model = make({"cluster": True, "clusters": 4}, seen=seen)
    assert model.attentions == 4 and "centroids" in model.state_dict()
    centroids, assign = kmeans(seen.vectors, 4)
    torch.testing.assert_close(model.centroids, centroids)
    z = model.encode(images)
    theta = model.classifiers(seen.vectors)
    expected = torch.stack([z[:, int(assign[c])] @ theta[c] for c in range(len(seen))], dim=1)
    torch.testing.assert_close(model.score(z, seen), expected)
    # An unseen label uses the module of its nearest centroid.
    v = centroids[2] + 0.01 * synth.random_label_vectors(1, DIM, seed=5)[0]
    unseen = LabelSet(["new"], v.unsqueeze(0))
    torch.testing.assert_close(model.score(z, unseen)[:, 0], z[:, 2] @ model.classifiers(unseen.vectors)[0])
    _, parts = model.loss(images, targets, seen)
    assert set(parts) == {"rank", "rel"}


def test_cluster_count_is_capped_by_seen_labels_and_survives_reload():
    seen = LabelSet(["a", "b", "c"], synth.random_label_vectors(3, DIM))
    model = make({"cluster": True, "clusters": 10}, seen=seen)
    assert model.attentions == 3
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["centroids"] += 1.0  # whatever was saved wins over the construction-time k-means
    rebuilt = make({"cluster": True, "clusters": 10}, seen=seen, seed=1)
    rebuilt.load_state_dict(state)
    torch.testing.assert_close(rebuilt.centroids, model.centroids + 1.0)


@pytest.mark.parametrize("value", [0, 10**9, 2.0, True, "3"])
def test_rejects_bad_attentions_before_allocating(value):
    with pytest.raises(UsageError, match="'attentions'"):
        make({"attentions": value})


# -- explain -------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, {"cluster": True, "clusters": 3}])
def test_explain_returns_the_scoring_modules_attention(batch, overrides):
    images = batch[0][:2]
    seen = seen_labels()
    model = make(overrides, seen=seen)
    maps = model.explain(images, seen).maps
    assert maps.shape == (2, len(seen), 4, 4)
    assert float(maps.min()) >= 0 and torch.allclose(maps.flatten(2).amax(2), torch.ones(2, len(seen)))
    att = model.attend(images)
    per_module = model.module_scores(att.features, seen)
    scores = model.score(att.features, seen)
    for i in range(2):
        for c in range(len(seen)):
            m = [k for k in range(model.attentions) if torch.isclose(per_module[i, k, c], scores[i, c])][0]
            alpha = att.weights[i, m]
            torch.testing.assert_close(maps[i, c].flatten(), alpha / alpha.max())


# -- learning --------------------------------------------------------------------------------------


def test_learns_synthetic_tags_from_scratch(one_thread):
    """Eighty Adam steps from random weights must rank held-out images far above chance."""
    torch.manual_seed(0)
    seen = LabelSet(list(synth.LABELS), synth.random_label_vectors(len(synth.LABELS), 32))
    train_x, train_y = synth.make_tensors(192, size=64, seed=1)
    test_x, test_y = synth.make_tensors(96, size=64, seed=2)
    train_x, test_x = normalise(train_x), normalise(test_x)
    model = LESA(SmallBackbone(), seen, LESA.hyperparameters({"finetune_backbone": True}), embed=None)
    synth.fit(model, seen, train_x, train_y, steps=80)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        learned = synth.mean_ap(model(test_x, seen), test_y)
    chance = sum(synth.mean_ap(torch.rand(test_y.shape, generator=g), test_y) for _ in range(5)) / 5
    assert learned > chance + 0.15, (learned, chance)


@pytest.mark.slow
def test_transfers_to_unseen_labels_through_semantic_vectors(one_thread):
    """Zero-shot: labels are "<colour> <shape>" vectors; unseen combinations must rank above chance."""
    colours, shapes = list(synth.COLOURS), list(synth.SHAPES)

    def vector(label: str) -> torch.Tensor:
        colour, shape = label.split(" ")
        v = torch.zeros(len(colours) + len(shapes))
        v[colours.index(colour)] = v[len(colours) + shapes.index(shape)] = 1.0
        return v / v.norm()

    vocab = LabelSet(list(synth.LABELS), torch.stack([vector(label) for label in synth.LABELS]))
    seen_idx = [i for i, label in enumerate(synth.LABELS) if label not in synth.UNSEEN]
    unseen_idx = [i for i, label in enumerate(synth.LABELS) if label in synth.UNSEEN]
    seen, unseen = vocab.subset(seen_idx), vocab.subset(unseen_idx)
    torch.manual_seed(0)
    train_x, train_y = synth.make_tensors(256, size=64, seed=1)
    test_x, test_y = synth.make_tensors(128, size=64, seed=2)
    train_x, test_x = normalise(train_x), normalise(test_x)
    model = LESA(SmallBackbone(), seen, LESA.hyperparameters({"finetune_backbone": True}), embed=None)
    synth.fit(model, seen, train_x, train_y[:, seen_idx], steps=150)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        learned = synth.mean_ap(model(test_x, unseen), test_y[:, unseen_idx])
    chance = (
        sum(synth.mean_ap(torch.rand(len(test_x), len(unseen), generator=g), test_y[:, unseen_idx]) for _ in range(5))
        / 5
    )
    assert learned > chance + 0.08, (learned, chance)
