"""SGMA (`--method sgma`): the paper's pieces on hand-made tensors, shapes, both protocols, learning."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import synth
import torch
import torch.nn.functional as F

from zstag.backbones.base import IMAGENET_MEAN, IMAGENET_STD
from zstag.backbones.small import SmallBackbone
from zstag.core.errors import UsageError
from zstag.data.labels import LabelSet
from zstag.methods.sgma import (
    SGMA,
    boxcar_mask,
    center_triplet_loss,
    compactness_loss,
    crop_parts,
    diversity_loss,
    ridge_map,
    to_pixels,
)

DIM = 32
MEAN = torch.tensor(IMAGENET_MEAN)[:, None, None]
STD = torch.tensor(IMAGENET_STD)[:, None, None]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on the shared 2-core test machine two threads spin against each other
    and the learning tests take minutes instead of seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _seen() -> LabelSet:
    return LabelSet(list(synth.LABELS), synth.random_label_vectors(len(synth.LABELS), DIM))


def _model(**overrides) -> SGMA:
    torch.manual_seed(0)
    hp = SGMA.hyperparameters({"finetune_backbone": True, "crop_grid": 8, "warmup_steps": 40, **overrides})
    return SGMA(SmallBackbone(), _seen(), hp, lambda names: _seen())


def _images(n: int, seed: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = synth.make_tensors(n, size=size, seed=seed)
    return (x - MEAN) / STD, y


def _single_object_images(n: int, seed: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Images holding exactly one object each, with one-hot targets."""
    rng = random.Random(seed)
    images, targets = [], torch.zeros(n, len(synth.LABELS))
    for i in range(n):
        label = rng.choice(synth.LABELS)
        picture = synth.draw_image([label], size, rng)
        images.append(torch.from_numpy(np.array(picture)).permute(2, 0, 1).float() / 255)
        targets[i, synth.LABELS.index(label)] = 1
    return (torch.stack(images) - MEAN) / STD, targets


# -- eq. 8: the boxcar mask and the crop ------------------------------------------------------------


def test_boxcar_mask_matches_the_formula_inside_outside_and_on_the_border():
    k = 10.0
    # Centre 10.5, side 8: the left/top border x = 6.5 is pixel 6's centre, the right one 14.5 pixel 14's.
    t = torch.tensor([[10.5, 10.5, 8.0]])
    v = boxcar_mask(t, 20, 20, k)[0]
    f = lambda u: 1 / (1 + math.exp(-k * u))  # noqa: E731
    edge = f(0.0) - f(-8.0)  # on a border: f(0) - f(-t_s)
    inside = f(4.0) - f(-4.0)  # pixel 10 (centre 10.5): 4 px from both borders
    assert v.shape == (20, 20)
    assert v[10, 10].item() == pytest.approx(inside * inside, abs=1e-6)
    assert v[10, 6].item() == pytest.approx(edge * inside, abs=1e-6)
    assert v[6, 14].item() == pytest.approx(edge * edge, abs=1e-6)
    assert v[6, 6].item() == pytest.approx(0.25, abs=1e-6)
    assert v[10, 2].item() == pytest.approx((f(2.5 - 10.5 + 4) - f(2.5 - 10.5 - 4)) * inside, abs=1e-9)
    assert v[0, 0].item() < 1e-15 and v[19, 10].item() < 1e-15  # far outside
    assert v[8:13, 8:13].min().item() > 0.99999  # well inside


