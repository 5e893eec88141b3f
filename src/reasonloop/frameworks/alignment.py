"""Constitutional AI and deliberative alignment: principles in a file, a judge that reads them, the policy
trained on what the judge says.

**Constitutional AI** (`reasonloop constitutional`, frameworks/constitutional.py; Bai et al. 2022, "Constitutional AI: Harmlessness from
AI Feedback"). Stage `sl`: the policy answers train prompts; the judge critiques each answer against the
constitution (`CRITIQUE`: one `VIOLATES [id]` line per broken principle) and rewrites the ones that break a
principle (`REVISE`); the policy is fine-tuned on the revisions (and on its answers that broke nothing).
Stage `rl`: the policy samples two answers per prompt; the judge says which follows the constitution better
(`PAIRWISE_CONSTITUTION`, both orders, `rewards.judge.PairwiseJudge`); DPO (any loss of `algos.PREFERENCE_LOSSES`,
`dpo`'s keys) trains on the preferred/dispreferred pairs. No reference answer is used anywhere.

**Deliberative alignment** (`reasonloop deliberative`, frameworks/deliberative.py; Guan et al. 2024, "Deliberative Alignment: Reasoning
Enables Safer Language Models"). Stage `sft`: a generator with the spec in its prompt (`TEACHER`) answers train
prompts with reasoning that starts by citing the clause it applies; a judge that sees the spec (`SPEC_SCORE`)
keeps the compliant ones; the policy is fine-tuned on them *without* the spec in context. Stage `rl`: GRPO
(`recipes/rl.py`'s Trainer) whose only reward is that spec judge's 0/1 verdict. Measured: the spec-compliant
answer rate on held-out prompts (`task=ruled_arithmetic`, whose verifier is the spec) before and after each stage.

**The judge** is any `rewards.judge.JudgeBackend` (text in, text out): `judge_backend=rules` is `RuleJudge`,
a procedural judge that applies each principle's exact `check` (tasks/ruled.py) and answers every template in
its text protocol; `openai` sends the same prompts to an OpenAI-compatible server (`judge_url`, `judge_model`);
`policy` lets the policy judge itself (meaningless for the 2M-parameter embedded model; for real models).

Where this departs from the papers: the embedded model cannot read a constitution, so on the embedded
setting critique, revision and spec-in-context generation are the procedural judge's, which knows arithmetic:
its revisions are exact careful traces, so stage `sl` distils an oracle, and stage `sft` of deliberative
alignment distils the teacher's spec-citing traces rather than the policy's own. What is measured is the
pipeline (does a policy trained on judge-written data and judge labels follow the rules?), not judge quality.
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import yaml

from reasonloop.config import ConfigError, require, require_choice
from reasonloop.data.records import Example
from reasonloop.models.loading import ModelConfig
from reasonloop.recipes import dpo, rl
from reasonloop.rewards.answer_format import think_blocks
from reasonloop.rewards.core import RewardSpec
from reasonloop.rewards.judge import HFJudgeBackend, JudgeBackend, OpenAIBackend, PairwiseJudge, ScoreJudge, ScoreTemplate
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.selfimprove.loop import Loop, LoopConfig
from reasonloop.selfimprove.preference import PreferenceData, needs_reference
from reasonloop.selfimprove.selection import Sample
from reasonloop.tasks.ruled import CHECKS, REFUSAL, careful_trace, has_trigger
from reasonloop.train.evaluation import evaluate


# -- the constitution ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Principle:
    id: str
    text: str
    check: str = ""  # a name in tasks.ruled.CHECKS; empty: only an LLM judge can judge it


@dataclass(frozen=True)
class Constitution:
    name: str
    principles: tuple[Principle, ...]

    def text(self) -> str:
        """What a judge reads: one `[id] text` line per principle."""
        return "\n".join(f"[{p.id}] {p.text}" for p in self.principles)

    def violations(self, question: str, completion: str) -> list[str]:
        """Ids of the checkable principles `completion` breaks (a clause that does not apply is kept)."""
        return [p.id for p in self.principles if p.check and CHECKS[p.check](question, completion) is False]

    def id_of(self, check: str) -> str | None:
        return next((p.id for p in self.principles if p.check == check), None)


DEFAULT_CONSTITUTION = "constitution.yaml"
DEFAULT_SPEC = "constitution_spec.yaml"


def load_constitution(path: str, default: str = DEFAULT_CONSTITUTION) -> Constitution:
    """A constitution YAML (`name`, `principles: [{id, text, check}]`); empty `path`: the packaged `default`."""
    source = Path(path) if path else Path(str(resources.files("reasonloop") / "configs" / default))
    try:
        raw = yaml.safe_load(source.read_text())
        principles = tuple(Principle(str(p["id"]), str(p["text"]), str(p.get("check") or "")) for p in raw["principles"])
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise ConfigError(f"constitution={path!r}: not a constitution file ({type(exc).__name__}: {exc}); it needs "
                          "'principles:', a list of {id, text, check}") from None
    unknown = [p.check for p in principles if p.check and p.check not in CHECKS]
    if unknown or not principles or len({p.id for p in principles}) != len(principles):
        raise ConfigError(f"constitution={path!r}: needs principles with distinct ids and checks from {sorted(CHECKS)} "
                          f"(unknown: {unknown})")
    return Constitution(str(raw.get("name", source.stem)), principles)


# -- judge prompts (every field is filled by `fill`, so braces in answers are safe) -----------------------
CRITIQUE = (
    "Read the constitution, the question and the response.\n\nConstitution:\n{constitution}\n\n"
    "<question>{question}</question>\n<response>{response}</response>\n\n"
    "List every principle the response breaks, one line each as 'VIOLATES [id]: why'. "
    "If it breaks none, write 'NO VIOLATIONS'."
)
REVISE = (
    "Read the constitution, the question, the response and its critique.\n\nConstitution:\n{constitution}\n\n"
    "<question>{question}</question>\n<response>{response}</response>\nCritique:\n{critique}\n\n"
    "Rewrite the response so that it keeps every principle. Reply with the rewritten response only, "
    "between <revision> and </revision>."
)
PAIRWISE_CONSTITUTION = (
    "Please act as an impartial judge. Choose the response that better follows the constitution below; do not "
    "let the order or the length of the responses influence you. After a short explanation, output your final "
    'verdict by strictly following this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is '
    'better, and "[[C]]" for a tie.\n\nConstitution:\n{constitution}\n\n<question>{prompt}</question>\n\n'
    "[The Start of Assistant A's Answer]\n{a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{b}\n[The End of Assistant B's Answer]"
)
SPEC_SCORE = (
    "Spec:\n{constitution}\n\n<question>{prompt}</question>\n<response>{response}</response>\n\n"
    "Does the response comply with the spec? Explain briefly, then end with 'Score: 1' if it complies "
    "or 'Score: 0' if it does not."
)
TEACHER = (
    "Spec:\n{constitution}\n\n<question>{question}</question>\n\n"
    "Answer the question as the spec requires. Start the reasoning with the id of the clause you apply, as "
    "<think>ID;...</think><answer>...</answer>, and reply with that only."
)
VIOLATES_RE = re.compile(r"VIOLATES \[([^\]]+)\]")
REVISION_RE = re.compile(r"<revision>(.*?)</revision>", re.S)


def fill(template: str, **fields: str) -> str:
    """`template` with each `{name}` replaced by its field, in one pass (a field's own braces stay as they are)."""
    return re.sub(r"\{(\w+)\}", lambda m: fields[m.group(1)] if m.group(1) in fields else m.group(0), template)


def escape_braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def parse_violations(reply: str | None) -> list[str] | None:
    """The principle ids of a critique's `VIOLATES [id]` lines; [] for 'NO VIOLATIONS'; None if neither."""
    if reply is None:
        return None
    found = VIOLATES_RE.findall(reply)
    if found:
        return list(dict.fromkeys(found))
    return [] if "NO VIOLATIONS" in reply.upper() else None


def parse_revision(reply: str | None) -> str | None:
    found = REVISION_RE.findall(reply or "")
    return found[-1].strip() if found and found[-1].strip() else None


def _between(text: str, start: str, end: str) -> str | None:
    head, sep, tail = text.partition(start)
    if not sep:
        return None
    body, sep, _ = tail.partition(end)
    return body if sep else None


@dataclass
class RuleJudge:
    """A procedural `JudgeBackend` for checkable constitutions: it reads the question and response(s) out of
    the prompts above and answers in their protocol from each principle's exact check. Critique: the broken
    principles; revision: the careful trace; pairwise: the answer breaking fewer principles; spec score: 1 if
    none is broken; teacher: the clause that applies, then the refusal or the careful trace."""

    constitution: Constitution

    def complete(self, prompts: list[str]) -> list[str | None]:
        return [self._reply(p) for p in prompts]

    def _reply(self, prompt: str) -> str | None:
        c = self.constitution
        question = _between(prompt, "<question>", "</question>")
        if question is None:
            return None
        if "[The Start of Assistant A's Answer]" in prompt:
            a = _between(prompt, "[The Start of Assistant A's Answer]\n", "\n[The End of Assistant A's Answer]")
            b = _between(prompt, "[The Start of Assistant B's Answer]\n", "\n[The End of Assistant B's Answer]")
            if a is None or b is None:
                return None
            va, vb = len(c.violations(question, a)), len(c.violations(question, b))
            verdict = "A" if va < vb else "B" if vb < va else "C"
            return f"A breaks {va} principles, B breaks {vb}. [[{verdict}]]"
        if "<revision>" in prompt:
            trace = careful_trace(question)
            return f"<revision>{trace}</revision>" if trace else None
        if "Start the reasoning with the id of the clause" in prompt:
            refuse, compute = c.id_of("refuse_trigger"), c.id_of("compute")
            if has_trigger(question) and refuse:
                return f"<think>{refuse}</think><answer>{REFUSAL}</answer>"
            return careful_trace(question, cite=compute or "")
        response = _between(prompt, "<response>", "</response>")
        if response is None:
            return None
        broken = c.violations(question, response)
        if "Score: 1" in prompt:
            return f"Breaks {broken or 'nothing'}. Score: {0 if broken else 1}"
        if not broken:
            return "NO VIOLATIONS"
        return "\n".join(f"VIOLATES [{i}]: the response does not keep it." for i in broken)


@dataclass
class JudgeKeys:
    """The judge's keys, shared by both commands (a mixin of fields)."""

    judge_backend: str = "rules"
    """Who judges: rules (the procedural judge applying each principle's check) | openai (an OpenAI-compatible
    server: judge_url, judge_model) | policy (the policy itself, greedy; for real models)."""
    judge_url: str = ""
    """judge_backend=openai: the server's base URL (http://host:port, with or without /v1)."""
    judge_model: str = ""
    """judge_backend=openai: the model name sent with each request."""
    judge_api: str = "chat"
    """judge_backend=openai: chat (/v1/chat/completions) or completions (/v1/completions)."""
    judge_max_tokens: int = 256
    """Most tokens of one judge reply (openai and policy)."""


def make_backend(keys: JudgeKeys, constitution: Constitution, policy: Any = None) -> JudgeBackend:
    if keys.judge_backend == "rules":
        return RuleJudge(constitution)
    if keys.judge_backend == "openai":
        return OpenAIBackend(keys.judge_url, keys.judge_model, api=keys.judge_api, max_tokens=keys.judge_max_tokens)
    model, tokenizer = policy
    return HFJudgeBackend(model, tokenizer, max_new_tokens=keys.judge_max_tokens)


def check_judge_keys(keys: JudgeKeys) -> None:
    require_choice("judge_backend", keys.judge_backend, ["rules", "openai", "policy"])
    require(keys.judge_backend != "openai" or bool(keys.judge_url and keys.judge_model),
            "judge_backend=openai needs judge_url= and judge_model=")
    require_choice("judge_api", keys.judge_api, ["chat", "completions"])
    require(keys.judge_max_tokens > 0, "judge_max_tokens must be > 0")


# -- measurement -------------------------------------------------------------------------------------------
def compliance(engine: Any, task: Any, examples: list[Example], render: Any, constitution: Constitution,
               max_new_tokens: int, seed: int = 0, cites: bool = False) -> dict[str, float]:
    """Greedy held-out answers judged exactly (each principle's check, not the judge): the rate of answers
    breaking no principle, each principle's pass rate, the task verifier's accuracy, with `cites` the rate of
    answers whose reasoning starts by citing a principle id, and for trigger questions (the spec's S1) and
    the others their compliance separately."""
    summary, rows = evaluate(engine, task, examples, render, SamplingConfig(temperature=1.0, max_new_tokens=max_new_tokens),
                             k=0, seed=seed)
    rows = [r for r in rows if r["mode"] == "greedy"]
    broken = [constitution.violations(r["prompt"], r["completion"]) for r in rows]
    out = {"n": len(rows), "compliant": sum(not b for b in broken) / len(rows),
           "accuracy": summary["overall"]["pass@1_greedy"]}
    for p in constitution.principles:
        if p.check:
            out[p.id] = sum(p.id not in b for b in broken) / len(rows)
    if cites:
        ids = {p.id for p in constitution.principles}
        out["cites"] = sum((think_blocks(r["completion"]) or [""])[0].split(";")[0] in ids for r in rows) / len(rows)
    trig = [not b for r, b in zip(rows, broken) if has_trigger(r["prompt"])]
    if trig and len(trig) < len(rows):
        rest = [not b for r, b in zip(rows, broken) if not has_trigger(r["prompt"])]
        out["compliant_trigger"], out["compliant_other"] = sum(trig) / len(trig), sum(rest) / len(rest)
    return out


def format_compliance(rows: dict[str, dict[str, float]]) -> str:
    keys = [k for k in next(iter(rows.values())) if k != "n"]
    lines = [f"{'stage':<10} " + " ".join(f"{k:>17}" for k in keys)]
    lines += [f"{stage:<10} " + " ".join(f"{m.get(k, float('nan')):>17.3f}" for k in keys) for stage, m in rows.items()]
    return "\n".join(lines)


# -- Constitutional AI -------------------------------------------------------------------------------------
@dataclass
class ConstitutionalConfig(JudgeKeys, dpo.Config):
    """dpo's keys (loss, beta, steps = DPO steps of stage rl, optim, ...) plus the pipeline's own; dpo's `mode`,
    `judge` and `data` keys are not read."""

    constitution: str = ""
    """The constitution YAML (principles with id, text, check); empty: the packaged configs/constitution.yaml."""
    stages: list[str] = field(default_factory=lambda: ["sl", "rl"])
    """Stages in order: sl (critique -> revision -> SFT) and rl (AI preference labels -> DPO); [] only evaluates."""
    sl_prompts: int = 256
    """Stage sl: train prompts answered (one sample each), critiqued and revised."""
    rl_prompts: int = 256
    """Stage rl: train prompts with two sampled answers each, labelled by the pairwise judge."""
    sft_lr: float = 1e-4
    """Stage sl: the fine-tune's learning rate (optim.lr is DPO's)."""

    def __post_init__(self):
        super().__post_init__()
        check_judge_keys(self)
        for stage in self.stages:
            require_choice("stages", stage, ["sl", "rl"])
        require(self.sl_prompts > 0 and self.rl_prompts > 0, "sl_prompts and rl_prompts must be > 0")


def critique_and_revise(backend: JudgeBackend, constitution: Constitution, prompts: Sequence[str],
                        responses: Sequence[str]) -> tuple[list[str | None], dict[str, float]]:
    """SL-CAI data: each response as is when the critique finds no violation, its revision when it finds some,
    None when the judge's critique or revision does not parse (that prompt is dropped)."""
    text = constitution.text()
    critiques = backend.complete([fill(CRITIQUE, constitution=text, question=p, response=r) for p, r in zip(prompts, responses)])
    broken = [parse_violations(c) for c in critiques]
    todo = [i for i, b in enumerate(broken) if b]
    revisions = backend.complete([fill(REVISE, constitution=text, question=prompts[i], response=responses[i],
                                       critique=critiques[i] or "") for i in todo])
    out: list[str | None] = [r if b == [] else None for r, b in zip(responses, broken)]
    for i, rev in zip(todo, revisions):
        out[i] = parse_revision(rev)
    return out, {"critiqued": len(prompts), "violating": len(todo), "critique_unparsed": sum(b is None for b in broken),
                 "revised": sum(out[i] is not None for i in todo)}


def preference_pairs(judge: PairwiseJudge, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]
                     ) -> tuple[list[tuple[str, str, str]], dict[str, float]]:
    """(prompt, chosen, rejected) where the judge prefers one answer (P(A beats B) != 0.5, both orders averaged);
    identical answers are not judged."""
    idx = [i for i in range(len(prompts)) if a[i].strip() != b[i].strip()]
    probs = judge.compare([prompts[i] for i in idx], [a[i] for i in idx], [b[i] for i in idx])
    pairs = [(prompts[i], a[i], b[i]) if p > 0.5 else (prompts[i], b[i], a[i])
             for i, p in zip(idx, probs) if p is not None and p != 0.5]
    return pairs, {"pairs_judged": len(idx), "pairs": len(pairs), "ties_or_unparsed": len(idx) - len(pairs)}


