"""Optional native CPU kernels, compiled on first use.

A component with a faster C++ form of some torch computation ships the source next to its code
and asks `load` for it at the first call that could use it, never at import. The source is
compiled once per machine into torch's extension cache (``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``; about 10 s, then loaded in well under a second) and registers its
operators under ``torch.ops``. Building needs a C++ compiler and ``ninja`` (on ``PATH`` or the
``ninja`` pip package). Where either is missing, or the build fails, `load` warns once and
returns False, and the caller uses its pure-torch path, which must compute exactly the same
results. ``FEDPRUNE_NATIVE=0`` skips native kernels altogether (no build attempted, no warning).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

__all__ = ["available", "disabled", "load"]

_lock = threading.Lock()
_loaded: dict[str, bool] = {}
_off = threading.local()


def _enabled() -> bool:
    return os.environ.get("FEDPRUNE_NATIVE", "1") != "0" and not getattr(_off, "on", False)


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within the block (this thread only), `available` is False: the pure-torch paths run."""
    before = getattr(_off, "on", False)
    _off.on = True
    try:
        yield
    finally:
        _off.on = before


def available(name: str) -> bool:
    """Whether the kernels ``name`` were built and loaded (no build is attempted)."""
    return _enabled() and _loaded.get(name, False)


def _ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH; the pip package installs it next to Python,
    which is not on PATH when the interpreter is run by its full path."""
    if shutil.which("ninja") is not None:
        return
    try:
        import ninja  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def load(name: str, source: Path) -> bool:
    """Build (once per machine) and load the operators of ``source``; False where they cannot
    be had. Tried once per process: a failure warns once, later calls return False at once."""
    if not _enabled():
        return False
    done = _loaded.get(name)
    if done is not None:
        return done
    with _lock:
        if name in _loaded:
            return _loaded[name]
        try:
            # Its import warns, on every CPU-only machine, that no CUDA runtime was found.
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            import torch.utils.cpp_extension as cpp

            _ninja_on_path()
            cpp.load(name=name, sources=[str(source)], extra_cflags=["-O3"],
                     is_python_module=False, verbose=False)
            _loaded[name] = True
        except Exception as exc:  # noqa: BLE001 - any failure means: use the torch path
            _loaded[name] = False
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            warnings.warn(
                f"fedprune: native kernels {name!r} unavailable, using the pure-torch path "
                f"(same results, slower): {first}", RuntimeWarning, stacklevel=3,
            )
    return _loaded[name]
