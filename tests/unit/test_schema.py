from pathlib import Path

import pytest

from mmretrieval.core.errors import ManifestError
from mmretrieval.core.params import SplitParams
from mmretrieval.core.schema import assign_split, fill_splits, read_manifest, split_captions


def write(tmp_path: Path, text: str, encoding: str = "utf-8") -> Path:
    p = tmp_path / "manifest.csv"
    p.write_bytes(text.encode(encoding))
    return p


def test_reads_the_shared_manifest_format_with_several_captions(tmp_path: Path) -> None:
    p = write(tmp_path, "id,modality,path,text,label,split\n"
                        "a,image,images/a.jpg,A dog . ||| A brown dog runs .,,\n")
    df = read_manifest(p)
    assert list(df.columns[:9]) == ["id", "modality", "path", "text", "label", "split", "group", "sha256", "source"]
    assert split_captions(df.at[0, "text"]) == ["A dog .", "A brown dog runs ."]
    assert df.at[0, "split"] == ""


def test_missing_required_column_is_named(tmp_path: Path) -> None:
    p = write(tmp_path, "id,path,text\na,x.jpg,hello\n")
    with pytest.raises(ManifestError, match=r"\['modality'\]"):
        read_manifest(p)


def test_utf8_bom_is_accepted_and_non_utf8_is_a_clear_error(tmp_path: Path) -> None:
    p = write(tmp_path, "\ufeffid,modality,path\na,image,x.jpg\n")
    assert read_manifest(p).at[0, "id"] == "a"
    q = write(tmp_path, "id,modality,path,text\na,image,x.jpg,caf\xe9\n", encoding="latin-1")
    with pytest.raises(ManifestError, match="not UTF-8"):
        read_manifest(q)


def test_extra_and_reordered_columns_are_kept_as_metadata(tmp_path: Path) -> None:
    p = write(tmp_path, "path,photographer,id,modality\nx.jpg,Ann,a,IMAGE\n")
    df = read_manifest(p)
    assert df.at[0, "modality"] == "image"
    assert df.at[0, "metadata"] == '{"photographer": "Ann"}'


def test_header_only_manifest_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no rows"):
        read_manifest(write(tmp_path, "id,modality,path\n"))


def test_split_assignment_is_deterministic_follows_ratios_and_keeps_groups_together() -> None:
    ratios = SplitParams(train=0.8, val=0.1, test=0.1)
    splits = [assign_split(f"item{i}", ratios) for i in range(5000)]
    assert splits == [assign_split(f"item{i}", ratios) for i in range(5000)]
    share = splits.count("train") / len(splits)
    assert 0.77 < share < 0.83
    import pandas as pd

    df = pd.DataFrame({"id": [f"x{i}" for i in range(50)], "group": ["g"] * 50, "split": [""] * 49 + ["test"]})
    filled = fill_splits(df, ratios)
    assert filled["split"].iloc[:49].nunique() == 1
    assert filled.at[49, "split"] == "test"


@pytest.mark.parametrize(("header", "named"), [
    ("id,modality,path,text,text \n", r"'text' \(column 4\) and 'text ' \(column 5\)"),  # trailing space
    ("id,modality,path,text,text\n", r"'text' \(column 4\) and 'text' \(column 5\)"),  # exact repeat (pandas: text.1)
    ("id,id,modality,path\n", r"'id' \(column 1\) and 'id' \(column 2\)"),
    ("id,modality,path,Label,label\n", r"'Label' \(column 4\) and 'label' \(column 5\)"),  # case
    ("id,modality,path,photographer,PHOTOGRAPHER\xa0\n", "'photographer'"),  # extra columns too, NBSP
    ("id,modality,path,text,te\u200bxt\n", "'text'"),  # an invisible zero-width space
    ("id,modality,path,text,\uff54ext\n", "'text'"),  # a full-width letter (NFKC)
])
def test_header_names_that_mean_the_same_column_are_refused_naming_them(tmp_path: Path, header: str,
                                                                         named: str) -> None:
    width = header.count(",") + 1
    p = write(tmp_path, header + ",".join(["a", "text", ""] + ["x"] * (width - 3)) + "\n")
    with pytest.raises(ManifestError, match=f"mean the same column.*{named}"):
        read_manifest(p)


def test_known_columns_are_found_whatever_their_case_and_spacing(tmp_path: Path) -> None:
    df = read_manifest(write(tmp_path, " ID ,Modality,PATH,Text\u200b,Source\na,text,,hello,web\n"))
    assert (df.at[0, "id"], df.at[0, "text"], df.at[0, "source"], df.at[0, "metadata"]) == ("a", "hello", "web", "{}")


def test_rows_wider_than_the_header_blank_header_names_and_a_folder_are_manifest_errors(tmp_path: Path) -> None:
    shifted = tmp_path / "shifted.csv"  # every row one field too many: pandas would shift every column silently
    shifted.write_text("id,modality,path,text\na,image,x.jpg,hi,EXTRA\nb,image,y.jpg,yo,EXTRA\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="2 row\\(s\\) have more fields than the header's 4"):
        read_manifest(shifted)
    blanks = tmp_path / "blanks.csv"
    blanks.write_text("id,modality,path,,\na,image,x.jpg,1,2\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="2 header names that are blank"):
        read_manifest(blanks)
    with pytest.raises(ManifestError, match="is a folder"):
        read_manifest(tmp_path)


def test_a_windows_path_separator_is_a_separator_for_every_stage(tmp_path: Path) -> None:
    from mmretrieval.media.files import path_problem

    manifest = tmp_path / "m.csv"
    manifest.write_text("id,modality,path,text\nb,image,sub\\b.jpg,y\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jpg").write_bytes(b"jpeg")
    assert list(read_manifest(manifest)["path"]) == ["sub/b.jpg"]
    assert path_problem("sub/b.jpg", tmp_path) is None
    too_long = path_problem("a" * 300 + ".jpg", tmp_path)  # longer than a file name may be: no OSError
    assert too_long is not None and too_long.reason == "missing_file"


def test_a_manifest_with_classic_mac_line_endings_reads_like_any_other(tmp_path: Path) -> None:
    manifest = tmp_path / "cr.csv"
    manifest.write_bytes(b"id,modality,path,text\ra,text,,hello\rb,text,,world\r")
    assert read_manifest(manifest)[["id", "text"]].values.tolist() == [["a", "hello"], ["b", "world"]]
