"""`zstag.store.hub` against a tiny Hugging Face-compatible server on 127.0.0.1 (tests/fakehub.py).

Nothing here reaches huggingface.co: HF_ENDPOINT points at the local server, HF_HOME at a
temporary folder.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from fakehub import COMMIT, FakeHub, serve, sha

from zstag.core.errors import UsageError, ZstagError
from zstag.store import hub

WEIGHTS = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(range(256)) * 4  # any bytes do
CONFIG = b'{"method": "lesa"}\n'


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    fake = serve(tmp_path, monkeypatch)
    fake.repos["zstag-test/tiny"] = {"model.safetensors": WEIGHTS, "config.json": CONFIG}
    yield fake
    fake.stop()


def write_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entries: dict) -> Path:
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    monkeypatch.setenv(hub.REGISTRY_ENV, str(path))
    return path


def tiny_entry(sha256: str | None = None, size: int | None = None, **extra: object) -> dict:
    return {
        "repo": "zstag-test/tiny",
        "revision": "main",
        "kind": "backbone",
        "license": "mit",
        "description": "test weights",
        "files": [
            {
                "name": "model.safetensors",
                "sha256": sha(WEIGHTS) if sha256 is None else sha256,
                "size": len(WEIGHTS) if size is None else size,
            },
            {"name": "config.json", "sha256": None, "size": None},
        ],
        **extra,
    }


def test_fetch_downloads_verifies_and_caches(server, tmp_path, monkeypatch):
    write_registry(tmp_path, monkeypatch, {"tiny": tiny_entry()})
    seen: list[tuple[str, int, int | None]] = []
    folder = hub.fetch("tiny", progress=lambda *a: seen.append(a))

    assert folder == tmp_path / "cache" / "hub" / "models--zstag-test--tiny" / "snapshots" / COMMIT
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert (folder / "config.json").read_bytes() == CONFIG
    assert ("model.safetensors", len(WEIGHTS), len(WEIGHTS)) in seen  # byte counts reach the total
    assert (folder.parents[1] / "refs" / "main").read_text() == COMMIT  # huggingface_hub's own layout
    assert hub.cached("tiny") == folder
    assert {m for m, _ in server.requests} == {"HEAD", "GET"}


def test_second_fetch_needs_no_server(server, tmp_path, monkeypatch):
    write_registry(tmp_path, monkeypatch, {"tiny": tiny_entry()})
    folder = hub.fetch("tiny")
    server.stop()
    assert hub.fetch("tiny") == folder  # hub unreachable: huggingface_hub falls back to the cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.fetch("tiny") == folder
    assert hub.cached("tiny") == folder


def test_environment_wins_over_huggingface_hubs_import_time_flag(server, tmp_path, monkeypatch):
    """huggingface_hub imported while HF_HUB_OFFLINE=1 (a test harness, a semantics loader) must not
    keep zstag offline once the variable is gone, nor leave the flag changed afterwards."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    write_registry(tmp_path, monkeypatch, {"tiny": tiny_entry()})
    assert (hub.fetch("tiny") / "config.json").read_bytes() == CONFIG
    assert constants.HF_HUB_OFFLINE is True


def test_wrong_sha256_is_refused_and_deleted(server, tmp_path, monkeypatch):
    write_registry(tmp_path, monkeypatch, {"tiny": tiny_entry(sha256="0" * 64)})
    with pytest.raises(ZstagError, match="sha256") as info:
        hub.fetch("tiny")
    assert "zstag fetch tiny" in str(info.value)
    repo_dir = tmp_path / "cache" / "hub" / "models--zstag-test--tiny"
    assert not (repo_dir / "snapshots" / COMMIT / "model.safetensors").exists()
    assert not (repo_dir / "blobs" / sha(WEIGHTS)).exists()
    assert hub.cached("tiny") is None


def test_wrong_size_is_refused(server, tmp_path, monkeypatch):
    write_registry(tmp_path, monkeypatch, {"tiny": tiny_entry(size=len(WEIGHTS) + 1)})
    with pytest.raises(ZstagError, match=f"has {len(WEIGHTS)} bytes, expected {len(WEIGHTS) + 1}"):
        hub.fetch("tiny")


def test_a_cached_file_that_went_bad_is_caught_on_the_next_fetch(server, tmp_path, monkeypatch):
    write_registry(tmp_path, monkeypatch, {"tiny": tiny_entry()})
    folder = hub.fetch("tiny")
    blob = (folder / "model.safetensors").resolve()
    blob.write_bytes(WEIGHTS[:-1] + b"\x00")  # same size, other bytes
    with pytest.raises(hub.CorruptFile, match="does not have the sha256"):  # loading hashes a changed file
        hub.cached("tiny")
    with pytest.raises(ZstagError, match="sha256"):
        hub.fetch("tiny")
    assert not blob.exists()
    assert (hub.fetch("tiny") / "model.safetensors").read_bytes() == WEIGHTS  # and fetch repairs it


