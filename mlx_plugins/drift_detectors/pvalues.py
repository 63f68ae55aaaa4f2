"""P-values for many tests at once: the two-sample KS p-value and the chi-square tail, as arrays.

:func:`ks_pvalues` gives, element by element, what :func:`~mlx_plugins.drift_detectors.stats.
ks_pvalue` gives (scipy's ``ks_2samp`` p-value, ``method="auto"``), but evaluates the common
asymptotic branches of scipy's ``kstwo.sf`` kernel (``scipy.stats._ksstats._kolmogn``) as numpy
array expressions over all the tests instead of one Python-level call per test:

* the Smirnov branch (``n x**2 >= 2.2``): ``2 * scipy.special.smirnov(n, x)``, its bits, from
  the compiled replay of :mod:`~mlx_plugins.drift_detectors._smirnov` or scipy's C function
  (:func:`_smirnov_start`);
* the Pelz-Good series (the body of the distribution, around the usual 5% threshold): scipy's
  own arithmetic replayed on arrays, step by step in scipy's order, the tests grouped by the
  number of series terms (so every element sums the same terms in the same order);
* the far tail (Massart's bound below ``tail``): ``scipy.special.kolmogorov``, as in ``stats``.

Everything else (the exact lattice-path p-value of small samples, Durbin's matrix for very small
statistics, ``n <= 140``, the Ruben-Gambino ends) goes through the scalar, cached
:func:`~mlx_plugins.drift_detectors.stats.ks_pvalue`. ``tests/drift/test_pvalues.py`` checks
the arrays against the scalar function and against ``scipy.stats.kstwo.sf``.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mlx_plugins.drift_detectors.options import KSMethod

_PI_SQUARED = np.pi**2
_PI_FOUR = np.pi**4
_PI_SIX = np.pi**6
_SQRT2PI = np.sqrt(2 * np.pi)
_SQRT3 = np.sqrt(3)
_MIN_LOG = -708


def chi2_sf(stat: np.ndarray, dof: np.ndarray) -> np.ndarray:
    """``scipy.special.chdtrc(dof, stat)`` clipped to [0, 1], element by element (float64)."""
    from scipy.special import chdtrc

    return np.clip(chdtrc(dof, stat), 0.0, 1.0)


def ks_pvalues(
    max_gap: np.ndarray,
    n: np.ndarray | int,
    m: np.ndarray,
    method: KSMethod = "auto",
    *,
    tail: float | None = None,
    workers: int = 1,
) -> np.ndarray:
    """Two-sided two-sample KS p-values, ``stats.ks_pvalue(max_gap[i], n[i], m[i], method)``
    for every i, as a float64 array of ``len(max_gap)``.

    ``max_gap``, ``n``, ``m``: int64 arrays (``n`` may be one int): the statistic times n*m
    and the two sample sizes, all positive sizes. Raises ``ValueError`` for a size <= 0.
    ``workers``: threads for scipy's Smirnov sums (the costly branch; see :func:`_smirnov`).
    """
    from mlx_plugins.drift_detectors import stats as st

    tail = st.KS_TAIL if tail is None else float(tail)
    gaps = np.asarray(max_gap, dtype=np.int64)
    ns = np.broadcast_to(np.asarray(n, dtype=np.int64), gaps.shape)
    ms = np.asarray(m, dtype=np.int64)
    if gaps.size and (ns.min() <= 0 or ms.min() <= 0):
        raise ValueError("ks_pvalues needs two non-empty samples for every test")
    out = np.empty(gaps.shape, dtype=np.float64)
    big, small = np.maximum(ns, ms), np.minimum(ns, ms)
    bigf, smallf = big.astype(np.float64), small.astype(np.float64)
    en = bigf * smallf / (bigf + smallf)
    size = np.round(en)
    exact = size < 1
    if method == "exact":
        exact[:] = True
    elif method == "auto":
        exact |= big <= st.KS_EXACT_MAX_N
    d = gaps / (ns.astype(np.float64) * ms.astype(np.float64))
    scalar = exact.copy()
    todo = ~exact
    # the far tail: the same test as stats, with math.exp, element by element (cheap floats)
    far = np.zeros_like(todo)
    for i in np.flatnonzero(todo & (size > 140)):
        far[i] = 2.0 * math.exp(-2.0 * float(size[i]) * float(d[i]) * float(d[i])) < tail
    if far.any():
        from scipy.special import kolmogorov

        out[far] = np.clip(kolmogorov(np.sqrt(size[far]) * d[far]), 0.0, 1.0)
    todo &= ~far
    # scipy's _kstwo_sf / _kolmogn(int(size), d, cdf=False), branch by branch
    one = todo & (d <= 0.5 / size)
    out[one] = 1.0
    todo &= ~one
    zero = todo & (d >= 1.0)
    out[zero] = 0.0
    todo &= ~zero
    t = size * d
    nxsq = t * d
    # Ruben-Gambino ends, exact Smirnov for x >= 1/2: the scalar kernel
    scalar |= todo & ((t <= 1.0) | (t >= size - 1) | (d >= 0.5))
    todo &= ~scalar
    # n <= 140: Durbin's matrix, Pomeranz's recursion (scalar) or Smirnov's sum
    small_n = todo & (size <= 140)
    sums = np.zeros_like(todo)
    durbin = small_n & (nxsq <= 0.754693)
    if small_n.any():
        pomeranz = small_n & ~durbin & (nxsq <= 4)
        scalar |= pomeranz
        sums |= small_n & ~durbin & ~pomeranz
        todo &= ~small_n
    none = todo & (nxsq >= 370.0)
    out[none] = 0.0
    todo &= ~none
    sums |= todo & (nxsq >= 2.2)  # the Smirnov branch
    todo &= ~sums
    # Smirnov's sums, 2 * smirnov(n, D), run in threads while this one does the rest
    smirnov = _smirnov_start(size[sums].astype(np.int64), d[sums], workers)
    # Durbin's matrix (n <= 140 above, or n x**1.5 <= 1.4 tested in Python floats, as scipy's)
    for i in np.flatnonzero(todo):
        nn, x = int(size[i]), float(d[i])
        if nn <= 100000 and nn * x**1.5 <= 1.4:
            durbin[i] = True
    todo &= ~durbin
    if durbin.any():
        out[durbin] = _durbin_sf(size[durbin].astype(np.int64), d[durbin])
    if todo.any():
        out[todo] = np.clip(1.0 - _pelz_good_cdf(size[todo], d[todo]), 0.0, 1.0)
    for i in np.flatnonzero(scalar):
        out[i] = st.ks_pvalue(int(gaps[i]), int(ns[i]), int(ms[i]), method, tail=tail)
    out[sums] = np.clip(2 * smirnov(), 0.0, 1.0)
    return out


def _smirnov(n: np.ndarray, d: np.ndarray, workers: int = 1) -> np.ndarray:
    """``scipy.special.smirnov(n, d)`` (int64 ``n``, float64 ``d``), bit for bit, each distinct
    ``(n, d)`` pair evaluated once, in ``workers`` threads (see :func:`_smirnov_start`)."""
    return _smirnov_start(n, d, workers)()


def _smirnov_start(n: np.ndarray, d: np.ndarray, workers: int = 1) -> Callable[[], np.ndarray]:
    """Start :func:`_smirnov` and return the function that waits for its values.

    Each distinct pair is evaluated once, by the first of:

    * the compiled replay of scipy's sum (:mod:`~mlx_plugins.drift_detectors._smirnov`, the
      same bits, ~2-3x faster), where numba is loaded already (the batched daily path loads
      it) or the sums are many (:data:`_COMPILED_MIN_TERMS`), and it reproduced the installed
      scipy's values on its check pairs (:func:`_compiled_smirnov`);
    * scipy's own C function (:func:`_smirnov_c`) where it can be found;
    * scipy's ufunc.

    The first two release the GIL, so with ``workers > 1`` the sums run in that many threads,
    beside the caller. With one worker or few sums they are computed before returning.
    """
    pairs = np.empty(len(n), dtype=[("n", np.int64), ("d", np.float64)])
    pairs["n"], pairs["d"] = n, d
    distinct, inverse = np.unique(pairs, return_inverse=True)
    inverse = inverse.reshape(-1)
    all_n = np.ascontiguousarray(distinct["n"])
    all_d = np.ascontiguousarray(distinct["d"])
    step = max(1, min(workers, len(all_n) // _SMIRNOV_PER_THREAD))
    compiled = _compiled_smirnov(all_n)
    kernel = None if compiled is not None else _smirnov_c()
    if compiled is None and kernel is None:
        from scipy.special import smirnov

        done = smirnov(all_n, all_d)[inverse]
        return lambda: done

    def part(first: int) -> np.ndarray:
        # every step-th pair: the pairs are sorted by n, so the parts cost alike
        ns, ds = all_n[first::step], all_d[first::step]
        if compiled is not None:
            out = np.empty(len(ns))
            compiled(np.ascontiguousarray(ns), np.ascontiguousarray(ds), out)
            return out
        assert kernel is not None
        return np.array(
            [kernel(k, x, 0) for k, x in zip(ns.tolist(), ds.tolist(), strict=True)],
            dtype=np.float64,
        )

    if step == 1:
        done = part(0)[inverse] if len(all_n) else np.empty(0)
        return lambda: done
    pool = ThreadPoolExecutor(step, thread_name_prefix="mlx-smirnov")
    futures = [pool.submit(part, first) for first in range(step)]
    pool.shutdown(wait=False)  # the threads end with their part

    def wait() -> np.ndarray:
        values = np.empty(len(all_n))
        for first, future in enumerate(futures):
            values[first::step] = future.result()
        out: np.ndarray = values[inverse]
        return out

    return wait


_COMPILED_MIN_TERMS = 2_000_000
"""Use the compiled Smirnov sums, loading numba for them, when the distinct sums hold at least
this many terms (the sum of their n): each term saves ~0.2 us against scipy's C function,
loading numba and the cached machine code costs ~0.4 s. Where numba is loaded already (the
batched daily path), they are used for any number of sums. The first process after an install
compiles them (~3-5 s, then cached on disk, as the other compiled loops); where numba cannot
cache (no writable place), they are not used at all."""

_SMIRNOV_CHECKS = (
    (1, 0.3),
    (7, 0.1),  # x <= 1/n
    (9, 0.95),  # x >= 1 - 1/n
    (40, 0.05),  # few upper terms
    (60, 0.25),
    (200, 0.12),
    (893, 0.07),
    (1500, 0.9),
    (2500, 0.02),
    (4000, 0.3),  # the sum split into powers (pow2Scaled_D's recursion)
)
"""Pairs on every branch of scipy's ``_smirnov``: the compiled replay is used only where it
gives the installed scipy's bits on all of them."""


