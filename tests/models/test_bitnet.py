"""BitNet b1.58 layers (models/bitnet.py): quantisers on hand-computed tensors, the straight-through
estimator, conversion, training and bit-exact checkpoint/resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reasonloop.models import bitnet
from reasonloop.models.bitnet import BitLinear, EPS


def test_absmean_scale_and_round_clip_on_a_hand_computed_tensor():
    w = torch.tensor([[0.6, -0.4, 1.6], [-3.0, 0.0, 0.2]])
    codes, s = bitnet.ternarize(w)
    assert s.item() == pytest.approx(5.8 / 6 + EPS)  # mean |W| + eps
    # W / s = 0.62, -0.41, 1.66 | -3.10, 0, 0.21: round, then clip to [-1, 1]
    assert codes.tolist() == [[1, 0, 1], [-1, 0, 0]]
    assert codes.dtype == torch.int8


def test_round_clip_boundaries_and_the_zero_tensor():
    w = torch.tensor([0.499, 0.501, -0.499, -0.501, 4.0, -1.0, 0.0, 1.0])  # mean |W| = 1
    codes, s = bitnet.ternarize(w)
    assert s.item() == pytest.approx(1.0 + EPS)
    # either side of the rounding boundary 0.5, clipped above 1.5 (4.0), and +-1 (just under, after eps)
    assert codes.tolist() == [0, 1, 0, -1, 1, -1, 0, 1]
    zero_codes, zero_s = bitnet.ternarize(torch.zeros(3, 4))
    assert zero_s.item() == pytest.approx(EPS) and zero_codes.abs().sum() == 0


def test_absmax_per_token_with_round_half_to_even_and_a_zero_row():
    x = torch.tensor([[1.0, -2.0, 0.5, 0.0],      # absmax 2: s = 63.5 -> 63.5, -127, 31.75, 0
                      [0.0, 0.0, 0.0, 0.0],       # zero row: scale 127 / eps, codes 0
                      [127.0, 62.5, -0.5, 1.5],   # s = 1: halves round to even (62, 0, 2)
                      [0.125, 0.25, -0.5, 0.0]])  # absmax 0.5: s = 254
    q, s = bitnet.quantize_activations(x)
    assert s.flatten().tolist() == pytest.approx([63.5, 127 / EPS, 1.0, 254.0])
    assert q.tolist() == [[64, -127, 32, 0], [0, 0, 0, 0], [127, 62, 0, 2], [32, 64, -127, 0]]
    assert q.dtype == torch.int8 and int(q.min()) >= -127  # absmax scaling never reaches -128


def test_integer_linear_and_dequantize_by_hand():
    x_q = torch.tensor([[10, -20, 30]], dtype=torch.int8)
    w_q = torch.tensor([[1, 0, -1], [-1, 1, 1]], dtype=torch.int8)
    acc = bitnet.integer_linear(x_q, w_q)
    assert acc.tolist() == [[10 - 30, -10 - 20 + 30]]
    y = bitnet.dequantize(acc, torch.tensor([[2.0]]), torch.tensor(0.5))
    assert y.tolist() == [[-20 * 0.25, 0.0]]


def test_bitlinear_forward_is_the_quantised_product():
    torch.manual_seed(0)
    layer = BitLinear(7, 5, bias=True)
    x = torch.randn(3, 7)
    w_q, s_w = bitnet.ternarize(layer.weight)
    x_q, s_x = bitnet.quantize_activations(x)
    expected = bitnet.dequantize(bitnet.integer_linear(x_q, w_q), s_x, s_w) + layer.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)


def test_straight_through_estimator_passes_gradients_unchanged():
    torch.manual_seed(0)
    layer = BitLinear(6, 4, bias=False)
    x = torch.randn(5, 6, requires_grad=True)
    g = torch.randn(5, 4)
    (layer(x) * g).sum().backward()
    w_q, s_w = bitnet.ternarize(layer.weight)
    x_q, s_x = bitnet.quantize_activations(x)
    w_deq, x_deq = w_q.float() * s_w, x_q.float() / s_x
    # the gradient of F.linear at the quantised values, passed through both quantisers unchanged
    torch.testing.assert_close(layer.weight.grad, g.t() @ x_deq)
    torch.testing.assert_close(x.grad, g @ w_deq)
    # also for weights outside the clip range (|W / s| > 1.5): the paper's identity STE
    assert ((layer.weight / s_w).abs() > 1.5).any()


def test_sub_norm_normalises_before_quantising():
    torch.manual_seed(0)
    layer = BitLinear(8, 3, bias=False, norm_eps=1e-6)
    x = torch.randn(2, 8)
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(layer(x), layer(normed * 10) * 1.0, rtol=1e-5, atol=1e-5)  # scale-free
    plain = BitLinear(8, 3, bias=False)
    plain.weight = layer.weight
    torch.testing.assert_close(layer(x), plain(normed))


def test_to_bitnet_swaps_every_linear_but_keeps_embeddings_and_head(nano_model):
    before = {k: v.clone() for k, v in nano_model.state_dict().items()}
    embed = nano_model.model.embed_tokens.weight
    bitnet.to_bitnet(nano_model)
    linears = [n for n, m in nano_model.named_modules() if isinstance(m, nn.Linear)]
    assert [n for n in linears if not isinstance(nano_model.get_submodule(n), BitLinear)] == ["lm_head"]
    assert len(bitnet.bit_linears(nano_model)) == 2 * 7  # q k v o gate up down per layer
    assert type(nano_model.lm_head) is nn.Linear and nano_model.model.embed_tokens.weight is embed
    after = nano_model.state_dict()
    assert after.keys() == before.keys()  # no sub-norms asked for: the same tensors, untouched
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert nano_model.config.reasonloop_bitnet == {"head": False, "sub_norm": False}


def test_to_bitnet_with_head_and_sub_norms(nano_model):
    bitnet.to_bitnet(nano_model, head=True, sub_norm=True)
    assert isinstance(nano_model.lm_head, BitLinear)
    normed = sorted({n.rsplit(".", 1)[-1] for n, m in bitnet.bit_linears(nano_model) if m.norm is not None})
    assert normed == ["down_proj", "o_proj"]


def test_a_saved_bitnet_model_loads_as_bitnet_with_its_sub_norms(nano_model, tokenizer, tmp_path):
    from reasonloop.models.loading import ModelConfig, load_model

    bitnet.to_bitnet(nano_model, sub_norm=True)
    with torch.no_grad():
        nano_model.model.layers[1].mlp.down_proj.norm.weight.fill_(0.25)
    nano_model.save_pretrained(str(tmp_path))
    tokenizer.save_pretrained(str(tmp_path))
    loaded = load_model(ModelConfig(name=str(tmp_path), device="cpu"))
    assert loaded.model.layers[1].mlp.down_proj.norm.weight.eq(0.25).all()
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(loaded(ids).logits, nano_model(ids).logits, rtol=0, atol=0)


def test_model_bitnet_flag_converts_a_plain_model(nano_model_dir):
    from reasonloop.models.loading import ModelConfig, load_model

    model = load_model(ModelConfig(name=nano_model_dir, device="cpu", bitnet=True))
    assert len(bitnet.bit_linears(model)) == 14 and type(model.lm_head) is nn.Linear


def test_a_bitnet_model_trains(nano_model, tokenizer):
    from reasonloop.models.forward import encode_pairs
    from reasonloop.train.optim import OptimConfig, build_optimizer
    from reasonloop.train.supervised import supervised_step

    torch.manual_seed(0)
    bitnet.to_bitnet(nano_model, sub_norm=True)
    batch = encode_pairs(tokenizer, ["1+2=", "3*4=", "9-5="], ["3", "12", "4"])
    optimizer, scheduler = build_optimizer(nano_model.parameters(), OptimConfig(lr=3e-3, warmup_steps=0), 40)
    losses = [supervised_step(nano_model, batch, 3, optimizer, scheduler, 1.0)["loss"] for _ in range(40)]
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(p.dtype == torch.float32 for p in nano_model.parameters())  # fp32 master weights


def test_bitnet_sft_killed_and_resumed_ends_with_the_same_weights(nano_model, tokenizer, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from reasonloop.config import load_config
    from reasonloop.recipes import sft

    bitnet.to_bitnet(nano_model, sub_norm=True)
    base = tmp_path / "base"
    nano_model.save_pretrained(str(base))
    tokenizer.save_pretrained(str(base))
    args = ["task=arithmetic:2", "steps=4", "save_every=2", "batch_size=8", "micro_batch_size=4",
            "task_records=20", "eval_n=4", "eval_every=0", f"model.name={base}"]
    sft.run(load_config(sft.Config, [*args, f"output_dir={tmp_path / 'a'}"]))
    cfg = load_config(sft.Config, [*args, f"output_dir={tmp_path / 'b'}"])
    real, calls = sft.supervised_step, {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed at step 3")
        return real(*a, **k)

    monkeypatch.setattr(sft, "supervised_step", dying)
    with pytest.raises(KeyboardInterrupt):
        sft.run(cfg)
    monkeypatch.setattr(sft, "supervised_step", real)
    sft.run(cfg)
    a = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert any(k.endswith("o_proj.norm.weight") for k in a)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)
    start = load_file(str(base / "model.safetensors"))
    assert not torch.equal(a["model.layers.0.mlp.down_proj.norm.weight"], start["model.layers.0.mlp.down_proj.norm.weight"])


def test_linear_gradients_of_the_quantised_layer_match_a_plain_linear_on_dequantised_tensors():
    # the STE written as v + (q(v) - v).detach() is exactly F.linear on the quantised values, forward and backward
    torch.manual_seed(1)
    layer = BitLinear(4, 3, bias=True)
    x = torch.randn(2, 4)
    w_q, s_w = bitnet.ternarize(layer.weight)
    x_q, s_x = bitnet.quantize_activations(x)
    torch.testing.assert_close(layer(x), F.linear(x_q.float() / s_x, w_q.float() * s_w, layer.bias))


def test_bitnet_and_4bit_loading_are_exclusive():
    from reasonloop.config import ConfigError
    from reasonloop.models.loading import LoraConfig, ModelConfig

    with pytest.raises(ConfigError, match="model.bitnet and model.load_in_4bit are two different quantisations"):
        ModelConfig(bitnet=True, load_in_4bit=True, lora=LoraConfig(r=4))


def test_pretrain_bitnet_builds_a_ternary_model_that_loads_back(tmp_path):
    from reasonloop.config import load_config
    from reasonloop.models.loading import ModelConfig, load_model
    from reasonloop.recipes import pretrain

    cfg = load_config(pretrain.Config, ["bitnet=true", "size=nano", "steps=3", "batch_size=4", "micro_batch_size=4",
                                        "corpus_size=50", "eval_every=0", "eval_per_level=1",
                                        f"output_dir={tmp_path / 'run'}"])
    result = pretrain.run(cfg)
    model = load_model(ModelConfig(name=result["model_dir"], device="cpu"))
    assert bitnet.saved_layout(model.config) == {"head": False, "sub_norm": True}
    assert len(bitnet.bit_linears(model)) == 14
    assert all(m.norm is not None for n, m in bitnet.bit_linears(model) if n.endswith(("o_proj", "down_proj")))
