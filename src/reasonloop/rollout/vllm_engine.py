"""`rollout.engine=vllm`: vLLM's offline engine in the trainer's process, on the policy's GPU or another.

Placement follows TRL's GRPOTrainer "colocate" mode and veRL's hybrid engine: `vllm.LLM` runs in
this process (`distributed_executor_backend="external_launcher"`, vLLM's V1 engine core in-process),
sized by `rollout.gpu_memory_utilization`. It starts from dummy weights (`load_format="dummy"`: no
second read of the checkpoint); the policy's weights are pushed into it before its first generation
and after every update, tensor to tensor on the GPU, without a disk round trip: vLLM's
`model.load_weights(iterable of (name, tensor))` through `LLM.apply_model` (or, on vLLM versions
without it, `llm_engine.model_executor.driver_worker.model_runner.model` as TRL reaches it). A LoRA
policy's adapted weights are merged out of place for the push (`policy_weights`). With `rollout.sleep_mode`
(vLLM's `enable_sleep_mode`), vLLM sleeps at level 2 after each generation (its weights and KV cache
freed for the update) and wakes before the next: weights first, then the push, then the KV cache.
`rollout.vllm_device=cuda:N` puts the engine on another GPU of the machine (vLLM's external launcher
picks the device from LOCAL_RANK, which is set to N); the push then crosses devices.

Each request is one prompt's token ids with `SamplingParams(n=G, logprobs=0, ...)`: logprobs=0 gives
the sampled token's log-prob, and `logprobs_mode="processed_logprobs"` (vLLM >= 0.10.2) makes it the
log-prob under the distribution vLLM sampled from (after temperature and, where set, top-k/top-p),
which is what truncated importance sampling (`tis_cap`) corrects against; the trainer recomputes its
own in float32. `include_stop_str_in_output=True` keeps stop strings in the text, as the torch
sampler does; token ids include the EOS vLLM stopped at.

Not run in this project's CI (no GPU, vLLM not installed): the mapping from vLLM's outputs, the
sampling parameters, the sleep/wake/push sequence and the LoRA merge are tested with fakes and real
CPU models; `scripts/gpu_check.sh` runs the real thing on one GPU (docs/engines.md).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, Iterator

import torch

from reasonloop.data.records import RolloutBatch
from reasonloop.errors import UserError
from reasonloop.rollout.engine import RolloutConfig, SamplingConfig
from reasonloop.rollout.openai_engine import CompletionRow, rollout_batch

log = logging.getLogger(__name__)


def _import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise UserError("rollout.engine=vllm needs vLLM and a CUDA GPU: pip install 'reasonloop[vllm]' "
                        f"({type(exc).__name__}: {exc}); on a CPU use rollout.engine=torch") from None
    return vllm


def sampling_params(params_cls: Any, sampling: SamplingConfig, n: int) -> Any:
    """vLLM `SamplingParams` for `sampling` and n samples per prompt (`params_cls` is vllm.SamplingParams)."""
    return params_cls(n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                      top_k=sampling.top_k if sampling.top_k > 0 else -1, min_p=sampling.min_p,
                      max_tokens=sampling.max_new_tokens, stop=list(sampling.stop) or None,
                      include_stop_str_in_output=True, logprobs=0, skip_special_tokens=True)


def completion_rows(outputs: list[Any], n: int, max_new_tokens: int) -> list[CompletionRow]:
    """vLLM `RequestOutput`s (one per prompt, each with n `CompletionOutput`s) -> rows, prompt-major."""
    rows = []
    for out in outputs:
        samples = sorted(out.outputs, key=lambda c: c.index)
        if len(samples) != n:
            raise RuntimeError(f"vLLM returned {len(samples)} samples for a prompt, expected n={n}")
        for c in samples:
            ids = list(c.token_ids)[:max_new_tokens]
            if c.logprobs is not None:  # one {token id: Logprob} per position; logprobs=0 holds the sampled one
                lps = [float(c.logprobs[t][tok].logprob) for t, tok in enumerate(ids)]
            else:
                lps = [0.0] * len(ids)
            finish = "stop" if c.finish_reason == "stop" and len(c.token_ids) <= max_new_tokens else "length"
            rows.append(CompletionRow(ids, lps, c.text, finish, "server", "server" if c.logprobs else "none"))
    return rows


def policy_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs in the Hugging Face checkpoint's naming, what vLLM's `load_weights` reads, lazily.

    Plain models yield their parameters themselves (no copy). A peft (LoRA) model yields each adapted
    weight merged out of place (base + B @ A * scaling, one layer at a time): merging in place and
    unmerging after would drift the frozen base weights by float rounding on every push. Wrapper
    prefixes and the LoRA factors are dropped.
    """
    adapted = {f"{name}.base_layer.weight": module for name, module in model.named_modules()
               if hasattr(module, "base_layer") and hasattr(module, "get_delta_weight") and hasattr(module, "lora_A")}
    for name, tensor in model.state_dict(keep_vars=False).items():
        if "lora_" in name or ".original_module." in name:
            continue
        value = tensor.detach()
        module = adapted.get(name)
        if module is not None and not getattr(module, "merged", False) and not getattr(module, "disable_adapters", False):
            with torch.no_grad():
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        value = value + module.get_delta_weight(adapter).to(value.dtype)
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        yield name.replace(".modules_to_save.default.", "."), value


