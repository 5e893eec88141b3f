"""An OpenAI-compatible completions server over the in-process torch sampler.

`reasonloop serve model.name=DIR port=8000` serves any reasonloop or Hugging Face model directory at
`http://HOST:PORT/v1`: `POST /v1/completions` and `GET /v1/models` (and `GET /health`). It is what
`rollout.engine=openai` talks to in the tests, and a way to put a trained checkpoint behind any tool
that speaks the OpenAI completions API. Small on purpose: the standard library's threading HTTP
server, one model, requests answered one at a time (each batches its prompts x n samples).

Honoured request fields: `prompt` (a string, a list of strings, a list of token ids or a list of
such lists), `n`, `max_tokens` (default 16, as OpenAI's), `temperature`, `top_p`, `stop`, `seed`,
`logprobs` (any integer: `tokens` and `token_logprobs` of the sampled tokens; `top_logprobs` is
null), and the vLLM extensions `top_k`, `min_p`, `return_tokens_as_token_ids` (tokens as
`token_id:N`) and `include_stop_str_in_output` (by default the stop string is cut from the text, as
OpenAI and vLLM do). Refused with a 400: `stream`, `echo`, `best_of` > n, `suffix`. Log-probs are
those of the temperature-scaled distribution before top-k/top-p (what the trainer computes). The
served weights are the directory's, fixed for the server's life.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from reasonloop.config import ConfigError, require
from reasonloop.errors import UserError
from reasonloop.models.loading import ModelConfig, context_length, load_policy
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.rollout.sampler import TorchSampler
from reasonloop.train.run import set_threads

log = logging.getLogger(__name__)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model to serve (embedded: the shipped tiny-arith)."""
    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0: every interface; there is no authentication)."""
    port: int = 8000
    """Port to listen on; 0 picks a free one (the URL is printed)."""
    served_model: str = ""
    """The model's name in the API (`model` of requests, /v1/models); empty: model.name."""
    max_n: int = 64
    """Largest `n` (samples per prompt) a request may ask for."""
    static_cache: bool = True
    """The torch sampler's preallocated K/V cache for Llama-family models (speed only; same samples)."""
    fused_decode: bool = True
    """The torch sampler's compiled CPU decode step where it builds (speed only)."""
    threads: int = 0
    """Torch threads; 0 keeps torch's choice."""

    def __post_init__(self):
        require(0 <= self.port <= 65535, "port must be in [0, 65535]")
        require(self.max_n >= 1, "max_n must be >= 1")
        require(self.threads >= 0, "threads must be >= 0")


class RequestError(Exception):
    """A bad request: answered with `status` and an OpenAI-style error body."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class CompletionService:
    """The model behind the HTTP layer: one completions request (a dict) -> the response (a dict)."""

    def __init__(self, sampler: TorchSampler, name: str, max_n: int = 64):
        self.sampler = sampler
        self.tokenizer = sampler.tokenizer
        self.name = name
        self.max_n = max_n
        self.context = context_length(sampler.model)
        self.lock = threading.Lock()  # one model: generate one request at a time

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.name, "object": "model", "created": 0, "owned_by": "reasonloop"}]}

    def complete(self, req: dict) -> dict:
        if not isinstance(req, dict):
            raise RequestError("the request body must be a JSON object")
        if req.get("model") not in (None, self.name):
            raise RequestError(f"The model `{req.get('model')}` does not exist; this server serves {self.name!r}", 404)
        for key in ("stream", "echo"):
            if req.get(key):
                raise RequestError(f"`{key}` is not supported by reasonloop serve")
        if req.get("suffix"):
            raise RequestError("`suffix` is not supported by reasonloop serve")
        n = _int(req, "n", 1)
        if not 1 <= n <= self.max_n:
            raise RequestError(f"`n` must be in [1, {self.max_n}], got {n}")
        if req.get("best_of") not in (None, n):
            raise RequestError("`best_of` other than n is not supported by reasonloop serve")
        prompts = self._prompt_ids(req.get("prompt"))
        sampling = self._sampling(req)
        longest = max(len(p) for p in prompts)
        if self.context is not None and longest + sampling.max_new_tokens > self.context:
            raise RequestError(f"This model's maximum context length is {self.context} tokens; the prompt has "
                               f"{longest} and max_tokens is {sampling.max_new_tokens}")
        seed = req.get("seed")
        if seed is not None and not isinstance(seed, int):
            raise RequestError("`seed` must be an integer")
        generator = torch.Generator().manual_seed(seed if seed is not None else random.randrange(2**62))
        with self.lock:
            batch = self.sampler.generate_ids(prompts, n, sampling, generator)
        as_ids = bool(req.get("return_tokens_as_token_ids"))
        keep_stop = bool(req.get("include_stop_str_in_output"))
        want_logprobs = req.get("logprobs") is not None
        choices, generated = [], 0
        for row in range(batch.num_rows):
            length = int(batch.completion_mask[row].sum())
            ids = batch.completion_ids[row, :length].tolist()
            generated += length
            text, finish = batch.completions[row], batch.finish_reasons[row]
            if finish == "stop" and not keep_stop:
                text = _cut_stop(text, sampling.stop)
            choice: dict[str, Any] = {"index": row, "text": text, "finish_reason": finish, "logprobs": None}
            if want_logprobs:
                tokens = [f"token_id:{t}" if as_ids else self.tokenizer.decode([t]) for t in ids]
                offsets, at = [], 0
                for t in tokens:
                    offsets.append(at)
                    at += 0 if as_ids else len(t)
                choice["logprobs"] = {"tokens": tokens, "token_logprobs": batch.logprobs[row, :length].tolist(),
                                      "top_logprobs": None, "text_offset": offsets}
            choices.append(choice)
        prompt_tokens = sum(len(p) for p in prompts)
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": generated,
                          "total_tokens": prompt_tokens + generated}}

    def _prompt_ids(self, prompt: Any) -> list[list[int]]:
        """The request's prompts as token ids: a string, strings, token ids, or lists of token ids."""
        if isinstance(prompt, str):
            prompt = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt:
            raise RequestError("`prompt` must be a string, a list of strings, a list of token ids or a list of such lists")
        out = []
        vocab = len(self.tokenizer)
        for p in prompt:
            if isinstance(p, str):
                ids = self.tokenizer(p, add_special_tokens=False)["input_ids"]
            elif isinstance(p, list) and all(isinstance(t, int) and 0 <= t < vocab for t in p):
                ids = p
            else:
                raise RequestError(f"`prompt`: {str(p)[:80]!r} is neither a string nor a list of token ids in "
                                   f"[0, {vocab})")
            if not ids:
                raise RequestError("`prompt` has an empty prompt")
            out.append(list(ids))
        return out

    @staticmethod
    def _sampling(req: dict) -> SamplingConfig:
        stop = req.get("stop")
        stop = [stop] if isinstance(stop, str) else list(stop or [])
        top_k = _int(req, "top_k", 0)
        try:
            return SamplingConfig(temperature=_float(req, "temperature", 1.0), top_p=_float(req, "top_p", 1.0),
                                  top_k=0 if top_k < 0 else top_k, min_p=_float(req, "min_p", 0.0),
                                  max_new_tokens=_int(req, "max_tokens", 16), stop=stop)
        except ConfigError as exc:
            raise RequestError(str(exc).replace("sampling.max_new_tokens", "max_tokens").replace("sampling.", "")) from None


