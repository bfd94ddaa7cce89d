"""What the bench scripts say about the machine they ran on (bench/ is on sys.path when a
script there runs)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2")


def cpu_flags() -> str:
    """The CPU flags that decide bf16 speed, as one string ("avx2" alone: no native bf16)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return " ".join(f for f in BF16_FLAGS if f in have) or "none of " + "/".join(
                    BF16_FLAGS
                )
    except OSError:
        pass
    return "unknown (no /proc/cpuinfo)"
