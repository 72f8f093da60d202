"""`zstag eval`: gather scores (from a predictions file, or by running a model through the engine)
and turn them into the report of GUIDE §1, as JSON or as a readable table."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from zstag.core import console
from zstag.core.errors import ModelError, UsageError
from zstag.data.manifest import Sample, read_dataset
from zstag.data.vocab import read_vocabulary
from zstag.eval.report import evaluate, evaluation_labels, load_predictions, match_predictions, truth_matrix
from zstag.jobs.options import EvalOptions


def required_model(opts: EvalOptions) -> str:
    """The model a job that scores images needs (eval reads predictions instead when there is none)."""
    if opts.model is None:
        raise UsageError("no model to score the images with")
    return opts.model


def model_scores(opts: EvalOptions, samples: list[Sample], labels: list[str]) -> tuple[np.ndarray, list[Sample], int]:
    """Scores of `labels` for the truth images (those in --images when given), computed by the
    engine; unreadable images are left out and counted (the third value)."""
    from zstag.engine.engine import Engine
    from zstag.store.model import load_model, use_score_norm

    if opts.inputs:
        from zstag.data.inputs import iter_inputs

        wanted = {Path(p).resolve() for _, p in iter_inputs(opts.inputs)}
        samples = [s for s in samples if s.image.resolve() in wanted]
        if not samples:
            raise UsageError("none of the given images is in the truth")
    model = load_model(required_model(opts))
    if opts.score_norm is not None:
        use_score_norm(model, opts.score_norm)
    vocab = model.embed(labels)
    engine = Engine(opts.device, batch_size=opts.batch_size, workers=opts.workers, compile=opts.compile)
    scores = np.zeros((len(samples), len(labels)), dtype=np.float32)
    kept = np.zeros(len(samples), dtype=bool)
    with console.progress("scoring", len(samples)) as bar:
        for batch in engine.run(model.method, [s.image for s in samples], vocab, model.image_size):
            for index, reason in batch.failures:
                console.warn(f"cannot read {samples[index].image}: {reason}; left out of the evaluation")
            scores[batch.indices] = batch.scores.numpy()
            kept[batch.indices] = True
            bar.update(len(batch.indices) + len(batch.failures))
    broken = int((~np.isfinite(scores[kept])).any(axis=1).sum())
    if broken:
        total = int(kept.sum())
        raise ModelError(f"{opts.model}: non-finite scores for {broken} of {total} image(s) (broken weights?)")
    return scores[kept], [s for s, k in zip(samples, kept) if k], int((~kept).sum())


class Matrices(NamedTuple):
    """What `evaluate` reads (and `eval --plots` draws), and how many truth images could not be read
    (left out of the matrices; the command exits 3 then, as `tag` does)."""

    scores: np.ndarray
    truth: np.ndarray
    labels: list[str]
    unseen: list[str] | None
    unreadable: int = 0


def run_eval(opts: EvalOptions) -> dict[str, Any]:
    return report_of(eval_matrices(opts), opts)


def report_of(m: Matrices, opts: EvalOptions) -> dict[str, Any]:
    """The metrics report; with "unreadable_images" when some truth images were left out."""
    report = evaluate(m.scores, m.truth, m.labels, m.unseen, ks=opts.ks, protocol=opts.protocol)
    if m.unreadable:
        report["unreadable_images"] = m.unreadable
    return report


def eval_matrices(opts: EvalOptions) -> Matrices:
    """Scores, truth, labels and unseen labels as `evaluate` reads them (also what `eval --plots` draws)."""
    samples = read_dataset(opts.truth)
    unseen = read_vocabulary(opts.unseen) if opts.unseen else None
    given = read_vocabulary(opts.labels) if opts.labels else None
    if unseen:
        tagged = {t for s in samples for t in s.tags}
        absent = [u for u in unseen if u not in tagged]
        if absent:
            console.warn(
                f"{len(absent)} unseen label(s) tag no truth image, so their AP is undefined: "
                f"{', '.join(map(repr, absent[:5]))}{' ...' if len(absent) > 5 else ''} (a typo?)"
            )
    if opts.predictions is not None:
        rows = load_predictions(opts.predictions)
        labels = evaluation_labels(rows, samples, given, unseen)
        scores, truth, ignored = match_predictions(rows, samples, labels)
        if ignored:
            console.info(f"{ignored} prediction(s) for images outside the truth ignored")
        scored = int(np.isfinite(scores).sum(1).max(initial=0))
        if scored < len(labels):
            console.warn(
                f"the predictions score at most {scored} of the {len(labels)} labels per image: the rest rank"
                " last, tied, which changes mAP and P/R@K; tag with --top-k 0 to evaluate full rankings"
            )
        return Matrices(scores, truth, labels, unseen)
    labels = evaluation_labels([], samples, given, unseen)
    scores, kept, unreadable = model_scores(opts, samples, labels)
    return Matrices(scores, truth_matrix(kept, labels), labels, unseen, unreadable)


def run_calibrate(opts: EvalOptions) -> tuple[dict[str, Any], int]:
    """Fit the model's score calibration on a tagged set and store it in the model's config.

    The model's raw scores of the set's labels (or `opts.labels`) are fitted with Platt scaling
    (zstag/eval/calibration.py); only config.json changes, through a rename. `opts.score_norm`,
    when given, is stored with the fit (the scores it was fitted on were standardised so, or not).
    A model zstag does not own (the shipped `default`, a download in zstag's or the Hugging Face
    cache) is refused before any work, with the fix: calibrate a copy. A ready-made model
    (`imagenet`, `clip-vit-b32`), which has no directory, gets its calibration stored in zstag's
    cache root (`store.catalog`).
    """
    from zstag.eval.calibration import fit_platt
    from zstag.store.catalog import ready_made, write_calibration
    from zstag.store.config import read_config
    from zstag.store.hub import shared_place
    from zstag.store.model import resolve_model_dir, write_config

    made = ready_made(required_model(opts))
    folder = None if made is not None else resolve_model_dir(required_model(opts))
    place = None if folder is None else shared_place(folder)
    if place is not None:
        raise UsageError(
            f"{opts.model} is in {place}, which calibrate never rewrites: copy it "
            f"(`cp -rL {folder} my-model`) and calibrate the copy"
        )
    if made is not None and opts.score_norm not in (None, "none"):
        raise UsageError(f"{made.key} is a ready-made model, which scores raw: --score-norm is for trained models")
    samples = read_dataset(opts.truth)
    labels = evaluation_labels([], samples, read_vocabulary(opts.labels) if opts.labels else None, None)
    scores, kept, unreadable = model_scores(opts, samples, labels)
    fitted = {**fit_platt(scores, truth_matrix(kept, labels)), "fitted_on": str(opts.truth)}
    if made is not None:
        console.info(f"calibration of {made.key} stored in {write_calibration(made, fitted)}")
        return fitted, unreadable
    assert folder is not None  # not ready-made: resolved above
    config = read_config(folder)
    config["calibration"] = fitted
    if opts.score_norm is not None:  # the calibration was fitted on scores standardised so
        config["score_norm"] = opts.score_norm
    write_config(folder, config)
    return fitted, unreadable


def render_report(report: dict[str, Any]) -> str:
    """A compact table for people: one line per setting, percentages."""

    def pct(v: Any) -> str:
        return "   -  " if v is None else f"{100 * v:6.2f}"

    lines: list[str] = []
    for name in ("zs", "gzs"):
        section = report.get(name)
        if not section:
            continue
        ks = sorted(section["at_k"], key=int)
        head = f"{'':4} {'mAP':>6} {'miAP':>6} " + " ".join(f"{'P@' + k:>6} {'R@' + k:>6} {'F1@' + k:>6}" for k in ks)
        if not lines:
            lines.append(head)
        at_k = " ".join(
            f"{pct(section['at_k'][k]['P'])} {pct(section['at_k'][k]['R'])} {pct(section['at_k'][k]['F1'])}" for k in ks
        )
        lines.append(
            f"{name.upper():4} {pct(section['mAP'])} {pct(section['miAP'])} {at_k}   "
            f"({section['n_images']} images, {section['n_labels']} labels)"
        )
    single = report.get("single_label")
    if single:
        lines.append("single-label: " + ", ".join(f"{k} {pct(v).strip()}" for k, v in single.items()))
    return "\n".join(lines)
