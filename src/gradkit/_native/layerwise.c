/* Layer-wise methods: LAMB, LARS, NovoGrad, AdamP and SGDP (gradkit.optim.lamb, lars, novograd,
 * adamp). Each needs a per-tensor reduction (a norm, a dot product) before it can update, so a
 * tensor takes two passes inside one call: pass 1 updates the state and accumulates the sums,
 * pass 2 applies the step with the reduced values.
 *
 * Threads split each tensor into the same contiguous shares in both passes (gk_share), so pass 2
 * re-reads what the thread itself touched in pass 1. Pass-1 sums are accumulated in double per
 * thread (an `omp simd` reduction, which may reassociate: the order differs from torch's, well
 * within the tests' tolerances), added atomically into the caller-zeroed out[i * GK_OUT + s], and
 * read after a barrier; every thread then derives the same per-tensor scalars from them.
 * Tensors whose update needs no reduction (layer adaptation off, AdamP/SGDP parameters that are
 * never projected) take one pass. Operation order within an element follows the readable chains
 * (transforms applied one after another, then p += -lr * u). */
#include <omp.h>
#include <stdlib.h>

#include "gk.h"

/* Pass-1 sums of LAMB and AdamP/SGDP: accumulated in T over blocks of GK_SUM_BLOCK values (in
 * float32 vectors for float32 tensors, as torch's float32 reductions are; widening every term to
 * double made those passes ~5% slower), the blocks added up in double. */
#define GK_SUM_BLOCK 1024

static inline void gk_add(double *dst, double x) {
#pragma omp atomic
    *dst += x;
}

/* Adam's moments, shared by LAMB and AdamP: m = lerp(m, g, 1 - b1); v = v b2 + (1 - b2) g g. */
typedef struct {
    T lc, b2, one_m_b2; /* lc: the lerp coefficient of w = 1 - b1 (gk.h) */
    int small;
} gk_moments;

static gk_moments gk_moments_of(double b1, double b2) {
    const T w = (T)(1.0 - b1);
    return (gk_moments){gk_lerp_coeff(w), (T)b2, (T)(1.0 - b2), fabs(w) < (T)0.5};
}

/* ---------------------------------------------------------------------------------------------
 * LAMB. ptrs: params, grads, exp_avg, exp_avg_sq.
 * hp: lr, beta1, beta2, eps, weight_decay, bias_correction, layer_adaptation, bounded, lower,
 *     upper, maximize.
 * r = (m / (sqrt(v)/sqrt(bc2) + eps)) / bc1 (or m / (sqrt(v) + eps)); u = r + wd p;
 * (computed with reciprocals, see gk_lamb_dir);
 * ratio = phi(|p|)/|u| (1 when either is 0 or not a number > 0); p += (u ratio)(-lr).
 * out[i]: |p|^2, |u|^2. */
/* The corrected direction with reciprocals of the bias corrections (isbc2 = 1/sqrt(bc2), ibc1 =
 * 1/bc1, each rounded once from double): one division per element instead of the readable
 * chain's three, in each of the two passes (the result moves by an ulp or two; LAMB and AdamP
 * were divider-bound: 124M step ~224 -> ~200 ms). */
typedef struct {
    T isbc2, ibc1, eps;
    int corrected;
} gk_lamb_dir;

static inline T gk_lamb_r(T m, T v, const gk_lamb_dir *d) {
    return d->corrected ? (m / (sqrt(v) * d->isbc2 + d->eps)) * d->ibc1 : m / (sqrt(v) + d->eps);
}

