"""The Ray actor-learner (`reasonloop train distributed.backend=ray`): the same RL step, its pieces placed on actors.

    driver ── Learner actor(s) ── the ordinary `Trainer` (recipes/rl.py), with
                 │               - a `RemoteRolloutEngine` as its engine (the injected-engine seam), and
                 │               - its reward functions replaced by proxies that call reward actors
                 ├── RolloutWorker actors (each: the policy architecture + a RolloutEngine from `cfg.rollout`)
                 └── RewardWorker actors (each: the run's reward functions, cloudpickled once)

Weights travel as a CPU state dict through Ray's object store (`ray.put` once per learner update,
loaded by each worker before its next generation): no disk round trip.

- **sync** (`distributed.ray.mode=sync`): each generation waits for the learner's latest weights. With one
  rollout worker the learner's sampler RNG state travels with the request and comes back, so a run gives
  the single-process numbers exactly (same seed and batch: tests/distributed/test_ray.py). With N workers
  the prompts are split among them, each chunk sampled from a seed drawn from that RNG (same distribution,
  other samples).
- **async** (`mode=async`): as soon as step t's batch is handed to the learner, the generation of the next
  `max_staleness` steps' prompts (the learner's prompt sampler, peeked without advancing it) is launched
  with the weights of the moment, so it overlaps training of step t. A batch is at most `max_staleness`
  updates behind the learner; its behaviour log-probs (what the worker sampled with) drive the trainer's
  truncated importance-sampling correction (`tis_cap`, required). `rollout/staleness` is logged per step.

- **several learners** (`distributed.ray.learners=N`): N learner actors (`learner_gpus` each) form
  one torch.distributed group and train as N torchrun ranks do (`distributed.strategy=ddp|fsdp`,
  distributed/placement.py), each rank with its own rollout and reward workers sampling its shard of the
  step's prompts; rank 0 writes the run directory. The learners are one unit: one dies, all restart.
  In async mode each rank's engine looks ahead on its own shard (the same shard its next steps will
  take: every rank peeks the same global prompt list), so every rank's batch has the same staleness.

A dead rollout or reward worker (`ray.kill`, a crashed node) is replaced by a fresh actor (with the current
weights) and its request re-issued, up to `max_restarts` times per pool; the run goes on. A dead learner is
restarted by the driver and resumes from its latest checkpoint (`resume=auto`), up to `max_restarts` times.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import torch

from reasonloop.config import ConfigError
from reasonloop.data.records import RolloutBatch
from reasonloop.rewards.core import RewardSpec

log = logging.getLogger(__name__)


def _ray():
    try:
        import ray
    except ImportError as exc:  # an optional extra
        raise ConfigError("distributed.backend=ray needs Ray: pip install 'reasonloop[ray]' (ray>=2.40)") from exc
    return ray


def check_config(cfg: Any) -> None:
    rc = cfg.distributed.ray
    if cfg.agent.env:
        raise ConfigError(f"agent.env={cfg.agent.env!r}: the Ray rollout workers generate single-turn completions "
                          "only; run multi-turn episodes in one process or under torchrun (docs/scale.md)")
    if rc.mode == "async" and cfg.tis_cap <= 0:
        raise ConfigError("distributed.ray.mode=async trains on samples up to max_staleness updates old: set tis_cap "
                          "(e.g. tis_cap=2.0) so the trainer corrects them with truncated importance sampling")
    if rc.mode == "async" and cfg.dynamic_sampling:
        raise ConfigError("distributed.ray.mode=async does not support dynamic_sampling (its refills are not "
                          "known ahead of time)")


# -- the actors (plain classes; `ray.remote` wraps them at start) -----------------------------------------


class RolloutWorker:
    """Holds the policy architecture and a RolloutEngine; generates with the weights it was last sent."""

    def __init__(self, cfg: Any):
        from reasonloop.models.loading import load_policy
        from reasonloop.rollout.engine import build_engine
        from reasonloop.tasks import make_task
        from reasonloop.train.run import set_threads

        set_threads(cfg.threads)
        task = make_task(cfg.task, cfg.data_dir or None)
        self.tokenizer, self.model = load_policy(cfg.model, task)
        self.model.eval().requires_grad_(False)
        self.engine = build_engine(cfg.rollout, self.model, self.tokenizer)
        self.version = -1

    def set_weights(self, state: dict[str, torch.Tensor], version: int) -> int:
        self.model.load_state_dict(state)
        self.engine.update_weights(self.model)
        self.version = version
        return version

    def generate(self, prompts: list[str], n: int, sampling: Any, rng_state: torch.Tensor | None,
                 seed: int | None = None) -> tuple[RolloutBatch, torch.Tensor, int]:
        """(batch, the generator's state after sampling, the weights version sampled with)."""
        generator = torch.Generator()
        if rng_state is not None:
            generator.set_state(rng_state)
        elif seed is not None:
            generator.manual_seed(seed)
        batch = self.engine.generate(prompts, n, sampling, generator)
        return batch, generator.get_state(), self.version

    def pid(self) -> int:
        import os

        return os.getpid()


class RewardWorker:
    """Runs the run's reward functions (verifiers, sandboxed code tests, reward models) by name."""

    def __init__(self, fns: dict[str, Callable]):
        self.fns = fns

    def score(self, name: str, prompts: list[str], completions: list[str], columns: dict[str, list]) -> list:
        return list(self.fns[name](prompts=prompts, completions=completions, **columns))


# -- pools with replacement ------------------------------------------------------------------------------


class ActorPool:
    """N actors of one class; `call(i, method, ...)` re-creates actor i (and re-runs `on_new`) when it died."""

    def __init__(self, cls: Any, args: tuple, n: int, cpus: float, max_restarts: int, name: str):
        ray = _ray()
        self._remote = ray.remote(num_cpus=cpus)(cls)
        self.args, self.name, self.max_restarts = args, name, max_restarts
        self.restarts = 0
        self.actors = [self._start() for _ in range(n)]

    def _start(self):
        return self._remote.remote(*self.args)

    def replace(self, i: int, error: Exception) -> None:
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise RuntimeError(f"{self.name} worker {i} died ({type(error).__name__}) and the pool has used its "
                               f"{self.max_restarts} restarts") from error
        log.warning("%s worker %d died (%s): starting a replacement (%d/%d)", self.name, i, type(error).__name__,
                    self.restarts, self.max_restarts)
        self.actors[i] = self._start()

    def get(self, i: int, submit: Callable[[Any], Any]) -> Any:
        """`ray.get(submit(actor_i))`, replacing actor i and resubmitting while it dies."""
        ray = _ray()
        ref = submit(self.actors[i])
        while True:
            try:
                return ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError) as exc:
                self.replace(i, exc)
                ref = submit(self.actors[i])


