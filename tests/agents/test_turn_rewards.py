"""Per-turn rewards sit on the token where each turn ends and reach the token-level estimators (GAE, REINFORCE++)."""

import pytest
import torch

from reasonloop.agents.envs import ToolEnv
from reasonloop.agents.tools import builtin_tool
from reasonloop.algos.advantages import gae_advantages
from reasonloop.algos.aggregation import masked_whiten
from reasonloop.algos.estimators import AdvantageInput, estimate
from reasonloop.config import load_config
from reasonloop.data.records import RolloutBatch
from reasonloop.recipes import rl
from reasonloop.recipes.presets import RL_PRESETS
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.rollout.multiturn import EpisodeBudget, MultiTurnEngine

from test_multiturn import PROMPTS, Script, TURNS, tiny  # noqa: F401 (fixture)
from test_rl_tools import forced_calls, tool_args

# one row: policy tokens at 0, 1, 4, 5; an observation at 2, 3. Turn 1 ends at token 1 (reward 0.5), the
# answer turn at token 5; the task's reward is 1.0, so the sequence reward (task + turns) is 1.5
MASK = torch.tensor([[1, 1, 0, 0, 1, 1]])
TURN = torch.tensor([[0.0, 0.5, 0.0, 0.0, 0.0, 0.0]])
VALUES = torch.tensor([[0.2, 0.4, 9.0, 9.0, 0.6, 0.8]])  # 9.0: never read (observation tokens)


def test_gae_puts_each_turn_reward_on_its_token():
    """gamma 0.5, lambda 1 (returns = discounted rewards-to-go), by hand over the policy tokens 0 -> 1 -> 4 -> 5:
    R5 = 1.0;  R4 = 0.5 * 1.0 = 0.5;  R1 = 0.5 + 0.5 * 0.5 = 0.75;  R0 = 0.5 * 0.75 = 0.375;
    A = R - V: 0.175, 0.35, -0.1, 0.2."""
    out = estimate("gae", AdvantageInput(rewards=torch.tensor([1.5]), group_sizes=(1,), mask=MASK, values=VALUES,
                                         gamma=0.5, lam=1.0, whiten=False, turn_rewards=TURN))
    assert out.returns.tolist()[0] == pytest.approx([0.375, 0.75, 0.0, 0.0, 0.5, 1.0])
    assert out.advantages.tolist()[0] == pytest.approx([0.175, 0.35, 0.0, 0.0, -0.1, 0.2])
    # without the placement all 1.5 sits on the last token: R5 = 1.5, R4 = 0.75, R1 = 0.375, R0 = 0.1875
    flat = estimate("gae", AdvantageInput(rewards=torch.tensor([1.5]), group_sizes=(1,), mask=MASK, values=VALUES,
                                          gamma=0.5, lam=1.0, whiten=False))
    assert flat.returns.tolist()[0] == pytest.approx([0.1875, 0.375, 0.0, 0.0, 0.75, 1.5])


def test_gae_with_lambda_below_one():
    """lambda 0.5, gamma 1: deltas d5 = 1 - 0.8 = 0.2, d4 = 0.8 - 0.6 = 0.2, d1 = 0.5 + 0.6 - 0.4 = 0.7,
    d0 = 0.4 - 0.2 = 0.2; A5 = 0.2, A4 = 0.2 + 0.5 * 0.2 = 0.3, A1 = 0.7 + 0.15 = 0.85, A0 = 0.2 + 0.425 = 0.625."""
    out = estimate("gae", AdvantageInput(rewards=torch.tensor([1.5]), group_sizes=(1,), mask=MASK, values=VALUES,
                                         gamma=1.0, lam=0.5, whiten=False, turn_rewards=TURN))
    assert out.advantages.tolist()[0] == pytest.approx([0.625, 0.85, 0.0, 0.0, 0.3, 0.2])
    assert out.returns.tolist()[0] == pytest.approx([0.825, 1.25, 0.0, 0.0, 0.9, 1.0])


def test_a_turn_reward_on_an_untrained_token_stays_in_the_final_reward():
    turn = torch.tensor([[0.0, 0.0, 0.5, 0.0, 0.0, 0.0]])  # on an observation token: not in the mask
    out = estimate("gae", AdvantageInput(rewards=torch.tensor([1.5]), group_sizes=(1,), mask=MASK,
                                         values=torch.zeros(1, 6), gamma=1.0, lam=1.0, whiten=False, turn_rewards=turn))
    assert out.returns.tolist()[0] == pytest.approx([1.5, 1.5, 0.0, 0.0, 1.5, 1.5])


