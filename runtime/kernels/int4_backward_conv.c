/* int4_backward_conv.c - the backward products of Conv and Gemm/MatMul in
 * integers (contracts in int4_backward.h), where the AMX tiles do not take
 * them: in 2-D, dX by stride phases over channel-pair planes (conv_dx_phases)
 * and dW of unit strides over X's padded planes (conv_dw_wide); otherwise
 * im2col / col2im over int16 codes in chunks of images, as ConvGrad's float
 * path (runtime/ops/grad_conv.c) arranges them,
 *   dW_g^T [K, Mg] += col [K, L] x dyg^T [L, Mg]   (A = col: rows of pixels)
 *   col [K, L]      = W_g^T [K, Mg] x dyg [Mg, L]  (then col2im into dX)
 * with K = C/group * taps and L the pixels of the chunk's images side by
 * side; dW sums in int64 over chunks, dX's col2im in int32 (int64 when
 * Mg * taps * max|w| * max|dy| could pass INT32_MAX). */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/kernels/int4_backward.h"
#include "runtime/kernels/kdebug.h"

#if defined(__x86_64__)
#define I4B_X86 1
#include <immintrin.h>
#else
#define I4B_X86 0
#endif

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

/* One tap's plane of im2col, OH rows of OW codes at d: row oh is input row
 * ih = ih0 + oh * sh of plane (H rows of Wd codes; 0 outside), read at
 * columns ow * sw + off for ow in [ow0, ow1), 0 elsewhere. */
typedef struct tap_plane {
  int64_t OH, OW, ih0, sh, H, Wd, off, sw, ow0, ow1;
} tap_plane;

static inline __attribute__((always_inline)) void plane_body(int16_t *restrict d, const int16_t *restrict plane,
                                                             const tap_plane *t) {
  for (int64_t oh = 0; oh < t->OH; oh++, d += t->OW) {
    const int64_t ih = t->ih0 + oh * t->sh;
    if (ih < 0 || ih >= t->H) {
      for (int64_t ow = 0; ow < t->OW; ow++) d[ow] = 0;
      continue;
    }
    const int16_t *row = plane + ih * t->Wd + t->off;
    for (int64_t ow = 0; ow < t->ow0; ow++) d[ow] = 0;
    for (int64_t ow = t->ow0; ow < t->ow1; ow++) d[ow] = row[ow * t->sw];
    for (int64_t ow = t->ow1; ow < t->OW; ow++) d[ow] = 0;
  }
}

/* plane_body compiled with the loop vectorizer's full cost model (-O2's
 * keeps these short copies scalar): SSE2 for the C variant, AVX2 for its own
 * (GCC; other compilers compile them as the rest). */
#if defined(__GNUC__) && !defined(__clang__)
#define I4B_VECTORIZE __attribute__((optimize("O3")))
#else
#define I4B_VECTORIZE
#endif
I4B_VECTORIZE static void plane_c(int16_t *d, const int16_t *plane, const tap_plane *t) {
  plane_body(d, plane, t);
}
#if I4B_X86
/* d[q] = src[2q] for q < n (int16): eight at a time, the low halves of the
 * 32-bit lanes sign-extended and packed; the loads stay within src[0, 2n - 1)
 * (the last group overlapping, the high halves of the 16 ending at
 * src[2n - 2]); rows below 9 one by one. */
__attribute__((target("avx2"))) static void gather2_i16(const int16_t *src, int64_t n, int16_t *d) {
  int64_t q = 0;
  if (n >= 9) {
    for (; q + 9 <= n; q += 8) {
      const __m128i a = _mm_loadu_si128((const __m128i *)(const void *)(src + 2 * q));
      const __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(src + 2 * q + 8));
      _mm_storeu_si128((__m128i *)(void *)(d + q), _mm_packs_epi32(_mm_srai_epi32(_mm_slli_epi32(a, 16), 16),
                                                                  _mm_srai_epi32(_mm_slli_epi32(b, 16), 16)));
    }
    if (q < n) {
      const int16_t *e = src + 2 * n - 17;
      const __m128i a = _mm_loadu_si128((const __m128i *)(const void *)e);
      const __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(e + 8));
      _mm_storeu_si128((__m128i *)(void *)(d + n - 8), _mm_packs_epi32(_mm_srai_epi32(a, 16), _mm_srai_epi32(b, 16)));
    }
    return;
  }
  for (; q < n; q++) d[q] = src[2 * q];
}

/* plane_body with the valid run of each row as one copy (stride 1) or
 * gather2_i16 (stride 2); other strides as plane_body. */
I4B_VECTORIZE __attribute__((target("avx2"))) static void plane_256(int16_t *d, const int16_t *plane,
                                                                      const tap_plane *t) {
  if (t->sw > 2) {
    plane_body(d, plane, t);
    return;
  }
  for (int64_t oh = 0; oh < t->OH; oh++, d += t->OW) {
    const int64_t ih = t->ih0 + oh * t->sh;
    if (ih < 0 || ih >= t->H || t->ow1 <= t->ow0) {
      memset(d, 0, sizeof(int16_t) * (size_t)t->OW);
      continue;
    }
    const int16_t *row = plane + ih * t->Wd + t->off;
    if (t->ow0 > 0) memset(d, 0, sizeof(int16_t) * (size_t)t->ow0);
    if (t->sw == 1) memcpy(d + t->ow0, row + t->ow0, sizeof(int16_t) * (size_t)(t->ow1 - t->ow0));
    else gather2_i16(row + 2 * t->ow0, t->ow1 - t->ow0, d + t->ow0);
    if (t->ow1 < t->OW) memset(d + t->ow1, 0, sizeof(int16_t) * (size_t)(t->OW - t->ow1));
  }
}
#endif

#if I4B_X86
/* AVX-512, strides 1 and 2 (others in C): rows of up to 32 outputs from
 * one masked load (two and a vpermt2w for stride 2; lanes outside [ow0,
 * ow1) are neither read nor kept), longer rows in blocks of 32. */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void plane_512(int16_t *d, const int16_t *plane,
                                                                                const tap_plane *t) {
  if (t->sw > 2) {
    plane_c(d, plane, t);
    return;
  }
  static const int16_t even[32] __attribute__((aligned(64))) = {0,  2,  4,  6,  8,  10, 12, 14, 16, 18, 20,
                                                               22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 42,
                                                               44, 46, 48, 50, 52, 54, 56, 58, 60, 62};
  const __m512i ev = _mm512_load_si512(even), z = _mm512_setzero_si512();
  for (int64_t o = 0; o < t->OW; o += 32) {
    const int64_t lo = t->ow0 > o ? t->ow0 - o : 0, hi = t->ow1 < o + 32 ? t->ow1 - o : 32; /* valid lanes */
    const uint32_t keep =
        hi > lo ? (uint32_t)(((uint64_t)1 << hi) - 1) & ~(uint32_t)(((uint64_t)1 << lo) - 1) : 0;
    const __mmask32 st = (__mmask32)(t->OW - o >= 32 ? 0xffffffffu : ((uint32_t)1 << (t->OW - o)) - 1);
    /* stride 2: input lane 2i for output lane i in [lo, hi) */
    const uint64_t in2 = hi > lo ? 0x5555555555555555ull & (2 * hi >= 64 ? ~0ull : ((uint64_t)1 << (2 * hi)) - 1) &
                                       ~(((uint64_t)1 << (2 * lo)) - 1)
                                 : 0;
    int16_t *dd = d + o;
    for (int64_t oh = 0; oh < t->OH; oh++, dd += t->OW) {
      const int64_t ih = t->ih0 + oh * t->sh;
      __m512i v = z;
      if (ih >= 0 && ih < t->H) {
        const int16_t *row = plane + ih * t->Wd + t->off;
        if (t->sw == 1) {
          v = _mm512_maskz_loadu_epi16((__mmask32)keep, row + o);
        } else {
          __m512i a = _mm512_maskz_loadu_epi16((__mmask32)in2, row + 2 * o);
          __m512i b = _mm512_maskz_loadu_epi16((__mmask32)(in2 >> 32), row + 2 * o + 32);
          v = _mm512_permutex2var_epi16(a, ev, b);
        }
      }
      _mm512_mask_storeu_epi16(dd, st, v);
    }
  }
}

