"""Models: one file per model; shared building blocks in edgerec.models.layers."""

from edgerec.models.base import MODELS, CTRModel, model_arg_defaults, register_model
from edgerec.models.dicycle import DiCycle
from edgerec.models.din import DIN
from edgerec.models.dnn import DNN
from edgerec.models.lr import LR

__all__ = ["MODELS", "CTRModel", "DIN", "DiCycle", "DNN", "LR", "model_arg_defaults", "register_model"]
