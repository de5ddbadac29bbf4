/* int4_amx.c - the backward products of 4-bit training on AMX-INT8 tiles
 * (contracts in int4_backward.h), where the CPU has them (runtime/core/cpu.h,
 * NBL_CPU_AMX; the cap NBL_ISA=avx512 or lower turns them off).
 *
 * TDPBSSD multiplies 16 x 64 signed bytes by 64 x 16 signed bytes (B in the
 * VNNI layout: 16 rows of 16 columns x 4 consecutive k) into 16 x 16 int32,
 * 16K products per instruction (about 1 TMAC/s per core here, 20x the
 * int16 vpdpwssd path). The operands are int8:
 *   - INT4/INT8 codes of activations and weights: |code| <= 127, as they are;
 *   - gradient codes (|c| <= NBL_I4B_MAX_CODE = 2^14) in two planes,
 *     c = lo + 256 * hi, lo = c's low byte read signed (-128..127), hi =
 *     (c - lo) / 256 (|hi| <= 64); each plane's product is its own tile
 *     and the two are combined in int64: acc = lo + 256 * hi, exact.
 * Every tile sums at most 2^16 products of magnitude <= 128 * 127 per plane
 * (< 2^31: exact int32), longer sums are split and added in int64.
 *
 * No im2col: the tiles read shifted windows of padded code planes.
 *   dW (any strides): X's codes padded and split into stride-phase planes
 *     [phase][C][N * Hq * Wq] (phase (kh % sh, kw % sw) of the padded
 *     pixel), dY laid over the same Hq x Wq grid (zeros where no output).
 *     The tap (kh, kw) is the phase plane from offset (kh / sh) * Wq + kw /
 *     sw, so dW^T[c][m] of the tap = A [16 channels][64 pixels] (a phase
 *     plane, rows C planes apart) x B [64 pixels][16 m] (dY in the VNNI
 *     layout), K the pixels of all images.
 *   dX (unit strides): dY padded by (k - 1 - pad) per side, channels last
 *     ([N][Hp2 * Wp2][M]), outputs over the padded width (q = ih * Wp2 +
 *     iw, the columns iw >= W wasted); for each kernel row kh the k[1] taps
 *     x M channels of pixel q + kh * Wp2 are consecutive bytes, so one tile
 *     row is one output pixel's K chunk and 16 pixels are 16 rows M bytes
 *     apart (overlapping); the flipped, transposed weights are packed to
 *     match (zeros past the last tap).
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/cpu.h"
#include "runtime/kernels/int4_backward.h"

#if defined(__x86_64__) && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#define I4B_AMX 1
#include <immintrin.h>
#define AMX_FN __attribute__((target("amx-tile,amx-int8")))
#else
#define I4B_AMX 0
#endif

static _Atomic int g_amx = -1;
static _Atomic long g_runs;

long nbl_i4b_amx_runs(void) { return atomic_load(&g_runs); }

int nbl_i4b_amx_supported(void) { return I4B_AMX && (nbl_cpu_features() & NBL_CPU_AMX) != 0; }

void nbl_i4b_set_amx(int on) { atomic_store(&g_amx, on < 0 ? -1 : on ? 1 : 0); }

int nbl_i4b_amx_on(nbl_i4b_isa isa) {
  if (!nbl_i4b_amx_supported() || isa != NBL_I4B_AVX512) return 0;
  const int f = atomic_load(&g_amx);
  return f >= 0 ? f : nbl_cpu_has(NBL_CPU_AMX);
}

#if I4B_AMX

/* c = lo + 256 * hi, lo = the low byte signed */
static inline void split(int16_t c, int8_t *lo, int8_t *hi) {
  const int8_t l = (int8_t)(uint8_t)((unsigned)c & 0xffu);
  *lo = l;
  *hi = (int8_t)((c - l) / 256);
}

typedef struct tilecfg {
  uint8_t palette, start;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} tilecfg;

/* Tiles 0..7 all 16 rows x 64 bytes. (A static object: GCC 12 drops the
 * stores to a local one before ldtilecfg, which it does not see read them.) */
static const tilecfg k_cfg __attribute__((aligned(64))) = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16, 16},
};

AMX_FN static void amx_config(void) { _tile_loadconfig(&k_cfg); }

#define STEP_OFF(arr, step, s) ((arr) ? (arr)[s] : (s) * (step))

