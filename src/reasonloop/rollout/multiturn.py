"""Multi-turn rollouts: the policy writes, an environment answers, and generation goes on from the cached K/V.

`MultiTurnEngine.episodes(examples, n, sampling, generator)` plays n episodes per example, all in one
batch. Each episode alternates

    policy turn   sampled until EOS, one of the environment's stop strings (`</tool>`), the turn's token
                  limit (`sampling.max_new_tokens`) or the episode's budget;
    env.step      on the turn's text, in a worker thread (a slow tool holds up only its own episode);
    observation   its tokens join the context (completion_mask 1: attended to) but not the loss
                  (policy_mask 0, log-prob 0); then the next turn.

With `reuse_kv=True` (the default) nothing already read is read again: the whole batch lives in one
`kv_cache.StaticDecoder` cache, the rows that are writing take one decode step together, a row waiting
for its tool sits the step out (its cache column is masked off), and an observation is prefilled onto
the row's cached keys/values in one forward (`_extend`, the turn's last token with it). Columns left
unused by waiting rows are squeezed out when the cache fills (`_compact`); RoPE positions are per row
and never change. `reuse_kv=False` is the baseline many frameworks run: turn by turn, every live
conversation is re-prefilled from its first token.

Randomness is per episode (a generator each, seeded from `generator`), so an episode's tokens do not
depend on how the batch is scheduled: under one seed both modes sample the same tokens (up to float
rounding of the logits), whatever the tools' timing. Log-probs are those of the temperature-scaled
distribution before top-k/top-p/min-p, as `TorchSampler` returns them and the trainer recomputes them.

Budgets (`EpisodeBudget`): turns per episode, completion tokens per episode (policy + observation),
tokens per observation (longer ones are cut), seconds per tool call (in the environment). An episode
that runs out of turns or tokens finishes with reason 'length' (truncated).
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from reasonloop.config import require
from reasonloop.data.records import EpisodeOutcomes, Example, RolloutBatch, TokenBatch, left_padded
from reasonloop.models.forward import cache_arg
from reasonloop.rollout import kv_cache
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.rollout.sampler import exponential_noise, sample_next


CACHE_SLACK = 64  # spare cache columns beyond prompt + budget (used by waiting rows; squeezed out when full)


@dataclass
class AgentConfig:
    """Multi-turn episodes with tools or another environment (docs/agents.md); env='' keeps single-turn."""

    env: str = ""
    """'' (off: one completion per prompt) | tools (the built-in tools named in `tools`) | 'module:function' (a
    function returning a fresh environment: reset/step, see agents/envs.py)."""
    tools: list[str] = field(default_factory=lambda: ["calc"])
    """env=tools: the built-in tools offered (calc | python | lookup)."""
    max_turns: int = 3
    """Policy turns per episode; the last one's answer is final."""
    max_tokens: int = 160
    """Completion tokens per episode, policy and observation tokens together (each turn is also capped at
    sampling.max_new_tokens)."""
    max_obs_tokens: int = 32
    """Tokens of one observation; longer ones are cut (with tool_format=chat: of the tool's text; the template's
    tool-turn frame around it comes on top)."""
    tool_timeout: float = 2.0
    """Seconds a tool call may run; past it the call becomes an error observation ('timeout')."""
    reuse_kv: bool = True
    """Continue each turn from the cached keys/values (false: re-prefill every conversation each turn; the same
    tokens, slower)."""
    obs_in_loss: bool = False
    """ABLATION ONLY: train on the observation tokens too (they are the environment's, not the policy's)."""
    tool_format: str = "auto"
    """env=tools: how calls are written. tags (`<tool name="calc">...</tool>`, any tokenizer) | chat (the chat
    template's own Qwen/Hermes format: `<tool_call>{json}</tool_call>`, answered in its tool turn, the tools
    declared in the prompt) | auto (chat when the chat template has that format and is used, else tags)."""

    def __post_init__(self):
        require(self.max_turns >= 1, "agent.max_turns must be >= 1")
        require(self.max_tokens >= 2, "agent.max_tokens must be >= 2")
        require(self.max_obs_tokens >= 1, "agent.max_obs_tokens must be >= 1")
        require(self.tool_timeout > 0, "agent.tool_timeout must be > 0 seconds")
        require(self.env in ("", "tools") or ":" in self.env,
                f"agent.env={self.env!r}: use '' (off), tools, or 'module:function' returning an environment")
        require(self.tool_format in ("auto", "tags", "chat"), f"agent.tool_format={self.tool_format!r}: auto, tags or chat")


