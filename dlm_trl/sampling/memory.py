"""Keep freed memory in the process instead of handing it back to the kernel after every step.

Every sampler step allocates tensors far above glibc's ``mmap`` threshold (MLP activations, the
block's vocabulary-sized logits), and glibc returns each one to the kernel when it is freed, so the
next step faults the same pages in again: on the embedded model one 256-row rollout spent half of its
time in the kernel on ~10 million minor page faults. :func:`keep_freed_memory` tells glibc to serve
large blocks from its heap and keep freed memory (``mallopt(M_MMAP_MAX, 0)`` and a high trim
threshold): the same rollout then takes thousands of faults, with identical output. The process
keeps its peak heap instead of shrinking after a large allocation is freed.

It is called by the recipes, ``dlm-trl eval`` and the benchmarks at start-up, changes nothing on
non-glibc systems, and is switched off with ``DLM_TRL_KEEP_FREED_MEMORY=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied: bool | None = None


def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Ask glibc to keep freed memory (module docstring). Returns whether it is in effect; idempotent."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("DLM_TRL_KEEP_FREED_MEMORY", "1").lower() in ("0", "false", "no", "off"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        mallopt = None
    if mallopt is None:
        return False
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
    return _applied


def minor_page_faults() -> int:
    """Minor page faults of this process so far (``getrusage``), to measure what the above saves."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


__all__ = ["keep_freed_memory", "minor_page_faults"]
