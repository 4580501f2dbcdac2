"""Which epoch training keeps, and when it stops early."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


def selection_key(val_metric: float | None, loss: float) -> tuple[float, float]:
    """Epochs compare by this key, the largest is kept: the validation gate metric when selection uses it (None:
    too few validation items, or none), ties (small validation parts saturate) going to the lower training loss."""
    return (val_metric if val_metric is not None else 0.0, -loss)


@dataclass
class EpochSelector:
    """Tracks the best epoch so far and the epochs since the validation metric last improved.

    ``patience`` > 0 stops training after that many epochs without a better validation metric; epochs scored
    without one (no usable validation part) never stop training.
    """

    patience: int = 0
    best_key: tuple[float, float] | None = None
    best_epoch: int = 0
    best_val: float = -1.0
    stale: int = 0
    last_had_metric: bool = False

    def update(self, epoch: int, val_metric: float | None, loss: float) -> bool:
        """Record an epoch; True when it is the best so far (its weights should be kept)."""
        key = selection_key(val_metric, loss)
        better = self.best_key is None or key > self.best_key
        if better:
            self.best_key, self.best_epoch = key, epoch
        if val_metric is not None and val_metric > self.best_val + 1e-9:
            self.best_val, self.stale = val_metric, 0
        else:
            self.stale += 1
        self.last_had_metric = val_metric is not None
        return better

    @property
    def should_stop(self) -> bool:
        return bool(self.patience and self.last_had_metric and self.stale >= self.patience)

    def state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpochSelector:
        state = dict(state)
        if state.get("best_key") is not None:
            state["best_key"] = tuple(state["best_key"])
        return cls(**state)
