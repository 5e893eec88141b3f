"""`logger=`: TensorBoard, W&B (offline), MLflow (local SQLite store) and Trackio receive the metrics Run.log
writes to metrics.jsonl, under the same names and steps, with the run's config as hyper-parameters."""

from __future__ import annotations

import glob
import json
import os
import struct
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from reasonloop.config import ConfigError
from reasonloop.train import trackers
from reasonloop.train.run import Run
from reasonloop.train.runconfig import RunConfig
from reasonloop.train.trackers import TrackerError, mlflow_name, parse_logger

ROWS = [(1, {"eval/pass@1": 0.5, "reward/mean": 1.0, "flag": True, "bad": float("nan"), "note": "text"}),
        (2, {"eval/pass@1": 0.75, "reward/mean": 2.0})]
LOGGED = {"eval/pass@1": [(1, 0.5), (2, 0.75)], "reward/mean": [(1, 1.0), (2, 2.0)]}  # finite numbers only


@dataclass
class UnitConfig(RunConfig):
    lr: float = 0.1


def log_rows(run_dir: Path, logger: str) -> Run:
    run = Run(UnitConfig(output_dir=str(run_dir), logger=logger, lr=0.5), "unit")
    run.start()
    for step, metrics in ROWS:
        run.log(step, metrics)
    run.close()
    return run


def test_parse_logger():
    assert parse_logger("") == (["tensorboard"], True)
    assert parse_logger("none") == ([], False)
    assert parse_logger("wandb, mlflow,wandb") == (["wandb", "mlflow"], False)
    with pytest.raises(ConfigError) as exc:
        parse_logger("tensorboard,neptune")
    assert str(exc.value) == ("logger='tensorboard,neptune': 'neptune' is not a tracker; choose any of tensorboard, "
                              "wandb, mlflow, trackio (comma-separated), or none")
    with pytest.raises(ConfigError, match="'wandbx' is not a tracker"):
        UnitConfig(logger="wandbx")


def test_mlflow_name():
    assert mlflow_name("eval/level/2/pass@1_greedy") == "eval/level/2/pass_at_1_greedy"
    assert mlflow_name("time/step") == "time/step"
    assert mlflow_name("a+b") == "a_b"


def test_missing_library_fails_before_anything_is_written(tmp_path, monkeypatch):
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(TrackerError) as exc:
        Run(UnitConfig(output_dir=str(tmp_path / "run"), logger="tensorboard,wandb"), "unit")
    assert str(exc.value) == ("logger=wandb needs the wandb package, which is not installed: pip install "
                              "'reasonloop[wandb]' (or pip install wandb), or drop wandb from logger=")
    assert not (tmp_path / "run").exists()


