"""`zstag push`: publish a model directory as a Hugging Face Hub repository that `zstag fetch` pulls.

A pushed repository holds exactly what `zstag fetch hf://OWNER/REPO` downloads (`hub.MODEL_FILES`:
config.json and model.safetensors, and the label-vector file the config names inside the model
directory, `hub.bundled_semantics`) plus a generated model card (README.md). The files are named
one by one in a single commit rather than uploading the folder, so a training checkpoint, logs or
anything else a user keeps beside the model can never leave the machine by accident.

The directory is checked with `model_dir` (the checks `load_model` makes before reading tensors)
before any request. Endpoint and offline mode are read at call time, as `hub.fetch` does, so
`HF_ENDPOINT` can point the whole round trip at a mirror or a test server. Authentication is
huggingface_hub's own (`HF_TOKEN`, else the token saved by `hf auth login`); every failure is one
line that says what to do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zstag.core.errors import UsageError, ZstagError
from zstag.store import WEIGHTS, hub
from zstag.store.config import epochs_run, read_config, weight_names

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

CARD = "README.md"
LOGIN_HINT = "run `hf auth login` (older huggingface_hub: `huggingface-cli login`) or set HF_TOKEN"


@dataclass
class PushResult:
    """Where the model went: `reference` is what `zstag fetch` and `--model` take."""

    repo: str
    revision: str
    commit: str
    url: str
    reference: str
    warnings: list[str] = field(default_factory=list)


def check_model(model_dir: Path) -> dict[str, Any]:
    """The config of a directory fit to publish; a one-line ModelError/UsageError otherwise."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a model directory (config.json + model.safetensors)")
    config = read_config(folder)
    if not weight_names(folder):
        raise UsageError(f"{folder / WEIGHTS}: holds no tensors")
    return config


def model_files(folder: Path) -> list[str]:
    """What a push uploads: `hub.MODEL_FILES`, and the vector file the config names inside the folder."""
    extra = hub.bundled_semantics(read_config(folder))
    return [*hub.MODEL_FILES, *([extra] if extra and (folder / extra).is_file() else [])]


def _needs(config: dict[str, Any], registry: dict[str, dict]) -> tuple[str, str, list[str]]:
    """(what the backbone needs, what the semantics need, warnings) in words for the card and the user."""
    backbone, semantics = config["backbone"], config.get("semantics", "minilm")
    if config.get("backbone_in_weights", True):
        needs_backbone = f"none: the `{backbone}` backbone's weights are inside model.safetensors."
    elif backbone == "bundled":
        needs_backbone = (
            "the `bundled` backbone, which ships with zstag (`weights/bundled`); use the zstag "
            f"version the model was trained with ({config.get('zstag_version', 'unknown')}), "
            "whose bundled backbone matches this head."
        )
    elif backbone in registry:
        needs_backbone = f"the ImageNet `{backbone}` backbone: run `zstag fetch {backbone}` once."
    else:
        needs_backbone = f"the `{backbone}` backbone, which this model does not include."
    warnings = []
    if semantics in registry:
        needs_semantics = f"`{semantics}` label vectors (`zstag fetch {semantics}` where zstag reports them missing)."
    elif semantics == hub.bundled_semantics(config) and Path(semantics).suffix:  # a file copy (folders have none)
        needs_semantics = f"nothing more: its label vectors (`{semantics}`) are published with the model."
    else:
        needs_semantics = (
            f"label vectors from `{Path(semantics).name}`, a local file or folder that is not "
            "published with the model: users need the same file at the path in config.json."
        )
        warnings.append(
            f"the model's semantics {semantics!r} is a local path, not published with the model: "
            "others can use it only with the same file at that path"
        )
    if _training(config).get("complete") is False:
        warnings.append(
            "the model's training did not run to the end (interrupted or stopped early); pushing its best epoch so far"
        )
    return needs_backbone, needs_semantics, warnings


