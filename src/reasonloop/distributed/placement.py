"""Where one RL step runs: a single process (`LocalPlacement`) or torchrun ranks (`TorchPlacement`).

The trainer (`recipes/rl.py`) runs the same step either way; it asks its placement at a few points
(one process | torch.distributed):

- `shard(prompts)`: all of them | rank r's contiguous 1/N of the step's global prompt list
- `first_groups(kept, n)`: the first n | dynamic sampling: the global batch's first n kept groups, redealt
  in equal shares
- `prepare(model)`: memory features | + ddp: a `DistributedDataParallel` wrapper for the update; fsdp:
  `fully_shard` per decoder layer and the root, plus a full copy the rollout engine samples from
- `prepare_trained(module, backbone)`: memory features on `backbone` | + ddp: replicated, its gradients
  all-reduced by `reduce_gradients`; fsdp: sharded as the policy is (the critic, PRIME's implicit PRM)
- `reduce_gradients(module)`: nothing | ddp: a prepared module's gradients summed over ranks
- `sum_over_ranks(values)`: as is | each float summed over ranks (global counts and sums)
- `normalizer(mask, ...)`: `step_normalizer(mask)` | the same from token / sequence counts all-reduced
- `before_micro_batch(last)`: nothing | gradients sync on the last micro-batch only
- `micro_batch_padding(count)`: 0 | fsdp: the passes this rank adds to make as many forward/backward calls as
  the rank with the most micro-batches (adaptive group sizes give ranks different row counts)
- `estimate(estimator, input)`: the estimator | on every rank's rows gathered (batch-wide statistics as one
  process has them), this rank's rows back
- `reduce_update(metrics)`: as is | loss summed over ranks, other update metrics token-weighted
- `reduce_step(metrics, rows)`: as is | means over ranks weighted by rows, maxima for */max and time/*
- `gather(obj)`: [obj] | every rank's obj, in rank order
- `sync_engine(engine)`: `engine.update_weights(model)` | fsdp: the full state dict gathered into the copy
- `restore_kept(model, kept)`: nothing (rank 0 loaded keep_best's step into its model) | fsdp: that step's weights
  from rank 0's copy broadcast into every rank's shards, so the final save keeps them
- `start_run(run)`: `run.start()` | rank 0 writes the run directory; the others log nothing
- checkpoints: train/checkpoint.py's format | torch.distributed.checkpoint (DCP) shards, any world size

Gradients are SUMMED over ranks (DDP's comm hook, FSDP2's divide factor 1): every rank's loss is
already divided by the global normaliser, so the sum is the single-process gradient of the same
global batch (algos/aggregation.py's invariance, extended across ranks).
"""

from __future__ import annotations

import copy
import logging
import os
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch

from reasonloop.algos.aggregation import check_mode, step_normalizer
from reasonloop.algos.estimators import AdvantageInput, AdvantageOutput, estimate
from reasonloop.config import ConfigError
from reasonloop.distributed.checkpoint import SHARDS
from reasonloop.distributed.config import DistributedConfig, MemoryConfig
from reasonloop.distributed.memory import apply_memory
from reasonloop.models.loading import save_model
from reasonloop.train.checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def make_placement(cfg: DistributedConfig, trainer_cfg: Any = None) -> "LocalPlacement":
    """The placement `cfg.backend` names (auto: torch.distributed under torchrun, else one process);
    `trainer_cfg` is checked for the settings a sharded step supports."""
    backend = cfg.backend
    memory = getattr(trainer_cfg, "memory", None) or MemoryConfig()
    if backend == "auto":
        backend = "torch" if launched_by_torchrun() else "none"
    if backend == "none" and cfg.strategy == "fsdp":
        log.warning("distributed.strategy=fsdp shards the model over torchrun ranks; this run is one process, which "
                    "trains the whole model (launch it with torchrun to shard it)")
    if memory.activation_checkpointing and trainer_cfg is not None and trainer_cfg.forward.share_prompts:
        raise ConfigError("memory.activation_checkpointing needs forward.share_prompts=false: HF turns the K/V cache "
                          "off under gradient checkpointing, and the shared-prompt forward reads the prompt from it")
    if backend == "torch":
        placement = TorchPlacement(cfg, memory)
        if trainer_cfg is not None:
            check_shardable(trainer_cfg, placement.world_size)
        return placement
    return LocalPlacement(memory)


