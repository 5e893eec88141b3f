"""Typed records that flow between the layers (see DESIGN.md, "One online-RL step, as data")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Example:
    """One task item: what the model sees, the reference answer, and free-form metadata.

    `meta` holds task-specific columns (e.g. `level`, `id`, `tests`); reward functions receive them
    as keyword arguments, TRL style.
    """

    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.meta.get("id", self.prompt))


@dataclass
class TokenBatch:
    """Prompts left-padded, completions right-padded: the layout the sampler produces and the forward reads."""

    prompt_ids: torch.Tensor  # [N, P]
    prompt_mask: torch.Tensor  # [N, P]
    completion_ids: torch.Tensor  # [N, T]
    completion_mask: torch.Tensor  # [N, T] 1 for tokens that are trained on / scored

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    def select(self, idx: torch.Tensor | slice) -> TokenBatch:
        """Rows `idx`, trimmed to the longest prompt/completion among them (less padding to compute)."""
        pm, cm = self.prompt_mask[idx], self.completion_mask[idx]
        p_keep = int(pm.sum(-1).max()) if len(pm) else 0
        c_keep = max(int(_last_true(cm)), 1)
        return TokenBatch(self.prompt_ids[idx][:, pm.shape[1] - p_keep:], pm[:, pm.shape[1] - p_keep:],
                          self.completion_ids[idx][:, :c_keep], cm[:, :c_keep])

    def to(self, device: torch.device) -> TokenBatch:
        return TokenBatch(*(t.to(device) for t in (self.prompt_ids, self.prompt_mask, self.completion_ids,
                                                   self.completion_mask)))


def _last_true(mask: torch.Tensor) -> int:
    """1 + the last column index where any row is true (0 if none)."""
    cols = mask.any(0).nonzero()
    return int(cols[-1]) + 1 if len(cols) else 0


def left_padded(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists as [N, L] ids left-padded with `pad_id` (L = the longest) and their 0/1 mask [N, L]:
    the prompt layout, where generation continues from the last column."""
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        if s:
            ids[row, width - len(s):] = torch.tensor(s)
            mask[row, width - len(s):] = 1
    return ids, mask


def pad_left(x: torch.Tensor, width: int, value) -> torch.Tensor:  # [N, w] -> [N, width]
    return torch.nn.functional.pad(x, (width - x.shape[1], 0), value=value)


def pad_right(x: torch.Tensor, width: int, value) -> torch.Tensor:  # [N, w] -> [N, width]
    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)


@dataclass
class EpisodeOutcomes:
    """What multi-turn episodes' environments said, one entry per row of the `RolloutBatch` that carries them."""

    returns: torch.Tensor  # [N] each episode's return: the sum of its env.step rewards (summed in float64)
    step_rewards: list[list[float]]  # [N][steps] each env.step's reward, in order (batch.turn_rewards places them)
    observations: list[list[str]]  # [N][observations] the environment's answers that joined the context

    def rows(self, idx: slice) -> EpisodeOutcomes:
        return EpisodeOutcomes(self.returns[idx], self.step_rewards[idx], self.observations[idx])

    @staticmethod
    def concat(parts: list[EpisodeOutcomes | None], rows: list[int]) -> EpisodeOutcomes | None:
        """`parts` in order (None for a part of `rows[i]` single-turn rows: return 0, no steps); None if all are."""
        if all(p is None for p in parts):
            return None
        full = [p if p is not None else EpisodeOutcomes(torch.zeros(n), [[] for _ in range(n)], [[] for _ in range(n)])
                for p, n in zip(parts, rows)]
        return EpisodeOutcomes(torch.cat([p.returns for p in full]), [r for p in full for r in p.step_rewards],
                               [o for p in full for o in p.observations])


