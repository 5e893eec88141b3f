import subprocess
import sys

from reasonloop.cli import main


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("pretrain", "sft", "eval", "train", "grpo", "ppo"):
        assert f"  {name}" in out


def test_command_help_lists_options_with_defaults(capsys):
    assert main(["eval", "--help"]) == 0
    out = capsys.readouterr().out
    assert "sampling.temperature (float, default 1.0)" in out
    assert "Samples per problem" in out


def test_preset_help_shows_the_preset(capsys):
    assert main(["dapo", "--help"]) == 0
    assert "clip_high=0.28" in capsys.readouterr().out


def test_unknown_command_and_bad_key_fail_cleanly(capsys):
    assert main(["trian"]) == 2
    assert "did you mean 'train'" in capsys.readouterr().err
    assert main(["eval", "k=notanint"]) == 2
    err = capsys.readouterr().err
    assert "config error" in err and "'k'" in err
    assert main(["eval", "temprature=1"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "reasonloop.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "usage: reasonloop" in out


def test_bad_task_or_data_is_a_message_not_a_traceback(capsys, tmp_path):
    assert main(["eval", "task=nosuch", f"output_dir={tmp_path / 'a'}"]) == 2
    assert "error: unknown task 'nosuch'" in capsys.readouterr().err
    assert main(["sft", f"data={tmp_path / 'missing.jsonl'}", f"output_dir={tmp_path / 'b'}"]) == 2
    assert "cannot load dataset" in capsys.readouterr().err


def test_a_config_names_the_preset_it_carries():
    from reasonloop.config import load_config
    from reasonloop.recipes import rl
    from reasonloop.recipes.presets import RL_PRESETS, preset_of

    for name, keys in RL_PRESETS.items():
        assert preset_of(load_config(rl.Config, keys)) == name
    assert preset_of(load_config(rl.Config, [*RL_PRESETS["dapo"], "clip_high=0.3"])) == "custom"
    assert preset_of(load_config(rl.Config, ["steps=3", "optim.lr=1e-5"])) == "grpo"  # not an algorithm key
    assert preset_of(load_config(rl.Config, ["advantage=rloo"])) == "custom"


def test_help_piped_into_a_reader_that_stops_early_is_not_a_traceback(monkeypatch):
    """`reasonloop train --help | head -1`: the reader has gone, so writes fail with a broken pipe."""
    import io
    import os

    from reasonloop.cli import main

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written
    stdout = io.TextIOWrapper(io.FileIO(write_end, "w"), write_through=True)
    monkeypatch.setattr("sys.stdout", stdout)
    assert main(["train", "--help"]) == 1  # no exception escapes
    stdout.close()


def test_a_missing_bench_model_and_a_sys_exit_message_are_shown(capsys, tmp_path, monkeypatch):
    assert main(["bench", f"model={tmp_path / 'nope'}", f"output_dir={tmp_path / 'out'}"]) == 2
    assert "error: no model at" in capsys.readouterr().err
    import reasonloop.recipes.runs as runs

    monkeypatch.setattr(runs, "find_runs", lambda root: (_ for _ in ()).throw(SystemExit("gave up")))
    assert main(["runs", str(tmp_path)]) == 2
    assert "reasonloop runs: error: gave up" in capsys.readouterr().err
