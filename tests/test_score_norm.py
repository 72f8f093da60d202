"""Per-image standardisation of scores against the seen labels (`--score-norm seen`, T-norm)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from synth import ON_CPU
from test_console_script import ZSTAG, zstag

from zstag.core.errors import ModelError
from zstag.data.manifest import read_dataset
from zstag.engine import engine as engine_module
from zstag.engine.engine import Engine
from zstag.store.config import read_config
from zstag.store.model import load_model, use_score_norm


@pytest.fixture(scope="module")
def model_dir(calibrated_fast0tag):
    return calibrated_fast0tag  # shared with test_calibration: the tests here change copies of it


def scores_of(model, images, labels) -> torch.Tensor:
    engine = Engine("cpu", batch_size=4, workers=0)
    vocab = model.embed(labels)
    rows = torch.zeros(len(images), len(labels))
    for batch in engine.run(model.method, images, vocab, model.image_size):
        rows[batch.indices] = batch.scores
    return rows


def test_each_image_is_standardised_against_its_seen_label_scores(model_dir, dataset, monkeypatch):
    images = [s.image for s in read_dataset(dataset["manifest"])][:12]
    seen = read_config(model_dir)["seen_labels"]
    unseen = [line for line in dataset["unseen"].read_text().split("\n") if line]
    labels = [*unseen, *seen]
    raw = scores_of(load_model(model_dir), images, labels)
    model = load_model(model_dir)
    use_score_norm(model, "seen")
    normed = scores_of(model, images, labels)

    reference = raw[:, len(unseen) :]
    expected = (raw - reference.mean(1, keepdim=True)) / reference.std(1, unbiased=False, keepdim=True)
    assert torch.allclose(normed, expected, atol=1e-4)
    assert not torch.allclose(normed, raw, atol=1e-2)  # the test can fail: the map is not the identity here
    # Every image's tags keep their order: only comparisons across images change.
    assert torch.equal(normed.argsort(dim=1, stable=True), raw.argsort(dim=1, stable=True))

    # The same scores when the engine chunks the vocabulary and from the module itself (`explain`).
    monkeypatch.setattr(engine_module, "LABEL_CHUNK", 3)
    assert torch.allclose(scores_of(model, images, labels), normed, atol=1e-5)
    # A vocabulary without the seen labels is standardised alike: the cohort never depends on it.
    assert torch.allclose(scores_of(model, images, unseen), normed[:, : len(unseen)], atol=1e-4)


def test_a_config_with_an_unknown_score_norm_is_refused(model_dir, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "score_norm": "zscore"}))
    with pytest.raises(ModelError, match="score_norm"):
        read_config(copy)


@pytest.mark.skipif(ZSTAG is None, reason="the zstag console script is not installed")
def test_calibrate_stores_the_score_norm_and_eval_follows_it(model_dir, dataset, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(model_dir, model)
    evaluate = ["eval", "--model", str(model), "--truth", str(dataset["manifest"]), "--json", *ON_CPU]
    unseen = ["--unseen", str(dataset["unseen"])]

    def report(*extra: str) -> dict:
        result = zstag(*evaluate, *unseen, *extra, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    raw, normed = report("--score-norm", "none"), report("--score-norm", "seen")
    assert report() == raw  # the model's own setting: none until calibrate stores another
    assert normed["gzs"]["mAP"] != raw["gzs"]["mAP"]
    assert normed["gzs"]["miAP"] == pytest.approx(raw["gzs"]["miAP"])  # per-image rankings unchanged

    result = zstag(
        "calibrate", str(model), "--data", str(dataset["manifest"]), "--score-norm", "seen", *ON_CPU, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    config = json.loads((model / "config.json").read_text())
    assert config["score_norm"] == "seen" and config["calibration"] == json.loads(result.stdout)
    assert report() == normed

    bad = zstag(*evaluate, "--score-norm", "zscore", cwd=tmp_path)
    assert bad.returncode == 2 and "'--score-norm'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    made = zstag("calibrate", "clip-vit-b32", "--data", str(dataset["manifest"]), "--score-norm", "seen", cwd=tmp_path)
    assert made.returncode == 2 and "ready-made" in made.stderr
    assert np.isfinite(config["calibration"]["scale"])


def test_seen_needs_two_seen_labels_and_predictions_take_no_score_norm(model_dir, dataset, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "score_norm": "seen", "seen_labels": ["red circle"]}))
    with pytest.raises(ModelError, match="score_norm"):
        read_config(copy)
    if ZSTAG is not None:
        predictions = tmp_path / "p.jsonl"
        predictions.write_text("")
        result = zstag(
            "eval", "-p", str(predictions), "--truth", str(dataset["manifest"]), "--score-norm", "seen", cwd=tmp_path
        )
        assert result.returncode == 2 and "--score-norm needs --model" in result.stderr


@pytest.mark.skipif(ZSTAG is None, reason="the zstag console script is not installed")
def test_a_model_with_broken_weights_is_named_by_eval_and_calibrate(model_dir, dataset, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "m"
    shutil.copytree(model_dir, broken)
    state = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
        for k, v in load_file(broken / "model.safetensors").items()
    }
    save_file(state, broken / "model.safetensors")
    for command in (["eval", "--model", str(broken), "--truth"], ["calibrate", str(broken), "--data"]):
        result = zstag(*command, str(dataset["manifest"]), *ON_CPU, cwd=tmp_path)
        assert result.returncode == 2 and "non-finite scores" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
