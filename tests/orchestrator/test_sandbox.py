"""The sandbox contains hostile programs and still scores correct and wrong ones."""
from __future__ import annotations

import os
import socket
import time

import pytest

from slicer.orchestrator.evaluation.sandbox import SandboxLimits, check_completion, run_program

LIMITS = SandboxLimits(timeout_s=3.0, memory_bytes=256 << 20)  # 3 s: slack for a loaded 2-core machine
GUARDS_ONLY = SandboxLimits(timeout_s=3.0, memory_bytes=256 << 20, kernel_layers=False)

# Removes the in-process guard on ctypes, so what follows reaches the kernel directly.
BYPASS = (
    "import sys\nfor m in ('ctypes', '_ctypes'):\n    sys.modules.pop(m, None)\n"
    "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
)

PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"


def _layers() -> tuple[str, ...]:
    return run_program("pass", LIMITS).layers


def test_correct_solution_passes_and_wrong_fails():
    ok = check_completion(PROMPT, "    return a + b\n", TEST, "add", LIMITS)
    assert ok.passed and ok.error == "", ok
    bad = check_completion(PROMPT, "    return a - b\n", TEST, "add", LIMITS)
    assert not bad.passed and bad.error.startswith("failed: AssertionError"), bad
    syntax = check_completion(PROMPT, "    return a +\n", TEST, "add", LIMITS)
    assert not syntax.passed and syntax.error.startswith("failed: SyntaxError"), syntax


def test_exit_before_check_is_not_a_pass():
    r = check_completion(PROMPT, "    return 0\nimport sys\nsys.exit(0)\n", TEST, "add", LIMITS)
    assert not r.passed and "before the tests finished" in r.error, r


@pytest.mark.parametrize("program", ["while True:\n    pass\n", "import time\ntime.sleep(60)\n"])
def test_infinite_loop_times_out_within_the_limit(program):
    t0 = time.monotonic()
    r = run_program(program, LIMITS)
    elapsed = time.monotonic() - t0
    assert not r.passed and r.error == "timeout", r
    # 1 s of slack for killing and cleaning up on a loaded 2-core machine.
    assert elapsed < LIMITS.timeout_s + 1.0, elapsed


def test_unbounded_allocation_is_stopped_by_the_memory_limit():
    t0 = time.monotonic()
    r = run_program("x = []\nwhile True:\n    x.append(bytearray(10 ** 7))\n", LIMITS)
    assert not r.passed and r.error == "memory", r
    # Stopped by RLIMIT_AS at 256 MiB (about 0.2 s here), not by the wall clock.
    assert time.monotonic() - t0 < LIMITS.timeout_s


def test_one_huge_allocation_is_refused():
    r = run_program("x = bytearray(8 * 1024 ** 3)\n", LIMITS)
    assert not r.passed and r.error == "memory", r


@pytest.mark.parametrize("limits", [LIMITS, GUARDS_ONLY], ids=["all-layers", "guards-only"])
def test_writing_outside_the_working_directory_does_not_survive(tmp_path, limits):
    target = tmp_path / "escaped.txt"
    sub = tmp_path / "made_dir"
    program = (
        "import os, pathlib\n"
        "errors = []\n"
        f"for attempt in (lambda: open({str(target)!r}, 'w').write('x'),\n"
        f"                lambda: pathlib.Path({str(target)!r}).write_text('x'),\n"
        f"                lambda: os.close(os.open({str(target)!r}, os.O_CREAT | os.O_WRONLY)),\n"
        f"                lambda: os.mkdir({str(sub)!r}),\n"
        f"                lambda: os.chdir({str(tmp_path)!r})):\n"
        "    try:\n        attempt()\n    except OSError as e:\n        errors.append(e)\n"
        "assert len(errors) == 5, errors\n"
    )
    r = run_program(program, limits)
    assert r.passed, r  # every attempt raised inside the program
    assert not target.exists() and not sub.exists()


def test_writing_outside_through_libc_is_stopped_by_the_kernel(tmp_path):
    if not any(layer.startswith("landlock") for layer in _layers()):
        pytest.skip("Landlock unavailable on this kernel: only the Python guards contain writes")
    target = tmp_path / "escaped_libc.txt"
    r = run_program(BYPASS + f"fd = libc.creat({str(target).encode()!r}, 0o644)\nassert fd >= 0, ctypes.get_errno()\n", LIMITS)
    assert not r.passed and "AssertionError: 13" in r.error, r  # EACCES
    assert not target.exists()