_SmirnovMany = Callable[[np.ndarray, np.ndarray, np.ndarray], None]


def _compiled_smirnov(ns: np.ndarray) -> _SmirnovMany | None:
    """The compiled ``smirnov_many(ns, xs, out)`` if it should evaluate sums of sizes ``ns``
    (sorted int64): all within its range, numba loaded or the sums many, and its values on
    :data:`_SMIRNOV_CHECKS` those of the installed scipy; else None."""
    if not len(ns) or int(ns[-1]) > _SMIRNOV_MAX_N:
        return None
    if "mlx_plugins.drift_detectors._fused" not in sys.modules and int(ns.sum()) < (
        _COMPILED_MIN_TERMS
    ):
        return None
    return _replay_if_exact()


_SMIRNOV_MAX_N = 1_000_000  # _smirnov.MAX_N, without importing numba to read it


@functools.cache
def _replay_if_exact() -> _SmirnovMany | None:
    try:
        from mlx_plugins.drift_detectors import _smirnov
    except ImportError:  # pragma: no cover - numba is a dependency
        return None
    if type(getattr(_smirnov.smirnov_many, "_cache", None)).__name__ == "NullCache":
        # nowhere to cache the machine code (a read-only image without NUMBA_CACHE_DIR): it
        # would be compiled in every process (~3-5 s), more than the sums save
        return None
    from scipy.special import smirnov

    ns = np.array([n for n, _ in _SMIRNOV_CHECKS], dtype=np.int64)
    xs = np.array([x for _, x in _SMIRNOV_CHECKS])
    got = np.empty(len(ns))
    _smirnov.smirnov_many(ns, xs, got)
    want = smirnov(ns, xs)
    if not np.array_equal(got.view(np.int64), want.view(np.int64)):
        import logging

        logging.getLogger(__name__).warning(
            "the compiled Smirnov sums differ from this scipy's smirnov(); using scipy's"
        )
        return None
    kernel: _SmirnovMany = _smirnov.smirnov_many
    return kernel


