"""Child processes for tests, benchmarks and the demo, and what they use of the machine.

- :func:`run_feast` and :func:`feast_apply`: the real Feast CLI in a child
  process. A child, because Feast imports a repo's definition files as
  modules: two repos in one process would share a cached ``definitions``.
- :func:`serve_offline_command`, :func:`start_servers`, :func:`running_server`,
  :func:`running_servers`: a server in a child process (``flightlab
  serve_offline``, or any command that ends in it), its port read from the
  ``flightlab serving grpc+tcp://HOST:PORT`` line it prints once listening,
  and the ports of ``--health-port`` and ``--metrics-port`` from theirs.
- :func:`free_port`: a loopback port nobody listens on.
- :func:`current_rss`, :func:`peak_rss`, :func:`reset_peak_rss`,
  :func:`cpu_seconds`: a process's memory and CPU time, from Linux's
  ``/proc``. The peak is ``VmHWM`` (the high-water mark of the resident set)
  of ``/proc/PID/status``; writing ``5`` to ``/proc/PID/clear_refs`` resets it
  to the current RSS, which is how a process measures the peak of one call.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# What `flightlab serve_offline` prints on stdout once it listens.
SERVING_LINE = re.compile(
    r"flightlab serving (?P<location>grpc(?:\+\w+)?://(?P<host>\S+):(?P<port>\d+))"
)
STARTUP_SECONDS = 120.0


# --- feast ---------------------------------------------------------------------------------


def feast_command(repo: str | Path, *args: str) -> list[str]:
    """``feast -c REPO ARGS`` with this Python's Feast."""
    return [sys.executable, "-m", "feast.cli.cli", "-c", str(Path(repo).resolve()), *args]


