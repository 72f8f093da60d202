"""`zstag fetch`: the weights registry, the download cache and its checksums.

Everything large that zstag can use but does not ship (ImageNet backbones, MiniLM, GloVe, tagging
models published by users) comes from the Hugging Face Hub through `huggingface_hub`, so proxies,
tokens, mirrors (`HF_ENDPOINT`) and offline mode (`HF_HUB_OFFLINE`) behave as users of that
ecosystem expect. Files land under `cache_dir()/hub` in huggingface_hub's own cache layout
(`models--OWNER--REPO/{blobs,refs,snapshots}`), so `hf cache` tools can inspect and prune it.

Why our own layer on top:
- A registry (`weights/registry.json`) pins each short name to a repository, a revision and the
  files needed, with sha256 and size where they could be checked against public sources. The hub
  only promises a file's size; we verify content and delete a file that does not match, so a
  corrupt or substituted file is never loaded.
- File names are checked before any request: a registry or URL cannot make us write outside
  the cache.
- `HF_ENDPOINT` and `HF_HUB_OFFLINE` are read at call time and passed explicitly.
  huggingface_hub reads them once, at import, and would ignore a later change (made by tests, by
  a caller, or by code that sets HF_HUB_OFFLINE while running).
- Weights that timm/transformers already put in the standard Hugging Face cache (`HF_HUB_CACHE`,
  else `HF_HOME/hub`) are reused read-only instead of downloaded a second time.
- An archive entry (GloVe ships as one zip of four text files) is unpacked once, member by
  member, into `hub/extracted/`, because the semantics layer streams a plain text file.

Nothing here unpickles anything: registry files are safetensors, JSON, text or zip archives.
Progress: pass `progress(file_name, bytes_done, bytes_total_or_None)` to get byte counts (the CLI
draws its own bar); without it huggingface_hub shows its own bars when stderr is a terminal and
none otherwise (logs stay clean in CI and pipes).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import stat
import sys
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

from zstag.core.errors import UsageError, ZstagError
from zstag.core.paths import WEIGHTS_DIR, cache_root
from zstag.store import CONFIG, SEMANTICS_NAMES, WEIGHTS

Progress = Callable[[str, int, int | None], None]

REGISTRY_ENV = "ZSTAG_REGISTRY"
HF_SCHEME = "hf://"
DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT = 1.0  # seconds for the connectivity probe: a live hub answers a TCP connect far sooner
MODEL_FILES = (CONFIG, WEIGHTS)  # what a zstag model repository holds (GUIDE §1)
_CHUNK = 1 << 20
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}"
_HF_URL = re.compile(rf"hf://(?P<repo>{_NAME}/{_NAME})(?:@(?P<rev>[A-Za-z0-9][A-Za-z0-9_./-]{{0,199}}))?")
_TRUE = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class FileSpec:
    """One file of a repository; `sha256`/`size` are None where no public source pins them."""

    name: str
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class Spec:
    """What to fetch: a registry entry or an `hf://` URL, resolved to repository terms."""

    name: str
    repo: str
    revision: str
    files: tuple[FileSpec, ...]
    kind: str = "model"
    license: str | None = None
    description: str = ""
    archive: str | None = None
    members: tuple[str, ...] = ()


# --- locations -----------------------------------------------------------------------------------


def cache_dir(override: str | Path | None = None) -> Path:
    """`--cache-dir`, else $ZSTAG_CACHE, else the platform's user cache folder (zstag's cache root)."""
    return cache_root(override)


def hub_dir(override: str | Path | None = None) -> Path:
    """Where fetched repositories live, in huggingface_hub's cache layout."""
    return cache_dir(override) / "hub"