def run_constitutional(cfg: ConstitutionalConfig) -> dict:
    constitution = load_constitution(cfg.constitution)
    loop = Loop(cfg, "constitutional")
    backend = make_backend(cfg, constitution, (loop.model, loop.tokenizer))
    pairwise = PairwiseJudge(backend, fill(PAIRWISE_CONSTITUTION, constitution=escape_braces(constitution.text())))
    measure = lambda: compliance(loop.sampler, loop.task, loop.held_out, loop.render, constitution,  # noqa: E731
                                 cfg.max_new_tokens, cfg.seed)
    loop.begin()
    table = {"base": measure()}
    rng = random.Random(cfg.seed)
    for it, stage in enumerate(cfg.stages, 1):
        if it < loop.start_iteration:
            continue
        if stage == "sl":
            examples = loop.next_prompts(cfg.sl_prompts)
            responses = loop.generate(examples, 1)
            revised, stats = critique_and_revise(backend, constitution, [e.prompt for e in examples], responses)
            kept = [Sample(e.prompt, r, 1.0, group=e.id) for e, r in zip(examples, revised) if r is not None]
            stats.update(loop.finetune(kept, optim=dataclasses.replace(cfg.optim, lr=cfg.sft_lr)))
        else:
            examples = loop.next_prompts(cfg.rl_prompts)
            two = loop.generate(examples, 2)
            triples, stats = preference_pairs(pairwise, [e.prompt for e in examples], two[0::2], two[1::2])
            ref = dpo.frozen_copy(loop.model) if needs_reference(cfg.loss) else None
            data = PreferenceData([loop.render(p) for p, _, _ in triples], [c for _, c, _ in triples],
                                  [r for _, _, r in triples])
            stats.update(dpo.train_on(cfg, loop, ref, data, cfg.steps, rng))
        table[stage] = measure()
        loop.end_iteration(it, {"stage": stage, **stats, **{f"compliance/{k}": v for k, v in table[stage].items()}})
    print(f"constitution {constitution.name!r}, held-out ({table['base']['n']} problems, greedy; exact checks):\n"
          f"{format_compliance(table)}")
    return loop.finish({"compliance": table, "judge_backend": cfg.judge_backend})


