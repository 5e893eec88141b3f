"""The suite's markers: `ci` tests are slow tests that CI still runs, in its second pytest call."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _suite_conftest():
    # by path: a bare `import conftest` finds whichever tests/*/conftest.py the full suite put on sys.path first
    spec = importlib.util.spec_from_file_location("tests_conftest", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytest_collection_modifyitems = _suite_conftest().pytest_collection_modifyitems


class Item:
    def __init__(self, nodeid: str, *marks: str):
        self.nodeid, self.marks = nodeid, marks

    def get_closest_marker(self, name):
        return name if name in self.marks else None


def test_a_ci_test_must_also_be_slow():
    pytest_collection_modifyitems(None, [Item("t.py::a", "slow", "ci"), Item("t.py::b", "slow"), Item("t.py::c")])
    with pytest.raises(pytest.UsageError) as exc:
        pytest_collection_modifyitems(None, [Item("t.py::a", "slow", "ci"), Item("t.py::d", "ci")])
    assert str(exc.value) == "marked ci but not slow (CI would run them twice): t.py::d"


def test_ci_runs_the_default_suite_then_the_slow_tests_marked_ci():
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("./dev.sh")]
    assert lines == ["./dev.sh test", './dev.sh test -m "slow and ci"']
