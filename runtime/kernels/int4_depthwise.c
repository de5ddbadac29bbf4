/* int4_depthwise.c - fused INT4 depthwise convolutions on the codes: the
 * FP32 plane kernel fed centered codes (nbl_conv_dw_hooked) and finished by
 * the float epilogues here (sc * acc + bias, activation, range), 3x3 layers
 * straight from their input rows and small planes 16 channels at a time
 * (the kernels of code_depthwise.c, shared with the ternary path); see
 * int4_fused.h. */
#include "runtime/kernels/code_depthwise.h"
#include "runtime/kernels/int4_fused.h"
#include "runtime/kernels/kdebug.h"
#include "runtime/kernels/simd16.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* ------------------------------------------------------------------ epilogues */

#if defined(__x86_64__)
/* The float epilogue of the AVX-512 kernels on a vector of exact sums:
 * v = sc * acc + bias, then the activation's clamp (as in tile_vnni: NaN
 * kept), the lanes of m widened into the running min/max, and NaN noted when
 * one is possible (a non-finite scale or bias). The flags and the
 * activation's bounds are copied in at init: stores to y could alias f. */
typedef struct i4_epi {
  __m512 vs, vb, clo, chi, vmin, vmax;
  int act, maybe_nan;
  __mmask16 nan;
} i4_epi;

__attribute__((target("avx512f"), always_inline)) static inline void
i4_epi_init(i4_epi *e, const nbl_i4_fused *f, float sc, float bias) {
  e->act = f->cons.act != 0;
  e->maybe_nan = !isfinite(sc) || !isfinite(bias);
  e->vs = _mm512_set1_ps(sc);
  e->vb = _mm512_set1_ps(bias);
  e->clo = _mm512_set1_ps(e->act ? f->cons.act_lo : -INFINITY);
  e->chi = _mm512_set1_ps(e->act ? f->cons.act_hi : INFINITY);
  e->vmin = _mm512_set1_ps(INFINITY);
  e->vmax = _mm512_set1_ps(-INFINITY);
  e->nan = 0;
}

__attribute__((target("avx512f"), always_inline)) static inline __m512
i4_epi_apply(i4_epi *e, __m512 acc, __mmask16 m) {
  __m512 v = _mm512_add_ps(_mm512_mul_ps(acc, e->vs), e->vb);
  if (e->act) v = _mm512_min_ps(e->chi, _mm512_max_ps(e->clo, v));
  e->vmin = _mm512_mask_min_ps(e->vmin, m, e->vmin, v);
  e->vmax = _mm512_mask_max_ps(e->vmax, m, e->vmax, v);
  if (e->maybe_nan) e->nan |= _mm512_mask_cmp_ps_mask(m, v, v, _CMP_UNORD_Q);
  return v;
}

/* the range of what the epilogue produced */
__attribute__((target("avx512f"), always_inline)) static inline nbl_i4_range
i4_epi_range(const i4_epi *e) {
  nbl_i4_range rg = {_mm512_reduce_min_ps(e->vmin), _mm512_reduce_max_ps(e->vmax), e->nan != 0};
  return rg;
}

/* y[i] = act(sc * y[i] + bv): the same arithmetic on exact float sums;
 * rg (non-NULL) is widened to the values written. */
__attribute__((target("avx512f"))) static void epi_f_avx512(const nbl_i4_fused *f, float *y, int64_t n,
                                                            float sc, float bv,
                                                            nbl_i4_range *rg) {
  i4_epi e;
  i4_epi_init(&e, f, sc, bv);
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = nbl_tail_mask(n - i);
    _mm512_mask_storeu_ps(y + i, m, i4_epi_apply(&e, _mm512_maskz_loadu_ps(m, y + i), m));
  }
  if (rg) {
    nbl_i4_range r = i4_epi_range(&e);
    nbl_i4_range_widen(rg, r.lo, r.hi, r.nan);
  }
}
#endif

#if defined(__x86_64__)
/* epi_f_avx512 on AVX2, 8 lanes: the same operations and operand orders. */
__attribute__((target("avx2"))) static void epi_f_avx2(const nbl_i4_fused *f, float *y, int64_t n,
                                                       float sc, float bv, nbl_i4_range *rg) {
  const int act = f->cons.act != 0, maybe_nan = !isfinite(sc) || !isfinite(bv);
  const __m256 vs = _mm256_set1_ps(sc), vb = _mm256_set1_ps(bv);
  const __m256 clo = _mm256_set1_ps(act ? f->cons.act_lo : -INFINITY),
               chi = _mm256_set1_ps(act ? f->cons.act_hi : INFINITY);
  __m256 vmin = _mm256_set1_ps(INFINITY), vmax = _mm256_set1_ps(-INFINITY);
  int nan = 0;
  for (int64_t i = 0; i < n; i += 8) {
    __m256 mf = _mm256_castsi256_ps(nbl_tail8(n - i));
    __m256 v = _mm256_add_ps(_mm256_mul_ps(nbl_load8(y + i, n - i), vs), vb);
    if (act) v = _mm256_min_ps(chi, _mm256_max_ps(clo, v));
    nbl_store8(y + i, n - i, v);
    nan |= nbl_minmax8(&vmin, &vmax, v, mf, maybe_nan);
  }
  if (rg) nbl_i4_range_widen(rg, nbl_hmin8(vmin), nbl_hmax8(vmax), nan != 0);
}
#endif

