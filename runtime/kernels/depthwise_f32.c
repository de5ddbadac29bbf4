/* depthwise_f32.c - FP32 depthwise convolution (group == C): the plane
 * kernel over stride-phase planes (AVX-512, AVX2 or generic vectors, the
 * same sums in the same order), the 16-channels-at-a-time kernel for small
 * planes, and the hooked entry that the INT4 path feeds with activation
 * codes (nbl_conv_dw_hooked). */
#include "runtime/kernels/gemm.h"
#include "runtime/core/cpu.h"
#include "runtime/kernels/conv_paths.h"
#include "runtime/kernels/kdebug.h"
#include "runtime/kernels/simd16.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

typedef float v8f __attribute__((vector_size(32)));

typedef struct dw_task {
  const nbl_conv_geom *g;
  const float *x, *w, *bias;
  float *y;
  int64_t mult; /* output channels per input channel */
  int64_t S, Hp, Wp; /* stride-phase planes: S planes of Hp x Wp (see dw_run) */
  const nbl_act *act;
  const nbl_dw_hooks *h; /* input rows and output planes from the caller (NULL: x, bias, act) */
  int64_t bands; /* 0: work items are (n, m) planes; else bands of output rows of all planes */
  _Atomic int oom;
} dw_task;

/* One output plane from the stride-phase planes ph (S planes of Hp x Wp, where
 * ph[p][r][j] is padded input row r, column j*S + p): y[oh][ow] = b +
 * sum_k w[k] * ph[off[k] + oh*sh*Wp + ow], off[k] the start of tap k =
 * (kh, kw) for output (0, 0). Every read is in range and contiguous in ow, so
 * the ow loop runs 8 lanes at a time; 3x3 taps are unrolled. */
/* VT: a vector of L floats; every load/store is a memcpy of one vector. */
#define DW_TAPS(NT, VT, L)                                                             \
  for (int64_t oh = 0; oh < OH; oh++) {                                                \
    float *yr = y + oh * OW;                                                           \
    const float *base = ph + oh * sh * Wp;                                             \
    int64_t ow = 0;                                                                    \
    for (; ow + 4 * (L) <= OW; ow += 4 * (L)) { /* 4 sums hide the add latency */       \
      VT a0 = bv, a1 = bv, a2 = bv, a3 = bv;                                           \
      for (int k = 0; k < (NT); k++) {                                                 \
        VT x0, x1, x2, x3;                                                             \
        const float *src = base + off[k] + ow;                                         \
        memcpy(&x0, src, sizeof x0);                                                   \
        memcpy(&x1, src + (L), sizeof x1);                                             \
        memcpy(&x2, src + 2 * (L), sizeof x2);                                         \
        memcpy(&x3, src + 3 * (L), sizeof x3);                                         \
        a0 += x0 * wv[k];                                                              \
        a1 += x1 * wv[k];                                                              \
        a2 += x2 * wv[k];                                                              \
        a3 += x3 * wv[k];                                                              \
      }                                                                                \
      memcpy(yr + ow, &a0, sizeof a0);                                                 \
      memcpy(yr + ow + (L), &a1, sizeof a1);                                           \
      memcpy(yr + ow + 2 * (L), &a2, sizeof a2);                                       \
      memcpy(yr + ow + 3 * (L), &a3, sizeof a3);                                       \
    }                                                                                  \
    for (; ow + 2 * (L) <= OW; ow += 2 * (L)) {                                        \
      VT a0 = bv, a1 = bv;                                                             \
      for (int k = 0; k < (NT); k++) {                                                 \
        VT x0, x1;                                                                     \
        memcpy(&x0, base + off[k] + ow, sizeof x0);                                    \
        memcpy(&x1, base + off[k] + ow + (L), sizeof x1);                              \
        a0 += x0 * wv[k];                                                              \
        a1 += x1 * wv[k];                                                              \
      }                                                                                \
      memcpy(yr + ow, &a0, sizeof a0);                                                 \
      memcpy(yr + ow + (L), &a1, sizeof a1);                                           \
    }                                                                                  \
    for (; ow + (L) <= OW; ow += (L)) {                                                \
      VT acc = bv;                                                                     \
      for (int k = 0; k < (NT); k++) {                                                 \
        VT xv;                                                                         \
        memcpy(&xv, base + off[k] + ow, sizeof xv);                                    \
        acc += xv * wv[k];                                                             \
      }                                                                                \
      memcpy(yr + ow, &acc, sizeof acc);                                               \
    }                                                                                  \
    for (; ow < OW; ow++) {                                                            \
      float s = b;                                                                     \
      for (int k = 0; k < (NT); k++) s += base[off[k] + ow] * w[k];                    \
      yr[ow] = s;                                                                      \
    }                                                                                  \
  }
