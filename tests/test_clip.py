"""CLIP through the whole command line, offline: a tiny random CLIPModel in the Hub's format behind
the local fake hub; `zstag fetch clip-vit-b32` (through its pinned pull-request ref), then zero-shot
`tag` / `eval` / `models` / `calibrate`, its zero-shot ImageNet classifier, and the four paper
methods trained on its image and text towers."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import synth
import torch
from fakehub import serve, serve_registry, tiny_clip_files
from synth import ON_CPU

ZSTAG = shutil.which("zstag")
pytestmark = pytest.mark.skipif(ZSTAG is None, reason="the zstag console script is not installed")


def zstag(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The console script with the test's environment (the fake hub, its cache and registry)."""
    return subprocess.run(
        [ZSTAG, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        # One thread: the tiny towers gain nothing from more, and lose much when the cores are shared.
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory) -> dict[str, bytes]:
    return tiny_clip_files(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture
def hub_with_clip(clip_files, tmp_path, monkeypatch):
    fake = serve(tmp_path, monkeypatch)
    serve_registry(fake, tmp_path, monkeypatch, "clip-vit-b32", clip_files)
    yield fake
    fake.stop()


@pytest.fixture
def fetched(hub_with_clip, tmp_path):
    result = zstag("fetch", "clip-vit-b32", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # through the registry's own pin, the Hub pull-request ref that holds the safetensors file
    assert any("/resolve/refs%2Fpr%2F15/model.safetensors" in path for _, path in hub_with_clip.requests)
    return hub_with_clip


def test_missing_weights_name_the_fetch_command(hub_with_clip, tmp_path):
    (tmp_path / "photos").mkdir()
    photos = synth.noise_pngs(tmp_path / "photos", 1, (32, 32))
    (tmp_path / "vocab.txt").write_text("cat\ndog\n")
    result = zstag("tag", photos[0], "--labels", tmp_path / "vocab.txt", "--model", "clip-vit-b32", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "zstag fetch clip-vit-b32" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    listed = zstag("models", "--json", cwd=tmp_path)
    assert "clip-vit-b32" not in listed.stdout  # listed only once fetched


def test_zero_shot_tag_eval_models_explain_bench(fetched, tmp_path):
    data = synth.make_dataset(tmp_path / "data", n=6, size=32)
    tagged = zstag(
        "tag",
        data["images"],
        "--labels",
        data["vocab"],
        "--model",
        "clip-vit-b32",
        "--top-k",
        "3",
        "--device",
        "cpu",
        cwd=tmp_path,
    )
    assert tagged.returncode == 0, tagged.stderr
    rows = [json.loads(line) for line in tagged.stdout.splitlines()]
    assert len(rows) == 6 and all(len(row["tags"]) == 3 for row in rows)
    evaluated = zstag(
        "eval",
        "--model",
        "clip-vit-b32",
        "--truth",
        data["manifest"],
        "--unseen",
        data["unseen"],
        "--json",
        "--device",
        "cpu",
        cwd=tmp_path,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert "mAP" in json.loads(evaluated.stdout)["zs"]
    models = [json.loads(line) for line in zstag("models", "--json", cwd=tmp_path).stdout.splitlines()]
    row = next(r for r in models if r["name"] == "clip-vit-b32")
    assert (row["method"], row["backbone"], row["semantics"], row["error"]) == (
        "clip-zeroshot",
        "clip-vit-b32",
        "clip-vit-b32",
        None,
    )
    explained = zstag(
        "explain",
        data["images"] / "img0000.png",
        "--labels",
        data["vocab"],
        "--model",
        "clip-vit-b32",
        "--out",
        tmp_path / "explained",
        "--device",
        "cpu",
        cwd=tmp_path,
    )
    assert explained.returncode == 0, explained.stderr
    assert list((tmp_path / "explained").glob("*.explain.png"))
    # A ready-made model has no head to rebuild at another size: one line, exit 2 (it said "unknown
    # method 'clip-zeroshot'" before).
    resized = zstag(
        "bench", "--model", "clip-vit-b32", "--quick", "--image-size", "32", "--device", "cpu", cwd=tmp_path
    )
    assert resized.returncode == 2 and "do not apply to the ready-made model clip-vit-b32" in resized.stderr
    # Every section on the ready-made model, with test_bench's small sizes: 4 photos in batches of 2.
    benched = zstag(
        "bench",
        "--model",
        "clip-vit-b32",
        "--quick",
        "--images",
        "4",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--json",
        "-",
        cwd=tmp_path,
    )
    assert benched.returncode == 0, benched.stderr


def test_calibrate_the_ready_made_model_then_tag_with_probabilities(fetched, tmp_path):
    """`zstag calibrate clip-vit-b32` stores the fit in zstag's cache root, not in the fetched snapshot,
    and `tag` then writes sigmoid(scale * cosine + bias)."""
    from zstag.store import hub

    data = synth.make_dataset(tmp_path / "data", n=8, size=32)
    folder = hub.cached("clip-vit-b32")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.parent.parent.rglob("*") if p.is_file()}

    def tags(*extra: str) -> list[dict]:
        args = ("tag", data["images"], "--labels", data["vocab"], "--model", "clip-vit-b32", "--top-k", "3")
        result = zstag(*args, "--device", "cpu", *extra, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    raw = tags("--raw-scores")
    # Truth the random tiny CLIP can be calibrated on: each image's own best label.
    truth = tmp_path / "truth.jsonl"
    truth.write_text("".join(json.dumps({"image": r["image"], "tags": [r["tags"][0]["label"]]}) + "\n" for r in raw))
    calibrated = zstag(
        "calibrate", "clip-vit-b32", "--data", truth, "--labels", data["vocab"], "--device", "cpu", cwd=tmp_path
    )
    assert calibrated.returncode == 0, calibrated.stderr
    fitted = json.loads(calibrated.stdout)
    assert fitted["scale"] > 0 and fitted["pairs"] == 8 * len(synth.LABELS)
    stored = json.loads((tmp_path / "cache" / "calibrations" / "clip-vit-b32.json").read_text())
    assert stored["calibration"] == fitted
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.parent.parent.rglob("*") if p.is_file()}
    assert after == before  # the download is never written to

    for r, c in zip(raw, tags()):
        assert [t["label"] for t in c["tags"]] == [t["label"] for t in r["tags"]]  # the map is increasing
        for t_raw, t_cal in zip(r["tags"], c["tags"]):
            expected = 1 / (1 + math.exp(-(fitted["scale"] * t_raw["score"] + fitted["bias"])))
            assert t_cal["score"] == pytest.approx(expected, rel=1e-4)


def test_zero_shot_scores_are_clip_cosines(fetched, tmp_path, monkeypatch):
    """The model's scores are CLIP's own: cosine of the image vector and the mean prompt vector."""
    from transformers import AutoTokenizer, CLIPModel

    from zstag.semantics.clip import TEMPLATES
    from zstag.store import hub
    from zstag.store.model import load_model

    model = load_model("clip-vit-b32")
    folder = hub.cached("clip-vit-b32")
    reference = CLIPModel.from_pretrained(str(folder), use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = model.method(images, model.embed(["cat", "red car"]))
        image = torch.nn.functional.normalize(
            reference.visual_projection(reference.vision_model(pixel_values=images).pooler_output), dim=1
        )
        texts = []
        for label in ("cat", "red car"):
            tokens = tokenizer([t.format(label) for t in TEMPLATES], padding=True, return_tensors="pt")
            vectors = reference.text_projection(reference.text_model(**tokens).pooler_output)
            vectors = torch.nn.functional.normalize(vectors, dim=1)
            texts.append(torch.nn.functional.normalize(vectors.mean(0), dim=0))
        expected = image @ torch.stack(texts).T
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(
    "method, extra, finetuned",
    [
        ("lesa", [], False),
        # The default variant: CLIP's zero-shot ImageNet classifier gives the 1,000 external nodes; a
        # high cosine threshold keeps the tiny random text vectors from linking every pair of them.
        ("rgcn-posvae", ["--set", "cosine_threshold=0.999"], False),
        ("sgma", [], False),  # frozen on CLIP although SGMA's recipe fine-tunes its CNN ...
        ("ml2p", ["--set", "finetune_backbone=true"], True),
    ],
)  # ... unless asked
def test_methods_train_and_tag_on_clip(fetched, tmp_path, method, extra, finetuned):
    data = synth.make_dataset(tmp_path / "data", n=16, size=32)
    out = tmp_path / "model"
    trained = zstag(
        "-q",
        "train",
        data["manifest"],
        "--method",
        method,
        "--backbone",
        "clip-vit-b32",
        "--semantics",
        "clip-vit-b32",
        "--unseen",
        data["unseen"],
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--batch-size",
        "8",
        *ON_CPU,
        "--val-fraction",
        "0.25",
        "--out",
        out,
        *extra,
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr
    config = json.loads((out / "config.json").read_text())
    assert (config["backbone"], config["semantics"], config["backbone_in_weights"]) == (
        "clip-vit-b32",
        "clip-vit-b32",
        finetuned,
    )  # frozen: the tower stays in the fetch cache
    assert config["hp"].get("variant", "rgcn-posvae") == "rgcn-posvae"
    tagged = zstag(
        "tag",
        data["images"],
        "--labels",
        data["vocab"],
        "--model",
        out,
        "--device",
        "cpu",
        "--top-k",
        "2",
        cwd=tmp_path,
    )
    assert tagged.returncode == 0, tagged.stderr
    assert len(tagged.stdout.splitlines()) == 16


def test_bench_measures_a_method_on_the_clip_backbone(fetched, tmp_path):
    benched = zstag(
        "bench",
        "--backbone",
        "clip-vit-b32",
        "--image-size",
        "32",
        "--quick",
        "--only",
        "forward",
        "--device",
        "cpu",
        "--json",
        "-",
        cwd=tmp_path,
    )
    assert benched.returncode == 0, benched.stderr
    assert '"clip-vit-b32"' in benched.stdout


def test_clip_backbone_region_map_is_the_patch_grid(fetched):
    from zstag.backbones import build_backbone

    backbone = build_backbone("clip-vit-b32")
    stages = backbone.stages(torch.randn(2, 3, 64, 64))  # twice the checkpoint's size: interpolated positions
    assert [tuple(s.shape) for s in stages] == [(2, 32, 8, 8)] * 3
    assert backbone.regions(torch.randn(1, 3, 32, 32)).shape == (1, 32, 4, 4)


def test_the_classifier_is_clip_zero_shot_over_the_imagenet_names(fetched, monkeypatch):
    """logit_scale * cos(CLIP's image vector, each ImageNet name's prompt-ensembled text vector), the
    same from live images as from the frozen-feature cache, and computed once per backbone."""
    from transformers import AutoTokenizer, CLIPModel

    from zstag.backbones import build_backbone
    from zstag.backbones.torchvision_nets import imagenet_classes
    from zstag.semantics.clip import TEMPLATES
    from zstag.store import hub
    from zstag.training.features import StageCache

    assert build_backbone("clip-vit-b32").class_names == imagenet_classes()  # no text vectors computed yet
    names = imagenet_classes()[:3]  # the arithmetic on three of them: 8 prompts x 1,000 names take a while
    monkeypatch.setattr("zstag.backbones.torchvision_nets.imagenet_classes", lambda: names)
    backbone = build_backbone("clip-vit-b32")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        stages = backbone.stages(images)
        logits = backbone.class_logits(stages)
    assert logits.shape == (2, 3)

    folder = hub.cached("clip-vit-b32")
    reference = CLIPModel.from_pretrained(str(folder), use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    with torch.no_grad():
        image = reference.visual_projection(reference.vision_model(pixel_values=images).pooler_output)
        image = torch.nn.functional.normalize(image, dim=1)
        texts = []
        for name in names:
            tokens = tokenizer([t.format(name) for t in TEMPLATES], padding=True, return_tensors="pt")
            vectors = reference.text_projection(reference.text_model(**tokens).pooler_output)
            vectors = torch.nn.functional.normalize(vectors, dim=1)
            texts.append(torch.nn.functional.normalize(vectors.mean(0), dim=0))
        expected = reference.logit_scale.exp() * image @ torch.stack(texts).T
    assert torch.allclose(logits, expected, atol=1e-4)

    calls = []
    monkeypatch.setattr("zstag.semantics.embed_labels", lambda *a, **k: calls.append(a) or None)
    cached = StageCache(backbone, stages)  # what training on the frozen tower reads
    assert torch.allclose(cached.class_logits(cached.stages(torch.tensor([1, 0]))), logits.flip(0), atol=1e-4)
    assert calls == []  # the name vectors were computed once, at the first use


def test_text_vector_cache_key_follows_the_registry_pin(hub_with_clip, tmp_path, monkeypatch, clip_files):
    """Vectors cached for one CLIP are never served for other weights under the same name."""
    from zstag.semantics import get_semantics

    before = get_semantics("clip-vit-b32").key
    serve_registry(
        hub_with_clip,
        tmp_path,
        monkeypatch,
        "clip-vit-b32",
        {**clip_files, "model.safetensors": clip_files["model.safetensors"] + b" "},
    )
    assert get_semantics("clip-vit-b32").key != before
