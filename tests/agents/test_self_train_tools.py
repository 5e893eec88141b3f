"""Self-training (rejection sampling, expert iteration ...) on multi-turn episodes: SFT with the observation
tokens masked out of the loss."""

import json

import pytest
import torch

from reasonloop.config import ConfigError, load_config
from reasonloop.models.forward import completion_logprobs
from reasonloop.recipes import self_train
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.rollout.multiturn import encode_episodes
from reasonloop.selfimprove import loop as loop_mod
from reasonloop.selfimprove.loop import Loop
from reasonloop.selfimprove.selection import correct_only
from reasonloop.train.optim import OptimConfig, build_optimizer
from reasonloop.train.supervised import supervised_step

from test_multiturn import PROMPTS, Script, scripted_engine, tiny  # noqa: F401 (fixture)


def test_encode_episodes_masks_exactly_the_observation_tokens(tiny):  # noqa: F811
    tok, _ = tiny
    engine = scripted_engine(tiny, remember=True)
    batch = engine.generate(PROMPTS, 1, SamplingConfig(max_new_tokens=60))
    episodes = [engine.transcripts[text] for text in batch.completions]
    enc, loss_mask = encode_episodes(tok, PROMPTS, episodes)
    L = batch.completion_ids.shape[1]
    assert torch.equal(enc.completion_ids[:, :L], batch.completion_ids)
    assert torch.equal(loss_mask[:, :L], batch.policy_mask)  # 0 exactly on observations, 1 on the policy's
    assert torch.equal(enc.completion_mask[:, :L], batch.completion_mask)  # observations stay context
    assert int((enc.completion_mask - loss_mask).sum()) == int((batch.completion_mask - batch.policy_mask).sum()) > 0


def test_encode_episodes_by_hand(tokenizer):
    eos = tokenizer.eos_token_id
    enc, loss_mask = encode_episodes(tokenizer, ["ab", "c"], [([7, 8, 9, 10], [1, 0, 0, 1]), ([11, eos], [1, 1])])
    assert enc.completion_ids.tolist() == [[7, 8, 9, 10, eos], [11, eos, tokenizer.pad_token_id, tokenizer.pad_token_id,
                                                                tokenizer.pad_token_id]]
    assert loss_mask.tolist() == [[1, 0, 0, 1, 1], [1, 1, 0, 0, 0]]  # EOS added (and trained on) only where missing
    assert enc.completion_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    with pytest.raises(ValueError, match="3 tokens but 2 mask entries"):
        encode_episodes(tokenizer, ["a"], [([1, 2, 3], [1, 1])])


def test_masked_sft_loss_is_the_mean_nll_of_the_policy_tokens(tiny):  # noqa: F811
    tok, model = tiny
    engine = scripted_engine(tiny, remember=True)
    batch = engine.generate(PROMPTS, 1, SamplingConfig(max_new_tokens=60))
    enc, loss_mask = encode_episodes(tok, PROMPTS, [engine.transcripts[t] for t in batch.completions])
    with torch.no_grad():
        lp = completion_logprobs(model, enc)
    want = float(-(lp * loss_mask).sum() / loss_mask.sum())
    everything = float(-(lp * enc.completion_mask).sum() / enc.completion_mask.sum())
    optimizer, scheduler = build_optimizer(model.parameters(), OptimConfig(lr=1e-9, warmup_steps=0), 1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        out = supervised_step(model, enc, 2, optimizer, scheduler, 1.0, loss_mask=loss_mask)
    finally:
        model.load_state_dict(state)
        model.zero_grad(set_to_none=True)
    assert out["loss"] == pytest.approx(want, rel=1e-5) and out["tokens"] == float(loss_mask.sum())
    assert abs(want - everything) > 1e-3  # the observations would have changed it


def _args(tmp_path, *extra):
    return ["task=tool_arith", "agent.env=tools", f"output_dir={tmp_path / 'run'}", "iterations=1",
            "prompts_per_iteration=4", "samples_per_prompt=2", "train_pool=8", "eval_n=4", "max_new_tokens=40",
            "agent.max_tokens=96", "sft_max_steps=2", "batch_size=4", "micro_batch_size=4", *extra]


def test_rejection_sampling_fine_tunes_on_masked_episodes(tmp_path, monkeypatch):
    cfg = load_config(self_train.Config, _args(tmp_path))
    loop = Loop(cfg, "self_train")
    examples = loop.next_prompts()
    # every episode calls the calculator on its own problem, then the model writes the rest
    calls = {ex.prompt: [f'<think><tool name="calc">{ex.prompt.split("Q: ")[-1].split("=")[0]}</tool>']
             for ex in examples}
    loop.agent_engine.choose = Script(loop.tokenizer, calls, then_model=True)
    samples = loop.sample(examples)
    assert len(samples) == 8 and all("<result>" in s.completion for s in samples)
    seen = []
    real = supervised_step

    def spy(model, batch, mbs, opt, sched, clip, loss_mask=None, **kwargs):
        seen.append((batch, loss_mask))
        return real(model, batch, mbs, opt, sched, clip, loss_mask=loss_mask, **kwargs)

    monkeypatch.setattr(loop_mod, "supervised_step", spy)
    kept = samples[:4]  # what a keep rule returns; here whatever was sampled
    out = loop.finetune(kept)
    assert out["sft_steps"] == 2.0 and len(seen) == 2
    eos = loop.tokenizer.eos_token_id
    want = {}  # the kept episodes' tokens (EOS-ended) -> their policy masks
    for s in kept:
        ids, policy = loop.agent_engine.transcripts[s.completion]
        if ids[-1] != eos:
            ids, policy = ids + [eos], policy + [1]
        want[tuple(ids)] = policy
    for batch, loss_mask in seen:
        assert loss_mask is not None
        for row in range(len(batch)):
            ids = tuple(batch.completion_ids[row][batch.completion_mask[row].bool()].tolist())
            assert loss_mask[row, : len(ids)].tolist() == want[ids] and 0 in want[ids]
    loop.next_prompts()  # a new iteration forgets the old episodes
    with pytest.raises(ValueError, match="not episodes sampled this iteration"):
        loop.finetune(correct_only(samples) or samples[:1])


def test_self_train_runs_on_episodes_and_logs_the_tool_counters(tmp_path):
    cfg = load_config(self_train.Config, _args(tmp_path, "method=expert_iteration", "search.strategy=majority",
                                               "search.n=2", "expert_verify=false"))
    result = self_train.run(cfg)
    assert result["after"]["overall"]["n"] == 4
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    assert "eval/agent/tool_call_rate" in first and "eval/agent/turns_per_episode" in last
    assert "agent/turns_per_episode" in last  # the expert's episodes


@pytest.mark.parametrize("extra, message", [
    (["method=v_star"], "method=v_star does not run on multi-turn episodes"),
    (["method=expert_iteration", "search.strategy=beam"], "search.strategy='beam' searches over steps"),
])
def test_methods_that_cannot_run_on_episodes_are_refused(extra, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        load_config(self_train.Config, _args(tmp_path, *extra))
