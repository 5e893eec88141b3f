"""`reasonloop search`: test-time compute on a task's held-out split — accuracy against compute.

Every entry of `strategies` (`name` or `name:scorer`, e.g. `best_of_n:prm`) runs at every budget of
`budgets` (search.n: samples, beams, leaves or simulations; see `search.SearchConfig`) on the same
problems with the same seed. For each (strategy, budget) it records accuracy (overall and per level)
and the compute it actually spent per problem: tokens the policy sampled, tokens it read without
sampling (prompts, re-read partial solutions) and tokens the PRM/ORM read. Results go to the run
directory: `scaling.csv` (one row per strategy and budget), `summary.json` and `scaling.png`
(accuracy against generated tokens and against all forward tokens, log-x, one line per strategy).

`scorer=verifier` scores with the task's exact check: an oracle upper bound, labelled "(oracle)".
"""

from __future__ import annotations

import csv
import functools
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from reasonloop.config import ConfigError, require
from reasonloop.data.records import Example
from reasonloop.models.loading import ModelConfig, drop_long_prompts, load_policy, model_label, render_prompt
from reasonloop.rewards.step_tokens import ArithmeticStepCheck, ArithmeticStepOracle
from reasonloop.rollout.engine import RolloutConfig, SamplingConfig, build_engine
from reasonloop.search import STRATEGIES, CountingEngine, SearchConfig, SearchResult, search
from reasonloop.search.base import SCORERS
from reasonloop.search.strategies import prm_outcome_scorer
from reasonloop.tasks import make_task
from reasonloop.train.evaluation import answer_key
from reasonloop.train.run import Run, progress, set_seed, set_threads
from reasonloop.train.runconfig import RunConfig