def _int(req: dict, key: str, default: int) -> int:
    value = req.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"`{key}` must be an integer, got {value!r}")
    return value


def _float(req: dict, key: str, default: float) -> float:
    value = req.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"`{key}` must be a number, got {value!r}")
    return float(value)


def _cut_stop(text: str, stop: list[str]) -> str:
    """`text` without the stop string it ends with (the sampler keeps it; the API does not)."""
    for s in sorted(stop, key=len, reverse=True):
        if text.endswith(s):
            return text[: len(text) - len(s)]
    return text


def make_handler(service: CompletionService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the openai client reuses connections

        def do_GET(self):  # noqa: N802 (http.server's naming)
            path = self.path.split("?")[0].rstrip("/")
            if path in ("/v1/models", "/models"):
                self._send(200, service.models())
            elif path in ("/health", "/v1/health", ""):
                self._send(200, {"status": "ok", "model": service.name})
            else:
                self._send(404, _error(f"no route {self.path}; try POST /v1/completions or GET /v1/models"))

        def do_POST(self):  # noqa: N802
            path = self.path.split("?")[0].rstrip("/")
            try:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if path not in ("/v1/completions", "/completions"):
                    raise RequestError(f"no route POST {self.path}; this server answers POST /v1/completions "
                                       "(chat completions are not served)", 404)
                try:
                    req = json.loads(raw or b"{}")
                except json.JSONDecodeError as exc:
                    raise RequestError(f"the body is not JSON: {exc}") from None
                self._send(200, service.complete(req))
            except RequestError as exc:
                self._send(exc.status, _error(str(exc)))
            except Exception as exc:  # a bug: answer 500 instead of dropping the connection
                log.exception("serve: internal error")
                self._send(500, _error(f"internal error: {type(exc).__name__}: {exc}", "server_error"))

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):  # noqa: A002 (http.server's signature); quiet by default
            log.debug("serve: " + format, *args)

    return Handler


def _error(message: str, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def make_server(cfg: Config) -> tuple[ThreadingHTTPServer, CompletionService]:
    """Load the model and bind the port (not yet serving): the server and its service."""
    set_threads(cfg.threads)
    tokenizer, model = load_policy(cfg.model, None)
    model.eval().requires_grad_(False)
    sampler = TorchSampler(model, tokenizer, static_cache=cfg.static_cache, fused_decode=cfg.fused_decode)
    service = CompletionService(sampler, cfg.served_model or cfg.model.name, cfg.max_n)
    try:
        server = ThreadingHTTPServer((cfg.host, cfg.port), make_handler(service))
    except OSError as exc:  # in use, or an address this machine does not have
        raise UserError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}; choose another port= "
                        "(port=0 picks a free one) or host=") from None
    server.daemon_threads = True
    return server, service


def run(cfg: Config) -> dict:
    server, service = make_server(cfg)
    host, port = server.server_address[:2]
    url = f"http://{host}:{port}/v1"
    print(f"serve: {service.name!r} at {url} (POST /v1/completions, GET /v1/models; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("serve: stopped", flush=True)
    finally:
        server.server_close()
    return {"url": url, "model": service.name}
