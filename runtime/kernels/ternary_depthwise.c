/* ternary_depthwise.c - fused ternary depthwise convolutions (see
 * ternary_fused.h): the activation codes as floats, summed over the taps
 * with the weight codes (-1, 0, 1). Every sum is an integer below 2^24 in
 * magnitude (|q| <= 128, at most 64 taps), so it is exact in float32 in any
 * order: the three ways below give bit-identical outputs.
 *   plane kernel  the FP32 depthwise kernel (nbl_conv_dw_hooked) fed the
 *                 codes row by row, its planes finished by nbl_t_finish;
 *   rows          AVX-512, 16 columns or more: output rows straight from the
 *                 kernel's phase planes (nbl_t_dw_rows, zero taps skipped);
 *   blocked       AVX-512, small planes (nbl_dw_blocked_wanted: MobileNetV2's
 *                 7x7 and 14x14 layers): 16 channels at a time, each output
 *                 pixel one vector of 16 channels, the epilogue on it in
 *                 registers; a plane barely fills a vector, so the plane
 *                 kernel's per-plane set-up dominated there.
 * The input is X's floats (quantized here with the scale s) or, when the
 * producer handed them over, X's INT8 codes. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/kernels/gemm.h"
#include "runtime/kernels/kdebug.h"
#include "runtime/kernels/simd16.h"
#include "runtime/kernels/ternary_fused.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

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
  int rows3; /* dw_rows runs dw3_run */
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

#if defined(__x86_64__)
static void dw3_run(struct dw_job *j, const nbl_dw_phases *p, int64_t n, int64_t m, int64_t oh0,
                    int64_t oh1, float *y);
#endif

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
#if defined(__x86_64__)
  if (j->rows3 && p->R == p->S) {
    dw3_run(j, p, n, m, oh0, oh1, y);
    return 1;
  }
#endif
  uint32_t amax = 0;
  int64_t OW = g->out[1];
  nbl_t_epi e = {j->sc, NULL, j->act, f->act_lo, f->act_hi,
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
                            f->act_lo, f->act_hi);
  amax_merge(&j->amax, b);
}

/* 3x3 layers (dilation 1, strides 1 or 2 both ways): a block of 4 output
 * rows x 32 columns in registers, each input vector loaded once for all
 * the block's rows that read it (a stride-1 row serves up to three) and
 * multiplied by the tap's weight code (-1, 0 or 1: a sign select, exact),
 * then the epilogue on the registers. Fewer loads than nbl_t_dw_rows,
 * which loads a vector per nonzero tap and output row. */
#if defined(__x86_64__)
typedef struct dw3_epi {
  __m512 w[9], vs, vb, vl, vh;
  int act;
  const float *res; /* row oh0 of the residual plane, or NULL */
  __m512i mx;
} dw3_epi;

__attribute__((target("avx512f"), always_inline)) static inline void
dw3_store(dw3_epi *e, __m512 acc, __mmask16 m, float *y, const float *r) {
  __m512 v = _mm512_add_ps(_mm512_mul_ps(e->vs, acc), e->vb);
  if (r) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, r));
  if (e->act) {
    v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, e->vl, _CMP_LT_OQ), v, e->vl);
    v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, e->vh, _CMP_GT_OQ), v, e->vh);
  }
  _mm512_mask_storeu_ps(y, m, v);
  e->mx = _mm512_mask_max_epu32(e->mx, m, e->mx,
                                _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff)));
}

/* Output rows o0..o0+RB-1 (relative to the hook's first row oh0, absolute
 * row oh0 + o0), columns ow..ow+31 (lanes of m0, m1). */
__attribute__((target("avx512f"), always_inline)) static inline void
dw3_block(const nbl_dw_phases *p, const int R, const int RB, int64_t oh0, int64_t o0, int64_t ow,
          __mmask16 m0, __mmask16 m1, dw3_epi *e, float *y, int64_t OW) {
  const int S = R;
  __m512 a0[4], a1[4];
#pragma GCC unroll 4
  for (int o = 0; o < RB; o++) a0[o] = a1[o] = _mm512_setzero_ps();
#pragma GCC unroll 16
  for (int pr = 0; pr < (RB - 1) * R + 3; pr++) { /* padded row (oh0 + o0) * R + pr */
    const float *row = p->ph + (pr % R) * S * p->plane + (oh0 + o0 + pr / R) * p->Wp + ow;
#pragma GCC unroll 3
    for (int kw = 0; kw < 3; kw++) {
      const float *src = row + (kw % S) * p->plane + kw / S;
      __m512 x0 = _mm512_maskz_loadu_ps(m0, src), x1 = _mm512_maskz_loadu_ps(m1, src + 16);
#pragma GCC unroll 4
      for (int o = 0; o < RB; o++) {
        int kh = pr - o * R;
        if (kh >= 0 && kh < 3) {
          a0[o] = _mm512_fmadd_ps(x0, e->w[kh * 3 + kw], a0[o]);
          a1[o] = _mm512_fmadd_ps(x1, e->w[kh * 3 + kw], a1[o]);
        }
      }
    }
  }
#pragma GCC unroll 4
  for (int o = 0; o < RB; o++) {
    int64_t at = (o0 + o) * OW + ow;
    dw3_store(e, a0[o], m0, y + at, e->res ? e->res + at : NULL);
    dw3_store(e, a1[o], m1, y + at + 16, e->res ? e->res + at + 16 : NULL);
  }
}

/* Rows oh0..oh1-1 in blocks of 4 (the last block moved back to end at oh1,
 * recomputing rows of the block before: the same values again), fewer
 * than 4 rows one at a time. */
__attribute__((target("avx512f"), always_inline)) static inline void
dw3_rows(const nbl_dw_phases *p, const int R, int64_t oh0, int64_t oh1, dw3_epi *e, float *y,
         int64_t OW) {
  int64_t nr = oh1 - oh0;
  for (int64_t o = 0; o < nr; o += 4) {
    int64_t ob = nr < 4 ? o : o + 4 <= nr ? o : nr - 4;
    for (int64_t ow = 0; ow < OW; ow += 32) {
      __mmask16 m0 = nbl_tail_mask(OW - ow), m1 = nbl_tail_mask(OW - ow > 16 ? OW - ow - 16 : 0);
      if (nr < 4)
        for (int64_t i = o; i < nr; i++) dw3_block(p, R, 1, oh0, i, ow, m0, m1, e, y, OW);
      else
        dw3_block(p, R, 4, oh0, ob, ow, m0, m1, e, y, OW);
    }
  }
}

__attribute__((target("avx512f"))) static void dw3_rows_s1(const nbl_dw_phases *p, int64_t oh0,
                                                          int64_t oh1, dw3_epi *e, float *y,
                                                          int64_t OW) {
  dw3_rows(p, 1, oh0, oh1, e, y, OW);
}

__attribute__((target("avx512f"))) static void dw3_rows_s2(const nbl_dw_phases *p, int64_t oh0,
                                                          int64_t oh1, dw3_epi *e, float *y,
                                                          int64_t OW) {
  dw3_rows(p, 2, oh0, oh1, e, y, OW);
}

__attribute__((target("avx512f"))) static void dw3_run(dw_job *j, const nbl_dw_phases *p,
                                                      int64_t n, int64_t m, int64_t oh0,
                                                      int64_t oh1, float *y) {
  const nbl_t_fused *f = j->f;
  int64_t OW = j->g->out[1];
  dw3_epi e;
  for (int k = 0; k < 9; k++) e.w[k] = _mm512_set1_ps(f->dw_w[m * 9 + k]);
  e.vs = _mm512_set1_ps(j->sc);
  e.vb = _mm512_set1_ps(j->bias ? j->bias[m] : 0.0f);
  e.vl = _mm512_set1_ps(f->act_lo);
  e.vh = _mm512_set1_ps(f->act_hi);
  e.act = j->act;
  e.res = j->res ? j->res + (n * j->M + m) * j->P + oh0 * OW : NULL;
  e.mx = _mm512_setzero_si512();
  if (p->R == 1) dw3_rows_s1(p, oh0, oh1, &e, y, OW);
  else dw3_rows_s2(p, oh0, oh1, &e, y, OW);
  amax_merge(&j->amax, _mm512_reduce_max_epu32(e.mx));
}
#endif