def test_offline_and_not_cached_says_what_to_do(server, tmp_path, monkeypatch):
    write_registry(tmp_path, monkeypatch, {"tiny": tiny_entry()})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ZstagError) as info:
        hub.fetch("tiny")
    message = str(info.value)
    assert "not in the cache" in message and "HF_HUB_OFFLINE is set" in message
    assert "`zstag fetch tiny`" in message and "copy the cache" in message
    assert server.requests == []


def test_force_offline_is_refused(server, tmp_path, monkeypatch):
    write_registry(tmp_path, monkeypatch, {"tiny": tiny_entry()})
    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    with pytest.raises(ZstagError, match="--force needs the network"):
        hub.fetch("tiny", force=True)


@pytest.mark.parametrize(
    "bad",
    ["../evil.safetensors", "/etc/passwd", "a\\b.json", "C:/x.bin", "a/./b", "a//b", "", "x\n.json", "sub/../../up"],
)
def test_hostile_file_names_are_refused_before_any_request(server, tmp_path, monkeypatch, bad):
    entry = tiny_entry()
    entry["files"].append({"name": bad, "sha256": None, "size": None})
    write_registry(tmp_path, monkeypatch, {"tiny": entry})
    with pytest.raises(ZstagError, match="unsafe file name"):
        hub.fetch("tiny")
    assert server.requests == []


@pytest.mark.parametrize("good", ["model.safetensors", "1_Pooling/config.json", "a.b/c-d_e.txt"])
def test_plain_relative_names_pass(good):
    assert hub.check_relative_name(good) == good


def test_hostile_archive_member_is_refused(server, tmp_path, monkeypatch):
    write_registry(
        tmp_path,
        monkeypatch,
        {"tiny": tiny_entry(extract={"archive": "model.safetensors", "members": ["../../outside.txt"]})},
    )
    with pytest.raises(ZstagError, match="unsafe file name"):
        hub.fetch("tiny")
    assert server.requests == []


def test_hf_url_fetches_a_model_repository(server, tmp_path, monkeypatch):
    write_registry(tmp_path, monkeypatch, {})
    server.repos["someone/tagger"] = {"config.json": CONFIG, "model.safetensors": WEIGHTS}
    folder = hub.fetch("hf://someone/tagger")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert hub.fetch(f"hf://someone/tagger@{COMMIT}") == folder
    assert hub.cached("hf://someone/tagger") == folder
    assert hub.cached("hf://someone/other") is None
    with pytest.raises(ZstagError, match="revision 'v9'"):
        hub.fetch("hf://someone/tagger@v9")
    with pytest.raises(ZstagError, match="not found"):
        hub.fetch("hf://someone/missing")


def test_hf_url_with_a_missing_file(server, tmp_path, monkeypatch):
    write_registry(tmp_path, monkeypatch, {})
    server.repos["someone/half"] = {"config.json": CONFIG}
    with pytest.raises(ZstagError, match="has no file 'model.safetensors'"):
        hub.fetch("hf://someone/half")


@pytest.mark.parametrize(
    "url",
    [
        "hf://",
        "hf://only-owner",
        "hf://../x",
        "hf://a/b@",
        "hf://a/b/c",
        "hf://a/b/",
        "hf:/a/b",
        "xhf://a/b",
        "hf://a/b@../c",
        "hf://a/b\n",
        "hf://a b/c",
    ],
)
def test_malformed_hf_urls(url):
    with pytest.raises(ZstagError):
        hub.resolve(url)


def test_parse_hf_url():
    assert hub.parse_hf_url("hf://me/model") == ("me/model", "main")
    assert hub.parse_hf_url("hf://me/model@v1.2") == ("me/model", "v1.2")
    assert hub.parse_hf_url("hf://me/model@refs/pr/1") == ("me/model", "refs/pr/1")


@pytest.mark.parametrize(
    "url",
    [
        "someone/repo",
        "hf:/someone/repo",
        "https://huggingface.co/someone/repo",
        "hf://some one/repo",
        "hf://someone/repo@",
        "hf://someone/repo@a..b",
    ],
)
def test_anything_but_an_hf_url_is_refused(url):
    # `someone/repo` used to become `ne/repo` (five characters dropped, prefix never checked)
    with pytest.raises(UsageError, match="expected hf://OWNER/REPO"):
        hub.parse_hf_url(url)