/* sum of n int16 codes (exact: int32 lanes over at most 2^16 elements, then int64) */
__attribute__((target("avx512f,avx512bw"))) static int64_t sum_512(const int16_t *p, int64_t n) {
  int64_t s = 0, i = 0;
  while (i + 32 <= n) {
    __m512i acc = _mm512_setzero_si512();
    const int64_t end = i + 65536 < n ? i + 65536 : n;
    for (; i + 32 <= end; i += 32)
      acc = _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_loadu_si512(p + i), _mm512_set1_epi16(1)));
    s += _mm512_reduce_add_epi32(acc);
  }
  for (; i < n; i++) s += p[i];
  return s;
}
#endif

static int64_t sum_i16(nbl_i4b_isa isa, const int16_t *p, int64_t n) {
#if I4B_X86
  if (isa == NBL_I4B_AVX512) return sum_512(p, n);
#endif
  int64_t s = 0;
  for (int64_t i = 0; i < n; i++) s += p[i];
  return s;
}

/* Small planes (unit strides, AVX-512): the plane padded to the extent the
 * taps read, Hq x Wq (zeros around), each tap's whole plane of outputs
 * gathered from the 64 codes of its first window row on (OH * Wq <= 64) by
 * one two-register permute (vpermt2w) and written by two masked stores, in
 * place of a masked load and store per output row: ResNet's 7 x 7 layers. */
#define TINY_KW 8      /* widest kernel */
#define TINY_BUF 1024  /* codes of the padded plane, with the last window's 64 */
typedef struct tiny_tab {
  int on;
  int64_t Hq, Wq;
  int16_t idx[TINY_KW][64]; /* output i of tap column kw: its window position */
} tiny_tab;

/* The tables of g, t->on = 0 when the small-plane path does not take it. */
static void tiny_init(nbl_i4b_isa isa, const nbl_conv_geom *g, tiny_tab *t) {
  t->on = 0;
  if (isa != NBL_I4B_AVX512 || g->ns != 2 || g->s[0] != 1 || g->s[1] != 1 || g->k[1] > TINY_KW) return;
  const int64_t OH = g->out[0], OW = g->out[1];
  t->Hq = OH + (g->k[0] - 1) * g->d[0];
  t->Wq = OW + (g->k[1] - 1) * g->d[1];
  if (OH * t->Wq > 64 || t->Hq * t->Wq + 64 > TINY_BUF) return;
  for (int64_t kw = 0; kw < g->k[1]; kw++)
    for (int64_t i = 0; i < 64; i++)
      t->idx[kw][i] = (int16_t)(i < OH * OW ? i / OW * t->Wq + i % OW + kw * g->d[1] : 0);
  t->on = 1;
}

#if I4B_X86
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void tiny_512(const tiny_tab *t, const nbl_conv_geom *g,
                                                                             int64_t Cg, const int16_t *x, int16_t *col,
                                                                             int64_t ld) {
  const int64_t H = g->in[0], Wd = g->in[1], KH = g->k[0], KW = g->k[1], Hq = t->Hq, Wq = t->Wq;
  const int64_t n = g->out_sz, c0 = g->pb[1] > 0 ? g->pb[1] : 0;
  const int64_t c1 = Wd + g->pb[1] < Wq ? Wd + g->pb[1] : Wq; /* the padded columns that hold input */
  const __mmask32 m0 = n >= 32 ? 0xffffffffu : (__mmask32)((1u << n) - 1);
  const __mmask32 m1 = n > 32 ? (n >= 64 ? 0xffffffffu : (__mmask32)((1u << (n - 32)) - 1)) : 0;
  int16_t P[TINY_BUF];
  for (int64_t ch = 0; ch < Cg; ch++) {
    const int16_t *plane = x + ch * H * Wd;
    memset(P, 0, sizeof(int16_t) * (size_t)(Hq * Wq + 64));
    for (int64_t r = 0; r < Hq && c1 > c0; r++) {
      const int64_t ih = r - g->pb[0];
      if (ih >= 0 && ih < H)
        memcpy(P + r * Wq + c0, plane + ih * Wd + c0 - g->pb[1], sizeof(int16_t) * (size_t)(c1 - c0));
    }
    for (int64_t kh = 0; kh < KH; kh++) {
      const int16_t *w = P + kh * g->d[0] * Wq;
      const __m512i a = _mm512_loadu_si512(w), b = _mm512_loadu_si512(w + 32);
      for (int64_t kw = 0; kw < KW; kw++) {
        int16_t *dst = col + ((ch * KH + kh) * KW + kw) * ld;
        _mm512_mask_storeu_epi16(dst, m0, _mm512_permutex2var_epi16(a, _mm512_loadu_si512(t->idx[kw]), b));
        if (m1)
          _mm512_mask_storeu_epi16(dst + 32, m1,
                                   _mm512_permutex2var_epi16(a, _mm512_loadu_si512(t->idx[kw] + 32), b));
      }
    }
  }
}
#endif

/* Columns [0, out_sz) of rows [Cg * k_sz] (stride ld) of col: the
 * im2col of one image's group x [Cg, in...]. tap: tap_table (NULL for 2-D,
 * which walks rows); tt: the small-plane tables (or NULL). */
static void im2col_i16(nbl_i4b_isa isa, const nbl_conv_geom *g, int64_t Cg, const int16_t *x, int16_t *col,
                       int64_t ld, const int64_t *tap, const tiny_tab *tt) {
#if I4B_X86
  if (tt && tt->on && !tap) {
    tiny_512(tt, g, Cg, x, col, ld);
    return;
  }
#else
  (void)tt;
#endif
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
        const tap_plane t = {OH, OW, kh * dh - g->pb[0], sh, H, Wd, off, sw, ow0, ow1};
#if I4B_X86
        if (isa == NBL_I4B_AVX512) {
          plane_512(dst, plane, &t);
          continue;
        }
        if (isa == NBL_I4B_AVX2) {
          plane_256(dst, plane, &t);
          continue;
        }
#endif
        plane_c(dst, plane, &t);
      }
}

/* col2im: add columns [0, out_sz) of col rows (stride ld) into acc [Cg, in...];
 * CT the column type, AT the accumulator type. */
#define DEF_COL2IM(NAME, CT, AT)                                                                   \
  static void NAME(const nbl_conv_geom *g, int64_t Cg, const CT *restrict col, int64_t ld,        \
                   AT *restrict acc, const int64_t *tap) {                                         \
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
            AT *restrict row = plane + ih * Wd + off;                                              \
            const CT *restrict s = src + oh * OW;                                                  \
            if (sw == 1)                                                                           \
              for (int64_t ow = ow0; ow < ow1; ow++) row[ow] += s[ow];                             \
            else                                                                                   \
              for (int64_t ow = ow0; ow < ow1; ow++) row[ow * sw] += s[ow];                        \
          }                                                                                        \
        }                                                                                          \
  }
DEF_COL2IM(col2im_32, int32_t, int32_t)
DEF_COL2IM(col2im_64, int64_t, int64_t)

#if I4B_X86
/* col2im_32 for 2-D geometries with column stride 1 or 2 (others: C):
 * each col row segment (one output row of one tap) is added to its input
 * row 16 lanes at a time, spread over every other lane for stride 2. */
__attribute__((target("avx512f,avx512vl"))) static void col2im_32_512(const nbl_conv_geom *g, int64_t Cg, const int32_t *col,
                                                              int64_t ld, int32_t *acc) {
  const int64_t H = g->in[0], Wd = g->in[1], OH = g->out[0], OW = g->out[1];
  const int64_t KH = g->k[0], KW = g->k[1], sh = g->s[0], sw = g->s[1], dh = g->d[0], dw = g->d[1];
  for (int64_t ch = 0; ch < Cg; ch++)
    for (int64_t kh = 0; kh < KH; kh++)
      for (int64_t kw = 0; kw < KW; kw++) {
        const int32_t *src = col + ((ch * KH + kh) * KW + kw) * ld;
        int32_t *plane = acc + ch * H * Wd;
        int64_t off = kw * dw - g->pb[1], ow0 = 0, ow1 = OW;
        while (ow0 < OW && ow0 * sw + off < 0) ow0++;
        while (ow1 > ow0 && (ow1 - 1) * sw + off >= Wd) ow1--;
        for (int64_t oh = 0; oh < OH; oh++) {
          int64_t ih = oh * sh - g->pb[0] + kh * dh;
          if (ih < 0 || ih >= H) continue;
          int32_t *row = plane + ih * Wd + off;
          const int32_t *s = src + oh * OW;
          if (sw == 1) {
            for (int64_t ow = ow0; ow < ow1; ow += 16) {
              const __mmask16 m = (__mmask16)(ow1 - ow >= 16 ? 0xffff : (1u << (ow1 - ow)) - 1);
              __m512i a = _mm512_maskz_loadu_epi32(m, row + ow), v = _mm512_maskz_loadu_epi32(m, s + ow);
              _mm512_mask_storeu_epi32(row + ow, m, _mm512_add_epi32(a, v));
            }
          } else { /* sw == 2: 8 outputs ow.. cover input lanes 2 * ow.. (even lanes) */
            for (int64_t ow = ow0; ow < ow1; ow += 8) {
              const int64_t c = ow1 - ow >= 8 ? 8 : ow1 - ow;
              const __mmask16 me = (__mmask16)(0x5555u & ((1u << (2 * c)) - 1));
              __m512i v = _mm512_maskz_expand_epi32(me, _mm512_castsi256_si512(
                                                            _mm256_maskz_loadu_epi32((__mmask8)((1u << c) - 1), s + ow)));
              __m512i a = _mm512_maskz_loadu_epi32(me, row + 2 * ow);
              _mm512_mask_storeu_epi32(row + 2 * ow, me, _mm512_add_epi32(a, v));
            }
          }
        }
      }
}

