"""`madapt serve` options: each bad one is exit 2 with one line, before anything loads; the
CLI starts without FastAPI; a missing `serve` extra says what to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from serve_process import REPO, perturbed_adaptor
from typer.testing import CliRunner

from madapt_cli.cli import app


@pytest.fixture(scope="module")
def adaptor(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve-cli") / "ad"
    settings = {"query": {}, "document": {}}
    return perturbed_adaptor(
        path, 8, "sentence-transformers/all-MiniLM-L6-v2", base_settings=settings
    )


BAD_OPTIONS = [
    (["--port", "70000"], "--port"),
    (["--port", "-1"], "--port"),
    (["--max-batch", "0"], "--max-batch"),
    (["--max-queue", "0"], "--max-queue"),
    (["--max-wait-ms", "-1"], "--max-wait-ms"),
    (["--api-key-env", "MADAPT_TEST_UNSET_VARIABLE"], "MADAPT_TEST_UNSET_VARIABLE is not set"),
    (["--host", "no-such-host.invalid"], "--host no-such-host.invalid"),
]


@pytest.mark.parametrize(("args", "says"), BAD_OPTIONS)
def test_bad_option_is_exit_2_one_line(adaptor, args, says, monkeypatch):
    monkeypatch.delenv("MADAPT_TEST_UNSET_VARIABLE", raising=False)
    result = CliRunner().invoke(app, ["serve", str(adaptor), *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], lines
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_missing_adaptor_is_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "no such adaptor directory" in result.output


def test_port_in_use_is_exit_2(adaptor):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", str(adaptor), "--port", str(port)])
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.output


def test_cli_starts_without_fastapi():
    code = "import sys, madapt_cli.cli; print('fastapi' in sys.modules, 'uvicorn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_missing_extra_says_what_to_install(adaptor):
    # fastapi made unimportable, as on a machine without the `serve` extra
    code = (
        "import sys; sys.modules['fastapi'] = None; sys.argv = ['madapt', 'serve', "
        f"{str(adaptor)!r}]; from madapt_cli.cli import main; main()"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        'error: madapt serve needs FastAPI and uvicorn: pip install "madapt[serve]"'
    ]
