/* int4_amx.c - the integer products of 4-bit training on AMX-INT8 tiles
 * (contracts in int4_backward.h): ConvGrad's dW and dX and the forward
 * Int4CodedConv, where the CPU has the tiles (runtime/core/cpu.h,
 * NBL_CPU_AMX; the cap NBL_ISA=avx512 or lower turns them off).
 *
 * TDPBSSD multiplies 16 x K signed bytes (K <= 64) by K x 16 signed bytes (B
 * in the VNNI layout: K / 4 rows of 16 columns x 4 consecutive k) into 16 x
 * 16 int32: up to 16K products per instruction (bench/amx_peak.c: about
 * 2 TMAC/s on one core here, 6-8x vpdpbusd, 10x vpdpwssd). The operands are
 * int8:
 *   - INT4/INT8 codes of activations and weights: |code| <= 127, as they are;
 *   - gradient codes (|c| <= NBL_I4B_MAX_CODE = 2^14) in two planes,
 *     c = lo + 256 * hi, lo = c's low byte read signed (-128..127), hi =
 *     (c - lo) / 256 (|hi| <= 64); each plane's product is its own tile
 *     and the two are combined in int64: acc = lo + 256 * hi, exact.
 * Every tile sums at most 2^16 products of magnitude <= 128 * 127 per plane
 * (< 2^31: exact int32), longer sums are split and added in int64.
 *
 * No im2col: the tiles read shifted windows of padded code planes.
 *   dW: X's codes padded and split into stride-phase planes [phase][C][N *
 *     Hq * Wq] (phase (R % sh, Q % sw) of padded pixel (R, Q)), dY laid over
 *     the same Hq x Wq grid (zeros where no output). The tap (kh, kw) is its
 *     phase plane from offset (kh / sh) * Wq + kw / sw, so dW^T[c][m] of the
 *     tap = A [16 channels][64 pixels] (a phase plane, rows a plane apart) x
 *     B [64 pixels][16 m] (dY in the VNNI layout), K the pixels of all
 *     images, in chunks that stay in cache while every tap's tiles pass.
 *   dX and the forward: the weights are A ([16 out channels][4 KB in
 *     channels] per tap and chunk of KB <= 16 channel quads) and the input
 *     (dY, or X's codes) is B in quads of channels, [quad][pixels][4], so
 *     that a B row is 16 consecutive pixels x 4 channels and the KB rows are
 *     the quads (a plane apart): the output tile is 16 channels x 16 pixels,
 *     rows of pixels stored straight to NCHW. The forward reads X's
 *     stride-phase planes (as dW); dX, a transposed convolution, is split by
 *     output phase (ih % sh, iw % sw), each phase a stride-1 correlation of
 *     padded dY with the taps that reach it (a phase no tap reaches is
 *     zeros). dX's tiles go to an image buffer by phase, whole aligned
 *     rows, and the image's rows of dX are then written from it in one
 *     sweep (copied, or two phases interleaved for column stride 2). With 16 channels a step is K =
 *     16 (a quarter of the tile); a layout with the taps in K would need a
 *     transposed (channels-last) input and output.
 */
#include <float.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/cpu.h"
#include "runtime/kernels/int4_amx_codes.h"
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

int nbl_i4b_amx_supported(void) {
  const unsigned need = NBL_CPU_AMX | NBL_CPU_AVX512F | NBL_CPU_AVX512BW | NBL_CPU_AVX512VL | NBL_CPU_AVX512DQ;
  return I4B_AMX && (nbl_cpu_features() & need) == need;
}

void nbl_i4b_set_amx(int on) { atomic_store(&g_amx, on < 0 ? -1 : on ? 1 : 0); }

int nbl_i4b_amx_on(nbl_i4b_isa isa) {
  if (!nbl_i4b_amx_supported() || isa != NBL_I4B_AVX512) return 0;
  const int f = atomic_load(&g_amx);
  return f >= 0 ? f : nbl_cpu_has(NBL_CPU_AMX);
}

#if I4B_AMX

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
 * (a0, b0), (a0, b1), (a1, b0), (a1, b1). A_i(s) is the rows (lda bytes
 * apart) from a_i + aoff[s] (or s * astep), B_j(s) the rows (ldb bytes
 * apart) from b_j + boff[s] (or s * bstep), shapes as configured. Written
 * to c[4][16][16]. */
AMX_FN static void k2x2(const int8_t *a0, const int8_t *a1, int64_t lda, const int8_t *b0, const int8_t *b1,
                        int64_t ldb, int64_t n, const int64_t *aoff, int64_t astep, const int64_t *boff, int64_t bstep,
                        int32_t *c) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t s = 0; s < n; s++) {
    const int64_t ao = STEP_OFF(aoff, astep, s), bo = STEP_OFF(boff, bstep, s);
    _tile_loadd(4, a0 + ao, lda);
    _tile_loadd(6, b0 + bo, ldb);
    _tile_loadd(7, b1 + bo, ldb);
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

AMX_FN static void amx_release(void) { _tile_release(); }

static void run(nbl_kctx *ctx, int64_t n, void (*fn)(void *, int64_t, int64_t), void *arg) {
  if (n <= 0) return;
  if (ctx) nbl_parallel_for(ctx, n, 1, fn, arg);
  else fn(arg, 0, n);
}

/* Scratch buffers kept between calls: the planes are megabytes, and a fresh
 * allocation of that size is fresh pages from the kernel on every call (a
 * page fault per 4 KB: a third of the products' time in a training step). A
 * few buffers, 64-byte aligned, under a lock; scratch_put keeps the largest. */
#define SCRATCH_SLOTS 6
static pthread_mutex_t g_scratch_mu = PTHREAD_MUTEX_INITIALIZER;
static void *g_scratch[SCRATCH_SLOTS];
static size_t g_scratch_cap[SCRATCH_SLOTS];

/* A buffer of at least n bytes (NULL: out of memory); *cap its size. */
static void *scratch_get(size_t n, size_t *cap) {
  n = (n + 63) & ~(size_t)63;
  pthread_mutex_lock(&g_scratch_mu);
  int best = -1;
  for (int i = 0; i < SCRATCH_SLOTS; i++)
    if (g_scratch[i] && g_scratch_cap[i] >= n && (best < 0 || g_scratch_cap[i] < g_scratch_cap[best])) best = i;
  void *p = NULL;
  if (best >= 0) {
    p = g_scratch[best], *cap = g_scratch_cap[best];
    g_scratch[best] = NULL;
  }
  pthread_mutex_unlock(&g_scratch_mu);
  if (!p) p = aligned_alloc(64, n ? n : 64), *cap = n;
  return p;
}

static void scratch_put(void *p, size_t cap) {
  if (!p) return;
  pthread_mutex_lock(&g_scratch_mu);
  int slot = -1;
  for (int i = 0; i < SCRATCH_SLOTS && slot < 0; i++)
    if (!g_scratch[i]) slot = i;
  if (slot < 0) { /* full: replace the smallest if this one is larger */
    slot = 0;
    for (int i = 1; i < SCRATCH_SLOTS; i++)
      if (g_scratch_cap[i] < g_scratch_cap[slot]) slot = i;
    if (g_scratch_cap[slot] >= cap) {
      pthread_mutex_unlock(&g_scratch_mu);
      free(p);
      return;
    }
    free(g_scratch[slot]);
  }
  g_scratch[slot] = p, g_scratch_cap[slot] = cap;
  pthread_mutex_unlock(&g_scratch_mu);
}

#define KSTEPS 1024 /* 64-byte k steps per int32 sum: 2^16 products */

/* Packing loops: AVX-512 (AMX implies it), the loop vectorizer's full
 * cost model (GCC; -O2's keeps short copies scalar). */
#if defined(__GNUC__) && !defined(__clang__)
#define PACK_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"), optimize("O3")))
#else
#define PACK_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#endif

static inline __mmask32 first_n32(int64_t n) {
  return n >= 32 ? ~(__mmask32)0 : n <= 0 ? 0 : (__mmask32)((1u << n) - 1);
}

/* dst[i] = src[i] for i < n, narrowed (|src| <= 127) */
PACK_FN static void narrow(int8_t *restrict dst, const int16_t *restrict src, int64_t n) {
  for (int64_t i = 0; i < n; i += 32) {
    const __mmask32 k = first_n32(n - i);
    _mm256_mask_storeu_epi8(dst + i, k, _mm512_cvtepi16_epi8(_mm512_maskz_loadu_epi16(k, src + i)));
  }
}

/* dst[i] = src[2 i] for i < n, narrowed (|src| <= 127): the low bytes of
 * the 32-bit pairs */
PACK_FN static void narrow2(int8_t *restrict dst, const int16_t *restrict src, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __m512i v = _mm512_maskz_loadu_epi16(first_n32(2 * (n - i) - 1), src + 2 * i);
    _mm_mask_storeu_epi8(dst + i, (__mmask16)first_n32(n - i), _mm512_cvtepi32_epi8(v));
  }
}

