"""scripts/curriculum_table.py --travel: the docs/curriculum.md "Defaults that travel" rows from run directories."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("curriculum_table", ROOT / "scripts" / "curriculum_table.py")
table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(table)


def overall(g: float, s: float, k: float, n: int = 50) -> dict:
    return {"overall": {"n": n, "pass@1_greedy": g, "pass@1": s, "pass@8": k, "maj@8": g}}


def write_run(d: Path, before: dict | None, after: dict, rows: list[dict]) -> None:
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"before": before, "after": after}))
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def steps(accuracy: list[float], entropy: list[float]) -> list[dict]:
    rows = [{"step": 0, "eval/pass@1_greedy": 0.1}]  # the step-0 evaluation is not a training step
    return rows + [{"step": i + 1, "accuracy": a, "zero_variance_frac": 1 - a, "entropy": e}
                   for i, (a, e) in enumerate(zip(accuracy, entropy))]


def test_travel_rows_read_before_and_after_and_step_windows(tmp_path):
    acc = [0.1, 0.1, 0.2, 0.2, 0.4, 0.5, 0.5, 0.5, 0.6, 0.9]  # first five mean 0.2, last five mean 0.6
    ent = [1.0] * 5 + [0.5] * 5
    write_run(tmp_path / "count_bits-rl-default", overall(0.1, 0.15, 0.5), overall(0.2, 0.25, 0.5), steps(acc, ent))
    write_run(tmp_path / "count_bits-rl-candidate", overall(0.1, 0.15, 0.5), overall(0.3, 0.3, 0.625), steps(acc[:3], ent[:3]))
    write_run(tmp_path / "other-rl-default", overall(0, 0, 0), overall(0, 0, 0), steps([0], [1]))  # not a travel task
    lines = table.travel(tmp_path)
    assert lines[2] == "| count_bits (50) | 0.100 / 0.150 / 0.500 | 0.200 / 0.250 / 0.500 | 0.300 / 0.300 / 0.625 |"
    assert len([line for line in lines if line.startswith("| count_bits (")]) == 1
    assert lines[6] == "| count_bits | rl-default | 0.200 -> 0.600 | 0.800 -> 0.400 | 1.000 -> 0.500 |"
    # three steps: the first-five and last-five windows are the same three steps
    assert lines[7] == "| count_bits | rl-candidate | 0.133 -> 0.133 | 0.867 -> 0.867 | 1.000 -> 1.000 |"
    assert len(lines) == 8


def test_travel_marks_an_unfinished_arm():
    assert table.cell(None) == "-"
    assert table.cell({"n": 3, "pass@1_greedy": 1 / 3, "pass@1": 0.5, "pass@4": 2 / 3}) == "0.333 / 0.500 / 0.667"


def test_travel_row_with_only_the_candidate_finished(tmp_path):
    write_run(tmp_path / "chain_sum-rl-candidate", overall(0.02, 0.03, 0.2, n=60), overall(0.05, 0.04, 0.2, n=60),
              steps([0.1], [0.9]))
    assert table.travel(tmp_path)[2] == "| chain_sum (60) | 0.020 / 0.030 / 0.200 | - | 0.050 / 0.040 / 0.200 |"