def hf_user_cache() -> Path:
    """The standard Hugging Face hub cache, read at call time (`HF_HUB_CACHE`, else `HF_HOME/hub`)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def shared_place(folder: str | Path, cache_dir: str | Path | None = None) -> str | None:
    """What holds `folder` when zstag must not rewrite it (the shipped weights, a download cache), else None.

    A model in the shipped `weights/` belongs to the installation, and one in zstag's or the
    Hugging Face cache is a download that `hf://` references, other tools and `--force` refetches
    rely on (its files are links into shared blobs): commands that change a model refuse these.
    """
    real = Path(folder).resolve()
    for what, root in (
        ("the models shipped with zstag", WEIGHTS_DIR),
        ("zstag's download cache", hub_dir(cache_dir)),
        ("the Hugging Face cache", hf_user_cache()),
    ):
        if real == root.resolve() or root.resolve() in real.parents:
            return f"{what} ({root})"
    return None


def registry_path(registry: str | Path | None = None) -> Path:
    """The registry file: the argument, else $ZSTAG_REGISTRY, else `weights/registry.json`."""
    if registry:
        return Path(registry)
    env = os.environ.get(REGISTRY_ENV)
    return Path(env) if env else WEIGHTS_DIR / "registry.json"


def offline() -> bool:
    """Whether `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) is set now, not at huggingface_hub's import."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE


@contextmanager
def hub_offline_mode(enabled: bool) -> Iterator[None]:
    """Make huggingface_hub's import-time offline flag agree with the environment for one call.

    Its HTTP layer refuses every request when `HF_HUB_OFFLINE` was set at its import (a test
    harness, or a semantics loader that sets it while running), even after the variable is gone.
    """
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = enabled
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def endpoint() -> str | None:
    """`HF_ENDPOINT` as it is now (a mirror or a test server), else None for huggingface.co."""
    value = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    return value or None


# --- names and the registry ----------------------------------------------------------------------


def check_relative_name(name: str) -> str:
    """Refuse a repository file name that could escape the cache folder.

    Checked before any request: absolute paths, drive letters, backslashes, `..`/`.`/empty
    segments and control characters are all refused, whatever the hub would answer.
    """
    if (
        not isinstance(name, str)
        or not name
        or name.startswith("/")
        or "\\" in name
        or re.match(r"^[A-Za-z]:", name)
        or any(ord(c) < 32 for c in name)
        or any(part in ("", ".", "..") for part in name.split("/"))
    ):
        raise ZstagError(
            f"refusing unsafe file name {name!r}: only plain relative paths inside a repository are allowed"
        )
    return name


def check_repo(repo: str, revision: str) -> None:
    if not isinstance(repo, str) or not _REPO_ID.match(repo) or ".." in repo:
        raise ZstagError(f"refusing repository id {repo!r}: expected OWNER/NAME")
    if (
        not isinstance(revision, str)
        or not revision
        or ".." in revision
        or "\\" in revision
        or revision.startswith("/")
    ):
        raise ZstagError(f"refusing revision {revision!r} of {repo}")


def load_registry(registry: str | Path | None = None) -> dict[str, dict]:
    """The registry as parsed JSON: name -> {repo, revision, files, license, description, kind}."""
    path = registry_path(registry)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ZstagError(f"weights registry {path} not found") from None
    except (OSError, ValueError) as exc:
        raise ZstagError(f"cannot read weights registry {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ZstagError(f"weights registry {path} must map names to entries")
    return data


def _spec_from_entry(name: str, entry: dict) -> Spec:
    try:
        files = tuple(FileSpec(f["name"], f.get("sha256"), f.get("size")) for f in entry["files"])
        spec = Spec(
            name=name,
            repo=entry["repo"],
            revision=entry.get("revision") or "main",
            files=files,
            kind=entry.get("kind", "model"),
            license=entry.get("license"),
            description=entry.get("description", ""),
            archive=(entry.get("extract") or {}).get("archive"),
            members=tuple((entry.get("extract") or {}).get("members", ())),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ZstagError(f"registry entry {name!r} is malformed ({exc!r})") from None
    _validate(spec)
    return spec


def _validate(spec: Spec) -> None:
    check_repo(spec.repo, spec.revision)
    if not spec.files:
        raise ZstagError(f"registry entry {spec.name!r} lists no files")
    for f in spec.files:
        check_relative_name(f.name)
        if f.sha256 is not None and not (isinstance(f.sha256, str) and _SHA256.match(f.sha256)):
            raise ZstagError(f"registry entry {spec.name!r}: {f.name} has a malformed sha256")
        if f.size is not None and not (isinstance(f.size, int) and f.size >= 0):
            raise ZstagError(f"registry entry {spec.name!r}: {f.name} has a malformed size")
    if spec.archive is not None and not spec.members:
        raise ZstagError(f"registry entry {spec.name!r} extracts nothing from {spec.archive!r}")
    if spec.archive is not None and spec.archive not in {f.name for f in spec.files}:
        raise ZstagError(f"registry entry {spec.name!r} extracts {spec.archive!r}, which it does not download")
    for member in spec.members:
        check_relative_name(member)


def parse_hf_url(url: str) -> tuple[str, str]:
    """`hf://OWNER/REPO[@REV]` -> (repo, revision); anything else is refused.

    The whole string is matched (scheme included), so `someone/repo` or `hf:/x/y` can never be
    read as another repository by dropping characters.
    """
    match = _HF_URL.fullmatch(url) if isinstance(url, str) else None
    if match is None or ".." in url:
        raise UsageError(f"bad model URL {url!r}: expected hf://OWNER/REPO or hf://OWNER/REPO@REVISION")
    return match["repo"], match["rev"] or "main"


def bundled_semantics(config: object) -> str | None:
    """The semantics file a model's config names inside its own directory (`semantics.txt`), else None.

    A model trained on a local vector file carries a copy (`store/model.py`); a model repository
    holds it beside `MODEL_FILES`, and fetching an `hf://` model downloads it too.
    """
    name = config.get("semantics") if isinstance(config, dict) else None
    if not isinstance(name, str) or name in SEMANTICS_NAMES:
        return None
    try:
        return check_relative_name(name)
    except ZstagError:
        return None


def resolve(name_or_url: str, registry: str | Path | None = None) -> Spec:
    """A registry name or an `hf://` URL as a validated `Spec` (no network)."""
    if name_or_url.startswith(HF_SCHEME):
        repo, revision = parse_hf_url(name_or_url)
        spec = Spec(name_or_url, repo, revision, tuple(FileSpec(f) for f in MODEL_FILES), kind="model")
        _validate(spec)
        return spec
    entries = load_registry(registry)
    if name_or_url not in entries:
        known = ", ".join(sorted(entries))
        raise UsageError(f"unknown weights {name_or_url!r}: choose one of {known}, or hf://OWNER/REPO[@REV]")
    return _spec_from_entry(name_or_url, entries[name_or_url])


# --- the cache -----------------------------------------------------------------------------------


def _repo_folder(repo: str) -> str:
    return "models--" + repo.replace("/", "--")


def _snapshot_of(path: Path, file_name: str) -> Path:
    """The snapshot folder holding `file_name` (which may sit in a subfolder) at `path`."""
    folder = Path(path)
    for _ in file_name.split("/"):
        folder = folder.parent
    return folder


def _extract_dir(root: Path, spec: Spec, snapshot: Path) -> Path:
    return root / "extracted" / _repo_folder(spec.repo) / snapshot.name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _discard(pointer: Path) -> None:
    """Delete a cached file: its snapshot link and the blob it points to."""
    blob = pointer.resolve()
    for p in (pointer, blob):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _check_file(spec: Spec, f: FileSpec, pointer: Path, stamps: Path) -> None:
    """Refuse (and delete) a file in zstag's cache whose size or sha256 differs from the registry's."""
    size = pointer.stat().st_size
    problem = None
    if f.size is not None and size != f.size:
        problem = f"has {size} bytes, expected {f.size}"
    elif f.sha256 is not None and not _has_sha256(pointer, f.sha256, stamps):
        problem = f"has sha256 {_sha256(pointer)}, expected {f.sha256}"
    if problem:
        _discard(pointer)
        raise ZstagError(
            f"{spec.name}: {f.name} from {spec.repo}@{spec.revision} {problem}; the bad file was deleted. "
            f"Run `zstag fetch {spec.name}` again; if it keeps failing the upstream file changed"
        )


def _usable(spec: Spec, root: Path, stamps: Path) -> Path | None:
    """`_complete`, with a corrupt copy counted as missing (fetch then downloads a good one)."""
    try:
        return _complete(spec, root, stamps)
    except CorruptFile:
        return None


class CorruptFile(ZstagError):
    """A cached file whose content is not the registry's (damaged, or replaced by someone)."""


