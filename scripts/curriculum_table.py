"""Print docs/curriculum.md's tables from run directories.

    python scripts/curriculum_table.py runs/curriculum/arithmetic-uniform runs/curriculum/arithmetic-curriculum ...
    python scripts/curriculum_table.py --mixed runs/curriculum/mix-uniform runs/curriculum/mix-curriculum ...
    python scripts/curriculum_table.py --mixed --upto=40 ...     # only the evaluations up to step 40
    python scripts/curriculum_table.py --travel runs/travel
    python scripts/curriculum_table.py --travel runs/t3 chain_sum3 basic3     # other task names (defaults_travel.sh TRAVEL_TASKS)
    ARMS=rl-default,rl-lr5e5 python scripts/curriculum_table.py --travel runs/t4 ...   # other RL arms (run directories <task>-<arm>)

Curriculum vs uniform (the first form): the first run is the uniform baseline; for each run, the held-out greedy
pass@1 curve (metrics.jsonl), the first evaluated step at which it reaches the baseline's final accuracy, its final
accuracy and the prompts drawn (x G = samples).

The mixed task (`--mixed`, runs of `task=mix:A+B`): the same, per part. A part's held-out accuracy at a step is
its levels' greedy pass@1 weighted by their problem counts (summary.json's evaluation, before.json while a run is going; the k-th part's levels are
10k + level, tasks/mixture.py), so each part is compared with the baseline's final accuracy on that part.

Defaults that travel (`--travel DIR`, the runs of scripts/defaults_travel.sh): per task, greedy pass@1 / sampled
pass@1 / pass@k of the SFT model (the default RL run's "before" evaluation), after RL with the defaults and after
RL with the candidate setting (their "after" evaluations); then, per RL run, the training pass rate (`accuracy`),
the share of groups without signal (`zero_variance_frac`) and the entropy, averaged over its first and last five steps.
"""

import json
import os
import sys
from pathlib import Path

TRAVEL_TASKS = ("chain_sum", "count_bits", "spell_backward", "calendar_arithmetic", "basic_arithmetic")
TRAVEL_ARMS = ("rl-default", "rl-candidate")


def curve(run: Path) -> tuple[dict[int, float], int]:
    evals, prompts, last = {}, 0, 0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "eval/pass@1_greedy" in row:
            evals[row["step"]] = row["eval/pass@1_greedy"]
        last = max(last, row["step"])
        prompts = int(row.get("curriculum/prompts", prompts))
    cfg = (run / "config.yaml").read_text()
    if not prompts:  # uniform: B per step
        b = int(next(line.split(":")[1] for line in cfg.splitlines() if line.startswith("prompts_per_step:")))
        prompts = b * last
    return evals, prompts


def main(runs: list[str]) -> None:
    base, _ = curve(Path(runs[0]))
    target = base[max(base)]
    print(f"baseline {runs[0]}: final {target:.3f}")
    print("| run | greedy pass@1 by step | first step >= baseline final | final | prompts drawn |")
    print("|---|---|---|---|---|")
    for r in runs:
        ev, prompts = curve(Path(r))
        reach = next((s for s in sorted(ev) if ev[s] >= target), None)
        points = " ".join(f"{s}:{v:.2f}" for s, v in sorted(ev.items()))
        print(f"| {Path(r).name} | {points} | {reach if reach is not None else 'not reached'} | {ev[max(ev)]:.3f} | {prompts} |")


LEVEL_OFFSET = 10  # tasks/mixture.py: the k-th part's levels are 10k + level