_SMIRNOV_PER_THREAD = 8
"""At least this many Smirnov sums per thread (each costs 10 us to 1 ms)."""
_SMIRNOV_C = "__pyx_fuse_1smirnov"
_SMIRNOV_SIGNATURE = b"double (long, double, int __pyx_skip_dispatch)"


@functools.cache
def _smirnov_c() -> Callable[[int, float, int], float] | None:
    """scipy's ``smirnov(long n, double d)`` from ``scipy.special.cython_special`` (the C
    function its ufunc calls: the same bits, ``tests/drift/test_pvalues.py``) as a ctypes
    function that releases the GIL while it runs; None where that scipy does not export it
    with this signature."""
    import ctypes

    try:
        from scipy.special import cython_special

        capsule = cython_special.__pyx_capi__[_SMIRNOV_C]  # type: ignore[attr-defined]
    except (ImportError, AttributeError, KeyError):  # pragma: no cover - another scipy
        return None
    # item access: new function objects (attribute access would change ctypes.pythonapi's)
    get_name = ctypes.pythonapi["PyCapsule_GetName"]
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    name = get_name(capsule)
    if name != _SMIRNOV_SIGNATURE:  # pragma: no cover - another scipy
        return None
    get_pointer = ctypes.pythonapi["PyCapsule_GetPointer"]
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    prototype = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_long, ctypes.c_double, ctypes.c_int)
    kernel: Callable[[int, float, int], float] = prototype(get_pointer(capsule, name))
    return kernel


