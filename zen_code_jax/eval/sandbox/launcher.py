"""The sandbox's trusted launcher: run as `python -I -S launcher.py SPEC_HEX` in a new session.

Why a separate script: it runs before the untrusted program, partly as root, with no site
packages (`-S`) and no environment or script directory on sys.path (`-I`), so it imports the
standard library only (never zen_code_jax). `zen_code_jax.eval.sandbox.run` starts it with the
marshalled spec as argv[1] and a status pipe (`spec["status_fd"]`).

What it does: read the program and pre-import the stdlib modules its source names (the
sandbox uid may not be able to read the interpreter's directory), unshare namespaces (as
root: mount + network + PID, with private size-limited tmpfs mounts over the world-writable
directories; otherwise an unprivileged user + network namespace where the kernel allows it),
report the isolation it got, and fork. The child sets rlimits, drops to the slot's uid, asks
for SIGKILL when its parent dies (PR_SET_PDEATHSIG) and runs the program: Python in-process
(`exec` in this module's namespace, as `__main__`), other languages via `execve`. With a PID
namespace, the first child is a mini-init that forks the program and reports its status.
Every report is one Python literal per line on the status pipe (no json: importing it would
cost more CPU than most test programs).

This is a script, not a module: its code runs at the top level on purpose, because the
program is executed in these globals (a program that uses `sys` or `os` without importing
them behaves exactly as it always has). Do not add imports or a `__future__` statement (the
program's `compile` would inherit it).
"""

import marshal
import os
import resource
import sys

# No json/re/signal here: importing them (enum, functools, ...) would cost more CPU than
# most test programs. The spec comes marshalled; reports are Python literals.
spec = marshal.loads(bytes.fromhex(sys.argv[1]))
status_fd = spec["status_fd"]
SIGKILL = 9


def report(**kw):
    try:
        os.write(status_fd, (repr(kw) + "\n").encode())
    except OSError:
        pass


def die(msg):
    report(setup_error=msg)
    os._exit(97)


try:
    os.chdir(spec["workdir"])
    source = None
    if spec["argv"] is None:
        with open(spec["file"], encoding="utf-8", errors="replace") as f:
            source = f.read()
        wanted = set()
        for line in source.splitlines():
            words = line.split("#", 1)[0].split(";", 1)[0].split()
            if len(words) >= 3 and words[0] == "from" and words[2] == "import":
                wanted.add(words[1])
            elif len(words) >= 2 and words[0] == "import":
                for part in " ".join(words[1:]).split(","):
                    if part.split():
                        wanted.add(part.split()[0])
        for name in spec["preload"]:
            if name in wanted:
                try:
                    __import__(name)
                except Exception:
                    pass
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    iso = {"uid": None, "net_ns": False, "pid_ns": False, "mount_ns": False, "user_ns": False}
    is_root = os.geteuid() == 0
    if spec["namespaces"]:
        CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWUSER = 0x40000000, 0x20000000, 0x10000000
        CLONE_NEWNS = 0x00020000
        if is_root:
            for flags, got in (
                (CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID, ("mount_ns", "net_ns", "pid_ns")),
                (CLONE_NEWNET | CLONE_NEWPID, ("net_ns", "pid_ns")),
                (CLONE_NEWNET, ("net_ns",)),
            ):
                if libc.unshare(flags) == 0:
                    for k in got:
                        iso[k] = True
                    break
            if iso.get("mount_ns"):
                # Private, size-limited tmpfs over every world-writable directory; the work
                # dir is re-created inside the new /tmp, so nothing the program writes
                # reaches the host's disk or the host's /dev/shm, and it cannot see them.
                files = {}
                for root, _dirs, names in os.walk("."):
                    for name in names:
                        with open(os.path.join(root, name), "rb") as f:
                            files[os.path.join(root, name)] = f.read()
                mount = libc.mount
                mount.argtypes = [
                    ctypes.c_char_p,
                    ctypes.c_char_p,
                    ctypes.c_char_p,
                    ctypes.c_ulong,
                    ctypes.c_char_p,
                ]
                MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 2, 4, 16384, 1 << 18
                if mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
                    die("mount --make-rprivate / failed")
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
        else:
            uid, gid = os.getuid(), os.getgid()
            if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID) == 0:
                iso["net_ns"] = iso["user_ns"] = iso["pid_ns"] = True
            elif libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
                iso["net_ns"] = iso["user_ns"] = True
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
    if spec["uid"] is not None and is_root:
        iso["uid"] = spec["uid"]
    report(isolation=iso)
    launcher_pid = os.getpid()
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
    if os.WIFEXITED(st):
        report(exit=os.WEXITSTATUS(st))
    else:
        report(signal=os.WTERMSIG(st))


def run_child(parent_pid):
    try:
        os.close(status_fd)
        lim = spec["limits"]
        R = resource
        R.setrlimit(R.RLIMIT_CORE, (0, 0))
        R.setrlimit(R.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
        R.setrlimit(R.RLIMIT_FSIZE, (lim["file_bytes"], lim["file_bytes"]))
        R.setrlimit(R.RLIMIT_NOFILE, (lim["open_files"], lim["open_files"]))
        if iso["uid"] is None and not is_root:
            # Best effort without root: RLIMIT_NPROC counts all of this user's processes,
            # so allow what exists now plus the program's share.
            try:
                mine = 0
                for name in os.listdir("/proc"):
                    if name.isdigit():
                        try:
                            mine += os.stat("/proc/" + name).st_uid == os.getuid()
                        except OSError:
                            pass
                cap = mine + lim["processes"]
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
    except BaseException as e:
        sys.stderr.write(f"sandbox setup failed: {type(e).__name__}: {e}\n")
        os._exit(97)
    if spec["argv"] is not None:
        try:
            os.execve(spec["argv"][0], spec["argv"], spec["env"])
        except BaseException as e:
            sys.stderr.write(f"sandbox exec failed: {type(e).__name__}: {e}\n")
            os._exit(97)


if pid == 0 and iso["pid_ns"]:
    # PID 1 of the new namespace: a mini-init (PID 1 ignores signals it has no handler
    # for, e.g. RLIMIT_CPU's SIGXCPU, so the program must not be PID 1). When it dies the
    # kernel kills everything left in the namespace.
    libc.prctl(1, SIGKILL)  # (it shares the launcher's process group, too)
    init_pid = os.getpid()
    try:
        pid = os.fork()
    except BaseException as e:
        die(f"fork in init: {type(e).__name__}: {e}")
    if pid != 0:
        report_status(wait_status(pid))
        os._exit(0)
    run_child(init_pid)
elif pid == 0:
    run_child(launcher_pid)

if pid == 0:
    del spec, report, die, libc, ctypes, marshal, resource, wait_status, report_status, run_child
    sys.argv = ["program.py"]
    __name__ = "__main__"
    __file__ = "program.py"
    # The program sees the globals it saw when this launcher was a `-c` string.
    __doc__ = None
    globals().pop("__cached__", None)
    exec(compile(source, "program.py", "exec"))
    sys.exit(0)

st = wait_status(pid)
if not iso["pid_ns"]:
    report_status(st)
elif not (os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0):
    report(init_failed=st)
os._exit(0)
