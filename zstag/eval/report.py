"""The core of `zstag eval`: read a predictions file, match it to the truth, compute the report.

The report is the JSON object of GUIDE §1: a "gzs" section (all labels ranked) and, when unseen
labels are given, a "zs" section (only the unseen labels ranked, every test image kept). Each holds
mAP, miAP, P/R/F1 at each K, n_images and n_labels; under the zstag protocol also
n_labels_without_positives (the labels mAP left out). Metrics that are undefined (no positive at
all) are reported as null, since JSON has no NaN.

When every truth image carries exactly one tag, the set is single-label (SGMA's protocol) and a
"single_label" section adds mean class accuracy: MCA (argmax over all labels, all test classes);
with unseen labels also A_U / A_S (per-class accuracy on unseen / seen test classes, argmax over
all labels), their harmonic mean H, and MCA_zs (argmax over the unseen labels only, images of
unseen classes only).

Matching choices beyond GUIDE §1, for unambiguous results:
- two prediction rows for the same file are an error (which one should count is unknowable);
- a label named twice in one prediction row keeps its higher score;
- prediction labels and truth tags outside the evaluated labels are ignored;
- the default label list also includes the unseen labels, so an unseen label that no image and no
  prediction mentions still counts (as AP 0) under the lesa protocol.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

from zstag.core.errors import UsageError
from zstag.eval.metrics import (
    PROTOCOLS,
    MetricProtocol,
    average_precision_per_label,
    gzsl_harmonic,
    mean_ap,
    mean_class_accuracy,
    mean_image_ap,
    precision_recall_f1_at_k,
)

_MAX_LISTED = 10


class TruthSample(Protocol):
    """What matching needs from a truth row (zstag.data.manifest.Sample satisfies it)."""

    @property
    def image(self) -> Path:  # absolute (made canonical again here, so symlinks do not matter)
        ...

    @property
    def tags(self) -> list[str]: ...


def _number(value: float) -> float | None:
    """JSON-safe metric: NaN (undefined) becomes null."""
    return None if math.isnan(value) else float(value)


def _section(scores: np.ndarray, truth: np.ndarray, ks: Sequence[int], protocol: MetricProtocol) -> dict[str, Any]:
    """mAP, miAP and P/R/F1@K of one ranking setting (ZS or GZS)."""
    m_ap, n_missing = mean_ap(scores, truth, protocol)
    at_k = {}
    for k in ks:
        p, r, f1 = precision_recall_f1_at_k(scores, truth, k)
        at_k[str(k)] = {"P": p, "R": r, "F1": f1}
    section: dict[str, Any] = {
        "mAP": _number(m_ap),
        "miAP": _number(mean_image_ap(scores, truth)),
        "at_k": at_k,
        "n_images": int(scores.shape[0]),
        "n_labels": int(scores.shape[1]),
    }
    if protocol == "zstag":
        section["n_labels_without_positives"] = n_missing
    return section


def _single_label(scores: np.ndarray, truth: np.ndarray, unseen_idx: list[int] | None) -> dict[str, Any]:
    """SGMA's single-label ZSL/GZSL accuracies; argmax ties go to the lower label index."""
    true_idx = truth.argmax(axis=1)
    pred_all = scores.argmax(axis=1)
    present = sorted(set(true_idx.tolist()))
    out: dict[str, Any] = {"MCA": _number(mean_class_accuracy(pred_all, true_idx, present))}
    if unseen_idx is None:
        return out
    unseen_set = set(unseen_idx)
    acc_u = mean_class_accuracy(pred_all, true_idx, [c for c in present if c in unseen_set])
    acc_s = mean_class_accuracy(pred_all, true_idx, [c for c in present if c not in unseen_set])
    # ZS: only images of unseen classes, ranked among unseen labels; map argmax back to label indices.
    zs_rows = np.isin(true_idx, unseen_idx)
    pred_zs = np.asarray(unseen_idx)[scores[zs_rows][:, unseen_idx].argmax(axis=1)]
    mca_zs = mean_class_accuracy(pred_zs, true_idx[zs_rows], [c for c in present if c in unseen_set])
    out.update(
        {
            "A_U": _number(acc_u),
            "A_S": _number(acc_s),
            "H": _number(gzsl_harmonic(acc_s, acc_u)),
            "MCA_zs": _number(mca_zs),
        }
    )
    return out


