"""Speed optimisations must not change results: the fast sampler against simple references.

- the static-cache decoder (kv_cache.StaticDecoder) against transformers' own forward, for the
  architectures it claims (llama with MHA and GQA, qwen2 with q/k/v biases, qwen3 with q/k norms);
- the optimised sampler (static cache, dropped finished rows, swap-remove compaction) against the
  generic DynamicCache path and against a no-cache reference loop kept here: same tokens under a seed,
  log-probs equal within float tolerance;
- the compiled decode step (rollout/fused_decode.cpp via fused.FusedDecoder) against StaticDecoder,
  step by step and through the sampler.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reasonloop.rollout import fused, kv_cache
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.rollout.sampler import TorchSampler
from reasonloop.models.forward import TokenBatch, policy_forward

from decoder_check import PROMPTS, compiled_step_follows_the_static_decoder, compiled_steps_at_threads, small_model

def reference_generate(model, tokenizer, prompts, n, sampling, generator):
    """No cache, no tricks: re-run the whole sequence every step; finished rows keep sampling (masked)."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left")
    ids, mask = enc["input_ids"].repeat_interleave(n, 0), enc["attention_mask"].repeat_interleave(n, 0)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    finished = torch.zeros(ids.shape[0], dtype=torch.bool)
    out, lps = [], []
    model.eval()
    with torch.no_grad():
        for _ in range(sampling.max_new_tokens):
            position = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position).logits[:, -1].float()
            if sampling.temperature == 0:
                tok = logits.argmax(-1)
            else:
                top = logits / sampling.temperature
                if sampling.top_k:
                    kth = torch.topk(top, sampling.top_k, -1).values[:, -1:]
                    top = top.masked_fill(top < kth, float("-inf"))
                tok = torch.multinomial(top.softmax(-1), 1, generator=generator).squeeze(-1)
            lp = torch.log_softmax(logits / (sampling.temperature or 1.0), -1).gather(-1, tok[:, None])[:, 0]
            out.append(tok.masked_fill(finished, pad))
            lps.append(lp.masked_fill(finished, 0.0))
            finished |= tok == eos
            if finished.all():
                break
            ids = torch.cat([ids, tok[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(tok)[:, None]], 1)
    return torch.stack(out, 1), torch.stack(lps, 1)


@pytest.mark.parametrize("arch,kv_heads", [("llama", 4), ("llama", 2), ("qwen2", 2), ("qwen3", 2)])
def test_static_decoder_matches_the_hf_forward(tokenizer, arch, kv_heads):
    model = small_model(tokenizer, arch, kv_heads)
    assert kv_cache.supports(model, 64)
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    follow = torch.tensor([[5, 9, 30]] * len(PROMPTS))  # three decode steps after the prompt
    full_ids, full_mask = torch.cat([ids, follow], 1), torch.cat([mask, torch.ones_like(follow)], 1)
    with torch.no_grad():
        ref = model(input_ids=full_ids, attention_mask=full_mask,
                    position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)).logits
    dec = kv_cache.StaticDecoder(model, rows=len(PROMPTS), max_len=ids.shape[1] + 3)
    got = [dec.prefill(ids, mask)]
    position = mask.sum(-1) - 1
    for j in range(2):
        position = position + 1
        got.append(dec.step(follow[:, j], position))
    P = ids.shape[1]
    for j, logits in enumerate(got):
        torch.testing.assert_close(logits, ref[:, P - 1 + j], atol=2e-5, rtol=1e-4)


