"""The malformed / hostile / odd command lines of the input corpus (tests/reliability/test_inputs.py).

Each `Case` is one command line run in-process through `reasonloop.cli.main` in a scratch working
directory that holds `FILES` (and whatever `setup` adds); the case names the exit code and a
substring of stderr it must produce. `writes=False` (the default) means the command must leave the
working directory exactly as it found it: no new file, no changed byte. `{nano}` in an argument is
the path of a tiny local model.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# Files present before every case; none may change.
FILES = {
    "precious.txt": "user data that must survive\n",
    "notes/keep.md": "# notes\n",
    "good.jsonl": '{"prompt": "Q: 1+1=?", "completion": "<answer>2</answer>"}\n' * 3,
}

FAST = ["threads=1", "output_dir=out"]  # every command that could run gets these


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    rc: int
    message: str  # a substring of stderr (or stdout for rc 0)
    setup: Callable[[Path, str], None] | None = None
    writes: bool = False  # the command may create new files (never change existing ones)


def _w(rel: str, data: bytes | str) -> Callable[[Path, str], None]:
    def setup(root: Path, nano: str) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return setup


def _model_copy(rel: str, keep: tuple[str, ...] = (), edit: Callable[[Path], None] | None = None):
    def setup(root: Path, nano: str) -> None:
        dst = root / rel
        dst.mkdir(parents=True)
        for f in Path(nano).iterdir():
            if not keep or f.name in keep:
                shutil.copy(f, dst / f.name)
        if edit is not None:
            edit(dst)
    return setup


def _truncate_weights(d: Path) -> None:
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])


def _garbage_weights(d: Path) -> None:
    (d / "model.safetensors").write_bytes(b"\x00\x01not a safetensors file" * 10)


def _t5_config(d: Path) -> None:
    (d / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8, "num_layers": 1, "num_heads": 1,
                                               "d_kv": 8, "d_ff": 8, "vocab_size": 120}))


def _broken_config(d: Path) -> None:
    (d / "config.json").write_text("{not json")


def c(id: str, cmd: str, rc: int, message: str, *args: str, setup=None, writes: bool = False) -> Case:
    """FAST goes first, so a case's own `threads=` / `output_dir=` wins (later keys override earlier ones)."""
    return Case(id, (cmd, *[a for a in args if a in FAST], *[a for a in args if a not in FAST]), rc, message, setup,
                writes)


def T(id: str, *args: str, message: str, rc: int = 2) -> Case:
    """A `train` config error: caught before any file is touched."""
    return c(id, "train", rc, message, *args, *FAST)


