"""Self-training: generate -> score -> select -> fine-tune, for several iterations.

Every method shares `selfimprove.loop.Loop` (sampling, scoring with the task's rewards, SFT on the
kept (prompt, completion) pairs with the loss on completion tokens, held-out greedy pass@1 after each
iteration) and differs only in what it keeps and where fine-tuning starts:

- rft         Rejection-sampling fine-tuning (Yuan et al. 2023): keep samples with reward >= threshold.
- raft        RAFT (Dong et al. 2023): per prompt, the top_k samples by reward (among those >= threshold).
- rest        ReST (Gulcehre et al. 2023): one Grow step (sample) then `rest_improve_steps` Improve steps
              on the same grown set, each with a higher threshold (start -> stop) and its own fine-tune.
- rest_em     ReST-EM (Singh et al. 2023): E-step = sample + keep verifier-correct; M-step = fine-tune
              starting from the BASE model each iteration (the samples come from the latest policy).
- star        STaR (Zelikman et al. 2022): keep correct samples; for prompts with none, rationalise
              (resample with the answer as a hint, keep correct rationales under the un-hinted prompt);
              fine-tune from the base model each iteration, as the paper does.
- expert_iteration  (Anthony et al. 2017; Polu et al. 2022): the "expert" is the policy plus test-time
              search (`search.strategy`: any of `reasonloop.search` — majority, best_of_n, beam with a PRM, mcts ...);
              its pick per prompt is kept (if the verifier accepts it, unless expert_verify=false).
- v_star      V-STaR (Hosseini et al. 2024): the generator learns from correct samples as in rft; all
              (correct, incorrect) pairs seen so far train a DPO verifier (from the base model), which
              also filters the generator's data (top verifier_top_k correct samples per prompt) and, at
              the end, picks among N held-out samples (verifier best-of-N).

All methods deduplicate kept samples by (prompt, whitespace-normalised completion) and log, per
iteration: generated, kept, duplicates dropped, prompts covered, train-sample accuracy, held-out
pass@1. Departures from the papers: one fixed small budget per iteration (fine-tune steps =
min(sft_max_steps, sft_epochs * kept / batch_size)); rewards are the task's (near-binary) verifier
reward, not a learned reward model; STaR samples `samples_per_prompt` per prompt, not one greedy one.

With `agent.env=tools` (docs/agents.md) every method but v_star samples, searches and evaluates on multi-turn
episodes and fine-tunes on the kept episodes' tokens with the observation tokens masked out of the loss;
expert_iteration's search is then one that only samples (majority, best_of_n, weighted_best_of_n, adaptive).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from reasonloop.config import require, require_choice
from reasonloop.recipes.search import search_kwargs
from reasonloop.rollout.multiturn import AgentConfig
from reasonloop.search import SearchConfig, majority_vote, search
from reasonloop.selfimprove.loop import Loop, LoopConfig
from reasonloop.selfimprove.selection import (
    Sample,
    above_threshold,
    correct_incorrect_pairs,
    correct_only,
    dedup,
    group_by_prompt,
    rising_thresholds,
    top_k_per_prompt,
)
from reasonloop.selfimprove.star import (
    DEFAULT_HINT_TEMPLATE,
    hinted_prompt,
    rationalise,
)
from reasonloop.selfimprove.verifier import DPOVerifier
from reasonloop.train.evaluation import answer_key
from reasonloop.train.optim import OptimConfig

METHODS = ["rft", "raft", "rest", "rest_em", "star", "expert_iteration", "v_star"]
EPISODE_SEARCH = ["majority", "best_of_n", "weighted_best_of_n", "adaptive"]  # strategies that only sample


@dataclass
class Config(LoopConfig):
    method: str = "rft"
    """rft | raft | rest | rest_em | star | expert_iteration | v_star (see the module docstring)."""
    threshold: float = 1.0
    """rft: keep reward >= threshold; raft: only samples >= threshold compete for the top_k. The arithmetic
    reward is accuracy (1) + 0.1 format - length penalty, so 1.0 means 'correct'."""
    top_k: int = 1
    """raft: samples kept per prompt."""
    rest_improve_steps: int = 2
    """rest: Improve steps per Grow step, each with its own threshold and fine-tune."""
    rest_threshold_start: float = 1.0
    """rest: threshold of the first Improve step."""
    rest_threshold_stop: float = 1.1
    """rest: threshold of the last Improve step (thresholds rise linearly)."""
    restart_from_base: str = "auto"
    """Fine-tune from the base model each iteration: auto (yes for rest_em and star), yes, no."""
    hint_template: str = DEFAULT_HINT_TEMPLATE
    """star: the hinted prompt; {question} is the prompt without trailing whitespace, {answer} the reference."""
    rationalise: bool = True
    """star: rationalise failed prompts with the answer as a hint."""
    search: SearchConfig = field(default_factory=SearchConfig)
    """expert_iteration: the expert's test-time search (any strategy of `reasonloop search`; docs/test_time_compute.md)."""
    expert_verify: bool = True
    """expert_iteration: keep the expert's pick only if the task verifier accepts it (false = label-free)."""
    verifier_beta: float = 0.1
    """v_star: DPO beta of the verifier."""
    verifier_steps: int = 30
    """v_star: DPO steps per iteration (the verifier restarts from the base model on all pairs so far)."""
    verifier_pairs_per_prompt: int = 4
    """v_star: most (correct, incorrect) pairs per prompt."""
    verifier_top_k: int = 2
    """v_star: correct samples per prompt kept, ranked by the current verifier (from iteration 2)."""
    verifier_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, min_lr_ratio=1.0))
    """v_star: the verifier's optimiser."""
    best_of_n: int = 8
    """v_star: candidates per held-out problem for verifier best-of-N at the end."""
    agent: AgentConfig = field(default_factory=AgentConfig)
    """Multi-turn episodes (docs/agents.md): with agent.env set, samples, the expert's search and the held-out
    evaluation are episodes, and fine-tuning masks the observation tokens out of the loss."""

    def __post_init__(self):
        super().__post_init__()
        require_choice("method", self.method, METHODS)
        require_choice("restart_from_base", self.restart_from_base, ["auto", "yes", "no"])
        require(self.top_k > 0 and self.verifier_top_k > 0, "top_k and verifier_top_k must be > 0")
        require(self.rest_improve_steps > 0, "rest_improve_steps must be > 0")
        require(self.verifier_beta > 0 and self.verifier_steps >= 0 and self.verifier_pairs_per_prompt > 0
                and self.best_of_n > 0, "verifier_beta, verifier_pairs_per_prompt and best_of_n must be > 0")
        require(self.rest_threshold_stop >= self.rest_threshold_start, "ReST thresholds must rise")
        require("{question}" in self.hint_template and "{answer}" in self.hint_template,
                "hint_template needs {question} and {answer}")
        if self.agent.env:
            require(self.method != "v_star", "method=v_star does not run on multi-turn episodes (agent.env): its DPO "
                    "verifier would train on the observation tokens")
            require(self.method != "expert_iteration" or self.search.strategy in EPISODE_SEARCH,
                    f"expert_iteration with agent.env: search.strategy={self.search.strategy!r} searches over steps; "
                    f"on episodes use one that only samples: {', '.join(EPISODE_SEARCH)}")

    @property
    def restarts(self) -> bool:
        return self.restart_from_base == "yes" or (self.restart_from_base == "auto" and self.method in ("rest_em", "star"))