/* the two planes of 32 codes: c = lo + 256 hi */
PACK_FN static inline void split32(__m512i c, __m256i *lo, __m256i *hi) {
  const __m512i l = _mm512_srai_epi16(_mm512_slli_epi16(c, 8), 8);
  *lo = _mm512_cvtepi16_epi8(l);
  *hi = _mm512_cvtepi16_epi8(_mm512_srai_epi16(_mm512_sub_epi16(c, l), 8));
}

/* 32 codes from src + i (lanes k; the rest 0): int16 codes, or (src NULL)
 * the table t16's codes of the log codes s8 (t16[s8 + 16], |s8| <= 15) */
PACK_FN static inline __m512i codes32(const int16_t *src, const int8_t *s8, const int16_t *t16, int64_t i,
                                      __mmask32 k) {
  if (src) return _mm512_maskz_loadu_epi16(k, src + i);
  const __m512i c = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(k, s8 + i));
  return _mm512_maskz_permutexvar_epi16(k, _mm512_add_epi16(c, _mm512_set1_epi16(16)), _mm512_loadu_si512(t16));
}

/* lo[i], hi[i] = the planes of src[i] (src NULL: of s8[i]'s codes, codes32), i < n */
PACK_FN static void split_row(int8_t *restrict lo, int8_t *restrict hi, const int16_t *restrict src,
                              const int8_t *restrict s8, const int16_t *t16, int64_t n,
                              int64_t nz) { /* and zeros in [n, nz) */
  for (int64_t i = 0; i < nz; i += 32) {
    const __mmask32 k = first_n32(n - i), kz = first_n32(nz - i);
    __m256i l, h;
    split32(codes32(src, s8, t16, i, i < n ? k : 0), &l, &h);
    _mm256_mask_storeu_epi8(lo + i, kz, l);
    _mm256_mask_storeu_epi8(hi + i, kz, h);
  }
}

/* The planes of four rows of codes (NULL: zeros; with r NULL the log codes
 * r8[b] through t16, codes32) interleaved by pixel: lo[4 i + b], hi[4 i +
 * b] = the planes of r[b][i], i < n */
PACK_FN static void split_quad(int8_t *restrict lo, int8_t *restrict hi, const int16_t *const *r, const int8_t *const *r8,
                               const int16_t *t16, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const int64_t m = n - i < 16 ? n - i : 16;
    const __mmask32 k = first_n32(m);
    __m128i pl[4], ph[4];
    for (int b = 0; b < 4; b++) {
      __m256i l, h;
      const int any = r ? r[b] != NULL : r8[b] != NULL;
      split32(any ? codes32(r ? r[b] : NULL, r8 ? r8[b] : NULL, t16, i, k) : _mm512_setzero_si512(), &l, &h);
      pl[b] = _mm256_castsi256_si128(l);
      ph[b] = _mm256_castsi256_si128(h);
    }
    const __mmask64 st = m >= 16 ? ~(__mmask64)0 : (((__mmask64)1 << (4 * m)) - 1);
    for (int p = 0; p < 2; p++) {
      _mm512_mask_storeu_epi8((p ? hi : lo) + 4 * i, st, nbl_i4b_interleave4(p ? ph : pl));
    }
  }
}

/* Linear codes straight from the floats of an nbl_i4b_src (int32 lanes). */
typedef struct src_cvt {
  __m512 inv, unit, lim;
} src_cvt;

PACK_FN static inline src_cvt src_cvt_of(const nbl_i4b_src *s) {
  src_cvt c = {.inv = _mm512_set1_ps(1.0f / s->unit), .unit = _mm512_set1_ps(s->unit), .lim = _mm512_set1_ps(127.0f)};
  return c;
}

/* linear codes rint(v / unit) of the lanes k; *bad |= a lane off the grid
 * (unit * c != v) or past -127..127 */
PACK_FN static inline __m512i lin_16(src_cvt c, __m512 v, __mmask16 k, __mmask16 *bad) {
  const __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(v, c.inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  *bad |= _mm512_mask_cmp_ps_mask(k, _mm512_mul_ps(c.unit, r), v, _CMP_NEQ_UQ) |
          _mm512_mask_cmp_ps_mask(k, _mm512_abs_ps(r), c.lim, _CMP_GT_OQ);
  return _mm512_maskz_cvtps_epi32(k, r);
}

/* dst[i] = the linear code of src[i * sw], i < n (sw 1 or 2); 1 when one is
 * off the grid or past -127..127 */
PACK_FN static inline int narrow_f(int8_t *restrict dst, const float *restrict src, int64_t n, int64_t sw,
                                   src_cvt cv) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  __mmask16 bad = 0;
  for (int64_t i = 0; i < n; i += 16) {
    const int64_t m = n - i;
    const __mmask16 k = (__mmask16)(m >= 16 ? 0xffff : (1u << m) - 1);
    __m512 v;
    if (sw == 1) {
      v = _mm512_maskz_loadu_ps(k, src + i);
    } else { /* elements 2 i .. 2 i + 30 (the last one read: 2 (n - 1)) */
      const int64_t e = 2 * m - 1;
      const __mmask16 k0 = (__mmask16)(e >= 16 ? 0xffff : (1u << e) - 1);
      const __mmask16 k1 = (__mmask16)(e >= 32 ? 0xffff : e <= 16 ? 0 : (1u << (e - 16)) - 1);
      v = _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(k0, src + 2 * i), even, _mm512_maskz_loadu_ps(k1, src + 2 * i + 16));
    }
    _mm_mask_storeu_epi8(dst + i, k, _mm512_cvtepi32_epi8(lin_16(cv, v, k, &bad)));
  }
  return bad != 0;
}

/* ------------------------------------------------------------------ dW */

typedef struct dw_job {
  const nbl_conv_geom *g;
  const int8_t *xq, *bq;
  int64_t Cp, nmb, ncb, nu, npair, LX, KP, Wq, sh, sw, pw;
  int64_t *dw;
  _Atomic int failed; /* a worker's scratch allocation failed */
} dw_job;

/* A's base for unit u = (tap, channel block) */
static const int8_t *dw_unit(const dw_job *j, int64_t u) {
  const nbl_conv_geom *g = j->g;
  const int64_t t = u / j->ncb, cb = u % j->ncb, kh = t / g->k[1], kw = t % g->k[1];
  const int64_t ph = (kh % j->sh) * j->pw + kw % j->sw;
  return j->xq + (ph * j->Cp + cb * 16) * j->LX + (kh / j->sh) * j->Wq + kw / j->sw;
}

/* dW's items [i0, i1): the pixels in chunks of DW_CHUNK steps, every item
 * over a chunk before the next chunk (the chunk's codes stay in cache), the
 * items' int32 tiles kept in memory between chunks and added to dW in int64
 * every KSTEPS steps. */
#define DW_CHUNK 32