@dataclass
class Config(RunConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy that samples (default: the embedded tiny-arith base model)."""
    task: str = "arithmetic"
    """Task name; NAME:ARG passes an argument (arithmetic:2-4)."""
    data_dir: str = ""
    """Data location for file-backed tasks."""
    split: str = "test"
    """The held-out split searched."""
    problems: int = 200
    """Problems (spread over the task's levels)."""
    strategies: list[str] = field(default_factory=lambda: ["majority", "best_of_n:verifier", "weighted_best_of_n:likelihood"])
    """Strategies to compare, each `name` or `name:qualifier`: the outcome scorer (verifier, orm, prm, likelihood;
    e.g. best_of_n:prm), refine's feedback (refine:prm) or mcts's value (mcts:rollout). beam and dvts pick with
    the PRM unless a scorer is named. Anything reading the task's verifier is labelled (oracle)."""
    budgets: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    """Values of search.n each strategy runs at."""
    search: SearchConfig = field(default_factory=SearchConfig)
    """Every strategy's knobs (search.strategy and search.n are set per entry and budget)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """The policy's sampling parameters."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """The rollout engine."""
    batch_prompts: int = 50
    """Problems per search call (all their samples share engine calls)."""

    def __post_init__(self):
        super().__post_init__()
        require(self.problems > 0 and self.batch_prompts > 0, "problems and batch_prompts must be > 0")
        require(bool(self.budgets) and all(isinstance(b, int) and b >= 1 for b in self.budgets),
                f"budgets={self.budgets}: a non-empty list of integers >= 1")
        require(bool(self.strategies), "strategies is empty: name at least one (e.g. strategies=[majority])")
        for entry in self.strategies:
            parse_entry(entry, self.search)


TREE = ("beam", "dvts", "mcts")
QUALIFIER = {"refine": ("feedback", ("verifier", "prm", "self")), "mcts": ("value", ("prm", "rollout"))}


def parse_entry(entry: str, base: SearchConfig) -> SearchConfig:
    """'best_of_n:prm' -> the base search config with that strategy and qualifier (validated). The qualifier
    is the outcome scorer, except for refine (its feedback) and mcts (its value); beam and dvts pick their
    answer with the PRM unless a scorer is named."""
    name, _, qual = str(entry).partition(":")
    if name not in STRATEGIES:
        raise ConfigError(f"strategies: {name!r} is not a search strategy; known: {sorted(STRATEGIES)}")
    key, choices = QUALIFIER.get(name, ("scorer", SCORERS))
    if qual and qual not in choices:
        raise ConfigError(f"strategies: {entry!r}: {key} {qual!r} is not one of {list(choices)}")
    cfg = replace(base, strategy=name, **({key: qual} if qual else {}))
    if name in TREE and not (key == "scorer" and qual) and cfg.scorer == "verifier":
        cfg = replace(cfg, scorer="prm")  # the oracle only where asked for by name
    return cfg


def label(cfg: SearchConfig) -> str:
    """How a strategy is named in tables and plots; anything that consults the task's verifier (or the oracle
    step scorer, search.prm=oracle) is marked."""
    if cfg.strategy in ("majority", "adaptive"):
        return cfg.strategy
    if cfg.prm == "oracle" and "prm" in needed_models([cfg]):
        name = label(replace(cfg, prm=""))
        return name if name.endswith("(oracle)") else name + " (oracle)"
    if cfg.strategy == "refine":
        name, oracle = f"refine:{cfg.feedback}", cfg.feedback == "verifier"
    elif cfg.strategy == "mcts":
        name, oracle = f"mcts:{cfg.value}", cfg.value == "rollout" and cfg.scorer == "verifier"
    else:
        name, oracle = f"{cfg.strategy}:{cfg.scorer}", cfg.scorer == "verifier"
    return name + (" (oracle)" if oracle else "")


STEP_CHECKS = {"oracle": ArithmeticStepOracle, "check": ArithmeticStepCheck}  # search.prm=NAME, arithmetic only


def load_reward_models(cfg: SearchConfig, needed: set[str], task_name: str = "arithmetic") -> dict[str, Any]:
    """The PRM and ORM `cfg` points at, loaded once; a scorer that is needed but not given is an error.
    search.prm=oracle|check are the arithmetic task's exact step scorers (rewards/step_tokens.py)."""
    out: dict[str, Any] = {}
    for kind in ("prm", "orm"):
        path = getattr(cfg, kind)
        if kind in needed and not path:
            raise ConfigError(f"a strategy needs a {kind.upper()}: set search.{kind}=<directory of `reasonloop prm`> "
                              "(arithmetic: or oracle / check, the exact step scorers)" if kind == "prm" else
                              "a strategy needs an ORM: set search.orm=<directory of `reasonloop prm labels=outcome`>")
        if kind == "prm" and path in STEP_CHECKS:
            if task_name.partition(":")[0] != "arithmetic":
                raise ConfigError(f"search.prm={path} is the arithmetic task's step scorer; task={task_name} needs "
                                  "a trained PRM directory")
            out[kind] = STEP_CHECKS[path]()
        elif path:
            if not Path(path).is_dir():
                raise ConfigError(f"search.{kind}={path!r}: no such directory (give the model/ directory of a "
                                  "`reasonloop prm` run)")
            out[kind] = _load_prm(path)
    return out


@functools.lru_cache(maxsize=4)
def _load_prm(path: str):
    from reasonloop.prm import load_prm

    return load_prm(path)


def search_kwargs(cfg: SearchConfig, task) -> dict[str, Any]:
    """The scorers `search(...)` needs for `cfg` (loading its PRM/ORM once per process): self-training and
    distillation use any strategy of `reasonloop search` as their expert/teacher through this."""
    outcome, prm = scorers_for(cfg, task, load_reward_models(cfg, needed_models([cfg]), task.name))
    return {"scorer": outcome, "prm": prm, "verifier": task.is_correct}


def scorers_for(cfg: SearchConfig, task, models: dict[str, Any]):
    """(outcome scorer, step scorer) of one search config."""
    if cfg.scorer == "verifier":
        outcome = lambda ex, comps: [float(task.is_correct(c, ex)) for c in comps]  # noqa: E731
    elif cfg.scorer == "orm":
        outcome = prm_outcome_scorer(models["orm"], "last", cfg.step_delimiters)
    else:
        outcome = None  # prm: search() aggregates the PRM's step scores; likelihood: read from the samples
    return outcome, models.get("prm")


def needed_models(cfgs: list[SearchConfig]) -> set[str]:
    needed = {c.scorer for c in cfgs if c.scorer in ("prm", "orm")}
    if any(c.strategy in ("beam", "dvts") or (c.strategy == "mcts" and c.value == "prm")
           or (c.strategy == "refine" and c.feedback == "prm") for c in cfgs):
        needed.add("prm")
    return needed


def run_one(engine, task, examples: list[Example], render, sampling, scfg: SearchConfig, models, seed: int,
            batch_prompts: int) -> tuple[list[SearchResult], dict[str, float]]:
    """One strategy at one budget over all examples: (results, compute per problem)."""
    outcome, prm = scorers_for(scfg, task, models)
    counting = CountingEngine(engine)
    scorer_models = list(models.values())
    read0 = sum(m.tokens_read for m in scorer_models)
    generator = torch.Generator().manual_seed(seed)
    results: list[SearchResult] = []
    t0 = time.time()
    for start in range(0, len(examples), batch_prompts):
        results += search(counting, examples[start:start + batch_prompts], render, sampling, scfg,
                          lambda c: answer_key(task, c), scorer=outcome, generator=generator, prm=prm,
                          verifier=task.is_correct)
    n = len(examples)
    generated = getattr(counting, "generated", 0)
    prefilled = getattr(counting, "prefilled", 0)
    scored = sum(m.tokens_read for m in scorer_models) - read0
    return results, {"generated_tokens": generated / n, "prefilled_tokens": prefilled / n,
                     "scored_tokens": scored / n, "forward_tokens": (generated + prefilled + scored) / n,
                     "seconds": time.time() - t0}


def accuracy_table(task, results: list[SearchResult]) -> dict[str, float]:
    by_level: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        ok = r.completion is not None and bool(task.is_correct(r.completion, r.example))
        by_level["overall"].append(ok)
        by_level[f"level/{r.example.meta.get('level', 'all')}"].append(ok)
    return {k: sum(v) / len(v) for k, v in sorted(by_level.items())}


def write_plot(path: Path, rows: list[dict], title: str) -> bool:
    """Accuracy against generated tokens and against all forward tokens, log-x; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, x, xlabel in ((axes[0], "generated_tokens", "generated tokens per problem"),
                          (axes[1], "forward_tokens", "forward tokens per problem (policy + PRM/ORM)")):
        for name in dict.fromkeys(r["strategy"] for r in rows):
            pts = sorted((r[x], r["accuracy"]) for r in rows if r["strategy"] == name)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name,
                    linestyle="--" if "oracle" in name else "-")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out accuracy")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run(cfg: Config) -> dict:
    set_threads(cfg.threads)
    set_seed(cfg.seed)
    run_ = Run(cfg, "search")
    entries = [parse_entry(e, cfg.search) for e in cfg.strategies]
    task = make_task(cfg.task, cfg.data_dir or None)
    models = load_reward_models(cfg.search, needed_models(entries), cfg.task)
    tokenizer, model = load_policy(cfg.model, task)
    render = lambda p: render_prompt(tokenizer, p, cfg.model.use_chat_template)  # noqa: E731
    examples = drop_long_prompts(task.examples(cfg.split, cfg.problems, seed=cfg.seed), tokenizer, render, model,
                                 cfg.sampling.max_new_tokens, f"{cfg.task}/{cfg.split}")
    run_.start()
    engine = build_engine(cfg.rollout, model, tokenizer)
    rows: list[dict] = []
    runs = [(e, b) for e in entries for b in cfg.budgets]
    with progress("search", len(runs)) as bar:
        for scfg, budget in runs:
            scfg = replace(scfg, n=budget)
            bar.set(f"{label(scfg)} n={budget}")
            results, compute = run_one(engine, task, examples, render, cfg.sampling, scfg, models, cfg.seed,
                                       cfg.batch_prompts)
            acc = accuracy_table(task, results)
            rows.append({"strategy": label(scfg), "n": budget, "accuracy": acc["overall"],
                         **{k: round(v, 2) for k, v in compute.items()},
                         **{k: v for k, v in acc.items() if k != "overall"}})
            bar.advance()
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(run_.dir / "scaling.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    title = f"{model_label(cfg.model.name, task)} on {cfg.task}/{cfg.split} ({len(examples)} problems)"
    plotted = write_plot(run_.dir / "scaling.png", rows, title)
    summary = {"model": model_label(cfg.model.name, task), "task": cfg.task, "split": cfg.split,
               "problems": len(examples), "rows": rows}
    run_.write_json("summary.json", summary)
    print(format_rows(rows))
    print(f"written to {run_.dir}" + ("" if plotted else " (no scaling.png: matplotlib is not installed)"))
    run_.close()
    return summary


def format_rows(rows: list[dict]) -> str:
    width = max(len(r["strategy"]) for r in rows)
    head = f"{'strategy':<{width}} {'N':>4} {'accuracy':>9} {'gen tok':>9} {'fwd tok':>9}"
    lines = [head] + [f"{r['strategy']:<{width}} {r['n']:>4} {r['accuracy']:>9.3f} {r['generated_tokens']:>9.1f} "
                      f"{r['forward_tokens']:>9.1f}" for r in rows]
    return "\n".join(lines)