# -- deliberative alignment --------------------------------------------------------------------------------
@dataclass
class DeliberativeConfig(JudgeKeys, LoopConfig):
    task: str = "ruled_arithmetic"
    """Task spec; its verifier should be the spec (ruled_arithmetic's is)."""
    spec: str = ""
    """The spec YAML (clauses with id, text, check); empty: the packaged configs/constitution_spec.yaml."""
    stages: list[str] = field(default_factory=lambda: ["sft", "rl"])
    """Stages in order: sft (spec-in-context generation -> spec-judge filter -> SFT without the spec) and rl
    (GRPO with the spec judge as the reward); [] only evaluates."""
    sft_prompts: int = 512
    """Stage sft: train prompts the spec-reading generator answers."""
    rl_steps: int = 20
    """Stage rl: GRPO steps."""
    rl_prompts_per_step: int = 16
    """Stage rl: prompts per GRPO step."""
    rl_group_size: int = 8
    """Stage rl: samples per prompt."""
    rl_lr: float = 2e-4
    """Stage rl: learning rate."""

    def __post_init__(self):
        super().__post_init__()
        check_judge_keys(self)
        for stage in self.stages:
            require_choice("stages", stage, ["sft", "rl"])
        require(self.sft_prompts > 0 and self.rl_steps > 0 and self.rl_prompts_per_step > 0 and self.rl_group_size >= 2,
                "sft_prompts, rl_steps and rl_prompts_per_step must be > 0, rl_group_size >= 2")


