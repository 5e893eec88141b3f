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
