"""`reasonloop compare method=NAME [baseline=grpo] [key=value ...]`: a method against a baseline at equal samples.

Runs the baseline (plain GRPO unless `baseline=` names another) and the method one after the other, with
the same seed and the same keys, and prints their held-out tables side by side with the difference
(method - baseline); `summary.json` in the output directory holds both tables, the deltas, each run's
directory and the number of training samples each one generated.

- `method=` (and `baseline=`) is an online-RL preset (`grpo`, `dapo`, `rloo`, ... or `train`), a framework
  of `reasonloop.frameworks` by module name (`ahro`, `capl`, ...; docs/frameworks.md), or any importable
  module path that exposes `Config` and `run(cfg) -> summary` with the summary's `after` (and `before`)
  held-out tables in the shape `train.evaluation.evaluate` returns.
- Every other `key=value` (and YAML file) goes to both runs when the baseline's config has the key, and
  to the method alone when only the method's config has it: `steps`, `seed`, `eval_n`, ... are shared,
  a framework's own keys (`ahro.lr=...`) reach only it. A key that neither config knows is an error.
- Equal samples: both runs train on `steps * prompts_per_step * group_size` rollouts unless their summary
  reports `samples` (a framework that generates more says so); the harness prints both counts and warns
  when they differ.
- `baseline_dir=DIR` reuses a finished baseline run (its `summary.json`) instead of training it again, after
  checking that its recorded config equals the one this comparison would run; one baseline then serves
  several methods.
- `output_dir=` (default `runs/compare-<method>-<timestamp>`) holds `baseline/`, `method/` and `summary.json`.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from reasonloop.config import ConfigError, field_types, load_config
from reasonloop.recipes.presets import RL_PRESETS

OWN_KEYS = ("method", "baseline", "output_dir", "baseline_dir")


@dataclass(frozen=True)
class Method:
    """A runnable method: its recipe module and the keys applied before the user's."""

    name: str
    module: ModuleType
    preset: tuple[str, ...] = ()

    @property
    def config_cls(self) -> type:
        return self.module.Config


def resolve_method(name: str) -> Method:
    """An RL preset (or `train`), a `reasonloop.frameworks` module, or a dotted module path with Config and run."""
    if name == "train" or name in RL_PRESETS:
        return Method(name, importlib.import_module("reasonloop.recipes.rl"), tuple(RL_PRESETS.get(name, ())))
    candidates = [f"reasonloop.frameworks.{name}", name] if "." not in name else [name]
    for path in candidates:
        try:
            module = importlib.import_module(path)
        except ModuleNotFoundError as exc:
            if exc.name and path.startswith(exc.name):  # the module itself is missing, not one it imports
                continue
            raise
        if not (hasattr(module, "Config") and callable(getattr(module, "run", None))):
            raise ConfigError(f"method={name!r}: module {path} has no Config and run(cfg)")
        return Method(name, module, tuple(getattr(module, "PRESET", ())))
    known = sorted(["train", *RL_PRESETS, *framework_names()])
    raise ConfigError(f"method={name!r} is not an RL preset, a framework or an importable module; known: {known}")


def framework_names() -> list[str]:
    """The modules of the reasonloop.frameworks package (without importing them)."""
    import pkgutil

    try:
        package = importlib.import_module("reasonloop.frameworks")
    except ModuleNotFoundError:
        return []
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))