@dataclass(frozen=True)
class EpisodeBudget:
    max_turns: int = 3
    max_tokens: int = 160
    max_obs_tokens: int = 32

    @classmethod
    def of(cls, cfg: AgentConfig) -> EpisodeBudget:
        return cls(cfg.max_turns, cfg.max_tokens, cfg.max_obs_tokens)


class Episode:
    """One conversation's bookkeeping: its tokens, which are the policy's, log-probs, turns and rewards."""

    def __init__(self, env, example: Example, seed: int):
        self.env = env
        self.example = example
        self.generator = torch.Generator().manual_seed(seed)
        self.tokens: list[int] = []
        self.policy: list[int] = []  # 1 policy token, 0 observation token
        self.logprobs: list[float] = []
        self.turn_text = ""
        self.turn_tokens = 0
        self.turns = 0
        self.rewards: list[float] = []  # one per env.step
        self.turn_ends: list[int] = []  # index in `tokens` of the last token of each turn that got a step
        self.observations: list[str] = []
        self.finish = ""  # '' running | stop | length
        self.ended_by_eos = False
        self.stalled = 0.0  # seconds this episode waited for its environment

    def add_policy(self, token: int, logprob: float, text: str) -> None:
        self.tokens.append(token)
        self.policy.append(1)
        self.logprobs.append(logprob)
        self.turn_text += text
        self.turn_tokens += 1

    def add_observation(self, ids: list[int]) -> None:
        self.tokens += ids
        self.policy += [0] * len(ids)
        self.logprobs += [0.0] * len(ids)