def _complete(spec: Spec, root: Path, stamps: Path) -> Path | None:
    """The snapshot (or extraction) folder if every file of `spec` is under `root`, else None.

    Sizes are compared, and every file the registry pins is checked against its sha256 (hashed
    once, then remembered in `stamps`, see `_has_sha256`); a file that differs raises CorruptFile.
    """
    from huggingface_hub import try_to_load_from_cache

    if not root.is_dir():
        return None
    snapshot = None
    for f in spec.files:
        hit = try_to_load_from_cache(spec.repo, f.name, cache_dir=str(root), revision=spec.revision)
        if not isinstance(hit, str) or not Path(hit).is_file():
            return None
        here = _snapshot_of(Path(hit), f.name)
        if snapshot is not None and here != snapshot:
            return None
        snapshot = here
        if f.size is not None and Path(hit).stat().st_size != f.size:
            return None
        if f.sha256 is not None and not _has_sha256(Path(hit), f.sha256, stamps):
            raise CorruptFile(
                f"{spec.name}: {hit} does not have the sha256 the registry pins ({f.sha256}): "
                f"it is damaged or was replaced; run `zstag fetch {spec.name} --force`"
            )
    if snapshot is None:
        return None
    if spec.archive:
        out = _extract_dir(root, spec, snapshot)
        if not (out / ".complete").is_file() or not all((out / m).is_file() for m in spec.members):
            return None
        return out
    return snapshot


