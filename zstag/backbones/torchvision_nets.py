"""VGG19 and ResNet-50/101: the ImageNet backbones of the papers, as torchvision builds them.

Stages (at 224 px):
- VGG19: pool3 (28x28x256, stride 8), pool4 (14x14x512, stride 16) and conv5_4 after its ReLU
  (14x14x512, stride 16: the "last convolutional map" LESA, SGMA and BiAM attend over, so
  `region_stage = 2`). The classifier applies pool5 itself. Why these three: (ML)^2P's forward
  pyramid max-pools the three stages to 7x7, and the released (ML)^2P code pyramids pool3 / pool4 /
  pool5; max-pooling conv5_4 to 7x7 is exactly pool5 (its 2x2 windows nest in the 7x7 grid), so
  the pyramid sees pool3, pool4 and pool5 while the attention methods keep conv5_4. (The earlier
  conv4_4 / conv5_4 / pool5 gave the pyramid pool4, pool5 and pool5 again: one level twice and
  none from conv3.) The last stage's stride is 16, not 32 as on the other backbones.
- ResNet: layer2, layer3, layer4 (28x28x512, 14x14x1024, 7x7x2048); layer4 is the region map.

The ImageNet classifier is kept (RGCN-PosVAE reads its class probabilities, ConSE its top
classes), with `class_names` the ImageNet-1k names torchvision ships. VGG's three-layer
classifier expects a 7x7 pool5; it max-pools conv5_4 (pool5), then adaptive-average-pools to 7x7
as torchvision's own VGG does, so other input sizes work (at 224 px that pooling is the identity).

Pretrained weights are the original torchvision ImageNet weights as re-published in safetensors
by timm (`timm/*.tv_in1k`), fetched by `zstag fetch NAME`. We never download from
download.pytorch.org (pickles, unreachable here) and never unpickle. timm renames VGG's
classifier into a convolutional "pre-logits" MLP; `timm_to_ours` maps its keys (and reshapes the
two convolution kernels back to linear matrices) onto our module names, which otherwise follow
torchvision's (`features.N`, `conv1`, `layer1`...).

Deviation: a ResNet file without BatchNorm `num_batches_tracked` counters is accepted (they are
training bookkeeping, unused in eval and when BN statistics are frozen); every other key must be
present with its exact shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
import torchvision
from torch import nn

from zstag.backbones.base import Backbone
from zstag.core.errors import MissingWeightsError, ModelError

WEIGHTS_FILE = "model.safetensors"
# VGG19 `features` indices: pool3 is 18, pool4 is 27, conv5_4's ReLU is 35 (pool5, 36, is the
# classifier's first layer). Each stage ends just after its layer.
_VGG_CUTS = (19, 28, 36)
_VGG_POOL5 = 36
# timm's VGG "pre-logits" MLP and head -> torchvision's classifier layers 0, 3, 6 (Linear).
_VGG_TIMM = {
    "pre_logits.fc1.": "classifier.mlp.0.",
    "pre_logits.fc2.": "classifier.mlp.3.",
    "head.fc.": "classifier.mlp.6.",
}


def imagenet_classes() -> list[str]:
    """The 1,000 ImageNet-1k class names, from torchvision's metadata (no download)."""
    return list(torchvision.models.VGG19_Weights.IMAGENET1K_V1.meta["categories"])


class _VGGClassifier(nn.Module):
    """conv5_4 -> pool5 -> 7x7 -> flatten -> torchvision's Linear-ReLU-Dropout x2 -> Linear(1000)."""

    def __init__(self, pool5: nn.Module, mlp: nn.Sequential) -> None:
        super().__init__()
        self.pool5 = pool5
        self.pool = nn.AdaptiveAvgPool2d((7, 7))
        self.mlp = mlp

    def forward(self, conv5_4: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.flatten(self.pool(self.pool5(conv5_4)), 1))


class _PooledLinear(nn.Module):
    """ResNet's head: global average pool then the ImageNet `fc`."""

    def __init__(self, fc: nn.Linear) -> None:
        super().__init__()
        self.fc = fc

    def forward(self, c5: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(c5, 1), 1))


