"""scipy's one-sided Smirnov tail, ``scipy.special.smirnov(n, x)``, compiled (numba) for many
``(n, x)`` pairs at once, **bit for bit**.

The two-sided KS p-value of two large samples whose statistic is not small (scipy's
``kstwo.sf`` branch ``n x**2 >= 2.2``) is ``2 * smirnov(n, x)``. scipy evaluates it as the
Birnbaum-Tingey sum

    smirnov(n, x) = x * sum_{v=0}^{floor(n(1-x))} C(n, v) (x + v/n)**(v-1) (1 - x - v/n)**(n-v)

term by term in double-double arithmetic (``xsf/cephes/kolmogorov.h``, ``_smirnov``, with the
double-double operations of ``xsf/cephes/dd_real.h``): ~n terms, ~0.3 ms a value at
n ~ 900 through scipy's ufunc or its C function. This module replays that code operation by
operation, in the same order and with the same libm calls (``pow``, ``log``, ``log1p``,
``exp`` of the process's C library, as scipy's compiled code calls them), so every value
equals scipy's exactly (``tests/drift/test_smirnov.py`` compares them on the branches and on
random pairs). It is faster because it computes only the survival function (scipy's loop
also sums the density's terms, two double-double divisions a term), the exact product error
comes from one fused multiply-add instruction rather than a call to the C library's
``fma``, and the double-double helpers are inlined.

Not replayed: ``n > 1,000,000`` (:data:`MAX_N`), where scipy's closed-form approximation is
cheap: :func:`smirnov_sf` returns NaN there, and the KS p-values use scipy's function for it
(``pvalues._compiled_smirnov``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from mlx_plugins.drift_detectors._fused import _compiled

MAX_N = 1_000_000
"""scipy's ``SMIRNOV_MAX_COMPUTE_N``: above it scipy approximates; not replayed here."""

_SM_MAX_EXPONENT = 960
_SM_UPPER_MAX_TERMS = 3
_SM_UPPERSUM_MIN_N = 10
_MINLOG = -7.451332191019412076235245305675398106812e2  # log(2**-1075), cephes' MINLOG
_LN2 = 0.693147180559945309417232121458176568  # M_LN2
_EPSILON = 2.220446049250313e-16  # DBL_EPSILON
_EXPM1_P = (1.2617719307481059087798e-4, 3.0299440770744196129956e-2, 9.9999999999999999991025e-1)
_EXPM1_Q = (
    3.0019850513866445504159e-6,
    2.5244834034968410419224e-3,
    2.2726554820815502876593e-1,
    2.0000000000000000000897e0,
)


