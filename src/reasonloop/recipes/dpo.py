"""Preference optimisation: the DPO family, offline from pair data or online from the policy's samples.

The loss is chosen by name from `algos.PREFERENCE_LOSSES` (dpo, cdpo, robust_dpo, ipo, spin, kto,
orpo, simpo); its maths and conventions are in `algos/preference.py`. Log-probs are SUMMED over
completion tokens (ORPO gets token averages, SimPO sums and lengths, as each loss expects). The
reference is a frozen copy of the initial policy (`ref_update=iteration` refreshes it to the current
policy at the start of every iteration, as iterative DPO variants do).

Modes
- offline: pairs from `data=` (JSONL/parquet/save_to_disk, columns prompt/chosen/rejected; for KTO
  prompt/completion/label, label true = desirable), trained for `steps` optimizer steps. With
  `data` empty, pairs are built from the task: chosen = the worked solution, rejected = the same
  trace with a wrong final answer (a synthetic set for demos and tests).
- online: iterative / online DPO (Xu et al. 2023 "Some things are more CRINGE than others";
  Guo et al. 2024 "Direct language model alignment from online AI feedback"): each iteration samples
  `samples_per_prompt` completions per prompt from the current policy, scores them with the judge
  (default: the task verifier reward), pairs best vs worst per prompt (ties give no pair), and
  takes `steps` optimizer steps on random batches of those pairs. KTO uses reward >= threshold as
  desirable, the rest as undesirable (unpaired).
- self_rewarding (Yuan et al. 2024): online, but the policy judges its own samples through a judge
  prompt (`rewards.judge.self_judge`, how=digits). On the tiny char model the judge is near noise;
  `judge_pair_accuracy` (how often the judge's chosen is really better by the verifier) says so.
- spin (Chen et al. 2024, self-play fine-tuning): each iteration, chosen = the task's worked
  solution of a train problem, rejected = the current policy's own sample for it (pairs where the
  sample equals the solution are skipped), reference = the policy at the start of the iteration
  (`ref_update` is treated as `iteration`); use `loss=spin` (the same logistic loss as `dpo`).

`nll_weight` adds the chosen completions' NLL (RPO, Pang et al. 2024). Held-out greedy pass@1 is
logged after every iteration.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field

import torch

from reasonloop.algos import PREFERENCE_LOSSES
from reasonloop.config import ConfigError, require, require_choice
from reasonloop.data.io import load_rows
from reasonloop.rewards.core import load_function
from reasonloop.rewards.judge import DIGIT_TEMPLATE, self_judge
from reasonloop.selfimprove.loop import Loop, LoopConfig, rng_from_json, rng_to_json
from reasonloop.selfimprove.preference import (
    PreferenceData,
    needs_reference,
    preference_step,
    sequence_logps,
)
from reasonloop.selfimprove.selection import Sample, best_worst_pairs, with_reward
from reasonloop.train.optim import OptimConfig, build_optimizer


@dataclass
class Config(LoopConfig):
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-5, min_lr_ratio=1.0))
    """AdamW; a lower lr than the SFT loops' 1e-4, as is usual for DPO: at 1e-4 online DPO on code_arith
    fell below its base after one iteration (0.505 -> 0.595 -> 0.415 -> 0.39), at 3e-5 it climbs
    (0.755 -> 0.795 -> 0.84); see docs/dpo.md."""
    mode: str = "online"
    """offline (pairs from data=), online (pairs from the policy's samples), self_rewarding (online, policy as
    judge) or spin (chosen = the task's worked solution, rejected = the policy's own sample, reference = previous iterate)."""
    loss: str = "dpo"
    """A name from algos.PREFERENCE_LOSSES: dpo, cdpo, robust_dpo, ipo, spin, kto, orpo, simpo."""
    beta: float = 0.1
    """beta of dpo/cdpo/robust_dpo/ipo/spin/kto/simpo (SimPO's paper default is 2.0; set it)."""
    label_smoothing: float = 0.1
    """cdpo/robust_dpo: assumed label-flip rate."""
    orpo_lambda: float = 0.1
    """orpo: weight of the odds-ratio term."""
    simpo_gamma: float = 0.5
    """simpo: target reward margin."""
    kto_kl_ref: float = 0.0
    """kto: the reference point z_0 (0 is the cheap common choice; the paper estimates KL from mismatched pairs)."""
    steps: int = 10
    """Optimizer steps per iteration (offline: in total). More steps per iteration over-optimise on the
    embedded model (traces grow invented extra steps); see docs/self_improvement.md."""
    nll_weight: float = 0.0
    """Add this times the chosen completions' token-mean NLL (RPO); 0 is plain DPO."""
    ref_update: str = "initial"
    """initial: the reference is the frozen initial policy; iteration: refreshed each iteration."""
    judge: str = "verifier"
    """online: who scores samples: verifier (the task's reward), self (the policy's expected 0-9 digit after
    judge_template), self_generative (the policy writes a verdict to rewards.judge's additive 5-point prompt,
    Yuan et al. 2024; unparseable = 0) or module:function."""
    judge_template: str = DIGIT_TEMPLATE
    """self judge: the judge prompt, with {prompt} and {completion}."""
    pairs_per_prompt: int = 1
    """online: best/worst pairs per prompt (next-best vs next-worst after the first)."""
    min_gap: float = 0.0
    """online: a pair needs chosen reward - rejected reward > min_gap."""
    kto_threshold: float = 1.0
    """online kto: samples with reward >= this are desirable."""
    data: str = ""
    """offline: the pair dataset; empty builds synthetic pairs from the task."""
    prompt_field: str = "prompt"
    """offline column names: prompt."""
    chosen_field: str = "chosen"
    """offline: chosen completion column."""
    rejected_field: str = "rejected"
    """offline: rejected completion column."""
    completion_field: str = "completion"
    """offline kto: completion column."""
    label_field: str = "label"
    """offline kto: boolean desirability column."""
    offline_pairs: int = 512
    """offline with data empty: synthetic pairs built from the task."""

    def __post_init__(self):
        super().__post_init__()
        require_choice("mode", self.mode, ["offline", "online", "self_rewarding", "spin"])
        require_choice("loss", self.loss, sorted(PREFERENCE_LOSSES))
        require_choice("ref_update", self.ref_update, ["initial", "iteration"])
        require(self.steps > 0, "steps must be > 0")
        require(self.pairs_per_prompt > 0, "pairs_per_prompt must be > 0")
        require(self.beta > 0, "beta must be > 0 (the preference loss's inverse temperature)")
        require(0 <= self.label_smoothing < 0.5, "label_smoothing must be in [0, 0.5)")
        for key in ("orpo_lambda", "simpo_gamma", "nll_weight", "min_gap", "kto_kl_ref"):
            require(getattr(self, key) >= 0, f"{key} must be >= 0")
        require(self.offline_pairs > 0, "offline_pairs must be > 0")
        require(self.judge in ("verifier", "self", "self_generative") or ":" in self.judge,
                "judge must be verifier, self, self_generative or module:function")
        require(not (self.mode == "self_rewarding" and ":" in self.judge),
                "mode=self_rewarding uses the policy as judge; drop the judge hook")

    @property
    def judge_kind(self) -> str:
        if self.mode == "self_rewarding":  # the policy judges: by digit expectation unless asked to write verdicts
            return "self_generative" if self.judge == "self_generative" else "self"
        return self.judge

    def loss_kwargs(self) -> dict:
        kw = {"orpo": {"lam": self.orpo_lambda}, "simpo": {"beta": self.beta, "gamma": self.simpo_gamma},
              "kto": {"beta": self.beta, "kl_ref": self.kto_kl_ref}}.get(self.loss, {"beta": self.beta})
        if self.loss in ("cdpo", "robust_dpo"):
            kw["label_smoothing"] = self.label_smoothing
        return kw


# -- data -------------------------------------------------------------------------------------------
def synthetic_pairs(loop: Loop, n: int) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) from the task: the worked solution vs the same with a wrong answer."""
    records = loop.task.sft_records("train", n, seed=loop.cfg.seed)
    out = []
    for r in records:
        good = r["completion"]
        head, _, tail = good.rpartition("<answer>")
        answer = tail.split("</answer>")[0]
        wrong = str(int(answer) + random.Random(r["prompt"]).choice([-2, -1, 1, 2])) if answer.lstrip("-").isdigit() else answer + "0"
        out.append((r["prompt"], good, f"{head}<answer>{wrong}</answer>"))
    return out


def offline_data(cfg: Config, loop: Loop, rows: list[dict] | None = None) -> PreferenceData:
    render = loop.render
    if not cfg.data:
        triples = synthetic_pairs(loop, cfg.offline_pairs)
        if cfg.loss == "kto":  # unpaired view of the same triples
            return PreferenceData([render(p) for p, _, _ in triples], [c for _, c, _ in triples],
                                  [r for _, _, r in triples], [render(p) for p, _, _ in triples])
        return PreferenceData([render(p) for p, _, _ in triples], [c for _, c, _ in triples], [r for _, _, r in triples])
    rows = rows if rows is not None else load_rows(cfg.data)
    if cfg.loss == "kto":
        good = [r for r in rows if bool(r.get(cfg.label_field))]
        bad = [r for r in rows if not bool(r.get(cfg.label_field))]
        return PreferenceData([render(r[cfg.prompt_field]) for r in good], [r[cfg.completion_field] for r in good],
                              [r[cfg.completion_field] for r in bad], [render(r[cfg.prompt_field]) for r in bad])
    for col in (cfg.prompt_field, cfg.chosen_field, cfg.rejected_field):
        if rows and col not in rows[0]:
            raise ConfigError(f"{cfg.data}: no column {col!r}; columns are {sorted(rows[0])}")
    return PreferenceData([render(r[cfg.prompt_field]) for r in rows], [r[cfg.chosen_field] for r in rows],
                          [r[cfg.rejected_field] for r in rows])


def judge_samples(cfg: Config, loop: Loop, samples: list[Sample]) -> list[Sample]:
    """Re-score samples with the configured judge; the verifier's scores are already on them."""
    kind = cfg.judge_kind
    if kind == "verifier":
        return samples
    prompts, comps = [s.prompt for s in samples], [s.completion for s in samples]
    if kind == "self":
        judge = self_judge(loop.model, loop.tokenizer, cfg.judge_template, how="digits")
        scores = judge.score([loop.render(p) for p in prompts], comps)
    elif kind == "self_generative":  # Yuan et al.'s additive 5-point prompt, the policy writes its verdict
        raw = self_judge(loop.model, loop.tokenizer, max_new_tokens=cfg.max_new_tokens).score(prompts, comps)
        scores = [0.0 if v is None else v for v in raw]  # an unparseable verdict scores 0
    else:
        scores = load_function(kind, "judge hook")(prompts, comps)
    return with_reward(samples, scores)