/* 1 when dw3_run takes the layer of geometry g */
static int dw3_wanted(const nbl_conv_geom *g) {
  return g->ns == 2 && g->k[0] == 3 && g->k[1] == 3 && g->d[0] == 1 && g->d[1] == 1 &&
         g->s[0] == g->s[1] && (g->s[0] == 1 || g->s[0] == 2) &&
         nbl_kdebug_get(NBL_KS_T_DW_ROWS3) != 0;
}

/* ------------------------------------------------------------------ 16 channels at a time */

typedef struct dwb_job {
  dw_job *dj;
  const nbl_conv_geom *g;
  float *y;
  int64_t Hp, Wp, blocks; /* padded tile rows and columns; channel blocks per image */
  _Atomic int oom;
} dwb_job;

#if defined(__x86_64__)
/* The epilogue of tile_avx512 on one pixel vector of 16 channels: sc * acc,
 * + bias, Clip's semantics (NaN passes); the bits of |v| into *mx. */
__attribute__((target("avx512f"), always_inline)) static inline __m512
dwb_epi(__m512 acc, __m512 vs, __m512 vb, int act, __m512 vl, __m512 vh, __mmask16 cm,
        __m512i *mx) {
  __m512 v = _mm512_add_ps(_mm512_mul_ps(vs, acc), vb);
  if (act) {
    v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, vl, _CMP_LT_OQ), v, vl);
    v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, vh, _CMP_GT_OQ), v, vh);
  }
  *mx = _mm512_mask_max_epu32(*mx, cm, *mx,
                              _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff)));
  return v;
}

