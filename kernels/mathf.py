"""exp, tanh and the logistic sigmoid of one float32, in arithmetic that vectorises.

`math.tanh` and `math.exp` compile to scalar libm calls, about 9 ns an element here, so a
tanh pass after a convolution cost as much as the convolution (bench/README.md,
*Activations after a convolution*). These are Cephes' single-precision algorithms (expf,
tanhf; S. L. Moshier) written with selects instead of branches, so that LLVM turns a
loop of them into AVX-512/AVX2 code. Measured over 25 million float32 inputs against
float64 NumPy (tests/test_activations.py keeps the bounds): exp32 within 1 ulp, tanh32
within 1.5 ulp, sigmoid32 within 2.5 ulp, including subnormal results; NaN gives NaN,
+-inf give the limits.

No fast-math flags: the vectorised body and the scalar remainder of a loop must round
alike (no FMA in one and not the other), or a result would depend on where a thread's
share of the loop ends, i.e. on the thread count.

`tanh` and `sigmoid` are the entry points: float32 gets the functions here, float64 the
exact libm ones (`math.tanh`, `math.exp`). Run as plain Python (NUMBA_DISABLE_JIT=1)
everything here runs as NumPy scalar code, with the same algorithm.
"""

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from ._jit import jit

F = np.float32
LOG2E = F(1.44269504088896341)
LN2_HI, LN2_LO = F(0.693359375), F(-2.12194440e-4)  # ln 2 = LN2_HI + LN2_LO, LN2_HI exact


def _float32_from_bits(i):
    """The float32 whose IEEE bits are the low 32 bits of the integer i."""
    return np.array(i, dtype=np.int64).astype(np.int32).view(np.float32)[()]


@intrinsic
def _float32_from_bits_intrinsic(typingctx, i):
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        bits = args[0]
        if i.bitwidth > 32:
            bits = builder.trunc(bits, ir.IntType(32))
        return builder.bitcast(bits, ir.FloatType())

    return types.float32(i), codegen


@overload(_float32_from_bits)
def _float32_from_bits_jit(i):
    return lambda i: _float32_from_bits_intrinsic(i)


@jit(inline="always")
def exp32(x):
    """e**x for a float32 x: Cephes' expf, with 2**n applied in two halves so that the
    results from -87.3 down to -103.9 come out subnormal rather than zero."""
    xc = min(max(x, F(-104.0)), F(89.0)) if x == x else F(0.0)  # no NaN into the int
    z = np.floor(xc * LOG2E + F(0.5))
    r = xc - z * LN2_HI - z * LN2_LO
    p = (((((F(1.9875691500e-4) * r + F(1.3981999507e-3)) * r + F(8.3334519073e-3)) * r
           + F(4.1665795894e-2)) * r + F(1.6666665459e-1)) * r + F(5.0000001201e-1)) * (r * r)
    p = p + r + F(1.0)
    n = np.int32(z)
    n1 = n >> 1
    # 2**n1 * 2**(n - n1): each half a normal float32 for n in [-150, 128].
    y = p * _float32_from_bits((n1 + 127) << 23) * _float32_from_bits((n - n1 + 127) << 23)
    return y if x == x else x


@jit(inline="always")
def tanh32(x):
    """tanh of a float32: Cephes' tanhf (an odd polynomial below 0.625, from exp above)."""
    a = abs(x)
    z = x * x
    small = ((((F(-5.70498872745e-3) * z + F(2.06390887954e-2)) * z - F(5.37397155531e-2)) * z
              + F(1.33314422036e-1)) * z - F(3.33332819422e-1)) * z * x + x
    big = F(1.0) - F(2.0) / (exp32(F(2.0) * min(a, F(44.0))) + F(1.0))  # 1 from 44 on
    big = big if x >= 0 else -big
    small = small if a != F(0.0) else x  # keeps the sign of -0.0
    return small if a < F(0.625) else (big if x == x else x)


@jit(inline="always")
def sigmoid32(x):
    """1 / (1 + e**-x) of a float32, from e**-|x| (never overflows)."""
    e = exp32(-abs(x))
    d = F(1.0) + e
    return F(1.0) / d if x >= 0 else (e / d if x == x else x)


def tanh(v):
    """tanh(v) in v's precision: tanh32 for a float32, libm for a float64."""
    return tanh32(v) if isinstance(v, np.float32) else math.tanh(v)


@jit(inline="always")
def _sigmoid64(v):
    if v >= 0:  # never e**x of a large positive x
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


def sigmoid(v):
    """The logistic sigmoid of v in v's precision, as `tanh`."""
    return sigmoid32(v) if isinstance(v, np.float32) else _sigmoid64(v)


@overload(tanh, inline="always")
def _tanh_jit(v):
    if v == types.float32:
        return lambda v: tanh32(v)
    return lambda v: math.tanh(v)


@overload(sigmoid, inline="always")
def _sigmoid_jit(v):
    if v == types.float32:
        return lambda v: sigmoid32(v)
    return lambda v: _sigmoid64(v)
