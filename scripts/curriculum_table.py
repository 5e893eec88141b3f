"""Print docs/curriculum.md's tables from run directories.

    python scripts/curriculum_table.py runs/curriculum/arithmetic-uniform runs/curriculum/arithmetic-curriculum ...
    python scripts/curriculum_table.py --travel runs/travel

Curriculum vs uniform (the first form): the first run is the uniform baseline; for each run, the held-out greedy
pass@1 curve (metrics.jsonl), the first evaluated step at which it reaches the baseline's final accuracy, its final
accuracy and the prompts drawn (x G = samples).

Defaults that travel (`--travel DIR`, the runs of scripts/defaults_travel.sh): per task, greedy pass@1 / sampled
pass@1 / pass@k of the SFT model (the default RL run's "before" evaluation), after RL with the defaults and after
RL with the candidate setting (their "after" evaluations); then, per RL run, the training pass rate (`accuracy`),
the share of groups without signal (`zero_variance_frac`) and the entropy, averaged over its first and last five steps.
"""

import json
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


def travel(root: Path) -> list[str]:
    """docs/curriculum.md's "Defaults that travel" rows for the tasks that have runs under root."""
    lines = ["| task (n) | SFT | RL, defaults | RL, candidate |", "|---|---|---|---|"]
    trend = ["| task | run | " + " | ".join(f"{key}, first 5 -> last 5 steps" for key in TREND_KEYS) + " |",
             "|---|---|" + "---|" * len(TREND_KEYS)]
    for task in TRAVEL_TASKS:
        summaries = {}
        for arm in TRAVEL_ARMS:
            path = root / f"{task}-{arm}" / "summary.json"
            summaries[arm] = json.loads(path.read_text()) if path.exists() else None
        if not any(summaries.values()):
            continue
        first = next(s for s in summaries.values() if s)
        sft = (first.get("before") or {}).get("overall")
        n = int(sft["n"]) if sft else "?"
        after = [cell((s or {}).get("after", {}).get("overall")) for s in summaries.values()]
        lines.append(f"| {task} ({n}) | {cell(sft)} | {after[0]} | {after[1]} |")
        for arm in TRAVEL_ARMS:
            if summaries[arm]:
                m = window_means(root / f"{task}-{arm}")
                fmt = lambda key: "{:.3f} -> {:.3f}".format(*m[key]) if key in m else "-"  # noqa: E731
                trend.append(f"| {task} | {arm} | " + " | ".join(fmt(key) for key in TREND_KEYS) + " |")
    return lines + [""] + trend


if __name__ == "__main__":
    if sys.argv[1:2] == ["--travel"]:
        print("\n".join(travel(Path(sys.argv[2] if len(sys.argv) > 2 else "runs/travel"))))
    else:
        main(sys.argv[1:])
