"""The pretraining-set builder on tiny fake source trees and a fake benchmark the tests write themselves.

The two hard rules are checked on the fake build and, when data/pretrain exists, on the real one:
(a) no benchmark unseen label, nor a plural/singular/space variant of one, in any target;
(b) no benchmark val/test picture, by OpenClipart identity or by content from any source.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools import openclipart as oc
from tools import pretrain_data as pd
from zstag.core.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
SVG = """<?xml version="1.0"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
     xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><metadata><rdf:RDF>
  <dc:subject><rdf:Bag>{items}</rdf:Bag></dc:subject></rdf:RDF></metadata></svg>
"""
UNSEEN = ["dog", "berries", "night sky"]
# OpenClipart drawing -> (keywords, picture seed). Equal seeds are the same picture.
DRAWINGS = {
    "animals/cat_1": (["cat", "pet"], 1),
    "animals/cat_2": (["cats", "pet"], 2),
    "animals/cat_3": (["cat", "Dogs"], 3),  # "dogs": the plural of the unseen "dog"
    "animals/cat_4": (["cat"], 4),  # benchmark test, by identity
    "animals/cat_5": (["cat", "pet"], 5),  # benchmark val, by identity
    "pets/kitty": (["cat", "pet"], 4),  # benchmark test's cat_4 filed again under another name
    "animals/dog_1": (["dog", "pet"], 6),  # left with "pet" and the folder
    "food/berry_1": (["berry"], 7),  # the singular of the unseen "berries": dropped, image kept by folder
    "food/nightsky": (["Night-Sky"], 8),  # the space variant: no tag but the folder
}
PICTURES = {"animals/kitten.png": 9, "animals/cat.png": 10, "animals/dogs.png": 11, "actions/ate.png": 12}
ICONS = {
    "48x48/devices/camera-photo.png": 13,
    "16x16/devices/camera-photo.png": 14,  # a smaller size of the same icon: not taken
    "48x48/status/weather-storm-symbolic.png": 15,
    "48x48/status/network-wireless-disconnected.png": 16,
    "48x48/places/start-here.png": 17,  # a logo
    "64x64/devices/gtk-cat.png": 1,  # the same picture as OpenClipart's cat_1: a duplicate within the set
    "48x48/apps/camera-app.png": 18,  # not a context that names things
}


def picture(seed: int, size: int = 48) -> Image.Image:
    """A distinct picture per seed: 6x6 blocks of random colours, transparent border."""
    blocks = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    im = Image.fromarray(blocks).resize((size - 8, size - 8), Image.Resampling.NEAREST).convert("RGBA")
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    canvas.paste(im, (4, 4))
    return canvas


def save(path: Path, im: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


@pytest.fixture
def trees(tmp_path: Path) -> dict[str, Path]:
    """Fake openclipart, pysiogame and icon-theme roots, and a fake benchmark folder."""
    clip = tmp_path / "openclipart"
    for rel, (keywords, seed) in DRAWINGS.items():
        svg = clip / "svg" / f"{rel}.svg"
        svg.parent.mkdir(parents=True, exist_ok=True)
        svg.write_text(SVG.format(items="".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)))
        save(clip / "png" / f"{rel}.png", picture(seed, 64))
    pictures = tmp_path / "art4apps"
    for rel, seed in PICTURES.items():
        save(pictures / rel, picture(seed))
    icons = tmp_path / "icons"
    for rel, seed in ICONS.items():
        save(icons / rel, picture(seed, int(rel.split("x")[0])))
    os.symlink("camera-photo.png", icons / "48x48/devices/gnome-dev-camera.png")  # a legacy alias
    bench = tmp_path / "bench"
    held = {"val": ["animals/cat_5"], "test": ["animals/cat_4", "other/kitten_copy"]}
    for split, names in held.items():
        rows = [json.dumps({"image": f"images/{n}.png", "tags": ["cat"]}) for n in names]
        (bench / f"{split}.jsonl").parent.mkdir(parents=True, exist_ok=True)
        (bench / f"{split}.jsonl").write_text("".join(r + "\n" for r in rows))
    # The benchmark's copies are flattened 224 px renders, as tools.openclipart stores them.
    save(bench / "images/animals/cat_5.png", oc.flatten_and_resize(picture(5, 64).resize((224, 224)), 224))
    save(bench / "images/animals/cat_4.png", oc.flatten_and_resize(picture(4, 64).resize((224, 224)), 224))
    save(bench / "images/other/kitten_copy.png", oc.flatten_and_resize(picture(9).resize((224, 224)), 224))
    (bench / "unseen.txt").write_text("".join(u + "\n" for u in UNSEEN))
    return {"openclipart": clip, "pysiogame": pictures, "oxygen-icons": icons, "bench": bench}


def options(trees: dict[str, Path], out: Path, **overrides) -> pd.Options:
    settings: dict = dict(
        out=out,
        benchmark=trees["bench"],
        size=40,
        min_count=1,
        workers=1,
        sources=("openclipart", "pysiogame", "oxygen-icons"),
        roots={k: v for k, v in trees.items() if k != "bench"},
    )
    settings.update(overrides)
    return pd.Options(**settings)


def manifest(path: Path) -> dict[str, list[str]]:
    return {row["image"]: row["tags"] for row in map(json.loads, path.read_text().splitlines())}


def test_the_two_rules_and_the_drops(trees: dict[str, Path], tmp_path: Path) -> None:
    stats = pd.build(options(trees, tmp_path / "out"))
    rows = manifest(tmp_path / "out/train.jsonl") | manifest(tmp_path / "out/val.jsonl")
    tags = {t for ts in rows.values() for t in ts}
    # (a): no unseen label, nor its plural, singular or space variant.
    assert not tags & {"dog", "dogs", "berries", "berry", "night sky", "nightsky"}
    # The folder "animals" and pysiogame's category "animal" merge, onto the more frequent spelling.
    assert rows["images/openclipart/animals/cat_3.png"] == ["animals", "cat"]
    assert rows["images/openclipart/animals/dog_1.png"] == ["animals", "pet"]
    assert rows["images/pysiogame/animals/dogs.png"] == ["animals"]
    assert rows["images/openclipart/food/berry_1.png"] == ["food"]
    # (b): the held-out drawings by name, their copy under another name and another package's copy by content.
    for gone in ("openclipart/animals/cat_4", "openclipart/animals/cat_5", "openclipart/pets/kitty"):
        assert f"images/{gone}.png" not in rows
        assert not (tmp_path / "out" / f"images/{gone}.png").exists()
    assert "images/pysiogame/animals/kitten.png" not in rows
    assert "images/oxygen-icons/devices/gtk-cat.png" not in rows  # cat_1's picture: kept once, from openclipart
    assert "images/openclipart/animals/cat_1.png" in rows
    dropped = {name: s["dropped_images"] for name, s in stats["sources"].items()}
    assert dropped["openclipart"]["benchmark val/test drawing"] == 2
    assert dropped["openclipart"]["same picture as a benchmark val/test image"] == 1
    assert dropped["pysiogame"]["same picture as a benchmark val/test image"] == 1
    assert dropped["oxygen-icons"]["same picture as an earlier image of the set"] == 1
    assert stats["sources"]["openclipart"]["dropped_tags"]["benchmark unseen label"] == 4
    # Every listed file exists, RGB and within --size; classes are the manifests' labels.
    for image in rows:
        with Image.open(tmp_path / "out" / image) as im:
            assert im.mode == "RGB" and max(im.size) <= 40
    assert (tmp_path / "out/classes.txt").read_text().split("\n")[:-1] == sorted(tags)
    assert stats["images"]["total"] == len(rows) == sum(s["images"] for s in stats["sources"].values())


def test_same_inputs_give_the_same_files(trees: dict[str, Path], tmp_path: Path) -> None:
    for out in ("a", "b"):
        pd.build(options(trees, tmp_path / out, val_fraction=0.3))
    for name in ("train.jsonl", "val.jsonl", "classes.txt", "stats.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert manifest(tmp_path / "a/val.jsonl")  # the val slice is not empty here


def test_a_refused_out_keeps_every_file(trees: dict[str, Path], tmp_path: Path) -> None:
    """Without --force, an --out whose images/ is not empty is refused before anything in it is
    touched: not even the files at the names of drawings the build drops (a held-out drawing)."""
    theirs = tmp_path / "out/images/openclipart/animals/cat_4.png"  # cat_4: a benchmark test drawing
    save(theirs, picture(99))
    with pytest.raises(UsageError, match="not empty"):
        pd.build(options(trees, tmp_path / "out"))
    assert theirs.is_file()


def test_min_count_and_a_missing_source(trees: dict[str, Path], tmp_path: Path) -> None:
    roots = {k: v for k, v in trees.items() if k != "bench"} | {"pysiogame": tmp_path / "absent"}
    stats = pd.build(options(trees, tmp_path / "out", min_count=3, roots=roots))
    assert "apt-get install pysiogame" in stats["sources"]["pysiogame"]["skipped"]
    rows = manifest(tmp_path / "out/train.jsonl") | manifest(tmp_path / "out/val.jsonl")
    counts: dict[str, int] = {}
    for ts in rows.values():
        for t in ts:
            counts[t] = counts.get(t, 0) + 1
    assert counts and min(counts.values()) >= 3


def test_icon_names_become_tags_through_the_junk_filter(trees: dict[str, Path]) -> None:
    found = pd.collect_icons("oxygen-icons", trees["oxygen-icons"], tally := pd._SourceTally())
    tags = {c.name: c.tags for c in found}
    assert tags == {
        "devices/camera-photo": {"camera", "photo"},
        "devices/gtk-cat": {"cat"},
        "status/network-wireless-disconnected": {"network", "wireless"},
        "status/weather-storm-symbolic": {"weather", "storm"},
    }
    assert {c.name: c.path for c in found}["devices/camera-photo"].endswith("48x48/devices/camera-photo.png")
    assert tally.images["logo"] == 1 and tally.tags["icon stop word"] == 3


def test_tux_paint_and_emoji_sources_are_refused(trees: dict[str, Path], tmp_path: Path) -> None:
    for bad in ("usr/share/tuxpaint/stamps", "usr/share/fonts/truetype/noto-color-emoji"):
        with pytest.raises(UsageError, match="Tux Paint"):
            pd.refuse_forbidden(tmp_path / bad)
    stamps = tmp_path / "tuxpaint-stamps-default" / "animals"
    save(stamps / "cat.png", picture(30))
    with pytest.raises(UsageError, match="Tux Paint"):
        pd.build(options(trees, tmp_path / "out", roots={"pysiogame": stamps.parent}))
    link = tmp_path / "innocent"
    os.symlink(stamps.parent, link)  # a link into a stamp folder is refused too
    with pytest.raises(UsageError, match="Tux Paint"):
        pd.build(options(trees, tmp_path / "out2", roots={"pysiogame": link}))


REAL_OUT, REAL_BENCH = REPO / "data/pretrain", REPO / "data/openclipart"


@pytest.mark.skipif(
    not (REAL_OUT / "train.jsonl").is_file() or not (REAL_BENCH / "test.jsonl").is_file(),
    reason="data/pretrain or data/openclipart not built",
)
def test_the_real_build_keeps_both_rules() -> None:
    rows = manifest(REAL_OUT / "train.jsonl") | manifest(REAL_OUT / "val.jsonl")
    benchmark = pd.read_benchmark(REAL_BENCH)
    blocked = pd.unseen_blocker(benchmark.unseen)
    assert not sorted({t for ts in rows.values() for t in ts if blocked(t)})
    clip = {i.removeprefix("images/openclipart/").removesuffix(".png") for i in rows if "/openclipart/" in i}
    assert not clip & benchmark.held_out_names
    stats = json.loads((REAL_OUT / "stats.json").read_text())
    o = stats["options"]
    ours = [pd._sign_file((str(REAL_OUT / i), o["size"], o["max_pixels"])) for i in sorted(rows)]
    held = [pd._sign_file((str(f), o["size"], o["max_pixels"])) for f in benchmark.held_out_files]
    assert all(isinstance(s, bytes) for s in ours + held)
    sameness = (o["max_hash_bits"], o["max_difference"], o["max_ink_difference"])
    assert not pd.same_pictures(ours, held, *sameness)  # type: ignore[arg-type]
