"""`rollout.engine=openai`: rollouts from any OpenAI-compatible *completions* server.

vLLM's (`vllm serve`), SGLang's, llama.cpp's (`llama-server`) and reasonloop's own (`reasonloop serve`)
answer `POST /v1/completions`. The engine sends one request per prompt, asking for `n` samples
(`n=`), the sampled tokens' log-probs (`logprobs=1`, `echo=false`) and, where the server knows the
vLLM extensions, the tokens as ids (`return_tokens_as_token_ids`) with the stop string kept in the
text (`include_stop_str_in_output`, as the torch sampler keeps it); a server that ignores `n` is
asked again, one sample a request. Prompts go out as token ids
from the policy's tokenizer, so the server conditions on exactly the tokens the trainer scores (no
second tokenisation, no BOS added by the server).

Each choice becomes one row of a `RolloutBatch` (`completion_row`):

- token ids: the server's own when it returns `token_id:N` tokens (vLLM with
  `return_tokens_as_token_ids`, `reasonloop serve`); otherwise the completion text re-tokenised with
  the policy's tokenizer, plus EOS when the server stopped without a stop string (it met EOS).
- sampled log-probs: the server's `token_logprobs`, when they are as many as the ids; otherwise the
  completion's total log-prob spread evenly over its tokens (a warning says so once). The trainer
  recomputes every log-prob it trains on; the sampled ones only feed truncated importance sampling
  (`tis_cap`) and search's likelihood scores. What a server's log-probs mean differs: vLLM's default
  is the raw model distribution (before temperature), `reasonloop serve`'s the temperature-scaled one
  (what the trainer computes).

The server's weights are never updated: `update_weights` warns once. Use this engine for off-policy
data, evaluation and search against a model served elsewhere; for on-policy RL the rollouts drift
from the policy as it learns (the trainer's `tis_cap` corrects a small mismatch, not a growing one).
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from reasonloop.data.records import RolloutBatch, left_padded
from reasonloop.errors import UserError
from reasonloop.rollout.engine import RolloutConfig, SamplingConfig

log = logging.getLogger(__name__)

TOKEN_ID_PREFIX = "token_id:"


class ServerError(UserError):
    """The completions server cannot be reached, or refuses the request; the message says which and why."""


def _import_openai():
    try:
        import openai
    except ImportError:
        raise UserError("rollout.engine=openai needs the openai client: pip install 'reasonloop[openai]' "
                        "(or pip install openai)") from None
    return openai


@dataclass
class CompletionRow:
    """One sample as the trainer needs it."""

    ids: list[int]  # sampled token ids, incl. the EOS the server stopped at
    logprobs: list[float]  # [len(ids)] log-prob of each sampled token
    text: str  # completion text (EOS excluded)
    finish_reason: str  # "stop" | "length"
    ids_from: str  # "server" (token ids returned) | "text" (re-tokenised with the policy's tokenizer)
    logprobs_from: str  # "server" | "spread" (the total spread evenly) | "none" (the server gave none: zeros)


def completion_row(choice: dict, tokenizer, stop: list[str], max_tokens: int) -> CompletionRow:
    """Map one `choices[i]` of a completions response (a dict) to token ids, log-probs and a finish reason."""
    text = choice.get("text") or ""
    finish = "stop" if choice.get("finish_reason") == "stop" else "length"  # None/"abort": it did not finish
    lp = choice.get("logprobs") or {}
    tokens = list(lp.get("tokens") or [])
    token_lps = [0.0 if v is None else float(v) for v in (lp.get("token_logprobs") or [])]
    if tokens and all(isinstance(t, str) and t.startswith(TOKEN_ID_PREFIX) for t in tokens):
        ids, ids_from = [int(t[len(TOKEN_ID_PREFIX):]) for t in tokens], "server"
    else:
        ids, ids_from = list(tokenizer(text, add_special_tokens=False)["input_ids"]), "text"
        eos = tokenizer.eos_token_id
        if finish == "stop" and eos is not None and not any(text.endswith(s) for s in stop):
            ids.append(eos)  # a "stop" with no stop string at the end: the server met EOS (not in the text)
    if len(token_lps) == len(ids):
        lps, lps_from = token_lps, "server"
    elif token_lps and ids:
        lps, lps_from = [sum(token_lps) / len(ids)] * len(ids), "spread"
    else:
        lps, lps_from = [0.0] * len(ids), "none"
    if len(ids) > max_tokens:  # a re-tokenisation longer than what the server sampled: keep the limit
        ids, lps, finish = ids[:max_tokens], lps[:max_tokens], "length"
    return CompletionRow(ids, lps, text, finish, ids_from, lps_from)


def rollout_batch(prompt_ids: list[list[int]], rows: list[CompletionRow], n: int, pad_id: int) -> RolloutBatch:
    """B prompts' token ids and their B*n rows (prompt-major) as a `RolloutBatch`."""
    p_ids, p_mask = left_padded(prompt_ids, pad_id)
    T = max(1, max((len(r.ids) for r in rows), default=1))
    c_ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    c_mask = torch.zeros((len(rows), T), dtype=torch.long)
    c_lps = torch.zeros((len(rows), T))
    for i, r in enumerate(rows):
        if r.ids:
            c_ids[i, :len(r.ids)] = torch.tensor(r.ids)
            c_mask[i, :len(r.ids)] = 1
            c_lps[i, :len(r.ids)] = torch.tensor(r.logprobs)
    return RolloutBatch(prompt_ids=p_ids.repeat_interleave(n, 0), prompt_mask=p_mask.repeat_interleave(n, 0),
                        completion_ids=c_ids, completion_mask=c_mask, logprobs=c_lps,
                        finish_reasons=[r.finish_reason for r in rows], completions=[r.text for r in rows],
                        group_size=n)