# -- the engine the learner's Trainer sees ----------------------------------------------------------------


@dataclass
class _Pending:
    prompts: list[str]
    n: int
    worker: int
    ref: Any
    version: int
    submitted: float


class RemoteRolloutEngine:
    """A RolloutEngine whose generations run on rollout workers (sync, or async with look-ahead)."""

    def __init__(self, cfg: Any, rank: int = 0):
        ray = _ray()
        self.cfg, self.rc, self.rank = cfg, cfg.distributed.ray, rank
        self.version = 0
        self._model: torch.nn.Module | None = None
        self._weights_ref = None
        self._weights_version = -1
        self._worker_version: dict[int, int] = {}
        self.pool = ActorPool(RolloutWorker, (cfg,), self.rc.rollout_workers, self.rc.cpus_per_worker,
                              self.rc.max_restarts, "rollout")
        self.peek: Callable[[int], list[list[str]]] | None = None  # async: the next steps' rendered prompts
        self.queue: deque[_Pending] = deque()
        self.last_staleness = 0.0
        self.wait_s = 0.0  # learner time spent waiting for generation
        self._next = 0
        self._ray = ray

    # -- weights -------------------------------------------------------------------------------------
    def update_weights(self, model: torch.nn.Module) -> None:
        """Called by the trainer after each update: a new version, put in the object store on first use."""
        self._model = model
        self.version += 1

    def _ref(self):
        if self._weights_version != self.version:
            assert self._model is not None, "update_weights before the first generation"
            state = {k: v.detach().to("cpu", copy=True) for k, v in self._model.state_dict().items()}
            self._weights_ref = self._ray.put(state)
            self._weights_version = self.version
        return self._weights_ref

    def _submit(self, i: int, prompts: list[str], n: int, sampling: Any, rng_state, seed):
        def submit(actor):
            key = actor._actor_id.hex()
            if self._worker_version.get(key) != self.version:
                actor.set_weights.remote(self._ref(), self.version)  # ordered before the generate call
                self._worker_version[key] = self.version
            return actor.generate.remote(prompts, n, sampling, rng_state, seed)
        return submit

    def attach(self, model: torch.nn.Module, pad_token_id: int) -> None:
        self._model, self.pad_token_id = model, pad_token_id

    # -- generation ----------------------------------------------------------------------------------
    def generate(self, prompts: list[str], n: int, sampling: Any, generator: torch.Generator | None = None
                 ) -> RolloutBatch:
        t0 = time.time()
        training = sampling is self.cfg.sampling  # the trainer's rollouts (evaluation builds its own sampling)
        if self.rc.mode == "async" and self.peek is not None and training:
            batch = self._from_queue(prompts, n, sampling)
        else:
            batch = self._generate_now(prompts, n, sampling, generator)
            self.last_staleness = 0.0
        self.wait_s += time.time() - t0
        return batch

    def _generate_now(self, prompts, n, sampling, generator) -> RolloutBatch:
        workers = len(self.pool.actors)
        if workers == 1 or len(prompts) < 2:  # the learner's RNG travels: single-process numbers
            state = generator.get_state() if generator is not None else None
            batch, new_state, _ = self.pool.get(0, self._submit(0, prompts, n, sampling, state, None))
            if generator is not None:
                generator.set_state(new_state)
            return batch
        seeds = (torch.randint(0, 2**62, (workers,), generator=generator).tolist() if generator is not None
                 else [None] * workers)
        chunks = _split(prompts, workers)
        refs = [(i, self._submit(i, chunk, n, sampling, None, seeds[i])) for i, chunk in enumerate(chunks) if chunk]
        parts = [self.pool.get(i, submit)[0] for i, submit in refs]
        return RolloutBatch.concat(parts, self.pad_token_id)

    def _launch(self, prompts: list[str], n: int, sampling: Any) -> None:
        i = self._next % len(self.pool.actors)
        self._next += 1
        # learner ranks share the global RNG's seed: each rank's look-ahead is offset (rank 0: as one learner)
        seed = (int(torch.randint(0, 2**62, (1,)).item()) + 1_000_003 * self.rank) % 2**62
        submit = self._submit(i, prompts, n, sampling, None, seed)
        ref = submit(self.pool.actors[i])
        self.queue.append(_Pending(prompts, n, i, (submit, ref), self.version, time.time()))

    def _from_queue(self, prompts, n, sampling) -> RolloutBatch:
        """Step t's batch (launched up to max_staleness updates ago), then launch the steps after it."""
        if not self.queue or self.queue[0].prompts != prompts:
            self.queue.clear()  # a resume or a refill: start the look-ahead again from here
            self._launch(prompts, n, sampling)
        pending = self.queue.popleft()
        submit, ref = pending.ref
        try:
            batch, _, version = self._ray.get(ref)
        except (self._ray.exceptions.RayActorError, self._ray.exceptions.ActorDiedError) as exc:
            self.pool.replace(pending.worker, exc)
            batch, _, version = self.pool.get(pending.worker, submit)
        self.last_staleness = float(self.version - version)
        ahead = self.peek(self.rc.max_staleness)  # the sampler has already advanced past this step
        known = {tuple(p.prompts) for p in self.queue}
        for nxt in ahead:
            if tuple(nxt) not in known and len(self.queue) < self.rc.max_staleness:
                self._launch(nxt, n, sampling)
        return batch

    def metrics(self) -> dict[str, float]:
        return {"rollout/staleness": self.last_staleness, "rollout/weights_version": float(self.version),
                "rollout/worker_restarts": float(self.pool.restarts)}


