"""The R1 pipeline as one staged, resumable run: each stage is an existing command with its own overrides.

`reasonloop r1` runs `stages` in order. A stage names a command (`sft`, `train` or an RL preset, `r1_zero`,
`self_train`, `distill`, `dpo`, `reward_model`, `eval`, or this module's `rejection_sample` data step) and
its `key=value` overrides; it runs as an ordinary run of that command in `<run>/stages/NN-<name>/`, so its
config, metrics, checkpoints, held-out table and `summary.json` are where that command always puts them.

- **Models flow forward**: a stage's `model` is `previous` (the stage before's `model/`), `start` (the
  pipeline's `start_model`), another stage's name, or `none` (the overrides say). Override values may
  name other stages' outputs: `@NAME` is stage NAME's `model/` directory, `@NAME/FILE` a file in its run
  directory, `@start` the start model.
- **Resume**: `resume=auto` on an existing r1 run skips the finished stages (their `summary.json` exists),
  and reruns the unfinished one with `resume=auto`, which continues from its latest checkpoint: the run
  continues at the stage and step where it stopped. The stage list and every stage's config are part of
  the r1 config, so a resume under a changed pipeline is refused like any other config change.
- **Observe**: after each stage that makes a policy (`evaluate: true`), the runner evaluates its model on
  every task of `eval_tasks` (greedy pass@1 on `eval_n` test problems) and prints the table; `stages.json`
  keeps every stage's tables, model, wall time and summary, `tables.md` the comparison, one row per stage.
  Wall time is the seconds this stage took in the process that finished it (`resumed` marks a stage that an
  earlier process had started).

The default reproduces DeepSeek-R1's four stages (DeepSeek-AI 2025, section 2.3) on the embedded tasks, from
tiny-arith (docs/r1.md says what each stands for and what was measured):

1. `cold_start`     sft: a small set (256) of long, readable worked solutions, the arithmetic task's careful
                    solver (one equation per operation);
2. `reasoning_rl`   train: GRPO on arithmetic with accuracy + format + notation consistency (0.1 x the fraction
                    of the thought written in the task's notation, `rewards/thought.py`: R1's language
                    consistency reward);
3. `rejection`      rejection_sample: 8 samples per train prompt from stage 2, kept if verified, readable
                    (strict format, fully in notation, one equation per operation) and new (deduplicated), mixed
                    with "non-reasoning" data answered directly without a thought (code_arith reference
                    programs), written to sft_mix.jsonl; also readability_pairs.jsonl (below);
   `sft_mix`        sft of the stage-1 *starting* model (start) on that mix;
4. `readability_rm` reward_model: a Bradley-Terry reward model on readability pairs (a verified step-by-step
                    trace preferred to the same answer reached by a one-line jump: what the rules accept
                    either way), from the stage-3 model's trunk;
   `all_scenarios`  train: GRPO on arithmetic and code together (`task=mix:arithmetic+code_arith`), the rule
                    rewards of each task + notation consistency + 0.1 x the learned reward.
"""

from __future__ import annotations

import importlib
import json
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reasonloop.config import ConfigError, load_config, require
from reasonloop.errors import note_run_dir
from reasonloop.recipes.presets import RL_PRESETS
from reasonloop.models.loading import ModelConfig, drop_long_prompts, load_policy, render_prompt
from reasonloop.rewards.thought import notation_consistency, step_counts, thought_of
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.rollout.sampler import TorchSampler
from reasonloop.selfimprove.selection import Sample, dedup
from reasonloop.tasks import make_task
from reasonloop.train.evaluation import evaluate, format_table
from reasonloop.train.run import Run, set_seed, set_threads
from reasonloop.train.runconfig import RunConfig
from reasonloop.rewards.answer_format import parse_strict

STAGE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
NOTATION_REWARD = "reasonloop.rewards.thought:notation_consistency_reward"
RUN_KEYS = ("output_dir", "threads", "resume", "seed")  # the runner sets these for every stage


