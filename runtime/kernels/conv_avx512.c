/* conv_avx512.c - the AVX-512 FP32 product kernel of convolutions (and of
 * the Winograd products); see conv_paths.h. */
#include "runtime/kernels/gemm.h"
#include "runtime/core/cpu.h"
#include "runtime/kernels/conv_paths.h"
#include "runtime/kernels/c11_tile.h"
#include "runtime/kernels/kdebug.h"
#include "runtime/kernels/simd16.h"

#include <stdlib.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* ------------------------------------------------------------------ convolution products, AVX-512
 * y[m][p] = act(bias[m] + sum_k w[m][k] x[k][p]), x the NCHW input of a 1x1
 * convolution or the im2col matrix of any other one (one group): tiles of
 * 8 output channels x 32 pixels in registers (x rows loaded 16 pixels at a
 * time, weights broadcast from a copy packed [M/8][K][8] and kept in the
 * node's cache), bias and activation applied before the single store. For
 * the 1x1 layers of mobile networks (small K, large P) this reads x once per
 * 8 output channels from cache and writes y once; a BLAS call needs the bias
 * fill and the activation as passes of their own, and an environment that
 * pins OpenBLAS to its AVX2 kernels leaves half of this CPU's vector width
 * unused. */
#if defined(__x86_64__)
typedef struct c11_cache {
  const float *w; /* the weights it was packed from */
  int64_t M, K, G;
  float wp[]; /* [G][M/G/8 rounded up][K][8], rows past each group's zero */
} c11_cache;

static void c11_cache_free(void *p) { free(p); }

typedef struct c11_task {
  const float *x, *wp, *bias;
  float *y;
  const nbl_act *act;
  int64_t M, K, P;
  int bands;       /* > 0: thread t takes pixel band t, all channels */
  int64_t nmc, mc; /* else: 32-pixel tiles x nmc chunks of mc channels */
  int m_outer;     /* or nmc chunks of mc channels, each over all pixels */
} c11_task;

/* Channel rows m.. of tile p: y = act(bias + a), stored under the tile's masks. */
__attribute__((target("avx512f"))) static void c11_store(const c11_task *t, int64_t m, int64_t p,
                                                         __m512 a[8][2]) {
  int np = t->P - p < 32 ? (int)(t->P - p) : 32, nr = t->M - m < 8 ? (int)(t->M - m) : 8;
  __mmask16 k0 = nbl_tail_mask(np), k1 = np > 16 ? nbl_tail_mask(np - 16) : 0;
  for (int r = 0; r < nr; r++) {
    __m512 b = _mm512_set1_ps(t->bias ? t->bias[m + r] : 0.0f);
    float *y = t->y + (m + r) * t->P + p;
    _mm512_mask_storeu_ps(y, k0, nbl_c11_act(_mm512_add_ps(a[r][0], b), t->act, y, k0));
    if (k1) _mm512_mask_storeu_ps(y + 16, k1, nbl_c11_act(_mm512_add_ps(a[r][1], b), t->act, y + 16, k1));
  }
}

__attribute__((target("avx512f"))) static void c11_tile(const c11_task *t, int64_t m, int64_t p) {
  int np = t->P - p < 32 ? (int)(t->P - p) : 32;
  __mmask16 k0 = nbl_tail_mask(np), k1 = np > 16 ? nbl_tail_mask(np - 16) : 0;
  __m512 a[8][2];
  nbl_c11_sums(t->x + p, NULL, t->P, t->K, t->wp + m * t->K, k0, k1, a);
  c11_store(t, m, p, a);
}

typedef struct c11_at {
  const c11_task *t;
  int64_t p;
} c11_at;

__attribute__((target("avx512f"))) static void c11_epi(void *u, int64_t m, __m512 a[8][2]) {
  const c11_at *at = u;
  c11_store(at->t, m, at->p, a);
}

/* Channel blocks m0.. < m1 of tile p: with buf (K long), the tile's
 * rows packed into a panel and K blocked (nbl_c11_blocked), else one pass
 * per channel block. */
__attribute__((target("avx512f"))) static void c11_cols(const c11_task *t, int64_t p, int64_t m0,
                                                        int64_t m1, float *buf) {
  if (!buf) {
    for (int64_t m = m0; m < m1; m += 8) c11_tile(t, m, p);
    return;
  }
  int np = t->P - p < 32 ? (int)(t->P - p) : 32;
  nbl_c11_panel(t->x + p, NULL, t->P, t->K, nbl_tail_mask(np), np > 16 ? nbl_tail_mask(np - 16) : 0,
                buf);
  c11_at at = {t, p};
  nbl_c11_blocked(buf, t->K, t->wp, m0, m1, buf + 32 * t->K, c11_epi, &at);
}

/* Channel blocks m0.. < m1 over all the (at most 8) pixel tiles, K blocked:
 * each tile's rows packed into its panel (buf: [tiles][K][32], then the
 * partial sums [tiles][m1 - m0 rounded up to 8][32]), then per block of K
 * rows and channel block, the tiles in turn: the block's weights (4 KB) are
 * read once from memory and stay in L1 for every tile, the panels' blocks
 * stay in L2. The same sums in the same order as c11_tile. */
__attribute__((target("avx512f"))) static void c11_outer_blocked(const c11_task *t, int64_t m0,
                                                                 int64_t m1, float *buf) {
  int64_t K = t->K, tiles = (t->P + 31) / 32, mr = (m1 - m0 + 7) / 8 * 8;
  float *acc = buf + tiles * K * 32;
  for (int64_t i = 0; i < tiles; i++) {
    int np = t->P - 32 * i < 32 ? (int)(t->P - 32 * i) : 32;
    nbl_c11_panel(t->x + 32 * i, NULL, t->P, K, nbl_tail_mask(np), np > 16 ? nbl_tail_mask(np - 16) : 0,
                  buf + i * K * 32);
  }
  for (int64_t k0 = 0; k0 < K; k0 += NBL_C11_KC) {
    int64_t kn = K - k0 < NBL_C11_KC ? K - k0 : NBL_C11_KC;
    for (int64_t m = m0; m < m1; m += 8)
      for (int64_t i = 0; i < tiles; i++) {
        __m512 a[8][2];
        nbl_c11_kblock(buf + (i * K + k0) * 32, kn, t->wp + m * K + k0 * 8,
                       acc + (i * mr + m - m0) * 32, k0 == 0, k0 + kn < K, a);
        if (k0 + kn == K) c11_store(t, m, 32 * i, a);
      }
  }
}

static void c11_run(void *arg, int64_t begin, int64_t end) {
  const c11_task *t = arg;
  /* the panels and partial sums of the blocked products (nbl_c11_blocked,
   * c11_outer_blocked); NULL (K short, or no memory): unblocked, the same
   * bits */
  float *buf = NULL;
  if (t->K >= nbl_kdebug_get(NBL_KS_F32_KBLOCK_MIN)) {
    int64_t tiles = t->m_outer ? (t->P + 31) / 32 : 1;
    buf = aligned_alloc(64, sizeof(float) * 32 * (size_t)(tiles * (t->K + (t->M + 7) / 8 * 8)));
  }
  if (buf) nbl_kcount(NBL_KC_F32_KBLOCK_RUNS);
  for (int64_t u = begin; u < end; u++) {
    if (t->bands) {
      int64_t p0, p1;
      nbl_band(t->P, u, t->bands, 32, &p0, &p1);
      for (int64_t p = p0; p < p1; p += 32) c11_cols(t, p, 0, t->M, buf);
    } else if (t->m_outer) { /* chunk u of channels over every pixel: weights read once */
      int64_t m0 = u * t->mc, m1 = m0 + t->mc < t->M ? m0 + t->mc : t->M;
      if (buf) {
        c11_outer_blocked(t, m0, m1, buf);
        continue;
      }
      for (int64_t m = m0; m < m1; m += 8)
        for (int64_t p = 0; p < t->P; p += 32) c11_tile(t, m, p);
    } else {
      int64_t p = u / t->nmc * 32, m0 = u % t->nmc * t->mc;
      int64_t m1 = m0 + t->mc < t->M ? m0 + t->mc : t->M;
      c11_cols(t, p, m0, m1, buf);
    }
  }
  free(buf);
}

/* wp = w[M][K] packed for c11_tile: [M/8 rounded up][K][8], wp zeroed by the caller. */
void nbl_c11_pack(const float *w, int64_t M, int64_t K, float *wp) {
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = 0; k < K; k++) wp[(m / 8 * K + k) * 8 + m % 8] = w[m * K + k];
}

