import math

import torch

from reasonloop.rollout.engine import SamplingConfig
from reasonloop.rollout.sampler import TorchSampler, exponential_noise, filter_logits
from reasonloop.models.forward import TokenBatch, policy_forward

PROMPTS = ["Q: 1+2=?\n", "Q: 13+4-5=?\n", "Q: 9=?\n"]


def kept(logits):
    return torch.isfinite(logits).nonzero()[:, 1].tolist()


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0, 2.5]])
    assert sorted(kept(filter_logits(logits, top_k=2))) == [1, 4]
    assert sorted(kept(filter_logits(logits, top_k=0))) == [0, 1, 2, 3, 4]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert kept(filter_logits(logits, top_p=0.5)) == [0]  # 0.5 reaches 0.5 on its own
    assert kept(filter_logits(logits, top_p=0.51)) == [0, 1]
    assert kept(filter_logits(logits, top_p=0.8)) == [0, 1]
    assert kept(filter_logits(logits, top_p=0.81)) == [0, 1, 2]
    assert kept(filter_logits(logits, top_p=1.0)) == [0, 1, 2, 3]
    shuffled = logits[:, [2, 0, 3, 1]]  # order in the vocabulary does not matter
    assert sorted(kept(filter_logits(shuffled, top_p=0.8))) == [1, 3]


def test_min_p_keeps_tokens_above_a_fraction_of_the_top():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert kept(filter_logits(probs.log(), min_p=0.3)) == [0, 1, 2]  # threshold 0.15 (inclusive)
    assert kept(filter_logits(probs.log(), min_p=0.31)) == [0, 1]


def test_filters_compose_and_keep_the_argmax():
    logits = torch.randn(50, 30)
    out = filter_logits(logits, top_k=5, top_p=0.5, min_p=0.2)
    assert (torch.isfinite(out).sum(-1) >= 1).all()
    assert torch.equal(out.argmax(-1), logits.argmax(-1))


def test_returned_logprobs_equal_a_fresh_forward_pass(nano_model, tokenizer):
    sampling = SamplingConfig(temperature=0.7, max_new_tokens=12)
    batch = TorchSampler(nano_model, tokenizer).generate(PROMPTS, 3, sampling, torch.Generator().manual_seed(0))
    tokens = TokenBatch(batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask)
    with torch.no_grad():
        fresh = policy_forward(nano_model, tokens, temperature=0.7).logprobs
    mask = batch.completion_mask.bool()
    assert mask.sum() > 0
    torch.testing.assert_close(batch.logprobs[mask], fresh[mask], atol=1e-4, rtol=1e-4)


def test_shared_prefill_equals_unshared_under_the_same_seed(nano_model, tokenizer):
    sampling = SamplingConfig(temperature=1.0, top_k=20, max_new_tokens=16)
    shared = TorchSampler(nano_model, tokenizer, share_prefill=True).generate(
        PROMPTS, 4, sampling, torch.Generator().manual_seed(7))
    unshared = TorchSampler(nano_model, tokenizer, share_prefill=False).generate(
        PROMPTS, 4, sampling, torch.Generator().manual_seed(7))
    assert torch.equal(shared.completion_ids, unshared.completion_ids)
    assert shared.completions == unshared.completions
    torch.testing.assert_close(shared.logprobs, unshared.logprobs, atol=1e-5, rtol=1e-5)


def test_rows_are_prompt_major_and_greedy_is_deterministic(nano_model, tokenizer):
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=10)
    a = TorchSampler(nano_model, tokenizer).generate(PROMPTS, 2, greedy, torch.Generator().manual_seed(1))
    b = TorchSampler(nano_model, tokenizer).generate(PROMPTS, 2, greedy, torch.Generator().manual_seed(2))
    assert a.completions == b.completions
    assert a.completions[0] == a.completions[1] and a.completions[2] == a.completions[3]
    single = TorchSampler(nano_model, tokenizer).generate(PROMPTS[1:2], 1, greedy)
    assert single.completions[0] == a.completions[2]  # left padding does not change the result


