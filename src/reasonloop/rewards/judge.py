"""LLM-as-judge rewards: pointwise scoring, pairwise comparison, ensembles, self-judging.

A generative judge is a `JudgeBackend` (text in, text out) plus a prompt template and a parser:

- `HFJudgeBackend`: a local Hugging Face causal LM, greedy decoding. Passing the *policy's own*
  model and tokenizer gives self-judging (Yuan et al. 2024, "Self-Rewarding Language Models").
- `OpenAIBackend`: any OpenAI-compatible server (vLLM, llama.cpp, TGI, OpenAI) over
  `/v1/chat/completions` or `/v1/completions`, with only the standard library (urllib).

Templates: `ADDITIVE_5` (the additive 5-point prompt of Yuan et al. 2024) and `RUBRIC_10` (a 1-10
rubric, MT-Bench style `[[rating]]`), and `PAIRWISE` (MT-Bench pairwise, `[[A]]`/`[[B]]`/`[[C]]`).
Scores are normalised to [0, 1]. A reply that cannot be parsed, or a request that fails, yields
`None` (reward "not applicable", 0 in the sum) and is counted in `JudgeStats`; it never raises.
Pairwise judging asks both orders to cancel position bias; disagreeing orders count as a tie.

`self_judge(policy_model, tokenizer)` is the one self-judge (Yuan et al. 2024): the policy scores its
own samples, either by writing a verdict (`how="generate"`, a `ScoreJudge` over `HFJudgeBackend`) or,
with no generation at all, by its expected digit after a "Score 0-9" prompt (`how="digits"`, a
`DigitJudge`: one forward pass, no parse failures, scores in [0, 9]).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import torch

from reasonloop.data.records import left_padded


@dataclass(frozen=True)
class ScoreTemplate:
    text: str  # format fields: {prompt}, {response}
    low: int
    high: int


ADDITIVE_5 = ScoreTemplate(
    text=(
        "Review the user's question and the corresponding response using the additive 5-point scoring system "
        "described below. Points are accumulated based on the satisfaction of each criterion:\n"
        "- Add 1 point if the response is relevant and provides some information related to the user's inquiry.\n"
        "- Add another point if the response addresses a substantial portion of the user's question.\n"
        "- Award a third point if the response answers the basic elements of the user's question in a useful way.\n"
        "- Grant a fourth point if the response is clearly written, well-organized and helpful.\n"
        "- Bestow a fifth point for a response that is correct, complete and expertly reasoned.\n\n"
        "User: {prompt}\n<response>{response}</response>\n\n"
        "After examining the user's instruction and the response, briefly justify your total score, then "
        'conclude with the score using the format: "Score: <total points>"'
    ),
    low=0,
    high=5,
)

RUBRIC_10 = ScoreTemplate(
    text=(
        "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant "
        "to the user question below. Consider correctness, helpfulness, depth and clarity. Begin with a short "
        "explanation, then rate the response on a scale of 1 to 10 by strictly following this format: "
        '"Rating: [[5]]".\n\n[Question]\n{prompt}\n\n[The Start of Assistant\'s Answer]\n{response}\n'
        "[The End of Assistant's Answer]"
    ),
    low=1,
    high=10,
)

PAIRWISE = (
    "Please act as an impartial judge and evaluate the two responses provided by AI assistants to the user "
    "question below. Choose the response that answers the question better; do not let the order or the length "
    "of the responses influence you. After a short explanation, output your final verdict by strictly following "
    'this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.\n\n'
    "[User Question]\n{prompt}\n\n[The Start of Assistant A's Answer]\n{a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{b}\n[The End of Assistant B's Answer]"
)

SCORE_RE = re.compile(r"(?:score|rating)\s*[:=]?\s*\**\s*\[?\[?\s*(-?\d+(?:\.\d+)?)", re.I)
BRACKET_RE = re.compile(r"\[\[\s*(-?\d+(?:\.\d+)?)\s*\]\]")
VERDICT_RE = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def parse_score(reply: str, template: ScoreTemplate) -> float | None:
    """The last stated score, normalised to [0, 1]; None when absent or out of the template's range
    (an out-of-range number is a misread, not a clamp-able score)."""
    found = SCORE_RE.findall(reply) or BRACKET_RE.findall(reply)
    if not found:
        return None
    value = float(found[-1])
    if not template.low <= value <= template.high:
        return None
    return (value - template.low) / (template.high - template.low)


def parse_verdict(reply: str) -> str | None:
    """"A", "B" or "C" (tie) from the last `[[X]]`; None when the judge gave no verdict."""
    found = VERDICT_RE.findall(reply)
    return found[-1] if found else None


@dataclass
class JudgeStats:
    requests: int = 0
    transport_failures: int = 0  # the backend returned no text (HTTP error, timeout)
    parse_failures: int = 0  # text came back but held no usable score/verdict


class JudgeBackend(Protocol):
    def complete(self, prompts: list[str]) -> list[str | None]: ...


@dataclass
class HFJudgeBackend:
    """Greedy generation with a local causal LM (the policy itself for self-judging)."""

    model: Any
    tokenizer: Any
    max_new_tokens: int = 128
    batch_size: int = 8

    @classmethod
    def from_pretrained(cls, path: str, device: str = "cpu", **kwargs: Any) -> "HFJudgeBackend":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        return cls(AutoModelForCausalLM.from_pretrained(path).to(device).eval(), AutoTokenizer.from_pretrained(path), **kwargs)

    def _format(self, prompt: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        return prompt

    @torch.no_grad()
    def complete(self, prompts: list[str]) -> list[str | None]:
        was_training, padding_side = self.model.training, self.tokenizer.padding_side  # self-judging borrows
        self.model.eval()  # the policy's model and tokenizer mid-training: both are handed back as found
        self.tokenizer.padding_side = "left"  # generation continues from the last real token
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out: list[str | None] = []
        try:
            for i in range(0, len(prompts), self.batch_size):
                texts = [self._format(p) for p in prompts[i : i + self.batch_size]]
                batch = self.tokenizer(texts, return_tensors="pt", padding=True).to(self.model.device)
                generated = self.model.generate(
                    **batch, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad_id
                )
                new_tokens = generated[:, batch["input_ids"].shape[1] :]
                out.extend(self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        finally:
            self.model.train(was_training)
            self.tokenizer.padding_side = padding_side
        return out


@dataclass
class OpenAIBackend:
    """An OpenAI-compatible HTTP endpoint. `api="chat"` posts to /v1/chat/completions, `api="completions"`
    to /v1/completions. The key comes from `api_key` or $OPENAI_API_KEY (never logged)."""

    base_url: str  # e.g. http://127.0.0.1:8000 (with or without a trailing /v1)
    model: str
    api: str = "chat"
    max_tokens: int = 256
    temperature: float = 0.0
    timeout_s: float = 60.0
    api_key: str | None = None

    def _url(self) -> str:
        root = self.base_url.rstrip("/")
        root = root if root.endswith("/v1") else root + "/v1"
        return root + ("/chat/completions" if self.api == "chat" else "/completions")

    def _request(self, prompt: str) -> str | None:
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        headers = {"Content-Type": "application/json"}
        key = self.api_key or os.environ.get("OPENAI_API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self._url(), data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                choice = json.loads(resp.read())["choices"][0]
        except (urllib.error.URLError, TimeoutError, OSError, ValueError, KeyError, IndexError):
            return None
        text = choice["message"]["content"] if self.api == "chat" else choice.get("text")
        return text if isinstance(text, str) else None

    def complete(self, prompts: list[str]) -> list[str | None]:
        return [self._request(p) for p in prompts]


def _complete_counted(backend: JudgeBackend, prompts: list[str], stats: JudgeStats) -> list[str | None]:
    replies = backend.complete(prompts)
    stats.requests += len(prompts)
    stats.transport_failures += sum(r is None for r in replies)
    return replies


@dataclass
class ScoreJudge:
    """Pointwise judge: one score in [0, 1] per (prompt, response)."""

    backend: JudgeBackend
    template: ScoreTemplate = ADDITIVE_5
    stats: JudgeStats = field(default_factory=JudgeStats)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float | None]:
        queries = [self.template.text.format(prompt=p, response=r) for p, r in zip(prompts, responses, strict=True)]
        scores = []
        for reply in _complete_counted(self.backend, queries, self.stats):
            value = parse_score(reply, self.template) if reply is not None else None
            self.stats.parse_failures += reply is not None and value is None
            scores.append(value)
        return scores

    def as_reward_fn(self):
        def judge(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float | None]:
            return self.score(prompts, completions)

        return judge


@dataclass
class PairwiseJudge:
    """P(response A beats B) in {0, 0.5, 1} (or their average over both orders when `swap`)."""

    backend: JudgeBackend
    template: str = PAIRWISE
    swap: bool = True
    stats: JudgeStats = field(default_factory=JudgeStats)

    def _ask(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[float | None]:
        queries = [self.template.format(prompt=p, a=x, b=y) for p, x, y in zip(prompts, a, b, strict=True)]
        out = []
        for reply in _complete_counted(self.backend, queries, self.stats):
            verdict = parse_verdict(reply) if reply is not None else None
            self.stats.parse_failures += reply is not None and verdict is None
            out.append({"A": 1.0, "B": 0.0, "C": 0.5}.get(verdict) if verdict else None)
        return out

    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> list[float | None]:
        forward = self._ask(prompts, a, b)
        if not self.swap:
            return forward
        backward = [None if v is None else 1.0 - v for v in self._ask(prompts, b, a)]
        return [_mean_present([f, r]) for f, r in zip(forward, backward)]


def _mean_present(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


@dataclass
class EnsembleJudge:
    """Several pointwise judges combined per row (`mean` or `median` of those that answered)."""

    judges: list[ScoreJudge]
    how: str = "mean"

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float | None]:
        columns = [j.score(prompts, responses) for j in self.judges]
        combine = {"mean": statistics.fmean, "median": statistics.median}[self.how]
        rows = []
        for values in zip(*columns):
            present = [v for v in values if v is not None]
            rows.append(combine(present) if present else None)
        return rows

    def as_reward_fn(self):
        def judge_ensemble(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float | None]:
            return self.score(prompts, completions)

        return judge_ensemble


DIGIT_TEMPLATE = "{prompt}{completion}\nScore 0-9: "


def digit_token_ids(tokenizer: Any) -> list[int]:
    ids = [tokenizer(str(d), add_special_tokens=False)["input_ids"] for d in range(10)]
    if any(len(i) != 1 for i in ids):
        raise ValueError("self-judging needs each digit 0-9 to be a single token")
    return [i[0] for i in ids]


@dataclass
class DigitJudge:
    """Pointwise judge that reads instead of writing: the expected score E[d] under the model's
    next-token distribution restricted to the digit tokens 0-9, after `template.format(prompt=...,
    completion=...)`. One forward pass per micro-batch, no sampling, no parse failures; scores are in
    [0, 9] (not normalised: recipes compare them with gaps set on that scale)."""

    model: Any
    tokenizer: Any
    template: str = DIGIT_TEMPLATE
    micro_batch_size: int = 32
    stats: JudgeStats = field(default_factory=JudgeStats)

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        digits = torch.tensor(digit_token_ids(self.tokenizer))
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        out: list[float] = []
        texts = [self.template.format(prompt=p, completion=c) for p, c in zip(prompts, responses, strict=True)]
        try:
            for start in range(0, len(texts), self.micro_batch_size):
                chunk = texts[start : start + self.micro_batch_size]
                ids, mask = left_padded([self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in chunk],
                                        self.tokenizer.pad_token_id)
                ids, mask = ids.to(device), mask.to(device)
                position = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=False).logits[:, -1]
                probs = logits[:, digits.to(device)].float().softmax(-1)  # renormalised over the ten digits
                out += (probs * torch.arange(10, device=device, dtype=probs.dtype)).sum(-1).tolist()
        finally:
            self.model.train(was_training)
        self.stats.requests += len(texts)
        return out

    def as_reward_fn(self):
        def digit_judge(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
            return self.score(prompts, completions)

        return digit_judge


def self_judge(policy_model: Any, tokenizer: Any, template: ScoreTemplate | str | None = None, how: str = "generate",
               **kwargs: Any) -> ScoreJudge | DigitJudge:
    """The policy judging its own samples (self-rewarding); shares its weights, restores train mode.

    how="generate": it writes a verdict to `template` (a `ScoreTemplate`, ADDITIVE_5 by default), read
    greedily and parsed to [0, 1] or None; `kwargs` go to `HFJudgeBackend` (max_new_tokens, batch_size).
    how="digits": its expected digit after `template` (a format string with {prompt} and {completion},
    DIGIT_TEMPLATE by default), in [0, 9]; `kwargs` go to `DigitJudge` (micro_batch_size)."""
    if how == "generate":
        return ScoreJudge(HFJudgeBackend(policy_model, tokenizer, **kwargs), template or ADDITIVE_5)
    if how == "digits":
        return DigitJudge(policy_model, tokenizer, template or DIGIT_TEMPLATE, **kwargs)
    raise ValueError(f"self_judge: how must be 'generate' or 'digits', got {how!r}")