/* Four 16 x 16 int32 tiles c[i] = sum over steps s of A_i(s) x B_j(s):
 * 2x2: (a0, b0), (a0, b1), (a1, b0), (a1, b1); 4x1: (a_i, b0). A_i(s) is
 * 16 rows lda bytes apart from a_i + aoff[s] (or s * astep), B(s) 16 rows of
 * 64 bytes from b + boff[s] (or s * bstep). Written to c[4][16][16]. */
AMX_FN static void k2x2(const int8_t *a0, const int8_t *a1, int64_t lda, const int8_t *b0, const int8_t *b1,
                        int64_t n, const int64_t *aoff, int64_t astep, const int64_t *boff, int64_t bstep,
                        int32_t *c) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t s = 0; s < n; s++) {
    const int64_t ao = STEP_OFF(aoff, astep, s), bo = STEP_OFF(boff, bstep, s);
    _tile_loadd(4, a0 + ao, lda);
    _tile_loadd(6, b0 + bo, 64);
    _tile_loadd(7, b1 + bo, 64);
    _tile_loadd(5, a1 + ao, lda);
    _tile_dpbssd(0, 4, 6);
    _tile_dpbssd(1, 4, 7);
    _tile_dpbssd(2, 5, 6);
    _tile_dpbssd(3, 5, 7);
  }
  _tile_stored(0, c, 64);
  _tile_stored(1, c + 256, 64);
  _tile_stored(2, c + 512, 64);
  _tile_stored(3, c + 768, 64);
}

AMX_FN static void k4x1(const int8_t *const a[4], int64_t lda, const int8_t *b, int64_t n, const int64_t *aoff,
                        const int64_t *boff, int32_t *c) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t s = 0; s < n; s++) {
    const int64_t ao = aoff[s];
    _tile_loadd(6, b + boff[s], 64);
    _tile_loadd(4, a[0] + ao, lda);
    _tile_loadd(5, a[1] + ao, lda);
    _tile_dpbssd(0, 4, 6);
    _tile_loadd(4, a[2] + ao, lda);
    _tile_dpbssd(1, 5, 6);
    _tile_loadd(5, a[3] + ao, lda);
    _tile_dpbssd(2, 4, 6);
    _tile_dpbssd(3, 5, 6);
  }
  _tile_stored(0, c, 64);
  _tile_stored(1, c + 256, 64);
  _tile_stored(2, c + 512, 64);
  _tile_stored(3, c + 768, 64);
}

AMX_FN static void amx_release(void) { _tile_release(); }

static void run(nbl_kctx *ctx, int64_t n, void (*fn)(void *, int64_t, int64_t), void *arg) {
  if (n <= 0) return;
  if (ctx) nbl_parallel_for(ctx, n, 1, fn, arg);
  else fn(arg, 0, n);
}

#define KSTEPS 1024 /* 64-byte k steps per int32 sum: 2^16 products */

/* ------------------------------------------------------------------ dW */

typedef struct dw_job {
  const nbl_conv_geom *g;
  const int8_t *xq, *bq;
  int64_t Cp, nmb, ncb, nu, npair, LX, KP, Wq, sh, sw;
  int64_t *dw;
} dw_job;

/* A's base for unit u = (tap, channel block) */
static const int8_t *dw_unit(const dw_job *j, int64_t u) {
  const nbl_conv_geom *g = j->g;
  const int64_t t = u / j->ncb, cb = u % j->ncb, kh = t / g->k[1], kw = t % g->k[1];
  const int64_t ph = (kh % j->sh) * j->sw + kw % j->sw;
  return j->xq + (ph * j->Cp + cb * 16) * j->LX + (kh / j->sh) * j->Wq + kw / j->sw;
}