def test_default_is_tensorboard_when_installed_and_nothing_when_not(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="the dev extra installs tensorboard")
    log_rows(tmp_path / "a", "")
    assert glob.glob(str(tmp_path / "a" / "tb" / "events.out.tfevents.*"))
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda n: None if n == "tensorboard" else real(n))
    log_rows(tmp_path / "b", "")  # the default: no error, metrics.jsonl only
    assert not (tmp_path / "b" / "tb").exists()
    assert [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    with pytest.raises(TrackerError, match="logger=tensorboard needs the tensorboard package"):
        Run(UnitConfig(output_dir=str(tmp_path / "c"), logger="tensorboard"), "unit")
    log_rows(tmp_path / "d", "none")
    assert not (tmp_path / "d" / "tb").exists()


# -- reading each backend back ------------------------------------------------------------------------------------


def tensorboard_logged(run_dir: Path) -> tuple[dict, dict]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    ea = EventAccumulator(str(run_dir / "tb"))
    ea.Reload()
    scalars = {tag: [(e.step, pytest.approx(e.value)) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}
    content = ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hp = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    return scalars, {k: v.number_value if v.HasField("number_value") else v.string_value for k, v in hp.items()}


def wandb_records(path: Path) -> list[bytes]:
    """The records of a .wandb file: a ':W&B' header (7 bytes), then LevelDB-log records in 32 KiB blocks."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, out, partial = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a record header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            break
        if kind == 1:  # full
            out.append(chunk)
        elif kind == 2:  # first
            partial = chunk
        elif kind == 3:  # middle
            partial += chunk
        elif kind == 4:  # last
            out.append(partial + chunk)
    return out


def wandb_logged(run_dir: Path) -> tuple[dict, dict]:
    from wandb.proto import wandb_internal_pb2

    [path] = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    scalars: dict[str, list] = {}
    config: dict[str, object] = {}
    for raw in wandb_records(Path(path)):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            for k, v in items.items():
                if not k.startswith("_"):
                    scalars.setdefault(k, []).append((items["_step"], pytest.approx(v)))
        elif kind in ("run", "config"):  # the config comes with the run record, later changes as config records
            updates = record.run.config.update if kind == "run" else record.config.update
            config.update({i.key: json.loads(i.value_json) for i in updates})
    return scalars, config


def mlflow_logged(run_dir: Path) -> tuple[dict, dict, str]:
    from mlflow.tracking import MlflowClient

    state = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    assert state["tracking_uri"] == f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
    client = MlflowClient(state["tracking_uri"])
    run = client.get_run(state["run_id"])
    scalars = {k: [(m.step, pytest.approx(m.value)) for m in client.get_metric_history(state["run_id"], k)]
               for k in run.data.metrics}
    return scalars, dict(run.data.params), run.info.status


def test_offline_trackers_get_the_same_metrics_and_the_config(tmp_path, monkeypatch):
    for lib in ("tensorboard", "wandb", "mlflow"):
        pytest.importorskip(lib, reason=f"the dev extra installs {lib}")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    run_dir = tmp_path / "run"
    log_rows(run_dir, "tensorboard,wandb,mlflow")

    tb, tb_hp = tensorboard_logged(run_dir)
    assert tb == LOGGED
    assert tb_hp["lr"] == pytest.approx(0.5) and tb_hp["logger"] == "tensorboard,wandb,mlflow"

    wb, wb_config = wandb_logged(run_dir)
    assert wb == LOGGED
    assert wb_config["lr"] == 0.5 and wb_config["seed"] == 0 and wb_config["output_dir"] == str(run_dir)

    ml, ml_params, status = mlflow_logged(run_dir)
    assert ml == {mlflow_name(k): v for k, v in LOGGED.items()}
    assert set(ml) == {"eval/pass_at_1", "reward/mean"}
    assert ml_params["lr"] == "0.5" and ml_params["seed"] == "0"
    assert status == "FINISHED"

    # a rerun in the same directory continues the same MLflow run and the same W&B run id
    first_id = json.loads((run_dir / "trackers.json").read_text())["mlflow"]["run_id"]
    log_rows(run_dir, "tensorboard,wandb,mlflow")
    assert json.loads((run_dir / "trackers.json").read_text())["mlflow"]["run_id"] == first_id
    ids = {Path(p).name.rsplit("-", 1)[1] for p in glob.glob(str(run_dir / "wandb" / "offline-run-*"))}
    assert len(ids) == 1


def test_trackio_gets_the_same_metrics(tmp_path):
    pytest.importorskip("trackio", reason="the dev extra installs trackio")
    # trackio fixes its directory (TRACKIO_DIR) when imported: a fresh interpreter keeps it inside tmp_path
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from test_trackers import log_rows
        log_rows(Path({str(tmp_path / 'run')!r}), "trackio")
        from trackio.sqlite_storage import SQLiteStorage
        print("RESULT" + json.dumps({{"runs": SQLiteStorage.get_runs("reasonloop"),
                                     "logs": SQLiteStorage.get_logs("reasonloop", "run")}}))
    """)
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    result = json.loads(line[len("RESULT"):])
    assert result["runs"] == ["run"]
    logged: dict[str, list] = {}
    for row in result["logs"]:
        for k, v in row.items():
            if k not in ("step", "timestamp"):
                logged.setdefault(k, []).append((row["step"], pytest.approx(v)))
    assert logged == LOGGED
    assert (tmp_path / "trackio").is_dir()
