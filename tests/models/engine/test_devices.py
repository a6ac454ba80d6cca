"""Device names resolve to torch devices, and precisions (`auto` too) to fp32 or bf16."""

from __future__ import annotations

import pytest
import torch

from models.engine.devices import CPUINFO, PRECISIONS, cpu_flags, resolve_device, resolve_precision


def test_device_resolution() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="device must be one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


# Excerpts of /proc/cpuinfo: Linux writes one block per processor, `flags` among its lines
# (and, on Intel, a `vmx flags` line that is not the CPU's feature flags).
ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512vl

processor\t: 1
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512vl
"""
SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu avx2 avx512f avx512bw amx_bf16 amx_tile amx_int8
vmx flags\t: vnmi preemption_timer
"""
SKYLAKE_X = """processor\t: 0
model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
flags\t\t: fpu avx2 avx512f avx512bw avx512vl avx512_vnni
vmx flags\t: avx512_bf16
"""
GRAVITON = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 bf16
"""
CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        (ZEN4, "bf16"),
        (SAPPHIRE_RAPIDS, "bf16"),
        (SKYLAKE_X, "fp32"),  # AVX-512 without bf16 instructions; vmx flags don't count
        (GRAVITON, "fp32"),  # not x86: bf16 there is not measured, so fp32
        ("", "fp32"),
    ],
    ids=["avx512_bf16", "amx_bf16", "avx512-only", "arm", "empty"],
)
def test_auto_is_bf16_where_the_cpu_does_bf16_natively(cpuinfo: str, expected: str) -> None:
    assert resolve_precision("auto", CPU, cpuinfo=cpuinfo) == expected


@pytest.mark.parametrize(
    ("family", "expected"),
    [("demucs", "bf16"), ("mdx23c", "fp32"), ("bs_roformer", "fp32"), ("scnet", "fp32")],
)
def test_auto_is_bf16_only_for_families_that_keep_their_stems_in_it(
    family: str, expected: str
) -> None:
    assert resolve_precision("auto", CPU, family=family, cpuinfo=ZEN4) == expected
    # Without native bf16 no family gets it; a named precision is kept for every family.
    assert resolve_precision("auto", CPU, family=family, cpuinfo=SKYLAKE_X) == "fp32"
    assert resolve_precision("bf16", CPU, family=family, cpuinfo=SKYLAKE_X) == "bf16"


@pytest.mark.parametrize("cpuinfo", [ZEN4, SKYLAKE_X])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_named_precision_is_kept_whatever_the_cpu(cpuinfo: str, precision: str) -> None:
    assert resolve_precision(precision, CPU, cpuinfo=cpuinfo) == precision


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match=r"precision must be one of \('auto', 'fp32', 'bf16'\)"):
        resolve_precision("fp16", CPU, cpuinfo=ZEN4)


def test_auto_reads_this_machine_s_cpuinfo() -> None:
    flags = cpu_flags(CPUINFO.read_text()) if CPUINFO.is_file() else frozenset()
    expected = "bf16" if {"avx512_bf16", "amx_bf16"} & flags else "fp32"
    assert resolve_precision("auto", CPU) == expected


def test_auto_on_cuda_follows_native_bf16_there() -> None:
    native = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8
    assert resolve_precision("auto", torch.device("cuda")) == ("bf16" if native else "fp32")


def test_cpu_flags_are_the_first_processor_s() -> None:
    assert cpu_flags(SAPPHIRE_RAPIDS) == {
        "fpu", "avx2", "avx512f", "avx512bw", "amx_bf16", "amx_tile", "amx_int8"
    }  # fmt: skip
    assert cpu_flags(GRAVITON) == frozenset()