def split_args(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """(the harness's own keys, everything else in order)."""
    own: dict[str, str] = {}
    rest: list[str] = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq and key.strip() in OWN_KEYS:
            own[key.strip()] = value
        else:
            rest.append(arg)
    return own, rest


def route_args(rest: list[str], method: Method, baseline: Method) -> tuple[list[str], list[str]]:
    """(the method's args, the baseline's args): a key both configs know goes to both; one only the method
    knows, to the method; YAML files go to both (each must load under both configs)."""
    to_method, to_baseline = [], []
    method_keys, baseline_keys = field_types(method.config_cls), field_types(baseline.config_cls)
    for arg in rest:
        key, eq, _ = arg.partition("=")
        key = key.strip()
        if not eq:
            to_method.append(arg)
            to_baseline.append(arg)
            continue
        if key == "output_dir":
            raise ConfigError("output_dir belongs to the comparison; each run goes to a folder inside it")
        in_method = key in method_keys or any(k.startswith(key + ".") for k in method_keys)
        in_baseline = key in baseline_keys or any(k.startswith(key + ".") for k in baseline_keys)
        if in_baseline:
            to_baseline.append(arg)
        if in_method or not in_baseline:  # an unknown key reaches the method's loader, which names it
            to_method.append(arg)
    return to_method, to_baseline


def training_samples(cfg: Any, summary: dict) -> int | None:
    """Rollouts generated for training: the summary's own count, else steps * prompts_per_step * group_size."""
    if "samples" in summary:
        return int(summary["samples"])
    try:
        return int(cfg.steps * cfg.prompts_per_step * cfg.group_size)
    except AttributeError:
        return None


def deltas(after_method: dict, after_baseline: dict) -> dict[str, dict[str, float]]:
    """{group: {metric: method - baseline}} over the groups and numeric metrics both tables have."""
    out: dict[str, dict[str, float]] = {}
    for group, m in after_method.items():
        b = after_baseline.get(group)
        if not isinstance(b, dict):
            continue
        out[group] = {k: round(float(v) - float(b[k]), 6) for k, v in m.items()
                      if k != "n" and k in b and isinstance(v, (int, float)) and isinstance(b[k], (int, float))}
    return out


def side_by_side(after_method: dict, after_baseline: dict, method: str, baseline: str,
                 metrics: tuple[str, ...] = ("pass@1_greedy", "pass@1")) -> str:
    """One row per group: n, then for each metric the baseline, the method and the difference."""
    first = next(iter(after_method.values()), {})
    shown = [k for k in metrics if k in first] or [k for k in first if k != "n"][:2]
    head = f"{'group':<10} {'n':>4}"
    for k in shown:
        head += f"  {k + ' ' + baseline:>22} {k + ' ' + method:>22} {'delta':>7}"
    lines = [head]
    groups = list(after_baseline) + [g for g in after_method if g not in after_baseline]
    for group in groups:
        m, b = after_method.get(group, {}), after_baseline.get(group, {})
        row = f"{group:<10} {int(b.get('n', m.get('n', 0))):>4}"
        for k in shown:
            bv, mv = b.get(k), m.get(k)
            d = f"{mv - bv:+7.3f}" if isinstance(bv, (int, float)) and isinstance(mv, (int, float)) else f"{'':>7}"
            row += f"  {_num(bv):>22} {_num(mv):>22} {d}"
        lines.append(row)
    return "\n".join(lines)


def _num(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "-"


def _reuse_baseline(path: Path, cfg: Any) -> dict:
    """A finished baseline run's summary, after checking that its recorded config is the one we would run."""
    from reasonloop.train.run import config_differences, config_values, recorded_values

    summary_file, config_file = path / "summary.json", path / "config.yaml"
    if not summary_file.is_file() or not config_file.is_file():
        raise ConfigError(f"baseline_dir={path}: not a finished run (it needs summary.json and config.yaml)")
    free = set(getattr(type(cfg), "RESUME_FREE", ())) | {"output_dir", "eval_every", "save_every", "samples_every"}
    diff = config_differences(recorded_values(config_file), config_values(cfg), free)
    if diff:
        raise ConfigError(f"baseline_dir={path} was run under another config ({'; '.join(diff[:5])}); "
                          "drop baseline_dir= to train the baseline afresh")
    return json.loads(summary_file.read_text())


def compare(args: list[str]) -> dict:
    """Run (or reuse) the baseline, run the method, print and write the comparison; returns the summary."""
    own, rest = split_args(args)
    if "method" not in own:
        raise ConfigError(f"compare needs method=NAME (an RL preset or a framework: {['train', *RL_PRESETS, *framework_names()]})")
    method, baseline = resolve_method(own["method"]), resolve_method(own.get("baseline", "grpo"))
    to_method, to_baseline = route_args(rest, method, baseline)
    out = Path(own.get("output_dir") or Path("runs") / f"compare-{method.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    base_dir = Path(own["baseline_dir"]) if own.get("baseline_dir") else out / "baseline"
    # both configs load (and validate) before anything runs
    base_cfg = load_config(baseline.config_cls, [*baseline.preset, *to_baseline, f"output_dir={base_dir}"])
    meth_cfg = load_config(method.config_cls, [*method.preset, *to_method, f"output_dir={out / 'method'}"])
    out.mkdir(parents=True, exist_ok=True)
    if own.get("baseline_dir"):
        print(f"compare: baseline {baseline.name}: reusing {base_dir}")
        base_summary = _reuse_baseline(base_dir, base_cfg)
    else:
        print(f"compare: baseline {baseline.name} -> {base_dir}")
        base_summary = baseline.module.run(base_cfg)
    print(f"compare: method {method.name} -> {out / 'method'}")
    meth_summary = method.module.run(meth_cfg)
    samples = {"method": training_samples(meth_cfg, meth_summary), "baseline": training_samples(base_cfg, base_summary)}
    table = side_by_side(meth_summary["after"], base_summary["after"], method.name, baseline.name)
    print(f"\nheld-out after training: {baseline.name} vs {method.name} (seed {getattr(meth_cfg, 'seed', '?')}, "
          f"training samples {samples['baseline']} vs {samples['method']})\n{table}")
    if samples["method"] != samples["baseline"]:
        print(f"compare: warning: unequal training samples (baseline {samples['baseline']}, method {samples['method']})")
    result = {
        "method": method.name, "baseline": baseline.name, "args": rest, "samples": samples,
        "method_dir": str(out / "method"), "baseline_dir": str(base_dir),
        "before": {"method": meth_summary.get("before"), "baseline": base_summary.get("before")},
        "after": {"method": meth_summary["after"], "baseline": base_summary["after"]},
        "delta": deltas(meth_summary["after"], base_summary["after"]),
        "method_extra": meth_summary.get("extra", {}),
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"compare: wrote {out / 'summary.json'}")
    return result


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: reasonloop compare method=NAME [baseline=grpo] [baseline_dir=DIR] [output_dir=DIR] "
              f"[key=value ...]\n\n{__doc__.strip()}\n\nmethods: {', '.join(['train', *RL_PRESETS, *framework_names()])}")
        return 0
    compare(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
