"""What produced a run: bnexp's version and git state, the library versions and the device, for summary.json.

Git is asked with a short timeout and only about bnexp's own checkout; anything that goes wrong there (no git, not
a checkout, a slow disk) gives None, never a failed run.
"""
from __future__ import annotations

import functools
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

import bnexp

PACKAGE_ROOT = Path(bnexp.__file__).resolve().parents[1]  # the checkout's root when run from one


def git_state(root: Path, timeout_s: float = 2.0) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout whose top level is `root`, or (None, None) if it is not one.

    Dirty means tracked files differ from the commit; untracked files (run outputs) do not count."""
    def git(*args) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=timeout_s,
                              check=True).stdout.strip()

    try:
        # a package installed into some other repository's tree must not report that repository
        if Path(git("rev-parse", "--show-toplevel")).resolve() != Path(root).resolve():
            return None, None
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, None


@functools.cache
def _package_git_state() -> tuple[str | None, bool | None]:
    # once per process: the code a process runs is what it imported, whatever the checkout does later
    return git_state(PACKAGE_ROOT)


def device_name(device: str | torch.device | None = None) -> str:
    """The name of the device a run with `device=` (auto, cpu, cuda, cuda:N) trains on."""
    kind = str(device or "auto")
    if kind in ("auto", "cuda") or kind.startswith("cuda:"):
        if torch.cuda.is_available():
            try:
                return torch.cuda.get_device_name(None if kind == "auto" else kind)
            except (RuntimeError, AssertionError, ValueError):  # e.g. cuda:7 on a one-GPU machine
                return kind
    return f"CPU ({_cpu_model() or platform.machine() or 'unknown'})"


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or None


def _triton_version() -> str | None:
    if "triton" in sys.modules:  # whatever distribution it came from
        return getattr(sys.modules["triton"], "__version__", None)
    try:
        return metadata.version("triton")
    except metadata.PackageNotFoundError:
        return None


def provenance(device: str | torch.device | None = None) -> dict:
    commit, dirty = _package_git_state()
    return {"bnexp_version": bnexp.__version__, "git_commit": commit, "git_dirty": dirty,
            "python": platform.python_version(), "torch": str(torch.__version__), "triton": _triton_version(),
            "cuda": torch.version.cuda, "device": device_name(device)}