def test_masks_stop_after_eos_and_lengths_are_capped(nano_model, tokenizer):
    batch = TorchSampler(nano_model, tokenizer).generate(
        PROMPTS, 8, SamplingConfig(temperature=1.5, max_new_tokens=20), torch.Generator().manual_seed(3))
    eos = tokenizer.eos_token_id
    for ids, mask, reason in zip(batch.completion_ids, batch.completion_mask, batch.finish_reasons):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()  # contiguous from the start
        assert (ids[:n - 1] != eos).all()
        assert reason == ("stop" if ids[n - 1] == eos else "length")
        assert n <= 20
    assert batch.logprobs[batch.completion_mask == 0].abs().sum() == 0


def test_stop_strings_end_generation_and_stay_in_the_text(nano_model, tokenizer):
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=16)
    sampler = TorchSampler(nano_model, tokenizer)
    full = sampler.generate(PROMPTS[:1], 1, greedy).completions[0]
    assert len(full) >= 6
    stop = full[3:5]
    cut = sampler.generate(PROMPTS[:1], 1, SamplingConfig(temperature=0.0, max_new_tokens=16, stop=[stop]))
    assert cut.completions[0] == full[: full.index(stop) + len(stop)]
    assert cut.finish_reasons == ["stop"]


def test_exponential_noise_is_torchs_own_draw_bit_for_bit_and_leaves_the_generator_where_it_would():
    for seed, shape in [(0, (1, 1)), (1, (3, 7)), (2, (64, 105)), (3, (1000, 1000))]:
        ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        noise = exponential_noise(shape, ours, torch.device("cpu"))
        assert noise.dtype == torch.float32 and noise.shape == shape
        assert torch.equal(noise, torch.empty(shape).exponential_(1, generator=theirs))
        assert torch.equal(ours.get_state(), theirs.get_state())


def test_sampling_follows_the_filtered_distribution():
    from reasonloop.rollout.sampler import sample_next

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(4000, 1)
    tokens, lps = sample_next(logits, SamplingConfig(top_k=2), torch.Generator().manual_seed(0))
    assert set(tokens.tolist()) == {0, 1}
    freq0 = (tokens == 0).float().mean().item()
    assert abs(freq0 - 1 / (1 + math.exp(-1))) < 0.03
    assert torch.allclose(lps[tokens == 0], torch.log_softmax(logits[0], -1)[0].expand(int((tokens == 0).sum())))


def test_gc_is_off_during_a_sampler_call_and_restored_after(nano_model, tokenizer):
    import gc

    seen = []
    # the embedding runs in every path's prefill (the compiled decode step reads its weights directly)
    hook = nano_model.get_input_embeddings().register_forward_pre_hook(lambda *_: seen.append(gc.isenabled()))
    try:
        assert gc.isenabled()
        TorchSampler(nano_model, tokenizer).generate(PROMPTS[:1], 2, SamplingConfig(max_new_tokens=4))
        assert seen and not any(seen)  # every embedding call ran with the collector off
        assert gc.isenabled()
    finally:
        hook.remove()


def test_gc_state_is_restored_when_a_sampler_call_raises(nano_model, tokenizer):
    import gc

    import pytest

    def boom(*_):
        raise RuntimeError("forward failed")

    hook = nano_model.get_input_embeddings().register_forward_pre_hook(boom)
    sampler = TorchSampler(nano_model, tokenizer)
    try:
        with pytest.raises(RuntimeError, match="forward failed"):
            sampler.generate(PROMPTS[:1], 2, SamplingConfig(max_new_tokens=4))
        assert gc.isenabled()
        gc.disable()  # a caller that turned it off itself keeps it off
        try:
            with pytest.raises(RuntimeError, match="forward failed"):
                sampler.generate(PROMPTS[:1], 2, SamplingConfig(max_new_tokens=4))
            assert not gc.isenabled()
        finally:
            gc.enable()
    finally:
        hook.remove()
