"""`zstag report`: one static HTML page for reviewing predictions, with a folder of thumbnails beside it.

The page is the template, its CSS and script (package data of zstag.report), and the predictions as
one compact JSON blob; the script renders one page of cards at a time from the blob, so 100,000
predictions never mean 100,000 cards in the DOM. Nothing is fetched: a Content-Security-Policy
allows no connection, only the page's own script and style (by hash) and images from files, so the
page works offline from file:// and cannot be made to call out by a hostile label.

Safety: labels and file names travel only inside the JSON blob, with every `<`, `>` and `&`
written as a \\u escape so no text can end the script element early; the script puts them into
the DOM as text. Images are referenced by URL-quoted paths relative to the page (its thumbnails,
or with no thumbnails the originals), never absolute file:// URLs, so the folder can move.

With a truth file the numbers are those of `zstag eval`: the same loading, matching and metrics
(zstag.eval.report), and each label's AP and the PR curves from `label_curves`.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from zstag.core.atomic import atomic_write_text
from zstag.core.errors import UsageError
from zstag.data.manifest import Sample, read_dataset
from zstag.data.vocab import read_vocabulary
from zstag.eval.report import (
    evaluate,
    evaluation_labels,
    label_curves,
    load_predictions,
    match_predictions,
    same_file_key,
)
from zstag.report.thumbs import make_thumbnails

GENERATOR = '<meta name="generator" content="zstag report">'
_JSON_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


@dataclass
class ReportOptions:
    """What `zstag report` is asked for; paths as the user gave them."""

    predictions: Path
    out: Path
    truth: Path | None = None
    labels: Path | None = None
    unseen: Path | None = None
    thumbnails: bool = True
    workers: int | None = None


def thumbnail_folder(out: Path) -> Path:
    """report.html keeps its thumbnails in report_files/ beside it."""
    return out.with_name(out.stem + "_files")


def _check_replaceable(out: Path) -> None:
    """Refuse to overwrite a file that an earlier `zstag report` did not write."""
    if out.is_dir():
        raise UsageError(f"{out} is a folder; -o takes the HTML file to write")
    if out.exists():
        with open(out, "rb") as fh:
            head = fh.read(1024)
        if GENERATOR.encode() not in head:
            raise UsageError(f"{out} exists and was not written by zstag report; remove it or choose another -o")
    if not out.parent.is_dir():
        raise UsageError(f"folder {out.parent} does not exist")


def _url(target: str, base: str) -> str | None:
    """Absolute path `target` as a URL relative to absolute folder `base` (None where no relative path
    exists, e.g. another drive). Plain strings: pathlib would triple the time of 100,000 rows."""
    try:
        return quote(os.path.relpath(target, base).replace(os.sep, "/"), safe="/")
    except ValueError:
        return None


def _image_rows(
    rows: list[dict[str, Any]], labels: list[str], truth: dict[str, list[str]] | None, sources: list[str], out_dir: str
) -> list[list[Any]]:
    """Compact rows [name, href, thumb (filled in later), label indices, scores descending, truth indices].

    Tags outside `labels` are dropped (as eval ignores them); a label named twice keeps its best score.
    """
    index = {name: j for j, name in enumerate(labels)}
    images = []
    for row, source in zip(rows, sources):
        best: dict[int, float] = {}
        for tag in row["tags"]:
            j = index.get(tag["label"])
            if j is not None:
                best[j] = max(best.get(j, float("-inf")), tag["score"])
        ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))
        carried = None
        if truth is not None:
            tags = truth.get(same_file_key(source))
            carried = None if tags is None else sorted({index[t] for t in tags if t in index})
        images.append(
            [
                row["image"],
                _url(source, out_dir),
                None,
                [j for j, _ in ranked],
                [round(s, 4) for _, s in ranked],
                carried,
            ]
        )
    return images


def _evaluation(
    rows: list[dict[str, Any]], samples: list[Sample], labels: list[str], unseen: list[str] | None
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The eval report, per-label AP and PR curves (as `zstag eval` computes them), and each truth image's tags."""
    scores, matrix, _ = match_predictions(rows, samples, labels)
    report = evaluate(scores, matrix, labels, unseen)
    return (
        {"report": report, **label_curves(scores, matrix, labels, unseen)},
        {same_file_key(s.image): s.tags for s in samples},
    )


def render_page(title: str, data: dict[str, Any]) -> str:
    """The HTML: template + CSS + script, the data as escaped JSON, a CSP pinning the script and style by hash."""
    package = resources.files("zstag.report")
    css = package.joinpath("report.css").read_text(encoding="utf-8")
    script = package.joinpath("report.js").read_text(encoding="utf-8")

    def digest(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"

    # Built from constants and base64 digests only, so it needs no escaping in its attribute.
    csp = (
        f"default-src 'none'; img-src 'self' file: data:; style-src {digest(css)}; "
        f"script-src {digest(script)}; base-uri 'none'; form-action 'none'"
    )
    blob = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).translate(_JSON_ESCAPES)
    page = package.joinpath("template.html").read_text(encoding="utf-8")
    for key, value in (("CSP", csp), ("TITLE", html.escape(title)), ("CSS", css), ("JS", script)):
        page = page.replace("{{" + key + "}}", value)
    return page.replace("{{DATA}}", blob)  # last: the data may contain "{{...}}" itself


def build_report(opts: ReportOptions) -> int:
    """Write the page (and thumbnails); returns how many images could not be read for a thumbnail."""
    out = opts.out
    _check_replaceable(out)
    rows = load_predictions(opts.predictions)
    if not rows:
        raise UsageError(f"{opts.predictions} holds no predictions")
    given = read_vocabulary(opts.labels) if opts.labels else None
    unseen = read_vocabulary(opts.unseen) if opts.unseen else None
    samples = read_dataset(opts.truth) if opts.truth else []
    labels = evaluation_labels(rows, samples, given, unseen)
    evaluation, truth = _evaluation(rows, samples, labels, unseen) if opts.truth else (None, None)
    sources = [os.path.abspath(os.path.expanduser(row["image"])) for row in rows]
    images = _image_rows(rows, labels, truth, sources, os.path.abspath(out.parent))
    unreadable = 0
    if opts.thumbnails:
        folder = thumbnail_folder(out)
        prefix = quote(folder.name, safe="") + "/"
        for image, name in zip(images, make_thumbnails(sources, folder, opts.workers)):
            image[2] = prefix + name if name else None
            unreadable += name is None
    else:
        for image in images:
            image[2] = image[1]
    scores = [s for image in images for s in image[4]]
    unseen_set = set(unseen or ())
    data = {
        "labels": labels,
        "unseen": [j for j, name in enumerate(labels) if name in unseen_set],
        "images": images,
        "min": min(scores, default=0.0),
        "max": max(scores, default=1.0),
        "eval": evaluation,
    }
    atomic_write_text(out, render_page(f"zstag report: {opts.predictions.name}", data))
    return unreadable
