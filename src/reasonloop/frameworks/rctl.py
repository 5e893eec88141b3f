"""RCTL: per-task skill adapters, their transfer, and a new task served by mixing them.

The survey's claim: skills learned by RL on one task transfer to others, and modular skill adapters can be
composed for a new task by learning only how to mix them. Made concrete on the embedded tasks, with one base
model for all of them (`model.name`, default tiny-code, which both arithmetic and code_arith can use):

1. **adapters**: one LoRA adapter per task of `skills`, trained by GRPO (`recipes/rl.py`) for `adapter_steps`.
2. **transfer**: every adapter (and the base) evaluated greedily on every skill task: how much arithmetic RL
   helps code, and code RL helps arithmetic.
3. **mixing**: for the `target` task (default `mix:arithmetic+code_arith`, which needs both skills at once) the
   base weights and the adapters are frozen and each adapted linear layer computes
   W = W0 + sum_k w_k * dW_k, with dW_k = (alpha/r) B_k A_k of adapter k (`mixed_weight`, applied with
   torch.nn.utils.parametrize so the model stays an ordinary HF model for the sampler); only the K mixing
   weights w (one per adapter, shared by all layers, started at `mix_init`) are trained, by GRPO for `mix_steps`
   at `mix_lr`. KL to the reference is off in this stage (the reference would be the same frozen weights).

`reasonloop rctl` prints the transfer matrix and the target's table: the base, the untrained mixes
(each adapter alone, the plain sum w = 1), and the trained mix. The baselines at the mixing stage's samples are
ordinary commands: `reasonloop train task=<target> model.name=tiny-code steps=<mix_steps>` (full GRPO) and the
same with `model.lora.r=<rank>` (a fresh LoRA for the target).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils import parametrize

from reasonloop.config import require
from reasonloop.models.loading import LoraConfig, ModelConfig
from reasonloop.recipes import rl
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.train.evaluation import evaluate
from reasonloop.train.run import Run, progress, set_seed, set_threads
from reasonloop.train.runconfig import RunConfig

LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<side>[AB])(?:\.default)?\.weight$")


def adapter_deltas(adapter_dir: str | Path) -> dict[str, torch.Tensor]:
    """{module name in the base model: dW = (alpha / r) * B @ A} of a peft LoRA adapter directory."""
    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    sides: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        m = LORA_KEY.match(key)
        if m:
            sides.setdefault(m["module"], {})[m["side"]] = value.float()
    return {module: scale * ab["B"] @ ab["A"] for module, ab in sides.items() if set(ab) == {"A", "B"}}


def mixed_weight(base: torch.Tensor, deltas: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """W0 + sum_k w_k dW_k: base [out, in], deltas [K, out, in], weights [K]."""
    if deltas.shape[1:] != base.shape or weights.shape != deltas.shape[:1]:
        raise ValueError(f"mixed_weight: base {tuple(base.shape)}, deltas {tuple(deltas.shape)}, weights {tuple(weights.shape)}")
    return base + torch.einsum("k,koi->oi", weights.to(base.dtype), deltas.to(base.dtype))


class Mix(nn.Module):
    """The parametrization of one linear weight: `mixed_weight` with the shared mixing weights."""

    def __init__(self, deltas: torch.Tensor, weights: nn.Parameter):
        super().__init__()
        self.register_buffer("deltas", deltas, persistent=False)
        self.weights = weights

    def forward(self, base: torch.Tensor) -> torch.Tensor:
        return mixed_weight(base, self.deltas, self.weights)


def compose(model: nn.Module, adapters: list[dict[str, torch.Tensor]], init: list[float]) -> nn.Parameter:
    """Freeze `model` and parametrize every linear layer some adapter touches as W0 + sum_k w_k dW_k (an
    adapter that does not touch a layer contributes 0 there); returns w, the only trainable parameter."""
    model.requires_grad_(False)
    weights = nn.Parameter(torch.tensor(init, dtype=torch.float32))
    modules = dict(model.named_modules())
    for name in sorted({n for a in adapters for n in a}):
        layer = modules.get(name)
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"adapter module {name!r} is not a linear layer of the base model")
        stacked = torch.stack([a.get(name, torch.zeros_like(layer.weight)).to(layer.weight) for a in adapters])
        parametrize.register_parametrization(layer, "weight", Mix(stacked, weights))
    return weights


class MixTrainer(rl.Trainer):
    """GRPO whose only trainable parameters are the adapters' mixing weights (see the module docstring)."""

    def __init__(self, cfg: rl.Config, adapters: list[dict[str, torch.Tensor]], init: list[float], **kwargs: Any):
        self.adapters, self.init = adapters, init
        super().__init__(cfg, **kwargs)

    def load_policy(self):
        tokenizer, model = super().load_policy()
        self.mix_weights = compose(model, self.adapters, self.init)
        return tokenizer, model


