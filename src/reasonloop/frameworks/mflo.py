"""MFLO: a metacognitive monitor — a confidence head that predicts correctness, used at inference to continue,
backtrack, verify or stop (docs/frameworks.md#mflo).

Training (`reasonloop mflo`) is GRPO, unchanged, plus a confidence head: a linear layer on the policy's last
hidden state, trained after every step on that step's rollouts (the policy's states no-grad, so the policy's
own updates are exactly GRPO's) with binary cross-entropy against the verifier's verdict of the whole
completion, at every completion position: c(prefix) estimates P(this solution ends correct | prefix).

Inference (the held-out table) decodes greedily one step at a time (a step ends at ';' or '</think>') and
reads the head after each step:

- **continue** while c >= backtrack_below;
- **backtrack** when c < backtrack_below (at most `max_backtracks` times per problem): the step is discarded,
  `alternatives` new steps are sampled at temperature 1 from the same prefix, and the one with the highest c
  (the greedy step included) is kept;
- at the end, **stop** when c >= verify_below, else **verify**: `verify_samples` whole solutions are sampled
  and the one with the highest final c (the greedy one included) is the answer.

Every generated token counts, discarded ones included. `extra` holds the expected calibration error (10 bins)
and Brier score of the final confidence of plain greedy solutions, the decisions taken, and the accuracy and
tokens of plain greedy decoding beside the monitored ones. With both thresholds at 0 the monitor never acts
and the table is plain greedy decoding's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from reasonloop.algos.calibration import brier_score, expected_calibration_error
from reasonloop.config import require
from reasonloop.data.records import Example
from reasonloop.frameworks._common import with_extra
from reasonloop.recipes import rl
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.train.evaluation import flat_metrics

STEP_ENDS = [";", "</think>"]


@dataclass
class MFLOConfig:
    lr: float = 0.01
    """Adam learning rate of the confidence head."""
    head_epochs: int = 8
    """Adam steps of the head on each RL step's rollouts (their hidden states are computed once)."""
    backtrack_below: float = 0.3
    """Backtrack a step whose confidence is below this."""
    max_backtracks: int = 2
    """Backtracks per problem at most."""
    alternatives: int = 4
    """Steps sampled at a backtrack."""
    verify_below: float = 0.5
    """Verify (resample whole solutions) when the final confidence is below this."""
    verify_samples: int = 4
    """Whole solutions sampled at a verification."""

    def __post_init__(self):
        require(self.lr > 0 and self.head_epochs >= 1, "mflo.lr must be > 0 and mflo.head_epochs >= 1")
        require(self.max_backtracks >= 0 and self.alternatives >= 1 and self.verify_samples >= 1,
                "mflo.max_backtracks must be >= 0, mflo.alternatives and mflo.verify_samples >= 1")
        require(0 <= self.backtrack_below <= 1 and 0 <= self.verify_below <= 1, "mflo thresholds must be in [0, 1]")


@dataclass
class Config(rl.Config):
    mflo: MFLOConfig = field(default_factory=MFLOConfig)
    """The confidence head and the monitor's rules."""


