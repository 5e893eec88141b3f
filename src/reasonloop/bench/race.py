"""The race (`reasonloop bench race=true`): reasonloop and TRL's GRPOTrainer train the same model with the
same GRPO configuration until held-out greedy pass@1 reaches `race_target` (or `race_max_steps`).

Same for both: the starting model (the embedded one unless `model=`), the prompts and their order
(TRL's dataset is the list reasonloop's trainer draws), B=`race_prompts`, G=`group_size`, the reward
functions and weights, temperature, completion limit, lr (constant), beta (k3 KL in the loss), clip
0.2, one iteration per batch, micro-batches, AdamW betas, grad-norm clip 1.0, one torch thread. Both are
evaluated every `race_eval_every` steps by the same code: greedy decoding of the same held-out problems
with reasonloop's sampler on that side's current weights (`train.evaluation.evaluate`), time not counted.

The two step in turn in one process (each TRL step, then one reasonloop step), so a change in the
machine's load hits both alike. What cannot be equal: the random streams (each samples its own
completions, so the two runs are different draws of the same experiment), TRL's generation through
`model.generate` with its own padding, and each side's numerics (float summation order).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from reasonloop.bench.timing import sync

if TYPE_CHECKING:
    from reasonloop.bench import Config


class Side:
    """One competitor's clock, sample count and held-out curve."""

    def __init__(self, name: str, samples_per_step: int):
        self.name = name
        self.samples_per_step = samples_per_step
        self.steps = 0
        self.train_s = 0.0  # inside its steps
        self.overhead_s = 0.0  # between its steps (TRL: its dataloader, logging and callbacks)
        self.curve: list[dict] = []
        self.reached: dict | None = None

    def record(self, accuracy: float, target: float) -> None:
        point = {"step": self.steps, "train_s": self.train_s, "wall_s": self.train_s + self.overhead_s,
                 "samples": self.steps * self.samples_per_step, "pass@1_greedy": accuracy}
        self.curve.append(point)
        if self.reached is None and accuracy >= target:
            self.reached = point

    def summary(self) -> dict:
        return {"reached": self.reached, "steps": self.steps, "train_s": self.train_s, "overhead_s": self.overhead_s,
                "final_pass@1_greedy": self.curve[-1]["pass@1_greedy"] if self.curve else None, "curve": self.curve}


