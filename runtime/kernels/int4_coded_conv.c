/* int4_coded_conv.c - the forward Conv of 4-bit training as an integer
 * product (contract in int4_backward.h): X and W are QuantizeInt4 outputs,
 * float tensors of linear codes (v = scale * c), whose weights change every
 * step, so the fused INT4 path's once-packed weights do not apply. Each call
 * recovers the weight codes (M * K) and packs them for the VNNI tiles of
 * int4_gemm.c (nbl_i4_pack_rows), then, image by image on the threads:
 * the image's activation codes as padded bytes (c + off), their im2col
 * panels block by block of output pixels (as int4_conv.c lays them out, with
 * code_conv.h's helpers), and the exact int32 products with the float
 * epilogue y = sc * acc + bias straight into the NCHW output. With unit
 * strides the outputs are computed over the padded width instead, so that
 * the im2col rows are the padded planes themselves, read in place by the
 * panel interleave (fill_wide), and the valid columns copied out.
 *
 * Layers with few taps per output (C * KH * KW <= 18 with unit strides and
 * dilations, one group: a first layer on 1 or 2 channels, 3x3) that the
 * AMX tiles do not take run instead as a direct product in float
 * (small_k_*): the codes as floats in padded planes, blocks of 16 pixels of
 * two output rows summed tap by tap with FMAs. Every product and partial
 * sum is an integer below 18 * 255 * 128 < 2^24, so the float sums are the
 * int32 sums exactly, and the epilogue is the VNNI path's (mul, then add):
 * the same floats, without the byte panels and the scattered wide rows that
 * cost more than the products there (LeNet's 5x5 layer, 25 taps, runs as
 * fast on the VNNI tiles).
 *
 * Layers of one group that code_direct.h takes (strides 1, or 2 with more
 * than one tap, not pointwise) run on AVX-512 VNNI by that direct kernel
 * instead of the panels (direct_forward below): the same sums and floats
 * without the im2col panels and the wide rows scattered. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/formats/int4.h"
#include "runtime/kernels/code_conv.h"
#include "runtime/kernels/code_direct.h"
#include "runtime/kernels/int4_backward.h"
#include "runtime/kernels/int4_fused.h"
#include "runtime/kernels/int4_gemm.h"
#include "runtime/kernels/kdebug.h"

typedef struct fwd_job {
  const nbl_conv_geom *g;
  const float *x;
  const int8_t *xk; /* X's QuantizeInt4 codes (zero point xz), read instead of x when given */
  int xz;
  float sx;
  const nbl_i4_rows *rows; /* one per group */
  const float *bias;
  float sc;
  float *y;
  int32_t *acc;
  int64_t Cg, Mg, Kg, Kp, Hp, Wp, pb;
  nbl_i4_isa isa;
  int gather2;
  _Atomic int bad, oom;
} fwd_job;

/* The padded bytes of one image (C planes of H x W floats at x, codes
 * c = x / sx checked exact): u = c + 128 (mod 256), the padding 128; the
 * codes' min and max to *lo, *hi. Returns 0, or -1 when a value is off the
 * grid (or its code beyond -255..255). */
static int pad_bytes_c(const fwd_job *j, const float *x, uint8_t *u, int32_t *lo, int32_t *hi) {
  const nbl_conv_geom *g = j->g;
  const int64_t H = g->in[0], W = g->in[1];
  const float inv = 1.0f / j->sx;
  int32_t mn = 0, mx = 0;
  memset(u, 128, (size_t)(g->C * j->Hp * j->Wp));
  for (int64_t c = 0; c < g->C; c++)
    for (int64_t h = 0; h < H; h++) {
      const float *s = x + (c * H + h) * W;
      uint8_t *d = u + (c * j->Hp + h + g->pb[0]) * j->Wp + g->pb[1];
      for (int64_t w = 0; w < W; w++) {
        const float r = rintf(s[w] * inv);
        if (!(fabsf(r) <= 255.0f) || j->sx * r != s[w]) return -1;
        const int32_t v = (int32_t)r;
        mn = v < mn ? v : mn;
        mx = v > mx ? v : mx;
        d[w] = (uint8_t)(v + 128);
      }
    }
  *lo = mn, *hi = mx;
  return 0;
}

/* pad_bytes_c from X's codes (pad_codes_512's rule, one by one). */
static int pad_codes_c(const fwd_job *j, const int8_t *k, uint8_t *u, int32_t *lo, int32_t *hi) {
  const nbl_conv_geom *g = j->g;
  const int64_t H = g->in[0], W = g->in[1];
  int32_t mn = 0, mx = 0;
  memset(u, 128, (size_t)(g->C * j->Hp * j->Wp));
  for (int64_t c = 0; c < g->C; c++)
    for (int64_t h = 0; h < H; h++) {
      const int8_t *s8 = k + (c * H + h) * W;
      uint8_t *d = u + (c * j->Hp + h + g->pb[0]) * j->Wp + g->pb[1];
      for (int64_t w = 0; w < W; w++) {
        const int32_t v = s8[w] - j->xz;
        if (s8[w] < -126 || s8[w] > 126 || v < -128 || v > 127) return -1;
        mn = v < mn ? v : mn;
        mx = v > mx ? v : mx;
        d[w] = (uint8_t)(v + 128);
      }
    }
  *lo = mn, *hi = mx;
  return 0;
}

