/* Shared conventions of gradkit's native optimizer kernels (see gradkit/_native/__init__.py).
 *
 * Every kernel source is compiled twice, with -DGK_T=float -DGK_SFX=_f32 and
 * -DGK_T=double -DGK_SFX=_f64, into one shared library. Every kernel has the signature
 *
 *   void NAME(int64_t n, const int64_t *numel, const double *step, void **ptrs,
 *             const double *hp, double *out, int nthreads)
 *
 * n tensors; numel[i] elements of tensor i; step[i] its step count (already incremented);
 * ptrs is an [k][n] table of data pointers (parameters, gradients, then state tensors in the
 * order the Python side declares); hp the group's hyperparameters; out an [n][GK_OUT] scratch
 * array for per-tensor reductions (zeroed by the caller). Arithmetic is in GK_T, scalars derived
 * from hyperparameters in double and rounded once, as torch does with Python scalars.
 */
#include <tgmath.h>
#include <omp.h>
#include <stdint.h>

#ifndef GK_T
#define GK_T float
#define GK_SFX _f32
#endif
typedef GK_T T;
#define GK_CAT2(a, b) a##b
#define GK_CAT(a, b) GK_CAT2(a, b)
#define GK_FN(name) GK_CAT(name, GK_SFX)
#define GK_OUT 4
#define GK_ARGS                                                                              \
    int64_t n, const int64_t *numel, const double *step, void **ptrs, const double *hp,     \
        double *out, int nthreads
/* tensor list j (0 = parameters, 1 = gradients, 2.. = state), tensor i */
#define GK_PTR(j, i) ((T *)ptrs[(int64_t)(j) * n + (i)])
static inline T gk_sign(T x) { return (T)((x > 0) - (x < 0)); }

/* a*b + c rounded once where the CPU has FMA, as torch's CPU kernels compute lerp, addcmul and
 * add(alpha=) (they are built with FMA there); two roundings elsewhere, as torch's then are. */
#if defined(__FMA__) || defined(__aarch64__)
#define GK_FMA(a, b, c) fma((a), (b), (c))
#else
#define GK_FMA(a, b, c) ((a) * (b) + (c))
#endif

/* torch.lerp(a, b, w) rounded as torch's vectorized CPU kernel does: fma(c, b - a, base) with
 * c = w and base = a for |w| < 0.5, else c = w - 1 and base = b (two roundings without FMA, as
 * torch's then). Hoist c = gk_lerp_coeff(w) out of loops; the base is a select of loaded values,
 * so no floating-point operation is conditional (such loops vectorize without AVX-512 masks). */
static inline T gk_lerp_coeff(T w) { return fabs(w) < (T)0.5 ? w : w - (T)1; }
static inline T gk_lerp(T a, T b, T c, int small) { return GK_FMA(c, b - a, small ? a : b); }

/* This thread's share [lo, hi) of N elements (the same shares in every pass of a kernel). */
static inline void gk_share(int64_t N, int64_t *lo, int64_t *hi) {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t chunk = (N + nt - 1) / nt;
    *lo = t * chunk < N ? t * chunk : N;
    *hi = *lo + chunk < N ? *lo + chunk : N;
}

/* Inside a parallel region: out[i * GK_OUT + slot] += the sum of x^2 over tensor i of pointer
 * list j, each thread over its gk_share in double (vectorized; NaN/inf propagate). No barrier. */
static inline void gk_sumsq_pass(int64_t n, const int64_t *numel, void **ptrs, int j, double *out,
                                 int slot) {
    for (int64_t i = 0; i < n; ++i) {
        const T *x = GK_PTR(j, i);
        int64_t lo, hi;
        gk_share(numel[i], &lo, &hi);
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t k = lo; k < hi; ++k) s += (double)x[k] * (double)x[k];
#pragma omp atomic
        out[i * GK_OUT + slot] += s;
    }
}

/* The non-finite check folded into a kernel's first pass (gradkit.core.ChainOptimizer
 * ._deferred_checks): a kernel given a trailing hp flag `check` reduces every gradient of the
 * call, read-only, into out[i * GK_OUT + slot] (a sum of squares or a max |g|, not finite when
 * a gradient is NaN/inf) before it writes anything; when one of them is not finite it stops
 * there and sets out[n * GK_OUT] = 1 (with `check`, out has a status row n), and the caller
 * tests the gradients exactly and skips the group's step. Called by every thread after a
 * barrier: every thread reads the same sums and takes the same branch. */
static inline int gk_stop_nonfinite(int check, double *out, int64_t n, int slot) {
    if (!check) return 0;
    int bad = 0;
    for (int64_t i = 0; i < n; ++i) bad |= !isfinite(out[i * GK_OUT + slot]);
#pragma omp barrier
    if (bad && omp_get_thread_num() == 0) out[n * GK_OUT] = 1.0;
    return bad;
}
