"""Every method / mode runs end to end on a random nano model with tiny budgets and writes its
per-iteration metrics (improvement itself is tested in test_end_to_end.py)."""

import json

import pytest

from reasonloop.config import load_config

TINY = ["iterations=2", "prompts_per_iteration=4", "samples_per_prompt=2", "eval_n=4", "max_new_tokens=12",
        "sft_max_steps=1", "batch_size=4", "micro_batch_size=2", "task=arithmetic:1-2"]


def run_recipe(module, args, tmp_path):
    cfg = load_config(module.Config, [*TINY, *args, f"output_dir={tmp_path}"])
    result = module.run(cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(len(rows)))  # 0 = base, then one per iteration
    assert all("eval/pass@1_greedy" in r for r in rows)
    assert len(result["held_out_pass@1_by_iteration"]) == len(rows)
    assert json.loads((tmp_path / "summary.json").read_text())["held_out_pass@1_by_iteration"]
    return result, rows


@pytest.mark.parametrize("method", ["rft", "raft", "rest", "rest_em", "star", "expert_iteration", "v_star"])
def test_self_train_methods_run(nano_model_dir, tmp_path, method):
    from reasonloop.recipes import self_train

    extra = ["threshold=-5", "verifier_steps=1", "best_of_n=2", "search.n=2", "search.max_steps=2"]
    if method == "expert_iteration":  # a random model writes no answers to vote on: best-of-N still picks
        extra += ["expert_verify=false", "search.strategy=best_of_n"]
    result, rows = run_recipe(self_train, [f"model.name={nano_model_dir}", f"method={method}", *extra], tmp_path)
    assert all(k in rows[1] for k in ("kept", "duplicates_dropped", "prompts_covered"))
    if method in ("rft", "raft", "expert_iteration"):  # threshold -5 / no verification: something is kept
        assert rows[1]["kept"] > 0 and rows[1]["sft_steps"] > 0
    if method == "v_star":
        assert "test/verifier_bo2" in result


@pytest.mark.parametrize("args", [["mode=online", "judge=self"], ["mode=online", "judge=self_generative"], ["mode=self_rewarding"],
                                  ["mode=online", "loss=kto", "kto_threshold=-0.5"],
                                  ["mode=offline", "offline_pairs=4", "loss=simpo"], ["mode=spin", "loss=spin"]])
def test_dpo_modes_run(nano_model_dir, tmp_path, args):
    from reasonloop.recipes import dpo

    _, rows = run_recipe(dpo, [f"model.name={nano_model_dir}", "steps=1", *args], tmp_path)
    if "judge=self_generative" not in args:  # a random model's verdicts never parse: all 0, no pairs
        assert rows[1]["dpo_steps"] == 1.0


@pytest.mark.parametrize("args", [["mode=ttc_loop", "verify=false", "search.strategy=best_of_n"],
                                  ["mode=teacher", "verify=false", "on_policy_steps=1", "on_policy_prompts=2",
                                   "search.strategy=best_of_n"]])
def test_distill_modes_run(nano_model_dir, tmp_path, args):
    from reasonloop.recipes import distill

    _, rows = run_recipe(distill, [f"model.name={nano_model_dir}", "search.n=2", *args], tmp_path)
    assert rows[1]["kept"] > 0
    if "on_policy_steps=1" in args:
        assert rows[1]["on_policy/reverse_kl_first"] >= 0.0


@pytest.mark.parametrize("recipe,args", [("self_train", ["method=v_star", "threshold=-5", "verifier_steps=1", "best_of_n=2"]),
                                         ("dpo", ["mode=offline", "offline_pairs=4", "steps=1"])])
def test_the_loops_train_with_the_forward_block(nano_model_dir, tmp_path, monkeypatch, recipe, args):
    """`forward.*` reaches every training forward of a loop: the fine-tuning steps, the preference steps and the
    verifier's log-probs (self_train's v_star), the policy's and the reference's (dpo)."""
    import importlib

    from reasonloop.models import forward as forward_module

    module = importlib.import_module(f"reasonloop.recipes.{recipe}")
    chunks = []
    real = forward_module.policy_forward

    def spy(*a, logit_chunk=0, **k):
        chunks.append(logit_chunk)
        return real(*a, logit_chunk=logit_chunk, **k)

    monkeypatch.setattr(forward_module, "policy_forward", spy)  # the one every loop's log-probs go through
    run_recipe(module, [f"model.name={nano_model_dir}", "forward.logit_chunk=3", *args], tmp_path)
    assert chunks and set(chunks) == {3}, chunks


def test_on_policy_distillation_with_a_chunked_output_layer_takes_the_same_steps(nano_model_dir, tmp_path):
    """forward.logit_chunk: the reverse KL to the teacher from both models' logits a chunk at a time, the same
    on-policy steps (KL before and after) as from their whole logits."""
    from reasonloop.recipes import distill

    args = [f"model.name={nano_model_dir}", "search.n=2", "mode=teacher", "verify=false", "on_policy_steps=2",
            "on_policy_prompts=2", "search.strategy=best_of_n", "iterations=1"]
    rows = [run_recipe(distill, [*args, f"forward.logit_chunk={chunk}"], tmp_path / str(chunk))[1][1]
            for chunk in (0, 5)]
    for key in ("on_policy/reverse_kl_first", "on_policy/reverse_kl_last"):
        assert rows[1][key] == pytest.approx(rows[0][key], rel=1e-4, abs=1e-7), key
    assert rows[0]["on_policy/reverse_kl_first"] > 0
