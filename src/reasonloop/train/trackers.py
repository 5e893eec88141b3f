"""Experiment trackers: the metrics every run logs to `metrics.jsonl`, also sent to TensorBoard, W&B, MLflow
or Trackio (`logger=tensorboard,wandb,mlflow,trackio`, any subset; docs/report.md).

Each backend goes through its own library, imported only when the run starts (and looked up before it
starts, so a missing one fails at once with a `UserError` naming the extra to install). Every backend
gets the same metric names, the same step numbers and the run's resolved config as hyper-parameters.
The one exception is forced by MLflow, whose names may not contain `@`: there `pass@1` is `pass_at_1`
(any other character MLflow refuses becomes `_`).

Where each writes, all of it configurable through the library's own environment variables:

- tensorboard  `<run>/tb` (event files; `tensorboard --logdir <run>/tb`).
- wandb        `<run>/wandb`; project `$WANDB_PROJECT` or `reasonloop`, the run named after its directory,
               with an id fixed by the directory so a resumed run continues the same W&B run.
               `WANDB_MODE=offline` logs without a network (`wandb sync <run>/wandb/offline-run-*` later).
- mlflow       `$MLFLOW_TRACKING_URI`, or MLflow's local store in the run, `sqlite:///<run>/mlflow.db` (`mlflow
               ui --backend-store-uri sqlite:///<run>/mlflow.db`; MLflow 3 refuses its older `file:` store
               unless MLFLOW_ALLOW_FILE_STORE=true); experiment `$MLFLOW_EXPERIMENT_NAME` or `reasonloop`. The
               MLflow run id is kept in `<run>/trackers.json`, so a resumed run continues it.
- trackio      Trackio's local database (`$TRACKIO_DIR`, default `~/.cache/huggingface/trackio`); project
               `$TRACKIO_PROJECT` or `reasonloop` (`trackio show`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import importlib.util
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from reasonloop.config import ConfigError
from reasonloop.errors import UserError

log = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}
STATE = "trackers.json"  # ids that let a resumed run continue the same tracker run


class TrackerError(UserError):
    """A tracker named in `logger=` cannot be used (its library is not installed)."""


def parse_logger(spec: str) -> tuple[list[str], bool]:
    """`logger=` -> (tracker names, optional). '' (the default) is TensorBoard when installed (optional);
    'none' is no tracker; otherwise a comma-separated subset of TRACKERS, each required."""
    spec = (spec or "").strip()
    if spec == "":
        return ["tensorboard"], True
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if names == ["none"]:
        return [], False
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ConfigError(f"logger={spec!r}: {', '.join(repr(u) for u in unknown)} is not a tracker; choose any of "
                        f"{', '.join(TRACKERS)} (comma-separated), or none")
    return list(dict.fromkeys(names)), False


def check_available(names: list[str], optional: bool) -> list[str]:
    """The trackers whose library is installed; a missing one raises TrackerError unless `optional`."""
    kept = []
    for name in names:
        if importlib.util.find_spec(MODULES[name]) is not None:
            kept.append(name)
        elif optional:
            log.info("%s not installed; metrics go to metrics.jsonl only", name)
        else:
            raise TrackerError(f"logger={name} needs the {MODULES[name]} package, which is not installed: "
                               f"pip install 'reasonloop[{name}]' (or pip install {MODULES[name]}), or drop "
                               f"{name} from logger=")
    return kept


def hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    """Config leaves as tracker-friendly scalars: numbers, bools and strings stay, anything else is JSON text."""
    return {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v, default=str) for k, v in config.items()}


def mlflow_name(name: str) -> str:
    """MLflow refuses `@` (and anything outside letters, digits, `_-. /:`): `eval/pass@1` -> `eval/pass_at_1`."""
    return re.sub(r"[^/\w.\- :]", "_", name.replace("@", "_at_"))


class Trackers:
    """The open trackers of one run: `log(step, scalars)` sends finite numbers to each, `close()` ends them."""

    def __init__(self, names: list[str], run_dir: Path, config: dict[str, Any], created: str,
                 purge_step: int | None = None):
        self.run_dir = run_dir
        self.names = names
        self._state = self._read_state()
        self._backends: list[tuple[str, Any]] = []
        run_name = run_dir.resolve().name
        hp = hyperparameters(config)
        try:
            for name in names:
                opener = getattr(self, f"_open_{name}")
                self._backends.append((name, opener(run_name, hp, created, purge_step)))
        except BaseException:
            self.close()
            raise
        if self._state:
            tmp = run_dir / f"{STATE}.tmp"
            tmp.write_text(json.dumps(self._state, indent=2))
            os.replace(tmp, run_dir / STATE)

    def _read_state(self) -> dict:
        try:
            state = json.loads((self.run_dir / STATE).read_text())
            return state if isinstance(state, dict) else {}
        except (OSError, ValueError):
            return {}

    # -- opening each backend ------------------------------------------------------------------------------
    def _open_tensorboard(self, run_name: str, hp: dict, created: str, purge_step: int | None) -> Any:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge_step)
        for summary in hparams(hp, {}):  # the config in TensorBoard's HPARAMS tab
            writer.file_writer.add_summary(summary)
        return writer

    def _open_wandb(self, run_name: str, hp: dict, created: str, purge_step: int | None) -> Any:
        import wandb

        run_id = hashlib.sha256(f"{self.run_dir.resolve()}|{created}".encode()).hexdigest()[:16]
        (self.run_dir / "wandb").mkdir(exist_ok=True)
        return wandb.init(project=os.environ.get("WANDB_PROJECT") or "reasonloop", name=run_name, id=run_id,
                          resume="allow", dir=str(self.run_dir), config=hp, reinit="create_new")

    def _open_mlflow(self, run_name: str, hp: dict, created: str, purge_step: int | None) -> Any:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        # MLflow 3 refuses its old file store (`file:`) unless MLFLOW_ALLOW_FILE_STORE=true: SQLite is its local store
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(self.run_dir / 'mlflow.db').resolve()}"
        client = MlflowClient(tracking_uri=uri)
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "reasonloop"
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else client.create_experiment(
            experiment, artifact_location=(self.run_dir / "mlartifacts").resolve().as_uri())
        previous = self._state.get("mlflow", {})
        if previous.get("tracking_uri") == uri and previous.get("run_id"):
            run_id = previous["run_id"]
            client.update_run(run_id, status="RUNNING")
        else:
            run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
            params = [Param(mlflow_name(k), str(v)[:6000]) for k, v in hp.items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                client.log_batch(run_id, params=params[i:i + 100])
        self._state["mlflow"] = {"tracking_uri": uri, "run_id": run_id}
        return client, run_id

    def _open_trackio(self, run_name: str, hp: dict, created: str, purge_step: int | None) -> Any:
        import trackio

        with _quiet_stdout("trackio"):  # it prints its banner and dashboard hints
            return trackio.init(project=os.environ.get("TRACKIO_PROJECT") or "reasonloop", name=run_name, config=hp,
                                resume="allow", embed=False, auto_log_cpu=False, auto_log_gpu=False)

    # -- logging -----------------------------------------------------------------------------------------------
    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not scalars:
            return
        for name, backend in self._backends:
            if name == "tensorboard":
                for k, v in scalars.items():
                    backend.add_scalar(k, v, step)
            elif name == "wandb":
                backend.log(dict(scalars), step=step)
            elif name == "mlflow":
                from mlflow.entities import Metric

                client, run_id = backend
                now = int(time.time() * 1000)
                metrics = [Metric(mlflow_name(k), float(v), now, step) for k, v in scalars.items()]
                for i in range(0, len(metrics), 1000):
                    client.log_batch(run_id, metrics=metrics[i:i + 1000])
            elif name == "trackio":
                backend.log(dict(scalars), step=step)

    def close(self) -> None:
        for name, backend in self._backends:
            try:
                if name == "tensorboard":
                    backend.close()
                elif name == "wandb":
                    backend.finish()
                elif name == "mlflow":
                    client, run_id = backend
                    client.set_terminated(run_id)
                elif name == "trackio":
                    with _quiet_stdout("trackio"):
                        backend.finish()
            except Exception as exc:  # a tracker failing to close must not lose the run's own results
                log.warning("closing %s failed: %s", name, exc)
        self._backends = []


@contextlib.contextmanager
def _quiet_stdout(name: str):
    """Keep a library's print()s off the console (logged at debug level instead)."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        if buf.getvalue().strip():
            log.debug("%s: %s", name, buf.getvalue().strip())
