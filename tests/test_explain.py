"""`zstag explain`: one PNG per image, drawn from each method's own spatial output, in `tag`'s
score units, with the image's shape kept and no picture saying more than the model does."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from test_console_script import zstag

from zstag.jobs import explain as explain_job
from zstag.jobs.explain import LINE, MARK, SAME_MAPS, TILE, letterbox, output_names, render
from zstag.methods.base import occlusion_maps
from zstag.store.model import build_model, save_model


@pytest.fixture
def model_dir(tmp_path, word_vectors, dataset):
    def make(method: str, calibration: dict | None = None, **hp) -> str:
        model = build_model(
            method, "small", str(word_vectors), ["red circle", "blue square", "green triangle"], hp, image_size=64
        )
        model.config["training"] = {}
        if calibration:
            model.config["calibration"] = calibration
        save_model(model, tmp_path / method)
        return str(tmp_path / method)

    return make


def picture_panels(path) -> int:
    """How many panels a picture has below its title lines and caption line: TILE-wide ones, or a
    lone one twice as large (SGMA's parts); the two heights never fit the same number of lines."""
    with Image.open(path) as picture:
        assert picture.info.get(MARK[0]) == MARK[1]
        side = next(side for side in (TILE, 2 * TILE) if (picture.height - LINE - side) % LINE == 0)
        return picture.width // side


@pytest.mark.parametrize("method, hp", [("sgma", {}), ("fast0tag", {}), ("ml2p", {})])
def test_explain_writes_one_png_per_image(method, hp, model_dir, dataset, cli, tmp_path):
    images = sorted(dataset["images"].iterdir())[:2]
    out = tmp_path / "explained"
    result = cli(
        "explain",
        *images,
        "--labels",
        dataset["vocab"],
        "--model",
        model_dir(method, **hp),
        "--out",
        out,
        "--top-k",
        "2",
        "--device",
        "cpu",
    )
    assert result.code == 0, result.err
    written = sorted(out.glob("*.png"))
    assert [p.name for p in written] == [f"{p.name}.explain.png" for p in images]
    # SGMA draws its part boxes on the image (one panel, drawn larger); the others add a map panel
    # per tag, or one when the tags' maps are the same.
    assert picture_panels(written[0]) in ((1,) if method == "sgma" else (2, 3))


def test_a_map_shared_by_every_tag_is_drawn_once_with_a_note(model_dir, dataset, tmp_path):
    """LESA with one attention module looks at one place for every label: three identical panels
    would read as three findings. A name that is not UTF-8 and holds a line break is printed as one
    escaped line (printing it raw ended the run with a UnicodeEncodeError)."""
    images = sorted(dataset["images"].iterdir())[:2]
    odd = tmp_path / os.fsdecode(b"odd\xff\nname.png")
    shutil.copy(images[0], odd)
    images.append(odd)
    out = tmp_path / "explained"
    result = zstag(
        "explain",
        *map(str, images),
        "--labels",
        str(dataset["vocab"]),
        "--top-k",
        "3",
        "--device",
        "cpu",
        "--model",
        model_dir("lesa", attentions=1),
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(SAME_MAPS) == 1
    assert [picture_panels(out / f"{p.name}.explain.png") for p in images] == [2, 2, 2]
    printed = result.stdout.splitlines()
    assert len(printed) == 3 and printed[2] == str(out / "odd\\udcff\\nname.png.explain.png")


def test_panels_show_calibrated_probabilities_like_tag(model_dir, dataset, cli, tmp_path, monkeypatch):
    """Raw scores ("train 4.16") where `tag` prints probabilities (0.05) were two units for one thing."""
    drawn = []
    monkeypatch.setattr(
        explain_job, "render", lambda image, tags, maps, boxes: drawn.append(tags) or render(image, tags, maps, boxes)
    )
    image = sorted(dataset["images"].iterdir())[0]
    calibration = {"scale": 0.5, "bias": -1.0}
    model = model_dir("fast0tag", calibration=calibration)
    result = cli(
        "explain",
        image,
        "--labels",
        dataset["vocab"],
        "--model",
        model,
        "--out",
        tmp_path / "e",
        "--top-k",
        "2",
        "--device",
        "cpu",
    )
    assert result.code == 0, result.err
    tagged = cli("tag", image, "--labels", dataset["vocab"], "--model", model, "--top-k", "2", "--device", "cpu")
    expected = [(t["label"], f"{t['score']:.2f}") for t in json.loads(tagged.out)["tags"]]
    assert drawn == [expected]


def test_uncalibrated_scores_are_marked_raw():
    assert explain_job.score_text(torch.tensor([4.164, -0.5]), calibrated=False) == ["4.16 (raw)", "-0.5 (raw)"]
    assert explain_job.score_text(torch.tensor([0.051]), calibrated=True) == ["0.05"]


def test_panels_keep_the_image_aspect_ratio():
    wide = Image.new("RGB", (200, 100), "black")
    boxed = np.asarray(letterbox(wide))
    assert boxed.shape == (TILE, TILE, 3)
    band = (TILE - TILE // 2) // 2
    assert (boxed[: band - 1] == 255).all() and (boxed[-band + 1 :] == 255).all()  # white above and below
    assert (boxed[band + 1 : TILE - band - 1] == 0).all()  # the whole picture, unstretched


def test_part_boxes_are_drawn_on_the_image_below_the_title():
    image = Image.new("RGB", (128, 128), (0, 128, 0))
    boxes = np.array([[0.1, 0.1, 0.5, 0.5], [0.4, 0.4, 0.9, 0.9]])
    picture = np.asarray(render(image, [("boat", "0.81")], None, boxes))
    top = picture.shape[0] - 2 * TILE  # one panel, drawn twice as large
    assert picture.shape[1] == 2 * TILE
    assert (picture[: top - LINE, :, 1] != 128).all()  # the title rows hold no image
    panel = picture[top:]
    assert ((panel == (0, 128, 0)).all(axis=2)).mean() > 0.5  # the image itself, not an empty background
    assert ((panel == (255, 0, 0)).all(axis=2)).any() and ((panel == (0, 0, 255)).all(axis=2)).any()


def test_output_names_never_clash():
    assert output_names(["a/x.jpg", "b/x.jpg", "b.jpg", "b.png", "a/x.jpg.2"]) == [
        "x.jpg.explain.png",
        "x.jpg.2.explain.png",
        "b.jpg.explain.png",
        "b.png.explain.png",
        "x.jpg.2.2.explain.png",
    ]


def test_pictures_of_same_named_images_do_not_overwrite_and_foreign_files_are_kept(model_dir, dataset, tmp_path):
    source = sorted(dataset["images"].iterdir())[0]
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        shutil.copy(source, tmp_path / folder / "x.png")
    Image.open(source).convert("RGB").save(tmp_path / "one" / "x.jpg")
    out = tmp_path / "explained"
    args = [
        "explain",
        "one",
        "two",
        "--labels",
        str(dataset["vocab"]),
        "--model",
        model_dir("fast0tag"),
        "--out",
        str(out),
        "--top-k",
        "1",
        "--device",
        "cpu",
    ]
    result = zstag(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["x.jpg.explain.png", "x.png.2.explain.png", "x.png.explain.png"]
    assert zstag(*args, cwd=tmp_path).returncode == 0  # its own pictures are replaced
    (out / "x.png.explain.png").write_bytes(b"someone's picture")
    refused = zstag(*args, cwd=tmp_path)
    assert refused.returncode == 2 and "x.png.explain.png" in refused.stderr and "did not write" in refused.stderr
    assert (out / "x.png.explain.png").read_bytes() == b"someone's picture"
    a_file = zstag(*args[:-6], "--out", "one/x.png", *args[-4:], cwd=tmp_path)
    assert a_file.returncode == 2 and a_file.stderr.strip() == "error: --out one/x.png is a file; give a folder"


def test_occlusion_map_finds_the_cell_that_matters():
    """A toy method that scores the mean of the top-left quarter: only those cells matter."""

    class TopLeft(torch.nn.Module):
        def forward(self, images, labels):
            return images[:, :, :8, :8].mean(dim=(1, 2, 3))[:, None].expand(-1, len(labels))

    class Labels:
        def __len__(self):
            return 1

    images = torch.ones(1, 3, 16, 16)
    maps = occlusion_maps(TopLeft(), images, Labels(), grid=4)
    assert maps.shape == (1, 1, 4, 4)
    assert torch.all(maps[0, 0, :2, :2] == 1)
    assert torch.all(maps[0, 0, 2:, :] == 0) and torch.all(maps[0, 0, :, 2:] == 0)
