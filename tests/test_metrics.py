"""zstag.eval.metrics: hand-computed tiny cases, random data against loop references, sklearn when installed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference_metrics as ref

from zstag.eval import metrics
from zstag.eval.metrics import (
    average_precision_per_label,
    gzsl_harmonic,
    mean_ap,
    mean_class_accuracy,
    mean_image_ap,
    precision_recall_f1_at_k,
    top_k_mask,
)

# 4 images x 3 labels (A, B, C), used by several hand-computed tests.
#   A: scores .9 .8 .7 .6, positives at ranks 1 and 3 -> AP = (1/1 + 2/3) / 2 = 5/6
#   B: scores .5 .5 .5 .1, positives = images 0 and 1, tied with the negative image 2:
#      one threshold (0.5) holds 2 positives out of 3 -> P = 2/3, R = 1 -> AP = 2/3
#   C: no positive image
SCORES = np.array(
    [
        [0.9, 0.5, 0.3],
        [0.8, 0.5, 0.2],
        [0.7, 0.5, 0.1],
        [0.6, 0.1, 0.0],
    ]
)
TRUTH = np.array(
    [
        [1, 1, 0],
        [0, 1, 0],
        [1, 0, 0],
        [0, 0, 0],
    ],
    dtype=bool,
)


def test_ap_per_label_by_hand():
    ap = average_precision_per_label(SCORES, TRUTH)
    assert ap[0] == pytest.approx(5 / 6)
    assert ap[1] == pytest.approx(2 / 3)
    assert math.isnan(ap[2])


def test_ap_ties_share_the_precision_at_the_end_of_the_group():
    # All three tied: one threshold, P = 2/3, R = 1 -> AP = 2/3.
    # Sorting alone would give 1 (positives first, index order) or 7/12 (negative first).
    tied = average_precision_per_label(np.array([[0.5], [0.5], [0.5]]), np.array([[1], [1], [0]]))
    assert tied[0] == pytest.approx(2 / 3)
    # Groups {.9: neg}, {.5: pos, neg}, {.1: pos}: (1/2)(1/3) + (1/2)(2/4) = 1/6 + 1/4 = 5/12.
    s = np.array([[0.9], [0.5], [0.5], [0.1]])
    t = np.array([[0], [1], [0], [1]])
    assert average_precision_per_label(s, t)[0] == pytest.approx(5 / 12)


def test_ap_with_minus_inf_scores():
    # A label absent from top-k predictions scores -inf: both images at -inf tie, last.
    # Ranking: .4 (neg), then {-inf, -inf} with 1 positive of 3 cells -> AP = 1 * 1/3.
    s = np.array([[0.4], [-np.inf], [-np.inf]])
    t = np.array([[0], [1], [0]])
    assert average_precision_per_label(s, t)[0] == pytest.approx(1 / 3)


def test_mean_ap_protocols_by_hand():
    # zstag: (5/6 + 2/3) / 2 = 3/4, label C left out; lesa: (5/6 + 2/3 + 0) / 3 = 1/2.
    value, left_out = mean_ap(SCORES, TRUTH, "zstag")
    assert value == pytest.approx(3 / 4) and left_out == 1
    value, left_out = mean_ap(SCORES, TRUTH, "lesa")
    assert value == pytest.approx(1 / 2) and left_out == 1
    assert math.isnan(mean_ap(SCORES, np.zeros_like(TRUTH), "zstag")[0])
    assert mean_ap(SCORES, np.zeros_like(TRUTH), "lesa") == (0.0, 3)
    with pytest.raises(ValueError):
        mean_ap(SCORES, TRUTH, "coco")


def test_precision_recall_f1_at_k_by_hand():
    # 4 positive cells (img0: A, B; img1: B; img2: A). Top-2 per image: A, B everywhere
    # (B's .5 beats C). TP: img0 2, img1 1 (B), img2 1 (A), img3 0 -> 4 of 8 picks.
    # P = 4/8, R = 4/4, F1 = 2 * .5 * 1 / 1.5 = 2/3. img3 (no positive) adds 2 false positives.
    assert precision_recall_f1_at_k(SCORES, TRUTH, 2) == pytest.approx((1 / 2, 1.0, 2 / 3))
    # Top-1 is A for every image: TP = img0 + img2 = 2 -> P = 2/4, R = 2/4, F1 = 1/2.
    assert precision_recall_f1_at_k(SCORES, TRUTH, 1) == pytest.approx((1 / 2, 1 / 2, 1 / 2))
    # K = 5 > L = 3: every label is picked, 12 picks -> P = 4/12, R = 1, F1 = 2(1/3)/(4/3) = 1/2.
    assert precision_recall_f1_at_k(SCORES, TRUTH, 5) == pytest.approx((1 / 3, 1.0, 1 / 2))
    # No positive cell at all: everything 0, not NaN.
    assert precision_recall_f1_at_k(SCORES, np.zeros_like(TRUTH), 2) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        precision_recall_f1_at_k(SCORES, TRUTH, 0)


def test_top_k_ties_go_to_the_lower_label_index():
    # 0.9 twice, then the first of the tied 0.5s.
    assert top_k_mask(np.array([[0.5, 0.9, 0.5, 0.9]]), 3).tolist() == [[True, True, False, True]]
    # -inf cells (absent labels) fill the places after every real score, left to right.
    assert top_k_mask(np.array([[-np.inf, 0.1, -np.inf, -np.inf]]), 3).tolist() == [[True, True, True, False]]
    assert top_k_mask(np.array([[0.3, 0.2]]), 5).sum() == 2
    # Three-way tie, positive last: top-1 takes label 0 -> nothing right.
    assert precision_recall_f1_at_k(np.array([[0.5, 0.5, 0.5]]), np.array([[0, 0, 1]]), 1) == (0.0, 0.0, 0.0)


def test_mean_image_ap_by_hand_keeps_perfect_images():
    # img0 ranks A(+) B(+) C -> AP 1; img1 ranks A B(+) C -> 1/2; img2 ranks A(+) B C -> 1;
    # img3 has no positive and is skipped. miAP = (1 + 1/2 + 1) / 3 = 5/6.
    # (Dropping the AP = 1 images, as RGCN-PosVAE's code does, would give 1/2.)
    assert mean_image_ap(SCORES, TRUTH) == pytest.approx(5 / 6)
    assert math.isnan(mean_image_ap(SCORES, np.zeros_like(TRUTH)))


def test_mean_class_accuracy_by_hand():
    # class 0: images 0,1,2 predicted 0,0,1 -> 2/3; class 1: images 3,4 predicted 1,2 -> 1/2;
    # class 2: image 5 predicted 2 -> 1. MCA = (2/3 + 1/2 + 1) / 3 = 13/18 (plain accuracy: 4/6).
    pred = [0, 0, 1, 1, 2, 2]
    true = [0, 0, 0, 1, 1, 2]
    assert mean_class_accuracy(pred, true, [0, 1, 2]) == pytest.approx(13 / 18)
    assert mean_class_accuracy(pred, true, [0, 1, 2, 3]) == pytest.approx(13 / 18)  # class 3 has no sample
    assert mean_class_accuracy(pred, true, [1]) == pytest.approx(1 / 2)
    assert math.isnan(mean_class_accuracy(pred, true, [7]))


def test_gzsl_harmonic_by_hand():
    assert gzsl_harmonic(0.6, 0.3) == pytest.approx(2 * 0.18 / 0.9)  # = 0.4
    assert gzsl_harmonic(0.0, 0.0) == 0.0
    assert math.isnan(gzsl_harmonic(float("nan"), 0.5))


def test_shape_and_nan_are_refused():
    with pytest.raises(ValueError):
        average_precision_per_label(np.zeros((2, 3)), np.zeros((3, 2), bool))
    with pytest.raises(ValueError):
        average_precision_per_label(np.array([[np.nan]]), np.array([[True]]))


def random_case(n: int, n_labels: int, seed: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    """Seeded scores and truth with a label and an image that have no positive, and some -inf cells."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, (n, n_labels)).astype(float) if ties else rng.normal(size=(n, n_labels))
    scores[rng.random((n, n_labels)) < 0.1] = -np.inf
    truth = rng.random((n, n_labels)) < 0.3
    truth[:, 0] = False
    truth[0, :] = False
    return scores, truth