def _pelz_good_cdf(n: np.ndarray, x: np.ndarray) -> np.ndarray:
    """scipy's ``_kolmogn_PelzGood(n, x, cdf=True)`` for arrays ``n`` (whole numbers, float64)
    and ``x`` in (0, 1), grouped by the number of terms ``ceil(16 z / pi)``."""
    z = np.sqrt(n) * x
    maxks = np.ceil(16 * z / np.pi).astype(np.int64)
    out = np.empty_like(z)
    for maxk in np.unique(maxks):
        sel = maxks == maxk
        out[sel] = _pelz_good_group(n[sel], z[sel], int(maxk))
    return out


def _scalar_pow(z: np.ndarray, e: int) -> np.ndarray:
    """``z ** e`` as scipy computes it on one ``np.float64`` at a time (numpy's array power
    rounds some integer powers differently from its scalar power)."""
    return np.fromiter((v**e for v in z), np.float64, len(z))


def _pelz_good_group(n: np.ndarray, z: np.ndarray, maxk: int) -> np.ndarray:
    zsquared, zthree, zfour, zsix = (_scalar_pow(z, e) for e in (2, 3, 4, 6))
    zseven, zeight, zten = (_scalar_pow(z, e) for e in (7, 8, 10))
    qlog = -_PI_SQUARED / 8 / zsquared
    q = np.exp(qlog)
    k1a = -zsquared
    k1b = _PI_SQUARED / 4
    k2a = 6 * zsix + 2 * zfour
    k2b = (2 * zfour - 5 * zsquared) * _PI_SQUARED / 4
    k2c = _PI_FOUR * (1 - 2 * zsquared) / 16
    k3d = _PI_SIX * (5 - 30 * zsquared) / 64
    k3c = _PI_FOUR * (-60 * zsquared + 212 * zfour) / 16
    k3b = _PI_SQUARED * (135 * zfour - 96 * zsix) / 4
    k3a = -30 * zsix - 90 * zeight
    k0 = np.zeros_like(z)
    k1 = np.zeros_like(z)
    k2 = np.zeros_like(z)
    k3 = np.zeros_like(z)
    for k in range(maxk, 0, -1):
        m = 2 * k - 1
        msquared, mfour, msix = m**2, m**4, m**6
        qpower = np.power(q, 8 * k)
        k0 = k0 * qpower + 1.0
        k1 = k1 * qpower + (k1a + k1b * msquared)
        k2 = k2 * qpower + (k2a + k2b * msquared + k2c * mfour)
        k3 = k3 * qpower + (k3a + k3b * msquared + k3c * mfour + k3d * msix)
    parts = []
    for part, div in zip((k0, k1, k2, k3), (z, 6 * zfour, 72 * zseven, 6480 * zten), strict=True):
        part = part * q
        part = part * _SQRT2PI
        parts.append(part / div)
    q = np.exp(-_PI_SQUARED / 2 / zsquared)
    ks = np.arange(maxk, 0, -1)
    ksquared = ks**2
    sqrt3z = (_SQRT3 * z)[:, None]
    kspi = np.pi * ks
    qpwers = q[:, None] ** ksquared
    k2extra = np.sum(ksquared * qpwers, axis=1)
    k2extra = k2extra * (_PI_SQUARED * _SQRT2PI / (-36 * zthree))
    parts[2] = parts[2] + k2extra
    k3extra = np.sum((sqrt3z + kspi) * (sqrt3z - kspi) * ksquared * qpwers, axis=1)
    k3extra = k3extra * (_PI_SQUARED * _SQRT2PI / (216 * zsix))
    parts[3] = parts[3] + k3extra
    powers_of_n = np.power((n * 1.0)[:, None], np.arange(4) / 2.0)
    for i in range(1, 4):
        parts[i] = parts[i] / powers_of_n[:, i]
    return ((parts[0] + parts[1]) + parts[2]) + parts[3]


