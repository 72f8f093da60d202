"""Backbones compute their stages lazily: the region map does not pay for the stages after it."""

from __future__ import annotations

import torch

from zstag.backbones.small import SmallBackbone


def test_regions_stop_at_the_region_stage():
    torch.manual_seed(0)
    backbone = SmallBackbone().eval()
    calls = []
    backbone.stage5.register_forward_hook(lambda *args: calls.append(1))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        regions = backbone.regions(images)
        assert calls == []
        stages = backbone.stages(images)
    assert calls == [1] and len(stages) == 3
    assert backbone.region_stage == 1 and [s.shape[1] for s in stages] == list(backbone.channels)
    torch.testing.assert_close(regions, stages[backbone.region_stage])