def _fma_intrinsic(typingctx: Any, a: Any, b: Any, c: Any) -> Any:  # pragma: no cover
    """``_fma(a, b, c)``: ``a * b + c`` rounded once (LLVM's ``llvm.fma.f64``: the processor's
    fused multiply-add, or the C library's ``fma`` where it has none), as ``std::fma``."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        double = ir.DoubleType()
        fnty = ir.FunctionType(double, [double, double, double])
        fn = builder.module.declare_intrinsic("llvm.fma", [double], fnty)
        return builder.call(fn, list(args))

    return sig, codegen


_fma = cast(Callable[[float, float, float], float], intrinsic(_fma_intrinsic))


def _inline(fn: Any) -> Any:
    return njit(inline="always", nogil=True, error_model="numpy")(fn)


# -- dd_real.h: a double-double is (hi, lo) ------------------------------------------------------
@_inline
def _quick_two_sum(a: float, b: float) -> tuple[float, float]:  # pragma: no cover - compiled
    s = a + b
    c = s - a
    return s, b - c


@_inline
def _two_sum(a: float, b: float) -> tuple[float, float]:  # pragma: no cover - compiled
    s = a + b
    c = s - a
    d = b - c
    e = s - c
    return s, (a - e) + d


@_inline
def _two_prod(a: float, b: float) -> tuple[float, float]:  # pragma: no cover - compiled
    p = a * b
    return p, _fma(a, b, -p)


@_inline
def _add(ah: float, al: float, bh: float, bl: float) -> tuple[float, float]:  # pragma: no cover
    """dd + dd (Briggs and Kahan's IEEE-style bound)."""
    s1, s2 = _two_sum(ah, bh)
    t1, t2 = _two_sum(al, bl)
    s2 += t1
    s1, s2 = _quick_two_sum(s1, s2)
    s2 += t2
    return _quick_two_sum(s1, s2)


@_inline
def _add_d(ah: float, al: float, b: float) -> tuple[float, float]:  # pragma: no cover
    """dd + double (and double + dd: the same exact error in either order)."""
    s1, s2 = _two_sum(ah, b)
    s2 += al
    return _quick_two_sum(s1, s2)


@_inline
def _d_sub(a: float, bh: float, bl: float) -> tuple[float, float]:  # pragma: no cover
    """double - dd."""
    s1, s2 = _two_sum(a, -bh)
    s2 -= bl
    return _quick_two_sum(s1, s2)


@_inline
def _mul(ah: float, al: float, bh: float, bl: float) -> tuple[float, float]:  # pragma: no cover
    """dd * dd."""
    p1, p2 = _two_prod(ah, bh)
    p2 += ah * bl + al * bh
    return _quick_two_sum(p1, p2)


@_inline
def _mul_d(ah: float, al: float, b: float) -> tuple[float, float]:  # pragma: no cover
    """dd * double (and double * dd)."""
    p1, e1 = _two_prod(ah, b)
    p2, e2 = _two_prod(al, b)
    return _quick_two_sum(p1, e2 + p2 + e1)


@_inline
def _div(ah: float, al: float, bh: float, bl: float) -> tuple[float, float]:  # pragma: no cover
    """dd / dd (and dd / double, double / dd, as dd / dd with a zero low part)."""
    q1 = ah / bh
    mh, ml = _mul_d(bh, bl, q1)
    rh, rl = _add(ah, al, -mh, -ml)
    q2 = rh / bh
    mh, ml = _mul_d(bh, bl, q2)
    rh, rl = _add(rh, rl, -mh, -ml)
    q3 = rh / bh
    q1, q2 = _quick_two_sum(q1, q2)
    return _add_d(q1, q2, q3)


@_inline
def _frexp(ah: float, al: float) -> tuple[float, float, int]:  # pragma: no cover - compiled
    man, exponent = math.frexp(ah)
    b1 = math.ldexp(al, -exponent)
    if abs(man) == 0.5 and man * b1 < 0:
        man *= 2
        b1 *= 2
        exponent -= 1
    return man, b1, exponent


@_inline
def _polevl(x: float, coef: tuple[float, ...]) -> float:  # pragma: no cover - compiled
    ans = coef[0]
    for c in coef[1:]:
        ans = ans * x + c
    return ans


@_inline
def _expm1(x: float) -> float:  # pragma: no cover - compiled
    """cephes' ``expm1`` (``xsf/cephes/unity.h``)."""
    if not math.isfinite(x):
        if math.isnan(x) or x > 0:
            return x
        return -1.0
    if x < -0.5 or x > 0.5:
        return math.exp(x) - 1.0
    xx = x * x
    r = x * _polevl(xx, _EXPM1_P)
    r = r / (_polevl(xx, _EXPM1_Q) - r)
    return r + r


# -- kolmogorov.h ----------------------------------------------------------------------------------
@_compiled
def _pow(ah: float, al: float, m: int) -> tuple[float, float]:  # pragma: no cover - compiled
    """``pow_D``: (hi, lo) ** m, from the C library's ``pow`` of the high part, corrected."""
    if m <= 0:
        if m == 0:
            return 1.0, 0.0
        ph, pl = _pow(ah, al, -m)
        return _div(1.0, 0.0, ph, pl)
    if ah == 0.0 and al == 0.0:
        return 0.0, 0.0
    ans = math.pow(ah, float(m))
    r = al / ah
    adj = m * r
    if abs(adj) > 1e-8:
        if abs(adj) < 1e-4:
            adj += (m * r) * ((m - 1) / 2.0 * r)
        else:
            adj = _expm1(m * math.log1p(r))
    return _add_d(ans, 0.0, ans * adj)


@_compiled
def _next_power_of_2(x: float) -> float:  # pragma: no cover - compiled
    q = math.ldexp(x, 1 - 53)
    big = abs(q + x)
    if big == 0:
        return abs(x)
    whole = int(big)
    return float(whole) if whole == big else big


@_compiled
def _pow_scaled(ah: float, al: float, m: int) -> tuple[float, float, int]:  # pragma: no cover
    """``pow2Scaled_D``: (hi, lo) ** m as (significand hi, lo, binary exponent)."""
    if m <= 0:
        if m == 0:
            return 1.0, 0.0, 0
        h, lo, e1 = _pow_scaled(ah, al, -m)
        h, lo = _div(1.0, 0.0, h, lo)
        h, lo, e2 = _frexp(h, lo)
        return h, lo, -e1 + e2
    yh, yl, y_e = _frexp(ah, al)
    if m == 1:
        return yh, yl, y_e
    max_expt = _SM_MAX_EXPONENT
    if m * (yh - 1) / yh < -_SM_MAX_EXPONENT * _LN2:
        lg2y = math.log(yh) / _LN2
        if m * lg2y <= -_SM_MAX_EXPONENT:
            max_expt = int(_next_power_of_2(-_SM_MAX_EXPONENT / lg2y + 1) / 2)
    if m <= max_expt:
        h, lo = _pow(yh, yl, m)
        h, lo, e = _frexp(h, lo)
        return h, lo, e + m * y_e
    q = m // max_expt
    r = m % max_expt
    rh, rl, r_e = _pow_scaled(yh, yl, r)
    mh, ml, m_e = _pow_scaled(yh, yl, max_expt)
    qh, ql, q_e = _pow_scaled(mh, ml, q)
    h, lo = _mul(rh, rl, qh, ql)
    h, lo, e = _frexp(h, lo)
    q_e += m_e * q
    e += q_e + r_e
    return h, lo, e + m * y_e


@_compiled
def _pow4(  # pragma: no cover - compiled
    a: float, b: float, c: float, d: float, m: int
) -> tuple[float, float]:
    """``pow4_D``: ((a + b) / (c + d)) ** m."""
    if m <= 0:
        if m == 0:
            return 1.0, 0.0
        return _pow4(c, d, a, b, -m)
    big_a = _add_d(a, 0.0, b)
    big_c = _add_d(c, 0.0, d)
    if big_a[0] == 0.0 and big_a[1] == 0.0:
        if big_c[0] == 0.0 and big_c[1] == 0.0:
            return math.nan, math.nan
        return 0.0, 0.0
    if big_c[0] == 0.0 and big_c[1] == 0.0:
        inf = -math.inf if (big_a[0] < 0 or (big_a[0] == 0 and big_a[1] < 0)) else math.inf
        return inf, inf
    xh, xl = _div(big_a[0], big_a[1], big_c[0], big_c[1])
    return _pow(xh, xl, m)


@_compiled
def _mod_nx(n: int, x: float) -> tuple[float, int]:  # pragma: no cover - compiled
    """``modNX``: (alpha, floor(n x)), the fractional part of n x and its floor, exactly (scipy's
    ``nx`` output feeds only the density, not computed here)."""
    nh, nl = _mul_d(x, 0.0, float(n))
    fh = math.floor(nh)
    fl = 0.0
    if fh == nh:
        fl = math.floor(nl)
        fh, fl = _quick_two_sum(fh, fl)
    alpha = _add(nh, nl, -fh, -fl)[0]
    floor_nx = int(fh)
    if alpha == 1:
        floor_nx += 1
        alpha = 0.0
    return alpha, floor_nx


@_compiled
def smirnov_sf(n: int, x: float) -> float:  # pragma: no cover - compiled
    """``scipy.special.smirnov(n, x)`` for ``n <= MAX_N`` (the sf of scipy's ``_smirnov``);
    NaN for ``n > MAX_N`` (scipy's closed form there is not replayed), as for a bad ``n`` or
    ``x``."""
    if not (n > 0 and n <= MAX_N and x >= 0.0 and x <= 1.0):
        return math.nan
    if n == 1:
        return 1 - x
    if x == 0.0:
        return 1.0
    if x == 1.0:
        return 0.0
    alpha, nxfl = _mod_nx(n, x)
    n1mxfl = n - nxfl - (0 if alpha == 0 else 1)
    n1mxceil = n - nxfl
    if alpha == 0:
        n1mxfl -= 1
        n1mxceil += 1
    if nxfl == 0 or (nxfl == 1 and alpha == 0):  # x <= 1/n
        one_x = _add_d(1.0, 0.0, x)
        t = _pow(one_x[0], one_x[1], n - 1)[0]
        return 1 - x * t
    if -2 * n * x * x < _MINLOG:  # the sf underflows
        return 0.0
    if nxfl >= n - 1:  # x >= 1 - 1/n
        one_x = _add_d(1.0, 0.0, -x)
        return _pow(one_x[0], one_x[1], n)[0]
    n_upper_terms = n - n1mxceil + 1
    upper = n_upper_terms <= 1 and x < 0.5
    upper = upper or (
        n >= _SM_UPPERSUM_MIN_N and n_upper_terms <= _SM_UPPER_MAX_TERMS and x <= 0.5 / math.sqrt(n)
    )
    start, step, n_terms = 0, 1, n1mxfl + 1
    vmid = n // 2
    c_hi, c_lo, c_e = 1.0, 0.0, 0
    if upper:
        start, step, n_terms = n, -1, n - n1mxceil + 1
        aj_hi, aj_lo = _pow4(1.0, x, 1.0, 0.0, n - 1)
    else:
        t2h, t2l = _pow4(1.0, -x, 1.0, 0.0, n)
        aj_hi, aj_lo = _div(t2h, t2l, x, 0.0)
    sum_hi, sum_lo = _add(0.0, 0.0, aj_hi, aj_lo)
    # updateBinomial(n, 0)
    rh, rl = _div(float(n), 0.0, 1.0, 0.0)
    c_hi, c_lo = _mul(c_hi, c_lo, rh, rl)
    c_hi, c_lo, e = _frexp(c_hi, c_lo)
    c_e += e
    for j in range(1, n_terms):
        v = start + j * step
        # computeAv
        th, tl = _div(float(n - v), 0.0, float(n), 0.0)
        th, tl = _add_d(th, tl, -x)
        t2h, t2l, t2e = _pow_scaled(th, tl, n - v)
        th, tl = _div(float(v), 0.0, float(n), 0.0)
        th, tl = _add_d(th, tl, x)
        t1h, t1l, t1e = _pow_scaled(th, tl, v - 1)
        ah, al = _mul(t1h, t1l, t2h, t2l)
        ah, al = _mul(ah, al, c_hi, c_lo)
        e = c_e + t1e + t2e
        aj_hi, aj_lo = math.ldexp(ah, e), math.ldexp(al, e)
        nonzero = aj_hi != 0.0 or aj_lo != 0.0
        if math.isfinite(aj_hi) and nonzero:
            sum_hi, sum_lo = _add(sum_hi, sum_lo, aj_hi, aj_lo)
        if nonzero:
            if 4 * (n_terms - j) * abs(aj_hi) < _EPSILON * sum_hi and j != n_terms - 1:
                break
        elif j > vmid:
            break
        # updateBinomial(n, j)
        rh, rl = _div(float(n - j), 0.0, j + 1.0, 0.0)
        c_hi, c_lo = _mul(c_hi, c_lo, rh, rl)
        c_hi, c_lo, e = _frexp(c_hi, c_lo)
        c_e += e
    prob = _mul_d(sum_hi, sum_lo, x)[0]
    sf = 1 - prob if step < 0 else prob
    if sf < 0.0:
        return 0.0
    if sf > 1.0:
        return 1.0
    return sf


@_compiled
def smirnov_many(ns: np.ndarray, xs: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    """``out[i] = smirnov_sf(ns[i], xs[i])`` (int64 ``ns`` <= MAX_N, float64 ``xs``); releases
    the GIL, so parts of one batch run in threads."""
    for i in range(len(ns)):
        out[i] = smirnov_sf(ns[i], xs[i])
