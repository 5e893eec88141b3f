"""Packed BitNet checkpoints (models/bitnet_pack.py): the 2-bit row packing, export to transformers'
`bitnet` model type (loaded by transformers itself) and back into reasonloop."""

from __future__ import annotations

import pytest
import torch

from reasonloop.models import bitnet, bitnet_pack


@pytest.mark.parametrize("n", [1, 3, 4, 5, 8, 13])
def test_pack_rows_round_trip_for_every_code(n):
    torch.manual_seed(n)
    codes = torch.randint(-1, 2, (n, 6), dtype=torch.int8)
    codes[:, 0], codes[:, 1], codes[:, 2] = -1, 0, 1
    packed = bitnet_pack.pack_rows(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (-(-n // 4), 6)
    assert torch.equal(bitnet_pack.unpack_rows(packed, n), codes)


def test_pack_rows_is_transformers_layout():
    from transformers.integrations.bitnet import pack_weights

    torch.manual_seed(0)
    codes = torch.randint(-1, 2, (12, 5), dtype=torch.int8)
    assert torch.equal(bitnet_pack.pack_rows(codes), pack_weights(codes.clone()))
    # by hand: rows 0, 3, 6, 9 share packed row 0 (R = 3), in bits 0, 2, 4, 6
    c = torch.zeros(12, 1, dtype=torch.int8)
    c[0], c[3], c[6], c[9] = 1, -1, 0, 1
    assert bitnet_pack.pack_rows(c)[0, 0].item() == 2 | (0 << 2) | (1 << 4) | (2 << 6)


@pytest.fixture
def bitnet_nano(nano_model):
    torch.manual_seed(1)
    bitnet.to_bitnet(nano_model, sub_norm=True)
    with torch.no_grad():
        for _, m in bitnet.bit_linears(nano_model):
            if m.norm is not None:
                m.norm.weight.uniform_(0.5, 1.5)
    return nano_model.eval()


def test_export_loads_in_transformers_bitnet_and_agrees(bitnet_nano, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    bitnet_pack.export_hf(bitnet_nano, tokenizer, tmp_path)
    with torch._dynamo.config.patch(disable=True):  # transformers' BitLinear is torch.compile'd; eager is enough here
        theirs = AutoModelForCausalLM.from_pretrained(str(tmp_path))
        assert type(theirs).__name__ == "BitNetForCausalLM"
        assert type(theirs.model.layers[0].self_attn.q_proj).__name__ == "BitLinear"
        ids = torch.tensor([[5, 9, 12, 30, 7, 8]])
        with torch.no_grad():
            torch.testing.assert_close(theirs(ids).logits, bitnet_nano(ids).logits, rtol=1e-4, atol=1e-4)
    weights = sum(f.stat().st_size for f in tmp_path.glob("*.safetensors"))
    full = sum(p.numel() * 4 for p in bitnet_nano.parameters())
    assert weights < 0.5 * full


def test_packed_directory_loads_back_into_reasonloop(bitnet_nano, tokenizer, tmp_path):
    from reasonloop.models.loading import ModelConfig, load_model

    bitnet_pack.export_hf(bitnet_nano, tokenizer, tmp_path)
    assert bitnet_pack.is_packed(tmp_path)
    back = load_model(ModelConfig(name=str(tmp_path), device="cpu"))
    assert bitnet.saved_layout(back.config) == {"head": False, "sub_norm": True}
    for (name, a), (_, b) in zip(bitnet.bit_linears(bitnet_nano), bitnet.bit_linears(back)):
        (ca, sa), (cb, sb) = bitnet.ternarize(a.weight), bitnet.ternarize(b.weight)
        assert torch.equal(ca, cb), name
        assert sb.item() == pytest.approx(sa.item(), rel=1e-6)
    ids = torch.tensor([[5, 9, 12, 30, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, bitnet_nano(ids).logits, rtol=1e-4, atol=1e-4)


def test_export_refuses_what_the_bitnet_type_cannot_hold(nano_model, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="not a BitNet model"):
        bitnet_pack.export_hf(nano_model, tokenizer, tmp_path)
    bitnet.to_bitnet(nano_model)  # a post-training conversion: no sub-norms
    with pytest.raises(ValueError, match="always has SubLN"):
        bitnet_pack.export_hf(nano_model, tokenizer, tmp_path)
