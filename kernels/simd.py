"""Sixteen lanes in a register: the vector type the streaming kernels are written in (Numba only).

A decode step's dot products must give a row the same bits alone or in a batch, whatever
schedule a machine runs (`kernels.stream`). Left to itself, LLVM vectorises a float sum
only when it may reassociate it (``fastmath``), and then it picks the vector width and the
number of partial sums per loop, differently for a loop with one accumulator and a loop
with four: the bits of a row then depended on its neighbours on some CPUs. So the kernels
spell the order out. `Lanes` is sixteen numbers of one dtype held as one LLVM vector
(``<16 x float>``: one zmm register with AVX-512, two ymm with AVX2), and every operation
here is one exact IEEE operation per lane, emitted without fast-math flags, so LLVM may not
change a single rounding:

    acc = fma(w, x, acc)      # acc[l] = round(w[l] * x[l] + acc[l]), l = 0..15 (llvm.fma: one rounding)
    s = hsum(acc)             # ((acc[0:8] + acc[8:16]) -> 4 -> 2 -> 1): a fixed tree

A dot product over n weights is then 16 sums in lane order (lane l takes the weights
l, l + 16, l + 32, ...), added by `hsum`'s tree: the same operations for a row alone, in a
batch, on any thread, with any number of weight rows or x rows per iteration. Which
instructions implement them (zmm, ymm pairs, scalar) is LLVM's business and does not
change a bit.

Integer lanes (int32) decode ggml's packed codes: `bytes16` loads 16 bytes, and the
operators ``& | << >> + - *`` act lane by lane as NumPy's do on int32 arrays (a scalar
operand is broadcast); `to_f32` converts them (`half_to_f32` reads them as float16 bit
patterns: FP8's codes); float lanes take ``* + -`` (each one rounding, as NumPy). So a block
decoder written with them computes, lane by lane, the float32 expression its NumPy reference
(`kernels.quant`, `kernels.fp8`) computes, bit for bit.

The NumPy meaning of each function is in its docstring: that is its reference; the tests
hold every decoder built from them to `kernels.quant.dequantize` bit for bit and every
kernel to `np.dot`.
"""

from __future__ import annotations

import operator

from llvmlite import binding, ir
from numba import types
from numba.core import cgutils, errors
from numba.extending import intrinsic, models, overload, register_model

N = 16  # lanes
_P0 = "p0" if binding.llvm_version_info[0] >= 15 else "p0i8"  # an intrinsic's pointer suffix (opaque pointers: p0)


class Lanes(types.Type):
    """Sixteen numbers of one dtype (float32, float64 or int32) in one LLVM vector."""

    def __init__(self, dtype):
        self.dtype = dtype
        super().__init__(name=f"Lanes({dtype})")


@register_model(Lanes)
class _LanesModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(dmm.lookup(fe_type.dtype).get_value_type(), N))


_I32, _F32, _F64 = ir.IntType(32), ir.FloatType(), ir.DoubleType()


def _vec(element) -> ir.VectorType:
    return ir.VectorType(element, N)


def _pointer(context, builder, arrty, arr, index, element):
    """Address of arr[index], as a pointer to `element` (a C-contiguous 1-d array)."""
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [index]), element.as_pointer())


def _widen(builder, v, arr_dtype, out):
    """Lanes loaded from an array of `arr_dtype` as float lanes of LLVM type `out`: bf16 bits
    (uint16) moved to the high half of a float32, f16 bits (int16) extended as half floats,
    f32 / f64 extended or rounded as NumPy's astype does."""
    if arr_dtype == types.uint16:
        v = builder.bitcast(builder.shl(builder.zext(v, _vec(_I32)), ir.Constant(_vec(_I32), 16)), _vec(_F32))
    elif arr_dtype == types.int16:
        v = builder.fpext(builder.bitcast(v, _vec(ir.HalfType())), _vec(_F32))
    if v.type == out:
        return v
    return builder.fpext(v, out) if out.element == _F64 else builder.fptrunc(v, out)


@intrinsic
def load(typingctx, arr, i, like):
    """arr[i:i + 16] as float lanes of `like`'s dtype (float32 or float64): a 1-d contiguous array of
    f32, f64, bf16 bits (uint16) or f16 bits (int16), widened exactly (f64 -> f32 rounds, as astype)."""
    out = Lanes(like)

    def codegen(context, builder, sig, args):
        element = context.get_value_type(sig.args[0].dtype)
        v = builder.load(_pointer(context, builder, sig.args[0], args[0], args[1], _vec(element)), align=1)
        return _widen(builder, v, sig.args[0].dtype, context.get_value_type(out))

    return out(arr, i, like), codegen


