/* code_depthwise.c - depthwise convolutions on activation codes, shared by
 * the INT4 and ternary fused paths; see code_depthwise.h. */
#include "runtime/kernels/code_depthwise.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "runtime/core/cpu.h"
#include "runtime/kernels/simd16.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

void nbl_dwc_stats_init(nbl_dwc_stats *s) {
  s->amax = 0;
  s->lo = INFINITY;
  s->hi = -INFINITY;
  s->nan = 0;
}

int nbl_dwc_rows3_fits(const nbl_conv_geom *g) {
  return nbl_cpu_has(NBL_CPU_AVX512F) && g->ns == 2 && g->k[0] == 3 && g->k[1] == 3 &&
         g->d[0] == 1 && g->d[1] == 1 && g->s[0] == g->s[1] && (g->s[0] == 1 || g->s[0] == 2);
}

/* ------------------------------------------------------------------ the epilogue */

#if defined(__x86_64__)
/* The epilogue on vectors of exact sums, and its statistic so far. */
typedef struct vepi {
  __m512 vs, vb, vl, vh;
  int act, stat;
  __m512i mx;        /* NBL_DWC_AMAX: the largest bits of |y| per lane */
  __m512 vmin, vmax; /* NBL_DWC_RANGE */
  __mmask16 nan;
} vepi;

__attribute__((target("avx512f"), always_inline)) static inline void
vepi_init(vepi *v, const nbl_dwc_epi *e, __m512 vb) {
  v->vs = _mm512_set1_ps(e->sc);
  v->vb = vb;
  v->vl = _mm512_set1_ps(e->lo);
  v->vh = _mm512_set1_ps(e->hi);
  v->act = e->act != 0;
  v->stat = e->stat;
  v->mx = _mm512_setzero_si512();
  v->vmin = _mm512_set1_ps(INFINITY);
  v->vmax = _mm512_set1_ps(-INFINITY);
  v->nan = 0;
}

/* y = act(sc * acc + b [+ the lanes m of res]) for the lanes m, the
 * statistic widened by them. */
__attribute__((target("avx512f"), always_inline)) static inline __m512
vepi_apply(vepi *v, __m512 acc, __mmask16 m, const float *res) {
  __m512 y = _mm512_add_ps(_mm512_mul_ps(v->vs, acc), v->vb);
  if (res) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, res));
  if (v->act) { /* Clip's semantics: y < lo ? lo : y, then > hi ? hi (NaN passes) */
    y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(y, v->vl, _CMP_LT_OQ), y, v->vl);
    y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(y, v->vh, _CMP_GT_OQ), y, v->vh);
  }
  if (v->stat == NBL_DWC_AMAX) {
    v->mx = _mm512_mask_max_epu32(
        v->mx, m, v->mx, _mm512_and_si512(_mm512_castps_si512(y), _mm512_set1_epi32(0x7fffffff)));
  } else {
    v->vmin = _mm512_mask_min_ps(v->vmin, m, v->vmin, y);
    v->vmax = _mm512_mask_max_ps(v->vmax, m, v->vmax, y);
    v->nan |= _mm512_mask_cmp_ps_mask(m, y, y, _CMP_UNORD_Q);
  }
  return y;
}

/* *st widened by what v saw. */
__attribute__((target("avx512f"))) static void vepi_stats(const vepi *v, nbl_dwc_stats *st) {
  if (v->stat == NBL_DWC_AMAX) {
    uint32_t b = _mm512_reduce_max_epu32(v->mx);
    if (b > st->amax) st->amax = b;
    return;
  }
  float lo = _mm512_reduce_min_ps(v->vmin), hi = _mm512_reduce_max_ps(v->vmax);
  if (lo < st->lo) st->lo = lo;
  if (hi > st->hi) st->hi = hi;
  if (v->nan) st->nan = 1;
}

/* ------------------------------------------------------------------ 3x3 rows */

typedef struct dw3 {
  __m512 w[9];
  vepi ep;
  const float *res; /* row oh0 of the residual plane, or NULL */
} dw3;

/* Output rows o0..o0+RB-1 (relative to the first row oh0 of y), columns
 * ow..ow+31 (the lanes of m0, m1). */
__attribute__((target("avx512f"), always_inline)) static inline void
dw3_block(const nbl_dw_phases *p, const int R, const int RB, int64_t oh0, int64_t o0, int64_t ow,
          __mmask16 m0, __mmask16 m1, dw3 *e, float *y, int64_t OW) {
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
    _mm512_mask_storeu_ps(y + at, m0, vepi_apply(&e->ep, a0[o], m0, e->res ? e->res + at : NULL));
    _mm512_mask_storeu_ps(y + at + 16, m1,
                          vepi_apply(&e->ep, a1[o], m1, e->res ? e->res + at + 16 : NULL));
  }
}

/* Rows oh0..oh1-1 in blocks of 4 (the last block moved back to end at oh1,
 * recomputing rows of the block before: the same values again), fewer
 * than 4 rows one at a time. */
