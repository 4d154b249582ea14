"""Models: one file per model; shared building blocks in edgerec.models.layers."""

from edgerec.models.base import MODELS, CTRModel, model_arg_defaults, register_model
from edgerec.models.coupa import COUPA
from edgerec.models.dicycle import DiCycle
from edgerec.models.din import DIN
from edgerec.models.dnn import DNN
from edgerec.models.gru4rec import GRU4Rec
from edgerec.models.lr import LR
from edgerec.models.sasrec import SASRec
from edgerec.models.timelstm import TimeLSTM
from edgerec.models.tisasrec import TiSASRec

__all__ = ["MODELS", "CTRModel", "DIN", "DiCycle", "DNN", "GRU4Rec", "LR", "SASRec", "TiSASRec", "TimeLSTM", "model_arg_defaults", "register_model"]