def test_dropping_rows_keeps_the_survivors_exact(tokenizer):
    model = small_model(tokenizer)
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    dec = kv_cache.StaticDecoder(model, rows=8, max_len=ids.shape[1] + 2)
    first = dec.prefill(ids, mask, repeat=2)  # 8 rows
    live = torch.tensor([False, True, True, False, True, False, True, True])
    order = dec.keep(live)
    assert sorted(order.tolist()) == live.nonzero().flatten().tolist()
    tokens = torch.arange(8)[order] + 10
    position = (mask.sum(-1) - 1).repeat_interleave(2)[order] + 1
    logits = dec.step(tokens, position)
    full = torch.cat([ids.repeat_interleave(2, 0)[order], tokens[:, None]], 1)
    full_mask = torch.cat([mask.repeat_interleave(2, 0)[order], torch.ones_like(tokens)[:, None]], 1)
    with torch.no_grad():
        ref = model(input_ids=full, attention_mask=full_mask, position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0))
    torch.testing.assert_close(logits, ref.logits[:, -1], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(first.repeat_interleave(2, 0)[order], ref.logits[:, -2], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("sampling", [
    SamplingConfig(temperature=1.5, max_new_tokens=24),
    SamplingConfig(temperature=0.8, top_k=12, max_new_tokens=16),
    SamplingConfig(temperature=0.0, max_new_tokens=10),
])
def test_fast_sampler_equals_the_no_cache_reference(nano_model, tokenizer, sampling):
    fast = TorchSampler(nano_model, tokenizer).generate(PROMPTS, 6, sampling, torch.Generator().manual_seed(11))
    ref_ids, ref_lp = reference_generate(nano_model, tokenizer, PROMPTS, 6, sampling, torch.Generator().manual_seed(11))
    assert torch.equal(fast.completion_ids, ref_ids)
    torch.testing.assert_close(fast.logprobs, ref_lp, atol=1e-4, rtol=1e-4)


def test_fast_and_generic_paths_agree_and_rows_really_finish_early(nano_model, tokenizer):
    sampling = SamplingConfig(temperature=2.0, max_new_tokens=40, stop=["7"])
    for share in (True, False):
        fast = TorchSampler(nano_model, tokenizer, share_prefill=share).generate(
            PROMPTS, 5, sampling, torch.Generator().manual_seed(5))
        slow = TorchSampler(nano_model, tokenizer, share_prefill=share, static_cache=False).generate(
            PROMPTS, 5, sampling, torch.Generator().manual_seed(5))
        assert torch.equal(fast.completion_ids, slow.completion_ids)
        assert torch.equal(fast.completion_mask, slow.completion_mask)
        assert fast.finish_reasons == slow.finish_reasons and fast.completions == slow.completions
        torch.testing.assert_close(fast.logprobs, slow.logprobs, atol=1e-5, rtol=1e-5)
    lengths = fast.completion_mask.sum(-1)
    assert lengths.min() < lengths.max()  # rows left the batch at different steps
    tokens = TokenBatch(fast.prompt_ids, fast.prompt_mask, fast.completion_ids, fast.completion_mask)
    with torch.no_grad():
        fresh = policy_forward(nano_model, tokens, temperature=2.0).logprobs
    m = fast.completion_mask.bool()
    torch.testing.assert_close(fast.logprobs[m], fresh[m], atol=1e-4, rtol=1e-4)


def test_unsupported_models_fall_back(tokenizer, nano_model):
    assert not kv_cache.supports(nano_model, 10_000)  # longer than max_position_embeddings
    nano_model.config.model_type = "something_else"
    assert not kv_cache.supports(nano_model, 16)


@pytest.mark.parametrize("with_hidden", [False, True])
def test_shared_prompt_forward_equals_the_plain_forward_with_gradients(nano_model, tokenizer, with_hidden):
    sampling = SamplingConfig(temperature=1.5, max_new_tokens=12)
    b = TorchSampler(nano_model, tokenizer).generate(PROMPTS[:3], 4, sampling, torch.Generator().manual_seed(2))
    tokens = TokenBatch(b.prompt_ids, b.prompt_mask, b.completion_ids, b.completion_mask)
    nano_model.train()
    outs, grads = [], []
    for share in (False, True):
        nano_model.zero_grad()
        out = policy_forward(nano_model, tokens, 0.7, with_entropy=True, with_hidden=with_hidden, share_prompts=share)
        m = tokens.completion_mask.float()
        loss = (out.logprobs * m).sum() + (out.entropy * m).sum()
        if with_hidden:
            loss = loss + (out.hidden.sum(-1) * m).sum()
        loss.backward()
        outs.append(out)
        grads.append(torch.cat([p.grad.flatten() for p in nano_model.parameters()]))
    m = tokens.completion_mask.bool()
    torch.testing.assert_close(outs[1].logprobs[m], outs[0].logprobs[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[1].entropy[m], outs[0].entropy[m], atol=1e-5, rtol=1e-5)
    if with_hidden:
        torch.testing.assert_close(outs[1].hidden[m], outs[0].hidden[m], atol=1e-5, rtol=1e-5)
    scale = float(grads[0].abs().max())  # float32 sums over many tokens: compare relative to the largest entry
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5 * scale, rtol=1e-4)


def test_shared_prompt_forward_handles_uneven_groups_and_unique_prompts(nano_model, tokenizer):
    from reasonloop.models.forward import encode_pairs

    prompts = ["Q: 1+2=?\n"] * 3 + ["Q: 13+4-5=?\n"] + ["Q: 9=?\n"] * 4
    batch = encode_pairs(tokenizer, prompts, ["<think>1+2=3</think>", "ab", "3", "x", "12345", "9", "", "99"])
    with torch.no_grad():
        plain = policy_forward(nano_model, batch, share_prompts=False).logprobs
        shared = policy_forward(nano_model, batch).logprobs
        distinct = policy_forward(nano_model, batch.select(slice(2, 5))).logprobs  # nothing shared: plain path
    m = batch.completion_mask.bool()
    torch.testing.assert_close(shared[m], plain[m], atol=1e-5, rtol=1e-5)
    sub = batch.select(slice(2, 5))
    torch.testing.assert_close(distinct[sub.completion_mask.bool()],
                               policy_forward(nano_model, sub, share_prompts=False).logprobs[sub.completion_mask.bool()])


@pytest.mark.parametrize("share, chunk", [(False, 7), (True, 5), (True, 1000)])
def test_chunked_output_layer_equals_the_models_logits_with_gradients(nano_model, tokenizer, share, chunk):
    """forward.logit_chunk: log-probs, entropy and every gradient as from the model's own [N, T, V] logits."""
    sampling = SamplingConfig(temperature=1.5, max_new_tokens=12)
    b = TorchSampler(nano_model, tokenizer).generate(PROMPTS[:3], 4, sampling, torch.Generator().manual_seed(2))
    tokens = TokenBatch(b.prompt_ids, b.prompt_mask, b.completion_ids, b.completion_mask)
    nano_model.train()
    outs, grads = [], []
    for logit_chunk in (0, chunk):
        nano_model.zero_grad()
        out = policy_forward(nano_model, tokens, 0.7, with_entropy=True, with_hidden=True, share_prompts=share,
                             logit_chunk=logit_chunk)
        m = tokens.completion_mask.float()
        ((out.logprobs * m).sum() + (out.entropy * m).sum() + (out.hidden.sum(-1) * m).sum()).backward()
        outs.append(out)
        grads.append(torch.cat([p.grad.flatten() for p in nano_model.parameters()]))
    m = tokens.completion_mask.bool()
    for name in ("logprobs", "entropy", "hidden"):
        torch.testing.assert_close(getattr(outs[1], name)[m], getattr(outs[0], name)[m], atol=1e-5, rtol=1e-5)
    scale = float(grads[0].abs().max())
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5 * scale, rtol=1e-4)
    with torch.no_grad():  # no autograd: the chunks are computed once, the same values
        torch.testing.assert_close(policy_forward(nano_model, tokens, 0.7, logit_chunk=chunk).logprobs[m],
                                   outs[0].logprobs[m].detach(), atol=1e-5, rtol=1e-5)


def test_the_chunked_output_layer_holds_only_a_chunk_of_logits(nano_model, tokenizer):
    """The model computes its output layer at one position; each chunk's logits are at most `chunk` rows."""
    b = TorchSampler(nano_model, tokenizer).generate(PROMPTS[:2], 4, SamplingConfig(max_new_tokens=12),
                                                     torch.Generator().manual_seed(0))
    tokens = TokenBatch(b.prompt_ids, b.prompt_mask, b.completion_ids, b.completion_mask)
    head, shapes = nano_model.get_output_embeddings(), []
    handle = head.register_forward_hook(lambda mod, args, out: shapes.append(tuple(out.shape)))
    try:
        policy_forward(nano_model, tokens, logit_chunk=6, share_prompts=False).logprobs.sum().backward()
    finally:
        handle.remove()
    N, T = tokens.completion_ids.shape
    model_calls = [s for s in shapes if len(s) == 3]
    chunk_calls = [s for s in shapes if len(s) == 2]
    assert model_calls == [(N, 1, head.out_features)]  # logits_to_keep=1 inside the model
    assert max(s[0] for s in chunk_calls) == 6 and sum(s[0] for s in chunk_calls) == 2 * N * T  # forward + recompute


def test_chunked_reverse_kl_to_a_teacher_equals_the_whole_logits_with_gradients(nano_model, tokenizer):
    """On-policy distillation with forward.logit_chunk: per-position KL(student || teacher) and the student's gradients
    as from both models' whole [N, T, V] logits; the teacher gets no gradient."""
    import copy

    from reasonloop.algos.distill import masked_kl_loss, reverse_kl_per_token
    from reasonloop.models.forward import completion_logits, paired_logits_chunked

    teacher = copy.deepcopy(nano_model).eval()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    b = TorchSampler(nano_model, tokenizer).generate(PROMPTS[:3], 3, SamplingConfig(max_new_tokens=10),
                                                     torch.Generator().manual_seed(1))
    tokens = TokenBatch(b.prompt_ids, b.prompt_mask, b.completion_ids, b.completion_mask)
    m = tokens.completion_mask
    nano_model.train()
    per_token, grads = [], []
    for chunk in (0, 4):
        nano_model.zero_grad()
        if chunk:
            kl = paired_logits_chunked(nano_model, teacher, tokens, chunk, reverse_kl_per_token)
        else:
            with torch.no_grad():
                t_logits = completion_logits(teacher, tokens)
            kl = reverse_kl_per_token(completion_logits(nano_model, tokens), t_logits)
        masked_kl_loss(kl, m, float(m.sum()))[0].backward()
        per_token.append(kl.detach())
        grads.append(torch.cat([p.grad.flatten() for p in nano_model.parameters()]))
    assert float(per_token[0][m.bool()].mean()) > 1e-4, "the teacher differs from the student"
    torch.testing.assert_close(per_token[1][m.bool()], per_token[0][m.bool()], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5 * float(grads[0].abs().max()), rtol=1e-4)
    assert all(p.grad is None for p in teacher.parameters())


def test_a_model_that_changes_its_logits_after_the_output_layer_is_refused_for_chunking(nano_model):
    from reasonloop.config import ConfigError
    from reasonloop.models.forward import ForwardConfig, output_layer

    assert output_layer(nano_model) is nano_model.get_output_embeddings()
    nano_model.config.final_logit_softcapping = 30.0
    try:
        with pytest.raises(ConfigError, match="final_logit_softcapping=30.0"):
            output_layer(nano_model)
    finally:
        del nano_model.config.final_logit_softcapping
    with pytest.raises(ConfigError, match="forward.logit_chunk must be >= 0"):
        ForwardConfig(logit_chunk=-1)


def test_gemm_replay_times_only_the_matrix_multiplies():
    """The bench's ceiling replays a call's mm/bmm/addmm alone: time spent elsewhere is left out."""
    import time

    from reasonloop.bench.timing import gemm_replay_seconds, recorded_gemms

    a, b, bias = torch.randn(64, 64), torch.randn(64, 64), torch.randn(64)
    calls = []

    def fn():
        calls.append(1)
        torch.mm(a, b), torch.bmm(a[None], b[None]), torch.addmm(bias, a, b)
        time.sleep(0.3)  # stands for everything that is not a matmul

    f32 = torch.float32
    assert recorded_gemms(fn) == [("aten::mm", [[64, 64], [64, 64]], f32), ("aten::bmm", [[1, 64, 64], [1, 64, 64]], f32),
                                  ("aten::addmm", [[64], [64, 64], [64, 64]], f32)]
    assert gemm_replay_seconds(fn, 2, torch.device("cpu")) < 0.1 and len(calls) == 2


def test_length_buckets_forward_equals_one_padded_forward_with_gradients(nano_model, tokenizer):
    from reasonloop.models.forward import _length_buckets, encode_pairs

    prompts = [p for p in PROMPTS for _ in range(4)]
    completions = ["1", "<think>1+2=3</think><answer>3</answer>", "22", "333"] * 4
    completions[5] = "x" * 40
    batch = encode_pairs(tokenizer, prompts, completions)
    assert _length_buckets(batch.completion_mask) is not None  # the batch really gets split
    nano_model.train()
    outs, grads = [], []
    for bucket in (False, True):
        nano_model.zero_grad()
        out = policy_forward(nano_model, batch, 0.9, with_entropy=True, with_hidden=True, bucket_lengths=bucket)
        m = batch.completion_mask.float()
        ((out.logprobs * m).sum() + (out.entropy * m).sum() + (out.hidden.sum(-1) * m).sum()).backward()
        outs.append(out)
        grads.append(torch.cat([p.grad.flatten() for p in nano_model.parameters()]))
    m = batch.completion_mask.bool()
    assert outs[1].logprobs.shape == outs[0].logprobs.shape and outs[1].hidden.shape == outs[0].hidden.shape
    for name in ("logprobs", "entropy", "hidden"):
        torch.testing.assert_close(getattr(outs[1], name)[m], getattr(outs[0], name)[m], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(outs[1].logprobs).all() and torch.isfinite(outs[1].entropy).all()
    scale = float(grads[0].abs().max())
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5 * scale, rtol=1e-4)


def test_unfused_decoder_matches_the_fused_one(tokenizer, monkeypatch):
    model = small_model(tokenizer, "llama", 2)
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left")
    fused = kv_cache.StaticDecoder(model, len(PROMPTS), enc["input_ids"].shape[1] + 1)
    monkeypatch.setattr(kv_cache, "FUSE_MAX_BYTES", 0)
    plain = kv_cache.StaticDecoder(model, len(PROMPTS), enc["input_ids"].shape[1] + 1)
    assert plain.layers[0][1] is None and fused.layers[0][1] is not None
    a, b = fused.prefill(enc["input_ids"], enc["attention_mask"]), plain.prefill(enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    pos = enc["attention_mask"].sum(-1)
    torch.testing.assert_close(fused.step(a.argmax(-1), pos), plain.step(a.argmax(-1), pos), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("arch,kv_heads", [("llama", 4), ("llama", 2), ("qwen2", 2)])
def test_lean_decode_step_is_bit_identical_to_the_general_layer(tokenizer, arch, kv_heads):
    model = small_model(tokenizer, arch, kv_heads)
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    lean = kv_cache.StaticDecoder(model, 2 * len(PROMPTS), ids.shape[1] + 4)
    general = kv_cache.StaticDecoder(model, 2 * len(PROMPTS), ids.shape[1] + 4)
    assert all(layer is not None for layer in lean.lean)
    general.lean = [None] * len(general.lean)  # force `_layer` for every decode step
    first = lean.prefill(ids, mask, repeat=2)
    assert torch.equal(first, general.prefill(ids, mask, repeat=2))
    tokens, position = first.argmax(-1).repeat_interleave(2), (mask.sum(-1) - 1).repeat_interleave(2)
    for _ in range(3):
        position = position + 1
        a, b = lean.step(tokens, position), general.step(tokens, position)
        assert torch.equal(a, b)
        tokens = a.argmax(-1)


def test_reused_cache_storage_changes_nothing(tokenizer):
    """The sampler hands each call's K/V storage to the next; stale (here: NaN) contents are never read."""
    model = small_model(tokenizer)
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=6)
    reused = TorchSampler(model, tokenizer)
    for prompts, n, seed in [(PROMPTS, 3, 0), (PROMPTS[:2], 2, 1), (PROMPTS, 4, 2), (PROMPTS, 3, 3)]:
        if reused._kv_storage is not None:
            with torch.inference_mode():  # the storage is an inference tensor, made by the sampler
                reused._kv_storage.fill_(float("nan"))
        fresh = TorchSampler(model, tokenizer).generate(prompts, n, sampling, torch.Generator().manual_seed(seed))
        again = reused.generate(prompts, n, sampling, torch.Generator().manual_seed(seed))
        assert torch.equal(fresh.completion_ids, again.completion_ids)
        assert torch.equal(fresh.logprobs, again.logprobs)


# -- the compiled decode step (rollout/fused.py) ---------------------------------------------------


@pytest.mark.parametrize("arch,kv_heads,hidden", [("llama", 4, 64), ("llama", 2, 64), ("qwen2", 2, 64),
                                                  ("llama", 2, 96)])  # head_dim 16 and 24
def test_compiled_decode_step_matches_the_static_decoder(tokenizer, arch, kv_heads, hidden):
    assert fused.available(), "the compiled decode step did not build (needs a C++ compiler and ninja)"
    model = small_model(tokenizer, arch, kv_heads, hidden)
    assert fused.supports(model, 64)
    compiled_step_follows_the_static_decoder(model, tokenizer, atol=2e-5, rtol=1e-4)


def test_sampler_decodes_with_the_compiled_step_and_agrees_with_the_torch_decoder(nano_model, tokenizer,
                                                                                  monkeypatch):
    steps = []
    step = fused.FusedDecoder.step
    monkeypatch.setattr(fused.FusedDecoder, "step", lambda self, *a: steps.append(1) or step(self, *a))
    for sampling in (SamplingConfig(temperature=1.0, max_new_tokens=40),
                     SamplingConfig(temperature=0.7, top_k=10, max_new_tokens=18, stop=["7"])):
        new = TorchSampler(nano_model, tokenizer).generate(PROMPTS, 5, sampling, torch.Generator().manual_seed(3))
        old = TorchSampler(nano_model, tokenizer, fused_decode=False).generate(
            PROMPTS, 5, sampling, torch.Generator().manual_seed(3))
        assert torch.equal(new.completion_ids, old.completion_ids)
        assert torch.equal(new.completion_mask, old.completion_mask) and new.finish_reasons == old.finish_reasons
        torch.testing.assert_close(new.logprobs, old.logprobs, atol=1e-5, rtol=1e-5)
    assert steps


def test_prepacked_weights_follow_in_place_updates(tokenizer):
    """The sampler keeps the step's prepacked weights between calls only while the model is unchanged."""
    model = small_model(tokenizer)
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=8)
    sampler = TorchSampler(model, tokenizer)
    first = sampler.generate(PROMPTS, 3, sampling, torch.Generator().manual_seed(0))
    packed = sampler._packed
    sampler.generate(PROMPTS, 3, sampling, torch.Generator().manual_seed(0))
    assert packed is not None and sampler._packed is packed
    with torch.no_grad():  # what an optimizer step does: in-place updates
        for p in model.parameters():
            p.mul_(1.5)
    after = sampler.generate(PROMPTS, 3, sampling, torch.Generator().manual_seed(0))
    fresh = TorchSampler(model, tokenizer).generate(PROMPTS, 3, sampling, torch.Generator().manual_seed(0))
    assert sampler._packed is not packed
    assert torch.equal(after.completion_ids, fresh.completion_ids) and torch.equal(after.logprobs, fresh.logprobs)
    assert not torch.equal(after.logprobs, first.logprobs)
    # torch's fused AdamW updates in place without bumping the version counters: still seen (this left TRL's
    # evaluations in `bench race` half stale - fresh embeddings, prepacked projections from before)
    versions = [p._version for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    assert [p._version for p in model.parameters()] == versions  # the premise: no counter moved
    packed = sampler._packed
    stepped = sampler.generate(PROMPTS, 3, sampling, torch.Generator().manual_seed(0))
    fresh = TorchSampler(model, tokenizer).generate(PROMPTS, 3, sampling, torch.Generator().manual_seed(0))
    assert sampler._packed is not packed
    assert torch.equal(stepped.completion_ids, fresh.completion_ids) and torch.equal(stepped.logprobs, fresh.logprobs)


def test_fused_projection_copies_are_kept_between_calls_only_for_small_models(tokenizer, monkeypatch):
    model = small_model(tokenizer)
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=8)
    sampler = TorchSampler(model, tokenizer)
    sampler.generate(PROMPTS, 3, sampling, torch.Generator().manual_seed(0))
    layers = sampler._packed.layers
    sampler.generate(PROMPTS, 3, sampling, torch.Generator().manual_seed(0))
    assert layers is not None and sampler._packed.layers is layers
    monkeypatch.setattr(fused, "KEEP_FUSED_MAX_BYTES", 0)  # every model is "big" now
    with torch.no_grad():
        next(model.parameters()).mul_(1.01)  # the weights change: repacked
    big = sampler.generate(PROMPTS, 3, sampling, torch.Generator().manual_seed(0))
    assert sampler._packed.layers is None
    again = sampler.generate(PROMPTS, 3, sampling, torch.Generator().manual_seed(0))  # fused anew: the same samples
    assert torch.equal(big.completion_ids, again.completion_ids) and torch.equal(big.logprobs, again.logprobs)


def test_without_the_compiled_step_the_sampler_keeps_the_torch_decoder(nano_model, tokenizer, monkeypatch, caplog):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(fused, "_state", {})
    monkeypatch.setattr("torch.utils.cpp_extension.load", no_compiler)
    with caplog.at_level("WARNING", logger="reasonloop.rollout.fused"):
        assert not fused.available()
    assert "no C++ compiler here" in caplog.text
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=12)
    a = TorchSampler(nano_model, tokenizer).generate(PROMPTS, 3, sampling, torch.Generator().manual_seed(1))
    b = TorchSampler(nano_model, tokenizer, fused_decode=False).generate(
        PROMPTS, 3, sampling, torch.Generator().manual_seed(1))
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.logprobs, b.logprobs)
    monkeypatch.setattr(fused, "_state", {})
    monkeypatch.setenv("REASONLOOP_FUSED_DECODE", "0")
    assert not fused.available()