__attribute__((target("avx512f"))) static void rescale_32_512(const int32_t *acc, int64_t n, double s, float *y) {
  const __m512d vs = _mm512_set1_pd(s);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_cvtepi32_pd(_mm256_loadu_si256((const __m256i *)(acc + i))), vs)));
  for (; i < n; i++) y[i] = (float)((double)acc[i] * s);
}
#endif

/* y[i] = (float)(acc[i] * s), acc int32 or int64 (exact in double). */
static void rescale_32(const int32_t *restrict acc, int64_t n, double s, float *restrict y) {
  for (int64_t i = 0; i < n; i++) y[i] = (float)((double)acc[i] * s);
}
static void rescale_64(const int64_t *restrict acc, int64_t n, double s, float *restrict y) {
  for (int64_t i = 0; i < n; i++) y[i] = (float)((double)acc[i] * s);
}

static void run(nbl_kctx *ctx, int64_t n, void (*fn)(void *, int64_t, int64_t), void *arg) {
  if (n <= 0) return;
  if (ctx) nbl_parallel_for(ctx, n, 1, fn, arg);
  else fn(arg, 0, n);
}

/* A GEMM split over threads by row blocks (rows) or by 32-column blocks. */
typedef struct gemm_job {
  nbl_i4b_isa isa;
  const int16_t *A;
  const int16_t *const *rows; /* or A's rows by pointer */
  int64_t lda, M, N, kchunk;
  const nbl_i4b_panels *B;
  nbl_i4b_sink sink;
  int by_cols;
} gemm_job;

static void gemm_part(void *arg, int64_t b0, int64_t b1) {
  const gemm_job *j = arg;
  const int64_t m0 = j->by_cols ? 0 : b0 * NBL_I4B_MR, n0 = j->by_cols ? b0 * 32 : 0;
  const int64_t m1 = j->by_cols ? j->M : b1 * NBL_I4B_MR < j->M ? b1 * NBL_I4B_MR : j->M, n1 = j->by_cols ? b1 * 32 : j->N;
  if (j->rows) nbl_i4b_gemm_rows(j->isa, j->rows, m0, m1, n0, n1, j->B, j->kchunk, &j->sink);
  else nbl_i4b_gemm(j->isa, j->A, j->lda, m0, m1, n0, n1, j->B, j->kchunk, &j->sink);
}

static int gemm_by_cols(const gemm_job *j) { return j->M < 4 * NBL_I4B_MR && j->N > j->M; }

static void gemm_par(nbl_kctx *ctx, gemm_job *j) {
  j->by_cols = gemm_by_cols(j);
  run(ctx, j->by_cols ? (j->N + 31) / 32 : (j->M + NBL_I4B_MR - 1) / NBL_I4B_MR, gemm_part, j);
}

/* ------------------------------------------------------------------ dW */

typedef struct img_job {
  nbl_i4b_isa isa;
  const nbl_conv_geom *g;
  int64_t Cg, n0, cnt, gr, ld;
  int by_ch; /* split by channels (else by images) */
  const int64_t *tap;
  const tiny_tab *tt;
  const int16_t *x;
  int16_t *col;
} img_job;

/* Items [i0, i1) of the chunk's im2col: channels (by_ch: their rows of col,
 * all images; each thread then writes the rows that its share of a GEMM
 * split by rows reads, none from the other core's cache) or images (their
 * columns, all channels). */
static void im2col_part(void *arg, int64_t i0, int64_t i1) {
  const img_job *j = arg;
  const nbl_conv_geom *g = j->g;
  for (int64_t i = i0; i < i1; i++)
    if (j->by_ch)
      for (int64_t b = 0; b < j->cnt; b++)
        im2col_i16(j->isa, g, 1, j->x + ((j->n0 + b) * g->C + j->gr * j->Cg + i) * g->in_sz,
                   j->col + i * g->k_sz * j->ld + b * g->out_sz, j->ld, j->tap, j->tt);
    else
      im2col_i16(j->isa, g, j->Cg, j->x + ((j->n0 + i) * g->C + j->gr * j->Cg) * g->in_sz, j->col + i * g->out_sz,
                 j->ld, j->tap, j->tt);
}

/* dW [M][Cg * k_sz] += over chunks of images dY_g x A^T in int64, A's rows
 * the im2col rows of X over the chunk's pixels (pixels along the rows), B
 * dY_g transposed into panels (the smaller operand is the one moved;
 * measured no slower than the other orientation even for 6 or 16
 * channels). A comes either from im2col (col) or, for unit strides, from
 * X's padded planes read in place (xp: X's codes padded, [C][N][Hp][Wp]
 * with zeros around, dY laid out over the same padded pixels with zeros at
 * the positions that are no output; the im2col row of (c, tap) over a
 * chunk is the padded planes themselves from the tap's offset, handed to
 * the GEMM by pointer, and the padded positions add 0).
 *
 * An image's pixel grid: `plane` positions (padded planes: in rows of Wp;
 * im2col: out_sz). par (padded planes): each chunk laid out, packed and
 * multiplied whole by one thread (several chunks a thread: no serial
 * layout between parallel products) into its own int64 sums, added to dw64
 * at the end (exact: the same sums in any order); else the chunks one by
 * one, the im2col and each product split over the threads. */
typedef struct dwk_job {
  nbl_kctx *ctx;
  nbl_i4b_isa isa;
  const nbl_conv_geom *g;
  const int16_t *dy;
  const int16_t *xp;                     /* the padded planes, or NULL: im2col */
  const int16_t *x;                      /* (im2col) X's codes */
  const int64_t *tap;                    /* (im2col) tap_table, NULL in 2-D */
  const tiny_tab *tt;                    /* (im2col) the small-plane tables */
  int64_t nb, plane, Wp, kchunk;
  int64_t *dw64;
  int par;
  _Atomic int oom;
} dwk_job;

