"""The tool-call rate over an RL run on tool episodes (docs/agents.md, issue 16): means per block of steps of
`agent/tool_call_rate`, failed calls (sum of `agent/errors/*` counts), training `accuracy` and `kl` from
metrics.jsonl, as a markdown table. Usage: python scripts/tool_rl_curve.py RUN_DIR [BLOCK=10]"""
import json
import sys
from pathlib import Path

run, block = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 10
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
steps = [r for r in rows if "agent/tool_call_rate" in r and "step" in r]
blocks: dict[int, list[dict]] = {}
for r in steps:
    blocks.setdefault((r["step"] - 1) // block, []).append(r)
heads, rate, fails, acc, kl = [], [], [], [], []
for b, rs in sorted(blocks.items()):
    heads.append(f"{rs[0]['step']}-{rs[-1]['step']}")
    rate.append(f"{sum(r['agent/tool_call_rate'] for r in rs) / len(rs):.3f}")
    fails.append(str(int(sum(v for r in rs for k, v in r.items() if k.startswith("agent/errors/")))))
    acc.append(f"{sum(r.get('accuracy', 0.0) for r in rs) / len(rs):.3f}")
    kl.append(f"{sum(r.get('kl', 0.0) for r in rs) / len(rs):.3f}")
print("| steps | " + " | ".join(heads) + " |")
print("|---|" + "---|" * len(heads))
for name, vals in (("episodes with a call", rate), ("failed calls", fails), ("training accuracy", acc),
                   ("KL to the reference", kl)):
    print(f"| {name} | " + " | ".join(vals) + " |")
