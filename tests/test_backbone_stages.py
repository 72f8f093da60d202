"""Backbones compute their stages lazily: the region map does not pay for the stages after it."""

from __future__ import annotations

import pytest
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


def test_scratch_trunks_share_the_stage_contract():
    """`small` and `small-resnet` are interchangeable under every method: the same three stage
    shapes (strides 8, 16, 32), and a classifier head over the pooled last stage when asked."""
    from zstag.backbones import SCRATCH_BACKBONES, build_backbone
    from zstag.backbones.small import build_scratch

    images = torch.randn(2, 3, 64, 64)
    for name in SCRATCH_BACKBONES:
        backbone = build_backbone(name).eval()
        with torch.no_grad():
            shapes = [tuple(s.shape) for s in backbone.stages(images)]
        assert shapes == [(2, 128, 8, 8), (2, 256, 4, 4), (2, 512, 2, 2)], name
        head = build_scratch(name, num_classes=5, class_names=list("abcde"))
        assert head.classifier is not None and head.class_logits(head.stages(images)).shape == (2, 5)


def test_bundled_backbone_follows_its_config_architecture(tmp_path, monkeypatch):
    """weights/bundled says which trunk it is; a config naming another one is refused before any
    tensor is allocated, and a resnet-shaped bundle loads as one."""
    import json

    from safetensors.torch import save_file

    from zstag.backbones import bundled
    from zstag.backbones.small import SmallResNet
    from zstag.core.errors import ModelError

    monkeypatch.setattr(bundled, "BUNDLED_DIR", tmp_path)
    net = SmallResNet(num_classes=3, class_names=["cat", "dog", "owl"])
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "model.safetensors"))
    config = {"architecture": "small-resnet", "class_names": ["cat", "dog", "owl"]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = bundled.load_bundled()
    assert isinstance(loaded, SmallResNet) and loaded.name == "bundled" and loaded.class_names == ["cat", "dog", "owl"]
    for bad in ({**config, "architecture": "vgg19"}, {**config, "class_names": "cat"}):
        (tmp_path / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ModelError):
            bundled.load_bundled()


def test_a_malformed_bundled_config_is_a_model_error(tmp_path, monkeypatch):
    """Every shape of a broken config.json (not JSON, not an object, an architecture that is not
    a string, no class names) is one ModelError line, not a TypeError or a traceback."""
    from zstag.backbones import bundled
    from zstag.core.errors import ModelError

    monkeypatch.setattr(bundled, "BUNDLED_DIR", tmp_path)
    names = ["cat", "dog"]
    save_weights(tmp_path, SmallBackbone(num_classes=2, class_names=names))
    for text in (
        "{not json",
        '["small"]',
        '{"architecture": ["small"], "class_names": ["cat", "dog"]}',
        '{"architecture": {"small": 1}, "class_names": ["cat", "dog"]}',
        '{"architecture": "small", "class_names": []}',
        '{"architecture": "small", "class_names": ["cat", 3]}',
    ):
        (tmp_path / "config.json").write_text(text)
        with pytest.raises(ModelError, match="config.json"):
            bundled.load_bundled(pretrained=False)
    (tmp_path / "config.json").write_text('{"architecture": "small", "class_names": ["cat", "dog"]}')
    assert bundled.load_bundled(pretrained=False).class_names == names


def save_weights(folder, net: torch.nn.Module) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "model.safetensors"))


@pytest.mark.parametrize("pretrained", [True, False])
def test_bundled_class_names_must_match_the_shipped_classifier(tmp_path, monkeypatch, pretrained):
    """The head is sized by config.json's class names: a count the weights' classifier does not
    have (read from the safetensors header) is one ModelError line, before any tensor is allocated."""
    import json

    from zstag.backbones import bundled
    from zstag.core.errors import ModelError

    monkeypatch.setattr(bundled, "BUNDLED_DIR", tmp_path)
    save_weights(tmp_path, SmallBackbone(num_classes=2, class_names=["cat", "dog"]))
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "small", "class_names": ["cat"] * 3}))
    monkeypatch.setattr(bundled, "build_scratch", lambda *a, **k: pytest.fail("built before the check"))
    with pytest.raises(ModelError, match=r"lists 3 class names, but .*model.safetensors has a classifier over 2$"):
        bundled.load_bundled(pretrained)
    save_weights(tmp_path, SmallBackbone())  # no classifier at all
    with pytest.raises(ModelError, match="no readable classifier.2.weight tensor") as info:
        bundled.load_bundled(pretrained)
    assert "\n" not in str(info.value)


def test_small_resnet_is_torchvision_resnet18_layout_without_importing_torchvision():
    """`small-resnet` has its own residual blocks: the same parameter names and the same maps as
    torchvision's ResNet-18 layers (so weights from either load in the other), and building or
    loading the bundled backbone never imports torchvision (a second of every fresh process)."""
    import subprocess
    import sys

    from torchvision.models.resnet import BasicBlock, ResNet

    from zstag.backbones.small import SmallResNet

    torch.manual_seed(0)
    reference = ResNet(BasicBlock, [2, 2, 2, 2], zero_init_residual=True)
    for bn in (m for m in reference.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # not the identity
        torch.nn.init.normal_(bn.weight)
        torch.nn.init.normal_(bn.bias)
    ours = SmallResNet()
    renamed = {"stem.0": "conv1", "stem.1": "bn1", "stem.4": "layer1", "stage3": "layer2", "stage4": "layer3"}
    renamed["stage5"] = "layer4"
    theirs = reference.state_dict()
    state = {}
    for key in ours.state_dict():
        prefix = next(p for p in renamed if key.startswith(p + "."))
        state[key] = theirs[renamed[prefix] + key[len(prefix) :]]
    ours.load_state_dict(state, strict=True)
    assert len(state) == len([k for k in theirs if not k.startswith("fc.")])
    ours.eval(), reference.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        c3, c4, c5 = ours.stages(x)
        r = reference
        r2 = r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x))))))
        r3 = r.layer3(r2)
        expected = [r2, r3, r.layer4(r3)]
    for got, want in zip((c3, c4, c5), expected):
        torch.testing.assert_close(got, want)
    # Fresh weights start each block as the identity, as torchvision's zero_init_residual does.
    assert all(float(b.bn2.weight.abs().sum()) == 0 for b in SmallResNet().modules() if hasattr(b, "bn2"))

    code = (
        "import sys; from zstag.backbones.bundled import load_bundled; load_bundled(); "
        "print('torchvision' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