static void dwk_chunks(void *arg, int64_t c0, int64_t c1) {
  dwk_job *j = arg;
  const nbl_conv_geom *g = j->g;
  const int64_t Cg = g->C / g->group, Mg = g->M / g->group, K = Cg * g->k_sz, OH = g->out[0], OW = g->out[1];
  const int64_t plane = j->plane, Wp = j->Wp, nw = g->M * K, Lpmax = (j->nb * plane + 1) & ~(int64_t)1;
  int16_t *dyg = malloc(sizeof(int16_t) * (size_t)(Mg * Lpmax));
  const int16_t **rows = j->xp ? malloc(sizeof(*rows) * (size_t)(K ? K : 1)) : NULL;
  int16_t *col = j->xp ? NULL : malloc(sizeof(int16_t) * (size_t)(K * Lpmax));
  int64_t *part = j->par ? calloc((size_t)(nw ? nw : 1), sizeof(int64_t)) : j->dw64;
  nbl_i4b_panels B = {0};
  if (!dyg || (j->xp ? !rows : !col) || !part) c1 = c0, atomic_store(&j->oom, 1);
  for (int64_t ci = c0; ci < c1; ci++) {
    const int64_t n0 = ci * j->nb, cnt = g->N - n0 < j->nb ? g->N - n0 : j->nb, L = cnt * plane;
    const int64_t Lp = (L + 1) & ~(int64_t)1;
    for (int64_t gr = 0; gr < g->group; gr++) {
      if (j->xp) memset(dyg, 0, sizeof(int16_t) * (size_t)(Mg * Lp)); /* the positions that are no output */
      for (int64_t m = 0; m < Mg; m++) {
        for (int64_t b = 0; b < cnt; b++) {
          const int16_t *src = j->dy + ((n0 + b) * g->M + gr * Mg + m) * g->out_sz;
          if (!j->xp) /* (any spatial rank) */
            memcpy(dyg + m * Lp + b * plane, src, sizeof(int16_t) * (size_t)g->out_sz);
          else
            for (int64_t oh = 0; oh < OH; oh++)
              memcpy(dyg + m * Lp + b * plane + oh * Wp, src + oh * OW, sizeof(int16_t) * (size_t)OW);
        }
        if (Lp > L) dyg[m * Lp + L] = 0;
      }
      gemm_job gj = {.isa = j->isa, .M = K, .N = Mg, .kchunk = j->kchunk, .B = &B,
                     .sink = {.kind = NBL_I4B_ADD64, .c = part + gr * Mg * K, .ldc = K, .trans = 1}};
      if (j->xp) {
        for (int64_t r = 0; r < K; r++) {
          const int64_t c = r / g->k_sz, t = r % g->k_sz, kh = t / g->k[1], kw = t % g->k[1];
          rows[r] = j->xp + ((gr * Cg + c) * g->N + n0) * plane + kh * g->d[0] * Wp + kw * g->d[1];
        }
        gj.rows = rows;
      } else {
        gj.A = col, gj.lda = Lp;
        img_job ij = {.isa = j->isa, .g = g, .Cg = Cg, .n0 = n0, .cnt = cnt, .gr = gr, .ld = Lp, .tap = j->tap,
                      .tt = j->tt, .x = j->x, .col = col, .by_ch = !j->par && !gemm_by_cols(&gj)};
        if (j->par) im2col_part(&ij, 0, cnt);
        else run(j->ctx, ij.by_ch ? Cg : cnt, im2col_part, &ij); /* as the GEMM splits its rows, or not */
        if (Lp > L)
          for (int64_t r = 0; r < K; r++) col[r * Lp + L] = 0;
      }
      if (nbl_i4b_panels_reserve(&B, Lp, Mg)) {
        atomic_store(&j->oom, 1);
        ci = c1;
        break;
      }
      nbl_i4b_pack(j->isa, dyg, 1, Lp, &B); /* B[p][m] = dyg[m][p] */
      if (j->par) gemm_part(&gj, 0, (K + NBL_I4B_MR - 1) / NBL_I4B_MR); /* (by rows, on this thread) */
      else gemm_par(j->ctx, &gj);
    }
  }
  if (j->par && part)
    for (int64_t i = 0; i < nw; i++) __atomic_fetch_add(&j->dw64[i], part[i], __ATOMIC_RELAXED);
  if (j->par) free(part);
  free(dyg);
  free(rows);
  free(col);
  nbl_i4b_panels_free(&B);
}

/* The chunks of dwk_job j (nb images each) on the threads: over padded
 * planes whole per thread where there are at least two a thread, else one
 * by one (im2col: always; measured 2-4 % slower whole per thread at two
 * threads on ResNet-8's strided and 7x7 layers, their chunks cut to a
 * quarter of the batch). */
static nbl_status dwk_run(nbl_kctx *ctx, dwk_job *j) {
  const nbl_conv_geom *g = j->g;
  const int64_t chunks = (g->N + j->nb - 1) / j->nb, threads = ctx && ctx->threads > 1 ? ctx->threads : 1;
  j->par = j->xp && threads > 1 && chunks >= 2 * threads;
  atomic_init(&j->oom, 0);
  if (j->par) run(ctx, chunks, dwk_chunks, j);
  else dwk_chunks(j, 0, chunks);
  return atomic_load(&j->oom) ? NBL_ERR_OUT_OF_MEMORY : NBL_OK;
}

/* dW through im2col, by chunks of about CHUNK_COLS pixels (and col within
 * CHUNK_CODES). */
static nbl_status conv_dw(nbl_kctx *ctx, nbl_i4b_isa isa, const nbl_conv_geom *g, const int64_t *tap,
                          const int16_t *dy, int32_t dy_max, const int16_t *x, int32_t x_max, int64_t *dw64) {
  const int64_t Cg = g->C / g->group, Mg = g->M / g->group, K = Cg * g->k_sz, osz = g->out_sz;
  int64_t nb = CHUNK_COLS / osz;
  if (nb * (K + Mg) * osz > CHUNK_CODES) nb = CHUNK_CODES / ((K + Mg) * osz);
  nb = nb < 1 ? 1 : nb > g->N ? g->N : nb;
  tiny_tab tt;
  tiny_init(isa, g, &tt);
  dwk_job j = {.ctx = ctx, .isa = isa, .g = g, .dy = dy, .x = x, .tap = tap, .tt = &tt, .nb = nb, .plane = osz,
               .kchunk = nbl_i4b_kchunk(x_max, dy_max), .dw64 = dw64};
  return dwk_run(ctx, &j);
}

typedef struct xpad_job {
  const nbl_conv_geom *g;
  const int16_t *x;
  int16_t *xp;
  int64_t Hp, Wp;
} xpad_job;

static void xpad_part(void *arg, int64_t b0, int64_t b1) { /* items: (c, n) planes */
  const xpad_job *j = arg;
  const nbl_conv_geom *g = j->g;
  const int64_t H = g->in[0], W = g->in[1], plane = j->Hp * j->Wp;
  for (int64_t it = b0; it < b1; it++) {
    const int64_t c = it / g->N, n = it % g->N;
    int16_t *d = j->xp + it * plane;
    memset(d, 0, sizeof(int16_t) * (size_t)plane);
    for (int64_t h = 0; h < H; h++)
      memcpy(d + (h + g->pb[0]) * j->Wp + g->pb[1], j->x + ((n * g->C + c) * H + h) * W, sizeof(int16_t) * (size_t)W);
  }
}

/* dW of unit strides (2-D) over X's padded planes (dwk_job), by chunks
 * of about CHUNK_COLS padded pixels. */
static nbl_status conv_dw_wide(nbl_kctx *ctx, nbl_i4b_isa isa, const nbl_conv_geom *g, const int16_t *dy,
                               int32_t dy_max, const int16_t *x, int32_t x_max, int64_t *dw64) {
  const int64_t Hp = g->in[0] + g->pb[0] + g->pe[0], Wp = g->in[1] + g->pb[1] + g->pe[1], plane = Hp * Wp;
  const int64_t slack = (g->k[0] - 1) * g->d[0] * Wp + (g->k[1] - 1) * g->d[1] + 64;
  int64_t nb = CHUNK_COLS / plane;
  nb = nb < 1 ? 1 : nb > g->N ? g->N : nb;
  int16_t *xp = malloc(sizeof(int16_t) * (size_t)(g->C * g->N * plane + slack));
  if (!xp) return NBL_ERR_OUT_OF_MEMORY;
  memset(xp + g->C * g->N * plane, 0, sizeof(int16_t) * (size_t)slack);
  xpad_job xj = {.g = g, .x = x, .xp = xp, .Hp = Hp, .Wp = Wp};
  run(ctx, g->C * g->N, xpad_part, &xj);
  dwk_job j = {.ctx = ctx, .isa = isa, .g = g, .dy = dy, .xp = xp, .nb = nb, .plane = plane, .Wp = Wp,
               .kchunk = nbl_i4b_kchunk(x_max, dy_max), .dw64 = dw64};
  const nbl_status st = dwk_run(ctx, &j);
  free(xp);
  return st;
}

/* ------------------------------------------------------------------ dX, strides 1 */

/* With unit strides dX is a convolution of dY (padded) with the flipped,
 * transposed kernel: dX_g [Cg][in] = W'_g [Cg][Mg * k_sz] x im2col'(dY_g),
 * W'[c][m * k_sz + t] = W[m][c][k_sz - 1 - t], im2col' that of geometry g2
 * (dY's dims as input, X's as output, pads (k - 1) * d - pads). One GEMM per
 * image and group, each output written once. */
