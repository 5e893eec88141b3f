"""Rebuild the embedded tiny models: tiny-arith from scratch, tiny-code on top of it.

`corpus=arithmetic` (the default) builds the char-level tokenizer and a tiny Llama config
(`models/tiny.py`) and trains it with a next-token loss on `ArithmeticTask.pretraining_records`
(careful and lazy worked solutions, see `tasks/arithmetic.py`; the questions are random draws,
so only the solutions carry loss). `corpus=code` continues from the tiny-arith asset on the
code_arith task's programs (`CodeArithTask.pretraining_records`: careful ones that copy the formula,
lazy ones that fold its constants). Either way the run evaluates on the held-out split per level and
saves an ordinary HF model directory to `<output_dir>/model`; `export=true` copies it over the
shipped asset. The shipped assets are `reasonloop pretrain` and `reasonloop pretrain_code` (the
same recipe with the code corpus and its settings, `recipes/presets.py`) with their defaults.
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass, field
from typing import ClassVar
from importlib import resources

from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from reasonloop.config import require, require_choice
from reasonloop.tasks.arithmetic import ArithmeticTask
from reasonloop.tasks.code import CodeArithTask
from reasonloop.models.bitnet import to_bitnet
from reasonloop.models.bitnet_pack import export_hf
from reasonloop.tasks.tool_arith import ToolArithTask, segments
from reasonloop.rollout.multiturn import encode_episodes
from reasonloop.models.loading import resolve_model_path
from reasonloop.models.tiny import SIZES, build_config, build_tokenizer
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.rollout.sampler import TorchSampler
from reasonloop.train.evaluation import evaluate, flat_metrics, format_table
from reasonloop.models.forward import encode_pairs
from reasonloop.train.optim import OptimConfig, build_optimizer
from reasonloop.train.run import Run, progress, set_seed, set_threads
from reasonloop.train.runconfig import RunConfig
from reasonloop.train.supervised import supervised_step


@dataclass
class Config(RunConfig):
    corpus: str = "arithmetic"
    """'arithmetic': a new model from scratch (the tiny-arith asset); 'code': continue the tiny-arith asset on
    careful and lazy code_arith programs (the tiny-code asset); 'tool': continue the tiny-arith asset on the
    arithmetic corpus with calculator solutions (shares `p_tool`, `p_tool_hard`; the tiny-tool asset, docs/agents.md)."""
    size: str = "tiny"
    """Model size preset from models/tiny.py SIZES (nano, tiny, small); corpus=arithmetic only."""
    layers: int = 0
    """Transformer layers, replacing the size preset's count (e.g. 2: a student half as deep as tiny-arith,
    docs/r1.md); 0 keeps the preset's. corpus=arithmetic only."""
    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 64
    """Sequences per optimizer step."""
    micro_batch_size: int = 64
    """Sequences per forward/backward; gradients accumulate up to batch_size."""
    corpus_size: int = 150_000
    """Distinct training problems in the corpus (drawn from the train split only)."""
    p_careful: float = 0.4
    """Fraction of careful solutions (arithmetic: step by step; code: the formula copied); the rest jump to the
    result (arithmetic: the final value; code: the constants folded)."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3, weight_decay=0.01, warmup_steps=100))
    """Optimiser and schedule."""
    eval_every: int = 400
    """Evaluate on held-out problems every N steps (and at the end)."""
    eval_per_level: int = 40
    """Held-out problems per level at each evaluation."""
    bitnet: bool = False
    """Build a BitNet b1.58 model (ternary weights, int8 activations, SubLN; docs/bitnet.md): from scratch with
    corpus=arithmetic; corpus=code converts the tiny-arith asset (no SubLN). export=true then writes
    assets/tiny-bitnet, packed (corpus=arithmetic)."""
    p_tool: float = 0.1
    """corpus=tool: the share of solutions that call the calculator (tasks/tool_arith.py); on levels 1-3 only
    when p_tool_hard >= 0."""
    p_tool_hard: float = -1.0
    """corpus=tool: the share of calculator solutions on levels 4 and 5 (tool_arith.HARD_LEVELS, where in-head
    arithmetic fails); < 0: p_tool there too."""
    p_counterfactual: float = 0.0
    """corpus=tool: the share of calculator solutions whose result is another number (true +- 1..20) that the
    answer copies: the data teaches that the answer is the tool's result (tasks/tool_arith.py)."""
    mask_observations: bool = False
    """corpus=tool: leave the calculator's results (`<result>...</result>`, the environment's text) out of the
    loss, as RL does; they stay in the context."""
    export: bool = False
    """Copy the final model over the shipped asset of its corpus (tiny-arith, tiny-code or tiny-tool; tiny-bitnet with bitnet=true)."""

    RESUME_FREE: ClassVar[frozenset[str]] = RunConfig.RESUME_FREE | {"export"}

    def __post_init__(self):
        super().__post_init__()
        require_choice("corpus", self.corpus, list(CORPORA))
        require_choice("size", self.size, list(SIZES))
        require(self.layers >= 0, f"layers={self.layers}: must be >= 0 (0 keeps the size preset's)")
        require(self.layers == 0 or self.corpus == "arithmetic", "layers sets the depth of a new model: corpus=arithmetic only")
        require(self.steps > 0 and self.batch_size > 0 and self.micro_batch_size > 0, "steps and batch sizes must be > 0")
        require(0.0 <= self.p_careful <= 1.0, "p_careful must be in [0, 1]")
        require(0.0 <= self.p_tool <= 1.0, "p_tool must be in [0, 1]")
        require(self.p_tool_hard <= 1.0, "p_tool_hard must be <= 1 (< 0: p_tool)")
        require(0.0 <= self.p_counterfactual <= 1.0, "p_counterfactual must be in [0, 1]")
        require(self.corpus_size > 0 and self.eval_per_level > 0 and self.eval_every >= 0,
                "corpus_size and eval_per_level must be > 0, eval_every >= 0")


