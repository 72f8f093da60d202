"""The OpenClipart benchmark: Debian's openclipart-svg/-png drawings turned into a zero-shot tagging set.

    python -m tools.openclipart --out DIR [--size 224] [--min-count 6]
        [--unseen-fraction 0.2] [--seed 0] [--workers N]

The tags are the drawings' own keywords (the `dc:subject` bag of each SVG's RDF metadata); the
images are the pre-rendered PNGs with the same relative names. DIR receives `images/`,
`train.jsonl`, `val.jsonl`, `test.jsonl` (GUIDE §1 manifests, paths relative to DIR),
`vocab.txt`, `seen.txt`, `unseen.txt` and `stats.json`.

Why each rule exists (docs/benchmarks.md has the resulting counts):
- Debian links identical drawings under several folders (symbolic links, and PNGs de-duplicated
  by content). One drawing is one image here, identified by its real PNG file, with the
  keywords of all its SVGs merged; counting it twice would leak test images into training.
- Keywords are written by hundreds of uploaders: normalised (NFC, lower case, `_`/`-` to
  spaces, lists split on `,;/|`), then junk is dropped (names of people and of the library,
  strings without a letter, single characters, URLs, and the batch/filing tags of
  `STOP_KEYWORDS`), then spelling variants that differ only by spaces or a plural ending are
  merged ("icon"/"icons", "mime types"/"mimetypes"). Without the merge a zero-shot split could
  put "star" among the seen labels and "stars" among the unseen ones, a trivially easy "unseen" label.
- A few uploads are machine-made series (1,377 generated star polygons, 1,000 toolkit icons all
  tagged "action" or "application"). At most `--max-per-tagset` images may share exactly the
  same tag set, so that such series do not dominate the set or its mAP.
- Labels need `--min-count` images; images left with no label are dropped.
- Labels are split seen/unseen at random (seeded), like the NUS-WIDE zero-shot split; images
  train/val/test 70/10/20, seeded, with every label placed in at least one val and one test
  image (and every seen label in one training image) before the random fill.
- SVGs are parsed with expat and refused when their DTD declares any entity (the 6 Adobe
  Illustrator exports of the set do; refusing all declarations is defusedxml's policy and
  makes entity-expansion bombs impossible). External DTDs are never fetched.
- PNGs above `--max-pixels` (by default Pillow's own decompression-bomb threshold) are
  skipped, not decoded: PNG has no reduced-size decoding, and the 623-megapixel ones alone
  would need gigabytes. Transparency is composited on white.

Departures from the suggestions of issue #7 (reasons in docs/benchmarks.md): --size defaults
to 224, not 128; --min-count to 6, not 20 (20 leaves 113 labels); a plain DOCTYPE is accepted
and only entity declarations are refused (3,580 SVGs declare the public SVG DTD); and the
tag-set cap and the merge of spelling variants are additions.

Randomness comes from SHA-256 of (seed, item name) rather than a shuffled sequence, so a
choice about one image or label does not depend on the others; with sorted inputs and sorted
outputs the same tree and seed give byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import os
import re
import shutil
import statistics
import sys
import time
import unicodedata
import warnings
import xml.etree.ElementTree as ET
import xml.parsers.expat
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol, TypeVar

from PIL import Image

from zstag.core.errors import UsageError

DEFAULT_ROOT = Path("/usr/share/openclipart")

_DC = "{http://purl.org/dc/elements/1.1/}"
_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
# Agents whose names are people or organisations, never the picture's content.
_AGENT_FIELDS = ("creator", "rights", "publisher", "contributor")

# Found by reading the 200 most frequent normalised keywords and the folders they come from
# (docs/benchmarks.md): tags that name an upload batch, a tool, a licence, the library, or
# its filing scheme rather than anything drawn.
STOP_KEYWORDS = frozenset(
    {
        "hash",
        "magick",
        "theme",
        "lemon theme icon",
        "icon theme",
        "openclipart",
        "open clip art",
        "open clip art library",
        "clip art",
        "clipart",
        "clip",
        "svg",
        "png",
        "inkscape",
        "public domain",
        "remix",
        "unsorted",
        "special",
        "miscellany",
        "misc",
        "other",
        "stock",
        "nice",
        "style",
        "new",
        "untitled",
        "image",
        "picture",
        "drawing",
    }
)

_LIST_SEPARATORS = re.compile(r"[,;/|]")
# One uploader's family tags: "mapsym", "networksym", "weathersym", "musicsym".
_SYMBOL_ABBREVIATION = re.compile(r"(?<=[a-z]{3}) ?sym$")
_EDGE_PUNCTUATION = " \t\"'`.,:;!?#*()[]{}<>"
SPLITS = ("train", "val", "test")

T = TypeVar("T")
R = TypeVar("R")


class UnsafeXmlError(ValueError):
    """An SVG whose DTD declares entities: refused without expanding anything."""


# --------------------------------------------------------------------------- keywords


def normalise_keyword(text: str) -> str:
    """One keyword in canonical form: HTML entities decoded, NFC, lower case, `_`/`-` as spaces.

    Uploaders wrote "Signs_and_Symbols", "mime-types" and "&eacute;toile"; all should meet
    their plain spelling. Surrounding punctuation is dropped too, so "#flag" cannot become a
    vocabulary line that readers take for a comment, and the "...sym" family tags are written
    out ("mapsym" -> "map symbol"), which a text encoder can read.
    """
    text = unicodedata.normalize("NFC", html.unescape(text)).lower()
    text = " ".join(text.replace("_", " ").replace("-", " ").split()).strip(_EDGE_PUNCTUATION)
    return _SYMBOL_ABBREVIATION.sub(" symbol", text)


def split_keywords(text: str) -> list[str]:
    """Normalised keywords of one `rdf:li` (or bare `dc:subject`) text, which may hold a list."""
    parts = (normalise_keyword(part) for part in _LIST_SEPARATORS.split(text))
    return [p for p in parts if p]


def junk_reason(keyword: str, names: frozenset[str] | set[str]) -> str | None:
    """Why a normalised keyword is not a label, or None when it is one.

    `names` are the normalised person and library names to refuse. build() passes the
    drawing's own agents plus every multi-word agent name of the collection: one-word
    pseudonyms of other uploaders ("tux", "saint", "gnu") are ordinary words elsewhere.
    """
    if len(keyword) < 2:
        return "single character"
    if not any(ch.isalpha() for ch in keyword):
        return "no letter"
    if "://" in keyword or keyword.startswith("www."):
        return "url"
    if any(unicodedata.category(ch).startswith("C") for ch in keyword):
        return "control character"
    if keyword in names:
        return "person or library name"
    if keyword in STOP_KEYWORDS:
        return "stop list"
    return None


def _variant_key(keyword: str) -> str:
    return keyword.replace(" ", "")


def _singular_keys(key: str) -> list[str]:
    """Possible singulars of a plural key, most specific first ("berries" -> "berry")."""
    out = []
    if key.endswith("ies") and len(key) > 4:
        out.append(key[:-3] + "y")
    if key.endswith("es") and len(key) > 3:
        out.append(key[:-2])
    if key.endswith("s") and not key.endswith("ss") and len(key) > 3:
        out.append(key[:-1])
    return out


def merge_variants(counts: Counter[str]) -> dict[str, str]:
    """Map each keyword to the most frequent spelling among those equal up to spaces and a plural.

    Two keywords are variants when they are equal with spaces removed ("mime types",
    "mimetypes") or when one is a plural of the other ("star", "stars"; "berry", "berries").
    A plural is only folded onto a singular that itself occurs, so "glass" never becomes
    "glas". Ties go to the shorter, then alphabetically first, spelling.
    """
    by_key: dict[str, list[str]] = defaultdict(list)
    for keyword in sorted(counts):
        by_key[_variant_key(keyword)].append(keyword)
    group_of = {key: key for key in by_key}
    for key in sorted(by_key, key=len):
        for singular in _singular_keys(key):
            if singular in by_key:
                group_of[key] = group_of[singular]
                break
    members: dict[str, list[str]] = defaultdict(list)
    for key, spellings in by_key.items():
        members[group_of[key]].extend(spellings)
    canonical = {}
    for spellings in members.values():
        best = min(spellings, key=lambda s: (-counts[s], len(s), s))
        canonical.update({s: best for s in spellings})
    return canonical


# --------------------------------------------------------------------------- SVG metadata


@dataclass(frozen=True)
class SvgMetadata:
    """What the benchmark reads from one SVG: its keywords and the names of its agents."""

    keywords: tuple[str, ...]
    names: tuple[str, ...]


def _refuse_entities(data: bytes) -> None:
    """Raise UnsafeXmlError if the document's DTD declares an entity.

    Entity declarations can only appear in the prolog, so expat reads just up to the root
    element: a handler raising there stops it. This runs before ElementTree's parser sees the
    bytes, so nothing is ever expanded.
    """

    class _RootReached(Exception):
        pass

    def on_entity(name: str, *_: object) -> None:
        raise UnsafeXmlError(f"declares the entity {name!r}")

    def on_root(*_: object) -> None:
        raise _RootReached

    parser = xml.parsers.expat.ParserCreate()
    parser.EntityDeclHandler = on_entity
    parser.StartElementHandler = on_root
    try:
        parser.Parse(data, True)
    except _RootReached:
        return


def _texts(element: ET.Element) -> str:
    return " ".join("".join(element.itertext()).split())


def read_svg_metadata(data: bytes) -> SvgMetadata:
    """Keywords and agent names of one SVG document (the bytes of the file).

    Raises UnsafeXmlError for entity declarations and ET.ParseError for malformed XML.
    Keywords are the `rdf:li` items of every `dc:subject`, or its bare text when it has none;
    names are the texts of `dc:creator`, `dc:rights`, `dc:publisher` and `dc:contributor`.
    """
    _refuse_entities(data)
    root = ET.fromstring(data)
    keywords: list[str] = []
    for subject in root.iter(_DC + "subject"):
        items = [li.text or "" for li in subject.iter(_RDF + "li")]
        for text in items or [subject.text or ""]:
            keywords.extend(split_keywords(text))
    names = [_texts(agent) for f in _AGENT_FIELDS for agent in root.iter(_DC + f)]
    return SvgMetadata(tuple(keywords), tuple(n for n in names if n))


def _read_svg_file(path: str) -> SvgMetadata | str:
    """Worker: the metadata of one SVG file, or the reason it was refused."""
    try:
        return read_svg_metadata(Path(path).read_bytes())
    except UnsafeXmlError:
        return "entity declaration"
    except (ET.ParseError, xml.parsers.expat.ExpatError):
        return "malformed xml"
    except OSError:
        return "unreadable file"


# --------------------------------------------------------------------------- PNG conversion


def _png_pixels(path: str) -> int | str:
    """Worker: the pixel count from a PNG's header (nothing decoded), or why it cannot be read."""
    try:
        with warnings.catch_warnings():  # the caller applies its own --max-pixels limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.width * im.height
    except Image.DecompressionBombError:
        return "too many pixels"
    except (OSError, ValueError):
        return "unreadable png"


