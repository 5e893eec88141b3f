"""A compiled one-token decode step for CPU sampling (`fused_decode.cpp`), built on first use.

`FusedDecoder` has `kv_cache.StaticDecoder`'s interface (prefill / step / keep / storage) and its
prefill, but runs every decode step as one C++ call: the projections are oneDNN linears on weights
prepacked once (torch matmuls without oneDNN), the RMSNorms, RoPE, attention and SiLU are plain
loops, and the G samples of a prompt read that prompt's keys/values from one shared copy instead of
G repeated ones. Results match `StaticDecoder` within float rounding (tests/rollout/test_speed_equivalence.py),
not bit for bit. Design and measurements: docs/speed.md, "The compiled decode step".

A BitNet b1.58 model (models/bitnet.py) decodes through the same step: its projections are the ternary
kernel's packed codes (rollout/ternary.py; q|k|v and gate|up concatenated by rows with per-row scales,
SubLN weights alongside), computed by the kernel's op from inside the C++ step, so a BitNet policy also
decodes one call per token (tests/rollout/test_ternary.py; docs/bitnet.md).

The extension is compiled with torch's C++ extension loader (needs a C++ compiler and `ninja`; ~10 s
once per machine, then cached under torch's extensions directory). Where it cannot be built, or with
`REASONLOOP_FUSED_DECODE=0`, `available()` is False and the sampler keeps the pure-torch decoder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import platform
import re
import shutil
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from reasonloop.rollout import kv_cache

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("fused_decode.cpp")
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros"]
_state: dict[str, object] = {}
CHUNK = 16  # `W` in fused_decode.cpp: cache lengths are padded to whole chunks
# `Packed` keeps the prompt decoder's fused projection copies only for models up to this size: re-concatenating them
# was ~1.5% of a sampler call on the embedded model (8 MB), a negligible share on bigger ones, where holding the
# copies between calls would be memory the update cannot use (~270 MB on the 100M model)
KEEP_FUSED_MAX_BYTES = 64 * 2**20


def available() -> bool:
    """True when the compiled decode step can be used (building it on the first call)."""
    if "ok" not in _state:
        _state["ok"] = _build()
    return bool(_state["ok"])


def _build() -> bool:
    return build_extension("reasonloop_decode", _SOURCE, _FLAGS, "REASONLOOP_FUSED_DECODE", "the CPU decode step",
                           lambda: hasattr(torch.ops.reasonloop_decode, "decode_step"),
                           "compiled decode step unavailable (%s: %s); sampling with the torch decoder")


def build_extension(prefix: str, source: Path, flags: list[str], switch: str, what: str, loaded, unavailable: str,
                    openmp: bool = True) -> bool:
    """Build (or load from torch's cache) the C++ extension `source` as `extension_name(...)`: False when
    the environment variable `switch` is 0 or the build fails (no compiler, no ninja, read-only cache...),
    with the warning `unavailable` (given the error's type and first line); `loaded()` checks its ops.
    `openmp`: with `openmp_flags()`, so that its `at::parallel_for` runs on torch's thread pool (False: the
    serial build, bench/threads.py's baseline)."""
    if os.environ.get(switch, "1") == "0":
        return False
    try:
        from torch.utils.cpp_extension import load

        if shutil.which("ninja") is None:  # pip's ninja, in a virtualenv that is not activated
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        omp_cflags, omp_ldflags = openmp_flags() if openmp else ([], [])
        name = extension_name(prefix, source, flags + omp_cflags + omp_ldflags)
        with _build_guard(name) as build:
            if build is None or not any(build.glob("*.so")):  # not in torch's cache yet: a real build
                log.info("compiling %s (rollout/%s; ~10 s, once per machine and torch version)", what, source.name)
            load(name=name, sources=[str(source)], extra_cflags=flags + omp_cflags, extra_ldflags=omp_ldflags,
                 is_python_module=False, verbose=False)
        return loaded()
    except Exception as exc:
        log.warning(unavailable, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return False


def openmp_flags() -> tuple[list[str], list[str]]:
    """(compile flags, link flags) that put the extensions' `at::parallel_for` splits on torch's own intra-op
    pool: ([], []) unless torch's ATen parallel backend is OpenMP and the OpenMP runtime torch loaded is found.

    In an OpenMP build of torch, `at::parallel_for` is OpenMP pragmas inlined from ATen's headers: compiled
    without `-fopenmp` they vanish and every split runs serially whatever `torch.set_num_threads` says. With
    `-fopenmp` the extension calls GOMP_parallel; it is linked against the very runtime file torch loaded
    (torch/lib/libgomp.so.1 here, torch.libs/libgomp-<hash>.so.1 in PyPI wheels, libiomp5 in Intel builds),
    so the loader resolves it to the copy already in the process: one runtime and one thread pool, the one
    `torch.set_num_threads` sizes (at 1 thread `parallel_for` calls its body inline). `REASONLOOP_COMPILED_OPENMP=0`
    builds without it (the serial build; another cache name)."""
    if os.environ.get("REASONLOOP_COMPILED_OPENMP", "1") == "0":
        return [], []
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return [], []  # the native thread pool: parallel_for already calls into libtorch
    runtime = loaded_openmp_runtime()
    if runtime is None:
        return [], []
    return ["-fopenmp"], [str(runtime), f"-Wl,-rpath,{runtime.parent}"]


def loaded_openmp_runtime() -> Path | None:
    """The OpenMP runtime library mapped into this process (torch imported it), or None (no /proc, none mapped)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)  # address, perms, offset, device, inode[, path]
        path = fields[5] if len(fields) == 6 else ""
        if re.match(r"lib(gomp|iomp5|omp)[-.]", Path(path).name) and ".so" in path and Path(path).is_file():
            return Path(path)
    return None


@contextlib.contextmanager
def _build_guard(name: str) -> Iterator[Path | None]:
    """Hold an exclusive `flock` on the build directory of `name` while building or loading it; yields that
    directory (None where torch's private lookup fails, and then only torch's own lock applies).

    torch's own build lock is a plain file that a builder killed mid-compile (Ctrl-C, kill -9) leaves behind,
    and every later load waits on it forever. The kernel releases a flock when its holder dies, so a process
    that holds this one knows any torch lock it finds is a dead builder's and removes it; a live builder in
    another process holds the flock, and this one waits for its build as torch would."""
    try:
        from torch.utils.cpp_extension import _get_build_directory  # private, hence the fallback

        build = Path(_get_build_directory(name, verbose=False))
        build.mkdir(parents=True, exist_ok=True)
        fd = os.open(build / "reasonloop.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except Exception:  # best effort: torch's own lock still applies
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process building %s", name)
            fcntl.flock(fd, fcntl.LOCK_EX)
        lock = build / "lock"
        if lock.exists():
            log.warning("removing a stale build lock %s (left by a process killed while compiling)", lock)
            lock.unlink(missing_ok=True)
        yield build
    finally:
        os.close(fd)  # releases the flock


def extension_name(prefix: str, source: Path, flags: list[str]) -> str:
    """`<prefix>_<machine tag>_<source tag>`: the name torch's extension cache files a build under. The
    source tag hashes the C++ source and the compiler flags, so checkouts sharing one cache (git worktrees,
    two versions installed side by side) never load or rebuild each other's builds: torch's own check
    compares a build with the last sources built *under that name*, so two versions sharing a name
    rebuild in turn, and a process that loaded one before the other rebuilt keeps a stale copy."""
    digest = hashlib.sha1(Path(source).read_bytes() + b"\0" + " ".join(flags).encode()).hexdigest()[:10]
    return f"{prefix}_{_machine_tag()}_{digest}"


def _machine_tag() -> str:
    """Part of the extension's cache name: `-march=native` code must not be reused by another CPU
    (a home directory shared between machines) or another torch build."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        flags = platform.processor()
    return hashlib.sha1(f"{platform.machine()} {flags} {torch.__version__}".encode()).hexdigest()[:10]


def supports(model: nn.Module, max_len: int) -> bool:
    """`kv_cache.supports` plus what the C++ step assumes: fp32 on CPU, one eps, no lm_head bias, plain
    llama/mistral/qwen2 layers (qwen3's q/k norms are not implemented); and either fused fp32 projections
    or, for a BitNet b1.58 model (models/bitnet.py), every projection a BitLinear and the ternary kernel
    built (rollout/ternary.py)."""
    if not kv_cache.supports(model, max_len):
        return False
    p = next(model.parameters())
    if p.device.type != "cpu" or p.dtype != torch.float32:
        return False
    if _is_bitnet(model):
        from reasonloop.rollout import ternary

        if not ternary.usable(model):
            return False
    elif sum(q.numel() * q.element_size() for q in model.parameters()) > kv_cache.FUSE_MAX_BYTES:
        return False  # StaticDecoder does not fuse the projections of larger models, and this step needs them
    # the layer structure does not change (short of swapping BitLinear in and out: bench which=bitnet does):
    # check it once per model and kind
    known = _structure_ok.setdefault(model, {})
    kind = _is_bitnet(model)
    if kind not in known:
        known[kind] = _structure_supported(model)
    return known[kind]


_structure_ok: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _is_bitnet(model: nn.Module) -> bool:
    from reasonloop.models import bitnet

    return bitnet.is_bitnet(model)


def _structure_supported(model: nn.Module) -> bool:
    if getattr(model.lm_head, "bias", None) is not None:
        return False
    inner = kv_cache.backbone(model)
    norms = [inner.norm] + [m for layer in inner.layers for m in (layer.input_layernorm, layer.post_attention_layernorm)]
    if _is_bitnet(model):
        return _ternary_structure(model, norms)
    eps = {getattr(m, "variance_epsilon", None) for m in norms}
    if len(eps) != 1 or None in eps:
        return False
    return all(kv_cache.lean_weights(kv_cache.fuse_projections(layer)) is not None for layer in inner.layers)


def _ternary_structure(model: nn.Module, norms: list) -> bool:
    """A BitNet model the step implements: per layer q/k/v/o/gate/up/down all BitLinear, SubLN (if any)
    only before o and down (where `bitnet.to_bitnet` puts it), biases on q/k/v all or none and none on the
    MLP, SiLU, no q/k norms; the head plain (no bias) or a BitLinear without SubLN; one eps throughout."""
    from reasonloop.models.bitnet import BitLinear

    head = model.lm_head
    if not (type(head) is nn.Linear or (isinstance(head, BitLinear) and head.norm is None)):
        return False
    for layer in kv_cache.backbone(model).layers:
        attn, mlp = layer.self_attn, layer.mlp
        proj = _projections(layer)
        if proj is None or not all(isinstance(m, BitLinear) for group in proj for m in group):
            return False
        (q, k, v), (o,), (gate, up), (down,) = proj
        if any(m.norm is not None for m in (q, k, v, gate, up)) or hasattr(attn, "q_norm"):
            return False
        if len({m.bias is None for m in (q, k, v)}) != 1 or any(m.bias is not None for m in (gate, up, down)):
            return False
        if type(getattr(mlp, "act_fn", None)).__name__ not in ("SiLU", "SiLUActivation"):
            return False
        norms = norms + [m.norm for m in (o, down) if m.norm is not None]
    eps = {getattr(m, "variance_epsilon", None) for m in norms}
    return len(eps) == 1 and None not in eps


def _projections(layer):
    """((q, k, v), (o,), (gate, up), (down,)) modules of a Llama-family layer, or None."""
    attn, mlp = layer.self_attn, layer.mlp
    mods = [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
    mods += [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
    if any(m is None for m in mods):
        return None
    return tuple(mods[:3]), (mods[3],), tuple(mods[4:6]), (mods[6],)


class Packed(NamedTuple):
    """What a decoder derives from the model's weights, handed to the next decoder, which reuses it while `key`
    (`kv_cache.weights_key` and the precision) still matches."""

    key: tuple
    weights: list[torch.Tensor]  # the step's per-layer tensors (`FusedDecoder._weights`)
    head: list[torch.Tensor]
    layers: list | None  # the prompt decoder's fused projections (`kv_cache.StaticDecoder.layers`); None: fuse anew


class FusedDecoder:
    """Prefill B prompts once, then decode `group` samples of each with the compiled step.

    The prompts' keys/values are kept once per prompt ([B, kv_heads, ...], not repeated per sample);
    completion keys/values have one row per live sample ([B * group, kv_heads, ...]). Keys are stored
    in [head_dim, CHUNK] blocks of CHUNK positions and lengths padded to whole blocks (layouts in
    fused_decode.cpp's header).
    """

    def __init__(self, model: nn.Module, prompts: int, group: int, prompt_len: int, max_new: int,
                 storage: torch.Tensor | None = None, packed: Packed | None = None, bf16: bool = False):
        """`storage`: as `StaticDecoder`'s. `packed`: a previous decoder's `packed` (its prepacked step weights and,
        on small models, its prompt decoder's fused projections), reused when the model's weights have not changed
        since (`kv_cache.weights_key`: same tensors, version counters and sums) and it was packed for the same
        precision. `bf16`: the decode step's projections in bfloat16 (weights prepacked as bf16 for oneDNN; needs
        `bf16_supported()`) and the prefill's matrix multiplies under bf16 autocast; the head, the cache and
        everything between the projections stay float32. A BitNet model ignores it (its projections are ternary)."""
        if bf16 and not bf16_supported():
            raise RuntimeError("the bf16 decode step needs oneDNN with bf16 instructions (bf16_supported())")
        self.model, self.bf16 = model, bf16
        key = (kv_cache.weights_key(model.parameters()), bf16)
        if packed is not None and packed.key != key:
            packed = None
        # prefill into the shared prompt cache (its fused q|k|v and gate|up copies reused with `packed` on small models)
        self.prompt = kv_cache.StaticDecoder(model, prompts, prompt_len, layers=packed.layers if packed else None)
        inner, cfg = self.prompt.inner, model.config
        self.rows, self.max_new, self.t = prompts * group, max_new, 0
        kv, d = self.prompt.kv_heads, self.prompt.head_dim
        width = -(-max_new // CHUNK) * CHUNK  # the step's loops run over whole chunks of positions
        per, n_layers = self.rows * kv * width * d, len(inner.layers)
        if storage is None or storage.numel() < 2 * n_layers * per:
            storage = torch.empty(2 * n_layers * per)
        self.storage = storage
        # keys in [head_dim, CHUNK] blocks of CHUNK positions, so the step's q.k loops run along positions;
        # all layers' keys (values) in one tensor, so `keep` moves rows with one indexing op for each
        self.k_all = storage[: n_layers * per].view(n_layers, self.rows, kv, width // CHUNK, d, CHUNK)
        self.v_all = storage[n_layers * per : 2 * n_layers * per].view(n_layers, self.rows, kv, width, d)
        self.kc, self.vc = list(self.k_all.unbind(0)), list(self.v_all.unbind(0))
        if packed is None:
            small = sum(p.numel() * p.element_size() for p in model.parameters()) <= KEEP_FUSED_MAX_BYTES
            packed = Packed(key, *self._weights(), self.prompt.layers if small else None)
        self.packed = packed  # hand it to the next decoder
        self.weights, self.head = packed.weights, packed.head
        positions = torch.arange(prompt_len + max_new).unsqueeze(0)
        cos, sin = inner.rotary_emb(inner.embed_tokens.weight[:1].unsqueeze(0), positions)
        half = self.prompt.head_dim // 2
        self.cos = cos[0].contiguous()
        self.sin_signed = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1).contiguous()
        self.eps = inner.norm.variance_epsilon
        self.embed = inner.embed_tokens.weight
        self.heads = cfg.num_attention_heads
        self.op = torch.ops.reasonloop_decode.decode_step

    def _weights(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The step's tensors: 18 per layer (norm_in, norm_post, then weight, bias, scale, sub-norm for each
        of q|k|v, o, gate|up and down; empty tensors where absent) and the head's 4. fp32 projection weights
        are prepacked for oneDNN where it is there (packing costs ~5% of a sampler call on the embedded
        model, hence `packed`); a BitNet model's are its packed ternary codes (`_ternary_weights`)."""
        if _is_bitnet(self.model):
            return self._ternary_weights()
        empty = torch.empty(0)
        pack = _packer(self.rows, self.bf16)

        def bias(b: torch.Tensor | None) -> torch.Tensor:  # packed beside its weight, so in its dtype
            return empty if b is None else b.detach().to(torch.bfloat16) if self.bf16 else b

        weights = []
        for norm_in, w_qkv, b_qkv, w_o, b_o, norm_post, w_gu, w_down, _ in self.prompt.lean:
            weights += [norm_in.weight, norm_post.weight,
                        pack(w_qkv), bias(b_qkv), empty, empty,
                        pack(w_o), bias(b_o), empty, empty,
                        pack(w_gu), empty, empty, empty,
                        pack(w_down), empty, empty, empty]
        return weights, [self.model.lm_head.weight, empty, empty, empty]

    def _ternary_weights(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """A BitNet model's projections as the ternary kernel packs them (`ternary.packed_layers`), q|k|v
        and gate|up concatenated by output rows (each keeps its own per-tensor scale in the per-row scales;
        the three share one activation quantisation, as their separate BitLinears would compute the same)."""
        from reasonloop.models import bitnet
        from reasonloop.rollout import ternary

        empty = torch.empty(0)
        packed = ternary.packed_layers(self.model)
        by_module = {m: packed[n] for n, m in bitnet.bit_linears(self.model)}

        def group(mods) -> list[torch.Tensor]:
            ks = [by_module[m] for m in mods]
            bias = empty if ks[0].bias.numel() == 0 else torch.cat([k.bias for k in ks])
            sub = mods[0].norm.weight.detach() if mods[0].norm is not None else empty
            return [torch.cat([k.packed for k in ks]), bias, torch.cat([k.scale for k in ks]), sub]

        weights = []
        for layer in self.prompt.inner.layers:
            qkv, o, gu, down = _projections(layer)
            weights += [layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
                        *group(qkv), *group(o), *group(gu), *group(down)]
        head = self.model.lm_head
        return weights, (group((head,)) if isinstance(head, bitnet.BitLinear) else [head.weight, empty, empty, empty])

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, repeat: int) -> torch.Tensor:
        """Left-padded prompts [B, P]; returns the last position's logits [B, V] (not repeated)."""
        B, P = ids.shape
        lengths = mask.sum(-1)
        if not torch.equal(mask.bool(), torch.arange(P) >= (P - lengths)[:, None]):
            raise ValueError("FusedDecoder needs left-padded prompts")
        logits = self.prompt.prefill(ids, mask, bf16=self.bf16)
        pad = -P % CHUNK  # more left padding, to whole chunks of positions (never attended to)
        self.kp = [_blocks(F.pad(k, (0, 0, pad, 0))) for k in self.prompt.k]
        self.vp = [F.pad(v, (0, 0, pad, 0)).contiguous() for v in self.prompt.v]
        self.pstart = (P + pad - lengths).long()
        self.grp = torch.arange(B).repeat_interleave(repeat)
        self.slot = torch.arange(B * repeat)  # the completion cache row of each live row
        self.t = 0
        return logits

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """One token per live row (rows 0..n-1); position [n]: its RoPE position. Returns logits [n, V]."""
        if self.t >= self.max_new:
            raise ValueError("the cache is full")
        logits = self.op(tokens, self.embed, self.weights, self.kp, self.vp, self.kc, self.vc,
                         self.pstart, self.grp, self.slot, position, self.cos, self.sin_signed,
                         self.prompt.inner.norm.weight, self.head, self.heads, self.t, self.eps, self.prompt.scaling)
        self.t += 1
        return logits

    def keep(self, live: torch.Tensor) -> torch.Tensor:
        """Drop the rows where `live` [n] is False (swap-remove, as `StaticDecoder.keep`); returns `order`.
        Only the rows' prompt and cache-slot indices move: a surviving row keeps its completion keys/values
        where they are (moving them, every layer's, took ~4% of a sampler call on the embedded workload)."""
        n, m = live.shape[0], int(live.sum())
        holes = (~live[:m]).nonzero().flatten()
        movers = live[m:].nonzero().flatten() + m
        order = torch.arange(n)
        if len(holes):
            self.grp[holes] = self.grp[movers]
            self.slot[holes] = self.slot[movers]
            order[holes] = movers
        self.grp, self.slot = self.grp[:m], self.slot[:m]
        return order[:m]


def _blocks(k: torch.Tensor) -> torch.Tensor:
    """[B, KV, P, D] keys -> [B, KV, P / CHUNK, D, CHUNK]: blocks of CHUNK positions, transposed."""
    B, KV, P, D = k.shape
    return k.view(B, KV, P // CHUNK, CHUNK, D).transpose(-1, -2).contiguous()


def _packer(rows: int, bf16: bool = False):
    """Weights prepacked for oneDNN's linear (the step then skips re-packing them at every matmul:
    15-20% faster projections at 32-64 rows here), or left as they are without oneDNN; `bf16`: rounded to
    bfloat16 and prepacked so (oneDNN is then required)."""
    if bf16:
        return lambda w: torch.ops.mkldnn._reorder_linear_weight(w.detach().to(torch.bfloat16), rows)
    if not _onednn():
        return lambda w: w
    return lambda w: torch.ops.mkldnn._reorder_linear_weight(w.detach(), rows)


def _onednn() -> bool:
    return torch.backends.mkldnn.is_available() and os.environ.get("REASONLOOP_FUSED_DECODE_ONEDNN", "1") != "0"


def bf16_supported() -> bool:
    """Whether this CPU runs oneDNN's bf16 linear natively (AVX-512 BF16, AMX or AVX-NE-CONVERT; oneDNN
    refuses to pack bf16 weights elsewhere). `ONEDNN_MAX_CPU_ISA=AVX2` set before torch starts hides them."""
    return _onednn() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