class MultiTurnEngine:
    """A `RolloutEngine` whose completions are whole episodes (see the module docstring).

    `make_env()` returns a fresh environment per episode; `generate(prompts, n, ...)` plays episodes whose
    example is the rendered prompt alone (enough for tool environments); `episodes(examples, ...)` hands
    each environment its example (a game that needs the answer)."""

    def __init__(self, model, tokenizer, make_env: Callable[[], object], budget: EpisodeBudget = EpisodeBudget(),
                 reuse_kv: bool = True, obs_in_loss: bool = False, workers: int = 8, choose=None,
                 remember: bool = False):
        """`choose(logits [m, V], episodes) -> logits`: what the tokens are picked from (a scripted policy in the
        tests forces its text this way); log-probs stay those of the model's own logits. `remember`: keep each
        episode's tokens and policy mask in `transcripts`, by its text (a self-training loop fine-tunes on them
        with `encode_episodes`, observations masked; it clears them when it likes)."""
        self.model = model
        self.choose = choose
        self.tokenizer = tokenizer
        self.make_env = make_env
        self.budget = budget
        self.reuse_kv = reuse_kv
        self.obs_in_loss = obs_in_loss
        self.pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reasonloop-env")
        self._token_text: dict[int, str] = {}
        self._totals: dict[str, float] = {}  # counters summed since `metrics()` last read them
        self.prefilled = 0  # tokens read without sampling (prompts, observations, re-prefills)
        self.generated = 0  # tokens sampled
        self.compactions = 0  # times the cache was squeezed
        self.remember = remember
        self.tool_specs: list[dict] | None = None  # tools the prompt declares (chat templates' `tools=`), if any
        self.transcripts: dict[str, tuple[list[int], list[int]]] = {}  # text -> (token ids, policy mask)

    # -- the RolloutEngine seam ------------------------------------------------------------------------
    def update_weights(self, model) -> None:
        self.model = model

    def generate(self, prompts: list[str], n: int, sampling: SamplingConfig,
                 generator: torch.Generator | None = None) -> RolloutBatch:
        return self.episodes([Example(p, "") for p in prompts], n, sampling, generator)

    def episodes(self, examples: list[Example], n: int, sampling: SamplingConfig,
                 generator: torch.Generator | None = None, render: Callable[[str], str] = lambda s: s) -> RolloutBatch:
        """n episodes per example, example-major; the environment's first observation is rendered with
        `render` (the chat template) into the prompt."""
        seeds = torch.randint(0, 2**62, (len(examples) * n,), generator=generator).tolist()
        eps = [Episode(self.make_env(), ex, seeds[i * n + g]) for i, ex in enumerate(examples) for g in range(n)]
        prompts = [render(ep.env.reset(ep.example)) for ep in eps]
        prompt_ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                if self.reuse_kv and kv_cache.supports(self.model, max(map(len, prompt_ids)) + self.budget.max_tokens):
                    self._run_cached(eps, prompt_ids, sampling)
                else:
                    self._run_reprefill(eps, prompt_ids, sampling)
        finally:
            self.model.train(was_training)
        return self._batch(eps, prompt_ids, n)

    def metrics(self, gather: Callable[[dict], list[dict]] | None = None) -> dict[str, float]:
        """Episode metrics summed since the last call, as rates and means (then reset). `gather` (a placement's:
        every rank's object, in rank order; a collective, so every rank calls it) sums the counters of all
        ranks first: the rates are then the global batch's, exactly."""
        local, self._totals = self._totals, {}
        t: dict[str, float] = {}
        for part in gather(local) if gather is not None else [local]:
            for k, v in part.items():
                t[k] = t.get(k, 0) + v
        episodes = t.get("episodes", 0)
        if not episodes:
            return {}
        calls = t.get("calls", 0)
        out = {"agent/turns_per_episode": t["turns"] / episodes,
               "agent/tool_calls_per_episode": calls / episodes,
               "agent/tool_call_rate": t.get("calling_episodes", 0) / episodes,
               "agent/error_rate": t.get("errors", 0) / max(calls, 1),
               "agent/obs_token_frac": t.get("obs_tokens", 0) / max(t.get("tokens", 0), 1),
               "agent/return": t.get("return", 0.0) / episodes,
               "agent/env_seconds_per_episode": t.get("env_seconds", 0.0) / episodes}
        out.update({f"agent/errors/{k}": t.get(k, 0) for k in ("malformed", "unknown_tool", "tool_error", "timeout")
                    if k in t})
        return out

    # -- shared episode logic ----------------------------------------------------------------------------
    def _stops(self, ep: Episode, sampling: SamplingConfig) -> list[str]:
        return list(getattr(ep.env, "stop", [])) + list(sampling.stop)

    def _take(self, ep: Episode, token: int, logprob: float, sampling: SamplingConfig) -> bool:
        """Record a sampled token; True when it ends the turn (and the episode has then finished or waits)."""
        eos = self.tokenizer.eos_token_id
        ep.add_policy(token, logprob, "" if token == eos else self._text_of(token))
        self.generated += 1
        if token == eos:
            ep.ended_by_eos = True
            return True
        if len(ep.tokens) >= self.budget.max_tokens:
            ep.finish = "length"  # out of tokens: no step on a cut-off turn
            return True
        if ep.turn_tokens >= sampling.max_new_tokens:
            return True
        return any(ep.turn_text.endswith(s) for s in self._stops(ep, sampling))

    def _submit(self, ep: Episode) -> cf.Future | None:
        """Start env.step on the finished turn (None when the episode already ended without a step)."""
        ep.turns += 1
        if ep.finish:
            return None
        action, start = ep.turn_text, time.perf_counter()
        ep.turn_text, ep.turn_tokens = "", 0
        ep.turn_ends.append(len(ep.tokens) - 1)  # this step's reward sits on the turn's last token

        def step():
            out = ep.env.step(action)
            return out, time.perf_counter() - start

        return self.pool.submit(step)

    def _after_step(self, ep: Episode, result) -> list[int] | None:
        """Apply env.step's result; the observation's token ids to append, or None when the episode ends."""
        (obs, reward, done), seconds = result
        ep.rewards.append(float(reward))
        ep.stalled += seconds
        if done or ep.ended_by_eos:
            ep.finish = "stop"
            return None
        if ep.turns >= self.budget.max_turns:
            ep.finish = "length"
            return None
        ids = self.tokenizer(obs, add_special_tokens=False)["input_ids"][: self.budget.max_obs_tokens]
        if len(ep.tokens) + len(ids) + 1 > self.budget.max_tokens:  # no room left to answer
            ep.finish = "length"
            return None
        ep.observations.append(obs)
        return ids

    def _sample(self, logits: torch.Tensor, eps: list[Episode], sampling: SamplingConfig):
        """One token per row from each episode's own random stream; (tokens [m], log-probs [m])."""
        pick = self.choose(logits, eps) if self.choose is not None else None
        noise = None
        if sampling.temperature != 0:
            V = logits.shape[-1]
            cpu = torch.device("cpu")
            noise = torch.cat([exponential_noise((1, V), ep.generator, cpu) for ep in eps]).to(logits.device)
        return sample_next(logits, sampling, None, pick=pick, noise=noise)

    def _text_of(self, token: int) -> str:
        text = self._token_text.get(token)
        if text is None:
            text = self._token_text[token] = self.tokenizer.decode([token])
        return text

    # -- K/V reuse: one cache for the whole batch ---------------------------------------------------------
    def _run_cached(self, eps: list[Episode], prompt_ids: list[list[int]], sampling: SamplingConfig) -> None:
        device = next(self.model.parameters()).device
        ids, mask = left_padded(prompt_ids, self.tokenizer.pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        P = ids.shape[1]
        slack = max(self.budget.max_obs_tokens + 1, CACHE_SLACK)
        d = kv_cache.StaticDecoder(self.model, len(eps), P + self.budget.max_tokens + slack)
        logits = d.prefill(ids, mask)
        self.prefilled += int(mask.sum())
        live = list(range(len(eps)))  # decoder row -> episode index
        position = (mask.sum(-1) - 1).tolist()  # RoPE position of each row's last fed token
        state = ["sample"] * len(eps)  # sample | wait | ready (observation arrived) | done
        futures: dict[int, cf.Future] = {}
        pending: dict[int, int] = {}  # episode -> its turn's last token, not yet fed
        obs_ids: dict[int, list[int]] = {}
        pad = self.tokenizer.pad_token_id
        while live:
            # 1. the rows that are writing sample one token each
            rows = [r for r, e in enumerate(live) if state[e] == "sample"]
            fed: list[int] = []
            feed = torch.full((len(live),), pad, dtype=torch.long, device=device)
            if rows:
                tokens, lps = self._sample(logits[rows], [eps[live[r]] for r in rows], sampling)
                for r, token, lp in zip(rows, tokens.tolist(), lps.tolist()):
                    e = live[r]
                    if self._take(eps[e], token, lp, sampling):
                        future = self._submit(eps[e])
                        if future is None:
                            state[e] = "done"
                        else:
                            futures[e], pending[e], state[e] = future, token, "wait"
                    else:
                        fed.append(r)
                        feed[r] = token
            # 2. environments that answered (block only when no row could otherwise move)
            if futures and not fed and not any(state[e] == "ready" for e in live):
                cf.wait(list(futures.values()), return_when=cf.FIRST_COMPLETED)
            for e in [e for e, f in futures.items() if f.done()]:
                ids_ = self._after_step(eps[e], futures.pop(e).result())
                if ids_ is None:
                    state[e] = "done"
                else:
                    obs_ids[e], state[e] = ids_, "ready"
            # 3. finished rows leave the cache
            keep = torch.tensor([state[e] != "done" for e in live], dtype=torch.bool, device=device)
            if not bool(keep.all()):
                if not bool(keep.any()):
                    break
                order = d.keep(keep).tolist()
                old = {r: i for i, r in enumerate(order)}
                logits = logits[order]
                feed = feed[order]
                fed = [old[r] for r in fed if r in old]
                live = [live[r] for r in order]
                position = [position[r] for r in order]
            # 4. the writing rows take one decode step; waiting rows sit it out (their column is masked)
            if fed:
                self._room(d, len(live), 1)
                col = d.length
                pos = torch.tensor([position[r] + (r in fed) for r in range(len(live))], device=device)
                out = d.step(feed, pos)
                idle = torch.ones(len(live), dtype=torch.bool, device=device)
                idle[fed] = False
                d.valid[: len(live), col] &= ~idle
                logits = logits.clone()
                logits[fed] = out[fed]
                for r in fed:
                    position[r] += 1
            # 5. observations arrived: prefill [turn's last token] + observation onto the cached K/V
            ready = [r for r, e in enumerate(live) if state[e] == "ready"]
            if ready:
                seqs = [[pending.pop(live[r])] + obs_ids[live[r]] for r in ready]
                for r in ready:
                    eps[live[r]].add_observation(obs_ids.pop(live[r]))
                    state[live[r]] = "sample"
                out = self._extend(d, len(live), ready, seqs, position, device)
                self.prefilled += sum(map(len, seqs))
                logits = logits.clone()
                logits[ready] = out
                for r, s in zip(ready, seqs):
                    position[r] += len(s)

    def _extend(self, d: kv_cache.StaticDecoder, n: int, rows: list[int], seqs: list[list[int]],
                position: list[int], device) -> torch.Tensor:
        """Feed `seqs[i]` to decoder row `rows[i]` in one forward (left-padded into t new columns, which the
        other rows do not see); returns the logits after each sequence's last token [len(rows), V]."""
        t = max(map(len, seqs))
        self._room(d, n, t)
        start, end = d.length, d.length + t
        ids, pad_mask = left_padded(seqs, self.tokenizer.pad_token_id)
        ids, pad_mask = ids.to(device), pad_mask.to(device).bool()
        idx = torch.tensor(rows, device=device)
        d.valid[:n, start:end] = False
        d.valid[idx, start:end] = pad_mask
        # The other rows never write these columns, yet every later step reads them with weight 0: zero them,
        # or recycled memory (NaN/Inf left by an earlier allocation) turns 0 * stale into NaN in `probs @ V`
        for kc, vc in zip(d.k, d.v):
            kc[:n, :, start:end] = 0
            vc[:n, :, start:end] = 0
        first = torch.tensor([position[r] + 1 for r in rows], device=device)
        pos = (first[:, None] + pad_mask.long().cumsum(-1) - 1).clamp(min=0)  # [m, t]
        cos, sin = d.cos[pos].unsqueeze(2), d.sin[pos].unsqueeze(2)
        causal = torch.ones(t, end, dtype=torch.bool, device=device).tril(start)  # key j <= start + i
        attn = (d.valid[idx, None, :end] & causal[None]).unsqueeze(1)  # [m, 1, t, end]
        h = d.inner.embed_tokens(ids)
        for fused in d.layers:
            h = d._layer(fused, h, cos, sin, idx, start, attn)
        d.length = end
        return d._logits(h[:, -1])

    def _room(self, d: kv_cache.StaticDecoder, n: int, need: int) -> None:
        """Make `need` free cache columns, squeezing out the columns no live row attends to."""
        if d.length + need <= d.max_len:
            return
        valid = d.valid[:n, : d.length]
        width = int(valid.sum(-1).max())
        cols = torch.arange(d.length, device=valid.device)
        order = torch.argsort(valid.long() * (d.length + 1) + cols, dim=-1)[:, -width:]  # valid ones, in order
        for k, v in zip(d.k, d.v):
            gather = order[:, None, :, None].expand(n, k.shape[1], width, k.shape[3])
            k[:n, :, :width] = k[:n].gather(2, gather)
            v[:n, :, :width] = v[:n].gather(2, gather)
        d.valid[:n, :width] = valid.gather(1, order)
        d.valid[:n, width:] = False
        d.length = width
        self.compactions += 1
        if d.length + need > d.max_len:
            raise RuntimeError("multi-turn cache full after compaction (the budget should prevent this)")

    # -- the baseline: re-prefill every conversation each turn ---------------------------------------------
    def _run_reprefill(self, eps: list[Episode], prompt_ids: list[list[int]], sampling: SamplingConfig) -> None:
        device = next(self.model.parameters()).device
        live = list(range(len(eps)))
        while live:
            contexts = [prompt_ids[e] + eps[e].tokens for e in live]
            ids, mask = left_padded(contexts, self.tokenizer.pad_token_id)
            ids, mask = ids.to(device), mask.to(device)
            self.prefilled += int(mask.sum())
            logits, step = self._prefill_fn(ids, mask, sampling.max_new_tokens)
            rows = list(live)  # decoder row -> episode, rows still in their turn
            position = mask.sum(-1) - 1
            futures: dict[int, cf.Future] = {}
            while rows:
                tokens, lps = self._sample(logits, [eps[e] for e in rows], sampling)
                going = []
                for i, (e, token, lp) in enumerate(zip(rows, tokens.tolist(), lps.tolist())):
                    if self._take(eps[e], token, lp, sampling):
                        future = self._submit(eps[e])
                        if future is not None:
                            futures[e] = future
                    else:
                        going.append(i)
                if not going:
                    break
                keep = torch.zeros(len(rows), dtype=torch.bool, device=device)
                keep[going] = True
                order, logits_fn = step(keep)
                rows = [rows[i] for i in order]
                position = position[order] + 1
                logits = logits_fn(tokens[order], position)
            cf.wait(list(futures.values()))
            nxt = []
            for e in live:
                if e in futures:
                    ids_ = self._after_step(eps[e], futures[e].result())
                    if ids_ is not None:
                        eps[e].add_observation(ids_)
                        nxt.append(e)
                elif not eps[e].finish:
                    eps[e].finish = "stop"
            live = nxt

    def _prefill_fn(self, ids, mask, max_new: int):
        """(logits of the last position, step(keep) -> (order, feed(tokens, position) -> logits))."""
        if kv_cache.supports(self.model, ids.shape[1] + max_new):
            d = kv_cache.StaticDecoder(self.model, ids.shape[0], ids.shape[1] + max_new)
            logits = d.prefill(ids, mask)

            def step(keep):
                order = d.keep(keep) if not bool(keep.all()) else torch.arange(len(keep), device=keep.device)
                return order.tolist(), d.step

            return logits, step
        from transformers import DynamicCache

        state = {"attn": mask, "cache": DynamicCache()}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                         use_cache=True, **cache_arg(self.model, state["cache"]))

        def step(keep):
            order = keep.nonzero().flatten()
            state["cache"].batch_select_indices(order)
            state["attn"] = state["attn"][order]

            def feed(tokens, position):
                state["attn"] = torch.cat([state["attn"], torch.ones_like(state["attn"][:, :1])], dim=-1)
                o = self.model(input_ids=tokens[:, None], attention_mask=state["attn"], position_ids=position[:, None],
                               use_cache=True, **cache_arg(self.model, state["cache"]))
                return o.logits[:, -1]

            return order.tolist(), feed

        return out.logits[:, -1], step

    # -- the batch ------------------------------------------------------------------------------------------
    def _batch(self, eps: list[Episode], prompt_ids: list[list[int]], n: int) -> RolloutBatch:
        pad = self.tokenizer.pad_token_id
        p_ids, p_mask = left_padded(prompt_ids, pad)
        T = max(1, max(len(ep.tokens) for ep in eps))
        ids = torch.full((len(eps), T), pad, dtype=torch.long)
        mask = torch.zeros((len(eps), T), dtype=torch.long)
        policy = torch.zeros((len(eps), T), dtype=torch.long)
        lps = torch.zeros((len(eps), T))
        turn_rewards = torch.zeros((len(eps), T))
        eos = self.tokenizer.eos_token_id
        texts = []
        for i, ep in enumerate(eps):
            L = len(ep.tokens)
            if L:
                ids[i, :L] = torch.tensor(ep.tokens)
                mask[i, :L] = 1
                policy[i, :L] = torch.tensor(ep.policy)
                lps[i, :L] = torch.tensor(ep.logprobs)
            for end, reward in zip(ep.turn_ends, ep.rewards):
                turn_rewards[i, end] += reward
            texts.append(self.tokenizer.decode([t for t in ep.tokens if t != eos], skip_special_tokens=True))
            if self.remember:
                self.transcripts[texts[-1]] = (list(ep.tokens), list(ep.policy))
        outcomes = EpisodeOutcomes(torch.tensor([sum(ep.rewards) for ep in eps]), [list(ep.rewards) for ep in eps],
                                   [list(ep.observations) for ep in eps])
        self._count(eps, mask, policy)
        return RolloutBatch(p_ids, p_mask, ids, mask, lps, [ep.finish or "stop" for ep in eps], texts, n,
                            policy_mask=mask.clone() if self.obs_in_loss else policy, turn_rewards=turn_rewards,
                            episodes=outcomes)

    def _count(self, eps: list[Episode], mask, policy) -> None:
        t = self._totals
        add = lambda k, v: t.__setitem__(k, t.get(k, 0) + v)  # noqa: E731
        add("episodes", len(eps))
        add("turns", sum(ep.turns for ep in eps))
        add("tokens", int(mask.sum()))
        add("obs_tokens", int((mask - policy).sum()))
        add("return", float(sum(sum(ep.rewards) for ep in eps)))
        add("env_seconds", sum(ep.stalled for ep in eps))
        for ep in eps:
            stats = getattr(ep.env, "stats", {}) or {}
            for k, v in stats.items():
                add(k, v)
            add("calling_episodes", int(stats.get("calls", 0) > 0))


