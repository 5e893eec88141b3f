"""Run directories are owned and resumes are honest (issue 13: "lost data", "resume under a different config").

Every case runs the real command line in-process (`reasonloop.cli.main(argv)`) on a nano model and
asserts the exact outcome: the exit code and the message, or the documented behaviour for odd but
valid input. After every refused command, every file under the test's directory is byte-identical
to what it was before (`unchanged`). docs/run-directories.md describes the rules tested here.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from reasonloop.cli import main
from reasonloop.train import checkpoint as ckpt_mod
from reasonloop.train import run as run_mod

FAST = ["threads=1"]
TRAIN = ["steps=4", "save_every=2", "prompts_per_step=2", "group_size=2", "sampling.max_new_tokens=4", "eval_n=2",
         "eval_k=0", "train_pool=8", "micro_batch_size=4", "samples_every=1", *FAST]
SFT = ["steps=4", "save_every=2", "batch_size=2", "micro_batch_size=2", "task_records=8", "eval_n=2", *FAST]
LOOP = ["iterations=2", "prompts_per_iteration=2", "samples_per_prompt=2", "eval_n=2", "sft_max_steps=1", "batch_size=2",
        "micro_batch_size=2", "train_pool=8", "max_new_tokens=4", *FAST]
EVAL = ["n=2", "k=0", "sampling.max_new_tokens=4", *FAST]
ARGS = {"train": TRAIN, "sft": SFT, "self_train": LOOP, "eval": EVAL}
NOT_OURS = ("is not empty and is not a reasonloop run (it has no reasonloop-run.json); reasonloop writes only into new "
            "or empty directories and its own runs: choose another output_dir")


def argv(command: str, model: str, out: Path | str, *extra: str) -> list[str]:
    return [command, f"model.name={model}", *ARGS[command], f"output_dir={out}", *extra]


def cli(capsys, args: list[str]) -> tuple[int, str, str]:
    """(exit code, last stderr line, stdout); an interrupt that escapes counts as exit 130."""
    try:
        code = main([str(a) for a in args])
    except KeyboardInterrupt:
        code = 130
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    return code, (lines[-1] if lines else ""), out.out


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and directory (None) under root."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def refused(capsys, root: Path, args: list[str], message: str, kind: str = "error") -> None:
    before = snapshot(root)
    code, last, _ = cli(capsys, args)
    assert (code, last) == (2, f"reasonloop {args[0]}: {kind}: {message}")
    assert snapshot(root) == before, "a refused command changed files on disk"


def config_refused(capsys, root: Path, args: list[str], message: str) -> None:
    before = snapshot(root)
    code, last, _ = cli(capsys, args)
    assert (code, last) == (2, f"reasonloop {args[0]}: config error: {message}")
    assert snapshot(root) == before


@pytest.fixture(scope="module")
def made(tmp_path_factory, nano_model_dir):
    """Finished runs of each kind, made once: train and sft (checkpoints at steps 2 and 4), self_train
    (iter-001, iter-002) and eval (no checkpoints)."""
    root = tmp_path_factory.mktemp("made")
    for command in ARGS:
        assert main(argv(command, nano_model_dir, root / command)) == 0
    return root


def copy_run(made: Path, command: str, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(made / command, out)
    return out


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- lost data: directories that are not ours ------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(ARGS))
def test_a_non_empty_directory_that_is_not_a_run_is_refused(command, nano_model_dir, tmp_path, capsys):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("irreplaceable")
    refused(capsys, tmp_path, argv(command, nano_model_dir, out), f"output_dir={out} {NOT_OURS}")


def test_a_directory_holding_only_a_hidden_file_is_not_a_run(nano_model_dir, tmp_path, capsys):
    out = tmp_path / "repo"
    out.mkdir()
    (out / ".keep").write_text("")
    refused(capsys, tmp_path, argv("train", nano_model_dir, out), f"output_dir={out} {NOT_OURS}")


def test_a_directory_with_a_config_yaml_but_no_checkpoints_is_not_a_run(nano_model_dir, tmp_path, capsys):
    out = tmp_path / "configs"
    out.mkdir()
    (out / "config.yaml").write_text("steps: 3\n")
    refused(capsys, tmp_path, argv("train", nano_model_dir, out), f"output_dir={out} {NOT_OURS}")


@pytest.mark.parametrize("command", ["train", "eval"])
def test_an_output_dir_that_is_a_file_is_refused(command, nano_model_dir, tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    refused(capsys, tmp_path, argv(command, nano_model_dir, out),
            f"output_dir={out} is a file, not a directory; choose another output_dir")


def test_an_output_dir_under_a_file_is_refused_before_anything_loads(nano_model_dir, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    out = tmp_path / "notes.txt" / "run"
    refused(capsys, tmp_path, argv("train", nano_model_dir, out),
            f"cannot create output_dir={out}: {tmp_path / 'notes.txt'} is a file; choose another output_dir")


@pytest.mark.parametrize("command,owner", [("train", "sft"), ("sft", "train"), ("eval", "train"), ("train", "self_train")])
def test_a_run_of_another_command_is_refused(command, owner, made, nano_model_dir, tmp_path, capsys):
    out = copy_run(made, owner, tmp_path)
    refused(capsys, tmp_path, argv(command, nano_model_dir, out),
            f"output_dir={out} holds a `{owner}` run; `{command}` will not write into it: choose another output_dir")


def test_a_self_train_command_will_not_write_into_a_dpo_run(made, nano_model_dir, tmp_path, capsys):
    out = copy_run(made, "self_train", tmp_path)
    marker = json.loads((out / "reasonloop-run.json").read_text())
    (out / "reasonloop-run.json").write_text(json.dumps({**marker, "command": "dpo"}))
    refused(capsys, tmp_path, argv("self_train", nano_model_dir, out),
            f"output_dir={out} holds a `dpo` run; `self_train` will not write into it: choose another output_dir")


def test_an_unreadable_marker_is_refused(made, nano_model_dir, tmp_path, capsys):
    out = copy_run(made, "train", tmp_path)
    (out / "reasonloop-run.json").write_text("{not json")
    refused(capsys, tmp_path, argv("train", nano_model_dir, out),
            f"{out / 'reasonloop-run.json'} is unreadable, so output_dir={out} is not a run reasonloop can continue: "
            "choose another output_dir")


@pytest.mark.parametrize("command,latest", [("train", "step-000004"), ("sft", "step-000004"), ("self_train", "iter-002")])
def test_resume_never_refuses_a_run_instead_of_pruning_its_checkpoints(command, latest, made, nano_model_dir, tmp_path,
                                                                       capsys):
    out = copy_run(made, command, tmp_path)
    refused(capsys, tmp_path, argv(command, nano_model_dir, out, "resume=never"),
            f"output_dir={out} already holds a `{command}` run (latest checkpoint {latest}); resume=never never "
            "overwrites a run: choose a new output_dir, or resume=auto to continue this one")


def test_resume_never_refuses_a_run_without_checkpoints(made, nano_model_dir, tmp_path, capsys):
    out = copy_run(made, "eval", tmp_path)
    refused(capsys, tmp_path, argv("eval", nano_model_dir, out, "resume=never"),
            f"output_dir={out} already holds a `eval` run; resume=never never overwrites a run: choose a new "
            "output_dir, or resume=auto to continue this one")


def test_resume_never_into_an_empty_directory_starts_a_run_there(nano_model_dir, tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    code, _, _ = cli(capsys, argv("eval", nano_model_dir, out, "resume=never"))
    assert code == 0
    assert json.loads((out / "reasonloop-run.json").read_text())["command"] == "eval"
    assert (out / "summary.json").is_file()


def test_a_typo_aimed_at_an_existing_run_leaves_its_config_alone(made, nano_model_dir, tmp_path, capsys):
    out = copy_run(made, "train", tmp_path)
    config_refused(capsys, tmp_path, argv("train", nano_model_dir, out, "optim.lrr=0.1"),
                   "unknown config key 'optim.lrr' (from 'optim.lrr=0.1'); did you mean 'optim.lr'?")


def test_a_failure_after_the_checks_but_before_the_start_leaves_config_yaml_alone(made, nano_model_dir, tmp_path,
                                                                                 capsys):
    from reasonloop.rewards.core import load_function

    out = copy_run(made, "train", tmp_path)
    with pytest.raises(ValueError) as exc:
        load_function("no_such_module_xyz:fn")
    refused(capsys, tmp_path, argv("train", nano_model_dir, out, "resume=force", "reward_funcs=[no_such_module_xyz:fn]"),
            f"reward_funcs: {exc.value}", kind="config error")


def test_an_unknown_task_creates_no_directory(nano_model_dir, tmp_path, capsys):
    from reasonloop.tasks import TaskError, make_task

    with pytest.raises(TaskError) as exc:
        make_task("arithmatic")
    refused(capsys, tmp_path, argv("train", nano_model_dir, tmp_path / "new", "task=arithmatic"), str(exc.value))
    assert not (tmp_path / "new").exists()


def test_two_runs_started_in_the_same_second_get_two_directories(nano_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_mod.time, "strftime", lambda fmt: "20250101-120000")
    args = ["eval", f"model.name={nano_model_dir}", *EVAL]
    assert cli(capsys, args)[0] == 0
    assert cli(capsys, args)[0] == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["eval-20250101-120000", "eval-20250101-120000-2"]
    for d in (tmp_path / "runs").iterdir():
        assert (d / "summary.json").is_file() and (d / "reasonloop-run.json").is_file()


def test_an_empty_existing_directory_is_taken_and_marked(nano_model_dir, tmp_path, capsys):
    out = tmp_path / "prepared"
    out.mkdir()
    assert cli(capsys, argv("sft", nano_model_dir, out))[0] == 0
    marker = json.loads((out / "reasonloop-run.json").read_text())
    assert marker["command"] == "sft" and len(marker["config_hash"]) == 16
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-000002", "step-000004"]


HOLDER = """
import sys, time
from reasonloop.config import load_config
from reasonloop.recipes import rl
from reasonloop.train.run import Run
Run(load_config(rl.Config, sys.argv[1:]), "train", tensorboard=False).start()
print("holding", flush=True)
time.sleep(600)
"""


def test_a_run_another_process_is_writing_is_refused_and_free_again_once_that_process_is_killed(
        nano_model_dir, tmp_path, capsys, made):
    """Two processes never write one run at once (they would trim each other's rows and overwrite each other's
    checkpoints): the writer holds an flock on the run's lock file, which the kernel drops when it dies."""
    import subprocess
    import sys

    out = copy_run(made, "train", tmp_path)
    args = argv("train", nano_model_dir, out)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, *args[1:]], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        refused(capsys, tmp_path, args, f"output_dir={out} is being written by another reasonloop process (pid "
                                        f"{holder.pid}); wait for it to end, or choose another output_dir")
    finally:
        holder.kill()
        holder.wait()
    assert cli(capsys, args)[0] == 0  # no stale lock: the finished run is rerun unchanged, as without the holder