_E128 = 128
_EP128 = np.ldexp(np.longdouble(1), _E128)
_EM128 = np.ldexp(np.longdouble(1), -_E128)


def _durbin_sf(n: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``1 -`` scipy's ``_kolmogn_DMTW(n, d, cdf=True)`` (Durbin's matrix, Marsaglia-Tsang-
    Wang) for arrays ``n`` (int64) and ``d``, clipped to [0, 1] as ``kstwo.sf`` returns it
    (in long double where scipy's rescaling switches to it): the matrices of one size are
    raised to their powers together (one batched matmul per step), and the final product
    ``prod(i / n)`` runs over all of them at once."""
    nd = n * d
    k = np.ceil(nd).astype(np.int64)
    p = np.empty(len(n), dtype=np.float64)
    expnt = np.zeros(len(n), dtype=np.int64)
    for size in np.unique(2 * k - 1):
        sel = np.flatnonzero(2 * k - 1 == size)
        p[sel], expnt[sel] = _durbin_power(n[sel], nd[sel], int(size))
    # p = prod over i of i * p / n, rescaled by 2**128 (then in long double, as scipy's
    # np.float64 * np.longdouble) whenever it drops below 2**-128. The elements go largest n
    # first, so those still multiplying at step i are a prefix; once every one of them is in
    # long double (after a few dozen steps), each step is a few in-place operations on it
    order = np.argsort(-n, kind="stable")
    ns = n[order]
    live = np.searchsorted(-ns, -np.arange(1, int(ns[0]) + 1), side="right")
    wide = np.zeros(len(n), dtype=bool)
    p64 = p[order]
    pld = p64.astype(np.longdouble)
    ex = expnt[order]
    nf, nl = ns.astype(np.float64), ns.astype(np.longdouble)
    some_narrow = True
    for i in range(1, int(ns[0]) + 1):
        k = int(live[i - 1])
        if some_narrow:
            was_wide = wide[:k]
            narrow = ~was_wide
            p64[:k] = np.where(narrow, i * p64[:k] / nf[:k], p64[:k])
            if was_wide.any():
                pld[:k] = np.where(was_wide, i * pld[:k] / nl[:k], pld[:k])
                small = was_wide & (np.abs(pld[:k]) < _EM128)
                if small.any():
                    pld[:k] = np.where(small, pld[:k] * _EP128, pld[:k])
                    ex[:k] -= _E128 * small
            small = narrow & (np.abs(p64[:k]) < _EM128)
            if small.any():
                pld[:k] = np.where(small, p64[:k] * _EP128, pld[:k])
                wide[:k] |= small
                ex[:k] -= _E128 * small
            some_narrow = not wide[:k].all()
        else:
            seg = pld[:k]
            np.multiply(seg, i, out=seg)
            np.divide(seg, nl[:k], out=seg)
            small = np.abs(seg) < _EM128
            if small.any():
                seg[small] *= _EP128
                ex[:k][small] -= _E128
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    p64, pld, expnt, wide = p64[back], pld[back], ex[back], wide[back]
    # scipy: sf = clip(1 - clip(ldexp(p, expnt))), in the type p ended with
    p64 = np.clip(np.ldexp(p64, expnt), 0.0, 1.0)
    sf = np.clip(1.0 - p64, 0.0, 1.0)
    if wide.any():
        wide_p = np.clip(np.ldexp(pld[wide], expnt[wide]), 0.0, 1.0)
        sf[wide] = np.clip(1.0 - wide_p, 0.0, 1.0).astype(np.float64)
    return sf


def _durbin_power(n: np.ndarray, nd: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """``(Hpwr[k-1, k-1], expnt)`` of scipy's ``_kolmogn_DMTW`` for matrices of size ``m``."""
    k = (m + 1) // 2
    h = k - nd
    intm = np.arange(1, m + 1)
    v = 1.0 - h[:, None] ** intm
    w = np.empty(m)
    fac = 1.0
    for j in intm:
        w[j - 1] = fac
        fac /= j
        v[:, j - 1] *= fac
    tt = np.array([max(2 * float(hh) - 1.0, 0) ** m - 2 * float(hh) ** m for hh in h])
    v[:, -1] = (1.0 + tt) * fac
    template = np.zeros([m, m])
    for i in range(1, m):
        template[i - 1 :, i] = w[: m - i + 1]
    big = np.repeat(template[None], len(n), axis=0)
    big[:, :, 0] = v
    big[:, -1, :] = np.flip(v, axis=1)
    power = np.repeat(np.eye(m)[None], len(n), axis=0)
    nn = n.copy()
    expnt = np.zeros(len(n), dtype=np.int64)
    hexpnt = np.zeros(len(n), dtype=np.int64)
    while (nn > 0).any():
        live = np.flatnonzero(nn > 0)
        odd = live[nn[live] % 2 == 1]
        if len(odd):
            power[odd] = np.matmul(power[odd], big[odd])
        expnt[odd] += hexpnt[odd]
        big[live] = np.matmul(big[live], big[live])
        hexpnt[live] *= 2
        over = live[np.abs(big[live, k - 1, k - 1]) > _EP128]
        if len(over):
            big[over] /= _EP128
        hexpnt[over] += _E128
        nn[live] //= 2
    return power[:, k - 1, k - 1], expnt
