"""Online RL on multi-turn tool episodes: every preset runs a step; observations never reach the loss."""

import pytest
import torch

from reasonloop.config import ConfigError, load_config
from reasonloop.recipes import evaluate as evaluate_recipe
from reasonloop.recipes import rl
from reasonloop.recipes.presets import RL_PRESETS

from test_multiturn import Script

CALL = ['<think><tool name="calc">']  # the first turn starts a call; the model writes the rest


def tool_args(tmp_path, *extra):
    return ["task=tool_arith", "agent.env=tools", f"output_dir={tmp_path / 'run'}", "steps=1", "prompts_per_step=2",
            "group_size=3", "sampling.max_new_tokens=40", "agent.max_tokens=96", "eval_n=4", "eval_k=0",
            "eval_every=0", "save_every=0", "samples_every=0", "train_pool=16", "optim.warmup_steps=0", *extra]


def forced_calls(trainer):
    prompts = {trainer.render(ex.prompt): CALL for ex in trainer.pool}
    trainer.engine.choose = Script(trainer.tokenizer, prompts, then_model=True)


@pytest.mark.parametrize("preset", sorted(RL_PRESETS))
def test_every_online_preset_trains_on_tool_episodes(preset, tmp_path):
    fits = ["overlong_buffer=0"] if preset == "dapo" else []
    trainer = rl.Trainer(load_config(rl.Config, [*RL_PRESETS[preset], *tool_args(tmp_path), *fits]))
    forced_calls(trainer)
    metrics, data = trainer.step()
    assert metrics["agent/tool_call_rate"] == 1.0 and metrics["agent/turns_per_episode"] >= 1.0
    observed = data.batch.completion_mask - data.batch.policy_mask
    assert int(observed.sum()) > 0 and int(observed.min()) == 0  # observations are there, and masked
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values() if isinstance(v, float)), metrics


def test_observation_tokens_get_no_gradient(tmp_path):
    """The update's loss is the same whatever the observation tokens' advantages are: they are masked out."""
    trainer = rl.Trainer(load_config(rl.Config, tool_args(tmp_path, "kl_coef=0")))
    forced_calls(trainer)
    data, _ = trainer.collect()
    scores = trainer.score_tokens(data)
    mask = data.batch.loss_mask.float()
    estimated = trainer.advantages(data, scores, mask)
    observed = (data.batch.completion_mask - data.batch.policy_mask).bool()
    assert bool(observed.any())

    def grads(advantages):
        update = rl.UpdateBatch(data, scores, advantages, None, mask, None,
                                trainer.dist.normalizer(mask, trainer.cfg.agg_mode, max_len=40))
        trainer.model.zero_grad()
        trainer.accumulate_gradients(update)
        return torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])

    base = grads(estimated.advantages)
    poked = estimated.advantages.clone()
    poked[observed] += 100.0
    assert torch.equal(grads(poked), base)


def test_obs_in_loss_is_the_ablation(tmp_path):
    trainer = rl.Trainer(load_config(rl.Config, tool_args(tmp_path, "agent.obs_in_loss=true")))
    forced_calls(trainer)
    _, data = trainer.step()
    assert torch.equal(data.batch.loss_mask, data.batch.completion_mask)


def test_eval_reports_accuracy_with_and_without_tools(tmp_path, capsys):
    cfg = load_config(evaluate_recipe.Config, ["task=tool_arith:5", "n=6", "k=0", "agent.env=tools",
                                               f"output_dir={tmp_path / 'eval'}", "sampling.max_new_tokens=40"])
    evaluate_recipe.run(cfg)
    out = capsys.readouterr().out
    assert "with agent.env=tools (calc):" in out and "tool_call_rate" in out and "errors/malformed" in out
    import json

    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["eval"]["overall"]["n"] == 6 and summary["eval_with_tools"]["overall"]["n"] == 6
    assert set(summary["agent"]) >= {"agent/tool_call_rate", "agent/turns_per_episode", "agent/error_rate"}


def test_unknown_tools_and_environments_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"agent.tools=\['calc', 'shell'\]: unknown tools \['shell'\]"):
        rl.Trainer(load_config(rl.Config, tool_args(tmp_path, "agent.tools=[calc,shell]")))


@pytest.mark.parametrize("key, message", [
    ("agent.max_turns=0", "agent.max_turns must be >= 1"),
    ("agent.env=shell", "agent.env='shell': use '' (off), tools, or 'module:function' returning an environment"),
    ("agent.tool_timeout=0", "agent.tool_timeout must be > 0 seconds"),
])
def test_agent_config_is_validated(key, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(rl.Config, [key])


def test_bench_multiturn_compares_reuse_with_reprefill(tmp_path):
    import json

    from reasonloop.bench import Config as BenchConfig
    from reasonloop.bench import run as bench_run

    cfg = load_config(BenchConfig, ["which=multiturn", "multiturn.problems=2", "multiturn.group_size=2",
                                    "multiturn.repeats=1", "threads=1",
                                    f"output_dir={tmp_path}"])
    result = bench_run(cfg)
    # same_tokens is a reported figure, not asserted: the two paths compute the same logits in a different order,
    # and at temperature 1 a float-rounding difference can flip a sample (seen once on CI); the exact-token
    # equivalence is tested at small scale in test_multiturn.py
    assert isinstance(result["same_tokens"], bool) and result["episodes"] == 4 and result["observation_tokens"] > 0
    reuse, again = result["runs"]["reuse"][0], result["runs"]["reprefill"][0]
    assert reuse["generated"] > 0 and again["generated"] > 0
    assert json.loads((tmp_path / "bench.json").read_text())["episodes"] == 4
