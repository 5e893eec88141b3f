import pytest
import torch
from torch.testing import assert_close

from reasonloop.algos.aggregation import AGGREGATION_MODES, aggregate, masked_whiten, step_normalizer

# Hand table:  token loss          mask
#              [1, 2, 3]           [1, 1, 0]
#              [4, 5, 6]           [1, 0, 0]
LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    "mode, max_len, normalizer, expected",
    [
        ("token_mean", None, 3.0, 7.0 / 3.0),  # (1 + 2 + 4) / 3 tokens
        ("seq_mean_token_mean", None, 2.0, 2.75),  # ((1 + 2) / 2 + 4 / 1) / 2 sequences
        ("seq_mean_token_sum_norm", 4, 8.0, 7.0 / 8.0),  # (1 + 2 + 4) / (2 seqs * max_len 4)
        ("seq_mean_token_sum_norm", None, 6.0, 7.0 / 6.0),  # max_len defaults to the width 3
    ],
)
def test_hand_values(mode, max_len, normalizer, expected):
    assert step_normalizer(MASK, mode, max_len) == normalizer
    assert_close(aggregate(LOSS, MASK, mode, normalizer), torch.tensor(expected))
    assert_close(aggregate(LOSS, MASK, mode, max_len=max_len), torch.tensor(expected))


def test_masked_entries_may_be_nan_or_inf():
    loss = LOSS.clone()
    loss[0, 2] = float("nan")
    loss[1, 1] = float("inf")
    for mode in AGGREGATION_MODES:
        assert torch.isfinite(aggregate(loss, MASK, mode))


def test_empty_rows_and_empty_step():
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    # The empty row is neither counted nor contributes: ((1 + 2) / 2) / 1 sequence.
    assert_close(aggregate(LOSS, mask, "seq_mean_token_mean"), torch.tensor(1.5))
    zero = torch.zeros_like(mask)
    for mode in AGGREGATION_MODES:
        assert step_normalizer(zero, mode) >= 1.0
        assert_close(aggregate(LOSS, zero, mode), torch.tensor(0.0))


def test_unknown_mode_and_bad_shapes():
    with pytest.raises(ValueError):
        step_normalizer(MASK, "mean")
    with pytest.raises(ValueError):
        aggregate(LOSS, MASK[:, :2], "token_mean", 1.0)
    with pytest.raises(ValueError):
        step_normalizer([MASK, MASK[:, :2]], "seq_mean_token_sum_norm")


def _loop_reference(loss, mask, mode, max_len):
    """Plain-Python version of each mode over the WHOLE step."""
    rows = [[float(l) for l, m in zip(lr, mr) if m > 0] for lr, mr in zip(loss.tolist(), mask.tolist())]
    rows = [r for r in rows if r]
    if mode == "token_mean":
        return sum(sum(r) for r in rows) / sum(len(r) for r in rows)
    if mode == "seq_mean_token_mean":
        return sum(sum(r) / len(r) for r in rows) / len(rows)
    return sum(sum(r) for r in rows) / (len(rows) * max_len)


def _ragged(n=7, t=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    lengths[0] = t
    mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(-1)).double()
    return mask, g


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_vectorised_matches_loop(mode):
    mask, g = _ragged()
    loss = torch.randn(mask.shape, generator=g, dtype=torch.float64)
    assert_close(aggregate(loss, mask, mode, max_len=8), torch.tensor(_loop_reference(loss, mask, mode, 8), dtype=torch.float64))


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
@pytest.mark.parametrize("split", [[7], [1] * 7, [3, 4], [2, 4, 1], [5, 1, 1]])
@pytest.mark.parametrize("trim", [False, True])
def test_micro_batched_equals_whole_batch_value_and_grad(mode, split, trim):
    """Summing micro-batch losses (and accumulating their gradients) reproduces the whole-batch
    loss and gradient, for uneven splits and for micro-batches padded to their own width."""
    mask, g = _ragged()
    param = torch.randn(mask.shape, generator=g, dtype=torch.float64, requires_grad=True)
    max_len = 6  # the generation budget (needed for Dr.GRPO once micro-batches are trimmed)

    def token_loss(p):
        return p**2 + torch.sin(p)  # any per-token function of the parameters

    whole = aggregate(token_loss(param), mask, mode, step_normalizer(mask, mode, max_len))
    (g_whole,) = torch.autograd.grad(whole, param)

    norm = step_normalizer(mask, mode, max_len)  # ONCE for the whole step
    total = torch.zeros((), dtype=torch.float64)
    grad = torch.zeros_like(param)
    start = 0
    for size in split:
        mb_mask = mask[start : start + size]
        width = int(mb_mask.sum(-1).max()) if trim else mask.shape[1]
        mb_param = param[start : start + size, :width]
        part = aggregate(token_loss(mb_param), mb_mask[:, :width], mode, norm)
        (gp,) = torch.autograd.grad(part, param)
        grad += gp  # gradient accumulation: plain sum, no division by the number of steps
        total = total + part.detach()
        start += size
    assert_close(total, whole.detach())
    assert_close(grad, g_whole)


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_data_parallel_split_with_list_of_masks(mode):
    """Two 'ranks' with differently padded masks: the normaliser from the list of all masks equals
    the one from the concatenated step, and rank results sum to the whole."""
    mask, g = _ragged(n=6, t=5, seed=3)
    loss = torch.randn(mask.shape, generator=g, dtype=torch.float64)
    rank0, rank1 = slice(0, 4), slice(4, 6)
    w1 = int(mask[rank1].sum(-1).max())
    masks = [mask[rank0], mask[rank1, :w1]]
    norm = step_normalizer(masks, mode, max_len=5)
    assert norm == step_normalizer(mask, mode, max_len=5)
    parts = aggregate(loss[rank0], mask[rank0], mode, norm) + aggregate(loss[rank1, :w1], mask[rank1, :w1], mode, norm)
    assert_close(parts, aggregate(loss, mask, mode, max_len=5))


def test_masked_whiten_hand_values_and_flat_input():
    x = torch.tensor([[1.0, 3.0, 99.0]])
    m = torch.tensor([[1.0, 1.0, 0.0]])
    # mean 2, population std 1 -> [-1, 1], masked -> 0
    assert_close(masked_whiten(x, m, eps=0.0), torch.tensor([[-1.0, 1.0, 0.0]]))
    flat = torch.tensor([[0.1, 0.1, 0.1]])
    assert torch.equal(masked_whiten(flat, torch.ones_like(flat)), torch.zeros_like(flat))