@intrinsic
def load_first(typingctx, arr, i, n, like):
    """`load` of the n < 16 numbers arr[i:i + n], the other lanes 0 (the end of a row; reads
    nothing past it)."""
    out = Lanes(like)

    def codegen(context, builder, sig, args):
        element = context.get_value_type(sig.args[0].dtype)
        ptr = _pointer(context, builder, sig.args[0], args[0], args[1], _vec(element))
        n = builder.trunc(args[2], _I32)
        mask = builder.icmp_signed("<", ir.Constant(_vec(_I32), list(range(N))),
                                   builder.shuffle_vector(builder.insert_element(ir.Constant(_vec(_I32), None), n,
                                                                                 ir.Constant(_I32, 0)),
                                                          ir.Constant(_vec(_I32), None), ir.Constant(_vec(_I32), [0] * N)))
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_vec(element), [_vec(element).as_pointer(), _I32, mask.type, _vec(element)]),
            f"llvm.masked.load.v{N}{'i16' if isinstance(element, ir.IntType) else ('f32' if element == _F32 else 'f64')}.{_P0}")
        v = builder.call(fn, [ptr, ir.Constant(_I32, 1), mask, ir.Constant(_vec(element), None)])
        return _widen(builder, v, sig.args[0].dtype, context.get_value_type(out))

    return out(arr, i, n, like), codegen


@intrinsic
def store(typingctx, arr, i, v):
    """arr[i:i + 16] = v (an array of v's dtype)."""

    def codegen(context, builder, sig, args):
        builder.store(args[2], _pointer(context, builder, sig.args[0], args[0], args[1], args[2].type), align=1)
        return context.get_dummy_value()

    return types.void(arr, i, v), codegen


def _byte_lanes(widen: str):
    """The typing function of an intrinsic reading arr[i:i + 16] of a uint8 array as int32 lanes,
    each byte widened by `widen`: "zext" (as unsigned) or "sext" (as int8)."""

    def typer(typingctx, arr, i):
        def codegen(context, builder, sig, args):
            v = builder.load(_pointer(context, builder, sig.args[0], args[0], args[1], _vec(ir.IntType(8))), align=1)
            return getattr(builder, widen)(v, _vec(_I32))

        return Lanes(types.int32)(arr, i), codegen

    return typer


bytes16 = intrinsic(_byte_lanes("zext"))  # arr[i:i + 16] of a uint8 array as int32 lanes (np.int32(arr[i:i + 16]))
int8x16 = intrinsic(_byte_lanes("sext"))  # the same bytes read as int8 (arr[i:i + 16].view(np.int8)), in int32 lanes


@intrinsic
def lane_index(typingctx):
    """np.arange(16, dtype=np.int32)."""

    def codegen(context, builder, sig, args):
        return ir.Constant(_vec(_I32), list(range(N)))

    return Lanes(types.int32)(), codegen


@intrinsic
def zeros(typingctx, like):
    """np.zeros(16, like's dtype)."""
    out = Lanes(like)

    def codegen(context, builder, sig, args):
        return ir.Constant(context.get_value_type(out), None)

    return out(like), codegen


@intrinsic
def to_f32(typingctx, v):
    """Int32 lanes as float32 (exact for |v| < 2**24, as every ggml code is)."""

    def codegen(context, builder, sig, args):
        return builder.sitofp(args[0], _vec(_F32))

    return Lanes(types.float32)(v), codegen


@intrinsic
def half_to_f32(typingctx, v):
    """Int32 lanes holding float16 bit patterns (in their low 16 bits) as the float32 values of
    those half floats (exact, as vcvtph2ps widens them)."""

    def codegen(context, builder, sig, args):
        half = builder.bitcast(builder.trunc(args[0], _vec(ir.IntType(16))), _vec(ir.HalfType()))
        return builder.fpext(half, _vec(_F32))

    return Lanes(types.float32)(v), codegen


@intrinsic
def scalar_like(typingctx, s, like):
    """The scalar s in like's dtype (a float32 scale beside float64 lanes: exact)."""

    def codegen(context, builder, sig, args):
        return context.cast(builder, args[0], sig.args[0], sig.args[1])

    return like(s, like), codegen


