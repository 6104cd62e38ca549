"""Run untrusted generated code (HumanEval shape) in a separate, confined process.

The program is ``prompt + completion + test + "check(entry_point)"``; it passes when it
runs to the end without raising. Each program runs in a fresh ``python -I`` process
(``_sandbox_child.py``) in its own session, with a throwaway working directory that is
also its HOME and TMPDIR and is deleted afterwards.

What is contained, and how (each layer reported in ``SandboxResult.layers``):

- **Time** (enforced): a wall-clock limit (the parent kills the whole process group with
  SIGKILL; interpreter start-up, about 30-60 ms, counts) and ``RLIMIT_CPU``.
- **Memory** (enforced): ``RLIMIT_AS`` and ``RLIMIT_DATA``; an allocation beyond them
  raises ``MemoryError`` in the program (reported as ``memory``) or kills it.
- **File size** (enforced): ``RLIMIT_FSIZE`` (SIGXFSZ / EFBIG beyond it).
- **File system** (kernel-enforced where Landlock exists, Linux >= 5.13 with the LSM
  enabled; unprivileged): writes, removals and creations only beneath the working
  directory; reads only beneath the interpreter, its ``sys.path``, /usr, /lib, /bin, its
  own /proc entry and /dev/null, /dev/urandom, /dev/zero: not /etc (so not /etc/shadow
  when run as root), /home, /root or /tmp. Without
  Landlock only the in-process guards remain (Python-level ``open``/``os``/``shutil``
  checks), which code calling libc through ctypes could bypass: that case is
  best-effort and reported as such (no ``landlock`` in ``layers``).
- **Network** (kernel-enforced where available): a new network namespace (root, or an
  unprivileged user namespace where the system allows one), Landlock's TCP bind/connect
  denial (ABI >= 4) and a seccomp filter that refuses every socket family but AF_UNIX;
  plus the in-process guard that replaces ``socket.socket``.
- **Processes** (kernel-enforced where seccomp exists, x86_64 and aarch64): fork, vfork,
  clone without CLONE_THREAD and clone3 fail with EPERM/ENOSYS, so a fork bomb cannot
  start; ``RLIMIT_NPROC`` for non-root users; the in-process guard on ``os.fork``,
  ``subprocess`` and friends; and the parent kills the process group at the end.
- **Signals** to processes outside the sandbox: Landlock scoping (ABI >= 6) and the guard
  on ``os.kill``.

Not contained: CPU cache and timing side channels; reading the folders listed above
(the repository too, when it is on ``sys.path`` through an editable install); a program that forges its own result (it runs in the same interpreter as the
reporting code; this sandbox protects the machine, not the score, from a hostile
program). Stronger isolation (containers, gVisor, a VM) is the user's choice for
untrusted code at scale.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CHILD = Path(__file__).with_name("_sandbox_child.py")


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one program run."""

    timeout_s: float = 3.0
    """Wall-clock limit, interpreter start-up included; RLIMIT_CPU is its ceiling."""
    memory_bytes: int = 1 << 30
    """RLIMIT_AS and RLIMIT_DATA (virtual address space); 0 means no limit."""
    file_bytes: int = 16 << 20
    """RLIMIT_FSIZE: the largest file the program may write (stdout/stderr included)."""
    max_processes: int = 64
    """RLIMIT_NPROC for non-root users (root is exempt from it by the kernel)."""
    output_bytes: int = 8192
    """How much of the end of stdout/stderr is kept in the result."""
    kernel_layers: bool = True
    """Apply network namespace, Landlock and seccomp where the kernel allows them."""

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"SandboxLimits.timeout_s={self.timeout_s!r}: allowed a number of seconds > 0")
        if self.memory_bytes < 0 or (0 < self.memory_bytes < 64 << 20):
            raise ValueError(f"SandboxLimits.memory_bytes={self.memory_bytes!r}: allowed 0 (none) or >= 64 MiB")
        if self.file_bytes < 4096:
            raise ValueError(f"SandboxLimits.file_bytes={self.file_bytes!r}: allowed >= 4096")


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program run."""

    passed: bool
    """True when the program ran to the end without raising."""
    error: str
    """"" when passed; else ``timeout``, ``memory``, ``file too large``, ``failed: <exception>``
    or ``crash: <signal name>``."""
    duration_s: float
    """Wall time of the child process."""
    layers: tuple[str, ...] = ()
    """Isolation layers the child applied (e.g. rlimits, netns, landlock-v7+net+scope,
    seccomp, guards); empty when it died before reporting."""
    stdout: str = ""
    """The end of the program's stdout (``SandboxLimits.output_bytes`` at most)."""
    stderr: str = ""
    """The end of the program's stderr."""
    returncode: int | None = None
    """The child's exit status (negative: killed by that signal)."""


