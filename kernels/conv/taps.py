"""The tap loops of the flat-row convolution (see `flat`), shared by its forward pass,
input gradient and weight gradient.

With stride 1, each (padded) image plane is stored flat with row pitch Wp. An output
position p = i * Wp + j then reads input p + ki * Wp + kj, so one kernel row is a
shifted copy of one long contiguous loop over the whole plane: long vectorised loops
instead of short ones per image row. The Wp - out_w columns past each row's end are
computed and thrown away (or are zero, for gradients).

Each helper unrolls up to five taps per pass, and the 2- and 3-way versions share every
source load between two or three filters (or channels): that turns a load-bound loop
into an FMA-bound one while the accumulators still fit in the vector registers.
"""

from .._jit import FASTMATH, jit


@jit(inline="always", fastmath=FASTMATH)
def add_taps(acc, src, w, L):
    """acc[p] += sum_t w[t] * src[p + t] for p < L, up to five taps per pass over acc."""
    T = w.shape[0]
    t = 0
    while t < T:
        r = T - t
        if r >= 5:
            w0, w1, w2, w3, w4 = w[t], w[t + 1], w[t + 2], w[t + 3], w[t + 4]
            s0, s1, s2 = src[t:t + L], src[t + 1:t + 1 + L], src[t + 2:t + 2 + L]
            s3, s4 = src[t + 3:t + 3 + L], src[t + 4:t + 4 + L]
            for p in range(L):
                acc[p] += w0 * s0[p] + w1 * s1[p] + w2 * s2[p] + w3 * s3[p] + w4 * s4[p]
            t += 5
        elif r == 4:
            w0, w1, w2, w3 = w[t], w[t + 1], w[t + 2], w[t + 3]
            s0, s1 = src[t:t + L], src[t + 1:t + 1 + L]
            s2, s3 = src[t + 2:t + 2 + L], src[t + 3:t + 3 + L]
            for p in range(L):
                acc[p] += w0 * s0[p] + w1 * s1[p] + w2 * s2[p] + w3 * s3[p]
            t += 4
        elif r == 3:
            w0, w1, w2 = w[t], w[t + 1], w[t + 2]
            s0, s1, s2 = src[t:t + L], src[t + 1:t + 1 + L], src[t + 2:t + 2 + L]
            for p in range(L):
                acc[p] += w0 * s0[p] + w1 * s1[p] + w2 * s2[p]
            t += 3
        elif r == 2:
            w0, w1 = w[t], w[t + 1]
            s0, s1 = src[t:t + L], src[t + 1:t + 1 + L]
            for p in range(L):
                acc[p] += w0 * s0[p] + w1 * s1[p]
            t += 2
        else:
            w0 = w[t]
            s0 = src[t:t + L]
            for p in range(L):
                acc[p] += w0 * s0[p]
            t += 1


@jit(inline="always", fastmath=FASTMATH)
def dot_taps(out, d, src, L, scratch):
    """out[t] += sum_p d[p] * src[p + t] for every tap t, up to five taps per pass over d.

    scratch: a length-1 array of the data dtype, so the partial sums keep that dtype
    (and vectorise) while `out` may be float64.
    """
    T = out.shape[0]
    t = 0
    while t < T:
        r = T - t
        a0 = a1 = a2 = a3 = a4 = scratch[0]
        if r >= 5:
            s0, s1, s2 = src[t:t + L], src[t + 1:t + 1 + L], src[t + 2:t + 2 + L]
            s3, s4 = src[t + 3:t + 3 + L], src[t + 4:t + 4 + L]
            for p in range(L):
                g = d[p]
                a0 += g * s0[p]
                a1 += g * s1[p]
                a2 += g * s2[p]
                a3 += g * s3[p]
                a4 += g * s4[p]
            out[t] += a0
            out[t + 1] += a1
            out[t + 2] += a2
            out[t + 3] += a3
            out[t + 4] += a4
            t += 5
        elif r >= 3:
            s0, s1, s2 = src[t:t + L], src[t + 1:t + 1 + L], src[t + 2:t + 2 + L]
            for p in range(L):
                g = d[p]
                a0 += g * s0[p]
                a1 += g * s1[p]
                a2 += g * s2[p]
            out[t] += a0
            out[t + 1] += a1
            out[t + 2] += a2
            t += 3
        else:
            s0 = src[t:t + L]
            for p in range(L):
                a0 += d[p] * s0[p]
            out[t] += a0
            t += 1


