"""The ternary CPU kernel (rollout/ternary.py, ternary_decode.cpp): packing, exact integer agreement
with the reference, float agreement of the linear, and the sampler using it for BitNet policies."""

from __future__ import annotations

import pytest
import torch

from reasonloop.models import bitnet
from reasonloop.rollout import ternary

needs_kernel = pytest.mark.skipif(not ternary.available(), reason="no C++ compiler to build the ternary kernel")


def test_pack_layout_by_hand():
    codes = torch.zeros(1, 128, dtype=torch.int8)
    codes[0, 0], codes[0, 32], codes[0, 64], codes[0, 96] = 1, -1, 1, 0  # byte 0: codes 2, 0, 2, 1
    codes[0, 31] = -1  # byte 31, bits 0-1: code 0
    packed = ternary.pack(codes)
    assert packed.shape == (1, 32) and packed.dtype == torch.uint8
    assert packed[0, 0].item() == 2 | (0 << 2) | (2 << 4) | (1 << 6)
    assert packed[0, 31].item() == 0 | (1 << 2) | (1 << 4) | (1 << 6)
    assert packed[0, 1].item() == 0b01010101  # four zero weights


@pytest.mark.parametrize("k", [1, 3, 4, 5, 127, 128, 129, 300])
def test_pack_unpack_round_trip_for_every_code(k):
    torch.manual_seed(k)
    codes = torch.randint(-1, 2, (7, k), dtype=torch.int8)
    codes[0, :] = -1
    codes[1, :] = 0
    codes[2, :] = 1
    packed = ternary.pack(codes)
    assert packed.shape == (7, ternary.padded(k) // 4)
    assert torch.equal(ternary.unpack(packed, k), codes)
    # the padding decodes as weight 0 (code 1)
    assert (ternary.unpack(packed, ternary.padded(k))[:, k:] == 0).all()


@needs_kernel
@pytest.mark.parametrize("n,k,n_out", [(1, 1, 1), (1, 5, 3), (3, 130, 7), (8, 128, 16), (9, 257, 33),
                                       (17, 383, 50), (2, 1024, 64)])
def test_kernel_integers_equal_the_reference_exactly(n, k, n_out):
    torch.manual_seed(n * 1000 + k)
    codes = torch.randint(-1, 2, (n_out, k), dtype=torch.int8)
    x_q = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    x_q[0, : min(k, 3)] = 127  # the extremes
    if n > 1:
        x_q[1] = -127
    got = ternary.gemm(x_q, ternary.pack(codes))
    assert got.dtype == torch.int32
    assert torch.equal(got, bitnet.integer_linear(x_q, codes))


@needs_kernel
def test_kernel_integers_are_exact_at_minus_128_too():
    """The code-times-activation form has no sign step, so even -128 (outside absmax scaling's range) is exact."""
    codes = torch.tensor([[-1, 0, 1] * 50], dtype=torch.int8)
    x_q = torch.full((3, 150), -128, dtype=torch.int8)
    x_q[1, ::2] = 127
    got = ternary.gemm(x_q, ternary.pack(codes))
    assert torch.equal(got, bitnet.integer_linear(x_q, codes))
    assert got[0, 0].item() == 0 and got[2, 0].item() == 0  # -128 * (-1 + 0 + 1) * 50


@needs_kernel
@pytest.mark.parametrize("n,k", [(1, 7), (4, 130), (3, 1000)])
def test_kernel_activation_codes_equal_torch_bit_for_bit(n, k):
    torch.manual_seed(k)
    x = torch.randn(n, k) * torch.logspace(-3, 3, n).unsqueeze(1)
    x[0, 0] = 0.5 * x[0].abs().max()  # a half-way value after scaling is possible; rounding must agree
    q_ref, s_ref = bitnet.quantize_activations(x)
    q, s = ternary.quantize_rows(x)
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)
    zero_q, _ = ternary.quantize_rows(torch.zeros(2, 5))
    assert zero_q.abs().sum() == 0


@needs_kernel
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_matches_the_bitlinear_forward(bias):
    torch.manual_seed(3)
    layer = bitnet.BitLinear(201, 37, bias=bias)
    x = torch.randn(2, 5, 201)
    kernel = ternary.PackedLinear(layer)
    w_q, s_w = bitnet.ternarize(layer.weight)
    x_q, s_x = bitnet.quantize_activations(x.view(-1, 201))
    exact = bitnet.dequantize(bitnet.integer_linear(x_q, w_q), s_x, s_w)
    if bias:
        exact = exact + layer.bias
    y = kernel(x)
    assert y.shape == (2, 5, 37)
    assert torch.equal(y.view(-1, 37), exact.detach())  # the same float operations in the same order
    torch.testing.assert_close(y, layer(x).detach(), rtol=1e-5, atol=1e-5)  # the torch forward: float rounding


