"""Multi-turn rollouts with and without K/V reuse (`reasonloop bench which=multiturn [multiturn.* ...]`).

The same episodes run through `MultiTurnEngine` twice per repeat, interleaved, under one seed:

- reuse:     each turn continues from the cached K/V; an observation is prefilled onto it;
- reprefill: turn by turn, every live conversation is re-read from its first token.

Workload: held-out tool_arith problems with the tiny-tool model and the calculator; the first turn of
every episode is scripted to start a call on the problem's chain (`<think><tool name="calc">CHAIN</tool>`),
so every episode has at least two turns; the model writes everything after the observation. Reported:
seconds, sampled and prefilled tokens, sampled tokens/s, the median paired reuse/reprefill speed ratio,
and whether both engines sampled the same tokens.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from reasonloop.config import require


@dataclass
class MultiturnBenchConfig:
    problems: int = 32
    """Held-out problems; their episodes advance in one batch."""
    group_size: int = 4
    """Episodes per problem."""
    max_turns: int = 3
    """Turns per episode."""
    max_new_tokens: int = 48
    """Token limit per turn."""
    repeats: int = 3
    """Timed runs of each engine, interleaved."""

    def __post_init__(self):
        require(self.problems > 0 and self.group_size > 0 and self.max_turns > 0 and self.repeats > 0,
                "multiturn.problems, group_size, max_turns and repeats must be > 0")
        require(self.max_new_tokens > 0, "multiturn.max_new_tokens must be > 0")


class _FirstCall:
    """Forces each episode's first turn to call the calculator on its problem; the model does the rest."""

    def __init__(self, tokenizer, texts: dict[str, str]):
        self.eos = tokenizer.eos_token_id
        self.ids = {p: tokenizer(t, add_special_tokens=False)["input_ids"] for p, t in texts.items()}

    def __call__(self, logits, eps):
        out = logits.clone()
        for row, ep in enumerate(eps):
            script, done = self.ids[ep.example.prompt], sum(ep.policy)
            if done < len(script):
                out[row] = float("-inf")
                out[row, script[done]] = 0.0
        return out


def run(bench_cfg, model_dir: str | None = None) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reasonloop.agents import tool_env_factory
    from reasonloop.models.loading import resolve_model_path
    from reasonloop.rollout.engine import SamplingConfig
    from reasonloop.rollout.multiturn import EpisodeBudget, MultiTurnEngine
    from reasonloop.tasks.tool_arith import ToolArithTask, tool_call

    from reasonloop.train.run import set_threads

    set_threads(bench_cfg.threads)
    cfg: MultiturnBenchConfig = bench_cfg.multiturn
    path = model_dir or resolve_model_path("tiny-tool")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    examples = ToolArithTask().examples("test", cfg.problems, seed=bench_cfg.seed)
    choose = _FirstCall(tok, {ex.prompt: "<think>" + tool_call(ex.meta["id"]) for ex in examples})
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=cfg.max_new_tokens)
    budget = EpisodeBudget(cfg.max_turns, 192, 32)
    engines = {name: MultiTurnEngine(model, tok, tool_env_factory(["calc"]), budget, reuse_kv=name == "reuse",
                                     choose=choose) for name in ("reuse", "reprefill")}
    runs: dict[str, list[dict]] = {name: [] for name in engines}
    same = True
    for _ in range(cfg.repeats):
        batches = {}
        for name, engine in engines.items():
            engine.generated = engine.prefilled = 0
            start = time.perf_counter()
            batches[name] = engine.episodes(examples, cfg.group_size, sampling, torch.Generator().manual_seed(bench_cfg.seed))
            seconds = time.perf_counter() - start
            engine.metrics()
            runs[name].append({"seconds": seconds, "generated": engine.generated, "prefilled": engine.prefilled,
                               "tokens_per_s": engine.generated / seconds})
        same = same and torch.equal(batches["reuse"].completion_ids, batches["reprefill"].completion_ids)
    ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(runs["reuse"], runs["reprefill"])]
    turns = float((batches["reuse"].completion_mask - batches["reuse"].policy_mask).sum())
    result = {"runs": runs, "ratio_median": statistics.median(ratios), "same_tokens": same,
              "episodes": cfg.problems * cfg.group_size, "observation_tokens": turns}
    for name, rs in runs.items():
        med = statistics.median(r["tokens_per_s"] for r in rs)
        times = ", ".join(f"{r['seconds']:.2f}" for r in rs)
        print(f"{name:10s} sampled {rs[-1]['generated']:6d}  prefilled {rs[-1]['prefilled']:7d}  "
              f"median {med:8.0f} sampled tokens/s  ({times} s)")
    print(f"reuse / reprefill: {result['ratio_median']:.2f}x (median of paired runs); same tokens: {same}")
    return result