def check_shardable(cfg: Any, world_size: int) -> None:
    """The RL settings whose step is the same on N ranks as on one: a ConfigError names any other."""
    problems = []
    if cfg.prompts_per_step % world_size:
        problems.append(f"prompts_per_step={cfg.prompts_per_step} is not a multiple of the world size {world_size}")
    if cfg.distributed.strategy == "fsdp" and cfg.model.load_in_4bit:
        problems.append("model.load_in_4bit under distributed.strategy=fsdp (FSDP2 cannot shard bitsandbytes' packed "
                        "4-bit weights): use distributed.strategy=ddp")
    if cfg.distributed.strategy == "fsdp" and (cfg.forward.share_prompts or cfg.forward.bucket_lengths):
        problems.append("forward.share_prompts / forward.bucket_lengths under distributed.strategy=fsdp (each forward "
                        "call all-gathers the shards, so every rank must make the same calls, whatever its data): "
                        "set forward.share_prompts=false forward.bucket_lengths=false")
    if cfg.distributed.strategy == "fsdp" and cfg.forward.logit_chunk:
        problems.append("forward.logit_chunk under distributed.strategy=fsdp (the chunks call the output layer outside "
                        "the model's forward, where FSDP2 keeps its weights sharded): use ddp, or logit_chunk=0")
    if problems and world_size > 1:
        raise ConfigError(f"torch.distributed training ({world_size} ranks) does not support: " + "; ".join(problems))


