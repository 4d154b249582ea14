"""FeatureSpec: what a model needs to know about the features it will receive.

Built by the sample builders from the data (vocabulary sizes are data-dependent), passed to the
model constructor as its first argument. Config keys never set these; they are not hyper-parameters.
Every categorical vocabulary reserves index 0 for padding. The item and user vocabularies also
reserve their LAST index for out-of-vocabulary ids (`oov_item`, `oov_user`): an id outside the run's
vocabulary (a new item at serving, an unknown history item) maps there. Its embedding is zero and
never trained, and no exact-match term (COUPA's same-item kernel) ever fires for it, so two unknown
ids are never taken for the same item. Side-feature vocabularies use 0 for unknown. `tz` travels
with the run so that serving reads the hour and weekday on the same local clock as training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class FeatureSpec:
    n_users: int  # user vocabulary size incl. padding 0 and the OOV index n_users - 1
    n_items: int  # item vocabulary size incl. padding 0 and the OOV index n_items - 1
    max_len: int  # history length L the batches are cut to
    item_features: dict[str, int] = field(default_factory=dict)  # side feature -> vocab size
    user_features: dict[str, int] = field(default_factory=dict)
    n_positions: int = 0  # 0 = no display position; else vocab size incl. 0 = unknown
    tz: str = "UTC"  # the dataset's time zone: the calendar features are its local time (features.time.LocalClock)

    @property
    def oov_item(self) -> int:
        """Index of every item id the run never saw (the last row of the item table)."""
        return self.n_items - 1

    @property
    def oov_user(self) -> int:
        """Index of every user id the run never saw."""
        return self.n_users - 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        return cls(**d)
