/* int4_backward_conv.c - the backward products of Conv and Gemm/MatMul in
 * integers (contracts in int4_backward.h): im2col / col2im over int16 codes
 * in chunks of images, as ConvGrad's float path (runtime/ops/grad_conv.c)
 * arranges them,
 *   dW_g^T [K, Mg] += col [K, L] x dyg^T [L, Mg]   (A = col: rows of pixels)
 *   col [K, L]      = W_g^T [K, Mg] x dyg [Mg, L]  (then col2im into dX)
 * with K = C/group * taps and L the pixels of the chunk's images side by
 * side; dW sums in int64 over chunks, dX's col2im in int32 (int64 when
 * Mg * taps * max|w| * max|dy| could pass INT32_MAX). */
#include <stdlib.h>
#include <string.h>

#include "runtime/kernels/int4_backward.h"

#define CHUNK_COLS 4096      /* pixels per chunk, as the float path */
#define CHUNK_CODES (1 << 23) /* col budget per chunk: 16 MB of int16 */

/* ------------------------------------------------------------------ im2col / col2im */

/* For each (output position a, tap ki) the input linear index of a * s - pb
 * + k * d, or -1 in the padding: [out_sz * k_sz] (any spatial rank). */
static int64_t *tap_table(const nbl_conv_geom *g) {
  int64_t *t = malloc(sizeof(int64_t) * (size_t)(g->out_sz * g->k_sz > 0 ? g->out_sz * g->k_sz : 1));
  if (!t) return NULL;
  for (int64_t a = 0; a < g->out_sz; a++)
    for (int64_t ki = 0; ki < g->k_sz; ki++) {
      int64_t ra = a, rk = ki, idx = 0, ac[NBL_CONV_MAX_SP], kc[NBL_CONV_MAX_SP];
      for (int i = g->ns - 1; i >= 0; i--) {
        ac[i] = ra % g->out[i];
        ra /= g->out[i];
        kc[i] = rk % g->k[i];
        rk /= g->k[i];
      }
      for (int i = 0; i < g->ns && idx >= 0; i++) {
        int64_t p = ac[i] * g->s[i] - g->pb[i] + kc[i] * g->d[i];
        idx = p < 0 || p >= g->in[i] ? -1 : idx * g->in[i] + p;
      }
      t[a * g->k_sz + ki] = idx;
    }
  return t;
}

/* Columns [0, out_sz) of rows [Cg * k_sz] (stride ld) of col: the
 * im2col of one image's group x [Cg, in...]. tap: tap_table (NULL for 2-D,
 * which walks rows). */
static void im2col_i16(const nbl_conv_geom *g, int64_t Cg, const int16_t *x, int16_t *col, int64_t ld,
                       const int64_t *tap) {
  if (tap) {
    for (int64_t ch = 0; ch < Cg; ch++)
      for (int64_t ki = 0; ki < g->k_sz; ki++) {
        int16_t *d = col + (ch * g->k_sz + ki) * ld;
        const int16_t *xp = x + ch * g->in_sz;
        for (int64_t a = 0; a < g->out_sz; a++) {
          int64_t i = tap[a * g->k_sz + ki];
          d[a] = i < 0 ? 0 : xp[i];
        }
      }
    return;
  }
  const int64_t H = g->in[0], Wd = g->in[1], OH = g->out[0], OW = g->out[1];
  const int64_t KH = g->k[0], KW = g->k[1], sh = g->s[0], sw = g->s[1], dh = g->d[0], dw = g->d[1];
  for (int64_t ch = 0; ch < Cg; ch++)
    for (int64_t kh = 0; kh < KH; kh++)
      for (int64_t kw = 0; kw < KW; kw++) {
        int16_t *dst = col + ((ch * KH + kh) * KW + kw) * ld;
        const int16_t *plane = x + ch * H * Wd;
        int64_t off = kw * dw - g->pb[1], ow0 = 0, ow1 = OW;
        while (ow0 < OW && ow0 * sw + off < 0) ow0++;
        while (ow1 > ow0 && (ow1 - 1) * sw + off >= Wd) ow1--;
        for (int64_t oh = 0; oh < OH; oh++) {
          int16_t *d = dst + oh * OW;
          int64_t ih = oh * sh - g->pb[0] + kh * dh;
          if (ih < 0 || ih >= H) {
            memset(d, 0, sizeof(int16_t) * (size_t)OW);
            continue;
          }
          const int16_t *row = plane + ih * Wd;
          for (int64_t ow = 0; ow < ow0; ow++) d[ow] = 0;
          if (sw == 1) memcpy(d + ow0, row + ow0 + off, sizeof(int16_t) * (size_t)(ow1 - ow0));
          else
            for (int64_t ow = ow0; ow < ow1; ow++) d[ow] = row[ow * sw + off];
          for (int64_t ow = ow1; ow < OW; ow++) d[ow] = 0;
        }
      }
}

