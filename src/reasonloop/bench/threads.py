"""The compiled extensions serial vs on torch's thread pool, paired in one process (`python -m
reasonloop.bench.threads [--threads 1 2] [--reps 15] [--out threads.json]`).

Until session 10 `fused_decode.cpp` and `ternary_decode.cpp` were built without `-fopenmp`, so their
`at::parallel_for` splits (over rows, heads, output features) ran on one thread whatever `threads=` said;
they are now built with it and linked to the OpenMP runtime torch loaded (`fused.openmp_flags`). This
script builds a second copy of both sources without OpenMP, under renamed op namespaces (so both load in
one process), and times the two in turn at each thread count on the same inputs:

- the sampler on the embedded model and workload (8 arithmetic prompts x 8 samples, <= 64 new tokens,
  temperature 1): tokens/s, the tokens asserted equal;
- BitNet decode steps through the compiled step (the ternary kernel's projections) at the tiny model's
  shape (rows 1 and 8) and ~100M (rows 1), random weights: tokens/s, the logits asserted equal.

Ratios are medians of paired ratios (pool / serial: > 1 means the pool is faster). Two-thread figures
need both cores quiet (docs/speed.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from reasonloop.rollout import fused, ternary

SERIAL = "reasonloop_serial"


def serial_sources(workdir: Path) -> tuple[Path, Path]:
    """Copies of both C++ sources whose ops live in `<SERIAL>_decode` / `<SERIAL>_ternary` (the decode step
    calling the serial ternary op), so that they load beside the real ones."""
    decode = serial_decode_text(fused._SOURCE.read_text())
    kernel = ternary._SOURCE.read_text().replace("TORCH_LIBRARY(reasonloop_ternary,",
                                                 f"TORCH_LIBRARY({SERIAL}_ternary,")
    paths = workdir / "serial_decode.cpp", workdir / "serial_ternary.cpp"
    paths[0].write_text(decode)
    paths[1].write_text(kernel)
    return paths


def serial_decode_text(text: str) -> str:
    out = text.replace("TORCH_LIBRARY(reasonloop_decode,", f"TORCH_LIBRARY({SERIAL}_decode,")
    out = out.replace('"reasonloop_ternary::ternary_linear"', f'"{SERIAL}_ternary::ternary_linear"')
    if out.count(SERIAL) != 2:
        raise ValueError("fused_decode.cpp no longer has the op names this script renames")
    return out


def build_serial(workdir: Path) -> dict:
    """Build the serial copies (no -fopenmp); returns {'serial': op, 'pool': op} for the decode step."""
    decode, kernel = serial_sources(workdir)
    assert fused.available() and ternary.available(), "the compiled extensions did not build"
    ok = fused.build_extension(f"{SERIAL}_ternary", kernel, ternary._FLAGS, "REASONLOOP_TERNARY", "serial kernel",
                               lambda: hasattr(getattr(torch.ops, f"{SERIAL}_ternary"), "ternary_linear"),
                               "serial kernel unavailable (%s: %s)", openmp=False)
    ok = ok and fused.build_extension(f"{SERIAL}_decode", decode, fused._FLAGS, "REASONLOOP_FUSED_DECODE",
                                      "serial step", lambda: hasattr(getattr(torch.ops, f"{SERIAL}_decode"),
                                                                     "decode_step"),
                                      "serial step unavailable (%s: %s)", openmp=False)
    assert ok, "the serial copies did not build"
    serial = getattr(torch.ops, f"{SERIAL}_decode")
    assert serial.parallel_threads(8) == 1
    return {"serial": serial.decode_step, "pool": torch.ops.reasonloop_decode.decode_step}


class _Op:
    """Which build new FusedDecoders call."""

    def __init__(self, ops: dict):
        self.ops, self.current = ops, "pool"
        init = fused.FusedDecoder.__init__

        def patched(decoder, *a, **k):
            init(decoder, *a, **k)
            decoder.op = self.ops[self.current]

        fused.FusedDecoder.__init__ = patched


def paired(run, switch: _Op, reps: int) -> dict:
    """run(seed) -> (tokens, seconds, output tensor); the two builds in alternating order on the same seed;
    medians and the median paired ratio."""
    secs: dict[str, list[float]] = {"serial": [], "pool": []}
    rates: dict[str, list[float]] = {"serial": [], "pool": []}
    for name in ("serial", "pool"):  # warm-up
        switch.current = name
        run(0)
    for r in range(reps):
        outs = {}
        for name in (("serial", "pool") if r % 2 == 0 else ("pool", "serial")):
            switch.current = name
            tokens, s, outs[name] = run(r + 1)
            secs[name].append(s)
            rates[name].append(tokens / s)
        assert torch.equal(outs["serial"], outs["pool"]), "the two builds disagree"
    return {"serial_tokens_per_s": statistics.median(rates["serial"]),
            "pool_tokens_per_s": statistics.median(rates["pool"]),
            "pool_vs_serial": statistics.median(p / s for p, s in zip(rates["pool"], rates["serial"]))}


def sampler_run():
    from reasonloop.models.loading import ModelConfig, load_model, load_tokenizer, render_prompt
    from reasonloop.rollout.engine import SamplingConfig
    from reasonloop.rollout.sampler import TorchSampler
    from reasonloop.tasks import make_task

    model_dir = str(Path(fused.__file__).parent.parent / "assets" / "tiny-arith")
    tok = load_tokenizer(model_dir)
    model = load_model(ModelConfig(name=model_dir)).eval()
    prompts = [render_prompt(tok, e.prompt) for e in make_task("arithmetic").examples("train", 8, seed=1)]
    sampler, sampling = TorchSampler(model, tok), SamplingConfig(temperature=1.0, max_new_tokens=64)

    def run(seed: int):
        t = time.perf_counter()
        batch = sampler.generate(prompts, 8, sampling, torch.Generator().manual_seed(seed))
        return int(batch.completion_mask.sum()), time.perf_counter() - t, batch.completion_ids

    return run


def bitnet_run(size: str, rows: int, prompt_len: int = 16, steps: int = 32):
    from reasonloop.bench.bitnet import build
    from reasonloop.models import bitnet

    model = bitnet.to_bitnet(build(size))
    ids = torch.randint(3, model.config.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(0))

    def run(seed: int):  # greedy: the seed changes nothing
        with torch.inference_mode(), ternary.attached(model):
            dec = fused.FusedDecoder(model, 1, rows, prompt_len, steps)
            tokens = dec.prefill(ids, torch.ones_like(ids), repeat=rows).argmax(-1).repeat_interleave(rows)
            position, out = torch.full((rows,), prompt_len - 1), []
            t = time.perf_counter()
            for _ in range(steps - 1):
                position = position + 1
                logits = dec.step(tokens, position)
                out.append(logits)
                tokens = logits.argmax(-1)
            s = time.perf_counter() - t
        return rows * (steps - 1), s, torch.stack(out)

    return run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--out", default="threads.json")
    args = parser.parse_args(argv)
    from reasonloop.train.run import set_threads

    set_threads(args.threads[0])
    with tempfile.TemporaryDirectory() as tmp:
        switch = _Op(build_serial(Path(tmp)))
    workloads = {"sampler, embedded 8x8": sampler_run(), "bitnet tiny decode, 1 row": bitnet_run("tiny", 1),
                 "bitnet tiny decode, 8 rows": bitnet_run("tiny", 8),
                 "bitnet 100m decode, 1 row": bitnet_run("100m", 1)}
    results: dict = {"torch": torch.__version__, "parallel_info": torch.__config__.parallel_info().splitlines()[-1],
                     "rows": {}}
    print(f"{'workload':30} {'threads':>7} {'serial tok/s':>13} {'pool tok/s':>11} {'pool/serial':>11}")
    for threads in args.threads:
        set_threads(threads)
        for name, run in workloads.items():
            row = paired(run, switch, args.reps)
            results["rows"][f"{name} @ {threads}"] = {"threads": threads, **row}
            print(f"{name:30} {threads:>7} {row['serial_tokens_per_s']:>13.1f} {row['pool_tokens_per_s']:>11.1f} "
                  f"{row['pool_vs_serial']:>10.3f}x", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