#if defined(__x86_64__)
/* n floats at s as code bytes c + 128 to d (c = s / sx checked exact,
 * |c| <= 255), the codes' min and max into *mn, *mx; the lanes off the grid
 * are returned. pad_bytes_c's rule, 16 at a time (AVX-512 F, BW, VL). */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static __mmask16 bytes_run_512(const float *s, int64_t n, float sx,
                                                                                    uint8_t *d, __m512i *mn,
                                                                                    __m512i *mx) {
  const __m512 vinv = _mm512_set1_ps(1.0f / sx), vs = _mm512_set1_ps(sx), lim = _mm512_set1_ps(255.0f);
  const __m512i absm = _mm512_set1_epi32(0x7fffffff), v128 = _mm512_set1_epi32(128);
  __mmask16 bad = 0;
  for (int64_t w = 0; w < n; w += 16) {
    const __mmask16 m = (__mmask16)(n - w >= 16 ? 0xffff : (1u << (n - w)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(m, s + w);
    const __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(v, vinv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 ra = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(r), absm));
    const __mmask16 in = _mm512_cmp_ps_mask(ra, lim, _CMP_LE_OQ);
    const __m512i q = _mm512_maskz_cvtps_epi32(in, r);
    const __mmask16 eq = _mm512_cmp_ps_mask(_mm512_mul_ps(vs, _mm512_cvtepi32_ps(q)), v, _CMP_EQ_OQ);
    bad |= (__mmask16)(m & ~(in & eq));
    *mn = _mm512_min_epi32(*mn, q);
    *mx = _mm512_max_epi32(*mx, q);
    _mm_mask_storeu_epi8(d + w, m, _mm512_cvtepi32_epi8(_mm512_add_epi32(q, v128)));
  }
  return bad;
}

/* pad_bytes_c on AVX-512: each row by bytes_run_512. */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static int pad_bytes_512(const fwd_job *j, const float *x,
                                                                                  uint8_t *u, int32_t *lo,
                                                                                  int32_t *hi) {
  const nbl_conv_geom *g = j->g;
  const int64_t H = g->in[0], W = g->in[1];
  __m512i mn = _mm512_setzero_si512(), mx = mn;
  __mmask16 bad = 0;
  memset(u, 128, (size_t)(g->C * j->Hp * j->Wp));
  for (int64_t c = 0; c < g->C; c++)
    for (int64_t h = 0; h < H; h++)
      bad |= bytes_run_512(x + (c * H + h) * W, W, j->sx, u + (c * j->Hp + h + g->pb[0]) * j->Wp + g->pb[1], &mn,
                           &mx);
  *lo = _mm512_reduce_min_epi32(mn), *hi = _mm512_reduce_max_epi32(mx);
  return bad ? -1 : 0;
}

/* n codes k at s8 (zero point z) as bytes c + 128 to d, c = k - z: the
 * lanes that are a non-finite mark (outside -126..126) or whose c leaves
 * -128..127 are returned; min and max of c into *mn, *mx (int16 lanes). 32
 * at a time (AVX-512 BW). */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static __mmask32 codes_run_512(const int8_t *s8, int64_t n, int z,
                                                                                    uint8_t *d, __m512i *mn,
                                                                                    __m512i *mx) {
  const __m512i vz = _mm512_set1_epi16((short)z), lim = _mm512_set1_epi16(126), v128 = _mm512_set1_epi16(128);
  const __m512i cmin = _mm512_set1_epi16(-128), cmax = _mm512_set1_epi16(127);
  __mmask32 bad = 0;
  for (int64_t w = 0; w < n; w += 32) {
    const __mmask32 m = n - w >= 32 ? 0xffffffffu : (__mmask32)((1u << (n - w)) - 1);
    const __m512i kc = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, s8 + w));
    const __m512i v = _mm512_maskz_sub_epi16(m, kc, vz);
    bad |= m & (_mm512_cmpgt_epi16_mask(_mm512_abs_epi16(kc), lim) | _mm512_cmplt_epi16_mask(v, cmin) |
                _mm512_cmpgt_epi16_mask(v, cmax));
    *mn = _mm512_min_epi16(*mn, v);
    *mx = _mm512_max_epi16(*mx, v);
    _mm256_mask_storeu_epi8(d + w, m, _mm512_cvtepi16_epi8(_mm512_add_epi16(v, v128)));
  }
  return bad;
}

/* pad_bytes_c from X's codes k (zero point z) instead of its floats: the
 * code c = k - z (the value's c = x / sx), so the same bytes; -1 when a code
 * is a non-finite mark or c leaves -128..127. Each row by codes_run_512. */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static int pad_codes_512(const fwd_job *j, const int8_t *k,
                                                                                  uint8_t *u, int32_t *lo,
                                                                                  int32_t *hi) {
  const nbl_conv_geom *g = j->g;
  const int64_t H = g->in[0], W = g->in[1];
  __m512i mn = _mm512_setzero_si512(), mx = mn;
  __mmask32 bad = 0;
  memset(u, 128, (size_t)(g->C * j->Hp * j->Wp));
  for (int64_t c = 0; c < g->C; c++)
    for (int64_t h = 0; h < H; h++)
      bad |= codes_run_512(k + (c * H + h) * W, W, j->xz, u + (c * j->Hp + h + g->pb[0]) * j->Wp + g->pb[1], &mn,
                           &mx);
  int16_t l[32], t[32];
  _mm512_storeu_si512(l, mn);
  _mm512_storeu_si512(t, mx);
  int32_t a = 0, b = 0;
  for (int i = 0; i < 32; i++) a = l[i] < a ? l[i] : a, b = t[i] > b ? t[i] : b;
  *lo = a, *hi = b;
  return bad ? -1 : 0;
}

/* pad_codes_c on AVX2: the image's codes k as bytes (c + 128, c = k - z) in
 * one sweep of 32 at a time into t8 (nx bytes), in bytes throughout: c
 * leaves -128..127 exactly where the wrapping and the saturating k - z
 * differ; then each row to its place in the padded planes. */