#define DW_PLANE_BODY(VT, L)                                                           \
  VT wv[NBL_DW_MAX_TAPS], bv;                                                          \
  for (int i = 0; i < (L); i++) bv[i] = b;                                             \
  for (int k = 0; k < nt; k++)                                                         \
    for (int i = 0; i < (L); i++) wv[k][i] = w[k];                                     \
  if (nt == 9) {                                                                       \
    DW_TAPS(9, VT, L)                                                                  \
  } else {                                                                             \
    DW_TAPS(nt, VT, L)                                                                 \
  }

typedef float v16f __attribute__((vector_size(64)));

__attribute__((target("avx2,fma"))) static void dw_plane_avx2(const float *ph, int64_t Wp,
                                                              const int64_t *off, int nt,
                                                              const float *w, int64_t sh,
                                                              float b, float *y, int64_t OH,
                                                              int64_t OW) {
  DW_PLANE_BODY(v8f, 8)
}

#if defined(__x86_64__)
/* The same sums 16 lanes wide: every output is the same expression in the
 * same order as in the AVX2 kernel, so the results are identical. */
__attribute__((target("avx512f,fma"))) static void dw_plane_avx512(const float *ph, int64_t Wp,
                                                                   const int64_t *off, int nt,
                                                                   const float *w, int64_t sh,
                                                                   float b, float *y, int64_t OH,
                                                                   int64_t OW) {
  DW_PLANE_BODY(v16f, 16)
}
#endif

static void dw_plane_generic(const float *ph, int64_t Wp, const int64_t *off, int nt,
                             const float *w, int64_t sh, float b, float *y, int64_t OH,
                             int64_t OW) {
  DW_PLANE_BODY(v8f, 8)
}

/* The best depthwise plane kernel this CPU runs. */
typedef void (*dw_plane_fn)(const float *, int64_t, const int64_t *, int, const float *, int64_t,
                            float, float *, int64_t, int64_t);
static dw_plane_fn dw_plane_pick(int no_avx512) {
#if defined(__x86_64__)
  if (!no_avx512 && nbl_cpu_has(NBL_CPU_AVX512F | NBL_CPU_FMA)) return dw_plane_avx512;
  if (nbl_cpu_has(NBL_CPU_AVX2 | NBL_CPU_FMA)) return dw_plane_avx2;
#endif
  return dw_plane_generic;
}

/* ev[k] = x[2k] (k < ceil(W/2)), od[k] = x[2k+1] (k < W/2): one input row
 * split into its even and odd columns for a stride-2 depthwise convolution. */
static void deint2_scalar(const float *x, int64_t W, int64_t from, float *ev, float *od) {
  for (int64_t iw = from; iw < W; iw++) {
    if (iw & 1) od[iw / 2] = x[iw];
    else ev[iw / 2] = x[iw];
  }
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) static void deint2_avx2(const float *x, int64_t W, float *ev,
                                                       float *od) {
  int64_t iw = 0;
  for (; iw + 16 <= W; iw += 16) {
    __m256 a = _mm256_loadu_ps(x + iw), b = _mm256_loadu_ps(x + iw + 8);
    /* [x0 x2 x8 x10 | x4 x6 x12 x14] -> lanes reordered to x0 x2 x4 ... x14 */
    __m256 e = _mm256_shuffle_ps(a, b, 0x88), o = _mm256_shuffle_ps(a, b, 0xDD);
    e = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xD8));
    o = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), 0xD8));
    _mm256_storeu_ps(ev + iw / 2, e);
    _mm256_storeu_ps(od + iw / 2, o);
  }
  deint2_scalar(x, W, iw, ev, od);
}
#endif

/* Depthwise 2-D convolution, one (n, m) output plane per item: the input plane
 * is copied with its zero padding into stride-phase planes (column phases of
 * the horizontal stride), then every output row is a sum of contiguous rows. */
