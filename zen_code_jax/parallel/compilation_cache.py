"""JAX's persistent compilation cache, enabled one way for every entry point.

The same program compiles to the same executable, so a process that finds it on disk skips
XLA: every arm of an ablation after the first (arms differ in data, not in shapes), a rerun,
and a restarted server (which compiles every decode bucket before it listens).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

# Cache every executable, however quick its compilation. JAX's default (1 s) keeps a cache
# shared by unrelated programs from filling with cheap entries; ours is one directory per
# workdir (or per user for a bare server) holding a bounded set of programs (shape buckets
# x arms). What a restart or the next arm pays is the sum of many cheap compilations: the
# server's one decode program per bucket, evaluation's prompt buckets, each well under a
# second on small models. Training used 0.5 s and serving 0.0 s before this was one place;
# 0.0 s serves both (a cached executable is the same executable, so results are unchanged).
MIN_COMPILE_TIME_S = 0.0
ENV_VAR = "JAX_COMPILATION_CACHE_DIR"


def enable_compilation_cache(path: str | os.PathLike, *, explicit: bool = False) -> Path:
    """Persist compiled executables under `path`; returns the directory in use.

    `path` is a default derived from the run (e.g. WORKDIR/cache/jax) unless `explicit`
    (the user named it, e.g. a `--compilation_cache_dir` flag): JAX_COMPILATION_CACHE_DIR,
    when set, wins over a default (an operator's shared cache) but not over a named path.
    """
    env = os.environ.get(ENV_VAR)
    where = Path(env) if env and not explicit else Path(path)
    jax.config.update("jax_compilation_cache_dir", str(where))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
    return where
