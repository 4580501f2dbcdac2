import re
from pathlib import Path

import pytest

from mmretrieval.cli import build_parser, main

# The CLI's contract (the README and docs/ document it): every verb and the flags it takes
VERBS = {
    "sample": {"--out"}, "ingest": {"--name", "--append", "--remove"}, "validate": {"--dataset"},
    "clean": {"--dataset"}, "augment": {"--dataset"}, "train": {"--dataset", "--force"},
    "evaluate": {"--dataset", "--manifest", "--alias", "--queries"},
    "rerank": {"--dataset"}, "promote": {"--dataset", "--rollback"}, "embed": {"--dataset"},
    "publish": {"--dataset", "--rollback"}, "distill": {"--dataset"}, "run": {"--dataset"}, "dag-test": {"--dataset"},
    "search": {"--image", "--audio", "--k", "--modality", "--label", "--where", "--filter", "--fusion", "--rerank",
               "--min-confidence", "--mode", "--dataset", "--json"},
    "serve": {"--dataset", "--host", "--port", "--insecure-no-auth"}, "info": {"--dataset"}, "params": {"--schema"},
    "cache": set(),  # its actions and their flags: tests/unit/test_cache_admin.py
}
FLAG = re.compile(r"(?<![\w-])--[a-z][\w-]*")


def help_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_mmr_help_lists_exactly_the_verbs_each_with_what_it_does(capsys: pytest.CaptureFixture[str]) -> None:
    """A verb dropped, renamed or added fails here, and so does one without its help line (argparse lists only the
    sub-commands that have one)."""
    lines = help_text([], capsys).splitlines()
    listed = [line.split()[0] for line in lines if re.match(r"^ {4}[a-z][\w-]* {2,}\S", line)]
    assert sorted(listed) == sorted(VERBS)


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_keeps_its_flags(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert set(FLAG.findall(help_text([verb], capsys))) - {"--help"} == VERBS[verb]


def test_contract_flags_parse() -> None:
    p = build_parser()
    a = p.parse_args(["search", "a cat", "--image", "x.png", "--audio", "y.wav", "--k", "3", "--modality", "image",
                      "--json"])
    assert (a.text, a.k, a.modality, a.json) == (["a cat"], 3, "image", True)
    a = p.parse_args(["evaluate", "--dataset", "demo", "--manifest", "m.csv"])
    assert a.manifest.name == "m.csv"
    assert p.parse_args(["promote", "--dataset", "d", "--rollback"]).rollback


def test_errors_are_one_line_and_exit_non_zero(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    monkeypatch.setenv("MMR_HOME", str(tmp_path))
    monkeypatch.delenv("MMR_DATASET", raising=False)
    assert main(["validate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mmr: error: no dataset given")
    assert main(["validate", "--dataset", "Bad-Name"]) == 2
    assert "Bad-Name" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["publish"], ["promote"], ["publish", "--rollback"], ["promote", "--rollback"],
                                  ["run"], ["dag-test"]])
def test_verbs_that_change_what_is_served_never_pick_a_default_dataset(argv: list[str], tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MMR_HOME", str(tmp_path))
    monkeypatch.setenv("MMR_DATASET", "demo")  # not even this: the flag is required
    (tmp_path / "data/raw").mkdir(parents=True)
    (tmp_path / "data/raw/demo.dvc").write_text("outs: []\n")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mmr: error: `mmr {' '.join(argv)}` changes what is "
                   "served: pass --dataset NAME (it never picks a default)"]


def test_search_without_a_dataset_refuses_when_several_exist_and_uses_the_only_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MMR_HOME", str(tmp_path))
    monkeypatch.setenv("MMR_MILVUS_URI", str(tmp_path / "milvus.db"))
    monkeypatch.delenv("MMR_DATASET", raising=False)
    raw = tmp_path / "data/raw"
    raw.mkdir(parents=True)
    (raw / "photos.dvc").write_text("outs: []\n")
    (raw / "testdata.dvc").write_text("outs: []\n")  # ingested last: once the silent default
    assert main(["search", "a cat"]) == 2
    assert capsys.readouterr().err.strip() == ("mmr: error: no dataset given and 2 are ingested (photos, testdata): "
                                               "pass --dataset NAME (or set MMR_DATASET)")
    (raw / "testdata.dvc").unlink()
    assert main(["search", "a cat"]) == 2  # nothing published here: the error names the dataset it used
    assert "mmr_photos" in capsys.readouterr().err
    assert main(["info"]) == 2
    assert "mmr_photos" in capsys.readouterr().err
