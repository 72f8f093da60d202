"""An ensemble: several trained models of one frozen backbone, scored as one (`zstag ensemble`).

Zero-shot scores of a single head trained on a few thousand images vary a lot with its seed (on
the OpenClipart benchmark, LESA M = 1 over seven seeds: test ZS mAP 5.3 to 8.9, docs/benchmarks.md);
the mean of several heads varies less and ranks better. The members must share the backbone, frozen
(their model directories do not hold it, `backbone_in_weights: false`), the semantics, the image size
and the seen labels; the backbone then runs once per batch and only the heads are repeated.

Scores: each member's scores are standardised per image against its own scores for the seen labels
(the T-norm of `Method.standardised`) and the members' standardised scores averaged, so that no
member weighs more because its scores spread wider. Not in any of the papers; nothing is trained
here: the members are trained as usual and assembled.
"""

from __future__ import annotations

import dataclasses
import reprlib
from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import nn

from zstag.backbones.base import Backbone, Stages
from zstag.core.errors import UsageError
from zstag.data.labels import LabelSet
from zstag.methods.base import Embedder, ImageCode, Method, t_norm
from zstag.methods.settings import Hyperparameters, MethodConfig, Recipe

MAX_MEMBERS = 64


@dataclasses.dataclass(frozen=True)
class EnsembleHyperparameters(Hyperparameters[MethodConfig]):
    """The members' methods and validated settings; the `hp` object of config.json is
    `{"members": [{"method": NAME, "hp": {...}}, ...]}`."""

    members: tuple[tuple[str, Hyperparameters], ...] = ()

    def flat(self) -> dict[str, Any]:
        return {"members": [{"method": name, "hp": hp.flat()} for name, hp in self.members]}


class SharedMaps:
    """One batch's feature maps from the shared backbone, computed once, as far as any member asks
    (`Backbone.regions` stops early: the bundled backbone's region map is its middle stage)."""

    def __init__(self, backbone: Backbone, images: torch.Tensor) -> None:
        self.backbone, self.images = backbone, images
        self.source = backbone.feature_maps(images)
        self.done: list[torch.Tensor] = []
        self.full: list[torch.Tensor] | None = None

    def feature_maps(self) -> Iterator[torch.Tensor]:
        index = 0
        while True:
            if index == len(self.done):
                following = next(self.source, None)
                if following is None:
                    return
                self.done.append(following)
            yield self.done[index]
            index += 1

    def stages(self) -> list[torch.Tensor]:
        """All stages, with `Stages.pooled` where the backbone computes one (CLIP)."""
        if self.full is None:
            overridden = type(self.backbone).stages is not Backbone.stages
            self.full = self.backbone.stages(self.images) if overridden else list(self.feature_maps())
        return self.full


class MemberView(Backbone):
    """A member's backbone: its input is the batch's `SharedMaps`, not images. Methods only hand
    their input to the backbone (as with the trainer's `StageCache`), so they run unchanged. The
    shared backbone is referenced, not registered: its tensors belong to the ensemble once."""

    shared: Backbone

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.name, self.channels, self.region_stage = backbone.name, backbone.channels, backbone.region_stage
        self.class_names = backbone.class_names
        # Referenced, not registered (nn.Module would register a module assigned the usual way):
        # methods test `classifier` (RGCN-PosVAE's external nodes) and call `class_logits`.
        object.__setattr__(self, "shared", backbone)
        object.__setattr__(self, "classifier", backbone.classifier)

    def feature_maps(self, maps: SharedMaps) -> Iterator[torch.Tensor]:  # type: ignore[override]
        return maps.feature_maps()

    def stages(self, maps: SharedMaps) -> list[torch.Tensor]:  # type: ignore[override]
        return maps.stages()

    def prepare_classifier(self, device: torch.device) -> None:
        self.shared.prepare_classifier(device)

    def class_logits(self, stages: list[torch.Tensor]) -> torch.Tensor:
        return self.shared.class_logits(stages if isinstance(stages, Stages) else list(stages))


