/*
 * code_conv.h - what the two fused integer paths (INT4: int4_fused.c,
 * int4_conv.c; ternary: ternary_fused.c) share: the consumer part of their
 * fused node (nbl_code_consumer, filled at plan time by
 * runtime/fusions/fuse_coded.c), building the 4-row panels of activation
 * bytes their convolution products read, and the literal composition of the
 * consumer with its fused activation and residual Add. Internal to
 * runtime/kernels/.
 */
#ifndef NBL_CODE_CONV_H
#define NBL_CODE_CONV_H

#include <stdint.h>
#include <string.h>

#include "runtime/core/kernel.h"
#include "runtime/kernels/gemm.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

enum { NBL_CODE_CONV, NBL_CODE_GEMM, NBL_CODE_MATMUL }; /* the fused op */

/* The first member of a fused integer node (INT4 nbl_i4_fused, ternary
 * nbl_t_fused): the consumer Conv / Gemm / MatMul whose quantized inputs the
 * node takes, with the Relu/Clip and the residual Add it absorbed. The same
 * attributes parsed once for both formats (fuse_coded.c). */
typedef struct nbl_code_consumer {
  nbl_node node;  /* the synthetic node (first member: the kernel casts back) */
  nbl_id ins[5];  /* X, W source, bias, the format's own (INT4: PACT alpha; ternary: packed
                   * scale), residual (NBL_NONE when absent) */
  const nbl_node *orig; /* the consumer */
  nbl_id qx, wnode;     /* the quantizer nodes of X and W */
  int kind;             /* NBL_CODE_CONV, _GEMM, _MATMUL */
  int64_t wdims[NBL_MAX_RANK];
  int wrank;
  int groups;  /* Conv's group (1 otherwise) */
  int trans_b; /* Gemm's transB, alpha, beta */
  float alpha, beta;
  /* a Relu/Clip consuming the op's only output (or the fused Add's),
   * applied in the epilogue: Clip's float semantics, Relu is [0, +inf] */
  int act;
  float act_lo, act_hi;
  nbl_id act_node;
  /* an Add of the conv's output (conv_out) and a residual (ins[4]) ready
   * before the Conv, computed in the epilogue before the activation, which
   * then follows the Add */
  const nbl_node *res_add;
  nbl_id res_node, conv_out;
  char op[40]; /* the synthetic node's op type, for profiles: "Int4Conv+Clip" */
} nbl_code_consumer;

/* The fused activation: Clip's float semantics (t = v < lo ? lo : v; t > hi ? hi : t),
 * Relu being lo = 0, hi = +inf; NaN passes through as in the elementwise kernels. */
static inline float nbl_code_act(const nbl_code_consumer *o, float v) {
  if (!o->act) return v;
  float t = v < o->act_lo ? o->act_lo : v;
  return t > o->act_hi ? o->act_hi : t;
}

/* dst[4i + j] = r_j[i] for i < n: four rows of bytes interleaved, as the
 * 4-deep integer dot products read them. */
static inline void nbl_code_interleave4(const uint8_t *r0, const uint8_t *r1, const uint8_t *r2,
                                        const uint8_t *r3, uint8_t *dst, int64_t n) {
  int64_t i = 0;
#if defined(__x86_64__)
  /* a tail of 1..15 (n >= 16) as one more block ending at n: it writes
   * again bytes the block before wrote, the same values */
  while (n >= 16) {
    __m128i a = _mm_loadu_si128((const __m128i *)(const void *)(r0 + i));
    __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(r1 + i));
    __m128i c = _mm_loadu_si128((const __m128i *)(const void *)(r2 + i));
    __m128i d = _mm_loadu_si128((const __m128i *)(const void *)(r3 + i));
    __m128i ab0 = _mm_unpacklo_epi8(a, b), ab1 = _mm_unpackhi_epi8(a, b);
    __m128i cd0 = _mm_unpacklo_epi8(c, d), cd1 = _mm_unpackhi_epi8(c, d);
    _mm_storeu_si128((__m128i *)(void *)(dst + 4 * i), _mm_unpacklo_epi16(ab0, cd0));
    _mm_storeu_si128((__m128i *)(void *)(dst + 4 * i + 16), _mm_unpackhi_epi16(ab0, cd0));
    _mm_storeu_si128((__m128i *)(void *)(dst + 4 * i + 32), _mm_unpacklo_epi16(ab1, cd1));
    _mm_storeu_si128((__m128i *)(void *)(dst + 4 * i + 48), _mm_unpackhi_epi16(ab1, cd1));
    if (i + 16 == n) {
      i = n;
      break;
    }
    i = i + 32 <= n ? i + 16 : n - 16;
  }
#endif
  for (; i < n; i++) {
    dst[4 * i] = r0[i];
    dst[4 * i + 1] = r1[i];
    dst[4 * i + 2] = r2[i];
    dst[4 * i + 3] = r3[i];
  }
}

#if defined(__x86_64__)
/* dst[q] = src[2q] for q < n: the low bytes of 16-bit lanes (vpmovwb), 32 at
 * a time; the loads are masked to the bytes read. The caller checks that the
 * CPU has AVX-512 BW. */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static inline void
