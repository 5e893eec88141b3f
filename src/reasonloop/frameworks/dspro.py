"""DSPRO, single-process half: a population of GRPO policies (select and perturb) and a novelty reward.

The survey's claim: evolving a population of policies, and rewarding solutions unlike those already found,
keeps exploration alive and finds more (and more varied) solutions than one policy. Made concrete:

- **population** (population-based training, Jaderberg et al. 2017): `population` GRPO trainers (`recipes/rl.py`'s
  Trainer, seeds seed..seed+P-1), each starting from the base model with its learning rate scaled by a
  factor drawn from `perturb_factors`. They take turns of `exploit_every` steps; after each turn every member's
  fitness is its mean training accuracy over the turn (no extra samples), and the worst member copies the best
  one's weights, optimizer state and learning-rate scale (exploit), then multiplies that scale by a factor drawn
  from `perturb_factors` (explore). `steps` is the whole budget: each member takes steps // population steps, so
  the run draws as many samples as one GRPO run of `steps` steps.
- **novelty** (`NoveltyArchive`, a reward component of weight `novelty_coef`): an archive, shared by the
  population, of earlier correct solutions per prompt (at most `archive_size` each). A correct completion scores
  its distance to the nearest archived solution of its prompt: the Jaccard distance of their character
  `novelty_ngram`-gram sets (1.0 when the archive holds none); a wrong one scores 0, so novelty never pays for
  wrong answers. The current batch joins the archive after it is scored.
- **measured**: on the held-out set, `eval_k` samples per problem at temperature 1: pass@1, pass@k, and diversity
  (distinct completions / k; distinct correct completions per problem), for the best member and for the
  population as an ensemble (k samples split evenly across members).

`population=1 novelty_coef=0` is plain GRPO under the same evaluation (the baseline). The distributed half
(members on separate machines) belongs to docs/scale.md.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from reasonloop.algos.passk import pass_at_k
from reasonloop.config import require
from reasonloop.data.records import Example
from reasonloop.recipes import rl
from reasonloop.rewards.core import RewardSpec
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.train.run import progress


def ngrams(text: str, n: int) -> frozenset[str]:
    """The set of character n-grams of `text` (the text itself when shorter than n)."""
    return frozenset(text[i : i + n] for i in range(len(text) - n + 1)) if len(text) >= n else frozenset([text])


def jaccard_distance(a: frozenset[str], b: frozenset[str]) -> float:
    """1 - |a & b| / |a | b| (0 for two empty sets)."""
    union = len(a | b)
    return 1.0 - len(a & b) / union if union else 0.0


def novelty(text: str, archive: Sequence[str], n: int) -> float:
    """Distance from `text` to its nearest neighbour in `archive` (Jaccard over n-gram sets); 1.0 for none."""
    grams = ngrams(text, n)
    return min((jaccard_distance(grams, ngrams(a, n)) for a in archive), default=1.0)


class NoveltyArchive:
    """The novelty reward component (TRL signature) and the archive it reads; see the module docstring."""

    def __init__(self, task: Any, n: int, size: int):
        self.task, self.n, self.size = task, n, size
        self.solutions: dict[str, list[str]] = defaultdict(list)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], answer: Sequence[str],
                 id: Sequence[Any] | None = None, **columns: Any) -> list[float]:  # noqa: A002 (the column's name)
        keys = [str(i) if i is not None else p for i, p in zip(id or [None] * len(prompts), prompts)]
        correct = [self.task.is_correct(c, Example(p, a, {k: v[i] for k, v in columns.items()}))
                   for i, (p, c, a) in enumerate(zip(prompts, completions, answer))]
        scores = [novelty(c, self.solutions[k], self.n) if ok else 0.0 for k, c, ok in zip(keys, completions, correct)]
        for k, c, ok in zip(keys, completions, correct):
            if ok and c not in self.solutions[k]:
                self.solutions[k] = (self.solutions[k] + [c])[-self.size:]
        return scores


@dataclass
class Config(rl.Config):
    population: int = 3
    """Policies in the population (1: a single policy)."""
    exploit_every: int = 5
    """Steps each member takes between select-and-perturb rounds."""
    perturb_factors: list[float] = field(default_factory=lambda: [0.8, 1.25])
    """Learning-rate multipliers drawn at the start (members after the first) and at every explore step."""
    novelty_coef: float = 0.2
    """Weight of the novelty reward (0 disables)."""
    novelty_ngram: int = 3
    """n of the character n-grams compared by the novelty distance."""
    archive_size: int = 8
    """Most archived correct solutions per prompt."""

    def __post_init__(self):
        super().__post_init__()
        require(self.population >= 1, "population must be >= 1")
        require(self.steps >= self.population, "steps is the whole budget: at least one step per member")
        require(self.exploit_every >= 1 and self.novelty_ngram >= 1 and self.archive_size >= 1,
                "exploit_every, novelty_ngram and archive_size must be >= 1")
        require(self.novelty_coef >= 0, "novelty_coef must be >= 0")
        require(bool(self.perturb_factors) and all(f > 0 for f in self.perturb_factors), "perturb_factors must be > 0")
        require(self.eval_k >= 2, "eval_k must be >= 2 (pass@k and diversity need several samples per problem)")


class Member(rl.Trainer):
    """One member of the population: GRPO with the shared novelty archive as one more reward component."""

    def __init__(self, cfg: Config, archive: NoveltyArchive | None, **kwargs: Any):
        self.archive = archive
        super().__init__(cfg, **kwargs)

    def _reward_specs(self) -> list[RewardSpec]:
        specs = super()._reward_specs()
        if self.archive is not None and self.cfg.novelty_coef > 0:
            specs.append(RewardSpec("novelty", self.archive, self.cfg.novelty_coef))
        return specs


def select_and_perturb(fitness: Sequence[float], scales: Sequence[float], factor: float) -> tuple[int, int, list[float]]:
    """PBT's truncation step for a population: (best, worst, new lr scales): the worst member (lowest fitness;
    the later index on ties) takes the best's scale (the earlier index on ties) times `factor`."""
    best = max(range(len(fitness)), key=lambda i: (fitness[i], -i))
    worst = min(range(len(fitness)), key=lambda i: (fitness[i], -i))
    new = list(scales)
    if best != worst:
        new[worst] = scales[best] * factor
    return best, worst, new