/* y[i] = act(sc * y[i] + bv) with the variant isa (chosen once per layer). */
static void epilogue_f(const nbl_i4_fused *f, nbl_i4_isa isa, float *y, int64_t n, float sc,
                       float bv, nbl_i4_range *rg) {
#if defined(__x86_64__)
  if (isa == NBL_I4_VNNI) {
    epi_f_avx512(f, y, n, sc, bv, rg);
    return;
  }
  if (isa == NBL_I4_AVX2) {
    epi_f_avx2(f, y, n, sc, bv, rg);
    return;
  }
#endif
  for (int64_t i = 0; i < n; i++) {
    y[i] = nbl_i4_act(f, sc * y[i] + bv);
    if (rg) nbl_i4_range_widen(rg, y[i], y[i], y[i] != y[i]);
  }
}

/* Depthwise: the FP32 depthwise kernel (depthwise_f32.c) run on the codes. Its input
 * rows are the activation codes minus the zero point as floats, quantized
 * row by row as the kernel asks for them; its weights are the weight codes
 * as floats. Every product and partial sum is an integer below 2^24 in
 * magnitude (|u - a_zero| <= 255, |w| <= 128, at most 64 taps), so the
 * float sums are exactly the integer accumulators, in any order; the
 * epilogue then applies the same sc * acc + bias and activation as the GEMM
 * path. */
typedef struct dw_job {
  const nbl_i4_fused *f;
  const nbl_conv_geom *g;
  nbl_i4_quantizer q;
  const uint8_t *u; /* non-NULL: the input as activation bytes u, centered as u - ubias */
  int ubias;
  const float *x;
  const float *bias;
  int64_t C, H, W;
  float sc;
  nbl_i4_isa isa; /* the epilogue's variant */
  nbl_i4_shared_range range;
} dw_job;

static void dw_load_row(void *arg, int64_t n, int64_t c, int64_t ih, float *row) {
  const dw_job *j = arg;
  int64_t i0 = ((n * j->C + c) * j->H + ih) * j->W;
  if (j->u)
    nbl_i4_codes_centered_rows(j->u + i0, (size_t)j->W, 1, row, (size_t)j->W, j->ubias);
  else
    nbl_i4_quantize_centered(&j->q, j->x + i0, row, (size_t)j->W, (uint64_t)i0);
}

static void dw_load_rows(void *arg, int64_t n, int64_t c, int64_t ih0, int64_t ih1, float *dst,
                         int64_t ld) {
  const dw_job *j = arg;
  int64_t i0 = ((n * j->C + c) * j->H + ih0) * j->W;
  if (j->u) {
    nbl_i4_codes_centered_rows(j->u + i0, (size_t)j->W, (size_t)(ih1 - ih0), dst, (size_t)ld,
                               j->ubias);
    return;
  }
  nbl_i4_quantize_centered_rows(&j->q, j->x + i0, (size_t)j->W, (size_t)(ih1 - ih0), dst,
                                (size_t)ld, (uint64_t)i0);
}

static void dw_load_rows2(void *arg, int64_t n, int64_t c, int64_t ih0, int64_t count,
                          int64_t step, float *ev, float *od, int64_t ld) {
  const dw_job *j = arg;
  int64_t i0 = ((n * j->C + c) * j->H + ih0) * j->W;
  if (j->u) {
    nbl_i4_codes_centered_deint2(j->u + i0, (size_t)j->W, (size_t)count, (size_t)(step * j->W), ev,
                                 od, (size_t)ld, j->ubias);
    return;
  }
  nbl_i4_quantize_centered_deint2(&j->q, j->x + i0, (size_t)j->W, (size_t)count,
                                  (size_t)(step * j->W), ev, od, (size_t)ld, (uint64_t)i0);
}

static void dw_finish(void *arg, int64_t n, int64_t m, float *y, int64_t count) {
  (void)n;
  dw_job *j = arg;
  nbl_i4_range rg = {INFINITY, -INFINITY, 0};
  epilogue_f(j->f, j->isa, y, count, j->sc, j->bias ? j->bias[m] : 0.0f, &rg);
  nbl_i4_range_merge(&j->range, &rg);
}

