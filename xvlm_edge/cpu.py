"""What this CPU can do, detected at run time: never a property of one development box frozen into an artefact.

Machines of one kind differ (one has AVX2 without VNNI, the next AVX-512 with VNNI), and the choice that
depends on it most, whether INT8 weights use the full 8-bit range, is recorded with every export and
benchmark (`cpu_flags`) and can be overridden by the user.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

#: ISA extensions worth recording with an export or a benchmark (the ones INT8 and fp32 kernels dispatch on).
RECORDED_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "sve", "bf16",
)  # fmt: skip
#: Flags of an x86 integer dot-product instruction (VPDPBUSD) that accumulates u8 x s8 products in 32 bits.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.cache
def cpu_flags() -> tuple[str, ...]:
    """The `RECORDED_FLAGS` this CPU reports (Linux /proc/cpuinfo; empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    reported: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, aarch64
            reported.update(value.split())
    return tuple(f for f in RECORDED_FLAGS if f in reported)


def cpu_name() -> str:
    """The CPU's model name, as the OS reports it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def needs_reduced_range(flags: tuple[str, ...] | None = None) -> bool:
    """Whether INT8 weights should use 7 bits (`reduce_range`) on this CPU.

    On x86 without VNNI, ONNX Runtime's u8 x s8 kernels use VPMADDUBSW, whose int16 intermediate sum of two
    products saturates with full-range weights (onnxruntime's quantization docs); VNNI accumulates in int32
    and ARM's dot-product instructions do too, so there the full range is exact and more accurate.
    """
    flags = cpu_flags() if flags is None else flags
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
    return x86 and not any(f in flags for f in VNNI_FLAGS)


__all__ = ["RECORDED_FLAGS", "cpu_flags", "cpu_name", "needs_reduced_range"]
