"""Model directories: a save/load round trip, every way loading can fail, and no pickles."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from zstag.core.errors import ModelError, UsageError
from zstag.store.model import CONFIG, WEIGHTS, build_model, load_model, resolve_model_dir, save_model

SEEN = ["red circle", "blue square", "green triangle", "yellow circle"]
UNSEEN = ["purple square", "orange triangle"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, word_vectors) -> Path:
    """An untrained fast0tag model on the small backbone, saved once for the module."""
    torch.manual_seed(0)
    model = build_model("fast0tag", "small", str(word_vectors), SEEN, {"hidden": 16}, image_size=32)
    model.method.eval()
    out = tmp_path_factory.mktemp("model") / "f0t"
    save_model(model, out)
    return out


@pytest.fixture
def broken(saved, tmp_path) -> Path:
    """A fresh copy of the saved model for a test to damage."""
    return Path(shutil.copytree(saved, tmp_path / "copy"))


def test_round_trip_gives_identical_scores(word_vectors, tmp_path):
    torch.manual_seed(0)
    model = build_model("fast0tag", "small", str(word_vectors), SEEN, {"hidden": 16}, image_size=32)
    method = model.method.eval()
    save_model(model, tmp_path / "m")
    # the vector file it was trained with travels inside the directory (a config may not point outside it)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [CONFIG, WEIGHTS, "semantics.txt"]
    assert (tmp_path / "m" / "semantics.txt").read_bytes() == word_vectors.read_bytes()
    loaded = load_model(tmp_path / "m")
    assert loaded.path == tmp_path / "m"
    assert loaded.config["method"] == "fast0tag" and loaded.config["hp"]["hidden"] == 16
    assert loaded.config["backbone_in_weights"] is True  # the small backbone is trained, so it is saved
    assert loaded.image_size == 32
    assert not loaded.method.training
    images = torch.randn(3, 3, 32, 32)
    labels = model.embed(SEEN + UNSEEN)
    with torch.no_grad():
        before = method.score(method.encode(images), labels)
        after = loaded.method.score(loaded.method.encode(images), loaded.embed(SEEN + UNSEEN))
    assert before.shape == (3, 6)
    assert torch.equal(before, after)
    # A second, differently initialised model scores differently: the weights really came from disk.
    torch.manual_seed(1)
    other = build_model("fast0tag", "small", str(word_vectors), SEEN, {"hidden": 16}, image_size=32).method.eval()
    with torch.no_grad():
        assert not torch.allclose(other.score(other.encode(images), labels), before)


def test_a_backbone_the_file_holds_is_not_initialised_first(saved, monkeypatch):
    """The file replaces every backbone tensor, so loading builds the backbone on the meta device
    and fills uninitialised memory from the file (VGG19's random initialisation cost a second per
    load); a backbone with a buffer no file holds (non-persistent) is built the ordinary way."""
    import zstag.store.model as store

    devices: list[str] = []
    build = store.build_backbone

    def recording(name, pretrained=True):
        devices.append(str(torch.get_default_device()))
        return build(name, pretrained=pretrained)

    monkeypatch.setattr(store, "build_backbone", recording)
    loaded = load_model(saved)
    assert devices == ["meta"]
    on_disk = load_file(str(saved / WEIGHTS))
    assert all(torch.equal(t, on_disk[k]) for k, t in loaded.method.state_dict().items())

    def with_a_derived_buffer(name, pretrained=True):
        net = build(name, pretrained=pretrained)
        net.register_buffer("derived", torch.ones(2), persistent=False)
        devices.append(str(torch.get_default_device()))
        return net

    devices.clear()
    monkeypatch.setattr(store, "build_backbone", with_a_derived_buffer)
    loaded = load_model(saved)
    assert devices == ["meta", "cpu"] and torch.equal(loaded.method.backbone.derived, torch.ones(2))


def test_config_records_what_rebuilds_the_model(saved, word_vectors):
    config = json.loads((saved / CONFIG).read_text())
    assert config["method"] == "fast0tag" and config["backbone"] == "small"
    assert config["semantics"] == "semantics.txt" and config["semantic_dim"] == 16
    assert config["seen_labels"] == SEEN and config["image_size"] == 32
    assert config["hp"]["optimizer"] == "adam"  # the full hyperparameters, defaults included


def test_missing_config(broken):
    (broken / CONFIG).unlink()
    with pytest.raises(ModelError, match="not a model directory: config.json is missing"):
        load_model(broken)


def test_missing_weights(broken):
    (broken / WEIGHTS).unlink()
    with pytest.raises(ModelError, match="not a model directory: model.safetensors is missing"):
        load_model(broken)


def test_config_that_is_not_json(broken):
    (broken / CONFIG).write_text("{'method': 'fast0tag',")
    with pytest.raises(ModelError, match="unreadable model config"):
        load_model(broken)


def test_config_missing_a_key(broken):
    config = json.loads((broken / CONFIG).read_text())
    del config["seen_labels"]
    (broken / CONFIG).write_text(json.dumps(config))
    with pytest.raises(ModelError, match="unreadable model config.*seen_labels"):
        load_model(broken)


def test_unknown_method_in_config(broken):
    config = json.loads((broken / CONFIG).read_text())
    config["method"] = "teleport"
    (broken / CONFIG).write_text(json.dumps(config))
    with pytest.raises(ModelError, match="unknown method 'teleport'"):
        load_model(broken)


def test_tensor_with_a_wrong_shape(broken):
    state = load_file(str(broken / WEIGHTS))
    name = next(k for k in state if k.startswith("direction.") and k.endswith("weight"))
    state[name] = torch.zeros(state[name].shape[0] + 1, *state[name].shape[1:])
    save_file(state, str(broken / WEIGHTS))
    with pytest.raises(ModelError, match=rf"tensor {re.escape(name)} has shape"):
        load_model(broken)


def test_missing_and_unexpected_tensors(broken):
    state = load_file(str(broken / WEIGHTS))
    name = next(k for k in state if k.startswith("direction."))
    state["extra.weight"] = state.pop(name)
    save_file(state, str(broken / WEIGHTS))
    with pytest.raises(
        ModelError,
        match=rf"tensors do not match the fast0tag model \(missing \['{re.escape(name)}'\], "
        r"unexpected \['extra.weight'\]\)",
    ):
        load_model(broken)


def test_garbage_safetensors_file(broken):
    (broken / WEIGHTS).write_bytes(b"\x80\x04\x95 this is not a safetensors file")
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        load_model(broken)


def test_model_pointing_to_a_file(saved):
    with pytest.raises(UsageError, match="--model must be a model directory .* got a file"):
        load_model(saved / CONFIG)


def test_model_pointing_nowhere(tmp_path):
    with pytest.raises(UsageError, match="model not found"):
        resolve_model_dir(tmp_path / "no-such-model")


def test_errors_are_one_line(broken):
    (broken / CONFIG).write_text("not json\nat all")
    with pytest.raises(ModelError) as info:
        load_model(broken)
    assert "\n" not in str(info.value)


def test_nothing_is_unpickled():
    """No pickle import and no torch.load without weights_only=True anywhere in the package."""
    package = Path(__file__).resolve().parent.parent / "zstag"
    offenders = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib)\b", text, re.M) or "pickle.load" in text:
            offenders.append(f"{path.name}: pickle")
        for match in re.finditer(r"torch\.load\(", text):
            call = call_arguments(text, match.end())
            if not re.search(r"weights_only\s*=\s*True", call):
                offenders.append(f"{path.name}: torch.load({call[:60]})")
    assert not offenders, offenders


def call_arguments(text: str, start: int) -> str:
    """The text between an opening parenthesis (just before `start`) and its matching close."""
    depth = 1
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return text[start:]


def test_call_arguments_balances_parentheses():
    text = 'torch.load(f, map_location=torch.device("cpu"), weights_only=True) + 1'
    assert call_arguments(text, len("torch.load(")) == 'f, map_location=torch.device("cpu"), weights_only=True'
