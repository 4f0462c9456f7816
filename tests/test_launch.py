"""tests/launch.py, the helper every multi-process test launches through: a launch that hangs fails within its
budget with each process's output and exit code, nothing of it survives, and its port is its own.

    pytest tests/test_launch.py -q
"""

import re
import socket
import sys
import time

import pytest

from . import launch as launch_module
from .launch import Launch, LaunchFailed, kill_marked, marked_processes, run_launch


def python(code: str) -> list:
    return [sys.executable, "-c", code]


# process 1 fails at once, as a node whose worker crashed; process 0 waits for it for ever, as torch elastic's
# agent at its exit barrier (or a worker in init_process_group) waits for a peer that is gone
WAITS_FOR_PEER = python("import time; print('rank 0: waiting for rank 1', flush=True); time.sleep(600)")
FAILS = python("import sys; print('rank 1: RuntimeError: boom', flush=True); sys.exit(3)")


def test_a_launch_whose_peer_failed_is_killed_after_the_grace_and_reports_every_process(tmp_path):
    started = time.monotonic()
    with Launch("nodes", tmp_path, budget=120) as launch:
        launch.start([WAITS_FOR_PEER, FAILS])
        with pytest.raises(LaunchFailed) as failed:
            launch.wait_all(grace=2)
        mark = launch.mark
    assert time.monotonic() - started < 30  # not the 600 s the waiting process would sleep, nor the budget
    report = str(failed.value)
    assert "launch 'nodes'" in report and "its peers still ran 2 s later" in report
    assert "process 0: killed by signal 9 after " in report and "rank 0: waiting for rank 1" in report
    assert "process 1: exit 3 after " in report and "rank 1: RuntimeError: boom" in report
    assert str(tmp_path / "nodes-0.log") in report and "time.sleep(600)" in report  # where to read more, and what ran
    assert marked_processes(mark) == []


def test_a_hanging_launch_is_killed_when_its_budget_is_spent(tmp_path):
    started = time.monotonic()
    with Launch("hang", tmp_path, budget=3) as launch:
        launch.start([WAITS_FOR_PEER, WAITS_FOR_PEER])
        with pytest.raises(LaunchFailed, match="still running after the launch's budget of 3 s") as failed:
            launch.wait_all()
    assert 3 <= time.monotonic() - started < 20
    assert str(failed.value).count("killed by signal 9") == 2 and "rank 0: waiting for rank 1" in str(failed.value)
    with Launch("hang-one", tmp_path, budget=60) as launch:
        launch.start([WAITS_FOR_PEER])
        with pytest.raises(LaunchFailed, match="process 0 still running after 1 s"):
            launch.wait(0, timeout=1)


def test_descendants_that_left_the_launchers_session_are_killed_too(tmp_path):
    """torch starts each worker in a session of its own; an orphan (its launcher gone) is found by its mark."""
    orphan = "import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], "
    orphan += "start_new_session=True); print('parent: exits', flush=True)"
    with Launch("orphan", tmp_path, budget=60) as launch:
        launch.start([python(orphan)])
        assert launch.wait(0) == 0
        deadline = time.monotonic() + 10
        while not marked_processes(launch.mark):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert marked_processes(launch.mark) == []
    assert kill_marked(launch_module.SESSION) == []  # what the suite's no_process_left_behind fixture checks


def test_each_launch_holds_its_own_port_below_the_ephemeral_range(tmp_path, monkeypatch):
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    with Launch("a", tmp_path, budget=10) as a:
        assert 20000 <= a.port < min(low, 29500)
        other = a.port + 1 if a.port + 1 < min(low, 29500) else a.port - 1
        monkeypatch.setattr(launch_module, "_rendezvous_ports", lambda: [a.port, other])
        with Launch("b", tmp_path, budget=10) as b:
            assert b.port == other  # a's is locked while a runs
        with Launch("c", tmp_path, budget=10) as c:
            with socket.socket() as taken:  # a port some other program listens on is skipped
                taken.bind(("", other))
                taken.listen()
                with pytest.raises(RuntimeError, match="no free port"):
                    assert c.port
    monkeypatch.setattr(launch_module, "_rendezvous_ports", lambda: [a.port])
    with Launch("d", tmp_path, budget=10) as d:
        assert d.port == a.port  # freed by a's close


BINDS = (
    "import socket, sys; s = socket.socket(); s.bind(('', int(sys.argv[1]))); s.listen(); print('bound', flush=True)"
)


def test_a_launch_whose_port_was_taken_after_all_is_retried_on_another_and_no_other_failure_is(tmp_path, monkeypatch):
    with socket.socket() as held, socket.socket() as free:
        held.bind(("", 0))
        held.listen()
        free.bind(("", 0))
        ports = iter([held.getsockname()[1], free.getsockname()[1]])
        free.close()
        monkeypatch.setattr(launch_module, "_reserve_port", lambda: (next(ports), None))
        launch = run_launch("bind", lambda port: [[*python(BINDS), str(port)]], tmp_path, budget=60)
    assert launch.processes[0].output().strip() == "bound"
    assert "Address already in use" in (tmp_path / "bind-0.log").read_text()  # the first try, on the held port
    assert (tmp_path / "bind-try2-0.log").read_text().strip() == "bound"
    monkeypatch.setattr(launch_module, "_reserve_port", lambda: (0, None))
    with pytest.raises(LaunchFailed, match="exited non-zero") as failed:
        run_launch("fails", lambda port: [FAILS], tmp_path, budget=60)
    assert "process 0: exit 3" in str(failed.value) and not (tmp_path / "fails-try2-0.log").exists()


def test_the_lock_of_a_torch_extension_build_the_launch_killed_is_removed(tmp_path, monkeypatch):
    """DeepSpeed JIT-builds its CPU ops under torch's FileBaton lock, which torch waits on with no timeout: a build
    killed by a launch's budget must not leave it behind for every later launch."""
    extensions = tmp_path / "torch_extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(extensions))
    (extensions / "op").mkdir(parents=True)
    (extensions / "stale").mkdir()
    (extensions / "stale" / "lock").touch()  # a lock of someone else's build: reported, left alone
    build = "import os, time; os.chdir(sys.argv[1]); open('lock', 'x'); print('building', flush=True); time.sleep(600)"
    with Launch("build", tmp_path, budget=3) as launch:
        launch.start([[*python("import sys; " + build), str(extensions / "op")]])
        with pytest.raises(LaunchFailed) as failed:
            launch.wait_all()
    assert not (extensions / "op" / "lock").exists() and (extensions / "stale" / "lock").exists()
    report = str(failed.value)
    assert (
        f"removed the lock of a torch extension build this launch was running: {extensions / 'op' / 'lock'}" in report
    )
    held = re.search(r"a torch extension build lock is held \((\d+) s old; torch waits on it for ever\): (.*)", report)
    assert held and int(held[1]) < 60 and held[2] == str(extensions / "stale" / "lock")
