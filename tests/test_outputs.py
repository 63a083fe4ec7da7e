"""Output directories of `fit`, `apply` and `eval --report` (issue 11): madapt replaces only a
directory it wrote (a ``madapt.json`` marker, or a legacy artifact), only with --overwrite,
refuses an output that is, holds or lies inside an input, never deletes what it did not write,
and cleans up the staging a killed run left behind."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from test_apply import make_adaptor, make_store

from madapt_cli import Adaptor
from madapt_cli.cli import main
from madapt_cli.store.base import open_store, vectors_to_arrow
from madapt_cli.util.files import MARKER, written_kind


def run(capsys, *args: object) -> tuple[int, str, str]:
    """`madapt ARGS` in-process through the console entry point: (exit code, stdout, stderr)."""
    argv = sys.argv
    sys.argv = ["madapt", *map(str, args)]
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code: int, err: str, expected: int = 2) -> None:
    assert code == expected, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def tree(path: Path) -> dict[str, bytes | None]:
    """Every file and folder under ``path`` with its bytes (None for a folder)."""
    return {
        str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(path.rglob("*"))
    }


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    make_store(tmp_path / "store", {"corpus": 40, "queries": 8}, dimension=16)
    return tmp_path / "store"


@pytest.fixture()
def qrels(tmp_path: Path) -> Path:
    path = tmp_path / "qrels.tsv"
    rows = [f"queries-{i}\tcorpus-{i}\t1" for i in range(8)]
    path.write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return path


def fit(capsys, store: Path, out: Path, *extra: object) -> tuple[int, str, str]:
    return run(capsys, "fit", store, "--method", "pca", "--out", out, *extra)


def apply(capsys, adaptor: Path, store: Path, out: Path, *extra: object):
    return run(capsys, "apply", adaptor, store, "--dims", "4,8", "--out", out, *extra)


def report(capsys, store: Path, qrels: Path, out: Path, *extra: object):
    args = ("eval", store, "--qrels", qrels, "--dims", "4", "--baseline", "truncate")
    return run(capsys, *args, "--report", out, *extra)


# --- the two data-loss recipes of the issue --------------------------------------------------
def test_fit_does_not_replace_a_user_folder_that_holds_a_config_json(tmp_path, store, capsys):
    folder = tmp_path / "P"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "main.py").write_text("print('mine')\n")
    (folder / "config.json").write_text("{}")
    (folder / "important.csv").write_text("x\n")
    before = tree(folder)
    for extra in ((), ("--overwrite",)):
        code, _, err = fit(capsys, store, folder, *extra)
        one_line_error(code, err)
        assert "files madapt did not write" in err
        assert tree(folder) == before


def test_apply_overwrite_into_the_folder_holding_the_store_is_refused(tmp_path, capsys):
    parent = tmp_path / "P"
    make_store(parent / "store", {"corpus": 10})
    (parent / "notes.txt").write_text("mine")
    make_adaptor(tmp_path / "ad")
    before = tree(parent)
    code, _, err = apply(capsys, tmp_path / "ad", parent / "store", parent, "--overwrite")
    one_line_error(code, err)
    assert "input" in err and "store" in err
    assert tree(parent) == before


def test_apply_overwrite_of_a_user_folder_is_refused(tmp_path, store, capsys):
    folder = tmp_path / "U"
    folder.mkdir()
    (folder / "data.parquet").write_bytes(b"not madapt's")
    make_adaptor(tmp_path / "ad")
    code, _, err = apply(capsys, tmp_path / "ad", store, folder, "--overwrite")
    one_line_error(code, err)
    assert (folder / "data.parquet").read_bytes() == b"not madapt's"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# --- outputs that are, hold or lie inside an input -------------------------------------------
def test_outputs_overlapping_an_input_are_refused(tmp_path, store, qrels, capsys):
    make_adaptor(tmp_path / "ad")
    before = tree(tmp_path)
    cases = [
        fit(capsys, store, store / "ad"),  # inside the store
        fit(capsys, store, tmp_path, "--overwrite"),  # holds the store
        fit(capsys, store, tmp_path / "fitted", "--qrels", tmp_path / "fitted" / "q.tsv"),
        apply(capsys, tmp_path / "ad", store, store),  # the store itself
        apply(capsys, tmp_path / "ad", store, store / "applied"),
        apply(capsys, tmp_path / "ad", store, tmp_path / "ad" / "applied"),  # inside the adaptor
        report(capsys, store, qrels, store / "report"),
        report(capsys, store, qrels, tmp_path, "--overwrite"),
        report(capsys, store, qrels, tmp_path / "r", "--adaptor", tmp_path / "r" / "ad"),
    ]
    for code, _, err in cases:
        one_line_error(code, err)
        assert "is, contains or lies inside the input" in err
    assert tree(tmp_path) == before


def test_an_output_that_is_a_file_is_a_one_line_error(tmp_path, store, qrels, capsys):
    make_adaptor(tmp_path / "ad")
    (tmp_path / "file").write_text("x")
    before = tree(tmp_path)
    for target in (tmp_path / "file", tmp_path / "file" / "below"):
        for code, _, err in (
            fit(capsys, store, target),
            apply(capsys, tmp_path / "ad", store, target),
            report(capsys, store, qrels, target),
        ):
            one_line_error(code, err)
            assert "is a file" in err
    assert tree(tmp_path) == before


# --- replacing madapt's own outputs ----------------------------------------------------------
def test_an_existing_output_needs_overwrite_and_is_then_replaced(tmp_path, store, qrels, capsys):
    make_adaptor(tmp_path / "ad")
    assert fit(capsys, store, tmp_path / "pca", "--name", "first")[0] == 0
    assert apply(capsys, tmp_path / "ad", store, tmp_path / "applied")[0] == 0
    assert report(capsys, store, qrels, tmp_path / "report")[0] == 0
    assert written_kind(tmp_path / "pca") == "adaptor"
    assert written_kind(tmp_path / "applied") == "store"
    assert written_kind(tmp_path / "report") == "report"

    for code, _, err in (
        fit(capsys, store, tmp_path / "pca", "--name", "second"),
        apply(capsys, tmp_path / "ad", store, tmp_path / "applied", "--dims", "2"),
        report(capsys, store, qrels, tmp_path / "report", "--dims", "8"),
    ):
        one_line_error(code, err)
        assert "pass --overwrite" in err
    assert Adaptor.load(tmp_path / "pca").name == "first"

    assert fit(capsys, store, tmp_path / "pca", "--name", "second", "--overwrite")[0] == 0
    assert Adaptor.load(tmp_path / "pca").name == "second"
    code, _, err = run(
        capsys, "apply", tmp_path / "ad", store, "--dims", "2", "--out", tmp_path / "applied",
        "--overwrite",
    )  # fmt: skip
    assert code == 0, err
    assert "vector_2" in open_store(tmp_path / "applied").schema("corpus").names
    assert report(capsys, store, qrels, tmp_path / "report", "--overwrite")[0] == 0
    assert (tmp_path / "report" / "report.json").is_file()
    # an output of another kind is not replaced either
    code, _, err = fit(capsys, store, tmp_path / "report", "--overwrite")
    one_line_error(code, err)
    assert "holds a madapt report" in err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_file_added_to_a_madapt_output_makes_it_the_users(tmp_path, store, capsys):
    assert fit(capsys, store, tmp_path / "pca")[0] == 0
    (tmp_path / "pca" / "notes.md").write_text("my notes")
    code, _, err = fit(capsys, store, tmp_path / "pca", "--overwrite")
    one_line_error(code, err)
    assert (tmp_path / "pca" / "notes.md").read_text() == "my notes"


def test_a_legacy_adaptor_directory_is_replaced_with_overwrite(tmp_path, store, capsys):
    make_adaptor(tmp_path / "old")  # config.json + adaptor.safetensors, no marker
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == [
        "adaptor.safetensors",
        "config.json",
    ]
    one_line_error(*fit(capsys, store, tmp_path / "old")[::2])
    code, _, err = fit(capsys, store, tmp_path / "old", "--overwrite")
    assert code == 0, err
    assert Adaptor.load(tmp_path / "old").method == "pca"
    assert (tmp_path / "old" / MARKER).is_file()


# --- staging a killed run left ---------------------------------------------------------------
def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("command", ["fit", "apply", "report"])
def test_stale_staging_is_removed_by_the_next_run_and_a_live_one_kept(
    tmp_path, store, qrels, capsys, command
):
    make_adaptor(tmp_path / "ad")
    out = tmp_path / "out"
    dead = tmp_path / f".out.tmp-{_dead_pid()}-{uuid.uuid4().hex}"
    legacy = tmp_path / f".out.tmp-{uuid.uuid4().hex}"  # releases before the pid in the name
    live = tmp_path / f".out.tmp-{os.getppid()}-{uuid.uuid4().hex}"
    other = tmp_path / f".other.tmp-{_dead_pid()}-{uuid.uuid4().hex}"  # another output's
    for leftover in (dead, legacy, live, other):
        make_adaptor(leftover)  # what a killed fit leaves: a complete-looking adaptor
    if command == "fit":
        code, _, err = fit(capsys, store, out)
    elif command == "apply":
        code, _, err = apply(capsys, tmp_path / "ad", store, out)
    else:
        code, _, err = report(capsys, store, qrels, out)
    assert code == 0, err
    assert not dead.exists() and not legacy.exists()
    assert live.exists() and other.exists()
    assert written_kind(live) is None  # a staging directory is never taken for an adaptor


# --- a destination the machine will not write: exit 4, before any work ------------------------
@pytest.fixture()
def read_only(monkeypatch):
    """Make ``folder`` behave like a read-only file system for this process (tests run as
    root, where chmod does not stop writes)."""

    def make(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        root = str(folder.resolve())

        def inside(path) -> bool:
            return os.path.abspath(os.fspath(path)).startswith(root)

        def refuse(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

        real_access, real_mkdir, real_replace = os.access, os.mkdir, os.replace

        def access(path, mode, *args, **kwargs):
            if inside(path) and mode & os.W_OK:
                return False
            return real_access(path, mode, *args, **kwargs)

        def mkdir(path, *args, **kwargs):
            return refuse(path) if inside(path) else real_mkdir(path, *args, **kwargs)

        def replace(src, dst, *args, **kwargs):
            if inside(src) or inside(dst):
                refuse(dst)
            return real_replace(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)
        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "replace", replace)

    return make


def test_a_read_only_destination_is_exit_4_before_any_work(
    tmp_path, store, qrels, capsys, read_only, monkeypatch
):
    import madapt_cli.methods.pca
    import madapt_cli.pipelines.apply
    import madapt_cli.pipelines.evaluate

    make_adaptor(tmp_path / "ad")
    started = []

    def work(name, real):
        def wrapped(*args, **kwargs):
            started.append(name)
            return real(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(
        madapt_cli.methods.pca, "fit_pca", work("fit", madapt_cli.methods.pca.fit_pca)
    )
    monkeypatch.setattr(
        madapt_cli.pipelines.apply,
        "transform_sizes",
        work("apply", madapt_cli.pipelines.apply.transform_sizes),
    )
    monkeypatch.setattr(
        madapt_cli.pipelines.evaluate,
        "run_evaluation",
        work("eval", madapt_cli.pipelines.evaluate.run_evaluation),
    )
    read_only(tmp_path / "ro")
    for code, _, err in (
        fit(capsys, store, tmp_path / "ro" / "pca"),
        apply(capsys, tmp_path / "ad", store, tmp_path / "ro" / "applied"),
        report(capsys, store, qrels, tmp_path / "ro" / "report"),
    ):
        one_line_error(code, err, expected=4)
        assert "ro" in err
    assert started == []
    assert list((tmp_path / "ro").iterdir()) == []


def test_a_destination_that_turns_read_only_mid_run_is_exit_4(
    tmp_path, store, qrels, capsys, read_only, monkeypatch
):
    # the early check passes; the rename into place is refused
    import madapt_cli.util.files

    make_adaptor(tmp_path / "ad")
    (tmp_path / "out").mkdir()
    real = madapt_cli.util.files.replace_directory

    def late(staging, target):
        read_only(tmp_path / "out")
        return real(staging, target)

    runs = {
        "fit": lambda: fit(capsys, store, tmp_path / "out" / "pca"),
        "apply": lambda: apply(capsys, tmp_path / "ad", store, tmp_path / "out" / "applied"),
        "report": lambda: report(capsys, store, qrels, tmp_path / "out" / "report"),
    }
    for command, start in runs.items():
        monkeypatch.setattr(madapt_cli.util.files, "replace_directory", late)
        code, _, err = start()
        monkeypatch.undo()
        one_line_error(code, err, expected=4)
        assert "Read-only file system" in err, command
        # nothing half-written, no staging left behind
        assert list((tmp_path / "out").iterdir()) == [], command


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod")
def test_a_chmod_read_only_destination_is_exit_4(tmp_path, store, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, _, err = fit(capsys, store, folder / "pca")
    finally:
        folder.chmod(0o755)
    one_line_error(code, err, expected=4)


# --- what apply reads, and what report.md shows ----------------------------------------------
def test_apply_refuses_a_non_finite_vector_and_writes_nothing(tmp_path, store, capsys):
    make_adaptor(tmp_path / "ad")
    target = open_store(store)
    schema = target.schema("corpus")
    bad = np.full((1, 16), np.nan, np.float32)
    row = [pa.array(["corpus-bad"]), vectors_to_arrow(bad), pa.array(["sha-bad"])]
    target.append("corpus", pa.Table.from_arrays(row, schema=schema))
    code, _, err = apply(capsys, tmp_path / "ad", store, tmp_path / "out", "--chunk-rows", "7")
    one_line_error(code, err)
    assert "table 'corpus'" in err and "'corpus-bad'" in err and "non-finite" in err
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_report_md_escapes_the_adaptor_name(tmp_path, store, qrels, capsys):
    name = "x|y *bold* [link](http://e.test) <b>"
    code, _, err = fit(capsys, store, tmp_path / "pca", "--name", name)
    assert code == 0, err
    code, _, err = report(capsys, store, qrels, tmp_path / "r", "--adaptor", tmp_path / "pca")
    assert code == 0, err
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert name not in markdown and "<b>" not in markdown
    escaped = r"x\|y \*bold\* \[link\]\(http://e.test\) &lt;b\>"
    assert f"| 4 | 16 | {escaped} |" in markdown
    assert f"- **{escaped}**:" in markdown
    header = next(line for line in markdown.splitlines() if line.startswith("| size"))
    for line in markdown.splitlines():
        if line.startswith("| 4 |"):  # every row has the header's number of cells
            cells = line.replace("\\|", "").count("|")
            assert cells == header.count("|"), line
    assert json.loads((tmp_path / "r" / "report.json").read_text())["methods"][-1]["name"] == name


def test_a_failed_swap_puts_the_old_output_back(tmp_path, monkeypatch):
    from madapt_cli.util import files

    old, new = tmp_path / "out", tmp_path / ".out.tmp-1-" / "x"
    old.mkdir()
    (old / "config.json").write_text("old")
    new.mkdir(parents=True)
    real = os.replace
    calls = []

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(OSError):
        files.replace_directory(new, old)
    assert (old / "config.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.tmp-1-", "out"]
