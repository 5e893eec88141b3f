"""Step-level search with and without prefix reuse (`reasonloop bench which=search [search.* ...]`).

For each strategy (`search.strategies`, default beam and mcts) the same search runs on the same
held-out problems of the embedded arithmetic task, under the same seed, through two engines:

- reuse:   `rollout.prefix_cache.TreeEngine`: partial solutions continue from their cached K/V, each
           prompt is read once;
- prefill: the ordinary sampler (`TorchSampler`, the bench's `rollout.*` switches) behind
           `CountingEngine`: every extension re-reads `prompt + partial solution`.

Both search the same tree (the picks are compared and printed). Per run: wall seconds, generated
tokens (sampled), prefilled tokens (read without sampling) and generated tokens/s; per strategy the
median tokens/s of each engine and the median of the paired reuse/prefill ratios (runs interleave, so
a load change on a shared machine hits both; `warmup` untimed searches of two problems come first). Steps are scored by `ArithmeticStepCheck`, the task's exact step
check standing in for a trained PRM: it costs no forward passes, so the timing is the policy's alone.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from reasonloop.config import require

@dataclass
class SearchBenchConfig:
    strategies: list[str] = field(default_factory=lambda: ["beam", "mcts"])
    """Step-level strategies to time (beam, dvts, mcts)."""
    problems: int = 16
    """Held-out arithmetic problems searched in one call (their live nodes are batched together)."""
    n: int = 8
    """The search budget N (beams; dvts leaves; mcts simulations)."""
    beam_width: int = 4
    """M: expansions per kept beam / per dvts subtree / per new mcts node."""
    max_steps: int = 8
    """Step expansions before live beams are finished in one go."""
    max_new_tokens: int = 64
    """Token limit per step and per solution."""
    temperature: float = 1.0
    """Sampling temperature."""
    repeats: int = 2
    """Runs of each (strategy, engine) pair, interleaved."""

    def __post_init__(self):
        bad = [s for s in self.strategies if s not in ("beam", "dvts", "mcts")]
        require(not bad and bool(self.strategies), f"search.strategies: {bad or '[]'} — use beam, dvts, mcts")
        require(self.problems > 0 and self.n > 0 and self.beam_width > 0 and self.max_steps > 0,
                "search.problems, n, beam_width and max_steps must be > 0")
        require(self.max_new_tokens > 0 and self.temperature >= 0 and self.repeats > 0,
                "search.max_new_tokens > 0, temperature >= 0, repeats > 0")


def run(cfg, model_dir: str) -> dict:
    """Time `cfg.search.strategies` with and without prefix reuse; print and return the figures."""
    from reasonloop.models.loading import ModelConfig, load_model, load_tokenizer
    from reasonloop.rewards.step_tokens import ArithmeticStepCheck
    from reasonloop.rollout.engine import SamplingConfig
    from reasonloop.rollout.prefix_cache import TreeEngine
    from reasonloop.rollout.sampler import TorchSampler
    from reasonloop.search import SearchConfig, search
    from reasonloop.search.base import CountingEngine
    from reasonloop.tasks import make_task
    from reasonloop.train.evaluation import answer_key
    from reasonloop.train.run import set_threads

    set_threads(cfg.threads)
    b = cfg.search
    task = make_task("arithmetic")
    tok, model = load_tokenizer(model_dir, task), load_model(ModelConfig(name=model_dir, device="cpu"), task).eval()
    examples = task.examples("test", b.problems, seed=cfg.seed)
    sampling = SamplingConfig(temperature=b.temperature, max_new_tokens=b.max_new_tokens)
    engines = {
        "reuse": lambda: TreeEngine(model, tok),
        "prefill": lambda: CountingEngine(TorchSampler(model, tok, static_cache=cfg.rollout.static_cache,
                                                       fused_decode=cfg.rollout.fused_decode)),
    }
    results: dict = {"config": {"model": model_dir, "threads": cfg.threads, "seed": cfg.seed, **b.__dict__},
                     "strategies": {}}
    print(f"search bench: {b.problems} problems, N={b.n}, M={b.beam_width}, max_steps={b.max_steps}, "
          f"{cfg.threads} thread(s) (wall-clock figures: a machine shared with other jobs moves them)")
    for strategy in b.strategies:
        scfg = SearchConfig(strategy, n=b.n, beam_width=b.beam_width, max_steps=b.max_steps, scorer="prm",
                            aggregate="min")
        for _ in range(cfg.warmup):  # untimed: lazy imports, the compiled decode step's first build/load
            for make in engines.values():
                search(make(), examples[:2], lambda p: p, sampling, scfg, lambda c: answer_key(task, c),
                       generator=torch.Generator().manual_seed(cfg.seed), prm=ArithmeticStepCheck())
        runs: dict[str, list[dict]] = {name: [] for name in engines}
        picks: dict[str, list] = {}
        for _ in range(b.repeats):
            for name, make in engines.items():
                engine = make()
                start = time.perf_counter()
                out = search(engine, examples, lambda p: p, sampling, scfg, lambda c: answer_key(task, c),
                             generator=torch.Generator().manual_seed(cfg.seed), prm=ArithmeticStepCheck())
                seconds = time.perf_counter() - start
                picks[name] = [r.completion for r in out]
                runs[name].append({"seconds": seconds, "generated": engine.generated, "prefilled": engine.prefilled,
                                   "tokens_per_s": engine.generated / seconds,
                                   "accuracy": sum(r.completion is not None and task.is_correct(r.completion, r.example)
                                                   for r in out) / len(out)})
        ratios = [a["tokens_per_s"] / p["tokens_per_s"] for a, p in zip(runs["reuse"], runs["prefill"])]
        row = {name: {"runs": rs, "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
                      "generated": rs[0]["generated"], "prefilled": rs[0]["prefilled"], "accuracy": rs[0]["accuracy"]}
               for name, rs in runs.items()}
        row["speedup"] = statistics.median(ratios)
        row["ratios"] = ratios
        row["same_picks"] = picks["reuse"] == picks["prefill"]
        results["strategies"][strategy] = row
        for name in engines:
            e = row[name]
            secs = ", ".join(f"{x['seconds']:.2f}s" for x in e["runs"])
            print(f"{strategy:5s} {name:7s} {e['tokens_per_s']:7.0f} generated tok/s  generated {e['generated']:6d}  "
                  f"prefilled {e['prefilled']:6d}  runs {secs}")
        fewer = row["prefill"]["prefilled"] / max(1, row["reuse"]["prefilled"])
        print(f"{strategy:5s} reuse/prefill: {row['speedup']:.2f}x generated tokens/s (runs "
              f"{', '.join(f'{x:.2f}' for x in ratios)}), {fewer:.1f}x fewer prefilled tokens; same picks: "
              f"{row['same_picks']}; accuracy {row['reuse']['accuracy']:.2f}")
    return results