static void dw_run(void *arg, int64_t begin, int64_t end) {
  dw_task *t = arg;
  const nbl_conv_geom *g = t->g;
  int64_t H = g->in[0], W = g->in[1], OH = g->out[0], OW = g->out[1];
  int64_t KH = g->k[0], KW = g->k[1], S = t->S, R = g->s[0], Wp = t->Wp;
  /* phase planes: padded input row r, column pc go to plane (r % R, pc % S)
   * at row r / R, column pc / S, so that every tap reads rows and columns of
   * one plane with stride 1 */
  int64_t Hq = (t->Hp + R - 1) / R, plane = Hq * Wp, pt = g->pb[0], pl = g->pb[1];
  int nt = (int)(KH * KW);
  int64_t off[NBL_DW_MAX_TAPS];
  for (int64_t kh = 0; kh < KH && nt <= NBL_DW_MAX_TAPS; kh++)
    for (int64_t kw = 0; kw < KW; kw++) {
      int64_t q = kw * g->d[1], r = kh * g->d[0];
      off[kh * KW + kw] = ((r % R) * S + q % S) * plane + (r / R) * Wp + q / S;
    }
  /* slack for small planes, computed as one row of OH * Wp on the padded
   * grid: the last tap of the last row reads up to (KW - 1) * d columns past
   * the end of its phase plane */
  int64_t slack = (KW - 1) * g->d[1] + 1;
  float *ph =
      nt <= NBL_DW_MAX_TAPS ? calloc((size_t)(R * S * plane + slack), sizeof(float)) : NULL;
  /* planes narrower than 4 vectors whose width is not a whole number of
   * vectors are computed on the padded grid as one row of OH * Wp outputs
   * (full-width loads, no scalar tail per row); the columns past OW are
   * dropped when copying out */
  dw_plane_fn plane_fn = dw_plane_pick(t->h && t->h->no_avx512);
  int lanes = 8;
#if defined(__x86_64__)
  if (plane_fn == dw_plane_avx512) lanes = 16;
#endif
  int flat = OW < 4 * lanes && OW % lanes != 0;
  float *tq = flat && ph ? malloc((size_t)(OH * Wp) * sizeof(float)) : NULL;
  if (flat && !tq) flat = 0;
  /* hooked input: one loaded row (stride 1 loads straight into its plane) */
  float *lrow = t->h && ph && S > 1 ? malloc((size_t)W * sizeof(float) + sizeof(float)) : NULL;
  if (t->h && (!ph || (S > 1 && !lrow))) { /* no direct fallback without x */
    t->oom = 1;
    free(tq);
    free(ph);
    return;
  }
  int avx2 = nbl_cpu_has(NBL_CPU_AVX2 | NBL_CPU_FMA);
  /* a unit of work: one (n, m) plane, or with bands one band of output rows
   * of every plane */
  for (int64_t u = begin; u < end; u++) {
    int64_t it0 = u, it1 = u + 1, oh0 = 0, oh1 = OH;
    if (t->bands) {
      it0 = 0, it1 = g->N * g->M;
      nbl_band(OH, u, t->bands, 1, &oh0, &oh1);
      if (oh0 == oh1) continue;
    }
    int64_t nr = oh1 - oh0;
    /* input rows the band reads */
    int64_t ih_lo = oh0 * R - pt, ih_hi = (oh1 - 1) * R + (KH - 1) * g->d[0] - pt + 1;
    if (ih_lo < 0) ih_lo = 0;
    if (ih_hi > H) ih_hi = H;
    int64_t prev_c = -1, prev_n = -1;
    for (int64_t it = it0; it < it1; it++) {
      int64_t n = it / g->M, m = it % g->M, c = m / t->mult;
      const float *xp = t->h ? NULL : t->x + (n * g->C + c) * H * W;
      const float *wp = t->w + m * KH * KW;
      float *yp = t->y + it * OH * OW + oh0 * OW;
      float b = t->bias ? t->bias[m] : 0.0f;
      if (!ph) { /* out of memory for the planes: direct loop with bounds checks */
        for (int64_t oh = oh0; oh < oh1; oh++)
          for (int64_t ow = 0; ow < OW; ow++) {
            float s = b;
            for (int64_t kh = 0; kh < KH; kh++) {
              int64_t ih = oh * g->s[0] - pt + kh * g->d[0];
              if (ih < 0 || ih >= H) continue;
              for (int64_t kw = 0; kw < KW; kw++) {
                int64_t iw = ow * g->s[1] - pl + kw * g->d[1];
                if (iw >= 0 && iw < W) s += xp[ih * W + iw] * wp[kh * KW + kw];
              }
            }
            yp[(oh - oh0) * OW + ow] = s;
          }
        nbl_act_apply_2d(t->act, yp, 1, nr * OW, 0);
        continue;
      }
      if (c != prev_c || n != prev_n) {
        /* every plane writes the same positions: the zero padding from the
         * first memset (below, at allocation) stays */
        int rows_done = t->h && t->h->load_rows && S == 1 && R == 1 && ih_lo < ih_hi;
        if (rows_done) t->h->load_rows(t->h->arg, n, c, ih_lo, ih_hi, ph + (ih_lo + pt) * Wp + pl, Wp);
        if (!rows_done && S == 2 && t->h && t->h->load_rows2) {
          /* the rows of each row phase r % R in one call, even columns to
           * column phase pl % 2, odd ones to the other */
          int64_t pe = pl % 2, po = 1 - pe;
          for (int64_t rp = 0; rp < R; rp++) {
            int64_t ih0 = ih_lo + ((rp - (ih_lo + pt) % R) % R + R) % R;
            if (ih0 >= ih_hi) continue;
            float *row = ph + rp * S * plane + ((ih0 + pt) / R) * Wp;
            t->h->load_rows2(t->h->arg, n, c, ih0, (ih_hi - ih0 + R - 1) / R, R,
                             row + pe * plane + pl / 2, row + po * plane + (1 + pl) / 2, Wp);
          }
          rows_done = 1;
        }
        for (int64_t ih = ih_lo; ih < ih_hi && !rows_done; ih++) {
          const float *xr = xp ? xp + ih * W : lrow;
          float *row = ph + ((ih + pt) % R) * S * plane + ((ih + pt) / R) * Wp;
          if (S == 1) {
            if (t->h) t->h->load_row(t->h->arg, n, c, ih, row + pl);
            else memcpy(row + pl, xr, (size_t)W * sizeof(float));
            continue;
          }
          if (t->h) t->h->load_row(t->h->arg, n, c, ih, lrow);
          if (S == 2) { /* even columns go to phase pl % 2, odd ones to the other */
            int64_t pe = pl % 2, po = 1 - pe;
            float *ev = row + pe * plane + pl / 2;
            float *od = row + po * plane + (1 + pl) / 2;
#if defined(__x86_64__)
            if (avx2) {
              deint2_avx2(xr, W, ev, od);
              continue;
            }
#endif
            deint2_scalar(xr, W, 0, ev, od);
            continue;
          }
          for (int64_t p = 0; p < S; p++) { /* padded column pc = iw + pl = j*S + p */
            int64_t iw0 = ((p - pl) % S + S) % S;
            float *dst = row + p * plane + (iw0 + pl) / S;
            for (int64_t iw = iw0; iw < W; iw += S) *dst++ = xr[iw];
          }
        }
        prev_c = c;
        prev_n = n;
      }
      if (t->h && t->h->rows) {
        nbl_dw_phases pp = {ph, plane, Wp, R, S};
        if (t->h->rows(t->h->arg, &pp, n, m, oh0, oh1, yp)) continue;
      }
      /* output row oh reads phase rows from oh on */
      const float *base = ph + oh0 * Wp;
      if (flat) {
        plane_fn(base, Wp, off, nt, wp, 1, b, tq, 1, nr * Wp);
        for (int64_t oh = 0; oh < nr; oh++)
          memcpy(yp + oh * OW, tq + oh * Wp, (size_t)OW * sizeof(float));
      } else {
        plane_fn(base, Wp, off, nt, wp, 1, b, yp, nr, OW);
      }
      if (t->h) t->h->finish(t->h->arg, n, m, yp, nr * OW);
      else nbl_act_apply_2d(t->act, yp, 1, nr * OW, 0);
    }
  }
  free(lrow);
  free(tq);
  free(ph);
}

/* Depthwise on small planes (at most 14 output columns), 16 channels at a
 * time: the 16 input planes go into a zero-padded tile laid out
 * [row][col][16] (in-register 16x16 transposes), each output pixel is one
 * vector of 16 channels, b + w[0] x[0] + w[1] x[1] + ... in tap order with a
 * rounding after every product and sum, exactly the expression of the plane
 * kernel, so the outputs are bit-identical; MobileNetV2's 7x7 and 14x14
 * layers have hundreds of planes that each barely fill a few vectors. */
typedef struct dwb_task {
  const nbl_conv_geom *g;
  const float *x, *w, *bias;
  float *y;
  const nbl_act *act;
  int64_t Hp, Wp, blocks;
  _Atomic int oom;
} dwb_task;

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static void dwb_run(void *arg, int64_t b, int64_t e) {
  dwb_task *J = arg;
  const nbl_conv_geom *g = J->g;
  int64_t H = g->in[0], W = g->in[1], OH = g->out[0], OW = g->out[1], C = g->C;
  int64_t KH = g->k[0], KW = g->k[1], HW = H * W, P = OH * OW, Wp = J->Wp;
  int64_t sh = g->s[0] * Wp, sw = g->s[1];
  int nt = (int)(KH * KW);
  float *T = calloc((size_t)(J->Hp * Wp * 16), sizeof(float)); /* the padding stays 0 */
  float *O = malloc(sizeof(float) * (size_t)(16 * P));
  if (!T || !O) {
    atomic_store(&J->oom, 1);
    free(T), free(O);
    return;
  }
  int64_t off[NBL_DW_MAX_TAPS];
  for (int64_t kh = 0; kh < KH; kh++)
    for (int64_t kw = 0; kw < KW; kw++) off[kh * KW + kw] = kh * g->d[0] * Wp + kw * g->d[1];
  const __m512 zero = _mm512_setzero_ps();
  __m512 wv[NBL_DW_MAX_TAPS];
  for (int64_t u = b; u < e; u++) {
    int64_t n = u / J->blocks, c0 = u % J->blocks * 16, nc = C - c0 < 16 ? C - c0 : 16;
    __mmask16 cm = nbl_tail_mask(nc);
    nbl_planes_to_tile(J->x + (n * C + c0) * HW, nc, H, W, T, Wp, g->pb[0], g->pb[1]);
    nbl_tap_vectors(J->w, c0, nt, cm, wv);
    __m512 vb = J->bias ? _mm512_maskz_loadu_ps(cm, J->bias + c0) : zero;
    for (int64_t oh = 0; oh < OH; oh++) {
      const float *t0 = T + oh * sh * 16;
      for (int64_t ow = 0; ow < OW; ow += 4) {
        int64_t cnt = OW - ow < 4 ? OW - ow : 4;
        const float *t = t0 + ow * sw * 16;
        __m512 a[4] = {vb, vb, vb, vb};
        if (cnt == 4) {
          for (int k = 0; k < nt; k++) {
            const float *q = t + off[k] * 16;
            a[0] = _mm512_add_ps(a[0], _mm512_mul_ps(_mm512_loadu_ps(q), wv[k]));
            a[1] = _mm512_add_ps(a[1], _mm512_mul_ps(_mm512_loadu_ps(q + sw * 16), wv[k]));
            a[2] = _mm512_add_ps(a[2], _mm512_mul_ps(_mm512_loadu_ps(q + 2 * sw * 16), wv[k]));
            a[3] = _mm512_add_ps(a[3], _mm512_mul_ps(_mm512_loadu_ps(q + 3 * sw * 16), wv[k]));
          }
        } else {
          for (int64_t i = 0; i < cnt; i++)
            for (int k = 0; k < nt; k++)
              a[i] = _mm512_add_ps(
                  a[i], _mm512_mul_ps(_mm512_loadu_ps(t + (off[k] + i * sw) * 16), wv[k]));
        }
        for (int64_t i = 0; i < cnt; i++) _mm512_storeu_ps(O + (oh * OW + ow + i) * 16, a[i]);
      }
    }
    float *yb = J->y + (n * C + c0) * P;
    nbl_tile_to_planes(O, P, nc, yb);
    nbl_act_apply_2d(J->act, yb, nc, P, P);
  }
  free(T), free(O);
}
#endif

