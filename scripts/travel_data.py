"""docs/curriculum.md "Defaults that travel": SFT records for a reasoning-gym task, the new user's first step.

    python scripts/travel_data.py "chain_sum,min_terms=2,max_terms=4,min_digits=1,max_digits=1" out.jsonl careful [N]

Writes N (2 000) records `{"prompt", "completion"}` from the task's train split (template=raw), the completion
`<think>THOUGHT</think><answer>ANSWER</answer>`. FORM chooses the thought:
- answer: the answer itself (what a user with answer-only data has);
- worked: a question ending in a chain of integers (chain_sum's "... problem: 8 + 4 =", basic_arithmetic's
  "Calculate 8 + 4.") gets the chain and its result in the embedded model's notation, `8+4=12`;
- careful: the thought worked one step at a time in the embedded arithmetic task's careful notation, where the
  task has a procedure the 4-layer model can follow:
  - +/- chains: `8+4=12;12-3=9`, left to right;
  - products (reasoning-gym `products`): `4*7=28`;
  - leg_counting: each animal's count times its legs, then the sum: `2*4=8;1*8=8;8+8=16`;
  - letter_counting (one word): the word spelled with the running count after each letter, `h1u1n1d1r1e1d1`
    for "h" in "hundred", so the count is read off the last step;
  - spell_backward: the word spelled with each letter's position, then the positions counted down with the
    letter each one holds, `1h2a3y;3y2a1h` for "hay": the second half looks each position up in the first.
  - decimal_chain_sum with one decimal place: the +/- chain worked left to right in decimals, `0.8+4.6=5.4;5.4-8.4=-3.0`;
  - aiw (Alice in Wonderland) siblings: her sisters and herself, `4+1=5` for "Mary has 2 brothers and she also
    has 4 sisters. How many sisters does Mary's brother have?";
  - simple_equations with one +/- term (`x + 5 = 12`, `x - 9 = -5`, `1 - x = -4`): the one subtraction or
    addition that isolates the variable, `12-5=7`, `-5+9=4`, `1+4=5`.
  Other questions stay answer-only. Every careful thought ends at the gold answer (checked as it is written).
"""
from __future__ import annotations

import json
import re
import sys
from decimal import Decimal
from pathlib import Path

from reasonloop.data.records import Example
from reasonloop.tasks import TaskError, make_task
from reasonloop.tasks.arithmetic import Problem

# "...: 8 + 4 =" (chain_sum) or "Calculate 8 + 4." (basic_arithmetic) -> "8 + 4"
CHAIN = re.compile(r"(?::|Calculate)\s*(-?\d+(?:\s*[-+]\s*\d+)+)\s*(?:=|\.)\s*$")
PRODUCT = re.compile(r"multiplication:\s*(\d+)\s*\*\s*(\d+)")
LETTER = re.compile(r'letter "(.)" appear in the text: "([^" ]+)"\?')
DECIMAL_CHAIN = re.compile(r":\s*(\d+\.\d+(?:\s*[-+]\s*\d+\.\d+)+)\s*=\s*$")  # ...: 0.8 + 4.6 - 8.4 =
SIBLINGS = re.compile(r"has (\d+) (sisters|brothers) and she also has (\d+) (sisters|brothers)\. "
                      r"How many sisters does \w+'s brother have\?")
EQUATION = re.compile(r"^(?:([a-z]) ([-+]) (\d+)|(\d+) - ([a-z])) = (-?\d+)$")  # x + 5 = 12 | 1 - x = -4
BACKWARD = re.compile(r"Spell this word backward \(example: \w+ -> \w+\): (\S+)$")


def parse_chain(chain: str) -> Problem:
    """'8+4-3' -> the embedded task's Problem, whose trace is the careful (`8+4=12;12-3=9`) or lazy (`8+4-3=9`)
    thought; a leading '-' negates the first term."""
    body = chain.lstrip("-")
    nums, ops = [int(n) for n in re.findall(r"\d+", body)], tuple(re.findall(r"[-+]", body))
    first = -nums[0] if chain.startswith("-") else nums[0]
    return Problem(operands=(first, *nums[1:]), ops=ops, level=0)


def careful_legs(animals: dict[str, int], legs: dict[str, int]) -> tuple[str, int]:
    """{'dog': 2, 'spider': 1} -> ('2*4=8;1*8=8;8+8=16', 16)."""
    products = [(n, legs[a], n * legs[a]) for a, n in animals.items()]
    steps = [f"{n}*{per}={p}" for n, per, p in products]
    acc = products[0][2]
    for _, _, p in products[1:]:
        steps.append(f"{acc}+{p}={acc + p}")
        acc += p
    return ";".join(steps), acc


def careful_decimals(chain: str) -> tuple[str, str]:
    """'0.8+4.6-8.4' -> ('0.8+4.6=5.4;5.4-8.4=-3.0', '-3.0'): exact decimal steps, as many places as the operands."""
    terms = re.findall(r"[-+]?\d+\.\d+", chain)
    acc, steps = Decimal(terms[0]), []
    for term in terms[1:]:
        new = acc + Decimal(term)
        steps.append(f"{acc}{term}={new}")
        acc = new
    return ";".join(steps), str(acc)


def signed_step(a: int, op: str, b: int) -> Problem:
    """a op b with b's sign folded into the operator: (3, '+', -2) -> `3-2=1`, (3, '-', -2) -> `3+2=5`."""
    return Problem(operands=(a, abs(b)), ops=(op if b >= 0 else {"+": "-", "-": "+"}[op],), level=0)


