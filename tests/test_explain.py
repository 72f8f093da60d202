"""`zstag explain`: one PNG per image, drawn from each method's own spatial output."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from zstag.jobs.explain import TILE
from zstag.methods.base import occlusion_maps
from zstag.store.model import build_model, save_model


@pytest.fixture
def model_dir(tmp_path, word_vectors, dataset):
    def make(method: str, **hp) -> str:
        model = build_model(method, "small", str(word_vectors), ["red circle", "blue square", "green triangle"],
                            hp, image_size=64)
        model.config["training"] = {}
        save_model(model, tmp_path / method)
        return str(tmp_path / method)

    return make


@pytest.mark.parametrize("method, hp", [("lesa", {"attentions": 2}), ("sgma", {}), ("fast0tag", {})])
def test_explain_writes_one_png_per_image(method, hp, model_dir, dataset, cli, tmp_path):
    images = sorted(dataset["images"].iterdir())[:2]
    out = tmp_path / "explained"
    result = cli("explain", *images, "--labels", dataset["vocab"], "--model", model_dir(method, **hp),
                 "--out", out, "--top-k", "2", "--device", "cpu")
    assert result.code == 0, result.err
    written = sorted(out.glob("*.png"))
    assert [p.name for p in written] == [f"{p.stem}.explain.png" for p in images]
    with Image.open(written[0]) as picture:
        # SGMA draws its part boxes on the image; the others add one map panel per tag.
        panels = 1 if method == "sgma" else 3
        assert picture.size == (TILE * panels, TILE + 18)


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
    assert torch.all(maps[0, 0, :2, :2] == 1) and torch.all(maps[0, 0, 2:, :] == 0) and torch.all(maps[0, 0, :, 2:] == 0)
