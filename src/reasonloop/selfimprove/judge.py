"""Judges that score (prompt, completion) pairs for online preference learning.

- the task verifier (the default in recipes): exact, from the task's reward components;
- `self_judge_scores`: the policy judges its own samples (self-rewarding, Yuan et al. 2024). The
  judge prompt asks for a 0-9 score; instead of sampling a score we read the next-token
  distribution over the digit tokens and take its expectation (one forward pass, no parsing
  failures). On the tiny char-level model, which never saw a judge prompt, this signal is close to
  noise; the mechanism is what is exercised;
- a user hook: any `module:function` taking (prompts, completions) and returning floats.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from reasonloop.rewards.core import load_function
from reasonloop.models.forward import encode_pairs

DEFAULT_JUDGE_TEMPLATE = "{prompt}{completion}\nScore 0-9: "
JudgeFn = Callable[[list[str], list[str]], list[float]]


def digit_token_ids(tokenizer) -> list[int]:
    ids = [tokenizer(str(d), add_special_tokens=False)["input_ids"] for d in range(10)]
    if any(len(i) != 1 for i in ids):
        raise ValueError("self-judging needs each digit 0-9 to be a single token")
    return [i[0] for i in ids]


@torch.no_grad()
def self_judge_scores(model: torch.nn.Module, tokenizer, prompts: Sequence[str], completions: Sequence[str],
                      template: str = DEFAULT_JUDGE_TEMPLATE, micro_batch_size: int = 32) -> list[float]:
    """Expected score E[d] under the model's next-token distribution restricted to digits 0-9, after
    the judge prompt `template.format(prompt=..., completion=...)`."""
    digits = torch.tensor(digit_token_ids(tokenizer))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[float] = []
    texts = [template.format(prompt=p, completion=c) for p, c in zip(prompts, completions)]
    for start in range(0, len(texts), micro_batch_size):
        # the judge text is the "prompt"; encode_pairs' completion is a lone EOS we ignore
        batch = encode_pairs(tokenizer, texts[start : start + micro_batch_size], [""] * len(texts[start : start + micro_batch_size]))
        ids, mask = batch.prompt_ids.to(device), batch.prompt_mask.to(device)
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=False).logits[:, -1]
        probs = logits[:, digits.to(device)].float().softmax(-1)  # renormalised over the ten digits
        out += (probs * torch.arange(10, device=device, dtype=probs.dtype)).sum(-1).tolist()
    model.train(was_training)
    return out


def load_judge_hook(spec: str) -> JudgeFn:
    """'package.module:function' -> the function (`rewards.core.load_function`)."""
    return load_function(spec, "judge hook")