__attribute__((target("avx2"))) static int pad_codes_256(const fwd_job *j, const int8_t *k, uint8_t *u, uint8_t *t8,
                                                         int32_t *lo, int32_t *hi) {
  const nbl_conv_geom *g = j->g;
  const int64_t H = g->in[0], W = g->in[1], nx = g->C * H * W;
  const __m256i vz = _mm256_set1_epi8((char)j->xz), v126 = _mm256_set1_epi8(126), sgn = _mm256_set1_epi8((char)0x80);
  __m256i bad = _mm256_setzero_si256(), mn = _mm256_set1_epi8(-1), mx = _mm256_setzero_si256();
  int64_t i = 0;
  if (j->xz >= -128 && j->xz <= 127) {
    for (; i + 32 <= nx; i += 32) {
      const __m256i kk = _mm256_loadu_si256((const __m256i *)(k + i)), c = _mm256_sub_epi8(kk, vz);
      bad = _mm256_or_si256(bad, _mm256_xor_si256(c, _mm256_subs_epi8(kk, vz)));
      bad = _mm256_or_si256(bad, _mm256_xor_si256(_mm256_max_epu8(_mm256_abs_epi8(kk), v126), v126)); /* |k| > 126 */
      const __m256i b = _mm256_xor_si256(c, sgn); /* c + 128 */
      mn = _mm256_min_epu8(mn, b);
      mx = _mm256_max_epu8(mx, b);
      _mm256_storeu_si256((__m256i *)(t8 + i), b);
    }
  }
  if (!_mm256_testz_si256(bad, bad)) return -1;
  uint8_t l[32], h[32];
  _mm256_storeu_si256((__m256i *)l, mn);
  _mm256_storeu_si256((__m256i *)h, mx);
  int32_t a = 0, b = 0; /* (0: pad_codes_c's start) */
  for (int q = 0; q < 32 && i > 0; q++) a = l[q] - 128 < a ? l[q] - 128 : a, b = h[q] - 128 > b ? h[q] - 128 : b;
  for (; i < nx; i++) {
    const int32_t v = k[i] - j->xz;
    if (k[i] < -126 || k[i] > 126 || v < -128 || v > 127) return -1;
    a = v < a ? v : a;
    b = v > b ? v : b;
    t8[i] = (uint8_t)(v + 128);
  }
  memset(u, 128, (size_t)(g->C * j->Hp * j->Wp));
  for (int64_t c = 0; c < g->C; c++)
    for (int64_t r = 0; r < H; r++)
      memcpy(u + (c * j->Hp + r + g->pb[0]) * j->Wp + g->pb[1], t8 + (c * H + r) * W, (size_t)W);
  *lo = a, *hi = b;
  return 0;
}

/* nbl_code_im2col_row for column strides 1 and 2 on AVX-512 (BW): each
 * output row's run of bytes by masked 64-byte moves, no library call. */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void im2col_row_512(const fwd_job *j, const uint8_t *x,
                                                                                   int64_t k, int64_t p0, int64_t p1,
                                                                                   uint8_t *row) {
  const nbl_conv_geom *g = j->g;
  const int64_t OW = g->out[1], s0 = g->s[0], s1 = g->s[1], Wp = j->Wp;
  const int64_t c = k / g->k_sz, t = k % g->k_sz, kh = t / g->k[1], kw = t % g->k[1];
  const uint8_t *xc = x + c * j->Hp * Wp + kh * g->d[0] * Wp + kw * g->d[1];
  int64_t oh = p0 / OW, ow = p0 % OW; /* one division per row, not per run */
  for (int64_t pix = p0; pix < p1; oh++, ow = 0) {
    const int64_t n = OW - ow < p1 - pix ? OW - ow : p1 - pix;
    const uint8_t *src = xc + oh * s0 * Wp + ow * s1;
    uint8_t *dst = row + (pix - p0);
    if (s1 == 1) {
      for (int64_t q = 0; q < n; q += 64) {
        const __mmask64 m = n - q >= 64 ? ~0ull : (1ull << (n - q)) - 1;
        _mm512_mask_storeu_epi8(dst + q, m, _mm512_maskz_loadu_epi8(m, src + q));
      }
    } else {
      nbl_code_gather2_avx512(src, n, dst);
    }
    pix += n;
  }
}
#endif

/* Panels of output pixels [p0, p0 + n32) (n32 a multiple of 32, nv of them
 * real) of group gi's im2col from the padded bytes xg into X4. */
static void fill_panels(const fwd_job *j, const uint8_t *xg, int64_t p0, int64_t nv, int64_t n32, uint8_t pad,
                        uint8_t *X4, uint8_t *tmp) {
  for (int64_t k4 = 0; k4 < j->Kp / 4; k4++) {
    const uint8_t *r[4];
    for (int q = 0; q < 4; q++) {
      const int64_t k = 4 * k4 + q;
      uint8_t *row = tmp + q * j->pb;
      r[q] = row;
      if (k >= j->Kg) {
        memset(row, pad, (size_t)n32);
        continue;
      }
#if defined(__x86_64__)
      if (j->gather2 && j->g->s[1] <= 2) im2col_row_512(j, xg, k, p0, p0 + nv, row);
      else
#endif
        nbl_code_im2col_row(j->g, xg, j->Hp, j->Wp, j->gather2, k, p0, p0 + nv, row);
      if (n32 > nv) memset(row + nv, pad, (size_t)(n32 - nv));
    }
    for (int64_t q = 0; q < n32; q += 32)
      nbl_code_interleave4(r[0] + q, r[1] + q, r[2] + q, r[3] + q, X4 + (q / 32 * (j->Kp / 4) + k4) * 128, 32);
  }
}

/* Unit strides: outputs computed over the padded width Wp (pixel oh * Wp +
 * ow, the columns ow >= OW wasted), so that each im2col row is the padded
 * plane itself from the tap's offset, read in place by the interleave (no
 * im2col copy); the block's outputs go to scratch and their valid columns
 * to y (or acc). */
