"""Multi-turn rollouts: observation masks, log-probs, a scripted policy, and K/V reuse against re-prefilling."""

import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reasonloop.agents import GuessEnv, ToolEnv, calculator
from reasonloop.agents.envs import tool_env_factory
from reasonloop.data.records import Example, RolloutBatch
from reasonloop.models.forward import policy_forward
from reasonloop.models.loading import resolve_model_path
from reasonloop.rollout import kv_cache, multiturn
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.rollout.multiturn import EpisodeBudget, MultiTurnEngine

PROMPTS = ["Q: 37+28-15=?\n", "Q: 4+5=?\n", "Q: 12-3+40=?\n"]


@pytest.fixture
def poisoned_cache(monkeypatch):
    """Every multi-turn K/V cache starts filled with NaN, as recycled memory may be: a column some row never wrote
    but still reads with weight 0 then turns its output into NaN (the flaky failures of session 7, found this way)."""

    class Poisoned(kv_cache.StaticDecoder):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            self.storage.fill_(float("nan"))

    monkeypatch.setattr(kv_cache, "StaticDecoder", Poisoned)


@pytest.fixture(scope="module")
def tiny():
    path = resolve_model_path("tiny-arith")
    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)


class Script:
    """A scripted policy: episode i writes SCRIPTS[i]'s policy text (observations are the environment's),
    then the model's own choice once the script runs out (None: EOS)."""

    def __init__(self, tokenizer, scripts: dict[str, list[str] | None], then_model: bool = False):
        self.tok = tokenizer
        self.ids = {p: (None if s is None else
                        [t for part in s for t in tokenizer(part, add_special_tokens=False)["input_ids"]])
                    for p, s in scripts.items()}
        self.then_model = then_model

    def __call__(self, logits, eps):
        out = logits.clone()
        for row, ep in enumerate(eps):
            script = self.ids[ep.example.prompt]
            done = sum(ep.policy)
            if script is None or done > len(script) or (done == len(script) and self.then_model):
                continue
            token = script[done] if done < len(script) else self.tok.eos_token_id
            out[row] = float("-inf")
            out[row, token] = 0.0
        return out


TURNS = {  # per prompt: the policy's turns (each a call or the answer)
    PROMPTS[0]: ['<think><tool name="calc">37+28-15</tool>', "</think><answer>50</answer>"],
    PROMPTS[1]: ['<think>4+5=9</think><answer>9</answer>'],
    PROMPTS[2]: ['<think><tool name=calc>12-3</tool>', '<tool name="calc">12-3+40</tool>', "</think><answer>49</answer>"],
}
EXPECTED = {
    PROMPTS[0]: '<think><tool name="calc">37+28-15</tool><result>50</result></think><answer>50</answer>',
    PROMPTS[1]: "<think>4+5=9</think><answer>9</answer>",
    PROMPTS[2]: ('<think><tool name=calc>12-3</tool><result>error: malformed tool call</result><tool name="calc">12-3+40</tool><result>49</result></think><answer>49</answer>'),
}


def scripted_engine(tiny, reuse_kv=True, obs_in_loss=False, budget=EpisodeBudget(4, 200, 64), **kw):
    tok, model = tiny
    return MultiTurnEngine(model, tok, tool_env_factory(["calc"]), budget, reuse_kv=reuse_kv,
                           obs_in_loss=obs_in_loss, choose=Script(tok, TURNS), **kw)


@pytest.mark.parametrize("reuse_kv", [True, False])
def test_scripted_policy_gets_the_exact_observations(tiny, reuse_kv):
    engine = scripted_engine(tiny, reuse_kv)
    batch = engine.generate(PROMPTS, 1, SamplingConfig(temperature=1.0, max_new_tokens=60), torch.Generator().manual_seed(0))
    assert batch.completions == [EXPECTED[p] for p in PROMPTS]
    assert batch.episodes.observations == [
        ["<result>50</result>"], [],
        ['<result>error: malformed tool call</result>', "<result>49</result>"]]
    assert batch.episodes.step_rewards == [[0.0, 0.0], [0.0], [0.0, 0.0, 0.0]]
    assert batch.finish_reasons == ["stop"] * 3
    m = engine.metrics()
    assert m["agent/turns_per_episode"] == pytest.approx(6 / 3)
    assert m["agent/tool_calls_per_episode"] == pytest.approx(3 / 3)
    assert m["agent/tool_call_rate"] == pytest.approx(2 / 3)
    assert m["agent/error_rate"] == pytest.approx(1 / 3) and m["agent/errors/malformed"] == 1
    assert engine.metrics() == {}  # read once


