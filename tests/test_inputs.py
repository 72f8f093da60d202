"""iter_inputs: which files a command line selects, in which order, under which display path."""

from __future__ import annotations

import inspect
import io
import os
import sys
from pathlib import Path

import pytest

from zstag.core.errors import ImageError, UsageError
from zstag.data.images import decode_image
from zstag.data.inputs import iter_inputs


def _tree(root: Path, names: list[str]) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def _displays(inputs: list[str], **options) -> list[str]:
    return [display for display, _ in iter_inputs(inputs, **options)]


@pytest.fixture
def photos(tmp_path, monkeypatch) -> Path:
    """photos/ with images at two depths, a sidecar, hidden entries and odd case extensions."""
    monkeypatch.chdir(tmp_path)
    _tree(
        tmp_path,
        [
            "photos/b.jpg",
            "photos/a.PNG",
            "photos/notes.txt",
            "photos/c.jpeg",
            "photos/sub/d.webp",
            "photos/sub/deeper/e.gif",
            "photos/sub/e.txt",
            "photos/z.tif",
            "photos/.hidden.jpg",
            "photos/._a.jpg",
            "photos/.thumbnails/t.jpg",
            "photos/noext",
        ],
    )
    return tmp_path / "photos"


def test_directory_recursive_in_name_order(photos):
    assert _displays(["photos"]) == [
        "photos/a.PNG",
        "photos/b.jpg",
        "photos/c.jpeg",
        "photos/sub/d.webp",
        "photos/sub/deeper/e.gif",
        "photos/z.tif",
    ]


def test_directory_non_recursive(photos):
    assert _displays(["photos"], recursive=False) == [
        "photos/a.PNG",
        "photos/b.jpg",
        "photos/c.jpeg",
        "photos/z.tif",
    ]


def test_display_keeps_the_directory_as_written(photos):
    assert _displays(["photos/"], recursive=False)[0] == "photos/a.PNG"
    assert _displays(["./photos/sub"]) == ["./photos/sub/d.webp", "./photos/sub/deeper/e.gif"]
    absolute = str(photos)
    pairs = list(iter_inputs([absolute], recursive=False))
    assert pairs[0] == (os.path.join(absolute, "a.PNG"), photos / "a.PNG")


def test_extensions_filter(photos):
    assert _displays(["photos"], extensions=["TXT"]) == ["photos/notes.txt", "photos/sub/e.txt"]
    assert _displays(["photos"], extensions=[".png", "gif"]) == ["photos/a.PNG", "photos/sub/deeper/e.gif"]
    assert _displays(["photos"], extensions=[]) == []


def test_explicit_file_kept_whatever_its_extension(photos):
    assert _displays(["photos/notes.txt", "photos/noext", "photos/.hidden.jpg"]) == [
        "photos/notes.txt",
        "photos/noext",
        "photos/.hidden.jpg",
    ]


def test_missing_path_on_the_command_line_is_a_usage_error(photos):
    with pytest.raises(UsageError, match="no such file or folder: 'photos/gone.jpg'"):
        _displays(["photos/b.jpg", "photos/gone.jpg"])
    with pytest.raises(UsageError, match=r"no file matches 'photos/\*.bmp'"):
        _displays(["photos/*.bmp"])


def test_missing_path_read_from_stdin_is_yielded_for_the_engine_to_report(photos):
    assert _displays(["-"], stdin=io.StringIO("photos/gone.jpg\nphotos/b.jpg\n")) == ["photos/gone.jpg", "photos/b.jpg"]
    with pytest.raises(ImageError, match="no such file"):
        decode_image("photos/gone.jpg")


def test_glob_patterns(photos):
    assert _displays(["photos/*.jpg"]) == ["photos/b.jpg"]
    assert _displays(["photos/**/*.txt"]) == ["photos/notes.txt", "photos/sub/e.txt"]  # the pattern chose
    assert _displays(["photos/s*"]) == ["photos/sub/d.webp", "photos/sub/deeper/e.gif"]  # dirs walked
    assert _displays(["photos/[ab].*"]) == ["photos/a.PNG", "photos/b.jpg"]


