"""How much memory this process may still take, and a check before allocations that scale with
user input (a batch of images, a KV cache at `--context`, an n-gram table): one line saying the
figure and what to do, instead of the kernel's OOM killer or a MemoryError deep in numpy.

Available = the smaller of the system's available memory (Linux: MemAvailable; macOS: free plus
inactive pages) and what an address-space limit (`ulimit -v`, RLIMIT_AS) leaves above the
process's current size. Unknown on other systems: the check then passes.
"""

from __future__ import annotations

import os
import sys

from edgegen.core.errors import EdgegenError

GIB = 2**30


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


class OutOfMemory(EdgegenError):
    """Work that cannot fit the memory this process may use."""


def available_bytes() -> int | None:
    """Bytes this process may still allocate, or None when the system does not say."""
    figures = [x for x in (_system_available(), _address_space_left()) if x is not None]
    return min(figures) if figures else None


def check_fits(need: int, what: str, hint: str) -> None:
    """Raise OutOfMemory when `need` bytes (an estimate, with its own margins) do not fit."""
    have = available_bytes()
    if have is not None and need > have:
        raise OutOfMemory(f"{what} needs about {_size(need)} but only {_size(have)} of memory is available; {hint}")


def out_of_memory_message(context: str = "") -> str:
    """The one line for a MemoryError that no estimate caught."""
    have = available_bytes()
    free = f" ({_size(have)} available now)" if have is not None else ""
    return (f"out of memory{' ' + context if context else ''}{free}; use a smaller input, batch, --context "
            "or --max-tokens, or a quantized model")


def _size(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB // 10 else f"{n / 2**20:.0f} MiB"


def _system_available() -> int | None:
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/meminfo", encoding="ascii") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    if sys.platform == "darwin":
        try:
            pages = os.sysconf("SC_PHYS_PAGES")  # no available-pages figure there; physical memory bounds it
            return int(pages) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return None
    return None


def _address_space_left() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    return max(soft - _virtual_size(), 0)


def _virtual_size() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
