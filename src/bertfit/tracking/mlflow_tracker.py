"""MLflow, through its client (mlflow-skinny is enough). The tracking store and experiment come from
MLflow's own settings: MLFLOW_TRACKING_URI (unset: MLflow's default local store) and
MLFLOW_EXPERIMENT_NAME (unset: "bertfit"). The run's id is saved in the run directory, so a resume
logs into the same MLflow run; the steps it already holds are not logged twice."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from bertfit.tracking.base import Tracker

DEFAULT_EXPERIMENT = "bertfit"
MAX_PARAMS_PER_CALL = 100  # MLflow's log_batch limit


class MlflowTracker(Tracker):
    name = "mlflow"

    def start(self, title: str, params: Mapping[str, str], resume_step: int | None) -> dict[str, Any]:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.client = MlflowClient()
        run_id = self.saved.get("run_id") if resume_step is not None else None
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
        else:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            run_id = self.client.create_run(experiment_id, run_name=self.run_dir.name,
                                            tags={"mlflow.note.content": title, "bertfit.run_dir": str(self.run_dir)}).info.run_id
            items = [Param(k, v[:6000]) for k, v in params.items()]
            for i in range(0, len(items), MAX_PARAMS_PER_CALL):
                self.client.log_batch(run_id, params=items[i:i + MAX_PARAMS_PER_CALL])
        self.run_id = run_id
        return {"run_id": run_id, "tracking_uri": self.client.tracking_uri}

    def logged_steps(self) -> dict[str, int]:
        run = self.client.get_run(self.run_id)
        return {key: max(m.step for m in self.client.get_metric_history(self.run_id, key))
                for key in run.data.metrics}

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def log_files(self, files: Sequence[Path]) -> None:
        for path in files:
            relative = path.relative_to(self.run_dir)
            where = str(relative.parent) if str(relative.parent) != "." else None
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=str(relative))
            else:
                self.client.log_artifact(self.run_id, str(path), artifact_path=where)

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


TRACKER = MlflowTracker