/* col2im: add columns [0, out_sz) of col rows (stride ld) into acc [Cg, in...];
 * CT the column type, AT the accumulator type. */
#define DEF_COL2IM(NAME, CT, AT)                                                                   \
  static void NAME(const nbl_conv_geom *g, int64_t Cg, const CT *col, int64_t ld, AT *acc,        \
                   const int64_t *tap) {                                                           \
    if (tap) {                                                                                     \
      for (int64_t ch = 0; ch < Cg; ch++)                                                          \
        for (int64_t ki = 0; ki < g->k_sz; ki++) {                                                 \
          const CT *s = col + (ch * g->k_sz + ki) * ld;                                            \
          AT *ap = acc + ch * g->in_sz;                                                            \
          for (int64_t a = 0; a < g->out_sz; a++) {                                                \
            int64_t i = tap[a * g->k_sz + ki];                                                     \
            if (i >= 0) ap[i] += s[a];                                                             \
          }                                                                                        \
        }                                                                                          \
      return;                                                                                      \
    }                                                                                              \
    const int64_t H = g->in[0], Wd = g->in[1], OH = g->out[0], OW = g->out[1];                    \
    const int64_t KH = g->k[0], KW = g->k[1], sh = g->s[0], sw = g->s[1], dh = g->d[0],            \
                  dw = g->d[1];                                                                    \
    for (int64_t ch = 0; ch < Cg; ch++)                                                            \
      for (int64_t kh = 0; kh < KH; kh++)                                                          \
        for (int64_t kw = 0; kw < KW; kw++) {                                                      \
          const CT *src = col + ((ch * KH + kh) * KW + kw) * ld;                                   \
          AT *plane = acc + ch * H * Wd;                                                           \
          int64_t off = kw * dw - g->pb[1], ow0 = 0, ow1 = OW;                                     \
          while (ow0 < OW && ow0 * sw + off < 0) ow0++;                                            \
          while (ow1 > ow0 && (ow1 - 1) * sw + off >= Wd) ow1--;                                   \
          for (int64_t oh = 0; oh < OH; oh++) {                                                    \
            int64_t ih = oh * sh - g->pb[0] + kh * dh;                                             \
            if (ih < 0 || ih >= H) continue;                                                       \
            AT *row = plane + ih * Wd;                                                             \
            const CT *s = src + oh * OW;                                                           \
            if (sw == 1)                                                                           \
              for (int64_t ow = ow0; ow < ow1; ow++) row[ow + off] += s[ow];                       \
            else                                                                                   \
              for (int64_t ow = ow0; ow < ow1; ow++) row[ow * sw + off] += s[ow];                  \
          }                                                                                        \
        }                                                                                          \
  }
DEF_COL2IM(col2im_32, int32_t, int32_t)
DEF_COL2IM(col2im_64, int64_t, int64_t)

/* ------------------------------------------------------------------ ConvGrad */

typedef struct cg_job {
  const nbl_conv_geom *g;
  nbl_i4b_isa isa;
  int64_t Cg, Mg, K, L, Lp, n0, gr;
  const int64_t *tap;
  const int16_t *x;
  int16_t *col;               /* dW: [K][Lp] */
  const int16_t *wt;          /* dX: W_g^T [K][Mgp] */
  int64_t Mgp;
  const nbl_i4b_panels *B;
  int64_t kchunk;
  nbl_i4b_sink sink;
  void *colx;                 /* dX: [K][L] int32 or int64 */
  int wide;                   /* dX sums in int64 */
  void *acc;                  /* dX: [nb][Cg * in_sz] int32 or int64 */
  const nbl_i4b_conv_out *out;
} cg_job;

