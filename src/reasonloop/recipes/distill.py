"""Distillation: a teacher produces verified traces, the student learns them by SFT; optionally
on-policy distillation (token-level reverse KL to the teacher on the student's own samples); and
the test-time-compute -> distil loop.

Modes
- teacher:   the teacher (`teacher_model`, default the student's own starting weights) is boosted by
             test-time search (`search.strategy`: any strategy of `reasonloop search` — majority,
             best_of_n, PRM beam, dvts, mcts ...; docs/test_time_compute.md). Its pick per train prompt is kept if the
             task verifier accepts it (`verify=false` keeps every pick: label-free distillation from
             majority vote). The student fine-tunes on the kept traces (SFT, loss on completion
             tokens). Then `on_policy_steps` steps of on-policy distillation: the student samples,
             and minimises exact per-token reverse KL(student || teacher) at its own prefixes
             (GKD, Agarwal et al. 2024; `algos.distill.reverse_kl_tokens`). Teacher and student must
             share a tokenizer for that part.
- ttc_loop:  each round the CURRENT model with search is the teacher: maj@n / best-of-n picks on fresh
             train prompts become the next round's SFT data (the "test-time compute -> distil" loop;
             with majority vote and verify=false this is label-free self-training, cf. TTRL, Zuo et
             al. 2025; with verify=true it is expert iteration whose expert is search).

Each round logs kept/duplicate counts, the teacher's pick accuracy on train prompts, and held-out
greedy pass@1 of the student.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from reasonloop.algos.distill import masked_kl_loss, reverse_kl_per_token, reverse_kl_tokens
from reasonloop.config import require, require_choice
from reasonloop.models.loading import ModelConfig, load_model
from reasonloop.rollout.prefix_cache import TreeEngine
from reasonloop.recipes.search import search_kwargs
from reasonloop.search import SearchConfig, search
from reasonloop.selfimprove.loop import Loop, LoopConfig
from reasonloop.selfimprove.selection import correct_only, dedup
from reasonloop.train.evaluation import answer_key
from reasonloop.models.forward import completion_logits, encode_pairs, paired_logits_chunked
from reasonloop.train.optim import OptimConfig, build_optimizer, clip_and_step


@dataclass
class Config(LoopConfig):
    mode: str = "ttc_loop"
    """teacher (a fixed teacher + search) or ttc_loop (the current model + search, every round)."""
    teacher_model: str = ""
    """teacher mode: the teacher's model directory; empty uses the student's starting weights."""
    search: SearchConfig = field(default_factory=SearchConfig)
    """The teacher's test-time search (any strategy of `reasonloop search`; majority by default)."""
    verify: bool = True
    """Keep a teacher pick only if the task verifier accepts it; false keeps every pick (label-free)."""
    on_policy_steps: int = 0
    """teacher mode: on-policy distillation steps (reverse KL to the teacher on student samples) per round."""
    on_policy_prompts: int = 16
    """Prompts per on-policy step (samples_per_prompt student samples each)."""
    on_policy_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, min_lr_ratio=1.0))
    """Optimiser of the on-policy distillation steps."""

    def __post_init__(self):
        super().__post_init__()
        require_choice("mode", self.mode, ["teacher", "ttc_loop"])
        require(self.on_policy_steps >= 0 and self.on_policy_prompts > 0, "on_policy_steps >= 0, on_policy_prompts > 0")
        require(not (self.mode == "ttc_loop" and self.on_policy_steps > 0),
                "on-policy distillation needs a distinct teacher (mode=teacher)")


def teacher_traces(loop: Loop, cfg: Config, teacher: torch.nn.Module, examples) -> tuple[list, dict]:
    """Search with the teacher; score its picks with the task; keep verified (or all) picks."""
    engine = TreeEngine(teacher, loop.tokenizer)  # step-level search continues from cached K/V
    results = search(engine, examples, loop.render, loop.sampling, cfg.search, lambda c: answer_key(loop.task, c),
                     generator=loop.generator, **search_kwargs(cfg.search, loop.task))
    picks = [(r.example, r.completion) for r in results if r.completion is not None]
    samples = loop.score([ex for ex, _ in picks], [c for _, c in picks])
    kept = correct_only(samples) if cfg.verify else samples
    return kept, {"teacher/picks": len(picks), "teacher/pick_accuracy": sum(s.correct for s in samples) / max(1, len(examples))}


def on_policy_distill(loop: Loop, cfg: Config, teacher: torch.nn.Module) -> dict[str, float]:
    """`on_policy_steps` steps of exact reverse KL(student || teacher) at student-sampled prefixes."""
    optimizer, scheduler = build_optimizer(loop.model.parameters(), cfg.on_policy_optim, cfg.on_policy_steps)
    device = next(loop.model.parameters()).device
    kls = []
    for _ in range(cfg.on_policy_steps):
        examples = loop.next_prompts(cfg.on_policy_prompts)
        completions = loop.generate(examples, cfg.samples_per_prompt)
        prompts = [loop.render(ex.prompt) for ex in examples for _ in range(cfg.samples_per_prompt)]
        batch = encode_pairs(loop.tokenizer, prompts, completions)
        normalizer = float(batch.completion_mask.sum())
        loop.model.train()
        step_kl = 0.0
        for start in range(0, len(batch), cfg.micro_batch_size):
            mb = batch.select(slice(start, start + cfg.micro_batch_size)).to(device)
            if cfg.forward.logit_chunk:  # both models' logits a chunk of positions at a time
                per_token = paired_logits_chunked(loop.model, teacher, mb, cfg.forward.logit_chunk,
                                                  reverse_kl_per_token)
                loss, _ = masked_kl_loss(per_token, mb.completion_mask, normalizer)
            else:
                with torch.no_grad():
                    t_logits = completion_logits(teacher, mb)
                loss, _ = reverse_kl_tokens(completion_logits(loop.model, mb), t_logits, mb.completion_mask, normalizer)
            loss.backward()
            step_kl += float(loss.detach())
        clip_and_step(loop.model, optimizer, scheduler, cfg.on_policy_optim.max_grad_norm)
        kls.append(step_kl)
    return {"on_policy/reverse_kl_first": kls[0], "on_policy/reverse_kl_last": kls[-1]} if kls else {}


def load_teacher(loop: Loop, cfg: Config) -> torch.nn.Module:
    if not cfg.teacher_model:
        return copy.deepcopy(loop.model).eval().requires_grad_(False)
    teacher = load_model(ModelConfig(name=cfg.teacher_model, dtype=cfg.model.dtype, device=cfg.model.device))
    return teacher.eval().requires_grad_(False)


def run(cfg: Config) -> dict:
    loop = Loop(cfg, "distill")
    fixed_teacher = load_teacher(loop, cfg) if cfg.mode == "teacher" else None
    loop.begin()
    for it in loop.iterations():
        teacher = fixed_teacher if fixed_teacher is not None else loop.model  # ttc_loop: the current model
        examples = loop.next_prompts()
        kept, stats = teacher_traces(loop, cfg, teacher, examples)
        kept, duplicates = dedup(kept)
        stats.update({"kept": len(kept), "duplicates_dropped": duplicates, "prompts": len(examples),
                      "kept_accuracy": sum(s.correct for s in kept) / max(1, len(kept))})
        stats.update(loop.finetune(kept))
        if fixed_teacher is not None and cfg.on_policy_steps > 0:
            stats.update(on_policy_distill(loop, cfg, fixed_teacher))
        loop.end_iteration(it, stats)
    return loop.finish({"mode": cfg.mode, "strategy": cfg.search.strategy})
