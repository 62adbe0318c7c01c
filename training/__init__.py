"""Training package: data sources, models, the training loop, evaluation and the model store."""

from ._env import configure_environment

configure_environment()

from .config import TrainConfig, load_config  # noqa: E402
from .pipeline import TrainResult, train  # noqa: E402
from .store import StoredModel, load_model  # noqa: E402

__all__ = ["TrainConfig", "TrainResult", "StoredModel", "load_config", "load_model", "train"]
