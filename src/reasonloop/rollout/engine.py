"""The rollout seam: the trainer only ever sees this interface (DESIGN.md, "Seams")."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

import torch

from reasonloop.config import require, require_choice
from reasonloop.data.records import RolloutBatch


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy decoding."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 disables."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p; 1 disables."""
    min_p: float = 0.0
    """Drop tokens whose probability is below min_p times the most likely token's; 0 disables."""
    max_new_tokens: int = 64
    """Completion length limit in tokens; longer completions are truncated (finish reason 'length')."""
    stop: list[str] = field(default_factory=list)
    """Extra stop strings (generation also stops at EOS); the stop string is kept in the text."""

    def __post_init__(self):
        require(self.temperature >= 0, "sampling.temperature must be >= 0")
        require(self.top_k >= 0, "sampling.top_k must be >= 0")
        require(0 < self.top_p <= 1, "sampling.top_p must be in (0, 1]")
        require(0 <= self.min_p < 1, "sampling.min_p must be in [0, 1)")
        require(self.max_new_tokens > 0, "sampling.max_new_tokens must be > 0")
        require(all(isinstance(s, str) and s for s in self.stop),
                "sampling.stop has an empty string, which would end every completion after one token; remove it")


@dataclass
class RolloutConfig:
    """Which engine generates the rollouts, and its switches (the trainer never sees which one it has).
    docs/engines.md says when to use which."""

    engine: str = "torch"
    """torch: the in-process sampler (shares the policy's weights) | openai: an OpenAI-compatible completions server
    (vLLM's, SGLang's, llama.cpp's, `reasonloop serve`; its weights are NOT updated: off-policy data and evaluation)
    | vllm: vLLM's offline engine in this process (GPU; weights pushed after every update) | tree: the torch sampler
    plus K/V prefix reuse for step-level search (beam, dvts, mcts continue partial solutions from their cached K/V
    instead of re-reading them; the same samples under a seed)."""
    static_cache: bool = True
    """torch engine: preallocated K/V cache and fused projections for Llama-family models (false: transformers'
    DynamicCache path; same samples)."""
    fused_decode: bool = True
    """torch engine: the compiled CPU decode step where it builds (false, or REASONLOOP_FUSED_DECODE=0: torch ops)."""
    decode_precision: str = "fp32"
    """torch/tree engine, compiled CPU decode step: fp32 | bf16 (its projections in bfloat16: the sampler ~1.3x faster at the
    embedded shape, ~2x on a 100M model, on a CPU with AVX-512 BF16 or AMX; refused on CPUs without them). The
    sampled log-probs then differ from the trainer's float32 ones (importance ratios 0.95-1.02 measured on the
    embedded model): `tis_cap` corrects for it. A GPU policy ignores it (use model.dtype=bfloat16). Held-out
    evaluation stays float32. docs/engines.md, "rollout.decode_precision=bf16"."""
    base_url: str = ""
    """openai engine: the server's API root, e.g. http://localhost:8000/v1."""
    api_key: str = ""
    """openai engine: the NAME of the environment variable that holds the API key (never the key itself); empty:
    no key (local servers)."""
    served_model: str = ""
    """openai engine: the model name the server knows; empty: the first model its /v1/models lists."""
    concurrency: int = 8
    """openai engine: requests in flight at once (one request per prompt, n samples each)."""
    timeout: float = 120.0
    """openai engine: seconds to wait for one response before retrying; a dead server fails within
    (retries + 1) x timeout."""
    retries: int = 2
    """openai engine: retries of a request after a connection error, a timeout or a 5xx answer."""
    gpu_memory_utilization: float = 0.3
    """vllm engine: fraction of the GPU's memory vLLM may take (weights + KV cache); colocated with training, leave
    the rest to the trainer."""
    sleep_mode: bool = True
    """vllm engine: free vLLM's weights and KV cache while the trainer updates (sleep level 2 after each generation,
    wake before the next; the weights are pushed on wake)."""
    vllm_device: str = ""
    """vllm engine: the GPU vLLM runs on; empty: the policy's (colocated); cuda:N: a separate GPU of this machine."""
    max_model_len: int = 0
    """vllm engine: the longest prompt + completion vLLM is sized for; 0: the model's context length."""

    def __post_init__(self):
        require_choice("rollout.engine", self.engine, ENGINES)
        require(self.concurrency >= 1, "rollout.concurrency must be >= 1")
        require(self.timeout > 0, "rollout.timeout must be > 0 seconds")
        require(self.retries >= 0, "rollout.retries must be >= 0")
        require(0 < self.gpu_memory_utilization <= 1, "rollout.gpu_memory_utilization must be in (0, 1]")
        require(self.max_model_len >= 0, "rollout.max_model_len must be >= 0")
        require_choice("rollout.decode_precision", self.decode_precision, ("fp32", "bf16"))
        require(self.decode_precision == "fp32" or self.engine in ("torch", "tree"),
                f"rollout.decode_precision=bf16 is the torch/tree engine's compiled CPU step; rollout.engine="
                f"{self.engine} samples at its own precision")
        require(self.vllm_device == "" or re.fullmatch(r"cuda(:\d+)?", self.vllm_device) is not None,
                f"rollout.vllm_device={self.vllm_device!r}: use empty (the policy's GPU) or cuda:N")
        if self.engine == "openai":
            require(bool(self.base_url.strip()), "rollout.engine=openai needs rollout.base_url (the server's API "
                    "root, e.g. http://localhost:8000/v1)")
            require(self.base_url.startswith(("http://", "https://")),
                    f"rollout.base_url={self.base_url!r} is not an http(s) URL")
            require(self.api_key == "" or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key) is not None,
                    "rollout.api_key names an environment variable (e.g. OPENAI_API_KEY), not the key itself")


ENGINES = ("torch", "openai", "vllm", "tree")


def build_engine(cfg: RolloutConfig, model: torch.nn.Module, tokenizer) -> "RolloutEngine":
    """The engine `cfg` names, sampling from `model` (openai: from the server, tokenised with `tokenizer`)."""
    if cfg.engine == "openai":
        from reasonloop.rollout.openai_engine import OpenAIEngine

        return OpenAIEngine(cfg, tokenizer)
    if cfg.engine == "vllm":
        from reasonloop.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(cfg, model, tokenizer)
    if cfg.engine == "tree":
        from reasonloop.rollout.prefix_cache import TreeEngine

        return TreeEngine(model, tokenizer, static_cache=cfg.static_cache, fused_decode=cfg.fused_decode,
                          decode_precision=cfg.decode_precision)
    from reasonloop.rollout.sampler import TorchSampler

    return TorchSampler(model, tokenizer, static_cache=cfg.static_cache, fused_decode=cfg.fused_decode,
                        decode_precision=cfg.decode_precision)


class RolloutEngine(Protocol):
    follows_policy: bool
    """Whether `update_weights` makes it sample from the trained weights (False: a served model that stays as it
    was; the trainer then evaluates its policy in process). Engines without the attribute follow the policy."""

    def generate(
        self, prompts: list[str], n: int, sampling: SamplingConfig, generator: torch.Generator | None = None
    ) -> RolloutBatch:
        """n samples for each prompt, prompt-major; prompts are already rendered (chat template applied)."""
        ...

    def update_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from `model`'s current weights."""
        ...