SIZES = [(1, 1), (2, 5), (6, 3), (25, 8), (40, 13)]
CASES = [(n, n_labels, seed, ties) for n, n_labels in SIZES for seed in (0, 1) for ties in (False, True)]


@pytest.mark.parametrize("n,n_labels,seed,ties", CASES)
def test_random_against_reference(n, n_labels, seed, ties):
    scores, truth = random_case(n, n_labels, seed, ties)
    s, t = scores.tolist(), truth.tolist()
    for protocol in ("zstag", "lesa"):
        value, left_out = mean_ap(scores, truth, protocol)
        ref_value, ref_left_out = ref.mean_ap(s, t, protocol)
        assert left_out == ref_left_out
        assert value == pytest.approx(ref_value, abs=1e-6, nan_ok=True)
    for k in (1, 3, 5):
        assert precision_recall_f1_at_k(scores, truth, k) == pytest.approx(ref.prf_at_k(s, t, k), abs=1e-6)
    assert mean_image_ap(scores, truth) == pytest.approx(ref.mean_image_ap(s, t), abs=1e-6, nan_ok=True)


def test_blocks_give_the_same_answer(monkeypatch):
    scores, truth = random_case(30, 11, 3, ties=True)
    whole = (average_precision_per_label(scores, truth), mean_image_ap(scores, truth), top_k_mask(scores, 4))
    monkeypatch.setattr(metrics, "_BLOCK_CELLS", 7)  # blocks of a few columns / rows
    blocked = (average_precision_per_label(scores, truth), mean_image_ap(scores, truth), top_k_mask(scores, 4))
    np.testing.assert_allclose(blocked[0], whole[0])
    assert blocked[1] == pytest.approx(whole[1])
    np.testing.assert_array_equal(blocked[2], whole[2])