__attribute__((target("avx512f"))) static void dwb_tasks(void *arg, int64_t b, int64_t e) {
  dwb_job *J = arg;
  dw_job *dj = J->dj;
  const nbl_conv_geom *g = J->g;
  const nbl_t_fused *f = dj->f;
  int64_t H = g->in[0], W = g->in[1], OH = g->out[0], OW = g->out[1], C = g->C;
  int64_t KH = g->k[0], KW = g->k[1], HW = H * W, P = OH * OW, Wp = J->Wp;
  int64_t sh = g->s[0] * Wp, sw = g->s[1];
  int nt = (int)(KH * KW);
  float *in = malloc(sizeof(float) * (size_t)(16 * HW));
  float *T = calloc((size_t)(J->Hp * Wp * 16), sizeof(float)); /* the padding stays 0 */
  float *O = malloc(sizeof(float) * (size_t)(16 * P));
  if (!in || !T || !O) {
    atomic_store(&J->oom, 1);
    free(in), free(T), free(O);
    return;
  }
  int64_t off[NBL_DW_MAX_TAPS]; /* tap (kh, kw) of output (0, 0), in tile pixels */
  for (int64_t kh = 0; kh < KH; kh++)
    for (int64_t kw = 0; kw < KW; kw++) off[kh * KW + kw] = kh * g->d[0] * Wp + kw * g->d[1];
  /* with a residual, the sums go out raw and dw_finish adds it plane by plane */
  int epi = dj->res == NULL;
  const __m512 zero = _mm512_setzero_ps(), vs = _mm512_set1_ps(dj->sc);
  const __m512 vl = _mm512_set1_ps(f->act_lo), vh = _mm512_set1_ps(f->act_hi);
  __m512i mx = _mm512_setzero_si512();
  __m512 wv[NBL_DW_MAX_TAPS];
  for (int64_t u = b; u < e; u++) {
    int64_t n = u / J->blocks, c0 = u % J->blocks * 16, nc = C - c0 < 16 ? C - c0 : 16;
    __mmask16 cm = nbl_tail_mask(nc);
    load_codes(dj, (n * C + c0) * HW, in, nc * HW); /* the nc planes follow each other */
    nbl_planes_to_tile(in, nc, H, W, T, Wp, g->pb[0], g->pb[1]);
    nbl_tap_vectors(f->dw_w, c0, nt, cm, wv);
    __m512 vb = dj->bias ? _mm512_maskz_loadu_ps(cm, dj->bias + c0) : zero;
    for (int64_t oh = 0; oh < OH; oh++) {
      const float *trow = T + oh * sh * 16;
      float *orow = O + oh * OW * 16;
      for (int64_t ow = 0; ow < OW; ow += 4) {
        /* a last block of fewer than 4 pixels moves back to end at OW
         * (pixels of the block before computed again: the same values) */
        if (ow + 4 > OW && OW >= 4) ow = OW - 4;
        int64_t cnt = OW - ow < 4 ? OW - ow : 4;
        __m512 a[4] = {zero, zero, zero, zero};
        const float *t0 = trow + ow * sw * 16;
        /* w * x with w in -1, 0, 1: exact, as are the integer sums */
#define DWB_TAPS4(NT)                                                          \
  for (int k = 0; k < (NT); k++) {                                             \
    const float *t = t0 + off[k] * 16;                                         \
    a[0] = _mm512_fmadd_ps(_mm512_loadu_ps(t), wv[k], a[0]);                   \
    a[1] = _mm512_fmadd_ps(_mm512_loadu_ps(t + sw * 16), wv[k], a[1]);         \
    a[2] = _mm512_fmadd_ps(_mm512_loadu_ps(t + 2 * sw * 16), wv[k], a[2]);     \
    a[3] = _mm512_fmadd_ps(_mm512_loadu_ps(t + 3 * sw * 16), wv[k], a[3]);     \
  }
        if (cnt == 4 && nt == 9) { /* 3x3: the taps unrolled, weights in registers */
#pragma GCC unroll 9
          DWB_TAPS4(9)
        } else if (cnt == 4) {
          DWB_TAPS4(nt)
        } else {
          for (int64_t i = 0; i < cnt; i++)
            for (int k = 0; k < nt; k++)
              a[i] = _mm512_fmadd_ps(_mm512_loadu_ps(t0 + (off[k] + i * sw) * 16), wv[k], a[i]);
        }
#undef DWB_TAPS4
        for (int64_t i = 0; i < cnt; i++)
          _mm512_storeu_ps(orow + (ow + i) * 16,
                           epi ? dwb_epi(a[i], vs, vb, dj->act, vl, vh, cm, &mx) : a[i]);
      }
    }
    float *yb = J->y + (n * C + c0) * P;
    nbl_tile_to_planes(O, P, nc, yb);
    if (!epi)
      for (int64_t l = 0; l < nc; l++) dw_finish(dj, n, c0 + l, yb + l * P, P);
  }
  amax_merge(&dj->amax, _mm512_reduce_max_epu32(mx));
  free(in), free(T), free(O);
}
#endif

/* 1 when the layer of geometry g runs 16 channels at a time under f's variant. */
static int dw_blocked(const nbl_t_fused *f, const nbl_conv_geom *g) {
#if defined(__x86_64__)
  return f->isa == NBL_T_AVX512 && nbl_t_isa_supported(NBL_T_AVX512) &&
         nbl_dw_blocked_wanted(g, (int)nbl_kdebug_get(NBL_KS_T_DW_BLOCKED));
#else
  (void)f, (void)g;
  return 0;
#endif
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
#if defined(__x86_64__)
    dwb_job J = {.dj = &dj, .g = g, .y = y, .blocks = (g->C + 15) / 16};
    nbl_dw_tile_dims(g, &J.Hp, &J.Wp);
    atomic_init(&J.oom, 0);
    nbl_parallel_for(c, g->N * J.blocks, 1, dwb_tasks, &J);
    st = atomic_load(&J.oom) ? NBL_ERR_OUT_OF_MEMORY : NBL_OK;
    if (st == NBL_OK) nbl_kcount(NBL_KC_T_DW_BLOCKED_RUNS);
#else
    st = NBL_ERR_UNSUPPORTED;
#endif
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