/* 3x3 depthwise layers (dilation 1, strides 1 or 2 both ways) on larger
 * planes: output rows straight from the loaded phase planes
 * (nbl_dwc_rows3), the epilogue of epi_f_avx512 on the sums in registers:
 * no pass over the plane to copy it out and another to finish it. The sums
 * are exact integers (codes times weight codes), so bit-identical to the
 * plane kernel and finish. nbl_dw_hooks.rows, set only where AVX-512 runs. */
static int dw_rows(void *arg, const nbl_dw_phases *p, int64_t n, int64_t m, int64_t oh0,
                   int64_t oh1, float *y) {
  (void)n;
  dw_job *j = arg;
  const nbl_i4_fused *f = j->f;
  nbl_dwc_epi e = {j->sc, f->cons.act != 0, f->cons.act_lo, f->cons.act_hi, NBL_DWC_RANGE};
  nbl_dwc_stats st;
  nbl_dwc_stats_init(&st);
  nbl_dwc_rows3(p, f->dw_w + m * 9, oh0, oh1, j->g->out[1], &e, j->bias ? j->bias[m] : 0.0f,
                NULL, y, &st);
  nbl_i4_range rg = {st.lo, st.hi, st.nan};
  nbl_i4_range_merge(&j->range, &rg);
  return 1;
}

/* 1 when dw_rows takes the layer of geometry g */
static int dw_rows_wanted(const nbl_conv_geom *g) {
  return nbl_i4_avx512() && nbl_kdebug_get(NBL_KS_I4_DW_ROWS) && nbl_dwc_rows3_fits(g);
}

/* Depthwise on small planes, 16 channels at a time (nbl_dwc_blocked): the
 * plane kernel pays per plane (row loads, tap set-up, copy-out) what a 7x7
 * or 14x14 plane barely amortizes, and MobileNetV2's late layers have
 * hundreds of them. Same loaders, same exact sums: bit-identical. */
static void dwb_load(void *arg, int64_t n, int64_t c0, int64_t nc, float *dst) {
  const dw_job *j = arg;
  dw_load_rows(arg, n, c0, 0, nc * j->H, dst, j->W); /* the nc planes follow each other */
}

static void dwb_merge(void *arg, const nbl_dwc_stats *st) {
  dw_job *j = arg;
  nbl_i4_range rg = {st->lo, st->hi, st->nan};
  nbl_i4_range_merge(&j->range, &rg);
}

/* 1 when the depthwise layer of geometry g runs 16 channels at a time. */
static int dw_blocked(const nbl_conv_geom *g) {
  return nbl_i4_avx512() && nbl_dw_blocked_wanted(g, (int)nbl_kdebug_get(NBL_KS_I4_DW_BLOCKED));
}

static nbl_status run_dw_blocked(nbl_kctx *c, const nbl_conv_geom *g, dw_job *dj, float *y) {
  const nbl_i4_fused *f = dj->f;
  nbl_dwc_epi e = {dj->sc, f->cons.act != 0, f->cons.act_lo, f->cons.act_hi, NBL_DWC_RANGE};
  nbl_dwc_io io = {dwb_load, NULL, dwb_merge, dj};
  nbl_status st = nbl_dwc_blocked(c, g, f->dw_w, dj->bias, &e, &io, y);
  if (st == NBL_OK) nbl_kcount(NBL_KC_I4_DW_BLOCKED_RUNS);
  return st;
}

nbl_status nbl_i4_run_depthwise(nbl_kctx *c, nbl_i4_fused *f, const nbl_conv_geom *g,
                                const nbl_q4_params *p, const float *bias, float sc, float *y) {
  const nbl_rt_tensor *X = c->in[0];
  dw_job dj = {.f = f, .g = g, .x = X->data, .bias = bias, .C = g->C, .H = g->in[0],
               .W = g->in[1], .sc = sc, .isa = nbl_i4_best_isa()};
  if (nbl_i4_x_is_codes(f)) {
    dj.u = X->data;
    dj.ubias = f->xsrc->out.code_off + f->xsrc->out.code_zero;
  }
  nbl_i4_quantizer_init(&dj.q, &f->xcfg, p);
  nbl_i4_range_init(&dj.range);
  nbl_dw_hooks h = {dw_load_row, dw_load_rows, dw_load_rows2, dw_finish, NULL, &dj,
                    !nbl_i4_avx512()};
  int rows = dw_rows_wanted(g), blocked = dw_blocked(g);
  if (rows) h.rows = dw_rows;
  nbl_status st = blocked ? run_dw_blocked(c, g, &dj, y) : nbl_conv_dw_hooked(c, g, f->dw_w, y, &h);
  if (st == NBL_OK && rows && !blocked) nbl_kcount(NBL_KC_I4_DW_ROWS_RUNS);
  if (st == NBL_OK) {
    nbl_i4_range_publish(f, &dj.range);
    return NBL_OK;
  }
  if (st == NBL_ERR_OUT_OF_MEMORY) return nbl_kerr(c, st, "out of memory");
  return st;
}
