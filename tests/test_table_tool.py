"""tools/table.py's bookkeeping: tables computed in parallel processes merge into one without training."""

from __future__ import annotations

import json
from pathlib import Path

from tools import table


def results(rows: dict[str, dict[str, float]], command: str) -> dict:
    """A results.json with one run per (row, seed) whose every metric is `value`."""
    metric_names = ["zs_mAP", "zs_miAP", "zs_F1@3", "zs_F1@5", "gzs_mAP", "gzs_miAP", "gzs_F1@3", "gzs_F1@5"]
    return {
        "commands": [command],
        "runs": {
            name: {
                seed: {"metrics": dict.fromkeys(metric_names, value), "train_seconds": 1.0, "epochs": 8}
                for seed, value in seeds.items()
            }
            for name, seeds in rows.items()
        },
    }


def test_merge_combines_runs_in_row_order_and_trains_nothing(tmp_path: Path) -> None:
    out = tmp_path / "table"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(results({"random scores": {"0": 0.01}}, "first")))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(results({"ml2p": {"0": 0.1, "1": 0.3}, "lesa": {"0": 0.5}}, "run a")))
    b.write_text(json.dumps(results({"lesa": {"0": 0.9, "1": 0.7}, "rgcn": {"2": 0.2}}, "run b")))

    # The data folder does not exist: merging must neither train nor evaluate anything.
    assert table.main([str(tmp_path / "no-data"), "--out", str(out), "--merge", str(a), str(b)]) == 0

    merged = json.loads((out / "results.json").read_text())
    runs = merged["runs"]
    assert sorted(runs["ml2p"]) == ["0", "1"] and sorted(runs["lesa"]) == ["0", "1"] and list(runs["rgcn"]) == ["2"]
    assert runs["lesa"]["0"]["metrics"]["zs_mAP"] == 0.5  # the first file's run of a seed wins
    assert {"first", "run a", "run b"} <= set(merged["commands"])
    lines = [
        line for line in (out / "table.md").read_text().splitlines() if line.startswith("| ") and "---" not in line
    ]
    names = [line.split(" | ")[0].removeprefix("| ") for line in lines[1:]]
    assert names == ["random scores", "lesa", "ml2p", "rgcn"]  # the order of table.ROWS, not of the files
    lesa = next(line for line in lines if line.startswith("| lesa |"))
    assert "60.00 (20.00)" in lesa  # mean and spread of 0.5 and 0.7 over its two seeds
    assert not (out / "models").exists()