def part_curves(run: Path) -> dict[int, dict[int, float]]:
    """part -> {step: held-out greedy pass@1 on that part}: per-level accuracies weighted by the level's count."""
    if (run / "summary.json").exists():
        summary = json.loads((run / "summary.json").read_text())
        table = summary.get("before") or summary["after"]
    else:  # a run still going: its step-0 evaluation
        table = json.loads((run / "before.json").read_text())
    counts = {int(key.split("/")[1]): row["n"] for key, row in table.items() if key.startswith("level/")}
    curves: dict[int, dict[int, float]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        levels = {int(k.split("/")[2]): v for k, v in row.items()
                  if k.startswith("eval/level/") and k.endswith("/pass@1_greedy")}
        for part in sorted({level // LEVEL_OFFSET for level in levels}):
            mine = [level for level in levels if level // LEVEL_OFFSET == part]
            n = sum(counts[level] for level in mine)
            curves.setdefault(part, {})[row["step"]] = sum(levels[level] * counts[level] for level in mine) / n
    return curves


def part_names(run: Path) -> list[str]:
    """The parts of the run's `task: mix:A+B` (config.yaml), by name."""
    task = next(line.split(":", 1)[1].strip() for line in (run / "config.yaml").read_text().splitlines()
                if line.startswith("task:"))
    return [spec.partition(":")[0] for spec in task.removeprefix("mix:").split("+")]


def mixed(runs: list[str], upto: int | None = None) -> list[str]:
    """Per part of a mixed task: each run's curve, the first step at the baseline's (runs[0]) final accuracy on
    that part, and its final accuracy on it; `upto`: only evaluations at steps <= upto (runs still going)."""
    curves = [{part: {s: v for s, v in c.items() if upto is None or s <= upto} for part, c in part_curves(Path(r)).items()}
              for r in runs]
    names = part_names(Path(runs[0]))
    lines = ["| part | run | greedy pass@1 by step | first step >= baseline final | final |", "|---|---|---|---|---|"]
    for part in sorted(curves[0]):
        base = curves[0][part]
        target = base[max(base)]
        label = names[part] if part < len(names) else f"part {part}"
        for r, c in zip(runs, curves):
            ev = c[part]
            reach = next((s for s in sorted(ev) if ev[s] >= target - 1e-9), None)
            points = " / ".join(f"{v:.2f}" for _, v in sorted(ev.items()))
            lines.append(f"| {label} | {Path(r).name} | {points} | {reach if reach is not None else 'not reached'} "
                         f"| {ev[max(ev)]:.3f} |")
    return lines


def cell(overall: dict | None) -> str:
    """`greedy / sampled / pass@k` of an evaluation's overall row; '-' when the run has not finished."""
    if overall is None:
        return "-"
    k = next((key for key in overall if key.startswith("pass@") and key not in ("pass@1", "pass@1_greedy")), None)
    return f"{overall['pass@1_greedy']:.3f} / {overall['pass@1']:.3f} / {overall[k]:.3f}" if k else "-"


TREND_KEYS = ("accuracy", "zero_variance_frac", "entropy")


def window_means(run: Path, keys: tuple[str, ...] = TREND_KEYS, n: int = 5) -> dict[str, tuple[float, float]]:
    """key -> (mean over the first n training steps, mean over the last n) from metrics.jsonl."""
    rows = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("step", 0) > 0]
    out = {}
    for key in keys:
        values = [r[key] for r in rows if key in r]
        if values:
            out[key] = (sum(values[:n]) / len(values[:n]), sum(values[-n:]) / len(values[-n:]))
    return out


def kept_cell(summary: dict | None, last: bool = False) -> str:
    """A travel cell: the run's table after training (a keep_best run: its kept model, and the step it came
    from), or with `last` the last step's table of a keep_best run."""
    summary = summary or {}
    if last:
        return cell((summary.get("last") or {}).get("overall")) if "best" in summary else "-"
    text = cell(summary.get("after", {}).get("overall"))
    return f"{text} (step {summary['kept_step']})" if "best" in summary else text


def travel(root: Path, tasks: tuple[str, ...] = TRAVEL_TASKS, arms: tuple[str, ...] = TRAVEL_ARMS) -> list[str]:
    """docs/curriculum.md's "Defaults that travel" rows for those of `tasks` that have runs under root: the SFT
    model, then each of `arms` (run directories <task>-<arm>; rl-default and rl-candidate are named as before).
    A keep_best run's cell is the model it kept, with the step it came from; `<arm>:last` is that run's last step."""
    names = {"rl-default": "RL, defaults", "rl-candidate": "RL, candidate"}
    lines = ["| task (n) | SFT | " + " | ".join(names.get(a, a) for a in arms) + " |", "|---|---|" + "---|" * len(arms)]
    trend = ["| task | run | " + " | ".join(f"{key}, first 5 -> last 5 steps" for key in TREND_KEYS) + " |",
             "|---|---|" + "---|" * len(TREND_KEYS)]
    for task in tasks:
        summaries = {}
        for arm in arms:
            path = root / f"{task}-{arm.removesuffix(':last')}" / "summary.json"
            summaries[arm] = json.loads(path.read_text()) if path.exists() else None
        if not any(summaries.values()):
            continue
        first = next(s for s in summaries.values() if s)
        sft = (first.get("before") or {}).get("overall")
        n = int(sft["n"]) if sft else "?"
        after = [kept_cell(s, last=arm.endswith(":last")) for arm, s in summaries.items()]
        lines.append(f"| {task} ({n}) | {cell(sft)} | " + " | ".join(after) + " |")
        for arm in arms:
            if summaries[arm] and not arm.endswith(":last"):
                m = window_means(root / f"{task}-{arm}")
                fmt = lambda key: "{:.3f} -> {:.3f}".format(*m[key]) if key in m else "-"  # noqa: E731
                trend.append(f"| {task} | {arm} | " + " | ".join(fmt(key) for key in TREND_KEYS) + " |")
    return lines + [""] + trend


if __name__ == "__main__":
    if sys.argv[1:2] == ["--mixed"]:
        upto = int(sys.argv[2].removeprefix("--upto=")) if sys.argv[2].startswith("--upto=") else None
        print("\n".join(mixed([r for r in sys.argv[2:] if not r.startswith("--upto=")], upto)))
    elif sys.argv[1:2] == ["--travel"]:
        arms = tuple(a for a in os.environ.get("ARMS", ",".join(TRAVEL_ARMS)).split(",") if a)
        print("\n".join(travel(Path(sys.argv[2] if len(sys.argv) > 2 else "runs/travel"), tuple(sys.argv[3:]) or TRAVEL_TASKS, arms)))
    else:
        main(sys.argv[1:])
