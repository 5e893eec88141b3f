"""Train a Bradley-Terry reward model: a scalar head on a causal LM's trunk, scored on (prompt, completion).

Pairs come from `data=` (prompt / chosen / rejected columns, as for offline DPO) or, when `data` is
empty, from the base model's own samples on the task's train prompts, labelled by the task's
verifier: each prompt with both a correct and a wrong sample gives up to `pairs_per_prompt`
(correct, wrong) pairs. The loss is -log sigmoid(r_chosen - r_rejected) (Ouyang et al. 2022), plus
`center_rewards` * mean(r^2), which keeps scores near zero (Eisenstein et al. 2023; TRL's
`center_rewards_coefficient`). Pair accuracy on held-out pairs, built the same way from the test
split, is reported before and after.

The result is an `AutoModelForSequenceClassification` directory: `reasonloop train
reward_model=<run>/model` uses it as a reward (`rewards.reward_model.RewardModel` scores it the same way).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from reasonloop.config import ConfigError, require
from reasonloop.data.io import load_rows, select_text_fields
from reasonloop.tasks import make_task
from reasonloop.models.loading import ModelConfig, load_policy, render_prompt, resolve_model_path
from reasonloop.rewards.reward_model import RewardModel
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.rollout.sampler import TorchSampler
from reasonloop.selfimprove.selection import Sample, correct_incorrect_pairs
from reasonloop.train.checkpoint import load_checkpoint, save_checkpoint
from reasonloop.train.optim import OptimConfig, build_optimizer, clip_and_step
from reasonloop.train.run import Run, progress, set_seed, set_threads
from reasonloop.train.runconfig import CheckpointedRunConfig

Pair = tuple[str, str, str]  # (prompt, chosen, rejected)


@dataclass
class Config(CheckpointedRunConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    """The causal LM whose trunk the reward model starts from (a new scalar head is added); with `data`
    empty it also samples the pairs."""
    task: str = "arithmetic"
    """Task whose verifier labels the sampled pairs (train split) and the held-out pairs (test split)."""
    data_dir: str = ""
    """Data location for file-backed tasks."""
    data: str = ""
    """Training pairs: .jsonl/.parquet file, save_to_disk directory or hub id; empty samples them (above)."""
    prompt_field: str = "prompt"
    """Column holding the prompt."""
    chosen_field: str = "chosen"
    """Column holding the preferred completion."""
    rejected_field: str = "rejected"
    """Column holding the other completion."""
    prompts: int = 512
    """Train prompts sampled for pairs when `data` is empty."""
    eval_prompts: int = 200
    """Held-out (test split) prompts sampled for the held-out pairs."""
    samples_per_prompt: int = 4
    """Completions sampled per prompt."""
    pairs_per_prompt: int = 2
    """Most (correct, wrong) pairs kept per prompt."""
    temperature: float = 1.0
    """Sampling temperature for the pairs."""
    max_new_tokens: int = 64
    """Completion length limit when sampling pairs."""
    steps: int = 150
    """Optimizer steps."""
    batch_size: int = 32
    """Pairs per optimizer step."""
    micro_batch_size: int = 32
    """Pairs per forward/backward; gradients accumulate up to batch_size."""
    center_rewards: float = 0.01
    """Coefficient of mean(r^2) added to the loss; 0 disables."""
    max_length: int = 512
    """Truncate prompt+completion to this many tokens (from the left: the verdict is at the end)."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, warmup_steps=10))
    """Optimiser and schedule."""

    def __post_init__(self):
        super().__post_init__()
        require(self.steps > 0 and self.batch_size > 0 and self.micro_batch_size > 0, "steps and batch sizes must be > 0")
        require(self.samples_per_prompt >= 2 and self.pairs_per_prompt >= 1,
                "need samples_per_prompt >= 2 and pairs_per_prompt >= 1")
        require(self.center_rewards >= 0, "center_rewards must be >= 0")
        require(self.prompts > 0 and self.eval_prompts > 0, "prompts and eval_prompts must be > 0")
        require(self.temperature > 0, "temperature must be > 0: greedy samples of one prompt are identical, so no "
                "prompt would yield a correct/incorrect pair")
        require(self.max_new_tokens > 0 and self.max_length >= 2, "max_new_tokens must be > 0 and max_length >= 2")
        require(self.model.lora.r == 0, "reward_model trains all weights: LoRA (model.lora.r > 0) is not supported here")