def diversity(samples: list[list[str]], correct: list[list[bool]]) -> dict[str, float]:
    """Over problems with k samples each: mean distinct completions / k, and mean distinct correct completions."""
    distinct = [len(set(s)) / len(s) for s in samples]
    distinct_correct = [len({c for c, ok in zip(s, oks) if ok}) for s, oks in zip(samples, correct)]
    return {"distinct": sum(distinct) / len(distinct), "distinct_correct": sum(distinct_correct) / len(distinct_correct)}


def sample_eval(members: list[rl.Trainer], examples: list[Example], k: int, seed: int) -> dict[str, float]:
    """pass@1, pass@k and diversity of k samples per problem at temperature 1, split evenly over `members`
    (the first k % len(members) members draw one more)."""
    shares = [k // len(members) + (i < k % len(members)) for i in range(len(members))]
    generator = torch.Generator().manual_seed(seed)
    per_problem: list[list[str]] = [[] for _ in examples]
    for m, share in zip(members, shares):
        if not share:
            continue
        sampling = SamplingConfig(temperature=1.0, max_new_tokens=m.cfg.sampling.max_new_tokens)
        for start in range(0, len(examples), 64):
            chunk = examples[start : start + 64]
            batch = m.engine.generate([m.render(e.prompt) for e in chunk], share, sampling, generator)
            for i in range(len(chunk)):
                per_problem[start + i] += batch.completions[i * share : (i + 1) * share]
    task = members[0].task
    correct = [[task.is_correct(c, e) for c in s] for s, e in zip(per_problem, examples)]
    n = len(examples)
    return {"pass@1": sum(sum(c) / k for c in correct) / n, f"pass@{k}": sum(pass_at_k(k, sum(c), k) for c in correct) / n,
            **diversity(per_problem, correct)}


def run(cfg: Config) -> dict:
    rng = random.Random(f"{cfg.seed}:pbt")
    archive_task = rl.make_task(cfg.task, cfg.data_dir or None)
    archive = NoveltyArchive(archive_task, cfg.novelty_ngram, cfg.archive_size) if cfg.novelty_coef > 0 else None
    per_member = cfg.steps // cfg.population
    root = cfg.output_dir or f"runs/dspro-{time.strftime('%Y%m%d-%H%M%S')}"
    members = [Member(dataclasses.replace(cfg, seed=cfg.seed + i, steps=per_member, population=1,
                                          output_dir=f"{root}/member-{i}"), archive)
               for i in range(cfg.population)]
    scales = [1.0] + [rng.choice(cfg.perturb_factors) for _ in range(cfg.population - 1)]
    held_out = members[0].held_out
    before = sample_eval(members[:1], held_out, cfg.eval_k, cfg.seed)
    rounds: list[dict] = []
    with progress(f"dspro (population {cfg.population})", per_member * cfg.population) as bar:
        done = 0
        while done < per_member:
            turn = min(cfg.exploit_every, per_member - done)
            fitness = []
            for m, scale in zip(members, scales):
                m.state.lr_scale = scale
                m._apply_lr_scale()
                accs = []
                for _ in range(turn):
                    m.state.step += 1
                    metrics, _ = m.step()
                    m.run.log(m.state.step, metrics)
                    accs.append(metrics.get("accuracy", metrics["reward/mean"]))
                    bar.advance()
                fitness.append(sum(accs) / len(accs))
            done += turn
            row: dict[str, Any] = {"step": done, "fitness": fitness, "lr_scales": list(scales)}
            if cfg.population > 1 and done < per_member:
                best, worst, scales = select_and_perturb(fitness, scales, rng.choice(cfg.perturb_factors))
                if best != worst:
                    members[worst].model.load_state_dict(members[best].model.state_dict())
                    members[worst].optimizer.load_state_dict(members[best].optimizer.state_dict())
                    members[worst].dist.sync_engine(members[worst].engine, members[worst].model)
                row.update({"best": best, "replaced": worst})
            rounds.append(row)
    best = max(range(cfg.population), key=lambda i: rounds[-1]["fitness"][i])
    after_best = sample_eval([members[best]], held_out, cfg.eval_k, cfg.seed)
    after_population = sample_eval(members, held_out, cfg.eval_k, cfg.seed) if cfg.population > 1 else after_best
    table = {"base": before, "best member": after_best, "population": after_population}
    keys = list(before)
    lines = [f"{'':<12} " + " ".join(f"{k:>16}" for k in keys)]
    lines += [f"{w:<12} " + " ".join(f"{t[k]:>16.3f}" for k in keys) for w, t in table.items()]
    print(f"held-out ({len(held_out)} problems, {cfg.eval_k} samples each at temperature 1):\n" + "\n".join(lines))
    result = {"table": table, "rounds": rounds, "best": best,
              "archive_solutions": sum(map(len, archive.solutions.values())) if archive else 0}
    for m in members:
        m.dist.save_model(m.model, m.tokenizer, m.run.dir / "model")
        m.run.close()
    (members[0].run.dir.parent / "summary.json").write_text(json.dumps(result, indent=1))
    return result