def evaluate(
    scores: np.ndarray,
    truth: np.ndarray,
    labels: list[str],
    unseen: list[str] | None = None,
    ks: Sequence[int] = (3, 5),
    protocol: str = "zstag",
) -> dict[str, Any]:
    """The eval report (GUIDE §1) for `scores` / `truth` of shape (N, len(labels))."""
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(truth).astype(bool)
    if protocol not in PROTOCOLS:
        raise UsageError(f"unknown protocol {protocol!r}; expected one of: {', '.join(PROTOCOLS)}")
    checked = cast(MetricProtocol, protocol)
    if scores.shape != truth.shape or scores.ndim != 2 or scores.shape[1] != len(labels):
        raise ValueError(f"scores {scores.shape}, truth {truth.shape} and {len(labels)} labels disagree")
    if not ks or any(k < 1 for k in ks):
        raise UsageError(f"K values must be positive integers, got {list(ks)}")
    if scores.shape[0] == 0:
        raise UsageError("no images to evaluate")
    report: dict[str, Any] = {}
    unseen_idx: list[int] | None = None
    if unseen is not None:
        index = {name: i for i, name in enumerate(labels)}
        outside = [u for u in unseen if u not in index]
        if outside:
            raise UsageError(f"unseen labels not among the evaluated labels: {', '.join(outside[:_MAX_LISTED])}")
        unseen_idx = sorted({index[u] for u in unseen})
        if not unseen_idx:
            raise UsageError("the unseen label list is empty")
        report["zs"] = _section(scores[:, unseen_idx], truth[:, unseen_idx], ks, checked)
    report["gzs"] = _section(scores, truth, ks, checked)
    if (truth.sum(axis=1) == 1).all():
        report["single_label"] = _single_label(scores, truth, unseen_idx)
    return report


def load_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Rows {"image": str, "tags": [{"label": str, "score": float}, ...]} of a jsonl predictions file.

    Blank lines are skipped; anything else that is not such an object is a UsageError naming the line.
    Lines are split at '\\n' only (names may hold U+2028 or NEL); image names keep the `\\udcXX`
    escapes of non-UTF-8 file names as the lone surrogates `os.fsencode` maps back to the bytes.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read predictions {path}: {err}") from err
    rows = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append(_parse_row(json.loads(line)))
        except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
            if lineno == 1 and line.lstrip("\ufeff").startswith(("image,", "image\t")):
                raise UsageError(
                    f"{path} looks like CSV/TSV; predictions are JSON lines (`zstag tag -f jsonl`, the default)"
                ) from None
            raise UsageError(f"{path}:{lineno}: malformed prediction: {err}") from None
    return rows


def _parse_row(obj: Any) -> dict[str, Any]:
    """Validate one decoded prediction line; ValueError says what is wrong."""
    if not isinstance(obj, dict) or not isinstance(obj.get("image"), str) or not obj["image"]:
        raise ValueError('expected an object with a non-empty string "image"')
    tags = obj.get("tags")
    if not isinstance(tags, list):
        raise ValueError('"tags" must be a list')
    parsed = []
    for tag in tags:
        if not isinstance(tag, dict) or not isinstance(tag.get("label"), str):
            raise ValueError('each tag must be an object with a string "label"')
        score = tag.get("score")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
            raise ValueError(f'tag {tag["label"]!r} has no numeric "score"')
        parsed.append({"label": tag["label"], "score": float(score)})
    return {"image": obj["image"], "tags": parsed}


def evaluation_labels(
    rows: Iterable[dict[str, Any]],
    truth_samples: Iterable[TruthSample],
    labels: Sequence[str] | None = None,
    unseen: Sequence[str] | None = None,
) -> list[str]:
    """The labels to evaluate: `labels` (--labels) in its order if given, else the sorted union of every
    label in the truth, the predictions and the unseen list."""
    if labels is not None:
        return list(dict.fromkeys(labels))
    found = {tag for sample in truth_samples for tag in sample.tags}
    found.update(tag["label"] for row in rows for tag in row["tags"])
    found.update(unseen or ())
    return sorted(found)


def same_file_key(path: str | Path) -> str:
    """One spelling per file: absolute against the current directory, '..' and symlinks resolved."""
    return os.path.realpath(os.path.expanduser(path))


