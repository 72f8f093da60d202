"""The OpenClipart benchmark builder on a tiny fake svg/ + png/ tree the tests write themselves."""

from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from tools import openclipart as oc

RDF_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
{doctype}<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
     xmlns:cc="http://web.resource.org/cc/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <metadata><rdf:RDF><cc:Work rdf:about="">
    <dc:title>{title}</dc:title>
    <dc:subject><rdf:Bag>{items}</rdf:Bag></dc:subject>
    <dc:creator><cc:Agent><dc:title>{creator}</dc:title></cc:Agent></dc:creator>
    <dc:publisher><cc:Agent><dc:title>Open Clip Art Library</dc:title></cc:Agent></dc:publisher>
  </cc:Work></rdf:RDF></metadata>
  <rect width="10" height="10"/>
</svg>
"""

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE svg [
  <!ENTITY a "lol">
  <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
  <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
  <!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
  <!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;">
  <!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">
  <!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;">
  <!ENTITY h "&g;&g;&g;&g;&g;&g;&g;&g;&g;&g;">
]>
<svg xmlns="http://www.w3.org/2000/svg"><title>&h;</title></svg>
"""

PUBLIC_DOCTYPE = (
    '<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.0//EN" "http://www.w3.org/TR/2001/REC-SVG-20010904/DTD/svg10.dtd">\n'
)


def svg_text(keywords: list[str], creator: str = "Jane Roe", title: str = "a drawing", doctype: str = "") -> str:
    items = "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)
    return RDF_TEMPLATE.format(doctype=doctype, title=title, items=items, creator=creator)


# Relative path (no extension) -> keywords. Every drawing also gets the junk below, which
# must never reach a label: its creator's name, the batch tags "hash"/"Magick", a number,
# a single letter and an empty item.
DRAWINGS = {
    "animals/cat_1": ["Cat", "Animal"],
    "animals/cat_2": ["cats", "animal"],
    "animals/cat_3": ["cat", "Red"],
    "animals/cat_4": ["cat, pet"],
    "animals/dog_1": ["dog", "animal"],
    "animals/dog_2": ["Dogs", "pet"],
    "animals/dog_3": ["dog", "red"],
    "animals/dog_4": ["dog_house"],
    "animals/birds/owl_1": ["bird", "animal"],
    "animals/birds/owl_2": ["bird", "Night-Sky"],
    "animals/birds/owl_3": ["birds"],
    "food/apple_1": ["apple", "red", "fruit"],
    "food/apple_2": ["apple", "fruit"],
    "food/apple_3": ["apple", "red"],
    "food/pear_1": ["pear", "fruit"],
    "food/pear_2": ["fruit", "pet"],
    "food/rare_1": ["kumquat"],
    "animals/penguin_1": ["tux", "bird"],
    "animals/penguin_2": ["Tux"],
    "animals/penguin_3": ["TUX", "pet"],
}
# A one-word pseudonym is junk on its author's own drawings only: elsewhere "tux" is a penguin.
CREATORS = {"food/pear_1": "Tux"}
JUNK = ["hash", "Magick", "11", "x", ""]