/* Few pixels and weights past the L2: each weight block once, over every
 * pixel tile (ResNet-18's last layers: 9.4 MB of weights, 49 pixels). */
static int c11_m_outer(int64_t M, int64_t K, int64_t P) {
  return (P + 31) / 32 <= 8 && M * K >= 32768;
}

/* y[M][P] = wp x[K][P] on the calling thread, wp packed by nbl_c11_pack. */
void nbl_c11_serial(const float *wp, const float *x, int64_t M, int64_t K, int64_t P,
                       float *y) {
  c11_task t = {x, wp, NULL, y, NULL, M, K, P, 0, 1, (M + 7) / 8 * 8, c11_m_outer(M, K, P)};
  c11_run(&t, 0, t.m_outer ? 1 : (P + 31) / 32);
}

static int c11_product(nbl_kctx *ctx, const c11_cache *cc, int64_t M, int64_t K, int64_t P,
                       const float *x, const float *bias, float *y, const nbl_act *act);

/* The weights w[M][K] packed for c11_tile (nbl_c11_pack), in G groups of
 * M / G rows each packed on its own ([G][Mg/8 rounded up][K][8]: group g's
 * at g (Mg/8 rounded up) 8 K; G = 1: the whole matrix): constant weights
 * once into the node's cache; weights that change between runs (a training
 * graph's parameters, a backward op's operands) into *scratch, which the
 * caller keeps across the images of one call and frees (packing costs M K
 * copies against the product's M K P multiply-adds). NULL when out of memory. */
