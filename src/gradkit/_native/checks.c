/* Read-only checks over gradients.
 * gk_nonfinite: out[i * GK_OUT] = 1 if tensor i (ptrs list 0) holds a NaN or inf, else 0.
 * x - x == 0 fails exactly for NaN and +-inf; the OR-reduction vectorizes (a float sum would
 * not, without reassociation). */
#include "gk.h"

void GK_FN(gk_nonfinite)(GK_ARGS) {
    (void)step;
    (void)hp;
#pragma omp parallel num_threads(nthreads)
    for (int64_t i = 0; i < n; ++i) {
        const T *x = GK_PTR(0, i);
        int bad = 0;
#pragma omp for schedule(static) nowait
        for (int64_t k = 0; k < numel[i]; ++k) bad |= !(x[k] - x[k] == 0);
        if (bad) {
#pragma omp atomic write
            out[i * GK_OUT] = 1.0;
        }
    }
}
