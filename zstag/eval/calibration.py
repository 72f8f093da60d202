"""Calibrated scores: one threshold that means the same for every label and every method.

Each method scores on its own scale (LESA's ranking scores, ConSE's cosine similarities,
SGMA's logits), so `--threshold 0.5` would mean something different for each. Platt scaling maps
a raw score s to p = sigmoid(scale * s + bias), with scale and bias fitted by logistic regression
on the (image, label) pairs of a held-out split: p then estimates how often a tag with that raw
score is right. The fit is global (one scale and bias per model, not per label) because unseen
labels, which zero-shot tagging is for, have no examples to fit on; ranking metrics (mAP, F1@K)
are unchanged by it, since the map is increasing.

Training fits it on the validation split and stores it in the model's config (`calibration`);
`zstag calibrate` fits it afterwards on any tagged set.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from zstag.core.errors import UsageError
from zstag.store import CALIBRATION_LIMIT


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow: scores far out on either side give 0 or 1, not a warning."""
    return np.exp(-np.logaddexp(0.0, -x))


def _smoothed_log_loss(a: float, b: float, z: np.ndarray, target: np.ndarray) -> float:
    """Cross-entropy of sigmoid(a z + b) against the smoothed targets, without overflow."""
    x = a * z + b
    return float(np.mean(target * np.logaddexp(0.0, -x) + (1 - target) * np.logaddexp(0.0, x)))


def fit_platt(scores: np.ndarray, truth: np.ndarray, iterations: int = 100) -> dict[str, Any]:
    """Scale and bias by Newton's method on the log loss, with Platt's (1999) smoothed targets
    ((N+ + 1) / (N+ + 2) and 1 / (N- + 2)) so that a separable set does not send them to infinity.

    Each Newton step is halved until the loss does not rise (the plain step overshot on a few dozen
    nearly separable pairs and left a scale of 5e10); a fit beyond `CALIBRATION_LIMIT` is refused
    (UsageError) rather than stored, so the trainer keeps raw scores and says why."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(truth, dtype=bool).ravel()
    keep = np.isfinite(s)
    s, y = s[keep], y[keep]
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        raise UsageError("calibration needs both positive and negative (image, label) pairs")
    target = np.where(y, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    # Standardise for a well-conditioned Newton step, then map back to the raw score.
    mu, sigma = float(s.mean()), float(s.std())
    if not sigma > 0:
        raise UsageError(f"cannot calibrate on these {len(s)} (image, label) pairs: every score is the same")
    z = (s - mu) / sigma
    a, b = 1.0, math.log((positives + 1) / (negatives + 1))
    loss = _smoothed_log_loss(a, b, z, target)
    for _ in range(iterations):
        p = _sigmoid(a * z + b)
        w = np.maximum(p * (1 - p), 1e-12)
        g = np.array([np.dot(p - target, z), np.sum(p - target)])
        h = np.array([[np.dot(w, z * z), np.dot(w, z)], [np.dot(w, z), np.sum(w)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(h, g)
        t = 1.0
        while t > 1e-6 and _smoothed_log_loss(a - t * step[0], b - t * step[1], z, target) > loss:
            t /= 2
        a, b = a - t * step[0], b - t * step[1]
        loss = _smoothed_log_loss(a, b, z, target)
        if np.abs(t * step).max() < 1e-10:
            break
    if not a > 0:
        # A decreasing map would reverse the method's ranking; such data cannot calibrate it.
        # mAP ranks images label by label, so it can be good while the pooled scores are not.
        raise UsageError(
            f"cannot calibrate on these {len(s)} (image, label) pairs: pooled over all labels, higher "
            "scores are not more often right (fitted scale <= 0), although each label's own ranking, "
            "which mAP measures, may be good; fit on a larger or more representative tagged set"
        )
    scale, bias = a / sigma, b - a * mu / sigma
    if not (math.isfinite(scale) and math.isfinite(bias) and max(abs(scale), abs(bias)) <= CALIBRATION_LIMIT):
        raise UsageError(
            f"cannot calibrate on these {len(s)} (image, label) pairs: the scores vary too little "
            f"(spread {sigma:.3g}) for a stored scale and bias (fitted {scale:.3g}, {bias:.3g}; at most "
            f"{CALIBRATION_LIMIT:.0e})"
        )
    x = scale * s + bias
    # -log p = log(1 + exp(-x)) and -log(1 - p) = log(1 + exp(x)), exactly and without overflow.
    log_loss = float(np.mean(np.where(y, np.logaddexp(0.0, -x), np.logaddexp(0.0, x))))
    return {
        "scale": float(scale),
        "bias": float(bias),
        "pairs": int(len(s)),
        "positives": positives,
        "log_loss": log_loss,
        "base_rate": positives / len(s),
    }


def apply(scores: torch.Tensor, calibration: dict[str, Any] | None) -> torch.Tensor:
    """Calibrated probabilities, or the raw scores when the model has no calibration."""
    if not calibration:
        return scores
    return torch.sigmoid(scores * float(calibration["scale"]) + float(calibration["bias"]))
