"""A self-improvement run killed mid-way and resumed ends where an uninterrupted one does."""

from __future__ import annotations

import pytest
import torch

from reasonloop.config import load_config
from reasonloop.recipes import dpo, self_train
from reasonloop.selfimprove.loop import Loop

SMALL = ["iterations=3", "prompts_per_iteration=12", "samples_per_prompt=2", "eval_n=6", "sft_max_steps=2",
         "batch_size=8", "micro_batch_size=8", "train_pool=100", "max_new_tokens=40"]
CASES = {
    "rft": (self_train, ["method=rft"]),
    "v_star": (self_train, ["method=v_star", "verifier_steps=2", "best_of_n=2"]),
    "online_dpo": (dpo, ["mode=online", "steps=2"]),
}


def final_weights(tmp_dir):
    from safetensors.torch import load_file

    return load_file(str(tmp_dir / "model" / "model.safetensors"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_killed_loop_resumes_after_its_last_finished_iteration(case, tmp_path, monkeypatch):
    module, args = CASES[case]
    straight = module.run(load_config(module.Config, [*SMALL, *args, f"output_dir={tmp_path / 'a'}"]))

    real_end = Loop.end_iteration
    calls = {"n": 0}

    def dying_end(self, iteration, metrics, evaluate_now=True):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed during iteration 2")
        return real_end(self, iteration, metrics, evaluate_now)

    cfg = load_config(module.Config, [*SMALL, *args, f"output_dir={tmp_path / 'b'}"])
    monkeypatch.setattr(Loop, "end_iteration", dying_end)
    with pytest.raises(KeyboardInterrupt):
        module.run(cfg)
    done = []

    def counting_end(self, iteration, metrics, evaluate_now=True):
        done.append(iteration)
        return real_end(self, iteration, metrics, evaluate_now)

    monkeypatch.setattr(Loop, "end_iteration", counting_end)
    resumed = module.run(cfg)
    assert done == [2, 3]  # iteration 1 came from the checkpoint, not from a fresh start

    assert resumed["held_out_pass@1_by_iteration"] == straight["held_out_pass@1_by_iteration"]
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)
