"""R1-Zero: GRPO straight from the base model with rule rewards only, watching the thought change.

DeepSeek-R1-Zero (DeepSeek-AI 2025, section 2.2) trains the base model with GRPO on two rule rewards,
accuracy and format, and reports, per step, the mean response length (it grows), the "aha moment"
(the thought starts to re-check and re-evaluate itself) and accuracy. This command is `reasonloop train`
(the same GRPO step, `recipes/rl.py`) with:

- rewards: only the task's components named in `rule_rewards` (default accuracy and format: the arithmetic
  task's length penalty is dropped; `rule_rewards=[correct]` for the code tasks); `reward_funcs` and
  `reward_model` still add theirs if you set them (R1-Zero sets none);
- per-step logs (`r1/...` in metrics.jsonl, `rewards/thought.py`): mean response length (`length/mean` in
  tokens, `r1/response_chars`, `r1/think_chars`, `r1/think_steps`), the rate of self-verification and
  backtracking markers in the thought (`r1/verify_rate`, `r1/backtrack_rate`, configurable regular
  expressions), the task-notation counterparts (`r1/repeat_step_rate`: an equation written twice;
  `r1/revise_step_rate`: an equation rewritten with another result), format compliance (`r1/format_rate`)
  and training accuracy; held-out accuracy every `eval_every` steps (`eval/...`);
- `curves.png` in the run directory at the end: length, markers, format and accuracy against steps.

Departures from the paper: the embedded model is a 2M-parameter character model whose corpus has no
words, so the English markers are expected to stay at zero there (docs/r1.md reports what was measured);
the group-relative GRPO is this project's (`recipes/rl.py`), with its KL term on by default
(kl_coef=0.04, as DeepSeekMath; R1-Zero does not say it removed it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from reasonloop.config import ConfigError, require
from reasonloop.recipes import rl
from reasonloop.rewards.core import RewardSpec
from reasonloop.rewards.thought import DEFAULT_BACKTRACK_PATTERNS, DEFAULT_VERIFY_PATTERNS, MarkerCounter


@dataclass
class Config(rl.Config):
    rule_rewards: list[str] = field(default_factory=lambda: ["accuracy", "format"])
    """The task's reward components kept (by name); the task's others are dropped (R1-Zero: accuracy and
    format; the code tasks call their verdict `correct`)."""
    verify_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_VERIFY_PATTERNS))
    """Regular expressions (case-insensitive) of self-verification markers, searched in the thought."""
    backtrack_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_BACKTRACK_PATTERNS))
    """Regular expressions (case-insensitive) of backtracking markers, searched in the thought."""
    plot: bool = True
    """Write curves.png (length, markers, format, accuracy per step) into the run directory at the end."""

    RESUME_FREE: ClassVar[frozenset[str]] = rl.Config.RESUME_FREE | {"verify_patterns", "backtrack_patterns", "plot"}

    def __post_init__(self):
        super().__post_init__()
        require(bool(self.rule_rewards), "rule_rewards is empty: R1-Zero trains on the task's rule rewards")
        import re

        for p in [*self.verify_patterns, *self.backtrack_patterns]:
            try:
                re.compile(p)
            except re.error as exc:
                raise ConfigError(f"marker pattern {p!r} is not a regular expression: {exc}") from None


class Trainer(rl.Trainer):
    """The GRPO trainer with R1-Zero's rewards and per-step thought metrics."""

    COMMAND = "r1_zero"

    def __init__(self, cfg: Config, **kwargs):
        self.markers = MarkerCounter(cfg.verify_patterns, cfg.backtrack_patterns)
        super().__init__(cfg, **kwargs)

    def _reward_specs(self) -> list[RewardSpec]:
        specs = super()._reward_specs()
        task_names = [s.name for s in self.task_specs]
        unknown = [n for n in self.cfg.rule_rewards if n not in task_names]
        if unknown:
            raise ConfigError(f"rule_rewards={self.cfg.rule_rewards}: task {self.cfg.task!r} has no reward component "
                              f"{unknown}; its components are {task_names}")
        return [s for s in specs if s.name not in task_names or s.name in self.cfg.rule_rewards]

    def step(self):
        metrics, data = super().step()
        metrics.update({f"r1/{k}": v for k, v in self.markers.metrics(data.batch.completions).items()})
        return metrics, data

    def train(self) -> dict:
        result = super().train()
        if self.cfg.plot and self.dist.is_main:
            result["curves"] = str(plot_curves(self.run.dir / "metrics.jsonl", self.run.dir / "curves.png"))
            self.run.write_json("summary.json", result)
        return result


PANELS = (  # (title, [(metric, label)])
    ("mean response length (tokens)", [("length/mean", "completion")]),
    ("markers in the thought (rate)", [("r1/verify_rate", "self-verification"), ("r1/backtrack_rate", "backtracking"),
                                       ("r1/repeat_step_rate", "repeated step"), ("r1/revise_step_rate", "revised step")]),
    ("format and training accuracy", [("r1/format_rate", "format compliance"), ("accuracy", "train accuracy")]),
    ("held-out accuracy", [("eval/pass@1_greedy", "pass@1 greedy"), ("eval/pass@1_sampled", "pass@1 sampled")]),
)


def read_series(metrics_path: Path) -> dict[str, list[tuple[int, float]]]:
    """metric -> [(step, value)] from a metrics.jsonl (numeric values only)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for line in metrics_path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                out.setdefault(k, []).append((int(row["step"]), float(v)))
    return out


def plot_curves(metrics_path: Path, out: Path) -> Path:
    """The four R1-Zero panels as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_series(metrics_path)
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    for ax, (title, lines) in zip(axes.flat, PANELS):
        for key, label in lines:
            if key in series:
                pts = sorted(series[key])
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, marker="o" if len(pts) < 30 else None,
                        markersize=3, linewidth=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out


def run(cfg: Config) -> dict:
    if cfg.distributed.backend == "ray":
        raise ConfigError("r1_zero runs in one process or under torchrun; distributed.backend=ray is `reasonloop train`'s")
    return Trainer(cfg).train()