YAML = "cfg.yaml"
CASES: list[Case] = [
    # -- command line shape -------------------------------------------------------------------------
    c("unknown-command", "trian", 2, "did you mean 'train'"),
    c("unknown-key", "eval", 2, "unknown config key 'temprature'", "temprature=1", *FAST),
    c("bare-word", "eval", 2, "expected a .yaml file or key=value", "fast", *FAST),
    c("empty-key", "eval", 2, "unknown config key ''", "=5", *FAST),
    c("block-as-value", "train", 2, "'model' is a block of settings", "model=foo", *FAST),
    c("debug-flag-user-error", "eval", 2, "unknown config key 'nosuch'", "nosuch=1", "--debug", *FAST),
    c("int-parse", "eval", 2, "'k'", "k=notanint", *FAST),
    c("eval-baseline-not-a-run", "eval", 2, "no samples.jsonl there", "baseline=notes", *FAST),
    c("eval-baseline-not-samples", "eval", 2, "is not an eval run's sample file", "baseline=.", "n=2", *FAST,
      setup=_w("samples.jsonl", "{not json\n")),
    c("int-given-float", "train", 2, "'steps'", "steps=1.5", *FAST),
    c("float-parse", "train", 2, "'sampling.temperature'", "sampling.temperature=hot", *FAST),
    c("bool-parse", "eval", 2, "'greedy'", "greedy=maybe", *FAST),
    c("list-parse", "train", 2, "'optim.betas'", "optim.betas=notalist", *FAST),
    # -- values: non-finite numbers ---------------------------------------------------------------------
    T("lr-inf", "optim.lr=inf", message="optim.lr=inf is not a finite number"),
    T("lr-nan", "optim.lr=nan", message="optim.lr=nan is not a finite number"),
    T("lr-neg-inf", "optim.lr=-inf", message="optim.lr=-inf is not a finite number"),
    T("betas-nan", "optim.betas=[0.9,nan]", message="optim.betas[1]=nan is not a finite number"),
    T("temperature-inf", "sampling.temperature=inf", message="sampling.temperature=inf is not a finite number"),
    T("kl-nan", "kl_coef=NaN", message="kl_coef=nan is not a finite number"),
    T("reward-weight-inf", "reward_funcs=[a:b]", "reward_weights=[inf]", message="reward_weights[0]=inf"),
    # -- values: ranges -------------------------------------------------------------------------------
    T("lr-zero", "optim.lr=0", message="optim.lr must be > 0"),
    T("lr-negative", "optim.lr=-1e-4", message="optim.lr must be > 0"),
    T("betas-over-one", "optim.betas=[0.9,1.5]", message="each must be in [0, 1)"),
    T("betas-negative", "optim.betas=[-0.1,0.9]", message="each must be in [0, 1)"),
    T("betas-one-value", "optim.betas=[0.9]", message="optim.betas must have two values"),
    T("weight-decay-negative", "optim.weight_decay=-0.01", message="optim.weight_decay must be >= 0"),
    T("clip-norm-negative", "optim.max_grad_norm=-1", message="optim.max_grad_norm must be >= 0"),
    T("warmup-negative", "optim.warmup_steps=-1", message="optim.warmup_steps must be >= 0"),
    T("min-lr-ratio", "optim.min_lr_ratio=2", message="optim.min_lr_ratio must be in [0, 1]"),
    T("grpo-greedy", "sampling.temperature=0", message="nothing is learned"),
    T("rloo-greedy", "advantage=rloo", "sampling.temperature=0", message="advantage=rloo's group-relative"),
    T("temperature-negative", "sampling.temperature=-1", message="sampling.temperature must be >= 0"),
    T("top-p-zero", "sampling.top_p=0", message="sampling.top_p must be in (0, 1]"),
    T("top-p-over", "sampling.top_p=1.5", message="sampling.top_p must be in (0, 1]"),
    T("min-p-one", "sampling.min_p=1", message="sampling.min_p must be in [0, 1)"),
    T("top-k-negative", "sampling.top_k=-1", message="sampling.top_k must be >= 0"),
    T("max-new-tokens-zero", "sampling.max_new_tokens=0", message="sampling.max_new_tokens must be > 0"),
    T("stop-empty", "sampling.stop=['']", message="sampling.stop has an empty string"),
    T("eval-n-zero", "eval_n=0", message="eval_n must be > 0"),
    T("eval-k-negative", "eval_k=-1", message="eval_k must be >= 0"),
    T("kl-negative", "kl_coef=-0.04", message="kl_coef must be >= 0"),
    T("entropy-negative", "entropy_coef=-0.1", message="entropy_coef must be >= 0"),
    T("clip-low-over", "clip_low=1.5", message="clip_low must be in [0, 1)"),
    T("clip-high-negative", "clip_high=-0.2", message="clip_high must be >= 0"),
    T("dual-clip-below-one", "dual_clip=0.5", message="dual_clip must be 0 (off) or > 1"),
    T("gamma-over", "gamma=1.5", message="gamma and lam must be in [0, 1]"),
    T("lam-negative", "lam=-0.1", message="gamma and lam must be in [0, 1]"),
    T("threads-negative", "threads=-2", message="threads=-2: must be >= 0"),
    T("seed-negative", "seed=-1", message="seed=-1: must be in [0, 4294967295]"),
    T("seed-huge", "seed=99999999999", message="must be in [0, 4294967295]"),
    T("save-every-negative", "save_every=-5", message="save_every=-5: must be >= 0"),
    T("group-size-one", "group_size=1", message="group_size must be >= 2"),
    T("steps-zero", "steps=0", message="steps and prompts_per_step must be > 0"),
    T("train-pool-zero", "train_pool=0", message="train_pool must be > 0"),
    T("advantage-typo", "advantage=grpoo", message="did you mean 'grpo'"),
    T("pass-k-zero", "advantage=passk", "pass_k=0", message="pass_k must be >= 1"),
    T("decode-precision-fp16", "rollout.decode_precision=fp16", message="rollout.decode_precision='fp16' is not one of"),
    T("positive-weight-above-one", "positive_weight=2", message="positive_weight must be in [0, 1]"),
    T("cov-control-typo", "cov_control=clipcov", message="did you mean 'clip_cov'"),
    T("kl-cov-one-epoch", "cov_control=kl_cov", message="use epochs >= 2"),
    T("cov-ratio-zero", "cov_control=clip_cov", "cov_ratio=0", message="cov_ratio must be in (0, 1]"),
    T("cov-window-empty", "cov_low=5", "cov_high=1", message="need cov_low < cov_high"),
    T("keep-best-without-validation", "keep_best=pass@1_greedy", message="set val_n > 0 too"),
    T("keep-best-unknown-metric", "val_n=20", "keep_best=pass@8", message="'pass@8' is not a validation metric"),
    T("val-every-zero", "val_n=20", "val_every=0", message="val_every must be > 0"),
    T("val-n-negative", "val_n=-3", message="val_n must be >= 0"),
    T("agg-mode-unknown", "agg_mode=mean", message="agg_mode='mean' is not one of"),
    T("resume-unknown", "resume=sometimes", message="resume='sometimes' is not one of"),
    T("gae-without-critic", "advantage=gae", message="advantage=gae needs a critic"),
    T("weights-without-funcs", "reward_weights=[1.0]", message="reward_weights has 1 entries for 0 reward_funcs"),
    T("nothing-to-train-on", "task_rewards=false", message="task_rewards=false needs reward_funcs"),
    T("value-clip-zero", "value_clip=0", message="value_clip, penalty_target and kl_horizon must be > 0"),
    T("dtype-unknown", "model.dtype=float64", message="model.dtype='float64' is not one of"),
    T("device-unknown", "model.device=gpu", message="model.device='gpu' is not a device"),
    T("device-bad-index", "model.device=cuda:x", message="model.device='cuda:x' is not a device"),
    T("lora-rank-negative", "model.lora.r=-1", message="model.lora.r must be >= 0"),
    T("lora-dropout-one", "model.lora.dropout=1.0", message="model.lora.dropout must be in [0, 1)"),
    T("lora-alpha-zero", "model.lora.alpha=0", message="model.lora.alpha must be > 0"),
    T("lora-empty-target", "model.lora.target_modules=q_proj,,v_proj", message="has an empty name"),
    T("model-name-empty", "model.name=", message="model.name is empty"),
    T("reward-func-malformed", "reward_funcs=[nocolon]", message="is 'module:function'"),
    T("reward-func-missing-module", "reward_funcs=[no_such_module_xyz:fn]", message="ModuleNotFoundError"),
    T("reward-func-not-callable", "reward_funcs=[os:sep]", message="is not callable"),
    c("sft-max-len", "sft", 2, "max_len must be >= 2", "max_len=1", *FAST),
    c("sft-steps", "sft", 2, "steps and batch sizes must be > 0", "steps=-3", *FAST),
    c("sft-eval-n", "sft", 2, "eval_n must be > 0", "eval_n=0", *FAST),
    c("sft-eval-tokens", "sft", 2, "eval_max_new_tokens must be > 0", "eval_max_new_tokens=0", *FAST),
    c("sft-label-smoothing", "sft", 2, "label_smoothing must be in [0, 1)", "label_smoothing=1", *FAST),
    c("eval-n-zero-eval", "eval", 2, "n must be > 0", "n=0", *FAST),
    c("eval-split-unknown", "eval", 2, "split='dev2' is not a split name", "split=dev2", *FAST),
    c("eval-greedy-samples", "eval", 2, "copies of the greedy answer", "k=4", "sampling.temperature=0", *FAST),
    c("eval-batch-zero", "eval", 2, "batch_prompts must be > 0", "batch_prompts=0", *FAST),
    c("eval-nothing", "eval", 2, "nothing to do", "greedy=false", "k=0", *FAST),
    c("self-train-temperature", "self_train", 2, "temperature must be >= 0", "temperature=-1", *FAST),
    c("self-train-method", "self_train", 2, "method='nosuch' is not one of", "method=nosuch", *FAST),
    c("self-train-eval-k", "self_train", 2, "eval_k must be >= 0", "eval_k=-1", *FAST),
    c("dpo-beta-zero", "dpo", 2, "beta must be > 0", "beta=0", *FAST),
    c("dpo-label-smoothing", "dpo", 2, "label_smoothing must be in [0, 0.5)", "label_smoothing=0.7", *FAST),
    c("rm-greedy", "reward_model", 2, "temperature must be > 0", "temperature=0", *FAST),
    c("pretrain-p-careful", "pretrain", 2, "p_careful must be in [0, 1]", "p_careful=2", *FAST),
    c("distill-mode", "distill", 2, "mode='bogus' is not one of", "mode=bogus", *FAST),
    # -- YAML files -------------------------------------------------------------------------------
    c("yaml-syntax", "train", 2, "cfg.yaml:3:1: YAML syntax error: while parsing a flow mapping", YAML, *FAST, setup=_w(YAML, "steps: 5\nsampling: {temperature: 1\n")),
    c("yaml-tab", "train", 2, "YAML does not allow tabs", YAML, *FAST,
      setup=_w(YAML, "sampling:\n\ttemperature: 1.0\n")),
    c("yaml-duplicate", "train", 2, "cfg.yaml:3: duplicate key 'steps' (first set on line 1)", YAML, *FAST,
      setup=_w(YAML, "steps: 5\nseed: 1\nsteps: 7\n")),
    c("yaml-duplicate-nested", "train", 2, "duplicate key 'lr'", YAML, *FAST,
      setup=_w(YAML, "optim:\n  lr: 0.1\n  lr: 0.2\n")),
    c("yaml-binary", "train", 2, "holds binary data", YAML, *FAST, setup=_w(YAML, b"\x89PNG\r\n\x1a\n\x00\x00")),
    c("yaml-latin1", "train", 2, "cfg.yaml:2: not valid UTF-8", YAML, *FAST,
      setup=_w(YAML, "steps: 5\noutput_dir: caf\xe9\n".encode("latin-1"))),
    c("yaml-list-top", "train", 2, "the top level must be a mapping", YAML, *FAST, setup=_w(YAML, "- steps\n- 5\n")),
    c("yaml-scalar-top", "train", 2, "the top level must be a mapping", YAML, *FAST, setup=_w(YAML, "just text\n")),
    c("yaml-missing", "train", 2, "config file not found: missing.yaml", "missing.yaml", *FAST),
    c("yaml-directory", "train", 2, "config file is a directory", "dir.yaml", *FAST,
      setup=lambda root, nano: (root / "dir.yaml").mkdir()),
    c("yaml-unknown-key", "train", 2, "did you mean 'optim.lr'", YAML, *FAST, setup=_w(YAML, "optim:\n  lrr: 0.1\n")),
    c("yaml-bad-type", "train", 2, "'steps'", YAML, *FAST, setup=_w(YAML, "steps: many\n")),
    c("yaml-inf", "train", 2, "optim.lr=inf is not a finite number", YAML, *FAST, setup=_w(YAML, "optim:\n  lr: .inf\n")),
    c("yaml-range", "train", 2, "optim.lr must be > 0", YAML, *FAST, setup=_w(YAML, "optim:\n  lr: -0.5\n")),
    c("yaml-anchor-bomb", "train", 2, "unknown config key 'a'", YAML, *FAST,
      setup=_w(YAML, "a: &a [x, x]\nb: &b [*a, *a]\nsteps: *b\n")),
    # -- models -----------------------------------------------------------------------------------
    c("model-missing-relative", "eval", 2, "no such local directory (a path is never looked up on the hub)",
      "model.name=./no-such-model", *FAST),
    c("model-missing-absolute", "eval", 2, "no such local directory", "model.name=/nonexistent/model", *FAST),
    c("model-missing-home", "eval", 2, "no such local directory", "model.name=~/no-such-model-xyz", *FAST),
    c("model-partial-path", "eval", 2, "no such local directory", "model.name=notes/model", *FAST),
    c("model-invalid-hub-id", "eval", 2, "no such local directory", "model.name=not a//hub id", *FAST),
    c("model-is-file", "eval", 2, "is a file; give the model directory", "model.name=precious.txt", *FAST),
    c("model-empty-dir", "eval", 2, "is an empty directory", "model.name=empty_model", *FAST,
      setup=lambda root, nano: (root / "empty_model").mkdir()),
    c("model-config-only", "eval", 2, "has a config but no weights", "model.name=cfg_only", *FAST,
      setup=_model_copy("cfg_only", keep=("config.json", "tokenizer.json", "tokenizer_config.json"))),
    c("model-no-config", "eval", 2, "has no config.json", "model.name=weights_only", *FAST,
      setup=_model_copy("weights_only", keep=("model.safetensors",))),
    c("model-truncated-weights", "eval", 2, "does not load", "model.name=trunc", *FAST,
      setup=_model_copy("trunc", edit=_truncate_weights)),
    c("model-garbage-weights", "eval", 2, "does not load", "model.name=garbage", *FAST,
      setup=_model_copy("garbage", edit=_garbage_weights)),
    c("model-not-causal-lm", "eval", 2, "is not a causal language model", "model.name=t5ish", *FAST,
      setup=_model_copy("t5ish", edit=_t5_config)),
    c("model-broken-config", "eval", 2, "model.name='broken'", "model.name=broken", *FAST,
      setup=_model_copy("broken", edit=_broken_config)),
    c("model-lora-no-match", "eval", 2, "['nonexistent_proj'] match no module", "model.name={nano}",
      "model.lora.r=2", "model.lora.target_modules=nonexistent_proj", *FAST),
    c("model-cuda-absent", "eval", 2, "CUDA device(s)", "model.name={nano}", "model.device=cuda:7", *FAST),
    c("reward-model-missing", "train", 2, "reward_model='./no-rm'", "model.name={nano}", "reward_model=./no-rm",
      "task=arithmetic:1", "train_pool=4", "eval_n=1", *FAST),
    c("sft-model-missing", "sft", 2, "no such local directory", "model.name=./nope", *FAST),
    c("self-train-model-missing", "self_train", 2, "no such local directory", "model.name=./nope", *FAST),
    c("dpo-model-missing", "dpo", 2, "no such local directory", "model.name=./nope", *FAST),
    c("train-model-missing", "train", 2, "no such local directory", "model.name=./nope", *FAST),
    # -- tasks ------------------------------------------------------------------------------------
    c("task-unknown", "eval", 2, "unknown task 'nosuch'", "task=nosuch", *FAST),
    c("task-level-word", "eval", 2, "bad level spec 'abc'", "task=arithmetic:abc", *FAST),
    c("task-level-reversed", "eval", 2, "the range '3-1' is empty", "task=arithmetic:3-1", *FAST),
    c("task-level-unknown", "eval", 2, "unknown arithmetic levels [9]", "task=arithmetic:9", *FAST),
    c("task-code-level-word", "eval", 2, "levels are comma-separated integers", "task=code_arith:x", *FAST),
    c("task-code-level-unknown", "eval", 2, "unknown code_arith levels [7]", "task=code_arith:7", *FAST),
    c("task-split", "eval", 2, "split must be 'train' or 'test', got 'validation'", "split=validation", *FAST),
    c("task-mbpp-no-data", "eval", 2, "pass data_dir=", "task=mbpp", *FAST),
    c("task-mbpp-missing", "eval", 2, "data_dir='nope.jsonl' does not exist", "task=mbpp", "data_dir=nope.jsonl", *FAST),
    c("task-humaneval-split", "eval", 2, "only a 'test' split", "task=humaneval", "data_dir=good.jsonl",
      "split=train", *FAST),
    c("task-jsonl-no-data", "eval", 2, "a table task needs data_dir=", "task=jsonl", *FAST),
    c("task-jsonl-template", "eval", 2, "unknown template 'bogus'", "task=jsonl:template=bogus",
      "data_dir=good.jsonl", *FAST),
    c("task-jsonl-test-frac", "eval", 2, "test_frac must be a number", "task=jsonl:test_frac=abc",
      "data_dir=good.jsonl", *FAST),
    c("task-jsonl-spec", "eval", 2, "expected KEY=VALUE", "task=jsonl:prompt", "data_dir=good.jsonl", *FAST),
    # -- data files ---------------------------------------------------------------------------------
    c("sft-data-missing", "sft", 2, "the file does not exist", "data=missing.jsonl", *FAST),
    c("sft-data-empty", "sft", 2, "empty.jsonl is empty", "data=empty.jsonl", *FAST, setup=_w("empty.jsonl", "")),
    c("sft-data-blank", "sft", 2, "blank.jsonl is empty", "data=blank.jsonl", *FAST,
      setup=_w("blank.jsonl", "\n\n   \n")),
    c("sft-data-malformed", "sft", 2, "no usable records (2 malformed JSON (first at line 1))", "data=bad.jsonl",
      *FAST, setup=_w("bad.jsonl", "{not json\n{\"prompt\": \n")),
    c("sft-data-arrays", "sft", 2, "2 not a JSON object (first at line 1)", "data=arr.jsonl", *FAST,
      setup=_w("arr.jsonl", "[1, 2]\n\"text\"\n")),
    c("sft-data-latin1", "sft", 2, "1 not UTF-8 (first at line 1)", "data=latin.jsonl", *FAST,
      setup=_w("latin.jsonl", '{"prompt": "caf\xe9"}\n'.encode("latin-1"))),
    c("sft-data-binary", "sft", 2, "no usable records", "data=bin.jsonl", *FAST,
      setup=_w("bin.jsonl", b"\x00\xff\xfe\x00garbage\x00\n")),
    c("sft-data-suffix", "sft", 2, "unsupported data file", "data=precious.txt", *FAST),
    c("sft-data-fields", "sft", 2, "no usable rows (need string columns ['prompt', 'completion'])", "data=nf.jsonl",
      *FAST, setup=_w("nf.jsonl", '{"question": "a", "answer": "b"}\n')),
    c("sft-data-non-string", "sft", 2, "no usable rows", "data=ns.jsonl", *FAST,
      setup=_w("ns.jsonl", '{"prompt": 1, "completion": ["x"]}\n')),
    c("sft-data-field-name", "sft", 2, "need string columns ['nosuch'", "data=good.jsonl", "prompt_field=nosuch", *FAST),
    c("sft-data-json-broken", "sft", 2, "not valid JSON", "data=arr.json", *FAST, setup=_w("arr.json", "[{\"a\": 1},")),
    c("sft-data-dir-no-dataset", "sft", 2, "cannot load dataset directory", "data=notes", *FAST),
    c("dpo-data-empty", "dpo", 2, "empty.jsonl is empty", "mode=offline", "data=empty.jsonl", *FAST,
      setup=_w("empty.jsonl", "")),
    c("rm-data-missing", "reward_model", 2, "the file does not exist", "data=missing.jsonl", *FAST),
    c("task-jsonl-empty", "eval", 2, "empty.jsonl is empty", "task=jsonl", "data_dir=empty.jsonl", *FAST,
      setup=_w("empty.jsonl", "")),
    c("task-jsonl-columns", "eval", 2, "none of the columns", "task=jsonl", "data_dir=cols.jsonl", *FAST,
      setup=_w("cols.jsonl", '{"x": 1}\n')),
    c("task-jsonl-mixed-dir", "eval", 2, "mixed or unknown file types", "task=jsonl", "data_dir=mixed", *FAST,
      setup=lambda root, nano: (_w("mixed/a.jsonl", "{}\n")(root, nano), _w("mixed/b.csv", "a\n1\n")(root, nano))),
    c("task-mbpp-bad-rows", "eval", 2, "mbpp: no usable rows", "task=mbpp", "data_dir=mb.jsonl", "split=test", *FAST,
      setup=_w("mb.jsonl", '{"task_id": 11, "text": "x"}\n')),
    c("task-apps-empty", "eval", 2, "apps.jsonl is empty", "task=apps", "data_dir=apps.jsonl", *FAST,
      setup=_w("apps.jsonl", "")),
    # -- sandbox run arguments ------------------------------------------------------------------------
    c("sandbox-missing-file", "sandbox", 2, "FILE 'missing.py' does not exist", "run", "missing.py"),
    c("sandbox-directory", "sandbox", 2, "FILE 'notes' is a directory", "run", "notes"),
    c("sandbox-not-utf8", "sandbox", 2, "is not UTF-8 text", "run", "prog.py", setup=_w("prog.py", b"print('\xff')\n")),
    c("sandbox-timeout-zero", "sandbox", 2, "--timeout 0.0: must be a finite number > 0", "run", "precious.txt",
      "--timeout", "0"),
    c("sandbox-timeout-negative", "sandbox", 2, "--timeout -1.0", "run", "precious.txt", "--timeout", "-1"),
    c("sandbox-timeout-nan", "sandbox", 2, "--timeout nan", "run", "precious.txt", "--timeout", "nan"),
    c("sandbox-timeout-inf", "sandbox", 2, "--timeout inf", "run", "precious.txt", "--timeout", "inf"),
    c("sandbox-cpu-zero", "sandbox", 2, "--cpu 0", "run", "precious.txt", "--cpu", "0"),
    c("sandbox-memory-negative", "sandbox", 2, "--memory-mb -5", "run", "precious.txt", "--memory-mb", "-5"),
    c("sandbox-stdin-missing", "sandbox", 2, "--stdin 'nope.txt' does not exist", "run", "precious.txt",
      "--stdin", "nope.txt"),
    c("sandbox-cpu-word", "sandbox", 2, "invalid int value", "run", "precious.txt", "--cpu", "lots"),
    c("sandbox-no-action", "sandbox", 2, "the following arguments are required"),
    c("sandbox-bad-action", "sandbox", 2, "invalid choice", "explode"),
    c("sandbox-bad-language", "sandbox", 2, "invalid choice", "run", "precious.txt", "--language", "cobol"),
    # -- filesystem -----------------------------------------------------------------------------------
    c("output-dir-is-file", "eval", 2, "output_dir=precious.txt is a file, not a directory", "model.name={nano}", "n=1",
      "k=0", "threads=1", "output_dir=precious.txt"),
    c("output-dir-under-file", "eval", 2, "precious.txt is a file; choose another output_dir", "model.name={nano}", "n=1",
      "k=0", "threads=1", "output_dir=precious.txt/run"),
]
