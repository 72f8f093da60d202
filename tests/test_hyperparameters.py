"""Typed hyperparameters: the recipe and each method's settings, validated before anything is built."""

from __future__ import annotations

import json
import shutil

import pytest

from zstag.core.errors import ModelError, UsageError
from zstag.core.paths import WEIGHTS_DIR
from zstag.methods import METHODS, method_class
from zstag.methods.settings import Recipe
from zstag.store.model import load_model


@pytest.mark.parametrize("name", list(METHODS))
def test_defaults_are_valid_and_round_trip_through_the_flat_hp(name):
    cls = method_class(name)
    hp = cls.hyperparameters()
    assert cls.hyperparameters(hp.flat()) == hp
    assert not Recipe.keys() & cls.Config.keys()


def test_the_bundled_models_hp_is_read_unchanged():
    ensemble = json.loads((WEIGHTS_DIR / "default" / "config.json").read_text())["hp"]
    assert method_class("ensemble").hyperparameters(ensemble).flat()["members"][0]["method"] == "lesa"
    for member in ensemble["members"]:
        hp = member["hp"]
        flat = method_class(member["method"]).hyperparameters(hp).flat()
        assert {key: flat[key] for key in hp} == hp
        # Keys added after a model was written (issue 19's plateau settings, for one) take their defaults.
        added = flat.keys() - hp.keys()
        defaults = method_class(member["method"]).hyperparameters({}).flat()
        assert {key: flat[key] for key in added} == {key: defaults[key] for key in added}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"atentions": 2}, "unknown hyperparameter 'atentions' for lesa .did you mean 'attentions'"),
        ({"attentions": "3"}, "'attentions' must be an integer, not '3'"),
        ({"attentions": 2.0}, "'attentions' must be an integer"),
        ({"attentions": True}, "'attentions' must be an integer"),
        ({"attentions": 0}, "'attentions' must be >= 1 and <= 4096"),
        ({"attentions": 10**9}, "'attentions' must be >= 1 and <= 4096"),
        ({"lr": 0}, "'lr' must be > 0"),
        ({"lr": True}, "'lr' must be a number"),
        ({"lr": float("nan")}, "'lr' must be a number"),
        ({"epochs": 0}, "'epochs' must be >= 1"),
        ({"batch_size": 0}, "'batch_size' must be >= 1"),
        ({"use_div": "yes"}, "'use_div' must be true or false"),
        ({"lr_milestones": [0]}, "'lr_milestones' must be >= 1"),
        ({"optimizer": "lbfgs"}, "'optimizer' must be one of adam, adamw, rmsprop, sgd"),
        ({"epochs": None}, "'epochs' must be an integer, not None"),
    ],
)
def test_bad_settings_are_one_line_usage_errors_naming_the_key(overrides, message):
    with pytest.raises(UsageError, match=message) as caught:
        method_class("lesa").hyperparameters(overrides)
    assert "\n" not in str(caught.value) and "--set" not in str(caught.value)


def test_a_method_overrides_recipe_defaults_and_the_user_overrides_both():
    hp = method_class("ml2p").hyperparameters({"lr": 1e-4, "groups": 3})
    assert (hp.recipe.lr, hp.recipe.schedule, hp.recipe.lr_milestones, hp.config.groups) == (1e-4, "step", [7], 3)
    assert method_class("fast0tag").hyperparameters().recipe.lr_factor == 0.5


def test_a_config_asking_for_absurd_sizes_is_refused_before_loading(tmp_path):
    shutil.copytree(WEIGHTS_DIR / "default", tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["hp"]["members"][3]["hp"]["attentions"] = 1e9
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"config.json: ensemble member 3: hyperparameter 'attentions' must be an int"):
        load_model(tmp_path / "m")


def test_a_huge_or_deep_value_is_not_echoed_in_full():
    deep: list = []
    for _ in range(900):
        deep = [deep]
    for overrides in ({"attentions": "x" * 1_000_000}, {"attentions": deep}, {"y" * 1_000_000: 1}):
        with pytest.raises(UsageError) as info:
            method_class("lesa").hyperparameters(overrides)
        assert len(str(info.value)) < 600