def load_into(llm: Any, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
    """Push `weights` into the running vLLM engine's model, in place."""
    if hasattr(llm, "apply_model"):
        llm.apply_model(lambda m: m.load_weights(weights))  # in-process (external launcher): no pickling
    else:
        llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(weights)
    if hasattr(llm, "reset_prefix_cache"):
        llm.reset_prefix_cache()  # cached prefixes were computed with the old weights


class VLLMEngine:
    """`RolloutEngine` over vLLM's offline `LLM`; `update_weights` marks the weights stale, and they are
    pushed before the next generation (so a sleeping engine is woken once, not per update)."""

    def __init__(self, cfg: RolloutConfig, model: torch.nn.Module, tokenizer, llm: Any = None,
                 params_cls: Any = None):
        """`llm`, `params_cls`: a ready engine and SamplingParams class (tests pass fakes); built from `cfg` when None."""
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.sleep_mode = cfg.sleep_mode
        if llm is None:
            llm, params_cls = self._build(cfg, model)
        self.llm = llm
        self.params_cls = params_cls
        self.asleep = False
        self.stale = True  # the engine starts from dummy weights

    @staticmethod
    def _build(cfg: RolloutConfig, model: torch.nn.Module) -> tuple[Any, Any]:
        vllm = _import_vllm()
        if not torch.cuda.is_available():
            raise UserError("rollout.engine=vllm needs a CUDA GPU and none is visible; use rollout.engine=torch")
        device = torch.device(cfg.vllm_device) if cfg.vllm_device else next(model.parameters()).device
        if device.type != "cuda":
            raise UserError(f"rollout.engine=vllm runs on a GPU but the policy is on {device}; set model.device=cuda "
                            "(or rollout.vllm_device=cuda:N)")
        # vLLM's external launcher reads the torch.distributed variables; a single process is rank 0 of 1
        env = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
               "LOCAL_RANK": str(device.index or 0)}
        for key, value in env.items():
            if key == "LOCAL_RANK" and cfg.vllm_device:
                os.environ[key] = value
            else:
                os.environ.setdefault(key, value)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core in this process
        config = getattr(model, "config", None)
        path = getattr(config, "_name_or_path", "") or getattr(model, "name_or_path", "")
        if not path:
            raise UserError("rollout.engine=vllm: the policy has no model directory (config._name_or_path) for vLLM "
                            "to read its config and tokenizer from")
        dtype = next(model.parameters()).dtype
        try:
            llm = vllm.LLM(model=path, tokenizer=path, dtype=str(dtype).removeprefix("torch."),
                           load_format="dummy", gpu_memory_utilization=cfg.gpu_memory_utilization,
                           enable_sleep_mode=cfg.sleep_mode, distributed_executor_backend="external_launcher",
                           max_model_len=cfg.max_model_len or None, seed=torch.initial_seed() % 2**31,
                           logprobs_mode="processed_logprobs", enable_prefix_caching=True)
        except (ValueError, RuntimeError) as exc:  # vLLM's own messages: memory, unsupported architecture ...
            raise UserError(f"rollout.engine=vllm: vLLM could not start on {path!r}: {exc}") from None
        print(f"rollout: vllm engine {vllm.__version__} on {device} (gpu_memory_utilization="
              f"{cfg.gpu_memory_utilization}, sleep_mode={cfg.sleep_mode})")
        return llm, vllm.SamplingParams

    # -- RolloutEngine --------------------------------------------------------------------------------
    def update_weights(self, model: torch.nn.Module) -> None:
        self.model = model
        self.stale = True

    def generate(self, prompts: list[str], n: int, sampling: SamplingConfig,
                 generator: torch.Generator | None = None) -> RolloutBatch:
        """`generator` is not used: vLLM draws from its own seeded generators (the LLM's `seed`)."""
        prompt_ids = [list(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        self._ready()
        try:
            outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids],
                                        sampling_params=sampling_params(self.params_cls, sampling, n), use_tqdm=False)
        finally:
            if self.sleep_mode:
                self.llm.sleep(level=2)  # weights and KV cache freed for the update; pushed again on wake
                self.asleep = True
        rows = completion_rows(outputs, n, sampling.max_new_tokens)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        batch = rollout_batch(prompt_ids, rows, n, pad)
        return batch

    def _ready(self) -> None:
        """Wake the engine and push the policy's weights where needed: weights, push, then the KV cache."""
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
        if self.asleep or self.stale:
            load_into(self.llm, policy_weights(self.model))
            self.stale = False
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