@needs_kernel
def test_attached_routes_no_grad_forwards_and_detaches_after(nano_model):
    bitnet.to_bitnet(nano_model, sub_norm=True)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        plain = nano_model(ids).logits
        with ternary.attached(nano_model):
            assert all(m.kernel is not None for _, m in bitnet.bit_linears(nano_model))
            fast = nano_model(ids).logits
    assert all(m.kernel is None for _, m in bitnet.bit_linears(nano_model))
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    with ternary.attached(nano_model), torch.enable_grad():  # a training forward never takes the kernel
        assert nano_model(ids).logits.requires_grad


@needs_kernel
def test_packing_is_reused_until_the_weights_change(nano_model):
    bitnet.to_bitnet(nano_model)
    first = ternary.packed_layers(nano_model)
    assert ternary.packed_layers(nano_model) is first
    with torch.no_grad():
        nano_model.model.layers[0].self_attn.q_proj.weight.mul_(2.0)
    second = ternary.packed_layers(nano_model)
    assert second is not first
    weight = nano_model.model.layers[1].mlp.down_proj.weight  # an update that leaves the version counter alone
    version = weight._version
    weight.grad = torch.ones_like(weight)
    torch.optim.AdamW([weight], lr=1e-2, fused=True).step()
    assert weight._version == version and ternary.packed_layers(nano_model) is not second


@needs_kernel
def test_sampler_uses_the_kernel_for_a_bitnet_policy_and_samples_what_torch_samples(nano_model, tokenizer, monkeypatch):
    from reasonloop.rollout.engine import SamplingConfig
    from reasonloop.rollout.sampler import TorchSampler

    bitnet.to_bitnet(nano_model, sub_norm=True)
    calls = {"n": 0}
    real = ternary.PackedLinear.__call__

    def counting(self, x):
        calls["n"] += 1
        return real(self, x)

    monkeypatch.setattr(ternary.PackedLinear, "__call__", counting)
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=12)
    prompts = ["12+7=", "3*4="]
    fast = TorchSampler(nano_model, tokenizer).generate(prompts, 2, sampling, torch.Generator().manual_seed(0))
    assert calls["n"] > 0
    calls["n"] = 0
    monkeypatch.setattr(ternary, "available", lambda: False)
    slow = TorchSampler(nano_model, tokenizer).generate(prompts, 2, sampling, torch.Generator().manual_seed(0))
    assert calls["n"] == 0
    assert torch.equal(fast.completion_ids, slow.completion_ids)  # greedy: the same tokens
    torch.testing.assert_close(fast.logprobs, slow.logprobs, rtol=1e-3, atol=1e-3)


# -- ternary projections inside the compiled decode step (rollout/fused.py, fused_decode.cpp) ---------------
from reasonloop.rollout import fused  # noqa: E402

from decoder_check import LONG_PROMPTS, compiled_step_follows_the_static_decoder, compiled_steps_at_threads  # noqa: E402

needs_step = pytest.mark.skipif(not (ternary.available() and fused.available()),
                                reason="no C++ compiler to build the compiled decode step and the ternary kernel")


@needs_step
@pytest.mark.parametrize("n,k,n_out,bias", [(1, 1, 1, False), (1, 5, 3, True), (3, 130, 7, False), (8, 128, 16, True),
                                            (9, 257, 33, True), (2, 96, 40, False)])
def test_compiled_step_projection_equals_the_reference_bit_for_bit(n, k, n_out, bias):
    """The step's ternary projection (per-row scales, as a fused q|k|v has) is the reference's float maths
    on the reference's exact integers."""
    torch.manual_seed(n * 100 + k)
    codes = torch.randint(-1, 2, (n_out, k), dtype=torch.int8)
    s_w = torch.rand(n_out) + 0.05  # a different scale per output row
    b = torch.randn(n_out) if bias else torch.empty(0)
    x = torch.randn(n, k) * 3
    x[0, 0] = 0.0
    y = torch.ops.reasonloop_decode.projection(x, ternary.pack(codes), b, s_w, torch.empty(0), 1e-5)
    x_q, s_x = bitnet.quantize_activations(x)
    ref = bitnet.dequantize(bitnet.integer_linear(x_q, codes), s_x, s_w[None, :])
    if bias:
        ref = ref + b
    assert torch.equal(y, ref)


