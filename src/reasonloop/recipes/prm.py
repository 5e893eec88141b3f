"""Train a process reward model (PRM), or with `labels=outcome` an outcome reward model (ORM).

Objective: for each labelled step, cross-entropy of a 2-way token-classification head read at the step's
last token (TRL's PRMTrainer convention; `prm/model.py`), against the step's hard label (`label_type=hard`:
TRL's and Math-Shepherd's hard estimation) or its soft Monte-Carlo value (`label_type=soft`: binary
cross-entropy on the logit difference, Math-Shepherd's soft estimation). Token losses are averaged over
all labelled steps of the optimizer batch (invariant to `micro_batch_size`). The trunk starts from a
causal LM (the policy, or `base`), the head is fresh; every weight trains.

Labels (`prm/labels.py`):
- `labels=mc` (default): Math-Shepherd (Wang et al. 2024): the policy's solutions of `prompts` train prompts,
  each step prefix completed `mc_rollouts` times; hard label = any completion is verified right.
- `labels=outcome`: an ORM: every step carries the solution's verdict (`train_on_last_step_only=true`
  trains only the last step, TRL's switch); `score_steps(...)[-1]` is its verdict.
- `data=`: a step file in TRL's stepwise-supervision format (prompt, completions, labels[, values]).

Held-out (`prm/metrics.py`): step AUC and outcome AUC on MC labels of the policy's solutions of
`eval_prompts` test-split prompts (`eval_mc_rollouts` per prefix; or `eval_data=`), and first-error
accuracy on the task's traces with a known first wrong step (arithmetic: `ArithmeticTask.first_error_traces`),
before training (the fresh head) and after. The labels are written to the run directory as step files
(`train_steps.jsonl`, `held_out_steps.jsonl`), reused on resume and loadable with `data=`/`eval_data=`.

The model is saved to `<run>/model` (save_pretrained + prm.json); `reasonloop.prm.load_prm(<run>/model)` loads it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import torch

from reasonloop.config import ConfigError, require, require_choice
from reasonloop.models.loading import DTYPES, ModelConfig, context_length, load_policy, render_prompt, resolve_model_path
from reasonloop.prm.labels import StepExample, mc_labels, read_step_file
from reasonloop.prm.metrics import evaluate
from reasonloop.prm.model import ProcessRewardModel, new_prm, step_cross_entropy
from reasonloop.rewards.process import DEFAULT_DELIMITERS
from reasonloop.rollout.engine import RolloutConfig, SamplingConfig, build_engine
from reasonloop.tasks import make_task
from reasonloop.train.checkpoint import load_checkpoint, save_checkpoint
from reasonloop.train.optim import OptimConfig, build_optimizer, clip_and_step
from reasonloop.train.run import Run, progress, set_seed, set_threads
from reasonloop.train.runconfig import CheckpointedRunConfig

TRAIN_FILE, HELD_OUT_FILE, LABELS_INFO = "train_steps.jsonl", "held_out_steps.jsonl", "labels.json"
METRICS = ("step_auc", "outcome_auc", "step_acc", "first_error_acc", "correct_trace_acc")


@dataclass
class Config(CheckpointedRunConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy: it samples the solutions and the Monte-Carlo rollouts, and its weights start the PRM's
    trunk unless `base` is set."""
    base: str = ""
    """Causal LM (directory or hub id) whose weights start the PRM; empty: model.name."""
    task: str = "arithmetic"
    """Task whose train prompts are labelled, whose verifier judges the rollouts, and whose test split is held out."""
    data_dir: str = ""
    """Data location for file-backed tasks."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """The engine that samples solutions and rollouts."""
    labels: str = "mc"
    """mc: Monte-Carlo step labels (Math-Shepherd); outcome: every step labelled with the solution's verdict (an ORM)."""
    label_type: str = "hard"
    """hard: cross-entropy on the hard label (any rollout succeeds); soft: on the fraction that succeed."""
    train_on_last_step_only: bool = False
    """Train only each solution's last step (TRL's switch; with labels=outcome, the classic ORM)."""
    data: str = ""
    """Training step file (TRL stepwise format: prompt, completions, labels[, values]); empty: label sampled solutions."""
    eval_data: str = ""
    """Held-out step file; empty: MC labels of the policy's solutions of eval_prompts test prompts."""
    prompt_field: str = "prompt"
    """Step files: column holding the prompt."""
    steps_field: str = "completions"
    """Step files: column holding the list of steps."""
    labels_field: str = "labels"
    """Step files: column holding one bool per step."""
    values_field: str = "values"
    """Step files: optional column with one soft label in [0, 1] per step (label_type=soft)."""
    step_separator: str = ""
    """Text appended to every step before tokenizing (TRL uses "\\n"); empty: steps end in their delimiter."""
    delimiters: list[str] = field(default_factory=lambda: list(DEFAULT_DELIMITERS))
    """Step ends for splitting sampled solutions (each step keeps its delimiter; see rewards.process.step_spans)."""
    prompts: int = 256
    """Train prompts whose solutions are sampled and labelled (data empty)."""
    samples_per_prompt: int = 4
    """Solutions sampled per prompt (repeats of one prompt's solution are kept once)."""
    mc_rollouts: int = 4
    """K: completions rolled out from every step prefix of a training solution (labels=mc)."""
    eval_prompts: int = 100
    """Held-out test-split prompts for the MC-labelled held-out solutions."""
    eval_mc_rollouts: int = 8
    """K for the held-out labels (fixed apart from mc_rollouts, so runs with different K are judged alike)."""
    error_solutions: int = 0
    """Train problems whose correct and corrupted careful traces (the first-error generator's; arithmetic) join the
    policy's samples as solutions to MC-label: errors the policy itself rarely makes. 0: policy samples only."""
    error_traces: int = 100
    """Test-split problems for first-error accuracy (a correct and a corrupted trace each; tasks that make them)."""
    temperature: float = 1.0
    """Sampling temperature of solutions and rollouts."""
    max_new_tokens: int = 64
    """Length limit of sampled solutions and rollouts."""
    rollout_batch: int = 64
    """Prompts (or step prefixes) per engine call; each is sampled samples_per_prompt (or K) times."""
    steps: int = 100
    """Optimizer steps."""
    batch_size: int = 32
    """Solutions per optimizer step."""
    micro_batch_size: int = 32
    """Solutions per forward/backward; gradients accumulate up to batch_size."""
    max_length: int = 0
    """Tokens the PRM reads per solution (longer: the oldest are dropped); 0: the model's context length."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, warmup_steps=10))
    """Optimiser and schedule."""

    def __post_init__(self):
        super().__post_init__()
        require_choice("labels", self.labels, ["mc", "outcome"])
        require_choice("label_type", self.label_type, ["hard", "soft"])
        require(self.steps > 0 and self.batch_size > 0 and self.micro_batch_size > 0, "steps and batch sizes must be > 0")
        require(self.prompts > 0 and self.eval_prompts > 0 and self.error_traces >= 0,
                "prompts and eval_prompts must be > 0 and error_traces >= 0")
        require(self.samples_per_prompt >= 1 and self.mc_rollouts >= 1 and self.eval_mc_rollouts >= 1,
                "samples_per_prompt, mc_rollouts and eval_mc_rollouts must be >= 1")
        require(self.temperature > 0, "temperature must be > 0: greedy rollouts of one prefix are all the same, so "
                "Monte-Carlo labels would be one sample repeated")
        require(self.max_new_tokens > 0 and self.rollout_batch > 0, "max_new_tokens and rollout_batch must be > 0")
        require(self.max_length >= 0, "max_length must be >= 0 (0: the model's context length)")
        require(bool(self.delimiters) and all(isinstance(d, str) and d for d in self.delimiters),
                "delimiters must be a non-empty list of non-empty strings")
        require(not (self.data and self.labels == "outcome"),
                "labels=outcome labels sampled solutions; with data= the file's labels are used (for an ORM from a "
                "file, label every step with the outcome, or set train_on_last_step_only=true)")
        require(self.error_solutions >= 0 and not (self.data and self.error_solutions),
                "error_solutions must be >= 0, and 0 with data= (it adds solutions to label, a file brings its own)")
        require(self.model.lora.r == 0, "prm trains all weights: LoRA (model.lora.r > 0) is not supported here")


def prm_step(prm: ProcessRewardModel, rows: list[StepExample], cfg: Config, optimizer, scheduler) -> dict[str, float]:
    """One optimizer step over `rows`: the mean step cross-entropy over every trained step of the batch,
    accumulated over micro-batches."""
    prm.model.train()
    trained = [[k == len(r.steps) - 1 or not cfg.train_on_last_step_only for k in range(len(r.steps))] for r in rows]
    total = sum(sum(t) for t in trained)
    sums = {"loss": 0.0, "accuracy": 0.0, "p_correct": 0.0}
    for start in range(0, len(rows), cfg.micro_batch_size):
        micro = rows[start : start + cfg.micro_batch_size]
        logits = torch.cat(prm.forward_steps([prm.encode(r.prompt, r.steps) for r in micro]))
        targets = torch.tensor([t for r in micro for t in r.targets(cfg.label_type)], device=logits.device)
        keep = torch.tensor([m for t in trained[start : start + len(micro)] for m in t], device=logits.device)
        per_step = step_cross_entropy(logits, targets)[keep]
        (per_step.sum() / total).backward()
        p = logits.detach().float().softmax(-1)[:, 1][keep]
        sums["loss"] += float(per_step.detach().sum())
        sums["accuracy"] += float(((p >= 0.5) == (targets[keep] >= 0.5)).sum())
        sums["p_correct"] += float(p.sum())
    grad_norm, stepped = clip_and_step(prm.model, optimizer, scheduler, cfg.optim.max_grad_norm)
    prm.model.eval()
    return {**{k: v / total for k, v in sums.items()}, "grad_norm": grad_norm, "skipped": float(not stepped)}


def labelled(run_: Run, name: str, make) -> tuple[list[StepExample], dict]:
    """The step examples of `name` in a continued run directory, or `make()`'s (examples, info)."""
    path, info_path = run_.dir / name, run_.dir / LABELS_INFO
    if run_.existing and path.is_file() and info_path.is_file():
        rows, _ = read_step_file(str(path))
        print(f"prm: reusing {len(rows)} labelled solutions from {path}")
        return rows, {**json.loads(info_path.read_text()).get(name, {}), "reused": True}
    return make()


