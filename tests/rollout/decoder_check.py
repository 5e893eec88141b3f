"""Shared by the compiled-step tests (test_speed_equivalence, test_ternary, test_bf16_decode): small random
models, prompts (some that exercise chunk padding), and a step-by-step comparison of `fused.FusedDecoder` with
`kv_cache.StaticDecoder`."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from reasonloop.rollout import fused, kv_cache

PROMPTS = ["Q: 1+2=?\n", "Q: 13+4-5=?\n", "Q: 9=?\n", "Q: 7*8-11+2=?\n"]

# longer than one 16-position chunk and of uneven lengths, so chunk padding is exercised
LONG_PROMPTS = ["Q: " + "1+" * 9 + "2=?\n", "Q: 3=?\n", "Q: 12*3-4+5-6+7=?\n"]


def small_model(tokenizer, arch="llama", kv_heads=2, hidden=64):
    torch.manual_seed(0)
    common = {"vocab_size": len(tokenizer), "hidden_size": hidden, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": kv_heads, "intermediate_size": 128, "max_position_embeddings": 128,
              "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**common)).eval()
    if arch == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        return Qwen2ForCausalLM(Qwen2Config(**common)).eval()
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return Qwen3ForCausalLM(Qwen3Config(head_dim=16, **common)).eval()


def compiled_step_follows_the_static_decoder(model, tokenizer, atol: float, rtol: float, G: int = 3, T: int = 20,
                                            bf16: bool = False):
    """Prefill LONG_PROMPTS (G rows each) into both decoders, then feed both the same sampled tokens for T steps
    (20: the completion crosses a chunk boundary), some rows finishing at steps 5, 11 and 17 (both compact the
    same way): equal prefill logits, every step's logits within (atol, rtol). `bf16`: the compiled step's
    projections, and its prefill's, in bfloat16 (the prefill logits then within (atol, rtol) too)."""
    enc = tokenizer(LONG_PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    B, P = ids.shape
    assert P > fused.CHUNK
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        ref, new = kv_cache.StaticDecoder(model, B * G, P + T), fused.FusedDecoder(model, B, G, P, T, bf16=bf16)
        first = ref.prefill(ids, mask, repeat=G)
        if bf16:  # its prefill's matmuls run under bf16 autocast too
            torch.testing.assert_close(new.prefill(ids, mask, repeat=G), first, atol=atol, rtol=rtol)
        else:
            assert torch.equal(first, new.prefill(ids, mask, repeat=G))
        logits, position = first.repeat_interleave(G, 0), (mask.sum(-1) - 1).repeat_interleave(G)
        for t in range(T):
            tokens = torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]
            if t in (5, 11, 17):
                live = torch.rand(len(tokens), generator=gen) > 0.3
                live[0] = True
                order = ref.keep(live)
                assert torch.equal(order, new.keep(live))
                tokens, position = tokens[order], position[order]
            position = position + 1
            logits = ref.step(tokens, position)
            torch.testing.assert_close(new.step(tokens, position), logits, atol=atol, rtol=rtol)
    assert len(tokens) < B * G  # rows did finish


def compiled_steps_at_threads(model, tokenizer, threads: int, G: int = 12, T: int = 20) -> torch.Tensor:
    """Every logit of FusedDecoder's prefill and T steps (LONG_PROMPTS, G rows each, rows dropped at steps 5 and
    11, tokens greedy) under `torch.set_num_threads(threads)`, stacked [T + 1, rows, V] (dropped rows zero);
    the thread count is restored after."""
    enc = tokenizer(LONG_PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    B, P = ids.shape
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            dec = fused.FusedDecoder(model, B, G, P, T)
            logits = dec.prefill(ids, mask, repeat=G).repeat_interleave(G, 0)
            position = (mask.sum(-1) - 1).repeat_interleave(G)
            rows = torch.arange(B * G)
            out = torch.zeros(T + 1, B * G, logits.shape[-1])
            out[0] = logits
            for t in range(T):
                tokens = logits.argmax(-1)
                if t in (5, 11):
                    live = torch.ones(len(tokens), dtype=torch.bool)
                    live[::3] = False
                    order = dec.keep(live)
                    tokens, position, rows = tokens[order], position[order], rows[order]
                position = position + 1
                logits = dec.step(tokens, position)
                out[t + 1, rows] = logits
    finally:
        torch.set_num_threads(before)
    return out
