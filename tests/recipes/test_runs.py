"""`reasonloop runs`: listing and cleaning run directories, on hand-built runs of every state."""

import json

import pytest

from reasonloop import cli
from reasonloop.recipes.runs import find_runs
from reasonloop.train.run import MARKER

TABLE = {"overall": {"n": 200, "pass@1_greedy": 0.39}}


def make_run(path, command="train", steps=100, logged=(), checkpoint=False, summary=None, task="arithmetic"):
    path.mkdir(parents=True)
    (path / MARKER).write_text(json.dumps({"reasonloop": "0.1.0", "command": command}))
    (path / "config.yaml").write_text(f"task: {task}\nsteps: {steps}\n")
    (path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 0.1}) + "\n" for s in logged))
    if checkpoint:
        (path / "checkpoints" / "step-000050").mkdir(parents=True)
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary))
    return path


@pytest.fixture
def runs_dir(tmp_path):
    root = tmp_path / "runs"
    make_run(root / "done", logged=range(1, 101), summary={
        "preset": "dapo", "before": TABLE, "after": {"overall": {"pass@1_greedy": 0.795}}})
    make_run(root / "paused", logged=range(1, 61), checkpoint=True)
    make_run(root / "crashed", logged=[1, 2])
    make_run(root / "empty", command="sft", steps=20)
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("not a run")
    return root


def test_states_steps_and_accuracy_are_read_from_the_run(runs_dir):
    runs = {r.path.name: r for r in find_runs(runs_dir)}
    assert set(runs) == {"done", "paused", "crashed", "empty"}  # notes/ has no marker: not a run
    assert {n: r.state for n, r in runs.items()} == {"done": "finished", "paused": "resumable",
                                                     "crashed": "failed", "empty": "empty"}
    assert (runs["done"].done, runs["done"].total, runs["done"].preset) == (100, 100, "dapo")
    assert (runs["done"].before, runs["done"].after) == (0.39, 0.795)
    assert (runs["paused"].done, runs["paused"].after) == (60, None)
    assert runs["empty"].command == "sft" and runs["empty"].done is None


def test_the_listing_names_every_run(runs_dir, capsys):
    assert cli.main(["runs", str(runs_dir)]) == 0
    out = capsys.readouterr().out
    assert "train (dapo)" in out and "100/100" in out and "0.390 -> 0.795" in out
    assert "60/100" in out and "resumable" in out and "notes" not in out


def test_clean_removes_only_failed_and_empty_runs(runs_dir, capsys):
    assert cli.main(["runs", str(runs_dir), "--clean", "--yes"]) == 0
    assert sorted(p.name for p in runs_dir.iterdir()) == ["done", "notes", "paused"]
    assert (runs_dir / "notes" / "todo.txt").read_text() == "not a run"
    assert "removed 2 run(s)" in capsys.readouterr().out


def test_a_run_another_process_is_writing_is_running_and_never_cleaned(runs_dir, capsys):
    """A run that has logged nothing yet looks empty; while its writer holds the lock it is `running`."""
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, str(os.getpid()).encode()); print('holding', flush=True); time.sleep(600)"),
        str(runs_dir / "empty" / ".reasonloop.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert {r.path.name: r.state for r in find_runs(runs_dir)}["empty"] == f"running (pid {holder.pid})"
        assert cli.main(["runs", str(runs_dir), "--clean", "--yes"]) == 0
        assert sorted(p.name for p in runs_dir.iterdir()) == ["done", "empty", "notes", "paused"]
    finally:
        holder.kill()
        holder.wait()
    assert {r.path.name: r.state for r in find_runs(runs_dir)}["empty"] == "empty"  # the writer is gone
    capsys.readouterr()


def test_clean_without_a_terminal_asks_for_yes_and_removes_nothing(runs_dir, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert cli.main(["runs", str(runs_dir), "--clean"]) == 2
    assert "add --yes" in capsys.readouterr().err
    assert sorted(p.name for p in runs_dir.iterdir()) == ["crashed", "done", "empty", "notes", "paused"]


def test_clean_asks_and_a_no_keeps_everything(runs_dir, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert cli.main(["runs", str(runs_dir), "--clean"]) == 0
    assert "nothing removed" in capsys.readouterr().out
    assert (runs_dir / "crashed").exists() and (runs_dir / "empty").exists()


def test_a_missing_directory_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["runs", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert cli.main(["runs", str(tmp_path)]) == 0
    assert "no reasonloop runs" in capsys.readouterr().out