def build_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The HumanEval program: the prompt, the completion, the test and ``check(entry)``."""
    return f"{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n"


def _tail(path: Path, n: int) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - n))
        return f.read().decode("utf-8", "replace")


def run_program(program: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``program`` in a confined child process; see the module docstring."""
    limits = limits or SandboxLimits()
    # Two directories: the child's (writable by it, deleted afterwards) and ours (its
    # stdout/stderr files and nothing it can reach by path).
    ours = Path(tempfile.mkdtemp(prefix="slicer-sandbox-io-"))
    workdir = Path(tempfile.mkdtemp(prefix="slicer-sandbox-"))
    os.chmod(ours, 0o700)
    nonce = secrets.token_hex(16)
    r_fd, w_fd = os.pipe()
    cpu_s = max(1, int(limits.timeout_s + 0.999))
    request = {
        "program": program,
        "workdir": str(workdir),
        "nonce": nonce,
        "result_fd": w_fd,
        "cpu_s": cpu_s,
        "memory_bytes": int(limits.memory_bytes),
        "file_bytes": int(limits.file_bytes),
        "max_processes": int(limits.max_processes),
        "kernel_layers": bool(limits.kernel_layers),
    }
    env = {
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": "1",
    }
    start = time.monotonic()
    timed_out = False
    try:
        with open(ours / "stdout", "wb") as out, open(ours / "stderr", "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-X", "utf8", str(CHILD)],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                cwd=workdir,
                env=env,
                pass_fds=(w_fd,),
                start_new_session=True,  # its own process group, killed as a whole below
                close_fds=True,
            )
            os.close(w_fd)
            w_fd = -1
            try:
                proc.stdin.write(json.dumps(request).encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        duration_s = time.monotonic() - start
        os.set_blocking(r_fd, False)
        try:
            raw = os.read(r_fd, 1 << 16)
        except BlockingIOError:
            raw = b""
        stdout = _tail(ours / "stdout", limits.output_bytes)
        stderr = _tail(ours / "stderr", limits.output_bytes)
    finally:
        if w_fd >= 0:
            os.close(w_fd)
        os.close(r_fd)
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(ours, ignore_errors=True)

    report = _parse_report(raw, nonce)
    rc = proc.returncode
    layers = tuple(report.get("layers", ())) if report else ()
    if timed_out:
        return SandboxResult(False, "timeout", duration_s, layers, stdout, stderr, rc)
    if report and "status" in report:
        status = report.get("status")
        if status == "passed":
            return SandboxResult(True, "", duration_s, layers, stdout, stderr, rc)
        if status == "memory":
            return SandboxResult(False, "memory", duration_s, layers, stdout, stderr, rc)
        error = str(report.get("error", ""))
        if error.startswith("MemoryError"):
            return SandboxResult(False, "memory", duration_s, layers, stdout, stderr, rc)
        return SandboxResult(False, f"failed: {error}", duration_s, layers, stdout, stderr, rc)
    if rc is not None and rc < 0:
        sig = -rc
        if sig in (signal.SIGXCPU, signal.SIGKILL) and duration_s >= cpu_s * 0.9:
            return SandboxResult(False, "timeout", duration_s, layers, stdout, stderr, rc)
        if sig == signal.SIGXFSZ:
            return SandboxResult(False, "file too large", duration_s, layers, stdout, stderr, rc)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        return SandboxResult(False, f"crash: {name}", duration_s, layers, stdout, stderr, rc)
    if "MemoryError" in stderr:
        return SandboxResult(False, "memory", duration_s, layers, stdout, stderr, rc)
    return SandboxResult(False, f"failed: exited with status {rc} before the tests finished",
                         duration_s, layers, stdout, stderr, rc)


def _parse_report(raw: bytes, nonce: str) -> dict | None:
    """The child's last report with our nonce: ``started`` (layers only) then the
    outcome. Returns {"layers": ...} alone when the program never finished."""
    found: dict = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        try:
            rep = json.loads(line)
        except ValueError:
            continue
        if isinstance(rep, dict) and rep.get("nonce") == nonce:
            if rep.get("status") == "started":
                found.setdefault("layers", rep.get("layers", []))
            else:
                found = {**rep, "layers": found.get("layers", rep.get("layers", []))}
    return found or None


def check_completion(prompt: str, completion: str, test: str, entry_point: str,
                     limits: SandboxLimits | None = None) -> SandboxResult:
    """Run one HumanEval-shaped completion against its test."""
    return run_program(build_program(prompt, completion, test, entry_point), limits)
