"""Tagging metrics of the peers' protocol (GUIDE §2), vectorised with numpy.

The multi-label functions take `scores` (N images, L labels) of floats and `truth` (N, L) of booleans.
Scores may be -inf (a label absent from a top-k prediction file ranks last); they must not be NaN.

Tie rules, which decide results whenever scores repeat:
- AP (per label and per image) follows sklearn's `average_precision_score`: all items sharing a
  score form one threshold, so a positive tied with negatives gets the precision at the end of its
  tie group, whatever order the sort left them in.
- top-K and argmax break ties by label index (the lower index wins), so results are reproducible.

Deviations from the peers' code, all deliberate:
- LESA's `evaluate_k` uses numpy's unstable argsort for top-K, so its tie order is arbitrary; ours is
  stable by label index.
- When K exceeds the number of labels L being ranked (e.g. ZS with only 4 unseen labels and K=5) an
  image can only name L labels; P divides by N*min(K, L), which is what LESA's code computes too
  (it counts the cells actually marked), rather than the literal N*K.
- RGCN-PosVAE's miAP code skips images whose AP is exactly 1.0; we keep them (GUIDE §2).
- The zstag protocol leaves labels without a positive out of mAP and reports how many; the lesa
  protocol counts them as AP 0 as LESA's `compute_AP` does.

Large benchmarks (NUS-WIDE: 107k images x 1006 labels) would need several GB as full float64
temporaries, so the work is done in column/row blocks of bounded size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np

MetricProtocol = Literal["zstag", "lesa"]
PROTOCOLS: tuple[str, ...] = ("zstag", "lesa")

# Cells per block of temporaries: about 6 float64 arrays of this size live at once (~200 MB).
_BLOCK_CELLS = 4_000_000


def _check(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coerce to float64 / bool 2-D arrays of equal shape; NaN scores have no rank, so refuse them."""
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(truth).astype(bool)
    if scores.ndim != 2 or scores.shape != truth.shape:
        raise ValueError(f"scores {scores.shape} and truth {truth.shape} must be equal 2-D shapes")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    return scores, truth


