"""Each framework runs from the command line on the shipped tiny model and writes its own measurements; MFLO
trains exactly GRPO's policy, and its monitor with both thresholds at 0 is plain greedy decoding."""

from __future__ import annotations

import json

import pytest

from reasonloop.cli import main

SMALL = ["steps=2", "prompts_per_step=4", "group_size=4", "eval_n=10", "eval_k=0", "eval_every=0", "save_every=0",
         "samples_every=0", "train_pool=32", "logger=none", "threads=1"]


@pytest.mark.parametrize("name, extra_key", [("ahro", "weights_by_level"), ("capl", "curve"), ("dcot", "modes"),
                                             ("mgrcr", None)])
def test_framework_runs_and_summarises(name, extra_key, tmp_path):
    assert main([name, f"output_dir={tmp_path / name}", *SMALL]) == 0
    summary = json.loads((tmp_path / name / "summary.json").read_text())
    assert summary["after"]["overall"]["n"] == 10
    if extra_key:
        assert extra_key in summary["extra"]
    metrics = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2]
    if name == "capl":  # the curve runs from always-think to never-think
        curve = summary["extra"]["curve"]
        assert curve[0]["think_rate"] == 1.0 and curve[-1]["think_rate"] == 0.0
        assert curve[0]["tokens"] > curve[-1]["tokens"]  # step by step writes more than the chain at once


def test_mflo_trains_grpos_policy_and_an_idle_monitor_is_greedy(tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "method=mflo", f"output_dir={out}", *SMALL, "mflo.backtrack_below=0",
                 "mflo.verify_below=0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    after = summary["after"]["method"]
    assert summary["delta"]["overall"]["pass@1_greedy"] == 0.0
    assert after["overall"]["pass@1_greedy"] == after["overall"]["greedy_no_monitor"]
    assert after["overall"]["tokens"] == after["overall"]["tokens_no_monitor"]
    assert summary["method_extra"]["decisions"].get("backtrack", 0) == 0

    def losses(run):
        return [m["loss"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in m]

    assert losses(out / "method") == losses(out / "baseline")  # the head never touches the policy's updates