typedef struct dx_job {
  const nbl_conv_geom *g, *g2;
  nbl_i4b_isa isa;
  int64_t Cg, Mg, K2, K2p;
  const int64_t *tap2;
  const int16_t *dy, *wf;
  int64_t kchunk;
  const nbl_i4b_conv_out *out;
  int failed;
} dx_job;

static void dx_direct_part(void *arg, int64_t n0, int64_t n1) {
  dx_job *j = arg;
  const nbl_conv_geom *g = j->g;
  const int64_t isz = g->in_sz;
  int16_t *col = malloc(sizeof(int16_t) * (size_t)(j->K2 * isz));
  nbl_i4b_panels B = {0};
  if (!col || nbl_i4b_panels_reserve(&B, j->K2, isz)) {
    free(col);
    nbl_i4b_panels_free(&B);
    j->failed = 1;
    return;
  }
  for (int64_t n = n0; n < n1; n++)
    for (int64_t gr = 0; gr < g->group; gr++) {
      im2col_i16(j->isa, j->g2, j->Mg, j->dy + (n * g->M + gr * j->Mg) * g->out_sz, col, isz, j->tap2, NULL);
      nbl_i4b_pack(j->isa, col, isz, 1, &B);
      const int64_t o = (n * g->C + gr * j->Cg) * isz;
      nbl_i4b_sink sk = j->out->dx_acc ? (nbl_i4b_sink){.kind = NBL_I4B_ADD64, .c = j->out->dx_acc + o, .ldc = isz}
                                       : (nbl_i4b_sink){.kind = NBL_I4B_SCALE_F32, .c = j->out->dx + o, .ldc = isz,
                                                        .scale = j->out->dx_scale};
      nbl_i4b_gemm(j->isa, j->wf + gr * j->Cg * j->K2p, j->K2p, 0, j->Cg, 0, isz, &B, j->kchunk, &sk);
      if (j->out->dx_acc && j->out->dx) rescale_64(j->out->dx_acc + o, j->Cg * isz, j->out->dx_scale, j->out->dx + o);
    }
  free(col);
  nbl_i4b_panels_free(&B);
}

static nbl_status conv_dx_direct(nbl_kctx *ctx, nbl_i4b_isa isa, const nbl_conv_geom *g, const int16_t *dy,
                                 int32_t dy_max, const int16_t *w, int32_t w_max, const nbl_i4b_conv_out *out) {
  const int64_t Cg = g->C / g->group, Mg = g->M / g->group, K2 = Mg * g->k_sz, K2p = (K2 + 1) & ~(int64_t)1;
  nbl_conv_geom g2 = *g;
  g2.C = g->M;
  g2.M = g->C;
  memcpy(g2.in, g->out, sizeof g2.in);
  memcpy(g2.out, g->in, sizeof g2.out);
  g2.in_sz = g->out_sz;
  g2.out_sz = g->in_sz;
  for (int i = 0; i < g->ns; i++) {
    g2.pb[i] = (g->k[i] - 1) * g->d[i] - g->pb[i];
    g2.pe[i] = (g->k[i] - 1) * g->d[i] - g->pe[i];
  }
  int64_t *tap2 = g->ns == 2 ? NULL : tap_table(&g2);
  int16_t *wf = malloc(sizeof(int16_t) * (size_t)(g->group * Cg * K2p));
  if ((g->ns != 2 && !tap2) || !wf) {
    free(tap2);
    free(wf);
    return NBL_ERR_OUT_OF_MEMORY;
  }
  for (int64_t gr = 0; gr < g->group; gr++)
    for (int64_t c = 0; c < Cg; c++) {
      int16_t *row = wf + (gr * Cg + c) * K2p;
      for (int64_t m = 0; m < Mg; m++)
        for (int64_t t = 0; t < g->k_sz; t++) row[m * g->k_sz + t] = w[((gr * Mg + m) * Cg + c) * g->k_sz + g->k_sz - 1 - t];
      if (K2p > K2) row[K2] = 0;
    }
  if (out->dx_acc) memset(out->dx_acc, 0, sizeof(int64_t) * (size_t)(g->N * g->C * g->in_sz));
  dx_job j = {.g = g, .g2 = &g2, .isa = isa, .Cg = Cg, .Mg = Mg, .K2 = K2, .K2p = K2p, .tap2 = tap2, .dy = dy,
              .wf = wf, .kchunk = nbl_i4b_kchunk(w_max, dy_max), .out = out};
  run(ctx, g->N, dx_direct_part, &j);
  free(tap2);
  free(wf);
  return j.failed ? NBL_ERR_OUT_OF_MEMORY : NBL_OK;
}

/* ------------------------------------------------------------------ dX, 2-D: stride phases over channel pairs */

/* dX of a 2-D convolution (any strides, dilations, pads, groups) split by
 * output phase (ih % sh, iw % sw) = (a, b): the phase's positions
 * (sh * i + a, sw * j + b) take the taps (kh, kw) with a + pb_h - kh * dh
 * and b + pb_w - kw * dw divisible by the strides, reading dY at (i + oh,
 * j + ow), oh = (a + pb_h - kh * dh) / sh, ow likewise: a unit-stride
 * correlation (a phase no tap reaches is zeros; unit strides: one phase,
 * the convolution of dY with the flipped kernel). An image's dY codes (one
 * group) are laid out once in channel pairs, the codes of channels 2q and
 * 2q + 1 side by side (vpdpwssd's operand), over planes of Hq x Wq padded
 * so that every tap of every phase reads inside them; the GEMM of a phase,
 * dX_phase [Cg][Hph * Wq] = A_phase [Cg][taps * Q pairs] x B, takes B's
 * pair row of (tap, q) straight from q's plane at the tap's offset
 * (nbl_i4b_gemm_pairs: no im2col, no packing), over the padded width
 * (columns j >= the phase's width computed and dropped); the valid columns
 * go to dX's phase positions. */
typedef nbl_i4b_phase_axis ph_axis;

typedef struct ph_job {
  const nbl_conv_geom *g;
  nbl_i4b_isa isa;
  int64_t Cg, Mg, Q, Hq, Wq, kchunk;
  const ph_axis *ah, *aw;
  const int16_t *dy;
  const int16_t *const *A;     /* per group * phase: [Cg][2 * taps * Q] */
  const int64_t *const *boff;  /* per phase: B's pair rows, code offsets in the pair planes */
  const nbl_i4b_conv_out *out;
  _Atomic int failed;
} ph_job;

/* One row of channel pairs: dst[ow] = (r0[ow], r1[ow]) as one 32-bit unit
 * (low half r0; r1 NULL: 0). */
static inline __attribute__((always_inline)) void pairs_row_body(uint32_t *restrict dst, const int16_t *restrict r0,
                                                                 const int16_t *restrict r1, int64_t OW) {
  if (r1)
    for (int64_t ow = 0; ow < OW; ow++) dst[ow] = (uint16_t)r0[ow] | (uint32_t)(uint16_t)r1[ow] << 16;
  else
    for (int64_t ow = 0; ow < OW; ow++) dst[ow] = (uint16_t)r0[ow];
}
typedef void (*pairs_row_fn)(uint32_t *, const int16_t *, const int16_t *, int64_t);
I4B_VECTORIZE static void pairs_row_c(uint32_t *dst, const int16_t *r0, const int16_t *r1, int64_t OW) {
  pairs_row_body(dst, r0, r1, OW);
}
#if I4B_X86
I4B_VECTORIZE __attribute__((target("avx2"))) static void pairs_row_256(uint32_t *dst, const int16_t *r0,
                                                                         const int16_t *r1, int64_t OW) {
  pairs_row_body(dst, r0, r1, OW);
}
/* AVX-512: 16 units at a time (the tail masked). */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void pairs_row_512(uint32_t *dst, const int16_t *r0,
                                                                                 const int16_t *r1, int64_t OW) {
  for (int64_t ow = 0; ow < OW; ow += 16) {
    const __mmask16 k = (__mmask16)(OW - ow >= 16 ? 0xffff : (1u << (OW - ow)) - 1);
    const __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, r0 + ow));
    const __m512i hi = r1 ? _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, r1 + ow)), 16)
                          : _mm512_setzero_si512();
    _mm512_mask_storeu_epi32(dst + ow, k, _mm512_or_si512(lo, hi));
  }
}
#endif

/* The pair planes' interior of one image and group: pp[q][(oh + pad_h) *
 * Wq + ow + pad_w] = (dy[2q][oh][ow], dy[2q + 1][oh][ow]) (past Mg: 0). */
