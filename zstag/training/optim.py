"""The recipe's optimiser and learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any

import torch

from zstag.methods.settings import Hyperparameters, Recipe


def make_optimizer(params: list[torch.nn.Parameter], hp: Hyperparameters) -> torch.optim.Optimizer:
    """The optimiser a method's recipe names (`hp.recipe`), over `params`."""
    recipe = hp.recipe
    lr, wd = recipe.lr, recipe.weight_decay
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if recipe.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd, momentum=recipe.momentum)
    return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=recipe.momentum)  # the one choice left


# Relative change that counts as an improvement of the watched value (as torch's ReduceLROnPlateau),
# so a training loss creeping down by rounding noise still reads as a plateau.
PLATEAU_THRESHOLD = 1e-4


class Schedule:
    """The recipe's lr schedule: x lr_factor at each milestone (`step`) or once the watched value
    has not improved for more than lr_patience epochs (`plateau`), never below min_lr; the
    optimiser follows every change.

    The plateau decision is replayed from the run's history (one record per epoch, the trainer's
    `TrainState.history`), so a resumed run decides exactly as an uninterrupted one.
    """

    def __init__(self, recipe: Recipe, optimizer: torch.optim.Optimizer) -> None:
        self.recipe, self.optimizer = recipe, optimizer

    def epoch_start(self, epoch: int, lr: float) -> float:
        """The lr for `epoch` given the previous epoch's."""
        if self.recipe.schedule == "step" and epoch > 1 and epoch - 1 in self.recipe.lr_milestones:
            return self._lower(lr)
        return lr

    def epoch_end(self, history: list[dict[str, Any]], lr: float) -> float:
        """The lr after the last epoch of `history` (records with "loss" and "val_mAP", None without
        validation)."""
        return self._lower(lr) if self.recipe.schedule == "plateau" and self.plateau_reached(history) else lr

    def plateau_reached(self, history: list[dict[str, Any]]) -> bool:
        """Whether the last epoch of `history` ends a plateau: more than lr_patience epochs without
        improvement since the best epoch or the last decay, whichever is later."""
        best, stale, reached = -math.inf, 0, False
        for record in history:
            value = self._watched(record)
            if not math.isfinite(best) or value > best + PLATEAU_THRESHOLD * abs(best):
                best, stale = value, 0
            else:
                stale += 1
            reached = stale > self.recipe.lr_patience
            if reached:
                stale = 0
        return reached

    def _watched(self, record: dict[str, Any]) -> float:
        """The epoch's value, higher is better: validation mAP, or minus the training loss."""
        if self.recipe.plateau_metric == "val" and record.get("val_mAP") is not None:
            return float(record["val_mAP"])
        return -float(record["loss"])

    def _lower(self, lr: float) -> float:
        lr = max(lr * self.recipe.lr_factor, self.recipe.min_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr
