"""The sandbox's trusted launcher: run as `python -I -S launcher.py SPEC_HEX` in a new session.

Why a separate script: it runs before the untrusted program, partly as root, with no site
packages (`-S`) and no environment or script directory on sys.path (`-I`), so it imports the
standard library only (never zen_code_jax). `zen_code_jax.eval.sandbox.run` starts it with the
marshalled spec as argv[1] (no secrets: any process may read a command line), a status pipe
(`spec["status_fd"]`) and a pipe holding the run's verdict token (`spec["secret_fd"]`).

What it does: unshare namespaces (as root: mount + network + PID + IPC, with private
size-limited tmpfs mounts over the world-writable directories and small limits on the IPC
namespace's objects; otherwise an unprivileged user + network (+ PID + mount + IPC)
namespace where the kernel allows it), build the program's view of the
interpreter in the mount namespace (`view.py`: the whole stdlib read-only, only the listed
site-packages, nothing else of the interpreter's home), report the isolation it got, and
fork. The child sets rlimits, drops to the slot's uid, asks for SIGKILL when its parent dies
(PR_SET_PDEATHSIG), installs the parent-built seccomp filter (`seccomp.py`: no memfd, no new
namespaces or mounts, no SysV IPC where its namespace has no limits, no new processes under
`single_process`) and runs the program: Python in-process (`exec` in a fresh `__main__`
namespace), other languages via `execve`. With a PID namespace, the first child is a
mini-init that forks the program and reports its status.

The verdict (Python): before forking, the launcher draws a random epilogue key. The child
keeps it only inside the epilogue closure; when the program's top-level code has returned
(no exception, no `sys.exit`, no `os._exit`), the epilogue writes the key to the request
pipe. The waiting process (init, or the launcher), which the program cannot read (another
uid, or not dumpable), checks the key after the child has exited and only then reads the
token from its pipe and reports it. The token is never in the program's process.
Every report is one Python literal per line on the status pipe (no json: importing it would
cost more CPU than most test programs).
"""

import marshal
import os
import resource
import sys

# No json/re/signal here: importing them (enum, functools, ...) would cost more CPU than
# most test programs. The spec comes marshalled; reports are Python literals.
spec = marshal.loads(bytes.fromhex(sys.argv[1]))
status_fd = spec["status_fd"]
secret_fd = spec["secret_fd"]
SIGKILL = 9
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND = 1, 2, 4, 32, 4096
MS_REC, MS_PRIVATE = 16384, 1 << 18


def report(**kw):
    try:
        os.write(status_fd, (repr(kw) + "\n").encode())
    except OSError:
        pass


def die(msg):
    report(setup_error=msg)
    os._exit(97)


def preload(source, names):
    """Fallback without a mount namespace: import, while we still may read the interpreter,
    the allow-listed stdlib modules the source names in an import statement."""
    wanted = set()
    for line in source.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 3 and words[0] == "from" and words[2] == "import":
            wanted.add(words[1])
        elif len(words) >= 2 and words[0] == "import":
            for part in " ".join(words[1:]).split(","):
                if part.split():
                    wanted.add(part.split()[0])
    for name in names:
        if name in wanted:
            try:
                __import__(name)
            except Exception:
                pass


def ro_remount(path, extra=0):
    """Make the mount at `path` read-only, keeping the flags the kernel locks (user ns)."""
    st = os.statvfs(path).f_flag
    flags = MS_REMOUNT | MS_RDONLY | extra | (st & (MS_NOSUID | MS_NODEV | 8 | 1024 | 2048))
    if st & 4096:
        flags |= 1 << 21  # ST_RELATIME -> MS_RELATIME
    if mount(None, path.encode(), None, flags, None) != 0:
        die(f"read-only remount of {path} failed (errno {ctypes.get_errno()})")


