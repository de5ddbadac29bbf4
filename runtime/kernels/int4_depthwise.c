/* int4_depthwise.c - fused INT4 depthwise convolutions on the codes: the
 * FP32 plane kernel fed centered codes (nbl_conv_dw_hooked), 3x3 layers
 * straight from their input rows, small planes 16 channels at a time, and
 * the float epilogues they share (sc * acc + bias, activation, range);
 * see int4_fused.h. */
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
  e->act = f->act != 0;
  e->maybe_nan = !isfinite(sc) || !isfinite(bias);
  e->vs = _mm512_set1_ps(sc);
  e->vb = _mm512_set1_ps(bias);
  e->clo = _mm512_set1_ps(e->act ? f->act_lo : -INFINITY);
  e->chi = _mm512_set1_ps(e->act ? f->act_hi : INFINITY);
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
  const int act = f->act != 0, maybe_nan = !isfinite(sc) || !isfinite(bv);
  const __m256 vs = _mm256_set1_ps(sc), vb = _mm256_set1_ps(bv);
  const __m256 clo = _mm256_set1_ps(act ? f->act_lo : -INFINITY),
               chi = _mm256_set1_ps(act ? f->act_hi : INFINITY);
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
 * planes: output rows straight from the loaded phase planes, a block of 4
 * rows x 32 columns in registers. Each input vector is loaded once for all
 * the block's rows that read it (a stride-1 row serves up to three), where
 * the plane kernel loads it once per tap and output row; the epilogue of
 * epi_f_avx512 then runs on the sums in registers and the block is stored
 * once, with no pass over the plane to copy it out and another to finish
 * it. The sums are exact integers (codes times weight codes), so the order
 * and the fused multiply-adds change nothing: bit-identical to the plane
 * kernel and finish. */

#if defined(__x86_64__)
typedef struct dw3_epi {
  __m512 w[9];
  i4_epi ep;
} dw3_epi;

/* Output rows oh..oh+RB-1 (of the phase planes p), columns ow..ow+31 (the
 * lanes of m0, m1), to y (row oh, column 0) with OW columns a row. */
