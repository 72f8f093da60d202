"""Pretraining data for the bundled backbone: every labelled picture Debian ships offline, minus the benchmark's.

    apt-get install openclipart-svg openclipart-png pysiogame oxygen-icon-theme gnome-icon-theme
    python -m tools.pretrain_data --benchmark data/openclipart --out data/pretrain [--size 160]
        [--min-count 5] [--val-fraction 0.05] [--seed 0] [--workers N]
        [--sources openclipart,pysiogame,oxygen-icons,gnome-icons] [--root NAME=PATH] [--force]

OUT receives `images/<source>/...png` (RGB on white, longer side at most --size: the trunk trains
at 128-160 px on a CPU, and small files decode fast), `train.jsonl` and `val.jsonl` (GUIDE §1
manifests; val is a held-out slice of these sources, for early stopping and for comparing trunks,
never the benchmark's val), `classes.txt` (the label space) and `stats.json` (options, and per
source its images, labels, licence and every drop count). docs/benchmarks.md has the counts.

The sources (`SOURCES`; a missing one is skipped with a warning naming its Debian package):
- openclipart: all keyword-tagged OpenClipart drawings, not only the benchmark's 4,385: their
  `dc:subject` keywords plus their folder category, as tools/bundle.py does, read and cleaned by
  tools/openclipart.py's own functions (safe SVG parsing, keyword normalisation, junk filter).
- pysiogame: the Art4Apps pictures of the pysiogame activity pack (one named object per
  picture, "alligator.jpg" in "animals/"); the file name and the folder category are the tags.
  The "actions" folder is left out: its names are verbs ("ate", "bit"), not what is drawn.
- oxygen-icons, gnome-icons: two freedesktop icon themes, whose names follow the naming spec
  ("camera-photo", "weather-storm-night"): each word is a tag after `ICON_STOP_WORDS`, a junk
  filter for toolkit and brand names, naming-spec scaffolding and states ("symbolic", "gtk",
  "dev", "high", "disconnected"). Only the devices, places and status contexts name things;
  actions, apps and mime types name functions, programs and file formats. Each icon is taken
  once, at its largest size, and legacy names (symbolic links) are skipped.
Tux Paint stamps and emoji fonts never enter: `refuse_forbidden` raises for any source path
under a tuxpaint or emoji directory.

Two rules keep the benchmark a zero-shot test, and tests/test_pretrain_data.py checks both,
also on a real build:
- No unseen label in any target: a tag is dropped when it is a benchmark unseen label or a
  variant the benchmark's merge rule would fold onto one (spaces, plural endings); an image
  left without tags is dropped.
- No benchmark val/test image in the set: OpenClipart drawings the benchmark put in val or test
  are excluded by name, and every image is compared by content with the benchmark's val/test
  images (`content_signature`: 16x16 thumbnails of the picture at --size on white, whole and
  cropped to its ink; close average hashes and thumbnails are the same picture), which
  catches the same drawing filed twice, re-rendered or shipped by another package. Near-duplicates inside the set are
  dropped too (the first in source order, then name order, stays).
Then all tags of all sources go through the benchmark's plural/space merge together, at most
--max-per-tagset images may share one exact tag set (1,377 generated star polygons), and labels
need --min-count images. Randomness (the val slice) comes from SHA-256 of (seed, image), so the
same trees and options give byte-identical manifests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops

from tools import openclipart as oc
from zstag.core.errors import UsageError

HASH_SIDE = 16  # thumbnail side: fine enough to tell drawings apart, coarse enough to ignore resampling
_FORBIDDEN_PARTS = ("tuxpaint", "emoji")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# pysiogame's Art4Apps folders as a category tag, or None to leave the folder out.
PICTURE_CATEGORIES: dict[str, str | None] = {
    "actions": None,
    "animals": "animal",
    "body": "body",
    "clothes_n_accessories": "clothing",
    "construction": "building",
    "food": "food",
    "fruit_n_veg": "food",
    "jobs": "person",
    "nature": "landscape",
    "people": "person",
    "sport": "sport",
    "transport": "transport",
}

ICON_CONTEXTS = ("devices", "places", "status")
# An icon with one of these words is a distribution or desktop logo, not a picture of the word.
ICON_LOGO_WORDS = frozenset({"logo", "distributor", "swirl", "foot", "start"})
# Words of icon names that are not what the icon shows: toolkit, program and brand names,
# naming-spec scaffolding, file formats, protocols, and states of a device or a task.
ICON_STOP_WORDS = frozenset(
    {
        # toolkits, programs, brands, protocols
        *("gnome", "kde", "gtk", "stock", "xfce", "xfce4", "yast", "redhat", "novell", "debian", "apple"),
        *("dropbox", "dropboxstatus", "owncloud", "onedrive", "gdrive", "openmoko", "freerunner", "cloudstatus"),
        *("nm", "smb", "nfs", "ssh", "ftp", "vpn", "1394", "kxkb", "kjobviewer", "printmgr", "idetude", "netstatus"),
        # naming-spec scaffolding and rendering variants
        *("symbolic", "rtl", "ltr", "x", "dev", "fs", "mime", "inode", "media", "input", "device", "dialog"),
        *("data", "object", "task", "user", "emblem", "status", "applet", "application", "applications"),
        *("preferences", "system", "generic", "default", "icon", "messagebox", "chardevice", "main", "menu"),
        *("html", "txt", "tar", "text", "script", "temp", "templates", "saved", "search", "drag", "publicshare"),
        # states and degrees
        *("high", "medium", "med", "low", "good", "ok", "weak", "excellent", "none", "full", "empty", "caution"),
        *("missing", "available", "idle", "busy", "away", "extended", "invisible", "offline", "online", "accept"),
        *("accepted", "attempt", "attention", "complete", "delegate", "ongoing", "recurring", "reject", "reminder"),
        *("due", "past", "soon", "missed", "urgent", "update", "changes", "allow", "prevent", "fail", "new"),
        *("open", "closed", "read", "unread", "replied", "queued", "sent", "tagged", "signed", "verified"),
        *("acquiring", "connected", "disconnected", "disconn", "established", "creating", "no", "non", "semi"),
        *("plus", "mixed", "multiple", "internal", "portable", "remote", "local", "public", "visiting", "few"),
        *("many", "scattered", "severe", "charging", "charged", "sensitivity", "suppressed", "loading", "unmount"),
        *("mount", "password", "transmit", "receive", "rx", "tx", "txrx", "shuffle", "repeat", "participant"),
        *("optional", "organizer", "observer", "identity", "security", "min", "max", "sm", "ms", "cf", "ac"),
    }
)


@dataclass(frozen=True)
class Source:
    """One labelled image collection: where Debian installs it, its licence, and its reader."""

    name: str
    packages: str  # what `apt-get install` needs
    root: Path
    licence: str  # as /usr/share/doc/PKG/copyright states it
    copyright: str


@dataclass
class Candidate:
    """One picture on its way into the set: its output name, its file and its tags so far."""

    source: str
    name: str  # '/'-separated, no extension; the output is images/<source>/<name>.png
    path: str
    tags: set[str]

    @property
    def image(self) -> str:
        return f"images/{self.source}/{self.name}.png"


SOURCES = {
    s.name: s
    for s in (
        Source(
            "openclipart",
            "openclipart-svg openclipart-png",
            oc.DEFAULT_ROOT,
            "public domain (Creative Commons Public Domain Dedication)",
            "/usr/share/doc/openclipart-png/copyright",
        ),
        Source(
            "pysiogame",
            "pysiogame",
            Path("/usr/share/games/pysiogame/res/images/art4apps"),
            "GPL-3+ (debian/copyright 'Files: *'; its 'images/*' stanza: public domain, from OCAL and Tango)",
            "/usr/share/doc/pysiogame/copyright",
        ),
        Source(
            "oxygen-icons",
            "oxygen-icon-theme",
            Path("/usr/share/icons/oxygen/base"),
            "LGPL-3+",
            "/usr/share/doc/oxygen-icon-theme/copyright",
        ),
        Source(
            "gnome-icons",
            "gnome-icon-theme",
            Path("/usr/share/icons/gnome"),
            "GPL-2+",
            "/usr/share/doc/gnome-icon-theme/copyright",
        ),
    )
}


def refuse_forbidden(path: Path | str) -> None:
    """Raise UsageError when `path`, as given or resolved, lies under a Tux Paint or emoji directory.

    The project's rule: Tux Paint stamps and emoji fonts never enter a training set. Checking
    the resolved path too catches a symbolic link into such a directory.
    """
    for candidate in (str(path), os.path.realpath(path)):
        parts = [part.lower() for part in Path(candidate).parts]
        if any(word in part for part in parts for word in _FORBIDDEN_PARTS):
            raise UsageError(f"{path}: Tux Paint stamps and emoji fonts never enter a training set; refused")


# --------------------------------------------------------------------------- the two rules


def unseen_blocker(unseen: Iterable[str]) -> Callable[[str], bool]:
    """A test for tags the benchmark's merge rule would treat as one of the `unseen` labels.

    oc.merge_variants folds spellings equal up to spaces and plurals onto a singular; a tag is
    blocked when its key (spaces removed) is an unseen label's key, a singular of one (an
    unseen "berries" blocks "berry"), or a plural of one (an unseen "star" blocks "stars").
    """
    keys = {oc._variant_key(oc.normalise_keyword(u)) for u in unseen}
    blocked = keys | {s for key in keys for s in oc._singular_keys(key)}

    def is_blocked(tag: str) -> bool:
        key = oc._variant_key(tag)
        return key in blocked or any(s in keys for s in oc._singular_keys(key))

    return is_blocked


def _thumbnail(im: Image.Image) -> Image.Image:
    return im.resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX)


def _content(im: Image.Image) -> Image.Image:
    """`im` cropped to what differs from white, padded to a centred square."""
    ink = ImageChops.difference(im, Image.new("RGB", im.size, "white")).convert("L").point(lambda v: 255 * (v > 8))
    box = ink.getbbox()
    im = im.crop(box) if box else im
    side = max(im.size)
    square = Image.new("RGB", (side, side), "white")
    square.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
    return square


def content_signature(im: Image.Image) -> bytes:
    """What content comparison needs of one picture (RGB on white, at --size), in 1,568 bytes.

    A 256-bit average hash (the 16x16 grey thumbnail's pixels above its mean), cheap to
    compare in bulk but blind to colour; the 16x16 RGB thumbnail, which tells a red pin from
    a green one; and the thumbnail of the drawing cropped to its ink, which tells apart two
    small drawings that leave the first thumbnail almost white.
    """
    whole = _thumbnail(im.convert("RGB"))
    grey = np.asarray(whole.convert("L"), dtype=np.float32)
    return np.packbits(grey > grey.mean()).tobytes() + whole.tobytes() + _thumbnail(_content(im)).tobytes()


_HASH_BYTES = HASH_SIDE * HASH_SIDE // 8
_THUMB_BYTES = HASH_SIDE * HASH_SIDE * 3


def _split(signatures: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    joined = np.frombuffer(b"".join(signatures), dtype=np.uint8).reshape(len(signatures), -1)
    hashes = np.ascontiguousarray(joined[:, :_HASH_BYTES]).view(np.uint64)
    return hashes, joined[:, _HASH_BYTES : _HASH_BYTES + _THUMB_BYTES], joined[:, _HASH_BYTES + _THUMB_BYTES :]


def _mean_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b).mean(axis=1)


def same_pictures(
    a: list[bytes], b: list[bytes], max_bits: int, max_difference: float, max_ink_difference: float
) -> list[tuple[int, int]]:
    """All (i, j), sorted, where signatures a[i] and b[j] are of the same picture.

    Same means: average hashes within `max_bits` (of 256), whole thumbnails within
    `max_difference` and ink thumbnails within `max_ink_difference` (mean absolute difference,
    of 255 levels). Measured on 300 benchmark drawings, renders at 160 px from the original and
    from the benchmark's 224 px copy differ by at most 14 bits, 5.4 and 14.6 levels; distinct
    drawings that pass all three are members of one series (playing cards, star polygons).
    """
    if not a or not b:
        return []
    (hashes_a, whole_a, ink_a), (hashes_b, whole_b, ink_b) = _split(a), _split(b)
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(a), 256):
        bits = np.bitwise_count(hashes_a[start : start + 256, None, :] ^ hashes_b[None, :, :]).sum(axis=2)
        rows, cols = np.nonzero(bits <= max_bits)
        rows += start
        keep = (_mean_difference(whole_a[rows], whole_b[cols]) <= max_difference) & (
            _mean_difference(ink_a[rows], ink_b[cols]) <= max_ink_difference
        )
        pairs.extend(zip(rows[keep].tolist(), cols[keep].tolist()))
    return sorted(pairs)


# --------------------------------------------------------------------------- workers


def _read_image(path: str, max_pixels: int, size: int) -> Image.Image | str:
    """The flattened, resized image at `path`, or why not (sizes come from the header first)."""
    try:
        with warnings.catch_warnings():  # --max-pixels is applied here, before decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > max_pixels:
                    return "too many pixels"
                return oc.flatten_and_resize(im, size)
    except Image.DecompressionBombError:
        return "too many pixels"
    except (OSError, ValueError):
        return "unreadable image"


def _convert_and_hash(job: tuple[str, str, int, int]) -> bytes | str:
    """Worker: write one image's RGB copy and return its content signature, or why it failed."""
    src, dst, size, max_pixels = job
    im = _read_image(src, max_pixels, size)
    if isinstance(im, str):
        return im
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    im.save(dst, format="PNG")
    return content_signature(im)


def _sign_file(job: tuple[str, int, int]) -> bytes | str:
    """Worker: the content signature of one benchmark image at --size, or why it failed."""
    path, size, max_pixels = job
    im = _read_image(path, max_pixels, size)
    return im if isinstance(im, str) else content_signature(im)


# --------------------------------------------------------------------------- sources


@dataclass
class _SourceTally:
    """Drops of one source, by reason, for stats.json."""

    images: Counter[str] = field(default_factory=Counter)
    tags: Counter[str] = field(default_factory=Counter)
    skipped: str = ""


def _clean(words: Iterable[str], tally: _SourceTally, stop: frozenset[str] = frozenset()) -> set[str]:
    """The normalised words that pass the benchmark's junk filter and `stop`, drops counted."""
    kept = set()
    for word in words:
        reason = oc.junk_reason(word, set()) or ("icon stop word" if word in stop else None)
        if reason:
            tally.tags[reason] += 1
        else:
            kept.add(word)
    return kept


def collect_openclipart(root: Path, workers: int, tally: _SourceTally) -> list[Candidate]:
    """Every OpenClipart drawing with a keyword: its cleaned keywords plus its leaf folder(s)."""
    drawings, svg_drops = oc.scan_tree(root)
    tally.images.update({f"svg path: {k}": v for k, v in svg_drops.items()})
    oc_tally = oc._Tally()
    keywords = oc._keywords(drawings, oc.Options(out=Path("."), root=root, workers=workers), oc_tally)
    tally.images.update(oc_tally.images)
    tally.tags.update(oc_tally.junk)
    out = []
    for name, words in sorted(keywords.items()):
        drawing = drawings[name]
        refuse_forbidden(drawing.png)
        folders = {oc.normalise_keyword(rel.split("/")[-2]) for rel in drawing.relpaths if "/" in rel}
        out.append(Candidate("openclipart", name, drawing.png, words | _clean(folders, tally)))
    return out


def collect_pictures(root: Path, tally: _SourceTally) -> list[Candidate]:
    """pysiogame's Art4Apps pictures: the file name and the folder's category as tags."""
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name not in PICTURE_CATEGORIES:
            tally.images["unknown folder"] += sum(1 for _ in folder.iterdir())
            continue
        category = PICTURE_CATEGORIES[folder.name]
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            if category is None:
                tally.images["folder left out (verbs)"] += 1
                continue
            refuse_forbidden(path)
            tags = _clean([oc.normalise_keyword(path.stem), category], tally)
            out.append(Candidate("pysiogame", f"{folder.name}/{path.stem}", str(path), tags))
    return out


def _size_of(folder: str) -> int:
    """256 for an icon theme's '256x256' folder, 0 for 'scalable' and the like."""
    width = folder.split("x")[0]
    return int(width) if width.isdigit() else 0


def icon_words(name: str) -> list[str] | None:
    """The normalised words of an icon name ("weather-storm-night"), or None for a logo."""
    words = oc.normalise_keyword(name.replace(".", " ")).split()
    return None if ICON_LOGO_WORDS & set(words) else words


def collect_icons(source: str, root: Path, tally: _SourceTally) -> list[Candidate]:
    """A freedesktop icon theme's devices/places/status icons, once each at their largest size."""
    best: dict[str, tuple[int, Path]] = {}
    for size_dir in sorted(p for p in root.iterdir() if p.is_dir() and _size_of(p.name)):
        for context in ICON_CONTEXTS:
            folder = size_dir / context
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if path.suffix != ".png" or path.is_symlink() or not path.is_file():
                    continue  # symbolic links are the spec's legacy aliases of the same picture
                key = f"{context}/{path.stem}"
                if _size_of(size_dir.name) > best.get(key, (0, path))[0]:
                    best[key] = (_size_of(size_dir.name), path)
    out = []
    for key, (_, path) in sorted(best.items()):
        refuse_forbidden(path)
        words = icon_words(path.stem)
        if words is None:
            tally.images["logo"] += 1
            continue
        out.append(Candidate(source, key, str(path), _clean(words, tally, ICON_STOP_WORDS)))
    return out


def collect(source: Source, root: Path, workers: int, tally: _SourceTally) -> list[Candidate]:
    """The candidates of one source read from `root`."""
    refuse_forbidden(root)
    if source.name == "openclipart":
        return collect_openclipart(root, workers, tally)
    if source.name == "pysiogame":
        return collect_pictures(root, tally)
    return collect_icons(source.name, root, tally)


# --------------------------------------------------------------------------- the build


@dataclass
class Options:
    """Everything that determines the pretraining set; recorded in stats.json."""

    out: Path
    benchmark: Path
    size: int = 160
    min_count: int = 5
    val_fraction: float = 0.05
    seed: int = 0
    sources: tuple[str, ...] = tuple(SOURCES)
    roots: dict[str, Path] = field(default_factory=dict)
    max_per_tagset: int = 100
    max_pixels: int = 89_478_485  # as tools/openclipart.py: Pillow's decompression-bomb threshold
    max_hash_bits: int = 24
    max_difference: float = 6.0
    max_ink_difference: float = 16.0
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    force: bool = False

    @property
    def sameness(self) -> tuple[int, float, float]:
        """The thresholds of same_pictures."""
        return self.max_hash_bits, self.max_difference, self.max_ink_difference


@dataclass(frozen=True)
class Benchmark:
    """What the rules need from the benchmark: its unseen labels and its held-out images."""

    unseen: tuple[str, ...]
    held_out_names: frozenset[str]  # OpenClipart drawing names in val/test
    held_out_files: tuple[Path, ...]


def read_benchmark(folder: Path) -> Benchmark:
    """The benchmark's unseen.txt and val/test manifests; every listed image must exist."""
    paths = [folder / f for f in ("unseen.txt", "val.jsonl", "test.jsonl")]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UsageError(f"not a benchmark folder (missing {', '.join(missing)}); build it with tools.openclipart")
    unseen = tuple(line.strip() for line in paths[0].read_text(encoding="utf-8").splitlines() if line.strip())
    images = [json.loads(line)["image"] for p in paths[1:] for line in p.read_text(encoding="utf-8").splitlines()]
    files = tuple(folder / image for image in images)
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
        raise UsageError(f"{len(absent)} benchmark val/test images are missing, e.g. {absent[0]}")
    names = frozenset(image.removeprefix("images/").removesuffix(".png") for image in images)
    return Benchmark(unseen, names, files)


def _val_split(tags: dict[str, frozenset[str]], fraction: float, seed: int) -> set[str]:
    """The held-out images: in seeded random order, an image joins val while val is below
    `fraction` and each of its labels keeps most (at least half) of its images in train."""
    counts = Counter(label for t in tags.values() for label in t)
    in_val: Counter[str] = Counter()
    val: set[str] = set()
    target = round(fraction * len(tags))
    for image in sorted(tags, key=lambda i: oc._rank(seed, "val", i)):
        if len(val) >= target:
            break
        if all(in_val[label] + 1 <= counts[label] // 2 for label in tags[image]):
            val.add(image)
            in_val.update(tags[image])
    return val


class _Build:
    """One build's state: candidates by image path, and the drops of each source."""

    def __init__(self, options: Options, log: Callable[[str], None]) -> None:
        self.options = options
        self.log = log
        self.tallies = {name: _SourceTally() for name in options.sources}
        self.candidates: dict[str, Candidate] = {}
        # Files this build wrote (`convert`): the only ones `drop` may delete. Drops before the
        # conversion happen before --out is checked, where a file at that name is not ours.
        self.written: set[str] = set()

    def drop(self, image: str, reason: str) -> None:
        """Forget a candidate, count why, and delete the file this build converted it to, if any."""
        candidate = self.candidates.pop(image)
        self.tallies[candidate.source].images[reason] += 1
        if image in self.written:
            self.written.discard(image)
            (self.options.out / image).unlink(missing_ok=True)

    def gather(self, benchmark: Benchmark) -> None:
        """Candidates of every available source, minus the benchmark's held-out drawings."""
        for name in self.options.sources:
            source, tally = SOURCES[name], self.tallies[name]
            root = self.options.roots.get(name, source.root)
            if not root.is_dir():
                tally.skipped = f"{root} not found (apt-get install {source.packages})"
                print(f"warning: skipping source {name}: {tally.skipped}", file=sys.stderr)
                continue
            found = collect(source, root, self.options.workers, tally)
            self.log(f"{name}: {len(found)} labelled pictures in {root}")
            for candidate in found:
                self.candidates[candidate.image] = candidate
                if name == "openclipart" and candidate.name in benchmark.held_out_names:
                    self.drop(candidate.image, "benchmark val/test drawing")

    def clean_tags(self, benchmark: Benchmark) -> None:
        """Rule (a) before and after the cross-source spelling merge, then the tag-set cap."""
        blocked = unseen_blocker(benchmark.unseen)
        spelling = oc.merge_variants(Counter(t for c in self.candidates.values() for t in c.tags if not blocked(t)))
        for image, candidate in list(self.candidates.items()):
            tally = self.tallies[candidate.source]
            unseen = {t for t in candidate.tags if blocked(t)}
            tally.tags["benchmark unseen label"] += len(unseen)
            candidate.tags = {spelling[t] for t in candidate.tags - unseen}
            unseen = {t for t in candidate.tags if blocked(t)}  # cannot happen: the merge keeps a member spelling
            tally.tags["benchmark unseen label"] += len(unseen)
            candidate.tags -= unseen
            if not candidate.tags:
                self.drop(image, "no tag left")
        tagsets = {image: frozenset(c.tags) for image, c in self.candidates.items()}
        for image in sorted(oc.cap_tagsets(tagsets, self.options.max_per_tagset, self.options.seed)):
            self.drop(image, "tag-set cap")

    def convert(self) -> dict[str, bytes]:
        """Write every candidate; their content hashes (failures are dropped)."""
        o = self.options
        images = sorted(self.candidates)
        jobs = [(self.candidates[i].path, str(o.out / i), o.size, o.max_pixels) for i in images]
        hashes = {}
        for image, result in zip(images, oc._parallel_map(_convert_and_hash, jobs, o.workers)):
            if isinstance(result, str):
                self.drop(image, result)
            else:
                self.written.add(image)
                hashes[image] = result
        return hashes

    def deduplicate(self, hashes: dict[str, bytes], benchmark: Benchmark) -> None:
        """Rule (b) by content, then near-duplicates within the set (the earlier in source order stays)."""
        o = self.options
        jobs = [(str(f), o.size, o.max_pixels) for f in benchmark.held_out_files]
        held = oc._parallel_map(_sign_file, jobs, o.workers)
        failures = Counter(h for h in held if isinstance(h, str))
        if failures:
            raise UsageError(f"cannot read benchmark val/test images to compare with: {dict(failures)}")
        order = sorted(hashes, key=lambda i: (o.sources.index(self.candidates[i].source), i))
        codes = [hashes[i] for i in order]
        held_codes = [h for h in held if isinstance(h, bytes)]
        for i in sorted({i for i, _ in same_pictures(codes, held_codes, *o.sameness)}):
            self.drop(order[i], "same picture as a benchmark val/test image")
        alive = [i for i, image in enumerate(order) if image in self.candidates]
        kept: set[int] = set()
        later: dict[int, list[int]] = defaultdict(list)
        alive_codes = [codes[i] for i in alive]
        for a, b in same_pictures(alive_codes, alive_codes, *o.sameness):
            if a < b:
                later[b].append(a)
        for b in range(len(alive)):
            if any(a in kept for a in later[b]):
                self.drop(order[alive[b]], "same picture as an earlier image of the set")
            else:
                kept.add(b)

    def restrict(self) -> dict[str, frozenset[str]]:
        """Tags cut to labels with --min-count images; images left without one dropped."""
        tags = {image: frozenset(c.tags) for image, c in self.candidates.items()}
        labels = oc.frequent_labels(tags.values(), self.options.min_count)
        for image, tagset in tags.items():
            self.tallies[self.candidates[image].source].tags["label below --min-count"] += len(tagset - labels)
        for image in sorted(i for i, t in tags.items() if not t & labels):
            self.drop(image, "no label with --min-count images")
        return {image: tags[image] & labels for image in self.candidates}


def build(options: Options, log: Callable[[str], None] = lambda _: None) -> dict:
    """Build the pretraining set into options.out; return the statistics also written to stats.json."""
    unknown = [s for s in options.sources if s not in SOURCES]
    if unknown or not options.sources:
        raise UsageError(f"unknown source(s) {unknown}; choose among {', '.join(SOURCES)}")
    if not 0 <= options.val_fraction < 0.5 or options.min_count < 1:
        raise UsageError("--val-fraction must be in [0, 0.5) and --min-count at least 1")
    for root in options.roots.values():
        refuse_forbidden(root)
    benchmark = read_benchmark(options.benchmark)
    run = _Build(options, log)
    run.gather(benchmark)
    run.clean_tags(benchmark)
    oc.prepare_out(options.out, options.force)
    log(f"{len(run.candidates)} candidates; converting them with {options.workers} worker(s)")
    hashes = run.convert()
    log(f"{len(hashes)} converted; comparing them with {len(benchmark.held_out_files)} benchmark val/test images")
    run.deduplicate(hashes, benchmark)
    tags = run.restrict()
    val = _val_split(tags, options.val_fraction, options.seed)
    for split, members in (("train", sorted(set(tags) - val)), ("val", sorted(val))):
        rows = (json.dumps({"image": i, "tags": sorted(tags[i])}, ensure_ascii=False) for i in members)
        oc._write_lines(options.out / f"{split}.jsonl", rows)
    classes = sorted(set().union(*tags.values())) if tags else []
    oc._write_lines(options.out / "classes.txt", classes)
    stats = _stats(options, run, tags, val, classes)
    (options.out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return stats


def _stats(options: Options, run: _Build, tags: dict[str, frozenset[str]], val: set[str], classes: list[str]) -> dict:
    per_image = [len(t) for t in tags.values()]
    sources = {}
    for name in options.sources:
        source, tally = SOURCES[name], run.tallies[name]
        mine = [i for i in tags if run.candidates[i].source == name]
        sources[name] = {
            "package": source.packages,
            "root": str(options.roots.get(name, source.root)),
            "licence": source.licence,
            "copyright": source.copyright,
            "skipped": tally.skipped or None,
            "images": len(mine),
            "train": sum(1 for i in mine if i not in val),
            "val": sum(1 for i in mine if i in val),
            "labels": len(set().union(*(tags[i] for i in mine))) if mine else 0,
            "dropped_images": {k: v for k, v in sorted(tally.images.items()) if v},
            "dropped_tags": {k: v for k, v in sorted(tally.tags.items()) if v},
        }
    recorded = {
        "benchmark": str(options.benchmark),
        **{k: getattr(options, k) for k in ("size", "min_count", "val_fraction", "seed", "max_per_tagset")},
        **{k: getattr(options, k) for k in ("max_pixels", "max_hash_bits", "max_difference", "max_ink_difference")},
        "sources": list(options.sources),
    }
    return {
        "options": recorded,
        "sources": sources,
        "images": {"total": len(tags), "train": len(tags) - len(val), "val": len(val)},
        "classes": len(classes),
        "tags_per_image": {
            "mean": round(statistics.fmean(per_image), 3) if per_image else 0,
            "median": statistics.median(per_image) if per_image else 0,
            "max": max(per_image, default=0),
        },
    }


# --------------------------------------------------------------------------- command line


def _root(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or name not in SOURCES:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH with NAME among {', '.join(SOURCES)}")
    return name, Path(path)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.pretrain_data",
        description="Build the bundled backbone's pretraining set (docs/benchmarks.md, 'Pretraining data').",
    )
    d = Options(out=Path("."), benchmark=Path("."))
    p.add_argument("--benchmark", type=Path, required=True, help="the OpenClipart benchmark folder (tools.openclipart)")
    oc.add_build_arguments(p, d, out="images/, *.jsonl, classes.txt, stats.json")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="held-out share (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the val slice (default: %(default)s)")
    p.add_argument(
        "--sources",
        type=lambda s: tuple(x.strip() for x in s.split(",") if x.strip()),
        default=d.sources,
        help=f"comma-separated, in priority order (default: {','.join(d.sources)})",
    )
    p.add_argument(
        "--root", type=_root, action="append", default=[], metavar="NAME=PATH", help="read a source from PATH"
    )
    p.add_argument(
        "--max-hash-bits",
        type=int,
        default=d.max_hash_bits,
        help="same picture: average hashes this close, of 256 bits (default: %(default)s)",
    )
    p.add_argument(
        "--max-difference",
        type=float,
        default=d.max_difference,
        help="same picture: 16x16 RGB thumbnails this close, mean of 255 levels (default: %(default)s)",
    )
    p.add_argument(
        "--max-ink-difference",
        type=float,
        default=d.max_ink_difference,
        help="same picture: thumbnails of the drawings cropped to their ink this close (default: %(default)s)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    args["roots"] = dict(args.pop("root"))
    options = Options(**args)

    def summary(stats: dict[str, Any]) -> str:
        per_source = ", ".join(f"{name} {s['images']}" for name, s in stats["sources"].items())
        return (
            f"{stats['images']['total']} images (train {stats['images']['train']}, val {stats['images']['val']}; "
            f"{per_source}), {stats['classes']} classes in {options.out}"
        )

    return oc.run_build(lambda log: build(options, log=log), summary)


if __name__ == "__main__":
    sys.exit(main())