# -- the run fields (RunConfig) -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command,key,message", [
    ("train", "seed=-1", "seed=-1: must be in [0, 4294967295]"),
    ("train", "seed=4294967296", "seed=4294967296: must be in [0, 4294967295]"),
    ("eval", "seed=-3", "seed=-3: must be in [0, 4294967295]"),
    ("self_train", "seed=-1", "seed=-1: must be in [0, 4294967295]"),
    ("train", "threads=-1", "threads=-1: must be >= 0 (0 keeps torch's default)"),
    ("sft", "save_every=-5", "save_every=-5: must be >= 0 (0 disables checkpoints)"),
    ("train", "resume=sometimes", "resume='sometimes' is not one of ['auto', 'never', 'force']; did you mean 'never'?"),
])
def test_run_fields_are_validated_before_anything_is_written(command, key, message, nano_model_dir, tmp_path, capsys):
    config_refused(capsys, tmp_path, argv(command, nano_model_dir, tmp_path / "new", key), message)
    assert not (tmp_path / "new").exists()


# -- resume under a different config ------------------------------------------------------------------------------


def differs(out: Path, command: str, what: str, listed: str) -> str:
    return (f"output_dir={out} holds a `{command}` run, but {what} was made under a different config ({listed}); "
            "choose a new output_dir, or resume=force to continue it under the new config")


