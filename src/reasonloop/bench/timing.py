"""Measuring tools shared by the benchmarks: peak memory, the machine's matmul rate, the time of a
call's matrix multiplies alone (a floor on its time), and a rollout engine that times another."""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from reasonloop.data.records import RolloutBatch
from reasonloop.rollout.engine import RolloutEngine, SamplingConfig


def _status_mb(field: str) -> float | None:
    """A `/proc/self/status` memory field (VmHWM, VmRSS) in MiB; None where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux: VmHWM from /proc (reset by exec; `ru_maxrss` is not: a subprocess would inherit the peak of
    the parent it was forked from). Elsewhere `ru_maxrss` (KiB on Linux, bytes on macOS).
    """
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def rss_mb() -> float:
    """Resident set size of this process now, in MiB (Linux; elsewhere the peak so far)."""
    now = _status_mb("VmRSS")
    return now if now is not None else peak_rss_mb()


def reset_peak_rss() -> bool:
    """Reset the peak `peak_rss_mb` reads to the current RSS (Linux: `5` into /proc/self/clear_refs),
    so a later reading is the peak of what ran in between. False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cuda_peak_mb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def sync() -> None:
    """Wait for queued GPU work (a no-op on CPU), so a timer reads finished work."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_gflops(n: int = 1024, reps: int = 10) -> float:
    """Best-of-`reps` fp32 rate of an n x n x n matmul on this device (the MFU denominator)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


GEMM_OPS = {"aten::mm": torch.mm, "aten::bmm": torch.bmm, "aten::addmm": torch.addmm}
ONEDNN_LINEAR = "mkldnn::_linear_pointwise"  # the compiled decode step's projections (prepacked weights)


@contextmanager
def _stderr_muted():
    """File descriptor 2 points at /dev/null inside (C++ code writes there, not through sys.stderr)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


@contextmanager
def profiled(**kwargs):
    """`torch.profiler.profile(**kwargs)`, without the `USDT: ... profiler_start/stop` lines that torch's C++
    profiler writes to stderr when it starts and stops (our commands own the console)."""
    from torch.profiler import profile

    prof = profile(**kwargs)
    with _stderr_muted():
        prof.__enter__()
    try:
        yield prof
    finally:
        with _stderr_muted():
            prof.__exit__(None, None, None)


def recorded_gemms(fn) -> list[tuple[str, list[list[int]], torch.dtype]]:
    """(op name, input shapes, dtype of the first input: float32 or bfloat16) of every matrix multiply `fn()`
    makes, in order (torch.profiler)."""
    from torch.profiler import ProfilerActivity

    with profiled(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return [(e.name, [list(shape) for shape in e.input_shapes if shape],
             torch.bfloat16 if e.input_dtypes[0] == "c10::BFloat16" else torch.float32) for e in prof.events()
            if e.name in GEMM_OPS or e.name == ONEDNN_LINEAR]


def _replay(name: str, shapes: list[list[int]], device: torch.device, pool: dict | None = None, distinct: int = 0,
            dtype: torch.dtype = torch.float32):
    """A call of op `name` on random tensors of `shapes` and `dtype`; oneDNN linears get a weight prepacked as the
    decode step's are, so the replay costs what the original call did. With `distinct` > 0 the tensors
    come from `pool`, at most `distinct` sets per op and shapes, used in turn (a long decode loop makes
    thousands of calls on the same few weights: one fresh copy per call would not fit in memory)."""
    if distinct:
        key = (name, tuple(map(tuple, shapes)), dtype)
        sets = pool.setdefault(key, {"calls": [], "next": 0})
        if len(sets["calls"]) < distinct:
            sets["calls"].append(_replay(name, shapes, device, dtype=dtype))
        call = sets["calls"][sets["next"] % distinct] if len(sets["calls"]) == distinct else sets["calls"][-1]
        sets["next"] += 1
        return call
    if name != ONEDNN_LINEAR:
        op, args = GEMM_OPS[name], [torch.randn(*shape, device=device, dtype=dtype) for shape in shapes]
        return lambda: op(*args)
    mats = [torch.randn(*shape, dtype=dtype) for shape in shapes if len(shape) == 2]  # X, [residual,] W; bias 1-D
    bias = next((torch.randn(*shape, dtype=dtype) for shape in shapes if len(shape) == 1), None)
    x, w = mats[0], torch.ops.mkldnn._reorder_linear_weight(mats[-1], mats[0].shape[0])
    if len(mats) == 3:
        return lambda: torch.ops.mkldnn._linear_pointwise.binary(x, mats[1], w, bias, "add")
    return lambda: torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")


def gemm_replay_seconds(fn, reps: int, device: torch.device, distinct: int = 0) -> float:
    """Median time of `fn`'s matrix multiplies alone, replayed back to back on random tensors of the
    recorded shapes. Time outside them is all a faster implementation could still remove, so
    `call time / this` bounds its speed-up. `distinct` > 0: at most that many tensor sets per shape,
    used in turn (pass the model's layer count: each layer's weights are distinct, as in the call)."""
    pool: dict = {}
    calls = [_replay(name, shapes, device, pool, distinct, dtype) for name, shapes, dtype in recorded_gemms(fn)]
    times = []
    for _ in range(reps + 1):
        sync()
        t = time.perf_counter()
        for call in calls:
            call()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


class TimedEngine:
    """A `RolloutEngine` that passes every call to `inner` and adds up the seconds spent in `generate`
    and the completion tokens it produced since the last `reset()`.

    A trainer takes it as its injected engine; `inner` may be set after the trainer is built, since
    the engine it wraps samples from the trainer's own model (see `bench.grpo.timed_trainer`)."""

    def __init__(self, inner: RolloutEngine | None = None):
        self.inner = inner
        self.seconds = 0.0
        self.tokens = 0

    def reset(self) -> None:
        self.seconds, self.tokens = 0.0, 0

    def generate(self, prompts: list[str], n: int, sampling: SamplingConfig,
                 generator: torch.Generator | None = None) -> RolloutBatch:
        if self.inner is None:
            raise RuntimeError("TimedEngine has no engine to time yet")
        t = time.perf_counter()
        batch = self.inner.generate(prompts, n, sampling, generator)
        self.seconds += time.perf_counter() - t
        self.tokens += int(batch.completion_mask.sum())
        return batch

    def update_weights(self, model: torch.nn.Module) -> None:
        if self.inner is not None:
            self.inner.update_weights(model)


def logprob_gap(model, batch: RolloutBatch, temperature: float) -> dict[str, float]:
    """How far an engine's sampled log-probs are from `model`'s own forward on the same tokens: mean and max
    |difference| per token, and the range of the importance ratios pi_model / pi_engine that `tis_cap` clips."""
    from reasonloop.models.forward import policy_forward

    device = next(model.parameters()).device
    with torch.no_grad():
        lp = policy_forward(model, batch.tokens.to(device), temperature).logprobs.float()
    mask = batch.completion_mask.to(device).bool()
    diff = (lp - batch.logprobs.to(device).float())[mask]
    ratio = diff.exp()
    return {"mean_abs_gap": float(diff.abs().mean()), "max_abs_gap": float(diff.abs().max()),
            "min_ratio": float(ratio.min()), "max_ratio": float(ratio.max())}