def write_png(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A fake /usr/share/openclipart: 20 good drawings, a symlinked duplicate, bad SVGs, odd PNGs."""
    root = tmp_path / "openclipart"
    for i, (rel, keywords) in enumerate(DRAWINGS.items()):
        creator = CREATORS.get(rel, f"Author {i % 3} Smith")
        svg = root / "svg" / f"{rel}.svg"
        svg.parent.mkdir(parents=True, exist_ok=True)
        text = svg_text(
            keywords + JUNK + [creator, "Author 1 Smith"], creator=creator, doctype=PUBLIC_DOCTYPE if i % 2 else ""
        )
        svg.write_text(text)
        # Transparent left half, opaque right half in the drawing's own colour.
        image = Image.new("RGBA", (80, 40), (0, 0, 0, 0))
        image.paste((10 * i, 200, 30, 255), (40, 0, 80, 40))
        write_png(root / "png" / f"{rel}.png", image)
    # Debian links one drawing under a second folder: it must stay one image.
    for kind in ("svg", "png"):
        link = root / kind / "pets" / f"cat_1.{kind}"
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(f"../animals/cat_1.{kind}", link)
    bad = {"entity": BILLION_LAUGHS, "broken": svg_text(["cat"]).replace("</svg>", "")}
    for name, text in bad.items():
        (root / "svg" / "bad").mkdir(parents=True, exist_ok=True)
        (root / "svg" / "bad" / f"{name}.svg").write_text(text)
        write_png(root / "png" / "bad" / f"{name}.png", Image.new("RGB", (8, 8)))
    # A palette PNG with a transparent index, and one too large for the test's --max-pixels.
    for kind in ("svg", "png"):
        (root / kind / "misc").mkdir(parents=True)
    (root / "svg" / "misc" / "palette_cat.svg").write_text(svg_text(["cat", "fruit"]))
    palette = Image.new("P", (30, 30), 0)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.paste(1, (15, 0, 30, 30))
    palette.save(root / "png" / "misc" / "palette_cat.png", transparency=0)
    (root / "svg" / "misc" / "huge_dog.svg").write_text(svg_text(["dog", "pet"]))
    write_png(root / "png" / "misc" / "huge_dog.png", Image.new("RGB", (400, 300), "white"))
    return root


def options(tree: Path, out: Path, **overrides) -> oc.Options:
    settings = dict(
        out=out,
        root=tree,
        size=32,
        min_count=3,
        seed=0,
        workers=1,
        max_pixels=200 * 200,
        max_per_tagset=0,
        unseen_fraction=0.25,
    )
    settings.update(overrides)
    return oc.Options(**settings)


def read_manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------- keywords


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  Signs_and-Symbols ", "signs and symbols"),
        ("Cafe\u0301", "caf\u00e9"),  # NFC: the combining accent is composed
        ("&eacute;toile", "\u00e9toile"),
        ("#Flag!", "flag"),
        ("Night  -  Sky", "night sky"),
        ("mapsym", "map symbol"),
        ("weather-sym", "weather symbol"),
        ("asym", "asym"),
    ],
)
def test_normalise_keyword(raw: str, expected: str) -> None:
    assert oc.normalise_keyword(raw) == expected


def test_split_keywords_splits_lists_but_not_phrases() -> None:
    assert oc.split_keywords("Dog, cat;  north_america / Fish|") == ["dog", "cat", "north america", "fish"]


@pytest.mark.parametrize(
    "keyword, reason",
    [
        ("x", "single character"),
        ("11", "no letter"),
        ("3d", None),
        ("www.example.org", "url"),
        ("http://a.b", "url"),
        ("jane roe", "person or library name"),
        ("hash", "stop list"),
        ("magick", "stop list"),
        ("cat", None),
        ("bad\x07", "control character"),
    ],
)
def test_junk_reason(keyword: str, reason: str | None) -> None:
    assert oc.junk_reason(keyword, frozenset({"jane roe"})) == reason


def test_merge_variants_folds_plurals_and_spacing_onto_the_most_frequent_spelling() -> None:
    counts = Counter(
        {
            "star": 2,
            "stars": 5,
            "mime types": 3,
            "mimetypes": 1,
            "glass": 2,
            "berries": 1,
            "berry": 1,
            "boxes": 1,
            "box": 4,
            "news": 1,
        }
    )
    merged = oc.merge_variants(counts)
    assert merged["star"] == merged["stars"] == "stars"
    assert merged["mimetypes"] == merged["mime types"] == "mime types"
    assert merged["berries"] == merged["berry"] == "berry"  # a tie goes to the shorter spelling
    assert merged["boxes"] == "box"
    assert merged["glass"] == "glass"  # "glas" does not occur, so nothing to fold onto
    assert merged["news"] == "news"


# --------------------------------------------------------------------------- SVG metadata


def test_read_svg_metadata_reads_bag_items_and_agent_names() -> None:
    meta = oc.read_svg_metadata(svg_text(["Cat", "big_dog, Pets"], creator="Jane Roe", doctype=PUBLIC_DOCTYPE).encode())
    assert meta.keywords == ("cat", "big dog", "pets")
    assert set(meta.names) == {"Jane Roe", "Open Clip Art Library"}


def test_read_svg_metadata_takes_bare_subject_text() -> None:
    text = svg_text([]).replace("<rdf:Bag></rdf:Bag>", "tree, Leaf")
    assert oc.read_svg_metadata(text.encode()).keywords == ("tree", "leaf")


def test_entity_declarations_are_refused_before_any_expansion() -> None:
    started = time.perf_counter()
    with pytest.raises(oc.UnsafeXmlError):
        oc.read_svg_metadata(BILLION_LAUGHS.encode())
    harmless = '<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY ns "http://x">]><svg/>'
    with pytest.raises(oc.UnsafeXmlError):
        oc.read_svg_metadata(harmless.encode())
    assert time.perf_counter() - started < 1.0


def test_malformed_svg_raises_parse_error() -> None:
    with pytest.raises(ET.ParseError):
        oc.read_svg_metadata(svg_text(["cat"]).replace("</svg>", "").encode())


# --------------------------------------------------------------------------- PNG conversion


def test_flatten_and_resize_composites_on_white_and_keeps_aspect() -> None:
    image = Image.new("RGBA", (80, 40), (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (40, 0, 80, 40))
    out = oc.flatten_and_resize(image, 20)
    assert out.mode == "RGB" and out.size == (20, 10)
    assert out.getpixel((1, 5)) == (255, 255, 255)  # transparent black became white, not black
    assert out.getpixel((18, 5)) == (255, 0, 0)


def test_flatten_and_resize_honours_palette_transparency_and_never_enlarges() -> None:
    palette = Image.new("P", (6, 4), 0)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.paste(1, (3, 0, 6, 4))
    palette.info["transparency"] = 0
    out = oc.flatten_and_resize(palette, 64)
    assert out.size == (6, 4)
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((5, 0)) == (0, 0, 255)


# --------------------------------------------------------------------------- selection and splits


def test_cap_tagsets_keeps_a_seeded_subset_of_each_large_group() -> None:
    tags = {f"star{i}": frozenset({"star"}) for i in range(5)} | {"cat": frozenset({"cat"})}
    dropped = oc.cap_tagsets(tags, 2, seed=0)
    assert len(dropped) == 3 and "cat" not in dropped
    assert dropped == oc.cap_tagsets(tags, 2, seed=0)
    assert oc.cap_tagsets(tags, 0, seed=0) == set()
    assert any(oc.cap_tagsets(tags, 2, seed=s) != dropped for s in range(1, 6))


def test_frequent_labels_counts_images_not_occurrences() -> None:
    tags = [frozenset({"a", "b"}), frozenset({"a"}), frozenset({"c"})]
    assert oc.frequent_labels(tags, 2) == {"a"}
    assert oc.frequent_labels(tags, 1) == {"a", "b", "c"}


def test_split_labels_is_seeded_disjoint_and_sized() -> None:
    labels = [f"label{i}" for i in range(10)]
    seen, unseen = oc.split_labels(labels, 0.2, seed=1)
    assert len(unseen) == 2 and len(seen) == 8 and not set(seen) & set(unseen)
    assert (seen, unseen) == oc.split_labels(list(reversed(labels)), 0.2, seed=1)
    assert any(oc.split_labels(labels, 0.2, seed=s)[1] != unseen for s in range(2, 8))


def test_split_images_places_every_label_in_val_and_test() -> None:
    tags = {f"img{i}": frozenset({"common"} | ({"rare"} if i in (3, 17) else set())) for i in range(40)}
    tags["img5"] = frozenset({"rare_seen", "common"})
    tags["img6"] = frozenset({"rare_seen"})
    tags["img7"] = frozenset({"rare_seen"})
    splits = oc.split_images(tags, seen={"common", "rare_seen"}, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert sorted(sum(splits.values(), [])) == sorted(tags)  # a partition: disjoint and complete
    for split in ("val", "test"):
        present = set().union(*(tags[i] for i in splits[split]))
        assert {"rare", "rare_seen", "common"} <= present
    assert "rare_seen" in set().union(*(tags[i] for i in splits["train"]))
    assert (len(splits["val"]), len(splits["test"])) == (4, 8)
    assert splits == oc.split_images(dict(reversed(tags.items())), {"common", "rare_seen"}, 0.1, 0.2, seed=0)


# --------------------------------------------------------------------------- the whole build


def test_build_on_a_fake_tree(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    stats = oc.build(options(tree, out))
    rows = {split: read_manifest(out / f"{split}.jsonl") for split in oc.SPLITS}
    vocab = (out / "vocab.txt").read_text().splitlines()
    seen = (out / "seen.txt").read_text().splitlines()
    unseen = (out / "unseen.txt").read_text().splitlines()
    all_rows = [r for split_rows in rows.values() for r in split_rows]
    images = [r["image"] for r in all_rows]

    # Bad SVGs and the oversized PNG are counted, the symlinked duplicate is one image.
    assert stats["source"]["svg_files_refused"] == {"entity declaration": 1, "malformed xml": 1}
    assert stats["source"]["distinct_drawings"] == len(DRAWINGS) + 4
    assert stats["dropped_images"]["too many pixels"] == 1
    assert len(images) == len(set(images)) and "images/pets/cat_1.png" not in images
    assert "images/misc/huge_dog.png" not in images

    # Keywords: normalised, variants merged, junk gone; min-count 3 drops pear/kumquat/night sky.
    assert vocab == sorted(["animal", "apple", "bird", "cat", "dog", "fruit", "pet", "red", "tux"])
    counts = Counter(t for r in all_rows for t in r["tags"])
    assert min(counts.values()) >= 3 and set(counts) == set(vocab)
    assert counts["tux"] == 3  # the penguins, not Tux's own pear
    # kumquat is too rare, and "dog house" is a phrase of its own, not "dog".
    assert "images/food/rare_1.png" not in images and "images/animals/dog_4.png" not in images
    assert stats["dropped_images"]["no label with --min-count images"] == 2
    cat_1 = next(r for r in all_rows if r["image"] == "images/animals/cat_1.png")
    assert cat_1["tags"] == ["animal", "cat"]

    # Labels: seen and unseen partition the vocabulary; unseen ones reach val and test.
    assert sorted(seen + unseen) == vocab and not set(seen) & set(unseen) and len(unseen) == 2
    for split in ("val", "test"):
        assert set(unseen) <= {t for r in rows[split] for t in r["tags"]}
    assert set(seen) <= {t for r in rows["train"] for t in r["tags"]}
    assert stats["images"] == {"total": len(images), **{s: len(rows[s]) for s in oc.SPLITS}}

    # Images: resized to --size on the longer side, transparency composited on white.
    for image in images:
        with Image.open(out / image) as im:
            assert im.mode == "RGB" and max(im.size) <= 32
    with Image.open(out / "images/animals/cat_1.png") as im:
        assert im.size == (32, 16) and im.getpixel((1, 8)) == (255, 255, 255)
    with Image.open(out / "images/misc/palette_cat.png") as im:
        assert im.size == (30, 30) and im.getpixel((1, 1)) == (255, 255, 255) and im.getpixel((20, 1)) == (0, 0, 255)


def test_build_is_byte_identical_across_runs_and_worker_counts(tree: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    oc.build(options(tree, first, workers=1))
    oc.build(options(tree, second, workers=2))
    names = ["train.jsonl", "val.jsonl", "test.jsonl", "vocab.txt", "seen.txt", "unseen.txt", "stats.json"]
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    pngs = sorted(p.relative_to(first) for p in first.rglob("*.png"))
    assert pngs and pngs == sorted(p.relative_to(second) for p in second.rglob("*.png"))
    assert all((first / p).read_bytes() == (second / p).read_bytes() for p in pngs)
    other_seed = tmp_path / "three"
    oc.build(options(tree, other_seed, seed=7))
    assert [(other_seed / n).read_bytes() for n in names[:3]] != [(first / n).read_bytes() for n in names[:3]]


def test_tagset_cap_and_folder_tags(tree: Path, tmp_path: Path) -> None:
    # Only two pairs share a tag set: cat_1 and cat_2 ("cats"), dog_2 ("Dogs") and huge_dog.
    capped = oc.build(options(tree, tmp_path / "capped", max_per_tagset=1))
    assert capped["dropped_images"]["tag-set cap"] == 2
    oc.build(options(tree, tmp_path / "folders", folder_tags=True))
    vocab = (tmp_path / "folders" / "vocab.txt").read_text().splitlines()
    # The folder "animals" outnumbers the keyword "animal" and names the merged label;
    # "birds" (3 drawings) ties with "bird" (3) and the shorter spelling wins.
    assert {"animals", "bird", "food"} <= set(vocab) and not {"animal", "birds"} & set(vocab)


def test_a_png_that_fails_to_decode_takes_its_now_too_rare_label_along(tree: Path, tmp_path: Path) -> None:
    (tree / "svg" / "kiwi").mkdir()
    for name in ("kiwi_1", "kiwi_2", "kiwi_broken"):
        (tree / "svg" / "kiwi" / f"{name}.svg").write_text(svg_text(["kiwi"]))
        write_png(tree / "png" / "kiwi" / f"{name}.png", Image.new("RGB", (20, 20), "green"))
    broken = tree / "png" / "kiwi" / "kiwi_broken.png"
    broken.write_bytes(broken.read_bytes()[:60])  # the header survives, the pixel data does not
    out = tmp_path / "bench"
    stats = oc.build(options(tree, out))
    assert stats["dropped_images"]["unreadable png"] == 1
    assert "kiwi" not in (out / "vocab.txt").read_text().splitlines()
    assert not list((out / "images" / "kiwi").glob("*.png"))  # written, then removed with their label


def test_cli_refuses_a_used_output_folder_without_force(tree: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    argv = [
        "--out",
        str(out),
        "--root",
        str(tree),
        "--size",
        "16",
        "--min-count",
        "3",
        "--workers",
        "1",
        "--max-pixels",
        "40000",
    ]
    assert oc.main(argv) == 0
    assert "images" in capsys.readouterr().out
    assert oc.main(argv) == 2
    assert "--force" in capsys.readouterr().err
    assert oc.main(argv + ["--force"]) == 0
    assert oc.main(["--out", str(tmp_path / "x"), "--root", str(tmp_path / "nowhere")]) == 2