@dataclass
class Config(RunConfig):
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="tiny-code"))
    """The shared base model of every adapter."""
    skills: list[str] = field(default_factory=lambda: ["arithmetic", "code_arith"])
    """Tasks that each get a LoRA skill adapter."""
    target: str = "mix:arithmetic+code_arith"
    """The new task the adapters are mixed for."""
    rank: int = 8
    """LoRA rank of the skill adapters."""
    alpha: int = 16
    """LoRA alpha of the skill adapters."""
    adapter_steps: int = 30
    """GRPO steps per skill adapter."""
    adapter_lr: float = 1e-3
    """Learning rate of the skill adapters."""
    mix_steps: int = 20
    """GRPO steps of the mixing stage."""
    mix_lr: float = 0.05
    """Learning rate of the mixing weights."""
    mix_init: float = 0.5
    """Initial mixing weight of every adapter."""
    prompts_per_step: int = 16
    """B of every GRPO stage."""
    group_size: int = 8
    """G of every GRPO stage."""
    eval_n: int = 100
    """Held-out problems per task in the transfer matrix and the target table."""
    adapters: list[str] = field(default_factory=list)
    """Existing adapter directories, one per skill, to skip stage 1."""

    def __post_init__(self):
        super().__post_init__()
        require(len(self.skills) >= 1, "skills must name at least one task")
        require(not self.adapters or len(self.adapters) == len(self.skills), "adapters: one directory per skill")
        require(self.rank > 0 and self.alpha > 0, "rank and alpha must be > 0")
        require(min(self.adapter_steps, self.mix_steps, self.prompts_per_step, self.eval_n) > 0 and self.group_size >= 2,
                "steps, prompts_per_step and eval_n must be > 0, group_size >= 2")


def _rl_config(cfg: Config, out: Path, task: str, steps: int, lr: float, lora: int = 0, **extra: Any) -> rl.Config:
    model = dataclasses.replace(cfg.model, lora=LoraConfig(r=lora, alpha=cfg.alpha) if lora else LoraConfig())
    return rl.Config(model=model, setting="defaults", task=task, steps=steps, prompts_per_step=cfg.prompts_per_step,
                     group_size=cfg.group_size, eval_n=cfg.eval_n, eval_k=0, eval_every=0, samples_every=0,
                     save_every=0, threads=cfg.threads, seed=cfg.seed, output_dir=str(out),
                     optim=dataclasses.replace(rl.Config().optim, lr=lr), **extra)


def mix_accuracy(trainer: rl.Trainer, weights: list[float], tasks: dict[str, Any], n: int, seed: int) -> dict[str, float]:
    """Greedy accuracy of the trainer's composed model with the mixing weights set to `weights`, per task."""
    with torch.no_grad():
        trainer.mix_weights.copy_(torch.tensor(weights))
    out = {}
    for name, task in tasks.items():
        examples = task.examples("test", n, seed)
        summary, _ = evaluate(trainer.engine, task, examples, trainer.render,
                              SamplingConfig(temperature=1.0, max_new_tokens=trainer.cfg.sampling.max_new_tokens), k=0, seed=seed)
        out[name] = summary["overall"]["pass@1_greedy"]
    return out


def run(cfg: Config) -> dict:
    set_threads(cfg.threads)
    set_seed(cfg.seed)
    run_ = Run(cfg, "rctl")
    out = run_.start()
    adapter_dirs = list(cfg.adapters)
    if not adapter_dirs:
        for skill in cfg.skills:
            trainer = rl.Trainer(_rl_config(cfg, out / f"adapter-{skill.replace(':', '_')}", skill, cfg.adapter_steps,
                                            cfg.adapter_lr, lora=cfg.rank))
            adapter_dirs.append(trainer.train()["model_dir"])
    adapters = [adapter_deltas(d) for d in adapter_dirs]
    k = len(adapters)
    mixer = MixTrainer(_rl_config(cfg, out / "mix", cfg.target, cfg.mix_steps, cfg.mix_lr, kl_coef=0.0), adapters,
                       [cfg.mix_init] * k)
    tasks = {s: rl.make_task(s) for s in cfg.skills}
    if cfg.target not in tasks:
        tasks[cfg.target] = mixer.task
    rows: dict[str, list[float]] = {"base": [0.0] * k}
    rows.update({f"{s} adapter": [float(i == j) for j in range(k)] for i, s in enumerate(cfg.skills)})
    rows["sum (w=1)"] = [1.0] * k
    rows[f"mix init (w={cfg.mix_init})"] = [cfg.mix_init] * k
    table = {name: mix_accuracy(mixer, w, tasks, cfg.eval_n, cfg.seed) for name, w in rows.items()}
    with torch.no_grad():
        mixer.mix_weights.copy_(torch.tensor([cfg.mix_init] * k))
    with progress("rctl mix", cfg.mix_steps) as bar:
        for _ in range(cfg.mix_steps):
            mixer.state.step += 1
            metrics, _ = mixer.step()
            metrics.update({f"mix/w{i}": float(w) for i, w in enumerate(mixer.mix_weights)})
            mixer.run.log(mixer.state.step, metrics)
            bar.advance()
    trained = [float(w) for w in mixer.mix_weights]
    table[f"trained mix (w={[round(w, 2) for w in trained]})"] = mix_accuracy(mixer, trained, tasks, cfg.eval_n, cfg.seed)
    mixer.run.close()
    names = list(tasks)
    lines = [f"{'':<34} " + " ".join(f"{n:>26}" for n in names)]
    lines += [f"{row:<34} " + " ".join(f"{acc[n]:>26.3f}" for n in names) for row, acc in table.items()]
    print(f"held-out greedy pass@1 ({cfg.eval_n} problems per task):\n" + "\n".join(lines))
    result = {"table": table, "mix_weights": trained, "adapters": adapter_dirs}
    run_.write_json("summary.json", result)
    run_.close()
    return result
