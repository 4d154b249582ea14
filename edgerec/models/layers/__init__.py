"""Reusable layers. Models compose these; a layer is never copied into a model file."""

from edgerec.models.layers.attention import Dice, TargetAttention
from edgerec.models.layers.embeddings import FeatureEmbedding
from edgerec.models.layers.mlp import MLP
from edgerec.models.layers.sequence import masked_mean

__all__ = ["Dice", "FeatureEmbedding", "MLP", "TargetAttention", "masked_mean"]