def sampled_pairs(sampler: TorchSampler, task, examples, render, cfg: Config, seed: int) -> list[Pair]:
    """(prompt, correct sample, wrong sample) pairs from `samples_per_prompt` samples of each example,
    chosen as V-STaR chooses its verifier's pairs (`selection.correct_incorrect_pairs`)."""
    sampling = SamplingConfig(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
    generator = torch.Generator().manual_seed(seed)
    samples: list[Sample] = []
    for start in range(0, len(examples), 32):
        chunk = examples[start : start + 32]
        batch = sampler.generate([render(e.prompt) for e in chunk], cfg.samples_per_prompt, sampling, generator)
        rows = [ex for ex in chunk for _ in range(cfg.samples_per_prompt)]
        samples += [Sample(ex.prompt, c, 0.0, task.is_correct(c, ex), ex.id) for ex, c in zip(rows, batch.completions)]
    return [(g.prompt, g.completion, b.completion) for g, b in correct_incorrect_pairs(samples, cfg.pairs_per_prompt)]


def file_pairs(cfg: Config) -> list[Pair]:
    fields = {"prompt": cfg.prompt_field, "chosen": cfg.chosen_field, "rejected": cfg.rejected_field}
    rows = select_text_fields(load_rows(cfg.data), fields, cfg.data)
    return [(r["prompt"], r["chosen"], r["rejected"]) for r in rows]


@torch.no_grad()
def pair_accuracy(rm: RewardModel, pairs: list[Pair]) -> float:
    """Fraction of pairs whose chosen completion scores above the rejected one."""
    if not pairs:
        return float("nan")
    chosen = rm.score([p for p, _, _ in pairs], [c for _, c, _ in pairs])
    rejected = rm.score([p for p, _, _ in pairs], [r for _, _, r in pairs])
    return sum(c > r for c, r in zip(chosen, rejected)) / len(pairs)


def bradley_terry_step(rm: RewardModel, pairs: list[Pair], cfg: Config, optimizer, scheduler) -> dict[str, float]:
    """One optimizer step over `pairs`, in micro-batches whose losses sum to the batch mean."""
    rm.model.train()
    totals = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0}
    for start in range(0, len(pairs), cfg.micro_batch_size):
        micro = pairs[start : start + cfg.micro_batch_size]
        prompts = [p for p, _, _ in micro] * 2
        r = rm.scores(prompts, [c for _, c, _ in micro] + [rej for _, _, rej in micro])
        r_chosen, r_rejected = r[: len(micro)], r[len(micro) :]
        per_pair = -F.logsigmoid(r_chosen - r_rejected) + cfg.center_rewards * (r_chosen**2 + r_rejected**2) / 2
        (per_pair.sum() / len(pairs)).backward()
        totals["loss"] += float(per_pair.detach().sum())
        totals["accuracy"] += float((r_chosen > r_rejected).sum())
        totals["margin"] += float((r_chosen - r_rejected).detach().sum())
    grad_norm, stepped = clip_and_step(rm.model, optimizer, scheduler, cfg.optim.max_grad_norm)
    rm.model.eval()
    return {**{k: v / len(pairs) for k, v in totals.items()}, "grad_norm": grad_norm, "skipped": float(not stepped)}


def load_reward_model(cfg: Config, task, tokenizer, like: torch.nn.Module) -> RewardModel:
    """The base model's trunk with a fresh 1-output head (seeded), as a `RewardModel` on `like`'s device
    and dtype (the policy as `model.*` loaded it)."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(cfg.seed)
    p = next(like.parameters())
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(cfg.model.name, task), num_labels=1, dtype=p.dtype).to(p.device)
    model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side = "right"  # sequence classification reads the last real token; positions stay aligned
    tokenizer.truncation_side = "left"
    return RewardModel(model=model.eval(), tokenizer=tokenizer, max_length=cfg.max_length)


def run(cfg: Config) -> dict:
    set_threads(cfg.threads)
    set_seed(cfg.seed)
    run_ = Run(cfg, "reward_model")  # checks output_dir and picks the checkpoint; writes nothing yet
    task = make_task(cfg.task, cfg.data_dir or None)
    tokenizer, policy = load_policy(cfg.model, task)
    render = lambda p: render_prompt(tokenizer, p, cfg.model.use_chat_template)  # noqa: E731
    sampler = TorchSampler(policy, tokenizer)
    train = file_pairs(cfg) if cfg.data else sampled_pairs(
        sampler, task, task.examples("train", cfg.prompts, seed=cfg.seed), render, cfg, cfg.seed)
    held_out = sampled_pairs(sampler, task, task.examples("test", cfg.eval_prompts, seed=cfg.seed), render, cfg,
                             cfg.seed + 1)
    if not train:
        raise ConfigError("no training pairs: no prompt had both a correct and a wrong sample "
                          "(raise samples_per_prompt or temperature, or pass data=)")
    rm = load_reward_model(cfg, task, tokenizer, like=policy)
    del sampler, policy
    optimizer, scheduler = build_optimizer(rm.model.parameters(), cfg.optim, cfg.steps)
    state = {"step": 0, "accuracy_before": None}
    if (ckpt := run_.resume_from) is not None:
        state = load_checkpoint(ckpt, rm.model, optimizer, scheduler)
        print(f"reward_model: resumed from {ckpt} at step {state['step']}")
    out_dir = run_.start()
    if state["step"] == 0:
        state["accuracy_before"] = pair_accuracy(rm, held_out)
    print(f"reward_model: {len(train)} training pairs, {len(held_out)} held-out pairs; "
          f"held-out pair accuracy before training {state['accuracy_before']:.3f}")
    metrics: dict = {}
    with progress("reward_model", cfg.steps) as bar:
        bar.advance(state["step"])
        for step in range(state["step"] + 1, cfg.steps + 1):
            picked = random.Random(f"{cfg.seed}:{step}").sample(train, min(cfg.batch_size, len(train)))
            metrics = bradley_terry_step(rm, picked, cfg, optimizer, scheduler)
            run_.log(step, metrics)
            bar.advance()
            bar.set(f"loss {metrics['loss']:.3f}")
            if cfg.save_every and step % cfg.save_every == 0 and step != cfg.steps:
                save_checkpoint(out_dir, step, rm.model, optimizer, scheduler,
                                {"accuracy_before": state["accuracy_before"]})
    after = pair_accuracy(rm, held_out)
    run_.log(cfg.steps, {"eval/pair_accuracy": after})
    model_dir = run_.dir / "model"
    rm.model.save_pretrained(str(model_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(model_dir))
    print(f"reward_model: held-out pair accuracy {state['accuracy_before']:.3f} -> {after:.3f}; saved to {model_dir}")
    result = {"train_pairs": len(train), "held_out_pairs": len(held_out), "accuracy_before": state["accuracy_before"],
              "accuracy_after": after, "final_loss": metrics.get("loss"), "model_dir": str(model_dir)}
    run_.write_json("summary.json", result)
    run_.close()
    return result