@intrinsic
def widen(typingctx, v, like):
    """Float32 lanes in `like`'s dtype (float64: exact)."""
    out = Lanes(like)

    def codegen(context, builder, sig, args):
        return _widen(builder, args[0], types.float32, context.get_value_type(out))

    return out(v, like), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c rounded once, lane by lane (llvm.fma: IEEE fusedMultiplyAdd on every CPU)."""

    def codegen(context, builder, sig, args):
        t = args[0].type
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(t, [t, t, t]),
                                            f"llvm.fma.v{N}f{32 if t.element == _F32 else 64}")
        return builder.call(fn, args)

    return a(a, a, a), codegen


@intrinsic
def hsum(typingctx, v):
    """The sum of the 16 lanes in a fixed tree: the first 8 lanes plus the last 8, then 4 + 4,
    2 + 2, 1 + 1 (s = v[:8] + v[8:]; s = s[:4] + s[4:]; ...)."""

    def codegen(context, builder, sig, args):
        x, n = args[0], N
        while n > 1:
            n //= 2
            low = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(_I32, n), list(range(n))))
            high = builder.shuffle_vector(x, x, ir.Constant(ir.VectorType(_I32, n), list(range(n, 2 * n))))
            x = builder.fadd(low, high)
        return builder.extract_element(x, ir.Constant(_I32, 0))

    return v.dtype(v), codegen


@intrinsic
def stack_array(typingctx, n, like):
    """np.empty(n, like's dtype) in the kernel's stack frame (n a constant): accumulators that
    LLVM keeps in registers when every access is a whole `Lanes` at a constant offset."""
    if not isinstance(n, types.IntegerLiteral):
        raise errors.RequireLiteralValue(n)
    count, arrty = n.literal_value, types.Array(like, 1, "C")

    def codegen(context, builder, sig, args):
        element = context.get_value_type(like)
        with builder.goto_entry_block():
            data = builder.alloca(ir.ArrayType(element, count))
        array = context.make_array(arrty)(context, builder)
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(element))
        context.populate_array(array, data=builder.bitcast(data, element.as_pointer()),
                               shape=cgutils.pack_array(builder, [context.get_constant(types.intp, count)]),
                               strides=cgutils.pack_array(builder, [itemsize]), itemsize=itemsize, meminfo=None)
        return array._getvalue()

    return arrty(n, like), codegen


# ----------------------------------------------------------------------------- operators, lane by lane
_INT_OPS = {operator.and_: "and_", operator.or_: "or_", operator.lshift: "shl", operator.rshift: "ashr",
            operator.add: "add", operator.sub: "sub", operator.mul: "mul"}
_FLOAT_OPS = {operator.add: "fadd", operator.sub: "fsub", operator.mul: "fmul"}


def _operand(context, builder, value, ty, element):
    """A Lanes value as it is; a scalar cast to the lanes' element type and broadcast."""
    if isinstance(ty, Lanes):
        return value
    scalar = context.cast(builder, value, ty, types.int32 if isinstance(element, ir.IntType) else
                          (types.float32 if element == _F32 else types.float64))
    return builder.shuffle_vector(builder.insert_element(ir.Constant(_vec(element), None), scalar, ir.Constant(_I32, 0)),
                                  ir.Constant(_vec(element), None), ir.Constant(_vec(_I32), [0] * N))


def _lanes_of(a, b):
    lanes = a if isinstance(a, Lanes) else b
    other = b if lanes is a else a
    if isinstance(other, Lanes) and other != lanes:
        raise errors.TypingError(f"{a} and {b}: lanes of two dtypes")
    if not isinstance(other, (Lanes, types.Integer, types.Float)):
        raise errors.TypingError(f"{other} is not a number")
    if isinstance(other, types.Float) and other != lanes.dtype:  # no silent rounding of a float64 scalar
        raise errors.TypingError(f"a {other} scalar with {lanes}: cast it to {lanes.dtype} first")
    return lanes


def _binary(op):
    @intrinsic
    def lanes_op(typingctx, a, b):
        lanes = _lanes_of(a, b)
        is_int = isinstance(lanes.dtype, types.Integer)
        if (op in _INT_OPS) if is_int else (op in _FLOAT_OPS):
            def codegen(context, builder, sig, args):
                element = context.get_value_type(lanes).element
                x, y = (_operand(context, builder, v, t, element) for v, t in zip(args, sig.args))
                return getattr(builder, (_INT_OPS if is_int else _FLOAT_OPS)[op])(x, y)

            return lanes(a, b), codegen
        raise errors.TypingError(f"{op.__name__} is not defined on {lanes}")

    @overload(op)
    def lanes_overload(a, b):
        if isinstance(a, Lanes) or isinstance(b, Lanes):
            return lambda a, b: lanes_op(a, b)

    return lanes_op


for _op in set(_INT_OPS) | set(_FLOAT_OPS):
    _binary(_op)

