/* conv_shift.c - 2-D FP32 convolutions without im2col ("shifted rows"),
 * AVX-512: the forward product (nbl_conv_shift_f32, conv_paths.h) and the
 * weight gradient (nbl_conv_shift_dw, gemm.h).
 *
 * Each image is copied once into zero-padded planes, one per channel and
 * stride phase: plane (c, a, b), row r, column j holds the input's row
 * r sh + a - pb[0], column j sw + b - pb[1] (zero outside the image). All
 * planes have R = OH + (KH - 1) dh / sh rows of Wq = OW + (KW - 1) dw / sw
 * columns, and kernel tap (kh, kw) reads, for output (oh, ow), plane
 * (c, kh dh % sh, kw dw % sw) at row oh + kh dh / sh, column ow + kw dw / sw.
 * Numbering the outputs q = oh Wq + ow ("padded width": columns OW..Wq-1 of
 * every row are junk, computed and dropped), tap k = (c, kh, kw) is the plane
 * shifted by a constant off[k], so that
 *   y[m][q]  = sum_k w[m][k] plane[q + off[k]]             (forward)
 *   dW[m][k] = sum_n sum_q dy[n][m][q] plane_n[q + off[k]] (dy zero in the junk)
 * are products of contiguous rows: the im2col matrix (KH KW times the
 * input, written and read back per image) is never made. Only the phases
 * some tap reads are stored (one for 1x1 strided layers).
 */
#include "runtime/kernels/gemm.h"
#include "runtime/core/cpu.h"
#include "runtime/kernels/conv_paths.h"
#include "runtime/kernels/c11_tile.h"
#include "runtime/kernels/kdebug.h"
#include "runtime/kernels/simd16.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

#define SH_MAX_PHASES 16 /* strides up to 4 x 4 */

typedef struct shift_geom {
  const nbl_conv_geom *g;
  int64_t R, Wq, PS;   /* plane rows, row stride (columns), floats (rows and a zero guard) */
  int64_t np;          /* planes per channel (phases read by some tap) */
  int64_t img;         /* floats per image: C np PS */
  int64_t Q, Qp;       /* outputs per channel in padded width, rounded up to 16 */
  int64_t K;           /* C KH KW */
  int slot[SH_MAX_PHASES]; /* phase a sw + b -> its plane among the channel's, or -1 */
  int64_t *off;        /* [K]: tap k's offset from the image's first plane */
  uint16_t *vm;        /* forward: [Q + 16] lanes q.. of a vector that are outputs (q % Wq < OW) */
  int32_t *yb;         /* forward: [Q + 16] the output index of the first such lane */
} shift_geom;

/* The layout for geometry g; 0 when the layer does not qualify. */
static int shift_init(const nbl_conv_geom *g, shift_geom *s) {
  memset(s, 0, sizeof *s);
  if (g->ns != 2 || g->group != 1 || g->s[0] * g->s[1] > SH_MAX_PHASES) return 0;
  int64_t KH = g->k[0], KW = g->k[1], sh = g->s[0], sw = g->s[1], dh = g->d[0], dw = g->d[1];
  s->g = g;
  for (int i = 0; i < SH_MAX_PHASES; i++) s->slot[i] = -1;
  for (int64_t kh = 0; kh < KH; kh++)
    for (int64_t kw = 0; kw < KW; kw++) {
      int ph = (int)((kh * dh % sh) * sw + kw * dw % sw);
      if (s->slot[ph] < 0) s->slot[ph] = (int)s->np++;
    }
  /* Rows share their pads: a read past the end of a row (columns >= Wq)
   * lands on the next row's leading zeros, so Wq needs to cover the data
   * the outputs read (columns < min(j1, OW + tmax)) and the reach past it
   * (OW + tmax - j0) only: 29 columns for 28 with 3x3 pad 1, not 30. The
   * last row's reach goes into a zero guard. */
  int64_t OW = g->out[1], tmax = (KW - 1) * dw / sw, wq = OW, guard = 0;
  for (int64_t b = 0; b < sw; b++) {
    int used = 0;
    for (int64_t a = 0; a < sh; a++) used |= s->slot[a * sw + b] >= 0;
    if (!used) continue;
    int64_t lo = g->pb[1] - b, hi = g->in[1] + g->pb[1] - b;
    int64_t j0 = lo <= 0 ? 0 : (lo + sw - 1) / sw, j1 = hi <= 0 ? 0 : (hi + sw - 1) / sw;
    if (j1 > OW + tmax) j1 = OW + tmax;
    if (wq < j1) wq = j1;
    if (wq < OW + tmax - j0) wq = OW + tmax - j0;
  }
  if (wq < 1) wq = 1;
  guard = OW + tmax - wq > 0 ? OW + tmax - wq : 0;
  s->R = g->out[0] + (KH - 1) * dh / sh;
  s->Wq = wq;
  s->PS = s->R * s->Wq + guard;
  s->Q = g->out[0] * s->Wq;
  s->Qp = (s->Q + 15) / 16 * 16;
  s->K = g->C * KH * KW;
  if (s->PS <= 0 || s->PS > ((int64_t)1 << 28) || s->K <= 0 || s->K > ((int64_t)1 << 24)) return 0;
  s->img = g->C * s->np * s->PS;
  if (s->img > ((int64_t)1 << 30)) return 0;
  s->off = malloc(sizeof(int64_t) * (size_t)s->K);
  if (!s->off) return 0;
  for (int64_t c = 0; c < g->C; c++)
    for (int64_t kh = 0; kh < KH; kh++)
      for (int64_t kw = 0; kw < KW; kw++) {
        int ph = (int)((kh * dh % sh) * sw + kw * dw % sw);
        s->off[(c * KH + kh) * KW + kw] =
            (c * s->np + s->slot[ph]) * s->PS + kh * dh / sh * s->Wq + kw * dw / sw;
      }
  return 1;
}

