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


def test_travel_rows_for_named_tasks(tmp_path):
    write_run(tmp_path / "chain_sum3-rl-default", overall(0.3, 0.25, 0.75, n=100), overall(0.5, 0.45, 0.8, n=100),
              steps([0.2], [0.4]))
    write_run(tmp_path / "chain_sum-rl-default", overall(0, 0, 0), overall(0, 0, 0), steps([0], [1]))  # not named
    lines = table.travel(tmp_path, ("chain_sum3",))
    assert lines[2] == "| chain_sum3 (100) | 0.300 / 0.250 / 0.750 | 0.500 / 0.450 / 0.800 | - |"
    assert lines[6] == "| chain_sum3 | rl-default | 0.200 -> 0.200 | 0.800 -> 0.800 | 0.400 -> 0.400 |"
    assert len(lines) == 7


def write_mixed_run(d: Path, evals: dict[int, dict[int, float]], counts: dict[int, int]) -> None:
    """A mix:arithmetic+code_arith run: metrics.jsonl rows with per-level greedy pass@1, summary.json's counts."""
    d.mkdir(parents=True)
    (d / "config.yaml").write_text("seed: 0\ntask: mix:arithmetic:1-2+code_arith\nsteps: 20\n")
    before = {f"level/{level}": {"n": n, "pass@1_greedy": 0.0} for level, n in counts.items()}
    (d / "summary.json").write_text(json.dumps({"before": before, "after": before}))
    rows = [{"step": s, **{f"eval/level/{level}/pass@1_greedy": v for level, v in by_level.items()}}
            for s, by_level in evals.items()]
    rows.insert(1, {"step": 1, "loss": 0.5})  # training rows carry no evaluation
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_mixed_rows_weight_levels_by_count_per_part(tmp_path):
    counts = {1: 2, 2: 2, 11: 3, 12: 1}  # arithmetic: 4 problems, code: 4
    write_mixed_run(tmp_path / "mix-uniform", {0: {1: 0.5, 2: 0.0, 11: 0.0, 12: 0.0},
                                               10: {1: 1.0, 2: 0.5, 11: 1 / 3, 12: 1.0},
                                               20: {1: 1.0, 2: 0.0, 11: 2 / 3, 12: 0.0}}, counts)
    write_mixed_run(tmp_path / "mix-curriculum", {0: {1: 0.5, 2: 0.0, 11: 0.0, 12: 0.0},
                                                  10: {1: 0.5, 2: 0.5, 11: 0.0, 12: 0.0},
                                                  20: {1: 1.0, 2: 1.0, 11: 1 / 3, 12: 0.0}}, counts)
    lines = table.mixed([str(tmp_path / "mix-uniform"), str(tmp_path / "mix-curriculum")])
    # arithmetic at step 10: (2*1.0 + 2*0.5)/4 = 0.75; final (2*1.0 + 0)/4 = 0.5, reached at step 10
    assert lines[2] == "| arithmetic | mix-uniform | 0.25 / 0.75 / 0.50 | 10 | 0.500 |"
    assert lines[3] == "| arithmetic | mix-curriculum | 0.25 / 0.50 / 1.00 | 10 | 1.000 |"
    # code at step 10: (3*(1/3) + 1*1.0)/4 = 0.5; final (3*(2/3) + 0)/4 = 0.5; the curriculum's 0.25 never reaches it
    assert lines[4] == "| code_arith | mix-uniform | 0.00 / 0.50 / 0.50 | 10 | 0.500 |"
    assert lines[5] == "| code_arith | mix-curriculum | 0.00 / 0.00 / 0.25 | not reached | 0.250 |"
    assert len(lines) == 6


def test_mixed_reads_a_running_run_from_before_json(tmp_path):
    counts = {1: 1, 11: 3}
    write_mixed_run(tmp_path / "a", {0: {1: 0.0, 11: 1 / 3}, 10: {1: 1.0, 11: 2 / 3}}, counts)
    write_mixed_run(tmp_path / "b", {0: {1: 0.0, 11: 1 / 3}}, counts)
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    (tmp_path / "b" / "summary.json").unlink()  # still running: only the step-0 evaluation is on disk
    (tmp_path / "b" / "before.json").write_text(json.dumps(summary["before"]))
    lines = table.mixed([str(tmp_path / "a"), str(tmp_path / "b")])
    assert lines[2:] == ["| arithmetic | a | 0.00 / 1.00 | 10 | 1.000 |", "| arithmetic | b | 0.00 | not reached | 0.000 |",
                         "| code_arith | a | 0.33 / 0.67 | 10 | 0.667 |", "| code_arith | b | 0.33 | not reached | 0.333 |"]
    # up to step 0 only: a's curve is cut to its step-0 evaluation
    assert table.mixed([str(tmp_path / "a"), str(tmp_path / "b")], upto=0)[2] == "| arithmetic | a | 0.00 | 0 | 0.000 |"


def test_travel_rows_for_other_arms(tmp_path):
    write_run(tmp_path / "basic3-rl-default", overall(0.6, 0.5, 0.8), overall(0.5, 0.5, 0.7), steps([0.5], [0.1]))
    write_run(tmp_path / "basic3-rl-lr5e5", overall(0.6, 0.5, 0.8), overall(0.7, 0.6, 0.8), steps([0.5], [0.1]))
    lines = table.travel(tmp_path, ("basic3",), ("rl-default", "rl-lr5e5"))
    assert lines[0] == "| task (n) | SFT | RL, defaults | rl-lr5e5 |"
    assert lines[2].startswith("| basic3 (") and lines[2].count("|") == 5


def test_a_keep_best_run_shows_the_model_it_kept_and_its_last_step(tmp_path):
    write_run(tmp_path / "legs-kb", overall(0.1, 0.1, 0.4), overall(0.2, 0.15, 0.45), steps([0.5], [0.2]))
    summary = json.loads((tmp_path / "legs-kb" / "summary.json").read_text())
    summary.update(best={"step": 40, "metric": "pass@1_greedy+pass@8", "value": 0.6}, kept_step=40,
                   last=overall(0.25, 0.2, 0.3))
    (tmp_path / "legs-kb" / "summary.json").write_text(json.dumps(summary))
    write_run(tmp_path / "legs-plain", overall(0.1, 0.1, 0.4), overall(0.3, 0.3, 0.3), steps([0.5], [0.2]))
    lines = table.travel(tmp_path, ("legs",), ("kb", "kb:last", "plain", "plain:last"))
    assert lines[2] == ("| legs (50) | 0.100 / 0.100 / 0.400 | 0.200 / 0.150 / 0.450 (step 40) | "
                        "0.250 / 0.200 / 0.300 | 0.300 / 0.300 / 0.300 | - |")
    assert [line.split(" | ")[1] for line in lines[6:]] == ["kb", "plain"]  # no trend row for a ':last' column
