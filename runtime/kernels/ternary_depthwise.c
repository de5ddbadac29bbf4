/* ternary_depthwise.c - fused ternary depthwise convolutions (see
 * ternary_fused.h): the activation codes as floats, summed over the taps
 * with the weight codes (-1, 0, 1). Every sum is an integer below 2^24 in
 * magnitude (|q| <= 128, at most 64 taps), so it is exact in float32 in any
 * order: the three ways below give bit-identical outputs.
 *   plane kernel  the FP32 depthwise kernel (nbl_conv_dw_hooked) fed the
 *                 codes row by row, its planes finished by nbl_t_finish;
 *   rows          AVX-512, 16 columns or more: output rows straight from the
 *                 kernel's phase planes (3x3 layers: nbl_dwc_rows3 of
 *                 code_depthwise.c, shared with INT4; others nbl_t_dw_rows,
 *                 zero taps skipped);
 *   blocked       AVX-512, small planes (nbl_dw_blocked_wanted: MobileNetV2's
 *                 7x7 and 14x14 layers): 16 channels at a time
 *                 (nbl_dwc_blocked of code_depthwise.c, shared with INT4).
 * The input is X's floats (quantized here with the scale s) or, when the
 * producer handed them over, X's INT8 codes. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/kernels/code_depthwise.h"
#include "runtime/kernels/gemm.h"
#include "runtime/kernels/kdebug.h"
#include "runtime/kernels/ternary_fused.h"

/* *m = max(*m, v) for the bits of the written |y| (several threads). */
static void amax_merge(_Atomic uint32_t *m, uint32_t v) {
  uint32_t cur = atomic_load(m);
  while (v > cur && !atomic_compare_exchange_weak(m, &cur, v)) {
  }
}

typedef struct dw_job {
  const nbl_t_fused *f;
  const float *x;   /* the input's floats, or NULL */
  const int8_t *xq; /* else its codes (scale s) */
  const float *bias;
  int64_t C, H, W;
  float s, sc;
  const float *res; /* a fused residual [N, M, out...], or NULL */
  const float *y;   /* the output [N, M, out...] */
  int64_t M, P;
  int act; /* apply the fused activation (not when the Add comes after) */
  int rows3; /* dw_rows runs nbl_dwc_rows3 */
  _Atomic uint32_t amax;
  const nbl_conv_geom *g;
} dw_job;

/* n consecutive input elements from element i0 on, as float codes. */
static void load_codes(const dw_job *j, int64_t i0, float *dst, int64_t n) {
  if (j->xq) nbl_t_codes_f(j->f->isa, j->xq + i0, dst, n);
  else nbl_t_quant_f(j->f->isa, j->x + i0, dst, n, j->s);
}

static void dw_load_row(void *arg, int64_t n, int64_t c, int64_t ih, float *row) {
  const dw_job *j = arg;
  load_codes(j, ((n * j->C + c) * j->H + ih) * j->W, row, j->W);
}

static void dw_load_rows(void *arg, int64_t n, int64_t c, int64_t ih0, int64_t ih1, float *dst,
                         int64_t ld) {
  const dw_job *j = arg;
  int64_t i0 = ((n * j->C + c) * j->H + ih0) * j->W;
  if (ld == j->W) {
    load_codes(j, i0, dst, (ih1 - ih0) * j->W);
    return;
  }
  for (int64_t ih = ih0; ih < ih1; ih++) load_codes(j, i0 + (ih - ih0) * j->W, dst + (ih - ih0) * ld, j->W);
}

static void dw_load_rows2(void *arg, int64_t n, int64_t c, int64_t ih0, int64_t count,
                          int64_t step, float *ev, float *od, int64_t ld) {
  const dw_job *j = arg;
  int64_t i0 = ((n * j->C + c) * j->H + ih0) * j->W;
  for (int64_t i = 0; i < count; i++) {
    int64_t at = i0 + i * step * j->W;
    nbl_t_deint2_f(j->f->isa, j->xq ? NULL : j->x + at, j->xq ? j->xq + at : NULL, j->W, j->s,
                   ev + i * ld, od + i * ld);
  }
}

/* Output rows straight from the loaded phase planes, the epilogue on the
 * sums in registers (AVX-512; else the plane kernel and dw_finish). */
