"""Issue 19 item 5: the learning-rate plateau has a patience and can watch the training loss
(RGCN-PosVAE's "decay it by 0.1 when the loss plateaus"), and the trainer hands it every epoch."""

from __future__ import annotations

import pytest
import torch

from zstag.core.errors import UsageError
from zstag.methods import method_class
from zstag.methods.settings import Recipe
from zstag.training.optim import Schedule


def schedule(**recipe) -> tuple[Schedule, torch.optim.Optimizer]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return Schedule(Recipe(lr=1.0, lr_factor=0.1, **recipe), optimizer), optimizer


def lrs(sched: Schedule, records: list[dict]) -> list[float]:
    """The lr after each epoch of `records`, as the trainer calls the schedule."""
    lr, history, out = 1.0, [], []
    for record in records:
        history.append(record)
        lr = sched.epoch_end(history, lr)
        out.append(lr)
    return out


def val(*maps: float) -> list[dict]:
    return [{"loss": 1.0, "val_mAP": m} for m in maps]


def test_patience_tolerates_that_many_epochs_without_improvement():
    # Patience 2: the third epoch in a row without a better mAP decays, then counting restarts.
    sched, optimizer = schedule(lr_patience=2)
    assert lrs(sched, val(0.5, 0.4, 0.45, 0.3, 0.6, 0.5, 0.5, 0.5, 0.5)) == pytest.approx(
        [1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01]
    )
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    # Patience 0 (LESA's "whenever it degrades"): every epoch without improvement decays.
    assert lrs(schedule(lr_patience=0)[0], val(0.5, 0.4, 0.6, 0.3)) == pytest.approx([1, 0.1, 0.1, 0.01])


def test_loss_plateau_watches_the_training_loss_not_validation():
    sched, _ = schedule(plateau_metric="loss", lr_patience=1)
    # Validation mAP falls every epoch, but the loss keeps going down: no decay...
    records = [{"loss": loss, "val_mAP": 0.5 - 0.1 * i} for i, loss in enumerate((1.0, 0.8, 0.7, 0.6))]
    assert lrs(sched, records) == pytest.approx([1, 1, 1, 1])
    # ...until it stops: two epochs no lower than the best (a rounding-size dip does not count).
    records += [{"loss": 0.6, "val_mAP": 0.9}, {"loss": 0.59999, "val_mAP": 0.9}]
    assert lrs(sched, records)[-2:] == pytest.approx([1, 0.1])


def test_without_validation_the_val_plateau_watches_the_loss():
    sched, _ = schedule(lr_patience=0)
    assert lrs(sched, [{"loss": 1.0, "val_mAP": None}, {"loss": 1.2, "val_mAP": None}]) == pytest.approx([1, 0.1])


def test_min_lr_and_other_schedules():
    assert lrs(schedule(min_lr=0.05)[0], val(0.5, 0.4, 0.3)) == pytest.approx([1, 0.1, 0.05])
    assert lrs(schedule(schedule="step", lr_milestones=[1])[0], val(0.5, 0.4)) == [1.0, 1.0]


def test_papers_plateaus_and_bad_settings():
    rgcn = method_class("rgcn-posvae").default_recipe
    assert (rgcn.schedule, rgcn.plateau_metric, rgcn.lr_patience) == ("plateau", "loss", 2)
    assert method_class("sgma").default_recipe.lr_patience == 2
    lesa = method_class("lesa").default_recipe
    assert (lesa.plateau_metric, lesa.lr_patience) == ("val", 0)  # "whenever ... degrades"
    with pytest.raises(UsageError, match="plateau_metric"):
        Recipe(plateau_metric="accuracy")
    with pytest.raises(UsageError, match="lr_patience"):
        Recipe(lr_patience=-1)


def test_the_trainer_decays_on_a_training_loss_plateau(tmp_path, word_vectors, monkeypatch):
    """The trainer hands the schedule every epoch's record: with plateau_metric=loss and
    lr_patience=1, two epochs whose mean loss stays at 0.9 (epochs 3 and 4) halve the rate for epoch 5."""
    import synth

    from zstag.training import trainer as train_module
    from zstag.training.trainer import TrainOptions, train

    losses = iter([1.0, 0.9, 0.9, 0.9, 0.9])
    real = train_module.run_epoch
    monkeypatch.setattr(train_module, "run_epoch", lambda *a, **k: {**real(*a, **k), "loss": next(losses)})
    tiny = synth.make_dataset(tmp_path / "tiny", n=12, size=32, seed=5)
    options = TrainOptions(
        data=tiny["manifest"],
        method="fast0tag",
        out=tmp_path / "model",
        backbone="small",
        semantics=str(word_vectors),
        epochs=5,
        batch_size=4,
        image_size=32,
        device="cpu",
        seed=1,
        val_fraction=0.25,
        workers=0,
        overrides={
            "hidden": 16,
            "lr": 0.01,
            "lr_factor": 0.5,
            "plateau_metric": "loss",
            "lr_patience": 1,
            "early_stopping": 0,
        },
    )
    history = train(options).config["training"]["history"]
    assert [h["lr"] for h in history] == pytest.approx([0.01, 0.01, 0.01, 0.01, 0.005])
