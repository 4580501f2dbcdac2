"""``mmr evaluate --manifest`` scores the keyword + vector hybrid search where serving uses it: the ``hybrid`` mode
ranks a manifest's items on a temporary Milvus Lite collection exactly as a hybrid search of the published collection
of the same items returns them (the tiny dataset: captions "a <colour> square ||| something <colour>", label
<colour>; four squares per colour)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from mmretrieval.backends import tracking
from mmretrieval.cli import main
from mmretrieval.core.settings import Settings
from mmretrieval.evaluation.evaluator import RetrievalEvaluator
from mmretrieval.serving import loading
from mmretrieval.serving.client import RetrievalClient
from mmretrieval.serving.modes import ModeContext, rankers
from mmretrieval.stages.evaluate import evaluate_manifest, gallery_of, mode_context

pytestmark = pytest.mark.integration

QUERIES = ["a red square", "blue", "something green", "a yellow thing"]


def with_search_mode(settings: Settings, mode: str) -> Settings:
    """``settings`` with ``index.search_mode`` set to ``mode`` (what serving answers text queries with)."""
    index = settings.params.index.model_copy(update={"search_mode": mode})
    return settings.model_copy(update={"params": settings.params.model_copy(update={"index": index})})


def items_manifest(settings: Settings, folder: Path, textless: tuple[str, ...] = ()) -> tuple[Path, pd.DataFrame]:
    """The published tiny dataset's clean items as a manifest in a copy of the clean folder (media relative to it),
    the ``textless`` ids without captions."""
    clean = settings.layout("tiny").clean
    shutil.copytree(clean, folder)
    frame = pd.read_parquet(folder / "manifest.parquet")[["id", "modality", "media", "text", "label"]]
    frame = frame.rename(columns={"media": "path"})
    frame.loc[frame["id"].isin(textless), "text"] = ""
    manifest = folder / "as_manifest.csv"
    frame.to_csv(manifest, index=False)
    return manifest, frame


def champion_context(settings: Settings, manifest: Path, frame: pd.DataFrame) -> ModeContext:
    """The search modes' context of the champion over the manifest's images, as ``mmr evaluate`` builds it."""
    ref = tracking.require_alias(settings, "tiny", tracking.CHAMPION)
    model = loading.load_model(settings, ref)
    evaluator = RetrievalEvaluator(frame, manifest.parent, media_column="path", primary_metric="t2i_recall@10")
    return mode_context(settings, "tiny", ref, model, gallery_of(evaluator.decode(model, "image"), frame))


def test_hybrid_mode_is_evaluated_and_ranks_as_a_hybrid_search_returns(published_tiny: Settings,
                                                                        tmp_path: Path) -> None:
    settings = with_search_mode(published_tiny, "hybrid")
    manifest, frame = items_manifest(published_tiny, tmp_path / "clean")
    scored = evaluate_manifest("tiny", manifest, settings)
    assert scored["modes"] == ["vector", "hybrid"]
    assert {"hybrid/t2i_recall@1", "hybrid/t2i_mrr", "hybrid/t2i_map@10", "vector/t2i_recall@1"} <= set(scored)
    assert scored["hybrid/t2i_recall@10_chance"] == scored["vector/t2i_recall@10_chance"]
    assert not any(k.startswith(("hybrid/i2t_", "keyword/")) for k in scored)  # text queries only; one mode serves

    ctx = champion_context(settings, manifest, frame)
    ranked = rankers(ctx)["hybrid"](QUERIES)
    k = max(ctx.ks)
    with RetrievalClient("tiny", settings=settings) as client:
        served = [[h.id for h in client.search(text=q, k=k, mode="hybrid")] for q in QUERIES]
    assert [r[:k] for r in ranked] == served
    vector = rankers(ctx)["vector"](QUERIES)
    assert [r[:k] for r in ranked] != [r[:k] for r in vector]  # the words change the order: not vector search
    assert all(sorted(r) == sorted(ctx.gallery.ids) for r in ranked)  # the rest follow: a full ranking


def test_items_without_text_are_ranked_and_the_cli_scores_a_query_file(published_tiny: Settings, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    blue = ("blue0", "blue1", "blue2", "blue3")
    manifest, frame = items_manifest(published_tiny, tmp_path / "clean", textless=blue)
    params = tmp_path / "params.yaml"  # the workspace's params, serving hybrid
    params.write_text((published_tiny.home / "params.yaml").read_text(encoding="utf-8")
                      + "\nindex: {search_mode: hybrid}\n", encoding="utf-8")
    monkeypatch.setenv("MMR_HOME", str(published_tiny.home))
    monkeypatch.setenv("MMR_PARAMS", str(params))
    settings = with_search_mode(published_tiny, "hybrid")
    ctx = champion_context(settings, manifest, frame)
    ranked = rankers(ctx)["hybrid"](["a blue square"])[0]
    assert sorted(ranked) == sorted(ctx.gallery.ids)  # the captionless blue squares are ranked too

    queries = tmp_path / "queries.csv"
    queries.write_text(f"query,relevant\na blue square,{' ||| '.join(blue)}\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["evaluate", "--dataset", "tiny", "--manifest", str(manifest), "--queries", str(queries)]) == 0
    own = json.loads(capsys.readouterr().out)
    assert own["modes"] == ["vector", "hybrid"]
    first = next(rank for rank, i in enumerate(ranked, 1) if i in blue)
    assert own["hybrid/t2i_mrr"] == pytest.approx(1 / first, abs=1e-4)


def test_with_the_default_vector_mode_no_hybrid_metrics_appear(published_tiny: Settings, tmp_path: Path) -> None:
    manifest, _ = items_manifest(published_tiny, tmp_path / "clean")
    scored = evaluate_manifest("tiny", manifest, published_tiny)
    assert published_tiny.params_for("tiny").index.search_mode == "vector"
    assert scored["modes"] == ["vector"]
    assert not any(k.startswith(("hybrid/", "keyword/")) for k in scored)


def test_the_keyword_mode_puts_the_word_matches_first_then_the_rest_by_vector(published_tiny: Settings,
                                                                             tmp_path: Path) -> None:
    settings = with_search_mode(published_tiny, "keyword")
    manifest, frame = items_manifest(published_tiny, tmp_path / "clean")
    ctx = champion_context(settings, manifest, frame)
    modes = rankers(ctx)
    assert list(modes) == ["vector", "keyword"]
    ranked, vector = modes["keyword"](["red"])[0], modes["vector"](["red"])[0]
    assert set(ranked[:4]) == {f"red{i}" for i in range(4)}  # only the red items say "red"
    assert ranked[4:] == [i for i in vector if not i.startswith("red")]