def test_literal_name_with_glob_characters_is_not_expanded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _tree(tmp_path, ["shot[1].jpg", "shot1.jpg"])
    assert _displays(["shot[1].jpg"]) == ["shot[1].jpg"]


def test_each_file_once_at_first_mention(photos):
    assert _displays(["photos/b.jpg", "photos", "photos/**/*.jpg", "./photos/b.jpg"]) == [
        "photos/b.jpg",
        "photos/a.PNG",
        "photos/c.jpeg",
        "photos/sub/d.webp",
        "photos/sub/deeper/e.gif",
        "photos/z.tif",
    ]


def test_stdin_lines(photos):
    stream = io.StringIO("photos/b.jpg\n\n   \nphotos/notes.txt\r\nphotos/sub\nphotos/*.jpg\n")
    assert _displays(["photos/z.tif", "-"], stdin=stream) == [
        "photos/z.tif",
        "photos/b.jpg",
        "photos/notes.txt",
        "photos/sub/d.webp",
        "photos/sub/deeper/e.gif",
        "photos/*.jpg",  # stdin paths are literal: no globbing
    ]


def test_stdin_bytes_keep_non_utf8_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = io.TextIOWrapper(io.BytesIO(b"caf\xe9.jpg\n"), encoding="utf-8")
    assert _displays(["-"], stdin=raw) == [os.fsdecode(b"caf\xe9.jpg")]


def test_stdin_defaults_to_sys_stdin_at_call_time(photos, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("photos/c.jpeg\n"))
    assert _displays(["-"]) == ["photos/c.jpeg"]


def test_non_utf8_names_in_a_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.mkdir(b"dir")
    for name in (b"dir/caf\xe9.jpg", b"dir/b.jpg"):
        with open(name, "wb") as fh:
            fh.write(b"x")
    pairs = list(iter_inputs(["dir"]))
    assert [os.fsencode(display) for display, _ in pairs] == [b"dir/b.jpg", b"dir/caf\xe9.jpg"]
    assert all(path.exists() for _, path in pairs)


def test_symlinks(tmp_path, monkeypatch):
    """Linked files are taken (a broken one is yielded, to be reported); linked dirs not followed."""
    monkeypatch.chdir(tmp_path)
    _tree(tmp_path, ["d/a.jpg", "elsewhere/b.jpg"])
    (tmp_path / "d/link.jpg").symlink_to(tmp_path / "elsewhere/b.jpg")
    (tmp_path / "d/dead.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "d/loop").symlink_to(tmp_path / "d")
    (tmp_path / "d/other").symlink_to(tmp_path / "elsewhere")
    assert _displays(["d"]) == ["d/a.jpg", "d/dead.jpg", "d/link.jpg"]
    assert _displays(["d/other"]) == ["d/other/b.jpg"]  # named on the command line: followed


def test_unlistable_directory_is_yielded(tmp_path, monkeypatch):
    """A sub-directory that cannot be listed surfaces as an input error, not as silence."""
    monkeypatch.chdir(tmp_path)
    _tree(tmp_path, ["top/a.jpg", "top/locked/b.jpg"])
    real_scandir = os.scandir

    def scandir(path):
        if os.path.basename(path) == "locked":
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert _displays(["top"]) == ["top/a.jpg", "top/locked"]


def test_deep_tree_does_not_recurse(tmp_path, monkeypatch):
    """The walk keeps its own stack: 150 levels pass under a recursion limit of (frames in use
    + 60), which a recursive walker would overflow. (The tree stays shallow enough for the
    recursive shutil.rmtree that cleans tmp_path.)"""
    monkeypatch.chdir(tmp_path)
    deep = os.path.join(*["d"] * 150)
    os.makedirs(deep)
    with open(os.path.join(deep, "a.jpg"), "wb") as fh:
        fh.write(b"x")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 60)
    try:
        found = _displays(["d"])
    finally:
        sys.setrecursionlimit(limit)
    assert found == [os.path.join(deep, "a.jpg")]