def test_crop_parts_zooms_the_masked_square():
    torch.manual_seed(0)
    images = torch.rand(1, 3, 8, 8)
    # The whole image with a very sharp mask is the image itself.
    whole = crop_parts(images, torch.tensor([[[4.0, 4.0, 8.0]]]), (8, 8), k=1e4)
    assert torch.allclose(whole[0, 0], images[0], atol=1e-5)
    # The top-left 4x4 square zoomed x2: output pixel centres fall between input pixels, so each
    # output equals bilinear interpolation of the square's pixels (clamped at its own border by the mask).
    quarter = crop_parts(images, torch.tensor([[[2.0, 2.0, 4.0]]]), (8, 8), k=1e4)
    expected = F.interpolate(images[..., :4, :4], size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(quarter[0, 0, :, 1:7, 1:7], expected[0, :, 1:7, 1:7], atol=1e-5)
    # Outside the image the part is black (zero padding), never a smeared border.
    outside = crop_parts(images, torch.tensor([[[-10.0, -10.0, 4.0]]]), (4, 4), k=10.0)
    assert outside.abs().max().item() < 1e-6


# -- eq. 4-6: the multi-attention loss ------------------------------------------------------------------


def test_compactness_loss_on_a_hand_made_map():
    sigma = 0.25
    m = torch.zeros(1, 1, 3, 3)
    m[0, 0, 1, 1] = 1.0  # a single spike at the centre
    # Blob at the centre cell (1/2, 1/2): edge cells at distance 1/3, corners at sqrt(2)/3.
    edge = math.exp(-(1 / 9) / (2 * sigma**2))
    corner = math.exp(-(2 / 9) / (2 * sigma**2))
    expected = (4 * edge**2 + 4 * corner**2) / 9
    assert compactness_loss(m, sigma).item() == pytest.approx(expected, rel=1e-5)
    # A map that is its own blob costs nothing; the blob follows the peak.
    blob = torch.zeros(1, 1, 3, 3)
    for i in range(3):
        for j in range(3):
            blob[0, 0, i, j] = math.exp(-(((i - 2) / 3) ** 2 + ((j - 0) / 3) ** 2) / (2 * sigma**2))
    assert compactness_loss(blob, sigma).item() == pytest.approx(0.0, abs=1e-10)


def test_diversity_loss_on_hand_made_maps():
    m1 = torch.tensor([[0.9, 0.1]])
    m2 = torch.tensor([[0.5, 0.8]])
    maps = torch.stack([m1, m2])[None]  # (1, 2, 1, 2)
    got = diversity_loss(maps, 0.2)[0]
    # part 1: 0.9 * (0.5 - 0.2) and 0.1 * (0.8 - 0.2), averaged; part 2: 0.5 * (0.9 - 0.2) and 0.8 * 0.
    assert got.tolist() == pytest.approx([(0.27 + 0.06) / 2, 0.35 / 2])
    # The max over the other maps, with a third map; one map alone has nothing to diverge from.
    m3 = torch.tensor([[0.1, 1.0]])
    three = diversity_loss(torch.stack([m1, m2, m3])[None], 0.2)[0]
    assert three[0].item() == pytest.approx((0.9 * 0.3 + 0.1 * 0.8) / 2)
    assert diversity_loss(maps[:, :1], 0.2).tolist() == [[0.0]]


# -- eq. 10: class-center triplet loss -------------------------------------------------------------------


def test_center_triplet_loss_on_a_hand_made_case():
    f = torch.tensor([[1.0, 0.0]])
    centers = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # squared distances 0, 2, 4
    loss = lambda t: center_triplet_loss(f, centers, torch.tensor([t]), 0.8).item()  # noqa: E731
    assert loss([1.0, 0.0, 0.0]) == pytest.approx(0.0)
    # Label 1 present: vs 0 -> 0.8 + 2 - 0 = 2.8, vs 2 -> 0.8 + 2 - 4 < 0; mean over the negatives.
    assert loss([0.0, 1.0, 0.0]) == pytest.approx(1.4)
    # Multi-label: present labels are never negatives. Pairs (1 vs 0) 2.8 and (2 vs 0) 4.8.
    assert loss([0.0, 1.0, 1.0]) == pytest.approx(3.8)
    assert loss([1.0, 1.0, 0.0]) == pytest.approx(0.0)
    assert loss([0.0, 0.0, 0.0]) == 0.0


# -- eq. 12-13: ridge-regression prototypes and the combined score -------------------------------------


@pytest.mark.parametrize("seen, dim", [(5, 8), (12, 4)])
def test_ridge_map_matches_lstsq(seen, dim):
    torch.manual_seed(1)
    phi_s = torch.randn(seen, dim, dtype=torch.float64)
    phi_u = torch.randn(3, dim, dtype=torch.float64)
    lam = 0.3
    w = phi_u @ ridge_map(phi_s, lam).double()
    # min ||Phi^u - W Phi^s||^2 + lam ||W||^2 as one least-squares problem in W^T.
    a = torch.cat([phi_s.T, math.sqrt(lam) * torch.eye(seen, dtype=torch.float64)])
    b = torch.cat([phi_u.T, torch.zeros(seen, 3, dtype=torch.float64)])
    expected = torch.linalg.lstsq(a, b).solution.T
    assert torch.allclose(w, expected, atol=1e-5)


def test_unseen_prototypes_combine_the_seen_ones_by_ridge_regression():
    model = _model(parts=1, ridge_lambda=0.5).eval()
    seen = model.seen_vectors
    # Seen prototypes chosen by hand for both branches, as if training had stored them.
    protos = F.normalize(torch.randn(2, len(seen), DIM), dim=-1)
    model.prototypes.copy_(protos)
    model.proto_count.fill_(1)
    unseen = F.normalize(seen[0] + 2 * seen[3], dim=0)[None]
    weights = unseen @ seen.T @ torch.linalg.inv(seen @ seen.T + 0.5 * torch.eye(len(seen)))  # eq. 12
    phi = torch.randn(4, 2, DIM)
    expected = sum(F.normalize(phi[:, b], dim=-1) @ F.normalize(weights @ protos[b], dim=-1).T for b in range(2))
    labels = LabelSet(["a label never seen"], unseen)
    model.inference = "center"
    assert torch.allclose(model.score({"phi": phi}, labels), expected, atol=1e-4)
    model.inference = "compatibility"
    compat = model.score({"phi": phi}, labels)
    assert torch.allclose(compat, (phi.sum(1) @ unseen.T), atol=1e-5)
    model.inference, model.beta = "combined", 0.7
    assert torch.allclose(model.score({"phi": phi}, labels), compat + 0.7 * expected, atol=1e-4)  # eq. 13


def test_seen_labels_use_their_own_prototype_in_the_center_path():
    """Issue 19 item 4, eq. 13: a seen label's class-center score is the cosine with its own
    prototype, not with the ridge reconstruction from all seen prototypes."""
    model = _model(parts=1, ridge_lambda=0.5).eval()
    protos = F.normalize(torch.randn(2, model.num_seen, DIM), dim=-1)
    model.prototypes.copy_(protos)
    model.proto_count.fill_(1)
    model.inference = "center"
    phi = torch.randn(3, 2, DIM)
    seen = _seen()
    expected = sum(F.normalize(phi[:, b], dim=-1) @ protos[b].T for b in range(2))
    assert torch.allclose(model.score({"phi": phi}, seen), expected, atol=1e-5)
    # A mixed vocabulary: the seen label keeps its prototype, the new one gets eq. 12.
    mixed = LabelSet([seen.names[2], "a label never seen"], torch.stack([seen.vectors[2], seen.vectors[0]]))
    scores = model.score({"phi": phi}, mixed)
    assert torch.allclose(scores[:, 0], expected[:, 2], atol=1e-5)
    assert not torch.allclose(scores[:, 1], expected[:, 0], atol=1e-3)  # same vector, reconstructed


def test_boxes_and_crops_are_float32_under_bf16_autocast():
    """Issue 19 item 3: under the engine's bf16 autocast the crop net, the squares and the boxcar
    masks' pixel grid stay float32 (bf16 holds 289 distinct x values out of 448)."""
    model = _model(parts=2).eval()
    images = _images(2, seed=3)[0]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        maps, boxes = model._boxes(images)
        phi = model._branch_features(images, boxes)
    assert boxes.dtype == torch.float32 and phi.isfinite().all()
    with torch.no_grad():
        expected = to_pixels(model.crop(maps.float()), *images.shape[-2:])
    assert torch.equal(boxes, expected)


# -- the module: shapes, protocols, prototypes, warm-up ----------------------------------------------------


@pytest.mark.parametrize("shared", [True, False])
def test_shapes_for_shared_and_separate_part_branches(shared):
    model = _model(shared_parts=shared, parts=2, joint_scale=0.5).eval()
    assert len(model.part_backbones) == (0 if shared else 2)
    if not shared:
        assert model.part_backbones[0].stage5[0].weight is not model.backbone.stage5[0].weight
        assert torch.equal(model.part_backbones[0].stage5[0].weight, model.backbone.stage5[0].weight)
    images, _ = _images(3, seed=2)
    code = model.encode(images)
    assert code["phi"].shape == (3, 3, DIM)
    vocab = LabelSet(["a", "b", "c", "d"], synth.random_label_vectors(4, DIM, seed=5))
    assert model.score(code, vocab).shape == (3, 4)
    boxes = model.explain(images, vocab).boxes
    assert boxes.shape == (3, 2, 4)
    assert boxes.min() >= 0 and boxes.max() <= 1
    assert (boxes[..., 2] > boxes[..., 0]).all() and (boxes[..., 3] > boxes[..., 1]).all()
    # Chunked scoring (the engine's) gives the same scores as the whole vocabulary at once.
    chunks = torch.cat([model.score(code, vocab.subset(slice(0, 2))), model.score(code, vocab.subset(slice(2, 4)))], 1)
    assert torch.allclose(chunks, model.score(code, vocab), atol=1e-5)


def test_bad_settings_are_usage_errors():
    with pytest.raises(UsageError, match="inference"):
        _model(inference="both")
    with pytest.raises(UsageError, match="parts"):
        _model(parts=0)


def test_separate_part_branches_follow_a_frozen_backbone():
    model = _model(shared_parts=False)
    model.backbone.requires_grad_(False)  # what the trainer does when it does not fine-tune
    model.train()
    assert not any(p.requires_grad for p in model.part_backbones.parameters())
    assert not model.part_backbones[0].training and model.attention.training


@pytest.mark.parametrize("single", [True, False])
def test_both_protocols_use_their_recognition_loss(single):
    model = _model(single_label=single, inference="compatibility").eval()
    images, targets = _images(4, seed=3)
    if single:
        targets = F.one_hot(targets.argmax(1), len(synth.LABELS)).float()
    seen = _seen()
    scores = model.score(model.encode(images), seen)
    _, parts = model.loss(images, targets, seen)
    if single:
        expected = F.cross_entropy(scores, targets.argmax(1))  # eq. 9
    else:
        expected = F.binary_cross_entropy_with_logits(scores, targets)
    assert parts["softmax"] == pytest.approx(expected.item(), rel=1e-5)
    assert set(parts) == {"compactness", "diversity", "softmax", "center_triplet"}


def test_recognition_loss_reaches_the_cropping_net_and_prototypes_are_stored():
    model = _model(lambda_div=0.0).train()
    images, targets = _images(6, seed=4)
    loss, _ = model.loss(images, targets, _seen())
    loss.backward()
    # Only the recognition losses depend on the squares: a gradient here means eq. 8 is differentiable.
    assert model.crop.fc[0].weight.grad.abs().sum() > 0
    # The first batch's prototypes are the mean normalised feature of each present class.
    with torch.no_grad():
        _, phi = model._forward(images)
    feats = F.normalize(phi, dim=-1)
    j = int(targets.sum(0).argmax())
    expected = feats[targets[:, j] > 0].mean(0)
    assert torch.allclose(model.prototypes[:, j], expected, atol=1e-5)
    assert model.proto_count.tolist() == (targets.sum(0) > 0).long().tolist()
    assert "prototypes" in model.state_dict() and "seen_vectors" in model.state_dict()


def test_warm_up_learns_the_channel_groups_and_peak_squares():
    model = _model(warmup_steps=150, parts=2)
    images, targets = _images(32, seed=6)
    model.on_train_start(((images[i : i + 16], targets[i : i + 16]) for i in range(0, 32, 16)), _seen())
    with torch.no_grad():
        regions = model.backbone.regions(images)
        a = torch.sigmoid(model.attention.channel_logits(regions.mean((2, 3))))
        boxes = model.crop(model.attention(regions))
    # Each channel belongs to one part: its weight is high there and low for the other part.
    assert ((a > 0.5).sum(1) == 1).float().mean() > 0.95
    assert (boxes[..., 2] - 0.25).abs().mean() < 0.05  # a quarter-size square


# -- learning ----------------------------------------------------------------------------------------------


def _train(model: SGMA, images: torch.Tensor, targets: torch.Tensor, steps: int, batch: int = 32) -> None:
    seen = _seen()
    model.train()
    model.on_train_start(((images[i : i + batch], targets[i : i + batch]) for i in range(0, len(images), batch)), seen)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for step in range(steps):
        i = (step * batch) % len(images)
        loss, _ = model.loss(images[i : i + batch], targets[i : i + batch], seen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def _held_out_map(model: SGMA, images: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        scores = model.score(model.encode(images), _seen())
    chance = synth.mean_ap(torch.rand(targets.shape, generator=torch.Generator().manual_seed(0)), targets)
    return synth.mean_ap(scores, targets), chance


# 32 px images keep these under ~10 s on one slow core: the backbone is trained from scratch.


def test_learns_multi_label_tags_from_scratch():
    model = _model(warmup_steps=30)
    images, targets = _images(320, seed=0, size=32)
    _train(model, images, targets, steps=60)
    got, chance = _held_out_map(model, *_images(120, seed=1, size=32))
    print(f"multi-label held-out mAP {got:.3f}, chance {chance:.3f}")
    assert got > chance + 0.06, (got, chance)


def test_learns_single_label_classes_from_scratch():
    model = _model(warmup_steps=30, single_label=True)
    images, targets = _single_object_images(320, seed=0, size=32)
    _train(model, images, targets, steps=60)
    got, chance = _held_out_map(model, *_single_object_images(120, seed=1, size=32))
    print(f"single-label held-out mAP {got:.3f}, chance {chance:.3f}")
    assert got > chance + 0.06, (got, chance)
