"""What stages hand to each other within one run (typed, JSON-able through Airflow XCom)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Pinned:
    """The inputs the first task of a serve run resolved (the champion's model version, the clean data version).

    Every later task of that run receives them and works on exactly these: a champion promoted meanwhile never gets
    mixed into the run's shards or collection, and clean data rewritten meanwhile fails the run loudly.
    """

    model_version: str
    data_version: str

    def as_dict(self) -> dict[str, str]:
        return {"model_version": self.model_version, "data_version": self.data_version}

    @classmethod
    def of(cls, raw: dict[str, Any] | None) -> Pinned | None:
        return None if not raw else cls(str(raw["model_version"]), str(raw["data_version"]))
