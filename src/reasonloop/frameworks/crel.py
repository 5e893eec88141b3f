"""CREL: counterfactual augmentation with an intervention-consistency reward; a counterfactual held-out set.

The survey's claim: training on counterfactual variants (intervene on a quantity; the answer changes
accordingly) and rewarding answers that respond to the intervention as the truth does teaches causal
rather than associative reasoning. Made concrete for the embedded arithmetic task:

- the intervention is `tasks/augment.py`'s `counterfactual`: every number redrawn with the same digit count
  until the answer differs; `chain_solver` recomputes the answer and rejects draws whose running values go
  negative (the task's invariant) or that fall in the other split (a counterfactual of a train problem is
  never a held-out problem, nor the other way round);
- training is `PairedTrainer` (frameworks/paired.py): `variant_frac` of each step's B prompts are
  counterfactuals of the step's other prompts (same B x G samples as GRPO), and the `intervention` reward
  component (weight `pair_coef`) is `intervention_agreement`: for a sample on one side, the fraction of the
  other side's samples whose answer differs from it by exactly the true change y' - y;
- the held-out set pairs every test problem with a counterfactual (also a test problem); reported: accuracy
  on the originals and the counterfactuals, and the intervention-consistency rate (greedy y-hat' - y-hat equals
  y' - y, right or wrong), before and after.

`variant_frac=0` is plain GRPO with the same evaluation (the baseline); `pair_coef=0` is augmentation only.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Sequence

from reasonloop.data.records import Example
from reasonloop.frameworks.arre import chain_text, running_ok, terms_of
from reasonloop.frameworks.paired import PairedConfig, PairedTrainer, PairReward, evaluate_sets, greedy_keys, intervention_agreement
from reasonloop.recipes.rl import Trainer
from reasonloop.tasks.arithmetic import parse_number, split_of
from reasonloop.tasks.augment import counterfactual


def chain_solver(split: str):
    """An `augment.Solver` for `Q: a+b-c=?` prompts: the chain's value, or None when a running value goes
    negative or the new chain belongs to the other split."""
    def solve(prompt: str, _numbers: Sequence[int]) -> str | None:
        terms = terms_of(prompt)
        if terms is None or not running_ok(terms) or split_of(chain_text(terms)) != split:
            return None
        return str(sum(n if s == "+" else -n for s, n in terms))

    return solve


def counterfactual_pairs(examples: list[Example], split: str, seed: int) -> list[tuple[Example, Example]]:
    """(original, counterfactual) for every example that has one in `split`; deterministic in seed."""
    rng, solve = random.Random(f"{seed}:crel:{split}"), chain_solver(split)
    pairs = [(ex, counterfactual(ex, solve, rng)) for ex in examples]
    return [(ex, cf) for ex, cf in pairs if cf is not None]


def intervention_table(pairs: list[tuple[Example, Example]], keys: dict[str, object]) -> dict[str, float]:
    """Greedy answers `keys` (example id -> parsed answer) over the pairs: accuracy on each side, both right,
    and the intervention-consistency rate (the predicted change equals the true change)."""
    n = len(pairs)
    right = lambda ex: keys.get(ex.id) == parse_number(ex.answer)  # noqa: E731

    def consistent(o: Example, c: Example) -> bool:
        a, b = keys.get(o.id), keys.get(c.id)
        return isinstance(a, int) and isinstance(b, int) and b - a == int(c.answer) - int(o.answer)

    return {"n": n, "original": sum(right(o) for o, _ in pairs) / n, "counterfactual": sum(right(c) for _, c in pairs) / n,
            "both": sum(right(o) and right(c) for o, c in pairs) / n,
            "consistent": sum(consistent(o, c) for o, c in pairs) / n}


@dataclass
class Config(PairedConfig):
    pass


class CrelTrainer(PairedTrainer):
    pair_name = "intervention"

    def __init__(self, cfg: Config, **kwargs):
        solve = chain_solver("train")

        def make_variant(ex: Example, rng: random.Random) -> Example | None:
            return counterfactual(ex, solve, rng)

        reward = PairReward(lambda c: self.task.answer_key(c),
                            lambda a, b, ya, yb: intervention_agreement(a, b, int(yb) - int(ya)))
        super().__init__(cfg, make_variant, reward, **kwargs)


def measure(trainer: Trainer, pairs: list[tuple[Example, Example]]) -> dict[str, float]:
    results = evaluate_sets(trainer, {"pairs": [ex for pair in pairs for ex in pair]})
    return intervention_table(pairs, greedy_keys(trainer.task, results["pairs"]["rows"]))


def run(cfg: Config) -> dict:
    trainer = CrelTrainer(cfg)
    pairs = counterfactual_pairs(trainer.held_out, "test", cfg.seed)
    before = measure(trainer, pairs)
    result = trainer.train()
    after = measure(trainer, pairs)
    keys = ["original", "counterfactual", "both", "consistent"]
    lines = [f"{'':<8} " + " ".join(f"{k:>14}" for k in keys)]
    lines += [f"{w:<8} " + " ".join(f"{t[k]:>14.3f}" for k in keys) for w, t in (("before", before), ("after", after))]
    print(f"counterfactual held-out ({before['n']} pairs, greedy):\n" + "\n".join(lines))
    result["counterfactual"] = {"before": before, "after": after}
    (trainer.run.dir / "counterfactual.json").write_text(json.dumps(result["counterfactual"], indent=1))
    return result
