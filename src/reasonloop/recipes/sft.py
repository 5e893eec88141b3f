"""Supervised fine-tuning on (prompt, completion) records, loss on the completion only.

Data comes from `data=` (a JSONL/parquet file, a directory written by `datasets.save_to_disk`, or a
hub id) with configurable column names, or, when `data` is empty, from the task's own worked
solutions on its train split. AdamW with warmup + cosine decay, gradient accumulation over
micro-batches (the loss is the token mean over the whole step), gradient clipping, periodic held-out
evaluation, atomic checkpoints and `resume=auto`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from reasonloop.config import ConfigError, require
from reasonloop.data.io import load_rows, select_text_fields
from reasonloop.data.sampling import SeededShuffle, ShuffledPasses
from reasonloop.tasks import make_task
from reasonloop.models.loading import ModelConfig, drop_long_prompts, load_policy, render_prompt, save_model
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.rollout.sampler import TorchSampler
from reasonloop.train.checkpoint import load_checkpoint, save_checkpoint
from reasonloop.train.evaluation import evaluate, flat_metrics, format_table
from reasonloop.models.forward import ForwardConfig, encode_pairs
from reasonloop.train.optim import OptimConfig, build_optimizer
from reasonloop.train.run import Run, progress, set_seed, set_threads
from reasonloop.train.runconfig import CheckpointedRunConfig
from reasonloop.train.supervised import supervised_step


@dataclass
class Config(CheckpointedRunConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model to fine-tune."""
    data: str = ""
    """Training records: .jsonl/.parquet file, save_to_disk directory or hub id; empty uses the task's worked solutions."""
    prompt_field: str = "prompt"
    """Column holding the prompt."""
    completion_field: str = "completion"
    """Column holding the target completion."""
    task: str = "arithmetic"
    """Task for held-out evaluation (and for training records when `data` is empty)."""
    data_dir: str = ""
    """Data location for file-backed tasks."""
    task_records: int = 2000
    """Training records drawn from the task when `data` is empty."""
    steps: int = 200
    """Optimizer steps."""
    batch_size: int = 32
    """Records per optimizer step."""
    micro_batch_size: int = 32
    """Records per forward/backward; gradients accumulate up to batch_size."""
    max_len: int = 512
    """Truncate prompt+completion to this many tokens."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, warmup_steps=10))
    """Optimiser and schedule."""
    eval_every: int = 100
    """Held-out evaluation every N steps (and before the first and after the last); 0 only at the ends."""
    eval_n: int = 100
    """Held-out problems per evaluation."""
    eval_k: int = 0
    """Samples per problem at evaluation (pass@k, maj@k); 0 evaluates greedy pass@1 only."""
    eval_max_new_tokens: int = 128
    """Completion length of the held-out evaluation; prompts longer than the context minus this are dropped."""
    label_smoothing: float = 0.0
    """Label smoothing of the completion loss (0 <= eps < 1; TRL's label_smoothing_factor): the target puts eps on a
    uniform spread over the vocabulary, so the model is not pushed to certainty. The entropy it leaves is spread over
    every token: at eps 0.05 it lowered sampled accuracy before and after RL (docs/sft.md). The logged loss is then
    the smoothed one."""
    forward: ForwardConfig = field(default_factory=ForwardConfig)
    """The loss's forward, as `train`'s: shared prompts, length buckets, and `forward.logit_chunk` for a large
    vocabulary (not with label_smoothing, which needs the whole logits)."""
    save_every: int = 100  # the run field of CheckpointedRunConfig, with SFT's default

    RESUME_FREE: ClassVar[frozenset[str]] = CheckpointedRunConfig.RESUME_FREE | {"eval_every"}

    def __post_init__(self):
        super().__post_init__()
        require(self.steps > 0 and self.batch_size > 0 and self.micro_batch_size > 0, "steps and batch sizes must be > 0")
        require(self.max_len >= 2, "max_len must be >= 2 (a prompt token and a completion token)")
        require(self.eval_n > 0, "eval_n must be > 0 (held-out problems per evaluation)")
        require(self.eval_max_new_tokens > 0, "eval_max_new_tokens must be > 0")
        require(0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)")
        require(not (self.forward.logit_chunk and self.label_smoothing),
                "forward.logit_chunk with label_smoothing: the smoothed loss needs the whole logits; set one of them to 0")
        require(self.task_records > 0, "task_records must be > 0")
        for key in ("eval_k", "eval_every", "save_every"):
            require(getattr(self, key) >= 0, f"{key} must be >= 0")
        require(bool(self.prompt_field) and bool(self.completion_field), "prompt_field and completion_field must name columns")


def load_records(cfg: Config, task) -> list[dict[str, str]]:
    if not cfg.data:
        if not hasattr(task, "sft_records"):
            raise ConfigError(f"task {cfg.task!r} has no worked solutions; pass data=<file>")
        return task.sft_records("train", cfg.task_records, seed=cfg.seed)
    rows = load_rows(cfg.data)
    return select_text_fields(rows, {"prompt": cfg.prompt_field, "completion": cfg.completion_field}, cfg.data)


def run(cfg: Config) -> dict:
    set_threads(cfg.threads)
    set_seed(cfg.seed)
    run_ = Run(cfg, "sft")  # checks output_dir and picks the checkpoint; writes nothing yet
    task = make_task(cfg.task, cfg.data_dir or None)
    tokenizer, model = load_policy(cfg.model, task)
    render = lambda p: render_prompt(tokenizer, p, cfg.model.use_chat_template)  # noqa: E731
    records = load_records(cfg, task)
    held_out = drop_long_prompts(task.examples("test", cfg.eval_n, seed=cfg.seed), tokenizer, render, model,
                                 cfg.eval_max_new_tokens, f"{cfg.task}/test")
    optimizer, scheduler = build_optimizer(model.parameters(), cfg.optim, cfg.steps)
    sampler = TorchSampler(model, tokenizer)
    batches = ShuffledPasses(len(records), SeededShuffle(lambda epoch: cfg.seed + epoch))
    start = 0
    if (ckpt := run_.resume_from) is not None:
        state = load_checkpoint(ckpt, model, optimizer, scheduler)
        batches.load_state_dict(state)
        start = state["step"]
        print(f"sft: resumed from {ckpt} at step {start}")
    out_dir = run_.start()  # only once the task, model and data have loaded: bad input writes nothing

    def run_eval(step: int) -> dict:
        summary, _ = evaluate(sampler, task, held_out, render, SamplingConfig(max_new_tokens=cfg.eval_max_new_tokens),
                              k=cfg.eval_k, seed=cfg.seed)
        run_.log(step, flat_metrics(summary))
        return summary

    before = run_.before_training(lambda: run_eval(0), fresh=start == 0)
    metrics: dict = {}
    with progress("sft", cfg.steps) as bar:
        bar.advance(start)
        for step in range(start + 1, cfg.steps + 1):
            picked = [records[i] for i in batches.next(cfg.batch_size)]
            batch = encode_pairs(tokenizer, [render(r["prompt"]) for r in picked], [r["completion"] for r in picked],
                                 cfg.max_len)
            metrics = supervised_step(model, batch, cfg.micro_batch_size, optimizer, scheduler, cfg.optim.max_grad_norm,
                                      label_smoothing=cfg.label_smoothing, forward=cfg.forward)
            run_.log(step, metrics)
            bar.advance()
            bar.set(f"loss {metrics['loss']:.3f}")
            if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
                run_eval(step)
            if cfg.save_every and step % cfg.save_every == 0:
                save_checkpoint(out_dir, step, model, optimizer, scheduler, batches.state_dict())
    after = run_eval(cfg.steps)
    save_model(model, tokenizer, run_.dir / "model")
    if before is not None:
        print(f"before SFT:\n{format_table(before)}")
    print(f"after SFT ({cfg.steps} steps):\n{format_table(after)}")
    result = {"before": before, "after": after, "final_loss": metrics.get("loss"),
              "model_dir": str(run_.dir / "model")}
    run_.write_json("summary.json", result)
    run_.close()
    return result
