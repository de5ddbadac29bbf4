/* code_direct.c - direct (im2col-free) convolutions on activation bytes,
 * shared by the INT4 and ternary fused paths and the 4-bit training
 * forward; see code_direct.h. */
#include "runtime/kernels/code_direct.h"
#include "runtime/core/cpu.h"
#include "runtime/kernels/code_conv.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define CD_X86 1
#else
#define CD_X86 0
#endif

int nbl_cd_eligible(const nbl_conv_geom *g) {
  return g->ns == 2 && g->group == 1 && g->s[0] == g->s[1] &&
         (g->s[0] == 1 || (g->s[0] == 2 && g->k_sz > 1)) && !nbl_conv_pointwise(g);
}

int nbl_cd_plan_init(nbl_cd_plan *d, const nbl_conv_geom *g) {
  int64_t Hp = g->in[0] + g->pb[0], Wp = g->in[1] + g->pb[1];
  int64_t need_h = (g->out[0] - 1) * g->s[0] + (g->k[0] - 1) * g->d[0] + 1;
  int64_t need_w = (g->out[1] - 1) * g->s[1] + (g->k[1] - 1) * g->d[1] + 1;
  if (Hp < need_h) Hp = need_h;
  if (Wp < need_w) Wp = need_w;
  /* a phase plane covers the reads of the last panel (32 pixels) at the last tap */
  int64_t S = g->s[0];
  int64_t sh = (g->k[0] - 1) * g->d[0] / S, sw = (g->k[1] - 1) * g->d[1] / S; /* largest shifts */
  int64_t Hq = (Hp + S - 1) / S > g->out[0] + sh ? (Hp + S - 1) / S : g->out[0] + sh;
  int64_t Wq = (Wp + S - 1) / S > g->out[1] + sw ? (Wp + S - 1) / S : g->out[1] + sw;
  int64_t PP = g->out[0] * Wq, plane = (PP + 31) / 32 * 32 + sh * Wq + sw;
  if (plane < Hq * Wq) plane = Hq * Wq;
  *d = (nbl_cd_plan){.S = S, .C = g->C, .C4 = (g->C + 3) / 4, .H = g->in[0], .W = g->in[1],
                     .pt = g->pb[0], .pl = g->pb[1], .Wq = Wq, .plane = plane, .PP = PP,
                     .OW = g->out[1], .taps = g->k_sz};
  d->off = malloc(sizeof(int64_t) * (size_t)d->taps);
  if (!d->off) return -1;
  for (int64_t t = 0; t < d->taps; t++) {
    int64_t r = t / g->k[1] * g->d[0], q = t % g->k[1] * g->d[1];
    d->off[t] = ((r % S) * S + q % S) * plane + r / S * Wq + q / S;
  }
  return 0;
}

void nbl_cd_plan_free(nbl_cd_plan *d) {
  free(d->off);
  d->off = NULL;
}

size_t nbl_cd_image_bytes(const nbl_cd_plan *d) {
  return (size_t)(d->C4 * d->S * d->S * d->plane * 4);
}

int8_t *nbl_cd_order_weights(const int8_t *q, int64_t M, int64_t C, int64_t T, int64_t *K) {
  int64_t C4 = (C + 3) / 4;
  *K = T * 4 * C4;
  int8_t *r = calloc((size_t)(M * *K + 1), 1);
  if (!r) return NULL;
  for (int64_t m = 0; m < M; m++)
    for (int64_t c = 0; c < C; c++)
      for (int64_t t = 0; t < T; t++) r[m * *K + t * 4 * C4 + c] = q[(m * C + c) * T + t];
  return r;
}

/* ------------------------------------------------------------------ the input */

typedef struct pack_job {
  const nbl_cd_plan *d;
  uint8_t *u;
  uint8_t pad;
  nbl_cd_quant_fn quant;
  const void *ctx;
  _Atomic int oom;
} pack_job;

/* Quads [b, e) of (image, channel quad): the 4 channels' bytes (whole
 * planes at a time), interleaved into the padded pixels of the quad:
 * padded pixel (r, q) to phase (r % S, q % S) at (r / S) * Wq + q / S. */
