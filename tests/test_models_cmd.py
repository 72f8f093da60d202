"""Models as artefacts: `zstag models` lists them, `zstag push` publishes them, `zstag fetch` gets them back.

Pushing runs against the fake hub of tests/fakehub.py (HF_ENDPOINT on 127.0.0.1), which speaks
huggingface_hub's upload protocol (create repo, preupload, LFS batch + PUT, commit); nothing
reaches huggingface.co.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fakehub import TOKEN, serve, sha
from synth import ON_CPU

from zstag.core.errors import ModelError, UsageError, ZstagError
from zstag.store import catalog, hub, publish
from zstag.store.model import CONFIG, WEIGHTS, build_model, load_model, save_model

SEEN = ["red circle", "blue square", "green triangle", "yellow circle"]
UNSEEN = ["purple square", "orange triangle"]
# huggingface_hub's LFS upload passes a file object as `data=`, which its HTTP client deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
TRAINING = {
    "best_val_mAP": 0.625,
    "best_epoch": 2,
    "n_train": 90,
    "n_val": 10,
    "complete": True,
    "history": [{"epoch": 1, "val_mAP": 0.5}, {"epoch": 2, "val_mAP": 0.625}, {"epoch": 3, "val_mAP": 0.6}],
}


@pytest.fixture
def server(tmp_path, monkeypatch):
    fake = serve(tmp_path, monkeypatch)
    yield fake
    fake.stop()


@pytest.fixture
def model_dir(tmp_path, word_vectors) -> Path:
    """A small fast0tag model as training leaves it: with a summary, unseen labels and a checkpoint beside it."""
    torch.manual_seed(0)
    model = build_model("fast0tag", "small", str(word_vectors), SEEN, {"hidden": 16}, image_size=32)
    model.config["unseen_labels"] = UNSEEN
    model.config["training"] = TRAINING
    out = tmp_path / "runs" / "f0t"
    save_model(model, out)
    (out / "checkpoint.safetensors").write_bytes((out / WEIGHTS).read_bytes())  # must never be uploaded
    (out / "notes.txt").write_text("private notes\n")
    return out


def scores(model, labels: list[str]) -> torch.Tensor:
    torch.manual_seed(1)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        return model.method.score(model.method.encode(images), model.embed(labels))


def rows_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


# --- zstag models ----------------------------------------------------------------------------------


def test_lists_the_bundled_default_as_tsv(cli):
    result = cli("models")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split("\t") == list(catalog.COLUMNS)
    rows = [dict(zip(catalog.COLUMNS, line.split("\t"))) for line in lines[1:]]
    default = next(r for r in rows if r["name"] == "default")
    assert default["where"] == "bundled" and default["method"] == "ensemble" and default["backbone"] == "bundled"
    assert int(default["seen"]) > 0 and int(default["unseen"]) > 0 and int(default["size"]) > 0
    assert default["error"] == ""
    assert not any(r["path"].endswith("bundled") for r in rows)  # the bundled backbone is no tagging model


def test_lists_fetched_and_local_models_and_broken_ones(cli, server, model_dir, tmp_path):
    server.repos["someone/tagger"] = {
        name: (model_dir / name).read_bytes() for name in (*hub.MODEL_FILES, "semantics.txt")
    }
    hub.fetch("hf://someone/tagger")
    runs = model_dir.parent
    (runs / "broken").mkdir()
    (runs / "broken" / CONFIG).write_text("{'method': ")
    shutil.copy(model_dir / WEIGHTS, runs / "broken" / WEIGHTS)
    (runs / "half").mkdir()
    shutil.copy(model_dir / CONFIG, runs / "half" / CONFIG)  # interrupted before the weights were written
    (runs / "encoder").mkdir()
    (runs / "encoder" / CONFIG).write_text('{"architectures": ["BertModel"]}')  # not a zstag model: skipped

    result = cli("models", "--json", "--path", runs)
    assert result.code == 0, result.err  # broken directories found by searching are rows, not failures
    rows = {r["name"]: r for r in rows_of(result.out)}
    assert rows["default"]["where"] == "bundled"
    fetched = rows["hf://someone/tagger"]
    assert fetched["where"] == "fetched" and fetched["method"] == "fast0tag" and fetched["error"] is None
    assert Path(fetched["path"]) == hub.cached("hf://someone/tagger")
    local = rows[str(model_dir)]
    assert local == {
        "name": str(model_dir),
        "where": "local",
        "method": "fast0tag",
        "backbone": "small",
        "semantics": local["semantics"],
        "seen": 4,
        "unseen": 2,
        "image_size": 32,
        "size": sum(p.stat().st_size for p in model_dir.iterdir()),
        "best_val_mAP": 0.625,
        "epochs": 3,
        "path": str(model_dir),
        "error": None,
    }
    assert "unreadable model config" in rows[str(runs / "broken")]["error"]
    assert "model.safetensors is missing" in rows[str(runs / "half")]["error"]
    assert str(runs / "encoder") not in rows


def test_a_named_broken_directory_is_listed_and_exits_3(cli, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / CONFIG).write_text("[]")
    (broken / WEIGHTS).write_bytes(b"")
    result = cli("models", broken)
    assert result.code == 3
    row = next(line.split("\t") for line in result.out.splitlines() if line.startswith(str(broken)))
    assert row[1] == "local" and "unreadable model config" in row[-1]
    assert "warning:" in result.err and str(broken) in result.err


def test_a_config_with_values_of_the_wrong_type_is_a_row_with_an_error(model_dir):
    config = json.loads((model_dir / CONFIG).read_text())
    (model_dir / CONFIG).write_text(json.dumps({**config, "seen_labels": 4, "training": "yes"}))
    row = catalog.describe(model_dir, "m", "local")
    assert row.method is None and "seen_labels must be a list" in row.error


def test_a_folder_argument_is_searched(cli, model_dir):
    result = cli("models", model_dir.parent.parent, "--json")
    assert result.code == 0, result.err
    assert str(model_dir) in {r["name"] for r in rows_of(result.out)}


def test_a_missing_path_is_a_usage_error(cli, tmp_path):
    result = cli("models", tmp_path / "nowhere")
    assert result.code == 2 and "not a directory" in result.err and "\n" not in result.err.strip()


def test_a_terminal_gets_a_table(cli, model_dir, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    result = cli("models", model_dir)
    assert result.code == 0, result.err
    assert "\t" not in result.out and "fast0tag" in result.out and "62.5%" in result.out


def test_listing_reads_no_tensors_and_imports_no_torch(model_dir):
    code = (
        "import sys; from pathlib import Path; from zstag.store import catalog; "
        f"rows, _ = catalog.list_models([Path({str(model_dir)!r})]); "
        "print(sorted(r.method or '' for r in rows), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("] ")[-1].strip() == "False" and "fast0tag" in out.stdout


# --- zstag push ------------------------------------------------------------------------------------


def test_push_uploads_exactly_the_model_and_a_card(cli, server, model_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = cli("push", model_dir, "hf://me/tagger", "-m", "first")
    assert result.code == 0, result.err
    reference, commit, url = result.out.strip().split("\t")
    assert reference == "hf://me/tagger" and url.endswith(f"/me/tagger/commit/{commit}")
    files = server.repos["me/tagger"]
    assert sorted(files) == ["README.md", CONFIG, WEIGHTS, "semantics.txt"]  # no checkpoint, no notes
    for name in (CONFIG, WEIGHTS, "semantics.txt"):
        assert files[name] == (model_dir / name).read_bytes()
    assert sha(files[WEIGHTS]) in server.lfs  # the weights went the LFS way, as on the real hub
    card = files["README.md"].decode()
    assert card.startswith("---\nlibrary_name: zstag\n")
    assert "| method | `fast0tag` |" in card and "| labels trained on | 4 |" in card
    assert "zstag fetch hf://me/tagger && zstag tag photos/ --labels vocab.txt --model hf://me/tagger" in card
    assert "| best validation mAP | 0.6250 |" in card and "| epochs run | 3 |" in card
    assert "purple square" in card and "inside model.safetensors" in card
    assert "(`semantics.txt`) are published with the model" in card and "local path" not in result.err
    assert "me/tagger" not in server.private

    again = cli("push", model_dir, "hf://me/tagger")  # the repository exists now: reused
    assert again.code == 0, again.err
    assert again.out.split("\t")[1] != commit


def test_round_trip_push_fetch_load_gives_the_same_scores(server, model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    pushed = publish.push(model_dir, "hf://me/tagger")
    folder = hub.fetch("hf://me/tagger", cache_dir=tmp_path / "fresh-cache")
    assert folder == tmp_path / "fresh-cache" / "hub" / "models--me--tagger" / "snapshots" / pushed.commit
    # the card stays on the hub; the vector file the model was trained with comes along
    assert sorted(p.name for p in folder.iterdir()) == sorted([*hub.MODEL_FILES, "semantics.txt"])
    original, fetched = load_model(model_dir), load_model(folder)
    assert fetched.config == original.config
    labels = SEEN + UNSEEN
    assert torch.equal(scores(fetched, labels), scores(original, labels))


def test_the_cards_commands_work(cli, server, model_dir, dataset, monkeypatch):
    """`zstag fetch hf://... && zstag tag ... --model hf://...` tags exactly as the local directory does."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert cli("push", model_dir, "hf://me/tagger").code == 0
    images = [str(p) for p in sorted(dataset["images"].iterdir())[:4]]
    common = ["--labels", dataset["vocab"], "--top-k", "0", *ON_CPU]
    assert cli("fetch", "hf://me/tagger").code == 0
    server.stop()  # tagging needs no network once fetched
    remote = cli("tag", *images, *common, "--model", "hf://me/tagger")
    local = cli("tag", *images, *common, "--model", model_dir)
    assert remote.code == 0 and local.code == 0, remote.err + local.err
    assert remote.out == local.out and len(remote.out.splitlines()) == 4