void GK_FN(gk_lamb)(GK_ARGS) {
    const double lr = hp[0], b1 = hp[1], b2 = hp[2], eps = hp[3], wd = hp[4];
    const int corrected = hp[5] != 0, adapt = hp[6] != 0, bounded = hp[7] != 0;
    const double lower = hp[8], upper = hp[9];
    const int maximize = hp[10] != 0;
    const gk_moments mo = gk_moments_of(b1, b2);
#pragma omp parallel num_threads(nthreads)
    for (int64_t i = 0; i < n; ++i) {
        T *p = GK_PTR(0, i), *m = GK_PTR(2, i), *v = GK_PTR(3, i);
        const T *g = GK_PTR(1, i);
        const T sgn = maximize ? (T)-1 : (T)1, wdt = (T)wd, neg_lr = (T)(-lr);
        const gk_lamb_dir d = {(T)(1.0 / sqrt(1.0 - pow(b2, step[i]))),
                               (T)(1.0 / (1.0 - pow(b1, step[i]))), (T)eps, corrected};
        const int decay = wd != 0;
        int64_t lo, hi;
        gk_share(numel[i], &lo, &hi);
        if (!adapt) { /* AdamW-like: one pass */
            for (int64_t k = lo; k < hi; ++k) {
                const T gk = sgn * g[k];
                const T mk = gk_lerp(m[k], gk, mo.lc, mo.small);
                const T vk = v[k] * mo.b2 + mo.one_m_b2 * gk * gk;
                m[k] = mk;
                v[k] = vk;
                const T r = gk_lamb_r(mk, vk, &d);
                const T u = decay ? r + wdt * p[k] : r;
                p[k] = p[k] + u * neg_lr;
            }
            continue;
        }
        double pp = 0, uu = 0;
        for (int64_t b0 = lo; b0 < hi; b0 += GK_SUM_BLOCK) { /* see GK_SUM_BLOCK */
            const int64_t b1 = b0 + GK_SUM_BLOCK < hi ? b0 + GK_SUM_BLOCK : hi;
            T bpp = 0, buu = 0;
#pragma omp simd reduction(+ : bpp, buu)
            for (int64_t k = b0; k < b1; ++k) {
                const T gk = sgn * g[k];
                const T mk = gk_lerp(m[k], gk, mo.lc, mo.small);
                const T vk = v[k] * mo.b2 + mo.one_m_b2 * gk * gk;
                m[k] = mk;
                v[k] = vk;
                const T r = gk_lamb_r(mk, vk, &d);
                const T pk = p[k], u = decay ? r + wdt * pk : r;
                bpp += pk * pk;
                buu += u * u;
            }
            pp += bpp, uu += buu;
        }
        gk_add(&out[i * GK_OUT], pp);
        gk_add(&out[i * GK_OUT + 1], uu);
#pragma omp barrier
        const T wn = (T)sqrt(out[i * GK_OUT]), un = (T)sqrt(out[i * GK_OUT + 1]);
        /* clamp that keeps NaN, as torch.clamp */
        const T phi = !bounded ? wn : wn < (T)lower ? (T)lower : wn > (T)upper ? (T)upper : wn;
        const T ratio = (phi > 0 && un > 0) ? phi / un : (T)1;
        for (int64_t k = lo; k < hi; ++k) {
            const T r = gk_lamb_r(m[k], v[k], &d);
            const T u = decay ? r + wdt * p[k] : r;
            p[k] = p[k] + (u * ratio) * neg_lr;
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * LARS. ptrs: params, grads[, momentum_buffer].
 * hp: lr, momentum, weight_decay, trust_coefficient, eps, layer_adaptation, nesterov, maximize,
 *     check (gk_stop_nonfinite on |g|^2).
 * d = g + wd p; ratio = c |p| / (|g| + wd |p| + eps) (1 when |p| or the denominator is not > 0);
 * u = (d ratio)(-lr); b = u on step 1, else b mu + u; p += u + mu b (nesterov) or b.
 * With layer adaptation, pass 1 sums every tensor (out[i]: |p|^2, |g|^2), read-only, before
 * pass 2 updates any: the non-finite check then costs nothing. */
void GK_FN(gk_lars)(GK_ARGS) {
    const double lr = hp[0], mu = hp[1], wd = hp[2], coef = hp[3], eps = hp[4];
    const int adapt = hp[5] != 0, nesterov = hp[6] != 0, maximize = hp[7] != 0;
    const int check = hp[8] != 0, has_buf = mu != 0, decay = wd != 0;
    const T sgn = maximize ? (T)-1 : (T)1, wdt = (T)wd, neg_lr = (T)(-lr), mut = (T)mu;
#pragma omp parallel num_threads(nthreads)
    {
        for (int64_t i = 0; adapt && i < n; ++i) {
            const T *p = GK_PTR(0, i), *g = GK_PTR(1, i);
            int64_t lo, hi;
            gk_share(numel[i], &lo, &hi);
            double pp = 0, gg = 0;
#pragma omp simd reduction(+ : pp, gg)
            for (int64_t k = lo; k < hi; ++k) {
                const double pk = p[k], gk = sgn * g[k];
                pp += pk * pk;
                gg += gk * gk;
            }
            gk_add(&out[i * GK_OUT], pp);
            gk_add(&out[i * GK_OUT + 1], gg);
        }
#pragma omp barrier
        const int stop = adapt && gk_stop_nonfinite(check, out, n, 1);
        for (int64_t i = 0; !stop && i < n; ++i) {
            T *p = GK_PTR(0, i), *b = has_buf ? GK_PTR(2, i) : GK_PTR(0, i);
            const T *g = GK_PTR(1, i);
            const int first = step[i] == 1;
            int64_t lo, hi;
            gk_share(numel[i], &lo, &hi);
            T ratio = 1;
            if (adapt) {
                const T wn = (T)sqrt(out[i * GK_OUT]), gn = (T)sqrt(out[i * GK_OUT + 1]);
                const T den = decay ? gn + wn * wdt : gn;
                ratio = (wn > 0 && den > 0) ? ((T)coef * wn) / (den + (T)eps) : (T)1;
            }
            if (!has_buf) {
                for (int64_t k = lo; k < hi; ++k) {
                    const T gk = sgn * g[k], dk = decay ? gk + wdt * p[k] : gk;
                    const T u = (adapt ? dk * ratio : dk) * neg_lr;
                    p[k] = p[k] + u;
                }
                continue;
            }
            for (int64_t k = lo; k < hi; ++k) {
                const T gk = sgn * g[k], dk = decay ? gk + wdt * p[k] : gk;
                const T u = (adapt ? dk * ratio : dk) * neg_lr;
                const T bk = first ? u : b[k] * mut + u;
                b[k] = bk;
                p[k] = p[k] + (nesterov ? u + mut * bk : bk);
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * NovoGrad. ptrs: params, grads, exp_avg, exp_avg_sq (a 0-d tensor per parameter).
 * hp: lr, beta1, beta2, eps, weight_decay, grad_averaging, maximize, check (on |g|^2).
 * s = |g|^2 (the norm rounded to T, then squared); v = v d + s (1 - d) with d = 0 on step 1,
 * else beta2; q = g / (sqrt(v) + eps) + wd p, times (1 - beta1) with grad averaging;
 * m = m b1 + q; p += m (-lr). Pass 1 sums every tensor, read-only (out[i]: |g|^2); one thread
 * then updates the v scalars (out[i] slot 1: sqrt(v) + eps); pass 2 updates. */
void GK_FN(gk_novograd)(GK_ARGS) {
    const double lr = hp[0], b1 = hp[1], b2 = hp[2], eps = hp[3], wd = hp[4];
    const int averaging = hp[5] != 0, maximize = hp[6] != 0, check = hp[7] != 0;
    const int decay = wd != 0;
    const T sgn = maximize ? (T)-1 : (T)1, wdt = (T)wd, neg_lr = (T)(-lr), b1t = (T)b1;
    const T avg = (T)(1.0 - b1);
#pragma omp parallel num_threads(nthreads)
    {
        gk_sumsq_pass(n, numel, ptrs, 1, out, 0);
#pragma omp barrier
        const int stop = gk_stop_nonfinite(check, out, n, 0);
#pragma omp single
        for (int64_t i = 0; !stop && i < n; ++i) {
            T *v = GK_PTR(3, i);
            const double dd = step[i] == 1 ? 0.0 : b2;
            const T gn = (T)sqrt(out[i * GK_OUT]), sq = gn * gn;
            const T v_new = v[0] * (T)dd + sq * (T)(1.0 - dd);
            v[0] = v_new;
            out[i * GK_OUT + 1] = sqrt(v_new) + (T)eps;
        } /* implicit barrier */
        for (int64_t i = 0; !stop && i < n; ++i) {
            T *p = GK_PTR(0, i), *m = GK_PTR(2, i);
            const T *g = GK_PTR(1, i);
            const T denom = (T)out[i * GK_OUT + 1];
            int64_t lo, hi;
            gk_share(numel[i], &lo, &hi);
            for (int64_t k = lo; k < hi; ++k) {
                T q = (sgn * g[k]) / denom;
                q = decay ? q + wdt * p[k] : q;
                q = averaging ? q * avg : q;
                const T mk = m[k] * b1t + q;
                m[k] = mk;
                p[k] = p[k] + mk * neg_lr;
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * AdamP and SGDP: the update u, then the radial projection (see gradkit.optim.adamp):
 * for a parameter with rows = shape[0] > 0 (given in out[i * GK_OUT]; 0 = never projected),
 * the channel view (rows x numel/rows) and then the layer view (1 x numel) are tested with
 * max_r |g_r . w_r| / (max(|g_r|, eps) max(|w_r|, eps)) < delta / sqrt(row length); the first
 * view that passes gets u_r -= (w_r / (|w_r| + eps)) s_r with s_r = (w_r . u_r) / (|w_r| + eps).
 * Then u += c p with c = wd_proj if projected else wd; p += u (-lr).
 * Pass 1 keeps four sums per row (g.w, g.g, w.w, w.u) in a scratch array (each accumulated in T
 * over blocks of 1,024 values, the blocks in double); the layer view's
 * sums are the rows' sums added up. Rows inside one thread's share are written directly, rows
 * that straddle two shares are added atomically.
 * The kind of update is a constant in each inlined copy of gk_proj_tensor, so every element
 * loop is straight-line code (a loop mixing the kinds does not vectorize). */
enum { GK_GW, GK_GG, GK_WW, GK_WU, GK_SUMS };
/* kinds of update; Nesterov is a kind of its own so that the plain kinds' second pass does not
 * read the gradient */
enum { GK_ADAM, GK_ADAM_NESTEROV, GK_SGD_MOMENTUM, GK_SGD_NESTEROV, GK_SGD_PLAIN };
#define GK_IS_ADAM(kind) ((kind) == GK_ADAM || (kind) == GK_ADAM_NESTEROV)
#define GK_IS_NESTEROV(kind) ((kind) == GK_ADAM_NESTEROV || (kind) == GK_SGD_NESTEROV)

typedef struct {
    /* Adam: numerator m or b1 m + (1 - b1) g; u = (num / (sqrt(v) isbc2 + eps)) ibc1 with
     * isbc2 = 1/sqrt(bc2), ibc1 = 1/bc1 */
    gk_moments mo;
    T b1, one_m_b1, isbc2, ibc1;
    /* SGD: b = b mu + keep g; u = g + mu b (nesterov) or b; without momentum u = g keep */
    T mu, keep;
    /* projection and decay */
    T eps, neg_lr, sgn, wd, wd_proj;
    int decay;
    double delta;
} gk_proj_rule;

/* The update of element k from its (already updated) state s0 (m or the buffer), s1 (v). */
static inline T gk_proj_u(const int kind, T gk, T mk, T vk, const gk_proj_rule r) {
    if (GK_IS_ADAM(kind)) {
        const T num = GK_IS_NESTEROV(kind) ? mk * r.b1 + r.one_m_b1 * gk : mk;
        return (num / (sqrt(vk) * r.isbc2 + r.eps)) * r.ibc1;
    }
    if (kind == GK_SGD_PLAIN) return gk * r.keep;
    return GK_IS_NESTEROV(kind) ? gk + r.mu * mk : mk;
}

/* Update the state of element k in place and return its update u. */
static inline T gk_proj_state(const int kind, T gk, T *s0, T *s1, int64_t k,
                              const gk_proj_rule r) {
    if (GK_IS_ADAM(kind)) {
        const T mk = gk_lerp(s0[k], gk, r.mo.lc, r.mo.small);
        const T vk = s1[k] * r.mo.b2 + r.mo.one_m_b2 * gk * gk;
        s0[k] = mk;
        s1[k] = vk;
        return gk_proj_u(kind, gk, mk, vk, r);
    }
    if (kind == GK_SGD_PLAIN) return gk_proj_u(kind, gk, 0, 0, r);
    const T bk = s0[k] * r.mu + r.keep * gk;
    s0[k] = bk;
    return gk_proj_u(kind, gk, bk, 0, r);
}

/* |cos| of one row (or the whole layer) below the threshold? NaN fails, as max() < t in torch. */
static inline int gk_passes(const double *s, T eps, T threshold) {
    const T gn = (T)sqrt(s[GK_GG]), wn = (T)sqrt(s[GK_WW]);
    const T norms = (gn < eps ? eps : gn) * (wn < eps ? eps : wn);
    return fabs((T)s[GK_GW] / norms) < threshold;
}

/* One tensor, called by every thread of the parallel region (the barrier binds to it). */
static inline __attribute__((always_inline)) void gk_proj_tensor(
    const int kind, T *p, const T *g, T *s0, T *s1, int64_t N, int64_t rows, double *acc,
    const gk_proj_rule r) {
    const T sgn = r.sgn, neg_lr = r.neg_lr, eps = r.eps;
    int64_t lo, hi;
    gk_share(N, &lo, &hi);
    if (rows == 0) { /* never projected: one pass */
        const T wdt = r.wd;
        for (int64_t k = lo; k < hi; ++k) {
            const T u = gk_proj_state(kind, sgn * g[k], s0, s1, k, r);
            const T pk = p[k], ud = r.decay ? u + wdt * pk : u;
            p[k] = pk + ud * neg_lr;
        }
        return;
    }
    const int64_t cols = N / rows;
    for (int64_t row = lo / cols; row * cols < hi; ++row) {
        const int64_t k0 = row * cols > lo ? row * cols : lo;
        const int64_t k1 = (row + 1) * cols < hi ? (row + 1) * cols : hi;
        /* see GK_SUM_BLOCK */
        double gw = 0, gg = 0, ww = 0, wu = 0;
        for (int64_t b0 = k0; b0 < k1; b0 += GK_SUM_BLOCK) {
            const int64_t b1 = b0 + GK_SUM_BLOCK < k1 ? b0 + GK_SUM_BLOCK : k1;
            T bgw = 0, bgg = 0, bww = 0, bwu = 0;
#pragma omp simd reduction(+ : bgw, bgg, bww, bwu)
            for (int64_t k = b0; k < b1; ++k) {
                const T gk = g[k], wk = p[k];
                const T u = gk_proj_state(kind, sgn * g[k], s0, s1, k, r);
                bgw += gk * wk;
                bgg += gk * gk;
                bww += wk * wk;
                bwu += wk * u;
            }
            gw += bgw, gg += bgg, ww += bww, wu += bwu;
        }
        double *a = acc + row * GK_SUMS;
        if (k0 == row * cols && k1 == (row + 1) * cols) { /* this thread's row alone */
            a[GK_GW] = gw, a[GK_GG] = gg, a[GK_WW] = ww, a[GK_WU] = wu;
        } else {
            gk_add(&a[GK_GW], gw), gk_add(&a[GK_GG], gg);
            gk_add(&a[GK_WW], ww), gk_add(&a[GK_WU], wu);
        }
    }
#pragma omp barrier
    /* which view: every thread decides the same from the same sums */
    double layer[GK_SUMS] = {0, 0, 0, 0};
    int channel = 1;
    const T channel_threshold = (T)(r.delta / sqrt((double)cols));
    for (int64_t row = 0; row < rows; ++row) {
        for (int s = 0; s < GK_SUMS; ++s) layer[s] += acc[row * GK_SUMS + s];
        channel = channel && gk_passes(acc + row * GK_SUMS, eps, channel_threshold);
    }
    const int whole = !channel && gk_passes(layer, eps, (T)(r.delta / sqrt((double)N)));
    const int projected = channel || whole;
    const T wdt = projected ? r.wd_proj : r.wd;
    const T layer_den = (T)sqrt(layer[GK_WW]) + eps;
    const T layer_s = (T)layer[GK_WU] / layer_den;
    for (int64_t row = lo / cols; row * cols < hi; ++row) {
        const int64_t k0 = row * cols > lo ? row * cols : lo;
        const int64_t k1 = (row + 1) * cols < hi ? (row + 1) * cols : hi;
        const T den = channel ? (T)sqrt(acc[row * GK_SUMS + GK_WW]) + eps : layer_den;
        const T s = channel ? (T)acc[row * GK_SUMS + GK_WU] / den : layer_s;
        const T s_den = s / den; /* (w / den) s as w (s / den): no division per element */
        for (int64_t k = k0; k < k1; ++k) {
            const T gk = sgn * g[k], pk = p[k];
            const T u = gk_proj_u(kind, gk, s0[k], s1[k], r);
            const T q = projected ? u - pk * s_den : u;
            const T ud = r.decay ? q + wdt * pk : q;
            p[k] = pk + ud * neg_lr;
        }
    }
}

/* out[i * GK_OUT]: rows of tensor i (input). Adam kinds have state m, v; SGD kinds the momentum
 * buffer, or none (GK_SGD_PLAIN). */
static void gk_projected(GK_ARGS, const int kind, gk_proj_rule rule) {
    if (n <= 0) return;
    int64_t *offset = malloc((size_t)n * sizeof *offset);
    int64_t total = 0;
    if (offset == NULL) {
        out[GK_OUT - 1] = -1; /* the caller raises MemoryError; nothing was touched */
        return;
    }
    for (int64_t i = 0; i < n; ++i) {
        offset[i] = total;
        total += (int64_t)out[i * GK_OUT];
    }
    double *rows_sum = calloc((size_t)(total > 0 ? total : 1) * GK_SUMS, sizeof *rows_sum);
    if (rows_sum == NULL) {
        free(offset);
        out[GK_OUT - 1] = -1;
        return;
    }
#pragma omp parallel num_threads(nthreads)
    for (int64_t i = 0; i < n; ++i) {
        T *p = GK_PTR(0, i);
        const T *g = GK_PTR(1, i);
        /* unused state pointers alias p (never written) so loads stay unconditional */
        T *s0 = kind != GK_SGD_PLAIN ? GK_PTR(2, i) : p;
        T *s1 = GK_IS_ADAM(kind) ? GK_PTR(3, i) : p;
        gk_proj_rule r = rule;
        if (GK_IS_ADAM(kind)) {
            r.isbc2 = (T)(1.0 / sqrt(1.0 - pow(hp[2], step[i])));
            r.ibc1 = (T)(1.0 / (1.0 - pow(hp[1], step[i])));
        }
        const int64_t rows = (int64_t)out[i * GK_OUT];
        double *acc = rows_sum + offset[i] * GK_SUMS;
        switch (kind) { /* a constant kind in each copy */
        case GK_ADAM:
            gk_proj_tensor(GK_ADAM, p, g, s0, s1, numel[i], rows, acc, r);
            break;
        case GK_ADAM_NESTEROV:
            gk_proj_tensor(GK_ADAM_NESTEROV, p, g, s0, s1, numel[i], rows, acc, r);
            break;
        case GK_SGD_MOMENTUM:
            gk_proj_tensor(GK_SGD_MOMENTUM, p, g, s0, s1, numel[i], rows, acc, r);
            break;
        case GK_SGD_NESTEROV:
            gk_proj_tensor(GK_SGD_NESTEROV, p, g, s0, s1, numel[i], rows, acc, r);
            break;
        default:
            gk_proj_tensor(GK_SGD_PLAIN, p, g, s0, s1, numel[i], rows, acc, r);
        }
    }
    free(rows_sum);
    free(offset);
}

static gk_proj_rule gk_proj_common(double lr, double wd, double wd_proj, double eps, double delta,
                                   int maximize) {
    gk_proj_rule r = {0};
    r.neg_lr = (T)(-lr);
    r.sgn = maximize ? (T)-1 : (T)1;
    r.wd = (T)wd;
    r.wd_proj = (T)wd_proj;
    r.decay = wd != 0;
    r.eps = (T)eps;
    r.delta = delta;
    return r;
}

/* AdamP. ptrs: params, grads, exp_avg, exp_avg_sq.
 * hp: lr, beta1, beta2, eps, weight_decay, weight_decay * wd_ratio, delta, nesterov, maximize. */
void GK_FN(gk_adamp)(GK_ARGS) {
    const double b1 = hp[1], b2 = hp[2];
    gk_proj_rule r = gk_proj_common(hp[0], hp[4], hp[5], hp[3], hp[6], hp[8] != 0);
    r.mo = gk_moments_of(b1, b2);
    r.b1 = (T)b1;
    r.one_m_b1 = (T)(1.0 - b1);
    const int kind = hp[7] != 0 ? GK_ADAM_NESTEROV : GK_ADAM;
    gk_projected(n, numel, step, ptrs, hp, out, nthreads, kind, r);
}

/* SGDP. ptrs: params, grads[, momentum_buffer].
 * hp: lr, momentum, 1 - dampening, eps, weight_decay / (1 - momentum), that times wd_ratio,
 *     delta, nesterov, maximize. */
void GK_FN(gk_sgdp)(GK_ARGS) {
    gk_proj_rule r = gk_proj_common(hp[0], hp[4], hp[5], hp[3], hp[6], hp[8] != 0);
    r.mu = (T)hp[1];
    r.keep = (T)hp[2];
    const int kind = hp[1] == 0 ? GK_SGD_PLAIN : hp[7] != 0 ? GK_SGD_NESTEROV : GK_SGD_MOMENTUM;
    gk_projected(n, numel, step, ptrs, hp, out, nthreads, kind, r);
}