AMX_FN static void dw_chunk(const int8_t *a0, const int8_t *a1, int64_t lda, const int8_t *b0, const int8_t *b1,
                            int64_t n, int32_t *c) {
  _tile_loadd(0, c, 64);
  _tile_loadd(1, c + 256, 64);
  _tile_loadd(2, c + 512, 64);
  _tile_loadd(3, c + 768, 64);
  for (int64_t s = 0; s < n; s++) {
    _tile_loadd(4, a0 + s * 64, lda);
    _tile_loadd(6, b0 + s * 1024, 64);
    _tile_loadd(7, b1 + s * 1024, 64);
    _tile_loadd(5, a1 + s * 64, lda);
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

static void dw_flush(dw_job *j, int64_t it, int32_t *c) {
  const nbl_conv_geom *g = j->g;
  const int64_t mb = it / j->npair, u0 = 2 * (it % j->npair), u1 = u0 + 1 < j->nu ? u0 + 1 : u0;
  for (int h = 0; h < (u1 != u0 ? 2 : 1); h++) {
    const int64_t u = h ? u1 : u0, t = u / j->ncb, cb = u % j->ncb;
    const int32_t *lo = c + 512 * h, *hi = lo + 256;
    for (int64_t r = 0; r < 16 && cb * 16 + r < g->C; r++)
      for (int64_t q = 0; q < 16 && mb * 16 + q < g->M; q++)
        j->dw[((mb * 16 + q) * g->C + cb * 16 + r) * g->k_sz + t] +=
            (int64_t)lo[r * 16 + q] + 256 * (int64_t)hi[r * 16 + q];
  }
  memset(c, 0, sizeof(int32_t) * 1024);
}

static void dw_part(void *arg, int64_t i0, int64_t i1) {
  dw_job *j = arg;
  int32_t *acc = aligned_alloc(64, sizeof(int32_t) * 1024 * (size_t)(i1 - i0));
  const int8_t **a = malloc(sizeof(*a) * 2 * (size_t)(i1 - i0));
  if (!acc || !a) {
    free(acc);
    free(a);
    atomic_store(&j->failed, 1);
    return;
  }
  memset(acc, 0, sizeof(int32_t) * 1024 * (size_t)(i1 - i0));
  for (int64_t it = i0; it < i1; it++) {
    const int64_t u0 = 2 * (it % j->npair), u1 = u0 + 1 < j->nu ? u0 + 1 : u0;
    a[2 * (it - i0)] = dw_unit(j, u0);
    a[2 * (it - i0) + 1] = dw_unit(j, u1);
  }
  amx_config();
  const int64_t nsteps = j->KP / 64;
  for (int64_t s0 = 0; s0 < nsteps; s0 += DW_CHUNK) {
    const int64_t ns = nsteps - s0 < DW_CHUNK ? nsteps - s0 : DW_CHUNK;
    for (int64_t it = i0; it < i1; it++) {
      const int64_t mb = it / j->npair;
      const int8_t *blo = j->bq + mb * (j->KP * 16) + s0 * 1024, *bhi = blo + j->nmb * (j->KP * 16);
      dw_chunk(a[2 * (it - i0)] + s0 * 64, a[2 * (it - i0) + 1] + s0 * 64, j->LX, blo, bhi, ns,
               acc + 1024 * (it - i0));
    }
    if ((s0 + ns) % KSTEPS == 0 || s0 + ns == nsteps)
      for (int64_t it = i0; it < i1; it++) dw_flush(j, it, acc + 1024 * (it - i0));
  }
  amx_release();
  free(acc);
  free(a);
}

/* B of dW: 16 rows of int8 (KP bytes apart) into the VNNI layout
 * [nq][16][4], the rows' first 4 nq bytes: a 16 x 16 transpose of 32-bit
 * units, by gathers */
PACK_FN static void vnni_rows(int8_t *restrict dst, const int8_t *restrict rows, int64_t KP, int64_t nq) {
  const __m512i idx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                         _mm512_set1_epi32((int)KP));
  for (int64_t q = 0; q < nq; q++)
    _mm512_store_si512(dst + q * 64, _mm512_i32gather_epi32(idx, rows + q * 4, 1));
}

/* dW's packing sweeps (items split over threads) */
#define VN_CHUNK 256 /* VNNI rows (of 64 bytes) per item */

typedef struct dwp_job {
  const nbl_conv_geom *g;
  const nbl_i4b_src *x, *dy;
  int8_t *xq, *bq;
  int64_t Cp, LX, Wq, Pq, Hq, KP, nmb, phh, pw, nvc;
  int64_t *roff, *coff, *ciw0, *ccnt; /* X's rows and column phases: where they go (dwp_x_part) */
  _Atomic int bad;                    /* an X value off its grid or past -127..127 */
} dwp_job;

/* X's stride-phase planes, channels [c0, c1) of the Cp (past C: zeros):
 * padded row R, column Q at phase (R % sh, Q % sw), pixel n * Pq + (R / sh)
 * * Wq + Q / sw */
PACK_FN static void dwp_x_part(void *arg, int64_t c0, int64_t c1) {
  dwp_job *j = arg;
  const src_cvt cv = src_cvt_of(j->x);
  const nbl_conv_geom *g = j->g;
  const int64_t N = g->N, C = g->C, H = g->in[0], W = g->in[1], sw = g->s[1], pw = j->pw;
  for (int64_t ph = 0; ph < j->phh * pw; ph++)
    memset(j->xq + (ph * j->Cp + c0) * j->LX, 0, (size_t)((c1 - c0) * j->LX));
  if (c1 > C) c1 = C;
  const int64_t *roff = j->roff, *coff = j->coff, *ciw0 = j->ciw0, *ccnt = j->ccnt;
  for (int64_t n = 0; n < N; n++) /* plane by plane: X read in order */
    for (int64_t c = c0; c < c1; c++)
      for (int64_t ih = 0; ih < H; ih++) {
        if (roff[ih] < 0) continue;
        for (int64_t px = 0; px < pw; px++) {
          if (!ccnt[px]) continue;
          const int64_t at = ((n * C + c) * H + ih) * W + ciw0[px], cnt = ccnt[px];
          int8_t *d = j->xq + roff[ih] + coff[px] + c * j->LX + n * j->Pq;
          if (j->x->c8) { /* QuantizeInt4's codes */
            if (nbl_i4b_narrow_k8(d, j->x->c8 + at, cnt, sw, j->x->zero)) {
              atomic_store(&j->bad, 1);
              return;
            }
            continue;
          }
          if (!j->x->q) { /* from the floats (sw 1 or 2: nbl_i4b_amx_conv_dw) */
            if (narrow_f(d, j->x->f + at, cnt, sw, cv)) {
              atomic_store(&j->bad, 1);
              return;
            }
            continue;
          }
          const int16_t *src = j->x->q + at;
          if (sw == 1) narrow(d, src, cnt);
          else if (sw == 2) narrow2(d, src, cnt);
          else
            for (int64_t i = 0; i < cnt; i++) d[i] = (int8_t)src[i * sw];
        }
      }
}

/* dY in the VNNI layout of items [i0, i1) (block mb of 16 channels, chunk
 * of VN_CHUNK VNNI rows = 4 VN_CHUNK grid pixels): the chunk's rows over the
 * Hq x Wq grid of every image (zeros where no output, and channels past M)
 * split into their two planes in a strip in cache, then transposed into
 * the lo block mb and the hi block nmb + mb of bq. */
static void dwp_dyv_part(void *arg, int64_t i0, int64_t i1) {
  const dwp_job *j = arg;
  const nbl_conv_geom *g = j->g;
  const int64_t N = g->N, M = g->M, OH = g->out[0], OW = g->out[1], KP = j->KP, Wq = j->Wq, Pq = j->Pq;
  int8_t strip[2][16][VN_CHUNK * 4] __attribute__((aligned(64)));
  for (int64_t it = i0; it < i1; it++) {
    const int64_t mb = it / j->nvc, q0 = (it % j->nvc) * VN_CHUNK;
    const int64_t nq = KP / 4 - q0 < VN_CHUNK ? KP / 4 - q0 : VN_CHUNK, k0 = q0 * 4, k1 = k0 + nq * 4;
    for (int64_t mm = 0; mm < 16; mm++) {
      const int64_t m = mb * 16 + mm;
      if (m >= M) {
        memset(strip[0][mm], 0, (size_t)(nq * 4));
        memset(strip[1][mm], 0, (size_t)(nq * 4));
        continue;
      }
      int64_t k = k0, n = k0 / Pq, r = k0 % Pq, oh = r / Wq, ow = r % Wq; /* then stepped, no division */
      while (k < k1) {
        const int64_t len = Wq - ow < k1 - k ? Wq - ow : k1 - k;
        int8_t *lo = strip[0][mm] + (k - k0), *hi = strip[1][mm] + (k - k0);
        if (n < N && oh < OH) {
          const int64_t at = ((n * M + m) * OH + oh) * OW + ow;
          split_row(lo, hi, j->dy->q ? j->dy->q + at : NULL, j->dy->q ? NULL : j->dy->k8 + at, j->dy->t16, OW - ow, len);
        } else {
          memset(lo, 0, (size_t)len);
          memset(hi, 0, (size_t)len);
        }
        k += len, ow += len;
        if (ow == Wq && ++oh == j->Hq) oh = 0, n++;
        if (ow == Wq) ow = 0;
      }
    }
    vnni_rows(j->bq + mb * 16 * KP + q0 * 64, strip[0][0], VN_CHUNK * 4, nq);
    vnni_rows(j->bq + (j->nmb + mb) * 16 * KP + q0 * 64, strip[1][0], VN_CHUNK * 4, nq);
  }
}

int nbl_i4b_amx_dw_fits(const nbl_conv_geom *g) {
  /* (fewer channels: mostly padding in the tiles; a kernel smaller than its
   * stride skips pixels: the other paths, faster there) */
  return g->ns == 2 && g->group == 1 && g->d[0] == 1 && g->d[1] == 1 && g->C >= 4 && g->k[0] >= g->s[0] &&
         g->k[1] >= g->s[1];
}

nbl_status nbl_i4b_amx_conv_dw(nbl_kctx *ctx, const nbl_conv_geom *g, const nbl_i4b_src *dy, const nbl_i4b_src *x,
                               int64_t *dw64, int *done) {
  *done = 0;
  if (!nbl_i4b_amx_dw_fits(g) || (x->q && x->maxabs > 127) || dy->maxabs > NBL_I4B_MAX_CODE ||
      (!x->q && ((g->s[1] > 2 && !x->c8) || !(x->unit > 0.0f && x->unit <= FLT_MAX))) || (!dy->q && !dy->k8))
    return NBL_OK;
  const int64_t N = g->N, C = g->C, M = g->M, H = g->in[0], W = g->in[1], OH = g->out[0], OW = g->out[1];
  const int64_t sh = g->s[0], sw = g->s[1];
  const int64_t Hp = H + g->pb[0] + g->pe[0], Wp = W + g->pb[1] + g->pe[1];
  const int64_t Hq = (Hp + sh - 1) / sh, Wq = (Wp + sw - 1) / sw, Pq = Hq * Wq;
  if (OH <= 0 || OW <= 0 || (OH - 1) * sh + g->k[0] > Hp || (OW - 1) * sw + g->k[1] > Wp) return NBL_OK;
  const int64_t KP = (N * Pq + 63) & ~(int64_t)63, Cp = (C + 15) & ~(int64_t)15, nmb = (M + 15) / 16;
  const int64_t LX = KP + ((g->k[0] - 1) / sh) * Wq + (g->k[1] - 1) / sw + 64;
  /* the phases the taps read: rows 0 .. min(k, s) - 1, likewise columns */
  const int64_t phh = g->k[0] < sh ? g->k[0] : sh, pw = g->k[1] < sw ? g->k[1] : sw, nph = phh * pw;
  if ((double)nph * (double)Cp * (double)LX + 2.0 * (double)nmb * 16 * (double)KP > (double)(1 << 28))
    return NBL_OK; /* 256 MB: leave it to the chunked paths */
  const size_t nxq = (size_t)(nph * Cp * LX), nb = (size_t)(2 * nmb * 16 * KP);
  size_t cx = 0, cb = 0;
  int8_t *xq = scratch_get(nxq, &cx), *bq = scratch_get(nb, &cb);
  int64_t *offs = malloc(sizeof(int64_t) * (size_t)(H + 3 * pw));
  if (!xq || !bq || !offs) {
    scratch_put(xq, cx);
    scratch_put(bq, cb);
    free(offs);
    return NBL_ERR_OUT_OF_MEMORY;
  }
  /* the packing sweeps on ctx's threads: X's planes by channels, dY in the
   * VNNI layout by blocks of 16 channels x VN_CHUNK rows */
  dwp_job pj = {.g = g, .x = x, .dy = dy, .xq = xq, .bq = bq, .Cp = Cp, .LX = LX, .Wq = Wq, .Pq = Pq,
                .Hq = Hq, .KP = KP, .nmb = nmb, .phh = phh, .pw = pw, .nvc = (KP / 4 + VN_CHUNK - 1) / VN_CHUNK,
                .roff = offs, .coff = offs + H, .ciw0 = offs + H + pw, .ccnt = offs + H + 2 * pw};
  for (int64_t ih = 0; ih < H; ih++) { /* where each row and each column phase of X goes */
    const int64_t R = ih + g->pb[0];
    pj.roff[ih] = R % sh >= phh ? -1 : (R % sh) * pw * Cp * LX + (R / sh) * Wq;
  }
  for (int64_t px = 0; px < pw; px++) {
    pj.ciw0[px] = ((px - g->pb[1]) % sw + sw) % sw; /* first iw with (iw + pb) % sw == px */
    pj.coff[px] = px * Cp * LX + (pj.ciw0[px] + g->pb[1]) / sw;
    pj.ccnt[px] = pj.ciw0[px] < W ? (W - pj.ciw0[px] + sw - 1) / sw : 0;
  }
  run(ctx, Cp, dwp_x_part, &pj);
  free(offs);
  if (atomic_load(&pj.bad)) { /* X off its grid: the caller's codes decide */
    scratch_put(xq, cx);
    scratch_put(bq, cb);
    return NBL_OK;
  }
  run(ctx, nmb * pj.nvc, dwp_dyv_part, &pj);
  const int64_t nu = g->k_sz * (Cp / 16);
  dw_job j = {.g = g, .xq = xq, .bq = bq, .Cp = Cp, .nmb = nmb, .ncb = Cp / 16, .nu = nu, .npair = (nu + 1) / 2,
              .LX = LX, .KP = KP, .Wq = Wq, .sh = sh, .sw = sw, .pw = pw, .dw = dw64};
  run(ctx, nmb * j.npair, dw_part, &j);
  scratch_put(xq, cx);
  scratch_put(bq, cb);
  if (atomic_load(&j.failed)) return NBL_ERR_OUT_OF_MEMORY;
  atomic_fetch_add(&g_runs, 1);
  *done = 1;
  return NBL_OK;
}

/* ------------------------------------------------------------------ dX
 * dY in quads of channels, one image at a time in each worker's buffer (in
 * cache for the image's tiles): [Mqp][Hp2 * Wp2 + slack][4] (channel 4 mq +
 * b of padded pixel p at (mq * S4 + p) * 4 + b), lo planes then hi planes; A =
 * the transposed weights [cb][tap][chunk][16 c][KB * 4 bytes of m]. With
 * strides, dX is split by output phase (ih % sh, iw % sw): the phase's
 * pixels (a, b), ih = a sh + py, take the taps kh = py + pb - sh dh (any
 * integer dh), from dY's row a + dh: a stride-1 correlation of dY with the
 * phase's taps. A tile of dX^T: [16 c][16 pixels q] (q = a * Wp2 + b over
 * the padded width, b >= the phase's width wasted) = sum over the phase's
 * taps and chunks of A [16 c][4 KB] x B [KB quads][16 pixels x 4] (rows S4
 * * 4 bytes apart, from q + (dh + T) * Wp2 + dw + L). */

typedef struct dx_phase {
  int64_t py, px, Ha, Wa, nsteps;
  int64_t *aoff, *boff;
} dx_phase;

/* dY's padded quad planes of image n (dxq_part), at the start of dq: zeros
 * around the rows split_quad writes */
typedef struct dxq_job {
  const nbl_conv_geom *g;
  const nbl_i4b_src *dy;
  int8_t *dq;
  int64_t Mq, S4, Pimg, PL, Wp2, T, Lp, Hp2;
} dxq_job;

typedef struct dx_job {
  const nbl_conv_geom *g;
  dxq_job q; /* each worker's image of dY (q.dq: its own buffer) */
  const int8_t *wa;
  int64_t Wp2, Pimg, S4, PL, KB, ncb, nph, wa_cb_stride;
  int64_t nqp; /* a phase's pixels in the image buffer: the largest Ha * Wp2, rounded up to 32 */
  int sum32;   /* lo + 256 hi, the exact sum, fits int32 (the bound of the codes) */
  const dx_phase *ph;
  tilecfg cfg;
  const nbl_i4b_conv_out *out;
  _Atomic int failed; /* a worker's image buffer could not be allocated */
} dx_job;

static void dxq_part(const dxq_job *j, int64_t n0, int64_t n1);

/* The tiles of dX^T for channel block cb, pixels [q0, q0 + 16) of phase pi:
 * lo, hi [16 c][16 q] int32 -> the image buffers, buf [phase][C][nqp]
 * (float, as dX: (float)(acc * dx_scale)) and abuf (the int64 sums; NULL:
 * not kept). Whole aligned rows: the pixels past a phase's width land in
 * the buffer's padding, dx_emit leaves them. */
PACK_FN static void dx_put(const dx_job *j, float *buf, int64_t *abuf, int64_t pi, int64_t q0, int64_t cb,
                           const int32_t *lo, const int32_t *hi) {
  const int64_t C = j->g->C;
  const __m512d sc = _mm512_set1_pd(j->out->dx_scale), k256 = _mm512_set1_pd(256.0);
  for (int64_t cc = 0; cc < 16 && cb * 16 + cc < C; cc++) {
    const int64_t o = (pi * C + cb * 16 + cc) * j->nqp + q0;
    const __m512i l = _mm512_load_si512(lo + cc * 16), h = _mm512_load_si512(hi + cc * 16);
    __m512d a0, a1; /* the exact sums in double (integers: either way the same value) */
    if (j->sum32) {
      const __m512i s = _mm512_add_epi32(l, _mm512_slli_epi32(h, 8));
      a0 = _mm512_cvtepi32_pd(_mm512_castsi512_si256(s));
      a1 = _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(s, 1));
    } else {
      a0 = _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(h)), k256,
                           _mm512_cvtepi32_pd(_mm512_castsi512_si256(l)));
      a1 = _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(h, 1)), k256,
                           _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(l, 1)));
    }
    if (buf)
      _mm512_store_ps(buf + o, _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(_mm512_mul_pd(a0, sc))),
                                                  _mm512_cvtpd_ps(_mm512_mul_pd(a1, sc)), 1));
    if (abuf)
      for (int r = 0; r < 16; r++) abuf[o + r] = (int64_t)lo[cc * 16 + r] + 256 * (int64_t)hi[cc * 16 + r];
  }
}

