"""Any reasoning-gym dataset as a task, with curriculum levels and audited scorers.

    task=reasoning_gym:basic_arithmetic,level=2              every curriculum attribute at level 2
    task=reasoning_gym:basic_arithmetic,level.num_terms=3    one attribute
    task=reasoning_gym:chain_sum,min_terms=2,max_terms=3     plain config fields
    task=reasoning_gym:puzzle24,scorer=exact                 exact match instead of an untrusted scorer

Scorers are not trusted blindly. reasoning-gym's default `score_answer` pays partial credit
`len(gold)/len(answer)` to any answer that merely *contains* the gold (answer spam earns reward), so
accuracy here is `score == 1.0`, never the partial score. Some scorers give full credit to wrong
answers (audited below against reasoning-gym 0.1.25); those tasks are refused unless `scorer=exact`.
At construction every task is also probed with junk answers ("", "0", "True", ...): a scorer that
pays 1.0 for one that is not the gold is refused the same way.
"""

from __future__ import annotations

import ast
import random
from dataclasses import MISSING, dataclass, field, fields
from enum import Enum
from typing import Any

from reasonloop.data.records import Example
from reasonloop.tasks import TaskError
from reasonloop.tasks.hygiene import in_test_split, normalize_text
from reasonloop.tasks.tabular import TEMPLATES
from reasonloop.rewards.core import RewardSpec
from reasonloop.rewards.answer_format import format_reward
from reasonloop.rewards.math_grader import GradePolicy, detect_hack, extract_answer, parse_number

UNTRUSTED_SCORERS = {
    "coin_flip": "score_answer pays 1.0 for the answer '0' whatever the probability",
    "game_of_life_halting": "score_answer pays 1.0 for both 'True' and 'False'",
    "puzzle24": "score_answer pays 1.0 for expressions built from numbers other than the four given",
}
JUNK_ANSWERS = ("", "0", "1", "True", "False", "none", "[]")
PROBE_SIZE = 8
MAX_DRAWS_PER_EXAMPLE = 20  # content-hash splitting discards draws of the other split


class ReasoningGymError(TaskError):
    """An unknown dataset, a bad level, or a scorer that pays wrong answers."""


@dataclass(frozen=True)
class GymSpec:
    dataset: str
    config: dict[str, Any] = field(default_factory=dict)
    levels: dict[str, int] = field(default_factory=dict)  # curriculum attribute -> level ("*" = all)
    scorer: str = "native"  # native | exact
    template: str = "think_answer"
    test_frac: float = 0.2


def parse_gym_spec(arg: str | None) -> GymSpec:
    """`NAME,key=value,...` -> GymSpec; values are Python literals when they parse as one, and may hold commas
    inside brackets or quotes (`operators=('+','-')`, `words=["a,b", "c"]`)."""
    if not arg:
        raise ReasoningGymError("reasoning_gym needs a dataset name: task=reasoning_gym:NAME[,key=value...]")
    name, *parts = [p.strip() for p in _top_level_split(arg) if p.strip()]
    config: dict[str, Any] = {}
    levels: dict[str, int] = {}
    options: dict[str, Any] = {}
    for part in parts:
        key, sep, raw = part.partition("=")
        if not sep:
            raise ReasoningGymError(f"bad option {part!r}: expected key=value")
        value = _literal(raw)
        if key == "level" or key.startswith("level."):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ReasoningGymError(f"bad option {part!r}: a level is a whole number")
            levels[key[len("level.") :] if key != "level" else "*"] = value
        elif key in ("scorer", "template", "test_frac"):
            options[key] = value
        else:
            config[key] = value
    return GymSpec(dataset=name, config=config, levels=levels, **options)


def _top_level_split(arg: str) -> list[str]:
    """`arg` split at the commas outside brackets and quotes."""
    parts, quote, start = [], "", 0
    closing = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for i, ch in enumerate(arg):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            stack.append(ch)
        elif ch in closing:
            if not stack or stack.pop() != closing[ch]:
                raise ReasoningGymError(f"unbalanced {ch!r} at character {i + 1} of {arg!r}")
        elif ch == "," and not stack:
            parts.append(arg[start:i])
            start = i + 1
    if quote or stack:
        raise ReasoningGymError(f"unclosed {quote or stack[-1]!r} in {arg!r}")
    return parts + [arg[start:]]


