"""The training loop: augmentation, reproducibility, `--set` parsing, the optimiser choice.

(`--set` pairs without a key are refused through the console script: tests/test_train_checks.py.)

Training runs here are tiny (12 images at 32 px: one step of 8 and a validation batch of 3,
workers=0) so that the reproducibility check costs seconds on a loaded CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import synth
import torch

from zstag.commands.train import parse_sets
from zstag.core.errors import UsageError
from zstag.methods.fast0tag import Fast0Tag
from zstag.methods.settings import Recipe
from zstag.training.batches import augment
from zstag.training.options import TrainOptions
from zstag.training.trainer import make_optimizer, train


def test_augment_without_crop_flips_or_keeps_each_image_exactly():
    torch.manual_seed(0)
    images = torch.rand(32, 3, 9, 12)  # odd and even sides: the mirror must be exact for both
    out = augment(images, Recipe(flip=True, crop_scale=1.0))
    assert out.shape == images.shape
    kept = flipped = 0
    for before, after in zip(images, out):
        if torch.allclose(after, before, atol=1e-5):
            kept += 1
        elif torch.allclose(after, before.flip(-1), atol=1e-5):
            flipped += 1
    assert kept + flipped == len(images)  # nothing else: no shift, no blur, no vertical flip
    assert kept > 4 and flipped > 4  # and both happen


def test_augment_off_is_the_identity():
    images = torch.rand(4, 3, 8, 8)
    assert torch.equal(augment(images, Recipe(flip=False, crop_scale=1.0)), images)


def test_augment_crop_changes_images_but_not_their_shape():
    torch.manual_seed(0)
    images = torch.rand(8, 3, 16, 16)
    out = augment(images, Recipe(flip=False, crop_scale=0.5))
    assert out.shape == images.shape
    assert not torch.allclose(out, images, atol=1e-3)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    return synth.make_dataset(tmp_path_factory.mktemp("tiny"), n=12, size=32, seed=3)


def options(tiny_data, word_vectors, out: Path, **extra) -> TrainOptions:
    settings = dict(
        data=tiny_data["manifest"],
        method="fast0tag",
        out=out,
        unseen=tiny_data["unseen"],
        backbone="small",
        semantics=str(word_vectors),
        epochs=1,
        batch_size=8,
        image_size=32,
        device="cpu",
        seed=7,
        val_fraction=0.25,
        workers=0,
        overrides={"hidden": 32, "crop_scale": 0.8},
    )
    settings.update(extra)
    return TrainOptions(**settings)


def test_training_is_reproducible_on_cpu(tiny_data, word_vectors, tmp_path):
    first = train(options(tiny_data, word_vectors, tmp_path / "a"))
    train(options(tiny_data, word_vectors, tmp_path / "b"))
    weights_a = (tmp_path / "a" / "model.safetensors").read_bytes()
    assert weights_a == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert first.config["training"]["n_train"] == 9 and first.config["training"]["n_val"] == 3
    # A different seed gives different weights: the check above is not vacuous.
    train(options(tiny_data, word_vectors, tmp_path / "c", seed=8))
    assert (tmp_path / "c" / "model.safetensors").read_bytes() != weights_a


def test_unknown_optimizer_is_a_usage_error(tiny_data, word_vectors, tmp_path):
    with pytest.raises(UsageError, match="'optimizer' must be one of adam, adamw, rmsprop, sgd, not 'lbfgs'"):
        train(options(tiny_data, word_vectors, tmp_path / "m", overrides={"optimizer": "lbfgs"}))
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "name, kind",
    [
        ("adam", torch.optim.Adam),
        ("adamw", torch.optim.AdamW),
        ("rmsprop", torch.optim.RMSprop),
        ("sgd", torch.optim.SGD),
    ],
)
def test_make_optimizer_choices(name, kind):
    hp = Fast0Tag.hyperparameters({"optimizer": name, "lr": 0.01, "weight_decay": 1e-4})
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(2))], hp)
    assert type(optimizer) is kind
    assert optimizer.param_groups[0]["lr"] == 0.01 and optimizer.param_groups[0]["weight_decay"] == 1e-4


def test_parse_sets_values():
    assert parse_sets(
        [
            "hidden=1024",
            "lr=1e-4",
            "finetune_backbone=true",
            "flip=false",
            "lr_milestones=[10, 20]",
            "optimizer=sgd",
            "name = coral reef",
            "empty=",
            "expr=a=b",
            'quoted="42"',
            "nothing=null",
        ]
    ) == {
        "hidden": 1024,
        "lr": 1e-4,
        "finetune_backbone": True,
        "flip": False,
        "lr_milestones": [10, 20],
        "optimizer": "sgd",
        "name": " coral reef",
        "empty": "",
        "expr": "a=b",
        "quoted": "42",
        "nothing": None,
    }
    assert isinstance(parse_sets(["n=3"])["n"], int) and isinstance(parse_sets(["x=3.0"])["x"], float)


def test_frozen_backbone_trains_on_cached_features(dataset, word_vectors, tmp_path):
    """A frozen backbone's maps are computed once; the method trains on them and the saved model
    tags real images with the same scores as the model in memory (the cache leaves no trace)."""
    import json

    import torch
    from safetensors.torch import load_file

    from zstag.store.model import load_model
    from zstag.training.options import TrainOptions
    from zstag.training.trainer import train

    out = tmp_path / "lesa"
    model = train(
        TrainOptions(
            data=dataset["manifest"],
            method="lesa",
            out=out,
            backbone="small",
            semantics=str(word_vectors),
            epochs=2,
            image_size=32,
            device="cpu",
            workers=0,
            overrides={"finetune_backbone": False, "attentions": 2},
        )
    )
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["cached_features"] is True
    assert len(config["training"]["history"]) == 2
    assert not any(k.startswith("backbone.cached") for k in load_file(str(out / "model.safetensors")))
    loaded = load_model(out)
    images = torch.randn(3, 3, 32, 32)
    labels = loaded.embed(["red circle", "blue square"])
    with torch.no_grad():
        assert torch.allclose(model.method(images, labels), loaded.method(images, labels), atol=1e-5)


def test_a_feature_cache_runs_the_frozen_backbone_once_across_runs(dataset, word_vectors, tmp_path, monkeypatch):
    """tools/table.py trains many heads on one split: with a shared FeatureCache the pretrained
    backbone's maps are computed once; without one (`zstag train`) every run computes its own."""
    from zstag.training import features
    from zstag.training.features import FeatureCache

    calls = []
    real = features.compute_features
    monkeypatch.setattr(features, "compute_features", lambda *args: calls.append(1) or real(*args))

    def run(method: str, out: str, cache: FeatureCache | None) -> None:
        train(
            TrainOptions(
                data=dataset["manifest"],
                method=method,
                out=tmp_path / out,
                backbone="bundled",
                semantics=str(word_vectors),
                epochs=1,
                image_size=32,
                device="cpu",
                workers=0,
            ),
            feature_cache=cache,
        )

    cache = FeatureCache()
    run("lesa", "a", cache)
    run("fast0tag", "b", cache)
    assert len(calls) == 1
    run("fast0tag", "c", None)
    assert len(calls) == 2


def test_the_trainer_tells_the_method_its_unseen_labels(tiny_data, word_vectors, tmp_path, monkeypatch):
    """Issue 19 item 6 needs the trainer's part: the method hears the unseen names before training."""
    heard: list[list[str]] = []
    monkeypatch.setattr(Fast0Tag, "on_unseen_labels", lambda self, names: heard.append(list(names)))
    train(options(tiny_data, word_vectors, tmp_path / "m"))
    unseen = [line.strip() for line in Path(tiny_data["unseen"]).read_text().splitlines() if line.strip()]
    assert heard == [unseen] and unseen