/* The planes of one image x [C, H, W] into dst [C][np][PS]: row j of a
 * plane is src[j sw] for j0 <= j < j1, 0 for the other j < Wq, 16 columns
 * per step with the lane masks of each step computed once per phase
 * (strides 1 and 2; masked-off lanes are not read). Pads may be negative
 * (the phase convolutions of nbl_conv_shift_dx): rows and columns outside
 * the image are zero either way. */
__attribute__((target("avx512f"))) static void shift_pack(const shift_geom *s, const float *x, float *dst) {
  const nbl_conv_geom *g = s->g;
  int64_t H = g->in[0], W = g->in[1], sh = g->s[0], sw = g->s[1], Wq = s->Wq, nv = (Wq + 15) / 16;
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  __mmask16 m0[64], m1[64], ms[64]; /* per 16 columns: load masks (2 for stride 2), store mask */
  int vec = (sw == 1 || sw == 2) && nv <= 64;
  for (int64_t a = 0; a < sh; a++)
    for (int64_t b = 0; b < sw; b++) {
      int sl = s->slot[a * sw + b];
      if (sl < 0) continue;
      /* columns j with 0 <= j sw + b - pb[1] < W: [j0, j1); columns past
       * the row (j >= Wq) are never read as such */
      int64_t lo = g->pb[1] - b, hi = W + g->pb[1] - b;
      int64_t j0 = lo <= 0 ? 0 : (lo + sw - 1) / sw, j1 = hi <= 0 ? 0 : (hi + sw - 1) / sw;
      if (j1 > Wq) j1 = Wq;
      if (j0 > j1) j0 = j1;
      for (int64_t v = 0; vec && v < nv; v++) {
        int64_t j = 16 * v;
        ms[v] = nbl_tail_mask(Wq - j);
        if (sw == 1) {
          m0[v] = nbl_lane_range16(j0 - j, j1 - j);
          m1[v] = 0;
        } else { /* source floats 2 j + e, e < 32: e in [2 (j0 - j), 2 (j1 - j) - 1) */
          m0[v] = nbl_lane_range16(2 * (j0 - j), 2 * (j1 - j) - 1);
          m1[v] = nbl_lane_range16(2 * (j0 - j) - 16, 2 * (j1 - j) - 17);
        }
      }
      for (int64_t c = 0; c < g->C; c++) {
        float *p = dst + (c * s->np + sl) * s->PS;
        const float *xc = x + c * H * W;
        for (int64_t r = 0; r < s->R; r++) {
          float *row = p + r * Wq;
          int64_t ih = r * sh + a - g->pb[0];
          const float *src = xc + ih * W + b - g->pb[1];
          if (ih < 0 || ih >= H || j0 == j1) memset(row, 0, sizeof(float) * (size_t)Wq);
          else if (vec && sw == 1)
            for (int64_t v = 0; v < nv; v++)
              _mm512_mask_storeu_ps(row + 16 * v, ms[v], _mm512_maskz_loadu_ps(m0[v], src + 16 * v));
          else if (vec)
            for (int64_t v = 0; v < nv; v++) {
              __m512 v0 = _mm512_maskz_loadu_ps(m0[v], src + 32 * v);
              __m512 v1 = _mm512_maskz_loadu_ps(m1[v], src + 32 * v + 16);
              _mm512_mask_storeu_ps(row + 16 * v, ms[v], _mm512_permutex2var_ps(v0, even, v1));
            }
          else
            for (int64_t j = 0; j < Wq; j++) row[j] = j >= j0 && j < j1 ? src[j * sw] : 0.0f;
        }
        for (int64_t i = s->R * Wq; i < s->PS; i++) p[i] = 0.0f; /* the guard */
      }
    }
}

typedef struct pack_task {
  const shift_geom *s;
  const float *x;
  float *planes;
} pack_task;

static void pack_run(void *arg, int64_t begin, int64_t end) {
  const pack_task *t = arg;
  const nbl_conv_geom *g = t->s->g;
  for (int64_t n = begin; n < end; n++) shift_pack(t->s, t->x + n * g->C * g->in_sz, t->planes + n * t->s->img);
}