static void pack_quads(void *arg, int64_t b, int64_t e) {
  pack_job *j = arg;
  const nbl_cd_plan *d = j->d;
  int64_t HW = d->H * d->W, S = d->S;
  uint8_t *tmp = malloc((size_t)(4 * HW + 4 * d->W));
  if (!tmp) {
    j->oom = 1;
    return;
  }
  uint8_t *row = tmp + 4 * HW; /* one input row's 4-byte pixels */
  for (int64_t r = b; r < e; r++) {
    int64_t c4 = r % d->C4, n = r / d->C4;
    for (int q = 0; q < 4; q++) {
      int64_t c = 4 * c4 + q;
      if (c < d->C) j->quant(j->ctx, n, c, tmp + q * HW);
      else memset(tmp + q * HW, j->pad, (size_t)HW);
    }
    uint8_t *quad = j->u + n * nbl_cd_image_bytes(d) + c4 * S * S * d->plane * 4;
    for (int64_t ih = 0; ih < d->H; ih++) {
      const uint8_t *t = tmp + ih * d->W;
      int64_t pr = ih + d->pt; /* padded row */
      if (S == 1) {
        nbl_code_interleave4(t, t + HW, t + 2 * HW, t + 3 * HW, quad + (pr * d->Wq + d->pl) * 4,
                             d->W);
        continue;
      }
      nbl_code_interleave4(t, t + HW, t + 2 * HW, t + 3 * HW, row, d->W);
      /* column phase by column phase: input column iw at padded column
       * pc = iw + pl, in phase pc % S at pc / S */
      for (int64_t iw0 = 0; iw0 < S && iw0 < d->W; iw0++) {
        int64_t pc0 = iw0 + d->pl;
        uint8_t *dst = quad + (((pr % S) * S + pc0 % S) * d->plane + pr / S * d->Wq + pc0 / S) * 4;
        for (int64_t iw = iw0; iw < d->W; iw += S, dst += 4) memcpy(dst, row + 4 * iw, 4);
      }
    }
  }
  free(tmp);
}

int nbl_cd_pack_input(nbl_kctx *c, const nbl_cd_plan *d, int64_t N, uint8_t pad,
                      nbl_cd_quant_fn quant, const void *ctx, uint8_t *u) {
  memset(u, pad, (size_t)N * nbl_cd_image_bytes(d));
  pack_job j = {.d = d, .u = u, .pad = pad, .quant = quant, .ctx = ctx};
  atomic_init(&j.oom, 0);
  nbl_parallel_for(c, N * d->C4, 1, pack_quads, &j);
  return atomic_load(&j.oom) ? -1 : 0;
}

/* ------------------------------------------------------------------ the tile */

#if CD_X86
/* The valid lanes of the 16-pixel groups of padded pixels q0.. (column q %
 * Wq < OW, q < PP), ng groups, to k[], and the output index of the first
 * valid pixel of each to idx[]. */
static void direct_lanes(const nbl_cd_plan *d, int64_t q0, int ng, uint16_t *k, int64_t *idx) {
  int64_t oh = q0 / d->Wq, ow = q0 % d->Wq, q = q0;
  for (int gi = 0; gi < ng; gi++) {
    idx[gi] = oh * d->OW + (ow < d->OW ? ow : d->OW);
    unsigned m = 0;
    for (int i = 0; i < 16; i++, q++) {
      if (q < d->PP && ow < d->OW) m |= 1u << i;
      if (++ow == d->Wq) ow = 0, oh++;
    }
    k[gi] = (uint16_t)m;
  }
}

/* Four weight codes as one int32 (unaligned). */
static inline int32_t load4(const int8_t *p) {
  int32_t v;
  memcpy(&v, p, 4);
  return v;
}