static void dw_part(void *arg, int64_t i0, int64_t i1) {
  const dw_job *j = arg;
  const nbl_conv_geom *g = j->g;
  int32_t c[4 * 256] __attribute__((aligned(64)));
  amx_config();
  for (int64_t it = i0; it < i1; it++) {
    const int64_t mb = it / j->npair, u0 = 2 * (it % j->npair), u1 = u0 + 1 < j->nu ? u0 + 1 : u0;
    const int8_t *a0 = dw_unit(j, u0), *a1 = dw_unit(j, u1);
    const int8_t *blo = j->bq + mb * (j->KP * 16), *bhi = j->bq + (j->nmb + mb) * (j->KP * 16);
    const int64_t nsteps = j->KP / 64;
    for (int64_t s0 = 0; s0 < nsteps; s0 += KSTEPS) {
      const int64_t ns = nsteps - s0 < KSTEPS ? nsteps - s0 : KSTEPS;
      k2x2(a0 + s0 * 64, a1 + s0 * 64, j->LX, blo + s0 * 1024, bhi + s0 * 1024, ns, NULL, 64, NULL, 1024, c);
      for (int h = 0; h < (u1 != u0 ? 2 : 1); h++) {
        const int64_t u = h ? u1 : u0, t = u / j->ncb, cb = u % j->ncb;
        const int32_t *lo = c + 512 * h, *hi = lo + 256;
        for (int64_t r = 0; r < 16 && cb * 16 + r < g->C; r++)
          for (int64_t q = 0; q < 16 && mb * 16 + q < g->M; q++)
            j->dw[((mb * 16 + q) * g->C + cb * 16 + r) * g->k_sz + t] +=
                (int64_t)lo[r * 16 + q] + 256 * (int64_t)hi[r * 16 + q];
      }
    }
  }
  amx_release();
}

nbl_status nbl_i4b_amx_conv_dw(nbl_kctx *ctx, const nbl_conv_geom *g, const int16_t *dy, int32_t dy_max,
                               const int16_t *x, int32_t x_max, int64_t *dw64, int *done) {
  *done = 0;
  if (g->ns != 2 || g->group != 1 || g->d[0] != 1 || g->d[1] != 1 || x_max > 127 || dy_max > NBL_I4B_MAX_CODE)
    return NBL_OK;
  const int64_t N = g->N, C = g->C, M = g->M, H = g->in[0], W = g->in[1], OH = g->out[0], OW = g->out[1];
  const int64_t sh = g->s[0], sw = g->s[1];
  const int64_t Hp = H + g->pb[0] + g->pe[0], Wp = W + g->pb[1] + g->pe[1];
  const int64_t Hq = (Hp + sh - 1) / sh, Wq = (Wp + sw - 1) / sw, Pq = Hq * Wq;
  if (OH <= 0 || OW <= 0 || (OH - 1) * sh + g->k[0] > Hp || (OW - 1) * sw + g->k[1] > Wp) return NBL_OK;
  const int64_t KP = (N * Pq + 63) & ~(int64_t)63, Cp = (C + 15) & ~(int64_t)15, nmb = (M + 15) / 16;
  const int64_t LX = KP + ((g->k[0] - 1) / sh) * Wq + (g->k[1] - 1) / sw + 64, nph = sh * sw;
  if ((double)nph * (double)Cp * (double)LX + 2.0 * (double)nmb * 16 * (double)KP > (double)(1 << 28))
    return NBL_OK; /* 256 MB: leave it to the chunked paths */
  int8_t *xq = calloc((size_t)(nph * Cp * LX), 1), *bq = calloc((size_t)(2 * nmb * 16 * KP), 1);
  if (!xq || !bq) {
    free(xq);
    free(bq);
    return NBL_ERR_OUT_OF_MEMORY;
  }
  for (int64_t c = 0; c < C; c++)
    for (int64_t n = 0; n < N; n++)
      for (int64_t ih = 0; ih < H; ih++) {
        const int64_t R = ih + g->pb[0];
        const int16_t *src = x + ((n * C + c) * H + ih) * W;
        for (int64_t iw = 0; iw < W; iw++) {
          const int64_t Q = iw + g->pb[1];
          xq[((R % sh) * sw + Q % sw) * Cp * LX + c * LX + n * Pq + (R / sh) * Wq + Q / sw] = (int8_t)src[iw];
        }
      }
  for (int64_t n = 0; n < N; n++)
    for (int64_t m = 0; m < M; m++) {
      int8_t *lo = bq + (m / 16) * 16 * KP + (m % 16) * 4, *hi = lo + nmb * 16 * KP;
      for (int64_t oh = 0; oh < OH; oh++) {
        const int16_t *src = dy + ((n * M + m) * OH + oh) * OW;
        for (int64_t ow = 0; ow < OW; ow++) {
          const int64_t p = n * Pq + oh * Wq + ow, o = (p / 4) * 64 + p % 4;
          split(src[ow], lo + o, hi + o);
        }
      }
    }
  const int64_t nu = g->k_sz * (Cp / 16);
  dw_job j = {.g = g, .xq = xq, .bq = bq, .Cp = Cp, .nmb = nmb, .ncb = Cp / 16, .nu = nu, .npair = (nu + 1) / 2,
              .LX = LX, .KP = KP, .Wq = Wq, .sh = sh, .sw = sw, .dw = dw64};
  run(ctx, nmb * j.npair, dw_part, &j);
  free(xq);
  free(bq);
  atomic_fetch_add(&g_runs, 1);
  *done = 1;
  return NBL_OK;
}