/* ------------------------------------------------------------------ forward */

/* One product over the planes: taps off[K], packed weights, output y. */
typedef struct fwd_prod {
  const int64_t *off;
  int64_t K, M;
  const float *wp, *bias;
  const nbl_act *act;
  float *y; /* [N][M][OH][OW] */
} fwd_prod;

/* The output lanes of tile q (nq <= 32 outputs q.. of one image in padded
 * width) for channel rows m.. of product p: act(bias + a), the lanes of
 * each vector that are outputs packed to the front and stored at the output
 * index of the first, so the junk columns are dropped here. */
__attribute__((target("avx512f"))) static void fwd_store(const shift_geom *s, const fwd_prod *p,
                                                         float *yn, int64_t q, int nq, int64_t m,
                                                         __m512 a[8][2]) {
  int64_t ldy = s->g->out_sz;
  int nr = p->M - m < 8 ? (int)(p->M - m) : 8;
  __mmask16 k0 = nbl_tail_mask(nq), k1 = nq > 16 ? nbl_tail_mask(nq - 16) : 0;
  __mmask16 v0m = s->vm[q] & k0, v1m = k1 ? s->vm[q + 16] & k1 : 0;
  __mmask16 s0 = nbl_tail_mask(__builtin_popcount(v0m)), s1 = nbl_tail_mask(__builtin_popcount(v1m));
  float *y0 = yn + m * ldy + s->yb[q], *y1 = yn + m * ldy + s->yb[q + 16];
  for (int r = 0; r < nr; r++) {
    __m512 b = _mm512_set1_ps(p->bias ? p->bias[m + r] : 0.0f);
    float *ya = y0 + r * ldy, *yb = y1 + r * ldy;
    if (s0)
      _mm512_mask_storeu_ps(ya, s0, nbl_c11_act(_mm512_maskz_compress_ps(v0m, _mm512_add_ps(a[r][0], b)), p->act, ya, s0));
    if (s1)
      _mm512_mask_storeu_ps(yb, s1, nbl_c11_act(_mm512_maskz_compress_ps(v1m, _mm512_add_ps(a[r][1], b)), p->act, yb, s1));
  }
}

typedef struct fwd_at {
  const shift_geom *s;
  const fwd_prod *p;
  float *yn;
  int64_t q;
  int nq;
} fwd_at;

__attribute__((target("avx512f"))) static void fwd_epi(void *u, int64_t m, __m512 a[8][2]) {
  const fwd_at *at = u;
  fwd_store(at->s, at->p, at->yn, at->q, at->nq, m, a);
}

/* Every channel block of product p over tile q of image n (planes pl): the
 * sums of c11_tile (conv_avx512.c, c11_tile.h) with the rows of x found
 * through off[] instead of im2col's k P; with buf (K long) the
 * tile's rows packed into a panel and K blocked (nbl_c11_blocked). */
__attribute__((target("avx512f"))) static void fwd_cols(const shift_geom *s, const fwd_prod *p,
                                                        int64_t n, const float *pl, int64_t q, int nq,
                                                        float *buf) {
  float *yn = p->y + n * p->M * s->g->out_sz;
  __mmask16 k0 = nbl_tail_mask(nq), k1 = nq > 16 ? nbl_tail_mask(nq - 16) : 0;
  if (buf) {
    nbl_c11_panel(pl + q, p->off, 0, p->K, k0, k1, buf);
    fwd_at at = {s, p, yn, q, nq};
    nbl_c11_blocked(buf, p->K, p->wp, 0, p->M, buf + 32 * p->K, fwd_epi, &at);
    return;
  }
  for (int64_t m = 0; m < p->M; m += 8) {
    __m512 a[8][2];
    nbl_c11_sums(pl + q, p->off, 0, p->K, p->wp + m * p->K, k0, k1, a);
    fwd_store(s, p, yn, q, nq, m, a);
  }
}

typedef struct fwd_task {
  const shift_geom *s;
  const float *x;
  float *planes;
  int64_t bands; /* units per image (row bands) */
  int pack;      /* 1: each unit packs its image's planes (bands == 1) */
  int nprod;     /* products over the same planes (the phases of nbl_conv_shift_dx) */
  fwd_prod prod[SH_MAX_PHASES];
} fwd_task;