@dataclass
class Stage:
    name: str = ""
    """The stage's name: its sub-run is stages/NN-<name>, and `@<name>` refers to its outputs."""
    command: str = ""
    """An existing command (sft, train or an RL preset, r1_zero, self_train, distill, dpo, reward_model, eval) or
    rejection_sample (this module's data step)."""
    overrides: list[str] = field(default_factory=list)
    """key=value overrides of that command's config; a value `@NAME` is stage NAME's model directory, `@NAME/FILE`
    a file in its run directory, `@start` the start model."""
    model: str = "previous"
    """The model.name it starts from: previous (the stage before's model/), start, a stage's name, or none (the
    overrides set it)."""
    evaluate: bool = True
    """Evaluate the stage's model/ on eval_tasks when it ends (false for data steps and reward models)."""


def default_stages() -> list[Stage]:
    """DeepSeek-R1's four stages on the embedded tasks (module docstring)."""
    rl_common = ["eval_n=100", "eval_k=0", "eval_every=0", "save_every=10", "samples_every=10"]
    return [
        Stage("cold_start", "sft", ["task=arithmetic", "task_records=256", "steps=40", "batch_size=32", "eval_n=100",
                                    "eval_every=0", "save_every=20"], model="start"),
        Stage("reasoning_rl", "train", ["task=arithmetic", "steps=60", f"reward_funcs=[{NOTATION_REWARD}]",
                                        "reward_weights=[0.1]", *rl_common]),
        Stage("rejection", "rejection_sample", ["task=arithmetic", "prompts=256", "samples_per_prompt=8",
                                                "direct_task=code_arith", "direct_records=512"], evaluate=False),
        Stage("sft_mix", "sft", ["data=@rejection/sft_mix.jsonl", "task=arithmetic", "steps=150", "batch_size=32",
                                 "eval_n=100", "eval_every=0", "save_every=50"], model="start"),
        Stage("readability_rm", "reward_model", ["data=@rejection/readability_pairs.jsonl", "task=arithmetic",
                                                 "steps=40", "eval_prompts=32", "save_every=20"],
              model="sft_mix", evaluate=False),
        Stage("all_scenarios", "train", ["task=mix:arithmetic+code_arith", "steps=60", "reward_model=@readability_rm",
                                         "reward_model_weight=0.1", f"reward_funcs=[{NOTATION_REWARD}]",
                                         "reward_weights=[0.1]", *rl_common], model="sft_mix"),
    ]


@dataclass
class Config(RunConfig):
    start_model: str = "tiny-arith"
    """The pipeline's starting model (what `model: start` and `@start` mean): a model directory, hub id or asset."""
    stages: list[Stage] = field(default_factory=default_stages)
    """The stages, in order (a YAML list of {name, command, overrides, model, evaluate}); default: R1's four."""
    stage_overrides: list[str] = field(default_factory=list)
    """More overrides, 'STAGE:key=value' each, appended to that stage's own (handy on the command line)."""
    eval_tasks: list[str] = field(default_factory=lambda: ["arithmetic", "code_arith"])
    """Tasks every stage's model is evaluated on (greedy pass@1), for the per-stage table; empty skips it."""
    eval_n: int = 100
    """Held-out problems per task in that evaluation."""
    eval_max_new_tokens: int = 64
    """Completion length limit of that evaluation."""

    def __post_init__(self):
        super().__post_init__()
        require(bool(self.stages), "stages is empty: give at least one stage")
        names = [s.name for s in self.stages]
        for s in self.stages:
            require(bool(STAGE_NAME.match(s.name)), f"stage name {s.name!r}: use letters, digits and _ (a letter first)")
            require(s.name != "start", "'start' names the start model; call the stage something else")
            require(s.command in stage_commands(), f"stage {s.name}: command {s.command!r} is not one of "
                    f"{sorted(stage_commands())}")
            require(s.model in ("previous", "start", "none") or s.model in names[: names.index(s.name)],
                    f"stage {s.name}: model={s.model!r} must be previous, start, none or an earlier stage's name")
            for kv in s.overrides:
                require("=" in kv, f"stage {s.name}: override {kv!r} is not key=value")
                require(kv.partition("=")[0].strip() not in RUN_KEYS,
                        f"stage {s.name}: {kv.partition('=')[0]} is set by the runner for every stage (set it on r1)")
        require(len(set(names)) == len(names), f"stage names must differ, got {names}")
        for item in self.stage_overrides:
            stage, colon, kv = item.partition(":")
            require(bool(colon) and "=" in kv, f"stage_overrides entry {item!r} is not STAGE:key=value")
            require(stage in names, f"stage_overrides entry {item!r}: no stage {stage!r} (stages: {names})")
        require(self.eval_n > 0 and self.eval_max_new_tokens > 0, "eval_n and eval_max_new_tokens must be > 0")