@dataclass
class RolloutBatch:
    """The output of `RolloutEngine.generate` for B prompts x G samples (N = B*G rows, prompt-major).

    Rows are ordered prompt-major: row `b*G + g` is sample g of prompt b.
    """

    prompt_ids: torch.Tensor  # [N, P] left-padded prompt token ids
    prompt_mask: torch.Tensor  # [N, P] 1 for real prompt tokens
    completion_ids: torch.Tensor  # [N, T] right-padded sampled tokens
    completion_mask: torch.Tensor  # [N, T] 1 for sampled tokens (incl. the stop token)
    logprobs: torch.Tensor  # [N, T] log-prob of each sampled token under the sampling distribution
    finish_reasons: list[str]  # [N] "stop" (EOS or stop string) or "length"
    completions: list[str]  # [N] decoded completion text (stop token excluded)
    group_size: int  # G
    policy_mask: torch.Tensor | None = None  # [N, T] multi-turn episodes: 1 on the policy's tokens, 0 on the
    # environment's observations (which completion_mask keeps attended to); None: every completion token
    turn_rewards: torch.Tensor | None = None  # [N, T] multi-turn episodes: each env.step's reward on the last
    # token of the turn it answered (0 elsewhere); the token-level estimators (gae, reinforce_pp) place them there
    episodes: EpisodeOutcomes | None = None  # multi-turn episodes: their returns (added to the sequence reward),
    # each step's reward and the observations, row by row; None for single-turn completions

    @property
    def loss_mask(self) -> torch.Tensor:  # [N, T] the tokens that are trained on
        return self.completion_mask if self.policy_mask is None else self.policy_mask

    @property
    def num_rows(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def truncated(self) -> torch.Tensor:  # [N] bool
        return torch.tensor([r == "length" for r in self.finish_reasons])

    @property
    def tokens(self) -> TokenBatch:
        return TokenBatch(self.prompt_ids, self.prompt_mask, self.completion_ids, self.completion_mask)

    def rows(self, idx: slice) -> RolloutBatch:
        """The rows `idx` (e.g. one prompt's group), same padding."""
        return RolloutBatch(self.prompt_ids[idx], self.prompt_mask[idx], self.completion_ids[idx],
                            self.completion_mask[idx], self.logprobs[idx], self.finish_reasons[idx],
                            self.completions[idx], group_size=self.group_size,
                            policy_mask=None if self.policy_mask is None else self.policy_mask[idx],
                            turn_rewards=None if self.turn_rewards is None else self.turn_rewards[idx],
                            episodes=None if self.episodes is None else self.episodes.rows(idx))

    @staticmethod
    def concat(batches: list[RolloutBatch], pad_id: int) -> RolloutBatch:
        """Rows of all `batches` in order; prompts re-padded on the left and completions on the right to the
        widest (pad_id for ids, 0 for masks and log-probs). `group_size` is the first batch's."""
        P = max(b.prompt_ids.shape[1] for b in batches)
        T = max(b.completion_ids.shape[1] for b in batches)
        return RolloutBatch(
            torch.cat([pad_left(b.prompt_ids, P, pad_id) for b in batches]),
            torch.cat([pad_left(b.prompt_mask, P, 0) for b in batches]),
            torch.cat([pad_right(b.completion_ids, T, pad_id) for b in batches]),
            torch.cat([pad_right(b.completion_mask, T, 0) for b in batches]),
            torch.cat([pad_right(b.logprobs, T, 0.0) for b in batches]),
            [r for b in batches for r in b.finish_reasons],
            [c for b in batches for c in b.completions],
            group_size=batches[0].group_size,
            policy_mask=None if all(b.policy_mask is None for b in batches)
            else torch.cat([pad_right(b.loss_mask, T, 0) for b in batches]),
            turn_rewards=None if all(b.turn_rewards is None for b in batches)
            else torch.cat([pad_right(b.turn_rewards if b.turn_rewards is not None else torch.zeros(b.completion_ids.shape),
                                      T, 0.0) for b in batches]),
            episodes=EpisodeOutcomes.concat([b.episodes for b in batches], [b.num_rows for b in batches]),
        )
