import pytest

from mmretrieval.cli import STAGE_HELP, build_parser, main


@pytest.mark.parametrize("verb", [*STAGE_HELP, "ingest", "run", "search", "sample", "dag-test", "info", "serve"])
def test_every_verb_has_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([verb, "--help"])
    assert e.value.code == 0
    assert "usage: mmr" in capsys.readouterr().out


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
