"""Preference-optimisation glue: sequence log-probs of (prompt, completion) and one optimizer step of a
named loss from `algos.PREFERENCE_LOSSES`. The maths lives in `algos.preference`; this module only
computes the inputs each loss family expects and accumulates micro-batches.

Loss families (what each needs):
- pairwise with a reference  dpo, cdpo, robust_dpo, ipo, spin: summed log-probs, policy and ref
- unpaired with a reference  kto: desirable / undesirable lists, reference point `kto_kl_ref`
- reference-free             orpo: token-AVERAGED log-probs;  simpo: summed log-probs + lengths
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from reasonloop.algos import PREFERENCE_LOSSES
from reasonloop.models.forward import ForwardConfig, completion_logprobs, encode_pairs
from reasonloop.train.optim import clip_and_step

PAIRWISE_WITH_REF = ("dpo", "cdpo", "robust_dpo", "ipo", "spin")
REFERENCE_FREE = ("orpo", "simpo")
UNPAIRED = ("kto",)


def needs_reference(loss: str) -> bool:
    return loss not in REFERENCE_FREE


@dataclass
class PreferenceData:
    """What a preference step trains on. Paired losses use chosen[i] vs rejected[i] of prompts[i];
    KTO uses (prompts, chosen) as desirable and (rejected_prompts, rejected) as undesirable."""

    prompts: list[str]  # rendered prompts of the chosen (and, when paired, the rejected) completions
    chosen: list[str]
    rejected: list[str]
    rejected_prompts: list[str] | None = None  # KTO only: prompts of the undesirable completions


def sequence_logps(model: torch.nn.Module, tokenizer, prompts: Sequence[str], completions: Sequence[str],
                   micro_batch_size: int = 32, grad: bool = False,
                   forward: ForwardConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed completion log-probs [N], completion lengths in tokens incl. EOS [N]); `forward`: the forward's
    switches (default ForwardConfig())."""
    device = next(model.parameters()).device
    if not prompts:
        return torch.zeros(0, device=device), torch.zeros(0, device=device)
    out, lengths = [], []
    for start in range(0, len(prompts), micro_batch_size):
        batch = encode_pairs(tokenizer, list(prompts[start : start + micro_batch_size]),
                             list(completions[start : start + micro_batch_size])).to(device)
        with torch.set_grad_enabled(grad):
            lp = completion_logprobs(model, batch, forward=forward)
        out.append((lp * batch.completion_mask).sum(-1))
        lengths.append(batch.completion_mask.sum(-1))
    return torch.cat(out), torch.cat(lengths).float()


def loss_inputs(loss: str, pol_c, pol_r, ref_c, ref_r, len_c, len_r, kwargs: dict, normalizer: float) -> tuple:
    """Call the named loss with the inputs its family expects; returns (loss, metrics)."""
    fn = PREFERENCE_LOSSES[loss]
    if loss in PAIRWISE_WITH_REF:
        return fn(pol_c, pol_r, ref_c, ref_r, normalizer=normalizer, **kwargs)
    if loss == "kto":
        return fn(pol_c, pol_r, ref_c, ref_r, normalizer=normalizer, **kwargs)
    if loss == "orpo":
        return fn(pol_c / len_c, pol_r / len_r, normalizer=normalizer, **kwargs)
    if loss == "simpo":
        return fn(pol_c, pol_r, len_c, len_r, normalizer=normalizer, **kwargs)
    raise ValueError(f"unknown preference loss {loss!r}; known: {sorted(PREFERENCE_LOSSES)}")


def preference_step(
    model: torch.nn.Module,
    tokenizer,
    data: PreferenceData,
    loss: str,
    loss_kwargs: dict,
    ref_chosen: torch.Tensor | None,  # [B] summed ref log-probs of the chosen (None for reference-free)
    ref_rejected: torch.Tensor | None,  # [B or Br]
    optimizer,
    scheduler,
    max_grad_norm: float,
    micro_batch_size: int = 16,
    nll_weight: float = 0.0,
    forward: ForwardConfig | None = None,
) -> dict[str, float]:
    """One optimizer step of `loss` over all of `data`, micro-batched; the loss is normalised by the
    whole step's pair count (or item count for KTO) so micro-batch size does not change the update.

    `nll_weight` > 0 adds that times the token-mean NLL of the chosen completions (the RPO / iterative
    RPO term, Pang et al. 2024), which keeps the chosen likelihood from falling. `forward`: the forward's switches.
    """
    device = next(model.parameters()).device
    model.train()
    paired = loss != "kto"
    rej_prompts = data.prompts if paired else (data.rejected_prompts or [])
    n_c, n_r = len(data.chosen), len(data.rejected)
    normalizer = float(n_c if paired else n_c + n_r)
    kwargs = dict(loss_kwargs)
    if loss == "kto":
        kwargs.setdefault("kl_ref", 0.0)
    totals: dict[str, float] = {}
    steps = max(n_c, n_r)
    nll_tokens = None
    for start in range(0, steps, micro_batch_size):
        sl = slice(start, start + micro_batch_size)
        c_idx = list(range(n_c))[sl]
        r_idx = list(range(n_r))[sl]
        pol_c, len_c = sequence_logps(model, tokenizer, [data.prompts[i] for i in c_idx],
                                      [data.chosen[i] for i in c_idx], micro_batch_size, grad=True, forward=forward)
        pol_r, len_r = sequence_logps(model, tokenizer, [rej_prompts[i] for i in r_idx],
                                      [data.rejected[i] for i in r_idx], micro_batch_size, grad=True, forward=forward)
        ref_c = ref_chosen[c_idx].to(device) if ref_chosen is not None else None
        ref_r = ref_rejected[r_idx].to(device) if ref_rejected is not None else None
        value, metrics = loss_inputs(loss, pol_c, pol_r, ref_c, ref_r, len_c, len_r, kwargs, normalizer)
        if nll_weight > 0 and len(c_idx):
            if nll_tokens is None:
                nll_tokens = float(sum(_token_count(tokenizer, c) for c in data.chosen))
            value = value - nll_weight * pol_c.sum() / nll_tokens
        value.backward()
        share = (len(c_idx) if paired else len(c_idx) + len(r_idx)) / max(normalizer, 1.0)
        for k, v in metrics.items():
            totals[k] = totals.get(k, 0.0) + float(v) * (1.0 if k == "loss" else share)
    grad_norm, stepped = clip_and_step(model, optimizer, scheduler, max_grad_norm)
    return {**totals, "grad_norm": grad_norm, "skipped": float(not stepped), "pairs": float(n_c)}


def _token_count(tokenizer, completion: str) -> int:
    return len(tokenizer(completion, add_special_tokens=False)["input_ids"]) + 1  # + EOS


def implicit_reward(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's implicit reward beta * (log pi - log pi_ref), used to score with a DPO-trained verifier."""
    return beta * (policy_logps - ref_logps)

