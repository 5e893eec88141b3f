"""ARRE: training on semantics-preserving perturbations with a consistency term; the robustness gap measured.

The survey's claim: training on perturbed problems, with a term that rewards the same answer on a problem
and its perturbation, closes the gap between accuracy on clean and on perturbed problems. Made concrete
for the embedded arithmetic task (`Q: 17+4-9=?`), four perturbations that keep the answer:

- irrelevant   a sentence with no number before the question: `Q: Tom likes tea. 17+4-9=?`
- reorder      the signed terms in another order whose running values stay >= 0: `Q: 17-9+4=?`
- rename       one operand named and defined first: `Q: let c=4; 17+c-9=?`
- distractor   a sentence with an unrelated number: `Q: Bus 35 is late. 17+4-9=?`

Sentences, distractor templates and variable names come from two disjoint pools: training draws from the
`train` pool, the perturbed held-out set from the `test` pool, so the held-out gap measures perturbations
of a kind the model has seen, never the very sentences it trained on. (`tasks/augment.py`'s number
substitution changes the answer; it is CREL's counterfactual, not a perturbation.)

Training is `PairedTrainer` (frameworks/paired.py): of each step's B prompts, `variant_frac` are
perturbations of the step's other prompts (same B x G samples as GRPO), and the `pair` reward component
(weight `pair_coef`) is `pair_agreement`: the fraction of the other group's samples with the same answer.
`variant_frac=0` is plain GRPO with the same robustness evaluation (the baseline); `pair_coef=0` is
augmentation without the consistency term.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from dataclasses import dataclass, field, replace

from reasonloop.config import require
from reasonloop.data.records import Example
from reasonloop.frameworks.paired import PairedConfig, PairedTrainer, PairReward, evaluate_sets, pair_agreement
from reasonloop.recipes.rl import Trainer
from reasonloop.tasks.arithmetic import split_of

KINDS = ("irrelevant", "reorder", "rename", "distractor")
POOLS = {
    "train": {
        "sentences": ["Tom likes tea.", "The sky is blue.", "It rained today.", "Cats can jump.", "The door is red.",
                      "We met at noon."],
        "distractors": ["Bus {n} is late.", "Room {n} is empty.", "Ann is {n}.", "Tim ran {n} laps."],
        "names": "abcdefghijkm",
    },
    "test": {
        "sentences": ["Birds sing loudly.", "The lamp is on.", "Ann reads books.", "Snow is cold.", "Max has a dog.",
                      "The bell rang."],
        "distractors": ["Page {n} is torn.", "Gate {n} is open.", "Bob has {n} pens.", "Sue won {n} games."],
        "names": "npqrstuvwxyz",
    },
}
QUESTION_RE = re.compile(r"^Q: (?P<expr>\d+(?:[+-]\d+)*)=\?\n$")
TERM_RE = re.compile(r"([+-]?)(\d+)")


def terms_of(prompt: str) -> list[tuple[str, int]] | None:
    """`Q: 17+4-9=?` -> [('+', 17), ('+', 4), ('-', 9)]; None for a prompt that is not a clean chain."""
    m = QUESTION_RE.match(prompt)
    if m is None:
        return None
    return [(sign or "+", int(num)) for sign, num in TERM_RE.findall(m.group("expr"))]


def chain_text(terms: list[tuple[str, int]]) -> str:
    """The inverse of `terms_of` for the expression: the leading '+' is not written."""
    return "".join(("" if i == 0 else sign) + str(n) for i, (sign, n) in enumerate(terms))


def running_ok(terms: list[tuple[str, int]]) -> bool:
    """A leading '+' term and every running value >= 0 (the task's own invariant)."""
    if not terms or terms[0][0] != "+":
        return False
    value = 0
    for sign, n in terms:
        value += n if sign == "+" else -n
        if value < 0:
            return False
    return True


def reorder(terms: list[tuple[str, int]], rng: random.Random, split: str | None = None) -> list[tuple[str, int]] | None:
    """Another order of the signed terms with the same value and running values >= 0, drawn uniformly among
    the distinct valid ones (None when there is none: `5-3`, or all terms equal). With `split`, only orders
    whose chain belongs to that split of the arithmetic task (a reordered chain is another problem: a train
    perturbation must not be a held-out problem, nor a held-out one a train problem)."""
    orders = {p for p in itertools.permutations(terms) if list(p) != terms and running_ok(list(p))
              and (split is None or split_of(chain_text(list(p))) == split)}
    return list(rng.choice(sorted(orders))) if orders else None


def perturb(example: Example, kind: str, rng: random.Random, pool: str = "train") -> Example | None:
    """`example` with one perturbation of `kind` (answer unchanged); None when the prompt is not a chain or
    the kind cannot apply (reorder of `5-3`)."""
    terms = terms_of(example.prompt)
    if terms is None:
        return None
    words = POOLS[pool]
    expr = chain_text(terms)
    if kind == "irrelevant":
        prompt = f"Q: {rng.choice(words['sentences'])} {expr}=?\n"
    elif kind == "distractor":
        prompt = f"Q: {rng.choice(words['distractors']).format(n=rng.randint(10, 99))} {expr}=?\n"
    elif kind == "reorder":
        order = reorder(terms, rng, pool)
        if order is None:
            return None
        prompt = f"Q: {chain_text(order)}=?\n"
    elif kind == "rename":
        i = rng.randrange(len(terms))
        name = rng.choice(words["names"])
        named = "".join(("" if j == 0 else s) + (name if j == i else str(n)) for j, (s, n) in enumerate(terms))
        prompt = f"Q: let {name}={terms[i][1]}; {named}=?\n"
    else:
        raise ValueError(f"unknown perturbation {kind!r}; known: {KINDS}")
    return replace(example, prompt=prompt, meta={**example.meta, "id": f"{example.id}~{kind}", "perturbation": kind,
                                                 "perturbed_from": example.id})


def perturbed_sets(examples: list[Example], kinds: tuple[str, ...], pool: str, seed: int) -> dict[str, list[tuple[Example, Example]]]:
    """Per kind, the (clean, perturbed) pairs of `examples` that kind applies to; deterministic in seed."""
    rng = random.Random(f"{seed}:arre:{pool}")
    out: dict[str, list[tuple[Example, Example]]] = {}
    for kind in kinds:
        pairs = [(ex, perturb(ex, kind, rng, pool)) for ex in examples]
        out[kind] = [(ex, v) for ex, v in pairs if v is not None]
    return out


def robustness_gap(clean: dict[str, bool], perturbed: dict[str, list[tuple[str, bool]]]) -> dict[str, dict[str, float]]:
    """Per kind: accuracy on the clean problems the kind applies to, on their perturbations, and the gap
    (clean - perturbed); `clean` maps problem id -> correct, `perturbed` kind -> [(clean id, correct)].
    'mean' averages the kinds' rows."""
    out = {}
    for kind, rows in perturbed.items():
        if not rows:
            continue
        c = sum(clean[i] for i, _ in rows) / len(rows)
        p = sum(ok for _, ok in rows) / len(rows)
        out[kind] = {"n": len(rows), "clean": c, "perturbed": p, "gap": c - p}
    if out:
        out["mean"] = {k: sum(r[k] for r in out.values()) / len(out) for k in ("n", "clean", "perturbed", "gap")}
    return out


@dataclass
class Config(PairedConfig):
    perturbations: list[str] = field(default_factory=lambda: list(KINDS))
    """Perturbation kinds used in training and in the perturbed held-out set: irrelevant | reorder | rename | distractor."""

    def __post_init__(self):
        super().__post_init__()
        for kind in self.perturbations:
            require(kind in KINDS, f"perturbations: unknown kind {kind!r}; known: {list(KINDS)}")
        require(bool(self.perturbations), "perturbations must name at least one kind")


class ArreTrainer(PairedTrainer):
    pair_name = "consistency"

    def __init__(self, cfg: Config, **kwargs):
        kinds = tuple(cfg.perturbations)

        def make_variant(ex: Example, rng: random.Random) -> Example | None:
            return perturb(ex, rng.choice(kinds), rng, "train")

        reward = PairReward(lambda c: self.task.answer_key(c), lambda a, b, _ya, _yb: pair_agreement(a, b))
        super().__init__(cfg, make_variant, reward, **kwargs)


def measure(trainer: Trainer, sets: dict[str, list[tuple[Example, Example]]]) -> dict[str, dict[str, float]]:
    """The robustness-gap table of the trainer's current policy (greedy)."""
    clean = {ex.id: ex for pairs in sets.values() for ex, _ in pairs}
    variants = [v for pairs in sets.values() for _, v in pairs]
    results = evaluate_sets(trainer, {"clean": list(clean.values()), "perturbed": variants})
    ok = {name: {r["id"]: bool(r["correct"]) for r in res["rows"] if r["mode"] == "greedy"} for name, res in results.items()}
    return robustness_gap(ok["clean"], {k: [(ex.id, ok["perturbed"][v.id]) for ex, v in pairs] for k, pairs in sets.items()})


def format_gap(tables: dict[str, dict[str, dict[str, float]]]) -> str:
    kinds = [k for k in next(iter(tables.values()))]
    lines = [f"{'':<8} " + " ".join(f"{k:>22}" for k in kinds), f"{'':<8} " + " ".join(f"{'clean pert gap':>22}" for _ in kinds)]
    for when, table in tables.items():
        lines.append(f"{when:<8} " + " ".join(
            f"{table[k]['clean']:>7.3f}{table[k]['perturbed']:>7.3f}{table[k]['gap']:>+8.3f}" for k in kinds))
    return "\n".join(lines)


def run(cfg: Config) -> dict:
    trainer = ArreTrainer(cfg)
    sets = perturbed_sets(trainer.held_out, tuple(cfg.perturbations), "test", cfg.seed)
    before = measure(trainer, sets)
    result = trainer.train()
    after = measure(trainer, sets)
    print(f"robustness (held-out, greedy; clean accuracy, perturbed accuracy, gap = clean - perturbed):\n"
          f"{format_gap({'before': before, 'after': after})}")
    result["robustness"] = {"before": before, "after": after}
    (trainer.run.dir / "robustness.json").write_text(json.dumps(result["robustness"], indent=1))
    return result