@pytest.mark.parametrize("extra,listed", [
    (["optim.lr=0.001"], "optim.lr: 0.0002 -> 0.001"),
    (["task=arithmetic:2"], "task: 'arithmetic' -> 'arithmetic:2'"),
    (["seed=7"], "seed: 0 -> 7"),
    (["kl_coef=0.1", "group_size=4", "optim.lr=0.001"], "group_size: 2 -> 4; kl_coef: 0.04 -> 0.1; optim.lr: 0.0002 -> 0.001"),
])
def test_resume_auto_refuses_a_checkpoint_made_under_a_different_config(extra, listed, made, nano_model_dir, tmp_path,
                                                                        capsys):
    out = copy_run(made, "train", tmp_path)
    refused(capsys, tmp_path, argv("train", nano_model_dir, out, *extra),
            differs(out, "train", "its checkpoint step-000004", listed))


def test_resume_auto_refuses_another_model(made, nano_model_dir, tmp_path, capsys):
    out = copy_run(made, "train", tmp_path)
    refused(capsys, tmp_path, argv("train", nano_model_dir, out) + ["model.name=/elsewhere/model"],
            differs(out, "train", "its checkpoint step-000004", f"model.name: '{nano_model_dir}' -> '/elsewhere/model'"))


def test_sft_refuses_other_data(made, nano_model_dir, tmp_path, capsys):
    out = copy_run(made, "sft", tmp_path)
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    refused(capsys, tmp_path, argv("sft", nano_model_dir, out, f"data={data}"),
            differs(out, "sft", "its checkpoint step-000004", f"data: '' -> '{data}'"))