static void fwd_run(void *arg, int64_t begin, int64_t end) {
  const fwd_task *t = arg;
  const shift_geom *s = t->s;
  const nbl_conv_geom *g = s->g;
  int64_t OH = g->out[0], OW = g->out[1], Wq = s->Wq;
  for (int64_t u = begin; u < end; u++) {
    int64_t n = u / t->bands, oh0, oh1;
    nbl_band(OH, u % t->bands, t->bands, 1, &oh0, &oh1);
    if (oh0 >= oh1) continue;
    float *pl = t->planes + n * s->img;
    if (t->pack) shift_pack(s, t->x + n * g->C * g->in_sz, pl);
    int64_t q1 = (oh1 - 1) * Wq + OW;
    for (int i = 0; i < t->nprod; i++) {
      const fwd_prod *p = &t->prod[i];
      /* the panel [K][32] and partial sums [M][32] of nbl_c11_blocked; NULL
       * (K short, or no memory): one pass per channel block, the same bits */
      float *buf = p->K >= nbl_kdebug_get(NBL_KS_F32_KBLOCK_MIN)
                       ? aligned_alloc(64, sizeof(float) * 32 * (size_t)(p->K + (p->M + 7) / 8 * 8))
                       : NULL;
      if (buf) nbl_kcount(NBL_KC_F32_KBLOCK_RUNS);
      for (int64_t q = oh0 * Wq; q < q1; q += 32)
        fwd_cols(s, p, n, pl, q, q1 - q < 32 ? (int)(q1 - q) : 32, buf);
      free(buf);
    }
  }
}

/* The store tables of the forward (s->vm, s->yb) and the planes of N images
 * with their zero slack; 0 when out of memory (s->vm, s->yb freed by the
 * caller either way). */
static float *fwd_alloc(shift_geom *s, int64_t N) {
  const nbl_conv_geom *g = s->g;
  int64_t slack = s->Wq + 32; /* zeros past the last plane: the masked loads' reach stays short of it */
  s->vm = malloc(sizeof(uint16_t) * (size_t)(s->Q + 32));
  s->yb = malloc(sizeof(int32_t) * (size_t)(s->Q + 32));
  float *planes = malloc(sizeof(float) * (size_t)(N * s->img + slack));
  if (!s->vm || !s->yb || !planes || g->out_sz >= INT32_MAX) {
    free(planes);
    return NULL;
  }
  memset(planes + N * s->img, 0, sizeof(float) * (size_t)slack);
  /* lane i of the vector at q is an output when (q + i) % Wq < OW (and
   * q + i < Q): each mask is the one before shifted down a lane, with lane
   * 15 for q + 15 added; rows and columns counted, not divided (a division
   * per lane made this table cost as much as the product on large planes) */
  int64_t Wq = s->Wq, OW = g->out[1], Q = s->Q;
  unsigned m = 0;
  int64_t col = 0, row = 0, col15 = 0; /* q % Wq, q / Wq, (q + 15) % Wq */
  for (int i = 0; i < 15; i++) {     /* lanes 0..14 of the mask at q = -1, as lanes 1..15 at 0 */
    m |= (unsigned)(i < Q && col15 < OW) << (i + 1);
    if (++col15 == Wq) col15 = 0;
  }
  for (int64_t q = 0; q < Q + 32; q++) {
    m = (m >> 1) | (unsigned)(q + 15 < Q && col15 < OW) << 15;
    if (++col15 == Wq) col15 = 0;
    s->vm[q] = (uint16_t)m;
    s->yb[q] = (int32_t)(row * OW + (col < OW ? col : OW));
    if (++col == Wq) col = 0, row++;
  }
  return planes;
}

/* Run the products of t (planes from fwd_alloc) over the batch. */
static void fwd_products(nbl_kctx *ctx, fwd_task *t) {
  const nbl_conv_geom *g = t->s->g;
  int threads = ctx->threads > 1 ? ctx->threads : 1;
  t->bands = 1;
  if (threads > 1 && g->N < 2 * threads) {
    t->bands = (2 * threads + g->N - 1) / g->N;
    if (t->bands > g->out[0]) t->bands = g->out[0];
  }
  t->pack = t->bands == 1;
  if (!t->pack) {
    pack_task pt = {t->s, t->x, t->planes};
    nbl_parallel_for(ctx, g->N, 1, pack_run, &pt);
  }
  nbl_parallel_for(ctx, g->N * t->bands, 1, fwd_run, t);
}

/* The forward over the planes with packed weights wp (NULL: pack w here). */
static int shift_forward(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *w,
                         const float *wp, const float *bias, float *y, const nbl_act *act) {
  if (!ctx || !nbl_cpu_has(NBL_CPU_AVX512F)) return 0;
  shift_geom s;
  if (!shift_init(g, &s)) return 0;
  void *scratch = NULL;
  if (!wp) wp = nbl_c11_weights(ctx, w, g->M, s.K, &scratch);
  float *planes = wp ? fwd_alloc(&s, g->N) : NULL;
  if (planes) {
    fwd_task t = {&s, x, planes, 1, 1, 1, {{s.off, s.K, g->M, wp, bias, act, y}}};
    fwd_products(ctx, &t);
  }
  free(planes);
  free(s.vm);
  free(s.yb);
  free(scratch);
  free(s.off);
  return planes != NULL;
}