CORPORA = {"arithmetic": "tiny-arith", "code": "tiny-code", "tool": "tiny-tool"}  # corpus -> the asset it rebuilds


def encode_masked(tokenizer, records: list[dict]):
    """(batch, loss_mask) for tool-corpus records with the observations (`tool_arith.segments`) out of the loss:
    each piece is tokenised on its own, as the multi-turn engine tokenises an observation, and the rows go
    through `encode_episodes` (observations are context, loss mask 0; the EOS is trained on)."""
    episodes = []
    for r in records:
        ids, policy = [], []
        for text, is_obs in segments(r["completion"]):
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            policy += [0 if is_obs else 1] * len(piece)
        episodes.append((ids, policy))
    return encode_episodes(tokenizer, [r["prompt"] for r in records], episodes)


def run(cfg: Config) -> dict:
    set_threads(cfg.threads)
    set_seed(cfg.seed)
    run_ = Run(cfg, "pretrain")  # checks output_dir; writes nothing yet
    if cfg.corpus == "arithmetic":
        tokenizer = build_tokenizer()
        config = build_config(tokenizer, cfg.size)
        if cfg.layers:
            config.num_hidden_layers = cfg.layers
        model = LlamaForCausalLM(config)
        task = ArithmeticTask()
    else:
        base = resolve_model_path(CORPORA["arithmetic"])
        tokenizer, model = AutoTokenizer.from_pretrained(base), AutoModelForCausalLM.from_pretrained(base)
        task = ToolArithTask() if cfg.corpus == "tool" else CodeArithTask()
    if cfg.bitnet:
        to_bitnet(model, sub_norm=cfg.corpus == "arithmetic")
    run_.start()
    extra = {"p_tool": cfg.p_tool, "p_tool_hard": cfg.p_tool_hard if cfg.p_tool_hard >= 0 else None,
             "p_counterfactual": cfg.p_counterfactual} \
        if cfg.corpus == "tool" else {}
    masked = cfg.corpus == "tool" and cfg.mask_observations
    corpus = task.pretraining_records(cfg.corpus_size, seed=cfg.seed, p_careful=cfg.p_careful, **extra)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"pretrain ({cfg.corpus}{', BitNet b1.58' if cfg.bitnet else ''}): {n_params / 1e6:.2f}M parameters, {cfg.steps} steps x {cfg.batch_size} sequences")

    held_out = task.examples("test", cfg.eval_per_level * len(task.levels), seed=cfg.seed)
    optimizer, scheduler = build_optimizer(model.parameters(), cfg.optim, cfg.steps)
    sampler = TorchSampler(model, tokenizer)
    eval_sampling = SamplingConfig(temperature=1.0, max_new_tokens=64)
    rng = random.Random(cfg.seed)

    def run_eval(step: int) -> dict:
        summary, _ = evaluate(sampler, task, held_out, render=lambda p: p, sampling=eval_sampling, k=4, seed=cfg.seed)
        run_.log(step, flat_metrics(summary))
        print(f"step {step}: held-out accuracy\n{format_table(summary)}")
        return summary

    start = time.time()
    tokens = 0.0
    with progress("pretrain", cfg.steps) as bar:
        for step in range(1, cfg.steps + 1):
            records = rng.sample(corpus, cfg.batch_size)
            if masked:
                batch, loss_mask = encode_masked(tokenizer, records)
            else:
                batch, loss_mask = encode_pairs(tokenizer, [r["prompt"] for r in records], [r["completion"] for r in records]), None
            metrics = supervised_step(model, batch, cfg.micro_batch_size, optimizer, scheduler, cfg.optim.max_grad_norm,
                                      loss_mask=loss_mask)
            tokens += metrics["tokens"]
            metrics["tokens_per_s"] = tokens / (time.time() - start)
            run_.log(step, metrics)
            bar.advance()
            bar.set(f"loss {metrics['loss']:.3f}")
            if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
                run_eval(step)
    summary = run_eval(cfg.steps)
    train_seconds = time.time() - start
    model_dir = run_.dir / "model"
    model.save_pretrained(str(model_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(model_dir))
    result = {"parameters": n_params, "seconds": train_seconds, "eval": summary, "model_dir": str(model_dir)}
    run_.write_json("summary.json", result)
    if cfg.export:
        target = resources.files("reasonloop") / "assets" / ("tiny-bitnet" if cfg.bitnet else CORPORA[cfg.corpus])
        shutil.rmtree(str(target), ignore_errors=True)
        if cfg.bitnet and cfg.corpus == "arithmetic":  # the packed form: 2-bit codes, ~13x smaller
            export_hf(model, tokenizer, str(target))
        else:
            shutil.copytree(model_dir, str(target))
        print(f"exported to {target}")
    print(f"pretrain: done in {train_seconds:.0f}s; model at {model_dir}")
    run_.close()
    return result
