"""The Numba cache: works from a read-only install, can be switched off, never goes stale."""

import dis
import importlib
import json
import os
import pkgutil
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from numba.core.registry import CPUDispatcher

import fastcnn
import fastcnn.kernels
from fastcnn.kernels import _jit

# Every module of the kernels package, its subpackages included, found rather than
# listed, so a new one is checked.
KERNEL_MODULES = [importlib.import_module(m.name)
                  for m in pkgutil.walk_packages(fastcnn.kernels.__path__, "fastcnn.kernels.")
                  if not m.name.rsplit(".", 1)[1].startswith("_")]


def jitted_calls(dispatcher):
    """Jitted functions that `dispatcher` refers to through its module globals."""
    code = dispatcher.py_func.__code__
    names = {ins.argval for ins in dis.get_instructions(code) if ins.opname == "LOAD_GLOBAL"}
    g = dispatcher.py_func.__globals__
    return [g[n] for n in names if isinstance(g.get(n), CPUDispatcher)]


def test_every_kernel_module_is_found():
    names = {m.__name__ for m in KERNEL_MODULES}
    assert {"fastcnn.kernels.conv.flat", "fastcnn.kernels.conv.taps", "fastcnn.kernels.loss",
            "fastcnn.kernels.optim", "fastcnn.kernels.dense"} <= names


@pytest.mark.parametrize("module", [m for m in KERNEL_MODULES
                                    if any(isinstance(v, CPUDispatcher) for v in vars(m).values())],
                         ids=lambda m: m.__name__)
def test_kernels_are_cached_against_the_whole_package(module):
    # Numba validates a cached function against its own file only: a cached kernel calling
    # a helper from another module would keep the old helper's code after an edit there,
    # unless its stamp covers that module too. _jit stamps every kernel with the package.
    kernels = [v for v in vars(module).values() if isinstance(v, CPUDispatcher)
               and v.py_func.__module__ == module.__name__]
    for k in kernels:
        expected = "PackageFunctionCache" if _jit.CACHE else "NullCache"
        assert type(k._cache).__name__ == expected, k.py_func.__name__
        for callee in jitted_calls(k):
            assert callee.py_func.__module__.startswith("fastcnn.kernels."), (
                f"{k.py_func.__name__} calls {callee.py_func.__module__}."
                f"{callee.py_func.__name__}, outside the package its cache is stamped with")


def test_no_kernel_module_is_left_without_kernels():
    for module in KERNEL_MODULES:
        if module.__name__ == "fastcnn.kernels.conv":
            continue  # the dispatch: plain Python over its algorithm modules
        assert any(isinstance(v, CPUDispatcher) for v in vars(module).values()), module.__name__


PROBE = textwrap.dedent("""
    import json, numpy as np
    from fastcnn.kernels import pool
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    y, arg = pool.maxpool2d_forward(x, 2, 2, 2, 2)
    pool.maxpool2d_backward(y, arg, 8, 8)
    k = pool.maxpool2d_forward
    print(json.dumps({"hits": sum(k.stats.cache_hits.values()),
                      "misses": sum(k.stats.cache_misses.values()),
                      "cache": type(k._cache).__name__, "file": pool.__file__}))
""")


def run_probe(env, cwd, read_only=None):
    """Run PROBE; with read_only, that folder is read-only for the child, even for root."""
    cmd = [sys.executable, "-c", PROBE]
    if read_only is not None and os.geteuid() == 0:
        # Root ignores file modes: give the child a private read-only bind mount instead.
        ro = shlex.quote(str(read_only))
        cmd = ["unshare", "-m", "sh", "-c",
               f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && exec "
               + " ".join(shlex.quote(c) for c in cmd)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def clean_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "FASTCNN_"))}
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "xdg"), **extra)
    return env


def test_cache_off_switch(tmp_path):
    env = clean_env(tmp_path, FASTCNN_NUMBA_CACHE="0", NUMBA_CACHE_DIR=str(tmp_path / "nc"))
    out = run_probe(env, tmp_path)
    assert out["cache"] == "NullCache" and out["hits"] == 0
    assert not (tmp_path / "nc").exists()


def test_cache_works_from_read_only_install(tmp_path):
    """Install a copy of the package, make it unwritable, and run it twice."""
    site = tmp_path / "site"
    pkg = Path(fastcnn.__file__).parent
    shutil.copytree(pkg, site / "fastcnn", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(Path(fastcnn.kernels.__file__).parent, site / "fastcnn" / "kernels",
                    ignore=shutil.ignore_patterns("__pycache__"))
    if os.geteuid() == 0 and shutil.which("unshare") is None:
        pytest.skip("running as root without unshare: cannot make a read-only folder")
    for p in [site, *site.rglob("*")]:
        os.chmod(p, 0o555 if p.is_dir() else 0o444)
    env = clean_env(tmp_path, PYTHONPATH=str(site))
    try:
        first = run_probe(env, tmp_path, read_only=site)
        second = run_probe(env, tmp_path, read_only=site)
    finally:
        for p in [site, *site.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
    assert first["file"].startswith(str(site))
    assert first["misses"] >= 1
    assert second["hits"] >= 1 and second["misses"] == 0  # loaded from the user cache
    assert not list(site.rglob("*.nbi")), "wrote into the read-only install"
    assert list((tmp_path / "xdg").rglob("*.nbi")) or list((tmp_path / "home").rglob("*.nbi"))


STALE_PROBE = textwrap.dedent("""
    import json, numpy as np
    from fastcnn.kernels import conv
    from fastcnn.kernels.conv import flat
    x = np.ones((1, 1, 6, 6), dtype=np.float32)
    y = conv.conv2d_forward(x, np.ones((1, 1, 3, 3), dtype=np.float32),
                            np.zeros(1, dtype=np.float32), 1, 1, 0, 0, 4, 4, False)
    k = flat._forward_s1_task
    print(json.dumps({"hits": sum(k.stats.cache_hits.values()),
                      "misses": sum(k.stats.cache_misses.values()), "y": float(y[0, 0, 0, 0])}))
""")


def test_an_edit_to_a_helper_module_recompiles_its_callers(tmp_path):
    """flat's kernel inlines taps' loops: editing taps.py alone must not leave the cached
    kernel with the old loops."""
    site = tmp_path / "site"
    shutil.copytree(Path(fastcnn.__file__).parent, site / "fastcnn",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    shutil.copytree(Path(fastcnn.kernels.__file__).parent, site / "fastcnn" / "kernels",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    env = clean_env(tmp_path, PYTHONPATH=str(site))

    def probe():
        proc = subprocess.run([sys.executable, "-c", STALE_PROBE], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    first, second = probe(), probe()
    assert first["misses"] == 1 and second == {"hits": 1, "misses": 0, "y": 9.0}
    taps = site / "fastcnn" / "kernels" / "conv" / "taps.py"
    # The edit a developer might make: every tap now counts twice.
    text = taps.read_text()
    edited = text.replace("acc[p] += w0 * s0[p] + w1 * s1[p] + w2 * s2[p]\n",
                          "acc[p] += 2 * (w0 * s0[p] + w1 * s1[p] + w2 * s2[p])\n", 1)
    assert edited != text
    taps.write_text(edited)
    third = probe()
    assert third["misses"] == 1 and third["y"] == 18.0
