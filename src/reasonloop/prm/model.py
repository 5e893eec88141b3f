"""A process reward model: a 2-way token-classification head on a causal LM, read at each step's last token.

Encoding follows TRL's `PRMTrainer` (its `tokenize_row`): the prompt's tokens (after the tokenizer's BOS
when it has one), then each step tokenized on its own with `step_separator` appended; a step's verdict
sits on its LAST token (labels are -100 everywhere else). reasonloop's steps keep their delimiter
(`rewards.process.step_spans`), so the default separator is empty and the delimiter (`;`, `</think>`) is
the token that carries the verdict; for steps stored without one (PRM800K, TRL datasets) use
`step_separator="\\n"` as TRL does. Because every step is tokenized on its own and attention is causal,
a prefix of steps scores exactly as the same steps inside a longer completion: search can score partial
beams and a full solution consistently.

Score of a step: softmax(logits)[1], the probability that the step is correct. The model is any
`AutoModelForTokenClassification` (for the embedded tiny Llama, `LlamaForTokenClassification`),
initialised from a causal LM's weights with a fresh `score` head; classifier dropout is off (TRL
disables dropout in PRM training too). `save` writes `save_pretrained` + `prm.json` (delimiters,
separator), which `load_prm` reads back.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from reasonloop.errors import first_line
from reasonloop.models.loading import ModelError, check_model_source
from reasonloop.rewards.process import DEFAULT_DELIMITERS, step_spans

log = logging.getLogger(__name__)

PRM_CONFIG = "prm.json"
TRL_SEPARATOR = "\n"  # PRMConfig.step_separator's default: what a PRM without prm.json was trained with


def step_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-step loss: cross-entropy of the 2-way logits [M, 2] against the probability `targets` [M] that the
    step is correct, -(y log p1 + (1 - y) log p0). With y in {0, 1} it is TRL's token cross-entropy on hard
    labels; with soft y it is binary cross-entropy on the logit difference (p1 = sigmoid(l1 - l0)). [M]."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(targets * logp[:, 1] + (1 - targets) * logp[:, 0])


class ProcessRewardModel:
    """`rewards.process.StepScorer` over a token-classification model (see the module docstring).

    `tokens_read` counts every real (non-padding) token the model has processed, training forwards
    included, so search can report the PRM's share of compute.
    """

    def __init__(self, model: Any, tokenizer: Any, delimiters: Sequence[str] = DEFAULT_DELIMITERS,
                 step_separator: str = "", max_length: int | None = None, batch_size: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self.delimiters = tuple(delimiters)
        self.step_separator = step_separator
        self.max_length = max_length or getattr(model.config, "max_position_embeddings", None)
        self.batch_size = batch_size
        self.tokens_read = 0
        self._separator_ids = tokenizer.encode(step_separator, add_special_tokens=False) if step_separator else []

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- encoding ------------------------------------------------------------------------------------------
    def encode(self, prompt: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        """(token ids, index of each step's last token). TRL's layout: [BOS] prompt, then each step's own
        tokens + the separator's. A step with no tokens shares the previous position. Longer than
        `max_length`: the oldest tokens are dropped, and a step that ends before the window is read at the
        window's first token."""
        tok = self.tokenizer
        ids = tok(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        if tok.bos_token_id is not None:
            ids = [tok.bos_token_id] + ids
        ends = []
        for step in steps:
            ids += (tok(step, add_special_tokens=False)["input_ids"] if step else []) + self._separator_ids
            ends.append(len(ids) - 1)
        if not ids:
            raise ValueError("nothing to score: the prompt and every step are empty")
        ends = [max(e, 0) for e in ends]
        if self.max_length and len(ids) > self.max_length:
            cut = len(ids) - self.max_length
            ids, ends = ids[cut:], [max(e - cut, 0) for e in ends]
        return ids, ends

    def forward_steps(self, encoded: Sequence[tuple[list[int], list[int]]]) -> list[torch.Tensor]:
        """One right-padded forward of the rows: each row's 2-way logits at its step ends, [S_i, 2] (with
        gradients when grad is enabled). Right padding keeps every row's positions those of the row alone."""
        width = max(len(ids) for ids, _ in encoded)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, (ids, _) in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        self.tokens_read += int(mask.sum())
        logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)).logits
        return [logits[row, ends] for row, (_, ends) in enumerate(encoded)]

    # -- scoring -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def score_many(self, prompts: Sequence[str], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        """P(step correct) for every step of every (prompt, steps) row; one padded forward per `batch_size`
        rows (rows of similar length batched together). A row with no steps gets []."""
        if len(prompts) != len(steps):
            raise ValueError(f"{len(prompts)} prompts but {len(steps)} step lists")
        out: list[list[float]] = [[] for _ in prompts]
        live = [i for i, s in enumerate(steps) if len(s)]
        encoded = {i: self.encode(prompts[i], steps[i]) for i in live}
        live.sort(key=lambda i: len(encoded[i][0]))
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(live), self.batch_size):
                rows = live[start : start + self.batch_size]
                for i, logits in zip(rows, self.forward_steps([encoded[i] for i in rows])):
                    out[i] = logits.float().softmax(-1)[:, 1].tolist()
        finally:
            self.model.train(was_training)
        return out

    def score_steps(self, prompt: str, steps: list[str]) -> list[float]:
        """P(step correct) for each step (`rewards.process.StepScorer`); `steps` may be a prefix."""
        return self.score_many([prompt], [steps])[0]

    def split(self, completion: str) -> list[str]:
        """The completion's steps under this PRM's delimiters."""
        return [s.text for s in step_spans(completion, self.delimiters)]

    def score_completion(self, prompt: str, completion: str) -> list[float]:
        """`score_steps` of the completion split at this PRM's delimiters; `[-1]` is an ORM's verdict."""
        return self.score_steps(prompt, self.split(completion))

    # -- files ---------------------------------------------------------------------------------------------
    def save(self, path: str | Path, **info: Any) -> None:
        """save_pretrained (model + tokenizer) and prm.json (delimiters, separator, and `info`)."""
        path = Path(path)
        self.model.save_pretrained(str(path), safe_serialization=True)
        self.tokenizer.save_pretrained(str(path))
        meta = {"delimiters": list(self.delimiters), "step_separator": self.step_separator,
                "max_length": self.max_length, **info}
        (path / PRM_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")


def _load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def new_prm(base: str, delimiters: Sequence[str] = DEFAULT_DELIMITERS, step_separator: str = "",
            dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", max_length: int | None = None,
            seed: int = 0) -> ProcessRewardModel:
    """A PRM whose trunk is the causal LM at `base` (a model directory or hub id) and whose 2-way head is
    fresh (initialised under `seed`)."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    check_model_source(base, base)
    torch.manual_seed(seed)
    try:
        config = AutoConfig.from_pretrained(base, num_labels=2)
        config.classifier_dropout = 0.0
        model = AutoModelForTokenClassification.from_pretrained(base, config=config, dtype=dtype)
    except Exception as exc:  # no token-classification class for this architecture, broken files ...
        raise ModelError(f"{base!r}: cannot build a token-classification PRM on it ({type(exc).__name__}: "
                         f"{first_line(exc, 300)})") from None
    tokenizer = _load_tokenizer(base)
    model.config.pad_token_id = tokenizer.pad_token_id
    return ProcessRewardModel(model.to(device).eval(), tokenizer, delimiters, step_separator, max_length)


