"""Evaluate a model on a task's held-out split.

Reports pass@1 with greedy decoding, pass@1 over k samples, unbiased pass@k and maj@k (majority vote
over the task's normalised answers), overall and per difficulty level. Writes `summary.json` and
every sample (`samples.jsonl`) to the run directory.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from reasonloop.config import ConfigError, require
from reasonloop.tasks import make_task
from reasonloop.models.loading import ModelConfig, drop_long_prompts, load_policy, model_label, render_prompt
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.rollout.multiturn import AgentConfig, build_agent_engine
from reasonloop.rollout.sampler import TorchSampler
from reasonloop.train.evaluation import evaluate, format_table
from reasonloop.train.paired import format_differences, paired_differences, per_problem, read_rows
from reasonloop.train.run import Run, set_seed, set_threads
from reasonloop.train.runconfig import RunConfig


log = logging.getLogger(__name__)

SPLITS = ("train", "test", "validation", "valid", "dev", "prompt")  # the split names tasks know


@dataclass
class Config(RunConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model to evaluate."""
    task: str = "arithmetic"
    """Task name (see reasonloop/tasks); NAME:ARG passes an argument, e.g. arithmetic:2-3 for levels 2 and 3."""
    data_dir: str = ""
    """Directory or file with the task's data, for file-backed tasks."""
    split: str = "test"
    """Which split to evaluate."""
    n: int = 200
    """Number of problems (spread over the task's levels)."""
    k: int = 8
    """Samples per problem for pass@1 (sampled), pass@k and maj@k; 0 runs greedy only."""
    greedy: bool = True
    """Also decode greedily (pass@1_greedy)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Sampling parameters for the k samples."""
    batch_prompts: int = 64
    """Prompts per generation call."""
    baseline: str = ""
    """An earlier `reasonloop eval` run directory on the same problems (same task, split, n and seed): this
    model is compared with it problem by problem, the differences with 95% paired-bootstrap intervals
    (docs/eval.md); empty: no comparison."""
    agent: AgentConfig = field(default_factory=AgentConfig)
    """agent.env=tools: evaluate without tools and with them (tool-call rate, turns, tool errors; docs/agents.md)."""

    def __post_init__(self):
        super().__post_init__()
        require(self.n > 0, "n must be > 0")
        require(self.k >= 0, "k must be >= 0")
        require(self.greedy or self.k > 0, "nothing to do: greedy=false and k=0")
        require(self.batch_prompts > 0, "batch_prompts must be > 0")
        require(self.split in SPLITS, f"split={self.split!r} is not a split name; use one of {list(SPLITS)}")
        require(self.k == 0 or self.sampling.temperature > 0 or self.k == 1,
                f"k={self.k} samples at sampling.temperature=0 are {self.k} copies of the greedy answer; "
                "use a temperature > 0 or k=0")


def baseline_rows(run_dir: str) -> list[dict]:
    """The sample rows of an earlier eval run, or a ConfigError that says what is missing."""
    path = Path(run_dir) / "samples.jsonl"
    if not path.is_file():
        raise ConfigError(f"baseline={run_dir!r}: no samples.jsonl there (a `reasonloop eval` run directory holds one)")
    try:
        rows = read_rows(path)
        if not all({"id", "mode", "correct"} <= r.keys() for r in rows):
            raise ValueError("a row lacks id, mode or correct")
    except ValueError as exc:
        raise ConfigError(f"baseline={run_dir!r}: {path.name} is not an eval run's sample file ({exc})") from exc
    return rows


def run(cfg: Config) -> dict:
    set_threads(cfg.threads)
    set_seed(cfg.seed)
    run_ = Run(cfg, "eval")  # checks output_dir; writes nothing until start()
    base = per_problem(baseline_rows(cfg.baseline)) if cfg.baseline else None
    task = make_task(cfg.task, cfg.data_dir or None)
    tokenizer, model = load_policy(cfg.model, task)
    render = lambda p: render_prompt(tokenizer, p, cfg.model.use_chat_template)  # noqa: E731
    examples = drop_long_prompts(task.examples(cfg.split, cfg.n, seed=cfg.seed), tokenizer, render, model,
                                 cfg.sampling.max_new_tokens, f"{cfg.task}/{cfg.split}")
    run_.start()  # after loading: bad input writes nothing
    engine = TorchSampler(model, tokenizer)
    summary, rows = evaluate(
        engine, task, examples, render=render,
        sampling=cfg.sampling, k=cfg.k, greedy=cfg.greedy, batch_prompts=cfg.batch_prompts, seed=cfg.seed,
    )
    label = model_label(cfg.model.name, task)
    result = {"model": label, "task": cfg.task, "split": cfg.split, "eval": summary}
    if cfg.agent.env:  # the same problems again, as multi-turn episodes with the environment's tools
        agent_engine = build_agent_engine(cfg.agent, model, tokenizer, chat_template=cfg.model.use_chat_template)
        if agent_engine.tool_specs:  # the chat template's tool-call format: the prompt declares the tools
            render = lambda p: render_prompt(tokenizer, p, cfg.model.use_chat_template, tools=agent_engine.tool_specs)  # noqa: E731
        with_tools, tool_rows = evaluate(agent_engine, task, examples, render=render, sampling=cfg.sampling, k=cfg.k,
                                         greedy=cfg.greedy, batch_prompts=cfg.batch_prompts, seed=cfg.seed)
        rows += [{**r, "mode": f"{r['mode']}+{cfg.agent.env}"} for r in tool_rows]
        result.update({"eval_with_tools": with_tools, "agent": agent_engine.metrics()})
    if base is not None:
        diffs = paired_differences(base, per_problem(r for r in rows if r["mode"] in ("greedy", "sampled")),
                                   seed=cfg.seed)
        result["vs_baseline"] = {"baseline": cfg.baseline, "differences": [asdict(d) for d in diffs]}
    run_.write_jsonl("samples.jsonl", rows)
    run_.write_json("summary.json", result)
    print(f"eval of {label} on {cfg.task}/{cfg.split} ({len(examples)} problems, k={cfg.k}):")
    print(format_table(summary))
    if base is not None:
        if diffs:
            print(f"against baseline={cfg.baseline}, problem by problem ({diffs[0].n} problems in both):")
            print(format_differences(diffs))
        else:
            log.warning("baseline=%s shares no problem with this evaluation: compare runs of the same task, split, "
                        "n and seed", cfg.baseline)
    if cfg.agent.env:
        print(f"with agent.env={cfg.agent.env} ({', '.join(cfg.agent.tools) if cfg.agent.env == 'tools' else ''}):")
        print(format_table(result["eval_with_tools"]))
        print("  ".join(f"{k.removeprefix('agent/')} {v:.3f}" for k, v in result["agent"].items()))
    print(f"written to {run_.dir}")
    run_.close()
    return summary
