"""The one way tests start multi-process launches (`accelerate launch`, `torchrun`, two "machines" on one host).

    def test_two_nodes(tmp_path):
        launch = run_launch("nodes", lambda port: [node_command(0, port), node_command(1, port)], tmp_path, budget=300)
        assert "Resuming" in launch.processes[0].output()

    with Launch("nodes", tmp_path, budget=300) as launch:       # to act on a launch while it runs
        launch.start([node_command(0, launch.port), node_command(1, launch.port)])
        launch.processes[1].signal(signal.SIGKILL)
        code = launch.wait(0)

What each piece prevents (issue 26: a two-node launch hung a whole `make test` run for 300 s and said nothing):

* A peer that failed. torch elastic's agent on machine 0 waits for the others at its exit barrier (300 s) once its
  own worker succeeded, and a worker waits for a peer that never joins its process group for the group's timeout
  (30 min on CPU): when one machine's launch exits non-zero, its peers wait for a peer that is gone. `wait_all`
  gives them `GRACE` seconds to print their own error, then kills them and raises.
* A port taken between being chosen and being bound. A port from `bind(("", 0))` lies in the kernel's ephemeral
  range, where any outgoing connection on the machine (or the other machine's store client, retrying while the
  store is not up, connecting to itself) can take it before machine 0's store binds it; and another launch on the
  same host can be handed it too. `Launch.port` comes from below the ephemeral range (no connection is given such
  a port), is checked free, and is locked (`fcntl`) under the temp dir until the launch ends, so no other launch
  of any test session on this host picks it. A launch that still fails with EADDRINUSE is retried on a new port.
* A launch that outlives its test. Every process runs in a session of its own and carries `MARKER` in its
  environment (torch starts each worker in a session of its own too): leaving the `with` kills every process
  with this launch's mark, orphans included, and the suite's `no_process_left_behind` fixture checks that none
  of this session's marks survive a test.
* A build lock left behind. DeepSpeed JIT-builds its CPU ops (`deepspeed_shm_comm`, first ZeRO launch on a host:
  minutes) under torch's `FileBaton`, a `lock` file that every later build waits on with no timeout; a launch
  killed mid-build would leave it for every session on the host. `kill` removes the lock of a build it killed,
  and a failure lists any lock still held.
* A silent failure. `LaunchFailed` names each process's exit code and prints its last lines and its log's path.
  Every wait is bounded by the launch's `budget`, shorter than pytest-timeout's (setup.cfg), so the launch, not
  pytest, reports.
"""

import fcntl
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from torch.utils.cpp_extension import get_default_build_root

MARKER = "SF_HF_TEST_LAUNCH"
SESSION = f"{os.getpid()}-{time.time_ns()}"  # this test session: the prefix of every launch's mark
GRACE = 30.0  # seconds the peers of a failed process get to print their own error before they are killed
TAIL_LINES = 40
ATTEMPTS = 3  # launches retried on a new port when the port was taken after all
PORT_LOCKS = Path(tempfile.gettempdir()) / "sf_hf-test-ports"
_launches = 0  # Launch objects made in this session


class LaunchFailed(AssertionError):
    """A launch that exited non-zero or ran past its budget; the message holds every process's exit and output."""


