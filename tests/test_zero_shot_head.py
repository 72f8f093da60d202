"""CLIP's zero-shot classifier (`ZeroShotHead`): an input that is not the pooled image vector is
refused with the reason."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zstag.backbones.clip import ZeroShotHead

NAMES = ["cat", "dog", "car"]


def test_a_patch_map_instead_of_the_pooled_vector_names_the_cause():
    head = ZeroShotHead("tiny-semantics", NAMES, 10.0)
    head._vectors[torch.device("cpu")] = F.normalize(torch.randn(3, 4), dim=1)
    assert head(torch.randn(2, 4)).shape == (2, 3)
    with pytest.raises(ValueError, match=r"pooled image vector \(B, D\), got shape \(2, 4, 7, 7\).*Stages.pooled"):
        head(torch.randn(2, 4, 7, 7))
