"""ShuffledPasses: hand-computed orders, resume mid-pass, and each caller's sequence equal to the
inline loop it replaced (sft, rl, the self-improvement loop), so the figures of record keep their data order."""

from __future__ import annotations

import json
import random

import pytest

from reasonloop.data.sampling import SeededShuffle, ShuffledPasses, StreamShuffle

# random.Random(k).shuffle(list(range(5))), k = 0, 1, "0:0", "0:1" (printed once, then fixed here)
SHUFFLED = {0: [2, 1, 0, 4, 3], 1: [2, 3, 4, 0, 1], "0:0": [2, 3, 1, 0, 4], "0:1": [3, 0, 2, 4, 1]}


def test_seeded_passes_follow_the_hand_listed_orders():
    sft_like = ShuffledPasses(5, SeededShuffle(lambda e: 0 + e))
    assert sft_like.next(3) == [2, 1, 0]
    assert sft_like.next(4) == [4, 3, 2, 3]  # pass 0 ends, pass 1 (seed 1) begins
    assert sft_like.state_dict() == {"epoch": 1, "position": 2}
    rl_like = ShuffledPasses(5, SeededShuffle(lambda e: f"0:{e}"))
    assert rl_like.next(7) == [2, 3, 1, 0, 4, 3, 0]


def test_stream_passes_are_read_back_to_front_and_draw_only_when_needed():
    rng = random.Random(0)
    sampler = ShuffledPasses(5, StreamShuffle(rng))
    untouched = rng.getstate()
    assert sampler.next(0) == [] and rng.getstate() == untouched  # no pass made before an index is needed
    assert sampler.next(5) == [3, 4, 0, 1, 2]  # [2, 1, 0, 4, 3] reversed
    assert rng.getstate() != untouched
    after_one = rng.getstate()
    assert sampler.state_dict() == {"epoch": 0, "position": 5, "order": [3, 4, 0, 1, 2]}
    assert rng.getstate() == after_one  # a finished pass is not replaced until the next index is needed
    assert sampler.next(2) == [4, 3]  # the second shuffle of the stream, [0, 2, 1, 3, 4], reversed


def test_every_pass_is_a_permutation():
    sampler = ShuffledPasses(7, SeededShuffle(lambda e: e))
    for _ in range(4):
        assert sorted(sampler.next(7)) == list(range(7))


def test_empty_pool_raises_instead_of_looping():
    with pytest.raises(ValueError, match="empty pool"):
        ShuffledPasses(0, SeededShuffle(lambda e: e)).next(1)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("cut", [0, 3, 5, 11])
def test_resume_mid_pass_continues_the_uninterrupted_sequence(stream, cut):
    def make(rng):
        return ShuffledPasses(5, StreamShuffle(rng) if stream else SeededShuffle(lambda e: f"7:{e}"))

    straight = make(random.Random(7)).next(20)
    rng = random.Random(7)
    first = make(rng)
    head = first.next(cut)
    state = json.loads(json.dumps(first.state_dict()))  # checkpoints are JSON
    rng_state = rng.getstate()  # a stream's rng is its owner's to checkpoint
    rng2 = random.Random(0)
    rng2.setstate(rng_state)
    resumed = make(rng2)
    resumed.load_state_dict(state)
    assert head + resumed.next(20 - cut) == straight


# -- the inline loops ShuffledPasses replaced, verbatim but for names ------------------------------


def old_sft_order(n_records: int, seed: int, batch_size: int, steps: int) -> list[int]:
    order = list(range(n_records))
    state = {"epoch": 0, "position": 0}
    random.Random(seed + state["epoch"]).shuffle(order)
    out = []
    for _ in range(steps):
        picked = []
        while len(picked) < batch_size:
            if state["position"] >= len(order):
                state["epoch"] += 1
                state["position"] = 0
                order = list(range(n_records))
                random.Random(seed + state["epoch"]).shuffle(order)
            picked.append(order[state["position"]])
            state["position"] += 1
        out += picked
    return out


def old_rl_order(pool: int, seed: int, draws: list[int]) -> list[int]:
    def shuffled(epoch):
        order = list(range(pool))
        random.Random(f"{seed}:{epoch}").shuffle(order)
        return order

    state = {"epoch": 0, "position": 0}
    order = shuffled(0)
    out = []
    for n in draws:
        for _ in range(n):
            if state["position"] >= len(order):
                state["epoch"] += 1
                state["position"] = 0
                order = shuffled(state["epoch"])
            out.append(order[state["position"]])
            state["position"] += 1
    return out


def old_selfimprove_order(pool: int, seed: int, iterations: list[tuple[int, int, int, int]]) -> list:
    """Per iteration: next_prompts(n) then finetune(records, steps, batch_size), sharing one rng."""
    rng = random.Random(seed)
    prompt_order: list[int] = []
    out = []
    for n, records, steps, batch_size in iterations:
        prompts = []
        for _ in range(n):
            if not prompt_order:
                prompt_order = list(range(pool))
                rng.shuffle(prompt_order)
            prompts.append(prompt_order.pop())
        order: list[int] = []
        batches = []
        for _ in range(steps):
            picked = []
            while len(picked) < batch_size:
                if not order:
                    order = list(range(records))
                    rng.shuffle(order)
                picked.append(order.pop())
            batches.append(picked)
        out.append((prompts, batches))
    return out


@pytest.mark.parametrize("seed", [0, 1, 13])
def test_sft_sequence_is_the_old_inline_one(seed):
    new = ShuffledPasses(37, SeededShuffle(lambda e: seed + e))
    assert [i for _ in range(9) for i in new.next(8)] == old_sft_order(37, seed, 8, 9)


@pytest.mark.parametrize("seed", [0, 1, 13])
def test_rl_sequence_is_the_old_inline_one(seed):
    draws = [4, 4, 3, 7, 4, 4, 9, 1]  # dynamic sampling tops up with odd counts
    new = ShuffledPasses(11, SeededShuffle(lambda e: f"{seed}:{e}"))
    assert [i for n in draws for i in new.next(n)] == old_rl_order(11, seed, draws)


@pytest.mark.parametrize("seed", [0, 1, 13])
def test_selfimprove_sequence_is_the_old_inline_one(seed):
    iterations = [(12, 9, 3, 4), (12, 0, 0, 4), (7, 13, 2, 8), (12, 5, 4, 3)]
    rng = random.Random(seed)
    prompts = ShuffledPasses(20, StreamShuffle(rng))
    new = []
    for n, records, steps, batch_size in iterations:
        drawn = prompts.next(n)
        batches = ShuffledPasses(records, StreamShuffle(rng))  # a fresh one per fine-tune, the rng shared
        new.append((drawn, [batches.next(batch_size) for _ in range(steps)]))
    assert new == old_selfimprove_order(20, seed, iterations)