def test_self_train_refuses_another_method(made, nano_model_dir, tmp_path, capsys):
    out = copy_run(made, "self_train", tmp_path)
    refused(capsys, tmp_path, argv("self_train", nano_model_dir, out, "method=star"),
            differs(out, "self_train", "its checkpoint iter-002", "method: 'rft' -> 'star'"))


def test_eval_refuses_to_overwrite_an_evaluation_of_another_config(made, nano_model_dir, tmp_path, capsys):
    out = copy_run(made, "eval", tmp_path)
    refused(capsys, tmp_path, argv("eval", nano_model_dir, out, "n=3"), differs(out, "eval", "it", "n: 2 -> 3"))


def below(key: str, value: int, step: int, ckpt: Path) -> str:
    return (f"{key}={value} is below the {step} its checkpoint {ckpt} has already reached; set {key} >= {step} to "
            f"continue it, or choose a new output_dir to run {key}={value} from the start")


@pytest.mark.parametrize("resume", ["auto", "force"])
def test_steps_below_the_checkpoint_is_an_error_not_a_mislabelled_model(resume, made, nano_model_dir, tmp_path, capsys):
    out = copy_run(made, "train", tmp_path)
    refused(capsys, tmp_path, argv("train", nano_model_dir, out, "steps=3", f"resume={resume}"),
            below("steps", 3, 4, out / "checkpoints" / "step-000004"))


def test_sft_steps_below_the_checkpoint_is_an_error(made, nano_model_dir, tmp_path, capsys):
    out = copy_run(made, "sft", tmp_path)
    refused(capsys, tmp_path, argv("sft", nano_model_dir, out, "steps=1"),
            below("steps", 1, 4, out / "checkpoints" / "step-000004"))


def test_iterations_below_the_checkpoint_is_an_error(made, nano_model_dir, tmp_path, capsys):
    out = copy_run(made, "self_train", tmp_path)
    refused(capsys, tmp_path, argv("self_train", nano_model_dir, out, "iterations=1"),
            below("iterations", 1, 2, out / "checkpoints" / "iter-002"))


def test_resume_force_continues_under_the_new_config_and_records_it(made, nano_model_dir, tmp_path, capsys, caplog):
    out = copy_run(made, "train", tmp_path)
    old_hash = json.loads((out / "reasonloop-run.json").read_text())["config_hash"]
    code, _, stdout = cli(capsys, argv("train", nano_model_dir, out, "optim.lr=0.001", "steps=6", "resume=force"))
    assert code == 0
    assert f"train: resumed from {out / 'checkpoints' / 'step-000004'} at step 4" in stdout
    assert "resume=force: continuing" in caplog.text and "optim.lr: 0.0002 -> 0.001" in caplog.text
    assert "lr: 0.001" in (out / "config.yaml").read_text()
    assert "lr: 0.001" in (out / "checkpoints" / "step-000006" / "config.yaml").read_text()
    assert json.loads((out / "reasonloop-run.json").read_text())["config_hash"] != old_hash


