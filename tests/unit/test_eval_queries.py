"""``mmr evaluate --queries``: the query file's checks, its relevance, metrics of ranked ids against hand-computed
values, the CLI's errors, and the evaluate report's side-by-side search modes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mmretrieval.cli import main
from mmretrieval.core.errors import ManifestError
from mmretrieval.evaluation.modes import prefixed, ranking_metrics, ranking_scores, scored_rankings
from mmretrieval.evaluation.queries import read_queries

ITEMS = ["a", "b", "c", "d"]  # the gallery, in its order


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_hand_computed_metrics_of_a_query_file(tmp_path: Path) -> None:
    queries = read_queries(write(tmp_path / "q.csv", "query,relevant,note\n"
                                 "a red car,a,one relevant\n"
                                 '"two dogs, running",b ||| d,two relevant\n'
                                 "a boat,c,\n"
                                 "a kite,z,its item is not in this gallery\n"), known_ids={*ITEMS, "z"})
    assert queries.queries == ["a red car", "two dogs, running", "a boat", "a kite"]
    assert queries.relevant_ids == [["a"], ["b", "d"], ["c"], ["z"]]
    relevant = queries.relevance(ITEMS)
    assert relevant.tolist() == [[True, False, False, False], [False, True, False, True],
                                 [False, False, True, False], [False, False, False, False]]
    rankings = [["b", "a", "c", "d"],  # q1: its item at rank 2
                ["d", "c", "b", "a"],  # q2: its items at ranks 1 and 3
                ["a", "b", "d"],  # q3: c left out, so ranked after the three: rank 4
                ["a", "b", "c", "d"]]  # q4: nothing relevant in the gallery, left out
    m = ranking_metrics(rankings, relevant, ITEMS, "t2i", ks=(1, 3))
    # Per query (q1, q2, q3), by the definitions of evaluation/metrics.py:
    #   hit@1 = 0, 1, 0            hit@3 = 1, 1, 0
    #   R@1   = 0, 1/2, 0          R@3   = 1, 2/2, 0
    #   P@1   = 0, 1, 0            P@3   = 1/3, 2/3, 0
    #   AP@1  = 0, 1/min(2,1)=1, 0
    #   AP@3  = (1/2)/1, (1/1 + 2/3)/min(2,3) = 5/6, 0
    #   nDCG@1 = 0, 1, 0
    #   nDCG@3 = (1/log2 3)/1, (1 + 1/log2 4)/(1 + 1/log2 3), 0
    #   RR    = 1/2, 1, 1/4        first relevant ranks 2, 1, 4: median 2
    assert m["t2i_queries"] == 3
    assert m["t2i_hit_rate@1"] == pytest.approx(1 / 3)
    assert m["t2i_hit_rate@3"] == pytest.approx(2 / 3)
    assert m["t2i_recall@1"] == pytest.approx(1 / 6)
    assert m["t2i_recall@3"] == pytest.approx(2 / 3)
    assert m["t2i_precision@1"] == pytest.approx(1 / 3)
    assert m["t2i_precision@3"] == pytest.approx(1 / 3)
    assert m["t2i_map@1"] == pytest.approx(1 / 3)
    assert m["t2i_map@3"] == pytest.approx(4 / 9)  # (1/2 + 5/6 + 0) / 3
    assert m["t2i_ndcg@1"] == pytest.approx(1 / 3)
    assert m["t2i_ndcg@3"] == pytest.approx((1 / math.log2(3) + 1.5 / (1 + 1 / math.log2(3))) / 3)
    assert m["t2i_mrr"] == pytest.approx(7 / 12)  # (1/2 + 1 + 1/4) / 3
    assert m["t2i_median_rank"] == 2
    # Chance levels, random order of 4 items:
    #   one relevant: E[RR] = (1 + 1/2 + 1/3 + 1/4)/4 = 25/48
    #   two relevant: P(first at 1, 2, 3) = 3/6, 2/6, 1/6, E[RR] = 1/2 + 1/6 + 1/18 = 13/18
    #   mean over (1, 2, 1 relevant): (25/48 + 13/18 + 25/48)/3 = 127/216
    #   hit@1: 1/4, 2/4, 1/4 -> 1/3;  R@3 = 3/4 for every query;  P@1 = r/4 -> (1 + 2 + 1)/12 = 1/3
    assert m["t2i_mrr_chance"] == pytest.approx(127 / 216)
    assert m["t2i_hit_rate@1_chance"] == pytest.approx(1 / 3)
    assert m["t2i_recall@3_chance"] == pytest.approx(3 / 4)
    assert m["t2i_precision@1_chance"] == pytest.approx(1 / 3)
    assert set(prefixed("reranked", m)) == {f"reranked/{k}" for k in m}


def test_rankings_of_scores_round_trip_and_unknown_ids_are_refused() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.5], [0.3, 0.2, 0.1, 0.0]])
    rankings = scored_rankings(scores, ITEMS)
    assert rankings == [["b", "c", "d", "a"], ["a", "b", "c", "d"]]  # ties keep the gallery order
    back = ranking_scores(rankings, ITEMS)
    assert (np.argsort(-back, axis=1, kind="stable") == np.argsort(-scores, axis=1, kind="stable")).all()
    with pytest.raises(ValueError, match="'x' is not in the gallery"):
        ranking_scores([["a", "x"]], ITEMS)
    with pytest.raises(ValueError, match="'a' ranked twice"):
        ranking_scores([["a", "a"]], ITEMS)


@pytest.mark.parametrize(("text", "message"), [
    ("question,relevant\nx,a\n", r"missing column\(s\) \['query'\]"),
    ("query\nx\n", r"missing column\(s\) \['relevant'\]"),
    ("query,relevant\n", "has no query rows"),
    ("query,relevant\na cat,a\n  ,b\n", r"line 3: empty query \(relevant 'b'\)"),
    ("query,relevant\na cat, ||| \n", "line 2: query 'a cat' has no relevant id"),
    ("query,relevant\na cat,a\na dog,b ||| nope ||| gone\n", r"line 3: relevant id\(s\) \['nope', 'gone'\] of query "
                                                           "'a dog' are not in the manifest"),
])
def test_a_bad_query_file_names_the_line_and_value(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        read_queries(write(tmp_path / "q.csv", text), known_ids=set(ITEMS))


def test_a_missing_or_undecodable_query_file_is_a_manifest_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        read_queries(tmp_path / "none.csv", known_ids=set(ITEMS))
    (tmp_path / "latin1.csv").write_bytes("query,relevant\ncaf\xe9,a\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="cannot be read as UTF-8"):
        read_queries(tmp_path / "latin1.csv", known_ids=set(ITEMS))


def test_cli_evaluate_queries_errors_are_one_line_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MMR_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    queries = write(tmp_path / "q.csv", "query,relevant\na cat,photo_cat\na dog,photo_wolf\n")
    assert main(["evaluate", "--dataset", "demo", "--queries", str(queries)]) == 2
    assert "--queries needs --manifest" in capsys.readouterr().err
    manifest = write(tmp_path / "manifest.csv", "id,modality,path,text\nphoto_cat,image,cat.png,a cat\n"
                     "photo_dog,image,dog.png,a dog\n")
    assert main(["evaluate", "--dataset", "demo", "--manifest", str(manifest), "--queries", str(queries)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mmr: error: query file") and "line 3" in err[-1] and "photo_wolf" in err[-1]


def test_evaluate_report_shows_the_search_modes_side_by_side(tmp_path: Path) -> None:
    from mmretrieval.evaluation.report import mode_columns, write_evaluation_html

    result = {"dataset": "demo", "data_version": "abc", "split": "test", "test_items": 10,
              "challenger": {"version": "2", "metrics": {"t2i_recall@1": 0.25, "t2i_recall@1_chance": 0.1,
                                                         "i2t_mrr": 0.5}, "modes": {}},
              "champion": {"version": "1", "metrics": {"t2i_recall@1": 0.125, "i2t_mrr": 0.375},
                           "modes": {"reranked/t2i_recall@1": 0.625, "reranked/t2i_recall@1_chance": 0.1}}}
    columns = mode_columns(result)
    assert [title for title, _ in columns] == ["challenger (v2) vector", "champion (v1) vector",
                                               "champion (v1) reranked"]
    assert columns[2][1] == {"t2i_recall@1": 0.625, "t2i_recall@1_chance": 0.1}
    html = write_evaluation_html(tmp_path / "evaluate.html", result).read_text(encoding="utf-8")
    row = html.split("<td>t2i_recall@1</td>")[1].split("</tr>")[0]
    assert row == "<td>0.2500</td><td>0.1250</td><td>0.6250</td><td>0.1000</td>"  # 3 columns, then chance
    mrr_row = html.split("<td>i2t_mrr</td>")[1].split("</tr>")[0]
    assert mrr_row == "<td>0.5000</td><td>0.3750</td><td></td><td></td>"  # re-ranking is text -> items only


def test_cli_evaluate_refuses_a_manifest_that_repeats_an_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Two rows of one id would be ranked twice by every mode: one line naming the id, exit 2, no traceback."""
    monkeypatch.setenv("MMR_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    queries = write(tmp_path / "q.csv", "query,relevant\na cat,photo_cat\n")
    manifest = write(tmp_path / "manifest.csv", "id,modality,path,text\nphoto_cat,image,cat.png,a cat\n"
                     "photo_cat,image,cat2.png,another cat\n")
    assert main(["evaluate", "--dataset", "demo", "--manifest", str(manifest), "--queries", str(queries)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mmr: error: manifest") and "photo_cat" in err[-1] and "repeats" in err[-1]