int nbl_conv_shift_f32(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *w,
                       const float *bias, float *y, const nbl_act *act) {
  /* weights past the L2 over few outputs (ResNet-18's last layers): each q
   * tile would read them again, where the im2col product of few pixels
   * reads them once (c11_outer_blocked); over many outputs both read them
   * once per tile, and this path saves the im2col matrix (Inception's 1x7
   * and 3x3 stride-2 layers of 0.26-1 M weights: 6-10 % faster) */
  if (g->M * g->C * g->k_sz > 131072 && g->out_sz <= 256) return 0;
  return shift_forward(ctx, g, x, w, NULL, bias, y, act);
}

int nbl_conv_shift_f32_wp(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *wp,
                          const float *bias, float *y, const nbl_act *act) {
  return shift_forward(ctx, g, x, NULL, wp, bias, y, act);
}

/* ------------------------------------------------------------------ weight gradient */

typedef struct dw_task {
  const shift_geom *s;
  const float *planes, *dyp, *zero; /* the images of a pass: dyp [nimg][M][Qp]; zero: Qp zeros */
  float *dw;                  /* [groups][M][K]: each image group's sums */
  int64_t kblk, ktiles, nimg; /* k tiles per unit, in all; images in the pass */
  int64_t kunits, groups;     /* units: groups x kunits (a group's images, a block of k tiles) */
  int mi;                     /* the tile: 4 dy rows x 6 taps, or 6 x 4 */
} dw_task;

/* The sums of the lanes of a, b, c, d. */
__attribute__((target("avx512f"), always_inline)) static inline __m128 sum4(__m512 a, __m512 b, __m512 c, __m512 d) {
  /* per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3], the same of c, d */
  __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  /* per lane: the lane's sums of a, b, c, d; then the 4 lanes added */
  __m512 v = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                           _mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_castps512_ps128(v);
}

/* dw[m + i][k + j] += sum over images [n0, n1) and q < Qp of
 * dy[n][m + i][q] plane_n[q + off[k + j]], i < MI, j < KJ (MI KJ <= 24 sums
 * in registers; rows past M read zeros, taps past K repeat the last one;
 * neither is stored): MI dy rows and KJ shifted plane rows loaded per 16
 * outputs. Each sum's 16 lanes are added by sum4 (the same tree in any of
 * its four slots). Instantiated as 4 x 6 and 6 x 4 (dw_tile46, dw_tile64). */
__attribute__((target("avx512f"), always_inline)) static inline void dw_tile_t(const dw_task *t, float *dw,
                                                                              int64_t n0, int64_t n1, int64_t m,
                                                                              int64_t k, const int MI, const int KJ) {
  const shift_geom *s = t->s;
  int64_t M = s->g->M, K = s->K, Qp = s->Qp, ob[6];
  for (int j = 0; j < KJ; j++) ob[j] = s->off[k + j < K ? k + j : K - 1];
  __m512 acc[24];
#pragma GCC unroll 24
  for (int i = 0; i < 24; i++) acc[i] = _mm512_setzero_ps();
  for (int64_t n = n0; n < n1; n++) {
    const float *d = t->dyp + (n * M + m) * Qp, *pl = t->planes + n * s->img, *a[6], *b[6];
#pragma GCC unroll 6
    for (int i = 0; i < MI; i++) a[i] = m + i < M ? d + i * Qp : t->zero;
#pragma GCC unroll 6
    for (int j = 0; j < KJ; j++) b[j] = pl + ob[j];
    for (int64_t q = 0; q < Qp; q += 16) {
      __m512 x[6];
#pragma GCC unroll 6
      for (int i = 0; i < MI; i++) x[i] = _mm512_load_ps(a[i] + q);
#pragma GCC unroll 6
      for (int j = 0; j < KJ; j++) {
        const __m512 v = _mm512_loadu_ps(b[j] + q);
#pragma GCC unroll 6
        for (int i = 0; i < MI; i++) acc[i * KJ + j] = _mm512_fmadd_ps(x[i], v, acc[i * KJ + j]);
      }
    }
  }
  float r[24];
#pragma GCC unroll 6
  for (int i = 0; i < MI * KJ; i += 4) _mm_storeu_ps(r + i, sum4(acc[i], acc[i + 1], acc[i + 2], acc[i + 3]));
  for (int i = 0; i < MI && m + i < M; i++)
    for (int j = 0; j < KJ && k + j < K; j++) dw[(m + i) * K + k + j] += r[i * KJ + j];
}

__attribute__((target("avx512f"))) static void dw_tile46(const dw_task *t, float *dw, int64_t n0, int64_t n1,
                                                         int64_t m, int64_t k) {
  dw_tile_t(t, dw, n0, n1, m, k, 4, 6);
}
__attribute__((target("avx512f"))) static void dw_tile64(const dw_task *t, float *dw, int64_t n0, int64_t n1,
                                                         int64_t m, int64_t k) {
  dw_tile_t(t, dw, n0, n1, m, k, 6, 4);
}

/* units [begin, end): unit u sums image group u / kunits of the pass (the
 * group's share of the images, in order) over k-tile block u % kunits */