static void pairs_planes(const ph_job *j, uint32_t *pp, const int16_t *dy) {
  pairs_row_fn row = pairs_row_c;
#if I4B_X86
  if (j->isa == NBL_I4B_AVX512) row = pairs_row_512;
  else if (j->isa == NBL_I4B_AVX2) row = pairs_row_256;
#endif
  const int64_t OH = j->g->out[0], OW = j->g->out[1], osz = OH * OW, plane = j->Hq * j->Wq;
  for (int64_t q = 0; q < j->Q; q++) {
    const int16_t *d0 = dy + 2 * q * osz, *d1 = 2 * q + 1 < j->Mg ? d0 + osz : NULL;
    for (int64_t oh = 0; oh < OH; oh++)
      row(pp + q * plane + (oh + j->ah->pad) * j->Wq + j->aw->pad, d0 + oh * OW, d1 ? d1 + oh * OW : NULL, OW);
  }
}

/* One row of dX from its column phases' rows src[b] (b < sw; NULL: a phase
 * no tap reaches, zeros): d[sw * q + b] = src[b][q] for sw * q + b < W. */
static void emit_row_c(float *d, const float *const *src, int64_t W, int64_t sw) {
  for (int64_t iw = 0; iw < W; iw++) {
    const float *s = src[iw % sw];
    d[iw] = s ? s[iw / sw] : 0.0f;
  }
}
#if I4B_X86
/* AVX-512, column strides 1 and 2 (two phase rows interleaved). */
__attribute__((target("avx512f"))) static void emit_row_512(float *d, const float *const *src, int64_t W,
                                                            int64_t sw) {
  const __m512i ilo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i ihi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  if (sw == 1) {
    for (int64_t i = 0; i < W; i += 16) {
      const __mmask16 k = (__mmask16)(W - i >= 16 ? 0xffff : (1u << (W - i)) - 1);
      _mm512_mask_storeu_ps(d + i, k, src[0] ? _mm512_maskz_loadu_ps(k, src[0] + i) : _mm512_setzero_ps());
    }
    return;
  }
  if (sw != 2) {
    emit_row_c(d, src, W, sw);
    return;
  }
  for (int64_t i = 0; i < W; i += 32) { /* d[i + 2l] = src[0][i/2 + l], d[i + 2l + 1] = src[1][i/2 + l] */
    const int64_t b = i / 2, m0 = (W - i + 1) / 2, m1 = (W - i) / 2, r = W - i;
    const __mmask16 k0 = (__mmask16)(m0 >= 16 ? 0xffff : (1u << m0) - 1);
    const __mmask16 k1 = (__mmask16)(m1 >= 16 ? 0xffff : (1u << m1) - 1);
    const __m512 v0 = src[0] ? _mm512_maskz_loadu_ps(k0, src[0] + b) : _mm512_setzero_ps();
    const __m512 v1 = src[1] ? _mm512_maskz_loadu_ps(k1, src[1] + b) : _mm512_setzero_ps();
    _mm512_mask_storeu_ps(d + i, (__mmask16)(r >= 16 ? 0xffff : (1u << r) - 1), _mm512_permutex2var_ps(v0, ilo, v1));
    if (r > 16)
      _mm512_mask_storeu_ps(d + i + 16, (__mmask16)(r - 16 >= 16 ? 0xffff : (1u << (r - 16)) - 1),
                            _mm512_permutex2var_ps(v0, ihi, v1));
  }
}
#endif

static void ph_part(void *arg, int64_t n0, int64_t n1) {
  ph_job *j = arg;
  const nbl_conv_geom *g = j->g;
  const ph_axis *ah = j->ah, *aw = j->aw;
  const int64_t H = g->in[0], W = g->in[1], isz = g->in_sz, Cg = j->Cg, Wq = j->Wq, plane = j->Hq * Wq;
  const int64_t sh = ah->s, sw = aw->s, np = sh * sw, ntmax = g->k_sz * j->Q;
  const int64_t slot = Cg * ((H + sh - 1) / sh) * Wq; /* one phase's outputs over the padded width */
  const int acc = j->out->dx_acc != NULL;
  /* the pair planes, 64 pairs of slack past the last (reads past a row's
   * end up to the last 32-column block; those columns are dropped) */
  uint32_t *pp = aligned_alloc(64, ((size_t)(j->Q * plane + Wq + 64) * sizeof(uint32_t) + 63) & ~(size_t)63);
  const int16_t **rows = malloc(sizeof(*rows) * (size_t)(ntmax ? ntmax : 1));
  void *scr = malloc((acc ? sizeof(int64_t) : sizeof(float)) * (size_t)(sw * slot + 1)); /* a row phase's column phases */
  const void **src = malloc(sizeof(*src) * (size_t)sw);
  const float **rp = malloc(sizeof(*rp) * (size_t)sw); /* one dX row's column-phase rows */
  if (!pp || !rows || !scr || !src || !rp) {
    j->failed = 1;
    n1 = n0;
  } else {
    memset(pp, 0, sizeof(uint32_t) * (size_t)(j->Q * plane + Wq + 64));
  }
  for (int64_t n = n0; n < n1; n++)
    for (int64_t gr = 0; gr < g->group; gr++) {
      const int16_t *dyg = j->dy + (n * g->M + gr * j->Mg) * g->out_sz;
      pairs_planes(j, pp, dyg);
      const int64_t o = (n * g->C + gr * Cg) * isz;
      for (int64_t a = 0; a < sh && a < H; a++) {
        const int64_t Hph = (H - a + sh - 1) / sh, cols = Hph * Wq;
        /* unit strides (one phase), floats: the sink drops the padded
         * columns on the way into dX, no scratch rows to copy out */
        const int direct = np == 1 && !acc && ah->nt[0] * aw->nt[0] > 0;
        for (int64_t b = 0; b < sw; b++) { /* phase (a, b) into slot b */
          const int64_t ph = a * sw + b, nt = ah->nt[a] * aw->nt[b];
          void *out = (char *)scr + (size_t)(b * slot) * (acc ? sizeof(int64_t) : sizeof(float));
          src[b] = nt && b < W ? out : NULL;
          if (!src[b]) continue;
          for (int64_t r = 0; r < nt * j->Q; r++) rows[r] = (const int16_t *)(const void *)pp + j->boff[ph][r];
          if (acc) memset(out, 0, sizeof(int64_t) * (size_t)(Cg * cols));
          nbl_i4b_sink sk = acc ? (nbl_i4b_sink){.kind = NBL_I4B_ADD64, .c = out, .ldc = cols}
                                : (nbl_i4b_sink){.kind = NBL_I4B_SCALE_F32, .c = out, .ldc = cols,
                                                 .scale = j->out->dx_scale};
          if (direct) sk.c = j->out->dx + o, sk.ldc = isz, sk.wq = Wq, sk.w = W;
          const int64_t Kp = 2 * nt * j->Q;
          nbl_i4b_gemm_pairs(j->isa, j->A[gr * np + ph], Kp, 0, Cg, 0, cols, rows, Kp, j->kchunk, &sk);
        }
        if (direct) continue;
        for (int64_t c = 0; c < Cg; c++) /* rows sh * i + a of dX: the column phases interleaved */
          for (int64_t i = 0; i < Hph; i++) {
            const int64_t d = o + c * isz + (sh * i + a) * W, si = c * cols + i * Wq;
            if (acc) {
              for (int64_t iw = 0; iw < W; iw++) {
                const int64_t *sv = src[iw % sw];
                const int64_t v = sv ? sv[si + iw / sw] : 0;
                j->out->dx_acc[d + iw] = v;
                if (j->out->dx) j->out->dx[d + iw] = (float)((double)v * j->out->dx_scale);
              }
              continue;
            }
            for (int64_t b = 0; b < sw; b++) rp[b] = src[b] ? (const float *)src[b] + si : NULL;
#if I4B_X86
            if (j->isa == NBL_I4B_AVX512) emit_row_512(j->out->dx + d, rp, W, sw);
            else
#endif
              emit_row_c(j->out->dx + d, rp, W, sw);
          }
      }
    }
  free(pp);
  free(rows);
  free(scr);
  free(src);
  free(rp);
}

