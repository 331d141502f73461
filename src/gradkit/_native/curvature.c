/* Curvature-scaled steps: Sophia in one pass (gradkit.optim.Sophia), OASIS in two (below).
 * Sophia: the Hessian EMA is refreshed outside
 * step() (Sophia.update_hessian); the step reads it.
 * ptrs: params, grads, exp_avg, hessian
 * hp: lr, beta1, rho, eps, weight decay, maximize
 * m += (1-b1)(g - m); u = clip(m / max(rho h, eps), -1, 1); p = p (1 - lr wd); p += -lr u.
 * The comparisons are written so that a NaN passes through, as torch's clamp does. */
#include "gk.h"

void GK_FN(gk_sophia)(GK_ARGS) {
    const double lr = hp[0], b1 = hp[1], rho = hp[2], eps = hp[3], wd = hp[4];
    const int maximize = hp[5] != 0;
    (void)out;
    (void)step;
#pragma omp parallel num_threads(nthreads)
    for (int64_t i = 0; i < n; ++i) {
        T *p = GK_PTR(0, i), *m = GK_PTR(2, i);
        const T *g = GK_PTR(1, i), *h = GK_PTR(3, i);
        const T one_m_b1 = (T)(1.0 - b1), rhot = (T)rho, epst = (T)eps;
        const T decay = (T)(1.0 - lr * wd), neg_lr = (T)(-lr);
        const T sgn = maximize ? (T)-1 : (T)1;
#pragma omp for schedule(static) nowait
        for (int64_t k = 0; k < numel[i]; ++k) {
            const T gk = sgn * g[k];
            const T mk = m[k] + one_m_b1 * (gk - m[k]);
            m[k] = mk;
            T d = rhot * h[k];
            d = d < epst ? epst : d;
            T u = mk / d;
            u = u < (T)-1 ? (T)-1 : u;
            u = u > (T)1 ? (T)1 : u;
            T pk = p[k];
            if (wd != 0) pk *= decay;
            p[k] = pk + neg_lr * u;
        }
    }
}

/* OASIS (gradkit.optim.OASIS): two kernels around the group's adaptive step size, which needs
 * sums over the whole group (the Python side adds the per-tensor sums and applies the rule,
 * OASIS._run_native). s = max(|D|, alpha) (a NaN in D passes through, as torch.clamp_min).
 *
 * gk_oasis_sums, read-only. ptrs: params, grads, hessian, prev_param, prev_grad.
 * hp: alpha, maximize. out[i]: sum (w - w_prev)^2 s, sum (g - g_prev)^2 / s; each term in T as
 * the readable chain computes it, summed in double per thread (a vectorized sum: the order
 * differs from torch's, well within the tests' tolerances). */
static inline T gk_oasis_scale(T d, T alpha) {
    const T a = fabs(d);
    return a < alpha ? alpha : a;
}

void GK_FN(gk_oasis_sums)(GK_ARGS) {
    const T alpha = (T)hp[0], sgn = hp[1] != 0 ? (T)-1 : (T)1;
    (void)step;
#pragma omp parallel num_threads(nthreads)
    for (int64_t i = 0; i < n; ++i) {
        const T *p = GK_PTR(0, i), *g = GK_PTR(1, i), *h = GK_PTR(2, i);
        const T *pp = GK_PTR(3, i), *pg = GK_PTR(4, i);
        int64_t lo, hi;
        gk_share(numel[i], &lo, &hi);
        double num = 0, den = 0;
#pragma omp simd reduction(+ : num, den)
        for (int64_t k = lo; k < hi; ++k) {
            const T s = gk_oasis_scale(h[k], alpha);
            const T dw = p[k] - pp[k], dg = sgn * g[k] - pg[k];
            num += (double)((dw * dw) * s);
            den += (double)((dg * dg) / s);
        }
#pragma omp atomic
        out[i * GK_OUT] += num;
#pragma omp atomic
        out[i * GK_OUT + 1] += den;
    }
}

/* gk_oasis_step. ptrs: params, grads, hessian[, prev_param, prev_grad].
 * hp: -eta, alpha, maximize, adaptive (1: record prev_param = w, prev_grad = g before the step).
 * w += (g / s) (-eta), the readable chain's order. */
void GK_FN(gk_oasis_step)(GK_ARGS) {
    const T neg_eta = (T)hp[0], alpha = (T)hp[1], sgn = hp[2] != 0 ? (T)-1 : (T)1;
    const int adaptive = hp[3] != 0;
    (void)step;
    (void)out;
#pragma omp parallel num_threads(nthreads)
    for (int64_t i = 0; i < n; ++i) {
        T *p = GK_PTR(0, i);
        const T *g = GK_PTR(1, i), *h = GK_PTR(2, i);
        if (adaptive) {
            T *pp = GK_PTR(3, i), *pg = GK_PTR(4, i);
#pragma omp for schedule(static) nowait
            for (int64_t k = 0; k < numel[i]; ++k) {
                const T gk = sgn * g[k], pk = p[k];
                pp[k] = pk;
                pg[k] = gk;
                p[k] = pk + (gk / gk_oasis_scale(h[k], alpha)) * neg_eta;
            }
        } else {
#pragma omp for schedule(static) nowait
            for (int64_t k = 0; k < numel[i]; ++k)
                p[k] = p[k] + ((sgn * g[k]) / gk_oasis_scale(h[k], alpha)) * neg_eta;
        }
    }
}