def run_feast(
    repo: str | Path, *args: str, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """Run ``feast -c REPO ARGS`` to its end in a child process: its exit code
    and what it printed."""
    return subprocess.run(
        feast_command(repo, *args), capture_output=True, text=True, timeout=timeout
    )


def feast_apply(repo: str | Path, timeout: float | None = None) -> str:
    """The real ``feast apply`` on ``repo``; returns what Feast printed.

    A failure raises RuntimeError with everything Feast printed.
    """
    done = run_feast(repo, "apply", timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"feast apply failed in {repo}:\n{done.stdout}{done.stderr}")
    return done.stdout


# --- ports ---------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# --- /proc ---------------------------------------------------------------------------------


def _status_bytes(pid: int | str, key: str) -> int | None:
    """A ``kB`` field (``VmHWM``, ``VmRSS``) of ``/proc/PID/status``, in bytes."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def current_rss(pid: int | str = "self") -> int | None:
    """The resident set of a process, in bytes; None if it cannot be read."""
    return _status_bytes(pid, "VmRSS")


def peak_rss(pid: int | str = "self") -> int | None:
    """The peak resident set (``VmHWM``) of a process, in bytes; None if unreadable."""
    return _status_bytes(pid, "VmHWM")


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


# --- servers -------------------------------------------------------------------------------


def serve_offline_command(repo: str | Path, *options: str) -> list[str]:
    """``python -m flightlab -c REPO serve_offline --port 0 OPTIONS`` (a later
    ``--port`` among the options wins)."""
    command = [sys.executable, "-m", "flightlab", "-c", str(repo), "serve_offline"]
    return [*command, "--port", "0", *options]


@dataclass
class ServerProcess:
    """A server in a child process, once it has said where it listens."""

    process: subprocess.Popen
    port: int
    location: str
    log_path: Path | None = None  # its stderr, where flightlab logs
    side_ports: dict[str, int] = field(default_factory=dict)
    stdout_lines: list[str] = field(default_factory=list)  # up to its serving line

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def log_lines(self) -> list[str]:
        return self.log().splitlines()

    def log_tail(self, lines: int = 40) -> str:
        """The server's last log lines and whether it still runs: for a failure's message."""
        state = "running" if self.process.poll() is None else f"exited {self.process.returncode}"
        logged = self.log_lines()[-lines:] if self.log_path else ["(no log kept)"]
        return f"server {self.pid} {state}; its log ends:\n" + "\n".join(logged)

    def rss_mb(self) -> float:
        rss = current_rss(self.pid)
        if rss is None:
            raise RuntimeError(f"no VmRSS for pid {self.pid}")
        return rss / 1024**2

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``signum`` if it still runs, wait up to ``timeout`` seconds for
        it to exit (SIGKILL after that); its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


class ServerStartError(RuntimeError):
    """A server process exited, or printed no serving line in time."""


def start_servers(
    commands: Sequence[Sequence[str]],
    log: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    side_ports: Sequence[str] = (),
    timeout: float = STARTUP_SECONDS,
    ready: re.Pattern[str] = SERVING_LINE,
) -> list[ServerProcess]:
    """Start each command side by side; return them once each printed its
    ``ready`` line (one with a ``port`` group; a ``location`` group if it
    names one) and a ``flightlab NAME URL`` line for each of ``side_ports``
    ("health", "metrics").

    Their stderr is appended to ``log`` (or dropped), ``env`` is added to this
    process's environment. Raises :class:`ServerStartError` with the log's
    end when one exits or is not ready within ``timeout`` seconds; none is
    left running then.
    """
    full_env = {**os.environ, **env} if env else None
    processes = []
    with open(log or os.devnull, "a") as stderr:
        for command in commands:
            processes.append(
                subprocess.Popen(
                    list(command),
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    stdin=subprocess.DEVNULL,
                    text=True,
                    env=full_env,
                    cwd=cwd,
                )
            )
    try:
        deadline = time.monotonic() + timeout
        return [_ready(p, log, side_ports, deadline, ready) for p in processes]
    except BaseException:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        raise


@contextmanager
def running_servers(
    commands: Sequence[Sequence[str]],
    stop_signal: int = signal.SIGTERM,
    stop_timeout: float = 60.0,
    **start: object,
) -> Iterator[list[ServerProcess]]:
    """:func:`start_servers`; at the end, each still running gets
    ``stop_signal`` (and SIGKILL after ``stop_timeout`` seconds)."""
    servers = start_servers(commands, **start)
    try:
        yield servers
    finally:
        for server in servers:
            if server.process.poll() is None:
                server.process.send_signal(stop_signal)
        for server in servers:
            try:
                server.process.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()


@contextmanager
def running_server(command: Sequence[str], **options: object) -> Iterator[ServerProcess]:
    """One server, as :func:`running_servers` runs them."""
    with running_servers([command], **options) as [server]:
        yield server


def _ready(
    process: subprocess.Popen,
    log: Path | None,
    side_ports: Sequence[str],
    deadline: float,
    ready: re.Pattern[str],
) -> ServerProcess:
    """Read ``process``'s stdout up to its ready line and side-port lines; then
    keep draining it, so that it never blocks on a full pipe."""
    lines: queue.Queue[str | None] = queue.Queue()
    keep = threading.Event()
    keep.set()
    threading.Thread(target=_pump, args=(process.stdout, lines, keep), daemon=True).start()
    seen: list[str] = []
    found: re.Match[str] | None = None
    ports: dict[str, int] = {}
    try:
        while found is None or set(ports) != set(side_ports):
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                raise ServerStartError(_failure(process, log, "exited", seen))
            line = line.strip()
            seen.append(line)
            words = line.split()
            if found is None and (match := ready.search(line)):
                found = match
            elif len(words) == 3 and words[0] == "flightlab" and words[1] in side_ports:
                ports[words[1]] = int(words[2].split(":")[-1].split("/")[0])
    except queue.Empty:
        raise ServerStartError(_failure(process, log, "did not start in time", seen)) from None
    finally:
        keep.clear()
    port = int(found["port"])
    names = found.groupdict()
    location = names.get("location") or f"grpc+tcp://127.0.0.1:{port}"
    return ServerProcess(process, port, location, log, ports, seen)


def _pump(stream, lines: queue.Queue, keep: threading.Event) -> None:
    for line in stream:
        if keep.is_set():
            lines.put(line)
    lines.put(None)


def _failure(process: subprocess.Popen, log: Path | None, what: str, seen: list[str]) -> str:
    code = process.poll()
    state = f"{what} (exit code {code})" if code is not None else what
    logged = log.read_text(errors="replace")[-3000:] if log else "(no log kept)"
    printed = "\n".join(seen) or "(nothing)"
    return f"{' '.join(process.args)}: {state}; stdout:\n{printed}\nits log ends:\n{logged}"
