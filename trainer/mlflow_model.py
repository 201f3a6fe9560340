"""The trained model as an MLflow model: a ``pyfunc`` that classifies encoded images.

Logged by rank 0 at the end of training under the run's artifact path ``model``
(:func:`log_model`), so ``mlflow.pyfunc.load_model("runs:/<run id>/model")`` gives it back
in any process where this project is installed (it scores with :mod:`trainer.classify`,
the same code as ``trainer.predict`` and validation). Its ``predict`` takes a pandas
DataFrame with a column ``image`` (encoded bytes: JPEG, PNG, WebP, ... anything
``data.convert`` accepts) and returns one row per image: ``prediction`` (class name),
``probability``, ``top5_classes``, ``top5_probabilities`` and ``error`` (None, or why
that image could not be read). The weights travel as a model-only checkpoint file
(artifact ``weights``), which ``launch.batch_predict`` and ``trainer.predict`` read too.
"""
from __future__ import annotations

import io
import os
import tempfile

import mlflow
import pandas as pd
import torch

from data.errors import UserError
from trainer import checkpoint as ckpt
from trainer.classify import Classifier, model_only

ARTIFACT_PATH = "model"
WEIGHTS = "weights"          # the artifact key of the model-only checkpoint
WEIGHTS_FILE = "model.pt"
INPUT_COLUMN = "image"
MODEL_CODE = os.path.join(os.path.dirname(__file__), "mlflow_model_code.py")  # logged as code, not pickled


class ImageClassifierModel(mlflow.pyfunc.PythonModel):
    """``predict(DataFrame with column image)`` -> the :class:`trainer.classify.Classifier` rows."""

    def load_context(self, context) -> None:
        self.classifier = Classifier.from_file(context.artifacts[WEIGHTS])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if isinstance(model_input, pd.DataFrame):
            if INPUT_COLUMN not in model_input.columns:
                raise UserError(f"the input needs a column {INPUT_COLUMN!r} of encoded image bytes, "
                                f"got columns {list(model_input.columns)}")
            images = model_input[INPUT_COLUMN].tolist()
        else:  # a list or array of encoded images
            images = list(model_input)
        return self.classifier.predict(images)


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import Array

    return ModelSignature(
        inputs=Schema([ColSpec("binary", INPUT_COLUMN)]),
        outputs=Schema([ColSpec("string", "prediction", required=False),
                        ColSpec("double", "probability", required=False),
                        ColSpec(Array("string"), "top5_classes", required=False),
                        ColSpec(Array("double"), "top5_probabilities", required=False),
                        ColSpec("string", "error", required=False)]))


def input_example(size: int) -> pd.DataFrame:
    """One grey JPEG of the trained size: what the ``image`` column holds."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (128, 128, 128)).save(buf, "JPEG")
    return pd.DataFrame({INPUT_COLUMN: [buf.getvalue()]})


def requirements() -> list[str]:
    """What a serving environment needs besides this project (which must be installed)."""
    import numpy
    import PIL
    import torchvision

    return [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}",
            f"pillow=={PIL.__version__}", f"numpy=={numpy.__version__}", f"pandas=={pd.__version__}",
            f"mlflow=={mlflow.__version__}"]


def log_model(run_id: str, state: dict, registered_name: str | None = None) -> tuple[str, str | None]:
    """Log the weights of checkpoint dict ``state`` as the pyfunc model at ``model`` in run
    ``run_id`` (the tracking URI already set); register a new version of
    ``registered_name`` if given. Returns ``(model URI, registered version or None)``."""
    # MLflow checks the input example by loading the model back: its download bar is noise here.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, WEIGHTS_FILE)
        torch.save(model_only(state), weights)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=ARTIFACT_PATH, python_model=MODEL_CODE, artifacts={WEIGHTS: weights},
                signature=signature(), input_example=input_example(ckpt.run_identity(state).config["image_size"]),
                pip_requirements=requirements(), registered_model_name=registered_name)
    version = getattr(info, "registered_model_version", None)
    return f"runs:/{run_id}/{ARTIFACT_PATH}", None if version is None else str(version)


def weights_file(model_uri: str) -> str:
    """The model-only checkpoint inside an MLflow model (any URI MLflow resolves: ``runs:/``,
    ``models:/NAME/VERSION``, a local folder), downloaded if needed."""
    from mlflow.exceptions import MlflowException

    try:
        folder = mlflow.artifacts.download_artifacts(artifact_uri=model_uri)
    except (MlflowException, OSError) as exc:
        raise UserError(f"cannot load MLflow model {model_uri}: {str(exc).splitlines()[0]}") from None
    path = os.path.join(folder, "artifacts", WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{model_uri} is not an image classifier logged by this project (no artifacts/{WEIGHTS_FILE})")
    return path