/* Image n of dX from its buffers (dx_put): row ih of channel c takes phase
 * row (ih % sh, ih / sh), column iw the phase (.., iw % sw) at iw / sw;
 * phases without taps give zeros. Unit strides: rows copied; column
 * stride 2: two phase rows interleaved. */
PACK_FN static void dx_emit(const dx_job *j, int64_t n, const float *buf, const int64_t *abuf) {
  const nbl_conv_geom *g = j->g;
  const int64_t C = g->C, H = g->in[0], W = g->in[1], sh = g->s[0], sw = g->s[1], Wp2 = j->Wp2, nqp = j->nqp;
  const __m512i ilo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i ihi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  for (int64_t c = 0; c < C; c++)
    for (int64_t ih = 0, py = 0, a = 0; ih < H; ih++, py = py + 1 == sh ? (a++, 0) : py + 1) { /* py = ih % sh, a = ih / sh */
      const int64_t orow = ((n * C + c) * H + ih) * W;
      if (abuf) { /* the exact sums (tests): element by element */
        for (int64_t iw = 0; iw < W; iw++) {
          const int64_t pi = py * sw + iw % sw;
          j->out->dx_acc[orow + iw] = j->ph[pi].nsteps ? abuf[(pi * C + c) * nqp + a * Wp2 + iw / sw] : 0;
        }
      }
      if (!j->out->dx) continue;
      float *d = j->out->dx + orow;
      if (sw == 1) {
        const float *src = j->ph[py].nsteps ? buf + (py * C + c) * nqp + a * Wp2 : NULL;
        for (int64_t i = 0; i < W; i += 16) {
          const __mmask16 k = (__mmask16)(W - i >= 16 ? 0xffff : (1u << (W - i)) - 1);
          _mm512_mask_storeu_ps(d + i, k, src ? _mm512_maskz_loadu_ps(k, src + i) : _mm512_setzero_ps());
        }
      } else if (sw == 2) { /* out[2 b] = phase 0's b, out[2 b + 1] = phase 1's b */
        const float *s0 = j->ph[py * 2].nsteps ? buf + (py * 2 * C + c) * nqp + a * Wp2 : NULL;
        const float *s1 = j->ph[py * 2 + 1].nsteps ? buf + ((py * 2 + 1) * C + c) * nqp + a * Wp2 : NULL;
        for (int64_t i = 0; i < W; i += 32) {
          const int64_t b = i / 2, m0 = (W - i + 1) / 2, m1 = (W - i) / 2;
          const __mmask16 k0 = (__mmask16)(m0 >= 16 ? 0xffff : (1u << m0) - 1);
          const __mmask16 k1 = (__mmask16)(m1 >= 16 ? 0xffff : (1u << m1) - 1);
          const __m512 v0 = s0 ? _mm512_maskz_loadu_ps(k0, s0 + b) : _mm512_setzero_ps();
          const __m512 v1 = s1 ? _mm512_maskz_loadu_ps(k1, s1 + b) : _mm512_setzero_ps();
          const int64_t r = W - i;
          _mm512_mask_storeu_ps(d + i, (__mmask16)(r >= 16 ? 0xffff : (1u << r) - 1),
                                _mm512_permutex2var_ps(v0, ilo, v1));
          if (r > 16)
            _mm512_mask_storeu_ps(d + i + 16, (__mmask16)(r - 16 >= 16 ? 0xffff : (1u << (r - 16)) - 1),
                                  _mm512_permutex2var_ps(v0, ihi, v1));
        }
      } else {
        for (int64_t iw = 0; iw < W; iw++) {
          const int64_t pi = py * sw + iw % sw;
          d[iw] = j->ph[pi].nsteps ? buf[(pi * C + c) * nqp + a * Wp2 + iw / sw] : 0.0f;
        }
      }
    }
}