def select(cfg: Config, samples: list[Sample]) -> list[Sample]:
    """The method's keep rule on freshly scored samples (rest, star, expert_iteration add steps around it)."""
    if cfg.method == "rft":
        return above_threshold(samples, cfg.threshold)
    if cfg.method == "raft":
        return top_k_per_prompt(samples, cfg.top_k, min_reward=cfg.threshold)
    if cfg.method == "rest":  # the first Improve step's set; later steps filter the same samples harder
        return above_threshold(samples, cfg.rest_threshold_start)
    return correct_only(samples)  # rest_em, star, v_star (before the verifier ranks them)


def star_step(loop: Loop, cfg: Config, examples, samples: list[Sample]) -> tuple[list[Sample], dict]:
    kept = correct_only(samples)
    solved = {s.group for s in kept}
    failed = [ex for ex in examples if ex.id not in solved]
    stats = {"star/failed_prompts": len(failed), "star/rationalised": 0, "star/hint_leaks_dropped": 0}
    if cfg.rationalise and failed:
        hinted = loop.generate(failed, 1, prompts=[hinted_prompt(ex, cfg.hint_template) for ex in failed])
        reward = lambda c, ex: loop.score([ex], [c])[0].reward
        rationales, leaked = rationalise(failed, hinted, loop.task.is_correct, reward, cfg.hint_template)
        kept += rationales
        stats.update({"star/rationalised": len(rationales), "star/hint_leaks_dropped": leaked})
    return kept, stats


def expert_step(loop: Loop, cfg: Config, examples) -> tuple[list[Sample], list[Sample], dict]:
    """(the expert's scored picks, the kept ones, stats)."""
    results = search(loop.engine, examples, loop.render, loop.sampling, cfg.search,
                     lambda c: answer_key(loop.task, c), generator=loop.generator, **search_kwargs(cfg.search, loop.task))
    picks = [(r.example, r.completion) for r in results if r.completion is not None]
    samples = loop.score([ex for ex, _ in picks], [c for _, c in picks])
    kept = correct_only(samples) if cfg.expert_verify else samples
    generated = sum(len(r.candidates) for r in results)
    return samples, kept, {"expert/picks": len(picks), "expert/candidates": generated,
                           "expert/pick_accuracy": sum(s.correct for s in samples) / max(1, len(examples))}