/* 8 channels x 32 padded pixels from p on, reading the quads of channels of
 * the padded input at each tap's offset; the corrected sums to acc. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) static void
direct_avx512(const nbl_cd_plan *d, const uint8_t *x, const int8_t *w, const int32_t *rowsum,
              int32_t a_zero, int nm, int64_t p, int32_t *acc) {
  __m512i a00 = _mm512_setzero_si512(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00,
          a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00, a60 = a00, a61 = a00,
          a70 = a00, a71 = a00;
  const int8_t *wk = w;
  int64_t qs = d->S * d->S * d->plane * 4; /* bytes a quad of channels */
#define CD_ROW(r)                                                                                  \
  do {                                                                                             \
    __m512i wb = _mm512_set1_epi32(load4(wk + 4 * (r)));                                           \
    a##r##0 = _mm512_dpbusd_epi32(a##r##0, x0, wb);                                                \
    a##r##1 = _mm512_dpbusd_epi32(a##r##1, x1, wb);                                                \
  } while (0)
  for (int64_t t = 0; t < d->taps; t++) {
    const uint8_t *xk = x + (p + d->off[t]) * 4;
    for (int64_t c4 = 0; c4 < d->C4; c4++, xk += qs, wk += 32) {
      __m512i x0 = _mm512_loadu_si512(xk), x1 = _mm512_loadu_si512(xk + 64);
      CD_ROW(0);
      CD_ROW(1);
      CD_ROW(2);
      CD_ROW(3);
      CD_ROW(4);
      CD_ROW(5);
      CD_ROW(6);
      CD_ROW(7);
    }
  }
#undef CD_ROW
  __m512i a[8][2] = {{a00, a01}, {a10, a11}, {a20, a21}, {a30, a31},
                     {a40, a41}, {a50, a51}, {a60, a61}, {a70, a71}};
  for (int r = 0; r < nm; r++) {
    __m512i corr = _mm512_set1_epi32(a_zero * rowsum[r]);
    _mm512_storeu_si512(acc + r * 32, _mm512_sub_epi32(a[r][0], corr));
    _mm512_storeu_si512(acc + r * 32 + 16, _mm512_sub_epi32(a[r][1], corr));
  }
}
#endif

int nbl_cd_tile(const nbl_cd_plan *d, const uint8_t *x, const int8_t *w, const int32_t *rowsum,
                int64_t Kp, int32_t a_zero, int64_t m0, int64_t m1, int64_t p0, int64_t p1,
                nbl_cd_store_fn store, const void *ctx) {
#if CD_X86
  const unsigned need =
      NBL_CPU_AVX512F | NBL_CPU_AVX512BW | NBL_CPU_AVX512VL | NBL_CPU_AVX512VNNI;
  if ((nbl_cpu_features() & need) != need || Kp != d->taps * d->C4 * 4) return 0;
  enum { CHUNK = 1024 }; /* padded pixels whose lanes are worked out at once */
  uint16_t lk[CHUNK / 16];
  int64_t li[CHUNK / 16];
  int32_t acc[8 * 32];
  for (int64_t c0 = p0; c0 < p1; c0 += CHUNK) {
    int64_t c1 = c0 + CHUNK < p1 ? c0 + CHUNK : p1;
    direct_lanes(d, c0, (int)((c1 - c0 + 31) / 32 * 2), lk, li);
    for (int64_t m = m0; m < m1; m += 8) {
      int nm = (int)(m1 - m < 8 ? m1 - m : 8);
      const int8_t *wm = w + (m / 8) * (Kp / 4) * 32;
      for (int64_t p = c0; p < c1; p += 32) {
        const uint16_t *k = lk + (p - c0) / 16;
        if (!k[0] && !k[1]) continue; /* only padding columns */
        direct_avx512(d, x, wm, rowsum + m, a_zero, nm, p, acc);
        store(ctx, m, nm, acc, k, li + (p - c0) / 16);
      }
    }
  }
  return 1;
#else
  (void)d, (void)x, (void)w, (void)rowsum, (void)Kp, (void)a_zero, (void)m0, (void)m1, (void)p0,
      (void)p1, (void)store, (void)ctx;
  return 0;
#endif
}
