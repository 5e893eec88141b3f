"""`reasonloop search`: test-time compute on a task's held-out split — accuracy against compute.

Every entry of `strategies` (`name` or `name:scorer`, e.g. `best_of_n:prm`) runs at every budget of
`budgets` (search.n: samples, beams, leaves or simulations; see `search.SearchConfig`) on the same
problems with the same seed. For each (strategy, budget) it records accuracy (overall and per level)
and the compute it actually spent per problem: tokens the policy sampled, tokens it read without
sampling (prompts, re-read partial solutions) and tokens the PRM/ORM read. Results go to the run
directory: `scaling.csv` (one row per strategy and budget), `summary.json` and `scaling.png`
(accuracy against generated tokens and against all forward tokens, log-x, one line per strategy).

`scorer=verifier` scores with the task's exact check: an oracle upper bound, labelled "(oracle)".

With `allocate.candidates=[...]` it also chooses a compute-optimal allocation (Snell et al. 2024): a pilot
estimates each problem's difficulty, problems are bucketed, and per bucket a candidate and budget (or stopping
at the pilot's vote) is chosen on `allocate.select_problems` further problems of the split, then evaluated on
the held-out ones (`compute_optimal` rows; `allocation.json` holds the per-bucket tables and choices; the maths
is `search/allocate.py`).
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

from reasonloop.config import ConfigError, require, require_choice
from reasonloop.data.records import Example
from reasonloop.models.loading import ModelConfig, drop_long_prompts, load_policy, model_label, render_prompt
from reasonloop.rewards.step_tokens import ArithmeticStepCheck, ArithmeticStepOracle
from reasonloop.rollout.engine import RolloutConfig, SamplingConfig, build_engine
from reasonloop.search import STRATEGIES, CountingEngine, SearchConfig, SearchResult, search
from reasonloop.search import allocate as alloc
from reasonloop.search.base import SCORERS
from reasonloop.search.strategies import majority_vote, prm_outcome_scorer
from reasonloop.tasks import make_task
from reasonloop.train.evaluation import answer_key
from reasonloop.train.run import Run, progress, set_seed, set_threads
from reasonloop.train.runconfig import RunConfig


@dataclass
class AllocateConfig:
    candidates: list[str] = field(default_factory=list)
    """Compute-optimal allocation (docs/test_time_compute.md): the strategy entries (as in `strategies`) it may
    choose per difficulty bucket, each at every budget of `budgets`; empty: no allocation. The candidates' rows
    come from their bucket-by-bucket runs on the same held-out problems."""
    pilot: int = 4
    """Pilot samples per problem, from which its difficulty is estimated (their compute is charged)."""
    difficulty: str = "agreement"
    """agreement (1 - the winning answer's share of the pilot samples), prm (1 - their mean PRM score, aggregated
    by search.aggregate; needs search.prm) or verifier (1 - the fraction right: oracle difficulty, labelled so)."""
    bins: int = 4
    """Difficulty buckets: equal-count quantiles of the selection problems' difficulties (ties are never split)."""
    select_problems: int = 200
    """Problems the allocation is chosen on: the next ones of `split` after the `problems` it is evaluated on."""
    cost: str = "generated"
    """The compute a budget limits: generated (tokens the policy sampled) or forward (every token read or written)."""

    def __post_init__(self):
        require(self.pilot >= 1 and self.bins >= 1 and self.select_problems >= 1,
                "allocate.pilot, allocate.bins and allocate.select_problems must be >= 1")
        require_choice("allocate.difficulty", self.difficulty, ["agreement", "prm", "verifier"])
        require_choice("allocate.cost", self.cost, list(alloc.COSTS))


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
    allocate: AllocateConfig = field(default_factory=AllocateConfig)
    """Compute-optimal allocation per difficulty bucket (off unless allocate.candidates is set)."""

    def __post_init__(self):
        super().__post_init__()
        require(self.problems > 0 and self.batch_prompts > 0, "problems and batch_prompts must be > 0")
        require(bool(self.budgets) and all(isinstance(b, int) and b >= 1 for b in self.budgets),
                f"budgets={self.budgets}: a non-empty list of integers >= 1")
        require(bool(self.strategies) or bool(self.allocate.candidates),
                "strategies is empty: name at least one (e.g. strategies=[majority])")
        for entry in [*self.strategies, *self.allocate.candidates]:
            parse_entry(entry, self.search)
        require(self.allocate.difficulty != "prm" or bool(self.search.prm),
                "allocate.difficulty=prm needs search.prm=<directory of `reasonloop prm`>")


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
    entries = [parse_entry(e, cfg.search) for e in cfg.strategies if e not in cfg.allocate.candidates]
    candidates = [parse_entry(e, cfg.search) for e in cfg.allocate.candidates]
    pilot = pilot_config(cfg) if candidates else None
    task = make_task(cfg.task, cfg.data_dir or None)
    models = load_reward_models(cfg.search, needed_models(entries + candidates + ([pilot] if pilot else [])), cfg.task)
    tokenizer, model = load_policy(cfg.model, task)
    render = lambda p: render_prompt(tokenizer, p, cfg.model.use_chat_template)  # noqa: E731
    drawn = task.examples(cfg.split, cfg.problems + (cfg.allocate.select_problems if candidates else 0), seed=cfg.seed)
    keep = lambda exs, what: drop_long_prompts(exs, tokenizer, render, model, cfg.sampling.max_new_tokens,  # noqa: E731
                                               f"{cfg.task}/{what}")
    examples = keep(drawn[:cfg.problems], cfg.split)
    select = keep(drawn[cfg.problems:], f"{cfg.split} (allocation selection)") if candidates else []
    if candidates and not select:
        raise ConfigError(f"allocate: task {cfg.task} has no {cfg.split} problems left after the first "
                          f"{cfg.problems} to choose the allocation on; lower problems=")
    run_.start()
    engine = build_engine(cfg.rollout, model, tokenizer)
    rows: list[dict] = []
    runs = [(e, b) for e in entries for b in cfg.budgets]
    with progress("search", len(runs)) as bar:
        for scfg, budget in runs:  # the allocation's candidates run bucket by bucket, below
            scfg = replace(scfg, n=budget)
            bar.set(f"{label(scfg)} n={budget}")
            results, compute = run_one(engine, task, examples, render, cfg.sampling, scfg, models, cfg.seed,
                                       cfg.batch_prompts)
            acc = accuracy_table(task, results)
            rows.append({"strategy": label(scfg), "n": budget, "accuracy": acc["overall"],
                         **{k: round(v, 2) for k, v in compute.items()},
                         **{k: v for k, v in acc.items() if k != "overall"}})
            bar.advance()
    allocation = None
    if candidates:
        def run_on(exs, scfg, seed):
            return run_one(engine, task, exs, render, cfg.sampling, scfg, models, seed, cfg.batch_prompts)

        allocation = compute_optimal(cfg, run_on, task, {"select": select, "held_out": examples}, candidates, pilot)
        rows += allocation.pop("rows")
        run_.write_json("allocation.json", allocation)
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
    if allocation:
        print(format_allocation(allocation))
    print(f"written to {run_.dir}" + ("" if plotted else " (no scaling.png: matplotlib is not installed)"))
    run_.close()
    return summary