def _literal(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _build_dataset(spec: GymSpec, seed: int, size: int) -> Any:
    """A reasoning-gym ProceduralDataset, configured through its curriculum when levels are given."""
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    if spec.dataset not in DATASETS:
        raise ReasoningGymError(f"unknown reasoning-gym dataset {spec.dataset!r} ({len(DATASETS)} known)")
    dataset_class, config_class = DATASETS[spec.dataset]
    options = sorted({f.name for f in fields(config_class)} - {"seed", "size"})
    if unknown := sorted(set(spec.config) - set(options)):
        raise ReasoningGymError(f"{spec.dataset} has no option {', '.join(unknown)}; its options: {', '.join(options)}")
    config = _with_enums(config_class, spec.config)
    curriculum = _curriculum_at(spec) if spec.levels else None
    try:
        if curriculum is None:
            return reasoning_gym.create_dataset(spec.dataset, seed=seed, size=size, **config)
        return dataset_class(config=curriculum.generate_configuration({**config, "seed": seed, "size": size}))
    except (AssertionError, ValueError, TypeError) as exc:  # its validate(): max_real < min_real, a str for an int
        raise ReasoningGymError(f"bad options for {spec.dataset}: {exc}") from None


def _curriculum_at(spec: GymSpec) -> Any:
    """The dataset's curriculum with each attribute at the level `spec` asks for (clamped to its top level)."""
    from reasoning_gym.factory import create_curriculum, has_curriculum

    if not has_curriculum(spec.dataset):
        raise ReasoningGymError(f"{spec.dataset!r} has no curriculum; drop level=")
    curriculum = create_curriculum(spec.dataset)
    for attr, defn in curriculum.attributes.items():
        wanted = spec.levels.get(attr, spec.levels.get("*"))
        if wanted is not None:
            curriculum.set_attr_level(attr, min(wanted, len(defn.levels) - 1))
    unknown = set(spec.levels) - set(curriculum.attributes) - {"*"}
    if unknown:
        raise ReasoningGymError(f"{spec.dataset!r} has no curriculum attributes {sorted(unknown)}; known: {sorted(curriculum.attributes)}")
    return curriculum


def _with_enums(config_class: type, config: dict[str, Any]) -> dict[str, Any]:
    """`config` with the strings given for an enum-valued field made members of its enum: aiw's
    `task_types=['siblings']` is `[TaskType.SIBLINGS]`, which reasoning-gym needs and a spec string cannot write."""
    out = dict(config)
    for f in fields(config_class):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        member = default[0] if isinstance(default, (list, tuple)) and default else default
        if f.name not in out or not isinstance(member, Enum):
            continue
        enum, value = type(member), out[f.name]
        try:
            out[f.name] = ([enum(v) for v in value] if isinstance(value, (list, tuple)) else enum(value))
        except ValueError:
            raise ReasoningGymError(f"{f.name}={value!r}: each must be one of {[m.value for m in enum]}") from None
    return out


def _same_answer(a: str, b: str) -> bool:
    """Normalised string or numeric equality: what `scorer=exact` accepts."""
    if a.strip() == b.strip():
        return True
    na, nb = parse_number(a), parse_number(b)
    return na is not None and na == nb


def audit_scorer(dataset: Any) -> str | None:
    """Why this dataset's scorer cannot be trusted (a junk answer earns full credit), or None."""
    for i in range(min(PROBE_SIZE, len(dataset))):
        entry = dataset[i]
        for junk in JUNK_ANSWERS:
            if not _same_answer(junk, str(entry["answer"])) and dataset.score_answer(junk, entry) >= 1.0:
                return f"score_answer({junk!r}) = 1.0 although the answer is {entry['answer']!r}"
    return None


@dataclass
class ReasoningGymTask:
    """A reasoning-gym dataset behind the Task protocol; accuracy is full credit from the scorer."""

    spec: GymSpec
    policy: GradePolicy = GradePolicy()
    _scorer: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.spec.scorer not in ("native", "exact"):
            raise ReasoningGymError(f"scorer must be 'native' or 'exact', not {self.spec.scorer!r}")
        self._scorer = _build_dataset(self.spec, seed=0, size=PROBE_SIZE)
        if self.spec.scorer == "native":
            reason = UNTRUSTED_SCORERS.get(self.spec.dataset) or audit_scorer(self._scorer)
            if reason:
                raise ReasoningGymError(
                    f"reasoning-gym's scorer for {self.spec.dataset!r} gives credit to wrong answers ({reason}); "
                    f"use scorer=exact to grade by exact match against the reference answer"
                )

    @property
    def name(self) -> str:
        return f"reasoning_gym:{self.spec.dataset}"

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        """`n` problems of `split`; train and test are separated by a hash of the question text, so
        no seed can make them share a problem.

        The test split is deduplicated (each held-out problem counts once; fewer than `n` come back if the
        space runs out). The train split keeps the generator's frequencies: deduplicating it would empty the
        small corners of the space first, so a pool of thousands drawn from a small space would hold far fewer
        easy problems than the generator (and the test split) makes. chain_sum with 2-4 one-digit terms: 1.5%
        two-term problems in 5 000 distinct ones against ~1/3 drawn, and RL trained on that mix forgot how to
        copy a two-term problem (docs/curriculum.md, "Fourth attempt")."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', not {split!r}")
        draws = n * MAX_DRAWS_PER_EXAMPLE
        dataset = _build_dataset(self.spec, seed=random.Random(f"{split}/{seed}").randrange(2**31), size=draws)
        want_test = split == "test"
        out: list[Example] = []
        seen: set[str] = set()
        for i in range(draws):
            entry = dataset[i]
            key = normalize_text(entry["question"])
            if (want_test and key in seen) or in_test_split(entry["question"], self.spec.test_frac) != want_test:
                continue
            seen.add(key)
            out.append(self._to_example(entry))
            if len(out) == n:
                break
        return out

    def _to_example(self, entry: dict[str, Any]) -> Example:
        prompt = TEMPLATES[self.spec.template].format(question=entry["question"])
        meta = {"entry": entry, "dataset": self.spec.dataset, "id": f"{self.spec.dataset}/{normalize_text(entry['question'])[:80]}"}
        return Example(prompt=prompt, answer=str(entry["answer"]), meta=meta)

    def score(self, completion: str, example: Example) -> float:
        """The scorer's credit for the completion's `<answer>`; 0 for a hacked or untagged completion."""
        if detect_hack(completion, self.policy):
            return 0.0
        answer, _ = extract_answer(completion, self.policy.require_answer_tag)
        if answer is None:
            return 0.0
        if self.spec.scorer == "exact":
            return float(_same_answer(answer, example.answer))
        return float(self._scorer.score_answer(answer, example.meta["entry"]))

    def is_correct(self, completion: str, example: Example) -> bool:
        return self.score(completion, example) >= 1.0

    def rewards(self) -> list[RewardSpec]:
        def accuracy(prompts: list[str], completions: list[str], answer: list[str], entry: list[dict], **_: Any) -> list[float]:
            return [
                float(self.is_correct(c, Example(prompt=p, answer=a, meta={"entry": e})))
                for p, c, a, e in zip(prompts, completions, answer, entry)
            ]

        return [RewardSpec("accuracy", accuracy, 1.0), RewardSpec("format", format_reward, 0.1)]


def make_task(arg: str | None, data_dir: str | None) -> ReasoningGymTask:
    """Registry factory; `data_dir` is unused (reasoning-gym generates its problems)."""
    try:
        import reasoning_gym  # noqa: F401
    except ImportError as exc:
        raise ReasoningGymError("reasoning_gym tasks need the optional extra: pip install 'reasonloop[reasoning-gym]'") from exc
    return ReasoningGymTask(parse_gym_spec(arg))
