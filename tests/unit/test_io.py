"""Stage files are written atomically, also by parallel writers (the mapped embed_shard tasks share plan.json)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from mmretrieval.core.io import write_json


def test_parallel_writers_of_one_file_never_leave_a_torn_or_missing_file(tmp_path: Path) -> None:
    target = tmp_path / "plan.json"
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(200):
                write_json(target, {"writer": k, "i": i, "pad": "x" * 5000})
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    seen = 0
    while any(t.is_alive() for t in threads):
        if target.exists():
            assert json.loads(target.read_text())["pad"] == "x" * 5000
            seen += 1
    for t in threads:
        t.join()
    assert not errors and seen > 0
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # no temp file left behind


def test_an_atomic_write_sweeps_what_killed_writers_left_and_keeps_a_live_writers_scratch(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from mmretrieval.core.io import atomic_dir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a pid whose process has exited
    target = tmp_path / "clean"
    for name in (f".clean.tmp-{dead}", f".clean.old-{dead}", f".clean.tmp-{os.getppid()}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "media.bin").write_bytes(b"x" * 10)
    with atomic_dir(target) as scratch:
        (scratch / "manifest.csv").write_text("id\n", encoding="utf-8")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["clean", f".clean.tmp-{os.getppid()}"])  # the live one (our parent) stays


def test_a_folder_swap_replaces_the_target_whole_and_sweeps_what_killed_swappers_left(tmp_path: Path) -> None:
    import subprocess
    import sys

    from mmretrieval.core.io import swap_dir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a pid whose process has exited
    target, work = tmp_path / "v1", tmp_path / "v1.partial"
    for folder, name in ((target, "old.parquet"), (work, "part-00000.parquet"), (tmp_path / f".v1.old-{dead}", "x")):
        folder.mkdir()
        (folder / name).write_bytes(b"x" * 10)
    swap_dir(work, target)
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]
    assert [p.name for p in target.iterdir()] == ["part-00000.parquet"]


def test_promotions_log_lines_start_with_time_and_dataset_and_append(tmp_path: Path) -> None:
    from mmretrieval.core.io import append_promotion
    from mmretrieval.core.layout import Layout

    layout = Layout(tmp_path / "data", tmp_path / "var", "demo")
    first = append_promotion(layout, {"action": "promote", "challenger": "2"})
    append_promotion(layout, {"action": "rollback", "champion": "1"})
    lines = [json.loads(line) for line in layout.promotions_log.read_text(encoding="utf-8").splitlines()]
    assert lines[0] == first and list(first)[:3] == ["time", "dataset", "action"] and first["dataset"] == "demo"
    assert [line["action"] for line in lines] == ["promote", "rollback"]