# -- compute-optimal allocation (search/allocate.py has the maths) ------------------------------------------------

def pilot_config(cfg: Config) -> SearchConfig:
    """The pilot: `allocate.pilot` samples per problem, scored by what the difficulty estimate reads."""
    how = cfg.allocate.difficulty
    if how == "agreement":
        return replace(cfg.search, strategy="majority", n=cfg.allocate.pilot)
    return replace(cfg.search, strategy="best_of_n", scorer=how, n=cfg.allocate.pilot)


def pilot_difficulties(task, results: list[SearchResult], how: str) -> tuple[list[float], list[bool]]:
    """(difficulty of each problem, whether the pilot's majority vote answers it right)."""
    diffs, right = [], []
    for r in results:
        keys = [answer_key(task, c) for c in r.candidates]
        chosen, _ = majority_vote(keys)
        right.append(chosen is not None and bool(task.is_correct(r.candidates[chosen], r.example)))
        diffs.append(alloc.agreement_difficulty(keys) if how == "agreement" else alloc.score_difficulty(r.scores))
    return diffs, right


def compute_optimal(cfg: Config, run_on, task, splits: dict[str, list[Example]], candidates: list[SearchConfig],
                    pilot: SearchConfig) -> dict:
    """Pilot every problem of both splits, bucket them by the selection split's difficulty quantiles, run every
    candidate at every budget bucket by bucket, choose an allocation on the selection split for each budget
    level and evaluate it on the held-out split. `run_on(examples, search_config, seed) -> (results, compute
    per problem)`. Returns the rows of scaling.csv (`rows`) and everything behind them (allocation.json)."""
    a = cfg.allocate
    options = [(alloc.Option(label(c), b), replace(c, n=b)) for c in candidates for b in cfg.budgets]
    names = {o: o.strategy for o, _ in options}
    out: dict[str, Any] = {"difficulty": a.difficulty, "pilot": a.pilot, "cost": a.cost, "splits": {}}
    pilots, tables, buckets = {}, {}, {}
    for split, exs in splits.items():
        # the pilot draws from its own seed: the samples a strategy answers with never bucketed their problem
        results, compute = run_on(exs, pilot, cfg.seed + 1)
        diffs, right = pilot_difficulties(task, results, a.difficulty)
        pilots[split] = (alloc.Cell(sum(right), compute["generated_tokens"] * len(exs),
                                    compute["forward_tokens"] * len(exs)), diffs, right)
    edges = alloc.quantile_edges(pilots["select"][1], a.bins)
    with progress("allocate", 2 * (len(edges) + 1) * len(options)) as bar:
        for split, exs in splits.items():
            _, diffs, right = pilots[split]
            buckets[split] = alloc.assign_buckets(diffs, edges)
            table: list[dict[alloc.Option, alloc.Cell]] = []
            for b in range(len(edges) + 1):
                idx = [i for i, k in enumerate(buckets[split]) if k == b]
                cells = {alloc.PILOT: alloc.Cell(sum(right[i] for i in idx))}
                for option, scfg in options:
                    bar.set(f"{split} bucket {b} {names[option]} n={option.budget}")
                    if idx:
                        results, compute = run_on([exs[i] for i in idx], scfg, cfg.seed)
                        cells[option] = alloc.Cell(sum(r.completion is not None and bool(task.is_correct(r.completion, r.example))
                                                       for r in results),
                                                   compute["generated_tokens"] * len(idx), compute["forward_tokens"] * len(idx))
                    else:
                        cells[option] = alloc.Cell(0)
                    bar.advance()
                table.append(cells)
            tables[split] = table
            out["splits"][split] = {
                "problems": len(exs), "bucket_sizes": [buckets[split].count(b) for b in range(len(edges) + 1)],
                "pilot": {"correct": pilots[split][0].correct, "generated": pilots[split][0].generated,
                          "forward": pilots[split][0].forward},
                "table": [{str(o): c.__dict__ for o, c in cells.items()} for cells in table]}
    out["edges"] = edges
    out["rows"], out["choices"] = allocation_rows(cfg, tables, {s: p[0] for s, p in pilots.items()},
                                                  {s: len(e) for s, e in splits.items()}, options, names)
    return out


