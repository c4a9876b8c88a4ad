"""LLVM instructions Numba does not expose: bitcasts, half-to-float, and a prefetch.

**bf16 widened in registers.** A bf16 number is the top 16 bits of a float32, so
widening is a zero-extend, a shift and a reinterpretation of the 32 bits as a
float. NumPy spells the last step ``array.view(np.float32)``; inside a Numba loop
we need it per element, without a temporary array, so `bf16_to_f32` emits the
single LLVM ``bitcast`` instruction. LLVM then vectorises the loop (vpmovzxwd +
vpslld + vfmadd on x86).

**f16 widened in registers.** Numba has no float16 type, so `f16_to_f32` takes
the 16 bits, bitcasts them to LLVM's ``half`` and extends to ``float`` (vcvtph2ps).

**Software prefetch.** A decode step streams every weight once; the hardware
prefetcher alone leaves a core short of memory requests in flight. `prefetch(address)`
(``llvm.prefetch``: read, keep in every cache level, data cache; prefetcht0 on
x86) asks for a cache line a few kilobytes ahead of the one being multiplied. On a
Mistral-7B MLP matrix the bf16 decode kernel streamed about 55 GB/s with it and 26
without on an AVX-512 Xeon; on a 2-core AVX2 EPYC the one-row kernel
(`kernels.stream`, whose schedules `kernels.schedule` measures per machine) was faster without it. It changes no value, so it has
no reference.

Each widening has its NumPy reference here (`*_ref`, on whole arrays), and
tests/test_kernels_linear.py holds the Numba twin to it on all 65536 bit patterns.
"""

from __future__ import annotations

import numpy as np
from llvmlite import binding, ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic


def bf16_to_f32_ref(bits: np.ndarray) -> np.ndarray:
    """Raw bf16 bits (uint16) widened to float32, exactly: the bits moved to the high half."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f16_to_f32_ref(bits: np.ndarray) -> np.ndarray:
    """float16 numbers given as their uint16 bits, widened to float32 (exactly)."""
    return bits.view(np.float16).astype(np.float32)


# the intrinsic's name carries the pointer type: "p0" with LLVM's opaque pointers (15+)
_PREFETCH = "llvm.prefetch.p0" if binding.llvm_version_info[0] >= 15 else "llvm.prefetch.p0i8"


@intrinsic
def bits_to_f32(typingctx, bits):
    """The float32 whose bit pattern is the uint32 `bits` (Numba only)."""
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def f16_to_f32(typingctx, bits):
    """The float32 value of one float16 number given as its uint16 bits (Numba only;
    the reference: `f16_to_f32_ref`).

    Numba has no float16 type; LLVM has: reinterpret the bits as ``half`` and
    extend exactly to ``float`` (one vcvtph2ps per vector on x86).
    """
    sig = types.float32(types.uint16)

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return sig, codegen


@njit(inline="always")
def bf16_to_f32(bits):
    """The float32 value of one bf16 number given as its uint16 bits (Numba only;
    the reference: `bf16_to_f32_ref`)."""
    return bits_to_f32(np.uint32(bits) << np.uint32(16))


@intrinsic
def prefetch(typingctx, address):
    """Hint the CPU to bring the cache line at integer `address` toward L1 (Numba only)."""
    sig = types.void(types.intp)

    def codegen(context, builder, signature, args):
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            _PREFETCH)
        # (address, rw = 0 read, locality = 3: into L1 (prefetcht0; the non-temporal 0 measured
        # slower here), cache type = 1 data)
        builder.call(fn, [builder.inttoptr(args[0], i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen
