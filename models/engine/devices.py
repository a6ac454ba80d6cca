"""Where and in what precision the engine computes: device names, precisions, the context.

`auto` precision is bf16 where the hardware computes it natively and fp32 elsewhere. On the
CPU, native means the `avx512_bf16` or `amx_bf16` flag in /proc/cpuinfo. Torch's own
checks do not tell: `torch.backends.cpu.get_cpu_capability()` says `AVX512` with or without
bf16 instructions, and `torch.ops.mkldnn._is_mkldnn_bf16_supported()` is true on any
AVX-512 CPU, bf16 instructions or not (oneDNN then emulates them). On CUDA, native is compute
capability 8.0 or later (`torch.cuda.is_bf16_supported(including_emulation=False)`).

`auto` is also a choice per model family: bf16 only for the families whose stems stay
above 40 dB SDR from fp32's (`AUTO_BF16_FAMILIES`, from benchmarks/precision.py; the
README's "bf16 against fp32 on the CPU"), fp32 for the others wherever they run.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

PRECISIONS = ("fp32", "bf16")
REQUESTED_PRECISIONS = ("auto", *PRECISIONS)  # what a setting may name; `auto` is resolved
DEVICES = ("auto", "cpu", "cuda")
CPUINFO = Path("/proc/cpuinfo")
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# Families whose bf16 stems stayed above 40 dB SDR from their fp32 stems.
AUTO_BF16_FAMILIES = frozenset({"demucs"})


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else the CPU; `cuda` without a CUDA device is an error."""
    if name not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but no CUDA device is available")
    return torch.device(name)


def resolve_precision(
    requested: str,
    device: torch.device,
    *,
    family: str | None = None,
    cpuinfo: str | None = None,
) -> str:
    """The precision to compute in on `device`: fp32 and bf16 as asked; `auto` is bf16
    where `device` does bf16 natively and `family` (when given) is one of
    AUTO_BF16_FAMILIES, else fp32. `cpuinfo` is the text of /proc/cpuinfo (read when
    None)."""
    if requested not in REQUESTED_PRECISIONS:
        raise ValueError(f"precision must be one of {REQUESTED_PRECISIONS}, got {requested!r}")
    if requested != "auto":
        return requested
    if family is not None and family not in AUTO_BF16_FAMILIES:
        return "fp32"
    return "bf16" if native_bf16(device, cpuinfo=cpuinfo) else "fp32"


def native_bf16(device: torch.device, *, cpuinfo: str | None = None) -> bool:
    """Whether `device` computes bf16 in hardware rather than by emulation."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    if cpuinfo is None:
        cpuinfo = this_cpuinfo()
    return bool(cpu_flags(cpuinfo) & NATIVE_BF16_FLAGS)


@functools.cache
def this_cpuinfo() -> str:
    """This machine's /proc/cpuinfo, read once; empty where there is none (not Linux: no
    flags to go by, so fp32)."""
    try:
        return CPUINFO.read_text()
    except OSError:
        return ""


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first processor in /proc/cpuinfo's text (x86 `flags`)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@contextmanager
def precision_context(device: torch.device, precision: str) -> Iterator[None]:
    """fp32 as is; bf16 autocasts and, on CUDA, lets matmuls and convolutions use TF32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