__attribute__((target("avx512f"), always_inline)) static inline void
dw3_block(const nbl_dw_phases *p, const int R, const int S, const int RB, int64_t oh, int64_t ow,
          __mmask16 m0, __mmask16 m1, dw3_epi *e, float *y, int64_t OW) {
  __m512 a0[4], a1[4];
#pragma GCC unroll 4
  for (int o = 0; o < RB; o++) a0[o] = a1[o] = _mm512_setzero_ps();
#pragma GCC unroll 16
  for (int pr = 0; pr < (RB - 1) * R + 3; pr++) { /* padded row oh * R + pr */
    const float *row = p->ph + (pr % R) * S * p->plane + (oh + pr / R) * p->Wp + ow;
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
    float *yr = y + o * OW + ow;
    _mm512_mask_storeu_ps(yr, m0, i4_epi_apply(&e->ep, a0[o], m0));
    _mm512_mask_storeu_ps(yr + 16, m1, i4_epi_apply(&e->ep, a1[o], m1));
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
        for (int64_t i = o; i < nr; i++) dw3_block(p, R, R, 1, oh0 + i, ow, m0, m1, e, y + i * OW, OW);
      else
        dw3_block(p, R, R, 4, oh0 + ob, ow, m0, m1, e, y + ob * OW, OW);
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
#endif

/* nbl_dw_hooks.rows for the geometries above (set only where AVX-512 runs) */
#if defined(__x86_64__)
__attribute__((target("avx512f"))) static int dw_rows(void *arg, const nbl_dw_phases *p,
                                                      int64_t n, int64_t m, int64_t oh0,
                                                      int64_t oh1, float *y) {
  (void)n;
  dw_job *j = arg;
  const nbl_conv_geom *g = j->g;
  const nbl_i4_fused *f = j->f;
  float bias = j->bias ? j->bias[m] : 0.0f;
  dw3_epi e;
  for (int k = 0; k < 9; k++) e.w[k] = _mm512_set1_ps(f->dw_w[m * 9 + k]);
  i4_epi_init(&e.ep, f, j->sc, bias);
  if (p->R == 1) dw3_rows_s1(p, oh0, oh1, &e, y, g->out[1]);
  else dw3_rows_s2(p, oh0, oh1, &e, y, g->out[1]);
  nbl_i4_range rg = i4_epi_range(&e.ep);
  nbl_i4_range_merge(&j->range, &rg);
  return 1;
}
#else
static int dw_rows(void *arg, const nbl_dw_phases *p, int64_t n, int64_t m, int64_t oh0,
                   int64_t oh1, float *y) {
  (void)arg, (void)p, (void)n, (void)m, (void)oh0, (void)oh1, (void)y;
  return 0;
}
#endif

/* 1 when dw_rows takes the layer of geometry g */
static int dw_rows_wanted(const nbl_conv_geom *g) {
  return nbl_i4_avx512() && nbl_kdebug_get(NBL_KS_I4_DW_ROWS) && g->k[0] == 3 && g->k[1] == 3 &&
         g->d[0] == 1 && g->d[1] == 1 && g->s[0] == g->s[1] && (g->s[0] == 1 || g->s[0] == 2);
}

/* Depthwise on small planes, 16 channels at a time. The plane kernel above
 * pays per plane (row loads, tap set-up, copy-out) what a 7x7 or 14x14
 * plane barely amortizes, and MobileNetV2's late layers have hundreds of
 * them. Here one task takes a block of 16 channels: their input codes go
 * (same loaders, same values) into a padded tile laid out [row][col][16],
 * every output pixel is then one vector of 16 channels summed over the taps
 * with per-channel weight vectors, and the epilogue (sc * acc + bias,
 * activation, range) runs on those vectors before they are written back
 * plane by plane. The sums are the same exact integers as in the plane
 * kernel, so the outputs are bit-identical. */

typedef struct dwb_job {
  dw_job *dj;
  const nbl_conv_geom *g;
  float *y;
  int64_t Hp, Wp, blocks; /* padded tile rows and columns; channel blocks per image */
  _Atomic int oom;
} dwb_job;

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static void dwb_tasks(void *arg, int64_t b, int64_t e) {
  dwb_job *J = arg;
  dw_job *dj = J->dj;
  const nbl_conv_geom *g = J->g;
  const nbl_i4_fused *f = dj->f;
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
  const __m512 zero = _mm512_setzero_ps();
  i4_epi ep; /* the bias and NaN flag set per block of channels */
  i4_epi_init(&ep, f, dj->sc, 0.0f);
  __m512 wv[NBL_DW_MAX_TAPS];
  for (int64_t u = b; u < e; u++) {
    int64_t n = u / J->blocks, c0 = u % J->blocks * 16, nc = C - c0 < 16 ? C - c0 : 16;
    __mmask16 cm = nbl_tail_mask(nc);
    dw_load_rows(dj, n, c0, 0, nc * H, in, W); /* the nc planes follow each other */
    nbl_planes_to_tile(in, nc, H, W, T, Wp, g->pb[0], g->pb[1]);
    for (int k = 0; k < nt; k++) wv[k] = _mm512_loadu_ps(f->dw_wt + (c0 * nt + k * 16));
    ep.vb = dj->bias ? _mm512_maskz_loadu_ps(cm, dj->bias + c0) : zero;
    /* a NaN needs a non-finite scale or bias (b - b is NaN for +-inf, NaN) */
    ep.maybe_nan = !isfinite(dj->sc) ||
                   _mm512_mask_cmp_ps_mask(cm, _mm512_sub_ps(ep.vb, ep.vb), zero, _CMP_NEQ_UQ);
    for (int64_t oh = 0; oh < OH; oh++) {
      const float *trow = T + oh * sh * 16;
      float *orow = O + oh * OW * 16;
      int64_t ow = 0;
      for (; ow < OW; ow += 4) {
        /* a last block of fewer than 4 pixels moves back to end at OW
         * (pixels of the block before computed again: the same values) */
        if (ow + 4 > OW && OW >= 4) ow = OW - 4;
        int64_t cnt = OW - ow < 4 ? OW - ow : 4;
        __m512 a[4] = {zero, zero, zero, zero};
        const float *t0 = trow + ow * sw * 16;
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
          _mm512_storeu_ps(orow + (ow + i) * 16, i4_epi_apply(&ep, a[i], cm));
      }
    }
    nbl_tile_to_planes(O, P, nc, J->y + (n * C + c0) * P);
  }
  nbl_i4_range rg = i4_epi_range(&ep);
  nbl_i4_range_merge(&dj->range, &rg);
  free(in), free(T), free(O);
}
#endif

/* 1 when the depthwise layer of geometry g runs 16 channels at a time. */
static int dw_blocked(const nbl_conv_geom *g) {
#if defined(__x86_64__)
  return nbl_i4_avx512() && nbl_dw_blocked_wanted(g, (int)nbl_kdebug_get(NBL_KS_I4_DW_BLOCKED));
#else
  (void)g;
  return 0;
#endif
}

static nbl_status run_dw_blocked(nbl_kctx *c, const nbl_conv_geom *g, dw_job *dj, float *y) {
#if defined(__x86_64__)
  dwb_job J = {.dj = dj, .g = g, .y = y, .blocks = (g->C + 15) / 16};
  nbl_dw_tile_dims(g, &J.Hp, &J.Wp);
  atomic_init(&J.oom, 0);
  nbl_parallel_for(c, g->N * J.blocks, 1, dwb_tasks, &J);
  if (atomic_load(&J.oom)) return NBL_ERR_OUT_OF_MEMORY;
  nbl_kcount(NBL_KC_I4_DW_BLOCKED_RUNS);
  return NBL_OK;
#else
  (void)c, (void)g, (void)dj, (void)y;
  return NBL_ERR_UNSUPPORTED;
#endif
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