@pytest.mark.parametrize("free", ["threads=0", "eval_every=1", "samples_every=2", "save_every=1"])
def test_keys_that_do_not_change_results_may_differ_on_resume(free, made, nano_model_dir, tmp_path, capsys):
    out = copy_run(made, "train", tmp_path)
    code, _, stdout = cli(capsys, argv("train", nano_model_dir, out, free))
    assert code == 0
    assert f"train: resumed from {out / 'checkpoints' / 'step-000004'} at step 4" in stdout


def test_raising_steps_continues_the_run_without_duplicate_rows(made, nano_model_dir, tmp_path, capsys):
    out = copy_run(made, "train", tmp_path)
    code, _, stdout = cli(capsys, argv("train", nano_model_dir, out, "steps=6"))
    assert code == 0 and "at step 4" in stdout
    assert [r["step"] for r in rows(out / "metrics.jsonl")] == [0, 1, 2, 3, 4, 5, 6, 6]  # before, 6 steps, after
    assert [r["step"] for r in rows(out / "samples.jsonl")] == [s for s in range(1, 7) for _ in range(4)]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-000004", "step-000006"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["before"] == json.loads((made / "train" / "summary.json").read_text())["before"]


def test_rerunning_a_finished_run_changes_nothing_but_its_event_log(made, nano_model_dir, tmp_path, capsys):
    out = copy_run(made, "train", tmp_path)
    assert cli(capsys, argv("train", nano_model_dir, out))[0] == 0  # the copy now names its own directory
    before = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("run/tb")}
    code, _, stdout = cli(capsys, argv("train", nano_model_dir, out))
    assert code == 0 and "at step 4" in stdout
    after = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("run/tb")}
    assert after == before


def test_a_run_from_before_markers_is_adopted(made, nano_model_dir, tmp_path, capsys):
    out = copy_run(made, "train", tmp_path)
    (out / "reasonloop-run.json").unlink()
    for d in (out / "checkpoints").glob("step-*"):
        (d / "manifest.json").unlink()
        (d / "config.yaml").unlink()
    code, _, stdout = cli(capsys, argv("train", nano_model_dir, out, "steps=5"))
    assert code == 0 and "at step 4" in stdout
    assert json.loads((out / "reasonloop-run.json").read_text())["command"] == "train"
    assert [r["step"] for r in rows(out / "metrics.jsonl")][-2:] == [5, 5]


# -- damaged checkpoints ---------------------------------------------------------------------------------------


def resumes_from(capsys, caplog, args, ckpt: Path, step: int, warning: str) -> None:
    code, _, stdout = cli(capsys, args)
    assert code == 0
    assert f"resumed from {ckpt} at step {step}" in stdout or f"resumed after iteration {step}" in stdout
    assert warning in caplog.text


def test_latest_naming_a_missing_checkpoint_falls_back_with_a_warning(made, nano_model_dir, tmp_path, capsys, caplog):
    out = copy_run(made, "train", tmp_path)
    shutil.rmtree(out / "checkpoints" / "step-000004")
    resumes_from(capsys, caplog, argv("train", nano_model_dir, out), out / "checkpoints" / "step-000002", 2,
                 f"checkpoint {out / 'checkpoints' / 'step-000004'} ({out / 'checkpoints' / 'latest'} names it) is missing")
    assert [r["step"] for r in rows(out / "metrics.jsonl")] == [0, 1, 2, 3, 4, 4]


def test_latest_naming_something_else_falls_back(made, nano_model_dir, tmp_path, capsys, caplog):
    out = copy_run(made, "train", tmp_path)
    (out / "checkpoints" / "latest").write_text("../../etc")
    resumes_from(capsys, caplog, argv("train", nano_model_dir, out), out / "checkpoints" / "step-000004", 4,
                 "is not a checkpoint name")