def test_the_compiled_step_declines_what_it_does_not_implement(tokenizer):
    assert not fused.supports(small_model(tokenizer, "qwen3", 2), 64)  # q/k norms
    model = small_model(tokenizer)
    assert fused.supports(model, 64) and not fused.supports(model.to(torch.float64), 64)


def test_a_model_too_big_to_fuse_samples_through_torch_ops(tokenizer, monkeypatch):
    """Above FUSE_MAX_BYTES the static decoder keeps its projections unfused; the compiled step needs them
    fused, so it declines (it used to accept and crash on the missing fused weights)."""
    model = small_model(tokenizer)
    monkeypatch.setattr(kv_cache, "FUSE_MAX_BYTES", 1024)
    assert not fused.supports(model, 64)
    batch = TorchSampler(model, tokenizer).generate(["Q: 1+2=?\n"], 2, SamplingConfig(max_new_tokens=4),
                                                    torch.Generator().manual_seed(0))
    assert batch.completion_ids.shape[0] == 2


def test_a_dead_builders_lock_is_removed_and_a_live_builder_is_waited_for(tmp_path, monkeypatch):
    """A builder killed mid-compile leaves torch's lock file, on which every later load would wait forever. The
    build guard's flock dies with its holder: whoever holds it removes torch's lock; a live holder is waited for."""
    import fcntl
    import os
    import threading

    from reasonloop.rollout import fused

    build = tmp_path / "reasonloop_decode_x"
    monkeypatch.setattr("torch.utils.cpp_extension._get_build_directory", lambda name, verbose=False: str(build))
    build.mkdir()
    (build / "lock").write_text("")  # a dead builder's: nobody holds the flock
    with fused._build_guard("reasonloop_decode_x"):
        assert not (build / "lock").exists()
        (build / "lock").write_text("")  # this process builds now: torch's lock is live...
    live = os.open(build / "reasonloop.lock", os.O_RDWR)
    fcntl.flock(live, fcntl.LOCK_EX)  # ...and another builder (another open file: another process's flock) holds it
    entered = threading.Event()

    def second():
        with fused._build_guard("reasonloop_decode_x"):
            entered.set()

    waiter = threading.Thread(target=second)
    waiter.start()
    assert not entered.wait(0.5), "a live builder's build is waited for"
    assert (build / "lock").exists(), "and its lock is left alone"
    os.close(live)  # the builder exits (or dies: the kernel releases its flock either way)
    waiter.join(10)
    assert entered.is_set() and not (build / "lock").exists()


