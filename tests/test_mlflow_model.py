"""The run's MLflow model: logged at the end of training, registered, loaded by URI in a fresh
process, scoring exactly as ``trainer.evaluate``; evaluation results logged into the run.
Real trainer process, real MLflow sqlite store and registry.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pyarrow.parquet as pq
import pytest

from tests.procs import TIMEOUT_S, ok, run
from tests.s3_server import free_port

# Run in a new interpreter: only the model URI and the store travel there.
LOAD_AND_PREDICT = """
import json, sys
import mlflow, pandas as pd, pyarrow.parquet as pq
model = mlflow.pyfunc.load_model(sys.argv[1])
table = pq.read_table(sys.argv[2], columns=["image", "path"]).to_pandas()
images = table["image"].tolist() + [b"not an image"]
out = model.predict(pd.DataFrame({"image": images}))
print(json.dumps({"paths": table["path"].tolist(), "rows": out.to_dict(orient="records"),
                  "signature": model.metadata.get_input_schema().input_names()}))
"""


def fresh_env(summary: dict) -> dict:
    return {**os.environ, "MLFLOW_TRACKING_URI": summary["mlflow_tracking_uri"], "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def loaded(trained_run) -> dict:
    """The model loaded by its run URI in a new process: its predictions for the test split's
    images and one broken image."""
    data, _, summary = trained_run
    proc = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, summary["mlflow_model_uri"],
                           os.path.join(data, "test")],
                          cwd="/", env=fresh_env(summary), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_model_by_run_uri_in_a_new_process_predicts_as_evaluate_scores(trained_run, loaded):
    data, out, summary = trained_run
    assert summary["mlflow_model_uri"] == f"runs:/{summary['mlflow_run_id']}/model"
    best = os.path.join(out, "checkpoints", "best.pt")
    json_path = os.path.join(out, "test.json")
    ok(run("trainer.evaluate", "--checkpoint", best, "--data", data, "--split", "test", "--workers", "0",
           "--json", json_path, "--log-to-run"))
    with open(json_path) as f:
        evaluated = json.load(f)

    test_split = os.path.join(data, "test")
    assert loaded["signature"] == ["image"]
    *rows, broken = loaded["rows"]
    assert broken["prediction"] is None and broken["error"]  # a bad image is a row with its reason

    labels = pq.read_table(test_split, columns=["label"]).column("label").to_pylist()
    classes = json.load(open(os.path.join(data, "manifest.json")))["classes"]
    confusion = [[0] * len(classes) for _ in classes]
    for label, row in zip(labels, rows):
        assert row["error"] is None and row["prediction"] == row["top5_classes"][0]
        assert row["probability"] == pytest.approx(row["top5_probabilities"][0])
        assert len(row["top5_classes"]) == min(5, len(classes))
        confusion[label][classes.index(row["prediction"])] += 1
    assert confusion == evaluated["confusion_matrix"]  # the same prediction for every image


def test_model_is_registered_and_evaluation_is_logged_into_the_run(trained_run):
    import mlflow

    data, out, summary = trained_run
    client = mlflow.MlflowClient(tracking_uri=summary["mlflow_tracking_uri"])
    assert summary["mlflow_model_version"] == "1"
    [version] = client.search_model_versions(f"run_id = '{summary['mlflow_run_id']}'")
    assert (version.name, str(version.version)) == ("sparkdp-test-model", "1")  # --register-model in conftest
    best = os.path.join(out, "checkpoints", "best.pt")
    ok(run("trainer.evaluate", "--checkpoint", best, "--data", data, "--split", "val", "--workers", "0",
           "--log-to-run"))
    found = client.get_run(summary["mlflow_run_id"])
    assert found.data.metrics["val_count"] == summary["val_count"]
    assert found.data.metrics["val_top1"] == pytest.approx(summary["best_val_top1"])
    assert found.info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(summary["mlflow_run_id"], "evaluation")}
    assert {"evaluation/val.json", "evaluation/best_val_confusion.png"} <= logged


def test_the_readme_serve_command_answers_as_the_loaded_model(trained_run, loaded):
    """README's `mlflow models serve ... --env-manager local` and its curl request (images
    base64-encoded in a `dataframe_split`): the same rows as the model loaded by URI."""
    data, _, summary = trained_run
    port = free_port()
    venv_bin = os.path.dirname(sys.executable)  # as with the venv activated: mlflow starts its uvicorn from PATH
    env = {**fresh_env(summary), "PATH": venv_bin + os.pathsep + os.environ.get("PATH", "")}
    server = subprocess.Popen(["mlflow", "models", "serve", "-m", summary["mlflow_model_uri"], "--env-manager",
                               "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              cwd="/", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            assert server.poll() is None, server.stdout.read()[-4000:]
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "mlflow models serve did not answer /ping"
                time.sleep(1)
        images = pq.read_table(os.path.join(data, "test"), columns=["image"]).column("image").to_pylist()
        images.append(b"not an image")
        body = {"dataframe_split": {"columns": ["image"],
                                    "data": [[base64.b64encode(b).decode("ascii")] for b in images]}}
        request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            served = json.loads(response.read())["predictions"]
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    assert len(served) == len(loaded["rows"])
    for got, want in zip(served, loaded["rows"]):
        assert (got["prediction"], got["top5_classes"], bool(got["error"])) == \
            (want["prediction"], want["top5_classes"], bool(want["error"]))
        if not want["error"]:
            assert got["probability"] == pytest.approx(want["probability"], abs=1e-6)
