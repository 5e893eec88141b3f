"""Code the distributed tests run in spawned gloo processes (a module, so torch.multiprocessing can import it)."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import torch

from reasonloop.config import load_config
from reasonloop.data.records import RolloutBatch
from reasonloop.recipes import rl
from toy_tasks import LetterFirstTask


def trainer_args(model_dir: str, out: Path, *extra: str) -> list[str]:
    return [f"model.name={model_dir}", f"output_dir={out}", "steps=1", "prompts_per_step=4", "group_size=4",
            "sampling.max_new_tokens=6", "eval_n=4", "eval_k=0", "eval_every=0", "save_every=0", "samples_every=0",
            "train_pool=32", "micro_batch_size=3", "optim.warmup_steps=0", "optim.lr=0.003", "threads=1", *extra]


# under FSDP every rank must make the same forward calls: no data-dependent prompt sharing or length buckets
FSDP_FORWARD = ("forward.share_prompts=false", "forward.bucket_lengths=false")


def forward_for(strategy: str) -> tuple[str, ...]:
    return FSDP_FORWARD if strategy == "fsdp" else ()


def shard_of(data: rl.StepData, rank: int, world: int, split: tuple[int, ...] = ()) -> rl.StepData:
    """Rank `rank`'s rows of a prompt-major StepData (whole groups), as `TorchPlacement.shard` splits prompts;
    `split`: each rank's number of groups instead (ranks of unequal rows, as adaptive group sizes make them)."""
    counts = split or (len(data.group_sizes) // world,) * world
    first = sum(counts[:rank])
    groups = data.group_sizes[first : first + counts[rank]]
    start = sum(data.group_sizes[:first])
    rows = slice(start, start + sum(groups))
    batch = data.batch.rows(rows)
    return rl.StepData(batch.tokens, data.examples[rows], batch, data.rewards[rows],
                       {k: v[rows] for k, v in data.components.items()}, groups)


def repeats(extra: tuple[str, ...]) -> int:
    """Steps a comparison runs on the same batch: PRIME's implicit PRM equals the reference until its first
    update (every process reward 0), so its test compares the second step, whose rewards the PRM trained on
    every rank's rows gives."""
    return 2 if "process_reward=prime" in extra else 1


def one_step(trainer: rl.Trainer, data: rl.StepData | None, times: int = 1) -> tuple[dict, dict[str, torch.Tensor]]:
    """`trainer.step()` (`times` times) on `data` instead of a fresh rollout (None: its own rollout); returns the last step's metrics and the FULL gradient of
    every parameter (and the critic's) as the optimizer saw it (gathered from FSDP shards)."""
    if data is not None:
        trainer.collect = lambda: (data, {})
    grads: dict[str, torch.Tensor] = {}
    inner = trainer.optimizer.step

    def capture(*a, **k):
        critic = trainer.critic.named_parameters(prefix="critic") if trainer.critic is not None else []
        for name, p in [*trainer.model.named_parameters(), *critic]:
            if p.grad is not None:
                g = p.grad
                grads[name] = (g.full_tensor() if hasattr(g, "full_tensor") else g).detach().clone()
        return inner(*a, **k)

    trainer.optimizer.step = capture
    for _ in range(times):
        metrics, _ = trainer.step()
    return metrics, grads


class PerPromptSeeded:
    """A rollout engine that samples each prompt's group from a generator seeded by the prompt's text: the same
    completions whichever rank generates it and in whatever batch, so a whole step (rollout, dynamic
    sampling's refills, update) can be compared between one process and N ranks."""

    def __init__(self, inner, pad_id: int):
        self.inner, self.pad_id = inner, pad_id

    def generate(self, prompts, n, sampling, generator=None) -> RolloutBatch:
        return RolloutBatch.concat([self.inner.generate([p], n, sampling, torch.Generator().manual_seed(
            zlib.crc32(p.encode()))) for p in prompts], self.pad_id)

    def episodes(self, examples, n, sampling, generator=None, render=lambda s: s) -> RolloutBatch:
        """A multi-turn engine's episodes, each example's group seeded by its rendered prompt (the batch carries
        the episodes' returns, which the trainer reads)."""
        return RolloutBatch.concat([self.inner.episodes([ex], n, sampling, torch.Generator().manual_seed(
            zlib.crc32(render(ex.prompt).encode())), render) for ex in examples], self.pad_id)

    def metrics(self, *args):
        return self.inner.metrics(*args)

    def update_weights(self, model) -> None:
        self.inner.update_weights(model)


def seeded(trainer: rl.Trainer) -> rl.Trainer:
    trainer.engine = PerPromptSeeded(trainer.engine, trainer.tokenizer.pad_token_id)
    return trainer


def recorded(trainer: rl.Trainer) -> tuple[rl.Trainer, dict[str, list]]:
    """The trainer, with a log of every global prompt draw (the pool indices its sampler hands out, before the
    placement shards them) and of the padding passes its placement adds (FSDP2, ranks of unequal rows)."""
    log: dict[str, list] = {"draws": [], "padding": []}
    draw, pad = trainer.prompts.next, trainer.dist.micro_batch_padding

    def next_recorded(n):
        log["draws"].append(list(draw(n)))
        return log["draws"][-1]

    def pad_recorded(count):
        log["padding"].append(pad(count))
        return log["padding"][-1]

    trainer.prompts.next, trainer.dist.micro_batch_padding = next_recorded, pad_recorded
    return trainer, log


def _init(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def step_worker(rank: int, world: int, port: int, model_dir: str, out: str, data_file: str, strategy: str,
                extra: tuple[str, ...], split: tuple[int, ...] = ()) -> None:
    """One rank: build the trainer under torch.distributed, take its shard of the saved batch (`split`: see
    shard_of), step, and (rank 0) save the metrics, the gradients and every rank's padding passes."""
    _init(rank, world, port)
    rl.make_task = lambda spec, data_dir=None: LetterFirstTask()
    cfg = load_config(rl.Config, trainer_args(model_dir, Path(out) / "run", f"distributed.strategy={strategy}",
                                              "distributed.backend=torch", *forward_for(strategy), *extra))
    trainer, log = recorded(rl.Trainer(cfg))
    data = torch.load(data_file, weights_only=False)
    metrics, grads = one_step(trainer, shard_of(data, rank, world, split), repeats(extra))
    padding = trainer.dist.gather(log["padding"])
    if rank == 0:
        torch.save({"metrics": metrics, "grads": grads, "padding": padding}, Path(out) / "result.pt")
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


def full_step_worker(rank: int, world: int, port: int, model_dir: str, out: str, strategy: str,
                     extra: tuple[str, ...], steps: int) -> None:
    """One rank: `steps` whole steps (its own rollouts, PerPromptSeeded) under torch.distributed; rank 0 saves
    every step's metrics, the last step's gradients, and every rank's prompt sampler state, draws and padding."""
    _init(rank, world, port)
    rl.make_task = lambda spec, data_dir=None: LetterFirstTask()
    cfg = load_config(rl.Config, trainer_args(model_dir, Path(out) / "run", f"distributed.strategy={strategy}",
                                              "distributed.backend=torch", *forward_for(strategy), *extra))
    trainer, log = recorded(seeded(rl.Trainer(cfg)))
    history = [one_step(trainer, None) for _ in range(steps)]
    everyone = trainer.dist.gather({"prompts": trainer.prompts.state_dict(), **log})
    if rank == 0:
        torch.save({"metrics": [m for m, _ in history], "grads": history[-1][1],
                    "level_pass": trainer.state.level_pass, "ranks": everyone}, Path(out) / "result.pt")
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