def online_data(cfg: Config, samples: list[Sample], render) -> tuple[PreferenceData, dict]:
    if cfg.loss == "kto":
        good = [s for s in samples if s.reward >= cfg.kto_threshold]
        bad = [s for s in samples if s.reward < cfg.kto_threshold]
        data = PreferenceData([render(s.prompt) for s in good], [s.completion for s in good],
                              [s.completion for s in bad], [render(s.prompt) for s in bad])
        return data, {"desirable": len(good), "undesirable": len(bad)}
    pairs = best_worst_pairs(samples, cfg.min_gap, cfg.pairs_per_prompt)
    judged_right = sum(c.correct and not r.correct for c, r in pairs)
    judged_wrong = sum(r.correct and not c.correct for c, r in pairs)
    data = PreferenceData([render(c.prompt) for c, _ in pairs], [c.completion for c, _ in pairs],
                          [r.completion for _, r in pairs])
    stats = {"pairs": len(pairs), "judge_pair_accuracy": judged_right / max(1, judged_right + judged_wrong)}
    return data, stats


# -- learn ------------------------------------------------------------------------------------------
def subset(data: PreferenceData, idx_c: list[int], idx_r: list[int]) -> PreferenceData:
    rp = [data.rejected_prompts[i] for i in idx_r] if data.rejected_prompts is not None else None
    return PreferenceData([data.prompts[i] for i in idx_c], [data.chosen[i] for i in idx_c],
                          [data.rejected[i] for i in idx_r], rp)


