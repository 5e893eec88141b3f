"""DCoT-SE: a self-evolving library of reasoning modes, chosen per prompt by a bandit (docs/frameworks.md#dcot-se).

A mode is how a trace is started and sampled: a forced opening whose first step covers `chunk` operations
(0: nothing forced, the model's own choice; 1: step by step; 99: the whole chain at once; frameworks/_common.py)
and the sampling temperature of its training rollouts; an `instruction` line put before the prompt is there for
models that read instructions (the embedded character-level model does not, so its library leaves it empty).

Every training prompt gets one mode for all its G samples, drawn by Thompson sampling from Beta posteriors of
the mode's success (the group's mean accuracy, a fractional Bernoulli) in the prompt's context (number of
operations and digits of its largest number). After each step:

- **retire**: a live mode with at least `min_pulls` pulls whose pooled success is below the best live mode's by
  more than two posterior standard deviations (of both) leaves the library (two modes always stay);
- **evolve**: every `evolve_every` steps the two best live modes (pooled success, `min_pulls` pulls each)
  combine into a new mode: the opening of the better and the temperature of the other (instructions joined),
  or the other way round when that one exists already (else the next best pair); when no pair makes a new
  mode, the best one is mutated (temperature -0.2, +0.2, or a first step one operation longer); up to
  `max_modes` modes are ever made.

Held-out evaluation decodes greedily with each prompt's best mode (highest posterior mean in its context).
Equal samples: the same B x G rollouts per step as GRPO.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field

import torch

from reasonloop.config import require
from reasonloop.data.records import Example
from reasonloop.frameworks._common import chain_terms, opening, with_extra
from reasonloop.recipes import rl
from reasonloop.rewards.core import compute_rewards
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.train.evaluation import flat_metrics


@dataclass(frozen=True)
class Mode:
    name: str
    chunk: int  # operations the forced first step covers; 0 forces nothing
    temperature: float  # of its training rollouts
    instruction: str = ""  # a line before the prompt, for models that read instructions


INITIAL = (Mode("free", 0, 1.0), Mode("careful", 1, 1.0), Mode("pairs", 2, 1.0), Mode("direct", 99, 1.0),
           Mode("careful-cool", 1, 0.7))


@dataclass
class Arm:
    """A mode's Beta posterior over its success in one context: Beta(1 + wins, 1 + losses)."""

    wins: float = 0.0
    losses: float = 0.0

    @property
    def pulls(self) -> float:
        return self.wins + self.losses

    @property
    def mean(self) -> float:
        return (1 + self.wins) / (2 + self.pulls)

    @property
    def sd(self) -> float:
        a, b = 1 + self.wins, 1 + self.losses
        return math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))

    def update(self, success: float) -> None:
        self.wins += success
        self.losses += 1 - success