def confidence_loss(logits: torch.Tensor, correct: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-mean binary cross-entropy of per-position confidence logits [N, T] against each row's 0/1
    verdict [N], over the positions `mask` [N, T] marks."""
    target = correct.float()[:, None].expand_as(logits)
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * mask).sum() / mask.sum().clamp(min=1)


@dataclass
class Trace:
    """One problem's monitored decoding."""

    text: str = ""
    tokens: int = 0  # generated, discarded steps and samples included
    text_tokens: int = 0  # of `text`, against the length limit
    backtracks: int = 0
    done: bool = False
    decisions: dict[str, int] = field(default_factory=dict)

    def count(self, what: str) -> None:
        self.decisions[what] = self.decisions.get(what, 0) + 1


class MFLOTrainer(rl.Trainer):
    """GRPO plus the confidence head; held-out evaluation is the monitored decoding."""

    def __init__(self, cfg: Config, **kw):
        super().__init__(cfg, **kw)
        hidden = self.model.config.hidden_size
        gen = torch.Generator().manual_seed(cfg.seed)  # the head's own stream: GRPO's random draws are untouched
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(1, hidden, generator=gen) * 0.01)
            self.head.bias.zero_()
        self.head_optimizer = torch.optim.Adam(self.head.parameters(), lr=cfg.mflo.lr)
        self.extra: dict = {}
        self.eval_generator = torch.Generator()
        if (ckpt := self.run.resume_from) is not None:  # the head did not exist yet when the base class restored
            modules = torch.load(ckpt / "trainer.pt", weights_only=False)["modules"]
            self.head.load_state_dict(modules["mflo_head"])
            self.head_optimizer.load_state_dict(modules["mflo_head_optimizer"])

    def _extra_modules(self):
        extra = super()._extra_modules()
        if hasattr(self, "head"):
            extra.update({"mflo_head": self.head, "mflo_head_optimizer": self.head_optimizer})
        return extra

    def step(self):
        metrics, data = super().step()
        metrics.update(self._train_head(data))
        return metrics, data

    def _train_head(self, data: rl.StepData) -> dict[str, float]:
        temp = self.cfg.sampling.temperature or 1.0
        correct = data.components["accuracy"]
        n, all_tokens = len(data.tokens), max(float(data.tokens.completion_mask.sum()), 1.0)
        self.model.eval()
        parts = []
        with torch.no_grad():
            for rows in self._micro_batches(n):
                mb = data.tokens.select(rows)
                parts.append((self._forward(self.model, mb, temp, with_hidden=True).hidden.float(), correct[rows],
                              mb.completion_mask.float()))
        first = 0.0
        for epoch in range(self.cfg.mflo.head_epochs):
            self.head_optimizer.zero_grad()
            total = 0.0
            for hidden, y, mask in parts:
                share = float(mask.sum()) / all_tokens
                loss = confidence_loss(self.head(hidden).squeeze(-1), y, mask) * share
                loss.backward()
                total += float(loss.detach())
            self.head_optimizer.step()
            first = total if epoch == 0 else first
        return {"mflo/head_loss": first}

    # -- inference ----------------------------------------------------------------------------------
    @torch.no_grad()
    def confidence(self, texts: list[str]) -> list[float]:
        """c after reading each (rendered prompt + partial completion) text."""
        out = []
        for s in range(0, len(texts), 64):
            enc = self.tokenizer(texts[s : s + 64], return_tensors="pt", padding=True, add_special_tokens=False,
                                 padding_side="left")
            mask = enc["attention_mask"]
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            device = next(self.model.parameters()).device
            hs = self.model(input_ids=enc["input_ids"].to(device), attention_mask=mask.to(device),
                            position_ids=pos.to(device), output_hidden_states=True).hidden_states[-1][:, -1]
            out.extend(torch.sigmoid(self.head(hs.float().cpu())).squeeze(-1).tolist())
        return out

    def _generate(self, prompts: list[str], n: int, temperature: float, max_tokens: int, step: bool
                  ) -> tuple[list[str], list[int], list[str]]:
        """(texts, token counts, finish reasons) of n samples per prompt, one step (ending at a step end) or
        a whole solution."""
        sampling = SamplingConfig(temperature=temperature, max_new_tokens=max(1, max_tokens),
                                  stop=STEP_ENDS if step else [])
        texts, lengths, reasons = [], [], []
        for s in range(0, len(prompts), 64):
            batch = self.engine.generate(prompts[s : s + 64], n, sampling, self.eval_generator)
            texts += batch.completions
            lengths += [int(x) for x in batch.completion_mask.sum(-1).tolist()]
            reasons += list(batch.finish_reasons)
        return texts, lengths, reasons

    def _fit(self, text: str, tokens: int, reason: str, budget: int) -> tuple[str, int, str]:
        """A step cut to the problem's remaining token budget (a shared batch limit may exceed it)."""
        if tokens <= budget:
            return text, tokens, reason
        ids = self.tokenizer.encode(text, add_special_tokens=False)[:budget]
        return self.tokenizer.decode(ids), budget, "length"

    def monitored(self, examples: list[Example]) -> list[Trace]:
        cfg, limit = self.cfg.mflo, self.cfg.sampling.max_new_tokens
        prompts = [self.render(e.prompt) for e in examples]
        traces = [Trace() for _ in examples]
        while live := [i for i, t in enumerate(traces) if not t.done]:
            budget = [limit - traces[i].text_tokens for i in live]
            steps, lengths, reasons = self._generate([prompts[i] + traces[i].text for i in live], 1, 0.0,
                                                     max(budget), step=True)
            fitted = [self._fit(*x, b) for x, b in zip(zip(steps, lengths, reasons), budget)]
            steps, lengths, reasons = (list(v) for v in zip(*fitted))
            kept = list(lengths)  # tokens of the step each problem keeps
            conf = self.confidence([prompts[i] + traces[i].text + s for i, s in zip(live, steps)])
            low = [k for k, c in enumerate(conf)
                   if c < cfg.backtrack_below and traces[live[k]].backtracks < cfg.max_backtracks]
            if low:
                n_alt = cfg.alternatives
                alts, alt_len, alt_reasons = self._generate([prompts[live[k]] + traces[live[k]].text for k in low],
                                                            n_alt, 1.0, max(budget[k] for k in low), step=True)
                fitted = [self._fit(alts[r], alt_len[r], alt_reasons[r], budget[low[r // n_alt]])
                          for r in range(len(alts))]
                alt_conf = self.confidence([prompts[live[low[r // n_alt]]] + traces[live[low[r // n_alt]]].text
                                            + fitted[r][0] for r in range(len(fitted))])
                for j, k in enumerate(low):
                    t = traces[live[k]]
                    t.backtracks += 1
                    t.count("backtrack")
                    span = range(j * n_alt, (j + 1) * n_alt)
                    t.tokens += lengths[k] + sum(fitted[r][1] for r in span)  # every sampled step counts
                    best = max(span, key=lambda r: alt_conf[r])
                    if alt_conf[best] > conf[k]:
                        steps[k], kept[k], reasons[k] = fitted[best]
                    lengths[k] = 0  # counted above
            for k, i in enumerate(live):
                t = traces[i]
                t.text += steps[k]
                t.tokens += lengths[k]
                t.text_tokens += kept[k]
                t.count("continue")
                eos = reasons[k] == "stop" and not any(t.text.endswith(e) for e in STEP_ENDS)
                t.done = "</answer>" in t.text or eos or not steps[k] or t.text_tokens >= limit
        final = self.confidence([p + t.text for p, t in zip(prompts, traces)])
        unsure = [i for i, c in enumerate(final) if c < cfg.verify_below]
        for i, t in enumerate(traces):
            t.count("verify" if i in set(unsure) else "stop")
        if unsure:
            n_ver = cfg.verify_samples
            cands, cand_len, _ = self._generate([prompts[i] for i in unsure], n_ver, 1.0, limit, step=False)
            cand_conf = self.confidence([prompts[unsure[r // n_ver]] + c for r, c in enumerate(cands)])
            for j, i in enumerate(unsure):
                span = range(j * n_ver, (j + 1) * n_ver)
                traces[i].tokens += sum(cand_len[r] for r in span)
                best = max(span, key=lambda r: cand_conf[r])
                if cand_conf[best] > final[i]:
                    traces[i].text = cands[best]
        return traces

    def evaluate(self) -> dict:
        """Per level: monitored accuracy (pass@1_greedy) and tokens; calibration and greedy figures in `extra`."""
        exs = self.held_out
        self.eval_generator.manual_seed(self.cfg.seed)  # its own stream: training's rollouts stay GRPO's
        traces = self.monitored(exs)
        ok = [self.task.is_correct(t.text, e) for t, e in zip(traces, exs)]
        plain, plain_len, _ = self._generate([self.render(e.prompt) for e in exs], 1, 0.0,
                                             self.cfg.sampling.max_new_tokens, step=False)
        plain_ok = [self.task.is_correct(c, e) for c, e in zip(plain, exs)]
        conf = torch.tensor(self.confidence([self.render(e.prompt) + c for e, c in zip(exs, plain)]))
        by_level: dict[str, list[int]] = {}
        for i, e in enumerate(exs):
            by_level.setdefault(f"level/{e.meta.get('level', 'all')}", []).append(i)
        summary = {g: {"n": len(idx), "pass@1_greedy": sum(ok[i] for i in idx) / len(idx),
                       "tokens": sum(traces[i].tokens for i in idx) / len(idx),
                       "greedy_no_monitor": sum(plain_ok[i] for i in idx) / len(idx),
                       "tokens_no_monitor": sum(plain_len[i] for i in idx) / len(idx)}
                   for g, idx in [*sorted(by_level.items()), ("overall", list(range(len(exs))))]}
        decisions: dict[str, int] = {}
        for t in traces:
            for k, v in t.decisions.items():
                decisions[k] = decisions.get(k, 0) + v
        correct = torch.tensor(plain_ok, dtype=torch.float32)
        self.extra = {"ece": round(expected_calibration_error(conf, correct), 4),
                      "brier": round(brier_score(conf, correct), 4), "mean_confidence": round(float(conf.mean()), 4),
                      "decisions": decisions}
        self.run.log(self.state.step, {**flat_metrics(summary), "eval/mflo_ece": self.extra["ece"]})
        return summary


SWEEP = ((0.0, 0.0), (0.3, 0.5), (0.5, 0.7), (0.7, 0.9), (0.9, 1.0))  # (backtrack_below, verify_below)


def sweep(trainer: MFLOTrainer, points=SWEEP) -> list[dict[str, float]]:
    """Accuracy and tokens of the monitored decoding at several (backtrack_below, verify_below) settings; (0, 0)
    is decoding with no monitor."""
    import dataclasses

    out, kept = [], trainer.cfg.mflo
    try:
        for backtrack, verify in points:
            trainer.cfg.mflo = dataclasses.replace(kept, backtrack_below=backtrack, verify_below=verify)
            trainer.eval_generator.manual_seed(trainer.cfg.seed)
            traces = trainer.monitored(trainer.held_out)
            ok = [trainer.task.is_correct(t.text, e) for t, e in zip(traces, trainer.held_out)]
            out.append({"backtrack_below": backtrack, "verify_below": verify, "accuracy": sum(ok) / len(ok),
                        "tokens": sum(t.tokens for t in traces) / len(traces),
                        "backtracks": sum(t.decisions.get("backtrack", 0) for t in traces),
                        "verified": sum(t.decisions.get("verify", 0) for t in traces)})
    finally:
        trainer.cfg.mflo = kept
    return out


def run(cfg: Config) -> dict:
    trainer = MFLOTrainer(cfg)
    result = trainer.train()
    trainer.extra["sweep"] = sweep(trainer)
    print("MFLO accuracy/tokens by (backtrack_below, verify_below); (0, 0) = no monitor:")
    for pt in trainer.extra["sweep"]:
        print(f"  ({pt['backtrack_below']}, {pt['verify_below']})  accuracy {pt['accuracy']:.3f}  tokens {pt['tokens']:.1f}  "
              f"backtracks {pt['backtracks']}  verified {pt['verified']}")
    o = result["after"]["overall"]
    print(f"MFLO: monitored accuracy {o['pass@1_greedy']:.3f} with {o['tokens']:.1f} tokens; no monitor "
          f"{o['greedy_no_monitor']:.3f} with {o['tokens_no_monitor']:.1f}; calibration error (ECE) {trainer.extra['ece']:.3f}, "
          f"Brier {trainer.extra['brier']:.3f}; decisions {trainer.extra['decisions']}")
    return with_extra(trainer, result, trainer.extra)
