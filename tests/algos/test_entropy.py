import math

import pytest
import torch
from torch.testing import assert_close

from reasonloop.algos.entropy import entropy_from_logits


def test_hand_values():
    # uniform over 4 -> log 4; one-hot with -inf elsewhere -> 0; p = [.5, .25, .25] -> 1.5 log 2
    logits = torch.tensor(
        [[[0.0, 0.0, 0.0, 0.0], [0.0, -math.inf, -math.inf, -math.inf], [math.log(0.5), math.log(0.25), math.log(0.25), -math.inf]]]
    )
    assert_close(entropy_from_logits(logits, chunk_size=2), torch.tensor([[math.log(4), 0.0, 1.5 * math.log(2)]]))


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_chunked_matches_loop_and_gradients(chunk):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 5, 11, generator=g, dtype=torch.float64)).requires_grad_(True)
    out = entropy_from_logits(logits, chunk_size=chunk)
    loop = torch.tensor(
        [[float(torch.distributions.Categorical(logits=logits[i, t].detach()).entropy()) for t in range(5)] for i in range(3)],
        dtype=torch.float64,
    )
    assert_close(out, loop)
    full = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    w = torch.rand(3, 5, generator=g, dtype=torch.float64)
    assert_close(torch.autograd.grad((out * w).sum(), logits)[0], torch.autograd.grad((full * w).sum(), logits)[0])


def test_bf16_upcast_and_shape_check():
    out = entropy_from_logits(torch.zeros(2, 3, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.float32
    assert_close(out, torch.full((2, 3), math.log(8)))
    with pytest.raises(ValueError):
        entropy_from_logits(torch.zeros(3, 8))


def test_direction_entropy_bonus_step_raises_entropy():
    logits = torch.tensor([[[2.0, 0.0, -1.0, 0.5, -2.0]]], requires_grad=True)
    h0 = entropy_from_logits(logits)
    (grad,) = torch.autograd.grad(-h0.sum(), logits)  # loss = -entropy (a bonus)
    assert entropy_from_logits(logits.detach() - 0.5 * grad).item() > h0.item()
