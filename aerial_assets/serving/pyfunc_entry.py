"""The file MLflow loads the champion from ("models from code"): no pickle in the model, only this code and the
artifacts. It runs with the model's ``code/`` folder on ``sys.path``, where the few modules it needs travel."""

from mlflow.models import set_model

from aerial_assets.serving.pyfunc import LandUseModel

set_model(LandUseModel())