def load_prm(path: str | Path, device: str | torch.device = "cpu", batch_size: int = 32) -> ProcessRewardModel:
    """The PRM saved at `path` (reasonloop's `prm` writes `<run>/model`). A token-classification directory
    without prm.json (e.g. from TRL's PRMTrainer) loads with the default delimiters and TRL's "\\n" separator."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    path = str(path)
    check_model_source(path, path)
    meta_file = Path(path) / PRM_CONFIG
    meta = {"delimiters": list(DEFAULT_DELIMITERS), "step_separator": TRL_SEPARATOR}
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text())
        except ValueError as exc:
            raise ModelError(f"{meta_file} is not valid JSON ({first_line(exc)}); train the PRM again") from None
    else:
        log.warning("%s has no %s: scoring with the default delimiters %s and TRL's %r step separator",
                    path, PRM_CONFIG, list(DEFAULT_DELIMITERS), TRL_SEPARATOR)
    try:
        architectures = AutoConfig.from_pretrained(path).architectures or []
    except Exception as exc:
        raise ModelError(f"{path!r}: cannot read its config ({type(exc).__name__}: {first_line(exc, 300)})") from None
    if not any(a.endswith("ForTokenClassification") for a in architectures):
        raise ModelError(f"{path!r} is not a process reward model: its architecture is {architectures or 'unknown'}, "
                         "not a token-classification head (train one with `reasonloop prm`)")
    try:
        model = AutoModelForTokenClassification.from_pretrained(path)
    except Exception as exc:
        raise ModelError(f"{path!r} does not load as a process reward model ({type(exc).__name__}: "
                         f"{first_line(exc, 300)})") from None
    if model.config.num_labels != 2:
        raise ModelError(f"{path!r} has a {model.config.num_labels}-label head; a PRM has 2 (wrong, correct)")
    return ProcessRewardModel(model.to(device).eval(), _load_tokenizer(path), meta.get("delimiters", DEFAULT_DELIMITERS),
                              meta.get("step_separator", ""), meta.get("max_length"), batch_size)
