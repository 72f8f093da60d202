"""Seen/unseen label splits and the validation split, deterministic under a seed."""

from __future__ import annotations

import random

from zstag.data.manifest import Sample


def remove_unseen(samples: list[Sample], unseen: list[str]) -> tuple[list[Sample], int]:
    """Samples with unseen tags removed from their targets, and how many tags were removed.

    Images keep their place even when no seen tag is left: they are negatives for every seen
    label, as in NUS-WIDE's zero-shot protocol.
    """
    hidden = set(unseen)
    removed = sum(t in hidden for s in samples for t in s.tags)
    return [Sample(s.image, [t for t in s.tags if t not in hidden]) for s in samples], removed


def split_validation(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(train, val): a seeded random `fraction` of the samples held out, at least one of each when possible."""
    if fraction <= 0 or len(samples) < 2:
        return list(samples), []
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(fraction * len(samples))), len(samples) - 1)
    held = set(order[:n_val])
    return [s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held]