def test_loss_mask_is_zero_exactly_on_observation_tokens(tiny):
    tok, _ = tiny
    batch = scripted_engine(tiny).generate(PROMPTS, 1, SamplingConfig(max_new_tokens=60), torch.Generator().manual_seed(0))
    for row, prompt in enumerate(PROMPTS):
        want = []
        pieces = EXPECTED[prompt].replace("<result>", "\0<result>").replace("</result>", "</result>\0").split("\0")
        for piece in pieces:
            n = len(tok(piece, add_special_tokens=False)["input_ids"])
            want += [0 if piece.startswith("<result>") else 1] * n
        want.append(1)  # EOS, the policy's
        L = len(want)
        assert batch.policy_mask[row, :L].tolist() == want
        assert batch.completion_mask[row, :L].tolist() == [1] * L  # observations are attended to
        assert batch.policy_mask[row, L:].sum() == 0 and batch.completion_mask[row, L:].sum() == 0
        assert bool((batch.logprobs[row][torch.tensor(want + [0] * (batch.logprobs.shape[1] - L)) == 0] == 0).all())
    assert torch.equal(batch.loss_mask, batch.policy_mask)
    ablation = scripted_engine(tiny, obs_in_loss=True).generate(PROMPTS, 1, SamplingConfig(max_new_tokens=60))
    assert torch.equal(ablation.loss_mask, ablation.completion_mask)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_training_forward_recomputes_the_sampled_logprobs(tiny, temperature, poisoned_cache):
    tok, model = tiny
    # the first turn is scripted to call the calculator; after the observation the model samples freely
    first = {p: [t[0]] for p, t in TURNS.items()}
    engine = MultiTurnEngine(model, tok, tool_env_factory(["calc"]), EpisodeBudget(3, 150, 32),
                             choose=Script(tok, first, then_model=True))
    batch = engine.generate(PROMPTS, 3, SamplingConfig(temperature=temperature, max_new_tokens=40),
                            torch.Generator().manual_seed(1))
    assert int((batch.completion_mask - batch.policy_mask).sum()) > 0  # observations are in there
    with torch.no_grad():
        recomputed = policy_forward(model, batch.tokens, temperature).logprobs
    mask = batch.policy_mask.bool()
    # float32 rounding of two computations (cached decode steps vs one forward; the worst seen is 3.6e-4 at a log-prob
    # of -17.5); a log-prob taken at the wrong position, or read through a stale cache column, is off by O(1) or NaN
    assert torch.allclose(recomputed[mask], batch.logprobs[mask], rtol=1e-4, atol=5e-4)


def test_kv_reuse_samples_what_reprefilling_samples(tiny, monkeypatch, poisoned_cache):
    tok, model = tiny
    first = {p: [t[0]] for p, t in TURNS.items()}
    slow = {"n": 0}

    def calc_slowly(expr):  # the tools answer at different times: rows wait while others write
        slow["n"] += 1
        time.sleep(0.03 * (slow["n"] % 3))
        return calculator(expr)

    def make_env():
        return ToolEnv({"calc": calc_slowly})

    monkeypatch.setattr(multiturn, "CACHE_SLACK", 1)  # a tight cache: compaction when waits leave gaps
    out = {}
    for reuse in (True, False):
        engine = MultiTurnEngine(model, tok, make_env, EpisodeBudget(3, 120, 24), reuse_kv=reuse,
                                 choose=Script(tok, first, then_model=True))
        out[reuse] = engine.generate(PROMPTS, 4, SamplingConfig(temperature=1.0, max_new_tokens=40),
                                     torch.Generator().manual_seed(7))
    a, b = out[True], out[False]
    assert a.completions == b.completions
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.policy_mask, b.policy_mask)
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-4)
    assert a.finish_reasons == b.finish_reasons