static void dw_run(void *arg, int64_t begin, int64_t end) {
  const dw_task *t = arg;
  const nbl_conv_geom *g = t->s->g;
  for (int64_t u = begin; u < end; u++) {
    const int64_t gi = u / t->kunits, ku = u % t->kunits;
    const int64_t n0 = t->nimg * gi / t->groups, n1 = t->nimg * (gi + 1) / t->groups;
    float *dw = t->dw + gi * g->M * t->s->K;
    int64_t kt0 = ku * t->kblk, kt1 = kt0 + t->kblk < t->ktiles ? kt0 + t->kblk : t->ktiles;
    for (int64_t m = 0; m < g->M; m += t->mi)
      for (int64_t kt = kt0; kt < kt1; kt++) {
        if (t->mi == 4) dw_tile46(t, dw, n0, n1, m, kt * 6);
        else dw_tile64(t, dw, n0, n1, m, kt * 4);
      }
  }
}

typedef struct dyp_task {
  const shift_geom *s;
  const float *x, *dy;
  float *planes, *dyp;
} dyp_task;

/* Images [begin, end): their planes, and dy in padded width (junk columns
 * and the tail to Qp zero), each row by masked moves of 16 floats (short
 * rows: a library call and a loop per row cost more than the copy). */
__attribute__((target("avx512f"))) static void dyp_run(void *arg, int64_t begin, int64_t end) {
  const dyp_task *t = arg;
  const shift_geom *s = t->s;
  const nbl_conv_geom *g = s->g;
  int64_t OH = g->out[0], OW = g->out[1], Wq = s->Wq;
  for (int64_t n = begin; n < end; n++) {
    shift_pack(s, t->x + n * g->C * g->in_sz, t->planes + n * s->img);
    for (int64_t m = 0; m < g->M; m++) {
      float *d = t->dyp + (n * g->M + m) * s->Qp;
      const float *src = t->dy + (n * g->M + m) * g->out_sz;
      for (int64_t oh = 0; oh < OH; oh++)
        for (int64_t j = 0; j < Wq; j += 16) {
          const __mmask16 in = nbl_tail_mask(OW > j ? OW - j : 0), out = nbl_tail_mask(Wq - j);
          _mm512_mask_storeu_ps(d + oh * Wq + j, out, _mm512_maskz_loadu_ps(in, src + oh * OW + j));
        }
      for (int64_t q = s->Q; q < s->Qp; q++) d[q] = 0.0f;
    }
  }
}

int nbl_conv_shift_dw(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *dy,
                      float *dw) {
  if (!ctx || !nbl_cpu_has(NBL_CPU_AVX512F) || g->N <= 0 || g->M <= 0) return 0;
  shift_geom s;
  if (!shift_init(g, &s)) return 0;
  /* passes of images whose planes and dy rows fit in about 1 MB (the L2):
   * each pass packs its images, then sums them while they are in cache */
  int64_t per = (s.img + g->M * s.Qp) * (int64_t)sizeof(float);
  int64_t chunk = ((int64_t)1 << 20) / (per > 0 ? per : 1);
  if (chunk < 1) chunk = 1;
  if (chunk > g->N) chunk = g->N;
  /* the dW loop reads up to Wq + 14 floats past the last plane: zeros */
  int64_t slack = s.Wq + 16;
  int threads = ctx->threads > 1 ? ctx->threads : 1;
  /* the tile of fewer wasted sums: 6 x 4 for 6 output channels (LeNet's
   * first layer: 6 x 28 against 8 x 30), 4 x 6 for most layers */
  int64_t w46 = (g->M + 3) / 4 * 4 * ((s.K + 5) / 6 * 6), w64 = (g->M + 5) / 6 * 6 * ((s.K + 3) / 4 * 4);
  int mi = w64 < w46 ? 6 : 4;
  const int64_t ktiles = mi == 4 ? (s.K + 5) / 6 : (s.K + 3) / 4, mblocks = (g->M + mi - 1) / mi;
  /* few tiles (a first layer: 1 channel, 9-25 taps): the images in two
   * groups, each summed apart and the two added at the end, so that each
   * thread reads the images it packed (a tile reads every image of its
   * group); the grouping does not depend on the threads, nor do the sums */
  const int64_t groups = ktiles * mblocks <= 8 && g->N >= 2 ? 2 : 1;
  float *planes = malloc(sizeof(float) * (size_t)(chunk * s.img + slack));
  float *dyp = aligned_alloc(64, sizeof(float) * (size_t)((chunk * g->M + 1) * s.Qp));
  float *dwg = groups > 1 ? calloc((size_t)(groups * g->M * s.K), sizeof(float)) : dw;
  if (!planes || !dyp || !dwg) {
    free(planes);
    free(dyp);
    if (dwg != dw) free(dwg);
    free(s.off);
    return 0;
  }
  memset(dw, 0, sizeof(float) * (size_t)(g->M * s.K));
  dw_task t = {&s, planes, dyp, dyp + chunk * g->M * s.Qp, dwg, 0, ktiles, 0, 0, groups, mi};
  int64_t units;
  nbl_split_rows(t.ktiles, 1, threads > 1 ? (2 * threads + groups - 1) / groups : 1, &t.kunits, &t.kblk);
  units = groups * t.kunits;
  /* every dw[m][k] gets the passes' sums in pass order, from one unit */
  for (int64_t n0 = 0; n0 < g->N; n0 += chunk) {
    t.nimg = g->N - n0 < chunk ? g->N - n0 : chunk;
    /* the zeros past the pass's planes and dy rows (a short last pass
     * leaves them after its own images) */
    memset(planes + t.nimg * s.img, 0, sizeof(float) * (size_t)slack);
    t.zero = dyp + t.nimg * g->M * s.Qp;
    memset(dyp + t.nimg * g->M * s.Qp, 0, sizeof(float) * (size_t)s.Qp);
    dyp_task pt = {&s, x + n0 * g->C * g->in_sz, dy + n0 * g->M * g->out_sz, planes, dyp};
    nbl_parallel_for(ctx, t.nimg, 1, dyp_run, &pt);
    nbl_parallel_for(ctx, units, 1, dw_run, &t);
  }
  if (groups > 1) { /* the groups' sums, in group order */
    for (int64_t i = 0; i < g->M * s.K; i++) {
      float v = dwg[i];
      for (int64_t gi = 1; gi < groups; gi++) v += dwg[gi * g->M * s.K + i];
      dw[i] = v;
    }
    free(dwg);
  }
  free(planes);
  free(dyp);
  free(s.off);
  return 1;
}