/* ------------------------------------------------------------------ dX, unit strides */

typedef struct dx_job {
  const nbl_conv_geom *g;
  const int8_t *dq, *wb;
  int64_t Wp2, IS, PS, ncb, nch, nsteps;
  const int64_t *aoff, *boff;
  const nbl_i4b_conv_out *out;
} dx_job;

/* the 16 rows of q block q0 (lo and hi tiles lo, hi) into dX of image n,
 * channel block cb */
static void dx_store(const dx_job *j, int64_t n, int64_t q0, int64_t cb, const int32_t *lo, const int32_t *hi) {
  const nbl_conv_geom *g = j->g;
  const int64_t H = g->in[0], W = g->in[1];
  for (int64_t r = 0; r < 16; r++) {
    const int64_t q = q0 + r, ih = q / j->Wp2, iw = q % j->Wp2;
    if (ih >= H) break;
    if (iw >= W) continue;
    for (int64_t cc = 0; cc < 16 && cb * 16 + cc < g->C; cc++) {
      const int64_t acc = (int64_t)lo[r * 16 + cc] + 256 * (int64_t)hi[r * 16 + cc];
      const int64_t d = ((n * g->C + cb * 16 + cc) * H + ih) * W + iw;
      if (j->out->dx_acc) j->out->dx_acc[d] = acc;
      if (j->out->dx) j->out->dx[d] = (float)((double)acc * j->out->dx_scale);
    }
  }
}

static void dx_part(void *arg, int64_t n0, int64_t n1) {
  const dx_job *j = arg;
  const nbl_conv_geom *g = j->g;
  const int64_t M = g->M, nq = g->in[0] * j->Wp2, bsz = j->nsteps * 1024;
  int32_t c[4 * 256] __attribute__((aligned(64)));
  amx_config();
  for (int64_t n = n0; n < n1; n++) {
    const int8_t *lo = j->dq + n * j->IS, *hi = lo + j->PS;
    if (j->ncb == 1) { /* two q blocks x (lo, hi) */
      for (int64_t q0 = 0; q0 < nq; q0 += 32) {
        const int8_t *a[4] = {lo + q0 * M, hi + q0 * M, lo + (q0 + 16) * M, hi + (q0 + 16) * M};
        k4x1(a, M, j->wb, j->nsteps, j->aoff, j->boff, c);
        dx_store(j, n, q0, 0, c, c + 256);
        if (q0 + 16 < nq) dx_store(j, n, q0 + 16, 0, c + 512, c + 768);
      }
    } else { /* (lo, hi) x two channel blocks */
      for (int64_t q0 = 0; q0 < nq; q0 += 16)
        for (int64_t cb = 0; cb < j->ncb; cb += 2) {
          const int64_t cb1 = cb + 1 < j->ncb ? cb + 1 : cb;
          k2x2(lo + q0 * M, hi + q0 * M, M, j->wb + cb * bsz, j->wb + cb1 * bsz, j->nsteps, j->aoff, 0, j->boff, 0,
               c);
          dx_store(j, n, q0, cb, c, c + 512);
          if (cb1 != cb) dx_store(j, n, q0, cb1, c + 256, c + 768);
        }
    }
  }
  amx_release();
}