def cached(name_or_url: str, cache_dir: str | Path | None = None, registry: str | Path | None = None) -> Path | None:
    """The local folder holding `name_or_url` if everything is already there, else None.

    No network. Looks in zstag's cache, then (read-only) in the standard Hugging Face cache.
    Sizes are checked, and sha256 where the registry pins one: each file is hashed the first time
    it is seen and then remembered by its identity (`_has_sha256`), so loading a backbone costs
    no hashing after the first. A file that fails raises CorruptFile (never deleted here: only
    `fetch` deletes, and only in zstag's own cache).
    """
    spec = resolve(name_or_url, registry)
    stamps = _stamps_path(cache_dir)
    for root in _roots(cache_dir):
        found = _complete(spec, root, stamps)
        if found is not None:
            return found
    return None


# --- remembered checksums --------------------------------------------------------------------------

_STAMP_FORMAT = "zstag verified files 1"


def _stamps_path(cache_dir: str | Path | None) -> Path:
    """Where zstag remembers which files it hashed: its own cache, never the shared one."""
    return cache_root(cache_dir) / "verified.json"


def _identity(path: Path) -> tuple[str, dict[str, int]]:
    """(real path, what changes when the file's content is written or the file replaced)."""
    real = path.resolve()
    st = real.stat()
    # ctime cannot be set back by a user (`touch -d` sets mtime and so updates ctime), and a replaced
    # file has a new inode: together they catch any rewrite made without root rights.
    return str(real), {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "inode": st.st_ino,
        "device": st.st_dev,
    }