def test_unknown_name_lists_the_registry(tmp_path, monkeypatch):
    write_registry(tmp_path, monkeypatch, {"tiny": tiny_entry(), "other": tiny_entry()})
    with pytest.raises(UsageError, match="other, tiny"):
        hub.resolve("nope")


def test_list_registry_rows(server, tmp_path, monkeypatch):
    server.repos["zstag-test/zipped"] = {}
    write_registry(
        tmp_path,
        monkeypatch,
        {
            "tiny": tiny_entry(),
            "sized": {
                "repo": "zstag-test/tiny",
                "revision": COMMIT,
                "kind": "semantics",
                "files": [{"name": "model.safetensors", "sha256": None, "size": len(WEIGHTS)}],
            },
            "absent": {"repo": "zstag-test/zipped", "files": [{"name": "nothing.bin"}]},
        },
    )
    hub.fetch("tiny")
    rows = {row["name"]: row for row in hub.list_registry()}
    assert list(rows) == ["tiny", "sized", "absent"]
    assert rows["tiny"]["cached"] and rows["tiny"]["path"] == str(hub.cached("tiny"))
    assert rows["tiny"]["size"] is None  # config.json has no known size
    assert rows["sized"]["cached"] and rows["sized"]["size"] == len(WEIGHTS)  # same commit, already there
    assert rows["absent"] == {
        "name": "absent",
        "kind": "model",
        "repo": "zstag-test/zipped",
        "revision": "main",
        "license": None,
        "description": "",
        "files": ["nothing.bin"],
        "size": None,
        "cached": False,
        "state": "missing",
        "path": None,
    }
    assert rows["tiny"]["state"] == "unverified"  # config.json has no pinned sha256
    assert rows["sized"]["state"] == "unverified"
    assert server.requests and all("zipped" not in path for _, path in server.requests)


def test_the_shipped_registry_is_valid():
    rows = {row["name"]: row for row in hub.list_registry(cache_dir="/nonexistent-zstag-cache")}
    assert {"vgg19", "resnet101", "resnet50", "minilm", "glove-300"} <= set(rows)
    assert {rows[n]["kind"] for n in ("vgg19", "resnet101", "resnet50")} == {"backbone"}
    for name in rows:
        spec = hub.resolve(name)
        assert spec.files and all(f.sha256 is None or len(f.sha256) == 64 for f in spec.files)


def test_archive_members_are_extracted_once(server, tmp_path, monkeypatch):
    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("vec.300d.txt", "cat 0.1 0.2\ndog 0.3 0.4\n")
        zf.writestr("vec.50d.txt", "not wanted\n")
    server.repos["zstag-test/vectors"] = {"vectors.zip": payload.getvalue()}
    write_registry(
        tmp_path,
        monkeypatch,
        {
            "vec": {
                "repo": "zstag-test/vectors",
                "kind": "semantics",
                "files": [{"name": "vectors.zip", "sha256": sha(payload.getvalue()), "size": None}],
                "extract": {"archive": "vectors.zip", "members": ["vec.300d.txt"]},
            }
        },
    )
    folder = hub.fetch("vec")
    assert sorted(p.name for p in folder.iterdir()) == [".complete", "vec.300d.txt"]
    assert (folder / "vec.300d.txt").read_text() == "cat 0.1 0.2\ndog 0.3 0.4\n"
    assert hub.cached("vec") == folder
    (folder / ".complete").unlink()  # an interrupted extraction is not "cached"
    assert hub.cached("vec") is None
    server.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.fetch("vec") == folder  # re-extracted from the cached archive, no network
    assert hub.cached("vec") == folder


def test_weights_in_the_standard_hf_cache_are_reused(server, tmp_path, monkeypatch):
    from huggingface_hub import constants, hf_hub_download

    # huggingface_hub freezes HF_HUB_OFFLINE at import; an earlier test may have imported it offline.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    write_registry(tmp_path, monkeypatch, {"tiny": tiny_entry()})
    shared = tmp_path / "hf-home" / "hub"
    for name in ("model.safetensors", "config.json"):  # as timm or transformers would have cached them
        hf_hub_download("zstag-test/tiny", name, cache_dir=str(shared), endpoint=server.url)
    server.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expected = shared / "models--zstag-test--tiny" / "snapshots" / COMMIT
    assert hub.cached("tiny") == expected
    assert hub.fetch("tiny") == expected
    assert not (tmp_path / "cache" / "hub").exists()


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("ZSTAG_CACHE", str(tmp_path / "env"))
    assert hub.cache_dir(tmp_path / "flag") == tmp_path / "flag"
    assert hub.cache_dir() == tmp_path / "env"
    assert hub.hub_dir() == tmp_path / "env" / "hub"
    monkeypatch.delenv("ZSTAG_CACHE")
    assert hub.cache_dir().name.lower() == "zstag"


