"""The model's code as MLflow logs it ("models from code"): MLflow runs this file to build
the model when it loads it, so nothing is pickled (:func:`trainer.mlflow_model.log_model`)."""
import mlflow

from trainer.mlflow_model import ImageClassifierModel

mlflow.models.set_model(ImageClassifierModel())