def _read_stamps(stamps: Path) -> dict[str, dict]:
    """The remembered hashes, or nothing when the file is not one zstag wrote for this user.

    Trusted only when it is a regular file owned by this user, writable by nobody else, and
    in zstag's format: a stamp another user or tool could have planted is ignored (the files
    are hashed again).
    """
    try:
        st = os.stat(stamps, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
            return {}
        data = json.loads(stamps.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) and data.get("format") == _STAMP_FORMAT else None
    return files if isinstance(files, dict) else {}


def _has_sha256(path: Path, sha256: str, stamps: Path) -> bool:
    """Whether the file at `path` has `sha256`: hashed once, then remembered while the file is unchanged."""
    key, identity = _identity(path)
    remembered = _read_stamps(stamps)
    if remembered.get(key) == {**identity, "sha256": sha256}:
        return True
    if _sha256(path) != sha256:
        return False
    remembered[key] = {**identity, "sha256": sha256}
    try:
        stamps.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=stamps.parent, prefix=".verified.", suffix=".tmp")  # mode 0600
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({"format": _STAMP_FORMAT, "files": remembered}, out)
        os.replace(tmp, stamps)
    except OSError:
        pass  # a read-only cache only costs hashing again next time
    return True


def snapshots(cache_dir: str | Path | None = None) -> Iterator[tuple[str, Path]]:
    """Every cached snapshot as (`hf://` reference that finds it again, folder); no network.

    Walks zstag's cache, then the standard Hugging Face cache. The reference names the branch or
    tag that points at the snapshot (`hf://OWNER/REPO` for `main`, `@REF` for another), else its
    commit, so `cached(reference)` and `--model reference` resolve to this very folder.
    """
    for root in _roots(cache_dir):
        if not root.is_dir():
            continue
        for repo_dir in sorted(root.glob("models--*--*")):
            owner, _, name = repo_dir.name[len("models--") :].partition("--")
            refs = repo_dir / "refs"
            names: dict[str, list[str]] = {}
            for ref in sorted(refs.rglob("*")) if refs.is_dir() else ():
                if ref.is_file():
                    names.setdefault(ref.read_text(encoding="utf-8").strip(), []).append(
                        ref.relative_to(refs).as_posix()
                    )
            for snapshot in sorted((repo_dir / "snapshots").glob("*")):
                if not snapshot.is_dir():
                    continue
                labels = names.get(snapshot.name, [])
                revision = "main" if "main" in labels else (labels[0] if labels else snapshot.name)
                suffix = "" if revision == "main" else f"@{revision}"
                yield f"{HF_SCHEME}{owner}/{name}{suffix}", snapshot


def _roots(cache_dir: str | Path | None) -> list[Path]:
    roots = [hub_dir(cache_dir)]
    shared = hf_user_cache()
    if shared.resolve() != roots[0].resolve():
        roots.append(shared)
    return roots


# --- downloading ---------------------------------------------------------------------------------


class _CallbackBar:
    """The slice of tqdm's interface huggingface_hub drives while downloading, forwarded to a callback."""

    callback: Progress | None = None
    file_name: str = ""

    def __init__(self, *args: object, total: int | None = None, initial: int = 0, **kwargs: object) -> None:
        self.total = total
        self.n = initial

    def __enter__(self) -> _CallbackBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.callback is not None:
            self.callback(self.file_name, self.n, self.total)

    def close(self) -> None:
        return None


def _bar_class(file_name: str, progress: Progress | None) -> type | None:
    """A tqdm stand-in reporting to `progress`; None (huggingface_hub's bars) only on a terminal."""
    if progress is None and sys.stderr is not None and sys.stderr.isatty():
        return None
    return type(
        "_Bar", (_CallbackBar,), {"callback": staticmethod(progress) if progress else None, "file_name": file_name}
    )


def network_problem() -> str | None:
    """Why the hub cannot be used now, or None: `HF_HUB_OFFLINE`, else a failed connectivity probe.

    Asked once before any download, so an offline machine gets zstag's one-line answer at once
    instead of huggingface_hub's retries with back-off (six messages and ~25 s).
    """
    if offline():
        return "HF_HUB_OFFLINE is set"
    return None if reachable() else _cannot_reach()


def _cannot_reach() -> str:
    return f"the hub ({endpoint() or DEFAULT_ENDPOINT}) cannot be reached"


