/* conv_taps.c - FP32 convolutions whose windows lie mostly in the padding
 * (conv_paths.h): large dilations on small planes, as deeplabv3's atrous
 * 3x3 convolutions of dilation 12 on 14x14 planes, where the im2col
 * product spends 4 of 5 multiply-adds on zeros. Here each kernel tap is
 * one product, W[:, :, tap] (M x C) times the input pixels the tap reads,
 * over only the outputs where the tap lands inside the input (a rectangle:
 * the same range per dim as im2col's), added into the output. */
#include <stdlib.h>
#include <string.h>

#include "runtime/kernels/conv_paths.h"

/* The outputs o in [*lo, *hi) whose tap k lands inside [0, in) along one dim. */
static void tap_range(int64_t in, int64_t out, int64_t s, int64_t d, int64_t pb, int64_t k, int64_t *lo,
                      int64_t *hi) {
  const int64_t off = k * d - pb; /* o s + off in [0, in) */
  int64_t a = off >= 0 ? 0 : (-off + s - 1) / s, b = in - off <= 0 ? 0 : (in - off + s - 1) / s;
  if (b > out) b = out;
  if (a > b) a = b;
  *lo = a, *hi = b;
}

/* One spatial geometry as 2-D (a 1-D one as a plane of one row). */
typedef struct taps_geom {
  int64_t H, W, OH, OW, KH, KW, sh, sw, dh, dw, ph, pw;
} taps_geom;

static int taps_geom_of(const nbl_conv_geom *g, taps_geom *t) {
  if (g->ns == 2) {
    *t = (taps_geom){g->in[0], g->in[1], g->out[0], g->out[1], g->k[0], g->k[1],
                     g->s[0],  g->s[1],  g->d[0],   g->d[1],   g->pb[0], g->pb[1]};
    return 1;
  }
  if (g->ns == 1) {
    *t = (taps_geom){1, g->in[0], 1, g->out[0], 1, g->k[0], 1, g->s[0], 1, g->d[0], 0, g->pb[0]};
    return 1;
  }
  return 0;
}

int nbl_conv_taps_wanted(const nbl_conv_geom *g) {
  taps_geom t;
  if (g->group != 1 || !taps_geom_of(g, &t) || g->out_sz <= 0 || g->k_sz <= 1) return 0;
  /* the share of (tap, output) pairs inside the input: the product of the
   * per-dim shares */
  double share = 1;
  const int64_t in[2] = {t.H, t.W}, out[2] = {t.OH, t.OW}, k[2] = {t.KH, t.KW}, s[2] = {t.sh, t.sw},
                d[2] = {t.dh, t.dw}, p[2] = {t.ph, t.pw};
  for (int i = 0; i < 2; i++) {
    int64_t n = 0, lo, hi;
    for (int64_t kk = 0; kk < k[i]; kk++) {
      tap_range(in[i], out[i], s[i], d[i], p[i], kk, &lo, &hi);
      n += hi - lo;
    }
    share *= (double)n / (double)(k[i] * out[i]);
  }
  /* below one half: the products on the rest beat one im2col product over
   * all. Dilated layers of at least 16 input channels take them too: the
   * products of C columns each (BLAS, or nibble's kernel) ran faster than
   * the im2col product of the dilated taps (1 thread: 256 -> 256 channels
   * at 28x28, dilation 2: 14.0 -> 9.7 ms, dilation 6: 10.8 -> 7.9 ms; 1-D,
   * 128 channels of 2000, dilation 2: 6.6 -> 2.6 ms) */
  return share < 0.5 || ((t.dh > 1 || t.dw > 1) && g->C >= 16);
}

/* The weights tap-major, [KK][M][C], kept in the node's cache when they
 * are constant. */
typedef struct taps_wcache {
  const float *w;
  int64_t M, C, KK;
  float wt[];
} taps_wcache;

/* its own free function: what marks the slot as holding a taps_wcache */
static void taps_cache_free(void *p) { free(p); }

static void taps_transpose(const float *w, int64_t M, int64_t C, int64_t KK, float *wt) {
  for (int64_t m = 0; m < M; m++)
    for (int64_t c = 0; c < C; c++)
      for (int64_t t = 0; t < KK; t++) wt[(t * M + m) * C + c] = w[(m * C + c) * KK + t];
}

