"""Keep freed activation memory in the process, so a forward pass does not page-fault it back.

PyTorch's CPU tensors come from the C library's ``malloc``.  glibc gives large freed blocks
back to the kernel (``munmap`` above ``M_MMAP_THRESHOLD``, heap trimming above
``M_TRIM_THRESHOLD``), so an inference call can map its activations afresh, and the kernel
zero-fills each 4 KiB page on first touch.  Measured in a fresh process on a 2-core KVM guest
(CIFAR ResNet56 Struct-A, batch 32, ``benchmarks/allocator_effect.py``): 6,528 page faults
per call dense and 6,400 decomposed, 22 % of either's time.  PyTorch's CPU performance guide
and Intel's ``torch.backends.xeon.run_cpu`` launcher swap in jemalloc or TCMalloc for the same
reason; :func:`retain_freed_memory` gets the same effect from glibc itself, in-process, with
no preload.  ONNX Runtime's arena allocator already keeps its memory.

It changes process-wide allocator settings (there is no "undo" in glibc), so nothing in
structconv calls it implicitly: ``structconv bench`` calls it for both models alike unless
``--malloc system`` is given, and a deployment calls it once at start-up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["retain_freed_memory", "glibc_malloc_available"]

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc caps M_MMAP_THRESHOLD at HEAP_MAX_SIZE / 2 = 32 MiB on 64-bit systems; blocks above it
# are always mapped.
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024 if ctypes.sizeof(ctypes.c_void_p) == 8 else 512 * 1024


def _libc():
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


def glibc_malloc_available() -> bool:
    """True where the process runs on glibc and its ``mallopt`` can be called."""
    return _libc() is not None


def retain_freed_memory(*, mmap_threshold: int = _MMAP_THRESHOLD_MAX, trim_threshold: int = 1 << 30) -> bool:
    """Make glibc keep freed blocks for reuse instead of returning them to the kernel.

    Blocks up to ``mmap_threshold`` bytes (at most 32 MiB, glibc's cap) come from the heap
    instead of fresh mappings, and the heap is trimmed only when more than ``trim_threshold``
    bytes are free at its top.  The memory a forward pass frees is then reused by the next
    one: the process keeps its peak working set (what an arena allocator such as jemalloc or
    ONNX Runtime's does), and page faults per call drop to about zero.  Process-wide and
    permanent.  Returns False, changing nothing, where glibc's ``mallopt`` is not available
    (macOS, Windows, musl); raises ``ValueError`` for values glibc would reject.
    """
    if not 0 < mmap_threshold <= _MMAP_THRESHOLD_MAX:
        raise ValueError(
            f"retain_freed_memory: mmap_threshold={mmap_threshold} must be in (0, {_MMAP_THRESHOLD_MAX}] bytes "
            "(glibc's maximum)"
        )
    if not 0 <= trim_threshold < 2**31:
        raise ValueError(f"retain_freed_memory: trim_threshold={trim_threshold} must be in [0, 2**31) bytes")
    libc = _libc()
    if libc is None:
        return False
    # mallopt returns 1 on success, 0 on error
    ok = libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1 and ok
    return ok