def _split(items: list, k: int) -> list[list]:
    size = -(-len(items) // k)
    return [items[i * size : (i + 1) * size] for i in range(k)]


class RemoteReward:
    """A reward function that scores on the reward workers: rows split among them, dead ones replaced."""

    def __init__(self, pool: ActorPool, name: str):
        self.pool, self.name = pool, name

    def __call__(self, prompts: list[str], completions: list[str], **columns: list) -> list:
        k = len(self.pool.actors)
        chunks = _split(list(range(len(completions))), k)
        submits = []
        for i, rows in enumerate(chunks):
            if not rows:
                continue
            args = ([prompts[r] for r in rows], [completions[r] for r in rows],
                    {c: [v[r] for r in rows] for c, v in columns.items()})
            submits.append((i, lambda actor, args=args: actor.score.remote(self.name, *args)))
        refs = [(i, s, s(self.pool.actors[i])) for i, s in submits]  # all chunks in flight at once
        out: list = []
        ray = _ray()
        for i, submit, ref in refs:
            try:
                out.extend(ray.get(ref))
            except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError) as exc:
                self.pool.replace(i, exc)
                out.extend(self.pool.get(i, submit))
        return out


# -- the learner and the driver ---------------------------------------------------------------------------


class Learner:
    """The Trainer of recipes/rl.py, with remote rollouts and rewards. `setup()` builds it (learner rank `rank`
    of `world`: with world > 1 the learners form one torch.distributed group at `master`), `train()` runs it."""

    def __init__(self, cfg: Any, trainer_cls: Any, rank: int = 0, world: int = 1):
        self.cfg, self.trainer_cls, self.rank, self.world = cfg, trainer_cls, rank, world

    def address(self) -> tuple[str, int]:
        """This actor's node address and a free port on it: rank 0 hosts the process group's rendezvous."""
        import socket

        with socket.socket() as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        return _ray().util.get_node_ip_address(), port

    def setup(self, master: tuple[str, int] | None = None) -> None:
        cfg = self.cfg
        if self.world > 1:  # what torchrun would set; Ray shows each actor only its own GPU, hence LOCAL_RANK 0
            import os
            from dataclasses import replace

            os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world), LOCAL_RANK="0",
                              MASTER_ADDR=master[0], MASTER_PORT=str(master[1]))
            cfg = replace(cfg, distributed=replace(cfg.distributed, backend="torch"))
        engine = RemoteRolloutEngine(cfg, self.rank)
        self.trainer = trainer = self.trainer_cls(cfg, engine=engine)
        engine.attach(trainer.model, trainer.tokenizer.pad_token_id)
        rc = cfg.distributed.ray
        specs = {s.name: s.fn for s in [*trainer.reward_specs, *trainer.task_specs]}
        self.rewards = ActorPool(RewardWorker, (specs,), rc.reward_workers, rc.cpus_per_worker, rc.max_restarts,
                                 "reward")
        proxy = lambda s: RewardSpec(s.name, RemoteReward(self.rewards, s.name), s.weight)  # noqa: E731
        trainer.reward_specs = [proxy(s) for s in trainer.reward_specs]
        trainer.task_specs = [proxy(s) for s in trainer.task_specs]
        if rc.mode == "async":
            engine.peek = lambda k: peek_prompts(trainer, k)
        self.engine = engine
        run_log = trainer.run.log

        def log_with_rollout_metrics(step: int, metrics: dict) -> None:  # staleness and restarts, per step
            if "loss" in metrics:  # every learner rank comes here once per step: the ranks' figures combined
                ranks = trainer.dist.gather({**engine.metrics(), "reward_worker_restarts": float(self.rewards.restarts),
                                             "time/wait_for_rollout": engine.wait_s})
                metrics = {**metrics, **ranks[0], **{k: max(r[k] for r in ranks) for k in
                                                     ("rollout/staleness", "time/wait_for_rollout")},
                           **{k: sum(r[k] for r in ranks) for k in ("rollout/worker_restarts", "reward_worker_restarts")}}
                engine.wait_s = 0.0
            run_log(step, metrics)

        trainer.run.log = log_with_rollout_metrics

    def train(self) -> dict:
        return self.trainer.train()

    def rollout_pids(self) -> list[int]:
        return [_ray().get(a.pid.remote()) for a in self.engine.pool.actors]

    def actors(self) -> dict[str, list]:
        return {"rollout": list(self.engine.pool.actors), "reward": list(self.rewards.actors)}


