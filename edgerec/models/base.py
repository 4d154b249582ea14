"""What every CTR model shares: the registry, the forward contract and the loss.

Contract: `Model(spec, **config_keys)`; `forward(batch) -> {"logit": (B,), "y_pred": (B,), ...}`.
Constructor keyword arguments are exactly the experiment's `model_args` keys: the config loader
validates them against the signature, so an unknown key is an error, not a silent no-op.
"""

from __future__ import annotations

import inspect
from typing import Type

import torch
from torch import nn
from torch.nn import functional as F

from edgerec.features.spec import FeatureSpec

MODELS: dict[str, Type["CTRModel"]] = {}


def register_model(cls: Type["CTRModel"]) -> Type["CTRModel"]:
    MODELS[cls.__name__] = cls
    return cls


def model_arg_defaults(cls: Type["CTRModel"]) -> dict:
    """Constructor keyword arguments (the config keys) and their defaults."""
    sig = inspect.signature(cls.__init__)
    return {n: p.default for n, p in list(sig.parameters.items())[2:]}  # skip self, spec


class CTRModel(nn.Module):
    """Base class: binary click model over one batch dict from edgerec.data.samples."""

    def __init__(self, spec: FeatureSpec):
        super().__init__()
        self.spec = spec

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def loss(self, batch: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> torch.Tensor:
        """Binary cross-entropy on logits, plus any auxiliary loss the model returned."""
        loss = F.binary_cross_entropy_with_logits(out["logit"], batch["label"])
        if "aux_loss" in out:
            loss = loss + out["aux_loss"]
        return loss

    @staticmethod
    def output(logit: torch.Tensor, **extra: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logit": logit, "y_pred": torch.sigmoid(logit), **extra}
