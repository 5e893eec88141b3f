"""TreeEngine: continuing partial solutions from cached K/V samples what re-prefilling their text samples."""

import pytest
import torch

from reasonloop.rollout.engine import SamplingConfig
from reasonloop.rollout.prefix_cache import TreeEngine
from reasonloop.rollout.sampler import TorchSampler

PROMPTS = ["Q: 1+2=?\n", "Q: 13+4-5=?\n", "Q: 9=?\n"]
# a random nano model writes near-uniform characters: stopping at five of them makes short "steps"
STEP = SamplingConfig(temperature=1.0, max_new_tokens=10, stop=["a", "b", "c", "d", "e"])


def two_levels_reused(engine, seed):
    gen = torch.Generator().manual_seed(seed)
    roots = engine.roots(PROMPTS)
    children = engine.expand(roots, 3, STEP, gen)
    live = [c for c in children if c.kv is not None]
    grand = engine.expand(live, 2, STEP, gen)
    return children, live, grand


@pytest.mark.parametrize("static_cache,fused_decode,backend", [(True, True, "_Fused"), (True, False, "_Static"),
                                                               (False, False, "_Dynamic")])
def test_expanding_cached_nodes_samples_what_re_prefilling_their_text_samples(nano_model, tokenizer, static_cache,
                                                                             fused_decode, backend):
    from reasonloop.rollout import fused

    if backend == "_Fused" and not fused.available():
        pytest.skip("the compiled decode step does not build here")  # the other two backends still run
    engine = TreeEngine(nano_model, tokenizer, static_cache=static_cache, fused_decode=fused_decode)
    assert type(engine._decoder(6, 40, nodes=3, group=2, width=20)).__name__ == backend
    children, live, grand = two_levels_reused(engine, seed=3)
    assert 0 < len(live) < len(children) or len(live) == len(children)
    assert any(c.finish_reason == "stop" for c in children) and len(grand) == 2 * len(live)

    sampler = TorchSampler(nano_model, tokenizer)  # the default (static cache, compiled step) re-prefills
    gen = torch.Generator().manual_seed(3)
    first = sampler.generate(PROMPTS, 3, STEP, gen)
    assert [c.text for c in children] == first.completions
    assert [c.finish_reason for c in children] == first.finish_reasons
    torch.testing.assert_close(torch.tensor([c.logprob for c in children]), first.logprobs.sum(-1), atol=1e-4, rtol=0)
    # the random model sometimes samples <pad>, which `text` drops: re-read the exact tokens
    texts = [PROMPTS[children.index(c) // 3] + tokenizer.decode(c.tokens) for c in live]
    second = sampler.generate(texts, 2, STEP, gen)
    assert [g.text for g in grand] == second.completions
    assert [g.finish_reason for g in grand] == second.finish_reasons
    torch.testing.assert_close(torch.tensor([g.logprob for g in grand]), second.logprobs.sum(-1), atol=1e-4, rtol=0)
    assert all(g.parent is live[i // 2] and g.depth == 2 for i, g in enumerate(grand))


def test_counters_read_each_prompt_once_and_count_every_sampled_token(nano_model, tokenizer):
    engine = TreeEngine(nano_model, tokenizer)
    children, live, grand = two_levels_reused(engine, seed=5)
    prompt_tokens = sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in PROMPTS)
    assert engine.prefilled == prompt_tokens  # the partial solutions are never read again
    assert engine.generated == sum(len(c.tokens) for c in children + grand)
    # a node's K/V covers its whole path but the pending last token
    node = grand[0]
    k, v = node.path_kv()[0]
    assert k.shape[1] == node.length - 1 == len(node.parent.path()[0].tokens) + len(node.parent.tokens) + len(node.tokens) - 1


def test_whole_solutions_go_through_the_counted_sampler(nano_model, tokenizer):
    engine = TreeEngine(nano_model, tokenizer)
    sampling = SamplingConfig(max_new_tokens=6)
    batch = engine.generate(PROMPTS, 2, sampling, torch.Generator().manual_seed(0))
    again = TorchSampler(nano_model, tokenizer).generate(PROMPTS, 2, sampling, torch.Generator().manual_seed(0))
    assert batch.completions == again.completions
    assert engine.generated == int(batch.completion_mask.sum()) and engine.prefilled == int(batch.prompt_mask[::2].sum())


def test_a_released_node_cannot_be_expanded(nano_model, tokenizer):
    engine = TreeEngine(nano_model, tokenizer)
    (root,) = engine.roots(PROMPTS[:1])
    child = engine.expand([root], 1, SamplingConfig(temperature=0, max_new_tokens=3))[0]
    child.release()
    with pytest.raises(ValueError, match="released"):
        engine.expand([child], 1, STEP)
    grand_of_root = engine.expand([root], 1, SamplingConfig(temperature=0, max_new_tokens=3))[0]
    assert grand_of_root.text == child.text  # greedy: the root is untouched by its child's release