def test_push_to_a_branch_of_a_private_repository(cli, server, model_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = cli("push", model_dir, "hf://me/tagger", "--revision", "v2", "--private")
    assert result.code == 0, result.err
    assert result.out.startswith("hf://me/tagger@v2\t")
    assert "me/tagger" in server.private
    assert server.repos["me/tagger"] == {} and sorted(server.branches[("me/tagger", "v2")]) == [
        "README.md",
        CONFIG,
        WEIGHTS,
        "semantics.txt",
    ]
    assert "--model hf://me/tagger@v2" in server.branches[("me/tagger", "v2")]["README.md"].decode()
    folder = hub.fetch("hf://me/tagger@v2")
    listed = {r["name"]: r for r in rows_of(cli("models", "--json").out)}
    assert Path(listed["hf://me/tagger@v2"]["path"]) == folder


def test_revision_in_url_and_option_must_agree(server, model_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(UsageError, match="names revision 'v1' but --revision is 'v2'"):
        publish.push(model_dir, "hf://me/tagger@v1", revision="v2")
    assert server.requests == []


def test_no_token_says_how_to_log_in_before_any_request(cli, server, model_dir):
    result = cli("push", model_dir, "hf://me/tagger")
    assert result.code == 2
    message = result.err.strip()
    assert "\n" not in message and "hf auth login" in message and "huggingface-cli login" in message
    assert "HF_TOKEN" in message
    assert server.requests == []


def test_a_refused_token_is_one_line_exit_2(cli, server, model_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_the_right_one")
    result = cli("push", model_dir, "hf://me/tagger")
    assert result.code == 2
    message = result.err.strip()
    assert "\n" not in message and "refused" in message and "401" in message and "HF_TOKEN" in message
    assert "me/tagger" not in server.repos


def test_offline_or_unreachable_hub(server, model_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ZstagError, match="HF_HUB_OFFLINE is set"):
        publish.push(model_dir, "hf://me/tagger")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    server.stop()
    with pytest.raises(ZstagError, match="cannot be reached; nothing was committed"):
        publish.push(model_dir, "hf://me/tagger")


@pytest.mark.parametrize(
    "damage, error",
    [
        (lambda d: (d / WEIGHTS).unlink(), "model.safetensors is missing"),
        (lambda d: (d / CONFIG).unlink(), "config.json is missing"),
        (
            lambda d: (d / WEIGHTS).write_bytes(b"\x80\x04\x95 a pickle, not safetensors"),
            "not a readable safetensors file",
        ),
        (
            lambda d: (d / CONFIG).write_text(
                json.dumps({**json.loads((d / CONFIG).read_text()), "method": "teleport"})
            ),
            "unknown method 'teleport'",
        ),
    ],
)
def test_an_invalid_directory_is_refused_before_any_request(cli, server, model_dir, monkeypatch, damage, error):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    damage(model_dir)
    result = cli("push", model_dir, "hf://me/tagger")
    assert result.code == 2 and error in result.err
    assert server.requests == []


def test_a_file_is_not_a_model_directory(model_dir):
    with pytest.raises(UsageError, match="not a model directory"):
        publish.check_model(model_dir / CONFIG)
    with pytest.raises(ModelError, match="config.json is missing"):
        publish.check_model(model_dir.parent)


@pytest.mark.parametrize(
    "backbone, in_weights, says",
    [
        ("vgg19", False, "run `zstag fetch vgg19` once"),
        ("bundled", False, "ships with zstag"),
        ("small", True, "inside model.safetensors"),
    ],
)
def test_the_card_says_which_backbone_a_model_needs(backbone, in_weights, says):
    config = {
        "method": "lesa",
        "backbone": backbone,
        "backbone_in_weights": in_weights,
        "semantics": "minilm",
        "semantic_dim": 384,
        "image_size": 224,
        "seen_labels": ["dog"],
        "hp": {},
        "zstag_version": "0.1.0",
    }
    card = publish.model_card(config, "hf://me/lesa")
    assert says in card and "`minilm` label vectors" in card
    assert "## Training" not in card  # no summary in the config, no section


@pytest.mark.parametrize("url", ["someone/repo", "hf:/someone/repo", "https://huggingface.co/someone/repo"])
def test_push_refuses_a_destination_that_is_not_an_hf_url(cli, server, model_dir, monkeypatch, url):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = cli("push", model_dir, url)
    assert result.code == 2 and "expected hf://OWNER/REPO" in result.err and result.err.count("\n") == 1
    assert server.requests == [] and server.repos == {}  # `someone/repo` used to be pushed to `ne/repo`


def test_a_deeply_nested_config_found_while_searching_is_listed_not_a_crash(tmp_path):
    from zstag.store.config import looks_like_model

    (tmp_path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    assert looks_like_model(tmp_path)  # unreadable counts: listed with its error, not hidden
