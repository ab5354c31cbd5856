"""The generate model's entry for MLflow's models-from-code (lmforge.registry.pyfunc logs this file as the model): MLflow
runs it when it loads the model, after putting the version's code/ (its copy of lmforge) on sys.path."""
import mlflow.models

from lmforge.registry.pyfunc import GenerateModel

mlflow.models.set_model(GenerateModel())
