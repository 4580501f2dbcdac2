"""Every field the CLI prints from data is safe for a terminal: no escape sequence, bell or bidi control reaches it
raw (an id holding ``ESC]0;title BEL`` would retitle the terminal, ``ESC[2J`` clear it)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from mmretrieval import cli
from mmretrieval.cli import json_safe, main, terminal_safe
from mmretrieval.serving.client import Hit

HOSTILE = "cat\x1b]0;pwned title\x07\x1b[2J\u202egpj.\x9b31m\x7f"
RAW = ("\x1b", "\x07", "\u202e", "\x9b", "\x7f")


def _clean(out: str) -> None:
    for ch in RAW:
        assert ch not in out, repr(ch)


def test_terminal_safe_writes_controls_as_visible_escapes() -> None:
    assert terminal_safe(HOSTILE) == "cat\\x1b]0;pwned title\\x07\\x1b[2J\\u202egpj.\\x9b31m\\x7f"
    assert terminal_safe("línea 猫 🐱") == "línea 猫 🐱"  # printable text is untouched
    assert terminal_safe("a\nb\tc", keep="\n") == "a\nb\\x09c"
    text = json.dumps({"id": HOSTILE, "n": [1, 2]}, ensure_ascii=False, indent=2)
    _clean(json_safe(text))
    assert json.loads(json_safe(text)) == {"id": HOSTILE, "n": [1, 2]}  # the same JSON value


class _Client:
    """Stands in for RetrievalClient: hits whose every text field is hostile."""

    def __init__(self, dataset: str, settings: Any = None) -> None:
        self.dataset = dataset

    def __enter__(self) -> _Client:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def search(self, **_: Any) -> list[Hit]:
        return [Hit(rank=1, id=HOSTILE, score=0.5, modality="image\x1b[2J", path=f"images/{HOSTILE}.png",
                    text=f"a {HOSTILE} ||| other", label=f"\x1b]0;{HOSTILE}\x07", collection="c", model_version="1",
                    data_version="d", metadata={"note": HOSTILE})]


@pytest.mark.parametrize("json_flag", [False, True])
def test_search_output_escapes_ids_labels_paths_and_captions(json_flag: bool, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MMR_HOME", str(tmp_path))
    monkeypatch.setattr("mmretrieval.serving.client.RetrievalClient", _Client)
    argv = ["search", "--dataset", "demo", "a cat", "--image", f"q{HOSTILE}.png"] + (["--json"] if json_flag else [])
    assert main(argv) == 0
    out = capsys.readouterr().out
    _clean(out)
    if json_flag:
        hit = json.loads(out.strip())
        assert hit["id"] == HOSTILE and hit["label"] == f"\x1b]0;{HOSTILE}\x07"  # nothing lost, only escaped
    else:
        assert "\\x1b]0;pwned" in out and "image {}".format(f"q{terminal_safe(HOSTILE)}") in out


def test_errors_and_log_lines_quoting_data_are_escaped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MMR_HOME", str(tmp_path))
    assert main(["ingest", str(tmp_path / f"{HOSTILE}.csv"), "--name", "x"]) == 2
    err = capsys.readouterr().err
    _clean(err)
    assert "\\x1b]0;pwned title\\x07" in err and err.startswith("mmr: error:")
    record = logging.LogRecord("mmr", logging.INFO, __file__, 1, "item %s\nnext line", (HOSTILE,), None)
    line = cli.TerminalSafeFormatter(logging.Formatter("%(message)s")).format(record)
    assert line == f"item {terminal_safe(HOSTILE)}\nnext line"