/* Four tiles c[i] = sum over steps of A(s) x B_i(s): one A (16 rows, lda),
 * four B (KB rows S4 * 4 bytes apart, at b_i + boff[s]) */
AMX_FN static void k1x4(const int8_t *a, int64_t lda, const int8_t *const b[4], int64_t ldb, int64_t n,
                        const int64_t *aoff, const int64_t *boff, int32_t *c) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t s = 0; s < n; s++) {
    const int64_t bo = boff[s];
    _tile_loadd(4, a + aoff[s], lda);
    _tile_loadd(5, b[0] + bo, ldb);
    _tile_loadd(6, b[1] + bo, ldb);
    _tile_dpbssd(0, 4, 5);
    _tile_loadd(7, b[2] + bo, ldb);
    _tile_dpbssd(1, 4, 6);
    _tile_loadd(5, b[3] + bo, ldb);
    _tile_dpbssd(2, 4, 7);
    _tile_dpbssd(3, 4, 5);
  }
  _tile_stored(0, c, 64);
  _tile_stored(1, c + 256, 64);
  _tile_stored(2, c + 512, 64);
  _tile_stored(3, c + 768, 64);
}

AMX_FN static void dx_config(const tilecfg *cfg) {
  __asm__ volatile("" : : "r"(cfg) : "memory"); /* the configuration's stores happen first */
  _tile_loadconfig(cfg);
}

static void dx_part(void *arg, int64_t n0, int64_t n1) {
  dx_job *j = arg;
  const int64_t lda = j->KB * 4, ldb = j->S4 * 4, C = j->g->C;
  int32_t c[4 * 256] __attribute__((aligned(64)));
  const size_t nbuf = (size_t)(j->nph * C * j->nqp);
  size_t cbuf = 0, cabuf = 0;
  size_t cdq = 0;
  float *buf = j->out->dx ? scratch_get(sizeof(float) * nbuf, &cbuf) : NULL;
  int64_t *abuf = j->out->dx_acc ? scratch_get(sizeof(int64_t) * nbuf, &cabuf) : NULL;
  int8_t *dq = scratch_get((size_t)(2 * j->PL), &cdq);
  if ((j->out->dx && !buf) || (j->out->dx_acc && !abuf) || !dq) {
    scratch_put(buf, cbuf);
    scratch_put(abuf, cabuf);
    scratch_put(dq, cdq);
    atomic_store(&j->failed, 1);
    return;
  }
  memset(dq, 0, (size_t)(2 * j->PL)); /* the slack past the image and the padding quads stay zero */
  dxq_job q = j->q;
  q.dq = dq;
  dx_config(&j->cfg);
  for (int64_t n = n0; n < n1; n++) {
    dxq_part(&q, n, n + 1); /* the image's dY, in cache for its tiles */
    const int8_t *lo = dq, *hi = lo + j->PL;
    for (int64_t pi = 0; pi < j->nph; pi++) {
      const dx_phase *f = &j->ph[pi];
      const int64_t nq = f->Ha * j->Wp2;
      if (f->nsteps == 0) continue; /* no tap reaches these pixels: zeros (dx_emit) */
      if (j->ncb == 1) { /* one channel block: (lo, hi) x two pixel blocks */
        for (int64_t q0 = 0; q0 < nq; q0 += 32) {
          const int8_t *b[4] = {lo + q0 * 4, hi + q0 * 4, lo + (q0 + 16) * 4, hi + (q0 + 16) * 4};
          k1x4(j->wa, lda, b, ldb, f->nsteps, f->aoff, f->boff, c);
          dx_put(j, buf, abuf, pi, q0, 0, c, c + 256);
          dx_put(j, buf, abuf, pi, q0 + 16, 0, c + 512, c + 768);
        }
      } else { /* two channel blocks x (lo, hi) */
        const int64_t wsz = j->wa_cb_stride;
        for (int64_t q0 = 0; q0 < nq; q0 += 16)
          for (int64_t cb = 0; cb < j->ncb; cb += 2) {
            const int64_t cb1 = cb + 1 < j->ncb ? cb + 1 : cb;
            k2x2(j->wa + cb * wsz, j->wa + cb1 * wsz, lda, lo + q0 * 4, hi + q0 * 4, ldb, f->nsteps, f->aoff, 0,
                 f->boff, 0, c);
            dx_put(j, buf, abuf, pi, q0, cb, c, c + 256);
            if (cb1 != cb) dx_put(j, buf, abuf, pi, q0, cb1, c + 512, c + 768);
          }
      }
    }
    dx_emit(j, n, buf, abuf);
  }
  amx_release();
  scratch_put(buf, cbuf);
  scratch_put(abuf, cabuf);
  scratch_put(dq, cdq);
}