int nbl_i4b_phase_axis_init(nbl_i4b_phase_axis *x, int64_t s, int64_t k, int64_t d, int64_t pb, int64_t n_out,
                            int64_t len) {
  x->s = s;
  x->nt = malloc(sizeof(int64_t) * (size_t)s);
  x->kt = malloc(sizeof(int64_t) * (size_t)(s * k));
  x->ot = malloc(sizeof(int64_t) * (size_t)(s * k));
  if (!x->nt || !x->kt || !x->ot) return -1;
  int64_t lo = 0, hi = n_out; /* dY positions read, [lo, hi) */
  for (int64_t p = 0; p < s; p++) {
    x->nt[p] = 0;
    const int64_t cnt = p < len ? (len - p + s - 1) / s : 0; /* the phase's dX positions */
    for (int64_t kk = 0; kk < k; kk++) {
      const int64_t t = p + pb - kk * d, r = ((t % s) + s) % s;
      if (r) continue;
      const int64_t off = (t - r) / s; /* exact */
      x->kt[p * k + x->nt[p]] = kk;
      x->ot[p * k + x->nt[p]++] = off;
      if (cnt > 0) {
        lo = off < lo ? off : lo;
        hi = off + cnt > hi ? off + cnt : hi;
      }
    }
  }
  x->pad = -lo;
  x->ext = hi - lo;
  return 0;
}

void nbl_i4b_phase_axis_free(nbl_i4b_phase_axis *x) {
  free(x->nt);
  free(x->kt);
  free(x->ot);
  x->nt = x->kt = x->ot = NULL;
}

static nbl_status conv_dx_phases(nbl_kctx *ctx, nbl_i4b_isa isa, const nbl_conv_geom *g, const int16_t *dy,
                                 int32_t dy_max, const int16_t *w, int32_t w_max, const nbl_i4b_conv_out *out) {
  const int64_t Cg = g->C / g->group, Mg = g->M / g->group, Q = (Mg + 1) / 2, KW = g->k[1];
  ph_axis ah = {0}, aw = {0};
  nbl_status st = NBL_OK;
  const int64_t np = g->s[0] * g->s[1];
  int16_t **A = calloc((size_t)(g->group * np), sizeof(*A));
  int64_t **boff = calloc((size_t)np, sizeof(*boff));
  if (!A || !boff || nbl_i4b_phase_axis_init(&ah, g->s[0], g->k[0], g->d[0], g->pb[0], g->out[0], g->in[0]) ||
      nbl_i4b_phase_axis_init(&aw, g->s[1], g->k[1], g->d[1], g->pb[1], g->out[1], g->in[1]))
    st = NBL_ERR_OUT_OF_MEMORY;
  const int64_t Hq = ah.ext, Wq = aw.ext;
  for (int64_t a = 0; !st && a < g->s[0]; a++)
    for (int64_t b = 0; !st && b < g->s[1]; b++) {
      const int64_t ph = a * g->s[1] + b, nt = ah.nt[a] * aw.nt[b];
      boff[ph] = malloc(sizeof(int64_t) * (size_t)(nt * Q + 1));
      if (!boff[ph]) {
        st = NBL_ERR_OUT_OF_MEMORY;
        break;
      }
      for (int64_t t = 0; t < nt; t++) { /* tap t = (th, tw) of the phase, then the channel pairs */
        const int64_t th = t / aw.nt[b], tw = t % aw.nt[b];
        const int64_t pos = (ah.ot[a * g->k[0] + th] + ah.pad) * Wq + aw.ot[b * KW + tw] + aw.pad;
        for (int64_t q = 0; q < Q; q++) boff[ph][t * Q + q] = 2 * (q * Hq * Wq + pos);
      }
      for (int64_t gr = 0; gr < g->group; gr++) {
        int16_t *Ap = A[gr * np + ph] = malloc(sizeof(int16_t) * (size_t)(Cg * 2 * nt * Q + 1));
        if (!Ap) {
          st = NBL_ERR_OUT_OF_MEMORY;
          break;
        }
        for (int64_t c = 0; c < Cg; c++)
          for (int64_t t = 0; t < nt; t++) {
            const int64_t kh = ah.kt[a * g->k[0] + t / aw.nt[b]], kw = aw.kt[b * KW + t % aw.nt[b]];
            for (int64_t e = 0; e < 2 * Q; e++)
              Ap[c * 2 * nt * Q + 2 * t * Q + e] =
                  e < Mg ? w[((gr * Mg + e) * Cg + c) * g->k_sz + kh * KW + kw] : 0;
          }
      }
    }
  if (!st) {
    ph_job j = {.g = g, .isa = isa, .Cg = Cg, .Mg = Mg, .Q = Q, .Hq = Hq, .Wq = Wq,
                .kchunk = nbl_i4b_kchunk(w_max, dy_max), .ah = &ah, .aw = &aw, .dy = dy,
                .A = (const int16_t *const *)A, .boff = (const int64_t *const *)boff, .out = out};
    run(ctx, g->N, ph_part, &j);
    if (j.failed) st = NBL_ERR_OUT_OF_MEMORY;
  }
  for (int64_t i = 0; A && i < g->group * np; i++) free(A[i]);
  for (int64_t i = 0; boff && i < np; i++) free(boff[i]);
  free(A);
  free(boff);
  nbl_i4b_phase_axis_free(&ah);
  nbl_i4b_phase_axis_free(&aw);
  return st;
}

/* ------------------------------------------------------------------ dX, other strides */

/* col [K, L] = W_g^T [K, Mg] x dY_g [Mg, L] for a chunk of images, then
 * col2im of each image into its dX, in int32 (int64 when `wide`). */
typedef struct c2i_job {
  nbl_i4b_isa isa;
  const nbl_conv_geom *g;
  int64_t Cg, L, n0, gr;
  const int64_t *tap;
  void *colx, *acc;
  int wide;
  const nbl_i4b_conv_out *out;
} c2i_job;

static void col2im_part(void *arg, int64_t b0, int64_t b1) {
  const c2i_job *j = arg;
  const nbl_conv_geom *g = j->g;
  const int64_t n_acc = j->Cg * g->in_sz;
  for (int64_t b = b0; b < b1; b++) {
    const int64_t o = ((j->n0 + b) * g->C + j->gr * j->Cg) * g->in_sz;
    if (j->wide) {
      int64_t *acc = j->out->dx_acc ? j->out->dx_acc + o : (int64_t *)j->acc + b * n_acc;
      memset(acc, 0, sizeof(int64_t) * (size_t)n_acc);
      col2im_64(g, j->Cg, (const int64_t *)j->colx + b * g->out_sz, j->L, acc, j->tap);
      if (j->out->dx) rescale_64(acc, n_acc, j->out->dx_scale, j->out->dx + o);
    } else {
      int32_t *acc = (int32_t *)j->acc + b * n_acc;
      const int32_t *colb = (const int32_t *)j->colx + b * g->out_sz;
      memset(acc, 0, sizeof(int32_t) * (size_t)n_acc);
#if I4B_X86
      if (j->isa == NBL_I4B_AVX512 && !j->tap && g->s[1] <= 2) {
        col2im_32_512(g, j->Cg, colb, j->L, acc);
        if (j->out->dx) rescale_32_512(acc, n_acc, j->out->dx_scale, j->out->dx + o);
      } else
#endif
      {
        col2im_32(g, j->Cg, colb, j->L, acc, j->tap);
        if (j->out->dx) rescale_32(acc, n_acc, j->out->dx_scale, j->out->dx + o);
      }
      if (j->out->dx_acc)
        for (int64_t i = 0; i < n_acc; i++) j->out->dx_acc[o + i] = acc[i];
    }
  }
}

