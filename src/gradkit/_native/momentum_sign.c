/* Momentum, sign and second-moment classics, one pass over memory each (gradkit.optim: SGD,
 * Lion, Signum, SignSGD, RMSprop, Adagrad, SPAM), plus Gravity and StableSPAM, whose per-tensor
 * reductions (max |g|, then for StableSPAM the norm of the clipped gradient) run as read-only
 * passes over the gradient before the update pass, inside the same parallel region.
 *
 * Operation order follows the readable chains (gradkit/transforms/basic.py, optim/<name>.py):
 * maximize negates g; coupled L2 adds wd*p to it; torch.lerp's two formulas (by weight size);
 * addcmul as v*b + (c*x)*x; the learning-rate step as p*(1 - lr*wd) + (-lr)*u (torch's order,
 * as the chain's fused apply), with torch's fused multiply-adds (GK_FMA). Scalars derived from
 * hyperparameters and step counts are computed in double and rounded to T once, as torch does
 * with Python scalars. */
#include <float.h>
#include <string.h>
#include <omp.h>
#include "gk.h"

#define GK_TINY ((T)(sizeof(T) == sizeof(float) ? FLT_MIN : DBL_MIN))

/* A lerp weight w as torch's CPU lerp uses it: its coefficient (gk_lerp_coeff in gk.h) and
 * which formula applies, in T (torch's opmath scalar). */
typedef struct {
    T coeff;
    int small;
} gk_weight;

static inline gk_weight gk_make_weight(double w) {
    gk_weight out;
    out.small = fabs((T)w) < (T)0.5; /* in T, as torch compares its opmath weight */
    out.coeff = gk_lerp_coeff((T)w);
    return out;
}

static inline T gk_lerp_w(T a, T b, gk_weight w) { return gk_lerp(a, b, w.coeff, w.small); }

/* NaN-propagating max of a non-negative accumulator (torch's inf-norm propagates NaN) */
static inline double gk_nanmax(double a, double b) { return (b != b || b > a) ? b : a; }

/* ---------------------------------------------------------------------------------------- */
/* SGD (torch.optim.SGD). ptrs: params, grads[, momentum_buffer]
 * hp: lr, momentum, dampening, weight_decay (coupled), nesterov, maximize
 * g += wd p; b = g on the first step, else b = mu b + (1 - tau) g; u = g + mu b (nesterov) or b;
 * p += -lr u. momentum = 0 keeps no buffer. */