def reachable(timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a TCP connection to the hub's host (or to the proxy that leads there) opens in `timeout` s.

    Only a connection, no request: it answers "is there a network path", quickly. The connection
    (name lookup included, which a socket timeout does not bound) runs in a daemon thread that is
    abandoned when it takes too long.
    """
    url = urlsplit(endpoint() or DEFAULT_ENDPOINT)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    proxy = getproxies().get(url.scheme) or getproxies().get("all")
    if proxy and not proxy_bypass(host):
        proxied = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxied.hostname or "", proxied.port or (443 if proxied.scheme == "https" else 80)
    opened: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                opened.append(True)
        except (OSError, ValueError):
            pass

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(opened)


def _unreachable(spec: Spec, root: Path, why: str) -> ZstagError:
    return ZstagError(
        f"{spec.name} is not in the cache ({root}) and {why}: run `zstag fetch {spec.name}` on a machine "
        f"with network, or copy the cache (set ZSTAG_CACHE or --cache-dir to it)"
    )


def _download(
    spec: Spec, f: FileSpec, root: Path, force: bool, progress: Progress | None, no_network: str | None
) -> Path:
    """One file into `root`; `no_network` (why the hub cannot be used) means the cache only."""
    import httpx2
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if force and no_network:
        raise ZstagError(f"--force needs the network, but {no_network} ({spec.name})")
    where = f"{spec.repo}@{spec.revision}"
    try:
        with hub_offline_mode(no_network is not None):
            path = hf_hub_download(
                spec.repo,
                f.name,
                revision=spec.revision,
                cache_dir=str(root),
                force_download=force,
                local_files_only=no_network is not None,
                endpoint=endpoint(),
                tqdm_class=_bar_class(f.name, progress),
            )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise _unreachable(spec, root, no_network or _cannot_reach()) from None
    except GatedRepoError:
        raise ZstagError(f"{where} is gated: accept its terms on the hub and log in (`hf auth login`)") from None
    except RepositoryNotFoundError:
        raise ZstagError(f"repository {spec.repo} not found on the hub (or it is private)") from None
    except RevisionNotFoundError:
        raise ZstagError(f"revision {spec.revision!r} of {spec.repo} not found on the hub") from None
    except EntryNotFoundError:
        raise ZstagError(f"{where} has no file {f.name!r}") from None
    except HfHubHTTPError as exc:
        raise ZstagError(f"downloading {f.name} from {where} failed: {exc}") from None
    except (httpx2.HTTPError, OSError, ValueError) as exc:
        if isinstance(exc, (httpx2.ConnectError, httpx2.TimeoutException)):
            raise _unreachable(spec, root, _cannot_reach()) from None
        raise ZstagError(f"downloading {f.name} from {where} failed: {exc}") from None
    return Path(path)


def _extract(spec: Spec, snapshot: Path, archive_name: str, root: Path, force: bool, progress: Progress | None) -> Path:
    """Unpack the registry's archive members next to the cache; idempotent thanks to a marker."""
    out = _extract_dir(root, spec, snapshot)
    marker = out / ".complete"
    if marker.is_file() and not force and all((out / m).is_file() for m in spec.members):
        return out
    marker.unlink(missing_ok=True)
    try:
        with zipfile.ZipFile(snapshot / archive_name) as archive:
            for member in spec.members:
                try:
                    info = archive.getinfo(member)
                except KeyError:
                    raise ZstagError(f"{spec.name}: {archive_name} has no member {member!r}") from None
                target = out / member
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(target.name + ".partial")
                done = 0
                # zipfile checks each member's CRC-32 as it reaches the end: a damaged archive raises.
                with archive.open(info) as src, open(partial, "wb") as dst:
                    while chunk := src.read(_CHUNK):
                        dst.write(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(member, done, info.file_size)
                os.replace(partial, target)
    except zipfile.BadZipFile as exc:
        raise ZstagError(
            f"{spec.name}: {archive_name} is not a readable zip archive ({exc}); run `zstag fetch {spec.name} --force`"
        ) from None
    marker.write_text(json.dumps({"archive": archive_name, "members": list(spec.members)}) + "\n", encoding="utf-8")
    return out


def fetch(
    name_or_url: str,
    cache_dir: str | Path | None = None,
    force: bool = False,
    progress: Progress | None = None,
    registry: str | Path | None = None,
) -> Path:
    """Download (or find in the cache) a registry entry or `hf://OWNER/REPO[@REV]`; return its folder.

    Every file is checked against the registry's size and sha256 where it has them, also when it
    was already cached; a file that fails is deleted and a ZstagError raised. With HF_HUB_OFFLINE
    set, or when a quick connectivity probe fails (`network_problem`), only the cache is used. `force`
    downloads again even what is cached.
    """
    spec = resolve(name_or_url, registry)
    root = hub_dir(cache_dir)
    stamps = _stamps_path(cache_dir)
    if not force and _usable(spec, root, stamps) is None:
        for shared in _roots(cache_dir)[1:]:
            found = _usable(spec, shared, stamps)  # another tool's cache: use if intact, never modify
            if found is not None:
                return found
    snapshots = set()
    no_network = network_problem()
    for f in spec.files:
        pointer = _download(spec, f, root, force, progress, no_network)
        _check_file(spec, f, pointer, stamps)
        snapshots.add(_snapshot_of(pointer, f.name))
    if name_or_url.startswith(HF_SCHEME):
        extra = _model_semantics(snapshots)
        if extra is not None:
            snapshots.add(_snapshot_of(_download(spec, FileSpec(extra), root, force, progress, no_network), extra))
    if len(snapshots) != 1:
        raise ZstagError(
            f"{spec.repo}@{spec.revision} changed during the download; run `zstag fetch {spec.name}` again"
        )
    snapshot = snapshots.pop()
    if spec.archive:
        return _extract(spec, snapshot, spec.archive, root, force, progress)
    return snapshot


def _model_semantics(snapshots: set[Path]) -> str | None:
    """The semantics file named by the config.json just fetched (one snapshot), if any."""
    if len(snapshots) != 1:
        return None
    try:
        config = json.loads((next(iter(snapshots)) / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # loading the model names what is wrong with its config
    return bundled_semantics(config)


def list_registry(cache_dir: str | Path | None = None, registry: str | Path | None = None) -> list[dict]:
    """One row per registry entry for `zstag fetch --list`, with whether it is cached (no network).

    `state`: `verified` (cached, every file's sha256 checked), `unverified` (cached, but the
    registry pins no sha256 for some file: only sizes were checked), `corrupt` (a file differs
    from its pinned sha256: not used) or `missing`.
    """
    rows = []
    for name, entry in load_registry(registry).items():
        spec = _spec_from_entry(name, entry)
        sizes = [f.size for f in spec.files]
        try:
            folder, state = cached(name, cache_dir=cache_dir, registry=registry), None
        except CorruptFile:
            folder, state = None, "corrupt"
        pinned = all(f.sha256 is not None for f in spec.files)
        state = state or ("missing" if folder is None else "verified" if pinned else "unverified")
        rows.append(
            {
                "name": name,
                "kind": spec.kind,
                "repo": spec.repo,
                "revision": spec.revision,
                "license": spec.license,
                "description": spec.description,
                "files": [f.name for f in spec.files],
                "size": sum(s for s in sizes if s is not None) if all(s is not None for s in sizes) else None,
                "cached": folder is not None,
                "state": state,
                "path": str(folder) if folder is not None else None,
            }
        )
    return rows


__all__ = [
    "CorruptFile",
    "FileSpec",
    "HF_SCHEME",
    "Progress",
    "Spec",
    "cache_dir",
    "bundled_semantics",
    "cached",
    "check_relative_name",
    "check_repo",
    "endpoint",
    "fetch",
    "hf_user_cache",
    "hub_dir",
    "hub_offline_mode",
    "list_registry",
    "load_registry",
    "network_problem",
    "offline",
    "parse_hf_url",
    "reachable",
    "registry_path",
    "shared_place",
    "resolve",
    "snapshots",
]