class LocalPlacement:
    """One process: every hook is the identity (the trainer's own single-process behaviour)."""

    rank = 0
    world_size = 1
    is_main = True

    def __init__(self, memory: MemoryConfig | None = None):
        self.memory = memory or MemoryConfig()

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return apply_memory(model, self.memory)

    def prepare_trained(self, module: torch.nn.Module, backbone: torch.nn.Module | None = None) -> torch.nn.Module:
        """A trained module beside the policy (the critic, PRIME's implicit PRM): memory features on its HF
        `backbone` (None: a bare head)."""
        if backbone is not None:
            apply_memory(backbone, self.memory)
        return module

    def reduce_gradients(self, module: torch.nn.Module) -> None:
        pass

    def sum_over_ranks(self, values: list[float]) -> list[float]:
        return list(values)

    def rollout_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def training_module(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def sampler_seed(self, seed: int) -> int:
        return seed

    def shard(self, items: list) -> list:
        return items

    def first_groups(self, kept: list, n: int) -> list:
        return kept[:n]

    def normalizer(self, mask: torch.Tensor, mode: str, max_len: int | None) -> float:
        return step_normalizer(mask, mode, max_len=max_len)

    def before_micro_batch(self, model: torch.nn.Module, last: bool) -> None:
        pass

    def micro_batch_padding(self, count: int) -> int:
        """Padding passes to add to a pass of `count` micro-batches: none in one process."""
        return 0

    def estimate(self, estimator: str, inp: AdvantageInput) -> AdvantageOutput:
        return estimate(estimator, inp)

    def reduce_update(self, metrics: dict[str, float], tokens: float) -> dict[str, float]:
        return metrics

    def reduce_step(self, metrics: dict[str, float], exclude: Any = (), rows: int = 1) -> dict[str, float]:
        return metrics

    def gather(self, obj: Any) -> list:
        """[every rank's `obj`] in rank order."""
        return [obj]

    def sync_engine(self, engine: Any, model: torch.nn.Module) -> None:
        engine.update_weights(model)

    def restore_kept(self, model: torch.nn.Module, kept: bool) -> None:
        """After rank 0 loaded keep_best's step into `rollout_model(model)` (`kept`): one process and ddp save that
        model as it is."""

    def start_run(self, run: Any) -> tuple[Any, Path]:
        return run, run.start()

    def save_checkpoint(self, run_dir: Path, step: int, model, optimizer, scheduler, state: dict,
                        generators: dict | None = None, modules: dict | None = None) -> Path:
        return save_checkpoint(run_dir, step, model, optimizer, scheduler, state, generators=generators,
                               modules=modules)

    def load_checkpoint(self, ckpt: Path, model, optimizer, scheduler, generators: dict | None = None,
                        modules: dict | None = None) -> dict[str, Any]:
        if (ckpt / SHARDS).is_dir():  # written by a torchrun run: resumable here at world size 1
            from reasonloop.distributed.checkpoint import load_sharded_checkpoint

            return load_sharded_checkpoint(ckpt, model, optimizer, scheduler, generators, modules, rank=0)
        return load_checkpoint(ckpt, model, optimizer, scheduler, generators=generators, modules=modules)

    def save_model(self, model: torch.nn.Module, tokenizer: Any, path: Path) -> None:
        save_model(model, tokenizer, path)

    def close(self) -> None:
        pass


class TorchPlacement(LocalPlacement):
    """torch.distributed ranks (torchrun): gloo on CPU, nccl (+ gloo for CPU tensors) on GPU; DDP or FSDP2
    (docs/scale.md)."""

    def __init__(self, cfg: DistributedConfig, memory: MemoryConfig | None = None):
        import torch.distributed as dist

        super().__init__(memory)
        self.cfg = cfg
        self.dist = dist
        if not dist.is_initialized():
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            # on GPU: nccl for CUDA tensors (DDP, FSDP2) and gloo for the CPU tensors of the counts and gathers
            # (sum_over_ranks, normalizer, gather), which nccl alone refuses
            dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        self._ddp: torch.nn.Module | None = None
        self._rollout: torch.nn.Module | None = None
        self._fsdp = cfg.strategy == "fsdp"
        if not self.is_main and os.environ.get("REASONLOOP_ALL_RANKS_PRINT", "") != "1":
            sys.stdout = open(os.devnull, "w")  # one console: rank 0's (errors still reach stderr)

    # -- the model ---------------------------------------------------------------------------------
    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self._fsdp:
            from torch.nn.parallel import DistributedDataParallel

            apply_memory(model, self.memory)
            device = next(model.parameters()).device
            self._ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                **_no_forward_buffer_sync())
            self._ddp.register_comm_hook(None, _sum_allreduce_hook)
            return model
        self._rollout = copy.deepcopy(model).eval().requires_grad_(False)
        apply_memory(model, self.memory, autocast=False)
        return self._shard(model)

    def prepare_trained(self, module: torch.nn.Module, backbone: torch.nn.Module | None = None) -> torch.nn.Module:
        """ddp: replicated like the policy (same initial weights on every rank), its gradients summed by
        `reduce_gradients` before the optimizer step (no DDP wrapper: a separate critic's unused lm_head
        would stall DDP's reducer); fsdp: sharded like the policy, per decoder layer and the root."""
        if backbone is not None:
            apply_memory(backbone, self.memory, autocast=not self._fsdp)
        return self._shard(module) if self._fsdp else module

    def _shard(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard

        policies: dict[str, Any] = {"offload_policy": CPUOffloadPolicy()} if self.cfg.cpu_offload else {}
        if self.memory.precision == "bf16":
            policies["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for layer in decoder_layers(model):
            fully_shard(layer, **policies)
        fully_shard(model, **policies)
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_gradient_divide_factor(1.0)  # sum, not mean: losses carry the global normaliser
                module.set_force_sum_reduction_for_comms(True)  # plain SUM collectives (gloo has no PREMUL_SUM)
        return model

    def reduce_gradients(self, module: torch.nn.Module) -> None:
        """ddp: sum a `prepare_trained` module's gradients over ranks, one flat all-reduce (fsdp's
        reduce-scatter already did)."""
        if self._fsdp:
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]  # the same parameters on every rank
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            self.dist.all_reduce(flat)
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    def sum_over_ranks(self, values: list[float]) -> list[float]:
        total = torch.tensor(values, dtype=torch.float64)
        self.dist.all_reduce(total)
        return total.tolist()

    def rollout_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return self._rollout if self._rollout is not None else model

    def training_module(self, model: torch.nn.Module) -> torch.nn.Module:
        return self._ddp if self._ddp is not None and model is self._ddp.module else model

    def sampler_seed(self, seed: int) -> int:
        return seed + 1_000_003 * self.rank  # rank 0 samples exactly as a single process would

    def before_micro_batch(self, model: torch.nn.Module, last: bool) -> None:
        if self._fsdp:
            model.set_requires_gradient_sync(last)
        elif self._ddp is not None and model is self._ddp.module:
            self._ddp.require_backward_grad_sync = last  # what DDP.no_sync() sets
        # (a replicated `prepare_trained` module syncs once, in reduce_gradients)

    def micro_batch_padding(self, count: int) -> int:
        """fsdp: every forward and backward call all-gathers the shards (and the last backward reduce-scatters),
        so every rank must make as many as the rank with the most micro-batches; with adaptive group sizes the
        ranks' row counts differ, and this rank pads its pass with max - count dropped 1-row passes (one
        all-reduce per pass). ddp needs none: each rank all-reduces once, on its own last micro-batch."""
        if not self._fsdp:
            return 0
        most = torch.tensor([count], dtype=torch.int64)
        self.dist.all_reduce(most, op=self.dist.ReduceOp.MAX)
        return int(most) - count

    def sync_engine(self, engine: Any, model: torch.nn.Module) -> None:
        if self._rollout is not None:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
            self._rollout.load_state_dict(full)
            engine.update_weights(self._rollout)
        else:
            engine.update_weights(model)

    def restore_kept(self, model: torch.nn.Module, kept: bool) -> None:
        """fsdp: rank 0 validated on its full rollout copy and loaded keep_best's step into it (`kept`, rank 0's
        word); every rank takes those weights into its shards (broadcast from rank 0), so the final save, which
        refreshes the copy from the shards, saves the kept step. Collective under fsdp: every rank calls it."""
        if self._rollout is None:
            return
        box = [kept]
        self.dist.broadcast_object_list(box, src=0)
        if box[0]:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(model, self._rollout.state_dict() if self.is_main else {},
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))

    # -- the step ----------------------------------------------------------------------------------
    def shard(self, items: list) -> list:
        """Rank r's contiguous share: items[n*r//N : n*(r+1)//N] (equal for the step's prompts, whose count
        is a multiple of N; a dynamic-sampling refill of n not a multiple of N leaves some ranks one fewer)."""
        n, w = len(items), self.world_size
        return items[n * self.rank // w : n * (self.rank + 1) // w]

    def first_groups(self, kept: list, n: int) -> list:
        """Dynamic sampling: the first `n` kept groups of the global batch (every rank's kept groups in rank
        order: the single-process order), redealt in equal contiguous shares. n is cut to a multiple of N
        so that every rank trains on the same number of rows (FSDP2 needs the same forward calls); only
        when refills ran out before n reached prompts_per_step can that drop up to N-1 groups (0: the
        caller trains on the originals)."""
        n -= n % self.world_size
        if n == 0:
            return []
        everyone = [grp for part in self.gather(kept) for grp in part][:n]
        return self.shard(everyone)

    def normalizer(self, mask: torch.Tensor, mode: str, max_len: int | None) -> float:
        """`step_normalizer` of the global step: the token and sequence counts summed over ranks."""
        check_mode(mode)
        counts = torch.tensor([float(mask.sum()), float((mask.sum(-1) > 0).sum())], dtype=torch.float64)
        self.dist.all_reduce(counts)
        tokens, n_seq = float(counts[0]), float(counts[1])
        return global_normalizer(tokens, n_seq, mode, max_len if max_len is not None else mask.shape[-1])

    def gather(self, obj: Any) -> list:
        out: list[Any] = [None] * self.world_size
        self.dist.all_gather_object(out, obj)
        return out

    def estimate(self, estimator: str, inp: AdvantageInput) -> AdvantageOutput:
        """The estimator on the GLOBAL batch: every rank's rows gathered in rank order (the single-process
        row order, prompts being sharded contiguously), each [N, T] tensor zero-padded to the widest rank's
        T. Batch-wide statistics (std_mode=batch, reward_norm=running, REINFORCE's batch mean, whitening)
        and the carried states are then the single process's on every rank; this rank's rows come back."""
        tensors = {f.name: getattr(inp, f.name) for f in fields(inp) if isinstance(getattr(inp, f.name), torch.Tensor)}
        parts = self.gather(({k: v.cpu() for k, v in tensors.items()}, inp.group_sizes))
        width = max(p["mask"].shape[1] for p, _ in parts)
        merged = {k: torch.cat([_pad_columns(p[k], width) for p, _ in parts]) for k in tensors}
        out = estimate(estimator, replace(inp, group_sizes=tuple(g for _, sizes in parts for g in sizes), **merged))
        start = sum(p["rewards"].shape[0] for p, _ in parts[: self.rank])
        rows, cols, device = inp.rewards.shape[0], inp.mask.shape[1], inp.mask.device
        mine = lambda t: None if t is None else t[start : start + rows, :cols].to(device)  # noqa: E731
        return replace(out, advantages=mine(out.advantages), returns=mine(out.returns))

    def reduce_update(self, metrics: dict[str, float], tokens: float) -> dict[str, float]:
        """'loss' summed (each rank holds its share of the globally normalised loss), every other update
        metric a token-weighted mean, as a single process computes them over the whole batch."""
        parts = self.gather((metrics, tokens))
        total = max(sum(t for _, t in parts), 1.0)
        keys = sorted({k for m, _ in parts for k in m})
        out = {}
        for k in keys:
            values = [(m[k], t) for m, t in parts if k in m]
            out[k] = sum(v for v, _ in values) if k == "loss" else sum(v * t for v, t in values) / total
        return out

    def reduce_step(self, metrics: dict[str, float], exclude: Any = (), rows: int = 1) -> dict[str, float]:
        """Rank-local step metrics made global: maxima for */max and time/*, sums for tokens_per_s, means
        weighted by each rank's `rows` for the rest (exact for per-row means, e.g. reward/mean, also when
        adaptive groups give ranks different row counts; reward/std is the mean of per-rank stds); keys in
        `exclude` are already global."""
        local = {k: v for k, v in metrics.items() if k not in exclude}
        parts = self.gather((local, rows))
        out = dict(metrics)
        for k in local:
            values = [(p[k], n) for p, n in parts if k in p]
            if k.endswith("/max") or k.startswith("time/"):
                out[k] = max(v for v, _ in values)
            elif k == "tokens_per_s":
                out[k] = sum(v for v, _ in values)
            else:
                out[k] = sum(v * n for v, n in values) / max(sum(n for _, n in values), 1)
        return out

    # -- the run directory -------------------------------------------------------------------------
    def start_run(self, run: Any) -> tuple[Any, Path]:
        """Rank 0 creates the run directory (after every rank has inspected it) and tells the others."""
        self.dist.barrier()
        box = [str(run.start())] if self.is_main else [None]
        self.dist.broadcast_object_list(box, src=0)
        if self.is_main:
            return run, Path(box[0])
        return FollowerRun(run, Path(box[0])), Path(box[0])

    def save_model(self, model: torch.nn.Module, tokenizer: Any, path: Path) -> None:
        if self._rollout is not None:  # fsdp: the rollout copy holds the full weights of the last sync
            self.sync_engine(_NoEngine(), model)
            model = self._rollout
        if self.is_main:
            save_model(model, tokenizer, path)
        self.dist.barrier()

    # -- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self, run_dir: Path, step: int, model, optimizer, scheduler, state: dict,
                        generators: dict | None = None, modules: dict | None = None) -> Path:
        from reasonloop.distributed.checkpoint import save_sharded_checkpoint

        return save_sharded_checkpoint(self, run_dir, step, model, optimizer, scheduler, state, generators, modules)

    def load_checkpoint(self, ckpt: Path, model, optimizer, scheduler, generators: dict | None = None,
                        modules: dict | None = None) -> dict[str, Any]:
        from reasonloop.distributed.checkpoint import load_sharded_checkpoint

        if not (ckpt / SHARDS).is_dir():
            if self._fsdp:
                raise ConfigError(f"{ckpt} is a single-process checkpoint; resume it with strategy=ddp or in one "
                                  "process (an fsdp run resumes torch.distributed.checkpoint shards)")
            return load_checkpoint(ckpt, model, optimizer, scheduler, generators=generators, modules=modules)
        return load_sharded_checkpoint(ckpt, model, optimizer, scheduler, generators, modules, rank=self.rank)

    def close(self) -> None:
        self.dist.barrier()


