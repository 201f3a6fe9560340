"""MLflow on rank 0, and a no-op twin everywhere else (no ``if rank == 0`` in the loop)."""
from __future__ import annotations

import os
from typing import Any

from data.errors import UserError

TRACKING_DB = "mlflow.db"
ARTIFACTS = "mlartifacts"


# The run-folder stores this process picked. mlflow.set_tracking_uri also puts its URI in
# MLFLOW_TRACKING_URI, so a second run in the same process (a notebook, a test) would
# otherwise take the first run's store for one the user chose.
_OWN_STORES: set[str] = set()


def default_tracking_uri(run_dir: str) -> str:
    return "sqlite:///" + os.path.join(os.path.abspath(run_dir), TRACKING_DB)


def user_tracking_uri() -> str | None:
    """``MLFLOW_TRACKING_URI`` when the user set it (not when MLflow set it for an earlier run here)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return None if uri in _OWN_STORES else uri


class NullTracker:
    """Accepts every call and does nothing: what non-zero ranks get."""

    run_id: str | None = None
    tracking_uri: str | None = None
    artifact_uri: str | None = None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str) -> None: ...
    def log_dict(self, value: Any, name: str) -> None: ...
    def log_model(self, state: dict, registered_name: str | None = None) -> tuple[str | None, str | None]:
        return None, None
    def close(self, status: str = "FINISHED") -> None: ...


class MLflowTracker(NullTracker):
    """One MLflow run; ``run_id`` continues an earlier run (resume keeps a single run)."""

    def __init__(self, run_dir: str, experiment: str, run_id: str | None = None, reopen: bool = True):
        import logging

        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.tracking_uri = user_tracking_uri() or default_tracking_uri(run_dir)
        if self.tracking_uri == default_tracking_uri(run_dir):
            _OWN_STORES.add(self.tracking_uri)
        mlflow.set_tracking_uri(self.tracking_uri)
        client = mlflow.MlflowClient()
        if run_id is None:
            found = client.get_experiment_by_name(experiment)
            if found is not None:
                experiment_id = found.experiment_id
            elif self.tracking_uri.startswith("sqlite:"):
                location = "file://" + os.path.join(os.path.abspath(run_dir), ARTIFACTS)
                experiment_id = client.create_experiment(experiment, artifact_location=location)
            else:
                experiment_id = client.create_experiment(experiment)
            run_id = client.create_run(experiment_id).info.run_id
        elif reopen:  # a resumed run is running again; adding results to a finished one leaves it finished
            client.update_run(run_id, status="RUNNING")
        else:
            client.get_run(run_id)  # it must exist
        self.client, self.run_id = client, run_id

    def log_params(self, params: dict[str, Any]) -> None:
        existing = self.client.get_run(self.run_id).data.params
        fresh = {k: str(v) for k, v in params.items() if k not in existing}
        if fresh:  # MLflow refuses to change a param: a resumed run logs only new ones
            from mlflow.entities import Param

            self.client.log_batch(self.run_id, params=[Param(k, v[:6000]) for k, v in fresh.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_artifact(self, path: str) -> None:
        self.client.log_artifact(self.run_id, path)

    def log_dict(self, value: Any, name: str) -> None:
        self.client.log_dict(self.run_id, value, name)

    def log_model(self, state: dict, registered_name: str | None = None) -> tuple[str | None, str | None]:
        """The weights in checkpoint dict ``state`` as the run's MLflow model (see
        :mod:`trainer.mlflow_model`): ``(model URI, registered version or None)``."""
        from trainer.mlflow_model import log_model

        return log_model(self.run_id, state, registered_name)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    @property
    def artifact_uri(self) -> str:
        return self.client.get_run(self.run_id).info.artifact_uri


def make_tracker(is_main: bool, run_dir: str, experiment: str, run_id: str | None = None) -> NullTracker:
    """An :class:`MLflowTracker` on the main rank (store: ``MLFLOW_TRACKING_URI``, else
    ``RUN_DIR/mlflow.db``; ``run_id`` continues that run), a :class:`NullTracker` elsewhere."""
    return MLflowTracker(run_dir, experiment, run_id) if is_main else NullTracker()


def checkpoint_run(checkpoint: str, run_id: str | None) -> MLflowTracker:
    """The MLflow run a training checkpoint came from, to add results to it: the store is
    ``MLFLOW_TRACKING_URI`` or the run folder's own (``RUN/checkpoints/X.pt`` -> ``RUN/mlflow.db``)."""
    if not run_id:
        raise UserError(f"{checkpoint} records no MLflow run: it was not written by trainer.train")
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(checkpoint)))
    if not user_tracking_uri() and not os.path.isfile(os.path.join(run_dir, TRACKING_DB)):
        raise UserError(f"no MLflow store for {checkpoint}: {os.path.join(run_dir, TRACKING_DB)} not found "
                        "(set MLFLOW_TRACKING_URI to the store the run used)")
    try:
        return MLflowTracker(run_dir, experiment="", run_id=run_id, reopen=False)
    except Exception as exc:
        if type(exc).__name__ != "MlflowException":
            raise
        raise UserError(f"MLflow run {run_id} of {checkpoint} not found: {str(exc).splitlines()[0]}") from None
