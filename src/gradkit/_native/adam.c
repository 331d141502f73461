/* Adam / AdamW / AMSGrad in one pass over memory (gradkit.optim.Adam, AdamW).
 * ptrs: params, grads, exp_avg, exp_avg_sq[, max_exp_avg_sq]
 * hp: lr, beta1, beta2, eps, decoupled weight decay, L2 weight decay, maximize, amsgrad
 * Operation order as the readable path (torch's): m += (1-b1)(g-m); v = b2 v + (1-b2) g g;
 * u = (m / (sqrt(v)/sqrt(bc2) + eps)) / bc1; p = p (1 - lr wd); p += -lr u. */
#include "gk.h"

void GK_FN(gk_adam)(GK_ARGS) {
    const double lr = hp[0], b1 = hp[1], b2 = hp[2], eps = hp[3], wd = hp[4], l2 = hp[5];
    const int maximize = hp[6] != 0, amsgrad = hp[7] != 0;
    (void)out;
#pragma omp parallel num_threads(nthreads)
    for (int64_t i = 0; i < n; ++i) {
        T *p = GK_PTR(0, i), *m = GK_PTR(2, i), *v = GK_PTR(3, i);
        const T *g = GK_PTR(1, i);
        T *vmax = amsgrad ? GK_PTR(4, i) : v;
        const T one_m_b1 = (T)(1.0 - b1), b2t = (T)b2, one_m_b2 = (T)(1.0 - b2);
        const T bc1 = (T)(1.0 - pow(b1, step[i]));
        const T sbc2 = (T)sqrt(1.0 - pow(b2, step[i]));
        const T decay = (T)(1.0 - lr * wd), neg_lr = (T)(-lr), l2t = (T)l2, epst = (T)eps;
        const T sgn = maximize ? (T)-1 : (T)1;
#pragma omp for schedule(static) nowait
        for (int64_t k = 0; k < numel[i]; ++k) {
            T gk = sgn * g[k];
            if (l2 != 0) gk += l2t * p[k];
            T mk = m[k] + one_m_b1 * (gk - m[k]);
            T vk = v[k] * b2t + one_m_b2 * gk * gk;
            m[k] = mk;
            v[k] = vk;
            if (amsgrad) {
                vk = vmax[k] > vk ? vmax[k] : vk;
                vmax[k] = vk;
            }
            const T u = (mk / (sqrt(vk) / sbc2 + epst)) / bc1;
            T pk = p[k];
            if (wd != 0) pk *= decay;
            p[k] = pk + neg_lr * u;
        }
    }
}