@pytest.mark.parametrize("ties", [False, True])
def test_against_sklearn(ties):
    skm = pytest.importorskip("sklearn.metrics")
    scores, truth = random_case(50, 9, 7, ties)
    finite = np.where(np.isinf(scores), scores[np.isfinite(scores)].min() - 1, scores)  # sklearn refuses inf
    ap = average_precision_per_label(scores, truth)
    for j in range(truth.shape[1]):
        if truth[:, j].any():
            assert ap[j] == pytest.approx(skm.average_precision_score(truth[:, j], finite[:, j]), abs=1e-9)
    # sklearn's LRAP is the per-image AP with the same tie rule; it scores images with no (or only)
    # positive labels as 1, so compare on the images that have some of both.
    rows = (truth.sum(1) > 0) & (truth.sum(1) < truth.shape[1])
    assert mean_image_ap(scores[rows], truth[rows]) == pytest.approx(
        skm.label_ranking_average_precision_score(truth[rows], finite[rows]), abs=1e-9
    )
    # MCA over the classes present is sklearn's balanced accuracy.
    rng = np.random.default_rng(1)
    true_idx, pred_idx = rng.integers(0, 5, 40), rng.integers(0, 5, 40)
    assert mean_class_accuracy(pred_idx, true_idx, sorted(set(true_idx.tolist()))) == pytest.approx(
        skm.balanced_accuracy_score(true_idx, pred_idx)
    )