def setup_view(ops, handles):
    """Execute `view.python_view`'s plan (parents first); every mount ends read-only."""
    tmpfs_done = []
    for kind, path, extra in ops:
        if kind == "tmpfs":
            if not os.path.isdir(path):
                continue  # hidden by a tmpfs above it, or absent: nothing to mask
            opts = b"size=1m,mode=0755"
            if mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts) != 0:
                die(f"mounting a tmpfs over {path} failed (errno {ctypes.get_errno()})")
            tmpfs_done.append(path)
        elif kind == "link":
            if not os.path.lexists(path):
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                os.symlink(extra, path)
        else:
            fd, is_dir = handles[path]
            if not os.path.lexists(path):
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                if is_dir:
                    os.mkdir(path, 0o755)
                else:
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
            src = f"/proc/self/fd/{fd}".encode()
            if mount(src, path.encode(), None, MS_BIND | MS_REC, None) != 0:
                die(f"bind-mounting {path} failed (errno {ctypes.get_errno()})")
            ro_remount(path, MS_BIND)
            os.close(fd)
    for path in tmpfs_done:
        ro_remount(path)


try:
    os.chdir(spec["workdir"])
    source = None
    if spec["argv"] is None:
        with open(spec["file"], encoding="utf-8", errors="replace") as f:
            source = f.read()
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    mount = libc.mount
    mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    iso = {"uid": None, "net_ns": False, "pid_ns": False, "mount_ns": False, "user_ns": False}
    iso["ipc_ns"] = False
    iso["python_view"] = False
    is_root = os.geteuid() == 0
    view = spec["view"] if source is not None else None
    handles = {}
    if spec["namespaces"]:
        CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWUSER = 0x40000000, 0x20000000, 0x10000000
        CLONE_NEWNS, CLONE_NEWIPC = 0x00020000, 0x08000000
        # An IPC namespace of its own: SysV shm, message queues, semaphores and POSIX
        # mqueues die with the run and no other run sees them.
        IPC = (CLONE_NEWIPC, ("ipc_ns",))
        if is_root:
            full = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID, ("mount_ns", "net_ns", "pid_ns")
            attempts = (
                (full[0] | IPC[0], full[1] + IPC[1]),
                full,
                (CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC, ("net_ns", "pid_ns", "ipc_ns")),
                (CLONE_NEWNET, ("net_ns",)),
            )
        else:
            uid, gid = os.getuid(), os.getgid()
            U = CLONE_NEWUSER | CLONE_NEWNET
            got = ("user_ns", "net_ns", "pid_ns", "mount_ns")
            attempts = (
                (U | CLONE_NEWPID | CLONE_NEWNS | IPC[0], got + IPC[1]),
                (U | CLONE_NEWPID | CLONE_NEWNS, got),
                (U | CLONE_NEWNS, ("user_ns", "net_ns", "mount_ns")),
                (U, ("user_ns", "net_ns")),
            )
        for flags, got in attempts:
            if libc.unshare(flags) == 0:
                for k in got:
                    iso[k] = True
                break
        if iso["user_ns"]:
            try:
                with open("/proc/self/setgroups", "w") as f:
                    f.write("deny")
                with open("/proc/self/uid_map", "w") as f:
                    f.write(f"{uid} {uid} 1")
                with open("/proc/self/gid_map", "w") as f:
                    f.write(f"{gid} {gid} 1")
            except OSError:
                pass
        if iso["ipc_ns"]:
            # Cap what the namespace's objects may hold (they are outside RLIMIT_AS).
            try:
                for name, value in spec["ipc_sysctls"].items():
                    with open("/proc/sys/" + name, "w") as f:
                        f.write(str(value))
                iso["ipc_limits"] = True
            except OSError:
                iso["ipc_limits"] = False
        if iso["mount_ns"] and mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            die("mount --make-rprivate / failed")
        if iso["mount_ns"] and view:
            # Handles on everything the view exposes, opened in the new mount namespace
            # (bind sources must be in it) before any mount can hide them.
            for kind, path, _extra in view["ops"]:
                if kind == "bind":
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                    handles[path] = (fd, os.path.isdir(path))
        if iso["mount_ns"] and is_root:
            # Private, size-limited tmpfs over every world-writable directory; the work
            # dir is re-created inside the new /tmp, so nothing the program writes
            # reaches the host's disk or the host's /dev/shm, and it cannot see them.
            files = {}
            for root, _dirs, names in os.walk("."):
                for name in names:
                    with open(os.path.join(root, name), "rb") as f:
                        files[os.path.join(root, name)] = f.read()
            sizes = {"/tmp": spec["tmpfs_mb"], "/var/tmp": 1, "/run/lock": 1, "/dev/shm": 1}
            for d, mb in sizes.items():
                if os.path.isdir(d) and not os.path.islink(d):
                    opts = f"size={mb}m,mode=1777".encode()
                    if mount(b"tmpfs", d.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts) != 0:
                        die(f"mounting a tmpfs on {d} failed")
            os.makedirs(spec["workdir"], mode=0o700, exist_ok=True)
            os.chdir(spec["workdir"])
            for name, data in files.items():
                os.makedirs(os.path.dirname(name), exist_ok=True)
                with open(name, "wb") as f:
                    f.write(data)
            if spec["uid"] is not None:
                for root, dirs, names in os.walk("."):
                    for name in [root] + [os.path.join(root, n) for n in dirs + names]:
                        os.chown(name, spec["uid"], spec["gid"])
            iso["tmpfs_mb"] = spec["tmpfs_mb"]
        if iso["mount_ns"] and view:
            os.umask(0o022)
            setup_view(view["ops"], handles)
            iso["python_view"] = True
    for fd, _is_dir in handles.values():
        try:
            os.close(fd)
        except OSError:
            pass
    if source is not None and not iso["python_view"] and is_root:
        preload(source, spec["preload"])
    if spec["uid"] is not None and is_root:
        iso["uid"] = spec["uid"]
    iso["seccomp"] = spec["seccomp"] is not None
    # SysV IPC only inside an IPC namespace with limits; otherwise the filter refuses it.
    iso["sysv_ipc"] = bool(iso.get("ipc_limits")) or not iso["seccomp"]
    seccomp_prog = spec["seccomp" if iso["sysv_ipc"] else "seccomp_no_sysv_ipc"]
    iso["single_process"] = spec["single_process"] and iso["seccomp"]
    report(isolation=iso)
    host_procs = 0  # this user's processes, counted on the host's /proc (before init's)
    if not is_root:
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    host_procs += os.stat("/proc/" + name).st_uid == os.getuid()
                except OSError:
                    pass
    libc.prctl(4, 0)  # PR_SET_DUMPABLE 0: a same-uid program cannot read our memory or fds
    launcher_pid = os.getpid()
    epilogue_key = os.urandom(16)
    req_r, req_w = os.pipe()
    pid = os.fork()
