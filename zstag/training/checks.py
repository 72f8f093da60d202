"""Everything `zstag train` can check before it imports torch or loads a model.

Start-up (torch, the backbone, the semantic model) takes seconds to tens of seconds; a missing
file or a typo in a manifest should not wait for it, and a user should see every such problem in
one run, not one per attempt. `problems(opts)` returns them as lines (an empty list when the run
may start); `label_warnings` says when the labels look like something other than tags. Neither
imports torch, except to check `--set` keys that belong to a method's own settings: those are
declared beside the method's modules, which do.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from pathlib import Path

from zstag.backbones import BACKBONES
from zstag.core.errors import UsageError
from zstag.data.manifest import Sample, read_dataset
from zstag.data.splits import remove_unseen
from zstag.data.vocab import read_vocabulary
from zstag.methods import METHODS, method_class
from zstag.methods.settings import Recipe
from zstag.store import SEMANTICS_NAMES
from zstag.store.hub import shared_place
from zstag.training.options import TrainOptions

MAX_LABEL_CHARS = 200  # no tag is this long; a longer "label" is a pasted text
SHOWN = 5  # names shown per problem before "... and N more"
# A label "looks like a sentence" when it ends in sentence punctuation or has more words than this.
SENTENCE_WORDS = 6


def shown(items: list[str]) -> str:
    """The first few of `items`, quoted, and how many more there are."""
    more = len(items) - SHOWN
    return ", ".join(repr(i) for i in items[:SHOWN]) + (f" ... and {more} more" if more > 0 else "")


def _vocabulary(path: Path | None, what: str, found: list[str]) -> list[str]:
    if path is None:
        return []
    try:
        return read_vocabulary(path)
    except UsageError as exc:
        found.append(f"{what}: {exc}")
        return []


def _zstag_model_dir(folder: Path) -> bool:
    """Whether `folder` holds a config.json that zstag wrote (a model to train again, or a run to
    resume): the only non-empty --out training may write into."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(config, dict) and "zstag_version" in config


def _settings(opts: TrainOptions, found: list[str]) -> None:
    """`--set` values: the recipe's keys without torch; a method's own keys with its class."""
    try:
        if set(opts.overrides) <= Recipe.keys():
            Recipe(**opts.overrides)
        elif opts.method in METHODS:
            method_class(opts.method).hyperparameters(opts.overrides)
    except UsageError as exc:
        found.append(f"--set: {exc}")


def problems(opts: TrainOptions) -> list[str]:
    """Every problem with a training run's inputs that can be found without torch, one line each."""
    found: list[str] = []
    if opts.method not in METHODS:
        found.append(f"unknown method {opts.method!r}; choose one of: {', '.join(METHODS)}")
    if opts.overrides:
        _settings(opts, found)
    if opts.backbone not in BACKBONES:
        found.append(f"unknown backbone {opts.backbone!r}; choose one of: {', '.join(BACKBONES)}")
    if opts.semantics not in SEMANTICS_NAMES and not Path(opts.semantics).exists():
        found.append(
            f"unknown semantics {opts.semantics!r}: use {' or '.join(SEMANTICS_NAMES)}, a vector text file "
            "or a sentence-transformers folder"
        )
    out = Path(opts.out)
    place = shared_place(out)
    if place is not None:
        found.append(f"--out {out} is in {place}, which train never rewrites; choose another folder")
    elif out.exists() and not out.is_dir():
        found.append(f"--out {out} is a file; give a folder for the model")
    elif out.is_dir() and any(out.iterdir()) and not _zstag_model_dir(out):
        found.append(f"--out {out} holds files but no model zstag wrote; choose a new or empty folder")
    elif _zstag_model_dir(out) and not (opts.resume or opts.force):
        found.append(
            f"--out {out} holds a model zstag trained (or an interrupted run): add --force to replace it, "
            "or --resume to continue an interrupted run"
        )
    labels = _vocabulary(opts.labels, "--labels", found)
    unseen = _vocabulary(opts.unseen, "--unseen", found)
    try:
        samples = read_dataset(opts.data)
    except UsageError as exc:
        return found + str(exc).splitlines()
    missing = [str(s.image) for s in samples if not s.image.is_file()]
    if missing:
        found.append(f"{opts.data}: {len(missing)} of {len(samples)} listed image(s) not found: {shown(missing)}")
    long = sorted({t for s in samples for t in s.tags if len(t) > MAX_LABEL_CHARS})
    if long:
        found.append(
            f"{opts.data}: {len(long)} tag(s) longer than {MAX_LABEL_CHARS} characters, "
            f"e.g. {long[0][:60]!r}...: a tag names what is in the picture in a few words"
        )
    if opts.labels and not labels or opts.unseen and not unseen:
        return found
    if labels:
        keep = set(labels)
        samples = [Sample(s.image, [t for t in s.tags if t in keep]) for s in samples]
    if not any(s.tags for s in remove_unseen(samples, unseen)[0]):
        found.append(
            f"{opts.data}: no seen label left to train on"
            + (" (every tag is outside --labels or in --unseen)" if labels or unseen else "")
        )
    return found


def label_warnings(samples: list[Sample]) -> list[str]:
    """Warnings for labels that look like descriptions rather than tags (a folder of .txt files
    holding captions, say): labels ending in sentence punctuation or longer than SENTENCE_WORDS
    words, and more labels than images with most of them on a single image."""
    counts = Counter(t for s in samples for t in s.tags)
    said = []
    sentences = [t for t in counts if t.rstrip()[-1:] in ".!?;" or len(t.split()) > SENTENCE_WORDS]
    if sentences:
        said.append(
            f"{len(sentences)} of {len(counts)} label(s) look like sentences, not tags (ending in . ! ? ; "
            f"or over {SENTENCE_WORDS} words), e.g. {shown(sentences)}: tags are comma-separated names "
            "such as 'dog, beach'"
        )
    single = [t for t, n in counts.items() if n == 1]
    if len(counts) > len(samples) and 2 * len(single) > len(counts):
        said.append(
            f"{len(counts)} labels for {len(samples)} image(s), {len(single)} of them on one image only: "
            "a label needs several images to be learnt"
        )
    return said


def unseen_typos(unseen: list[str], labels: list[str]) -> list[str]:
    """Unseen labels absent from the data but one letter or so from a label it has ('triangel'):
    that label would be trained as seen. Absent labels without a near twin are what zero-shot
    tagging is for, and pass silently."""
    present = set(labels)
    said = []
    for label in unseen:
        if label not in present:
            near = difflib.get_close_matches(label, labels, n=1, cutoff=0.85)
            if near:
                said.append(
                    f"unseen label {label!r} is not in the data, but {near[0]!r} is (a typo?): it is trained as seen"
                )
    return said
