"""The program's seccomp filter: a classic-BPF program, built here, installed by the launcher.

Why: rlimits and namespaces leave three holes a hostile program used (issue 18).
- `memfd_create` files hold memory outside the address space, so RLIMIT_AS never counts
  them (768 MiB under `memory_mb=512`); every other file system a program can write is a
  size-capped tmpfs, so refusing memfd closes that route without a memory cgroup.
- A new user namespace (after `PR_SET_DUMPABLE`) gives the program CAP_SYS_ADMIN over its
  own mount namespace: it mounted a tmpfs of its own and wrote past the /tmp quota.
- A harness that forks can be used as an oracle (the child answers, the parent reads its
  exit status), so tasks scored in one process (`Program.single_process`) may not fork.

Denied calls return an errno (EPERM; ENOSYS for `clone3`, whose flags live in memory a
filter cannot read, so the C library falls back to `clone`, whose flags it can), never
kill, so a program sees an ordinary `OSError`. Built in the trusted parent (no
libseccomp; the launcher stays stdlib-only and only calls prctl), once per option set.
Unknown architectures get no filter (`None`); the run then records `seccomp: False`.
"""

from __future__ import annotations

import functools
import platform

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6].
_NR, _ARCH, _ARG0 = 0, 4, 16  # args[0]'s low 32 bits (little-endian)
_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _ERRNO = 0x7FFF0000, 0x00050000
EPERM, ENOSYS = 1, 38
CLONE_THREAD = 0x00010000
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET (NEWTIME, 0x80, is
# clone3/unshare only: in clone's flags that byte is the exit signal).
CLONE_NEW_ANY = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000
CLONE_NEW_ANY |= 0x20000000 | 0x40000000

# Syscall numbers that differ per architecture (the new mount API, 428+, is shared).
_MOUNT_API = {"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431}
_MOUNT_API |= {"fsmount": 432, "fspick": 433, "mount_setattr": 442}
ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (
        0xC000003E,  # AUDIT_ARCH_X86_64
        {"memfd_create": 319, "memfd_secret": 447, "unshare": 272, "setns": 308}
        | {"mount": 165, "umount2": 166, "pivot_root": 155, "clone": 56, "clone3": 435}
        | {"fork": 57, "vfork": 58, "shmget": 29, "semget": 64, "msgget": 68}
        | _MOUNT_API,
    ),
    "aarch64": (
        0xC00000B7,  # AUDIT_ARCH_AARCH64 (no fork/vfork: both are clone there)
        {"memfd_create": 279, "memfd_secret": 447, "unshare": 97, "setns": 268}
        | {"mount": 40, "umount2": 39, "pivot_root": 41, "clone": 220, "clone3": 435}
        | {"shmget": 194, "semget": 190, "msgget": 186}
        | _MOUNT_API,
    ),
}
# Always refused: memory outside RLIMIT_AS, and new namespaces or mounts of any kind.
DENIED = ("memfd_create", "memfd_secret", "unshare", "setns", "mount", "umount2")
DENIED += ("pivot_root", *_MOUNT_API)
SINGLE_PROCESS_DENIED = ("fork", "vfork")
# Refused where the run has no IPC namespace whose limits the launcher could set (rlimits
# only, or an unprivileged user namespace, which may not write its IPC sysctls): there a
# SysV object would be unbounded (and, without the namespace, outlive the run).
SYSV_IPC = ("shmget", "semget", "msgget")


def _ins(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    """One `struct sock_filter` (u16 code, u8 jt, u8 jf, u32 k), native little-endian."""
    return code.to_bytes(2, "little") + bytes((jt, jf)) + k.to_bytes(4, "little")


@functools.lru_cache(maxsize=4)
def filter_program(
    single_process: bool = False, sysv_ipc: bool = True, machine: str | None = None
) -> bytes | None:
    """The filter as `sock_filter` bytes for `prctl(PR_SET_SECCOMP)`, or None (unknown arch).

    Layout: a foreign architecture (x32, i386 entry points) is refused outright; each
    denied number returns EPERM; `clone3` returns ENOSYS; `clone` with any CLONE_NEW*
    flag (and, with `single_process`, without CLONE_THREAD: a new process, not a thread)
    returns EPERM; without `sysv_ipc`, creating or opening SysV IPC objects returns EPERM;
    everything else is allowed.
    """
    arch = ARCHES.get(machine or platform.machine())
    if arch is None:
        return None
    audit_arch, nr = arch
    deny = [nr[n] for n in DENIED]
    if single_process:
        deny += [nr[n] for n in SINGLE_PROCESS_DENIED if n in nr]
    if not sysv_ipc:
        deny += [nr[n] for n in SYSV_IPC]
    eperm, ret_allow = _ins(_RET, _ERRNO | EPERM), _ins(_RET, _ALLOW)
    prog = [_ins(_LD_W_ABS, _ARCH), _ins(_JEQ, audit_arch, 1, 0), eperm]
    prog += [_ins(_LD_W_ABS, _NR), _ins(_JGE, 0x40000000, 0, 1), eperm]  # x32 numbers
    for n in deny:
        prog += [_ins(_JEQ, n, 0, 1), eperm]
    prog += [_ins(_JEQ, nr["clone3"], 0, 1), _ins(_RET, _ERRNO | ENOSYS)]
    clone = [_ins(_LD_W_ABS, _ARG0), _ins(_JSET, CLONE_NEW_ANY, 0, 1), eperm]
    if single_process:
        clone += [_ins(_JSET, CLONE_THREAD, 1, 0), eperm]
    clone.append(ret_allow)
    prog += [_ins(_JEQ, nr["clone"], 0, len(clone)), *clone, ret_allow]
    return b"".join(prog)
