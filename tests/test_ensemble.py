"""`zstag ensemble`: trained models sharing a frozen backbone, scored as one."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from synth import ON_CPU
from test_console_script import ZSTAG, zstag

from zstag.core.errors import ModelError, UsageError
from zstag.data.manifest import read_dataset
from zstag.engine.engine import Engine
from zstag.methods.base import t_norm
from zstag.store.config import read_config
from zstag.store.model import assemble_ensemble, load_model

needs_console_script = pytest.mark.skipif(ZSTAG is None, reason="the zstag console script is not installed")


def train(dataset, semantics, out, method: str, seed: int, backbone: str = "bundled", **extra):
    from zstag.training.options import TrainOptions
    from zstag.training.trainer import train as run

    overrides = {"attentions": 1} if method == "lesa" else {}
    run(
        TrainOptions(
            data=dataset["manifest"],
            method=method,
            out=out,
            unseen=dataset["unseen"],
            backbone=backbone,
            semantics=str(semantics),
            epochs=2,
            image_size=64,
            device="cpu",
            workers=0,
            seed=seed,
            overrides={**overrides, **extra},
        )
    )
    return out


@pytest.fixture(scope="module")
def members(dataset, word_vectors, tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    return [
        train(dataset, word_vectors, root / "lesa-0", "lesa", 0),
        train(dataset, word_vectors, root / "lesa-1", "lesa", 1, stage="last"),
        train(dataset, word_vectors, root / "fast0tag", "fast0tag", 0),
    ]


def scores_of(model, images, labels, engine: Engine | None = None) -> torch.Tensor:
    engine = engine or Engine("cpu", batch_size=4, workers=0)
    rows = torch.zeros(len(images), len(labels))
    for batch in engine.run(model.method, images, model.embed(labels), model.image_size):
        rows[batch.indices] = batch.scores
    return rows


def test_the_ensemble_scores_the_mean_of_its_members_standardised_scores(members, dataset, tmp_path, monkeypatch):
    out = tmp_path / "ensemble"
    assemble_ensemble([str(m) for m in members], out)
    config = read_config(out)
    assert config["method"] == "ensemble" and config["backbone_in_weights"] is False
    assert [m["method"] for m in config["hp"]["members"]] == ["lesa", "lesa", "fast0tag"]

    images = [s.image for s in read_dataset(dataset["manifest"])][:10]
    labels = [line for line in dataset["unseen"].read_text().split("\n") if line] + ["red circle"]
    seen = config["seen_labels"]
    expected = torch.zeros(len(images), len(labels))
    for member in members:
        model = load_model(member)
        expected += t_norm(scores_of(model, images, labels), scores_of(model, images, seen))
    expected /= len(members)

    ensemble = load_model(out)
    shared = type(ensemble.method.backbone)
    passes = []
    original = shared.feature_maps

    def counted(self, images):
        passes.append(len(images))
        return original(self, images)

    monkeypatch.setattr(shared, "feature_maps", counted)
    got = scores_of(ensemble, images, labels)
    assert torch.allclose(got, expected, atol=1e-4)
    # One backbone pass per batch of 4, shared by the three heads (one LESA head reads its middle
    # stage, the other and fast0tag its last: the same pass goes on for them).
    assert passes == [4, 4, 2]

    # LESA M = 1 and Fast0Tag score linearly in the label vectors: the ensemble took its one-product
    # path; the member-by-member path gives the same scores.
    assert ensemble.method.linear_members
    monkeypatch.setattr(type(ensemble.method), "linear_members", property(lambda self: False))
    assert torch.allclose(scores_of(load_model(out), images, labels), got, atol=1e-4)


def test_chunks_of_a_large_vocabulary_reuse_the_members_seen_label_statistics(members, tmp_path, monkeypatch):
    """The image side of the one-product path (`Ensemble.linear_parts`) is computed once per batch,
    in `encode`, not again for each chunk of a vocabulary larger than LABEL_CHUNK; the chunked
    scores equal the unchunked ones."""
    from zstag.data.labels import LabelSet
    from zstag.engine import engine as engine_module

    out = tmp_path / "ensemble"
    assemble_ensemble([str(m) for m in members], out)
    ensemble = load_model(out)
    engine = Engine("cpu", batch_size=4, workers=0)
    method = engine.for_inference(ensemble.method)
    vectors = torch.nn.functional.normalize(
        torch.randn(50, method.dim, generator=torch.Generator().manual_seed(0)), dim=1
    )
    labels = engine.vocabulary(method, LabelSet([f"l{i}" for i in range(50)], vectors))
    images = torch.randn(3, 3, 64, 64)
    calls = []
    original = type(method).linear_parts
    monkeypatch.setattr(type(method), "linear_parts", lambda self, *a: calls.append(1) or original(self, *a))
    with torch.inference_mode():
        code = method.encode(images)
        whole = engine.score(method, code, labels)
        monkeypatch.setattr(engine_module, "LABEL_CHUNK", 16)  # 50 labels: four chunks
        chunked = engine.score(method, code, labels)
    assert calls == [1]  # in encode only
    assert torch.allclose(chunked, whole, atol=1e-5)


def test_a_member_that_does_not_score_linearly_takes_the_member_by_member_path(
    members, dataset, word_vectors, tmp_path
):
    conse = train(dataset, word_vectors, tmp_path / "conse", "conse", 0)
    out = tmp_path / "ensemble"
    assemble_ensemble([str(members[0]), str(conse)], out)
    ensemble = load_model(out)
    assert not ensemble.method.linear_members
    images = [s.image for s in read_dataset(dataset["manifest"])][:6]
    labels, seen = ["purple square", "red circle"], read_config(out)["seen_labels"]
    expected = sum(
        t_norm(scores_of(m, images, labels), scores_of(m, images, seen)) for m in map(load_model, (members[0], conse))
    )
    assert torch.allclose(scores_of(ensemble, images, labels), expected / 2, atol=1e-4)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"image_size": 96}, "image_size differs"),
        ({"seen_labels": ["red circle", "blue square"]}, "seen_labels differs"),
    ],
)
def test_members_that_cannot_share_a_backbone_pass_are_refused(members, tmp_path, change, message):
    odd = tmp_path / "odd"
    shutil.copytree(members[1], odd)
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, **change}))
    out = tmp_path / "ensemble"
    with pytest.raises(UsageError, match=message):
        assemble_ensemble([str(members[0]), str(odd)], out)
    assert not out.exists()


def test_a_member_with_its_own_trained_backbone_is_refused(members, dataset, word_vectors, tmp_path):
    own = train(dataset, word_vectors, tmp_path / "small", "fast0tag", 0, backbone="small")
    with pytest.raises(UsageError, match="backbone was trained"):
        assemble_ensemble([str(members[0]), str(own)], tmp_path / "ensemble")


@pytest.mark.parametrize(
    "hp, message",
    [
        ({"members": [{"method": "lesa", "hp": {}}]}, "2 to 64"),
        ({"members": [{"method": "lesa", "hp": {}}, {"method": "sgma", "hp": {}}]}, "crops"),
        ({"members": [{"method": "lesa", "hp": {}}, {"method": "ensemble", "hp": {}}]}, "unknown method"),
        ({"members": [{"method": "lesa", "hp": {}}, {"method": "lesa", "hp": {"attentions": -1}}]}, "member 1"),
        ({"members": [{"method": "lesa", "hp": {}}] * 2, "lr": 0.1}, "unknown hyperparameter"),
    ],
)
def test_a_hostile_ensemble_config_is_a_model_error(members, tmp_path, hp, message):
    out = tmp_path / "ensemble"
    assemble_ensemble([str(members[0]), str(members[1])], out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "hp": hp}))
    with pytest.raises(ModelError, match=message):
        load_model(out)


@needs_console_script
def test_the_command_line_assembles_tags_and_refuses(members, dataset, tmp_path):
    out = tmp_path / "ensemble"
    made = zstag("ensemble", *map(str, members[:2]), "--out", str(out), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    image = str(sorted(dataset["images"].iterdir())[0])
    tagged = zstag(
        "tag", image, "--labels", str(dataset["vocab"]), "--model", str(out), "--raw-scores", *ON_CPU, cwd=tmp_path
    )
    assert tagged.returncode == 0, tagged.stderr
    assert json.loads(tagged.stdout)["tags"]

    assert "calibrations and score normalisation do not carry over" in made.stderr  # the members are calibrated
    again = zstag("ensemble", *map(str, members[:2]), "--out", str(out), cwd=tmp_path)
    assert again.returncode == 2 and "not an empty folder" in again.stderr
    twice = zstag("ensemble", str(members[0]), str(members[0]) + "/", "--out", str(tmp_path / "two"), cwd=tmp_path)
    assert twice.returncode == 2 and "is the same model as" in twice.stderr and not (tmp_path / "two").exists()
    one = zstag("ensemble", str(members[0]), "--out", str(tmp_path / "one"), cwd=tmp_path)
    assert one.returncode == 2 and "two models or more" in one.stderr and not (tmp_path / "one").exists()
    trained = zstag(
        "train", str(dataset["manifest"]), "--method", "ensemble", "--out", str(tmp_path / "t"), cwd=tmp_path
    )
    assert trained.returncode == 2 and "unknown method 'ensemble'" in trained.stderr


def test_rgcn_posvae_reads_the_shared_backbones_classifier_as_a_member(dataset, tmp_path):
    """RGCN-PosVAE's external nodes are the backbone classifier's classes (named in clip-art words:
    MiniLM, not the tiny test vectors): a member must see the shared backbone's classifier."""
    posvae = train(dataset, "minilm", tmp_path / "posvae", "rgcn-posvae", 0)
    lesa = train(dataset, "minilm", tmp_path / "lesa", "lesa", 0)
    out = tmp_path / "ensemble"
    assemble_ensemble([str(lesa), str(posvae)], out)
    images = [s.image for s in read_dataset(dataset["manifest"])][:4]
    assert torch.isfinite(scores_of(load_model(out), images, ["red circle", "purple square"])).all()