static int dw_rows(void *arg, const nbl_dw_phases *p, int64_t n, int64_t m, int64_t oh0,
                   int64_t oh1, float *y) {
  dw_job *j = arg;
  const nbl_t_fused *f = j->f;
  const nbl_conv_geom *g = j->g;
  int64_t OW = g->out[1];
  if (j->rows3 && p->R == p->S) {
    nbl_dwc_epi e = {j->sc, j->act, f->cons.act_lo, f->cons.act_hi, NBL_DWC_AMAX};
    nbl_dwc_stats st;
    nbl_dwc_stats_init(&st);
    nbl_dwc_rows3(p, f->dw_w + m * 9, oh0, oh1, OW, &e, j->bias ? j->bias[m] : 0.0f,
                  j->res ? j->res + (n * j->M + m) * j->P + oh0 * OW : NULL, y, &st);
    amax_merge(&j->amax, st.amax);
    return 1;
  }
  uint32_t amax = 0;
  nbl_t_epi e = {j->sc, NULL, j->act, f->cons.act_lo, f->cons.act_hi,
                 j->res ? j->res + (n * j->M + m) * j->P + oh0 * OW : NULL, &amax};
  if (!nbl_t_dw_rows(f->isa, p->ph, p->plane, p->Wp, p->R, p->S, g->k[0], g->k[1], g->d[0],
                     g->d[1], f->dw_w + m * g->k_sz, oh0, oh1, OW, y, &e,
                     j->bias ? j->bias[m] : 0.0f))
    return 0;
  amax_merge(&j->amax, amax);
  return 1;
}

static void dw_finish(void *arg, int64_t n, int64_t m, float *y, int64_t count) {
  dw_job *j = arg;
  const nbl_t_fused *f = j->f;
  /* y may start past the plane's first row (a band of rows): the residual
   * is read at the same position */
  const float *r = j->res ? j->res + (y - j->y) : NULL;
  uint32_t b = nbl_t_finish(f->isa, y, count, j->sc, j->bias ? j->bias[m] : 0.0f, r, j->act,
                            f->cons.act_lo, f->cons.act_hi);
  amax_merge(&j->amax, b);
}

/* 1 when nbl_dwc_rows3 takes the layer of geometry g */
static int dw3_wanted(const nbl_conv_geom *g) {
  return nbl_dwc_rows3_fits(g) && nbl_kdebug_get(NBL_KS_T_DW_ROWS3) != 0;
}

/* nbl_dwc_io of the blocked kernel: the planes' codes, the residual's
 * finish, the statistic */
static void dwb_load(void *arg, int64_t n, int64_t c0, int64_t nc, float *dst) {
  const dw_job *j = arg;
  load_codes(j, (n * j->C + c0) * j->H * j->W, dst, nc * j->H * j->W);
}

static void dwb_merge(void *arg, const nbl_dwc_stats *st) {
  dw_job *j = arg;
  amax_merge(&j->amax, st->amax);
}

/* 1 when the layer of geometry g runs 16 channels at a time under f's variant. */
static int dw_blocked(const nbl_t_fused *f, const nbl_conv_geom *g) {
  return f->isa == NBL_T_AVX512 && nbl_t_isa_supported(NBL_T_AVX512) &&
         nbl_dw_blocked_wanted(g, (int)nbl_kdebug_get(NBL_KS_T_DW_BLOCKED));
}

nbl_status nbl_t_run_depthwise(nbl_kctx *c, const nbl_t_fused *f, const nbl_conv_geom *g,
                               const float *x, const int8_t *xq, float s, float sc,
                               const float *bias, const float *res, int act, float *y,
                               uint32_t *amax) {
  dw_job dj = {.f = f, .x = x, .xq = xq, .bias = bias, .C = g->C, .H = g->in[0], .W = g->in[1],
               .s = s, .sc = sc, .res = res, .y = y, .M = g->M, .P = g->out_sz, .act = act, .g = g};
  atomic_init(&dj.amax, 0);
  nbl_status st;
  if (dw_blocked(f, g)) {
    /* with a residual the sums go out raw and dw_finish adds it plane by plane */
    nbl_dwc_epi e = {sc, act, f->cons.act_lo, f->cons.act_hi, NBL_DWC_AMAX};
    nbl_dwc_io io = {dwb_load, res ? dw_finish : NULL, dwb_merge, &dj};
    st = nbl_dwc_blocked(c, g, f->dw_w, bias, &e, &io, y);
    if (st == NBL_OK) nbl_kcount(NBL_KC_T_DW_BLOCKED_RUNS);
  } else {
    nbl_dw_hooks h = {.load_row = dw_load_row, .load_rows = dw_load_rows,
                      .finish = dw_finish,
                      .arg = &dj, .no_avx512 = f->isa != NBL_T_AVX512};
    /* stride-2 rows straight into their phases (AVX-512; else the kernel
     * splits the rows load_row quantized, with AVX2 where it runs) */
    if (f->isa == NBL_T_AVX512) h.load_rows2 = dw_load_rows2;
    if (f->isa == NBL_T_AVX512 && g->ns == 2) {
      h.rows = dw_rows;
      dj.rows3 = dw3_wanted(g);
    }
    st = nbl_conv_dw_hooked(c, g, f->dw_w, y, &h);
  }
  *amax = atomic_load(&dj.amax);
  return st;
}