def encode_episodes(tokenizer, prompts: list[str], episodes: list[tuple[list[int], list[int]]]
                    ) -> tuple[TokenBatch, torch.Tensor]:
    """The masked SFT encoding of episodes: (rendered prompt, the episode's token ids) with the loss on the
    policy's tokens only. `episodes[i]` is (token ids, policy mask) as `MultiTurnEngine.transcripts` keeps them.

    Returns (batch, loss_mask [N, T]): `batch.completion_mask` is 1 on every episode token (observations are
    context, attended to as in the rollout); `loss_mask` is the policy mask, 0 exactly on observation tokens.
    An episode that does not end in EOS gets one, trained on (as `encode_pairs` ends every completion)."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    rows = []
    for ids, policy in episodes:
        if len(ids) != len(policy):
            raise ValueError(f"an episode has {len(ids)} tokens but {len(policy)} mask entries")
        if not ids or ids[-1] != eos:
            ids, policy = list(ids) + [eos], list(policy) + [1]
        rows.append((ids, policy))
    p_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    prompt_ids, prompt_mask = left_padded(p_ids, pad)
    T = max(len(ids) for ids, _ in rows)
    completion_ids = torch.full((len(rows), T), pad, dtype=torch.long)
    completion_mask = torch.zeros((len(rows), T), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (ids, policy) in enumerate(rows):
        completion_ids[i, : len(ids)] = torch.tensor(ids)
        completion_mask[i, : len(ids)] = 1
        loss_mask[i, : len(ids)] = torch.tensor(policy)
    return TokenBatch(prompt_ids, prompt_mask, completion_ids, completion_mask), loss_mask


def tool_format(cfg: AgentConfig, tokenizer, chat_template: bool = True):
    """The tool-call format `cfg.tool_format` names for this tokenizer (`agents.envs.TagFormat` or `HermesFormat`);
    `chat_template`: whether prompts are rendered with the tokenizer's chat template (model.use_chat_template)."""
    from reasonloop.agents.envs import HermesFormat, TagFormat, has_tool_call_format
    from reasonloop.config import ConfigError

    has_template = chat_template and bool(getattr(tokenizer, "chat_template", None))
    if cfg.tool_format == "tags" or (cfg.tool_format == "auto" and not (has_template and has_tool_call_format(tokenizer))):
        return TagFormat()
    if not has_template:
        raise ConfigError("agent.tool_format=chat needs a tokenizer with a chat template, used "
                          "(model.use_chat_template=true); agent.tool_format=tags works with any tokenizer")
    try:
        return HermesFormat(tokenizer, cfg.tools)
    except ValueError as exc:
        raise ConfigError(f"agent.tool_format=chat: {exc}") from exc