/* Images [b0, b1) of the chunk: im2col into their columns of col. */
static void job_im2col(void *arg, int64_t b0, int64_t b1) {
  const cg_job *j = arg;
  const nbl_conv_geom *g = j->g;
  for (int64_t b = b0; b < b1; b++)
    im2col_i16(g, j->Cg, j->x + ((j->n0 + b) * g->C + j->gr * j->Cg) * g->in_sz, j->col + b * g->out_sz, j->Lp,
               j->tap);
}

/* Row blocks [r0, r1) of the GEMM: A = col (dW) or W_g^T (dX). */
static void job_gemm(void *arg, int64_t r0, int64_t r1) {
  const cg_job *j = arg;
  const int64_t m0 = r0 * NBL_I4B_MR, m1 = r1 * NBL_I4B_MR < j->K ? r1 * NBL_I4B_MR : j->K;
  if (j->col) nbl_i4b_gemm(j->isa, j->col, j->Lp, m0, m1, j->B, j->kchunk, &j->sink);
  else nbl_i4b_gemm(j->isa, j->wt, j->Mgp, m0, m1, j->B, j->kchunk, &j->sink);
}

/* Images [b0, b1): col2im of their columns, then dX = acc * scale. */
static void job_col2im(void *arg, int64_t b0, int64_t b1) {
  const cg_job *j = arg;
  const nbl_conv_geom *g = j->g;
  const int64_t n_acc = j->Cg * g->in_sz;
  for (int64_t b = b0; b < b1; b++) {
    const int64_t o = ((j->n0 + b) * g->C + j->gr * j->Cg) * g->in_sz;
    float *dx = j->out->dx ? j->out->dx + o : NULL;
    int64_t *dxa = j->out->dx_acc ? j->out->dx_acc + o : NULL;
    const double s = j->out->dx_scale;
    if (j->wide) {
      int64_t *acc = (int64_t *)j->acc + b * n_acc;
      memset(acc, 0, sizeof(int64_t) * (size_t)n_acc);
      col2im_64(g, j->Cg, (const int64_t *)j->colx + b * g->out_sz, j->L, acc, j->tap);
      for (int64_t i = 0; i < n_acc; i++) {
        if (dx) dx[i] = (float)((double)acc[i] * s);
        if (dxa) dxa[i] = acc[i];
      }
    } else {
      int32_t *acc = (int32_t *)j->acc + b * n_acc;
      memset(acc, 0, sizeof(int32_t) * (size_t)n_acc);
      col2im_32(g, j->Cg, (const int32_t *)j->colx + b * g->out_sz, j->L, acc, j->tap);
      for (int64_t i = 0; i < n_acc; i++) {
        if (dx) dx[i] = (float)((double)acc[i] * s);
        if (dxa) dxa[i] = acc[i];
      }
    }
  }
}

static void run(nbl_kctx *ctx, int64_t n, void (*fn)(void *, int64_t, int64_t), void *arg) {
  if (n <= 0) return;
  if (ctx) nbl_parallel_for(ctx, n, 1, fn, arg);
  else fn(arg, 0, n);
}

nbl_status nbl_i4b_conv_grad(nbl_kctx *ctx, nbl_i4b_isa isa, const nbl_conv_geom *g, const int16_t *dy,
                             int32_t dy_max, const int16_t *x, int32_t x_max, const int16_t *w, int32_t w_max,
                             const nbl_i4b_conv_out *out) {
  const int64_t Cg = g->C / g->group, Mg = g->M / g->group, K = Cg * g->k_sz, osz = g->out_sz;
  const int want_dx = out->dx || out->dx_acc, want_dw = out->dw || out->dw_acc;
  if (out->db || out->db_acc)
    for (int64_t m = 0; m < g->M; m++) {
      int64_t s = 0;
      for (int64_t n = 0; n < g->N; n++) {
        const int16_t *p = dy + (n * g->M + m) * osz;
        for (int64_t o = 0; o < osz; o++) s += p[o];
      }
      if (out->db) out->db[m] = (float)((double)s * out->db_scale);
      if (out->db_acc) out->db_acc[m] = s;
    }
  const int64_t nx = g->N * g->C * g->in_sz, nw = g->M * K;
  if (want_dx) {
    if (out->dx && nx) memset(out->dx, 0, sizeof(float) * (size_t)nx);
    if (out->dx_acc && nx) memset(out->dx_acc, 0, sizeof(int64_t) * (size_t)nx);
  }
  int64_t *dw64 = NULL;
  if (want_dw) {
    dw64 = out->dw_acc ? out->dw_acc : malloc(sizeof(int64_t) * (size_t)(nw ? nw : 1));
    if (!dw64) return NBL_ERR_OUT_OF_MEMORY;
    if (nw) memset(dw64, 0, sizeof(int64_t) * (size_t)nw);
  }
  nbl_status st = NBL_OK;
  if ((!want_dx && !want_dw) || g->N == 0 || osz == 0 || K == 0 || Mg == 0) goto finish;

  int64_t nb = CHUNK_COLS / osz;
  if (nb * (K + Mg) * osz > CHUNK_CODES) nb = CHUNK_CODES / ((K + Mg) * osz);
  nb = nb < 1 ? 1 : nb > g->N ? g->N : nb;
  const int64_t Lmax = nb * osz, Lpmax = (Lmax + 1) & ~(int64_t)1, Mgp = (Mg + 1) & ~(int64_t)1;
  /* dX sums: Mg products per col entry, at most k_sz entries per element */
  const int wide = want_dx && (double)Mg * (double)g->k_sz * (double)w_max * (double)dy_max > (double)INT32_MAX;
  int64_t *tap = g->ns == 2 ? NULL : tap_table(g);
  int16_t *dyg = malloc(sizeof(int16_t) * (size_t)(Mg * Lpmax));
  int16_t *col = want_dw ? malloc(sizeof(int16_t) * (size_t)(K * Lpmax)) : NULL;
  int16_t *wt = want_dx ? malloc(sizeof(int16_t) * (size_t)(g->group * K * Mgp)) : NULL;
  void *colx = want_dx ? malloc((wide ? 8 : 4) * (size_t)(K * Lmax)) : NULL;
  void *acc = want_dx ? malloc((wide ? 8 : 4) * (size_t)(nb * Cg * g->in_sz)) : NULL;
  nbl_i4b_panels B = {0};
  if ((g->ns != 2 && !tap) || !dyg || (want_dw && !col) || (want_dx && (!wt || !colx || !acc))) {
    st = NBL_ERR_OUT_OF_MEMORY;
    goto done;
  }
  if (want_dx) /* W_g^T [K][Mgp] of each group: A of the dX product */
    for (int64_t gr = 0; gr < g->group; gr++)
      nbl_i4b_pack_rows(w + gr * Mg * K, K, Mg, 1, K, wt + gr * K * Mgp, Mgp);
  cg_job j = {.g = g, .isa = isa, .Cg = Cg, .Mg = Mg, .K = K, .tap = tap, .x = x, .Mgp = Mgp,
              .B = &B, .colx = colx, .wide = wide, .acc = acc, .out = out};
  for (int64_t n0 = 0; n0 < g->N; n0 += nb) {
    const int64_t cnt = g->N - n0 < nb ? g->N - n0 : nb, L = cnt * osz, Lp = (L + 1) & ~(int64_t)1;
    j.n0 = n0;
    j.L = L;
    j.Lp = Lp;
    for (int64_t gr = 0; gr < g->group; gr++) {
      j.gr = gr;
      for (int64_t m = 0; m < Mg; m++) {
        for (int64_t b = 0; b < cnt; b++)
          memcpy(dyg + m * Lp + b * osz, dy + ((n0 + b) * g->M + gr * Mg + m) * osz, sizeof(int16_t) * (size_t)osz);
        if (Lp > L) dyg[m * Lp + L] = 0;
      }
      if (want_dw) {
        j.col = col;
        run(ctx, cnt, job_im2col, &j);
        if (Lp > L)
          for (int64_t r = 0; r < K; r++) col[r * Lp + L] = 0;
        if (nbl_i4b_panels_reserve(&B, Lp, Mg)) {
          st = NBL_ERR_OUT_OF_MEMORY;
          goto done;
        }
        nbl_i4b_pack(isa, dyg, 1, Lp, &B); /* B[p][m] = dyg[m][p] */
        j.kchunk = nbl_i4b_kchunk(x_max, dy_max);
        j.sink = (nbl_i4b_sink){.kind = NBL_I4B_ADD64, .c = dw64 + gr * Mg * K, .ldc = K, .trans = 1};
        run(ctx, (K + NBL_I4B_MR - 1) / NBL_I4B_MR, job_gemm, &j);
      }
      if (want_dx) {
        j.col = NULL;
        j.wt = wt + gr * K * Mgp;
        if (nbl_i4b_panels_reserve(&B, Mg, L)) {
          st = NBL_ERR_OUT_OF_MEMORY;
          goto done;
        }
        nbl_i4b_pack(isa, dyg, Lp, 1, &B); /* B[m][p] = dyg[m][p] */
        j.kchunk = nbl_i4b_kchunk(w_max, dy_max);
        if (wide) memset(colx, 0, sizeof(int64_t) * (size_t)(K * L));
        j.sink = (nbl_i4b_sink){.kind = wide ? NBL_I4B_ADD64 : NBL_I4B_STORE32, .c = colx, .ldc = L};
        run(ctx, (K + NBL_I4B_MR - 1) / NBL_I4B_MR, job_gemm, &j);
        run(ctx, cnt, job_col2im, &j);
      }
    }
  }
done:
  free(tap);
  free(dyg);
  free(col);
  free(wt);
  free(colx);
  free(acc);
  nbl_i4b_panels_free(&B);
finish:
  if (st == NBL_OK && want_dw && out->dw)
    for (int64_t i = 0; i < nw; i++) out->dw[i] = (float)((double)dw64[i] * out->dw_scale);
  if (dw64 != out->dw_acc) free(dw64);
  return st;
}

/* ------------------------------------------------------------------ Gemm / MatMul products */

typedef struct mm_job {
  nbl_i4b_isa isa;
  const int16_t *A;
  int64_t lda, M, kchunk;
  const nbl_i4b_panels *B;
  nbl_i4b_sink sink;
} mm_job;

static void mm_rows(void *arg, int64_t r0, int64_t r1) {
  const mm_job *j = arg;
  const int64_t m0 = r0 * NBL_I4B_MR, m1 = r1 * NBL_I4B_MR < j->M ? r1 * NBL_I4B_MR : j->M;
  nbl_i4b_gemm(j->isa, j->A, j->lda, m0, m1, j->B, j->kchunk, &j->sink);
}

nbl_status nbl_i4b_matmul(nbl_kctx *ctx, nbl_i4b_isa isa, int64_t M, int64_t N, int64_t K, const int16_t *a,
                          int transA, int32_t a_max, const int16_t *b, int transB, int32_t b_max, double scale,
                          float *y, int64_t *acc) {
  if (M == 0 || N == 0) return NBL_OK;
  if (acc) memset(acc, 0, sizeof(int64_t) * (size_t)(M * N));
  if (K == 0) {
    if (y) memset(y, 0, sizeof(float) * (size_t)(M * N));
    return NBL_OK;
  }
  const int64_t Kp = (K + 1) & ~(int64_t)1;
  int16_t *A = malloc(sizeof(int16_t) * (size_t)(M * Kp));
  nbl_i4b_panels B = {0};
  if (!A || nbl_i4b_panels_reserve(&B, K, N)) {
    free(A);
    nbl_i4b_panels_free(&B);
    return NBL_ERR_OUT_OF_MEMORY;
  }
  nbl_i4b_pack_rows(a, M, K, transA ? 1 : K, transA ? M : 1, A, Kp);
  nbl_i4b_pack(isa, b, transB ? 1 : N, transB ? K : 1, &B);
  mm_job j = {.isa = isa, .A = A, .lda = Kp, .M = M, .kchunk = nbl_i4b_kchunk(a_max, b_max), .B = &B};
  j.sink = acc ? (nbl_i4b_sink){.kind = NBL_I4B_ADD64, .c = acc, .ldc = N}
               : (nbl_i4b_sink){.kind = NBL_I4B_SCALE_F32, .c = y, .ldc = N, .scale = scale};
  run(ctx, (M + NBL_I4B_MR - 1) / NBL_I4B_MR, mm_rows, &j);
  if (acc && y)
    for (int64_t i = 0; i < M * N; i++) y[i] = (float)((double)acc[i] * scale);
  free(A);
  nbl_i4b_panels_free(&B);
  return NBL_OK;
}