/* ------------------------------------------------------------------ input gradient of strided layers */

typedef struct dx_task {
  const nbl_conv_geom *g;
  float *const *ph; /* [sh sw] phase outputs [N][C][Rh][Jw], NULL: no tap (zero) */
  int64_t Rh, Jw;
  float *dx;
} dx_task;

/* Images [begin, end) of dx from the phase outputs: padded position
 * (ihp, iwp) = (ih + pb[0], iw + pb[1]) is phase (ihp % sh, iwp % sw) at
 * (ihp / sh, iwp / sw); with column stride 2 the two phases of a row are
 * interleaved 16 + 16 columns at a time. */
__attribute__((target("avx512f"))) static void dx_run(void *arg, int64_t begin, int64_t end) {
  const dx_task *t = arg;
  const nbl_conv_geom *g = t->g;
  int64_t H = g->in[0], W = g->in[1], sh = g->s[0], sw = g->s[1], pt = g->pb[0], pl = g->pb[1];
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  for (int64_t n = begin; n < end; n++)
    for (int64_t c = 0; c < g->C; c++)
      for (int64_t ih = 0; ih < H; ih++) {
        int64_t a = (ih + pt) % sh, r = (ih + pt) / sh;
        float *d = t->dx + ((n * g->C + c) * H + ih) * W;
        const float *p[4] = {NULL, NULL, NULL, NULL};
        for (int64_t b = 0; b < sw && b < 4; b++)
          if (t->ph[a * sw + b]) p[b] = t->ph[a * sw + b] + ((n * g->C + c) * t->Rh + r) * t->Jw;
        if (sw == 2) { /* dx[iw] = p[iwp % 2][iwp / 2], iwp = iw + pl: 32 columns from 16 j */
          __m512 z = _mm512_setzero_ps();
          for (int64_t j = 0; 2 * j - pl < W; j += 16) {
            __mmask16 m = nbl_tail_mask(t->Jw - j);
            __m512 e = p[0] ? _mm512_maskz_loadu_ps(m, p[0] + j) : z, o = p[1] ? _mm512_maskz_loadu_ps(m, p[1] + j) : z;
            __m512 v0 = _mm512_permutex2var_ps(e, lo, o), v1 = _mm512_permutex2var_ps(e, hi, o);
            int64_t iw = 2 * j - pl; /* column of v0's lane 0 */
            _mm512_mask_storeu_ps(d + iw, nbl_lane_range16(-iw, W - iw), v0);
            _mm512_mask_storeu_ps(d + iw + 16, nbl_lane_range16(-iw - 16, W - iw - 16), v1);
          }
        } else {
          for (int64_t iw = 0; iw < W; iw++) {
            int64_t b = (iw + pl) % sw;
            const float *q = t->ph[a * sw + b];
            d[iw] = q ? q[((n * g->C + c) * t->Rh + r) * t->Jw + (iw + pl) / sw] : 0.0f;
          }
        }
      }
}

