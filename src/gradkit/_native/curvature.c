/* Sophia's step in one pass (gradkit.optim.Sophia). The Hessian EMA is refreshed outside
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