void GK_FN(gk_sgd)(GK_ARGS) {
    const double lr = hp[0], mom = hp[1], damp = hp[2], wd = hp[3];
    const int nesterov = hp[4] != 0, maximize = hp[5] != 0, has_buf = hp[1] != 0;
    (void)out;
#pragma omp parallel num_threads(nthreads)
    for (int64_t i = 0; i < n; ++i) {
        T *p = GK_PTR(0, i), *b = has_buf ? GK_PTR(2, i) : GK_PTR(0, i);
        const T *g = GK_PTR(1, i);
        const int first = step[i] == 1.0;
        const T neg_lr = (T)(-lr), wdt = (T)wd, momt = (T)mom, keep = (T)(1.0 - damp);
        const T sgn = maximize ? (T)-1 : (T)1;
        if (!has_buf) {
#pragma omp for schedule(static) nowait
            for (int64_t k = 0; k < numel[i]; ++k) {
                T gk = sgn * g[k];
                if (wd != 0) gk = GK_FMA(wdt, p[k], gk);
                p[k] = GK_FMA(neg_lr, gk, p[k]);
            }
        } else {
#pragma omp for schedule(static) nowait
            for (int64_t k = 0; k < numel[i]; ++k) {
                T gk = sgn * g[k];
                const T pk = p[k];
                if (wd != 0) gk = GK_FMA(wdt, pk, gk);
                const T bk = first ? gk : GK_FMA(keep, gk, b[k] * momt);
                b[k] = bk;
                const T u = nesterov ? GK_FMA(momt, bk, gk) : bk;
                p[k] = GK_FMA(neg_lr, u, pk);
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Cautious masking (gradkit.transforms.cautious) of a sign update s = sign(c): the kept count
 * #(s g > 0) of each tensor is reduced first; the kept entries are scaled by numel / (count+1).
 * Returns the scale as torch computes it: reciprocal(count + 1) * numel in T. */
static inline T gk_cautious_scale(double count, int64_t numel) {
    return ((T)1 / ((T)count + (T)1)) * (T)numel;
}

/* Cautious masking's first pass, shared by Lion and Signum: out[i * GK_OUT] += how many entries
 * of tensor i have sign(lerp(m, g, w)) g > 0 (read-only; the update pass uses the count). Called
 * inside the kernel's parallel region: its worksharing loop binds to that region. */
static inline void gk_count_agreeing(GK_ARGS, T sgn, gk_weight w) {
    (void)step;
    (void)hp;
    (void)nthreads;
    for (int64_t i = 0; i < n; ++i) {
        const T *m = GK_PTR(2, i), *g = GK_PTR(1, i);
        int64_t kept = 0;
#pragma omp for schedule(static) nowait
        for (int64_t k = 0; k < numel[i]; ++k) {
            const T gk = sgn * g[k];
            kept += gk_sign(gk_lerp_w(m[k], gk, w)) * gk > 0;
        }
#pragma omp atomic
        out[i * GK_OUT] += (double)kept;
    }
#pragma omp barrier
}

/* Lion (Chen et al., 2023). ptrs: params, grads, exp_avg
 * hp: lr, beta1, beta2, weight_decay (decoupled), maximize, cautious
 * c = lerp(m, g, 1-b1); m = lerp(m, g, 1-b2); u = sign(c) [cautious mask]; p = p(1-lr wd) - lr u.
 * With cautious, pass 1 counts sign(c) g > 0 (read-only: m is updated in pass 2). */
void GK_FN(gk_lion)(GK_ARGS) {
    (void)step;
    const double lr = hp[0], b1 = hp[1], b2 = hp[2], wd = hp[3];
    const int maximize = hp[4] != 0, cautious = hp[5] != 0;
    const gk_weight w1 = gk_make_weight(1.0 - b1), w2 = gk_make_weight(1.0 - b2);
    const T sgn = maximize ? (T)-1 : (T)1, decay = (T)(1.0 - lr * wd), neg_lr = (T)(-lr);
#pragma omp parallel num_threads(nthreads)
    {
        if (cautious) gk_count_agreeing(n, numel, step, ptrs, hp, out, nthreads, sgn, w1);
        for (int64_t i = 0; i < n; ++i) {
            T *p = GK_PTR(0, i), *m = GK_PTR(2, i);
            const T *g = GK_PTR(1, i);
            const T scale = cautious ? gk_cautious_scale(out[i * GK_OUT], numel[i]) : (T)1;
            const gk_weight a1 = w1, a2 = w2; /* private copies: the loop then vectorizes */
#pragma omp for schedule(static) nowait
            for (int64_t k = 0; k < numel[i]; ++k) {
                const T gk = sgn * g[k], mk = m[k];
                const T c = gk_lerp_w(mk, gk, a1);
                m[k] = gk_lerp_w(mk, gk, a2);
                T u = gk_sign(c);
                if (cautious) u = u * gk > 0 ? u * scale : (T)0;
                p[k] = GK_FMA(neg_lr, u, p[k] * decay);
            }
        }
    }
}

/* Signum (Bernstein et al., 2018, Algorithm 2). ptrs: params, grads, exp_avg
 * hp: lr, momentum, weight_decay (decoupled), maximize, cautious
 * m = lerp(m, g, 1-beta); u = sign(m) [cautious mask]; p = p(1-lr wd) - lr u. */
void GK_FN(gk_signum)(GK_ARGS) {
    (void)step;
    const double lr = hp[0], beta = hp[1], wd = hp[2];
    const int maximize = hp[3] != 0, cautious = hp[4] != 0;
    const gk_weight w = gk_make_weight(1.0 - beta);
    const T sgn = maximize ? (T)-1 : (T)1, decay = (T)(1.0 - lr * wd), neg_lr = (T)(-lr);
#pragma omp parallel num_threads(nthreads)
    {
        if (cautious) gk_count_agreeing(n, numel, step, ptrs, hp, out, nthreads, sgn, w);
        for (int64_t i = 0; i < n; ++i) {
            T *p = GK_PTR(0, i), *m = GK_PTR(2, i);
            const T *g = GK_PTR(1, i);
            const T scale = cautious ? gk_cautious_scale(out[i * GK_OUT], numel[i]) : (T)1;
#pragma omp for schedule(static) nowait
            for (int64_t k = 0; k < numel[i]; ++k) {
                const T gk = sgn * g[k];
                const T mk = gk_lerp_w(m[k], gk, w);
                m[k] = mk;
                T u = gk_sign(mk);
                if (cautious) u = u * gk > 0 ? u * scale : (T)0;
                p[k] = GK_FMA(neg_lr, u, p[k] * decay);
            }
        }
    }
}

/* signSGD (Bernstein et al., 2018, Algorithm 1). ptrs: params, grads
 * hp: lr, weight_decay (decoupled), maximize.  p = p(1-lr wd) - lr sign(g). */
void GK_FN(gk_signsgd)(GK_ARGS) {
    const double lr = hp[0], wd = hp[1];
    const T sgn = hp[2] != 0 ? (T)-1 : (T)1, decay = (T)(1.0 - lr * wd), neg_lr = (T)(-lr);
    (void)step;
    (void)out;
#pragma omp parallel num_threads(nthreads)
    for (int64_t i = 0; i < n; ++i) {
        T *p = GK_PTR(0, i);
        const T *g = GK_PTR(1, i);
#pragma omp for schedule(static) nowait
        for (int64_t k = 0; k < numel[i]; ++k) {
            p[k] = GK_FMA(neg_lr, gk_sign(sgn * g[k]), p[k] * decay);
        }
    }
}

/* ---------------------------------------------------------------------------------------- */
/* RMSprop (torch.optim.RMSprop). ptrs: params, grads, square_avg[, grad_avg][, momentum_buffer]
 * hp: lr, alpha, eps, weight_decay (coupled), momentum, centered, maximize
 * g += wd p; v = alpha v + ((1-alpha) g) g; [gbar = lerp(gbar, g, 1-alpha); v' = v - gbar^2];
 * u = g / (sqrt(v') + eps); b = u first step, else mu b + u; p += -lr (b or u). */
typedef struct {
    T alpha, one_m_alpha, eps, wd, mom, neg_lr, sgn;
    gk_weight w;
    int use_wd;
} gk_rms_hp;

/* One tensor's element loop, specialised on the variant (the flags are literal constants at
 * each call, so every variant is a branch-free loop). Orphaned worksharing loop. */
static inline __attribute__((always_inline)) void gk_rms_loop(
    int64_t len, T *p, const T *g, T *v, T *gbar, T *b, int first, gk_rms_hp h,
    const int centered, const int has_buf) {
#pragma omp for schedule(static) nowait
    for (int64_t k = 0; k < len; ++k) {
        T gk = h.sgn * g[k];
        const T pk = p[k];
        if (h.use_wd) gk = GK_FMA(h.wd, pk, gk);
        const T vk = GK_FMA(h.one_m_alpha * gk, gk, v[k] * h.alpha);
        v[k] = vk;
        T avg = vk;
        if (centered) {
            const T gb = gk_lerp_w(gbar[k], gk, h.w);
            gbar[k] = gb;
            avg = GK_FMA(-gb, gb, vk);
        }
        T u = gk / (sqrt(avg) + h.eps);
        if (has_buf) {
            u = first ? u : b[k] * h.mom + u;
            b[k] = u;
        }
        p[k] = GK_FMA(h.neg_lr, u, pk);
    }
}

void GK_FN(gk_rmsprop)(GK_ARGS) {
    const double lr = hp[0], alpha = hp[1], eps = hp[2], wd = hp[3], mom = hp[4];
    const int centered = hp[5] != 0, has_buf = hp[4] != 0;
    const gk_rms_hp h = {(T)alpha, (T)(1.0 - alpha), (T)eps, (T)wd, (T)mom, (T)(-lr),
                         hp[6] != 0 ? (T)-1 : (T)1, gk_make_weight(1.0 - alpha), wd != 0};
    (void)out;
#pragma omp parallel num_threads(nthreads)
    for (int64_t i = 0; i < n; ++i) {
        T *p = GK_PTR(0, i), *v = GK_PTR(2, i);
        T *gbar = centered ? GK_PTR(3, i) : v;
        T *b = has_buf ? GK_PTR(3 + centered, i) : v;
        const T *g = GK_PTR(1, i);
        const int first = step[i] == 1.0;
        if (centered && has_buf) gk_rms_loop(numel[i], p, g, v, gbar, b, first, h, 1, 1);
        else if (centered) gk_rms_loop(numel[i], p, g, v, gbar, b, first, h, 1, 0);
        else if (has_buf) gk_rms_loop(numel[i], p, g, v, gbar, b, first, h, 0, 1);
        else gk_rms_loop(numel[i], p, g, v, gbar, b, first, h, 0, 0);
    }
}

/* Adagrad (torch.optim.Adagrad). ptrs: params, grads, sum
 * hp: lr, lr_decay, weight_decay (coupled), eps, maximize
 * g += wd p; s += g g; u = (g / (sqrt(s) + eps)) / (1 + (t-1) lr_decay); p += -lr u. */
void GK_FN(gk_adagrad)(GK_ARGS) {
    const double lr = hp[0], lr_decay = hp[1], wd = hp[2], eps = hp[3];
    const T sgn = hp[4] != 0 ? (T)-1 : (T)1, wdt = (T)wd, epst = (T)eps, neg_lr = (T)(-lr);
    (void)out;
#pragma omp parallel num_threads(nthreads)
    for (int64_t i = 0; i < n; ++i) {
        T *p = GK_PTR(0, i), *s = GK_PTR(2, i);
        const T *g = GK_PTR(1, i);
        const T clr = (T)(1.0 + (step[i] - 1.0) * lr_decay);
#pragma omp for schedule(static) nowait
        for (int64_t k = 0; k < numel[i]; ++k) {
            T gk = sgn * g[k];
            const T pk = p[k];
            if (wd != 0) gk = GK_FMA(wdt, pk, gk);
            const T sk = GK_FMA(gk, gk, s[k]);
            s[k] = sk;
            T u = gk / (sqrt(sk) + epst);
            if (lr_decay != 0) u = u / clr;
            p[k] = GK_FMA(neg_lr, u, pk);
        }
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Pass over gradients: out[i*GK_OUT + slot] = max_k |g_ik|, NaN if any g is NaN (as torch's
 * inf-norm), tensor by tensor, inside the caller's parallel region; ends with a barrier.
 * |g| is non-negative, so its bit pattern orders as an unsigned integer, and NaN (exponent all
 * ones, nonzero mantissa) sorts above inf: an integer max reduction, which vectorizes. */
#define GK_UINT_float uint32_t
#define GK_UINT_double uint64_t
typedef GK_CAT(GK_UINT_, GK_T) gk_uint;

static void gk_absmax_pass(int64_t n, const int64_t *numel, void **ptrs, double *out, int slot) {
    for (int64_t i = 0; i < n; ++i) {
        const T *g = GK_PTR(1, i);
        gk_uint mx = 0;
#pragma omp for schedule(static) nowait
        for (int64_t k = 0; k < numel[i]; ++k) {
            const T a = fabs(g[k]);
            gk_uint bits;
            memcpy(&bits, &a, sizeof bits);
            mx = bits > mx ? bits : mx;
        }
        T local;
        memcpy(&local, &mx, sizeof local);
#pragma omp critical(gk_absmax)
        out[i * GK_OUT + slot] = gk_nanmax(out[i * GK_OUT + slot], (double)local);
    }
#pragma omp barrier
}

/* Gravity (Bahrami & Pouriyan Zadeh, 2021). ptrs: params, grads, velocity
 * hp: lr, beta, maximize, check (gk_stop_nonfinite on M)
 * pass 1: M = max|g| of every tensor; pass 2: zeta = g / (1 + (g M)^2); bh = (beta t + 1)/(t + 2) with t = step-1;
 * V = lerp(V, zeta, 1 - bh); p += -lr V. */
void GK_FN(gk_gravity)(GK_ARGS) {
    const double lr = hp[0], beta = hp[1];
    const T sgn = hp[2] != 0 ? (T)-1 : (T)1, neg_lr = (T)(-lr);
    const int check = hp[3] != 0;
#pragma omp parallel num_threads(nthreads)
    {
        gk_absmax_pass(n, numel, ptrs, out, 0);
        const int stop = gk_stop_nonfinite(check, out, n, 0);
        for (int64_t i = 0; !stop && i < n; ++i) {
            T *p = GK_PTR(0, i), *v = GK_PTR(2, i);
            const T *g = GK_PTR(1, i);
            const double t = step[i] - 1.0;
            const gk_weight w = gk_make_weight(1.0 - (beta * t + 1.0) / (t + 2.0));
            const T mx = (T)out[i * GK_OUT];
#pragma omp for schedule(static) nowait
            for (int64_t k = 0; k < numel[i]; ++k) {
                const T gk = sgn * g[k], x = gk * mx;
                const T zeta = gk / ((T)1 + x * x);
                const T vk = gk_lerp_w(v[k], zeta, w);
                v[k] = vk;
                p[k] = GK_FMA(neg_lr, vk, p[k]);
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------- */
/* SPAM / Stable-SPAM step-count rules (gradkit/transforms/spike.py) */
static inline int gk_is_reset(double t, double interval) {
    return interval > 0 && fmod(t, interval) == 0;
}
static inline double gk_since_reset(double t, double interval) {
    return (interval <= 0 || t < interval) ? t : fmod(t, interval) + 1.0;
}
static inline double gk_warmup(double t, double interval, double steps) {
    if (interval <= 0 || t < interval) return 1.0;
    const double c = fmod(t, interval);
    if (c >= steps) return 1.0;
    return 1.0 - (1.0 - 0.01) * 0.5 * (1.0 + cos(3.141592653589793 * c / (steps + 1.0)));
}

/* Adam's element update on (already reset) moments, as gk_adam: returns u. */
static inline T gk_adam_u(T *m, T *v, int64_t k, T mo, T vo, T gk, gk_weight w1, T b2t,
                          T one_m_b2, T sbc2, T epst, T bc1) {
    const T mk = gk_lerp_w(mo, gk, w1);
    const T vk = GK_FMA(one_m_b2 * gk, gk, vo * b2t);
    m[k] = mk;
    v[k] = vk;
    return (mk / (sqrt(vk) / sbc2 + epst)) / bc1;
}

/* SPAM (Huang et al., ICLR 2025). ptrs: params, grads, exp_avg, exp_avg_sq
 * hp: lr, beta1, beta2, eps, weight_decay (decoupled), maximize, spam_threshold,
 *     spam_clip_delay, reset_interval, reset_warmup_steps, reset_step_count
 * m, v = 0 on reset steps; g = sign(g) sqrt(theta v) where g^2 > theta v (v before its update,
 * when the clip window is open); Adam on the clipped g; u *= warm-up; p = p(1-lr wd) - lr u.
 * The warm-up factor and the decay are applied unconditionally: x * 1 == x exactly. */
typedef struct {
    T sgn, decay, neg_lr, b2, one_m_b2, eps, theta, warm, bc1, sbc2;
    gk_weight w1;
    int reset;
} gk_spam_hp;

static inline __attribute__((always_inline)) void gk_spam_loop(int64_t len, T *p, const T *g,
                                                               T *m, T *v, gk_spam_hp h,
                                                               const int clip) {
#pragma omp for schedule(static) nowait
    for (int64_t k = 0; k < len; ++k) {
        T gk = h.sgn * g[k];
        const T mo = h.reset ? (T)0 : m[k], vo = h.reset ? (T)0 : v[k];
        if (clip) {
            const T bound = vo * h.theta;
            gk = gk * gk > bound ? gk_sign(gk) * sqrt(bound) : gk;
        }
        const T u = gk_adam_u(m, v, k, mo, vo, gk, h.w1, h.b2, h.one_m_b2, h.sbc2, h.eps, h.bc1);
        p[k] = GK_FMA(h.neg_lr, u * h.warm, p[k] * h.decay);
    }
}

void GK_FN(gk_spam)(GK_ARGS) {
    const double lr = hp[0], b1 = hp[1], b2 = hp[2], eps = hp[3], wd = hp[4];
    const double theta = hp[6], delay = hp[7], interval = hp[8], warm_steps = hp[9];
    const int restart = hp[10] != 0;
    (void)out;
#pragma omp parallel num_threads(nthreads)
    for (int64_t i = 0; i < n; ++i) {
        const double t = step[i], ts = restart ? gk_since_reset(t, interval) : t;
        const int clip = theta != 0 && (interval > 0 ? fmod(ts, interval) : ts) >= delay;
        const gk_spam_hp h = {hp[5] != 0 ? (T)-1 : (T)1, (T)(1.0 - lr * wd), (T)(-lr), (T)b2,
                              (T)(1.0 - b2), (T)eps, (T)theta,
                              (T)gk_warmup(t, interval, warm_steps), (T)(1.0 - pow(b1, ts)),
                              (T)sqrt(1.0 - pow(b2, ts)), gk_make_weight(1.0 - b1),
                              gk_is_reset(t, interval)};
        T *p = GK_PTR(0, i), *m = GK_PTR(2, i), *v = GK_PTR(3, i);
        const T *g = GK_PTR(1, i);
        if (clip) gk_spam_loop(numel[i], p, g, m, v, h, 1);
        else gk_spam_loop(numel[i], p, g, m, v, h, 0);
    }
}

/* This thread's share [lo, hi) of len elements, as schedule(static) would give it (for loops
 * that need `omp simd` reductions, which a worksharing loop over a private sum cannot have). */
static inline void gk_thread_range(int64_t len, int64_t *lo, int64_t *hi) {
    const int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t chunk = (len + nt - 1) / nt;
    *lo = id * chunk < len ? id * chunk : len;
    *hi = *lo + chunk < len ? *lo + chunk : len;
}

/* Stable-SPAM (Huang et al., 2025). ptrs: params, grads, exp_avg, exp_avg_sq, max_avg,
 * norm_avg, norm_sq_avg (the last three 0-d tensors)
 * hp: lr, beta1, beta2, eps, weight_decay (decoupled), maximize, gamma1, gamma2, gamma3,
 *     ada_gn_eps, reset_interval, reset_step_count, check (gk_stop_nonfinite on M)
 * pass 1: M = max|g| of every tensor; AdaClip scalars (one thread); pass 2: ||clip(g)||^2; AdaGN scalars (one
 * thread); pass 3: g -> clip -> scale -> Adam with momentum reset -> p.
 * out slots: 0 = M, then the AdaGN scale; 1 = clip bound; 2 = clip scale; 3 = sum of squares. */
void GK_FN(gk_stable_spam)(GK_ARGS) {
    const double lr = hp[0], b1 = hp[1], b2 = hp[2], eps = hp[3], wd = hp[4];
    const double g1 = hp[6], g2 = hp[7], g3 = hp[8], gn_eps = hp[9], interval = hp[10];
    const int maximize = hp[5] != 0, restart = hp[11] != 0, check = hp[12] != 0;
    const gk_weight w1 = gk_make_weight(1.0 - b1), wg1 = gk_make_weight(1.0 - g1);
    const gk_weight wg3 = gk_make_weight(1.0 - g3);
    const T sgn = maximize ? (T)-1 : (T)1, decay = (T)(1.0 - lr * wd), neg_lr = (T)(-lr);
    const T b2t = (T)b2, one_m_b2 = (T)(1.0 - b2), epst = (T)eps;
#pragma omp parallel num_threads(nthreads)
    {
        gk_absmax_pass(n, numel, ptrs, out, 0);
        const int stop = gk_stop_nonfinite(check, out, n, 0);
#pragma omp single
        for (int64_t i = 0; !stop && i < n; ++i) {
            if (numel[i] == 0) continue; /* AdaClip skips empty tensors (max_avg unchanged) */
            T *max_avg = GK_PTR(4, i);
            const T gmax = (T)out[i * GK_OUT];
            const T ma = gk_lerp_w(*max_avg, gmax, wg3);
            *max_avg = ma;
            const T bound = ma / (T)(1.0 - pow(g3, step[i]));
            out[i * GK_OUT + 1] = bound;
            out[i * GK_OUT + 2] = bound / (gmax < GK_TINY ? GK_TINY : gmax);
        }
        for (int64_t i = 0; !stop && i < n; ++i) {
            const T *g = GK_PTR(1, i);
            const T bound = (T)out[i * GK_OUT + 1], scale = (T)out[i * GK_OUT + 2];
            double sum = 0;
            int64_t lo, hi;
            gk_thread_range(numel[i], &lo, &hi);
#pragma omp simd reduction(+ : sum)
            for (int64_t k = lo; k < hi; ++k) {
                const T gk = sgn * g[k];
                const T c = fabs(gk) > bound ? gk * scale : gk;
                sum += (double)c * (double)c;
            }
#pragma omp atomic
            out[i * GK_OUT + 3] += sum;
        }
#pragma omp barrier
#pragma omp single
        for (int64_t i = 0; !stop && i < n; ++i) {
            T *norm_avg = GK_PTR(5, i), *norm_sq_avg = GK_PTR(6, i);
            const T nrm = (T)sqrt(out[i * GK_OUT + 3]);
            const T na = gk_lerp_w(*norm_avg, nrm, wg1);
            const T nsq = GK_FMA((T)(1.0 - g2) * nrm, nrm, *norm_sq_avg * (T)g2);
            *norm_avg = na;
            *norm_sq_avg = nsq;
            const T target = (na / (T)(1.0 - pow(g1, step[i]))) /
                             (sqrt(nsq / (T)(1.0 - pow(g2, step[i]))) + (T)gn_eps);
            out[i * GK_OUT] = nrm > 0 ? target / (nrm < GK_TINY ? GK_TINY : nrm) : (T)1;
        }
        for (int64_t i = 0; !stop && i < n; ++i) {
            T *p = GK_PTR(0, i), *m = GK_PTR(2, i), *v = GK_PTR(3, i);
            const T *g = GK_PTR(1, i);
            const T bound = (T)out[i * GK_OUT + 1], scale = (T)out[i * GK_OUT + 2];
            const T gn_scale = (T)out[i * GK_OUT];
            const double t = step[i], ts = restart ? gk_since_reset(t, interval) : t;
            const int reset = gk_is_reset(t, interval);
            const T bc1 = (T)(1.0 - pow(b1, ts)), sbc2 = (T)sqrt(1.0 - pow(b2, ts));
#pragma omp for schedule(static) nowait
            for (int64_t k = 0; k < numel[i]; ++k) {
                T gk = sgn * g[k];
                gk = fabs(gk) > bound ? gk * scale : gk;
                gk = gk * gn_scale;
                const T mo = reset ? (T)0 : m[k], vo = reset ? (T)0 : v[k];
                const T u = gk_adam_u(m, v, k, mo, vo, gk, w1, b2t, one_m_b2, sbc2, epst, bc1);
                p[k] = GK_FMA(neg_lr, u, p[k] * decay);
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------- */
/* The induced-metric optimiser without RMS scaling (gradkit.optim.InducedMetric, rms=False).
 * ptrs: params, grads, exp_avg. hp: lr, momentum, weight_decay, maximize.
 * out[i * GK_OUT] is an input here: c_i = kappa_i / (1 - mu^t) for tensor i, which the caller
 * derives from the squared gradient norm over every group (gk_sumsq) and the per-tensor metric
 * EMA, exactly as the readable transform does.
 * m = lerp(m, g, 1 - mu); u = m c_i; p = p (1 - lr wd) + (-lr) u. */
void GK_FN(gk_induced_metric)(GK_ARGS) {
    (void)step;
    const double lr = hp[0], mu = hp[1], wd = hp[2];
    const int maximize = hp[3] != 0;
    const gk_weight w = gk_make_weight(1.0 - mu);
    const T sgn = maximize ? (T)-1 : (T)1, decay = (T)(1.0 - lr * wd), neg_lr = (T)(-lr);
#pragma omp parallel num_threads(nthreads)
    for (int64_t i = 0; i < n; ++i) {
        T *p = GK_PTR(0, i), *m = GK_PTR(2, i);
        const T *g = GK_PTR(1, i);
        const T c = (T)out[i * GK_OUT];
        const gk_weight a = w; /* a private copy: the loop then vectorizes */
#pragma omp for schedule(static) nowait
        for (int64_t k = 0; k < numel[i]; ++k) {
            const T mk = gk_lerp_w(m[k], sgn * g[k], a);
            m[k] = mk;
            p[k] = GK_FMA(neg_lr, mk * c, p[k] * decay);
        }
    }
}