def build_agent_engine(cfg: AgentConfig, model, tokenizer, remember: bool = False,
                       chat_template: bool = True) -> MultiTurnEngine:
    """The multi-turn engine `cfg` describes, sampling from `model`; with the chat tool format its `tool_specs`
    are the tool declarations the prompt must carry (`models.loading.render_prompt(..., tools=)`)."""
    from reasonloop.agents.envs import tool_env_factory

    from reasonloop.config import ConfigError
    from reasonloop.rewards.core import load_function

    fmt = tool_format(cfg, tokenizer, chat_template) if cfg.env == "tools" else None
    try:
        make_env = (tool_env_factory(cfg.tools, cfg.tool_timeout, format=fmt) if cfg.env == "tools"
                    else load_function(cfg.env))
    except ValueError as exc:
        raise ConfigError(f"agent.env={cfg.env!r} agent.tools={list(cfg.tools)}: {exc}") from exc
    budget = EpisodeBudget.of(cfg)
    if fmt is not None and hasattr(fmt, "before"):  # max_obs_tokens counts the tool's text; the tool turn's frame is extra
        frame = len(tokenizer(fmt.before + fmt.after, add_special_tokens=False)["input_ids"])
        budget = EpisodeBudget(cfg.max_turns, cfg.max_tokens, cfg.max_obs_tokens + frame)
    engine = MultiTurnEngine(model, tokenizer, make_env, budget, reuse_kv=cfg.reuse_kv,
                             obs_in_loss=cfg.obs_in_loss, remember=remember)
    engine.tool_specs = getattr(fmt, "tool_specs", None)
    return engine