def train_on(cfg: Config, loop: Loop, ref: torch.nn.Module | None, data: PreferenceData, steps: int,
             rng: random.Random) -> dict[str, float]:
    """`steps` optimizer steps of the named loss on random batches of `data`; returns averaged metrics."""
    paired = cfg.loss != "kto"
    if (paired and not data.chosen) or (not paired and not (data.chosen or data.rejected)):
        return {"dpo_steps": 0.0}  # KTO is unpaired: one side may be empty
    rej_prompts = data.prompts if paired else data.rejected_prompts
    ref_c = ref_r = None
    if ref is not None:
        ref_c, _ = sequence_logps(ref, loop.tokenizer, data.prompts, data.chosen, cfg.micro_batch_size,
                                  forward=cfg.forward)
        ref_r, _ = sequence_logps(ref, loop.tokenizer, rej_prompts, data.rejected, cfg.micro_batch_size,
                                  forward=cfg.forward)
    optimizer, scheduler = build_optimizer(loop.model.parameters(), cfg.optim, steps)
    sums: dict[str, float] = {}
    for _ in range(steps):
        idx_c = rng.sample(range(len(data.chosen)), min(cfg.batch_size, len(data.chosen)))
        idx_r = idx_c if paired else rng.sample(range(len(data.rejected)), min(cfg.batch_size, len(data.rejected)))
        m = preference_step(loop.model, loop.tokenizer, subset(data, idx_c, idx_r), cfg.loss, cfg.loss_kwargs(),
                            ref_c[idx_c] if ref_c is not None else None, ref_r[idx_r] if ref_r is not None else None,
                            optimizer, scheduler, cfg.optim.max_grad_norm, cfg.micro_batch_size, cfg.nll_weight,
                            forward=cfg.forward)
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + v / steps
    return {"dpo_steps": float(steps), **{f"dpo/{k}": v for k, v in sums.items()}}


