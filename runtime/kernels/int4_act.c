/* int4_act.c - the fused INT4 path's activations: their range (a scan
 * that also finds non-finite values), the quantizer's parameters from it,
 * and quantization to bytes across the threads; see int4_fused.h. */
#include "runtime/kernels/int4_fused.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

int nbl_i4_avx512(void) { return nbl_i4_best_isa() == NBL_I4_VNNI; }

/* ------------------------------------------------------------------ activation statistics */

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static int scan_avx512(const float *x, int64_t n, float *lo,
                                                          float *hi) {
  __m512 vlo = _mm512_set1_ps(INFINITY), vhi = _mm512_set1_ps(-INFINITY);
  const __m512i em = _mm512_set1_epi32(0x7f800000);
  __mmask16 bad = 0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 v = _mm512_loadu_ps(x + i);
    bad |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(v), em), em);
    vlo = _mm512_min_ps(vlo, v);
    vhi = _mm512_max_ps(vhi, v);
  }
  float l = _mm512_reduce_min_ps(vlo), h = _mm512_reduce_max_ps(vhi);
  int ok = bad == 0;
  for (; i < n; i++) {
    if (!isfinite(x[i])) ok = 0;
    if (x[i] < l) l = x[i];
    if (x[i] > h) h = x[i];
  }
  *lo = l;
  *hi = h;
  return ok;
}
#endif

/* Minimum and maximum of x; returns 0 if some element is NaN or +-Inf. */
static int scan_x(const float *x, int64_t n, float *lo, float *hi) {
#if defined(__x86_64__)
  if (nbl_i4_avx512()) return scan_avx512(x, n, lo, hi);
#endif
  float l = INFINITY, h = -INFINITY;
  int ok = nbl_i4_all_finite(x, n);
  for (int64_t i = 0; ok && i < n; i++) {
    if (x[i] < l) l = x[i];
    if (x[i] > h) h = x[i];
  }
  *lo = l;
  *hi = h;
  return ok;
}

/* nbl_q4_choose for scale_source=max on finite data with known min/max:
 * the format's own computation (nbl_q4_params_from_range), without a second
 * pass over x. */
void nbl_i4_params_from_range(const nbl_q4_config *cfg, int64_t n, float lo, float hi,
                              nbl_q4_params *p) {
  if (n == 0) lo = hi = 0.0f;
  nbl_q4_params_from_range(cfg, lo, hi, p);
}



typedef struct qjob {
  nbl_i4_quantizer q;
  const float *x;
  uint8_t *u;
  int off;
} qjob;

static void quant_chunk(void *arg, int64_t b, int64_t e) {
  qjob *j = arg;
  nbl_i4_quantize_u8(&j->q, j->x + b, j->u + b, (size_t)(e - b), (uint64_t)b, j->off);
}

void nbl_i4_quantize_x(nbl_kctx *c, const nbl_q4_config *cfg, const nbl_q4_params *p,
                       const float *x, uint8_t *u, int64_t n, int off) {
  qjob j = {.x = x, .u = u, .off = off};
  nbl_i4_quantizer_init(&j.q, cfg, p);
  nbl_parallel_for(c, n, 1 << 15, quant_chunk, &j);
}

/* The pixel bands of a rank-4 [N, C, H, W] tensor (NBL_BAND_MIN_PIXELS):
 * 0 when the tensor is not split that way. */
static int x_bands(const nbl_kctx *c, const nbl_rt_tensor *X) {
  return X->rank == 4 ? nbl_pixel_bands(c->threads, X->dims[2] * X->dims[3]) : 0;
}

typedef struct band_job {
  const float *x;
  int64_t planes, P;
  int bands;
  float lo[256], hi[256];
  int ok[256];
} band_job;

static void scan_bands(void *arg, int64_t b, int64_t e) {
  band_job *j = arg;
  for (int64_t t = b; t < e; t++) {
    int64_t p0, p1;
    nbl_band(j->P, t, j->bands, 1, &p0, &p1);
    float lo = INFINITY, hi = -INFINITY;
    int ok = 1;
    for (int64_t q = 0; ok && q < j->planes && p1 > p0; q++) {
      float l, h;
      ok = scan_x(j->x + q * j->P + p0, p1 - p0, &l, &h);
      if (l < lo) lo = l;
      if (h > hi) hi = h;
    }
    j->lo[t] = lo, j->hi[t] = hi, j->ok[t] = ok;
  }
}

/* scan_x, split by pixel bands for large rank-4 tensors. */
int nbl_i4_scan(nbl_kctx *c, const nbl_rt_tensor *X, float *lo, float *hi) {
  int bands = x_bands(c, X);
  if (!bands) return scan_x(X->data, X->numel, lo, hi);
  band_job *j = malloc(sizeof *j);
  if (!j) return scan_x(X->data, X->numel, lo, hi);
  j->x = X->data;
  j->P = X->dims[2] * X->dims[3];
  j->planes = X->dims[0] * X->dims[1];
  j->bands = bands;
  nbl_parallel_for(c, bands, 1, scan_bands, j);
  float l = INFINITY, h = -INFINITY;
  int ok = 1;
  for (int t = 0; t < bands; t++) {
    ok = ok && j->ok[t];
    if (j->lo[t] < l) l = j->lo[t];
    if (j->hi[t] > h) h = j->hi[t];
  }
  free(j);
  *lo = l;
  *hi = h;
  return ok;
}

/* Bytes of a rank-4 tensor [N, C, H, W] into planes of Hp x Wp, input
 * (ih, iw) at (ih + pt, iw + pl), the rest already the pad byte; by bands
 * of rows (every plane) for large planes, else by plane rows. */
typedef struct qpad_job {
  nbl_i4_quantizer q;
  const float *x;
  uint8_t *u;
  int64_t planes, H, W, Hp, Wp, pt, pl;
  int bands, off;
} qpad_job;

static void qpad_row(const qpad_job *j, int64_t q, int64_t ih) {
  int64_t i0 = (q * j->H + ih) * j->W;
  nbl_i4_quantize_u8(&j->q, j->x + i0, j->u + (q * j->Hp + ih + j->pt) * j->Wp + j->pl,
                     (size_t)j->W, (uint64_t)i0, j->off);
}

static void qpad_tasks(void *arg, int64_t b, int64_t e) {
  const qpad_job *j = arg;
  if (j->bands) {
    for (int64_t t = b; t < e; t++) {
      int64_t h0, h1;
      nbl_band(j->H, t, j->bands, 1, &h0, &h1);
      for (int64_t q = 0; q < j->planes; q++)
        for (int64_t ih = h0; ih < h1; ih++) qpad_row(j, q, ih);
    }
  } else {
    for (int64_t r = b; r < e; r++) qpad_row(j, r / j->H, r % j->H);
  }
}

void nbl_i4_quantize_padded(nbl_kctx *c, const nbl_q4_config *cfg, const nbl_q4_params *p,
                            const nbl_rt_tensor *X, uint8_t *u, int64_t Hp, int64_t Wp,
                            int64_t pt, int64_t pl, int off) {
  qpad_job j = {.x = X->data, .u = u, .planes = X->dims[0] * X->dims[1], .H = X->dims[2],
                .W = X->dims[3], .Hp = Hp, .Wp = Wp, .pt = pt, .pl = pl, .bands = x_bands(c, X),
                .off = off};
  nbl_i4_quantizer_init(&j.q, cfg, p);
  if (j.bands)
    nbl_parallel_for(c, j.bands, 1, qpad_tasks, &j);
  else
    nbl_parallel_for(c, j.planes * j.H, 16, qpad_tasks, &j);
}
