"""train.when: the pure rule that decides whether a run trains a new model, and the records it compares."""

from __future__ import annotations

import pandas as pd
import pytest

from mmretrieval.core.params import Params
from mmretrieval.training.policy import Champion, DataRecord, changes, decide, item_fingerprints, params_fingerprint


def items(n: int, prefix: str = "i", tag: str = "") -> dict[str, str]:
    return {f"{prefix}{k}": f"f{k}{tag}" for k in range(n)}


def champion(record_items: dict[str, str] | None, params: str = "p1") -> Champion:
    record = None if record_items is None else DataRecord("a" * 32, params, record_items)
    return Champion("3", "run3", record)


def now(current: dict[str, str], params: str = "p1") -> DataRecord:
    return DataRecord("b" * 32, params, current)


def test_changes_count_new_changed_and_removed_items_against_the_record() -> None:
    before = items(10)
    after = {k: v for k, v in before.items() if k not in ("i0", "i1")} | {"i2": "other", "new": "x", "new2": "y"}
    c = changes(before, after)
    assert (c.added, c.replaced, c.removed, c.base) == (2, 1, 2, 10)
    assert c.growth == pytest.approx(0.3)


@pytest.mark.parametrize("when", ["always", "grown", "never"])
def test_without_a_champion_every_policy_trains(when: str) -> None:
    retrain, reason = decide(when, 0.2, None, now(items(5)))
    assert retrain
    assert reason == ("train.when is always" if when == "always" else "no champion yet")


def test_always_trains_and_never_keeps_the_champion_and_force_beats_both() -> None:
    unchanged = now(items(10))
    assert decide("always", 0.2, champion(items(10)), unchanged) == (True, "train.when is always")
    retrain, reason = decide("never", 0.2, champion(items(10)), now(items(100)))
    assert not retrain and "never" in reason and "v3" in reason
    assert decide("never", 0.2, champion(items(10)), unchanged, force=True)[0]
    assert decide("grown", 0.2, champion(items(10)), unchanged, force=True) == (True, "forced (mmr train --force)")


def test_grown_keeps_the_champion_below_the_threshold_and_says_by_how_much() -> None:
    base = items(20)
    small = base | {"n1": "x"} | {"i0": "changed"}  # 1 new + 1 changed of 20: 10 %
    retrain, reason = decide("grown", 0.2, champion(base), now(small))
    assert not retrain
    assert "1 new and 1 changed item(s)" in reason and "10.0% < train.grown_by 20.0%" in reason
    assert "v3 embeds them" in reason
    big = base | {f"n{k}": "x" for k in range(3)} | {"i0": "changed"}  # 4 of 20: exactly 20 %
    retrain, reason = decide("grown", 0.2, champion(base), now(big))
    assert retrain and "20.0% >= train.grown_by 20.0%" in reason


def test_grown_does_not_retrain_for_removals_or_unchanged_data() -> None:
    base = items(20)
    fewer = {k: v for k, v in base.items() if k != "i5"}
    for current in (base, fewer):
        retrain, reason = decide("grown", 0.0, champion(base), now(current))
        assert not retrain and "0 new and 0 changed" in reason
    retrain, _ = decide("grown", 0.0, champion(base), now(base | {"n": "x"}))  # grown_by 0: any new item
    assert retrain


def test_grown_retrains_when_the_champion_has_no_record_or_other_params() -> None:
    retrain, reason = decide("grown", 0.2, champion(None), now(items(10)))
    assert retrain and "no record" in reason
    retrain, reason = decide("grown", 0.2, champion(items(10), params="old"), now(items(10)))
    assert retrain and "params changed" in reason


def test_item_fingerprints_change_with_file_caption_label_or_split_and_not_with_other_columns() -> None:
    frame = pd.DataFrame({"id": ["a", "b"], "modality": ["image", "text"], "sha256": ["1" * 64, ""],
                          "text": ["a cat", "a dog"], "label": ["", ""], "split": ["train", "test"],
                          "media": ["media/a.png", ""]})
    first = item_fingerprints(frame)
    assert set(first) == {"a", "b"} and first["a"] != first["b"]
    for column, value in (("sha256", "2" * 64), ("text", "a big cat"), ("label", "cat"), ("split", "val")):
        assert item_fingerprints(frame.assign(**{column: [value, frame[column][1]]}))["a"] != first["a"], column
    assert item_fingerprints(frame.assign(media=["elsewhere.png", ""])) == first


def test_params_fingerprint_ignores_the_policy_keys_but_not_what_shapes_a_model() -> None:
    base = Params()
    same = Params.model_validate({"train": {"when": "grown", "grown_by": 0.5}})
    assert params_fingerprint(base) == params_fingerprint(same)
    for other in ({"train": {"epochs": 3}}, {"model": {"embed_dim": 32}}, {"split": {"salt": "x"}}):
        assert params_fingerprint(Params.model_validate(other)) != params_fingerprint(base), other


def test_the_policy_params_are_checked() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        Params.model_validate({"train": {"when": "sometimes"}})
    with pytest.raises(ValidationError):
        Params.model_validate({"train": {"grown_by": -0.1}})