class Ensemble(Method[dict[str, torch.Tensor]]):
    """The mean of the members' per-image standardised scores (module docstring)."""

    name = "ensemble"

    def __init__(self, backbone: Backbone, seen: LabelSet, hp: Hyperparameters, embed: Embedder) -> None:
        super().__init__(backbone, seen, hp, embed)
        assert isinstance(hp, EnsembleHyperparameters)
        self.seen = seen
        self.members = nn.ModuleList(
            _member_class(name)(MemberView(backbone), seen, member_hp, embed) for name, member_hp in hp.members
        )
        self.chunkable = all(member.chunkable for member in self.heads)  # type: ignore[misc]

    @property
    def heads(self) -> list[Method]:
        """The members, typed (an `nn.ModuleList` yields plain modules)."""
        return cast(list[Method], list(self.members))

    @classmethod
    def hyperparameters(cls, overrides: dict[str, Any] | None = None) -> EnsembleHyperparameters:
        """`{"members": [{"method": NAME, "hp": {...}}, ...]}`, each member's settings validated by
        its own method (UsageError naming the member)."""
        overrides = dict(overrides or {})
        members = overrides.pop("members", None)
        if overrides:
            key = reprlib.repr(sorted(overrides, key=str)[0])
            raise UsageError(f"unknown hyperparameter {key} for an ensemble (only 'members')")
        if not isinstance(members, list) or not 2 <= len(members) <= MAX_MEMBERS:
            raise UsageError(f"an ensemble's 'members' must be a list of 2 to {MAX_MEMBERS} models")
        specs = []
        for index, member in enumerate(members):
            if not isinstance(member, dict) or set(member) != {"method", "hp"} or not isinstance(member["hp"], dict):
                raise UsageError(f"ensemble member {index} must be an object with 'method' and 'hp' (an object)")
            try:
                specs.append((member["method"], _member_class(member["method"]).hyperparameters(member["hp"])))
            except UsageError as exc:
                raise UsageError(f"ensemble member {index}: {exc}") from None
        return EnsembleHyperparameters(Recipe(), MethodConfig(), tuple(specs))

    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every member's code, keyed `index` or `index.key`, from one pass of the shared backbone."""
        maps = SharedMaps(self.backbone, images)
        code: dict[str, torch.Tensor] = {}
        for index, member in enumerate(self.heads):
            part: ImageCode = member.encode(maps)  # type: ignore[arg-type]  # a MemberView reads SharedMaps
            if isinstance(part, torch.Tensor):
                code[str(index)] = part
            else:
                code.update({f"{index}.{key}": value for key, value in part.items()})
        if self.linear_members:
            code["direction"], code["offset"] = self.linear_parts(code, self.seen.to(images.device))
        return code

    def member_code(self, code: dict[str, torch.Tensor], index: int) -> ImageCode:
        """Member `index`'s part of the ensemble's code, as its `encode` returned it."""
        if str(index) in code:
            return code[str(index)]
        prefix = f"{index}."
        return {key[len(prefix) :]: value for key, value in code.items() if key.startswith(prefix)}

    def prepare(self, device: torch.device) -> None:
        for member in self.heads:
            member.prepare(device)

    @property
    def linear_members(self) -> bool:
        """Whether every member scores linearly in the label vectors (`Method.linear_in_labels`):
        then the ensemble's score is one product with the vocabulary (`score`)."""
        return all(member.linear_in_labels for member in self.heads)

    def prepare_labels(self, labels: LabelSet) -> LabelSet:
        """Each member's label-side work, kept apart under `index/` (two LESA heads both name
        theirs `lesa.theta`); none when the members score linearly (`score` needs only the vectors)."""
        if self.linear_members:
            return labels
        derived: dict[str, torch.Tensor] = {}
        for index, member in enumerate(self.heads):
            prepared = member.prepare_labels(LabelSet(labels.names, labels.vectors))
            derived.update({f"{index}/{key}": value for key, value in prepared.derived.items()})
        return labels.with_derived(**derived)

    @staticmethod
    def member_labels(labels: LabelSet, index: int) -> LabelSet:
        """`labels` with member `index`'s own prepared tensors only, under their own names."""
        prefix = f"{index}/"
        own = {key[len(prefix) :]: value for key, value in labels.derived.items() if key.startswith(prefix)}
        return LabelSet(labels.names, labels.vectors, own)

    def score(self, code: dict[str, torch.Tensor], labels: LabelSet) -> torch.Tensor:
        if self.linear_members:
            return self.linear_score(code, labels)
        seen = self.seen.to(next(iter(code.values())).device)
        total = None
        for index, member in enumerate(self.heads):
            part = self.member_code(code, index)
            scores = member.score(part, self.member_labels(labels, index)).float()
            standard = t_norm(scores, member.score(part, seen).float())
            total = standard if total is None else total + standard
        assert total is not None  # two members at least
        return total / len(self.heads)

    def linear_parts(self, code: dict[str, torch.Tensor], seen: LabelSet) -> tuple[torch.Tensor, torch.Tensor]:
        """The image side of the mean of standardised scores when every member scores linearly.

        Member i scores v . u_i, standardised with its seen-label mean m_i and spread d_i; the mean
        over K members is v . (sum_i u_i / d_i) / K - (sum_i m_i / d_i) / K. Returns (sum_i u_i /
        d_i, sum_i m_i / d_i), which depend on the image alone: `encode` computes them once per
        batch, so a vocabulary scored in chunks does not redo the members' seen-label statistics
        for every chunk (they took most of the time of 100,000 labels on a CPU, 7 chunks of 16 members).
        """
        direction, offset = None, None
        for index, member in enumerate(self.heads):
            u = member.label_directions(self.member_code(code, index))  # (B, D)
            reference = u @ seen.vectors.to(u).T  # (B, S)
            spread = reference.std(dim=1, unbiased=False, keepdim=True).clamp_min(1e-6)
            part, shift = u / spread, reference.mean(dim=1, keepdim=True) / spread
            direction = part if direction is None else direction + part
            offset = shift if offset is None else offset + shift
        assert direction is not None and offset is not None  # two members at least
        return direction, offset

    def linear_score(self, code: dict[str, torch.Tensor], labels: LabelSet) -> torch.Tensor:
        """The same mean of standardised scores as the member-by-member path of `score`, in one
        product with the vocabulary (`linear_parts`): 100,000 labels cost one (L x D) product per
        batch instead of K (the members' own `score` would each compute it)."""
        direction, offset = code["direction"], code["offset"]
        return (direction @ labels.vectors.to(direction).T - offset) / len(self.heads)

    def loss(
        self, images: torch.Tensor, targets: torch.Tensor, seen: LabelSet
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise UsageError("an ensemble is not trained: train its members, then `zstag ensemble MODEL... --out DIR`")


def _member_class(name: Any) -> type[Method]:
    from zstag.methods import METHODS, method_class

    if not isinstance(name, str) or name not in METHODS:
        raise UsageError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    cls = method_class(name)
    if cls.reads_images:
        raise UsageError(f"{name} reads the images themselves (it crops them), so it cannot share a backbone pass")
    return cls
