"""Continue many partial solutions from their cached keys/values: the engine behind step-level search.

Tree search (beam, DVTS, MCTS) extends partial solutions one reasoning step at a time. An ordinary
`RolloutEngine` can only start from text, so every step re-reads `prompt + partial` from scratch
(a prefill of everything written so far, per node, per step). `TreeEngine` keeps what it computed:

- a `TreeNode` holds the tokens it added and the K/V of those tokens (one *segment* per node,
  [kv_heads, tokens, head_dim] per layer); a node's full K/V is the concatenation of the segments on
  its path from the root, so siblings share their parent's memory instead of copying it;
- `roots(prompts)` prefills each prompt once (`prefilled` counts those tokens);
- `expand(nodes, n, sampling, generator)` samples n children of every node in ONE decode loop: the
  nodes' K/V are laid out left-padded in one batch cache (different lengths, explicit positions),
  each node's last token is fed, and decoding continues exactly like `TorchSampler.generate` —
  the same `sample_next`, the same random draws per step (one Exp(1) noise row per child row), the
  same stop rules — so under one seed `expand(nodes, n)` samples what
  `generate([prompt + text(node) ...], n)` samples (up to float rounding; with a tokenizer that
  re-tokenizes `prompt + text` differently from the sampled tokens, re-prefilling reads other tokens);
- `generated` counts sampled tokens and `prefilled` the tokens read without sampling (the prompts,
  once each): `search.CountingEngine` reads both.

Memory: a node's segment lives as long as the node or a descendant is referenced; a strategy frees
a pruned subtree by dropping its nodes (and `TreeNode.release()` drops a finished node's K/V now).
Each node stores the K/V of all its tokens but its last one (the *pending* token, fed when the
node is expanded), so a finished child costs nothing more to compute.

Llama-family models in float32 on a CPU decode through the compiled step (`fused.FusedDecoder`: each
node's K/V is stored once and read by all its children, like the sampler's shared prompt); other
Llama-family set-ups through `kv_cache.StaticDecoder` (preallocated cache, finished rows dropped);
other models through transformers' forward with a `DynamicCache`. `generate` (whole
solutions) is the ordinary `TorchSampler`'s, counted, so the engine serves every strategy.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from reasonloop.data.records import RolloutBatch
from reasonloop.models.forward import cache_arg
from reasonloop.rollout import fused, kv_cache
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.rollout.sampler import TorchSampler, _StopStrings, sample_next

Segment = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: K, V [kv_heads, tokens, head_dim]


class TreeNode:
    """A partial solution: the tokens it added to its parent's (a root: the prompt's), their text,
    summed log-prob and finish reason, and the K/V of its tokens except the last (`kv`)."""

    __slots__ = ("parent", "tokens", "kv", "text", "logprob", "finish_reason", "depth")

    def __init__(self, parent: TreeNode | None, tokens: list[int], kv: Segment | None, text: str = "",
                 logprob: float = 0.0, finish_reason: str = ""):
        self.parent = parent
        self.tokens = tokens
        self.kv = kv
        self.text = text  # this node's own text (a root's is '': the prompt is not part of the solution)
        self.logprob = logprob  # sum of this node's own tokens' log-probs
        self.finish_reason = finish_reason  # 'stop' (EOS or a stop string) | 'length'; '' for a root
        self.depth = 0 if parent is None else parent.depth + 1

    @property
    def length(self) -> int:
        """Tokens on the path root..self, the prompt included."""
        return len(self.tokens) + (self.parent.length if self.parent is not None else 0)

    def path(self) -> list[TreeNode]:
        node, out = self, []
        while node is not None:
            out.append(node)
            node = node.parent
        return out[::-1]

    def path_kv(self) -> Segment:
        """The K/V of every token on the path but the last: [kv_heads, length - 1, head_dim] per layer."""
        segments = [n.kv for n in self.path()]
        if any(s is None for s in segments):
            raise ValueError("this node's K/V was released (a finished node cannot be expanded)")
        if len(segments) == 1:
            return segments[0]
        return [(torch.cat([s[i][0] for s in segments], dim=1), torch.cat([s[i][1] for s in segments], dim=1))
                for i in range(len(segments[0]))]

    def release(self) -> None:
        """Drop this node's K/V (it will not be expanded; its descendants, if any, keep theirs alive)."""
        self.kv = None