def spec_judge(backend: JudgeBackend, spec: Constitution) -> ScoreJudge:
    """The pointwise judge that sees the spec: 1 for a compliant answer, 0 otherwise (None: no verdict)."""
    return ScoreJudge(backend, ScoreTemplate(fill(SPEC_SCORE, constitution=escape_braces(spec.text())), 0, 1))


def teacher_traces(backend: JudgeBackend, judge: ScoreJudge, spec: Constitution, prompts: Sequence[str]
                   ) -> tuple[list[str | None], dict[str, float]]:
    """Spec in context: the generator's spec-citing answer for each prompt, kept when the spec judge scores it 1."""
    answers = backend.complete([fill(TEACHER, constitution=spec.text(), question=p) for p in prompts])
    present = [i for i, a in enumerate(answers) if a]
    scores = judge.score([prompts[i] for i in present], [answers[i] for i in present])
    out: list[str | None] = [None] * len(prompts)
    for i, s in zip(present, scores):
        out[i] = answers[i] if s == 1.0 else None
    return out, {"generated": len(present), "kept": sum(o is not None for o in out)}


class SpecJudgeTrainer(rl.Trainer):
    """GRPO whose reward is the spec judge's verdict alone (the task's own verifier only evaluates)."""

    def __init__(self, cfg: rl.Config, judge: ScoreJudge, **kwargs: Any):
        self.judge = judge
        super().__init__(cfg, **kwargs)

    def _reward_specs(self) -> list[RewardSpec]:
        return [RewardSpec("spec_judge", self.judge.as_reward_fn(), 1.0)]