static void dxq_part(const dxq_job *j, int64_t n0, int64_t n1) {
  const int64_t M = j->g->M, OH = j->g->out[0], OW = j->g->out[1], Wp2 = j->Wp2, T = j->T, Lp = j->Lp;
  const int64_t R = Wp2 - Lp - OW, B = j->Hp2 - T - OH;
  for (int64_t n = n0; n < n1; n++)
    for (int64_t mq = 0; mq < j->Mq; mq++) {
      int8_t *img = j->dq + mq * j->S4 * 4;
      for (int p = 0; p < 2; p++, img += j->PL) {
        if (Lp || R) { /* the whole image (in cache; then the rows): one call, not two per row */
          memset(img, 0, (size_t)(j->Pimg * 4));
          continue;
        }
        memset(img, 0, (size_t)(T * Wp2 * 4));
        memset(img + (T + OH) * Wp2 * 4, 0, (size_t)(B * Wp2 * 4));
      }
      for (int64_t oh = 0; oh < OH; oh++) {
        int8_t *lo = j->dq + (mq * j->S4 + (oh + T) * Wp2 + Lp) * 4;
        const int16_t *r[4];
        const int8_t *r8[4];
        for (int b = 0; b < 4; b++) {
          const int64_t at = ((n * M + 4 * mq + b) * OH + oh) * OW;
          r[b] = 4 * mq + b < M && j->dy->q ? j->dy->q + at : NULL;
          r8[b] = 4 * mq + b < M && !j->dy->q ? j->dy->k8 + at : NULL;
        }
        split_quad(lo, lo + j->PL, j->dy->q ? r : NULL, j->dy->q ? NULL : r8, j->dy->t16, OW);
      }
    }
}

int nbl_i4b_amx_dx_fits(const nbl_conv_geom *g) {
  return g->ns == 2 && g->group == 1 && g->d[0] == 1 && g->d[1] == 1;
}

nbl_status nbl_i4b_amx_conv_dx(nbl_kctx *ctx, const nbl_conv_geom *g, const nbl_i4b_src *dy, const int16_t *w,
                               int32_t w_max, const nbl_i4b_conv_out *out, int *done) {
  *done = 0;
  const int32_t dy_max = dy->maxabs;
  if (!nbl_i4b_amx_dx_fits(g) || w_max > 127 || dy_max > NBL_I4B_MAX_CODE || (!dy->q && !dy->k8)) return NBL_OK;
  const int64_t N = g->N, C = g->C, M = g->M, H = g->in[0], W = g->in[1], OH = g->out[0], OW = g->out[1];
  if (N <= 0 || C <= 0 || M <= 0 || H <= 0 || W <= 0 || OH <= 0 || OW <= 0) return NBL_OK;
  const int64_t KH = g->k[0], KW = g->k[1], sh = g->s[0], sw = g->s[1], nph = sh * sw;
  const int64_t Mq = (M + 3) / 4, KB = Mq < 16 ? Mq : 16, nchunk = (Mq + KB - 1) / KB, Mqp = nchunk * KB;
  const int64_t ncb = (C + 15) / 16;
  if (KH * KW * nchunk * KB * 4 > 64 * KSTEPS) return NBL_OK; /* one int32 sum per output */
  /* dY rows a + dh for a in [0, Ha), dh = (py + pb - kh) / sh: padding T above, below up to Hp2
   * (the phases' taps and offsets: nbl_i4b_phase_axis, shared with the VNNI phases) */
  nbl_i4b_phase_axis ah = {0}, aw = {0};
  if (nbl_i4b_phase_axis_init(&ah, sh, KH, 1, g->pb[0], OH, H) ||
      nbl_i4b_phase_axis_init(&aw, sw, KW, 1, g->pb[1], OW, W)) {
    nbl_i4b_phase_axis_free(&ah);
    nbl_i4b_phase_axis_free(&aw);
    return NBL_ERR_OUT_OF_MEMORY;
  }
  const int64_t T = ah.pad, Lp = aw.pad, Hp2 = ah.ext, Wp2 = aw.ext;
  const int64_t Pimg = Hp2 * Wp2;
  const int64_t S4 = Pimg + Wp2 + 64 + KW, PL = Mqp * S4 * 4; /* one image; slack: the reads past it */
  if (2.0 * (double)PL > (double)(1 << 28)) {
    nbl_i4b_phase_axis_free(&ah);
    nbl_i4b_phase_axis_free(&aw);
    return NBL_OK;
  }
  const size_t wsz = (size_t)(ncb * KH * KW * nchunk * 16 * KB * 4);
  size_t cwa = 0;
  int8_t *wa = scratch_get(wsz, &cwa);
  int64_t *offs = malloc(sizeof(int64_t) * (size_t)(2 * KH * KW * nchunk + 1));
  dx_phase *ph = malloc(sizeof(dx_phase) * (size_t)nph);
  if (!wa || !offs || !ph) {
    scratch_put(wa, cwa);
    free(offs);
    free(ph);
    nbl_i4b_phase_axis_free(&ah);
    nbl_i4b_phase_axis_free(&aw);
    return NBL_ERR_OUT_OF_MEMORY;
  }
  memset(wa, 0, wsz);
  /* each phase's steps: its taps x chunks (every tap in exactly one phase) */
  int64_t used = 0;
  for (int64_t py = 0; py < sh; py++)
    for (int64_t px = 0; px < sw; px++) {
      dx_phase *f = &ph[py * sw + px];
      f->py = py, f->px = px, f->Ha = py < H ? (H - py + sh - 1) / sh : 0, f->Wa = px < W ? (W - px + sw - 1) / sw : 0;
      f->aoff = offs + used, f->nsteps = ah.nt[py] * aw.nt[px] * nchunk;
      f->boff = f->aoff + f->nsteps;
      int64_t s = 0;
      for (int64_t th = 0; th < ah.nt[py]; th++)
        for (int64_t tw = 0; tw < aw.nt[px]; tw++) {
          const int64_t kh = ah.kt[py * KH + th], kw = aw.kt[px * KW + tw];
          const int64_t dh = ah.ot[py * KH + th], dw = aw.ot[px * KW + tw];
          for (int64_t ch = 0; ch < nchunk; ch++, s++) {
            f->aoff[s] = ((kh * KW + kw) * nchunk + ch) * 16 * KB * 4;
            f->boff[s] = ch * KB * S4 * 4 + ((dh + T) * Wp2 + dw + Lp) * 4;
          }
        }
      used += 2 * f->nsteps;
    }
  nbl_i4b_phase_axis_free(&ah);
  nbl_i4b_phase_axis_free(&aw);
  /* A of (cb, tap, chunk): row cc, byte e: channel m = chunk * 4 KB + e, W[m][c][tap] */
  for (int64_t cb = 0; cb < ncb; cb++)
    for (int64_t t = 0; t < KH * KW; t++)
      for (int64_t ch = 0; ch < nchunk; ch++) {
        int8_t *a = wa + ((cb * KH * KW + t) * nchunk + ch) * 16 * KB * 4;
        for (int64_t cc = 0; cc < 16 && cb * 16 + cc < C; cc++)
          for (int64_t e = 0; e < KB * 4 && ch * KB * 4 + e < M; e++)
            a[cc * KB * 4 + e] = (int8_t)w[((ch * KB * 4 + e) * C + cb * 16 + cc) * KH * KW + t];
      }
  int64_t nqp = 0, maxsteps = 0; /* the image buffers' phase size; the longest sum */
  for (int64_t pi = 0; pi < nph; pi++) {
    if (ph[pi].nsteps && ph[pi].Ha * Wp2 > nqp) nqp = ph[pi].Ha * Wp2;
    if (ph[pi].nsteps > maxsteps) maxsteps = ph[pi].nsteps;
  }
  dx_job j = {.g = g, .q = {.g = g, .dy = dy, .Mq = Mq, .S4 = S4, .Pimg = Pimg, .PL = PL, .Wp2 = Wp2, .T = T,
                           .Lp = Lp, .Hp2 = Hp2},
              .wa = wa, .Wp2 = Wp2, .Pimg = Pimg, .S4 = S4, .PL = PL, .KB = KB, .ncb = ncb,
              .nph = nph, .ph = ph, .wa_cb_stride = KH * KW * nchunk * 16 * KB * 4, .out = out,
              .nqp = (nqp + 31) & ~(int64_t)31,
              .sum32 = (double)maxsteps * (double)(KB * 4) * ((double)dy_max + 128.0) * (double)w_max <=
                       (double)INT32_MAX};
  j.cfg.palette = 1;
  for (int i = 0; i < 4; i++) j.cfg.colsb[i] = 64, j.cfg.rows[i] = 16; /* C */
  /* A: 16 rows of 4 KB bytes; B: KB rows of 64 (k1x4: tile 4 A, 5-7 B; k2x2: 4-5 A, 6-7 B) */
  j.cfg.colsb[4] = (uint16_t)(KB * 4), j.cfg.rows[4] = 16;
  j.cfg.colsb[5] = (uint16_t)(j.ncb == 1 ? 64 : KB * 4), j.cfg.rows[5] = (uint8_t)(j.ncb == 1 ? KB : 16);
  for (int i = 6; i < 8; i++) j.cfg.colsb[i] = 64, j.cfg.rows[i] = (uint8_t)KB;
  run(ctx, N, dx_part, &j);
  scratch_put(wa, cwa);
  free(offs);
  free(ph);
  if (atomic_load(&j.failed)) return NBL_ERR_OUT_OF_MEMORY;
  atomic_fetch_add(&g_runs, 1);
  *done = 1;
  return NBL_OK;
}

