"""Reward models: any `AutoModelForSequenceClassification` checkpoint scoring (prompt, completion).

The text scored is the chat-formatted conversation when the tokenizer has a chat template (how
Skywork/ArmoRM-style RMs were trained), else `prompt + completion`. Long inputs are truncated from
the left so the end of the completion, where the verdict lives, is always seen.

Score: the single logit for a 1-label head (Bradley-Terry RMs); for a k-label classifier the
probability of `positive_label` (default the last label).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch


@dataclass
class RewardModel:
    model: Any  # a PreTrainedModel for sequence classification
    tokenizer: Any
    batch_size: int = 8
    max_length: int = 2048
    positive_label: int = -1

    @classmethod
    def from_pretrained(cls, path: str, device: str = "cpu", dtype: torch.dtype | None = None, **kwargs: Any) -> "RewardModel":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.truncation_side = "left"
        # the score is read at each row's last real token; right padding keeps every row's positions
        # the same as unpadded (left padding would shift them for models called without position ids)
        tokenizer.padding_side = "right"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).to(device).eval()
        if model.config.pad_token_id is None:  # needed to find each row's last real token
            model.config.pad_token_id = tokenizer.pad_token_id
        return cls(model=model, tokenizer=tokenizer, **kwargs)

    def format(self, prompt: str, completion: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
            return self.tokenizer.apply_chat_template(chat, tokenize=False)
        return prompt + completion

    def scores(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        """[n] scores of one batch, with gradients (training a reward model); `score` is the batched,
        gradient-free reading of the same numbers."""
        texts = [self.format(p, c) for p, c in zip(prompts, completions, strict=True)]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
        logits = self.model(**batch.to(self.model.device)).logits.float()  # [n, num_labels]
        return logits[:, 0] if logits.shape[-1] == 1 else logits.softmax(-1)[:, self.positive_label]

    @torch.no_grad()
    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        out: list[float] = []
        for i in range(0, len(prompts), self.batch_size):
            out.extend(self.scores(prompts[i : i + self.batch_size], completions[i : i + self.batch_size]).tolist())
        return out

    def as_reward_fn(self):
        """TRL-signature reward function over this model."""

        def reward_model(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
            return self.score(prompts, completions)

        return reward_model