def run_deliberative(cfg: DeliberativeConfig) -> dict:
    spec = load_constitution(cfg.spec, DEFAULT_SPEC)
    loop = Loop(cfg, "deliberative")
    backend = make_backend(cfg, spec, (loop.model, loop.tokenizer))
    judge = spec_judge(backend, spec)
    loop.begin()
    table = {"base": compliance(loop.sampler, loop.task, loop.held_out, loop.render, spec, cfg.max_new_tokens, cfg.seed, cites=True)}
    for it, stage in enumerate(cfg.stages, 1):
        if it < loop.start_iteration:
            continue
        if stage == "sft":
            examples = loop.next_prompts(cfg.sft_prompts)
            traces, stats = teacher_traces(backend, judge, spec, [e.prompt for e in examples])
            stats.update(loop.finetune([Sample(e.prompt, t, 1.0, group=e.id) for e, t in zip(examples, traces) if t]))
            table[stage] = compliance(loop.sampler, loop.task, loop.held_out, loop.render, spec, cfg.max_new_tokens, cfg.seed, cites=True)
        else:
            start = loop.run.dir / f"stage{it}-start"
            loop.model.save_pretrained(str(start))
            loop.tokenizer.save_pretrained(str(start))
            rl_cfg = rl.Config(model=ModelConfig(name=str(start), dtype=cfg.model.dtype, device=cfg.model.device),
                               setting="defaults",
                               task=cfg.task, steps=cfg.rl_steps, prompts_per_step=cfg.rl_prompts_per_step,
                               group_size=cfg.rl_group_size, train_pool=cfg.train_pool, eval_n=cfg.eval_n, eval_k=0,
                               eval_every=0, samples_every=0, save_every=0, threads=cfg.threads, seed=cfg.seed,
                               sampling=SamplingConfig(temperature=1.0, max_new_tokens=cfg.max_new_tokens),
                               optim=dataclasses.replace(rl.Config().optim, lr=cfg.rl_lr),
                               output_dir=str(loop.run.dir / f"stage{it}-rl"))
            trainer = SpecJudgeTrainer(rl_cfg, judge)
            trainer.train()
            loop.model.load_state_dict(trainer.model.state_dict())
            stats = {"rl_steps": cfg.rl_steps, "judge_requests": judge.stats.requests,
                     "judge_unparsed": judge.stats.parse_failures + judge.stats.transport_failures}
            table[stage] = compliance(loop.sampler, loop.task, loop.held_out, loop.render, spec, cfg.max_new_tokens, cfg.seed, cites=True)
        loop.end_iteration(it, {"stage": stage, **stats, **{f"compliance/{k}": v for k, v in table[stage].items()}})
    print(f"spec {spec.name!r}, held-out ({table['base']['n']} problems, greedy; exact checks):\n{format_compliance(table)}")
    return loop.finish({"compliance": table, "judge_backend": cfg.judge_backend})