static const c11_cache *c11_weights_g(nbl_kctx *ctx, const float *w, int64_t M, int64_t K,
                                      int64_t G, void **scratch) {
  int64_t Mg = M / G, Mb = (Mg + 7) / 8;
  size_t bytes = sizeof(c11_cache) + sizeof(float) * (size_t)(G * Mb * 8 * K);
  c11_cache *cc;
  if (!nbl_conv_weights_const(ctx)) {
    cc = *scratch;
    if (!cc || cc->w != w || cc->M != M || cc->K != K || cc->G != G) {
      free(cc);
      *scratch = cc = calloc(1, bytes);
      if (!cc) return NULL;
      cc->w = w, cc->M = M, cc->K = K, cc->G = G;
      for (int64_t g = 0; g < G; g++) nbl_c11_pack(w + g * Mg * K, Mg, K, cc->wp + g * Mb * 8 * K);
    }
    return cc;
  }
  nbl_kcache *kc = nbl_kctx_cache(ctx);
  if (!kc) return NULL;
  cc = kc->data;
  if (!cc || kc->free_fn != c11_cache_free || cc->w != w || cc->M != M || cc->K != K || cc->G != G) {
    if (kc->free_fn) kc->free_fn(kc->data);
    kc->data = NULL;
    kc->free_fn = NULL;
    cc = calloc(1, bytes);
    if (!cc) return NULL;
    cc->w = w, cc->M = M, cc->K = K, cc->G = G;
    for (int64_t g = 0; g < G; g++) nbl_c11_pack(w + g * Mg * K, Mg, K, cc->wp + g * Mb * 8 * K);
    kc->data = cc;
    kc->free_fn = c11_cache_free;
  }
  return cc;
}

static const c11_cache *c11_weights(nbl_kctx *ctx, const float *w, int64_t M, int64_t K,
                                    void **scratch) {
  return c11_weights_g(ctx, w, M, K, 1, scratch);
}

const float *nbl_c11_weights_groups(nbl_kctx *ctx, const float *w, int64_t M, int64_t K, int64_t G,
                                    void **scratch) {
  const c11_cache *cc = c11_weights_g(ctx, w, M, K, G, scratch);
  return cc ? cc->wp : NULL;
}

const float *nbl_c11_weights(nbl_kctx *ctx, const float *w, int64_t M, int64_t K, void **scratch) {
  const c11_cache *cc = c11_weights(ctx, w, M, K, scratch);
  return cc ? cc->wp : NULL;
}

/* y[M][P] = act(bias + w[M][K] x[K][P]) for one image with the kernel above;
 * 1 when it ran (AVX-512 and memory for the packed weights); the weights as
 * c11_weights packs them. */
int nbl_conv_gemm_avx512(nbl_kctx *ctx, int64_t M, int64_t K, int64_t P, const float *x,
                         const float *w, const float *bias, float *y, const nbl_act *act,
                         void **scratch) {
  if (!ctx || !nbl_cpu_has(NBL_CPU_AVX512F)) return 0;
  const c11_cache *cc = c11_weights(ctx, w, M, K, scratch);
  return cc ? c11_product(ctx, cc, M, K, P, x, bias, y, act) : 0;
}

/* The product of nbl_conv_gemm_avx512 with the packed weights cc. */
static int c11_product(nbl_kctx *ctx, const c11_cache *cc, int64_t M, int64_t K, int64_t P,
                       const float *x, const float *bias, float *y, const nbl_act *act) {
  int64_t Mb = (M + 7) / 8;
  int threads = ctx->threads > 1 ? ctx->threads : 1;
  c11_task t = {x, cc->wp, bias, y, act, M, K, P, nbl_pixel_bands(threads, P), 1, Mb * 8, 0};
  int64_t tiles = (P + 31) / 32;
  if (!t.bands && c11_m_outer(M, K, P)) {
    t.m_outer = 1;
    nbl_split_rows(M, 8, 2 * threads, &t.nmc, &t.mc);
    nbl_parallel_for(ctx, t.nmc, 1, c11_run, &t);
    return 1;
  }
  if (!t.bands && threads > 1 && tiles < 2 * threads) /* few pixels: split the channels too */
    nbl_split_rows(M, 8, (2 * threads + tiles - 1) / tiles, &t.nmc, &t.mc);
  nbl_parallel_for(ctx, t.bands ? t.bands : tiles * t.nmc, 1, c11_run, &t);
  return 1;
}
#endif
