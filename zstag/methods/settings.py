"""Typed hyperparameters: the trainer's recipe and each method's architecture settings.

A model's settings come from three places: the paper's defaults (a method's `default_recipe` and
its `Config` dataclass), the user's overrides, and, when a model is loaded, the `hp` object of its
config.json. All arrive as plain JSON values, so every field is checked here, once, for its type
and a sane range before any module is allocated: a config claiming a billion attention modules
is a one-line error naming the field, not an out-of-memory crash.

`Hyperparameters.flat()` is the `hp` object written to config.json: recipe and method settings in
one flat dict, the format every existing model directory already has.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import typing
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Generic, TypeVar

from zstag.core.errors import UsageError

# Large enough for any real network, small enough that a typo is refused before it allocates.
WIDTH_LIMIT = 65536


def setting(
    default: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    above: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A dataclass field with bounds (`low` <= value <= `high`, value > `above`) or string `choices`."""
    bounds = {"low": low, "high": high, "above": above, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=bounds)
    return field(default=default, metadata=bounds)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _describe(kind: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        kind, "a list of integers"
    )


def _check(key: str, value: Any, kind: Any, bounds: dict[str, Any]) -> None:
    """Raise a UsageError naming `key` when `value` is not of `kind` or out of its bounds."""
    ok = {
        int: _is_int(value),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
        float: (_is_int(value) or isinstance(value, float)) and math.isfinite(value),
    }.get(kind, isinstance(value, list) and all(_is_int(v) for v in value))
    if not ok:
        raise UsageError(f"hyperparameter {key!r} must be {_describe(kind)}, not {reprlib.repr(value)}")
    if bounds["choices"] is not None and value not in bounds["choices"]:
        choices = ", ".join(bounds["choices"])
        raise UsageError(f"hyperparameter {key!r} must be one of {choices}, not {reprlib.repr(value)}")
    for item in value if isinstance(value, list) else [value]:
        low, high, above = bounds["low"], bounds["high"], bounds["above"]
        if (
            (low is not None and item < low)
            or (high is not None and item > high)
            or (above is not None and item <= above)
        ):
            allowed = " and ".join(
                part
                for part in (
                    f"> {above}" if above is not None else "",
                    f">= {low}" if low is not None else "",
                    f"<= {high}" if high is not None else "",
                )
                if part
            )
            raise UsageError(f"hyperparameter {key!r} must be {allowed}, not {reprlib.repr(value)}")


@cache
def _kinds(cls: type) -> dict[str, Any]:
    """Field name -> int, float, bool, str or list (from the annotations)."""
    hints = typing.get_type_hints(cls)
    return {f.name: typing.get_origin(hints[f.name]) or hints[f.name] for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class Settings:
    """A validated group of hyperparameters: every field is checked on construction."""

    def __post_init__(self) -> None:
        # Upcast to `type`: mypy takes a class's own __hash__ signature (here the dataclass's) for the
        # class object's, and would call type[Settings] unhashable.
        cls: type = type(self)
        kinds = _kinds(cls)
        for f in dataclasses.fields(self):
            _check(f.name, getattr(self, f.name), kinds[f.name], dict(f.metadata))

    @classmethod
    def keys(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class Recipe(Settings):
    """How the one training loop trains a method (`zstag.training`); methods never read it."""

    optimizer: str = setting("adam", choices=("adam", "adamw", "rmsprop", "sgd"))
    lr: float = setting(1e-3, above=0)
    weight_decay: float = setting(0.0, 0)
    momentum: float = setting(0.9, 0)  # sgd / rmsprop
    batch_size: int = setting(32, 1, 1 << 20)
    epochs: int = setting(20, 1, 1_000_000)
    # plateau: lr x lr_factor when the monitored value stops improving; step: at each of lr_milestones; none.
    schedule: str = setting("plateau", choices=("plateau", "step", "none"))
    lr_factor: float = setting(0.1, above=0)
    # plateau: epochs without improvement tolerated before a decay (0 = decay after each one,
    # LESA's "whenever ... degrades"), and what is watched: validation mAP ("val"; the training
    # loss when there is no validation split) or the training loss ("loss", RGCN-PosVAE's paper).
    lr_patience: int = setting(0, 0, 1_000_000)
    plateau_metric: str = setting("val", choices=("val", "loss"))
    lr_milestones: list[int] = setting([], 1)
    min_lr: float = setting(0.0, 0)
    early_stopping: int = setting(0, 0)  # epochs without improvement before stopping; 0 = never
    finetune_backbone: bool = setting(False)
    flip: bool = setting(True)  # random horizontal flips during training
    crop_scale: float = setting(1.0, high=1.0, above=0)  # < 1: random crops covering this fraction of the side or more
    # With a frozen backbone, compute its feature maps once per image instead of every epoch
    # (no flips or crops then: they would need the backbone again).
    cache_features: bool = setting(True)


@dataclass(frozen=True)
class MethodConfig(Settings):
    """A method's architecture, loss and inference settings; each method subclasses it."""


@dataclass(frozen=True)
class SingleLabelConfig(MethodConfig):
    """Settings of a method with a softmax protocol for single-label data (SGMA's eq. 9, ConSE's
    published form). Unless the user sets `single_label`, the trainer turns it on when every
    training image has exactly one tag."""

    single_label: bool = setting(False)


C = TypeVar("C", bound=MethodConfig)


@dataclass(frozen=True)
class Hyperparameters(Generic[C]):
    """A model's recipe and its method's settings, both validated."""

    recipe: Recipe
    config: C

    @classmethod
    def build(
        cls, method: str, recipe: Recipe, config: C, overrides: dict[str, Any] | None = None
    ) -> Hyperparameters[C]:
        """`recipe` and `config` (the method's defaults) with `overrides` applied and checked.

        Unknown keys, wrong types and out-of-range values raise a UsageError naming the key.
        """
        overrides = overrides or {}
        recipe_keys, config_keys = Recipe.keys(), type(config).keys()
        assert not recipe_keys & config_keys, "recipe and method settings may not share a key"
        for key in overrides:
            if key not in recipe_keys | config_keys:
                close = difflib.get_close_matches(key, sorted(recipe_keys | config_keys), n=1)
                hint = (
                    f" (did you mean {close[0]!r}?)"
                    if close
                    else f"; known: {', '.join(sorted(recipe_keys | config_keys))}"
                )
                raise UsageError(f"unknown hyperparameter {reprlib.repr(key)} for {method}{hint}")
        return cls(
            dataclasses.replace(recipe, **{k: v for k, v in overrides.items() if k in recipe_keys}),
            dataclasses.replace(config, **{k: v for k, v in overrides.items() if k in config_keys}),
        )

    def flat(self) -> dict[str, Any]:
        """The `hp` object of config.json: every recipe and method setting in one dict."""
        return {**dataclasses.asdict(self.recipe), **dataclasses.asdict(self.config)}