@needs_step
def test_compiled_step_projection_with_sub_norm_matches_the_bitlinear_forward():
    torch.manual_seed(0)
    layer = bitnet.BitLinear(150, 20, bias=False, norm_eps=1e-6)
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
    k = ternary.PackedLinear(layer)
    x = torch.randn(4, 150)
    y = torch.ops.reasonloop_decode.projection(x, k.packed, k.bias, k.scale, layer.norm.weight.detach(), 1e-6)
    torch.testing.assert_close(y, layer(x).detach(), rtol=1e-5, atol=1e-5)


def bitnet_model(tokenizer, arch="llama", kv_heads=2, hidden=96, sub_norm=True, head=False):
    """A small random BitNet model; hidden 96 and MLP 136: no projection's K is a multiple of 128."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = {"vocab_size": len(tokenizer), "hidden_size": hidden, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": kv_heads, "intermediate_size": 136, "max_position_embeddings": 128,
              "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    model = (LlamaForCausalLM(LlamaConfig(**common)) if arch == "llama" else Qwen2ForCausalLM(Qwen2Config(**common)))
    return bitnet.to_bitnet(model.eval(), head=head, sub_norm=sub_norm)




@needs_step
@pytest.mark.parametrize("arch,kv_heads,sub_norm,head", [("llama", 2, True, False), ("llama", 4, False, False),
                                                         ("qwen2", 2, True, False), ("llama", 2, True, True)])
def test_compiled_ternary_step_matches_the_kernel_in_the_static_decoder(tokenizer, arch, kv_heads, sub_norm, head):
    model = bitnet_model(tokenizer, arch, kv_heads, sub_norm=sub_norm, head=head)
    assert fused.supports(model, 64)
    with ternary.attached(model):
        compiled_step_follows_the_static_decoder(model, tokenizer, atol=2e-6, rtol=1e-5)


@needs_step
def test_sampler_decodes_a_bitnet_policy_in_one_compiled_call_per_token(tokenizer, monkeypatch):
    from reasonloop.rollout.engine import SamplingConfig
    from reasonloop.rollout.sampler import TorchSampler

    model = bitnet_model(tokenizer)
    steps, kernel_calls = [], {"n": 0}
    step, real = fused.FusedDecoder.step, ternary.PackedLinear.__call__
    monkeypatch.setattr(fused.FusedDecoder, "step", lambda self, *a: steps.append(1) or step(self, *a))
    monkeypatch.setattr(ternary.PackedLinear, "__call__",
                        lambda self, x: kernel_calls.__setitem__("n", kernel_calls["n"] + 1) or real(self, x))
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=16)
    new = TorchSampler(model, tokenizer).generate(LONG_PROMPTS, 4, sampling, torch.Generator().manual_seed(1))
    # the prefill runs the BitLinear modules (7 per layer, 2 layers); every decode step is one compiled call
    assert kernel_calls["n"] == 14 and len(steps) == new.completion_mask.sum(1).max().item() - 1
    monkeypatch.setattr(fused, "supports", lambda *a: False)  # the previous path: StaticDecoder around the kernel
    old = TorchSampler(model, tokenizer).generate(LONG_PROMPTS, 4, sampling, torch.Generator().manual_seed(1))
    assert torch.equal(new.completion_ids, old.completion_ids) and new.finish_reasons == old.finish_reasons
    torch.testing.assert_close(new.logprobs, old.logprobs, atol=1e-5, rtol=1e-5)


@needs_step
def test_the_compiled_step_declines_bitnet_models_it_does_not_implement(tokenizer, monkeypatch):
    mixed = bitnet_model(tokenizer)
    layer = mixed.model.layers[1].mlp
    plain = torch.nn.Linear(layer.down_proj.in_features, layer.down_proj.out_features, bias=False)
    layer.down_proj = plain  # one projection left in full precision
    assert not fused.supports(mixed, 64)
    normed = bitnet_model(tokenizer, sub_norm=False)
    normed.model.layers[0].self_attn.q_proj.norm = bitnet.RMSNorm(96, 1e-6)  # SubLN where q/k/v share an input
    assert not fused.supports(normed, 64)
    model = bitnet_model(tokenizer)
    monkeypatch.setattr(ternary, "available", lambda: False)  # no ternary kernel: no ternary step either
    assert not fused.supports(model, 64)


@needs_step
def test_the_compiled_ternary_step_repacks_after_an_in_place_update(tokenizer):
    """An optimizer step changes the master weights in place: the next sampler call must decode the new
    ternary codes (the sampler keeps the step's packed weights only while the parameters are unchanged)."""
    from reasonloop.rollout.engine import SamplingConfig
    from reasonloop.rollout.sampler import TorchSampler

    model = bitnet_model(tokenizer)
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=10)
    sampler = TorchSampler(model, tokenizer)
    first = sampler.generate(LONG_PROMPTS, 3, sampling, torch.Generator().manual_seed(0))
    packed = sampler._packed
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * p.abs().mean())  # enough to change many ternary codes
    after = sampler.generate(LONG_PROMPTS, 3, sampling, torch.Generator().manual_seed(0))
    fresh = TorchSampler(model, tokenizer).generate(LONG_PROMPTS, 3, sampling, torch.Generator().manual_seed(0))
    assert sampler._packed is not packed
    assert torch.equal(after.completion_ids, fresh.completion_ids) and torch.equal(after.logprobs, fresh.logprobs)
    assert not torch.equal(after.logprobs, first.logprobs)


