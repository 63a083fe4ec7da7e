"""`madapt serve` in a real subprocess on a free loopback port, for the serve tests.

The server is started with ``--port 0``; its first log line names the port it got. Its
stdout and stderr go to files, so a test can read everything it logged afterwards."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
_PORT = re.compile(r"at http://127\.0\.0\.1:(\d+)/v1")


def perturbed_adaptor(path: Path, dimension: int, model: str, **config: object) -> Path:
    """An identity residual adaptor with seeded noise on its weights (so ``f`` is not the
    identity and a wrong transform shows), saved at ``path``."""
    from conftest import residual_adaptor

    generator = torch.Generator().manual_seed(0)
    adaptor = residual_adaptor(dimension, model, **config)
    with torch.no_grad():
        for parameter in adaptor.module.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    adaptor.save(path)
    return path


class ServerProcess:
    """``madapt serve ADAPTOR --port 0 ARGS`` with ``env`` added to this environment."""

    def __init__(self, adaptor: Path, *args: str, env: dict[str, str] | None = None, logs: Path):
        self.logs = logs
        self.stdout_path = logs / "serve.stdout"
        self.stderr_path = logs / "serve.stderr"
        environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        command = [sys.executable, "-m", "madapt_cli", "serve", str(adaptor), "--port", "0"]
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [*command, *args], stdout=out, stderr=err, env=environment, cwd=REPO
            )
        self.port = self._wait_ready()
        self.base = f"http://127.0.0.1:{self.port}"

    def _wait_ready(self, timeout: float = 120.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.stderr_path.read_text(errors="replace")
            found = _PORT.search(log)
            if found and "Application startup complete" in log:
                return int(found.group(1))
            if self.process.poll() is not None:
                raise AssertionError(f"madapt serve exited {self.process.returncode}:\n{log}")
            time.sleep(0.1)
        self.stop()
        raise AssertionError("madapt serve did not start in time")

    def log(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(
            errors="replace"
        )

    def request(
        self, method: str, path: str, body: Any = None, key: str | None = None
    ) -> tuple[int, Any]:
        """(status, JSON body) of one request with the standard library (no SDK checks)."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if key is not None:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def stats(self) -> dict[str, int]:
        status, body = self.request("GET", "/healthz")
        assert status == 200, body
        return body["stats"] | {"queued": body["queued"]}

    def terminate(self, timeout: float = 120.0) -> int:
        """SIGTERM, then the exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_until(condition, timeout: float = 60.0, every: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(every)


def unit_prefix(vectors: np.ndarray, dim: int) -> np.ndarray:
    cut = vectors[:, :dim]
    return cut / np.linalg.norm(cut, axis=1, keepdims=True)
