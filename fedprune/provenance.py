"""What produced a result: versions, the code's commit, the command line, threads and device.

Recorded in every results.json record and as MLflow tags, so a number in a table can be traced
back to the code and settings that made it.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path
from typing import Any


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the checkout fedprune runs from (``+dirty`` with local changes), if any."""
    where = path or Path(__file__).resolve().parent.parent
    if not (where / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], timeout=5,
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain",
                                "--untracked-files=no"], timeout=5, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def provenance(threads: int, argv: list[str] | None = None) -> dict[str, Any]:
    """The environment of this process (the bench adds the device its runs use)."""
    import torch

    from fedprune.plugins import version

    return {
        "fedprune": version(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "command": " ".join(argv if argv is not None else sys.argv),
        "threads": threads,
    }
