/* One-pass kernels of the Adam variants in gradkit.optim: NAdam, RAdam, AdEMAMix, DiffGrad, Grams,
 * AdaMomentum and MARS (MARS: two passes, the first for the per-tensor norm of its corrected
 * gradient). Each follows its readable chain's operation order (see the optim/<name>.py files):
 * m += (1-b1)(g-m) (torch.lerp's formula), v = b2 v + (1-b2) g g, scalars from hyperparameters and
 * the step in double, rounded to T once. Coupled L2 is added to the gradient after the maximize
 * sign flip; decoupled decay is applied as p = p (1 - lr wd) + (-lr) u, as the readable path's
 * fused apply does (always: the factor is exactly 1 without decay). Per-tensor options are selects
 * between values computed unconditionally, never a conditional floating-point operation: GCC
 * vectorizes such a loop only with AVX-512 masks or when it unswitches it, which it does not do
 * for bodies this large. */
#include "gk.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* torch.maximum: the larger, NaN if either is NaN (bitwise |: no short-circuit branch). */
static inline T gk_max_nan(T a, T b) { return ((a > b) | (a != a)) ? a : b; }

/* 1 + exp(-|d|), the reciprocal of torch.sigmoid(|d|) (callers divide by it once, together with
 * their other divisor: a division is the costliest operation in these loops), branch-free so that
 * loops calling it vectorize (glibc's vector exp is only declared under -ffast-math).
 * exp(-x) for x = min(|d|, cap), where exp(-cap) is far under 1 ulp of 1 so the clamp changes
 * nothing (cap from gk_sigmoid_cap()): Cody-Waite reduction -x = n ln2 + r, |r| <= ln2/2, a Taylor
 * polynomial of degree 7 (float) or 12 (double) by Horner's rule in fused multiply-adds (half the
 * latency chain of separate ones; measured 259 -> 201 ms for a 124M diffGrad step), and 2^n built
 * from the bits of t = -x log2(e) + 1.5 2^k (k = 23 or 52; adding it rounds to the integer n,
 * which then sits in t's low mantissa bits), so there is no float-to-int conversion (none in
 * AVX2 for doubles). exp is within about 1 ulp; NaN propagates (the clamp keeps it, the
 * polynomial carries it). */
static volatile const double gk_sigmoid_caps[2] = {80.0, 700.0};

/* The clamp bound for T, read through a volatile once per tensor: with a literal, GCC folds the
 * clamp's constant arm into the multiplications that follow and leaves conditional ones, which
 * keep the loop scalar without AVX-512 masks. */
static inline T gk_sigmoid_cap(void) {
    return (T)gk_sigmoid_caps[sizeof(T) == sizeof(float) ? 0 : 1];
}

static inline T gk_inv_sigmoid_abs(T d, T cap) {
    if (sizeof(T) == sizeof(float)) {
        float x = fabsf((float)d);
        x = x > (float)cap ? (float)cap : x;
        const float t = x * -1.44269504f + 12582912.0f; /* 1.5 2^23, bits 0x4B400000 */
        const float nf = t - 12582912.0f;
        const float r = GK_FMA(nf, -1.42860677e-6f, GK_FMA(nf, -0.693145752f, -x));
        float q = 1.0f / 5040.0f;
        q = GK_FMA(q, r, 1.0f / 720.0f);
        q = GK_FMA(q, r, 1.0f / 120.0f);
        q = GK_FMA(q, r, 1.0f / 24.0f);
        q = GK_FMA(q, r, 1.0f / 6.0f);
        q = GK_FMA(q, r, 0.5f);
        q = GK_FMA(q, r, 1.0f);
        q = GK_FMA(q, r, 1.0f);
        uint32_t bits;
        memcpy(&bits, &t, sizeof bits);
        bits = (bits - 0x4B400000u + 127u) << 23;
        float scale;
        memcpy(&scale, &bits, sizeof scale);
        return (T)(1.0f + q * scale);
    } else {
        double x = fabs((double)d);
        x = x > (double)cap ? (double)cap : x;
        const double t = x * -1.4426950408889634 + 6755399441055744.0; /* 1.5 2^52 */
        const double nd = t - 6755399441055744.0;
        const double r =
            GK_FMA(nd, -1.90821492927058770002e-10, GK_FMA(nd, -6.93147180369123816490e-01, -x));
        double q = 1.0 / 479001600.0;
        q = GK_FMA(q, r, 1.0 / 39916800.0);
        q = GK_FMA(q, r, 1.0 / 3628800.0);
        q = GK_FMA(q, r, 1.0 / 362880.0);
        q = GK_FMA(q, r, 1.0 / 40320.0);
        q = GK_FMA(q, r, 1.0 / 5040.0);
        q = GK_FMA(q, r, 1.0 / 720.0);
        q = GK_FMA(q, r, 1.0 / 120.0);
        q = GK_FMA(q, r, 1.0 / 24.0);
        q = GK_FMA(q, r, 1.0 / 6.0);
        q = GK_FMA(q, r, 0.5);
        q = GK_FMA(q, r, 1.0);
        q = GK_FMA(q, r, 1.0);
        uint64_t bits;
        memcpy(&bits, &t, sizeof bits);
        bits = (bits - 0x4338000000000000u + 1023u) << 52;
        double scale;
        memcpy(&scale, &bits, sizeof scale);
        return (T)(1.0 + q * scale);
    }
}