int nbl_conv_shift_dx(nbl_kctx *ctx, const nbl_conv_geom *g, const float *dy, const float *w, float *dx) {
  int64_t KH = g->k[0], KW = g->k[1], sh = g->s[0], sw = g->s[1], C = g->C, M = g->M;
  if (!ctx || !nbl_cpu_has(NBL_CPU_AVX512F) || g->ns != 2 || g->group != 1 || g->d[0] != 1 ||
      g->d[1] != 1 || sh * sw > SH_MAX_PHASES || M * C * KH * KW > 131072 || g->N <= 0)
    return 0;
  /* phase (a, b) of dx: rows r < Rh, columns j < Jw at padded positions
   * (r sh + a, j sw + b); its taps kh = a + sh t (t < KHs) read dy row
   * r - t: a stride-1 convolution of dy (M channels) with the sub-kernel
   * flipped and pads KHs - 1. Phase 0 has the most taps (KHm x KWm): all
   * phases read the planes of dy packed once with its pads, each its own
   * taps among them. */
  int64_t Rh = (g->in[0] + g->pb[0] + sh - 1) / sh, Jw = (g->in[1] + g->pb[1] + sw - 1) / sw;
  int64_t KHm = (KH + sh - 1) / sh, KWm = (KW + sw - 1) / sw;
  nbl_conv_geom t = *g;
  t.C = M, t.M = C;
  t.in[0] = g->out[0], t.in[1] = g->out[1], t.in_sz = g->out_sz;
  t.k[0] = KHm, t.k[1] = KWm, t.k_sz = KHm * KWm;
  t.s[0] = t.s[1] = 1;
  t.pb[0] = KHm - 1, t.pb[1] = KWm - 1, t.pe[0] = t.pe[1] = 0; /* pe: not read */
  t.out[0] = Rh, t.out[1] = Jw, t.out_sz = Rh * Jw;
  shift_geom s;
  if (!shift_init(&t, &s)) return 0;
  float *ph[SH_MAX_PHASES] = {NULL};
  float *buf = malloc(sizeof(float) * (size_t)(sh * sw * g->N * C * Rh * Jw));
  float *wsub = malloc(sizeof(float) * (size_t)(C * M * KHm * KWm));
  /* per phase: its taps' offsets [M KHm KWm] and packed weights [C/8 up][M KHm KWm][8] */
  int64_t *offs = malloc(sizeof(int64_t) * (size_t)(sh * sw * M * KHm * KWm));
  float *wps = calloc((size_t)(sh * sw * (C + 7) / 8 * 8 * M * KHm * KWm), sizeof(float));
  float *planes = buf && wsub && offs && wps ? fwd_alloc(&s, g->N) : NULL;
  fwd_task ft = {&s, dy, planes, 1, 1, 0, {{0}}};
  for (int64_t a = 0; planes && a < sh; a++)
    for (int64_t b = 0; b < sw; b++) {
      int64_t KHs = a < KH ? (KH - a + sh - 1) / sh : 0, KWs = b < KW ? (KW - b + sw - 1) / sw : 0;
      if (!KHs || !KWs) continue;
      int64_t i = a * sw + b, K = M * KHs * KWs;
      int64_t *off = offs + i * M * KHm * KWm;
      float *wp = wps + i * (C + 7) / 8 * 8 * M * KHm * KWm;
      /* wsub[c][m][u][v] = w[m][c][a + sh (KHs-1-u)][b + sw (KWs-1-v)]; tap
       * (u, v) is tap (u + KHm - KHs, v + KWm - KWs) of the planes' pads */
      for (int64_t c = 0; c < C; c++)
        for (int64_t m = 0; m < M; m++)
          for (int64_t u = 0; u < KHs; u++)
            for (int64_t v = 0; v < KWs; v++)
              wsub[((c * M + m) * KHs + u) * KWs + v] =
                  w[((m * C + c) * KH + a + sh * (KHs - 1 - u)) * KW + b + sw * (KWs - 1 - v)];
      for (int64_t m = 0; m < M; m++)
        for (int64_t u = 0; u < KHs; u++)
          for (int64_t v = 0; v < KWs; v++)
            off[(m * KHs + u) * KWs + v] = s.off[(m * KHm + u + KHm - KHs) * KWm + v + KWm - KWs];
      nbl_c11_pack(wsub, C, K, wp);
      ph[i] = buf + i * g->N * C * Rh * Jw;
      ft.prod[ft.nprod++] = (fwd_prod){off, K, C, wp, NULL, NULL, ph[i]};
    }
  if (planes) {
    fwd_products(ctx, &ft);
    dx_task dt = {g, ph, Rh, Jw, dx};
    nbl_parallel_for(ctx, g->N, 1, dx_run, &dt);
  }
  free(planes);
  free(s.vm);
  free(s.yb);
  free(s.off);
  free(buf);
  free(wsub);
  free(offs);
  free(wps);
  return planes != NULL;
}

#else
int nbl_conv_shift_f32(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *w,
                       const float *bias, float *y, const nbl_act *act) {
  (void)ctx, (void)g, (void)x, (void)w, (void)bias, (void)y, (void)act;
  return 0;
}
int nbl_conv_shift_dw(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *dy,
                      float *dw) {
  (void)ctx, (void)g, (void)x, (void)dy, (void)dw;
  return 0;
}
int nbl_conv_shift_dx(nbl_kctx *ctx, const nbl_conv_geom *g, const float *dy, const float *w, float *dx) {
  (void)ctx, (void)g, (void)dy, (void)w, (void)dx;
  return 0;
}
#endif
