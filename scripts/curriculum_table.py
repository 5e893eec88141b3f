"""Print docs/curriculum.md's comparison rows from run directories' metrics.jsonl.

    python scripts/curriculum_table.py runs/curriculum/arithmetic-uniform runs/curriculum/arithmetic-curriculum ...

The first run is the uniform baseline: for each run, the held-out greedy pass@1 curve, the first evaluated step
at which it reaches the baseline's final accuracy, its final accuracy and the prompts drawn (x G = samples).
"""

import json
import sys
from pathlib import Path


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


if __name__ == "__main__":
    main(sys.argv[1:])
