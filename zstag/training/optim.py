"""The recipe's optimiser and learning-rate schedule."""

from __future__ import annotations

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


class Schedule:
    """The recipe's lr schedule: x lr_factor at each milestone (`step`) or after each epoch without
    improvement (`plateau`), never below min_lr; the optimiser follows every change."""

    def __init__(self, recipe: Recipe, optimizer: torch.optim.Optimizer) -> None:
        self.recipe, self.optimizer = recipe, optimizer

    def epoch_start(self, epoch: int, lr: float) -> float:
        """The lr for `epoch` given the previous epoch's."""
        if self.recipe.schedule == "step" and epoch > 1 and epoch - 1 in self.recipe.lr_milestones:
            return self._lower(lr)
        return lr

    def no_improvement(self, lr: float) -> float:
        """The lr after an epoch whose validation did not improve."""
        return self._lower(lr) if self.recipe.schedule == "plateau" else lr

    def _lower(self, lr: float) -> float:
        lr = max(lr * self.recipe.lr_factor, self.recipe.min_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr
