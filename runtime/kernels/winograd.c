/* winograd.c - FP32 3x3 convolutions as Winograd F(2x2, 3x3), with the
 * transformed weights kept in the node's cache; see conv_paths.h. */
#include "runtime/kernels/gemm.h"
#include "runtime/core/cpu.h"
#include "runtime/kernels/conv_paths.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ Winograd F(2x2, 3x3) */

/* 3x3, stride 1, dilation 1, one group 2-D convolutions with enough channels
 * run as Winograd F(2x2, 3x3): each 2x2 output tile comes from a 4x4 input
 * tile, and the 16 transformed positions are 16 independent [M, C] x [C, T]
 * products (T tiles), 2.25x fewer multiplications than im2col + GEMM. */
#define WINO_MAXT 160 /* most tiles per tile row (output width up to 318) */

int nbl_wino_ok(const nbl_conv_geom *g) {
  return g->ns == 2 && g->group == 1 && g->k[0] == 3 && g->k[1] == 3 && g->s[0] == 1 &&
         g->s[1] == 1 && g->d[0] == 1 && g->d[1] == 1 && g->C >= 16 && g->M >= 16 &&
         g->out[0] >= 2 && g->out[1] >= 2 && (g->out[1] + 1) / 2 + 1 <= WINO_MAXT;
}

typedef struct wino_task {
  const nbl_conv_geom *g;
  const float *x, *w, *bias;
  float *U, *V, *Mo, *y;
  const float *Up; /* non-NULL: U packed for the AVX-512 product, [16][M/8][C][8] */
  int64_t TH, TW, T;
  const nbl_act *act;
  int64_t band; /* tile rows per band (wino_bands) */
  _Atomic int oom;
} wino_task;

/* One of the 16 products: Mo[M][T] = U[M][C] V[C][T]. */
static void wino_product(const wino_task *t, int xi, const float *V, float *Mo, int64_t T) {
  int64_t M = t->g->M, C = t->g->C;
#if defined(__x86_64__)
  if (t->Up) {
    nbl_c11_serial(t->Up + xi * ((M + 7) / 8 * 8) * C, V, M, C, T, Mo);
    return;
  }
#endif
  nbl_sgemm(NULL, 0, 0, M, T, C, 1.0f, t->U + xi * M * C, C, V, T, 0.0f, Mo, T);
}

/* U[xi][m][c] = (G w[m][c] G^T)[xi], items m. */
static void wino_weights(void *arg, int64_t begin, int64_t end) {
  const wino_task *t = arg;
  int64_t C = t->g->C, M = t->g->M;
  for (int64_t m = begin; m < end; m++)
    for (int64_t c = 0; c < C; c++) {
      const float *k = t->w + (m * C + c) * 9;
      float a[4][3], u[4][4];
      for (int j = 0; j < 3; j++) {
        a[0][j] = k[j];
        a[1][j] = 0.5f * (k[j] + k[3 + j] + k[6 + j]);
        a[2][j] = 0.5f * (k[j] - k[3 + j] + k[6 + j]);
        a[3][j] = k[6 + j];
      }
      for (int i = 0; i < 4; i++) {
        u[i][0] = a[i][0];
        u[i][1] = 0.5f * (a[i][0] + a[i][1] + a[i][2]);
        u[i][2] = 0.5f * (a[i][0] - a[i][1] + a[i][2]);
        u[i][3] = a[i][2];
      }
      for (int xi = 0; xi < 16; xi++) t->U[(xi * M + m) * C + c] = u[xi / 4][xi % 4];
    }
}

#define WINO_VEC __attribute__((optimize("O3")))

/* One tile row of the input transform: E[r], O[r] (r < 4) are the even and
 * odd padded columns of the tile row's 4 input rows (TW + 1 entries each);
 * v[xi * CT + tw] = (B^T d B)[xi] of tile tw. Loops run across tiles. */
WINO_VEC static void wino_in_row(float (*E)[WINO_MAXT], float (*O)[WINO_MAXT], int64_t TW,
                                 float *v, int64_t CT) {
  float aE[4][WINO_MAXT], aO[4][WINO_MAXT];
  for (int64_t j = 0; j <= TW; j++) {
    aE[0][j] = E[0][j] - E[2][j];
    aE[1][j] = E[1][j] + E[2][j];
    aE[2][j] = E[2][j] - E[1][j];
    aE[3][j] = E[1][j] - E[3][j];
    aO[0][j] = O[0][j] - O[2][j];
    aO[1][j] = O[1][j] + O[2][j];
    aO[2][j] = O[2][j] - O[1][j];
    aO[3][j] = O[1][j] - O[3][j];
  }
  for (int k = 0; k < 4; k++) {
    float *v0 = v + (k * 4 + 0) * CT, *v1 = v + (k * 4 + 1) * CT;
    float *v2 = v + (k * 4 + 2) * CT, *v3 = v + (k * 4 + 3) * CT;
    const float *e = aE[k], *o = aO[k];
    for (int64_t j = 0; j < TW; j++) {
      v0[j] = e[j] - e[j + 1];
      v1[j] = o[j] + e[j + 1];
      v2[j] = e[j + 1] - o[j];
      v3[j] = o[j] - o[j + 1];
    }
  }
}

/* Input transform of tile row th of channel c into v (v[xi * CT + tw]). */
static void wino_in_one(const wino_task *t, const float *xp, int64_t th, float *v, int64_t CT) {
  const nbl_conv_geom *g = t->g;
  int64_t H = g->in[0], W = g->in[1], pt = g->pb[0], pl = g->pb[1];
  float E[4][WINO_MAXT], O[4][WINO_MAXT];
  for (int r = 0; r < 4; r++) {
    int64_t ih = th * 2 - pt + r;
    const float *xr = xp + ih * W;
    int in_row = ih >= 0 && ih < H;
    for (int64_t j = 0; j <= t->TW; j++) {
      int64_t iw = 2 * j - pl;
      E[r][j] = in_row && iw >= 0 && iw < W ? xr[iw] : 0.0f;
      O[r][j] = in_row && iw + 1 >= 0 && iw + 1 < W ? xr[iw + 1] : 0.0f;
    }
  }
  wino_in_row(E, O, t->TW, v, CT);
}

/* V[xi][c][tile] = (B^T d B)[xi] for the 4x4 input tile d, items c. */
static void wino_input(void *arg, int64_t begin, int64_t end) {
  const wino_task *t = arg;
  const nbl_conv_geom *g = t->g;
  int64_t CT = g->C * t->T;
  for (int64_t c = begin; c < end; c++)
    for (int64_t th = 0; th < t->TH; th++)
      wino_in_one(t, t->x + c * g->in_sz, th, t->V + c * t->T + th * t->TW, CT);
}

/* One tile row of the output transform: q[xi * MT + tw] are the 16 products
 * of tile tw; y0, y1 the two output rows (OW columns, y1 NULL past the end). */
WINO_VEC static void wino_out_row(const float *q, int64_t MT, int64_t TW, float b, float *y0,
                                  float *y1, int64_t OW) {
  float r[2][2][WINO_MAXT];
  float bt[2][4][WINO_MAXT];
  for (int l = 0; l < 4; l++) {
    const float *q0 = q + l * MT, *q1 = q + (4 + l) * MT, *q2 = q + (8 + l) * MT,
                *q3 = q + (12 + l) * MT;
    for (int64_t j = 0; j < TW; j++) {
      bt[0][l][j] = q0[j] + q1[j] + q2[j];
      bt[1][l][j] = q1[j] - q2[j] - q3[j];
    }
  }
  for (int i = 0; i < 2; i++)
    for (int64_t j = 0; j < TW; j++) {
      r[i][0][j] = bt[i][0][j] + bt[i][1][j] + bt[i][2][j] + b;
      r[i][1][j] = bt[i][1][j] - bt[i][2][j] - bt[i][3][j] + b;
    }
  for (int i = 0; i < 2; i++) {
    float *yr = i ? y1 : y0;
    if (!yr) continue;
    for (int64_t j = 0; j < TW; j++) {
      yr[2 * j] = r[i][0][j];
      if (2 * j + 1 < OW) yr[2 * j + 1] = r[i][1][j];
    }
  }
}

/* y[m] tile = A^T Mo[.][m][tile] A + bias, items m. */
static void wino_output(void *arg, int64_t begin, int64_t end) {
  const wino_task *t = arg;
  const nbl_conv_geom *g = t->g;
  int64_t OH = g->out[0], OW = g->out[1], MT = g->M * t->T;
  for (int64_t m = begin; m < end; m++) {
    float b = t->bias ? t->bias[m] : 0.0f;
    float *yp = t->y + m * OH * OW;
    for (int64_t th = 0; th < t->TH; th++) {
      int64_t oh = th * 2;
      wino_out_row(t->Mo + m * t->T + th * t->TW, MT, t->TW, b, yp + oh * OW,
                   oh + 1 < OH ? yp + (oh + 1) * OW : NULL, OW);
    }
    nbl_act_apply_2d(t->act, yp, 1, OH * OW, 0);
  }
}

/* Mo[xi] = U[xi] V[xi] ([M, C] x [C, T]), items xi, each single-threaded. */
static void wino_products(void *arg, int64_t begin, int64_t end) {
  const wino_task *t = arg;
  int64_t M = t->g->M, C = t->g->C, T = t->T;
  for (int64_t xi = begin; xi < end; xi++)
    wino_product(t, (int)xi, t->V + xi * C * T, t->Mo + xi * M * T, T);
}

/* Bands of t->band tile rows through all three stages with band-local V and
 * Mo (items: bands of image t->x): a band's transformed data is produced and
 * consumed by one thread while it is in that thread's caches. */
static void wino_bands(void *arg, int64_t begin, int64_t end) {
  wino_task *t = arg;
  const nbl_conv_geom *g = t->g;
  int64_t C = g->C, M = g->M, TW = t->TW, OH = g->out[0], OW = g->out[1];
  int64_t tbmax = t->band * TW;
  float *V = malloc((size_t)(16 * C * tbmax) * sizeof(float));
  float *Mo = malloc((size_t)(16 * M * tbmax) * sizeof(float));
  if (!V || !Mo) {
    free(V);
    free(Mo);
    atomic_store(&t->oom, 1);
    return;
  }
  for (int64_t b = begin; b < end; b++) {
    int64_t th0 = b * t->band, th1 = th0 + t->band < t->TH ? th0 + t->band : t->TH;
    int64_t tb = (th1 - th0) * TW;
    for (int64_t c = 0; c < C; c++)
      for (int64_t th = th0; th < th1; th++)
        wino_in_one(t, t->x + c * g->in_sz, th, V + c * tb + (th - th0) * TW, C * tb);
    for (int xi = 0; xi < 16; xi++) wino_product(t, xi, V + xi * C * tb, Mo + xi * M * tb, tb);
    int64_t r0 = 2 * th0, r1 = 2 * th1 < OH ? 2 * th1 : OH;
    for (int64_t m = 0; m < M; m++) {
      float bv = t->bias ? t->bias[m] : 0.0f;
      float *yp = t->y + m * OH * OW;
      for (int64_t th = th0; th < th1; th++) {
        int64_t oh = th * 2;
        wino_out_row(Mo + m * tb + (th - th0) * TW, M * tb, TW, bv, yp + oh * OW,
                     oh + 1 < OH ? yp + (oh + 1) * OW : NULL, OW);
      }
      nbl_act_apply_2d(t->act, yp + r0 * OW, 1, (r1 - r0) * OW, 0);
    }
  }
  free(V);
  free(Mo);
}

/* Transformed weights kept in the node's executor cache. */
typedef struct wino_wcache {
  const float *w; /* the weights they came from */
  int64_t M, C;
  float *Up; /* U packed for the AVX-512 product (NULL without it) */
  float U[];
} wino_wcache;

static void wino_cache_free(void *p) {
  wino_wcache *wc = p;
  if (wc) free(wc->Up);
  free(wc);
}

/* Returns 0 when it cannot run (out of memory, weights not constant): the
 * caller falls back to im2col. */
int nbl_wino_conv(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *w,
                  const float *bias, float *y, const nbl_act *act) {
  int64_t TH = (g->out[0] + 1) / 2, TW = (g->out[1] + 1) / 2, T = TH * TW;
  int64_t C = g->C, M = g->M;
  nbl_kcache *kc = nbl_kctx_cache(ctx);
  if (!kc || !nbl_conv_weights_const(ctx)) return 0;
  wino_task t = {g, x, w, bias, NULL, NULL, NULL, y, NULL, TH, TW, T, act, 0, 0};
  wino_wcache *wc = kc->data;
  if (!wc || kc->free_fn != wino_cache_free || wc->w != w || wc->M != M || wc->C != C) {
    if (kc->free_fn) kc->free_fn(kc->data);
    kc->data = NULL;
    kc->free_fn = NULL;
    wc = malloc(sizeof *wc + (size_t)(16 * M * C) * sizeof(float));
    if (!wc) return 0;
    wc->w = w;
    wc->M = M;
    wc->C = C;
    wc->Up = NULL;
    t.U = wc->U;
    nbl_parallel_for(ctx, M, 1, wino_weights, &t);
#if defined(__x86_64__)
    if (nbl_cpu_has(NBL_CPU_AVX512F)) {
      int64_t Mp = (M + 7) / 8 * 8;
      wc->Up = calloc((size_t)(16 * Mp * C), sizeof(float));
      for (int64_t xi = 0; wc->Up && xi < 16; xi++)
        nbl_c11_pack(wc->U + xi * M * C, M, C, wc->Up + xi * Mp * C);
    }
#endif
    kc->data = wc;
    kc->free_fn = wino_cache_free;
  }
  float *U = wc->U;
  t.U = U;
  t.Up = wc->Up;
  int threads = ctx->threads > 1 ? ctx->threads : 1;
  if (T >= 128) {
    /* bands of about 128 tiles, as many as a multiple of the thread count,
     * of near-equal height (smaller images take the whole-image path below:
     * bands of a few tiles would make each of the 16 products too narrow) */
    int64_t want = (T + 64) / 128;
    if (want < 1) want = 1;
    want = (want + threads - 1) / threads * threads;
    if (want > TH) want = TH;
    int64_t rows = (TH + want - 1) / want;
    t.band = rows;
    int64_t nb = (TH + rows - 1) / rows;
    for (int64_t n = 0; n < g->N && !atomic_load(&t.oom); n++) {
      t.x = x + n * C * g->in_sz;
      t.y = y + n * M * g->out_sz;
      nbl_parallel_for(ctx, nb, 1, wino_bands, &t);
    }
    return !atomic_load(&t.oom);
  }
  float *V = malloc((size_t)(16 * C * T) * sizeof(float));
  float *Mo = malloc((size_t)(16 * M * T) * sizeof(float));
  if (!V || !Mo) {
    free(V);
    free(Mo);
    return 0;
  }
  t.V = V;
  t.Mo = Mo;
  for (int64_t n = 0; n < g->N; n++) {
    t.x = x + n * C * g->in_sz;
    t.y = y + n * M * g->out_sz;
    nbl_parallel_for(ctx, C, 1, wino_input, &t);
    /* the 16 products are independent: threads take whole products (one
     * parallel region, each product's operands used by one thread) */
    nbl_parallel_for(ctx, 16, 1, wino_products, &t);
    nbl_parallel_for(ctx, M, 1, wino_output, &t);
  }
  free(V);
  free(Mo);
  return 1;
}

