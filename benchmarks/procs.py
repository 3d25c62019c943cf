"""Child processes of the benchmark: servers to start and stop, and their memory.

Peak RSS is Linux's ``VmHWM`` (the high-water mark of the resident set) from
``/proc/PID/status``; writing ``5`` to ``/proc/PID/clear_refs`` resets it to
the current RSS, which is how a process measures the peak of one call.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

BIN = Path(sys.executable).parent


def status_kb(pid: int | str, key: str) -> int | None:
    """A ``kB`` field (``VmHWM``, ``VmRSS``) of ``/proc/PID/status``, in bytes."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_rss(pid: int | str = "self") -> int | None:
    return status_kb(pid, "VmHWM")


def current_rss(pid: int | str = "self") -> int | None:
    return status_kb(pid, "VmRSS")


def reset_peak_rss(pid: int | str = "self") -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def cpu_seconds(pid: int | str) -> float | None:
    """User + system CPU time a process has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime and stime are fields 14 and 15 of stat(5); fields[0] is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout:.0f}s")


class Server:
    """A server in a child process: ``kind`` is ``flightlab``, ``feast`` or
    ``loopback`` (``extra_args`` go to the flightlab or loopback command line);
    use as a context manager."""

    def __init__(self, kind: str, repo: Path | None, log: Path, extra_args: list[str] = ()):
        self.kind = kind
        self.repo = repo
        self.log_path = log
        self.extra_args = list(extra_args)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.idle_rss: int | None = None
        self.started_in = 0.0
        self._log: IO | None = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 120) -> Server:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "a")  # noqa: SIM115 - closed in stop()
        begun = time.perf_counter()
        if self.kind == "feast":
            self.port = free_port()
            feast = BIN / "feast"
            command = [str(feast)] if feast.exists() else [sys.executable, "-m", "feast.cli.cli"]
            command += ["-c", str(self.repo), "serve_offline", "-h", "127.0.0.1"]
            command += ["-p", str(self.port)]
            self.proc = subprocess.Popen(
                command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
            _wait_for_port(self.port, self.proc, timeout)
        else:
            if self.kind == "flightlab":
                tool = BIN / "flightlab"
                command = [str(tool)] if tool.exists() else [sys.executable, "-m", "flightlab"]
                command += ["-c", str(self.repo), "serve_offline", "--port", "0"]
                command += ["--log-level", "warning"]
                marker = "flightlab serving "
            else:
                worker = Path(__file__).with_name("worker.py")
                command = [sys.executable, str(worker), "loopback-server"]
                marker = "LISTENING "
            command += self.extra_args
            self.proc = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=self._log,
                stdin=subprocess.DEVNULL,
                text=True,
            )
            self.port = self._read_port(marker, timeout)
        self.started_in = time.perf_counter() - begun
        self.idle_rss = current_rss(self.pid)
        return self

    def _read_port(self, marker: str, timeout: float) -> int:
        assert self.proc is not None and self.proc.stdout is not None
        found: list[int] = []

        def read() -> None:
            for line in self.proc.stdout:
                if line.startswith(marker):
                    found.append(int(line.strip().rsplit(":", 1)[-1].split()[-1]))
                    break

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not found:
            self.stop()
            raise RuntimeError(f"the {self.kind} server did not start; see {self.log_path}")
        # Keep draining stdout so the server never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()
        return found[0]

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    def peak_rss(self) -> int | None:
        return peak_rss(self.pid)

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            # Feast's server stops on KeyboardInterrupt, flightlab's on either.
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