def _rendezvous_ports() -> list[int]:
    """Ports no outgoing connection is given: below the ephemeral range (Linux's `ip_local_port_range`), and not
    torch's default 29500 nor what `recipes/launch.slurm` picks (29500 + job id mod 1000)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return list(range(20000, min(low, 29500))) or list(range(61000, 65536))


def _is_free(port: int) -> bool:
    """Whether a listener could bind `port` now (with SO_REUSEADDR, as torch's TCPStore does)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _reserve_port():
    """(port, open lock file): a free port that no other caller of this function on the host holds."""
    PORT_LOCKS.mkdir(parents=True, exist_ok=True)
    ports = _rendezvous_ports()
    random.shuffle(ports)
    for port in ports:
        lock = open(PORT_LOCKS / f"{port}.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        if _is_free(port):
            return port, lock
        lock.close()
    raise RuntimeError(f"no free port in {min(ports)}-{max(ports)}")


class Process:
    """One launched command (a launcher and everything it starts), in a session of its own, output to `log`."""

    def __init__(self, command: list, log: Path, env: dict, cwd: Path):
        self.command, self.log = [str(part) for part in command], log
        self.started, self.ended = time.monotonic(), None
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(
                self.command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def returncode(self):
        code = self.popen.poll()
        if code is not None and self.ended is None:
            self.ended = time.monotonic()  # when first seen exited (the launch polls every 0.2 s)
        return code

    def signal(self, sig) -> int:
        """Sends `sig` to the launcher and all its descendants; returns how many processes it reached."""
        try:
            procs = [psutil.Process(self.popen.pid)]
            procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            return 0
        reached = 0
        for proc in procs:
            try:
                proc.send_signal(sig)
                reached += 1
            except psutil.NoSuchProcess:
                pass
        return reached

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(self.output().splitlines()[-lines:])


def marked_processes(mark: str) -> list:
    """Live processes (this user's) whose environment carries a `MARKER` that starts with `mark`."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get(MARKER, "").startswith(mark):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def build_locks() -> list[Path]:
    """The `lock` files of torch extension builds (DeepSpeed JIT-builds its ops, e.g. `deepspeed_shm_comm` for
    ZeRO on CPU, under the user's cache, shared by every session on the host). torch's `FileBaton` waits for such a
    file to go away with no timeout, so a build killed mid-way makes every later build of that op wait for ever."""
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    return sorted([*root.glob("*/lock"), *root.glob("*/*/lock")])


def launches_made() -> int:
    return _launches


def kill_marked(mark: str) -> list[str]:
    """SIGKILLs every process marked `mark...` and waits (10 s at most) until they are gone; returns their command
    lines."""
    killed, orphans = [], []
    for proc in marked_processes(mark):
        try:
            killed.append(" ".join(proc.cmdline()))
            proc.kill()
            if proc.ppid() != os.getpid():  # this process's own children are reaped by their Popen (psutil would
                orphans.append(proc)  # reap them first, and Popen would then read their exit code as 0)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    psutil.wait_procs(orphans, timeout=10)
    return killed


class Launch:
    """Processes started together (the machines of one job), with one port, one budget and one cleanup.

    Args:
        name: names the logs (`<logs>/<name>-<i>.log`) and the failure.
        logs: folder for each process's output.
        budget: seconds, from the first `start`, that every wait of this launch may take in all.
        env: the processes' environment (default: this process's); `MARKER` is added.
        cwd: where they run (default: the repository root).
    """

    def __init__(self, name: str, logs: Path, budget: float, env: dict | None = None, cwd: Path | None = None):
        self.name, self.logs, self.budget = name, Path(logs), budget
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd or Path(__file__).resolve().parents[1]
        global _launches
        _launches += 1
        self.mark = f"{SESSION}-{_launches}"
        self.processes: list[Process] = []
        self.deadline = None
        self._port = self._lock = None
        self.cleared_locks: list[Path] = []

    @property
    def port(self) -> int:
        """This launch's rendezvous port, held for it until `close`."""
        if self._port is None:
            self._port, self._lock = _reserve_port()
        return self._port

    def start(self, commands: list[list]) -> list[Process]:
        if self.deadline is None:
            self.deadline = time.monotonic() + self.budget
        self.logs.mkdir(parents=True, exist_ok=True)
        env = dict(self.env, **{MARKER: self.mark})
        started = [
            Process(command, self.logs / f"{self.name}-{len(self.processes) + i}.log", env, self.cwd)
            for i, command in enumerate(commands)
        ]
        self.processes += started
        return started

    def wait(self, index: int, timeout: float | None = None) -> int:
        """Process `index`'s exit code, waiting at most `timeout` s and never past the budget; past either, kills
        the launch and raises `LaunchFailed`."""
        left = self.deadline - time.monotonic()
        limit = left if timeout is None else min(timeout, left)
        try:
            self.processes[index].popen.wait(timeout=max(0.0, limit))
            return self.processes[index].returncode
        except subprocess.TimeoutExpired:
            self.fail(f"process {index} still running after {limit:.0f} s (the launch's budget: {self.budget:.0f} s)")

    def wait_all(self, grace: float = GRACE) -> list[int]:
        """Waits for every process; when one exits non-zero the others get `grace` s, then all are killed.
        Returns the exit codes (all 0), or raises `LaunchFailed`."""
        failed_at = None
        while True:
            codes = [p.returncode for p in self.processes]
            if None not in codes:
                if any(codes):
                    self.fail("a process exited non-zero")
                return codes
            now = time.monotonic()
            if failed_at is None and any(codes):
                failed_at = now
            if failed_at is not None and now - failed_at > grace:
                self.fail(f"a process exited non-zero; its peers still ran {grace:.0f} s later (killed)")
            if now > self.deadline:
                self.fail(f"still running after the launch's budget of {self.budget:.0f} s (killed)")
            time.sleep(0.2)

    def check_running(self) -> None:
        """Raises `LaunchFailed` when a process has exited or the budget is spent (for a test polling a launch)."""
        if any(p.returncode is not None for p in self.processes):
            self.fail("a process exited while the test expected it to run")
        if time.monotonic() > self.deadline:
            self.fail(f"still running after the launch's budget of {self.budget:.0f} s (killed)")

    def port_was_taken(self) -> bool:
        return any("EADDRINUSE" in p.output() or "Address already in use" in p.output() for p in self.processes)

    def kill(self) -> list[str]:
        """SIGKILLs every process of the launch, orphaned descendants included, and removes the build lock of a torch
        extension build it killed (the compiler runs in the build folder); returns the command lines killed."""
        building = set()
        for proc in marked_processes(self.mark):
            try:
                building.add(Path(proc.cwd()) / "lock")
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        for process in self.processes:
            process.signal(signal.SIGKILL)
        killed = kill_marked(self.mark)
        for process in self.processes:
            process.popen.wait(timeout=30)
        for lock in building & set(build_locks()):
            lock.unlink(missing_ok=True)
            self.cleared_locks.append(lock)
        return killed

    def fail(self, why: str):
        self.kill()
        raise LaunchFailed(self.report(why))

    def report(self, why: str) -> str:
        lines = [f"launch {self.name!r} (port {self._port}): {why}"]
        for i, process in enumerate(self.processes):
            code = process.returncode
            exit_text = "still running" if code is None else f"killed by signal {-code}" if code < 0 else f"exit {code}"
            exit_text += f" after {(process.ended or time.monotonic()) - process.started:.1f} s"
            lines += [
                f"--- process {i}: {exit_text}; log {process.log}",
                f"    {' '.join(process.command)}",
                process.tail(),
            ]
        lines += [
            f"removed the lock of a torch extension build this launch was running: {p}" for p in self.cleared_locks
        ]
        now = time.time()
        for lock in build_locks():
            age = now - lock.stat().st_mtime
            lines.append(f"a torch extension build lock is held ({age:.0f} s old; torch waits on it for ever): {lock}")
        return "\n".join(lines)

    def close(self) -> None:
        """Kills whatever of the launch still runs and frees its port."""
        self.kill()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_launch(
    name: str, commands: Callable[[int], list[list]], logs: Path, budget: float, env: dict | None = None
) -> Launch:
    """Runs `commands(port)` to the end as one `Launch` (retried on a new port if the port was taken after all);
    returns the finished launch (every exit code 0) or raises `LaunchFailed`."""
    for attempt in range(1, ATTEMPTS + 1):
        with Launch(f"{name}-try{attempt}" if attempt > 1 else name, logs, budget, env) as launch:
            launch.start(commands(launch.port))
            try:
                launch.wait_all()
                return launch
            except LaunchFailed:
                if attempt == ATTEMPTS or not launch.port_was_taken():
                    raise
                print(f"launch {name!r}: port {launch.port} was taken after all; again on another", file=sys.stderr)