def spin_data(cfg: Config, loop: Loop) -> tuple[PreferenceData, dict]:
    """SPIN pairs: (worked solution, the policy's own sample) for the next train prompts."""
    if not hasattr(loop.task, "sft_records"):
        raise ConfigError(f"mode=spin needs worked solutions; task {cfg.task!r} has none")
    solution = {r["prompt"]: r["completion"] for r in loop.task.sft_records("train", cfg.train_pool, seed=cfg.seed)}
    examples = [ex for ex in loop.next_prompts() if ex.prompt in solution]
    own = loop.generate(examples, 1)
    pairs = [(ex.prompt, solution[ex.prompt], o) for ex, o in zip(examples, own)
             if o.strip() != solution[ex.prompt].strip()]
    data = PreferenceData([loop.render(p) for p, _, _ in pairs], [c for _, c, _ in pairs], [o for _, _, o in pairs])
    return data, {"pairs": len(pairs), "own_equals_data": len(examples) - len(pairs)}


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).eval().requires_grad_(False)


def run(cfg: Config) -> dict:
    rows = load_rows(cfg.data) if cfg.mode == "offline" and cfg.data else None  # bad data fails before the run dir
    loop = Loop(cfg, "dpo")
    rng = random.Random(cfg.seed)
    ref = frozen_copy(loop.model) if needs_reference(cfg.loss) else None
    loop.begin()
    if "rng" in loop.extra_state:  # resumed: continue the pair-shuffling stream where it stopped
        rng.setstate(rng_from_json(loop.extra_state["rng"]))
    if cfg.mode == "offline":
        data = offline_data(cfg, loop, rows)
        stats = train_on(cfg, loop, ref, data, cfg.steps, rng)
        loop.end_iteration(1, {"pairs": len(data.chosen), **stats})
        return loop.finish({"mode": cfg.mode, "loss": cfg.loss})
    for it in loop.iterations():
        if (cfg.ref_update == "iteration" or cfg.mode == "spin") and ref is not None and it > 1:
            ref = frozen_copy(loop.model)
        if cfg.mode == "spin":
            data, stats = spin_data(cfg, loop)
            stats.update(train_on(cfg, loop, ref, data, cfg.steps, rng))
            loop.extra_state["rng"] = rng_to_json(rng.getstate())
            loop.end_iteration(it, stats)
            continue
        samples = loop.sample(loop.next_prompts())
        judged = judge_samples(cfg, loop, samples)
        data, stats = online_data(cfg, judged, loop.render)
        stats["train_sample_accuracy"] = sum(s.correct for s in samples) / max(1, len(samples))
        stats.update(train_on(cfg, loop, ref, data, cfg.steps, rng))
        loop.extra_state["rng"] = rng_to_json(rng.getstate())
        loop.end_iteration(it, stats)
    return loop.finish({"mode": cfg.mode, "loss": cfg.loss, "judge": cfg.judge_kind})