def allocation_rows(cfg: Config, tables, pilot_cells, sizes, options, names) -> tuple[list[dict], list[dict]]:
    """Every candidate at every budget (its held-out cells summed over buckets), and the compute-optimal
    allocation chosen on the selection split at each budget level: at most what the first candidate spends there
    at that budget, per problem."""
    held, sel = tables["held_out"], tables["select"]
    n_held, n_sel = sizes["held_out"], sizes["select"]
    rows, choices = [], []
    for option, _ in options:
        c = alloc.evaluate(alloc.Allocation(tuple(option for _ in held), 0, 0.0, pilot=False), held, alloc.Cell(0))
        rows.append({"strategy": names[option], "n": option.budget, "accuracy": c.correct / n_held,
                     "generated_tokens": round(c.generated / n_held, 2), "forward_tokens": round(c.forward / n_held, 2)})
    oracle = cfg.allocate.difficulty == "verifier" or any("oracle" in n for n in names.values())
    first = options[0][0].strategy
    for budget in cfg.budgets:
        option = alloc.Option(first, budget)
        target = sum(getattr(cells[option], cfg.allocate.cost) for cells in sel)
        choice = alloc.allocate(sel, getattr(pilot_cells["select"], cfg.allocate.cost), target, cfg.allocate.cost)
        if choice is None:
            continue
        c = alloc.evaluate(choice, held, pilot_cells["held_out"])
        how = (" | ".join(map(str, choice.options)) if choice.pilot else f"{choice.options[0]} everywhere, no pilot")
        choices.append({"n": budget, "target": target / n_sel, "allocation": how, "pilot": choice.pilot,
                        "select_accuracy": choice.correct / n_sel, "select_cost": choice.cost / n_sel,
                        "held_out_accuracy": c.correct / n_held, "held_out_generated": c.generated / n_held,
                        "held_out_forward": c.forward / n_held})
        rows.append({"strategy": "compute_optimal" + (" (oracle)" if oracle else ""), "n": budget,
                     "accuracy": c.correct / n_held, "generated_tokens": round(c.generated / n_held, 2),
                     "forward_tokens": round(c.forward / n_held, 2), "allocation": how})
    return rows, choices


def format_allocation(allocation: dict) -> str:
    sel = allocation["splits"]["select"]
    lines = [f"difficulty={allocation['difficulty']} (pilot {allocation['pilot']}), bucket edges "
             f"{[round(e, 3) for e in allocation['edges']]}, selection bucket sizes {sel['bucket_sizes']}, "
             f"held-out {allocation['splits']['held_out']['bucket_sizes']}"]
    for ch in allocation["choices"]:
        lines.append(f"  N={ch['n']:<3} <= {ch['target']:7.1f} {allocation['cost']} tokens: {ch['allocation']}  "
                     f"(selection {ch['select_accuracy']:.3f}, held-out {ch['held_out_accuracy']:.3f} "
                     f"at {ch['held_out_generated']:.1f} generated tokens)")
    return "\n".join(lines)


def format_rows(rows: list[dict]) -> str:
    width = max(len(r["strategy"]) for r in rows)
    head = f"{'strategy':<{width}} {'N':>4} {'accuracy':>9} {'gen tok':>9} {'fwd tok':>9}"
    lines = [head] + [f"{r['strategy']:<{width}} {r['n']:>4} {r['accuracy']:>9.3f} {r['generated_tokens']:>9.1f} "
                      f"{r['forward_tokens']:>9.1f}" for r in rows]
    return "\n".join(lines)
