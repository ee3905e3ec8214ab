"""Numba kernels of the BERT encoder's elementwise work (the dense layers are numpy matmuls, i.e. BLAS).

Batches are *packed*: the tokens of all texts of a batch are rows of one (T, hidden) float32 array, text s owning
rows ``offsets[s]:offsets[s + 1]``. Dense layers then run on real tokens only (no padding rows at all), and
attention, the only step that mixes tokens, runs per (text, head) over that text's rows, which is exactly the
padding mask of a padded batch. Every kernel takes float32 C-contiguous arrays and int64 offsets, so each compiles
once (cached on disk).

The kernels are serial: :class:`~simdex.embed.MiniLM` runs whole batches on several threads at once (the kernels
release the GIL, BLAS runs single-threaded per batch) instead of splitting every step across threads, which on a
few shared cores loses much of its time to pools of threads waiting for one another. They use numpy's error
model (a float division by zero gives inf instead of raising), without which the loops with a division do not
vectorise.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .._numba import kernel

# erf(x) = x P(x^2) / Q(x^2) for |x| <= 4 (erf(+-4) rounds to +-1 in float32, so x is clamped there). The
# coefficients were fitted for this module (weighted least squares with Lawson reweighting towards the minimax
# error on [0, 4]); the float64 error of the rational function is 1.5e-9, evaluated in float32 it is within 4.3e-7
# of erf everywhere (tests/test_embed.py checks it). Unlike libm's erff it has no branches or calls, so the GELU loop
# vectorises (about 20x faster than calling math.erf per element).
_P0, _P1, _P2, _P3 = 1.1283791820949172, 0.1847112217357714, 0.05433249539310108, 0.003839537107758667
_P4, _P5, _P6 = 0.0003826834570709958, 4.780280357253077e-06, -1.3665485964242841e-08
_Q1, _Q2, _Q3 = 0.49702960348043346, 0.11382647727408335, 0.01545350074762942
_Q4, _Q5 = 0.0013095689802107582, 6.400683601388733e-05
_SQRT_HALF = 0.7071067811865476


_LOG2E = 1.4426950408889634
_LN2_HI = 0.693145751953125        # ln 2 = _LN2_HI + _LN2_LO, _LN2_HI with few mantissa bits (exact n * _LN2_HI)
_LN2_LO = 1.4286068203094173e-06


@intrinsic
def _pow2(typingctx, n):
    """2.0 ** n as a float32 for an int32 n in [-126, 127] (the exponent bits set directly; vectorises)."""
    if n != types.int32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.shl(builder.add(args[0], i32(127)), i32(23))
        return builder.bitcast(bits, ir.FloatType())

    return types.float32(n), codegen


@kernel(inline="always", error_model="numpy")
def exp32(x):
    """exp of a float32 x <= 88 (relative error <= 3.2e-7; x below -87 counts as -87). Range reduction
    x = n ln 2 + r, |r| <= ln(2) / 2, then the degree-7 Taylor polynomial of exp(r) (truncation error < 1e-8) scaled
    by 2^n. Unlike a call to expf it vectorises."""
    x = max(x, np.float32(-87.0))
    n = np.floor(x * np.float32(_LOG2E) + np.float32(0.5))
    r = (x - n * np.float32(_LN2_HI)) - n * np.float32(_LN2_LO)
    p = np.float32(1.0 / 5040.0)
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    return p * _pow2(np.int32(n))


@kernel(error_model="numpy")
def exp_array(x, out):
    """out[i] = exp32(x[i]) for 1-D float32 arrays (for tests)."""
    for i in range(x.shape[0]):
        out[i] = exp32(x[i])


@kernel(inline="always", error_model="numpy")
def erf32(x):
    """erf of a float32 (absolute error <= 4.3e-7)."""
    x = min(max(x, np.float32(-4.0)), np.float32(4.0))
    z = x * x
    p = np.float32(_P6)
    p = p * z + np.float32(_P5)
    p = p * z + np.float32(_P4)
    p = p * z + np.float32(_P3)
    p = p * z + np.float32(_P2)
    p = p * z + np.float32(_P1)
    p = p * z + np.float32(_P0)
    q = np.float32(_Q5)
    q = q * z + np.float32(_Q4)
    q = q * z + np.float32(_Q3)
    q = q * z + np.float32(_Q2)
    q = q * z + np.float32(_Q1)
    q = q * z + np.float32(1.0)
    return x * p / q


@kernel(error_model="numpy")
def erf_array(x, out):
    """out[i] = erf32(x[i]) for 1-D float32 arrays (for tests)."""
    for i in range(x.shape[0]):
        out[i] = erf32(x[i])


@kernel(inline="always", error_model="numpy")
def _layer_norm_row(x, t, gamma, beta, eps):
    """x[t] = LayerNorm(x[t]) * gamma + beta, in place (two passes: mean, then variance of the centred row)."""
    n = x.shape[1]
    mean = np.float32(0.0)
    for j in range(n):
        mean += x[t, j]
    mean /= np.float32(n)
    var = np.float32(0.0)
    for j in range(n):
        d = x[t, j] - mean
        var += d * d
    inv = np.float32(1.0) / np.sqrt(var / np.float32(n) + eps)
    for j in range(n):
        x[t, j] = (x[t, j] - mean) * inv * gamma[j] + beta[j]


@kernel(error_model="numpy")
def embed_tokens(ids, offsets, word, position, token_type, gamma, beta, eps, out):
    """out[t] = LayerNorm(word[ids[t]] + position[t - offsets[s]] + token_type) for every token t of text s.

    ids: (T,) int64 token ids; offsets: (B + 1,) int64; word: (vocab, hidden), position: (max_positions, hidden),
    token_type, gamma, beta: (hidden,) float32; out: (T, hidden) float32.
    """
    hidden = out.shape[1]
    for s in range(offsets.shape[0] - 1):
        for t in range(offsets[s], offsets[s + 1]):
            w = ids[t]
            p = t - offsets[s]
            for j in range(hidden):
                out[t, j] = word[w, j] + position[p, j] + token_type[j]
            _layer_norm_row(out, t, gamma, beta, eps)


@kernel(error_model="numpy")
def add_residual_layer_norm(y, bias, x, gamma, beta, eps):
    """x[t] = LayerNorm(y[t] + bias + x[t]) * gamma + beta for every row t (the BERT "output" block), in place.

    y, x: (T, hidden) float32; bias, gamma, beta: (hidden,) float32.
    """
    hidden = x.shape[1]
    for t in range(x.shape[0]):
        for j in range(hidden):
            x[t, j] = y[t, j] + bias[j] + x[t, j]
        _layer_norm_row(x, t, gamma, beta, eps)


@kernel(error_model="numpy")
def bias_gelu(h, bias):
    """h[t] = GELU(h[t] + bias) in place, the exact (erf) GELU: v * (1 + erf(v / sqrt 2)) / 2. h: (T, n)."""
    n = h.shape[1]
    for t in range(h.shape[0]):
        for j in range(n):
            v = h[t, j] + bias[j]
            h[t, j] = np.float32(0.5) * v * (np.float32(1.0) + erf32(v * np.float32(_SQRT_HALF)))


@kernel(error_model="numpy")
def split_heads(qkv, bias, offsets, first, q, kt, v):
    """Copy texts first, first + 1, ... of a packed batch into padded per-head arrays, adding the bias.

    qkv: (T, 3 * hidden) float32 query | key | value rows (without bias); bias: (3 * hidden,);
    q, v: (G, H, L, head_dim) and kt: (G, H, head_dim, L) float32 (keys transposed, so that q @ kt is a plain
    matmul), for the G texts from ``first``, L >= their longest length. Rows past a text's length are zero.
    """
    g_count, n_heads, width, dh = q.shape
    hidden = n_heads * dh
    for g in range(g_count):
        a = offsets[first + g]
        n = offsets[first + g + 1] - a
        for h in range(n_heads):
            qc = h * dh
            kc = hidden + qc
            vc = 2 * hidden + qc
            for i in range(n):
                for d in range(dh):
                    q[g, h, i, d] = qkv[a + i, qc + d] + bias[qc + d]
                    v[g, h, i, d] = qkv[a + i, vc + d] + bias[vc + d]
            for i in range(n, width):
                for d in range(dh):
                    q[g, h, i, d] = 0.0
                    v[g, h, i, d] = 0.0
            for d in range(dh):
                for i in range(n):
                    kt[g, h, d, i] = qkv[a + i, kc + d] + bias[kc + d]
                for i in range(n, width):
                    kt[g, h, d, i] = 0.0


@kernel(error_model="numpy")
def masked_softmax(scores, offsets, first):
    """Row softmax of attention scores (G, H, L, L) in place, over the first n columns of text first + g's rows
    (n its length); the other columns, and rows past n, become 0 (the padding mask)."""
    g_count, n_heads, width, _ = scores.shape
    for g in range(g_count):
        n = offsets[first + g + 1] - offsets[first + g]
        for h in range(n_heads):
            for i in range(n):
                top = scores[g, h, i, 0]
                for j in range(1, n):
                    top = max(top, scores[g, h, i, j])
                total = np.float32(0.0)
                for j in range(n):
                    e = exp32(scores[g, h, i, j] - top)
                    scores[g, h, i, j] = e
                    total += e
                inv = np.float32(1.0) / total
                for j in range(n):
                    scores[g, h, i, j] *= inv
                for j in range(n, width):
                    scores[g, h, i, j] = 0.0
            for i in range(n, width):
                for j in range(width):
                    scores[g, h, i, j] = 0.0


@kernel(error_model="numpy")
def merge_heads(o, offsets, first, ctx):
    """ctx[row of token i of text first + g, h * head_dim + d] = o[g, h, i, d]: per-head outputs (G, H, L, head_dim)
    back into packed (T, hidden) rows, heads side by side."""
    g_count, n_heads, _, dh = o.shape
    for g in range(g_count):
        a = offsets[first + g]
        n = offsets[first + g + 1] - a
        for i in range(n):
            for h in range(n_heads):
                for d in range(dh):
                    ctx[a + i, h * dh + d] = o[g, h, i, d]


@kernel(error_model="numpy")
def mean_pool_normalize(x, offsets, out):
    """out[s] = mean of x[offsets[s]:offsets[s + 1]], scaled to unit L2 length (zero stays zero).

    x: (T, hidden) float32; offsets: (B + 1,) int64; out: (B, hidden) float32. The sums are float64.
    """
    hidden = x.shape[1]
    acc = np.empty(hidden, np.float64)
    for s in range(offsets.shape[0] - 1):
        acc[:] = 0.0
        for t in range(offsets[s], offsets[s + 1]):
            for j in range(hidden):
                acc[j] += x[t, j]
        norm = 0.0
        for j in range(hidden):
            norm += acc[j] * acc[j]
        scale = 1.0 / math.sqrt(norm) if norm > 0.0 else 0.0
        for j in range(hidden):
            out[s, j] = np.float32(acc[j] * scale)