def model_card(config: dict[str, Any], reference: str, registry: dict[str, dict] | None = None) -> str:
    """README.md for the repository: what the model is, what it needs, how it did, how to use it."""
    registry = hub.load_registry() if registry is None else registry
    needs_backbone, needs_semantics, _ = _needs(config, registry)
    method, backbone = config["method"], config["backbone"]
    seen, unseen = list(config["seen_labels"]), list(config.get("unseen_labels") or [])
    training = _training(config)
    summary = {
        "best validation mAP": None if training.get("best_val_mAP") is None else f"{training['best_val_mAP']:.4f}",
        "best epoch": training.get("best_epoch"),
        "epochs run": epochs_run(config),
        "training images": training.get("n_train"),
        "validation images": training.get("n_val"),
        "training seconds": training.get("seconds"),
        "device": training.get("device"),
        "note": training.get("note"),
    }
    rows = [f"| {k} | {_cell(v)} |" for k, v in summary.items() if v is not None]
    lines = [
        "---",
        "library_name: zstag",
        "pipeline_tag: zero-shot-image-classification",
        "tags:",
        "- zstag",
        "- multi-label-zero-shot",
        f"- {json.dumps(method)}",
        "---",
        "",
        f"# {reference[len(hub.HF_SCHEME) :]}",
        "",
        f"A zero-shot image tagger made with zstag {config.get('zstag_version', '')}: it scores any labels you",
        "give it, including labels it never saw in training.",
        "",
        "| | |",
        "| --- | --- |",
        f"| method | `{method}` |",
        f"| backbone | `{backbone}` |",
        f"| label semantics | `{config.get('semantics', 'minilm')}` ({config.get('semantic_dim', '?')}-d) |",
        f"| image size | {config['image_size']} px |",
        f"| labels trained on | {len(seen)} |",
        f"| unseen labels held out | {len(unseen)} |",
        "",
        "## What it needs",
        "",
        f"- Backbone: {needs_backbone}",
        f"- Semantics: {needs_semantics}",
        "",
        "## How to use",
        "",
        "```sh",
        f"zstag fetch {reference} && zstag tag photos/ --labels vocab.txt --model {reference}",
        "```",
        "",
        "`vocab.txt` holds your labels, one per line. After the fetch the model loads from the cache,",
        "with no network.",
    ]
    if rows:
        lines += ["", "## Training", "", "| | |", "| --- | --- |", *rows]
    lines += ["", "## Labels", "", _details("labels trained on", seen)]
    if unseen:
        lines += ["", _details("unseen labels (held out of training)", unseen)]
    return "\n".join(lines) + "\n"


def _training(config: dict[str, Any]) -> dict[str, Any]:
    """The training summary train.py writes; {} for a model without one (or with a mangled one)."""
    training = config.get("training")
    return training if isinstance(training, dict) else {}


def _cell(value: object) -> str:
    """A value that cannot break a Markdown table row (the training note is free text)."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _details(title: str, labels: list[str]) -> str:
    listed = ", ".join(labels) if labels else "(none)"
    return f"<details><summary>{len(labels)} {title}</summary>\n\n{listed}\n\n</details>"


def push(
    model_dir: Path, url: str, private: bool = False, revision: str | None = None, message: str | None = None
) -> PushResult:
    """Create (or reuse) the repository and commit config.json, model.safetensors and README.md.

    `url` is `hf://OWNER/REPO[@BRANCH]`; `revision` (a branch, created from main when missing)
    wins over the URL's. Returns the commit and the reference to fetch it by.
    """
    folder = Path(model_dir)
    config = check_model(folder)
    repo, url_revision = hub.parse_hf_url(url)
    if revision is not None and "@" in url and revision != url_revision:
        raise UsageError(f"{url} names revision {url_revision!r} but --revision is {revision!r}")
    revision = revision or url_revision
    hub.check_repo(repo, revision)
    reference = f"{hub.HF_SCHEME}{repo}" + ("" if revision == "main" else f"@{revision}")
    registry = hub.load_registry()
    warnings = _needs(config, registry)[2]
    card = model_card(config, reference, registry).encode("utf-8")
    commit = _upload(
        folder,
        repo,
        revision,
        card,
        private,
        message or f"zstag push: {config['method']} model ({config['backbone']}, {len(config['seen_labels'])} labels)",
    )
    return PushResult(
        repo=repo, revision=revision, commit=commit.oid, url=commit.commit_url, reference=reference, warnings=warnings
    )


def _upload(folder: Path, repo: str, revision: str, card: bytes, private: bool, message: str) -> CommitInfo:
    """The one place that talks to the hub; its failures become one-line ZstagErrors."""
    import httpx2
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    endpoint = hub.endpoint() or hub.DEFAULT_ENDPOINT
    no_network = hub.network_problem()
    if no_network:
        raise ZstagError(f"pushing to {repo} needs the network, but {no_network}; nothing was committed")
    token = get_token()
    if not token:
        raise ZstagError(f"pushing to {repo} needs a Hugging Face token with write access: {LOGIN_HINT}")
    api = HfApi(endpoint=endpoint, token=token)
    operations = [CommitOperationAdd(name, str(folder / name)) for name in model_files(folder)]
    operations.append(CommitOperationAdd(CARD, card))
    try:
        with hub.hub_offline_mode(False):
            api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
            if revision != "main":
                api.create_branch(repo, branch=revision, exist_ok=True)
            return api.create_commit(repo, operations, commit_message=message, revision=revision)
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise ZstagError(
                f"the hub ({endpoint}) refused to let this token write to {repo} (HTTP {status}): "
                f"{LOGIN_HINT} with a token that has write access"
            ) from None
        raise ZstagError(f"pushing to {repo}@{revision} failed: {_one_line(exc)}") from None
    except (httpx2.ConnectError, httpx2.TimeoutException):
        raise ZstagError(f"the hub ({endpoint}) cannot be reached; nothing was committed") from None
    except (httpx2.HTTPError, OSError, ValueError) as exc:
        raise ZstagError(f"pushing to {repo}@{revision} failed: {_one_line(exc)}") from None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
