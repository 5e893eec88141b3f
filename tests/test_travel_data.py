"""scripts/travel_data.py: the careful thoughts of the "defaults that travel" SFT data end at the gold answer."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("reasoning_gym")

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("travel_data", ROOT / "scripts" / "travel_data.py")
data = importlib.util.module_from_spec(spec)
spec.loader.exec_module(data)


def test_the_careful_procedures_by_hand():
    assert (data.parse_chain("8+4-3").trace(), data.parse_chain("8+4-3").answer) == ("8+4=12;12-3=9", 9)
    assert (data.parse_chain("-2-7+1").trace(), data.parse_chain("-2-7+1").answer) == ("-2-7=-9;-9+1=-8", -8)
    assert data.parse_chain("8+4-3").trace(careful=False) == "8+4-3=9"  # the worked form
    assert data.careful_legs({"dog": 2, "spider": 1}, {"dog": 4, "spider": 8}) == ("2*4=8;1*8=8;8+8=16", 16)
    assert data.careful_letters("h", "Hundred") == ("H1u1n1d1r1e1d1", 1)
    assert data.careful_letters("e", "Verne") == ("V0e1r1n1e2", 2)
    assert data.careful_backward("hay") == ("1h2a3y;3y2a1h", "yah")
    assert data.careful_equation("e + 5 = 12") == ("12-5=7", 7)
    assert data.careful_equation("t - 9 = -5") == ("-5+9=4", 4)
    assert data.careful_equation("5 - d = 0") == ("5-0=5", 5)
    assert data.careful_equation("1 - m = -4") == ("1+4=5", 5)
    assert data.careful_equation("3*x + 5 = 20") is None  # a coefficient: no careful thought, answer-only
    assert data.careful_decimals("0.8+4.6-8.4") == ("0.8+4.6=5.4;5.4-8.4=-3.0", "-3.0")
    assert data.careful_complex((3.0, 4.0), (-2.0, -1.0), "-") == ("3+2=5;4+1=5", "5.0 + 5.0i")
    assert data.careful_complex((-8.0, 6.0), (-2.0, -3.0), "+") == ("-8-2=-10;6-3=3", "-10.0 + 3.0i")
    assert data.careful_complex((3.0, 4.0), (-3.0, 1.0), "+") == ("3-3=0;4+1=5", "5.00i")  # reasoning-gym's forms
    assert data.careful_complex((3.0, -4.0), (1.0, -4.0), "-") == ("3-1=2;-4+4=0", "2.00")
    assert data.careful_complex((1.0, 2.0), (3.0, 4.0), "*") is None


@pytest.mark.parametrize("spec", [
    "chain_sum,min_terms=2,max_terms=4,min_digits=1,max_digits=1",
    "basic_arithmetic,min_terms=2,max_terms=4,min_digits=1,max_digits=1,operators=+-,allow_parentheses=False,"
    "allow_negation=False",
    "products,min_terms=2,max_terms=2,min_digits=1,max_digits=1",
    "leg_counting,min_animals=1,max_animals=2,max_instances=3",
    "letter_counting,min_words=1,max_words=1",
    "spell_backward,min_word_len=3,max_word_len=4",
    "aiw,task_types=['siblings'],task_type_weights=[1.0],max_entities=10",
    "decimal_chain_sum,min_terms=2,max_terms=3,min_digits=1,max_digits=1,min_decimal_places=1,max_decimal_places=1",
    "simple_equations,min_terms=2,max_terms=2,min_value=1,max_value=9,operators=('+','-'),operators_weights=[0.5,0.5]",
    "complex_arithmetic,min_real=-10,max_real=10,min_imag=-10,max_imag=10,operations=('+','-'),"
    "operations_weights=[0.5,0.5]",
])
def test_every_task_of_the_table_gets_a_worked_thought_that_ends_at_its_answer(spec):
    rows = data.records(spec, "careful", 40)  # records() raises if a thought ends elsewhere than the gold
    assert len(rows) == 40
    thoughts = [r["completion"].split("<think>")[1].split("</think>")[0] for r in rows]
    answers = [r["completion"].split("<answer>")[1].split("</answer>")[0] for r in rows]
    assert all(t != a for t, a in zip(thoughts, answers)), "a worked thought, not the bare answer"
    assert all(data.records(spec, "answer", 3)[i]["completion"].count(answers[i]) == 2 for i in range(3))


def test_bad_input_ends_in_one_line_and_leaves_an_existing_output_alone(tmp_path, monkeypatch):
    out = tmp_path / "data.jsonl"
    out.write_text("kept\n")
    for argv in (["no_such_task", str(out), "careful"], ["chain_sum", str(out), "careful", "abc"]):
        monkeypatch.setattr("sys.argv", ["travel_data.py", *argv])
        with pytest.raises(SystemExit) as done:
            data.main()
        assert str(done.value.code).startswith("travel_data.py: ") and "\n" not in str(done.value.code)
    assert out.read_text() == "kept\n" and sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]