def run(cfg: Config) -> dict:
    set_threads(cfg.threads)
    set_seed(cfg.seed)
    run_ = Run(cfg, "prm")  # checks output_dir and picks the checkpoint; writes nothing yet
    task = make_task(cfg.task, cfg.data_dir or None)
    tokenizer, policy = load_policy(cfg.model, task)
    render = lambda p: render_prompt(tokenizer, p, cfg.model.use_chat_template)  # noqa: E731
    engine = build_engine(cfg.rollout, policy, tokenizer)
    sampling = SamplingConfig(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
    fields = {"prompt_field": cfg.prompt_field, "steps_field": cfg.steps_field, "labels_field": cfg.labels_field,
              "values_field": cfg.values_field}

    def sampled(split: str, n: int, k: int, outcome_only: bool, seed: int, planted: int = 0):
        examples = task.examples(split, n, seed=cfg.seed)
        given: list = [None] * len(examples)
        if planted:
            if not hasattr(task, "first_error_traces"):
                raise ConfigError(f"error_solutions={planted}: task {cfg.task!r} makes no traces with planted errors")
            traces = task.first_error_traces(split, planted, seed=cfg.seed)  # a correct + a corrupted one per problem
            examples = examples + task.examples(split, planted, seed=cfg.seed)
            given += [[t.completion for t in traces[i : i + 2]] for i in range(0, len(traces), 2)]
        rows, stats = mc_labels(engine, examples, task.is_correct, render=render,
                                solutions_per_prompt=cfg.samples_per_prompt, mc_rollouts=k, sampling=sampling,
                                delimiters=cfg.delimiters, generator=torch.Generator().manual_seed(seed),
                                batch_prompts=cfg.rollout_batch, outcome_only=outcome_only, given=given)
        what = "outcome-labelled" if outcome_only else f"MC-labelled (K={k})"
        print(f"prm: {stats.solutions} {what} {split} solutions of {len(examples)} prompts, {stats.steps} steps, "
              f"{stats.rollouts} rollouts, {stats.generated_tokens} generated tokens")
        return rows, {"prompts": len(examples), **stats.as_dict()}

    def from_file(source: str):
        rows, skips = read_step_file(source, **fields)
        return rows, {"source": source, "rows": len(rows), "skipped": sum(skips.values()), "skips": dict(skips)}

    train, train_info = labelled(run_, TRAIN_FILE, lambda: from_file(cfg.data) if cfg.data else sampled(
        "train", cfg.prompts, cfg.mc_rollouts, cfg.labels == "outcome", cfg.seed, cfg.error_solutions))
    held_out, held_out_info = labelled(run_, HELD_OUT_FILE, lambda: from_file(cfg.eval_data) if cfg.eval_data
                                       else sampled("test", cfg.eval_prompts, cfg.eval_mc_rollouts, False, cfg.seed + 1))
    if not train:
        raise ConfigError("no training solutions: the policy produced no non-empty completion (check max_new_tokens "
                          "and the model)")
    traces = []
    if hasattr(task, "first_error_traces") and cfg.error_traces and list(cfg.delimiters) == list(DEFAULT_DELIMITERS):
        traces = task.first_error_traces("test", cfg.error_traces, seed=cfg.seed)
    del engine
    device = next(policy.parameters()).device
    del policy
    base = resolve_model_path(cfg.base or cfg.model.name, task)
    prm = new_prm(base, cfg.delimiters, cfg.step_separator, DTYPES[cfg.model.dtype], device, seed=cfg.seed)
    prm.max_length = cfg.max_length or context_length(prm.model) or prm.max_length
    optimizer, scheduler = build_optimizer(prm.model.parameters(), cfg.optim, cfg.steps)
    state = {"step": 0}
    if (ckpt := run_.resume_from) is not None:
        state = load_checkpoint(ckpt, prm.model, optimizer, scheduler)
        print(f"prm: resumed from {ckpt} at step {state['step']}")
    out_dir = run_.start()
    for name, rows, info in ((TRAIN_FILE, train, train_info), (HELD_OUT_FILE, held_out, held_out_info)):
        if not info.get("reused"):
            run_.write_jsonl(name, [r.to_row() for r in rows])
    run_.write_json(LABELS_INFO, {TRAIN_FILE: {k: v for k, v in train_info.items() if k != "reused"},
                                  HELD_OUT_FILE: {k: v for k, v in held_out_info.items() if k != "reused"}})
    before = run_.before_training(lambda: evaluate(prm, held_out, traces), fresh=state["step"] == 0)
    print(f"prm: {len(train)} training solutions, {len(held_out)} held-out, {len(traces)} first-error traces; "
          f"before training: {_line(before)}")
    metrics: dict = {}
    with progress("prm", cfg.steps) as bar:
        bar.advance(state["step"])
        for step in range(state["step"] + 1, cfg.steps + 1):
            picked = random.Random(f"{cfg.seed}:{step}").sample(train, min(cfg.batch_size, len(train)))
            metrics = prm_step(prm, picked, cfg, optimizer, scheduler)
            run_.log(step, metrics)
            bar.advance()
            bar.set(f"loss {metrics['loss']:.3f}")
            if cfg.save_every and step % cfg.save_every == 0 and step != cfg.steps:
                save_checkpoint(out_dir, step, prm.model, optimizer, scheduler, {})
    after = evaluate(prm, held_out, traces)
    run_.log(cfg.steps, {f"eval/{k}": v for k, v in after.items() if v is not None})
    model_dir = run_.dir / "model"
    prm.save(model_dir, labels=cfg.labels, label_type=cfg.label_type,
             train_on_last_step_only=cfg.train_on_last_step_only)
    print(f"prm: after training: {_line(after)}; saved to {model_dir}")
    result = {"kind": "orm" if cfg.labels == "outcome" or cfg.train_on_last_step_only else "prm",
              "train": train_info, "held_out": held_out_info, "train_solutions": len(train),
              "held_out_solutions": len(held_out), "error_traces": len(traces), "before": before, "after": after,
              "final_loss": metrics.get("loss"), "prm_tokens_read": prm.tokens_read, "model_dir": str(model_dir)}
    run_.write_json("summary.json", result)
    run_.close()
    return result


def _line(m: dict | None) -> str:
    if not m:
        return "(not recorded)"
    return ", ".join(f"{k} {m[k]:.3f}" for k in METRICS if m.get(k) is not None)