def test_out_and_member_count_are_checked_before_any_member_loads(tmp_path):
    missing = [str(tmp_path / f"nothing-{i}") for i in range(65)]
    with pytest.raises(UsageError, match="at most 64"):
        assemble_ensemble(missing, tmp_path / "e")
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(UsageError, match="link to nothing"):
        assemble_ensemble(missing[:2], tmp_path / "link")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a writable folder"):
        assemble_ensemble(missing[:2], tmp_path / "file" / "sub")


@needs_console_script
def test_members_too_large_for_their_weights_are_refused_before_allocating(members, dataset, tmp_path):
    """64 members of 8192-wide heads would allocate about 17 GB; the file holds two small heads.
    Under a 6 GB address-space limit the load must end in the one-line model error, not in an
    allocation failure."""
    import resource
    import subprocess

    out = tmp_path / "ensemble"
    assemble_ensemble([str(members[0]), str(members[1])], out)
    config = json.loads((out / "config.json").read_text())
    big = {**config["hp"]["members"][0]["hp"], "feature_dim": 8192, "attention_dim": 8192}
    config["hp"] = {"members": [{"method": "lesa", "hp": big}] * 64}
    (out / "config.json").write_text(json.dumps(config))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    result = subprocess.run(
        [ZSTAG, "eval", "--model", str(out), "--truth", str(dataset["manifest"]), *ON_CPU],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
    )
    assert result.returncode == 2, result.stderr
    assert "tensors do not match the ensemble model" in result.stderr or "shape" in result.stderr