static void fill_wide(const fwd_job *j, const uint8_t *xg, int64_t p0, int64_t n32, const uint8_t *padrow,
                      uint8_t *X4) {
  const nbl_conv_geom *g = j->g;
  for (int64_t k4 = 0; k4 < j->Kp / 4; k4++) {
    const uint8_t *r[4];
    for (int q = 0; q < 4; q++) {
      const int64_t k = 4 * k4 + q, c = k / g->k_sz, t = k % g->k_sz, kh = t / g->k[1], kw = t % g->k[1];
      r[q] = k < j->Kg ? xg + (c * j->Hp + kh * g->d[0]) * j->Wp + kw * g->d[1] + p0 : padrow;
    }
    for (int64_t q = 0; q < n32; q += 32)
      nbl_code_interleave4(r[0] + q, r[1] + q, r[2] + q, r[3] + q, X4 + (q / 32 * (j->Kp / 4) + k4) * 128, 32);
  }
}

/* Scratch rows [Mg][ld] of wide pixels [p0, p0 + nv) to their places in
 * out (rows of P = OH * OW elements of 4 bytes). */
static void scatter_wide(const fwd_job *j, const void *scr, int64_t ld, int64_t p0, int64_t nv, void *out) {
  const int64_t OW = j->g->out[1], P = j->g->out_sz, Wp = j->Wp;
  for (int64_t m = 0; m < j->Mg; m++) {
    const char *src = (const char *)scr + 4 * m * ld;
    char *dst = (char *)out + 4 * m * P;
    int64_t oh = p0 / Wp, ow = p0 % Wp;
    for (int64_t p = p0; p < p0 + nv; oh++, ow = 0) {
      const int64_t run = Wp - ow < p0 + nv - p ? Wp - ow : p0 + nv - p;
      if (ow < OW) memcpy(dst + 4 * (oh * OW + ow), src + 4 * (p - p0), (size_t)(4 * ((OW - ow < run ? OW - ow : run))));
      p += run;
    }
  }
}

static void fwd_images(void *arg, int64_t n0, int64_t n1) {
  fwd_job *j = arg;
  const nbl_conv_geom *g = j->g;
  const int64_t nx = g->C * g->in_sz, P = g->out_sz, plane = g->C * j->Hp * j->Wp;
  const int wide = g->s[0] == 1 && g->s[1] == 1;
  const int64_t Pw = wide ? g->out[0] * j->Wp : P; /* the pixels computed */
  /* slack past the planes: the wide rows of the last taps read up to a row
   * and a panel beyond */
  uint8_t *u = malloc((size_t)(plane + j->Wp + 128));
  uint8_t *X4 = aligned_alloc(64, (size_t)(j->Kp * j->pb + 64) / 64 * 64), *tmp = malloc((size_t)(4 * j->pb));
  float *scr = wide ? malloc(sizeof(float) * (size_t)(j->Mg * j->pb)) : NULL;
  const int avx2 = !j->gather2 && j->xk && j->isa >= NBL_I4_AVX2; /* the codes' bytes by pad_codes_256 */
  uint8_t *t8 = avx2 ? malloc((size_t)nx + 32) : NULL;
  if (!u || !X4 || !tmp || (wide && !scr) || (avx2 && !t8)) {
    atomic_store(&j->oom, 1);
    n1 = n0;
  } else {
    memset(u + plane, 0, (size_t)(j->Wp + 128));
  }
  for (int64_t n = n0; n < n1 && !atomic_load(&j->bad); n++) {
    int32_t lo, hi;
    int r = -1;
    if (j->xk) { /* the codes: the bytes without the floats */
      const int8_t *kn = j->xk + n * nx;
#if defined(__x86_64__)
      r = j->gather2 ? pad_codes_512(j, kn, u, &lo, &hi)
          : avx2     ? pad_codes_256(j, kn, u, t8, &lo, &hi)
                     : pad_codes_c(j, kn, u, &lo, &hi);
#else
      r = pad_codes_c(j, kn, u, &lo, &hi);
#endif
    }
    if (r && j->x) { /* no codes, or one not a code (a non-finite mark): the floats decide */
      const float *xn = j->x + n * nx;
#if defined(__x86_64__)
      r = j->gather2 ? pad_bytes_512(j, xn, u, &lo, &hi) : pad_bytes_c(j, xn, u, &lo, &hi);
#else
      r = pad_bytes_c(j, xn, u, &lo, &hi);
#endif
    }
    /* codes in -128..127: bytes c + 128 as written; else (8-bit codes, lo
     * <= 0 <= hi) bytes c - lo when they span at most 256 values */
    int off = 128;
    if (r == 0 && (lo < -128 || hi > 127)) {
      if (hi - lo > 255) r = -1;
      else {
        off = -lo;
        const uint8_t delta = (uint8_t)(off - 128);
        for (int64_t i = 0; i < plane; i++) u[i] = (uint8_t)(u[i] + delta);
      }
    }
    if (r) {
      atomic_store(&j->bad, 1);
      break;
    }
    if (wide) memset(tmp, off, (size_t)j->pb); /* the rows of k >= K */
    for (int64_t gi = 0; gi < g->group; gi++) {
      const uint8_t *xg = u + gi * j->Cg * j->Hp * j->Wp;
      const int64_t o = (n * g->M + gi * j->Mg) * P;
      nbl_i4_epi e = {.sc = j->sc, .bias = j->bias ? j->bias + gi * j->Mg : NULL};
      for (int64_t p0 = 0; p0 < Pw; p0 += j->pb) {
        const int64_t nv = Pw - p0 < j->pb ? Pw - p0 : j->pb, n32 = (nv + 31) / 32 * 32;
        if (wide) {
          fill_wide(j, xg, p0, n32, tmp, X4);
          if (j->y) {
            nbl_i4_conv_gemm(j->isa, &j->rows[gi], X4, off, 0, j->Mg, 0, nv, NULL, scr, j->pb, &e);
            scatter_wide(j, scr, j->pb, p0, nv, j->y + o);
          }
          if (j->acc) {
            nbl_i4_conv_gemm(j->isa, &j->rows[gi], X4, off, 0, j->Mg, 0, nv, (int32_t *)(void *)scr, NULL, j->pb,
                             &e);
            scatter_wide(j, scr, j->pb, p0, nv, j->acc + o);
          }
          continue;
        }
        fill_panels(j, xg, p0, nv, n32, (uint8_t)off, X4, tmp);
        if (j->y) nbl_i4_conv_gemm(j->isa, &j->rows[gi], X4, off, 0, j->Mg, 0, nv, NULL, j->y + o + p0, P, &e);
        if (j->acc) nbl_i4_conv_gemm(j->isa, &j->rows[gi], X4, off, 0, j->Mg, 0, nv, j->acc + o + p0, NULL, P, &e);
      }
    }
  }
  free(u);
  free(X4);
  free(tmp);
  free(t8);
  free(scr);
}

