"""What of the host's Python a sandboxed program sees: the standard library, opt-in packages.

Why: the interpreter often lives in a directory the sandbox uid cannot traverse (a pyenv or
conda under /root or a 0700 home). Before this view, only a preloaded list of stdlib modules
imported and `import csv` failed, so correct completions were scored wrong. The launcher now
builds, in the program's private mount namespace, exactly this view of the interpreter, at
the paths the interpreter already uses (so `sys.path` needs no rewriting):

- every directory on the path of `python -I -S` (stdlib, its zip, lib-dynload), the
  interpreter binary, its `sys.executable` link and libpython, bound read-only;
- every site-packages directory replaced by an empty read-only tmpfs, into which only the
  files of the listed distributions (`eval.sandbox_packages`) are bound read-only;
- the first directory above any of those that others cannot traverse (e.g. `/root`) replaced
  by a read-only tmpfs holding only the directories that lead to them, so nothing else of
  it is visible.

This module computes that plan once per package list, in the trusted parent; the launcher
only executes it (`launcher.py`, `setup_view`).
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import os
import site
import stat
import subprocess
import sys
import sysconfig
from typing import Any


@functools.lru_cache(maxsize=1)
def isolated_sys_path() -> tuple[str, ...]:
    """`sys.path` of `python -I -S` (what the launcher runs with): the standard library."""
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", "import sys; print(repr(sys.path))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return tuple(p for p in ast.literal_eval(out.strip()) if p)


def site_dirs() -> list[str]:
    """Every site-packages directory of this interpreter (masked in the sandbox)."""
    dirs = list(site.getsitepackages())
    user = site.getusersitepackages()
    dirs += [user] if isinstance(user, str) else list(user)
    for key in ("purelib", "platlib"):
        dirs.append(sysconfig.get_paths()[key])
    out: list[str] = []
    for d in dirs:
        d = os.path.realpath(d)
        if d not in out:
            out.append(d)
    return out


@functools.lru_cache(maxsize=1)
def _top_level_to_dists() -> dict[str, list[str]]:
    return md.packages_distributions()


def package_paths(name: str) -> list[str]:
    """The top-level files and directories (package, .libs, dist-info) of the distribution
    that provides import name `name`, as absolute paths inside its site directory."""
    dists = _top_level_to_dists().get(name)
    if not dists:
        raise ValueError(
            f"eval.sandbox_packages names {name!r}, which no installed distribution provides; "
            "install it (pip install ...) or remove it from the list."
        )
    paths: list[str] = []
    for dist_name in dists:
        dist = md.distribution(dist_name)
        root = os.path.realpath(str(dist.locate_file("")))
        for f in dist.files or []:
            if not f.parts or f.parts[0] == ".." or f.parts[0] == "__pycache__":
                continue
            p = os.path.join(root, f.parts[0])
            if p not in paths and os.path.lexists(p):
                paths.append(p)
    return paths


def _closed_ancestor(path: str) -> str | None:
    """The topmost ancestor of `path` that others may not traverse (o-x), if any."""
    parts = os.path.realpath(path).split(os.sep)[1:]
    cur = ""
    for part in parts[:-1]:
        cur += os.sep + part
        try:
            if not os.stat(cur).st_mode & stat.S_IXOTH:
                return cur
        except OSError:
            return None
    return None


@functools.lru_cache(maxsize=16)
def python_view(packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """The launcher's mount plan for a package list (see the module docstring).

    Returns {"ops": [(kind, path, extra), ...] sorted parents first, "sys_path": [...]}:
    kind "tmpfs" (an empty read-only tmpfs over path), "bind" (path bound read-only onto
    itself, from a handle opened before any mount) or "link" (a symlink path -> extra).
    """
    binds: list[str] = []
    links: list[tuple[str, str]] = []
    for p in isolated_sys_path():
        if os.path.exists(p) and not any(p.startswith(b + os.sep) for b in binds):
            binds.append(os.path.realpath(p))
    exe = os.path.realpath(sys.executable)
    binds.append(exe)
    if os.path.islink(sys.executable) and os.path.abspath(sys.executable) != exe:
        links.append((os.path.abspath(sys.executable), os.readlink(sys.executable)))
    libpython = os.path.join(
        sysconfig.get_config_var("LIBDIR") or "", sysconfig.get_config_var("INSTSONAME") or ""
    )
    if os.path.isfile(libpython):
        binds.append(os.path.realpath(libpython))
    sites = site_dirs()
    sys_path: list[str] = []
    for name in packages:
        for p in package_paths(name):
            if p not in binds:
                binds.append(p)
            d = os.path.dirname(p)
            if d not in sys_path:
                sys_path.append(d)
    tmpfs = set(sites)
    for p in binds + [lk for lk, _ in links]:
        top = _closed_ancestor(p)
        if top is not None:
            tmpfs.add(top)
    ops: list[tuple[str, str, str]] = [("tmpfs", d, "") for d in sorted(tmpfs)]
    ops += [("bind", b, "") for b in binds]
    ops += [("link", lk, target) for lk, target in links]
    # Parents before children; at one path, a tmpfs before what is bound into it.
    order = {"tmpfs": 0, "bind": 1, "link": 1}
    ops.sort(key=lambda op: (op[1].count(os.sep), order[op[0]], op[1]))
    return {"ops": ops, "sys_path": sys_path}