class ModeLibrary:
    """The modes, their per-context arms, and the retire / evolve rules of the module docstring."""

    def __init__(self, modes=INITIAL, min_pulls: int = 8, max_modes: int = 8, seed: int = 0):
        self.modes: list[Mode] = list(modes)
        self.live: list[str] = [m.name for m in modes]
        self.arms: dict[tuple[str, str], Arm] = {}
        self.min_pulls, self.max_modes = min_pulls, max_modes
        self.rng = random.Random(seed)
        self.history: list[str] = []

    def mode(self, name: str) -> Mode:
        return next(m for m in self.modes if m.name == name)

    def arm(self, context: str, name: str) -> Arm:
        return self.arms.setdefault((context, name), Arm())

    def pooled(self, name: str) -> Arm:
        out = Arm()
        for (_, n), a in self.arms.items():
            if n == name:
                out.wins += a.wins
                out.losses += a.losses
        return out

    def choose(self, context: str) -> str:
        """Thompson sampling among the live modes."""
        draws = {n: self.rng.betavariate(1 + self.arm(context, n).wins, 1 + self.arm(context, n).losses)
                 for n in self.live}
        return max(self.live, key=lambda n: (draws[n], -self.live.index(n)))

    def best(self, context: str) -> str:
        """The live mode with the highest posterior mean among those tried in this context (a mode never tried
        here has only its prior, 0.5, which must not beat evidence); else the best pooled one that was tried."""
        tried = [n for n in self.live if self.arms.get((context, n), Arm()).pulls > 0]
        if tried:
            return max(tried, key=lambda n: (self.arm(context, n).mean, -self.live.index(n)))
        pooled = [n for n in self.live if self.pooled(n).pulls > 0] or self.live
        return max(pooled, key=lambda n: (self.pooled(n).mean, -self.live.index(n)))

    def retire(self, step: int) -> list[str]:
        pooled = {n: self.pooled(n) for n in self.live}
        top = max(self.live, key=lambda n: pooled[n].mean)
        gone = []
        for n in list(self.live):
            p, b = pooled[n], pooled[top]
            if (len(self.live) > 2 and n != top and p.pulls >= self.min_pulls
                    and p.mean + 2 * p.sd < b.mean - 2 * b.sd):
                self.live.remove(n)
                gone.append(n)
                self.history.append(f"step {step}: retired {n} ({p.mean:.2f} vs {top} {b.mean:.2f})")
        return gone

    def evolve(self, step: int) -> Mode | None:
        ready = [n for n in self.live if self.pooled(n).pulls >= self.min_pulls]
        if len(ready) < 2 or len(self.modes) >= self.max_modes:
            return None
        ranked = sorted(ready, key=lambda n: -self.pooled(n).mean)
        pairs = [(ranked[i], ranked[j]) for j in range(1, len(ranked)) for i in range(j)]  # best pairs first
        for a, b in pairs:
            for x, y in ((self.mode(a), self.mode(b)), (self.mode(b), self.mode(a))):
                child = Mode(f"{x.name}+{y.name}", x.chunk, y.temperature,
                             " ".join(filter(None, [x.instruction, y.instruction])))
                if not any((m.chunk, m.temperature, m.instruction) == (child.chunk, child.temperature,
                                                                       child.instruction) for m in self.modes):
                    self.modes.append(child)
                    self.live.append(child.name)
                    self.history.append(f"step {step}: made {child.name} (chunk {child.chunk}, T {child.temperature})")
                    return child
        return self._mutate(ranked[0], step)

    def _mutate(self, name: str, step: int) -> Mode | None:
        """When no pair makes a new mode: the best mode with its temperature moved by 0.2 (down, then up) or its
        first step one operation longer, whichever is new first."""
        m = self.mode(name)
        for chunk, temp in ((m.chunk, round(m.temperature - 0.2, 2)), (m.chunk, round(m.temperature + 0.2, 2)),
                            (m.chunk + 1, m.temperature)):
            if temp <= 0 or any((x.chunk, x.temperature, x.instruction) == (chunk, temp, m.instruction) for x in self.modes):
                continue
            child = Mode(f"{m.name}~{len(self.modes)}", chunk, temp, m.instruction)
            self.modes.append(child)
            self.live.append(child.name)
            self.history.append(f"step {step}: mutated {m.name} into {child.name} (chunk {chunk}, T {temp})")
            return child
        return None

    def state_dict(self) -> dict:
        return {"modes": [asdict(m) for m in self.modes], "live": self.live, "history": self.history,
                "arms": [[c, n, a.wins, a.losses] for (c, n), a in self.arms.items()],
                "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.modes = [Mode(**m) for m in state["modes"]]
        self.live, self.history = list(state["live"]), list(state["history"])
        self.arms = {(c, n): Arm(w, lo) for c, n, w, lo in state["arms"]}
        st = state["rng"]
        self.rng.setstate((st[0], tuple(st[1]), st[2]))


def context_of(prompt: str) -> str:
    """'3ops-1d': the number of operations and the digits of the largest operand (arithmetic), else 'any'."""
    terms = chain_terms(prompt)
    if terms is None:
        return "any"
    head, ops = terms
    return f"{len(ops)}ops-{max(len(head), *(len(o) - 1 for o in ops))}d"


@dataclass
class DCoTConfig:
    min_pulls: int = 8
    """Pulls (groups) a mode needs before it can be retired or combined."""
    evolve_every: int = 10
    """Steps between combinations of the two best modes."""
    max_modes: int = 8
    """Most modes the library ever holds (the initial five included)."""

    def __post_init__(self):
        require(self.min_pulls >= 1 and self.evolve_every >= 1 and self.max_modes >= 2,
                "dcot.min_pulls and dcot.evolve_every must be >= 1, dcot.max_modes >= 2")


@dataclass
class Config(rl.Config):
    dcot: DCoTConfig = field(default_factory=DCoTConfig)
    """The mode library's rules."""


class DCoTTrainer(rl.Trainer):
    """GRPO whose prompts are started in the mode the bandit picks."""

    def __init__(self, cfg: Config, **kw):
        self.library = ModeLibrary(min_pulls=cfg.dcot.min_pulls, max_modes=cfg.dcot.max_modes, seed=cfg.seed)
        self.eval_modes: dict[str, int] = {}
        super().__init__(cfg, **kw)

    def _start(self, ex: Example, mode: Mode) -> tuple[str, str]:
        """(the rendered prompt with the mode's instruction and opening, the opening)."""
        head = opening(ex.prompt, mode.chunk)
        prompt = f"{mode.instruction}\n{ex.prompt}" if mode.instruction else ex.prompt
        return self.render(prompt) + head, head

    def rollout(self, prompts: list[Example], timing: dict[str, float]) -> list[rl.ScoredGroup]:
        cfg, g = self.cfg, self.cfg.group_size
        chosen = [self.library.choose(context_of(e.prompt)) for e in prompts]
        groups: list[rl.ScoredGroup] = []
        for name in dict.fromkeys(chosen):  # one engine call per mode, in first-chosen order
            mode = self.library.mode(name)
            exs = [e for e, c in zip(prompts, chosen) if c == name]
            starts = [self._start(e, mode) for e in exs]
            sampling = SamplingConfig(**{**cfg.sampling.__dict__, "temperature": mode.temperature})
            t0 = time.time()
            batch = self.engine.generate([s for s, _ in starts], g, sampling, self.generator)
            t1 = time.time()
            rows_exs = [e for e in exs for _ in range(g)]
            full = [starts[r // g][1] + c for r, c in enumerate(batch.completions)]
            scored = compute_rewards(self.reward_specs, full, rows_exs)
            timing["time/generation"] = timing.get("time/generation", 0.0) + t1 - t0
            timing["time/reward"] = timing.get("time/reward", 0.0) + time.time() - t1
            for k, count in scored.errors.items():
                self.state.count(f"reward_error/{k}", count)
            total = scored.total + self._overlong(batch)
            for i, ex in enumerate(exs):
                rows = slice(i * g, (i + 1) * g)
                self.library.arm(context_of(ex.prompt), name).update(float(scored.components["accuracy"][rows].mean()))
                groups.append(rl.ScoredGroup(ex, batch.rows(rows), total[rows],
                                             {k: v[rows] for k, v in scored.components.items()}))
        step = self.state.step
        self.library.retire(step)
        if step % cfg.dcot.evolve_every == 0:
            self.library.evolve(step)
        return groups

    def _extra_modules(self):
        return {**super()._extra_modules(), "dcot_library": self.library}

    def evaluate(self) -> dict:
        """Greedy pass@1 per level, each problem started in its context's best mode."""
        exs = self.held_out
        picks = [self.library.mode(self.library.best(context_of(e.prompt))) for e in exs]
        ok = [False] * len(exs)
        greedy = SamplingConfig(temperature=0.0, max_new_tokens=self.cfg.sampling.max_new_tokens)
        for name in dict.fromkeys(m.name for m in picks):
            idx = [i for i, m in enumerate(picks) if m.name == name]
            for s in range(0, len(idx), 64):
                part = idx[s : s + 64]
                starts = [self._start(exs[i], picks[i]) for i in part]
                batch = self.engine.generate([p for p, _ in starts], 1, greedy)
                for i, (_, head), c in zip(part, starts, batch.completions):
                    ok[i] = self.task.is_correct(head + c, exs[i])
        by_level: dict[str, list[int]] = {}
        for i, e in enumerate(exs):
            by_level.setdefault(f"level/{e.meta.get('level', 'all')}", []).append(i)
        summary = {g: {"n": len(idx), "pass@1_greedy": sum(ok[i] for i in idx) / len(idx)}
                   for g, idx in [*sorted(by_level.items()), ("overall", list(range(len(exs))))]}
        self.eval_modes = {}
        for i, e in enumerate(exs):
            key = f"level/{e.meta.get('level', 'all')}: {picks[i].name}"
            self.eval_modes[key] = self.eval_modes.get(key, 0) + 1
        self.run.log(self.state.step, flat_metrics(summary))
        return summary


def run(cfg: Config) -> dict:
    trainer = DCoTTrainer(cfg)
    result = trainer.train()
    lib = trainer.library
    print("DCoT-SE library (pooled success, pulls; * = live):")
    for m in lib.modes:
        p = lib.pooled(m.name)
        print(f"  {'*' if m.name in lib.live else ' '} {m.name:<28} chunk {m.chunk:>2}  T {m.temperature}  "
              f"success {p.mean:.3f}  pulls {p.pulls:.0f}")
    for line in lib.history:
        print(f"  {line}")
    extra = {"modes": [{**asdict(m), "live": m.name in lib.live, "success": round(lib.pooled(m.name).mean, 4),
                        "pulls": lib.pooled(m.name).pulls} for m in lib.modes],
             "history": lib.history, "eval_modes": trainer.eval_modes}
    return with_extra(trainer, result, extra)