def request_body(prompt: list[int], n: int, sampling: SamplingConfig, seed: int | None) -> dict[str, Any]:
    """The keyword arguments of `client.completions.create` for one prompt (token ids) and n samples."""
    extra: dict[str, Any] = {"return_tokens_as_token_ids": True, "include_stop_str_in_output": True}
    if sampling.top_k > 0:
        extra["top_k"] = sampling.top_k
    if sampling.min_p > 0:
        extra["min_p"] = sampling.min_p
    body: dict[str, Any] = dict(prompt=prompt, n=n, max_tokens=sampling.max_new_tokens,
                                temperature=sampling.temperature, top_p=sampling.top_p, logprobs=1, echo=False,
                                extra_body=extra)
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if seed is not None:
        body["seed"] = seed
    return body


class OpenAIEngine:
    """`RolloutEngine` over an OpenAI-compatible completions server; the server's weights never change."""

    follows_policy = False  # so the trainer's held-out tables sample the trained policy in process

    def __init__(self, cfg: RolloutConfig, tokenizer):
        openai = _import_openai()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.base_url = cfg.base_url.rstrip("/")
        key = "EMPTY"  # local servers accept any key; the client insists on one
        if cfg.api_key:
            key = os.environ.get(cfg.api_key, "")
            if not key:
                raise UserError(f"rollout.api_key={cfg.api_key!r}: the environment variable {cfg.api_key} is not "
                                "set (rollout.api_key names the variable that holds the key)")
        self.client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=cfg.timeout,
                                    max_retries=cfg.retries)
        self.model_name = cfg.served_model or self._first_model()
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        print(f"rollout: openai engine, model {self.model_name!r} at {self.base_url} ({cfg.concurrency} requests in "
              "flight); the server's weights are not updated by training")

    # -- RolloutEngine --------------------------------------------------------------------------------
    def update_weights(self, model: torch.nn.Module) -> None:
        self._warn_once("weights", "rollout.engine=openai: the served model's weights are not updated; later "
                        "rollouts still come from the served weights (off-policy: fine for data and evaluation, "
                        "drifting for on-policy RL)")

    def generate(self, prompts: list[str], n: int, sampling: SamplingConfig,
                 generator: torch.Generator | None = None) -> RolloutBatch:
        prompt_ids = [list(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        seeds: list[int | None] = [None] * len(prompts)
        if generator is not None and sampling.temperature > 0:  # reproducible where the server honours `seed`
            seeds = torch.randint(0, 2**31 - 1, (len(prompts),), generator=generator).tolist()
        bodies = [request_body(ids, n, sampling, seed) for ids, seed in zip(prompt_ids, seeds)]
        pool = ThreadPoolExecutor(max_workers=min(self.cfg.concurrency, max(1, len(bodies))))
        try:
            responses = list(pool.map(self._samples, bodies))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # a failed request does not wait for the rest
        rows = []
        for choices in responses:
            rows += [completion_row(c, self.tokenizer, sampling.stop, sampling.max_new_tokens) for c in choices]
        if any(r.ids_from == "text" for r in rows):
            self._warn_once("ids", "rollout.engine=openai: the server returned no token ids; completions are "
                            "re-tokenised with the policy's tokenizer")
        if any(r.logprobs_from != "server" for r in rows):
            self._warn_once("logprobs", "rollout.engine=openai: the server's log-probs do not match the re-tokenised "
                            "completions; each completion's total is spread evenly over its tokens (tis_cap is "
                            "approximate)")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        return rollout_batch(prompt_ids, rows, n, pad)

    # -- the server ----------------------------------------------------------------------------------------
    def _samples(self, body: dict[str, Any]) -> list[dict]:
        """The n choices of one prompt's request, in order. A server that ignores `n` (llama.cpp's returns one
        choice) is asked again with n=1 for each missing sample (its seed shifted so they differ)."""
        n = body["n"]
        choices = sorted(self._complete(body)["choices"], key=lambda c: c.get("index", 0))
        if len(choices) < n:
            self._warn_once("n", f"rollout.engine=openai: the server returned {len(choices)} of n={n} samples; the "
                            "others are asked for one request each")
        while len(choices) < n:
            one = {**body, "n": 1, **({"seed": body["seed"] + len(choices)} if "seed" in body else {})}
            got = self._complete(one)["choices"]
            if not got:
                raise ServerError(f"rollout.base_url={self.base_url}: the server returned no completion")
            choices.append(got[0])
        return choices[:n]

    def _complete(self, body: dict[str, Any]) -> dict:
        openai = _import_openai()
        try:
            return self.client.completions.create(model=self.model_name, **body).model_dump()
        except openai.APIError as exc:
            raise self._server_error(exc) from None

    def _first_model(self) -> str:
        openai = _import_openai()
        try:
            models = [m.id for m in self.client.models.list()]
        except openai.APIError as exc:
            raise self._server_error(exc) from None
        if not models:
            raise ServerError(f"rollout.base_url={self.base_url}: the server lists no models; set rollout.served_model")
        return models[0]

    def _server_error(self, exc: Exception) -> ServerError:
        openai = _import_openai()
        cfg, where = self.cfg, f"rollout.base_url={self.base_url}"
        if isinstance(exc, openai.APITimeoutError):
            return ServerError(f"{where}: no answer within rollout.timeout={cfg.timeout:g}s ({_tries(cfg.retries)}); "
                               "the server is stuck or overloaded (raise rollout.timeout for long generations)")
        if isinstance(exc, openai.APIConnectionError):
            return ServerError(f"{where}: cannot connect ({_tries(cfg.retries)}: {exc.__cause__ or exc}); is the "
                               "server running? (`reasonloop serve model.name=...` or `vllm serve ...` starts one)")
        if isinstance(exc, openai.AuthenticationError):
            return ServerError(f"{where}: the server refused the API key (rollout.api_key={cfg.api_key!r})")
        if isinstance(exc, openai.NotFoundError):
            return ServerError(f"{where}: not found ({_message(exc)}); check rollout.served_model="
                               f"{self.model_name if hasattr(self, 'model_name') else cfg.served_model!r} and that "
                               "base_url ends with /v1")
        if isinstance(exc, openai.APIStatusError):
            return ServerError(f"{where}: the server answered {exc.status_code}: {_message(exc)}")
        return ServerError(f"{where}: {type(exc).__name__}: {exc}")

    def _warn_once(self, key: str, message: str) -> None:
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        log.warning(message)


def _tries(retries: int) -> str:
    return "1 attempt" if retries == 0 else f"{retries + 1} attempts"


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return " ".join(str(inner["message"]).split())[:500]
    return " ".join(str(exc).split())[:500]