@jit(inline="always", fastmath=FASTMATH)
def add_taps3(a0, a1, a2, src, w0, w1, w2, L):
    """add_taps for three accumulators that read the same source with their own taps.

    Sharing each source load between three filters (or channels) turns a load-bound
    loop (6 loads per 5 FMAs) into an FMA-bound one (8 loads per 15 FMAs).
    """
    T = w0.shape[0]
    t = 0
    while t < T:
        r = T - t
        if r >= 5:
            u0, u1, u2, u3, u4 = w0[t], w0[t + 1], w0[t + 2], w0[t + 3], w0[t + 4]
            v0, v1, v2, v3, v4 = w1[t], w1[t + 1], w1[t + 2], w1[t + 3], w1[t + 4]
            z0, z1, z2, z3, z4 = w2[t], w2[t + 1], w2[t + 2], w2[t + 3], w2[t + 4]
            s0, s1, s2 = src[t:t + L], src[t + 1:t + 1 + L], src[t + 2:t + 2 + L]
            s3, s4 = src[t + 3:t + 3 + L], src[t + 4:t + 4 + L]
            for p in range(L):
                x0, x1, x2, x3, x4 = s0[p], s1[p], s2[p], s3[p], s4[p]
                a0[p] += u0 * x0 + u1 * x1 + u2 * x2 + u3 * x3 + u4 * x4
                a1[p] += v0 * x0 + v1 * x1 + v2 * x2 + v3 * x3 + v4 * x4
                a2[p] += z0 * x0 + z1 * x1 + z2 * x2 + z3 * x3 + z4 * x4
            t += 5
        elif r >= 3:
            u0, u1, u2 = w0[t], w0[t + 1], w0[t + 2]
            v0, v1, v2 = w1[t], w1[t + 1], w1[t + 2]
            z0, z1, z2 = w2[t], w2[t + 1], w2[t + 2]
            s0, s1, s2 = src[t:t + L], src[t + 1:t + 1 + L], src[t + 2:t + 2 + L]
            for p in range(L):
                x0, x1, x2 = s0[p], s1[p], s2[p]
                a0[p] += u0 * x0 + u1 * x1 + u2 * x2
                a1[p] += v0 * x0 + v1 * x1 + v2 * x2
                a2[p] += z0 * x0 + z1 * x1 + z2 * x2
            t += 3
        else:
            u0, v0, z0 = w0[t], w1[t], w2[t]
            s0 = src[t:t + L]
            for p in range(L):
                x0 = s0[p]
                a0[p] += u0 * x0
                a1[p] += v0 * x0
                a2[p] += z0 * x0
            t += 1


@jit(inline="always", fastmath=FASTMATH)
def dot_taps2(o0, o1, d0, d1, src, L, scratch):
    """dot_taps for two gradients sharing one source: o_k[t] += sum_p d_k[p] * src[p + t].

    Two filters per pass share the five source loads (7 loads per 10 FMAs instead of
    6 per 5).
    """
    T = o0.shape[0]
    t = 0
    while t < T:
        if T - t >= 5:
            a0 = a1 = a2 = a3 = a4 = scratch[0]
            b0 = b1 = b2 = b3 = b4 = scratch[0]
            s0, s1, s2 = src[t:t + L], src[t + 1:t + 1 + L], src[t + 2:t + 2 + L]
            s3, s4 = src[t + 3:t + 3 + L], src[t + 4:t + 4 + L]
            for p in range(L):
                x0, x1, x2, x3, x4 = s0[p], s1[p], s2[p], s3[p], s4[p]
                g = d0[p]
                h = d1[p]
                a0 += g * x0
                a1 += g * x1
                a2 += g * x2
                a3 += g * x3
                a4 += g * x4
                b0 += h * x0
                b1 += h * x1
                b2 += h * x2
                b3 += h * x3
                b4 += h * x4
            o0[t] += a0
            o0[t + 1] += a1
            o0[t + 2] += a2
            o0[t + 3] += a3
            o0[t + 4] += a4
            o1[t] += b0
            o1[t + 1] += b1
            o1[t + 2] += b2
            o1[t + 3] += b3
            o1[t + 4] += b4
            t += 5
        else:
            a0 = b0 = scratch[0]
            s0 = src[t:t + L]
            for p in range(L):
                x0 = s0[p]
                a0 += d0[p] * x0
                b0 += d1[p] * x0
            o0[t] += a0
            o1[t] += b0
            t += 1


@jit(inline="always", fastmath=FASTMATH)
def dot_taps3(o0, o1, o2, d0, d1, d2, src, L, scratch):
    """dot_taps for three gradients sharing one source: 8 loads per 15 FMAs, and 15
    accumulators, which still fit in AVX-512's vector registers (`_tuning.DOT_FILTERS`)."""
    T = o0.shape[0]
    t = 0
    while t < T:
        if T - t >= 5:
            a0 = a1 = a2 = a3 = a4 = scratch[0]
            b0 = b1 = b2 = b3 = b4 = scratch[0]
            c0 = c1 = c2 = c3 = c4 = scratch[0]
            s0, s1, s2 = src[t:t + L], src[t + 1:t + 1 + L], src[t + 2:t + 2 + L]
            s3, s4 = src[t + 3:t + 3 + L], src[t + 4:t + 4 + L]
            for p in range(L):
                x0, x1, x2, x3, x4 = s0[p], s1[p], s2[p], s3[p], s4[p]
                g = d0[p]
                h = d1[p]
                k = d2[p]
                a0 += g * x0
                a1 += g * x1
                a2 += g * x2
                a3 += g * x3
                a4 += g * x4
                b0 += h * x0
                b1 += h * x1
                b2 += h * x2
                b3 += h * x3
                b4 += h * x4
                c0 += k * x0
                c1 += k * x1
                c2 += k * x2
                c3 += k * x3
                c4 += k * x4
            o0[t] += a0
            o0[t + 1] += a1
            o0[t + 2] += a2
            o0[t + 3] += a3
            o0[t + 4] += a4
            o1[t] += b0
            o1[t + 1] += b1
            o1[t + 2] += b2
            o1[t + 3] += b3
            o1[t + 4] += b4
            o2[t] += c0
            o2[t + 1] += c1
            o2[t + 2] += c2
            o2[t + 3] += c3
            o2[t + 4] += c4
            t += 5
        else:
            a0 = b0 = c0 = scratch[0]
            s0 = src[t:t + L]
            for p in range(L):
                x0 = s0[p]
                a0 += d0[p] * x0
                b0 += d1[p] * x0
                c0 += d2[p] * x0
            o0[t] += a0
            o1[t] += b0
            o2[t] += c0
            t += 1