except BaseException as e:
    die(f"{type(e).__name__}: {e}")


def wait_status(child):
    while True:
        try:
            return os.waitpid(child, 0)[1]
        except InterruptedError:
            continue


def report_status(st):
    """After the program's process ended: the verdict (if its epilogue ran), then its status."""
    data = b""
    os.set_blocking(req_r, False)
    try:
        while len(data) <= 64:
            chunk = os.read(req_r, 4096)
            if not chunk:
                break
            data += chunk
    except BlockingIOError:
        pass
    if data == epilogue_key:
        try:
            report(verdict=os.read(secret_fd, 4096).decode())
        except OSError:
            pass
    if os.WIFEXITED(st):
        report(exit=os.WEXITSTATUS(st))
    else:
        report(signal=os.WTERMSIG(st))


def install_seccomp(prog):
    """Install the parent-built filter (`seccomp.py`): no_new_privs, then the filter."""

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    fprog = Fprog(len(prog) // 8, prog)
    # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def run_child(parent_pid):
    try:
        os.close(status_fd)
        os.close(secret_fd)
        os.close(req_r)
        lim = spec["limits"]
        R = resource
        R.setrlimit(R.RLIMIT_CORE, (0, 0))
        R.setrlimit(R.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
        R.setrlimit(R.RLIMIT_FSIZE, (lim["file_bytes"], lim["file_bytes"]))
        R.setrlimit(R.RLIMIT_NOFILE, (lim["open_files"], lim["open_files"]))
        # Never above the hard limit (raising it needs CAP_SYS_RESOURCE, even for root).
        mq = min(lim["msgqueue_bytes"], R.getrlimit(R.RLIMIT_MSGQUEUE)[1] % (1 << 63))
        R.setrlimit(R.RLIMIT_MSGQUEUE, (mq, mq))
        if iso["uid"] is None and not is_root:
            # Best effort without root: RLIMIT_NPROC counts all of this user's processes,
            # so allow what exists now plus the program's share.
            try:
                cap = host_procs + lim["processes"]
                R.setrlimit(R.RLIMIT_NPROC, (cap, cap))
            except (OSError, ValueError):
                pass
        if iso["uid"] is not None:
            R.setrlimit(R.RLIMIT_NPROC, (lim["processes"], lim["processes"]))
            os.setgroups([])
            os.setgid(spec["gid"])
            os.setuid(spec["uid"])
        libc.prctl(1, SIGKILL)  # PR_SET_PDEATHSIG (after setuid, which clears it)
        if os.getppid() != parent_pid:
            os._exit(98)
        R.setrlimit(R.RLIMIT_AS, (lim["as_bytes"], lim["as_bytes"]))
        if seccomp_prog is not None:
            install_seccomp(seccomp_prog)
    except BaseException as e:
        sys.stderr.write(f"sandbox setup failed: {type(e).__name__}: {e}\n")
        os._exit(97)
    if spec["argv"] is not None:
        try:
            os.execve(spec["argv"][0], spec["argv"], spec["env"])
        except BaseException as e:
            sys.stderr.write(f"sandbox exec failed: {type(e).__name__}: {e}\n")
            os._exit(97)


def make_epilogue(fd, key):
    """The trusted epilogue: the key lives only in this closure (and the waiting process)."""
    write = os.write

    def epilogue():
        try:
            write(fd, key)
        except OSError:
            pass

    return epilogue


if pid == 0 and iso["pid_ns"]:
    # PID 1 of the new namespace: a mini-init (PID 1 ignores signals it has no handler
    # for, e.g. RLIMIT_CPU's SIGXCPU, so the program must not be PID 1). When it dies the
    # kernel kills everything left in the namespace.
    libc.prctl(1, SIGKILL)  # (it shares the launcher's process group, too)
    init_pid = os.getpid()
    if iso["mount_ns"]:
        # A /proc of this PID namespace only: the program cannot list or read the host's
        # processes (their command lines may hold secrets). Best effort: the host's stays.
        mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | 8, None)
    try:
        pid = os.fork()
    except BaseException as e:
        die(f"fork in init: {type(e).__name__}: {e}")
    if pid != 0:
        os.close(req_w)
        report_status(wait_status(pid))
        os._exit(0)
    run_child(init_pid)
elif pid == 0:
    run_child(launcher_pid)

if pid == 0:
    epilogue = make_epilogue(req_w, epilogue_key)
    if view and iso["python_view"]:
        sys.path.extend(view["sys_path"])
    code = compile(source, "program.py", "exec", dont_inherit=True)
    del spec, epilogue_key, source, view, handles, libc, ctypes, mount
    sys.argv = ["program.py"]
    # The program's globals: what it saw when this launcher was a `-c` string (os and sys
    # usable without an import), nothing of ours.
    main = type(sys)("__main__")
    main.__dict__.update(__file__="program.py", __builtins__=__builtins__, os=os, sys=sys)
    sys.modules["__main__"] = main
    exec(code, main.__dict__)
    # Reached only when the program's top-level code returned: no exception, no exit.
    epilogue()
    raise SystemExit(0)

st = wait_status(pid)
if not iso["pid_ns"]:
    os.close(req_w)
    report_status(st)
elif not (os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0):
    report(init_failed=st)
os._exit(0)