def _blocks(total: int, length: int) -> Iterator[slice]:
    """Slices over `total` columns so that each block holds at most ~_BLOCK_CELLS cells of `length` rows."""
    step = max(1, _BLOCK_CELLS // max(1, length))
    for start in range(0, total, step):
        yield slice(start, min(total, start + step))


def _row_ap(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """AP of every row, ranking its items by descending score (sklearn's definition).

    AP = sum_n (R_n - R_{n-1}) P_n over distinct thresholds n. A tie group adds
    (positives in the group / #positives) * (precision at the group's end), so
    AP = mean over positives of the precision at the end of the positive's tie group.
    The order inside a tie group therefore does not matter, and the fast unstable sort will do.
    Rows, not columns, so that each sort runs over contiguous memory.
    """
    rows, n = scores.shape
    ap = np.full(rows, np.nan)
    if n == 0:
        return ap
    order = np.argsort(-scores, axis=1)
    s = np.take_along_axis(scores, order, axis=1)
    t = np.take_along_axis(truth, order, axis=1)
    rank = np.arange(n)
    is_end = np.ones((rows, n), dtype=bool)
    is_end[:, :-1] = s[:, :-1] != s[:, 1:]
    # Index of the tie group's last item for every item: a running minimum from the right
    # over "my index if I end a group, else n".
    group_end = np.minimum.accumulate(np.where(is_end, rank, n)[:, ::-1], axis=1)[:, ::-1]
    precision = np.cumsum(t, axis=1) / (rank + 1.0)
    precision_at_end = np.take_along_axis(precision, group_end, axis=1)
    n_pos = t.sum(axis=1)
    has_pos = n_pos > 0
    ap[has_pos] = (t * precision_at_end).sum(axis=1)[has_pos] / n_pos[has_pos]
    return ap


def average_precision_per_label(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(L,) non-interpolated AP of each label over the images; NaN for a label with no positive image.

    NaN rather than 0 because what such a label is worth is a protocol choice (see `mean_ap`).
    """
    scores, truth = _check(scores, truth)
    n, labels = scores.shape
    ap = np.full(labels, np.nan)
    for cols in _blocks(labels, n):
        ap[cols] = _row_ap(np.ascontiguousarray(scores[:, cols].T), np.ascontiguousarray(truth[:, cols].T))
    return ap


def mean_ap(scores: np.ndarray, truth: np.ndarray, protocol: MetricProtocol = "zstag") -> tuple[float, int]:
    """mAP over labels and the number of labels that had no positive image.

    zstag: mean over labels with >= 1 positive (NaN if there are none); lesa: such labels count as
    AP 0 and stay in the mean over all L labels, as in LESA's core/utils.py `compute_AP`.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    ap = average_precision_per_label(scores, truth)
    missing = np.isnan(ap)
    n_missing = int(missing.sum())
    if protocol == "lesa":
        return (float(np.where(missing, 0.0, ap).mean()) if ap.size else float("nan")), n_missing
    return (float(ap[~missing].mean()) if n_missing < ap.size else float("nan")), n_missing


def top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """(N, L) bool: each image's min(k, L) best labels, a tie at the cut going to the lower label indices.

    Only the set matters for P/R/F1, so a partition (linear time) finds the k-th best score;
    everything above it is in, and cells equal to it fill the remaining places left to right.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n, labels = scores.shape
    k = min(k, labels)
    mask = np.zeros((n, labels), dtype=bool)
    if k == 0:
        return mask
    for rows in _blocks(n, labels):
        s = scores[rows]
        kth = np.partition(s, labels - k, axis=1)[:, labels - k, None]
        above = s > kth
        at_cut = s == kth
        room = k - above.sum(axis=1, keepdims=True)
        mask[rows] = above | (at_cut & (np.cumsum(at_cut, axis=1) <= room))
    return mask


def precision_recall_f1_at_k(scores: np.ndarray, truth: np.ndarray, k: int) -> tuple[float, float, float]:
    """Micro P/R/F1 of each image's top-k labels over all image x label cells (GUIDE §2).

    P = TP / (N * min(k, L)), R = TP / #positive cells, F1 = 2PR / (P + R).
    Images without positives still count (their k picks are all false positives).
    Degenerate cases give 0, never NaN: P when there are no images, R when there is no positive
    cell (nothing could be recalled), F1 when P + R = 0.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores, truth = _check(scores, truth)
    top = top_k_mask(scores, k)
    tp = int((top & truth).sum())
    picked = int(top.sum())
    positives = int(truth.sum())
    p = tp / picked if picked else 0.0
    r = tp / positives if positives else 0.0
    f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return p, r, f1


def mean_image_ap(scores: np.ndarray, truth: np.ndarray) -> float:
    """miAP: mean over images with >= 1 positive of the AP of the image's ranking of the labels.

    Images whose AP is 1.0 count like any other (RGCN-PosVAE's code drops them; a bug).
    NaN when no image has a positive.
    """
    scores, truth = _check(scores, truth)
    n, labels = scores.shape
    ap = np.full(n, np.nan)
    for rows in _blocks(n, labels):
        ap[rows] = _row_ap(scores[rows], truth[rows])
    kept = ap[~np.isnan(ap)]
    return float(kept.mean()) if kept.size else float("nan")


def mean_class_accuracy(pred_idx: np.ndarray, true_idx: np.ndarray, classes: Sequence[int]) -> float:
    """Mean over `classes` of per-class top-1 accuracy (SGMA's MCA), so rare classes weigh as much as common ones.

    A class in `classes` with no test sample has no accuracy and is left out; NaN if none has one.
    """
    pred_idx = np.asarray(pred_idx)
    true_idx = np.asarray(true_idx)
    accuracies = []
    for c in classes:
        members = true_idx == c
        if members.any():
            accuracies.append(float((pred_idx[members] == c).mean()))
    return float(np.mean(accuracies)) if accuracies else float("nan")


def gzsl_harmonic(acc_seen: float, acc_unseen: float) -> float:
    """H = 2 * A_S * A_U / (A_S + A_U): generalised ZSL's balance of seen and unseen accuracy (0 if both are 0)."""
    if np.isnan(acc_seen) or np.isnan(acc_unseen):
        return float("nan")
    total = acc_seen + acc_unseen
    return 2 * acc_seen * acc_unseen / total if total > 0 else 0.0
