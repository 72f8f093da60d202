"""VGG19 / ResNet backbones with random weights: stage shapes, exactness against torchvision's own
forward pass, and the pretrained path through a fake fetch cache holding timm-named safetensors.

VGG19 at 224 px costs ~20 GFLOP an image on the CPU, so it runs once at batch 1; the other checks
use 64 px, one randomly initialised network per architecture (module fixtures), and reference
networks built on the meta device.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch.nn import functional as F

from zstag.backbones import build_backbone
from zstag.backbones.torchvision_nets import build_torchvision, timm_to_ours
from zstag.core.errors import MissingWeightsError, ModelError
from zstag.methods.ml2p import forward_pyramid
from zstag.store import hub


def ours_to_timm(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict under timm's `*.tv_in1k` key names and shapes (written independently of the
    module's mapping, from timm's vgg.py: classifier.0/3/6 -> pre_logits.fc1/fc2 (convs), head.fc)."""
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue  # some exports drop them; the loader must cope
        if name == "vgg19" and key.startswith("classifier.mlp."):
            index, leaf = key[len("classifier.mlp.") :].split(".")
            timm_key = {"0": "pre_logits.fc1", "3": "pre_logits.fc2", "6": "head.fc"}[index] + "." + leaf
            if leaf == "weight" and index == "0":
                value = value.reshape(4096, 512, 7, 7)
            elif leaf == "weight" and index == "3":
                value = value.reshape(4096, 4096, 1, 1)
            key = timm_key
        elif key.startswith("classifier.fc."):
            key = key[len("classifier.") :]
        out[key] = value.contiguous().clone()
    return out


@pytest.fixture
def fake_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An empty zstag cache (and HF home) for the shipped registry; returns a writer of timm files."""
    monkeypatch.setenv("ZSTAG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for var in ("HF_HUB_CACHE", "XDG_CACHE_HOME", hub.REGISTRY_ENV):
        monkeypatch.delenv(var, raising=False)

    def put(name: str, tensors: dict[str, torch.Tensor]) -> Path:
        spec = hub.resolve(name)  # the registry pins these to commits: no refs/ needed
        folder = hub.hub_dir() / ("models--" + spec.repo.replace("/", "--")) / "snapshots" / spec.revision
        folder.mkdir(parents=True)
        save_file(tensors, str(folder / "model.safetensors"))
        # a stand-in, not the file the registry pins: unpin it, or loading refuses it as corrupt
        entries = hub.load_registry()
        entries[name]["files"] = [{"name": "model.safetensors", "sha256": None, "size": None}]
        (tmp_path / "registry.json").write_text(json.dumps(entries))
        monkeypatch.setenv(hub.REGISTRY_ENV, str(tmp_path / "registry.json"))
        return folder / "model.safetensors"

    return put


def reference(builder, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """torchvision's own network holding `state`, built on the meta device to skip its random init."""
    with torch.device("meta"):
        net = builder(weights=None)
    net.load_state_dict(state, strict=True, assign=True)
    return net.eval()


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return build_torchvision("vgg19", pretrained=False).eval()


@pytest.fixture(scope="module")
def resnet50():
    torch.manual_seed(0)
    return build_backbone("resnet50", pretrained=False).eval()


def test_vgg19_stages_at_224(vgg):
    with torch.no_grad():
        stages = vgg.stages(torch.randn(1, 3, 224, 224))
        logits = vgg.class_logits(stages)
    assert [tuple(s.shape) for s in stages] == [(1, 256, 28, 28), (1, 512, 14, 14), (1, 512, 14, 14)]
    assert vgg.channels == (256, 512, 512) and vgg.region_stage == 2 and vgg.region_channels == 512
    assert tuple(logits.shape) == (1, 1000)
    assert len(vgg.class_names) == 1000 and vgg.class_names[0] == "tench"
    assert all((s >= 0).all() for s in stages)  # max-pools of ReLUs / a ReLU


def test_vgg19_stage_indices_are_pool3_pool4_conv5_4(vgg):
    """Issue 19 item 2: the stages end exactly at torchvision's pool3 (features[18]), pool4
    (features[27]) and conv5_4's ReLU (features[35]), so (ML)^2P's 7x7 pyramid is pool3 / pool4 /
    pool5 as in its released code. The old cuts (conv4_4, conv5_4, pool5) gave pool5 twice."""
    net = torchvision.models.vgg19(weights=None)  # the architecture, to read its layer indices
    pools = [i for i, m in enumerate(net.features) if isinstance(m, torch.nn.MaxPool2d)]
    relus = [i for i, m in enumerate(net.features) if isinstance(m, torch.nn.ReLU)]
    assert pools == [4, 9, 18, 27, 36] and relus[-1] == 35
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        stages = vgg.stages(image)
        expected = [
            vgg.features[: pools[2] + 1](image),
            vgg.features[: pools[3] + 1](image),
            vgg.features[: relus[-1] + 1](image),
        ]
        assert all(torch.equal(a, b) for a, b in zip(stages, expected))
        pyramid = forward_pyramid(stages, 2, True)  # what (ML)^2P stacks, at pool5's 2x2 grid here
        pool4, pool5 = expected[1], vgg.features[: pools[4] + 1](image)
        assert torch.equal(pyramid[:, 768:], pool5)  # the last level is pool5...
        assert torch.equal(pyramid[:, 256:768], F.max_pool2d(pool4, 2))  # ...the middle one pool4