def careful_equation(equation: str) -> tuple[str, int] | None:
    """'e + 5 = 12' -> ('12-5=7', 7); 'h - 9 = -5' -> ('-5+9=4', 4); '1 - m = -4' -> ('1+4=5', 5); None for any
    other shape (a coefficient, more terms)."""
    m = EQUATION.match(equation)
    if m is None:
        return None
    _, op, a, b, _, c = m.groups()
    if b is None:  # x op a = c: x = c - (op a)
        problem = signed_step(int(c), "-", int(a) if op == "+" else -int(a))
    else:  # b - x = c: x = b - c
        problem = signed_step(int(b), "-", int(c))
    return problem.trace(), problem.answer


def careful_complex(num1: tuple[float, float], num2: tuple[float, float], op: str) -> tuple[str, str] | None:
    """((3, 4), (-2, -1), '-') -> ('3+2=5;4+1=5', '5.0 + 5.0i'): real parts, then imaginary parts; the answer
    written as reasoning-gym writes it. None for * and /."""
    if op not in "+-":
        return None
    parts = [signed_step(int(x), op, int(y)) for x, y in zip(num1, num2)]
    real, imag = (p.answer for p in parts)
    if imag == 0:
        answer = f"{real:.2f}"
    elif real == 0:
        answer = f"{imag:.2f}i"
    else:
        answer = f"{float(real)} {'+' if imag > 0 else '-'} {float(abs(imag))}i"
    return ";".join(p.trace() for p in parts), answer


def careful_letters(letter: str, word: str) -> tuple[str, int]:
    """('h', 'hundred') -> ('h1u1n1d1r1e1d1', 1): each letter, then the count so far (case-insensitive)."""
    count, steps = 0, []
    for ch in word:
        count += ch.lower() == letter.lower()
        steps.append(f"{ch}{count}")
    return "".join(steps), count


def careful_backward(word: str) -> tuple[str, str]:
    """'hay' -> ('1h2a3y;3y2a1h', 'yah')."""
    forward = "".join(f"{i}{ch}" for i, ch in enumerate(word, 1))
    backward = "".join(f"{i}{word[i - 1]}" for i in range(len(word), 0, -1))
    return f"{forward};{backward}", word[::-1]


def thought(ex: Example, form: str) -> str:
    """The thought of one record (see the module docstring); the answer itself when the form has none."""
    if form == "answer":
        return ex.answer
    entry = ex.meta.get("entry", {})
    worked: tuple[str, int | str] | None = None
    if form == "careful" and (m := DECIMAL_CHAIN.search(ex.prompt)):
        worked = careful_decimals("".join(m.group(1).split()))
    elif m := CHAIN.search(ex.prompt):
        problem = parse_chain("".join(m.group(1).split()))
        worked = (problem.trace(careful=form == "careful"), problem.answer)
    elif form == "careful" and (m := PRODUCT.search(ex.prompt)):
        a, b = int(m.group(1)), int(m.group(2))
        worked = (f"{a}*{b}={a * b}", a * b)
    elif form == "careful" and entry.get("metadata", {}).get("animals"):
        from reasoning_gym.arithmetic.leg_counting import ANIMALS
        worked = careful_legs(entry["metadata"]["animals"], ANIMALS)
    elif form == "careful" and (m := LETTER.search(ex.prompt)):
        worked = careful_letters(m.group(1), m.group(2))
    elif form == "careful" and (m := BACKWARD.search(ex.prompt.strip())):
        worked = careful_backward(m.group(1))
    elif form == "careful" and (m := SIBLINGS.search(ex.prompt)):
        sisters = int(m.group(1) if m.group(2) == "sisters" else m.group(3))
        worked = (f"{sisters}+1={sisters + 1}", sisters + 1)
    elif form == "careful" and "equation" in entry.get("metadata", {}):
        worked = careful_equation(entry["metadata"]["equation"])
    elif form == "careful" and entry.get("metadata", {}).get("source_dataset") == "complex_arithmetic":
        meta = entry["metadata"]
        worked = careful_complex(meta["num1"], meta["num2"], meta["operation"])
    if worked is None:
        return ex.answer
    steps, result = worked
    if str(result) != ex.answer:
        raise ValueError(f"the {form} thought {steps!r} ends at {result}, the gold answer is {ex.answer!r}")
    return steps


def records(spec: str, form: str, n: int = 2000) -> list[dict[str, str]]:
    task = make_task(f"reasoning_gym:{spec},template=raw")
    return [{"prompt": ex.prompt, "completion": f"<think>{thought(ex, form)}</think><answer>{ex.answer}</answer>"}
            for ex in task.examples("train", n, seed=0)]


def main() -> None:
    usage = "usage: travel_data.py SPEC OUT.jsonl answer|worked|careful [N]"
    if len(sys.argv) not in (4, 5) or sys.argv[3] not in ("answer", "worked", "careful"):
        sys.exit(usage)
    spec, out, form = sys.argv[1:4]
    tmp = Path(f"{out}.tmp")  # written whole, then renamed: an existing OUT is never left half-written
    try:
        rows = records(spec, form, int(sys.argv[4]) if len(sys.argv) == 5 else 2000)
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        tmp.replace(out)
    except KeyboardInterrupt:
        tmp.unlink(missing_ok=True)
        print(f"travel_data.py: interrupted; {out} not written", file=sys.stderr)
        sys.exit(130)
    except (ValueError, OSError, TaskError) as exc:  # a bad N or spec, a thought off the gold, an unwritable OUT
        tmp.unlink(missing_ok=True)
        sys.exit(f"travel_data.py: {type(exc).__name__}: {exc}")
    print(f"{len(rows)} records -> {out}")


if __name__ == "__main__":
    main()