# -- the RL trainer's reference pass (recipes/rl.py) --------------------------------------------------------
@needs_kernel
def test_the_bitnet_reference_pass_runs_on_the_kernel_with_the_training_forwards_integers(nano_model_dir, tmp_path,
                                                                                           monkeypatch):
    """The reference log-probs of a BitNet policy come from the kernel: every projection's int8 activation
    codes and int32 products are exactly BitLinear's quantising forward's (so only the final float scaling
    differs), and the log-probs equal that forward's within float rounding."""
    from reasonloop.config import load_config
    from reasonloop.recipes import rl

    cfg = load_config(rl.Config, [
        f"model.name={nano_model_dir}", f"output_dir={tmp_path}", "model.bitnet=true", "kl_coef=0.04", "steps=1",
        "prompts_per_step=2", "group_size=4", "sampling.max_new_tokens=8", "eval_n=4", "eval_k=0", "eval_every=0",
        "save_every=0", "samples_every=0", "train_pool=16", "micro_batch_size=4"])
    trainer = rl.Trainer(cfg)
    data, _ = trainer.collect()
    weights = {id(packed): layer.weight for name, layer in bitnet.bit_linears(trainer.ref)
               for pname, packed in ternary.packed_layers(trainer.ref).items() if pname == name}
    seen = []
    real = ternary.PackedLinear.__call__

    def recording(self, x):
        seen.append((self, x.detach().clone()))
        return real(self, x)

    monkeypatch.setattr(ternary.PackedLinear, "__call__", recording)
    fast = trainer.score_tokens(data).ref
    assert {id(p) for p, _ in seen} == set(weights) and len(seen) % len(weights) == 0  # every projection, every call
    for packed, x in seen:
        x2 = x.reshape(-1, x.shape[-1])
        codes, s_x = ternary.quantize_rows(x2)
        ref_codes, ref_s_x = bitnet.quantize_activations(x2)
        assert torch.equal(codes, ref_codes) and torch.equal(s_x, ref_s_x)
        w_q, _ = bitnet.ternarize(weights[id(packed)])
        assert torch.equal(ternary.gemm(codes, packed.packed), bitnet.integer_linear(ref_codes, w_q))
    seen.clear()
    monkeypatch.setattr(ternary, "available", lambda: False)  # the quantising training forward instead
    slow = trainer.score_tokens(data).ref
    assert not seen
    mask = data.tokens.completion_mask.bool()
    assert mask.sum() > 0
    torch.testing.assert_close(fast[mask], slow[mask], rtol=0, atol=1e-5)
    assert torch.equal(fast[~mask], slow[~mask])  # padding: zeros on both sides


@needs_step
def test_the_ternary_kernel_and_step_give_the_same_bits_at_one_and_two_threads(tokenizer):
    """The kernel splits over output rows (and activation rows), the step over rows: each output is computed whole
    by one thread, so threads=2 (torch's intra-op pool, -fopenmp) changes no bit."""
    before = torch.get_num_threads()
    torch.manual_seed(0)
    layer = bitnet.BitLinear(300, 200, bias=True)
    k = ternary.PackedLinear(layer)
    x = torch.randn(64, 300)
    try:
        torch.set_num_threads(1)
        one = k(x)
        torch.set_num_threads(2)
        assert torch.equal(one, k(x))
    finally:
        torch.set_num_threads(before)
    model = bitnet_model(tokenizer)
    with ternary.attached(model):
        one = compiled_steps_at_threads(model, tokenizer, 1)
        assert torch.equal(one, compiled_steps_at_threads(model, tokenizer, 2))