def run(cfg: Config, out: Path) -> dict:
    from transformers import TrainerCallback

    from reasonloop.bench.grpo import prepare_model, rl_config, timed_trainer, trl_trainer
    from reasonloop.recipes.rl import Trainer
    from reasonloop.rollout.engine import SamplingConfig
    from reasonloop.rollout.sampler import TorchSampler
    from reasonloop.train.evaluation import evaluate

    rc = dataclasses.replace(cfg, prompts=cfg.race_prompts, warmup=0, steps=cfg.race_max_steps)
    model_dir = prepare_model(cfg.model, Path(tempfile.gettempdir()) / "reasonloop-bench-models", cfg.seed)
    rl_cfg = dataclasses.replace(rl_config(rc, model_dir, out / "race-reasonloop"), eval_n=cfg.race_eval_n)
    drawer = Trainer(dataclasses.replace(rl_cfg, output_dir=str(out / "race-prompts")))
    examples = drawer.next_prompts(cfg.race_max_steps * rc.prompts)
    drawer.run.close()
    del drawer
    ours, _ = timed_trainer(rl_cfg)
    held_out, render, task = ours.held_out, ours.render, ours.task
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=cfg.max_new_tokens)
    samplers: dict = {}
    eval_s = [0.0]

    def pass1(side: str, model) -> float:
        t = time.perf_counter()
        engine = samplers.setdefault(side, TorchSampler(model, ours.tokenizer))
        engine.model = model
        summary, _ = evaluate(engine, task, held_out, render, greedy, k=0, seed=cfg.seed)
        eval_s[0] += time.perf_counter() - t
        return summary["overall"]["pass@1_greedy"]

    per_step = rc.prompts * rc.group_size
    mine, theirs = Side("reasonloop", per_step), Side("trl", per_step)
    start = pass1("reasonloop", ours.model)  # the same weights on both sides before training
    mine.record(start, cfg.race_target)
    theirs.record(start, cfg.race_target)
    print(f"race: held-out greedy pass@1 before training {start:.3f} ({len(held_out)} problems); target "
          f"{cfg.race_target}", flush=True)

    def our_step() -> None:
        sync()
        t = time.perf_counter()
        ours.step()
        sync()
        mine.train_s += time.perf_counter() - t
        mine.steps += 1
        if mine.steps % cfg.race_eval_every == 0 or mine.steps == cfg.race_max_steps:
            mine.record(pass1("reasonloop", ours.model), cfg.race_target)
            _report(mine)

    class Race(TrainerCallback):
        def __init__(self):
            self.last_end: float | None = None

        def on_step_begin(self, args, state, control, **k):
            now = time.perf_counter()
            if self.last_end is not None:
                theirs.overhead_s += now - self.last_end
            self.t = now

        def on_step_end(self, args, state, control, **k):
            sync()
            theirs.train_s += time.perf_counter() - self.t
            theirs.steps += 1
            if theirs.steps % cfg.race_eval_every == 0 or theirs.steps == cfg.race_max_steps:
                theirs.record(pass1("trl", trainer.model), cfg.race_target)
                _report(theirs)
            if mine.reached is None and mine.steps < cfg.race_max_steps:
                our_step()  # in turn: the same load for both
            if theirs.reached is not None:
                control.should_training_stop = True
            self.last_end = time.perf_counter()

    trainer, _ = trl_trainer(rc, model_dir, out / "race-trl", examples, ours.task.rewards(), cfg.race_max_steps,
                             [Race()], logging_steps=cfg.race_eval_every)
    trainer.train()
    while mine.reached is None and mine.steps < cfg.race_max_steps:  # TRL got there first: ours goes on alone
        our_step()
    ours.run.close()
    res = {"target": cfg.race_target, "eval_n": len(held_out), "eval_every": cfg.race_eval_every,
           "prompts": rc.prompts, "group_size": rc.group_size, "max_steps": cfg.race_max_steps,
           "evaluation_s_total": eval_s[0], "reasonloop": mine.summary(), "trl": theirs.summary()}
    if mine.reached and theirs.reached:
        res["speedup_train_s"] = theirs.reached["train_s"] / mine.reached["train_s"]
        res["speedup_wall_s"] = theirs.reached["wall_s"] / mine.reached["wall_s"]
        res["samples_ratio"] = theirs.reached["samples"] / mine.reached["samples"]
        print(f"race: reasonloop reached {cfg.race_target} after {mine.reached['step']} steps / "
              f"{mine.reached['samples']} samples / {mine.reached['wall_s']:.1f}s; TRL after {theirs.reached['step']} "
              f"steps / {theirs.reached['samples']} samples / {theirs.reached['wall_s']:.1f}s: reasonloop "
              f"{res['speedup_wall_s']:.2f}x sooner in wall time ({res['speedup_train_s']:.2f}x in step time alone), "
              f"{res['samples_ratio']:.2f}x the samples ratio (evaluation, {eval_s[0]:.1f}s, not counted)", flush=True)
    else:
        print(f"race: target {cfg.race_target} reached by reasonloop: {mine.reached is not None}, by TRL: "
              f"{theirs.reached is not None} within {cfg.race_max_steps} steps", flush=True)
    return res


def _report(side: Side) -> None:
    p = side.curve[-1]
    print(f"race {side.name}: step {p['step']}, {p['wall_s']:.1f}s of training, held-out greedy pass@1 "
          f"{p['pass@1_greedy']:.3f}", flush=True)