/* ------------------------------------------------------------------ the forward Conv
 * y = fl(sx sw) * acc + bias, acc = sum cx * cw over the taps: x's codes
 * (QuantizeInt4's handed over, c = q - z, or recovered from the floats as
 * int4_coded_conv.c does: c = rint(x / sx), sx * c == x; int4_amx_codes.c)
 * in quads of channels over X's stride-phase planes,
 * [Cq][phase][N * Hq * Wq + slack][4] (padded pixel (R, Q) at phase (R % sh,
 * Q % sw), pixel (R / sh) * Wq + Q / sw); outputs over the phase grid, q =
 * oh * Wq + ow (ow >= OW wasted); tap (kh, kw) reads its phase from q + (kh
 * / sh) * Wq + kw / sw. A tile of Y^T: [16 m][16 q] = sum over taps and
 * chunks of A [16 m][4 KB c] (weights) x B [KB quads][16 pixels x 4]. The
 * codes must be -128..127 (s8; other codes: the VNNI path). */

typedef struct fw_job {
  const nbl_conv_geom *g;
  const float *x;
  const int8_t *xk; /* X's QuantizeInt4 codes (NULL: from x), zero point xz */
  int xz;
  float sx, sc;
  const float *bias;
  float *y;
  int32_t *acc;
  int8_t *xq;
  const int8_t *wa;
  int64_t Cq, Hq, Wq, Pq, PS, nph, pw, phh, KB, nmb, nsteps, wstride;
  const int64_t *aoff, *boff;
  tilecfg cfg;
  _Atomic int bad; /* a value off the grid or a code past -128..127 */
} fw_job;

/* the tiles of Y^T for m block mb, outputs [q0, q0 + 16) of image n */
PACK_FN static void fw_store(const fw_job *j, int64_t n, int64_t q0, int64_t mb, const int32_t *t) {
  const nbl_conv_geom *g = j->g;
  const int64_t OH = g->out[0], OW = g->out[1], P = g->out_sz;
  uint32_t valid = 0;
  int64_t first = -1, oh = q0 / j->Wq, ow = q0 % j->Wq;
  for (int r = 0; r < 16 && oh < OH; r++) {
    if (ow < OW) {
      valid |= 1u << r;
      if (first < 0) first = oh * OW + ow;
    }
    if (++ow == j->Wq) ow = 0, oh++;
  }
  if (!valid) return;
  const __mmask16 packed = (__mmask16)((1u << __builtin_popcount(valid)) - 1);
  const __m512 vs = _mm512_set1_ps(j->sc);
  for (int64_t mm = 0; mm < 16 && mb * 16 + mm < g->M; mm++) {
    const int64_t m = mb * 16 + mm, o = (n * g->M + m) * P + first;
    const __m512i a = _mm512_load_si512(t + mm * 16);
    if (j->y) {
      const __m512 f = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(a), vs),
                                     _mm512_set1_ps(j->bias ? j->bias[m] : 0.0f));
      _mm512_mask_storeu_ps(j->y + o, packed, valid == 0xffff ? f : _mm512_maskz_compress_ps((__mmask16)valid, f));
    }
    if (j->acc)
      _mm512_mask_storeu_epi32(j->acc + o, packed, valid == 0xffff ? a : _mm512_maskz_compress_epi32((__mmask16)valid, a));
  }
}

/* Image n's codes into its part of the planes (zeros around). 0, or 1 off
 * the grid. */
static int fw_pack(fw_job *j, int64_t n) {
  const nbl_conv_geom *g = j->g;
  const int64_t C = g->C, H = g->in[0], W = g->in[1], sh = g->s[0], sw = g->s[1];
  for (int64_t cq = 0; cq < j->Cq; cq++)
    for (int64_t ph = 0; ph < j->nph; ph++) memset(j->xq + ((cq * j->nph + ph) * j->PS + n * j->Pq) * 4, 0, (size_t)(4 * j->Pq));
  for (int64_t cq = 0; cq < j->Cq; cq++)
    for (int64_t ih = 0; ih < H; ih++) {
      const int64_t R = ih + g->pb[0];
      if (R % sh >= j->phh) continue;
      const float *r[4];
      const int8_t *rk[4];
      for (int b = 0; b < 4; b++) {
        const int64_t at = ((n * C + 4 * cq + b) * H + ih) * W;
        r[b] = 4 * cq + b < C ? j->x + at : NULL;
        rk[b] = 4 * cq + b < C && j->xk ? j->xk + at : NULL;
      }
      int8_t *base = j->xq + ((cq * j->nph + (R % sh) * j->pw) * j->PS + n * j->Pq + (R / sh) * j->Wq) * 4;
      int8_t *d0 = base + g->pb[1] * 4, *d1 = NULL;
      if (sw != 1) { /* column Q = iw + pb: phase Q % 2 at Q / 2 */
        const int64_t a = g->pb[1] / 2;
        int8_t *p0 = base + a * 4, *p1 = j->pw > 1 ? base + (j->PS + a) * 4 : NULL;
        d0 = g->pb[1] % 2 == 0 ? p0 : p1, d1 = g->pb[1] % 2 == 0 ? p1 : p0 + 4; /* even iw: phase 1; odd: phase 0, a + 1 */
      }
      const int bad = j->xk ? nbl_i4b_quad_k8(d0, d1, sw, rk, W, j->xz) : nbl_i4b_quad_f(d0, d1, sw, r, W, j->sx);
      if (bad) return 1;
    }
  return 0;
}