/* ---------------------------------------------------------------------------------------------
 * NAdam (torch.optim.NAdam semantics). ptrs: params, grads, exp_avg, exp_avg_sq, mu_product
 * (0-d float64 tensors, whatever T is). hp: lr, beta1, beta2, eps, decoupled wd, L2 wd, maximize,
 * momentum_decay. mu_t = b1 (1 - 0.5 * 0.96^(t psi)); mu_product *= mu_t (once, before the
 * parallel region); u = ((1-mu_t)/(1-prod) g + mu_{t+1}/(1-prod mu_{t+1}) m) / (sqrt(v/bc2) + eps).
 */
static double nadam_mu(double b1, double psi, double t) {
    return b1 * (1.0 - 0.5 * pow(0.96, t * psi));
}

void GK_FN(gk_nadam)(GK_ARGS) {
    const double lr = hp[0], b1 = hp[1], b2 = hp[2], eps = hp[3], wd = hp[4], l2 = hp[5];
    const int maximize = hp[6] != 0;
    const double psi = hp[7];
    (void)out;
    for (int64_t i = 0; i < n; ++i) {
        double *prod = (double *)ptrs[4 * n + i];
        *prod = *prod * nadam_mu(b1, psi, step[i]);
    }
#pragma omp parallel num_threads(nthreads)
    for (int64_t i = 0; i < n; ++i) {
        T *p = GK_PTR(0, i), *m = GK_PTR(2, i), *v = GK_PTR(3, i);
        const T *g = GK_PTR(1, i);
        const double prod = *(const double *)ptrs[4 * n + i];
        const double mu = nadam_mu(b1, psi, step[i]), mu_next = nadam_mu(b1, psi, step[i] + 1.0);
        const T grad_coef = (T)((1.0 - mu) / (1.0 - prod));
        const T avg_coef = (T)(mu_next / (1.0 - prod * mu_next));
        const T w = (T)(1.0 - b1), lc = gk_lerp_coeff(w), b2t = (T)b2, one_m_b2 = (T)(1.0 - b2);
        const int small = fabs(w) < (T)0.5;
        const T bc2 = (T)(1.0 - pow(b2, step[i]));
        const T decay = (T)(1.0 - lr * wd), neg_lr = (T)(-lr), l2t = (T)l2, epst = (T)eps;
        const T sgn = maximize ? (T)-1 : (T)1;
        const int has_l2 = l2 != 0;
#pragma omp for schedule(static) nowait
        for (int64_t k = 0; k < numel[i]; ++k) {
            T gk = sgn * g[k];
            gk = has_l2 ? gk + l2t * p[k] : gk;
            const T mk = gk_lerp(m[k], gk, lc, small);
            const T vk = v[k] * b2t + one_m_b2 * gk * gk;
            m[k] = mk;
            v[k] = vk;
            const T u = (gk * grad_coef + mk * avg_coef) / (sqrt(vk / bc2) + epst);
            p[k] = p[k] * decay + neg_lr * u;
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * RAdam (torch.optim.RAdam semantics). ptrs: params, grads, exp_avg, exp_avg_sq.
 * hp: lr, beta1, beta2, eps, decoupled wd, L2 wd, maximize.
 * u = m / bc1, and where rho_t > 5: u / ((sqrt(v) + eps) / (r_t sqrt(bc2))). */
void GK_FN(gk_radam)(GK_ARGS) {
    const double lr = hp[0], b1 = hp[1], b2 = hp[2], eps = hp[3], wd = hp[4], l2 = hp[5];
    const int maximize = hp[6] != 0;
    const double rho_inf = 2.0 / (1.0 - b2) - 1.0;
    (void)out;
#pragma omp parallel num_threads(nthreads)
    for (int64_t i = 0; i < n; ++i) {
        T *p = GK_PTR(0, i), *m = GK_PTR(2, i), *v = GK_PTR(3, i);
        const T *g = GK_PTR(1, i);
        const double t = step[i], b2t_pow = pow(b2, t);
        const double rho_t = rho_inf - 2.0 * t * b2t_pow / (1.0 - b2t_pow);
        const int adaptive = rho_t > 5.0;
        double scale = 1.0;
        if (adaptive) {
            const double r = sqrt((rho_t - 4) * (rho_t - 2) * rho_inf /
                                  ((rho_inf - 4) * (rho_inf - 2) * rho_t));
            scale = r * sqrt(1.0 - b2t_pow);
        }
        const T scalet = (T)scale, bc1 = (T)(1.0 - pow(b1, t));
        const T w = (T)(1.0 - b1), lc = gk_lerp_coeff(w), b2t = (T)b2, one_m_b2 = (T)(1.0 - b2);
        const int small = fabs(w) < (T)0.5;
        const T decay = (T)(1.0 - lr * wd), neg_lr = (T)(-lr), l2t = (T)l2, epst = (T)eps;
        const T sgn = maximize ? (T)-1 : (T)1;
        const int has_l2 = l2 != 0;
#pragma omp for schedule(static) nowait
        for (int64_t k = 0; k < numel[i]; ++k) {
            T gk = sgn * g[k];
            gk = has_l2 ? gk + l2t * p[k] : gk;
            const T mk = gk_lerp(m[k], gk, lc, small);
            const T vk = v[k] * b2t + one_m_b2 * gk * gk;
            m[k] = mk;
            v[k] = vk;
            const T plain = mk / bc1;
            const T u = adaptive ? plain / ((sqrt(vk) + epst) / scalet) : plain;
            p[k] = p[k] * decay + neg_lr * u;
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * AdEMAMix. ptrs: params, grads, exp_avg_slow, exp_avg_sq[, exp_avg_fast (when beta1 != 0)].
 * hp: lr, beta1, beta2, beta3, alpha, alpha_warmup, beta3_warmup (0: no warm-up), eps,
 * decoupled wd, maximize. alpha(t) and beta3(t) as alpha_scheduler / beta3_scheduler in
 * optim/ademamix.py (same double arithmetic). u = (alpha_t m2 + m1/bc1) / (sqrt(v)/sqrt(bc2) + eps)
 * with m1 = g when beta1 == 0. */
static double ademamix_half_life(double beta) { return beta == 0 ? 0.0 : log(0.5) / log(beta); }

static double ademamix_alpha(double t, double alpha, double warmup) {
    if (warmup == 0) return alpha;
    const double a = t * alpha / warmup;
    return alpha < a ? alpha : a;
}

static double ademamix_beta3(double t, double start, double b3, double warmup) {
    if (warmup == 0 || t >= warmup) return b3;
    const double a = t / warmup;
    const double h = (1.0 - a) * ademamix_half_life(start) + a * ademamix_half_life(b3);
    if (!(h > 0)) return 0.0;
    const double b = pow(0.5, 1.0 / h);
    return b3 < b ? b3 : b;
}

void GK_FN(gk_ademamix)(GK_ARGS) {
    const double lr = hp[0], b1 = hp[1], b2 = hp[2], b3 = hp[3], alpha = hp[4];
    const double alpha_warmup = hp[5], beta3_warmup = hp[6], eps = hp[7], wd = hp[8];
    const int maximize = hp[9] != 0, fast = b1 != 0;
    (void)out;
#pragma omp parallel num_threads(nthreads)
    for (int64_t i = 0; i < n; ++i) {
        T *p = GK_PTR(0, i), *slow = GK_PTR(2, i), *v = GK_PTR(3, i);
        T *m = fast ? GK_PTR(4, i) : slow; /* not touched without a fast EMA */
        const T *g = GK_PTR(1, i);
        const double t = step[i];
        const double beta3_t = ademamix_beta3(t, b1, b3, beta3_warmup);
        const T alpha_t = (T)ademamix_alpha(t, alpha, alpha_warmup);
        const T w3 = (T)(1.0 - beta3_t), lc3 = gk_lerp_coeff(w3);
        const int small3 = fabs(w3) < (T)0.5;
        const T w1 = (T)(1.0 - b1), lc1 = gk_lerp_coeff(w1);
        const int small1 = fabs(w1) < (T)0.5;
        const T b2t = (T)b2, one_m_b2 = (T)(1.0 - b2);
        const T bc1 = (T)(fast ? 1.0 - pow(b1, t) : 1.0), sbc2 = (T)sqrt(1.0 - pow(b2, t));
        const T decay = (T)(1.0 - lr * wd), neg_lr = (T)(-lr), epst = (T)eps;
        const T sgn = maximize ? (T)-1 : (T)1;
        if (fast) {
#pragma omp for schedule(static) nowait
            for (int64_t k = 0; k < numel[i]; ++k) {
                const T gk = sgn * g[k];
                const T mk = gk_lerp(m[k], gk, lc1, small1);
                const T vk = v[k] * b2t + one_m_b2 * gk * gk;
                const T sk = gk_lerp(slow[k], gk, lc3, small3);
                m[k] = mk;
                v[k] = vk;
                slow[k] = sk;
                const T u = (sk * alpha_t + mk / bc1) / (sqrt(vk) / sbc2 + epst);
                p[k] = p[k] * decay + neg_lr * u;
            }
        } else {
#pragma omp for schedule(static) nowait
            for (int64_t k = 0; k < numel[i]; ++k) {
                const T gk = sgn * g[k];
                const T vk = v[k] * b2t + one_m_b2 * gk * gk;
                const T sk = gk_lerp(slow[k], gk, lc3, small3);
                v[k] = vk;
                slow[k] = sk;
                const T u = (sk * alpha_t + gk) / (sqrt(vk) / sbc2 + epst);
                p[k] = p[k] * decay + neg_lr * u;
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * diffGrad. ptrs: params, grads, exp_avg, exp_avg_sq, previous_grad.
 * hp: lr, beta1, beta2, eps, L2 wd, maximize, eps "uncorrected" (0/1).
 * xi = sigmoid(|g_prev - g|); g_prev = g; u = (m xi) / bc1 / d with d = sqrt(v)/sqrt(bc2) + eps
 * (corrected) or (sqrt(v) + eps)/sqrt(bc2) (uncorrected), both written as
 * (sqrt(v) + e1) isbc2 + e2 with one of e1, e2 zero (adding 0 is exact) and isbc2 = 1/sqrt(bc2).
 * The step is p += (-lr/bc1) (m / ((1 + exp(-|g_prev - g|)) d)): one division per element where
 * the readable chain's order has four (the sigmoid's, /bc1, /sqrt(bc2), /d); the result differs
 * from it by a few ulp (float32: 4-5 ops of 2^-24 each; tests allow 2e-6). Measured with the
 * 512-bit vectors and the fused exp: 259 -> 138 ms per 124M step (torch fused AdamW ~107 ms;
 * diffGrad moves 36 bytes per parameter to AdamW's 28). */
void GK_FN(gk_diffgrad)(GK_ARGS) {
    const double lr = hp[0], b1 = hp[1], b2 = hp[2], eps = hp[3], l2 = hp[4];
    const int maximize = hp[5] != 0, uncorrected = hp[6] != 0;
    (void)out;
#pragma omp parallel num_threads(nthreads)
    for (int64_t i = 0; i < n; ++i) {
        T *p = GK_PTR(0, i), *m = GK_PTR(2, i), *v = GK_PTR(3, i), *prev = GK_PTR(4, i);
        const T *g = GK_PTR(1, i);
        const T w = (T)(1.0 - b1), lc = gk_lerp_coeff(w), b2t = (T)b2, one_m_b2 = (T)(1.0 - b2);
        const int small = fabs(w) < (T)0.5;
        const T isbc2 = (T)(1.0 / sqrt(1.0 - pow(b2, step[i])));
        const T neg_lr_bc1 = (T)(-lr / (1.0 - pow(b1, step[i]))), l2t = (T)l2;
        const int has_l2 = l2 != 0;
        const T cap = gk_sigmoid_cap();
        const T eps_in = (T)(uncorrected ? eps : 0.0), eps_out = (T)(uncorrected ? 0.0 : eps);
        const T sgn = maximize ? (T)-1 : (T)1;
#pragma omp for schedule(static) nowait
        for (int64_t k = 0; k < numel[i]; ++k) {
            T gk = sgn * g[k];
            /* the select is on the operand: GCC sinks `l2t * p[k]` into a select's arm, and a
             * conditional multiply keeps this loop scalar without AVX-512 (gk + 0 * 0 only turns
             * a -0 gradient into +0) */
            gk = gk + l2t * (has_l2 ? p[k] : (T)0);
            const T mk = gk_lerp(m[k], gk, lc, small);
            const T vk = v[k] * b2t + one_m_b2 * gk * gk;
            const T inv_xi = gk_inv_sigmoid_abs(prev[k] - gk, cap);
            m[k] = mk;
            v[k] = vk;
            prev[k] = gk;
            const T d = (sqrt(vk) + eps_in) * isbc2 + eps_out;
            p[k] = p[k] + neg_lr_bc1 * (mk / (inv_xi * d));
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * Grams. ptrs: params, grads, exp_avg, exp_avg_sq.
 * hp: lr, beta1, beta2, eps, decoupled wd, maximize, eps "uncorrected" (0/1).
 * u = |m| / bc1 / d * sign(g) (torch.sign: 0 for 0 and NaN), d as in diffGrad (one division). */
void GK_FN(gk_grams)(GK_ARGS) {
    const double lr = hp[0], b1 = hp[1], b2 = hp[2], eps = hp[3], wd = hp[4];
    const int maximize = hp[5] != 0, uncorrected = hp[6] != 0;
    (void)out;
#pragma omp parallel num_threads(nthreads)
    for (int64_t i = 0; i < n; ++i) {
        T *p = GK_PTR(0, i), *m = GK_PTR(2, i), *v = GK_PTR(3, i);
        const T *g = GK_PTR(1, i);
        const T w = (T)(1.0 - b1), lc = gk_lerp_coeff(w), b2t = (T)b2, one_m_b2 = (T)(1.0 - b2);
        const int small = fabs(w) < (T)0.5;
        const T bc1 = (T)(1.0 - pow(b1, step[i])), sbc2 = (T)sqrt(1.0 - pow(b2, step[i]));
        const T decay = (T)(1.0 - lr * wd), neg_lr = (T)(-lr);
        const T eps_in = (T)(uncorrected ? eps : 0.0), eps_out = (T)(uncorrected ? 0.0 : eps);
        const T sgn = maximize ? (T)-1 : (T)1;
#pragma omp for schedule(static) nowait
        for (int64_t k = 0; k < numel[i]; ++k) {
            const T gk = sgn * g[k];
            const T mk = gk_lerp(m[k], gk, lc, small);
            const T vk = v[k] * b2t + one_m_b2 * gk * gk;
            m[k] = mk;
            v[k] = vk;
            const T d = (sqrt(vk) + eps_in) / sbc2 + eps_out;
            const T u = fabs(mk) / bc1 / d * gk_sign(gk);
            p[k] = p[k] * decay + neg_lr * u;
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * AdaMomentum (AdaM3). ptrs: params, grads, exp_avg, exp_avg_var[, max_exp_avg_var].
 * hp: lr, beta1, beta2, eps, decoupled wd, L2 wd, maximize, amsgrad.
 * v = b2 v + (1-b2) m m + eps (eps stored in v); u = (m / (sqrt(v_hat)/sqrt(bc2))) / bc1. */
/* The element update; `ams` is a literal at each call (one loop each: with vmax aliasing v, the
 * aliasing check would send the loop to its scalar version). */
static inline T adamomentum_elem(T *p, const T *g, T *m, T *v, T *vmax, int ams, int64_t k,
                                 T sgn, T l2t, int l2, T lc, int small, T b2t, T one_m_b2, T epst,
                                 T sbc2, T bc1, T decay, T neg_lr) {
    T gk = sgn * g[k];
    gk = l2 ? gk + l2t * p[k] : gk;
    const T mk = gk_lerp(m[k], gk, lc, small);
    T vk = (v[k] * b2t + one_m_b2 * mk * mk) + epst;
    m[k] = mk;
    v[k] = vk;
    if (ams) {
        vk = gk_max_nan(vmax[k], vk);
        vmax[k] = vk;
    }
    const T u = (mk / (sqrt(vk) / sbc2)) / bc1;
    return p[k] * decay + neg_lr * u;
}

void GK_FN(gk_adamomentum)(GK_ARGS) {
    const double lr = hp[0], b1 = hp[1], b2 = hp[2], eps = hp[3], wd = hp[4], l2 = hp[5];
    const int maximize = hp[6] != 0, amsgrad = hp[7] != 0;
    (void)out;
#pragma omp parallel num_threads(nthreads)
    for (int64_t i = 0; i < n; ++i) {
        T *p = GK_PTR(0, i), *m = GK_PTR(2, i), *v = GK_PTR(3, i);
        const T *g = GK_PTR(1, i);
        const T w = (T)(1.0 - b1), lc = gk_lerp_coeff(w), b2t = (T)b2, one_m_b2 = (T)(1.0 - b2);
        const int small = fabs(w) < (T)0.5, has_l2 = l2 != 0;
        const T bc1 = (T)(1.0 - pow(b1, step[i])), sbc2 = (T)sqrt(1.0 - pow(b2, step[i]));
        const T decay = (T)(1.0 - lr * wd), neg_lr = (T)(-lr), l2t = (T)l2, epst = (T)eps;
        const T sgn = maximize ? (T)-1 : (T)1;
        if (amsgrad) {
            T *vmax = GK_PTR(4, i);
#pragma omp for schedule(static) nowait
            for (int64_t k = 0; k < numel[i]; ++k)
                p[k] = adamomentum_elem(p, g, m, v, vmax, 1, k, sgn, l2t, has_l2, lc, small,
                                        b2t, one_m_b2, epst, sbc2, bc1, decay, neg_lr);
        } else {
#pragma omp for schedule(static) nowait
            for (int64_t k = 0; k < numel[i]; ++k)
                p[k] = adamomentum_elem(p, g, m, v, NULL, 0, k, sgn, l2t, has_l2, lc, small,
                                        b2t, one_m_b2, epst, sbc2, bc1, decay, neg_lr);
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * MARS-AdamW, approximate form, for the tensors that take the MARS update (the Python side sends
 * the AdamW-fallback tensors to gk_adam). ptrs: params, grads, exp_avg, exp_avg_sq, last_grad.
 * hp: lr, beta1, beta2, eps, weight_decay, gamma, maximize, check (gk_stop_nonfinite on ||c||).
 * c = (g - g_prev) coef + g with coef = gamma b1/(1-b1) (0 at t = 1); pass 1: ||c|| of every
 * tensor (summed in double, per thread, then over threads in a fixed order: deterministic);
 * pass 2: c /= max(||c||, 1) (NaN propagates), g_prev = g, Adam on c, u += wd p, p += -lr u.
 * out[i * GK_OUT] receives max(||c_i||, 1). */
static inline void gk_chunk(int64_t len, int nthr, int tid, int64_t *lo, int64_t *hi) {
    const int64_t per = (len + nthr - 1) / nthr;
    int64_t a = per * tid;
    a = a < len ? a : len;
    *lo = a;
    *hi = a + per < len ? a + per : len;
}

void GK_FN(gk_mars)(GK_ARGS) {
    const double lr = hp[0], b1 = hp[1], b2 = hp[2], eps = hp[3], wd = hp[4], gamma = hp[5];
    const int maximize = hp[6] != 0, has_wd = wd != 0, check = hp[7] != 0;
    const double scale = gamma * b1 / (1.0 - b1);
    int nthr = nthreads > 0 ? nthreads : 1;
    double *partial = calloc((size_t)(n > 0 ? n : 1) * (size_t)nthr, sizeof(double));
    if (partial == NULL) {
        nthr = 1; /* out[i * GK_OUT + 1] (zeroed by the caller) holds the one partial sum */
    }
#pragma omp parallel num_threads(nthr)
    {
        const int team = omp_get_num_threads(), tid = omp_get_thread_num();
        const T sgn = maximize ? (T)-1 : (T)1;
        for (int64_t i = 0; i < n; ++i) {
            const T *g = GK_PTR(1, i), *last = GK_PTR(4, i);
            const T coef = (T)(step[i] == 1.0 ? 0.0 : scale);
            int64_t lo, hi;
            gk_chunk(numel[i], team, tid, &lo, &hi);
            double s = 0.0;
#pragma omp simd reduction(+ : s)
            for (int64_t k = lo; k < hi; ++k) {
                const T gk = sgn * g[k];
                const T c = (gk - last[k]) * coef + gk;
                s += (double)c * (double)c;
            }
            if (partial != NULL)
                partial[i * nthr + tid] = s;
            else
                out[i * GK_OUT + 1] = s;
        }
#pragma omp barrier
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; ++i) {
            double s = 0.0;
            if (partial != NULL)
                for (int j = 0; j < team; ++j) s += partial[i * nthr + j];
            else
                s = out[i * GK_OUT + 1];
            const double norm = sqrt(s);
            out[i * GK_OUT] = (norm > 1.0 || norm != norm) ? norm : 1.0;
        }
        /* the implicit barrier of the loop above publishes out[] to every thread */
        const int stop = gk_stop_nonfinite(check, out, n, 0);
        for (int64_t i = 0; !stop && i < n; ++i) {
            T *p = GK_PTR(0, i), *m = GK_PTR(2, i), *v = GK_PTR(3, i), *last = GK_PTR(4, i);
            const T *g = GK_PTR(1, i);
            const T coef = (T)(step[i] == 1.0 ? 0.0 : scale), norm = (T)out[i * GK_OUT];
            const T w = (T)(1.0 - b1), lc = gk_lerp_coeff(w), b2t = (T)b2, one_m_b2 = (T)(1.0 - b2);
            const int small = fabs(w) < (T)0.5;
            const T bc1 = (T)(1.0 - pow(b1, step[i])), sbc2 = (T)sqrt(1.0 - pow(b2, step[i]));
            const T neg_lr = (T)(-lr), wdt = (T)wd, epst = (T)eps;
            int64_t lo, hi;
            gk_chunk(numel[i], team, tid, &lo, &hi);
            for (int64_t k = lo; k < hi; ++k) {
                const T gk = sgn * g[k];
                const T c = ((gk - last[k]) * coef + gk) / norm;
                last[k] = gk;
                const T mk = gk_lerp(m[k], c, lc, small);
                const T vk = v[k] * b2t + one_m_b2 * c * c;
                m[k] = mk;
                v[k] = vk;
                T u = (mk / (sqrt(vk) / sbc2 + epst)) / bc1;
                u = has_wd ? u + wdt * p[k] : u;
                p[k] = p[k] + neg_lr * u;
            }
        }
    }
    free(partial);
}
