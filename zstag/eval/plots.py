"""`zstag eval --plots DIR`: the PR curves and the per-label AP chart as PNG, drawn with Pillow.

Pillow is already a dependency (image decoding); matplotlib would add tens of megabytes for two
charts. The numbers come from `zstag.eval.report.label_curves`, which reads the same score and truth
matrices as the report `--json` prints, so the charts and the JSON never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from zstag.core.atomic import make_output_folder
from zstag.core.errors import UsageError
from zstag.outputs.pictures import save_marked, written_by

PR_FILE = "pr_curves.png"
AP_FILE = "ap_per_label.png"
COLOURS = {"gzs": (31, 119, 180), "zs": (214, 39, 40)}
_GRID = (225, 225, 225)
_INK = (40, 40, 40)
_SEEN_BAR = (31, 119, 180)
_UNSEEN_BAR = (214, 39, 40)
_ROW = 16  # pixels per label in the AP chart


SOFTWARE = "zstag eval"  # the charts' PNG mark: a rerun replaces them, nobody else's files


def draw_pr_curves(curves: dict[str, list[list[float]]], report: dict[str, Any]) -> Image.Image:
    """Precision (y) against recall (x) for each setting, its mAP in the legend."""
    width, height, left, bottom, top, right = 640, 480, 60, 50, 20, 20
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(13)
    pw, ph = width - left - right, height - top - bottom

    def xy(r: float, p: float) -> tuple[float, float]:
        return left + r * pw, top + (1 - p) * ph

    for i in range(11):
        v = i / 10
        draw.line([xy(v, 0), xy(v, 1)], fill=_GRID)
        draw.line([xy(0, v), xy(1, v)], fill=_GRID)
        draw.text((xy(v, 0)[0], top + ph + 6), f"{v:.1f}", fill=_INK, font=font, anchor="mt")
        draw.text((left - 6, xy(0, v)[1]), f"{v:.1f}", fill=_INK, font=font, anchor="rm")
    draw.rectangle([left, top, left + pw, top + ph], outline=_INK)
    draw.text((left + pw / 2, height - 8), "recall", fill=_INK, font=font, anchor="mb")
    draw.text((8, top + ph / 2), "precision", fill=_INK, font=font, anchor="lm")
    for row, name in enumerate(n for n in ("gzs", "zs") if curves.get(n)):
        points = [xy(r, p) for r, p in curves[name]]
        draw.line(points if len(points) > 1 else points * 2, fill=COLOURS[name], width=2)
        m_ap = (report.get(name) or {}).get("mAP")
        legend = f"{name.upper()}  mAP {100 * m_ap:.2f}" if m_ap is not None else name.upper()
        y = top + 12 + row * 18
        draw.line([(left + pw - 170, y), (left + pw - 145, y)], fill=COLOURS[name], width=3)
        draw.text((left + pw - 140, y), legend, fill=_INK, font=font, anchor="lm")
    return image


def draw_ap_bars(labels: Sequence[str], ap: Sequence[float | None], unseen: Sequence[str] | None) -> Image.Image:
    """One bar per label with positives, best first; unseen labels in red."""
    unseen_set = set(unseen or ())
    rows = sorted(((v, name) for name, v in zip(labels, ap) if v is not None), key=lambda row: (-row[0], row[1]))
    font = ImageFont.load_default(12)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    name_width = max((probe.textlength(name, font=font) for _, name in rows), default=40)
    left = int(min(name_width, 320)) + 16
    bar_width, top = 400, 24
    height = top + _ROW * max(1, len(rows)) + 10
    image = Image.new("RGB", (left + bar_width + 70, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 4), "AP per label (red: unseen)", fill=_INK, font=font)
    for i, (value, name) in enumerate(rows):
        y = top + i * _ROW
        draw.text((left - 8, y + _ROW / 2), name, fill=_INK, font=font, anchor="rm")
        colour = _UNSEEN_BAR if name in unseen_set else _SEEN_BAR
        draw.rectangle([left, y + 2, left + value * bar_width, y + _ROW - 3], fill=colour)
        draw.text((left + value * bar_width + 6, y + _ROW / 2), f"{100 * value:.1f}", fill=_INK, font=font, anchor="lm")
    return image


def write_plots(
    folder: Path, report: dict[str, Any], curves: dict[str, Any], labels: Sequence[str], unseen: Sequence[str] | None
) -> list[Path]:
    """Write PR_FILE and AP_FILE into `folder` (created); returns their paths. Charts an earlier
    `zstag eval --plots` wrote are replaced; any other file of those names is refused, untouched."""
    check_plots_folder(folder)
    written = [folder / PR_FILE, folder / AP_FILE]
    save_marked(draw_pr_curves(curves["pr"], report), written[0], SOFTWARE)
    save_marked(draw_ap_bars(labels, curves["ap"], unseen), written[1], SOFTWARE)
    return written


def check_plots_folder(folder: Path) -> None:
    """Make `folder` for the charts, or UsageError: not a folder, or charts' names taken by files
    zstag did not write. Called before the evaluation too, so a bad --plots costs no work."""
    make_output_folder(folder, "--plots")
    taken = [name for name in (PR_FILE, AP_FILE) if (folder / name).exists()]
    foreign = [name for name in taken if not written_by(folder / name, SOFTWARE)]
    if foreign:
        raise UsageError(
            f"--plots {folder}: {', '.join(foreign)} exist(s) and zstag did not write them; choose another folder"
        )