__attribute__((target("avx512f"), always_inline)) static inline void
dw3_rows(const nbl_dw_phases *p, const int R, int64_t oh0, int64_t oh1, dw3 *e, float *y,
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
                                                          int64_t oh1, dw3 *e, float *y,
                                                          int64_t OW) {
  dw3_rows(p, 1, oh0, oh1, e, y, OW);
}

__attribute__((target("avx512f"))) static void dw3_rows_s2(const nbl_dw_phases *p, int64_t oh0,
                                                          int64_t oh1, dw3 *e, float *y,
                                                          int64_t OW) {
  dw3_rows(p, 2, oh0, oh1, e, y, OW);
}

__attribute__((target("avx512f"))) void nbl_dwc_rows3(const nbl_dw_phases *p, const float *w,
                                                      int64_t oh0, int64_t oh1, int64_t OW,
                                                      const nbl_dwc_epi *e, float bias,
                                                      const float *res, float *y,
                                                      nbl_dwc_stats *st) {
  dw3 d;
  for (int k = 0; k < 9; k++) d.w[k] = _mm512_set1_ps(w[k]);
  vepi_init(&d.ep, e, _mm512_set1_ps(bias));
  d.res = res;
  if (p->R == 1) dw3_rows_s1(p, oh0, oh1, &d, y, OW);
  else dw3_rows_s2(p, oh0, oh1, &d, y, OW);
  vepi_stats(&d.ep, st);
}
#else
void nbl_dwc_rows3(const nbl_dw_phases *p, const float *w, int64_t oh0, int64_t oh1, int64_t OW,
                   const nbl_dwc_epi *e, float bias, const float *res, float *y,
                   nbl_dwc_stats *st) {
  (void)p, (void)w, (void)oh0, (void)oh1, (void)OW, (void)e, (void)bias, (void)res, (void)y,
      (void)st;
}
#endif

/* ------------------------------------------------------------------ 16 channels at a time */

typedef struct dwb_job {
  const nbl_conv_geom *g;
  const float *w, *bias;
  const nbl_dwc_epi *e;
  const nbl_dwc_io *io;
  float *y;
  int64_t Hp, Wp, blocks; /* padded tile rows and columns; channel blocks per image */
  _Atomic int oom;
} dwb_job;

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static void dwb_tasks(void *arg, int64_t b, int64_t e) {
  dwb_job *J = arg;
  const nbl_conv_geom *g = J->g;
  const nbl_dwc_io *io = J->io;
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
  /* with the caller's finish the sums go out raw, and it finishes them plane by plane */
  int epi = io->finish == NULL;
  const __m512 zero = _mm512_setzero_ps();
  vepi ep; /* the bias set per block of channels */
  vepi_init(&ep, J->e, zero);
  __m512 wv[NBL_DW_MAX_TAPS];
  for (int64_t u = b; u < e; u++) {
    int64_t n = u / J->blocks, c0 = u % J->blocks * 16, nc = C - c0 < 16 ? C - c0 : 16;
    __mmask16 cm = nbl_tail_mask(nc);
    io->load_planes(io->arg, n, c0, nc, in);
    nbl_planes_to_tile(in, nc, H, W, T, Wp, g->pb[0], g->pb[1]);
    nbl_tap_vectors(J->w, c0, nt, cm, wv);
    ep.vb = J->bias ? _mm512_maskz_loadu_ps(cm, J->bias + c0) : zero;
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
        /* weight codes times activation codes: exact, as are the integer sums */
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
          _mm512_storeu_ps(orow + (ow + i) * 16, epi ? vepi_apply(&ep, a[i], cm, NULL) : a[i]);
      }
    }
    float *yb = J->y + (n * C + c0) * P;
    nbl_tile_to_planes(O, P, nc, yb);
    if (!epi)
      for (int64_t l = 0; l < nc; l++) io->finish(io->arg, n, c0 + l, yb + l * P, P);
  }
  nbl_dwc_stats st;
  nbl_dwc_stats_init(&st);
  vepi_stats(&ep, &st);
  io->merge(io->arg, &st);
  free(in), free(T), free(O);
}
#endif

nbl_status nbl_dwc_blocked(nbl_kctx *c, const nbl_conv_geom *g, const float *w, const float *bias,
                           const nbl_dwc_epi *e, const nbl_dwc_io *io, float *y) {
#if defined(__x86_64__)
  if (!nbl_cpu_has(NBL_CPU_AVX512F)) return NBL_ERR_UNSUPPORTED;
  dwb_job J = {.g = g, .w = w, .bias = bias, .e = e, .io = io, .y = y,
               .blocks = (g->C + 15) / 16};
  nbl_dw_tile_dims(g, &J.Hp, &J.Wp);
  atomic_init(&J.oom, 0);
  nbl_parallel_for(c, g->N * J.blocks, 1, dwb_tasks, &J);
  return atomic_load(&J.oom) ? NBL_ERR_OUT_OF_MEMORY : NBL_OK;
#else
  (void)c, (void)g, (void)w, (void)bias, (void)e, (void)io, (void)y;
  return NBL_ERR_UNSUPPORTED;
#endif
}