class TreeEngine:
    """A `RolloutEngine` that can also continue partial solutions from their cached K/V (`roots`,
    `expand`), counting `generated` and `prefilled` tokens for both."""

    def __init__(self, model, tokenizer, static_cache: bool = True, fused_decode: bool = True,
                 decode_precision: str = "fp32"):
        self.model = model
        self.tokenizer = tokenizer
        self.static_cache = static_cache
        self.sampler = TorchSampler(model, tokenizer, static_cache=static_cache, fused_decode=fused_decode,
                                    decode_precision=decode_precision)
        self.generated = 0
        self.prefilled = 0
        self.fused_decode = fused_decode
        self._kv_storage: torch.Tensor | None = None
        self._packed: fused.Packed | None = None  # the compiled step's prepacked weights, while unchanged

    # -- the RolloutEngine seam ------------------------------------------------------------------------
    def update_weights(self, model: torch.nn.Module) -> None:
        self.model = model
        self.sampler.update_weights(model)

    def generate(self, prompts: list[str], n: int, sampling: SamplingConfig,
                 generator: torch.Generator | None = None) -> RolloutBatch:
        batch = self.sampler.generate(prompts, n, sampling, generator)
        self.generated += int(batch.completion_mask.sum())
        self.prefilled += int(batch.prompt_mask[::n].sum())
        return batch

    # -- tree expansion --------------------------------------------------------------------------------
    def roots(self, prompts: list[str]) -> list[TreeNode]:
        """One root per prompt (already rendered): each prompt is prefilled once, here."""
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False,
                             padding_side="left")
        ids, mask = enc["input_ids"].to(self._device()), enc["attention_mask"].to(self._device())
        if bool((mask.sum(-1) == 0).any()):
            raise ValueError("TreeEngine.roots: a prompt encodes to no tokens")
        self.prefilled += int(mask.sum())
        with torch.inference_mode(), _eval(self.model):
            head, head_mask = ids[:, :-1], mask[:, :-1]  # the last prompt token is each root's pending token
            if head.shape[1] == 0:
                kv = [[] for _ in prompts]
            else:
                kv = self._decoder(len(prompts), head.shape[1]).prefill_segments(head, head_mask)
        out = []
        for b in range(len(prompts)):
            tokens = ids[b][mask[b].bool()].tolist()
            seg = kv[b] if kv[b] else self._empty_segment()
            out.append(TreeNode(None, tokens, [(k.clone(), v.clone()) for k, v in seg]))
        return out

    def expand(self, nodes: list[TreeNode], n: int, sampling: SamplingConfig,
               generator: torch.Generator | None = None) -> list[TreeNode]:
        """n sampled continuations of every node, node-major ([n children of nodes[0]], ...), each stopping
        at EOS, a stop string of `sampling` or after `sampling.max_new_tokens` tokens: one decode loop."""
        if not nodes:
            return []
        with torch.inference_mode(), _eval(self.model):
            return self._expand(nodes, n, sampling, generator)

    def _expand(self, nodes, n, sampling, generator):
        tok, device = self.tokenizer, self._device()
        rows, T = len(nodes) * n, sampling.max_new_tokens
        prefixes = [node.path_kv() for node in nodes]
        lengths = [node.length - 1 for node in nodes]  # tokens with K/V; the pending token sits at this position
        width = max(lengths)
        decoder = self._decoder(rows, width + T, nodes=len(nodes), group=n, width=width)
        decoder.load(prefixes, lengths, n, width)
        pending = torch.tensor([node.tokens[-1] for node in nodes], device=device).repeat_interleave(n)
        position = torch.tensor(lengths, device=device).repeat_interleave(n)
        logits = decoder.step(pending, position)
        eos, pad = tok.eos_token_id, tok.pad_token_id
        stops = _StopStrings(sampling.stop, rows, self.sampler._text_of)
        out_ids = torch.full((rows, T), pad, dtype=torch.long, device=device)
        out_lp = torch.zeros((rows, T), device=device)
        lengths_out = [T] * rows
        reasons = ["length"] * rows
        segments: list[Segment | None] = [None] * rows
        active = torch.arange(rows, device=device)  # the child row of each live decoder row
        for t in range(T):
            tokens, lps = sample_next(logits, sampling, generator, rows, None if len(active) == rows else active)
            out_ids[active, t] = tokens
            out_lp[active, t] = lps
            done = tokens == eos
            if stops:
                done |= torch.tensor(stops.hits(active.tolist(), tokens.tolist()), dtype=torch.bool, device=device)
            last = t == T - 1
            if bool(done.any()) or last:
                ending = torch.ones_like(done) if last else done
                for slot in ending.nonzero().flatten().tolist():
                    row = int(active[slot])
                    lengths_out[row] = t + 1
                    if bool(done[slot]):
                        reasons[row] = "stop"
                    if int(tokens[slot]) != eos:  # an EOS-ended child is final: no K/V needed
                        segments[row] = decoder.segment(slot)
                if last or bool(done.all()):
                    break
                order = decoder.keep(~done)
                active, tokens, position = active[order], tokens[order], position[order]
            position = position + 1
            logits = decoder.step(tokens, position)
        self._kv_storage = decoder.storage if device.type == "cpu" else None
        self._packed = getattr(decoder, "packed", self._packed)
        children = []
        ids, lp = out_ids.tolist(), out_lp.sum(-1).tolist()  # sampled-after-end slots hold 0 log-prob
        for row in range(rows):
            own = ids[row][: lengths_out[row]]
            text = tok.decode([t for t in own if t != eos], skip_special_tokens=True)
            children.append(TreeNode(nodes[row // n], own, segments[row], text, lp[row], reasons[row]))
        self.generated += sum(lengths_out)
        return children

    # -- internals -----------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _decoder(self, rows: int, max_len: int, nodes: int = 0, group: int = 1, width: int = 0):
        """The fastest decode loop the model allows: the compiled CPU step (each node's K/V read once by all
        its children, as the sampler's shared prompt), the static cache, or transformers' DynamicCache."""
        if (nodes and width and self.static_cache and self.fused_decode and fused.supports(self.model, max_len)
                and fused.available()):
            return _Fused(self.model, nodes, group, width, max_len - width, self._kv_storage, self._packed,
                          self.sampler.bf16)
        if self.static_cache and kv_cache.supports(self.model, max_len):
            return _Static(self.model, rows, max_len, self._kv_storage)
        return _Dynamic(self.model)

    def _empty_segment(self) -> Segment:
        cfg = self.model.config
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        p = next(self.model.parameters())
        empty = torch.zeros(heads, 0, head_dim, dtype=p.dtype, device=p.device)
        return [(empty, empty) for _ in range(cfg.num_hidden_layers)]


class _eval:
    """Eval mode for the duration (restoring training mode after)."""

    def __init__(self, model):
        self.model, self.was = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was)


class _Static:
    """The decode loop's cache on `kv_cache.StaticDecoder` (Llama family): load left-padded prefixes,
    step, drop finished rows, read a row's new K/V."""

    def __init__(self, model, rows: int, max_len: int, storage):
        self.d = kv_cache.StaticDecoder(model, rows, max_len, storage=storage)
        self.storage = self.d.storage

    def prefill_segments(self, ids, mask) -> list[Segment]:
        self.d.prefill(ids, mask)
        P = ids.shape[1]
        lengths = mask.sum(-1).tolist()
        return [[(k[b, :, P - L:P], v[b, :, P - L:P]) for k, v in zip(self.d.k, self.d.v)]
                for b, L in enumerate(lengths)]

    def load(self, prefixes: list[Segment], lengths: list[int], n: int, width: int) -> None:
        for i, (seg, L) in enumerate(zip(prefixes, lengths)):
            rows = slice(i * n, (i + 1) * n)
            for (k, v), kc, vc in zip(seg, self.d.k, self.d.v):
                kc[rows, :, : width - L] = 0  # padding: masked out, but 0 * stale NaN memory would still be NaN
                vc[rows, :, : width - L] = 0
                kc[rows, :, width - L:width] = k
                vc[rows, :, width - L:width] = v
            self.d.valid[rows, width - L:width] = True
        self.d.length = self.start = width

    def step(self, tokens, position):
        return self.d.step(tokens, position)

    def keep(self, live):
        return self.d.keep(live)

    def segment(self, slot: int) -> Segment:
        """The K/V a live row added since `load` (the pending token's and every token fed after it)."""
        start, end = self.start, self.d.length
        return [(k[slot, :, start:end].clone(), v[slot, :, start:end].clone()) for k, v in zip(self.d.k, self.d.v)]


class _Fused:
    """The same contract on the compiled CPU step (`fused.FusedDecoder`): the nodes' K/V are its shared
    'prompt' cache (one copy per node, read by all n children), the children's tokens its per-row cache."""

    def __init__(self, model, nodes: int, group: int, width: int, max_new: int, storage, packed, bf16: bool):
        self.d = fused.FusedDecoder(model, nodes, group, width, max_new, storage=storage, packed=packed, bf16=bf16)
        self.storage, self.packed = self.d.storage, self.d.packed

    def load(self, prefixes: list[Segment], lengths: list[int], n: int, width: int) -> None:
        pad = -width % fused.CHUNK  # whole chunks of positions, padded on the left (never attended to)
        full = width + pad
        kp, vp = [], []
        for layer in range(len(prefixes[0])):
            k0 = prefixes[0][layer][0]
            K = k0.new_zeros(len(prefixes), k0.shape[0], full, k0.shape[2])
            V = torch.zeros_like(K)
            for i, (seg, L) in enumerate(zip(prefixes, lengths)):
                K[i, :, full - L:] = seg[layer][0]
                V[i, :, full - L:] = seg[layer][1]
            kp.append(fused._blocks(K))
            vp.append(V)
        self.d.kp, self.d.vp = kp, vp
        self.d.pstart = torch.tensor([full - L for L in lengths], dtype=torch.long)
        self.d.grp = torch.arange(len(prefixes)).repeat_interleave(n)
        self.d.slot = torch.arange(len(self.d.grp))  # live row -> its completion cache row (FusedDecoder.keep)
        self.d.t = 0

    def step(self, tokens, position):
        return self.d.step(tokens, position)

    def keep(self, live):
        return self.d.keep(live)

    def segment(self, slot: int) -> Segment:
        t, out, row = self.d.t, [], int(self.d.slot[slot])  # the live row's cache row
        for k, v in zip(self.d.k_all, self.d.v_all):  # keys are stored in [head_dim, CHUNK] blocks
            kv, blocks, d, chunk = k[row].shape
            out.append((k[row].transpose(-1, -2).reshape(kv, blocks * chunk, d)[:, :t].clone(), v[row, :, :t].clone()))
        return out


class _Dynamic:
    """The same contract on transformers' forward with a `DynamicCache` (any causal LM with full attention)."""

    storage = None

    def __init__(self, model):
        self.model = model
        self.cache = None
        self.attn = None

    def prefill_segments(self, ids, mask) -> list[Segment]:
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        self.model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True, **cache_arg(self.model, cache))
        P = ids.shape[1]
        layers = cache.layers
        return [[(layer.keys[b, :, P - L:P], layer.values[b, :, P - L:P]) for layer in layers]
                for b, L in enumerate(mask.sum(-1).tolist())]

    def load(self, prefixes: list[Segment], lengths: list[int], n: int, width: int) -> None:
        rows = len(prefixes) * n
        data = []
        for layer in range(len(prefixes[0])):
            k0 = prefixes[0][layer][0]
            K = k0.new_zeros(rows, k0.shape[0], width, k0.shape[2])
            V = torch.zeros_like(K)
            for i, (seg, L) in enumerate(zip(prefixes, lengths)):
                K[i * n:(i + 1) * n, :, width - L:width] = seg[layer][0]
                V[i * n:(i + 1) * n, :, width - L:width] = seg[layer][1]
            data.append((K, V))
        self.cache = DynamicCache(data)
        self.attn = torch.zeros(rows, width, dtype=torch.long, device=k0.device)
        for i, L in enumerate(lengths):
            self.attn[i * n:(i + 1) * n, width - L:] = 1
        self.length = self.start = width

    def step(self, tokens, position):
        self.attn = torch.cat([self.attn, torch.ones_like(self.attn[:, :1])], dim=-1)
        out = self.model(input_ids=tokens[:, None], attention_mask=self.attn, position_ids=position[:, None],
                         use_cache=True, **cache_arg(self.model, self.cache))
        self.length += 1
        return out.logits[:, -1, :]

    def keep(self, live):
        order = live.nonzero().flatten()
        self.cache.batch_select_indices(order)
        self.attn = self.attn[order]
        return order

    def segment(self, slot: int) -> Segment:
        return [(layer.keys[slot, :, self.start:self.length].clone(),
                 layer.values[slot, :, self.start:self.length].clone()) for layer in self.cache.layers]