def test_a_missing_latest_pointer_resumes_from_the_newest_checkpoint(made, nano_model_dir, tmp_path, capsys, caplog):
    out = copy_run(made, "train", tmp_path)
    (out / "checkpoints" / "latest").unlink()
    resumes_from(capsys, caplog, argv("train", nano_model_dir, out), out / "checkpoints" / "step-000004", 4,
                 "is missing or unreadable")


def test_a_truncated_weights_file_falls_back_to_the_previous_checkpoint(made, nano_model_dir, tmp_path, capsys, caplog):
    out = copy_run(made, "train", tmp_path)
    weights = out / "checkpoints" / "step-000004" / "model" / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:1000])
    resumes_from(capsys, caplog, argv("train", nano_model_dir, out), out / "checkpoints" / "step-000002", 2,
                 f"has a truncated model/model.safetensors (1000 of {size} bytes)")


def test_a_corrupt_optimizer_file_falls_back_to_the_previous_checkpoint(made, nano_model_dir, tmp_path, capsys, caplog):
    out = copy_run(made, "train", tmp_path)
    path = out / "checkpoints" / "step-000004" / "trainer.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    resumes_from(capsys, caplog, argv("train", nano_model_dir, out), out / "checkpoints" / "step-000002", 2,
                 "has a corrupt trainer.pt (its sha256 does not match the manifest)")


def test_a_damaged_loop_checkpoint_falls_back_to_the_previous_iteration(made, nano_model_dir, tmp_path, capsys, caplog):
    out = copy_run(made, "self_train", tmp_path)
    (out / "checkpoints" / "iter-002" / "state.json").write_text("{")
    resumes_from(capsys, caplog, argv("self_train", nano_model_dir, out), out / "checkpoints" / "iter-001", 1,
                 "has a truncated state.json")


def test_no_intact_checkpoint_is_an_error_not_a_restart_from_step_zero(made, nano_model_dir, tmp_path, capsys):
    out = copy_run(made, "train", tmp_path)
    for step in ("step-000002", "step-000004"):
        (out / "checkpoints" / step / "trainer.pt").write_bytes(b"")
    root = out / "checkpoints"
    sizes = {s: json.loads((root / s / "manifest.json").read_text())["files"]["trainer.pt"]["size"]
             for s in ("step-000002", "step-000004")}
    refused(capsys, tmp_path, argv("train", nano_model_dir, out),
            f"{out} has checkpoints but none is intact: checkpoint {root / 'step-000004'} ({root / 'latest'} names it) "
            f"has a truncated trainer.pt (0 of {sizes['step-000004']} bytes); checkpoint {root / 'step-000002'} has a "
            f"truncated trainer.pt (0 of {sizes['step-000002']} bytes). Nothing to resume from: move the damaged "
            "checkpoints away to start over, or choose another output_dir")


def test_an_unverifiable_old_checkpoint_that_cannot_be_read_is_an_error(made, nano_model_dir, tmp_path, capsys):
    out = copy_run(made, "train", tmp_path)
    ckpt = out / "checkpoints" / "step-000004"
    (ckpt / "manifest.json").unlink()  # as written by an earlier reasonloop
    (ckpt / "trainer.pt").write_bytes((ckpt / "trainer.pt").read_bytes()[:100])
    before = snapshot(tmp_path)
    code, last, _ = cli(capsys, argv("train", nano_model_dir, out))
    assert code == 2
    assert last.startswith(f"reasonloop train: error: checkpoint {ckpt} cannot be read (")
    assert last.endswith("); move it away to resume from an earlier one")
    assert snapshot(tmp_path) == before


# -- full disk and pruning ------------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter "
                                                  "failed writing file data/0: file write failed")])
def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one_and_says_so(failure, made, nano_model_dir, tmp_path,
                                                                            capsys, monkeypatch):
    out = copy_run(made, "train", tmp_path)
    checkpoints = snapshot(out / "checkpoints")

    def full(*args, **kwargs):
        raise failure

    monkeypatch.setattr(ckpt_mod.torch, "save", full)
    code, last, _ = cli(capsys, argv("train", nano_model_dir, out, "steps=6"))
    reason = "no space left on the device" if isinstance(failure, OSError) else " ".join(str(failure).split())
    assert (code, last) == (2, f"reasonloop train: error: could not write checkpoint {out / 'checkpoints' / 'step-000006'}: "
                               f"{reason}; the previous checkpoint (step-000004) is intact (free some space or choose "
                               "another output_dir, then resume)")
    assert snapshot(out / "checkpoints") == checkpoints  # no partial step-000006(.tmp), latest unchanged
    monkeypatch.undo()
    code, _, stdout = cli(capsys, argv("train", nano_model_dir, out, "steps=6"))  # space freed: resume
    assert code == 0 and "at step 4" in stdout
    assert [r["step"] for r in rows(out / "metrics.jsonl")] == [0, 1, 2, 3, 4, 5, 6, 6]