void nbl_dw_tile_dims(const nbl_conv_geom *g, int64_t *Hp, int64_t *Wp) {
  int64_t need_h = (g->out[0] - 1) * g->s[0] + (g->k[0] - 1) * g->d[0] + 1;
  int64_t need_w = (g->out[1] - 1) * g->s[1] + (g->k[1] - 1) * g->d[1] + 1;
  *Hp = g->in[0] + g->pb[0] > need_h ? g->in[0] + g->pb[0] : need_h;
  *Wp = g->in[1] + g->pb[1] > need_w ? g->in[1] + g->pb[1] : need_w;
}

int nbl_dw_blocked_wanted(const nbl_conv_geom *g, int mode) {
  if (mode == 0 || g->ns != 2 || g->M != g->C || g->k[0] * g->k[1] > NBL_DW_MAX_TAPS) return 0;
  /* measured on MobileNetV2: 1.3-3x faster at 7 and 14 columns, no gain at
   * 28, slower at 56 and 112 (there the plane kernel's rows are long) */
  return mode == 1 || (g->out[1] <= 14 && g->C >= 32);
}

/* The depthwise layer (multiplier 1) 16 channels at a time when that is
 * the faster way here; 0 when it did not run (the caller runs dw_start). */
static int dw_blocked_f32(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *w,
                          const float *bias, float *y, const nbl_act *act) {
#if defined(__x86_64__)
  if (!nbl_cpu_has(NBL_CPU_AVX512F) ||
      !nbl_dw_blocked_wanted(g, (int)nbl_kdebug_get(NBL_KS_F32_DW_BLOCKED)))
    return 0;
  dwb_task J = {.g = g, .x = x, .w = w, .bias = bias, .y = y, .act = act,
                .blocks = (g->C + 15) / 16};
  nbl_dw_tile_dims(g, &J.Hp, &J.Wp);
  atomic_init(&J.oom, 0);
  nbl_parallel_for(ctx, g->N * J.blocks, 1, dwb_run, &J);
  if (atomic_load(&J.oom)) return 0;
  nbl_kcount(NBL_KC_F32_DW_BLOCKED_RUNS);
  return 1;
#else
  (void)ctx, (void)g, (void)x, (void)w, (void)bias, (void)y, (void)act;
  return 0;
#endif
}