class VGG19Backbone(Backbone):
    name = "vgg19"
    channels = (256, 512, 512)
    region_stage = 2

    def __init__(self) -> None:
        super().__init__()
        net = torchvision.models.vgg19(weights=None)
        self.features = net.features
        self.classifier = _VGGClassifier(net.features[_VGG_POOL5], net.classifier)
        self.class_names = imagenet_classes()

    def feature_maps(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        x, start = images, 0
        for stop in _VGG_CUTS:
            x = self.features[start:stop](x)
            yield x
            start = stop


class ResNetBackbone(Backbone):
    channels = (512, 1024, 2048)
    region_stage = 2

    def __init__(self, depth: int) -> None:
        super().__init__()
        net = {50: torchvision.models.resnet50, 101: torchvision.models.resnet101}[depth](weights=None)
        self.name = f"resnet{depth}"
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.classifier = _PooledLinear(net.fc)
        self.class_names = imagenet_classes()

    def feature_maps(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        c2 = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(images)))))
        c3 = self.layer2(c2)
        yield c3
        c4 = self.layer3(c3)
        yield c4
        yield self.layer4(c4)


def timm_to_ours(name: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a timm `*.tv_in1k` state dict onto our module's keys.

    VGG: `features.N` unchanged; timm's `pre_logits.fc1` (a 7x7 conv, 4096x512x7x7) and `fc2` (a 1x1
    conv) become torchvision's Linear layers by flattening their kernels in (C, H, W) order, the
    order in which torchvision flattens pool5. ResNet: only `fc.` moves under `classifier.`.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if name == "vgg19":
            prefix = next((p for p in _VGG_TIMM if key.startswith(p)), None)
            if prefix is not None:
                key = _VGG_TIMM[prefix] + key[len(prefix) :]
                if value.ndim == 4:
                    value = value.reshape(value.shape[0], -1)
        elif key.startswith("fc."):
            key = "classifier." + key
        out[key] = value
    return out


def load_timm_safetensors(backbone: Backbone, path: Path) -> None:
    """Strictly load timm's safetensors file into `backbone`; any mismatch is a ModelError.

    The file's tensors are assigned, not copied, so `backbone` may have been built on the meta
    device; every parameter and buffer must then come from the file (it is strict).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = timm_to_ours(backbone.name, load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None
    own = backbone.state_dict()
    for key in own:
        if key.endswith("num_batches_tracked") and key not in tensors:
            tensors[key] = torch.zeros((), dtype=torch.long)
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if tuple(own[k].shape) != tuple(tensors[k].shape))
    if missing or unexpected or wrong:
        details = "; ".join(
            f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise ModelError(f"{path} does not fit {backbone.name} ({details}); run `zstag fetch {backbone.name} --force`")
    backbone.load_state_dict(tensors, strict=True, assign=True)


def build_torchvision(name: str, pretrained: bool) -> Backbone:
    """VGG19 / ResNet-50 / ResNet-101; `pretrained` loads ImageNet weights from the fetch cache."""
    builders = {
        "vgg19": VGG19Backbone,
        "resnet50": lambda: ResNetBackbone(50),
        "resnet101": lambda: ResNetBackbone(101),
    }
    if name not in builders:
        raise ModelError(f"unknown torchvision backbone {name!r}; choose one of {', '.join(builders)}")
    weights = None
    if pretrained:
        from zstag.store import hub

        folder = hub.cached(name)
        if folder is None or not (folder / WEIGHTS_FILE).is_file():
            raise MissingWeightsError(
                f"ImageNet weights for {name} are not in the cache ({hub.hub_dir()}): run `zstag fetch {name}` "
                f"(on a machine with network, then copy the cache or point ZSTAG_CACHE at it)"
            )
        weights = folder / WEIGHTS_FILE
    if weights is None:
        return builders[name]()
    with torch.device("meta"):  # skip a random initialisation (seconds for VGG) the file replaces
        backbone = builders[name]()
    load_timm_safetensors(backbone, weights)
    return backbone
