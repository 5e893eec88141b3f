"""The comparison harness: argument routing, deltas, the side-by-side table, and a real two-run comparison."""

from __future__ import annotations

import json

import pytest

from reasonloop.cli import main
from reasonloop.config import ConfigError
from reasonloop.recipes import compare, rl
from toy_tasks import LetterFirstTask


def test_route_args_shares_common_keys_and_keeps_method_keys_to_the_method():
    method, baseline = compare.resolve_method("dapo"), compare.resolve_method("grpo")
    to_m, to_b = compare.route_args(["steps=3", "seed=7", "sampling.temperature=0.9"], method, baseline)
    assert to_m == to_b == ["steps=3", "seed=7", "sampling.temperature=0.9"]
    assert method.preset == tuple(["clip_high=0.28", "agg_mode=token_mean", "dynamic_sampling=true",
                                   "overlong_buffer=16", "mask_truncated=true", "kl_coef=0"])


def test_route_args_sends_a_key_only_the_method_knows_to_the_method_alone(monkeypatch):
    import dataclasses
    import types

    @dataclasses.dataclass
    class MethodConfig(rl.Config):
        extra_weight: float = 0.5

    fake = types.ModuleType("fake_method")
    fake.Config, fake.run = MethodConfig, lambda cfg: {}
    method = compare.Method("fake", fake)
    to_m, to_b = compare.route_args(["steps=2", "extra_weight=0.1"], method, compare.resolve_method("grpo"))
    assert to_m == ["steps=2", "extra_weight=0.1"]
    assert to_b == ["steps=2"]


def test_output_dir_inside_the_forwarded_keys_is_refused():
    m = compare.resolve_method("grpo")
    with pytest.raises(ConfigError, match="output_dir belongs to the comparison"):
        compare.route_args(["output_dir=x"], m, m)


def test_unknown_method_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"method='nope' is not an RL preset.*'dapo'"):
        compare.resolve_method("nope")


def test_deltas_and_side_by_side_table():
    base = {"overall": {"n": 4, "pass@1_greedy": 0.25, "pass@1": 0.5}, "level/1": {"n": 2, "pass@1_greedy": 0.5}}
    meth = {"overall": {"n": 4, "pass@1_greedy": 0.75, "pass@1": 0.25}, "level/1": {"n": 2, "pass@1_greedy": 1.0}}
    assert compare.deltas(meth, base) == {"overall": {"pass@1_greedy": 0.5, "pass@1": -0.25},
                                          "level/1": {"pass@1_greedy": 0.5}}
    lines = compare.side_by_side(meth, base, "m", "b").splitlines()
    assert lines[0].split()[:3] == ["group", "n", "pass@1_greedy"]
    assert lines[1].split() == ["overall", "4", "0.250", "0.750", "+0.500", "0.500", "0.250", "-0.250"]
    assert lines[2].split() == ["level/1", "2", "0.500", "1.000", "+0.500", "-", "-"]


def test_training_samples_prefers_the_summarys_own_count():
    cfg = rl.Config(steps=3, prompts_per_step=4, group_size=2)
    assert compare.training_samples(cfg, {}) == 24
    assert compare.training_samples(cfg, {"samples": 30}) == 30


@pytest.fixture
def toy_task(monkeypatch):
    monkeypatch.setattr(rl, "make_task", lambda spec, data_dir=None: LetterFirstTask())


def args(model_dir):
    return [f"model.name={model_dir}", "steps=1", "prompts_per_step=4", "group_size=4", "sampling.max_new_tokens=4",
            "eval_n=4", "eval_k=0", "eval_every=0", "save_every=0", "samples_every=0", "train_pool=16",
            "optim.warmup_steps=0", "logger=none", "threads=1"]


def test_compare_runs_both_and_writes_the_summary(nano_model_dir, tmp_path, toy_task, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "method=dr_grpo", f"output_dir={out}", *args(nano_model_dir)]) == 0
    printed = capsys.readouterr().out
    assert "held-out after training: grpo vs dr_grpo" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "dr_grpo" and summary["baseline"] == "grpo"
    assert summary["samples"] == {"method": 16, "baseline": 16}
    base_after = summary["after"]["baseline"]["overall"]["pass@1_greedy"]
    meth_after = summary["after"]["method"]["overall"]["pass@1_greedy"]
    assert summary["delta"]["overall"]["pass@1_greedy"] == pytest.approx(meth_after - base_after)
    assert (out / "baseline" / "summary.json").is_file() and (out / "method" / "summary.json").is_file()
    # the same baseline serves a second method without training again; a different config is refused
    out2 = tmp_path / "cmp2"
    assert main(["compare", "method=grpo", f"output_dir={out2}", f"baseline_dir={out / 'baseline'}",
                 *args(nano_model_dir)]) == 0
    again = json.loads((out2 / "summary.json").read_text())
    assert again["after"]["baseline"] == summary["after"]["baseline"]
    assert not (out2 / "baseline").exists()
    assert main(["compare", "method=grpo", f"output_dir={tmp_path / 'cmp3'}", f"baseline_dir={out / 'baseline'}",
                 *args(nano_model_dir), "seed=3"]) == 2
    assert "was run under another config (seed: 0 -> 3)" in capsys.readouterr().err