nbl_status nbl_i4b_amx_conv_dx(nbl_kctx *ctx, const nbl_conv_geom *g, const int16_t *dy, int32_t dy_max,
                               const int16_t *w, int32_t w_max, const nbl_i4b_conv_out *out, int *done) {
  *done = 0;
  if (g->ns != 2 || g->group != 1 || w_max > 127 || dy_max > NBL_I4B_MAX_CODE) return NBL_OK;
  for (int i = 0; i < 2; i++)
    if (g->s[i] != 1 || g->d[i] != 1 || g->pb[i] > g->k[i] - 1 || g->pe[i] > g->k[i] - 1) return NBL_OK;
  const int64_t N = g->N, C = g->C, M = g->M, H = g->in[0], W = g->in[1], OH = g->out[0], OW = g->out[1];
  if (N <= 0 || C <= 0 || M <= 0 || H <= 0 || W <= 0 || OH <= 0 || OW <= 0) return NBL_OK;
  const int64_t KH = g->k[0], KW = g->k[1], pt = KH - 1 - g->pb[0], pl = KW - 1 - g->pb[1];
  const int64_t Hp2 = H + KH - 1, Wp2 = W + KW - 1, nch = (KW * M + 63) / 64, nsteps = KH * nch;
  if (nsteps * 64 > 64 * KSTEPS) return NBL_OK; /* one int32 sum per output */
  const int64_t IS = Hp2 * Wp2 * M, PS = N * IS + 48 * M + nch * 64 + 64, ncb = (C + 15) / 16;
  if (2.0 * (double)PS > (double)(1 << 28)) return NBL_OK;
  int8_t *dq = calloc((size_t)(2 * PS), 1), *wb = calloc((size_t)(ncb * nsteps * 1024), 1);
  int64_t *aoff = malloc(sizeof(int64_t) * (size_t)(2 * nsteps));
  if (!dq || !wb || !aoff) {
    free(dq);
    free(wb);
    free(aoff);
    return NBL_ERR_OUT_OF_MEMORY;
  }
  int64_t *boff = aoff + nsteps;
  for (int64_t kh = 0; kh < KH; kh++)
    for (int64_t ch = 0; ch < nch; ch++) {
      aoff[kh * nch + ch] = kh * Wp2 * M + ch * 64;
      boff[kh * nch + ch] = (kh * nch + ch) * 1024;
    }
  /* dY, channels last, padded: lo planes of all images, then hi */
  for (int64_t n = 0; n < N; n++)
    for (int64_t m = 0; m < M; m++)
      for (int64_t oh = 0; oh < OH; oh++) {
        const int16_t *src = dy + ((n * M + m) * OH + oh) * OW;
        int8_t *lo = dq + n * IS + ((oh + pt) * Wp2 + pl) * M + m, *hi = lo + PS;
        for (int64_t ow = 0; ow < OW; ow++) split(src[ow], lo + ow * M, hi + ow * M);
      }
  /* B of (cb, kh, ch): row jr, column cc, byte b: k byte e = ch * 64 + 4 jr + b
   * is tap kw = e / M of channel m = e % M: W[m][c][KH-1-kh][KW-1-kw] */
  for (int64_t cb = 0; cb < ncb; cb++)
    for (int64_t kh = 0; kh < KH; kh++)
      for (int64_t ch = 0; ch < nch; ch++) {
        int8_t *b = wb + (cb * nsteps + kh * nch + ch) * 1024;
        for (int64_t e = 0; e < 64; e++) {
          const int64_t kb = ch * 64 + e, kw = kb / M, m = kb % M;
          if (kw >= KW) break;
          for (int64_t cc = 0; cc < 16 && cb * 16 + cc < C; cc++)
            b[(e / 4) * 64 + cc * 4 + e % 4] =
                (int8_t)w[((m * C + cb * 16 + cc) * KH + KH - 1 - kh) * KW + KW - 1 - kw];
        }
      }
  dx_job j = {.g = g, .dq = dq, .wb = wb, .Wp2 = Wp2, .IS = IS, .PS = PS, .ncb = ncb, .nch = nch, .nsteps = nsteps,
              .aoff = aoff, .boff = boff, .out = out};
  run(ctx, N, dx_part, &j);
  free(dq);
  free(wb);
  free(aoff);
  atomic_fetch_add(&g_runs, 1);
  *done = 1;
  return NBL_OK;
}

#else /* no AMX: the callers take the other paths */

nbl_status nbl_i4b_amx_conv_dw(nbl_kctx *ctx, const nbl_conv_geom *g, const int16_t *dy, int32_t dy_max,
                               const int16_t *x, int32_t x_max, int64_t *dw64, int *done) {
  (void)ctx, (void)g, (void)dy, (void)dy_max, (void)x, (void)x_max, (void)dw64;
  *done = 0;
  return NBL_OK;
}

nbl_status nbl_i4b_amx_conv_dx(nbl_kctx *ctx, const nbl_conv_geom *g, const int16_t *dy, int32_t dy_max,
                               const int16_t *w, int32_t w_max, const nbl_i4b_conv_out *out, int *done) {
  (void)ctx, (void)g, (void)dy, (void)dy_max, (void)w, (void)w_max, (void)out;
  *done = 0;
  return NBL_OK;
}

#endif