def test_the_extension_name_changes_with_the_source_and_the_flags(tmp_path):
    """Checkouts sharing torch's extension cache must not load (or rebuild over) each other's builds."""
    from reasonloop.rollout import fused

    src = tmp_path / "step.cpp"
    src.write_text("int f() { return 1; }\n")
    name = fused.extension_name("reasonloop_decode", src, ["-O3"])
    assert name == fused.extension_name("reasonloop_decode", src, ["-O3"])  # deterministic
    assert name.startswith(f"reasonloop_decode_{fused._machine_tag()}_")
    tag = name.rsplit("_", 1)[1]
    assert len(tag) == 10 and all(c in "0123456789abcdef" for c in tag)
    assert fused.extension_name("reasonloop_decode", src, ["-O2"]) != name  # other flags: another build
    src.write_text("int f() { return 2; }\n")
    assert fused.extension_name("reasonloop_decode", src, ["-O3"]) != name  # one changed character: another build


def test_finished_rows_leave_the_compiled_step_without_moving_any_cache_row(tokenizer):
    """keep() swap-removes the rows' prompt and cache-slot indices only: the survivors' completion K/V stay
    where they were written (the step reads them through `slot`), and a slot outside the cache is refused."""
    assert fused.available(), "the compiled decode step did not build (needs a C++ compiler and ninja)"
    model = small_model(tokenizer)
    enc = tokenizer(PROMPTS[:2], return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left")
    with torch.inference_mode():
        dec = fused.FusedDecoder(model, 2, 3, enc["input_ids"].shape[1], 8)
        tokens = dec.prefill(enc["input_ids"], enc["attention_mask"], repeat=3).argmax(-1).repeat_interleave(3)
        position = (enc["attention_mask"].sum(-1) - 1).repeat_interleave(3) + 1
        dec.step(tokens, position)
        cache = dec.storage.clone()
        order = dec.keep(torch.tensor([True, False, True, False, True, True]))
        assert order.tolist() == [0, 4, 2, 5] and dec.slot.tolist() == [0, 4, 2, 5]  # rows 4, 5 fill holes 1, 3
        assert dec.grp.tolist() == [0, 1, 0, 1]
        assert torch.equal(dec.storage.view(torch.int32), cache.view(torch.int32))  # nothing moved (bits: NaN-safe)
        dec.slot = torch.tensor([0, 4, 2, 6])  # the cache has rows 0..5
        with pytest.raises(RuntimeError, match="cache slot out of range"):
            dec.step(tokens[order], position[order] + 1)


def test_the_compiled_step_gives_the_same_bits_at_one_and_two_threads(tokenizer):
    """Its splits (attention and SiLU over rows here; 36 rows) run on torch's intra-op pool when built with
    OpenMP, each row computed whole by one thread, and oneDNN's projections split without reordering sums:
    the logits are bit-identical whatever `threads=` says."""
    assert fused.available(), "the compiled decode step did not build (needs a C++ compiler and ninja)"
    model = small_model(tokenizer, "llama", 2, 64)
    one = compiled_steps_at_threads(model, tokenizer, 1)
    assert torch.equal(one, compiled_steps_at_threads(model, tokenizer, 2))
    assert one.abs().sum() > 0


@pytest.fixture
def restored_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_compiled_extensions_split_on_torchs_own_thread_pool(restored_threads):
    """at::parallel_for inside both extensions runs on as many threads as torch.set_num_threads says (it was
    serial without -fopenmp whatever the setting), and on exactly one at threads=1; the process holds one
    OpenMP runtime, the one torch loaded."""
    from reasonloop.rollout import ternary

    assert fused.available() and ternary.available()
    assert "parallel backend: OpenMP" in torch.__config__.parallel_info()  # this project's CPU wheel
    for op in (torch.ops.reasonloop_decode.parallel_threads, torch.ops.reasonloop_ternary.parallel_threads):
        torch.set_num_threads(1)
        assert op(8) == 1
        torch.set_num_threads(2)
        assert op(8) == 2
        assert op(1) == 1  # one task: no fork
        torch.set_num_threads(3)
        assert op(8) == 3
    maps = open("/proc/self/maps").read().splitlines()
    runtimes = {line.split()[-1] for line in maps if "/libgomp" in line or "/libiomp" in line or "/libomp" in line}
    assert runtimes == {str(fused.loaded_openmp_runtime())}


def test_openmp_flags_link_the_runtime_torch_loaded(monkeypatch):
    cflags, ldflags = fused.openmp_flags()
    runtime = fused.loaded_openmp_runtime()
    assert runtime is not None and runtime.is_file()
    torch_dir = Path(torch.__file__).parent  # the copy torch ships: torch/lib here, torch.libs in PyPI wheels
    assert runtime.name.startswith(("libgomp", "libiomp")) and runtime.parent in (torch_dir / "lib",
                                                                                  torch_dir.parent / "torch.libs")
    assert cflags == ["-fopenmp"] and ldflags == [str(runtime), f"-Wl,-rpath,{runtime.parent}"]
    monkeypatch.setenv("REASONLOOP_COMPILED_OPENMP", "0")
    assert fused.openmp_flags() == ([], [])  # the serial build, under another cache name
    monkeypatch.delenv("REASONLOOP_COMPILED_OPENMP")
    monkeypatch.setattr(torch.__config__, "parallel_info", lambda: "ATen parallel backend: native thread pool")
    assert fused.openmp_flags() == ([], [])  # there parallel_for already calls into libtorch


def test_both_extensions_are_built_under_their_source_tagged_names(monkeypatch):
    from reasonloop.rollout import fused, ternary

    built = []

    def record(name, sources, **kwargs):
        built.append((name, sources))
        raise RuntimeError("recorded")  # no build needed: the name is what is checked

    monkeypatch.setattr("torch.utils.cpp_extension.load", record)
    monkeypatch.setattr(fused, "_state", {})
    monkeypatch.setattr(ternary, "_state", {})
    assert not fused.available() and not ternary.available()
    omp = sum(fused.openmp_flags(), [])  # the link flags name the OpenMP runtime: part of the build's identity
    assert built == [
        (fused.extension_name("reasonloop_decode", fused._SOURCE, fused._FLAGS + omp), [str(fused._SOURCE)]),
        (fused.extension_name("reasonloop_ternary", ternary._SOURCE, ternary._FLAGS + omp), [str(ternary._SOURCE)]),
    ]
