"""Straightforward loop versions of zstag.eval.metrics, written from the definitions, as test yardsticks.

They share no code with the vectorised module: AP walks the distinct thresholds in descending order
(sklearn's sum_n (R_n - R_{n-1}) P_n), top-K sorts each image's labels by (-score, index).
"""

from __future__ import annotations

import math


def ap(scores: list[float], truth: list[bool]) -> float:
    """Non-interpolated AP of one ranking; NaN without positives."""
    n_pos = sum(truth)
    if n_pos == 0:
        return math.nan
    total, prev_recall = 0.0, 0.0
    for threshold in sorted(set(scores), reverse=True):
        chosen = [t for s, t in zip(scores, truth) if s >= threshold]
        precision = sum(chosen) / len(chosen)
        recall = sum(chosen) / n_pos
        total += (recall - prev_recall) * precision
        prev_recall = recall
    return total


def mean_ap(scores, truth, protocol: str) -> tuple[float, int]:
    n, n_labels = len(scores), len(scores[0])
    aps = [ap([scores[i][j] for i in range(n)], [bool(truth[i][j]) for i in range(n)]) for j in range(n_labels)]
    missing = sum(math.isnan(a) for a in aps)
    if protocol == "lesa":
        return sum(0.0 if math.isnan(a) else a for a in aps) / n_labels, missing
    kept = [a for a in aps if not math.isnan(a)]
    return (sum(kept) / len(kept) if kept else math.nan), missing


def prf_at_k(scores, truth, k: int) -> tuple[float, float, float]:
    tp = picked = 0
    for row_s, row_t in zip(scores, truth):
        ranked = sorted(range(len(row_s)), key=lambda j: (-row_s[j], j))[:k]
        picked += len(ranked)
        tp += sum(bool(row_t[j]) for j in ranked)
    positives = sum(bool(t) for row in truth for t in row)
    p = tp / picked if picked else 0.0
    r = tp / positives if positives else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f1


def mean_image_ap(scores, truth) -> float:
    aps = [ap(list(s), [bool(t) for t in row]) for s, row in zip(scores, truth) if any(row)]
    return sum(aps) / len(aps) if aps else math.nan
