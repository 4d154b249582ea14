"""Reusable layers. Models compose these; a layer is never copied into a model file."""

from edgerec.models.layers.attention import Dice, QueryAttention, TargetAttention
from edgerec.models.layers.embeddings import FeatureEmbedding
from edgerec.models.layers.mlp import MLP
from edgerec.models.layers.sequence import masked_mean
from edgerec.models.layers.time import AbsoluteTimeEncoding, FourierTimeEncoding

__all__ = ["AbsoluteTimeEncoding", "Dice", "FeatureEmbedding", "FourierTimeEncoding", "MLP", "QueryAttention",
           "TargetAttention", "masked_mean"]