def test_no_turn_rewards_is_the_old_gae_exactly():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    values, rewards = torch.randn(2, 4), torch.tensor([1.0, -0.5])
    token = torch.zeros(2, 4)
    token[0, 2], token[1, 3] = 1.0, -0.5
    want, want_returns = gae_advantages(token, values, mask, 0.9, 0.95)
    out = estimate("gae", AdvantageInput(rewards=rewards, group_sizes=(2,), mask=mask, values=values, gamma=0.9,
                                         lam=0.95, whiten=False, turn_rewards=torch.zeros(2, 4)))
    assert torch.equal(out.advantages, want * mask) and torch.equal(out.returns, want_returns)


def test_reinforce_pp_returns_to_go_include_a_turn_only_before_it():
    """beta 0, gamma 1: rewards-to-go 1.5, 1.5, -, -, 1.0, 1.0, whitened over the four policy tokens."""
    out = estimate("reinforce_pp", AdvantageInput(rewards=torch.tensor([1.5]), group_sizes=(1,), mask=MASK,
                                                  logprobs=torch.zeros(1, 6), ref_logprobs=torch.zeros(1, 6),
                                                  turn_rewards=TURN))
    want = masked_whiten(torch.tensor([[1.5, 1.5, 0.0, 0.0, 1.0, 1.0]]), MASK, 1e-8)
    assert out.advantages.tolist()[0] == pytest.approx(want.tolist()[0])
    assert out.advantages[0, 0] > 0 > out.advantages[0, 5]  # without the placement all four would be equal (0)


def test_sequence_estimators_see_the_sum_only():
    rewards, mask = torch.tensor([1.5, 0.0]), torch.ones(2, 6)
    turn = torch.zeros(2, 6)
    turn[0, 1] = 0.5
    a = estimate("grpo", AdvantageInput(rewards=rewards, group_sizes=(2,), mask=mask, turn_rewards=turn))
    b = estimate("grpo", AdvantageInput(rewards=rewards, group_sizes=(2,), mask=mask))
    assert torch.equal(a.advantages, b.advantages)


def test_the_engine_puts_each_step_reward_on_the_turns_last_token(tiny):  # noqa: F811
    tok, model = tiny
    calc = {"calc": builtin_tool("calc")}
    engine = MultiTurnEngine(model, tok, lambda: ToolEnv(calc, call_reward=0.25, error_reward=-0.5),
                             EpisodeBudget(4, 200, 64), choose=Script(tok, TURNS))
    batch = engine.generate(PROMPTS, 1, SamplingConfig(max_new_tokens=60))
    for row, prompt in enumerate(PROMPTS):
        ends, at = [], 0
        for turn, obs in zip(TURNS[prompt], batch.episodes.observations[row] + [""]):
            at += len(tok(turn, add_special_tokens=False)["input_ids"])
            ends.append(at - 1)  # the turn's last character (a call's '>')
            at += len(tok(obs, add_special_tokens=False)["input_ids"])
        ends[-1] += 1  # the answer turn ends at EOS
        want = torch.zeros(batch.completion_ids.shape[1])
        for end, reward in zip(ends, batch.episodes.step_rewards[row]):
            want[end] += reward
        assert batch.turn_rewards[row].tolist() == want.tolist()
        assert int(batch.completion_ids[row, ends[-1]]) == tok.eos_token_id
    assert batch.episodes.step_rewards == [[0.25, 0.0], [0.0], [-0.5, 0.25, 0.0]]
    assert batch.turn_rewards.sum(-1).tolist() == batch.episodes.returns.tolist()
    assert batch.episodes.returns.tolist() == [0.25, 0.0, -0.25]  # what the trainer adds to the sequence reward
    back = RolloutBatch.concat([batch.rows(slice(2, 3)), batch.rows(slice(0, 2))], tok.pad_token_id)
    assert back.episodes.returns.tolist() == [-0.25, 0.25, 0.0]
    assert back.episodes.step_rewards == [[-0.5, 0.25, 0.0], [0.25, 0.0], [0.0]]
    assert back.episodes.observations == [batch.episodes.observations[2], *batch.episodes.observations[:2]]
    both = RolloutBatch.concat([batch.rows(slice(0, 2)), batch.rows(slice(2, 3))], tok.pad_token_id)
    assert torch.equal(both.turn_rewards, batch.turn_rewards)


def test_ppo_hands_the_turn_rewards_to_gae(tmp_path, monkeypatch):
    trainer = rl.Trainer(load_config(rl.Config, [*RL_PRESETS["ppo"], *tool_args(tmp_path)]))
    forced_calls(trainer)
    seen = {}
    real = trainer.dist.estimate

    def spy(name, inp):
        seen["name"], seen["inp"] = name, inp
        return real(name, inp)

    monkeypatch.setattr(trainer.dist, "estimate", spy)
    _, data = trainer.step()
    assert seen["name"] == "gae" and seen["inp"].turn_rewards is data.batch.turn_rewards
    assert data.batch.turn_rewards.shape == data.batch.completion_ids.shape
