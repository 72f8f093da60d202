"""A tiny Hugging Face-compatible hub on 127.0.0.1, for fetching and pushing without huggingface.co.

It implements only what huggingface_hub (2.4, read from its source) calls:
- downloads (`hf_hub_download`): HEAD and GET on `/{owner}/{repo}/resolve/{revision}/{path}`,
  answering with `X-Repo-Commit`, `ETag` and `Content-Length`, and 404s tagged with
  `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`) as the real hub does;
- uploads (`HfApi.create_repo`, `create_branch`, `create_commit`): `POST /api/repos/create`
  (409 when it exists), `POST /api/models/{repo}/branch/{branch}`, `POST /api/validate-yaml`
  (for README.md), `POST /api/models/{repo}/preupload/{revision}` (`.safetensors` files go the
  LFS way, the rest inline), the LFS batch API `POST /{repo}.git/info/lfs/objects/batch` with
  basic transfer (`PUT` of the bytes, checked against their sha256), and
  `POST /api/models/{repo}/commit/{revision}` (an ndjson body of `header`, `file` and `lfsFile`
  lines). Writes need `Authorization: Bearer TOKEN`, else 401.

Xet storage is not implemented: tests that push set huggingface_hub's HF_HUB_DISABLE_XET flag
so its uploads use LFS (its downloads only use xet when the server offers it, which this one never does).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_fake_write_token"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def segments(raw_path: str) -> list[str]:
    """A request path's segments, each decoded after splitting, as the Hub reads them: clients send
    a revision with slashes percent-encoded as one segment (`refs%2Fpr%2F15`), while a file in a
    subfolder keeps its slashes (`resolve/REV/1_Pooling/config.json`)."""
    return [unquote(part) for part in raw_path.split("?")[0].lstrip("/").split("/")]


class FakeHub:
    """repo -> {path: bytes} on `main` (also served at revision COMMIT); every request is logged.

    Pushed commits get their own ids (`heads`, `commits`); other branches live in `branches`.
    """

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.branches: dict[tuple[str, str], dict[str, bytes]] = {}
        self.heads: dict[tuple[str, str], str] = {}
        self.commits: dict[str, tuple[str, dict[str, bytes]]] = {}
        self.lfs: dict[str, bytes] = {}
        self.private: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        hub_ = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return None

            # --- reading ---

            def _answer(self, with_body: bool) -> None:
                hub_.requests.append((self.command, self.path))
                parts = segments(self.path)
                repo, rest = "/".join(parts[:2]), parts[2:]
                if len(rest) < 3 or rest[0] != "resolve" or repo not in hub_.repos:
                    return self._error(404, "RepoNotFound")
                found = hub_.snapshot(repo, rest[1])
                if found is None:
                    return self._error(404, "RevisionNotFound")
                commit, files = found
                data = files.get("/".join(rest[2:]))
                if data is None:
                    return self._error(404, "EntryNotFound")
                self.send_response(200)
                self.send_header("X-Repo-Commit", commit)
                self.send_header("ETag", f'"{sha(data)}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if with_body:
                    self.wfile.write(data)

            def _error(self, status: int, code: str | None = None, message: str = "") -> None:
                body = json.dumps({"error": message or code or "error"}).encode()
                self.send_response(status)
                if code:
                    self.send_header("X-Error-Code", code)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
                self._answer(with_body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(with_body=True)

            # --- writing ---

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        data += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                    return data
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _json(self, payload: object, status: int = 200) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                hub_.requests.append((self.command, self.path))
                body = self._body()
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._error(401, message="Invalid credentials in Authorization header")
                path = unquote(self.path.split("?")[0])
                parts = segments(self.path)
                if path == "/api/validate-yaml":
                    return self._json({"errors": [], "warnings": []})
                if path == "/api/repos/create":
                    request = json.loads(body)
                    repo = f"{request['organization']}/{request['name']}"
                    if repo in hub_.repos:  # the real hub names the existing repository, and clients read it
                        return self._json(
                            {"error": "You already created this model repo", "url": f"{hub_.url}/{repo}"}, status=409
                        )
                    hub_.repos[repo] = {}
                    if request.get("visibility") == "private" or request.get("private"):
                        hub_.private.add(repo)
                    return self._json({"url": f"{hub_.url}/{repo}"})
                if path.endswith(".git/info/lfs/objects/batch"):
                    objects = [
                        {"oid": o["oid"], "size": o["size"], "authenticated": True}
                        | (
                            {}
                            if o["oid"] in hub_.lfs
                            else {"actions": {"upload": {"href": f"{hub_.url}/lfs-upload/{o['oid']}"}}}
                        )
                        for o in json.loads(body)["objects"]
                    ]
                    return self._json({"transfer": "basic", "objects": objects})
                if parts[:2] != ["api", "models"] or len(parts) < 6:
                    return self._error(404, "RepoNotFound")
                # `create_branch` sends its branch name unencoded, so a name may span segments.
                repo, action, revision = "/".join(parts[2:4]), parts[4], "/".join(parts[5:])
                if repo not in hub_.repos:
                    return self._error(404, "RepoNotFound")
                if action == "branch":
                    if (repo, revision) in hub_.branches or revision == "main":
                        return self._error(409, message="Reference already exists")
                    hub_.branches[(repo, revision)] = dict(hub_.repos[repo])
                    return self._json({})
                if hub_.snapshot(repo, revision) is None:
                    return self._error(404, "RevisionNotFound")
                if action == "preupload":
                    files = [
                        {
                            "path": f["path"],
                            "shouldIgnore": False,
                            "uploadMode": "lfs" if f["path"].endswith(".safetensors") else "regular",
                        }
                        for f in json.loads(body)["files"]
                    ]
                    return self._json({"files": files})
                if action == "commit":
                    return self._commit(repo, revision, body)
                return self._error(404, "RepoNotFound")

            def _commit(self, repo: str, revision: str, body: bytes) -> None:
                files = dict(hub_.snapshot(repo, revision)[1])
                for line in body.splitlines():
                    item = json.loads(line)
                    value = item["value"]
                    if item["key"] == "file":
                        files[value["path"]] = base64.b64decode(value["content"])
                    elif item["key"] == "lfsFile":
                        if value["oid"] not in hub_.lfs:
                            return self._error(400, message=f"LFS object {value['oid']} was never uploaded")
                        files[value["path"]] = hub_.lfs[value["oid"]]
                oid = hub_.commit(repo, revision, files)
                self._json({"commitUrl": f"{hub_.url}/{repo}/commit/{oid}", "commitOid": oid, "success": True})

            def do_PUT(self) -> None:  # noqa: N802
                hub_.requests.append((self.command, self.path))
                body = self._body()
                oid = self.path.rsplit("/", 1)[-1]
                if not self.path.startswith("/lfs-upload/") or sha(body) != oid:
                    return self._error(400, message="sha256 mismatch")
                hub_.lfs[oid] = body
                self._json({})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.running = True

    def snapshot(self, repo: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        """(commit, files) of `repo` at a branch name or commit id; None when unknown."""
        if revision in self.commits and self.commits[revision][0] == repo:
            return revision, self.commits[revision][1]
        if revision in ("main", COMMIT):
            return self.heads.get((repo, "main"), COMMIT), self.repos[repo]
        if (repo, revision) in self.branches:
            return self.heads.get((repo, revision), COMMIT), self.branches[(repo, revision)]
        return None

    def commit(self, repo: str, branch: str, files: dict[str, bytes]) -> str:
        """Make `files` the new head of `branch`; returns the new commit id."""
        digest = hashlib.sha1(f"{repo}@{branch}#{len(self.commits)}".encode())
        for name in sorted(files):
            digest.update(f"{name}:{sha(files[name])}".encode())
        oid = digest.hexdigest()
        self.commits[oid] = (repo, dict(files))
        self.heads[(repo, branch)] = oid
        if branch == "main":
            self.repos[repo] = dict(files)
        else:
            self.branches[(repo, branch)] = dict(files)
        return oid

    def stop(self) -> None:
        if self.running:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()
            self.running = False


def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """Start a FakeHub and point zstag and huggingface_hub at it, with a private HF_HOME and cache.

    No token is set: tests that push set HF_TOKEN themselves. huggingface_hub reads its token file
    path at import, so it is pointed into the temporary folder as well (a developer's own login
    must not leak into a test, nor be used).
    """
    from huggingface_hub import constants

    fake = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("ZSTAG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "stored_tokens"))
    for var in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_HUB_CACHE",
        "XDG_CACHE_HOME",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_OIDC_RESOURCE",
    ):
        monkeypatch.delenv(var, raising=False)
    return fake


# --- tiny checkpoints in the formats the Hub serves ---------------------------------------------


def _byte_symbols() -> list[str]:
    """GPT-2 / CLIP's printable stand-ins for the 256 bytes (byte-level BPE's base alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def tiny_clip_files(folder: Path) -> dict[str, bytes]:
    """A random CLIPModel (2 text, 3 vision layers, 32 px, 8 px patches, 16-d joint space) saved as the
    Hub serves openai/clip-vit-*: `save_pretrained` safetensors, config and a byte-level tokenizer with
    no merges (each character a token). Returns name -> bytes for a FakeHub repository."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)} | {s + "</w>": 256 + i for i, s in enumerate(symbols)}
    vocab |= {"<|startoftext|>": 512, "<|endoftext|>": 513}
    text = dict(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=40,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=8
    )
    torch_seed()
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(
        folder, safe_serialization=True
    )
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(folder)
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def tiny_resnet50_file(folder: Path) -> bytes:
    """A random torchvision ResNet-50 under timm's `resnet50.tv_in1k` key names (the same as
    torchvision's), as `model.safetensors` bytes. ResNet-50 cannot be made smaller: about 100 MB."""
    import torchvision
    from safetensors.torch import save_file

    torch_seed()
    state = {
        k: v.contiguous()
        for k, v in torchvision.models.resnet50(weights=None).state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    save_file(state, str(folder / "model.safetensors"))
    return (folder / "model.safetensors").read_bytes()


def torch_seed() -> None:
    import torch

    torch.manual_seed(0)


def serve_registry(
    fake: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, files: dict[str, bytes]
) -> None:
    """Serve `files` as registry entry `name`'s repository at the revision the shipped registry pins
    (a commit id, a branch, or a pull-request ref such as CLIP ViT-B/32's `refs/pr/15`), with a
    registry copy pinned to these files' sha256 (so fetching checks them as it checks the real ones)."""
    from zstag.store import hub

    entries = hub.load_registry()
    entry = entries[name]
    repo, revision = entry["repo"], entry.get("revision") or "main"
    fake.repos[repo] = dict(files)
    if len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
        fake.commits[revision] = (repo, dict(files))
    elif revision != "main":
        fake.commit(repo, revision, files)
    entry["files"] = [{"name": n, "sha256": sha(files[n]), "size": len(files[n])} for n in sorted(files)]
    path = tmp_path / "registry.json"
    if path.is_file():  # a second entry served in the same test
        entries = {**entries, **json.loads(path.read_text()), name: entry}
    path.write_text(json.dumps(entries))
    monkeypatch.setenv(hub.REGISTRY_ENV, str(path))