def peek_prompts(trainer: Any, k: int) -> list[list[str]]:
    """The rendered prompts of the trainer's next `k` steps, without advancing its sampler."""
    saved = trainer.prompts.state_dict()
    try:
        return [[trainer.render(e.prompt) for e in trainer.next_prompts(trainer.cfg.prompts_per_step)]
                for _ in range(k)]
    finally:
        trainer.prompts.load_state_dict(saved)


class ActorLearner:
    """The driver: starts Ray and the learner actor, restarts a dead learner from its checkpoint."""

    def __init__(self, cfg: Any, trainer_cls: Any):
        check_config(cfg)
        ray = _ray()
        rc = cfg.distributed.ray
        if not ray.is_initialized():
            if rc.address:
                ray.init(address=rc.address, log_to_driver=False)
            else:
                ray.init(num_cpus=rc.num_cpus or None, include_dashboard=False, log_to_driver=False)
        self.cfg, self.trainer_cls, self.restarts = cfg, trainer_cls, 0
        # max_concurrency 2: the learner answers `actors()` (tests, monitoring) while `train()` runs
        self._remote = ray.remote(num_cpus=rc.learner_cpus, num_gpus=rc.learner_gpus, max_concurrency=2)(Learner)
        self.learner = None  # rank 0
        self.learners: list = []

    def start(self):
        """Start the learner ranks and build their trainers (all at once: they meet in one process group)."""
        ray, n = _ray(), self.cfg.distributed.ray.learners
        self.learners = [self._remote.remote(self.cfg, self.trainer_cls, rank, n) for rank in range(n)]
        master = ray.get(self.learners[0].address.remote()) if n > 1 else None
        ray.get([learner.setup.remote(master) for learner in self.learners])
        self.learner = self.learners[0]
        return self.learner

    def _train(self) -> dict:
        """Every rank's `train()`; rank 0's result. The first rank to die raises at once (the others would
        wait in a collective for it)."""
        ray = _ray()
        refs = [learner.train.remote() for learner in self.learners]
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done[0])
        return ray.get(refs[0])

    def run(self) -> dict:
        ray = _ray()
        while True:
            if self.learner is None:
                self.start()
            try:
                return self._train()
            except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError) as exc:
                self.restarts += 1
                if self.restarts > self.cfg.distributed.ray.max_restarts:
                    raise
                log.warning("the learner died (%s): restarting it from its latest checkpoint (%d/%d)",
                            type(exc).__name__, self.restarts, self.cfg.distributed.ray.max_restarts)
                print("train: the learner died; restarting it from its latest checkpoint")
                for learner in self.learners:  # the surviving ranks wait in a collective for the dead one
                    ray.kill(learner)
                self.learner = None  # the next ones resume output_dir from its latest checkpoint (resume=auto)


def run_actor_learner(cfg: Any, trainer_cls: Any) -> dict:
    """`reasonloop train distributed.backend=ray`: the Trainer class is passed in (recipes sit above this layer)."""
    if not cfg.output_dir:
        raise ConfigError("distributed.backend=ray needs output_dir= (a restarted learner resumes from it)")
    from reasonloop.train.evaluation import format_table

    rc = cfg.distributed.ray
    ranks = f"{rc.learners} learners ({cfg.distributed.strategy}), each with " if rc.learners > 1 else ""
    print(f"train: Ray actor-learner ({rc.mode}; {ranks}{rc.rollout_workers} rollout and {rc.reward_workers} reward "
          f"workers); the learner's log is {cfg.output_dir}/metrics.jsonl")
    result = ActorLearner(cfg, trainer_cls).run()
    if result.get("before"):  # the learner's console is its own (log_to_driver=False): the tables again, here
        print(f"before training:\n{format_table(result['before'])}")
    mode = cfg.distributed.ray.mode
    print(f"after {cfg.steps} steps ({result['preset']}, Ray {mode}):\n{format_table(result['after'])}")
    return result