/* ------------------------------------------------------------------ small K */

#define SK_MAX 18 /* taps per output (C * KH * KW) of the direct path */

static _Atomic int g_small_k = -1;

void nbl_i4b_set_small_k(int on) { atomic_store(&g_small_k, on < 0 ? -1 : on ? 1 : 0); }

/* 1 when the direct path takes layer g (AVX-512 where the dispatch allows
 * it, unless a test turned it off). */
static int small_k_fits(const nbl_conv_geom *g) {
  return atomic_load(&g_small_k) != 0 && nbl_i4_avx512() && g->ns == 2 && g->group == 1 && g->s[0] == 1 &&
         g->s[1] == 1 && g->d[0] == 1 && g->d[1] == 1 && g->C * g->k_sz <= SK_MAX;
}

typedef struct sk_job {
  const nbl_conv_geom *g;
  const float *x, *w, *bias; /* w: the weight codes as floats [M][K] */
  float sx, sc;
  float *y;
  int32_t *acc;
  int64_t Hr, Wr; /* the padded planes */
  _Atomic int bad, oom;
} sk_job;

#if defined(__x86_64__)
/* The codes of one image (C planes of H x W at x, c = x / sx checked exact,
 * |c| <= 255) as floats into the zeroed padded planes u [C][Hr][Wr]; the
 * same test as pad_bytes_512 (and, after it, fwd_images): returns -1 when a
 * value is off the grid or the codes, 0 among them, span more than 256
 * values beyond -128..127. */
