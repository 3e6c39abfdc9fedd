"""The one persistent compilation cache: every executable is cached; which directory wins.

Each case runs in a fresh interpreter: JAX initializes its cache once per process, so a
test in this process would both see and disturb the other tests' settings.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import sys
import jax, jax.numpy as jnp
from zen_code_jax.parallel.compilation_cache import enable_compilation_cache
where = enable_compilation_cache(sys.argv[1], explicit=sys.argv[2] == "1")
jax.jit(lambda x: x * 3 + 1)(jnp.arange(4.0)).block_until_ready()  # compiles in ~ms
print(where)
"""


def _probe(path: Path, explicit: bool, env_dir: Path | None) -> Path:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if env_dir is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = str(env_dir)
    r = subprocess.run(
        [sys.executable, "-c", PROBE, str(path), "1" if explicit else "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip().splitlines()[-1])


def test_a_quick_program_is_cached_and_the_directory_precedence(tmp_path: Path) -> None:
    default, shared = tmp_path / "default", tmp_path / "shared"
    # A derived default: used, and even a program compiled in milliseconds lands in it.
    assert _probe(default, explicit=False, env_dir=None) == default
    assert any(default.iterdir()), "a quick program was not cached (threshold above 0 s?)"
    # JAX_COMPILATION_CACHE_DIR (an operator's shared cache) wins over a default ...
    assert _probe(default, explicit=False, env_dir=shared) == shared
    assert any(shared.iterdir())
    # ... but not over a path the user named (--compilation_cache_dir).
    named = tmp_path / "named"
    assert _probe(named, explicit=True, env_dir=shared) == named
    assert any(named.iterdir())