def test_vgg19_equals_torchvision_forward(vgg):
    """Our stages + classifier cover torchvision's VGG19 exactly: same logits from the same weights.

    At 64 px pool5 is 2x2, so this also pins the classifier's adaptive pooling to 7x7.
    """
    state = {**vgg.features.state_dict(prefix="features."), **vgg.classifier.mlp.state_dict(prefix="classifier.")}
    net = reference(torchvision.models.vgg19, state)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        stages = vgg.stages(image)
        assert [tuple(s.shape[-2:]) for s in stages] == [(8, 8), (4, 4), (4, 4)]
        assert torch.allclose(net(image), vgg.class_logits(stages), atol=1e-5, rtol=1e-4)


def test_resnet50_stages_and_torchvision_equivalence(resnet50):
    """Strides 8/16/32 at 64 px (28/14/7 at 224) and exactly torchvision's logits for the same weights."""
    assert resnet50.name == "resnet50" and resnet50.channels == (512, 1024, 2048) and resnet50.region_stage == 2
    net = reference(
        torchvision.models.resnet50, {k.replace("classifier.", ""): v for k, v in resnet50.state_dict().items()}
    )
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        stages = resnet50.stages(image)
        assert [tuple(s.shape) for s in stages] == [(1, 512, 8, 8), (1, 1024, 4, 4), (1, 2048, 2, 2)]
        assert torch.allclose(net(image), resnet50.class_logits(stages), atol=1e-5, rtol=1e-4)


def test_resnet101_stages_at_64():
    net = build_backbone("resnet101", pretrained=False).eval()
    with torch.no_grad():
        stages = net.stages(torch.randn(1, 3, 64, 64))
    assert [tuple(s.shape) for s in stages] == [(1, 512, 8, 8), (1, 1024, 4, 4), (1, 2048, 2, 2)]
    assert len(list(net.layer3)) == 23  # ResNet-101's 3-4-23-3 blocks, not ResNet-50's 3-4-6-3


def test_timm_fc1_kernel_becomes_the_matching_linear_layer():
    """timm applies fc1 as a 7x7 convolution over pool5; our Linear must compute the same numbers."""
    torch.manual_seed(0)
    kernel = torch.randn(6, 512, 7, 7)
    pool5 = torch.randn(2, 512, 7, 7)
    mapped = timm_to_ours("vgg19", {"pre_logits.fc1.weight": kernel, "pre_logits.fc1.bias": torch.zeros(6)})
    assert set(mapped) == {"classifier.mlp.0.weight", "classifier.mlp.0.bias"}
    as_conv = F.conv2d(pool5, kernel).flatten(1)
    as_linear = F.linear(pool5.flatten(1), mapped["classifier.mlp.0.weight"])
    assert torch.allclose(as_conv, as_linear, atol=1e-3)
    assert timm_to_ours("resnet50", {"fc.weight": kernel})["classifier.fc.weight"] is kernel


def test_vgg19_pretrained_loads_timm_names_from_the_cache(fake_cache, vgg):
    fake_cache("vgg19", ours_to_timm("vgg19", vgg.state_dict()))
    loaded = build_backbone("vgg19", pretrained=True)
    for key in ("features.34.weight", "classifier.mlp.0.weight", "classifier.mlp.6.bias"):
        assert torch.equal(loaded.state_dict()[key], vgg.state_dict()[key]), key


def test_resnet50_pretrained_load_and_mismatches(fake_cache, resnet50):
    source = resnet50
    timm_state = ours_to_timm("resnet50", source.state_dict())
    path = fake_cache("resnet50", timm_state)
    loaded = build_torchvision("resnet50", pretrained=True)
    assert torch.equal(loaded.layer3[2].conv2.weight, source.layer3[2].conv2.weight)
    assert torch.equal(loaded.classifier.fc.bias, source.classifier.fc.bias)
    assert loaded.bn1.num_batches_tracked.device.type == "cpu"  # absent from the file, filled in

    save_file({k: v for k, v in timm_state.items() if k != "layer4.0.downsample.1.running_var"}, str(path))
    with pytest.raises(ModelError, match=r"missing: layer4\.0\.downsample\.1\.running_var"):
        build_torchvision("resnet50", pretrained=True)
    save_file({**timm_state, "fc.weight": torch.zeros(10, 2048), "extra.bias": torch.zeros(1)}, str(path))
    with pytest.raises(ModelError, match=r"unexpected: extra\.bias; wrong shape: classifier\.fc\.weight"):
        build_torchvision("resnet50", pretrained=True)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="cannot read"):
        build_torchvision("resnet50", pretrained=True)


@pytest.mark.parametrize("name", ["vgg19", "resnet101"])
def test_missing_weights_name_the_fetch_command(fake_cache, name):
    with pytest.raises(MissingWeightsError, match=f"run `zstag fetch {name}`"):
        build_backbone(name, pretrained=True)