def global_normalizer(tokens: float, n_seq: float, mode: str, max_len: int) -> float:
    """`step_normalizer` from the step's total valid tokens and sequences (summed over ranks)."""
    if mode == "token_mean":
        return max(tokens, 1.0)
    if mode == "seq_mean_token_mean":
        return max(n_seq, 1.0)
    return max(n_seq, 1.0) * max_len


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated transformer blocks (FSDP2 shards each as its own unit), found by class name."""
    return [m for m in model.modules() if type(m).__name__.endswith(("DecoderLayer", "Block"))]


def _no_forward_buffer_sync() -> dict[str, bool]:
    """DDP keywords that turn off its buffer broadcast in forward (the buffers are still synced once, when DDP
    wraps the model). DDP broadcasts the buffers (a causal LM's are constants: rotary frequencies) in every
    forward call that follows a gradient-syncing one, and the number of calls is data-dependent here: a
    micro-batch may make 1 call or 2 (shared prompts) or one per length bucket, and under adaptive group sizes
    ranks make different numbers of micro-batches. Unpaired broadcasts deadlock the ranks (seen at 2 ranks of
    12 and 4 rows); without them the only DDP collective left is each rank's one gradient all-reduce per
    optimizer step, on its own last micro-batch. (`forward_sync_buffers` replaced `broadcast_buffers`.)"""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    params = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def _sum_allreduce_hook(process_group, bucket):
    """DDP comm hook: all-reduce SUM (DDP's default divides by the world size)."""
    import torch.distributed as dist

    group = process_group if process_group is not None else dist.group.WORLD
    fut = dist.all_reduce(bucket.buffer(), group=group, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


class _NoEngine:
    def update_weights(self, model) -> None:
        pass


class FollowerRun:
    """A non-zero rank's view of the run: the same directory, nothing written (rank 0 writes)."""

    def __init__(self, run: Any, directory: Path):
        self._run = run
        self.dir = directory
        self.resume_from = run.resume_from

    def log(self, step: int, metrics: dict) -> None:
        pass

    def write_json(self, name: str, obj: Any) -> Path:
        return self.dir / name

    def write_jsonl(self, name: str, rows: list, append: bool = False) -> Path:
        return self.dir / name

    def before_training(self, evaluate: Any, fresh: bool) -> Any:
        return evaluate()  # the trainer's evaluate: an empty table on a non-zero rank

    def close(self) -> None:
        pass


def _pad_columns(t: torch.Tensor, width: int) -> torch.Tensor:
    """A [N, T] tensor zero-padded on the right to T = width; [N] / [B] tensors as they are."""
    return t if t.dim() == 1 else torch.nn.functional.pad(t, (0, width - t.shape[1]))