/* Plane sizes of t (its g, mult and the rest set) and the run over all (n, m) planes. */
static void dw_start(nbl_kctx *ctx, dw_task *t) {
  const nbl_conv_geom *g = t->g;
  int64_t S = g->s[1], need_h = (g->out[0] - 1) * g->s[0] + (g->k[0] - 1) * g->d[0] + 1;
  int64_t need_w = g->out[1] + ((g->k[1] - 1) * g->d[1]) / S;
  t->S = S;
  t->Hp = g->in[0] + g->pb[0] > need_h ? g->in[0] + g->pb[0] : need_h;
  t->Wp = (g->in[1] - 1 + g->pb[1]) / S + 1 > need_w ? (g->in[1] - 1 + g->pb[1]) / S + 1 : need_w;
  /* large planes: each thread takes a band of output rows of every plane,
   * the rows of the input band it (or the layer before, split the same way)
   * touched last; small ones: whole planes per thread */
  int threads = ctx ? ctx->threads : 1;
  int bands = nbl_pixel_bands(threads, g->out_sz);
  /* the caller's row blocks (INT4) take whole planes: a band re-reads and
   * re-quantizes the input rows at its edges and recomputes rows to fill its
   * last block of 4, which cost more than the band's locality saves
   * (MobileNetV2 INT4 at 2 threads, alternating runs: 3.47 vs 3.70 ms) */
  if (t->h && t->h->rows) bands = 0;
  if (bands && g->out[0] < 2 * bands) bands = g->out[0] >= 2 * threads ? threads : 0;
  if (bands) {
    t->bands = bands;
    nbl_parallel_for(ctx, bands, 1, dw_run, t);
  } else if (ctx) {
    nbl_parallel_for(ctx, g->N * g->M, 1, dw_run, t);
  } else {
    dw_run(t, 0, g->N * g->M);
  }
}

nbl_status nbl_conv_dw_hooked(nbl_kctx *ctx, const nbl_conv_geom *g, const float *w, float *y,
                              const nbl_dw_hooks *h) {
  if (g->ns != 2 || g->C != g->group || g->M != g->C || g->k[0] * g->k[1] > NBL_DW_MAX_TAPS)
    return NBL_ERR_UNSUPPORTED;
  if (g->N == 0 || g->M == 0 || g->out_sz == 0) return NBL_OK;
  dw_task t = {g, NULL, w, NULL, y, 1, 0, 0, 0, NULL, h, 0, 0};
  dw_start(ctx, &t);
  return t.oom ? NBL_ERR_OUT_OF_MEMORY : NBL_OK;
}


nbl_status nbl_conv_dw_f32(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *w,
                           const float *bias, float *y, const nbl_act *act) {
  if (dw_blocked_f32(ctx, g, x, w, bias, y, act)) return NBL_OK;
  dw_task t = {g, x, w, bias, y, g->M / g->group, 0, 0, 0, act, NULL, 0, 0};
  dw_start(ctx, &t);
  return NBL_OK;
}