def verifier_rank(verifier: DPOVerifier | None, cfg: Config, kept: list[Sample]) -> list[Sample]:
    if verifier is None or not kept:
        return kept
    scores = verifier.score_texts([s.prompt for s in kept], [s.completion for s in kept])
    rescored = [Sample(s.prompt, s.completion, sc, s.correct, s.group) for s, sc in zip(kept, scores)]
    return top_k_per_prompt(rescored, cfg.verifier_top_k)


def held_out_best_of_n(loop: Loop, cfg: Config, verifier: DPOVerifier) -> dict[str, float]:
    """Verifier best-of-N vs majority vote vs a random pick (= sampled pass@1) on the held-out set."""
    results = search(loop.sampler, loop.held_out, loop.render, loop.sampling,
                     SearchConfig(strategy="best_of_n", n=cfg.best_of_n), lambda c: answer_key(loop.task, c),
                     scorer=verifier.scorer, generator=loop.generator)
    n = len(results)
    bon = sum(loop.task.is_correct(r.completion, r.example) for r in results) / n
    votes = [majority_vote([answer_key(loop.task, c) for c in r.candidates])[0] for r in results]
    maj = sum(i is not None and loop.task.is_correct(r.candidates[i], r.example) for r, i in zip(results, votes)) / n
    sampled = sum(loop.task.is_correct(c, r.example) for r in results for c in r.candidates) / (n * cfg.best_of_n)
    oracle = sum(any(loop.task.is_correct(c, r.example) for c in r.candidates) for r in results) / n
    return {f"test/verifier_bo{cfg.best_of_n}": bon, f"test/maj@{cfg.best_of_n}": maj,
            "test/pass@1_sampled": sampled, f"test/pass@{cfg.best_of_n}": oracle}


def run(cfg: Config) -> dict:
    loop = Loop(cfg, "self_train")
    loop.begin()
    pairs_so_far = [(Sample(**g), Sample(**b)) for g, b in loop.extra_state.get("verifier_pairs", [])]
    verifier: DPOVerifier | None = None
    for it in loop.iterations():
        examples = loop.next_prompts()
        stats: dict = {}
        if cfg.method == "expert_iteration":
            samples, kept, extra = expert_step(loop, cfg, examples)  # samples = the expert's picks
            stats.update(extra)
        else:
            samples = loop.sample(examples)
            if cfg.method == "star":
                kept, extra = star_step(loop, cfg, examples, samples)
                stats.update(extra)
            else:
                kept = select(cfg, samples)
        if cfg.method == "v_star":
            pairs_so_far += correct_incorrect_pairs(samples, cfg.verifier_pairs_per_prompt)
            kept = verifier_rank(verifier, cfg, kept)
        kept, duplicates = dedup(kept)
        stats.update({
            "generated": len(samples), "kept": len(kept), "duplicates_dropped": duplicates,
            "prompts_covered": len(group_by_prompt(kept)), "prompts": len(examples),
            "train_sample_accuracy": sum(s.correct for s in samples) / max(1, len(samples)),
        })
        if cfg.restarts:
            loop.reset_to_base()
        if cfg.method == "rest":
            for j, thr in enumerate(rising_thresholds(cfg.rest_threshold_start, cfg.rest_threshold_stop,
                                                      cfg.rest_improve_steps)):
                improve, _ = dedup(above_threshold(samples, thr))
                stats.update({f"rest/improve{j + 1}_threshold": thr, f"rest/improve{j + 1}_kept": len(improve)})
                stats.update({f"rest/improve{j + 1}_{k}": v for k, v in loop.finetune(improve).items()})
        else:
            stats.update(loop.finetune(kept))
        if cfg.method == "v_star":  # V-STaR retrains the verifier from the base on all pairs so far
            verifier = DPOVerifier(loop.base_model(), loop.tokenizer, loop.render, cfg.verifier_beta,
                                   cfg.micro_batch_size, cfg.forward)
            stats.update(verifier.train(pairs_so_far, cfg.verifier_steps, cfg.batch_size, cfg.verifier_optim, cfg.seed))
            stats["verifier/pairs"] = len(pairs_so_far)
            loop.extra_state["verifier_pairs"] = [(asdict(g), asdict(b)) for g, b in pairs_so_far]
        loop.end_iteration(it, stats)
    if cfg.method == "v_star" and verifier is None and pairs_so_far:  # resumed after the last iteration
        verifier = DPOVerifier(loop.base_model(), loop.tokenizer, loop.render, cfg.verifier_beta,
                               cfg.micro_batch_size, cfg.forward)
        verifier.train(pairs_so_far, cfg.verifier_steps, cfg.batch_size, cfg.verifier_optim, cfg.seed)
    extra = held_out_best_of_n(loop, cfg, verifier) if verifier is not None else {}
    if extra:
        print(f"self_train v_star: held-out {extra}")
    return loop.finish({"method": cfg.method, **extra})