def test_compaction_keeps_what_every_row_attends_to(tiny):
    """Squeezing out masked cache columns (left by waiting rows) changes no row's next logits."""
    tok, model = tiny
    ids = torch.tensor([tok("Q: 12+30=?", add_special_tokens=False)["input_ids"],
                        tok("Q: 4+5-1=?", add_special_tokens=False)["input_ids"]])
    engine = MultiTurnEngine(model, tok, tool_env_factory(["calc"]))
    outs = []
    for squeeze in (False, True):
        d = kv_cache.StaticDecoder(model, 2, 40)
        with torch.inference_mode():
            d.prefill(ids, torch.ones_like(ids))
            position = [ids.shape[1] - 1] * 2
            for t, tokens in enumerate(tok("<think>1+2", add_special_tokens=False)["input_ids"]):
                fed = [[0], [0, 1], [1]][t % 3]  # each row waits on some steps: its column is masked off
                col = d.length
                pos = torch.tensor([position[r] + (r in fed) for r in range(2)])
                d.step(torch.tensor([tokens, tokens]), pos)
                for r in {0, 1} - set(fed):
                    d.valid[r, col] = False
                for r in fed:
                    position[r] += 1
            if squeeze:
                engine._room(d, 2, d.max_len - d.length + 1)
                assert engine.compactions == 1 and d.length == max(int(d.valid[0].sum()), int(d.valid[1].sum()))
            outs.append(d.step(torch.tensor([5, 5]), torch.tensor([position[0] + 1, position[1] + 1])))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)


def test_budgets_cut_turns_tokens_and_observations(tiny):
    tok, model = tiny
    loop = {p: ['<tool name="calc">1+1</tool>'] * 10 for p in PROMPTS}
    engine = MultiTurnEngine(model, tok, tool_env_factory(["calc"]), EpisodeBudget(2, 200, 4), choose=Script(tok, loop))
    batch = engine.generate(PROMPTS[:1], 1, SamplingConfig(max_new_tokens=60))
    # two turns, the observation cut to 4 tokens, then the turn limit ends the episode (truncated)
    assert batch.completions == ['<tool name="calc">1+1</tool><res<tool name="calc">1+1</tool>']
    assert batch.finish_reasons == ["length"] and bool(batch.truncated.all())
    engine = MultiTurnEngine(model, tok, tool_env_factory(["calc"]), EpisodeBudget(9, 30, 32), choose=Script(tok, loop))
    batch = engine.generate(PROMPTS[:1], 1, SamplingConfig(max_new_tokens=60))
    assert int(batch.completion_mask.sum()) <= 30 and batch.finish_reasons == ["length"]


def test_a_game_environment_gets_its_example(tiny):
    tok, model = tiny
    guesses = {"Guess:\n": ["<guess>25</guess>", "<guess>12</guess>", "<guess>18</guess>"]}
    engine = MultiTurnEngine(model, tok, lambda: GuessEnv(1, 50), EpisodeBudget(5, 200, 32), choose=Script(tok, guesses))
    batch = engine.episodes([Example("Guess:\n", "18")], 1, SamplingConfig(max_new_tokens=30))
    assert batch.completions == ["<guess>25</guess><feedback>lower</feedback><guess>12</guess>"
                                 "<feedback>higher</feedback><guess>18</guess>"]
    assert batch.episodes.step_rewards == [[-0.1, -0.1, 1.0]]
    assert batch.episodes.returns.tolist() == pytest.approx([0.8])


def test_concat_keeps_the_policy_mask(tiny):
    batch = scripted_engine(tiny).generate(PROMPTS, 1, SamplingConfig(max_new_tokens=60))
    plain = RolloutBatch(batch.prompt_ids[:1], batch.prompt_mask[:1], batch.completion_ids[:1, :5],
                         batch.completion_mask[:1, :5], batch.logprobs[:1, :5], ["stop"], ["x"], 1)
    both = RolloutBatch.concat([batch.rows(slice(0, 3)), plain], 0)
    assert torch.equal(both.loss_mask[:3], batch.policy_mask)
    assert torch.equal(both.loss_mask[3, :5], plain.completion_mask[0])


def test_the_batch_carries_the_episodes_and_concat_fills_single_turn_rows(tiny):
    batch = scripted_engine(tiny).generate(PROMPTS, 1, SamplingConfig(max_new_tokens=60))
    plain = RolloutBatch(batch.prompt_ids[:1], batch.prompt_mask[:1], batch.completion_ids[:1, :5],
                         batch.completion_mask[:1, :5], batch.logprobs[:1, :5], ["stop"], ["x"], 1)
    assert plain.episodes is None and RolloutBatch.concat([plain, plain], 0).episodes is None
    both = RolloutBatch.concat([batch.rows(slice(1, 3)), plain, batch.rows(slice(0, 1))], 0)
    assert both.episodes.observations == [[], ['<result>error: malformed tool call</result>', "<result>49</result>"],
                                          [], ["<result>50</result>"]]
    assert both.episodes.step_rewards == [[0.0], [0.0, 0.0, 0.0], [], [0.0, 0.0]]  # the single-turn row: no steps
    assert both.episodes.returns.tolist() == [0.0, 0.0, 0.0, 0.0]
