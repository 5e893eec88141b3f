"""rewards.core: loading reward functions named in a config."""

import pytest


def test_reward_functions_load_by_name_from_the_working_directory(tmp_path, monkeypatch):
    import sys

    from reasonloop.rewards.core import load_function

    (tmp_path / "cwd_rewards.py").write_text("def short(prompts, completions, **_):\n    return [-len(c) for c in completions]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])  # as under the console script
    fn = load_function("cwd_rewards:short")
    assert fn(["p", "p"], ["ab", "abcd"]) == [-2, -4]
    for bad, message in [("cwd_rewards", "'module:function'"), ("cwd_rewards:nope", "AttributeError"),
                         ("no_such_module_xyz:f", "ModuleNotFoundError")]:
        with pytest.raises(ValueError, match=message):
            load_function(bad)