static nbl_status conv_dx_col2im(nbl_kctx *ctx, nbl_i4b_isa isa, const nbl_conv_geom *g, const int64_t *tap,
                                 const int16_t *dy, int32_t dy_max, const int16_t *w, int32_t w_max,
                                 const nbl_i4b_conv_out *out) {
  const int64_t Cg = g->C / g->group, Mg = g->M / g->group, K = Cg * g->k_sz, osz = g->out_sz;
  int64_t nb = CHUNK_COLS / osz;
  if (nb * (K + Mg) * osz > CHUNK_CODES) nb = CHUNK_CODES / ((K + Mg) * osz);
  nb = nb < 1 ? 1 : nb > g->N ? g->N : nb;
  const int64_t Lmax = nb * osz, Mgp = (Mg + 1) & ~(int64_t)1;
  /* dX sums: Mg products per col entry, at most k_sz entries per element */
  const int wide = (double)Mg * (double)g->k_sz * (double)w_max * (double)dy_max > (double)INT32_MAX;
  int16_t *dyg = malloc(sizeof(int16_t) * (size_t)(Mg * Lmax));
  int16_t *wt = malloc(sizeof(int16_t) * (size_t)(g->group * K * Mgp));
  void *colx = malloc((wide ? 8 : 4) * (size_t)(K * Lmax));
  void *acc = malloc((wide ? 8 : 4) * (size_t)(nb * Cg * g->in_sz));
  nbl_i4b_panels B = {0};
  nbl_status st = !dyg || !wt || !colx || !acc ? NBL_ERR_OUT_OF_MEMORY : NBL_OK;
  if (!st) /* W_g^T [K][Mgp] of each group: A of the product */
    for (int64_t gr = 0; gr < g->group; gr++)
      nbl_i4b_pack_rows(w + gr * Mg * K, K, Mg, 1, K, wt + gr * K * Mgp, Mgp);
  for (int64_t n0 = 0; !st && n0 < g->N; n0 += nb) {
    const int64_t cnt = g->N - n0 < nb ? g->N - n0 : nb, L = cnt * osz;
    for (int64_t gr = 0; !st && gr < g->group; gr++) {
      for (int64_t m = 0; m < Mg; m++)
        for (int64_t b = 0; b < cnt; b++)
          memcpy(dyg + m * L + b * osz, dy + ((n0 + b) * g->M + gr * Mg + m) * osz, sizeof(int16_t) * (size_t)osz);
      if (nbl_i4b_panels_reserve(&B, Mg, L)) {
        st = NBL_ERR_OUT_OF_MEMORY;
        break;
      }
      nbl_i4b_pack(isa, dyg, L, 1, &B); /* B[m][p] = dyg[m][p] */
      if (wide) memset(colx, 0, sizeof(int64_t) * (size_t)(K * L));
      gemm_job j = {.isa = isa, .A = wt + gr * K * Mgp, .lda = Mgp, .M = K, .N = L,
                    .kchunk = nbl_i4b_kchunk(w_max, dy_max), .B = &B,
                    .sink = {.kind = wide ? NBL_I4B_ADD64 : NBL_I4B_STORE32, .c = colx, .ldc = L}};
      gemm_par(ctx, &j);
      c2i_job cj = {.isa = isa, .g = g, .Cg = Cg, .L = L, .n0 = n0, .gr = gr, .tap = tap, .colx = colx, .acc = acc,
                    .wide = wide, .out = out};
      run(ctx, cnt, col2im_part, &cj);
    }
  }
  free(dyg);
  free(wt);
  free(colx);
  free(acc);
  nbl_i4b_panels_free(&B);
  return st;
}

/* ------------------------------------------------------------------ ConvGrad */

nbl_status nbl_i4b_conv_grad(nbl_kctx *ctx, nbl_i4b_isa isa, const nbl_conv_geom *g, const int16_t *dy,
                             int32_t dy_max, const int16_t *x, int32_t x_max, const int16_t *w, int32_t w_max,
                             const nbl_i4b_conv_out *out) {
  const int64_t Cg = g->C / g->group, Mg = g->M / g->group, K = Cg * g->k_sz, osz = g->out_sz;
  const int64_t nx = g->N * g->C * g->in_sz, nw = g->M * K;
  const int want_dx = out->dx || out->dx_acc, want_dw = out->dw || out->dw_acc;
  if (out->db || out->db_acc)
    for (int64_t m = 0; m < g->M; m++) {
      int64_t s = 0;
      for (int64_t n = 0; n < g->N; n++) s += sum_i16(isa, dy + (n * g->M + m) * osz, osz);
      if (out->db) out->db[m] = (float)((double)s * out->db_scale);
      if (out->db_acc) out->db_acc[m] = s;
    }
  int64_t *dw64 = NULL;
  if (want_dw) {
    dw64 = out->dw_acc ? out->dw_acc : malloc(sizeof(int64_t) * (size_t)(nw ? nw : 1));
    if (!dw64) return NBL_ERR_OUT_OF_MEMORY;
    if (nw) memset(dw64, 0, sizeof(int64_t) * (size_t)nw);
  }
  nbl_status st = NBL_OK;
  const int empty = g->N == 0 || osz == 0 || K == 0 || Mg == 0;
  if (want_dx && empty) { /* no products: zeros */
    if (out->dx && nx) memset(out->dx, 0, sizeof(float) * (size_t)nx);
    if (out->dx_acc && nx) memset(out->dx_acc, 0, sizeof(int64_t) * (size_t)nx);
  }
  /* dX of 2-D layers by stride phases over channel-pair planes (no im2col,
   * no packing, no col2im: LeNet-5's second layer 0.42 -> 0.25 ms, ResNet-8's
   * strided 3x3 layers 2.0 -> 1.1-1.3 ms); other ranks (or the switch off):
   * directly (unit strides) when its im2col of dY (Mg * k_sz x in_sz codes)
   * costs less than col2im's int32 columns (Cg * k_sz x out_sz, written, read
   * and scattered: about 3 times the traffic per element), else col2im */
  const int dx_phases = g->ns == 2 && nbl_kdebug_get(NBL_KS_I4B_WIDE);
  int unit = (double)Mg * (double)g->in_sz <= 3.0 * (double)Cg * (double)osz;
  for (int i = 0; i < g->ns; i++) unit &= g->s[i] == 1;
  int64_t *tap = NULL;
  if (!empty && (want_dw || (want_dx && !unit)) && g->ns != 2 && !(tap = tap_table(g))) st = NBL_ERR_OUT_OF_MEMORY;
  /* dW without im2col when the padded planes add few positions (and X's
   * padded codes, all images at once, stay within 128 MB; else im2col by
   * chunks of images) */
  const double xplane = (double)(g->in[0] + g->pb[0] + g->pe[0]) * (double)(g->in[1] + g->pb[1] + g->pe[1]);
  int dw_wide = g->ns == 2 && g->s[0] == 1 && g->s[1] == 1 && nbl_kdebug_get(NBL_KS_I4B_WIDE) &&
                xplane <= 1.4 * (double)osz && xplane * (double)g->C * (double)g->N <= (double)(1 << 26);
  /* AMX tiles first where the CPU has them (int4_amx.c; they decline what
   * they do not cover) */
  const int amx = nbl_i4b_amx_on(isa);
  int dw_done = 0, dx_done = 0;
  const nbl_i4b_src sdy = {.q = dy, .maxabs = dy_max}, sx = {.q = x, .maxabs = x_max};
  if (!st && !empty && want_dw && amx) st = nbl_i4b_amx_conv_dw(ctx, g, &sdy, &sx, dw64, &dw_done);
  if (!st && !empty && want_dx && amx) st = nbl_i4b_amx_conv_dx(ctx, g, &sdy, w, w_max, out, &dx_done);
  if (!st && !empty && want_dw && !dw_done)
    st = dw_wide ? conv_dw_wide(ctx, isa, g, dy, dy_max, x, x_max, dw64)
                 : conv_dw(ctx, isa, g, tap, dy, dy_max, x, x_max, dw64);
  if (!st && !empty && want_dx && !dx_done)
    st = dx_phases ? conv_dx_phases(ctx, isa, g, dy, dy_max, w, w_max, out)
         : unit    ? conv_dx_direct(ctx, isa, g, dy, dy_max, w, w_max, out)
                   : conv_dx_col2im(ctx, isa, g, tap, dy, dy_max, w, w_max, out);
  free(tap);
  if (!st && want_dw && out->dw) rescale_64(dw64, nw, out->dw_scale, out->dw);
  if (dw64 != out->dw_acc) free(dw64);
  return st;
}

/* ------------------------------------------------------------------ Gemm / MatMul products */

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
  gemm_job j = {.isa = isa, .A = A, .lda = Kp, .M = M, .N = N, .kchunk = nbl_i4b_kchunk(a_max, b_max), .B = &B};
  j.sink = acc ? (nbl_i4b_sink){.kind = NBL_I4B_ADD64, .c = acc, .ldc = N}
               : (nbl_i4b_sink){.kind = NBL_I4B_SCALE_F32, .c = y, .ldc = N, .scale = scale};
  gemm_par(ctx, &j);
  if (acc && y)
    for (int64_t i = 0; i < M * N; i++) y[i] = (float)((double)acc[i] * scale);
  free(A);
  nbl_i4b_panels_free(&B);
  return NBL_OK;
}