static const float *taps_weights(nbl_kctx *ctx, const float *w, int64_t M, int64_t C, int64_t KK, float **own) {
  const size_t n = (size_t)(M * C * KK);
  nbl_kcache *kc = ctx ? nbl_kctx_cache(ctx) : NULL;
  *own = NULL;
  if (kc && nbl_conv_weights_const(ctx)) {
    taps_wcache *wc = kc->data;
    if (wc && kc->free_fn == taps_cache_free && wc->w == w && wc->M == M && wc->C == C && wc->KK == KK) return wc->wt;
    if (kc->free_fn) kc->free_fn(kc->data);
    kc->data = NULL, kc->free_fn = NULL;
    wc = malloc(sizeof *wc + n * sizeof(float));
    if (wc) {
      wc->w = w, wc->M = M, wc->C = C, wc->KK = KK;
      taps_transpose(w, M, C, KK, wc->wt);
      kc->data = wc, kc->free_fn = taps_cache_free;
      return wc->wt;
    }
  }
  *own = malloc(n * sizeof(float));
  if (*own) taps_transpose(w, M, C, KK, *own);
  return *own;
}

int nbl_conv_taps_f32(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *w,
                      const float *bias, float *y, const nbl_act *act) {
  taps_geom t;
  if (!nbl_conv_taps_wanted(g) || !taps_geom_of(g, &t)) return 0;
  const int64_t M = g->M, C = g->C, KK = t.KH * t.KW, P = g->out_sz;
  float *own, *xt = malloc(sizeof(float) * (size_t)(C * P)), *tmp = malloc(sizeof(float) * (size_t)(M * P));
  const float *wt = xt && tmp ? taps_weights(ctx, w, M, C, KK, &own) : NULL;
  if (!wt) {
    free(xt), free(tmp);
    return 0;
  }
  for (int64_t n = 0; n < g->N; n++) {
    const float *xn = x + n * C * g->in_sz;
    float *yn = y + n * M * P;
    for (int64_t m = 0; m < M; m++) {
      const float b = bias ? bias[m] : 0.0f;
      for (int64_t i = 0; i < P; i++) yn[m * P + i] = b;
    }
    for (int64_t kh = 0; kh < t.KH; kh++)
      for (int64_t kw = 0; kw < t.KW; kw++) {
        int64_t oh0, oh1, ow0, ow1;
        tap_range(t.H, t.OH, t.sh, t.dh, t.ph, kh, &oh0, &oh1);
        tap_range(t.W, t.OW, t.sw, t.dw, t.pw, kw, &ow0, &ow1);
        const int64_t rh = oh1 - oh0, rw = ow1 - ow0, np = rh * rw;
        if (np <= 0) continue;
        /* the pixels the tap reads, [C][rh][rw] */
        for (int64_t c = 0; c < C; c++)
          for (int64_t i = 0; i < rh; i++) {
            const float *src = xn + (c * t.H + (oh0 + i) * t.sh - t.ph + kh * t.dh) * t.W;
            float *dst = xt + c * np + i * rw;
            const int64_t iw0 = ow0 * t.sw - t.pw + kw * t.dw;
            if (t.sw == 1) nbl_copy_row(dst, src + iw0, rw);
            else
              for (int64_t j = 0; j < rw; j++) dst[j] = src[iw0 + j * t.sw];
          }
        const float *wk = wt + (kh * t.KW + kw) * M * C;
        if (rw == t.OW) { /* whole output rows: added in place */
          nbl_sgemm(ctx, 0, 0, M, np, C, 1.0f, wk, C, xt, np, 1.0f, yn + oh0 * t.OW, P);
          continue;
        }
        nbl_sgemm(ctx, 0, 0, M, np, C, 1.0f, wk, C, xt, np, 0.0f, tmp, np);
        for (int64_t m = 0; m < M; m++)
          for (int64_t i = 0; i < rh; i++) {
            float *yr = yn + m * P + (oh0 + i) * t.OW + ow0;
            const float *tr = tmp + m * np + i * rw;
            for (int64_t j = 0; j < rw; j++) yr[j] += tr[j];
          }
      }
    nbl_act_apply_2d(act, yn, M, P, P);
  }
  free(xt), free(tmp), free(own);
  return 1;
}