static void fw_part(void *arg, int64_t n0, int64_t n1) {
  fw_job *j = arg;
  const nbl_conv_geom *g = j->g;
  const int64_t lda = j->KB * 4, ldb = j->nph * j->PS * 4, nq = g->out[0] * j->Wq;
  int32_t c[4 * 256] __attribute__((aligned(64)));
  dx_config(&j->cfg);
  for (int64_t n = n0; n < n1 && !atomic_load(&j->bad); n++) {
    if (fw_pack(j, n)) {
      atomic_store(&j->bad, 1);
      break;
    }
    const int8_t *xb = j->xq + n * j->Pq * 4;
    if (j->nmb == 1)
      for (int64_t q0 = 0; q0 < nq; q0 += 64) {
        const int8_t *b[4] = {xb + q0 * 4, xb + (q0 + 16) * 4, xb + (q0 + 32) * 4, xb + (q0 + 48) * 4};
        k1x4(j->wa, lda, b, ldb, j->nsteps, j->aoff, j->boff, c);
        for (int h = 0; h < 4 && q0 + 16 * h < nq; h++) fw_store(j, n, q0 + 16 * h, 0, c + 256 * h);
      }
    else
      for (int64_t q0 = 0; q0 < nq; q0 += 32)
        for (int64_t mb = 0; mb < j->nmb; mb += 2) {
          const int64_t mb1 = mb + 1 < j->nmb ? mb + 1 : mb;
          k2x2(j->wa + mb * j->wstride, j->wa + mb1 * j->wstride, lda, xb + q0 * 4, xb + (q0 + 16) * 4, ldb,
               j->nsteps, j->aoff, 0, j->boff, 0, c);
          fw_store(j, n, q0, mb, c);
          if (q0 + 16 < nq) fw_store(j, n, q0 + 16, mb, c + 256);
          if (mb1 != mb) {
            fw_store(j, n, q0, mb1, c + 512);
            if (q0 + 16 < nq) fw_store(j, n, q0 + 16, mb1, c + 768);
          }
        }
  }
  amx_release();
}

nbl_status nbl_i4b_amx_conv_forward(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, float sx,
                                    const int8_t *xk, int xz, const int8_t *w8, float sc, const float *bias, float *y,
                                    int32_t *acc, int *done) {
  *done = 0;
  if (g->ns != 2 || g->group != 1 || g->d[0] != 1 || g->d[1] != 1 || g->C < 4 || g->s[1] > 2) return NBL_OK;
  const int64_t N = g->N, C = g->C, M = g->M, H = g->in[0], W = g->in[1], OH = g->out[0], OW = g->out[1];
  if (N <= 0 || M <= 0 || H <= 0 || W <= 0 || OH <= 0 || OW <= 0 || !(sx > 0.0f)) return NBL_OK;
  const int64_t KH = g->k[0], KW = g->k[1], sh = g->s[0], sw = g->s[1];
  const int64_t Hp = H + g->pb[0] + g->pe[0], Wp = W + g->pb[1] + g->pe[1];
  if ((OH - 1) * sh + KH > Hp || (OW - 1) * sw + KW > Wp) return NBL_OK;
  const int64_t Hq = (Hp + sh - 1) / sh, Wq = (Wp + sw - 1) / sw, Pq = Hq * Wq;
  const int64_t phh = KH < sh ? KH : sh, pw = KW < sw ? KW : sw, nph = phh * pw;
  const int64_t Cq = (C + 3) / 4, KB = Cq < 16 ? Cq : 16, nchunk = (Cq + KB - 1) / KB, Cqp = nchunk * KB;
  const int64_t nmb = (M + 15) / 16, nsteps = KH * KW * nchunk;
  if (nsteps * KB * 4 * 128 * 128 > (int64_t)INT32_MAX) return NBL_OK; /* int32 sums */
  const int64_t PS = N * Pq + ((KH - 1) / sh + 2) * Wq + 64 + KW; /* slack: reads past the last image */
  if ((double)Cqp * (double)nph * (double)PS * 4.0 > (double)(1 << 28)) return NBL_OK;
  const int64_t wstride = nsteps * 16 * KB * 4;
  size_t cxq = 0, cwa = 0;
  int8_t *xq = scratch_get((size_t)(Cqp * nph * PS * 4), &cxq), *wa = scratch_get((size_t)(nmb * wstride), &cwa);
  int64_t *aoff = malloc(sizeof(int64_t) * (size_t)(2 * nsteps));
  if (!xq || !wa || !aoff) {
    scratch_put(xq, cxq);
    scratch_put(wa, cwa);
    free(aoff);
    return NBL_ERR_OUT_OF_MEMORY;
  }
  int64_t *boff = aoff + nsteps;
  /* the slack past each plane's images, and the planes of the padding quads
   * (Cq .. Cqp), stay zero; each image's part is written by fw_pack */
  for (int64_t p = 0; p < Cqp * nph; p++) memset(xq + (p * PS + N * Pq) * 4, 0, (size_t)((PS - N * Pq) * 4));
  if (Cqp > Cq) memset(xq + Cq * nph * PS * 4, 0, (size_t)((Cqp - Cq) * nph * PS * 4));
  memset(wa, 0, (size_t)(nmb * wstride));
  for (int64_t kh = 0; kh < KH; kh++)
    for (int64_t kw = 0; kw < KW; kw++)
      for (int64_t ch = 0; ch < nchunk; ch++) {
        const int64_t s = (kh * KW + kw) * nchunk + ch;
        aoff[s] = s * 16 * KB * 4;
        boff[s] = ((ch * KB * nph + (kh % sh) * pw + kw % sw) * PS + (kh / sh) * Wq + kw / sw) * 4;
      }
  for (int64_t mb = 0; mb < nmb; mb++)
    for (int64_t t = 0; t < KH * KW; t++)
      for (int64_t ch = 0; ch < nchunk; ch++) {
        int8_t *a = wa + mb * wstride + (t * nchunk + ch) * 16 * KB * 4;
        for (int64_t mm = 0; mm < 16 && mb * 16 + mm < M; mm++)
          for (int64_t e = 0; e < KB * 4 && ch * KB * 4 + e < C; e++)
            a[mm * KB * 4 + e] = w8[((mb * 16 + mm) * C + ch * KB * 4 + e) * KH * KW + t];
      }
  fw_job j = {.g = g, .x = x, .xk = xk, .xz = xz, .sx = sx, .sc = sc, .bias = bias, .y = y, .acc = acc, .xq = xq, .wa = wa, .Cq = Cq,
              .Hq = Hq, .Wq = Wq, .Pq = Pq, .PS = PS, .nph = nph, .pw = pw, .phh = phh, .KB = KB, .nmb = nmb,
              .nsteps = nsteps, .wstride = wstride, .aoff = aoff, .boff = boff};
  j.cfg.palette = 1;
  for (int i = 0; i < 4; i++) j.cfg.colsb[i] = 64, j.cfg.rows[i] = 16; /* C */
  j.cfg.colsb[4] = (uint16_t)(KB * 4), j.cfg.rows[4] = 16;
  j.cfg.colsb[5] = (uint16_t)(nmb == 1 ? 64 : KB * 4), j.cfg.rows[5] = (uint8_t)(nmb == 1 ? KB : 16);
  for (int i = 6; i < 8; i++) j.cfg.colsb[i] = 64, j.cfg.rows[i] = (uint8_t)KB;
  run(ctx, N, fw_part, &j);
  scratch_put(xq, cxq);
  scratch_put(wa, cwa);
  free(aoff);
  if (atomic_load(&j.bad)) return NBL_OK; /* the other path decides (off the grid, or wider codes) */
  atomic_fetch_add(&g_runs, 1);
  *done = 1;
  return NBL_OK;
}

#else /* no AMX: the callers take the other paths */

int nbl_i4b_amx_dw_fits(const nbl_conv_geom *g) {
  (void)g;
  return 0;
}

int nbl_i4b_amx_dx_fits(const nbl_conv_geom *g) {
  (void)g;
  return 0;
}

nbl_status nbl_i4b_amx_conv_dw(nbl_kctx *ctx, const nbl_conv_geom *g, const nbl_i4b_src *dy, const nbl_i4b_src *x,
                               int64_t *dw64, int *done) {
  (void)ctx, (void)g, (void)dy, (void)x, (void)dw64;
  *done = 0;
  return NBL_OK;
}

nbl_status nbl_i4b_amx_conv_dx(nbl_kctx *ctx, const nbl_conv_geom *g, const nbl_i4b_src *dy, const int16_t *w,
                               int32_t w_max, const nbl_i4b_conv_out *out, int *done) {
  (void)ctx, (void)g, (void)dy, (void)w, (void)w_max, (void)out;
  *done = 0;
  return NBL_OK;
}

nbl_status nbl_i4b_amx_conv_forward(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, float sx,
                                    const int8_t *xk, int xz, const int8_t *w8, float sc, const float *bias, float *y,
                                    int32_t *acc, int *done) {
  (void)ctx, (void)g, (void)x, (void)sx, (void)xk, (void)xz, (void)w8, (void)sc, (void)bias, (void)y, (void)acc;
  *done = 0;
  return NBL_OK;
}

#endif