def test_existing_files_outside_cannot_be_removed_or_read(tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    r = run_program(
        f"import os, shutil\nos.remove({str(keep)!r})\n", LIMITS)
    assert not r.passed and "PermissionError" in r.error, r
    r = run_program(f"import shutil\nshutil.rmtree({str(tmp_path)!r})\n", LIMITS)
    assert not r.passed and "PermissionError" in r.error, r
    assert keep.read_text() == "precious"
    if any(layer.startswith("landlock") for layer in _layers()):
        r = run_program(f"print(open({str(keep)!r}).read())\n", LIMITS)
        assert not r.passed and "precious" not in r.stdout, r


def test_working_directory_is_private_and_deleted_afterwards():
    r = run_program(
        "import os, tempfile\n"
        "open('scratch.txt', 'w').write('ok')\n"
        "assert open('scratch.txt').read() == 'ok'\n"
        "assert os.environ['HOME'] == os.getcwd() == tempfile.gettempdir()\n"
        "print(os.getcwd())\n", LIMITS)
    assert r.passed, r
    workdir = r.stdout.strip()
    assert workdir and not os.path.exists(workdir)


@pytest.mark.parametrize("limits", [LIMITS, GUARDS_ONLY], ids=["all-layers", "guards-only"])
def test_network_connection_to_localhost_is_refused(limits):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    try:
        r = run_program(
            f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\ns.sendall(b'hi')\n", limits)
        assert not r.passed and "PermissionError" in r.error, r
        with pytest.raises(socket.timeout):
            server.accept()  # nobody connected
    finally:
        server.close()


def test_network_through_raw_sockets_is_refused_by_the_kernel():
    layers = _layers()
    if "seccomp" not in layers and not any("netns" in layer for layer in layers):
        pytest.skip("neither seccomp nor a network namespace is available here")
    program = ("import sys\nfor m in ('socket', '_socket'):\n    sys.modules.pop(m, None)\n"
               "import _socket\ns = _socket.socket(2, 1, 0)\ns.connect(('127.0.0.1', 9))\n")
    r = run_program(program, LIMITS)
    assert not r.passed and ("PermissionError" in r.error or "OSError" in r.error or "Connection" in r.error), r


def test_fork_bomb_is_bounded():
    t0 = time.monotonic()
    r = run_program("import os\nwhile True:\n    os.fork()\n", LIMITS)
    assert not r.passed and "PermissionError" in r.error, r
    r = run_program("import subprocess\nsubprocess.run(['sleep', '10'])\n", LIMITS)
    assert not r.passed and "PermissionError" in r.error, r
    assert time.monotonic() - t0 < 2 * LIMITS.timeout_s


def test_fork_bomb_through_libc_is_refused_by_the_kernel():
    if "seccomp" not in _layers():
        pytest.skip("seccomp unavailable: fork bombs are bounded by the guards and RLIMIT_NPROC only")
    program = BYPASS + (
        "for _ in range(1000):\n"
        "    pid = libc.fork()\n"
        "    assert pid >= 0, ctypes.get_errno()\n"
        "    if pid == 0:\n        libc._exit(0)\n")
    r = run_program(program, LIMITS)
    assert not r.passed and r.error == "failed: AssertionError: 1", r  # EPERM at the first fork


def test_threads_still_work():
    r = run_program(
        "import threading\nout = []\nt = threading.Thread(target=lambda: out.append(1))\n"
        "t.start(); t.join()\nassert out == [1]\n", LIMITS)
    assert r.passed, r


def test_crash_is_reported_with_its_signal():
    r = run_program("import os, signal\nimport faulthandler\nfaulthandler._sigsegv()\n", LIMITS)
    assert not r.passed and r.error == "crash: SIGSEGV", r


def test_bad_limits_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValueError, match="memory_bytes"):
        SandboxLimits(memory_bytes=1000)


def test_ordinary_programs_keep_working():
    # What HumanEval solutions import, and environment edits (numpy sets variables on import).
    prog = ("import collections, decimal, fractions, hashlib, heapq, itertools, math, random, re, string, typing\n"
            "import os\nos.environ['X'] = '1'\n"
            "assert sorted(collections.Counter('abca').items()) == [('a', 2), ('b', 1), ('c', 1)]\n")
    r = run_program(prog, LIMITS)
    assert r.passed, r
    pytest.importorskip("numpy")
    r = run_program("import numpy as np\nassert int(np.arange(5).sum()) == 10\n", LIMITS)
    assert r.passed, r