STAGE_MODULES = {  # the commands a stage may run: name -> its recipe module (cli.py's table, without the cli layer)
    "sft": "reasonloop.recipes.sft", "train": "reasonloop.recipes.rl", "r1_zero": "reasonloop.recipes.r1_zero",
    "self_train": "reasonloop.recipes.self_train", "distill": "reasonloop.recipes.distill",
    "dpo": "reasonloop.recipes.dpo", "reward_model": "reasonloop.recipes.reward_modeling",
    "eval": "reasonloop.recipes.evaluate", **{name: "reasonloop.recipes.rl" for name in RL_PRESETS},
}


def stage_commands() -> set[str]:
    return set(STAGE_MODULES) | {"rejection_sample"}


# -- rejection sampling (stage 3's data step) ----------------------------------------------------------------


@dataclass
class RejectionConfig(RunConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model that samples (R1: the reasoning-RL checkpoint)."""
    task: str = "arithmetic"
    """The reasoning task whose train prompts are sampled."""
    data_dir: str = ""
    """Data location for file-backed tasks."""
    prompts: int = 256
    """Train prompts sampled."""
    samples_per_prompt: int = 8
    """Samples per prompt."""
    temperature: float = 1.0
    """Sampling temperature."""
    max_new_tokens: int = 64
    """Completion length limit."""
    readable: bool = True
    """Keep only readable samples: strict format, a thought fully in the task's notation, and (arithmetic) at
    least one equation per operation of the question; false keeps every verified sample."""
    max_per_prompt: int = 2
    """Most distinct kept samples per prompt (the first ones drawn)."""
    direct_task: str = "code_arith"
    """Task whose worked solutions are the "non-reasoning" data answered directly (empty: none)."""
    direct_records: int = 512
    """Non-reasoning records mixed in (from direct_task's train split)."""

    def __post_init__(self):
        super().__post_init__()
        require(self.prompts > 0 and self.samples_per_prompt > 0 and self.max_per_prompt > 0,
                "prompts, samples_per_prompt and max_per_prompt must be > 0")
        require(self.temperature > 0 and self.max_new_tokens > 0, "temperature and max_new_tokens must be > 0")
        require(self.direct_records >= 0, "direct_records must be >= 0")


QUESTION_OPS = re.compile(r"Q: ([0-9+\-]+)=\?")


def readable(completion: str, prompt: str) -> bool:
    """Strict format, a thought entirely in the task's notation, and for an arithmetic question
    (`Q: 17+4-9=?`) at least one equation per operation: a worked solution, not a one-line jump."""
    if parse_strict(completion) is None:
        return False
    thought = thought_of(completion) or ""
    if notation_consistency(thought) < 1.0:
        return False
    question = QUESTION_OPS.search(prompt)
    ops = len(re.findall(r"[+-]", question.group(1))) if question else 0
    return step_counts(thought).steps >= ops


def lazy_rewrite(completion: str, prompt: str) -> str | None:
    """The same answer reached in one jump (`<think>17+4-9=12</think><answer>12</answer>`); None when the
    question is not an arithmetic chain or the completion has no strict shape."""
    parsed, question = parse_strict(completion), QUESTION_OPS.search(prompt)
    if parsed is None or question is None:
        return None
    return f"<think>{question.group(1)}={parsed.answer}</think><answer>{parsed.answer}</answer>"


def rejection_sample(cfg: RejectionConfig) -> dict:
    """Sample, verify, keep readable and new, mix with direct answers; write sft_mix.jsonl and
    readability_pairs.jsonl (a kept trace over its one-jump rewrite) into the run directory."""
    set_threads(cfg.threads)
    set_seed(cfg.seed)
    run_ = Run(cfg, "rejection_sample")
    task = make_task(cfg.task, cfg.data_dir or None)
    direct = make_task(cfg.direct_task, cfg.data_dir or None) if cfg.direct_task and cfg.direct_records else None
    tokenizer, model = load_policy(cfg.model, task)
    render = lambda p: render_prompt(tokenizer, p, cfg.model.use_chat_template)  # noqa: E731
    examples = drop_long_prompts(task.examples("train", cfg.prompts, seed=cfg.seed), tokenizer, render, model,
                                 cfg.max_new_tokens, f"{cfg.task}/train")
    run_.start()
    sampler = TorchSampler(model, tokenizer)
    generator = torch.Generator().manual_seed(cfg.seed)
    sampling = SamplingConfig(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
    samples: list[Sample] = []
    for start in range(0, len(examples), 32):
        chunk = examples[start : start + 32]
        batch = sampler.generate([render(e.prompt) for e in chunk], cfg.samples_per_prompt, sampling, generator)
        rows = [ex for ex in chunk for _ in range(cfg.samples_per_prompt)]
        samples += [Sample(ex.prompt, c, 0.0, task.is_correct(c, ex), ex.id) for ex, c in zip(rows, batch.completions)]
    verified = [s for s in samples if s.correct]
    kept_readable = [s for s in verified if readable(s.completion, s.prompt)] if cfg.readable else verified
    kept, duplicates = dedup(kept_readable)
    per_prompt: dict[str, int] = {}
    capped = []
    for s in kept:
        per_prompt[s.group] = per_prompt.get(s.group, 0) + 1
        if per_prompt[s.group] <= cfg.max_per_prompt:
            capped.append(s)
    reasoning = [{"prompt": s.prompt, "completion": s.completion, "kind": "reasoning"} for s in capped]
    direct_rows = ([{"prompt": r["prompt"], "completion": r["completion"], "kind": "direct"}
                    for r in direct.sft_records("train", cfg.direct_records, seed=cfg.seed)] if direct else [])
    mix = reasoning + direct_rows
    random.Random(f"{cfg.seed}:mix").shuffle(mix)
    pairs = [{"prompt": s.prompt, "chosen": s.completion, "rejected": lazy}
             for s in capped if (lazy := lazy_rewrite(s.completion, s.prompt)) is not None and lazy != s.completion]
    run_.write_jsonl("sft_mix.jsonl", mix)
    run_.write_jsonl("readability_pairs.jsonl", pairs)
    stats = {"generated": len(samples), "verified": len(verified), "readable": len(kept_readable),
             "duplicates_dropped": duplicates, "kept_reasoning": len(reasoning), "direct": len(direct_rows),
             "mix": len(mix), "pairs": len(pairs), "prompts": len(examples),
             "prompts_covered": len(per_prompt), "sample_accuracy": len(verified) / max(1, len(samples))}
    run_.log(0, stats)
    print("rejection_sample: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items()))
    result = {**stats, "sft_mix": str(run_.dir / "sft_mix.jsonl"), "pairs": str(run_.dir / "readability_pairs.jsonl")}
    run_.write_json("summary.json", result)
    run_.close()
    return result


# -- the runner ------------------------------------------------------------------------------------------------


STAGE_RECORDS = "stages.json"


def stage_path(run_dir: Path, number: int, name: str) -> Path:
    """The sub-run of stage `number` (from 1) named `name`: `<run>/stages/NN-<name>` (the report reads it too)."""
    return run_dir / "stages" / f"{number:02d}-{name}"


class Pipeline:
    """One r1 run: resolves each stage's config, runs or skips it, evaluates and records it."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        set_threads(cfg.threads)
        self.run = Run(cfg, "r1")
        self.dir = self.run.dir
        self.records: dict[str, dict] = {}

    def stage_dir(self, i: int) -> Path:
        return stage_path(self.dir, i + 1, self.cfg.stages[i].name)

    def resolve(self, value: str) -> str:
        """`@start`, `@NAME`, `@NAME/FILE` -> paths; anything else as is."""
        if not value.startswith("@"):
            return value
        name, _, rest = value[1:].partition("/")
        if name == "start":
            return self.cfg.start_model
        names = [s.name for s in self.cfg.stages]
        if name not in names:
            raise ConfigError(f"{value!r} names no stage (stages: {names})")
        sub = self.stage_dir(names.index(name))
        return str(sub / (rest or "model"))

    def stage_args(self, i: int) -> list[str]:
        """The command line of stage i: `setting=defaults` for an RL stage, its preset, its model, its overrides
        (references resolved), the run keys."""
        stage, cfg = self.cfg.stages[i], self.cfg
        preset = list(RL_PRESETS.get(stage.command, []))
        if STAGE_MODULES.get(stage.command) in ("reasonloop.recipes.rl", "reasonloop.recipes.r1_zero"):
            # train's defaults unless the stage sets `setting`: auto hinges on the model directory an earlier stage
            # writes, so the check of every stage before the run starts would read another config than the stage
            preset.insert(0, "setting=defaults")
        model = {"previous": f"@{cfg.stages[i - 1].name}" if i > 0 else "@start", "start": "@start",
                 "none": ""}.get(stage.model, f"@{stage.model}")
        extra = [kv.partition(":")[2] for kv in cfg.stage_overrides if kv.partition(":")[0] == stage.name]
        args = [f"model.name={self.resolve(model)}"] if model else []
        for kv in [*stage.overrides, *extra]:
            key, _, value = kv.partition("=")
            if value.startswith("[") and value.endswith("]"):  # a list: resolve each element
                items = [self.resolve(v.strip()) for v in value[1:-1].split(",") if v.strip()]
                value = "[" + ",".join(items) + "]"
            else:
                value = self.resolve(value.strip())
            args.append(f"{key.strip()}={value}")
        return [*preset, *args, f"seed={cfg.seed}", f"threads={cfg.threads}", "resume=auto",
                f"output_dir={self.stage_dir(i)}"]

    def stage_config(self, i: int):
        stage = self.cfg.stages[i]
        cls = RejectionConfig if stage.command == "rejection_sample" else self._module(stage.command).Config
        try:
            return load_config(cls, self.stage_args(i))
        except ConfigError as exc:
            raise ConfigError(f"stage {stage.name} ({stage.command}): {exc}") from None

    @staticmethod
    def _module(command: str):
        return importlib.import_module(STAGE_MODULES[command])

    def run_stage(self, i: int) -> dict:
        stage = self.cfg.stages[i]
        stage_cfg = self.stage_config(i)
        sub = self.stage_dir(i)
        resumed = sub.exists() and any(sub.iterdir())
        print(f"r1: stage {i + 1}/{len(self.cfg.stages)} {stage.name} ({stage.command})"
              + (" - resuming" if resumed else ""))
        t0 = time.time()
        try:
            summary = (rejection_sample(stage_cfg) if stage.command == "rejection_sample"
                       else self._module(stage.command).run(stage_cfg))
        finally:
            note_run_dir(self.dir)  # Ctrl-C names the r1 run to resume, not the stage's sub-run
        seconds = time.time() - t0
        set_threads(self.cfg.threads)
        return {"name": stage.name, "command": stage.command, "seconds": seconds, "resumed": resumed,
                "dir": str(sub), "model_dir": str(sub / "model") if (sub / "model").is_dir() else None,
                "summary": _brief(summary)}

    def held_out(self, model_dir: str) -> dict[str, dict]:
        """Greedy pass@1 of `model_dir` on every eval task: task -> evaluation summary."""
        cfg, tables = self.cfg, {}
        for spec in cfg.eval_tasks:
            task = make_task(spec)
            tokenizer, model = load_policy(ModelConfig(name=model_dir), task)
            render = lambda p: render_prompt(tokenizer, p, False)  # noqa: E731
            examples = drop_long_prompts(task.examples("test", cfg.eval_n, seed=cfg.seed), tokenizer, render, model,
                                         cfg.eval_max_new_tokens, f"{spec}/test")
            summary, _ = evaluate(TorchSampler(model, tokenizer), task, examples, render,
                                  SamplingConfig(temperature=1.0, max_new_tokens=cfg.eval_max_new_tokens), k=0,
                                  seed=cfg.seed)
            tables[spec] = summary
        return tables

    def _save(self) -> None:
        self.run.write_json(STAGE_RECORDS, self.records)
        (self.dir / "tables.md.tmp").write_text(comparison_table(self.records, self.cfg.eval_tasks))
        (self.dir / "tables.md.tmp").replace(self.dir / "tables.md")

    def execute(self) -> dict:
        cfg = self.cfg
        for i in range(len(cfg.stages)):  # every stage's config is checked before anything runs or is written
            self.stage_config(i)
        recorded = self.dir / STAGE_RECORDS
        if self.run.existing and recorded.is_file():
            self.records = json.loads(recorded.read_text())
        self.run.start()
        set_seed(cfg.seed)
        if cfg.eval_tasks and "start" not in self.records:
            self.records["start"] = {"name": "start", "command": "", "seconds": 0.0, "model_dir": cfg.start_model,
                                     "held_out": self.held_out(cfg.start_model)}
            self._save()
        for step, row in enumerate(self.records.values()):  # a resume re-logs the rows its Run dropped
            self.run.log(step, _row(row, cfg.eval_tasks))
        for i, stage in enumerate(cfg.stages):
            done = stage.name in self.records and (self.stage_dir(i) / "summary.json").is_file()
            if done:
                print(f"r1: stage {i + 1} {stage.name}: finished earlier, skipped")
                continue
            record = self.run_stage(i)
            if stage.evaluate and cfg.eval_tasks and record["model_dir"]:
                record["held_out"] = self.held_out(record["model_dir"])
                for spec, table in record["held_out"].items():
                    print(f"r1: after stage {stage.name}, held-out {spec}:\n{format_table(table)}")
            self.records[stage.name] = record
            self.run.log(len(self.records) - 1, _row(record, cfg.eval_tasks))
            self._save()
        table = comparison_table(self.records, cfg.eval_tasks)
        print(f"r1: held-out greedy pass@1 after each stage\n{table}")
        last = next((r["model_dir"] for r in reversed(list(self.records.values())) if r.get("held_out")), None)
        result = {"stages": self.records, "model_dir": last,
                  "seconds": sum(r["seconds"] for r in self.records.values())}
        self.run.write_json("summary.json", result)
        self.run.close()
        return result


def _brief(summary: Any) -> dict:
    """The scalar fields of a stage's summary (its tables stay in the stage's own summary.json)."""
    if not isinstance(summary, dict):
        return {}
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool)) or v is None}


def _overall(table: dict | None) -> float | None:
    try:
        return float(table["overall"]["pass@1_greedy"])
    except (TypeError, KeyError, ValueError):
        return None


def _row(record: dict, tasks: list[str]) -> dict:
    row = {"stage": record["name"], "seconds": record["seconds"]}
    for spec in tasks:
        value = _overall((record.get("held_out") or {}).get(spec))
        if value is not None:
            row[f"held_out/{spec}/pass@1_greedy"] = value
    return row


def comparison_table(records: dict[str, dict], tasks: list[str]) -> str:
    """A markdown table: one row per stage, greedy pass@1 per eval task and wall time."""
    head = "| stage | command | " + " | ".join(tasks) + " | wall time (s) |"
    lines = [head, "|" + "---|" * (len(tasks) + 3)]
    for r in records.values():
        cells = []
        for spec in tasks:
            v = _overall((r.get("held_out") or {}).get(spec))
            cells.append("-" if v is None else f"{v:.3f}")
        wall = f"{r['seconds']:.0f}" + (" (resumed)" if r.get("resumed") else "")
        lines.append(f"| {r['name']} | {r['command'] or '-'} | " + " | ".join(cells) + f" | {wall} |")
    return "\n".join(lines) + "\n"


def run(cfg: Config) -> dict:
    return Pipeline(cfg).execute()