def test_the_default_export_halves_the_weights_and_keeps_the_scores(members, dataset, tmp_path):
    """`python -m tools.bundle default` (how weights/default is stored): fp16 tensors, the config as
    it was, scores within fp16 rounding of the fp32 model's; a model carrying its backbone is refused."""
    from safetensors import safe_open

    from tools.bundle import export_default

    ensemble = tmp_path / "ensemble"
    assemble_ensemble([str(m) for m in members[:2]], ensemble)
    export_default(ensemble, tmp_path / "default")
    assert read_config(tmp_path / "default") == read_config(ensemble)
    with safe_open(str(tmp_path / "default" / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert "F32" not in dtypes and "F16" in dtypes
    half = (tmp_path / "default" / "model.safetensors").stat().st_size
    assert half < 0.55 * (ensemble / "model.safetensors").stat().st_size

    images = [s.image for s in read_dataset(dataset["manifest"])][:6]
    labels = ["red circle", "blue square", "green triangle"]
    full = scores_of(load_model(ensemble), images, labels)
    stored = scores_of(load_model(tmp_path / "default"), images, labels)
    assert torch.allclose(stored, full, atol=2e-2) and not torch.equal(stored, full)

    config = read_config(ensemble)
    config["backbone_in_weights"] = True
    (ensemble / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match="bundled backbone"):
        export_default(ensemble, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