def test_unreachable_hub_and_not_cached_says_what_to_do(server, tmp_path, monkeypatch):
    import huggingface_hub.utils._http as hf_http

    # huggingface_hub retries a refused connection with back-off (~25 s); skip the waiting.
    monkeypatch.setattr(hf_http.time, "sleep", lambda seconds: None)
    write_registry(tmp_path, monkeypatch, {"tiny": tiny_entry()})
    server.stop()
    with pytest.raises(ZstagError) as info:
        hub.fetch("tiny")
    message = str(info.value)
    assert "not in the cache" in message and f"the hub ({server.url}) cannot be reached" in message
    assert "`zstag fetch tiny`" in message


def closed_port() -> int:
    """A local TCP port nothing listens on: connecting is refused at once, like a machine with no route."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_network_is_detected_before_any_hub_call_and_fast(server, tmp_path, monkeypatch):
    import time

    import huggingface_hub.utils._http as hf_http

    slept: list[float] = []
    monkeypatch.setattr(hf_http.time, "sleep", slept.append)  # huggingface_hub's retry back-off, if reached
    write_registry(tmp_path, monkeypatch, {"tiny": tiny_entry()})
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    start = time.monotonic()
    with pytest.raises(ZstagError, match="cannot be reached") as info:
        hub.fetch("tiny")
    assert time.monotonic() - start < 2
    assert slept == []  # no retry was attempted: the probe answered first
    assert "\n" not in str(info.value) and "`zstag fetch tiny`" in str(info.value)


def test_a_probe_that_hangs_gives_up_at_its_timeout(monkeypatch):
    import socket
    import threading
    import time

    release = threading.Event()

    def black_hole(*args: object, **kwargs: object) -> None:  # a dropped SYN, or a name server that never answers
        release.wait(30)
        raise OSError("timed out")

    monkeypatch.setattr(socket, "create_connection", black_hole)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    start = time.monotonic()
    assert not hub.reachable(timeout=0.2)
    assert time.monotonic() - start < 1
    release.set()


def test_the_probe_says_reachable_for_a_live_hub(server):
    assert hub.reachable() and hub.network_problem() is None


def test_offline_fetch_on_the_command_line_is_one_line_well_under_2_seconds(tmp_path, monkeypatch):
    import os
    import shutil
    import subprocess
    import time

    registry = write_registry(tmp_path, monkeypatch, {"tiny": tiny_entry()})
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(
        HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}",
        HF_HOME=str(tmp_path / "hf"),
        ZSTAG_CACHE=str(tmp_path / "cache"),
        ZSTAG_REGISTRY=str(registry),
    )
    start = time.monotonic()
    result = subprocess.run(
        [shutil.which("zstag") or "zstag", "fetch", "tiny"], capture_output=True, text=True, env=env, timeout=60
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "cannot be reached" in result.stderr, result.stderr
    assert elapsed < 4, elapsed  # interpreter start-up (~0.5 s) included, slack for a loaded machine; was ~26 s


def shared_copy(server, tmp_path, monkeypatch) -> Path:
    """`tiny` as another tool (timm, transformers) left it in the standard Hugging Face cache; offline."""
    from huggingface_hub import constants, hf_hub_download

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    write_registry(tmp_path, monkeypatch, {"tiny": tiny_entry()})
    shared = tmp_path / "hf-home" / "hub"
    for name in ("model.safetensors", "config.json"):
        hf_hub_download("zstag-test/tiny", name, cache_dir=str(shared), endpoint=server.url)
    server.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return shared / "models--zstag-test--tiny" / "snapshots" / COMMIT


def tamper(path: Path) -> None:
    """Same size, other bytes: only a hash notices."""
    blob = path.resolve()
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")


def test_a_tampered_file_in_the_shared_cache_is_refused_on_load_and_listed_corrupt(server, tmp_path, monkeypatch):
    folder = shared_copy(server, tmp_path, monkeypatch)
    assert hub.cached("tiny") == folder
    tamper(folder / "model.safetensors")
    with pytest.raises(hub.CorruptFile, match="does not have the sha256"):  # was loaded as it was
        hub.cached("tiny")
    row = next(r for r in hub.list_registry() if r["name"] == "tiny")
    assert row["state"] == "corrupt" and not row["cached"]  # was listed as cached
    assert (folder / "model.safetensors").resolve().exists()  # another tool's cache is never modified


def test_each_file_is_hashed_once_and_remembered(server, tmp_path, monkeypatch):
    folder = shared_copy(server, tmp_path, monkeypatch)
    hashed: list[Path] = []
    real = hub._sha256
    monkeypatch.setattr(hub, "_sha256", lambda path: hashed.append(path) or real(path))
    for _ in range(3):
        assert hub.cached("tiny") == folder
    assert len(hashed) == 1
    stamps = tmp_path / "cache" / "verified.json"
    assert stamps.is_file() and oct(stamps.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("plant", ["foreign format", "writable by others"])
def test_a_stamp_zstag_did_not_write_is_not_trusted(server, tmp_path, monkeypatch, plant):
    folder = shared_copy(server, tmp_path, monkeypatch)
    blob = (folder / "model.safetensors").resolve()
    tamper(blob)
    st = blob.stat()
    claim = {
        str(blob): {
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns,
            "inode": st.st_ino,
            "device": st.st_dev,
            "sha256": sha(WEIGHTS),
        }
    }
    stamps = tmp_path / "cache" / "verified.json"
    stamps.parent.mkdir(parents=True)
    if plant == "foreign format":
        stamps.write_text(json.dumps({"files": claim}))
        stamps.chmod(0o600)
    else:
        stamps.write_text(json.dumps({"format": hub._STAMP_FORMAT, "files": claim}))
        stamps.chmod(0o666)
    with pytest.raises(hub.CorruptFile):
        hub.cached("tiny")


def test_fetch_replaces_a_tampered_shared_copy_with_its_own(server, tmp_path, monkeypatch):
    folder = shared_copy(server, tmp_path, monkeypatch)
    tamper(folder / "model.safetensors")
    online = FakeHub()
    try:
        online.repos["zstag-test/tiny"] = {"model.safetensors": WEIGHTS, "config.json": CONFIG}
        monkeypatch.setenv("HF_ENDPOINT", online.url)
        monkeypatch.delenv("HF_HUB_OFFLINE")
        own = hub.fetch("tiny")
    finally:
        online.stop()
    assert own.is_relative_to(tmp_path / "cache") and (own / "model.safetensors").read_bytes() == WEIGHTS
    assert hub.cached("tiny") == own  # zstag's own, good copy is found first


def test_fetch_list_and_a_pretrained_backbone_refuse_a_tampered_copy(server, tmp_path, monkeypatch):
    import os
    import shutil
    import subprocess

    from zstag.backbones import build_backbone

    folder = shared_copy(server, tmp_path, monkeypatch)
    registry = write_registry(tmp_path, monkeypatch, {"vgg19": {**tiny_entry(), "files": tiny_entry()["files"][:1]}})
    tamper(folder / "model.safetensors")
    with pytest.raises(hub.CorruptFile, match="run `zstag fetch vgg19 --force`"):
        build_backbone("vgg19", pretrained=True)  # what `train --backbone vgg19` builds; it used to load the file
    env = {**os.environ, "ZSTAG_REGISTRY": str(registry)}
    listing = subprocess.run(
        [shutil.which("zstag") or "zstag", "fetch", "--list"], capture_output=True, text=True, env=env, timeout=120
    )
    assert listing.returncode == 0, listing.stderr
    row = next(line.split("\t") for line in listing.stdout.splitlines() if line.startswith("vgg19\t"))
    assert "corrupt" in row  # was listed as "cached"


def test_a_pull_request_revision_is_fetched_cached_and_listed(server, tmp_path, monkeypatch):
    """`refs/pr/N` (how the Hub serves files added by a pull request, e.g. CLIP ViT-B/32's safetensors):
    huggingface_hub sends it as one percent-encoded path segment and caches it under refs/refs/pr/N."""
    server.repos["zstag-test/tiny"] = {"pytorch_model.bin": b"a pickle, never fetched"}
    pr = server.commit("zstag-test/tiny", "refs/pr/7", {"model.safetensors": WEIGHTS, "config.json": CONFIG})
    write_registry(tmp_path, monkeypatch, {"tiny": tiny_entry(revision="refs/pr/7")})
    folder = hub.fetch("tiny")

    assert folder.name == pr and (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert any("/resolve/refs%2Fpr%2F7/model.safetensors" in path for _, path in server.requests)
    assert (folder.parents[1] / "refs" / "refs" / "pr" / "7").read_text() == pr
    server.stop()
    assert hub.cached("tiny") == folder  # no network: the ref is read from the cache
    assert hub.cached("hf://zstag-test/tiny@refs/pr/7") == folder
    assert ("hf://zstag-test/tiny@refs/pr/7", folder) in list(hub.snapshots())