class StubModel:
    def save_pretrained(self, path, safe_serialization=True):
        Path(path).mkdir(parents=True)
        (Path(path) / "model.safetensors").write_bytes(b"w")


class StubState:
    def state_dict(self):
        return {}


def stub_checkpoint(run_dir: Path, step: int) -> Path:
    return ckpt_mod.save_checkpoint(run_dir, step, StubModel(), StubState(), StubState(), {})


def test_pruning_never_deletes_a_checkpoint_newer_than_the_one_just_written(tmp_path):
    for step in (2, 10):
        stub_checkpoint(tmp_path, step)
    stub_checkpoint(tmp_path, 3)  # e.g. a rerun from step 0 in the same directory
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000002", "step-000003", "step-000010"]
    assert (root / "latest").read_text() == "step-000003"


def test_pruning_removes_only_reasonloops_checkpoints_by_step_number(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("step-999999", "step-1000000"):
        stub_checkpoint(tmp_path, 1)
        (root / "step-000001").rename(root / name)
    for foreign in ("my-backup", "step-4-notes", "step-000001-best"):
        (root / foreign).mkdir()
        (root / foreign / "keep.txt").write_text("mine")
    stub_checkpoint(tmp_path, 1000001)
    assert sorted(p.name for p in root.iterdir()) == [
        "latest", "my-backup", "step-000001-best", "step-1000000", "step-1000001", "step-4-notes"]


def test_a_checkpoint_carries_the_config_and_a_manifest(made):
    ckpt = made / "train" / "checkpoints" / "step-000004"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert {"trainer.pt", "state.json", "config.yaml", "model/model.safetensors"} <= set(manifest["files"])
    assert manifest["rows"] == {"metrics.jsonl": 5, "samples.jsonl": 16}  # before + 4 steps; 4 samples a step
    assert (ckpt / "config.yaml").read_bytes() == (made / "train" / "config.yaml").read_bytes()


# -- rows and summaries across a resume -----------------------------------------------------------------------


def test_a_killed_run_resumes_without_duplicate_rows_and_keeps_its_before_table(made, nano_model_dir, tmp_path, capsys,
                                                                                monkeypatch):
    from reasonloop.recipes import rl

    out = tmp_path / "run"
    real_step = rl.Trainer.step
    calls = {"n": 0}

    def dying_step(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed at step 3")
        return real_step(self)

    monkeypatch.setattr(rl.Trainer, "step", dying_step)
    assert cli(capsys, argv("train", nano_model_dir, out))[0] == 130
    monkeypatch.setattr(rl.Trainer, "step", real_step)
    code, _, stdout = cli(capsys, argv("train", nano_model_dir, out))
    assert code == 0 and "at step 2" in stdout
    straight = made / "train"
    assert [(r["step"], sorted(r)) for r in rows(out / "metrics.jsonl")] == \
        [(r["step"], sorted(r)) for r in rows(straight / "metrics.jsonl")]
    assert [(r["step"], r["completion"]) for r in rows(out / "samples.jsonl")] == \
        [(r["step"], r["completion"]) for r in rows(straight / "samples.jsonl")]
    summary, expected = (json.loads((d / "summary.json").read_text()) for d in (out, straight))
    assert summary["before"] == expected["before"] and summary["after"] == expected["after"]


def test_a_torn_last_metrics_line_is_dropped_on_resume(made, nano_model_dir, tmp_path, capsys):
    out = copy_run(made, "train", tmp_path)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "reward/me')
    assert cli(capsys, argv("train", nano_model_dir, out))[0] == 0
    assert [r["step"] for r in rows(out / "metrics.jsonl")] == [0, 1, 2, 3, 4, 4]
