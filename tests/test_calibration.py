"""Calibrated scores (Platt scaling) and per-label thresholds."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from synth import ON_CPU

from zstag.core.errors import UsageError
from zstag.data.vocab import read_thresholds
from zstag.eval.calibration import apply, fit_platt
from zstag.eval.metrics import mean_ap
from zstag.jobs.tag import label_thresholds, select


def test_fit_recovers_the_logistic_model_that_made_the_data():
    rng = np.random.default_rng(0)
    scores = rng.normal(3.0, 2.0, size=400_000)  # raw scores on their own, shifted scale
    truth = rng.random(scores.shape) < 1 / (1 + np.exp(-(1.7 * scores - 6.0)))
    fitted = fit_platt(scores, truth)
    assert fitted["scale"] == pytest.approx(1.7, abs=0.03)
    assert fitted["bias"] == pytest.approx(-6.0, abs=0.08)
    # Calibrated: among pairs given p ~ 0.7, about 70% are positive.
    p = apply(torch.tensor(scores), fitted).numpy()
    band = (p > 0.65) & (p < 0.75)
    assert truth[band].mean() == pytest.approx(0.7, abs=0.02)


def test_fit_survives_separable_data_and_keeps_the_order():
    scores = np.array([[0.1, 0.9], [0.2, 0.8], [0.3, 0.95]])
    truth = scores > 0.5
    fitted = fit_platt(scores, truth)
    assert math.isfinite(fitted["scale"]) and fitted["scale"] > 0
    calibrated = apply(torch.tensor(scores), fitted).numpy()
    assert np.array_equal(np.argsort(calibrated, axis=None), np.argsort(scores, axis=None))
    assert mean_ap(calibrated, truth)[0] == mean_ap(scores, truth)[0]  # ranking metrics unchanged


def test_fit_needs_both_classes():
    with pytest.raises(UsageError, match="both positive and negative"):
        fit_platt(np.ones((3, 2)), np.zeros((3, 2), dtype=bool))


def test_a_fit_that_would_reverse_the_ranking_is_refused():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=5000)
    truth = rng.random(5000) < 1 / (1 + np.exp(2 * scores))  # higher score, less often right
    with pytest.raises(UsageError, match="higher scores are not more often right"):
        fit_platt(scores, truth)


def test_a_fit_on_outlying_scores_gives_no_overflow_warning():
    """Scores far from the rest sent np.exp past its range ("overflow encountered in exp" in the
    training output); the fit must neither warn nor lose the finite result."""
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(size=2000), [-1e4, 1e4]]
    truth = np.r_[rng.random(2000) < 1 / (1 + np.exp(-3 * scores[:2000])), [False, True]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fitted = fit_platt(scores, truth)
    assert fitted["scale"] > 0 and np.isfinite(fitted["log_loss"]) and fitted["log_loss"] < np.log(2)


def test_a_newton_step_that_overshoots_is_damped():
    """13 pairs with one outlying negative: the undamped Newton step overshot here and stored a
    scale of 7e7 with a log loss of 5e8 (a model that then could not be loaded). The fit must be
    the minimum of the smoothed log loss, which a grid search brackets."""
    s = np.array([2.927, -0.029, -0.037, 0.136, 0.461, 0.093, -0.02, 0.07, 0.502, 0.102, 0.49, 0.011, 0.626])
    y = np.array([0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0, 1], dtype=bool)
    fit = fit_platt(s, y)
    target = np.where(y, 5 / 6, 1 / 11)

    def loss(scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
        x = scale[..., None] * s + bias[..., None]
        return (target * np.logaddexp(0, -x) + (1 - target) * np.logaddexp(0, x)).mean(-1)

    grid = np.meshgrid(np.linspace(0.01, 5, 300), np.linspace(-5, 5, 300))
    best = float(loss(*grid).min())
    assert 0 < fit["scale"] < 5 and fit["log_loss"] < 1
    assert float(loss(np.array(fit["scale"]), np.array(fit["bias"]))) <= best + 1e-9


def test_scores_that_barely_vary_are_not_calibrated():
    """A fit whose scale a config could not hold (`CALIBRATION_LIMIT`) is refused, not stored."""
    rng = np.random.default_rng(0)
    y = np.arange(40) < 10
    s = 0.5 + 1e-9 * (rng.normal(size=40) + 3 * y)
    with pytest.raises(UsageError, match="vary too little"):
        fit_platt(s, y)
    with pytest.raises(UsageError, match="every score is the same"):
        fit_platt(np.full(40, 0.25), y)


def test_no_calibration_leaves_raw_scores():
    raw = torch.tensor([[-3.0, 5.0]])
    assert torch.equal(apply(raw, None), raw)


def test_read_thresholds(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("# label<TAB>threshold\nred circle\t0.7\ncafe\u0301\t0.2\n\nred circle\t0.8\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="listed twice"):
        assert read_thresholds(path) == {"red circle": 0.8, "caf\u00e9": 0.2}


@pytest.mark.parametrize("line", ["red circle 0.7", "red circle\tabc", "\t0.5", "red circle\tnan"])
def test_malformed_threshold_line_names_the_line(tmp_path, line):
    path = tmp_path / "t.tsv"
    path.write_text(f"blue square\t0.5\n{line}\n")
    with pytest.raises(UsageError, match=r"t\.tsv:2: expected 'label<TAB>threshold'"):
        read_thresholds(path)


def test_select_with_per_label_thresholds():
    names = ["a", "b", "c"]
    scores = torch.tensor([[0.9, 0.6, 0.3], [0.2, 0.65, 0.95]])
    thresholds = label_thresholds(names, 0.5, {"c": 0.99, "b": 0.62})
    assert select(scores, names, 0, thresholds) == [[("a", pytest.approx(0.9))], [("b", pytest.approx(0.65))]]
    assert label_thresholds(names, None, {}) is None
    assert select(scores, names, 2, None) == [
        [("a", pytest.approx(0.9)), ("b", pytest.approx(0.6))],
        [("c", pytest.approx(0.95)), ("b", pytest.approx(0.65))],
    ]


def train_fast0tag(dataset, word_vectors, out, val_fraction: float):
    """A small fast0tag model trained in-process on the synthetic set (calibrated from its validation
    split unless `val_fraction` is 0). Tests share the two trainings through fixtures:
    `calibrated_fast0tag` (conftest, session) and `trained_uncalibrated` (below, a fresh copy per test)."""
    from zstag.training.options import TrainOptions
    from zstag.training.trainer import train

    options = TrainOptions(
        data=dataset["manifest"],
        method="fast0tag",
        out=out,
        unseen=dataset["unseen"],
        backbone="small",
        semantics=str(word_vectors),
        epochs=4,
        image_size=64,
        device="cpu",
        workers=0,
        val_fraction=val_fraction,
    )
    train(options)
    return out


def test_training_stores_a_calibration_and_tag_applies_it(calibrated_fast0tag, dataset, cli, tmp_path):
    out = calibrated_fast0tag  # trained with --val-fraction 0.3; only read here
    calibration = json.loads((out / "config.json").read_text())["calibration"]
    assert calibration["fitted_on"] == "validation split" and calibration["pairs"] > 0
    assert math.isfinite(calibration["scale"]) and math.isfinite(calibration["bias"])

    image = sorted(dataset["images"].iterdir())[0]
    common = (
        "tag",
        image,
        "--labels",
        dataset["vocab"],
        "--model",
        out,
        "--top-k",
        "0",
        *ON_CPU,
    )
    calibrated = {t["label"]: t["score"] for t in json.loads(cli(*common).out)["tags"]}
    raw = {t["label"]: t["score"] for t in json.loads(cli(*common, "--raw-scores").out)["tags"]}
    assert set(calibrated) == set(raw)
    for label, score in raw.items():
        expected = 1 / (1 + math.exp(-(calibration["scale"] * score + calibration["bias"])))
        assert calibrated[label] == pytest.approx(expected, abs=1e-5)
        assert 0 < calibrated[label] < 1

    # Per-label thresholds through the command line: one label made unreachable, the rest at 0.
    top = max(calibrated, key=calibrated.get)
    rules = tmp_path / "thresholds.tsv"
    rules.write_text(f"{top}\t1\nno such label\t0.1\n")  # every calibrated score here is below 1
    result = cli(*common, "--threshold", "0", "--thresholds", rules)
    assert result.code == 0, result.err
    kept = {t["label"] for t in json.loads(result.out)["tags"]}
    assert kept == set(calibrated) - {top}
    assert "not in the vocabulary" in result.err
    rules.write_text(f"{top} 0.5\n")
    bad = cli(*common, "--thresholds", rules)
    assert bad.code == 2 and "thresholds.tsv:1" in bad.err


def test_calibrate_command_fits_on_a_tagged_set_and_keeps_the_ranking(trained_uncalibrated, dataset, cli):
    model = trained_uncalibrated
    before = json.loads((model / "config.json").read_text())
    assert before["calibration"] is None
    evaluate = (
        "eval",
        "--model",
        model,
        "--truth",
        dataset["manifest"],
        "--unseen",
        dataset["unseen"],
        "--json",
        *ON_CPU,
    )
    report_before = json.loads(cli(*evaluate).out)
    seen = model / "seen.txt"
    seen.write_text("\n".join(before["seen_labels"]) + "\n")
    result = cli("calibrate", model, "--data", dataset["manifest"], "--labels", seen, *ON_CPU)
    assert result.code == 0, result.err
    fitted = json.loads(result.out)
    after = json.loads((model / "config.json").read_text())
    assert after["calibration"] == fitted and after["calibration"]["fitted_on"] == str(dataset["manifest"])
    assert {k: v for k, v in after.items() if k != "calibration"} == {
        k: v for k, v in before.items() if k != "calibration"
    }
    assert json.loads(cli(*evaluate).out) == report_before  # an increasing map: same metrics


def test_eval_and_calibrate_exit_3_when_truth_images_cannot_be_read(trained_uncalibrated, dataset, tmp_path):
    """Like tag: the metrics (and the fit) over the readable images, and exit 3 saying some were not."""
    from test_console_script import ZSTAG, zstag

    if ZSTAG is None:
        pytest.skip("the zstag console script is not installed")
    (tmp_path / "empty.png").write_bytes(b"")
    rows = [json.loads(line) for line in dataset["manifest"].read_text().splitlines() if line.strip()]
    rows = [{**r, "image": str((dataset["manifest"].parent / r["image"]).resolve())} for r in rows]
    tag = rows[0]["tags"][0]
    truth = tmp_path / "with-empty.jsonl"
    truth.write_text("".join(json.dumps(r) + "\n" for r in [*rows, {"image": "empty.png", "tags": [tag]}]))
    model = str(trained_uncalibrated)
    evaluated = zstag("eval", "--model", model, "--truth", str(truth), "--json", *ON_CPU, cwd=tmp_path)
    assert evaluated.returncode == 3, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["unreadable_images"] == 1 and report["gzs"]["n_images"] == len(rows)
    assert "empty.png" in evaluated.stderr
    fitted = zstag("calibrate", model, "--data", str(truth), *ON_CPU, cwd=tmp_path)
    assert fitted.returncode == 3, fitted.stderr
    assert json.loads((trained_uncalibrated / "config.json").read_text())["calibration"] == json.loads(fitted.stdout)


def test_a_misspelt_unseen_label_is_named():
    from zstag.training.checks import unseen_typos

    said = unseen_typos(["triangel", "zebra", "circle"], ["circle", "square", "triangle"])
    assert len(said) == 1 and "'triangel'" in said[0] and "'triangle'" in said[0]


@pytest.fixture(scope="module")
def _uncalibrated(dataset, word_vectors, tmp_path_factory):
    return train_fast0tag(dataset, word_vectors, tmp_path_factory.mktemp("uncalibrated") / "old", val_fraction=0.0)


@pytest.fixture
def trained_uncalibrated(_uncalibrated, tmp_path):
    """A model directory without calibration, as made by older versions or with --val-fraction 0: a
    fresh copy for each test (they calibrate it), of one training."""
    return Path(shutil.copytree(_uncalibrated, tmp_path / "old"))


def test_calibrate_never_rewrites_the_shipped_default(dataset, cli):
    from zstag.core.paths import WEIGHTS_DIR

    config = WEIGHTS_DIR / "default" / "config.json"
    before = config.read_bytes()
    result = cli("calibrate", "default", "--data", dataset["manifest"], *ON_CPU)
    assert result.code == 2 and result.err.count("\n") == 1
    assert "models shipped with zstag" in result.err and "calibrate the copy" in result.err and "cp -rL" in result.err
    assert config.read_bytes() == before


def test_calibrate_never_rewrites_a_model_in_a_download_cache(dataset, cli, tmp_path, monkeypatch):
    from zstag.core.paths import WEIGHTS_DIR

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    snapshot = tmp_path / "hf-home" / "hub" / "models--someone--tagger" / "snapshots" / "0123"
    shutil.copytree(WEIGHTS_DIR / "default", snapshot)
    before = (snapshot / "config.json").read_bytes()
    result = cli("calibrate", snapshot, "--data", dataset["manifest"], *ON_CPU)
    assert result.code == 2 and "the Hugging Face cache" in result.err and "calibrate the copy" in result.err
    assert (snapshot / "config.json").read_bytes() == before


@pytest.fixture
def ready_clip(tmp_path, monkeypatch):
    """The ready-made `clip-vit-b32` under a registry copy and a cache root of the test's own (its
    calibration file needs no weights: nothing is fetched)."""
    from zstag.store import hub
    from zstag.store.catalog import ready_made

    registry = hub.load_registry()
    (tmp_path / "registry.json").write_text(json.dumps(registry))
    monkeypatch.setenv(hub.REGISTRY_ENV, str(tmp_path / "registry.json"))
    monkeypatch.setenv("ZSTAG_CACHE", str(tmp_path / "cache"))
    made = ready_made("clip-vit-b32")
    assert made is not None
    return made, registry


def test_a_ready_made_calibration_is_kept_for_its_pinned_weights_only(ready_clip, tmp_path, capsys):
    from zstag.store.catalog import calibration_file, read_calibration, write_calibration

    made, registry = ready_clip
    assert read_calibration(made) is None  # raw scores until calibrated
    fitted = {"scale": 40.0, "bias": -9.0, "pairs": 10}
    path = write_calibration(made, fitted)
    assert path == calibration_file(made) == tmp_path / "cache" / "calibrations" / "clip-vit-b32.json"
    assert read_calibration(made) == fitted
    registry["clip-vit-b32"]["files"][1]["sha256"] = "0" * 64  # the registry moves the name to other weights
    (tmp_path / "registry.json").write_text(json.dumps(registry))
    assert read_calibration(made) is None
    assert "fitted for other weights" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content",
    [
        '{"format": "zstag ready-made calibration 1", "identity": {}, "calibration": {"scale": -1, "bias": 0}}',
        # the bounds of a model's config hold here too: one validator (store.config.check_calibration)
        '{"format": "zstag ready-made calibration 1", "identity": {}, "calibration": {"scale": 1e300, "bias": 0}}',
        '{"format": "zstag ready-made calibration 1", "identity": {}, "calibration": {"scale": 1, "bias": 0, '
        '"pairs": "10"}}',
        "hi",
    ],
)
def test_a_calibration_file_zstag_did_not_write_is_neither_used_nor_replaced(ready_clip, content, capsys):
    from zstag.store.catalog import calibration_file, read_calibration, write_calibration

    made, _ = ready_clip
    path = calibration_file(made)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    assert read_calibration(made) is None and "not a calibration zstag wrote" in capsys.readouterr().err
    with pytest.raises(UsageError, match="not a calibration zstag wrote"):
        write_calibration(made, {"scale": 1.0, "bias": 0.0})
    assert path.read_text() == content


def test_imagenet_and_the_backbone_it_resolves_to_share_one_calibration(ready_clip):
    from zstag.store.catalog import calibration_file, ready_made

    short, spelt = ready_made("imagenet"), ready_made("imagenet-resnet101")  # nothing fetched: resnet101
    assert short is not None and spelt is not None
    assert calibration_file(short) == calibration_file(spelt) != calibration_file(ready_made("imagenet-vgg19"))
