"""FeatureSpec: what a model needs to know about the features it will receive.

Built by the sample builders from the data (vocabulary sizes are data-dependent), passed to the
model constructor as its first argument. Config keys never set these; they are not hyper-parameters.
Every categorical vocabulary reserves index 0 for padding / unknown.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class FeatureSpec:
    n_users: int  # user vocabulary size incl. padding 0
    n_items: int  # item vocabulary size incl. padding 0
    max_len: int  # history length L the batches are cut to
    item_features: dict[str, int] = field(default_factory=dict)  # side feature -> vocab size
    user_features: dict[str, int] = field(default_factory=dict)
    n_positions: int = 0  # 0 = no display position; else vocab size incl. 0 = unknown

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        return cls(**d)