nbl_code_gather2_avx512(const uint8_t *src, int64_t n, uint8_t *dst) {
  int64_t q = 0;
  for (; q + 32 <= n; q += 32)
    _mm256_storeu_si256((__m256i *)(void *)(dst + q),
                        _mm512_cvtepi16_epi8(_mm512_maskz_loadu_epi8(~0ull >> 1, src + 2 * q)));
  if (q < n) {
    int64_t r = n - q; /* 1..31 */
    __m512i v = _mm512_maskz_loadu_epi8((1ull << (2 * r - 1)) - 1, src + 2 * q);
    _mm256_mask_storeu_epi8(dst + q, (__mmask32)((1u << r) - 1), _mm512_cvtepi16_epi8(v));
  }
}
#endif

#if defined(__x86_64__)
/* dst[q] = src[2q] for q < n without AVX-512 (SSE2, every x86-64): eight
 * at a time, the even bytes of 16 by a mask and a pack; the loads stay
 * within src[0, 2n - 1) (the last group of eight overlaps the one before it,
 * taking the odd bytes of the 16 ending at src[2n - 2]); rows below 9 one
 * byte at a time. */
static inline void nbl_code_gather2_sse2(const uint8_t *src, int64_t n, uint8_t *dst) {
  int64_t q = 0;
  if (n >= 9) {
    const __m128i lo = _mm_set1_epi16(0x00ff);
    for (; q + 9 <= n; q += 8) {
      const __m128i v = _mm_and_si128(_mm_loadu_si128((const __m128i *)(const void *)(src + 2 * q)), lo);
      _mm_storel_epi64((__m128i *)(void *)(dst + q), _mm_packus_epi16(v, v));
    }
    if (q < n) {
      const __m128i v = _mm_srli_epi16(_mm_loadu_si128((const __m128i *)(const void *)(src + 2 * n - 17)), 8);
      _mm_storel_epi64((__m128i *)(void *)(dst + n - 8), _mm_packus_epi16(v, v));
    }
    return;
  }
  for (; q < n; q++) dst[q] = src[2 * q];
}
#endif

/* Pixels [p0, p1) of im2col row k (channel c, tap kh, kw) of a convolution of
 * geometry g into row, from x: the image group's channels as padded bytes
 * [C][Hp][Wp]. gather2: rows of column stride 2 by AVX-512 BW (only when the
 * CPU has it), else by SSE2. */
static inline void nbl_code_im2col_row(const nbl_conv_geom *g, const uint8_t *x, int64_t Hp,
                                       int64_t Wp, int gather2, int64_t k, int64_t p0, int64_t p1,
                                       uint8_t *row) {
  int64_t OW = g->out[1], s0 = g->s[0], s1 = g->s[1];
  int64_t c = k / g->k_sz, t = k % g->k_sz, kh = t / g->k[1], kw = t % g->k[1];
  /* the padded image: output (oh, ow) of tap (kh, kw) reads (oh*s0 + kh*d0, ow*s1 + kw*d1) */
  const uint8_t *xc = x + c * Hp * Wp + kh * g->d[0] * Wp + kw * g->d[1];
  for (int64_t pix = p0; pix < p1;) {
    int64_t oh = pix / OW, ow = pix % OW, n = OW - ow < p1 - pix ? OW - ow : p1 - pix;
    const uint8_t *src = xc + oh * s0 * Wp + ow * s1;
    uint8_t *dst = row + (pix - p0);
    if (s1 == 1) {
      memcpy(dst, src, (size_t)n);
    } else {
#if defined(__x86_64__)
      if (s1 == 2) {
        if (gather2) nbl_code_gather2_avx512(src, n, dst);
        else nbl_code_gather2_sse2(src, n, dst);
        pix += n;
        continue;
      }
#endif
      for (int64_t q = 0; q < n; q++) dst[q] = src[q * s1];
    }
    pix += n;
  }
}

/* The literal composition of the residual Add that fused node o absorbed
 * (kernel c): output 0 holds conv + bias (value o->conv_out of the model);
 * it becomes Add(conv, residual input 4) by the Add kernel itself (any
 * broadcast, the operands in the order of o->res_add, the model's Add
 * node), then, when o->act, clamped to [o->act_lo, o->act_hi]. */
nbl_status nbl_code_finish_residual(nbl_kctx *c, const nbl_code_consumer *o);

/* The float part of a fused node's literal composition (kernel c of the
 * node whose consumer part is o): the consumer's reference kernel on the
 * fake-quantized X and W (xh, wh) and the bias input, into the fused node's
 * outputs, then the fused residual Add and activation. */
nbl_status nbl_code_run_consumer(nbl_kctx *c, const nbl_code_consumer *o, const nbl_rt_tensor *xh,
                                 const nbl_rt_tensor *wh);

/* The geometry of fused Conv o on input X (rank 4; o's weight dims and
 * groups; bias B may be NULL) into *g, *take = 1; *take = 0 (NBL_OK) when the
 * shapes do not suit the integer kernels (X not rank 4, channels or bias not
 * matching: the literal composition decides); another status on a bad
 * attribute (message set). */
nbl_status nbl_code_conv_geom(nbl_kctx *c, const nbl_code_consumer *o, const nbl_rt_tensor *X,
                              const nbl_rt_tensor *B, nbl_conv_geom *g, int *take);

#endif