__attribute__((target("avx512f"))) static int small_k_codes(const sk_job *j, const float *x, float *u) {
  const nbl_conv_geom *g = j->g;
  const int64_t H = g->in[0], W = g->in[1];
  const __m512 vinv = _mm512_set1_ps(1.0f / j->sx), vs = _mm512_set1_ps(j->sx), lim = _mm512_set1_ps(255.0f);
  __m512 mn = _mm512_setzero_ps(), mx = mn;
  __mmask16 bad = 0;
  for (int64_t c = 0; c < g->C; c++)
    for (int64_t h = 0; h < H; h++) {
      const float *s = x + (c * H + h) * W;
      float *d = u + (c * j->Hr + h + g->pb[0]) * j->Wr + g->pb[1];
      for (int64_t w = 0; w < W; w += 16) {
        const __mmask16 m = (__mmask16)(W - w >= 16 ? 0xffff : (1u << (W - w)) - 1);
        const __m512 v = _mm512_maskz_loadu_ps(m, s + w);
        const __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(v, vinv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __mmask16 in = _mm512_cmp_ps_mask(_mm512_abs_ps(r), lim, _CMP_LE_OQ);
        const __mmask16 eq = _mm512_cmp_ps_mask(_mm512_mul_ps(vs, r), v, _CMP_EQ_OQ);
        bad |= (__mmask16)(m & ~(in & eq));
        const __m512 q = _mm512_maskz_mov_ps(m & in, _mm512_add_ps(r, _mm512_setzero_ps())); /* -0 to 0 */
        mn = _mm512_min_ps(mn, q);
        mx = _mm512_max_ps(mx, q);
        _mm512_mask_storeu_ps(d + w, m, q);
      }
    }
  const float lo = _mm512_reduce_min_ps(mn), hi = _mm512_reduce_max_ps(mx);
  return bad || ((lo < -128.0f || hi > 127.0f) && hi - lo > 255.0f) ? -1 : 0;
}

/* Output channels [m0, m0 + nm) (nm <= 4) of the 16-pixel blocks at column
 * ow0 of output rows oh and oh + 1 (lanes k0 and k1 valid; k1 = 0 when
 * there is no row oh + 1): sums over the K taps (row oh's reads r[t] from
 * ow0 on, row oh + 1's a plane row further), eight independent FMA chains,
 * then the epilogue, to y and/or acc at output offset o (channel m0, row
 * oh, column ow0). */
__attribute__((target("avx512f"))) static void small_k_block(const sk_job *j, const float *const *r, int64_t K,
                                                            int64_t ow0, __mmask16 k0, __mmask16 k1, int64_t m0,
                                                            int nm, int64_t o) {
  /* weight rows past nm read the zero rows that j->w carries after its M
   * rows (their sums are not stored) */
  const float *w = j->w + m0 * K;
  const int64_t Wr = j->Wr;
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  for (int64_t t = 0; t < K; t++) {
    const __m512 x0 = _mm512_maskz_loadu_ps(k0, r[t] + ow0), x1 = _mm512_maskz_loadu_ps(k1, r[t] + Wr + ow0);
    const __m512 w0 = _mm512_set1_ps(w[t]), w1 = _mm512_set1_ps(w[K + t]), w2 = _mm512_set1_ps(w[2 * K + t]),
                 w3 = _mm512_set1_ps(w[3 * K + t]);
    a0 = _mm512_fmadd_ps(w0, x0, a0);
    a1 = _mm512_fmadd_ps(w1, x0, a1);
    a2 = _mm512_fmadd_ps(w2, x0, a2);
    a3 = _mm512_fmadd_ps(w3, x0, a3);
    b0 = _mm512_fmadd_ps(w0, x1, b0);
    b1 = _mm512_fmadd_ps(w1, x1, b1);
    b2 = _mm512_fmadd_ps(w2, x1, b2);
    b3 = _mm512_fmadd_ps(w3, x1, b3);
  }
  const __m512 a[2][4] = {{a0, a1, a2, a3}, {b0, b1, b2, b3}}, vs = _mm512_set1_ps(j->sc);
  const __mmask16 km[2] = {k0, k1};
  const int64_t P = j->g->out_sz, OW = j->g->out[1];
  for (int h = 0; h < 2; h++)
    for (int i = 0; i < nm && km[h]; i++) {
      const int64_t at = o + i * P + h * OW;
      if (j->y) {
        const __m512 vb = _mm512_set1_ps(j->bias ? j->bias[m0 + i] : 0.0f);
        _mm512_mask_storeu_ps(j->y + at, km[h], _mm512_add_ps(_mm512_mul_ps(a[h][i], vs), vb));
      }
      if (j->acc) _mm512_mask_storeu_epi32(j->acc + at, km[h], _mm512_cvtps_epi32(a[h][i]));
    }
}

__attribute__((target("avx512f"))) static void small_k_images(void *arg, int64_t n0, int64_t n1) {
  sk_job *j = arg;
  const nbl_conv_geom *g = j->g;
  const int64_t K = g->C * g->k_sz, plane = g->C * j->Hr * j->Wr, OH = g->out[0], OW = g->out[1];
  float *u = malloc(sizeof(float) * (size_t)plane);
  if (!u) {
    atomic_store(&j->oom, 1);
    return;
  }
  const float *r[SK_MAX];
  int64_t toff[SK_MAX]; /* tap t's offset in the planes */
  for (int64_t t = 0; t < K; t++) {
    const int64_t c = t / g->k_sz, kh = t % g->k_sz / g->k[1], kw = t % g->k[1];
    toff[t] = (c * j->Hr + kh) * j->Wr + kw;
  }
  for (int64_t n = n0; n < n1 && !atomic_load(&j->bad); n++) {
    memset(u, 0, sizeof(float) * (size_t)plane);
    if (small_k_codes(j, j->x + n * g->C * g->in_sz, u)) {
      atomic_store(&j->bad, 1);
      break;
    }
    for (int64_t oh = 0; oh < OH; oh += 2) { /* two rows at a time */
      for (int64_t t = 0; t < K; t++) r[t] = u + oh * j->Wr + toff[t];
      for (int64_t ow0 = 0; ow0 < OW; ow0 += 16) {
        const __mmask16 k = (__mmask16)(OW - ow0 >= 16 ? 0xffff : (1u << (OW - ow0)) - 1);
        for (int64_t m = 0; m < g->M; m += 4)
          small_k_block(j, r, K, ow0, k, oh + 1 < OH ? k : 0, m, (int)(g->M - m < 4 ? g->M - m : 4),
                        (n * g->M + m) * g->out_sz + oh * OW + ow0);
      }
    }
  }
  free(u);
}
#endif

/* The layer by the direct path (small_k_fits(g)), w8 the weight codes;
 * *done = 0 when it did not run, *off_grid = 1 when the codes are off the
 * grid. */
static nbl_status small_k_forward(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, float sx, const int8_t *w8,
                                  float sc, const float *bias, float *y, int32_t *acc, int *done, int *off_grid) {
  *done = 0;
#if defined(__x86_64__)
  const int64_t K = g->C * g->k_sz;
  int64_t Hr = g->in[0] + g->pb[0], Wr = g->in[1] + g->pb[1];
  if (Hr < g->out[0] + g->k[0] - 1) Hr = g->out[0] + g->k[0] - 1;
  if (Wr < g->out[1] + g->k[1] - 1) Wr = g->out[1] + g->k[1] - 1;
  float *wf = calloc((size_t)((g->M + 3) * K), sizeof(float)); /* 3 zero rows past M (small_k_block) */
  if (!wf) return NBL_ERR_OUT_OF_MEMORY;
  for (int64_t i = 0; i < g->M * K; i++) wf[i] = (float)w8[i];
  sk_job j = {.g = g, .x = x, .w = wf, .bias = bias, .sx = sx, .sc = sc, .y = y, .acc = acc, .Hr = Hr, .Wr = Wr};
  if (ctx) nbl_parallel_for(ctx, g->N, 1, small_k_images, &j);
  else small_k_images(&j, 0, g->N);
  free(wf);
  if (atomic_load(&j.oom)) return NBL_ERR_OUT_OF_MEMORY;
  if (atomic_load(&j.bad)) *off_grid = 1;
  *done = 1;
#else
  (void)ctx, (void)g, (void)x, (void)sx, (void)w8, (void)sc, (void)bias, (void)y, (void)acc, (void)off_grid;
#endif
  return NBL_OK;
}

/* ------------------------------------------------------------------ direct */

/* Layers of one group (nbl_cd_eligible) on AVX-512 VNNI run instead by the
 * direct kernel the fused inference paths share (code_direct.h): each
 * image's codes laid out once in quads of channels per padded pixel, read
 * at each tap's offset, no im2col panels nor wide rows to scatter. The same
 * int32 sums and the same epilogue (nbl_i4_direct_store: mul, then add), so
 * the same floats. It takes codes in -128..127 only (bytes c + 128; a zero
 * activation's byte 128 pads); anything else (8-bit codes beyond, values or
 * codes off the grid, a NaN's mark) goes to the panels, which decide. */
typedef struct dfw_job {
  const nbl_conv_geom *g;
  const nbl_cd_plan *d;
  const nbl_i4_rows *W;
  const float *x;
  const int8_t *xk;
  int xz;
  float sx;
  nbl_i4_epi e;
  float *y;
  int32_t *acc;
  _Atomic int bad, oom;
} dfw_job;

typedef struct dfw_img {
  const dfw_job *j;
  int64_t n; /* the image */
  int bad;   /* a plane off the grid or beyond -128..127 */
} dfw_img;

typedef struct dfw_out {
  nbl_i4_direct_out o; /* y's epilogue (o.Y NULL: none) */
  int32_t *acc;        /* the image's sums, or NULL */
  int64_t P;
} dfw_out;

#if defined(__x86_64__)
/* The direct kernel's quantizer (nbl_cd_quant_fn): channel c of the image
 * as bytes c + 128 from X's codes when given, else from its floats. */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void dfw_plane(const void *ctx, int64_t n0, int64_t c,
                                                                              uint8_t *dst) {
  dfw_img *q = (dfw_img *)(uintptr_t)ctx; /* (the hook's context is the caller's own) */
  const dfw_job *j = q->j;
  const int64_t HW = j->g->in_sz, at = (q->n + n0) * j->g->C * HW + c * HW;
  __m512i mn = _mm512_setzero_si512(), mx = mn;
  if (j->xk) {
    if (codes_run_512(j->xk + at, HW, j->xz, dst, &mn, &mx)) q->bad = 1; /* (c in -128..127 checked) */
    return;
  }
  if (bytes_run_512(j->x + at, HW, j->sx, dst, &mn, &mx) || _mm512_reduce_min_epi32(mn) < -128 ||
      _mm512_reduce_max_epi32(mx) > 127)
    q->bad = 1;
}
#endif

/* The epilogue hook (nbl_cd_store_fn): the sums to acc as they are, y by
 * the fused path's epilogue. */
static void dfw_store(const void *ctx, int64_t m, int nm, const int32_t *acc, const uint16_t k[2],
                      const int64_t at[2]) {
  const dfw_out *o = ctx;
  for (int r = 0; o->acc && r < nm; r++)
    for (int h = 0; h < 2; h++) {
      int32_t *dst = o->acc + (m + r) * o->P + at[h];
      for (int i = 0, q = 0; i < 16; i++)
        if (k[h] >> i & 1) dst[q++] = acc[r * 32 + 16 * h + i];
    }
  if (o->o.Y) nbl_i4_direct_store(&o->o, m, nm, acc, k, at);
}

static void dfw_images(void *arg, int64_t n0, int64_t n1) {
  dfw_job *j = arg;
  const nbl_conv_geom *g = j->g;
  const int64_t ny = g->M * g->out_sz;
  uint8_t *u = malloc(nbl_cd_image_bytes(j->d));
  if (!u) {
    atomic_store(&j->oom, 1);
    return;
  }
  for (int64_t n = n0; n < n1 && !atomic_load(&j->bad); n++) {
#if defined(__x86_64__)
    dfw_img q = {.j = j, .n = n};
    if (nbl_cd_pack_input(NULL, j->d, 1, 128, dfw_plane, &q, u) != 0) {
      atomic_store(&j->oom, 1);
      break;
    }
    if (q.bad) {
      atomic_store(&j->bad, 1);
      break;
    }
#endif
    dfw_out o = {.o = {.e = &j->e, .Y = j->y ? j->y + n * ny : NULL, .ld = g->out_sz},
                 .acc = j->acc ? j->acc + n * ny : NULL,
                 .P = g->out_sz};
    if (!nbl_cd_tile(j->d, u, j->W->w, j->W->rowsum, j->W->Kp, 128, 0, g->M, 0, j->d->PP, dfw_store, &o)) {
      atomic_store(&j->bad, 1);
      break;
    }
  }
  free(u);
}

/* The layer by the direct kernel where it applies (w8 the weight codes);
 * *done = 1 when it ran (y and acc written), else nothing is left written
 * that the panels would not overwrite. */
static nbl_status direct_forward(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, float sx, const int8_t *xk,
                                 int xz, const int8_t *w8, float sc, const float *bias, float *y, int32_t *acc,
                                 int *done) {
  *done = 0;
#if defined(__x86_64__)
  if (!nbl_kdebug_get(NBL_KS_I4B_DIRECT) || nbl_i4_best_isa() != NBL_I4_VNNI || !nbl_cd_eligible(g)) return NBL_OK;
  nbl_cd_plan d;
  if (nbl_cd_plan_init(&d, g) != 0) return NBL_ERR_OUT_OF_MEMORY;
  int64_t K;
  nbl_i4_rows W = {0};
  int8_t *r = nbl_cd_order_weights(w8, g->M, g->C, g->k_sz, &K);
  nbl_status st = !r || nbl_i4_pack_rows(r, g->M, K, K, 1, &W) ? NBL_ERR_OUT_OF_MEMORY : NBL_OK;
  free(r);
  if (!st) {
    dfw_job j = {.g = g, .d = &d, .W = &W, .x = x, .xk = xk, .xz = xz, .sx = sx, .e = {.sc = sc, .bias = bias},
                 .y = y, .acc = acc};
    if (ctx) nbl_parallel_for(ctx, g->N, 1, dfw_images, &j);
    else dfw_images(&j, 0, g->N);
    if (atomic_load(&j.oom)) st = NBL_ERR_OUT_OF_MEMORY;
    else if (!atomic_load(&j.bad)) {
      *done = 1;
      nbl_kcount(NBL_KC_I4B_DIRECT_RUNS);
    }
  }
  nbl_i4_rows_free(&W);
  nbl_cd_plan_free(&d);
  return st;
#else
  (void)ctx, (void)g, (void)x, (void)sx, (void)xk, (void)xz, (void)w8, (void)sc, (void)bias, (void)y, (void)acc;
  return NBL_OK;
#endif
}

/* ------------------------------------------------------------------ the entry */

nbl_status nbl_i4b_conv_forward(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, float sx, const float *w,
                                float sw, const float *bias, float *y, int32_t *acc, int *off_grid) {
  return nbl_i4b_conv_forward_codes(ctx, g, x, sx, NULL, 0, w, sw, bias, y, acc, off_grid);
}

nbl_status nbl_i4b_conv_forward_codes(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, float sx,
                                      const int8_t *xk, int xz, const float *w, float sw, const float *bias, float *y,
                                      int32_t *acc, int *off_grid) {
  *off_grid = 0;
  if (g->ns != 2) {
    *off_grid = 1;
    return NBL_OK;
  }
  const int64_t Cg = g->C / g->group, Mg = g->M / g->group, Kg = Cg * g->k_sz, nw = g->M * Kg;
  if (g->N == 0 || g->M == 0 || g->out_sz == 0) return NBL_OK;
  const nbl_i4b_isa bisa = nbl_i4b_best_isa();
  /* the weight codes, int8 */
  int16_t *wq = malloc(sizeof(int16_t) * (size_t)(nw ? nw : 1));
  int8_t *w8 = malloc((size_t)(nw ? nw : 1));
  nbl_i4_rows *rows = calloc((size_t)g->group, sizeof *rows);
  nbl_status st = NBL_OK;
  if (!wq || !w8 || !rows) st = NBL_ERR_OUT_OF_MEMORY;
  nbl_i4b_grid gw;
  if (!st && (nbl_i4b_codes_linear(bisa, w, nw, sw, wq, &gw) || gw.maxabs > 128)) *off_grid = 1;
  for (int64_t i = 0; !st && !*off_grid && gw.maxabs == 128 && i < nw; i++) *off_grid = wq[i] == 128;
  for (int64_t i = 0; !st && !*off_grid && i < nw; i++) w8[i] = (int8_t)wq[i];
  int done = 0; /* AMX tiles where the CPU has them (int4_amx.c; they decline what they do not cover) */
  if (!st && !*off_grid && nbl_i4b_amx_on(bisa))
    st = nbl_i4b_amx_conv_forward(ctx, g, x, sx, xk, xz, w8, sx * sw, bias, y, acc, &done);
  const int small = small_k_fits(g);
  float *xbuf = NULL; /* x omitted (QuantizeInt4's Y dropped): made from its codes for the small-K path */
  if (!st && !*off_grid && !done && !x && small) {
    const int64_t nx = g->N * g->C * g->in_sz;
    if (!(xbuf = malloc(sizeof(float) * (size_t)(nx ? nx : 1)))) st = NBL_ERR_OUT_OF_MEMORY;
    if (!st) nbl_q4_values8(sx, xz, xk, xbuf, (size_t)nx);
    x = xbuf;
  }
  if (!st && !*off_grid && !done && small)
    st = small_k_forward(ctx, g, x, sx, w8, sx * sw, bias, y, acc, &done, off_grid);
  if (!st && !*off_grid && !done && (x || xk))
    st = direct_forward(ctx, g, x, sx, xk, xz, w8, sx * sw, bias, y, acc, &done);
  /* the VNNI tiles' packed weights, only when they run */
  for (int64_t gi = 0; !st && !*off_grid && !done && gi < g->group; gi++)
    if (nbl_i4_pack_rows(w8 + gi * Mg * Kg, Mg, Kg, Kg, 1, &rows[gi])) st = NBL_ERR_OUT_OF_MEMORY;
  if (!st && !*off_grid && !done) {
    int64_t Hp = g->in[0] + g->pb[0], Wp = g->in[1] + g->pb[1];
    const int64_t need_h = (g->out[0] - 1) * g->s[0] + (g->k[0] - 1) * g->d[0] + 1;
    const int64_t need_w = (g->out[1] - 1) * g->s[1] + (g->k[1] - 1) * g->d[1] + 1;
    if (Hp < need_h) Hp = need_h;
    if (Wp < need_w) Wp = need_w;
    const int64_t Kp = rows[0].Kp, P32 = (g->out_sz + 31) / 32 * 32;
    /* blocks of pixels whose panels (Kp x pb bytes) stay in L2 */
    int64_t pb = (int64_t)(192 * 1024) / (Kp ? Kp : 4) / 32 * 32;
    pb = pb < 32 ? 32 : pb > 1024 ? 1024 : pb;
    if (pb > P32) pb = P32;
    fwd_job j = {.g = g, .x = x, .xk = xk, .xz = xz, .sx = sx, .rows = rows, .bias = bias, .sc = sx * sw, .y = y, .acc = acc,
                 .Cg = Cg, .Mg = Mg, .Kg = Kg, .Kp = Kp, .Hp = Hp, .Wp = Wp, .pb = pb, .isa = nbl_i4_best_isa(),
                 .gather2 = nbl_i4_avx512()};
    if (ctx) nbl_parallel_for(ctx, g->N, 1, fwd_images, &j);
    else fwd_images(&j, 0, g->N);
    if (atomic_load(&j.oom)) st = NBL_ERR_OUT_OF_MEMORY;
    else if (atomic_load(&j.bad)) *off_grid = 1;
  }
  for (int64_t gi = 0; rows && gi < g->group; gi++) nbl_i4_rows_free(&rows[gi]);
  free(xbuf);
  free(rows);
  free(wq);
  free(w8);
  return st;
}
