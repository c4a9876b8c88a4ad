"""Reinterpreting bits inside Numba kernels: bf16 widened in registers.

A bf16 number is the top 16 bits of a float32, so widening is a zero-extend, a
shift and a reinterpretation of the 32 bits as a float. NumPy spells the last step
``array.view(np.float32)``; inside a Numba loop we need it per element, without a
temporary array, so `bf16_to_f32` emits the single LLVM ``bitcast`` instruction.
LLVM then vectorises the loop (vpmovzxwd + vpslld + vfmadd on x86).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def bits_to_f32(typingctx, bits):
    """The float32 whose bit pattern is the uint32 `bits` (Numba only)."""
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@njit(inline="always")
def bf16_to_f32(bits):
    """The float32 value of one bf16 number given as its uint16 bits (Numba only)."""
    return bits_to_f32(np.uint32(bits) << np.uint32(16))