def truth_matrix(samples: Sequence[TruthSample], labels: Sequence[str]) -> np.ndarray:
    """(N, L) booleans: sample i carries label j. Tags outside `labels` are ignored."""
    index = {name: j for j, name in enumerate(labels)}
    truth = np.zeros((len(samples), len(labels)), dtype=bool)
    for i, sample in enumerate(samples):
        truth[i, [index[t] for t in sample.tags if t in index]] = True
    return truth


def match_predictions(
    rows: Sequence[dict[str, Any]],
    truth_samples: Sequence[TruthSample],
    labels: Sequence[str],
) -> tuple[np.ndarray, np.ndarray, int]:
    """Align predictions with the truth: (scores (N, L), truth (N, L), number of ignored prediction rows).

    Row i is truth_samples[i]. Prediction paths resolve against the current directory. Both sides
    go through realpath, so a file reached through a symlink on one side and directly on the other
    still matches. A label missing from an image's prediction row scores -inf, below every real
    score, so top-k prediction files rank their absent labels last (all tied).
    """
    index = {name: j for j, name in enumerate(labels)}
    by_file: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = same_file_key(row["image"])
        if key in by_file:
            raise UsageError(f"more than one prediction for {row['image']}")
        by_file[key] = row
    truth_keys = [same_file_key(s.image) for s in truth_samples]
    missing = [str(s.image) for s, key in zip(truth_samples, truth_keys) if key not in by_file]
    if missing:
        shown = ", ".join(missing[:_MAX_LISTED])
        more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        hint = ""
        if len(missing) == len(truth_samples) and rows:  # nothing matched: most likely the paths' base
            hint = (
                f" (no prediction matched: prediction paths resolve against the current directory, so"
                f" {rows[0]['image']} is {same_file_key(rows[0]['image'])}; truth paths against the manifest's folder)"
            )
        raise UsageError(f"{len(missing)} truth image(s) have no prediction: {shown}{more}{hint}")
    scores = np.full((len(truth_samples), len(labels)), -np.inf)
    for i, key in enumerate(truth_keys):
        for tag in by_file[key]["tags"]:
            j = index.get(tag["label"])
            if j is not None:
                scores[i, j] = max(scores[i, j], tag["score"])
    truth = truth_matrix(truth_samples, labels)
    used = set(truth_keys)
    n_ignored = sum(1 for key in by_file if key not in used)
    return scores, truth, n_ignored


def pr_curve(scores: np.ndarray, truth: np.ndarray, max_points: int = 200) -> list[list[float]]:
    """Micro-averaged [recall, precision] points over every image x label cell, one per distinct
    score threshold from the highest down, thinned evenly to at most `max_points` (first and last kept).

    Micro, like P/R/F1@K: one curve summarises a whole setting (ZS or GZS) for a plot or a page.
    Cells tied at a score form one threshold (the tie rule of AP), so -inf cells (labels absent
    from a top-k file) add one last point at recall 1. Empty when there is no positive cell.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    t = np.asarray(truth).astype(bool).ravel()
    positives = int(t.sum())
    if positives == 0:
        return []
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    ends = np.flatnonzero(np.append(s[:-1] != s[1:], True))
    tp = np.cumsum(t)[ends]
    if len(ends) > max_points:
        keep = np.unique(np.linspace(0, len(ends) - 1, max_points).round().astype(int))
        ends, tp = ends[keep], tp[keep]
    return [[round(float(r), 4), round(float(p), 4)] for r, p in zip(tp / positives, tp / (ends + 1))]


def label_curves(
    scores: np.ndarray, truth: np.ndarray, labels: Sequence[str], unseen: Sequence[str] | None = None
) -> dict[str, Any]:
    """What plots and the review page draw, from the same matrices `evaluate` reads: each label's AP
    (null without a positive; a label's AP does not depend on the other labels, so it is the same in
    ZS and GZS, and the mean of the non-null ones is the zstag protocol's mAP), its number of
    positive images, and the micro PR curve of GZS and, with unseen labels, of ZS."""
    truth = np.asarray(truth).astype(bool)
    curves: dict[str, Any] = {
        "ap": [_number(v) for v in average_precision_per_label(scores, truth)],
        "positives": [int(n) for n in truth.sum(axis=0)],
        "pr": {"gzs": pr_curve(scores, truth)},
    }
    if unseen:
        wanted = set(unseen)
        cols = [j for j, name in enumerate(labels) if name in wanted]
        curves["pr"]["zs"] = pr_curve(np.asarray(scores)[:, cols], truth[:, cols])
    return curves