def flatten_and_resize(im: Image.Image, size: int) -> Image.Image:
    """An RGB copy of `im`, longer side at most `size`, transparent parts composited on white.

    Shrinking happens before compositing: Pillow resizes RGBA with premultiplied alpha, so the
    result is the same while the full-size white canvas is never allocated. Smaller images
    are not enlarged; the model's own resize does that, and storing them larger adds nothing.
    """
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    im = im.convert("RGBA" if has_alpha else "RGB")
    scale = size / max(im.size)
    if scale < 1:
        target = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
        im = im.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if has_alpha:
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
    return im.convert("RGB")


def _convert_png(job: tuple[str, str, int]) -> str | None:
    """Worker: write the flattened, resized copy of one PNG; None on success, else the reason."""
    src, dst, size = job
    try:
        with warnings.catch_warnings():  # sizes were checked against --max-pixels already
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(src) as im:
                out = flatten_and_resize(im, size)
    except Image.DecompressionBombError:
        return "too many pixels"
    except (OSError, ValueError):
        return "unreadable png"
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    out.save(dst, format="PNG")
    return None


def _parallel_map(fn: Callable[[T], R], items: list[T], workers: int) -> list[R]:
    """`fn` over `items` in order, in `workers` processes (in this process when workers <= 1)."""
    if workers <= 1 or len(items) < 2:
        return [fn(item) for item in items]
    with get_context("spawn").Pool(workers) as pool:
        return pool.map(fn, items, chunksize=max(1, len(items) // (workers * 8)))


# --------------------------------------------------------------------------- selection and splits


def _rank(seed: int, purpose: str, name: str) -> str:
    """A seeded pseudo-random sort key for one item, independent of every other item."""
    return hashlib.sha256(f"{seed}\0{purpose}\0{name}".encode()).hexdigest()


def cap_tagsets(tags: dict[str, frozenset[str]], cap: int, seed: int) -> set[str]:
    """The images dropped so that at most `cap` images share one exact tag set (0: no cap)."""
    if cap <= 0:
        return set()
    groups: dict[frozenset[str], list[str]] = defaultdict(list)
    for image, tagset in tags.items():
        groups[tagset].append(image)
    dropped = set()
    for members in groups.values():
        members.sort(key=lambda image: _rank(seed, "tagset", image))
        dropped.update(members[cap:])
    return dropped


def frequent_labels(tags: Iterable[frozenset[str]], min_count: int) -> set[str]:
    """Labels carried by at least `min_count` images."""
    counts = Counter(label for tagset in tags for label in tagset)
    return {label for label, n in counts.items() if n >= min_count}


def split_labels(labels: Iterable[str], unseen_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(seen, unseen), both sorted: round(fraction * L) labels drawn at random are unseen."""
    ordered = sorted(labels, key=lambda label: _rank(seed, "label", label))
    n_unseen = round(unseen_fraction * len(ordered))
    return sorted(ordered[n_unseen:]), sorted(ordered[:n_unseen])


def split_images(
    tags: dict[str, frozenset[str]], seen: set[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[str]]:
    """Images into train/val/test, each list sorted.

    A plain random split can leave a rare label out of val or test, and then its AP there is
    undefined. So first, rarest label first, each label that val (then test) lacks takes the
    best-ranked unassigned image carrying it, and each seen label that train lacks likewise;
    the remaining images, in random order, fill val and test up to their fractions and then train.
    """
    order = sorted(tags, key=lambda image: _rank(seed, "image", image))
    carriers: dict[str, list[str]] = defaultdict(list)
    for image in order:
        for label in tags[image]:
            carriers[label].append(image)
    split_of: dict[str, str] = {}
    for label in sorted(carriers, key=lambda label: (len(carriers[label]), label)):
        wanted = ("val", "test", "train") if label in seen else ("val", "test")
        for split in wanted:
            if any(split_of.get(image) == split for image in carriers[label]):
                continue
            free = next((image for image in carriers[label] if image not in split_of), None)
            if free is not None:
                split_of[free] = split
    target = {"val": round(val_fraction * len(order)), "test": round(test_fraction * len(order))}
    filled = Counter(split_of.values())
    for image in order:
        if image in split_of:
            continue
        split = next((s for s in ("val", "test") if filled[s] < target[s]), "train")
        split_of[image] = split
        filled[split] += 1
    return {split: sorted(image for image, s in split_of.items() if s == split) for split in SPLITS}


# --------------------------------------------------------------------------- the build


@dataclass
class Options:
    """Everything that determines the benchmark; recorded in stats.json."""

    out: Path
    root: Path = DEFAULT_ROOT
    size: int = 224
    min_count: int = 6
    unseen_fraction: float = 0.2
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    max_per_tagset: int = 100
    max_pixels: int = 89_478_485  # Pillow's MAX_IMAGE_PIXELS: where it warns of a decompression bomb
    folder_tags: bool = False
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    force: bool = False


@dataclass
class _Drawing:
    """One distinct picture: a real PNG file and every SVG path that renders to it."""

    png: str
    relpaths: list[str] = field(default_factory=list)  # without extension, '/'-separated
    svgs: set[str] = field(default_factory=set)  # real paths


def scan_tree(root: Path) -> tuple[dict[str, _Drawing], Counter[str]]:
    """Drawings keyed by output name (their first relative path), and SVGs dropped by reason."""
    svg_root, png_root = root / "svg", root / "png"
    if not svg_root.is_dir() or not png_root.is_dir():
        raise UsageError(f"{root} has no svg/ and png/ folders (is the openclipart-svg/-png package installed?)")
    by_png: dict[str, _Drawing] = {}
    dropped: Counter[str] = Counter()
    for folder, dirs, files in os.walk(svg_root):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".svg")):
            svg = os.path.join(folder, name)
            rel = os.path.relpath(svg, svg_root)[: -len(".svg")].replace(os.sep, "/")
            png = png_root / f"{rel}.png"
            if not png.is_file() or not os.path.isfile(svg):
                dropped["no png or broken link"] += 1
                continue
            drawing = by_png.setdefault(os.path.realpath(png), _Drawing(os.path.realpath(png)))
            drawing.relpaths.append(rel)
            drawing.svgs.add(os.path.realpath(svg))
    return {min(d.relpaths): d for d in by_png.values()}, dropped


def _folder_keywords(relpaths: list[str]) -> list[str]:
    """The folder names above each path ('animals/birds/x' gives 'animals', 'birds')."""
    return [kw for rel in relpaths for part in rel.split("/")[:-1] for kw in split_keywords(part)]


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def _write_manifest(path: Path, images: list[str], tags: dict[str, frozenset[str]]) -> None:
    rows = (
        json.dumps({"image": f"images/{image}.png", "tags": sorted(tags[image])}, ensure_ascii=False)
        for image in images
    )
    _write_lines(path, rows)


def prepare_out(out: Path, force: bool) -> Path:
    """OUT/images, created empty; a non-empty one is only cleared with --force (shared with tools.pretrain_data)."""
    images_dir = out / "images"
    if images_dir.exists() and any(images_dir.iterdir()):
        if not force:
            raise UsageError(f"{images_dir} is not empty; choose a new --out or pass --force to rebuild it")
        shutil.rmtree(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    return images_dir


@dataclass
class _Tally:
    """What was dropped and why, gathered along the build for stats.json."""

    svg_paths: Counter[str] = field(default_factory=Counter)
    svg_files: Counter[str] = field(default_factory=Counter)
    junk: Counter[str] = field(default_factory=Counter)
    images: Counter[str] = field(default_factory=Counter)
    spellings_merged: int = 0


def _keywords(drawings: dict[str, _Drawing], options: Options, tally: _Tally) -> dict[str, set[str]]:
    """The junk-filtered keywords of every drawing with at least one readable SVG."""
    svg_files = sorted({svg for d in drawings.values() for svg in d.svgs})
    parsed = dict(zip(svg_files, _parallel_map(_read_svg_file, svg_files, options.workers)))
    tally.svg_files.update(r for r in parsed.values() if isinstance(r, str))
    metadata = {svg: m for svg, m in parsed.items() if isinstance(m, SvgMetadata)}
    full_names = {n for m in metadata.values() for n in map(normalise_keyword, m.names) if " " in n}
    keywords = {}
    for image, drawing in sorted(drawings.items()):
        readable = [metadata[svg] for svg in sorted(drawing.svgs) if svg in metadata]
        if not readable:
            tally.images["svg refused: " + "/".join(sorted({str(parsed[s]) for s in drawing.svgs}))] += 1
            continue
        candidates = {kw for m in readable for kw in m.keywords}
        if options.folder_tags:
            candidates.update(_folder_keywords(drawing.relpaths))
        names = full_names | {normalise_keyword(n) for m in readable for n in m.names}
        reasons = {kw: junk_reason(kw, names) for kw in candidates}
        tally.junk.update(r for r in reasons.values() if r)
        keywords[image] = {kw for kw, reason in reasons.items() if not reason}
    return keywords


def _select(
    keywords: dict[str, set[str]], drawings: dict[str, _Drawing], options: Options, tally: _Tally
) -> dict[str, frozenset[str]]:
    """Labelled drawings before conversion: spellings merged, tag-set cap, pixel limit, min-count."""
    spelling = merge_variants(Counter(kw for kws in keywords.values() for kw in kws))
    tally.spellings_merged = sum(1 for k, v in spelling.items() if k != v)
    tags = {image: frozenset(spelling[kw] for kw in kws) for image, kws in keywords.items() if kws}
    tally.images["no keyword left after the junk filter"] += len(keywords) - len(tags)
    for image in cap_tagsets(tags, options.max_per_tagset, options.seed):
        tally.images["tag-set cap"] += 1
        del tags[image]
    images = list(tags)
    for image, pixels in zip(images, _parallel_map(_png_pixels, [drawings[i].png for i in images], options.workers)):
        if isinstance(pixels, str) or pixels > options.max_pixels:
            tally.images[pixels if isinstance(pixels, str) else "too many pixels"] += 1
            del tags[image]
    return _restrict(tags, options.min_count, tally)


def _restrict(tags: dict[str, frozenset[str]], min_count: int, tally: _Tally) -> dict[str, frozenset[str]]:
    """Tags cut to the labels of at least `min_count` images; images left with none are dropped."""
    labels = frequent_labels(tags.values(), min_count)
    out = {image: tagset & labels for image, tagset in tags.items() if tagset & labels}
    tally.images["no label with --min-count images"] += len(tags) - len(out)
    return out


def _convert(
    tags: dict[str, frozenset[str]], drawings: dict[str, _Drawing], images_dir: Path, options: Options, tally: _Tally
) -> dict[str, frozenset[str]]:
    """Write every selected image; drop those whose PNG fails to decode.

    A failure can push a label under --min-count. The images then left without a label
    carried no other label, so one more cut settles it; their written files are removed.
    """
    images = sorted(tags)
    jobs = [(drawings[image].png, str(images_dir / f"{image}.png"), options.size) for image in images]
    converted = dict(tags)
    for image, failure in zip(images, _parallel_map(_convert_png, jobs, options.workers)):
        if failure:
            tally.images[failure] += 1
            del converted[image]
    kept = _restrict(converted, options.min_count, tally)
    for image in set(converted) - set(kept):
        (images_dir / f"{image}.png").unlink()
    return kept


def build(options: Options, log: Callable[[str], None] = lambda _: None) -> dict:
    """Build the benchmark into options.out and return the statistics also written to stats.json."""
    if not 0 <= options.unseen_fraction < 1 or options.val_fraction + options.test_fraction >= 1:
        raise UsageError("--unseen-fraction must be in [0, 1) and val + test fractions below 1")
    tally = _Tally()
    drawings, tally.svg_paths = scan_tree(options.root)
    images_dir = prepare_out(options.out, options.force)
    log(f"{len(drawings)} distinct drawings; reading their SVG metadata")
    keywords = _keywords(drawings, options, tally)
    log(f"{len(keywords)} drawings with metadata; selecting labels and reading PNG sizes")
    tags = _select(keywords, drawings, options, tally)
    log(f"{len(tags)} images selected; converting them with {options.workers} worker(s)")
    tags = _convert(tags, drawings, images_dir, options, tally)

    labels = sorted(set().union(*tags.values())) if tags else []
    seen, unseen = split_labels(labels, options.unseen_fraction, options.seed)
    splits = split_images(tags, set(seen), options.val_fraction, options.test_fraction, options.seed)
    for split, images in splits.items():
        _write_manifest(options.out / f"{split}.jsonl", images, tags)
    _write_lines(options.out / "vocab.txt", labels)
    _write_lines(options.out / "seen.txt", seen)
    _write_lines(options.out / "unseen.txt", unseen)
    stats = _stats(options, drawings, tally, tags, splits, seen, unseen)
    (options.out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return stats


def _stats(
    options: Options,
    drawings: dict[str, _Drawing],
    tally: _Tally,
    tags: dict[str, frozenset[str]],
    splits: dict[str, list[str]],
    seen: list[str],
    unseen: list[str],
) -> dict:
    per_image = [len(t) for t in tags.values()]
    unseen_set = set(unseen)
    coverage = {}
    for split, images in splits.items():
        present = set().union(*(tags[i] for i in images))
        coverage[split] = {
            "images": len(images),
            "images_with_unseen_label": sum(1 for i in images if tags[i] & unseen_set),
            "images_without_seen_label": sum(1 for i in images if not tags[i] - unseen_set),
            "seen_labels_absent": len(set(seen) - present),
            "unseen_labels_absent": len(unseen_set - present),
        }
    recorded = {
        k: str(v) if isinstance(v, Path) else v
        for k, v in asdict(options).items()
        if k not in ("out", "workers", "force")
    }
    return {
        "options": recorded,
        "source": {
            "svg_paths": sum(len(d.relpaths) for d in drawings.values()) + sum(tally.svg_paths.values()),
            "svg_files": len({svg for d in drawings.values() for svg in d.svgs}),
            "distinct_drawings": len(drawings),
            "svg_paths_dropped": dict(tally.svg_paths),
            "svg_files_refused": dict(tally.svg_files),
        },
        "keywords": {"junk_dropped_by_reason": dict(tally.junk), "spellings_merged": tally.spellings_merged},
        "dropped_images": {reason: n for reason, n in tally.images.items() if n},
        "labels": {"kept": len(seen) + len(unseen), "seen": len(seen), "unseen": len(unseen)},
        "images": {"total": len(tags), **{s: len(splits[s]) for s in SPLITS}},
        "tags_per_image": {
            "mean": round(statistics.fmean(per_image), 3) if per_image else 0,
            "median": statistics.median(per_image) if per_image else 0,
            "max": max(per_image, default=0),
        },
        "splits": coverage,
    }


# --------------------------------------------------------------------------- command line


class BuildDefaults(Protocol):
    """The defaults both builders' `Options` give the options they share."""

    size: int
    min_count: int
    max_per_tagset: int
    max_pixels: int
    workers: int


def add_build_arguments(p: argparse.ArgumentParser, d: BuildDefaults, out: str) -> None:
    """The options this builder shares with `tools.pretrain_data`; `out` says what --out receives."""
    p.add_argument("--out", type=Path, required=True, help=f"output folder ({out})")
    p.add_argument("--size", type=int, default=d.size, help="longer side of stored images in px (default: %(default)s)")
    p.add_argument("--min-count", type=int, default=d.min_count, help="images a label needs (default: %(default)s)")
    p.add_argument(
        "--max-per-tagset",
        type=int,
        default=d.max_per_tagset,
        help="most images sharing one exact tag set, 0 for no cap (default: %(default)s)",
    )
    p.add_argument(
        "--max-pixels", type=int, default=d.max_pixels, help="larger images are skipped (default: %(default)s)"
    )
    p.add_argument("--workers", type=int, default=d.workers, help="processes (default: the CPU count, %(default)s)")
    p.add_argument("--force", action="store_true", help="rebuild into an --out whose images/ is not empty")


def run_build(
    build: Callable[[Callable[[str], None]], dict[str, Any]], summary: Callable[[dict[str, Any]], str]
) -> int:
    """A builder's command line around `build(log)`: timed progress lines on stderr, then
    `summary(stats)` and the time taken on stdout; a UsageError is one `error:` line and its exit code."""
    started = time.perf_counter()
    try:
        stats = build(lambda m: print(f"[{time.perf_counter() - started:6.1f} s] {m}", file=sys.stderr))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{summary(stats)} [{time.perf_counter() - started:.1f} s]")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.openclipart",
        description="Build the OpenClipart zero-shot tagging benchmark (docs/benchmarks.md).",
    )
    d = Options(out=Path("."))
    add_build_arguments(p, d, out="images/, *.jsonl, *.txt, stats.json")
    p.add_argument("--root", type=Path, default=d.root, help="folder holding svg/ and png/ (default: %(default)s)")
    p.add_argument(
        "--unseen-fraction",
        type=float,
        default=d.unseen_fraction,
        help="share of labels held out as unseen (default: %(default)s)",
    )
    p.add_argument(
        "--val-fraction", type=float, default=d.val_fraction, help="share of images in val (default: %(default)s)"
    )
    p.add_argument(
        "--test-fraction", type=float, default=d.test_fraction, help="share of images in test (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=d.seed, help="seed of every random choice (default: %(default)s)")
    p.add_argument(
        "--folder-tags",
        action=argparse.BooleanOptionalAction,
        default=d.folder_tags,
        help="also use folder names (animals, birds) as keywords (default: off)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    options = Options(**vars(_parser().parse_args(argv)))

    def summary(stats: dict[str, Any]) -> str:
        images, labels = stats["images"], stats["labels"]
        return (
            f"{images['total']} images (train {images['train']}, val {images['val']}, test {images['test']}), "
            f"{labels['kept']} labels ({labels['seen']} seen, {labels['unseen']} unseen) in {options.out}"
        )

    return run_build(lambda log: build(options, log=log), summary)


if __name__ == "__main__":
    sys.exit(main())
