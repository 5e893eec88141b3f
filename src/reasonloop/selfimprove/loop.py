"""The shared skeleton of every self-improvement recipe: generate -> score -> select -> learn.

`LoopConfig` holds the knobs every loop has (model, task, iterations, sampling, fine-tuning budget,
held-out evaluation); recipes subclass it. `Loop` owns the run: the model, the sampler, the task,
the held-out set and the run directory. Recipes call its parts in the order they read best:

    loop = Loop(cfg, "self_train")
    loop.begin()                                   # held-out pass@1 of the base model (iteration 0),
                                                   # or the state of the last finished iteration
    for it in loop.iterations():
        samples = loop.sample(loop.next_prompts())  # generate + score with the task's rewards
        kept = <a rule from selfimprove.selection>
        kept, dropped = dedup(kept)
        loop.finetune(kept)                         # SFT on (prompt, completion), loss on completion
        loop.end_iteration(it, {...counts...})      # held-out pass@1, metrics.jsonl, checkpoint
    return loop.finish()                           # summary.json, model saved

Every finished iteration is checkpointed (`checkpoints/iter-NNN`: the model in safetensors and the
loop's state — the prompt pass in progress, RNG states, history, and whatever the recipe keeps in
`loop.extra_state`). With `resume=auto` a crashed run continues after its last finished iteration.

Held-out pass@1 is greedy decoding on the task's test split (`pass@1_greedy`); `eval_k` > 0 adds
sampled pass@1, pass@k and maj@k.

Multi-turn episodes: a recipe whose config has an `agent` (`rollout.multiturn.AgentConfig`) with `agent.env`
set samples, evaluates and searches on episodes (`loop.engine` is then the multi-turn engine), and
`finetune` trains on the episodes' own tokens with the observation tokens masked out of the loss
(`encode_episodes`); per iteration the rows gain the episode counters (`agent/*` while sampling,
`eval/agent/*` on the held-out set).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from reasonloop.config import require
from reasonloop.data.records import Example
from reasonloop.data.sampling import ShuffledPasses, StreamShuffle
from reasonloop.tasks import make_task
from reasonloop.models.loading import (
    ModelConfig,
    drop_long_prompts,
    load_policy,
    render_prompt,
    save_model,
)
from reasonloop.rewards.core import compute_rewards
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.rollout.multiturn import build_agent_engine, encode_episodes
from reasonloop.rollout.prefix_cache import TreeEngine
from reasonloop.selfimprove.selection import Sample
from reasonloop.train.checkpoint import load_model_weights, reading, write_checkpoint_dir
from reasonloop.train.evaluation import evaluate, flat_metrics, format_table
from reasonloop.models.forward import ForwardConfig, encode_pairs
from reasonloop.train.optim import OptimConfig, build_optimizer
from reasonloop.train.run import Run, set_seed, set_threads
from reasonloop.train.runconfig import RunConfig
from reasonloop.train.supervised import supervised_step


@dataclass
class LoopConfig(RunConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy to improve (model.name=embedded is the shipped tiny model)."""
    task: str = "arithmetic"
    """Task spec (`name` or `name:arg`); its train split feeds the loop, its test split is held out."""
    data_dir: str = ""
    """Data location for file-backed tasks."""
    iterations: int = 3
    """Outer iterations (generate -> score -> select -> learn)."""
    prompts_per_iteration: int = 128
    """Train prompts sampled per iteration (a shuffled pass over the train pool)."""
    train_pool: int = 2000
    """Distinct train problems the loop draws prompts from."""
    samples_per_prompt: int = 4
    """Completions generated per prompt."""
    temperature: float = 1.0
    """Sampling temperature during generation."""
    max_new_tokens: int = 64
    """Completion length limit in tokens."""
    sft_max_steps: int = 40
    """Most fine-tuning steps per iteration."""
    sft_epochs: float = 2.0
    """Passes over the kept samples per iteration (capped by sft_max_steps)."""
    batch_size: int = 32
    """Records per optimizer step."""
    micro_batch_size: int = 32
    """Records per forward/backward; gradients accumulate up to batch_size."""
    forward: ForwardConfig = field(default_factory=ForwardConfig)
    """The training forward, as `train`'s (the fine-tuning steps, preference steps and their log-probs): shared
    prompts, length buckets, and `forward.logit_chunk` for a large vocabulary (docs/scale.md)."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, min_lr_ratio=1.0))
    """Optimiser; a fresh one per iteration (each iteration is its own fine-tune). Constant lr by default."""
    eval_n: int = 200
    """Held-out test problems evaluated before the first and after every iteration."""
    eval_k: int = 0
    """Sampled completions per held-out problem (adds pass@1 sampled, pass@k, maj@k); 0 = greedy only."""

    PROGRESS_KEY: ClassVar[str] = "iterations"  # checkpoints are iter-NNN, one per finished iteration

    def __post_init__(self):
        super().__post_init__()
        require(self.iterations > 0, "iterations must be > 0")
        require(self.prompts_per_iteration > 0 and self.samples_per_prompt > 0, "prompts and samples per prompt must be > 0")
        require(self.temperature >= 0, "temperature must be >= 0")
        require(self.batch_size > 0 and self.micro_batch_size > 0, "batch sizes must be > 0")
        require(self.sft_max_steps >= 0 and self.sft_epochs >= 0, "sft_max_steps and sft_epochs must be >= 0")
        require(self.eval_n > 0, "eval_n must be > 0")
        require(self.train_pool > 0 and self.max_new_tokens > 0, "train_pool and max_new_tokens must be > 0")
        require(self.eval_k >= 0, "eval_k must be >= 0")


class Loop:
    """Owns one self-improvement run. See the module docstring for the order of calls."""

    def __init__(self, cfg: LoopConfig, command: str):
        set_threads(cfg.threads)
        set_seed(cfg.seed)
        self.cfg = cfg
        self.run = Run(cfg, command)  # checks output_dir and picks the checkpoint; writes nothing yet
        self.command = command
        self.task = make_task(cfg.task, cfg.data_dir or None)
        self.tokenizer, self.model = load_policy(cfg.model, self.task)
        self.base_state = copy.deepcopy(self.model.state_dict())  # for ReST-EM's restart from the base
        self.sampler = TreeEngine(self.model, self.tokenizer)  # the torch sampler; step-level search reuses K/V
        agent = getattr(cfg, "agent", None)  # multi-turn episodes (tools): recipes that offer them have cfg.agent
        self.agent_engine = (build_agent_engine(agent, self.model, self.tokenizer, remember=True,
                                                chat_template=cfg.model.use_chat_template)
                             if agent is not None and agent.env else None)
        self.agent_metrics: dict[str, float] = {}  # the episode counters of this iteration (sampling, held-out)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.sampling = SamplingConfig(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
        fits = lambda exs, split: drop_long_prompts(exs, self.tokenizer, self.render, self.model,  # noqa: E731
                                                     cfg.max_new_tokens, f"{cfg.task}/{split}")
        self.train_pool = fits(self.task.examples("train", cfg.train_pool, seed=cfg.seed), "train")
        self.held_out = fits(self.task.examples("test", cfg.eval_n, seed=cfg.seed), "test")
        self._rng = random.Random(cfg.seed)  # shuffles the prompt passes and every fine-tune's batches
        self.prompts = ShuffledPasses(len(self.train_pool), StreamShuffle(self._rng))
        self.history: list[dict[str, Any]] = []
        self.before: dict | None = None
        self.last_eval: dict | None = None
        self.start_iteration = 1
        self.extra_state: dict[str, Any] = {}  # recipe state that must survive a resume (JSON-serialisable)
        self.run.start()  # after loading: bad input writes nothing

    # -- generate and score ---------------------------------------------------------------------
    def render(self, prompt: str) -> str:  # with a chat tool format, the prompt declares the tools
        specs = self.agent_engine.tool_specs if self.agent_engine is not None else None
        return render_prompt(self.tokenizer, prompt, self.cfg.model.use_chat_template, tools=specs)

    @property
    def engine(self):
        """What generates: the multi-turn engine with agent.env set, else the sampler."""
        return self.agent_engine if self.agent_engine is not None else self.sampler

    def next_prompts(self, n: int | None = None) -> list[Example]:
        """`n` train examples, a reshuffled pass over the pool (a new iteration: episodes kept so far are dropped)."""
        if self.agent_engine is not None:
            self.agent_engine.transcripts.clear()
        return [self.train_pool[i] for i in self.prompts.next(n or self.cfg.prompts_per_iteration)]

    def generate(self, examples: Sequence[Example], n: int, prompts: Sequence[str] | None = None,
                 chunk: int = 64) -> list[str]:
        """n completions per example, prompt-major. `prompts` overrides the (rendered) prompt text, e.g.
        a hinted prompt for STaR's rationalisation; it is rendered here too."""
        if self.agent_engine is not None:  # episodes: each environment gets its example (with the given prompt)
            exs = list(examples) if prompts is None else [dataclasses.replace(ex, prompt=p) for ex, p in zip(examples, prompts)]
            out = []
            for start in range(0, len(exs), chunk):
                out += self.agent_engine.episodes(exs[start : start + chunk], n, self.sampling, self.generator,
                                                  render=self.render).completions
            return out
        texts = [self.render(p) for p in (prompts if prompts is not None else [ex.prompt for ex in examples])]
        out: list[str] = []
        for start in range(0, len(texts), chunk):
            out += self.sampler.generate(texts[start : start + chunk], n, self.sampling, self.generator).completions
        return out

    def score(self, examples: Sequence[Example], completions: Sequence[str]) -> list[Sample]:
        """Samples scored by the task's reward components (summed) and its verifier."""
        rewards = compute_rewards(self.task.rewards(), list(completions), list(examples)).total.tolist()
        return [Sample(ex.prompt, c, r, self.task.is_correct(c, ex), ex.id)
                for ex, c, r in zip(examples, completions, rewards)]

    def sample(self, examples: Sequence[Example], n: int | None = None) -> list[Sample]:
        n = n or self.cfg.samples_per_prompt
        completions = self.generate(examples, n)
        return self.score([ex for ex in examples for _ in range(n)], completions)

    # -- learn ----------------------------------------------------------------------------------
    def reset_to_base(self) -> None:
        """Load the base weights back (ReST-EM fine-tunes the base model every iteration)."""
        self.model.load_state_dict(self.base_state)

    def base_model(self) -> torch.nn.Module:
        """A fresh copy of the model with the base weights (a verifier's or a reference's start)."""
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.base_state)
        return model

    def sft_steps_for(self, n_records: int) -> int:
        return min(self.cfg.sft_max_steps, math.ceil(self.cfg.sft_epochs * n_records / self.cfg.batch_size))

    def finetune(self, samples: Sequence[Sample], steps: int | None = None,
                 optim: OptimConfig | None = None) -> dict[str, float]:
        """Supervised fine-tuning on (prompt, completion) of `samples`, loss on the completion tokens.
        A fresh optimizer each call (`optim`, default the config's); batches are reshuffled passes over the samples."""
        records = [(s.prompt, s.completion) for s in samples]
        steps = self.sft_steps_for(len(records)) if steps is None else steps
        if not records or steps == 0:
            return {"sft_steps": 0.0}
        episodes = self._episodes(samples) if self.agent_engine is not None else None
        optimizer, scheduler = build_optimizer(self.model.parameters(), optim or self.cfg.optim, steps)
        batches = ShuffledPasses(len(records), StreamShuffle(self._rng))
        metrics: dict[str, float] = {}
        losses = []
        for _ in range(steps):
            chosen = batches.next(self.cfg.batch_size)
            picked = [records[i] for i in chosen]
            loss_mask = None
            if episodes is not None:  # the sampled tokens, observation tokens masked out of the loss
                batch, loss_mask = encode_episodes(self.tokenizer, [self.render(p) for p, _ in picked],
                                                   [episodes[i] for i in chosen])
            else:
                batch = encode_pairs(self.tokenizer, [self.render(p) for p, _ in picked], [c for _, c in picked])
            metrics = supervised_step(self.model, batch, self.cfg.micro_batch_size, optimizer, scheduler,
                                      self.cfg.optim.max_grad_norm, loss_mask=loss_mask, forward=self.cfg.forward)
            losses.append(metrics["loss"])
        return {"sft_steps": float(steps), "sft_loss_first": losses[0], "sft_loss_last": losses[-1]}

    def _episodes(self, samples: Sequence[Sample]) -> list[tuple[list[int], list[int]]]:
        """Each sample's episode (token ids, policy mask), as the multi-turn engine sampled it this iteration."""
        found = [self.agent_engine.transcripts.get(s.completion) for s in samples]
        missing = sum(e is None for e in found)
        if missing:
            raise ValueError(f"{missing} of {len(samples)} samples to fine-tune on are not episodes sampled this "
                             "iteration: their observation tokens cannot be masked out of the loss")
        return found

    # -- observe --------------------------------------------------------------------------------
    def evaluate(self) -> dict:
        if self.agent_engine is not None:
            self._agent_counters("agent")  # what sampling counted so far belongs to the iteration, not the eval
        summary, _ = evaluate(self.engine, self.task, self.held_out, self.render,
                              SamplingConfig(temperature=1.0, max_new_tokens=self.cfg.max_new_tokens),
                              k=self.cfg.eval_k, seed=self.cfg.seed)
        if self.agent_engine is not None:
            self._agent_counters("eval/agent")
        return summary

    def _agent_counters(self, prefix: str) -> None:
        """Add the multi-turn engine's counters since they were last read to this iteration's (as `prefix/...`)."""
        for k, v in self.agent_engine.metrics().items():
            self.agent_metrics[prefix + k[len("agent"):]] = v

    def begin(self) -> dict:
        """Evaluate the base model (iteration 0), or restore the last finished iteration's checkpoint."""
        if self._restore():
            print(f"{self.command}: resumed after iteration {self.start_iteration - 1}")
            return self.before
        self.before = self.evaluate()
        self.run.log(0, {"iteration": 0, **flat_metrics(self.before), **self.agent_metrics})
        self.agent_metrics = {}
        print(f"{self.command}: base model, held-out\n{format_table(self.before)}")
        return self.before

    def iterations(self) -> range:
        return range(self.start_iteration, self.cfg.iterations + 1)

    # -- checkpoints ----------------------------------------------------------------------------
    def _checkpoint(self, iteration: int) -> None:
        def fill(tmp):
            self.model.save_pretrained(str(tmp / "model"), safe_serialization=True)
            state = {"iteration": iteration, "history": self.history, "before": self.before,
                     "last_eval": self.last_eval, "prompts": self.prompts.state_dict(), "rng": rng_to_json(self._rng.getstate()),
                     "extra": self.extra_state}
            (tmp / "state.json").write_text(json.dumps(state))
            torch.save(self.generator.get_state(), tmp / "generator.pt")

        write_checkpoint_dir(self.run.dir, f"iter-{iteration:03d}", fill)

    def _restore(self) -> bool:
        path = self.run.resume_from
        if path is None:
            return False
        load_model_weights(self.model, path / "model")
        with reading(path):
            state = json.loads((path / "state.json").read_text())
            self.history, self.before, self.last_eval = state["history"], state["before"], state["last_eval"]
            self.prompts.load_state_dict(state["prompts"])
            self._rng.setstate(rng_from_json(state["rng"]))
            self.generator.set_state(torch.load(path / "generator.pt"))
            self.extra_state = state["extra"]
            self.start_iteration = state["iteration"] + 1
        return True

    def end_iteration(self, iteration: int, metrics: dict[str, Any], evaluate_now: bool = True) -> dict:
        row = {"iteration": iteration, **metrics}
        if evaluate_now:
            self.last_eval = self.evaluate()
            row.update(flat_metrics(self.last_eval))
        if self.agent_engine is not None:
            self._agent_counters("agent")
            row.update(self.agent_metrics)
            self.agent_metrics = {}
        self.run.log(iteration, row)
        self.history.append(row)
        self._checkpoint(iteration)
        shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if "/level/" not in k}
        print(f"{self.command}: {shown}")
        return row

    def finish(self, extra: dict | None = None) -> dict:
        after = self.last_eval if self.last_eval is not None else self.evaluate()
        model_dir = self.run.dir / "model"
        save_model(self.model, self.tokenizer, model_dir)
        curve = [self.before["overall"].get("pass@1_greedy") if self.before else None]
        curve += [row.get("eval/pass@1_greedy") for row in self.history]
        result = {"before": self.before, "after": after, "iterations": self.history,
                  "held_out_pass@1_by_iteration": curve, "model_dir": str(model_dir), **(extra or {})}
        self.run.write_json("summary.json", result)
        print(f"{self.command}: held-out pass@1 (greedy) by iteration: {[round(x, 3) for x in curve if x is not None]}")
        self.run.close()
        return result


def rng_to_json(state: Any) -> Any:
    """`random.Random.getstate()` as JSON-friendly nested lists."""
    return [rng_to_json(x) for x in state] if isinstance(state, tuple) else state


def rng_from_json(state: Any) -> Any:
    """Undo `rng_to_json` (JSON turns tuples into lists) for `random.Random.setstate`."""
    return tuple(rng_from_json(x) for x in state) if isinstance(state, list) else state
