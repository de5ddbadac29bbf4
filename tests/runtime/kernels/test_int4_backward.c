/* test_int4_backward.c - the integer backward products of 4-bit training
 * (runtime/kernels/int4_backward.h, runtime/ops/grad_int4.c):
 *   - code recovery: QuantizeLog values (runtime/formats/log.h, every
 *     rounding mode, radix 2 and 4) give power-of-two codes with value ==
 *     unit * code exactly, QuantizeInt4 values (runtime/formats/int4.h) give
 *     their codes q - z; anything off the grid is refused;
 *   - the int16 GEMM: exact against a plain-C int64 product at tile-boundary
 *     sizes, every packing path, long sums split in int32 chunks;
 *   - ConvGrad and Gemm: the exact accumulators equal a plain-C integer
 *     reference (direct loops over the codes), and the ops' float outputs
 *     agree with the float reference kernels (ConvGrad / Gemm in double on
 *     the dequantized operands) within float rounding: |y - ref| <= 2^-21 *
 *     sum |terms| (the sum of |products| behind each output, from the
 *     reference kernel run on |operands|); on strides, pads, dilations,
 *     groups, depthwise, 1-D/3-D, and under each CPU variant, whose
 *     outputs must be bit-identical;
 *   - fallbacks (values off the grid, NaN, a missing scale) run the float
 *     kernel, bad scale inputs are errors naming the node;
 *   - the codes handed over (QuantizeLog's for dY, QuantizeInt4's for X,
 *     with or without the floats): the same bits, planted errors seen.
 * The int4-backward pass: test_int4_backward_pass.c. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <unistd.h>

#include "grad_check.h"
#include "runtime/core/cpu.h"
#include "runtime/formats/int4.h"
#include "runtime/formats/log.h"
#include "runtime/kernels/int4_backward.h"
#include "runtime/kernels/kdebug.h"
#include "runtime/ops/grad_int4.h"
#include "ck_elem.h"

#define MS "com.microsoft"
#define TOL_EPS (1.0 / (1 << 21)) /* 2^-21 relative to the sum of |terms| */

static uint64_t rng = 88172645463325252ull;
static uint32_t rnd(void) { return (uint32_t)(td_xs64(&rng) >> 32); }
static int32_t rnd_code(int32_t maxabs) { return (int32_t)(rnd() % (uint32_t)(2 * maxabs + 1)) - maxabs; }

/* ------------------------------------------------------------------ quantized operands */

/* x (float32) fake-quantized by QuantizeInt4 with `bits` and scale source
 * src (affine when affine != 0), in place; the scale, and the codes q - z
 * when codes != NULL. */
static int g_q4_zero; /* the zero point of q4_tensor's last call */

static float q4_tensor(tens *x, int bits, int affine, nbl_q4_scale_source src, int16_t *codes) {
  nbl_q4_config cfg;
  nbl_q4_config_default(&cfg);
  cfg.bits = bits;
  cfg.mode = affine ? NBL_Q4_AFFINE : NBL_Q4_SYMMETRIC;
  cfg.scale_source = src;
  nbl_q4_params p;
  const char *why = NULL;
  float *v = x->data;
  ck_assert_int_eq(nbl_q4_choose(&cfg, v, (size_t)x->n, 2.0f, &p, &why), 0);
  int8_t *q = malloc((size_t)x->n + 1);
  nbl_q4_quantize_codes(&cfg, &p, v, q, (size_t)x->n, 0);
  nbl_q4_fake_quant(&cfg, &p, v, v, (size_t)x->n, 0);
  for (int64_t i = 0; i < x->n; i++) {
    ck_elem(v[i] == p.scale * (float)(q[i] - p.zero));
    if (codes) codes[i] = (int16_t)(q[i] - p.zero);
  }
  free(q);
  g_q4_zero = p.zero;
  return p.scale;
}

/* x fake-quantized by the log quantizer cfg, in place; the smallest level
 * (the unit of the integer form) and the codes nbl_log_code_int. */
static float log_tensor(tens *x, const nbl_log_config *cfg, int16_t *codes) {
  nbl_log_params p;
  float *v = x->data;
  nbl_log_choose(cfg, v, (size_t)x->n, &p);
  for (int64_t i = 0; i < x->n; i++) {
    int c = nbl_log_code(cfg, &p, v[i], (uint64_t)i);
    v[i] = nbl_log_value(cfg, &p, c);
    if (codes) codes[i] = (int16_t)nbl_log_code_int(cfg, c);
  }
  return nbl_log_level(cfg, &p, p.levels - 1);
}

static nbl_log_config log_cfg(int radix, int exp_bits, nbl_log_rounding r, int phase) {
  nbl_log_config c;
  nbl_log_config_default(&c);
  c.radix = radix;
  c.exp_bits = exp_bits;
  c.rounding = r;
  c.phase = phase;
  c.seed = 7;
  const char *why = NULL;
  ck_assert_msg(nbl_log_validate(&c, &why) == 0, "%s", why ? why : "");
  return c;
}

/* Gradient-like data: a spread of magnitudes over several decades, some zeros. */
static void fill_grad(tens *t) {
  float *v = t->data;
  for (int64_t i = 0; i < t->n; i++) {
    double m = pow(10.0, -3.0 * gc_rand()) * (gc_rand() < 0.5 ? -1 : 1);
    v[i] = gc_rand() < 0.05 ? 0.0f : (float)m;
  }
}

/* in the code tests (loop tests over the variants): the variant of this run */
#define ISA ((nbl_i4b_isa)_i)

static nbl_i4b_isa g_isas[3];
static int n_isas(void) {
  int n = 0;
  for (int i = NBL_I4B_SCALAR; i <= NBL_I4B_AVX512; i++)
    if (nbl_i4b_isa_supported((nbl_i4b_isa)i)) g_isas[n++] = (nbl_i4b_isa)i;
  return n;
}

/* ------------------------------------------------------------------ code recovery */

START_TEST(test_codes_pow2) {
  const struct {
    int radix, eb;
    nbl_log_rounding r;
    int phase;
  } cs[] = {{4, 3, NBL_LOG_NEAREST, 0}, {4, 3, NBL_LOG_STOCHASTIC, 0}, {4, 3, NBL_LOG_TPR, 0},
            {4, 3, NBL_LOG_TPR, 1},     {2, 3, NBL_LOG_LUQ, 0},        {2, 4, NBL_LOG_NEAREST, 0},
            {4, 2, NBL_LOG_NEAREST, 0}};
  for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
    nbl_log_config cfg = log_cfg(cs[c].radix, cs[c].eb, cs[c].r, cs[c].phase);
    tens x = t_new(NBL_DT_FLOAT, DIMS(4003)); /* vector tails too */
    fill_grad(&x);
    int16_t *want = malloc(sizeof(int16_t) * 4003), *q = malloc(sizeof(int16_t) * 4003);
    for (int i = 0; i < 20; i++) ((float *)x.data)[i] = 0.0f; /* leading zeros */
    float unit = log_tensor(&x, &cfg, want);
    nbl_i4b_grid g;
    ck_assert_int_eq(nbl_i4b_codes_pow2(ISA, x.data, x.n, q, &g), 0);
    int smallest = 0;
    for (int64_t i = 0; i < x.n; i++) {
      ck_elem(((float *)x.data)[i] == g.unit * (float)q[i]); /* exact */
      ck_elem(q[i] == 0 || (abs(q[i]) & (abs(q[i]) - 1)) == 0);
      ck_elem(abs(q[i]) <= g.maxabs);
      smallest |= abs(want[i]) == 1;
    }
    int L = (1 << cs[c].eb) - 1;
    ck_assert_int_le(g.maxabs, 1 << ((cs[c].radix == 4 ? 2 : 1) * (L - 1)));
    if (smallest) { /* the recovered grid is the quantizer's own integer form */
      ck_assert(g.unit == unit);
      for (int64_t i = 0; i < x.n; i++) ck_elem_int_eq(q[i], want[i]);
    }
    free(want);
    free(q);
    t_free(&x);
  }
  /* radix 10 levels have different mantissas */
  nbl_log_config c10 = log_cfg(10, 3, NBL_LOG_NEAREST, 0);
  tens x = t_new(NBL_DT_FLOAT, DIMS(500));
  fill_grad(&x);
  log_tensor(&x, &c10, NULL);
  nbl_i4b_grid g;
  ck_assert_int_eq(nbl_i4b_codes_pow2(ISA, x.data, x.n, NULL, &g), -1);
  t_free(&x);
  /* hand cases */
  float ok[] = {0.0f, -0.0f, 0.75f, -3.0f, 0.1875f * 4, 48.0f}; /* 0.75 * 2^{0,2,0,6} */
  int16_t q[8];
  ck_assert_int_eq(nbl_i4b_codes_pow2(ISA, ok, 6, q, &g), 0);
  ck_assert(g.unit == 0.75f && g.maxabs == 64);
  ck_assert(q[0] == 0 && q[1] == 0 && q[2] == 1 && q[3] == -4 && q[4] == 1 && q[5] == 64);
  float zeros[3] = {0.0f, -0.0f, 0.0f};
  ck_assert_int_eq(nbl_i4b_codes_pow2(ISA, zeros, 3, q, &g), 0);
  ck_assert(g.unit == 1.0f && g.maxabs == 0 && q[0] == 0 && q[1] == 0);
  float span[2] = {1.0f, 32768.0f}; /* 2^15: beyond int16's safe range */
  ck_assert_int_eq(nbl_i4b_codes_pow2(ISA, span, 2, q, &g), -1);
  span[1] = 16384.0f;
  ck_assert_int_eq(nbl_i4b_codes_pow2(ISA, span, 2, q, &g), 0);
  ck_assert_int_eq(g.maxabs, 16384);
  float bad[4][2] = {{1.0f, NAN}, {1.0f, INFINITY}, {1.0f, 1e-40f}, {1.0f, 3.0f}};
  for (int i = 0; i < 4; i++) ck_assert_int_eq(nbl_i4b_codes_pow2(ISA, bad[i], 2, q, &g), -1);
  /* the same inside a vector block, and in a tail */
  float v[40];
  int16_t q40[40];
  for (int pos = 0; pos < 40; pos += 13)
    for (int i = 0; i < 4; i++) {
      for (int k = 0; k < 40; k++) v[k] = k % 3 ? -0.5f : 2.0f;
      ck_assert_int_eq(nbl_i4b_codes_pow2(ISA, v, 40, q40, &g), 0);
      ck_assert(g.unit == 0.5f && g.maxabs == 4 && q40[0] == 4 && q40[1] == -1);
      v[pos] = bad[i][1];
      ck_assert_int_eq(nbl_i4b_codes_pow2(ISA, v, 40, q40, &g), -1);
    }
}
END_TEST

START_TEST(test_codes_linear) {
  const struct {
    int bits, affine;
    nbl_q4_scale_source src;
  } cs[] = {{4, 0, NBL_Q4_SCALE_MAX}, {4, 1, NBL_Q4_SCALE_MAX}, {4, 0, NBL_Q4_SCALE_SAWB},
            {8, 0, NBL_Q4_SCALE_MAX}, {8, 1, NBL_Q4_SCALE_MAX}, {4, 0, NBL_Q4_SCALE_PACT}};
  for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
    tens x = t_rand(NBL_DT_FLOAT, -1.5, 3, DIMS(3001));
    int16_t *want = malloc(sizeof(int16_t) * 3001), *q = malloc(sizeof(int16_t) * 3001);
    float s = q4_tensor(&x, cs[c].bits, cs[c].affine, cs[c].src, want);
    nbl_i4b_grid g;
    ck_assert_int_eq(nbl_i4b_codes_linear(ISA, x.data, x.n, s, q, &g), 0);
    int mx = 0;
    for (int64_t i = 0; i < x.n; i++) {
      ck_elem_int_eq(q[i], want[i]);
      mx = abs(want[i]) > mx ? abs(want[i]) : mx;
    }
    ck_assert(g.unit == s);
    ck_assert_int_eq(g.maxabs, mx);
    ck_assert_int_le(mx, cs[c].bits == 8 ? 255 : 15);
    /* one value off the grid, or the wrong scale */
    float *v = x.data, keep = v[17];
    v[17] = nextafterf(v[17] == 0 ? s : v[17], INFINITY);
    ck_assert_int_eq(nbl_i4b_codes_linear(ISA, x.data, x.n, s, q, &g), -1);
    v[17] = keep;
    ck_assert_int_eq(nbl_i4b_codes_linear(ISA, x.data, x.n, s * 1.5f, q, &g), -1);
    free(want);
    free(q);
    t_free(&x);
  }
  float v[2] = {1.0f, NAN};
  int16_t q[2];
  nbl_i4b_grid g;
  ck_assert_int_eq(nbl_i4b_codes_linear(ISA, v, 2, 0.5f, q, &g), -1);
  ck_assert_int_eq(nbl_i4b_codes_linear(ISA, v, 1, 0.0f, q, &g), -1);
  ck_assert_int_eq(nbl_i4b_codes_linear(ISA, v, 1, NAN, q, &g), -1);
  float big[1] = {16385.0f};
  ck_assert_int_eq(nbl_i4b_codes_linear(ISA, big, 1, 1.0f, q, &g), -1);
  float w[40];
  int16_t q40[40];
  const float bads[4] = {NAN, INFINITY, 16385.0f * 0.25f, 0.3f};
  for (int pos = 0; pos < 40; pos += 13)
    for (int i = 0; i < 4; i++) {
      for (int k = 0; k < 40; k++) w[k] = 0.25f * (float)(k - 20);
      ck_assert_int_eq(nbl_i4b_codes_linear(ISA, w, 40, 0.25f, q40, &g), 0);
      ck_assert(g.maxabs == 20 && q40[0] == -20 && q40[39] == 19);
      w[pos] = bads[i];
      ck_assert_int_eq(nbl_i4b_codes_linear(ISA, w, 40, 0.25f, q40, &g), -1);
    }
  ck_assert_int_eq(nbl_i4b_kchunk(4096, 8), 65534);
  ck_assert_int_eq(nbl_i4b_kchunk(16384, 16384), 6);
  ck_assert_int_eq(nbl_i4b_kchunk(0, 0), 2147483646);
}
END_TEST

/* X's QuantizeInt4 codes as int16 codes: c - z, the largest |c - z|, the
 * marks of NaN and Inf (and anything past -126..126) refused, at every
 * length around the vector width and at every position. */
START_TEST(test_codes_int8) {
  int8_t c[100];
  int16_t q[100];
  for (int n = 0; n <= 100; n += n < 70 ? 1 : 15)
    for (int z = -8; z <= 15; z += 23) {
      int want = 0;
      for (int i = 0; i < n; i++) {
        c[i] = (int8_t)((i * 37 + n) % 64 - 32); /* -32..31, the codes of bits <= 6 */
        want = abs(c[i] - z) > want ? abs(c[i] - z) : want;
      }
      int32_t mx = -1;
      ck_assert_int_eq(nbl_i4b_codes_int8(ISA, c, n, z, q, &mx), 0);
      ck_assert_int_eq(mx, want);
      for (int i = 0; i < n; i++) ck_elem_int_eq(q[i], c[i] - z);
      const int8_t bad[5] = {NBL_Q4_CODE8_NAN, NBL_Q4_CODE8_PINF, NBL_Q4_CODE8_NINF, 127, -127};
      for (int pos = 0; pos < n; pos++)
        for (int b = 0; b < 5; b++) {
          const int8_t keep = c[pos];
          c[pos] = bad[b];
          ck_elem_int_eq(nbl_i4b_codes_int8(ISA, c, n, z, q, &mx), -1);
          c[pos] = keep;
        }
    }
  c[0] = 126, c[1] = -126;
  int32_t mx;
  ck_assert_int_eq(nbl_i4b_codes_int8(ISA, c, 2, -128, q, &mx), 0); /* (the widest: 126 + 128) */
  ck_assert(q[0] == 254 && q[1] == 2 && mx == 254);
}
END_TEST

/* A QuantizeLog's int8 codes as int16 integers through the table (radix 4,
 * L levels: code +-k is +-4^(L - k)), the largest |integer|; codes past
 * +-L and the marks of NaN and Inf refused at every position; the check
 * alone (q NULL) gives the bound of the |codes| present. Every length
 * around the vector widths. */
START_TEST(test_codes_log) {
  int32_t lut[32] = {0};
  int8_t c[140];
  int16_t q[140];
  for (int L = 1; L <= 7; L += 3) {
    for (int k = 1; k <= L; k++) lut[16 + k] = 1 << (2 * (L - k)), lut[16 - k] = -(1 << (2 * (L - k)));
    for (int n = 0; n <= 140; n += n < 100 ? 1 : 13) {
      int want = 0, amin = 99;
      for (int i = 0; i < n; i++) {
        c[i] = (int8_t)((i * 29 + n * 7 + L) % (2 * L + 1) - L); /* -L..L */
        const int a = abs(lut[c[i] + 16]);
        want = a > want ? a : want;
        if (c[i]) amin = abs(c[i]) < amin ? abs(c[i]) : amin;
      }
      int32_t mx = -1;
      ck_assert_int_eq(nbl_i4b_codes_log(ISA, c, n, L, lut, q, &mx), 0);
      ck_assert_int_eq(mx, want);
      for (int i = 0; i < n; i++) ck_elem_int_eq(q[i], lut[c[i] + 16]);
      ck_assert_int_eq(nbl_i4b_codes_log(ISA, c, n, L, lut, NULL, &mx), 0);
      ck_assert_int_eq(mx, amin == 99 ? 0 : abs(lut[16 + amin])); /* the bound: the smallest |code| present */
      const int8_t bad[5] = {(int8_t)(L + 1), (int8_t)-(L + 1), NBL_LOG_CODE_NAN, NBL_LOG_CODE_POS_INF,
                             NBL_LOG_CODE_NEG_INF};
      for (int pos = 0; pos < n; pos += n < 40 ? 1 : 7)
        for (int b = 0; b < 5; b++) {
          const int8_t keep = c[pos];
          c[pos] = bad[b];
          ck_elem_msg(nbl_i4b_codes_log(ISA, c, n, L, lut, q, &mx) == -1, "L %d n %d pos %d code %d", L, n,
                      pos, bad[b]);
          ck_elem_int_eq(nbl_i4b_codes_log(ISA, c, n, L, lut, NULL, &mx), -1);
          c[pos] = keep;
        }
    }
  }
}
END_TEST

/* The variant follows the calling thread's CPU cap (runtime/core/cpu.h), a
 * forced one (tests) overrides it, and a variant the CPU lacks is never used. */
START_TEST(test_isa_choice) {
  nbl_i4b_set_isa(-1);
  const nbl_isa prev = nbl_cpu_set_thread_cap(NBL_ISA_SCALAR);
  ck_assert_int_eq(nbl_i4b_best_isa(), NBL_I4B_SCALAR);
  nbl_cpu_set_thread_cap(NBL_ISA_AVX2); /* the process cap (NBL_ISA) may be lower still */
  ck_assert_int_eq(nbl_i4b_best_isa(), nbl_i4b_isa_supported(NBL_I4B_AVX2) && nbl_cpu_level() >= NBL_ISA_AVX2
                                           ? NBL_I4B_AVX2
                                           : NBL_I4B_SCALAR);
  nbl_i4b_set_isa(NBL_I4B_AVX512);
  ck_assert_int_eq(nbl_i4b_best_isa(), nbl_i4b_isa_supported(NBL_I4B_AVX512) ? NBL_I4B_AVX512
                                       : nbl_i4b_isa_supported(NBL_I4B_AVX2) ? NBL_I4B_AVX2
                                                                              : NBL_I4B_SCALAR);
  nbl_i4b_set_isa(-1);
  nbl_cpu_set_thread_cap(prev);
  ck_assert_str_eq(nbl_i4b_isa_name(NBL_I4B_AVX512), "avx512");
}
END_TEST

/* ------------------------------------------------------------------ the GEMM */

/* C = A * B for random codes, every sink and packing path, B's pair rows by
 * pointer too, all variants. */
static void gemm_case(int64_t M, int64_t N, int64_t K, int32_t amax, int32_t bmax, int bpath) {
  int16_t *A = malloc(sizeof(int16_t) * (size_t)(M * K)), *Bsrc;
  const int64_t sk = bpath == 0 ? N : bpath == 1 ? 1 : 2 * N + 1, sn = bpath == 0 ? 1 : bpath == 1 ? K : 2;
  const int64_t nsrc = (K - 1) * sk + (N - 1) * sn + 1;
  Bsrc = malloc(sizeof(int16_t) * (size_t)nsrc);
  for (int64_t i = 0; i < M * K; i++) A[i] = (int16_t)rnd_code(amax);
  for (int64_t i = 0; i < nsrc; i++) Bsrc[i] = (int16_t)rnd_code(bmax);
  int64_t *ref = calloc((size_t)(M * N), sizeof(int64_t));
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      int64_t s = 0;
      for (int64_t k = 0; k < K; k++) s += (int64_t)A[m * K + k] * Bsrc[k * sk + n * sn];
      ref[m * N + n] = s;
    }
  const int64_t Kp = (K + 1) & ~(int64_t)1;
  int16_t *Ap = malloc(sizeof(int16_t) * (size_t)(M * Kp));
  nbl_i4b_pack_rows(A, M, K, K, 1, Ap, Kp);
  const int64_t kchunk = nbl_i4b_kchunk(amax, bmax);
  const int fits32 = (double)K * amax * bmax <= (double)INT32_MAX;
  const double scale = 0.375e-3;
  int64_t *c64 = malloc(sizeof(int64_t) * (size_t)(M * N));
  int32_t *c32 = malloc(sizeof(int32_t) * (size_t)(M * N));
  float *cf = malloc(sizeof(float) * (size_t)(M * N)), *ct = malloc(sizeof(float) * (size_t)(M * N));
  int ni = n_isas();
  for (int v = 0; v < ni; v++) {
    nbl_i4b_panels B = {0};
    ck_assert_int_eq(nbl_i4b_panels_reserve(&B, K, N), 0);
    nbl_i4b_pack(g_isas[v], Bsrc, sk, sn, &B);
    memset(c64, 0, sizeof(int64_t) * (size_t)(M * N));
    nbl_i4b_sink add = {.kind = NBL_I4B_ADD64, .c = c64, .ldc = N};
    /* two row ranges, as threads split them */
    nbl_i4b_gemm(g_isas[v], Ap, Kp, 0, M / 2, 0, N, &B, kchunk, &add);
    nbl_i4b_gemm(g_isas[v], Ap, Kp, M / 2, M, 0, N, &B, kchunk, &add);
    for (int64_t i = 0; i < M * N; i++)
      ck_elem_msg(c64[i] == ref[i], "gemm %lldx%lldx%lld path %d %s: [%lld] %lld != %lld", (long long)M,
                  (long long)N, (long long)K, bpath, nbl_i4b_isa_name(g_isas[v]), (long long)i,
                  (long long)c64[i], (long long)ref[i]);
    if (fits32) {
      nbl_i4b_sink st = {.kind = NBL_I4B_STORE32, .c = c32, .ldc = N};
      nbl_i4b_gemm(g_isas[v], Ap, Kp, 0, M, 0, N, &B, kchunk, &st);
      for (int64_t i = 0; i < M * N; i++) ck_elem_int_eq(c32[i], ref[i]);
    }
    nbl_i4b_sink sf = {.kind = NBL_I4B_SCALE_F32, .c = cf, .ldc = N, .scale = scale};
    nbl_i4b_gemm(g_isas[v], Ap, Kp, 0, M, 0, N, &B, kchunk, &sf);
    nbl_i4b_sink tf = {.kind = NBL_I4B_SCALE_F32, .c = ct, .ldc = M, .trans = 1, .scale = scale};
    nbl_i4b_gemm(g_isas[v], Ap, Kp, 0, M, 0, N, &B, kchunk, &tf);
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++) {
        float want = (float)((double)ref[m * N + n] * scale);
        ck_elem(cf[m * N + n] == want);
        ck_elem(ct[n * M + m] == want);
      }
    nbl_i4b_panels_free(&B);
    /* B's pair rows by pointer (nbl_i4b_gemm_pairs): row j holds the codes
     * of k = 2j, 2j + 1 side by side for every column, past N the 32
     * columns of slack the micro-kernels may read (random codes within the
     * bound, as the contract asks: they must not reach an output) */
    const int64_t rl = 2 * (N + 32);
    int16_t *prow = malloc(sizeof(int16_t) * (size_t)(Kp / 2 * rl));
    const int16_t **Bj = malloc(sizeof(*Bj) * (size_t)(Kp / 2));
    for (int64_t j = 0; j < Kp / 2; j++) {
      Bj[j] = prow + j * rl;
      for (int64_t n = 0; n < N + 32; n++)
        for (int t = 0; t < 2; t++) {
          const int64_t k = 2 * j + t;
          prow[j * rl + 2 * n + t] = n >= N ? (int16_t)rnd_code(bmax) : k < K ? Bsrc[k * sk + n * sn] : 0;
        }
    }
    memset(c64, 0, sizeof(int64_t) * (size_t)(M * N));
    nbl_i4b_gemm_pairs(g_isas[v], Ap, Kp, 0, M / 2, 0, N, Bj, Kp, kchunk, &add);
    nbl_i4b_gemm_pairs(g_isas[v], Ap, Kp, M / 2, M, 0, N, Bj, Kp, kchunk, &add);
    for (int64_t i = 0; i < M * N; i++)
      ck_elem_msg(c64[i] == ref[i], "gemm_pairs %lldx%lldx%lld %s: [%lld] %lld != %lld", (long long)M,
                  (long long)N, (long long)K, nbl_i4b_isa_name(g_isas[v]), (long long)i, (long long)c64[i],
                  (long long)ref[i]);
    nbl_i4b_gemm_pairs(g_isas[v], Ap, Kp, 0, M, 0, N, Bj, Kp, kchunk, &sf);
    for (int64_t i = 0; i < M * N; i++) ck_elem(cf[i] == (float)((double)ref[i] * scale));
    free(prow);
    free(Bj);
  }
  free(A);
  free(Bsrc);
  free(Ap);
  free(ref);
  free(c64);
  free(c32);
  free(cf);
  free(ct);
}

START_TEST(test_gemm_exact) {
  const int64_t Ms[] = {1, 5, 6, 7, 12, 13};
  const int64_t Ns[] = {1, 15, 16, 17, 32, 33, 48};
  const int64_t Ks[] = {1, 2, 3, 32, 33, 64};
  for (size_t a = 0; a < 6; a++)
    for (size_t b = 0; b < 7; b++)
      for (size_t c = 0; c < 6; c++) gemm_case(Ms[a], Ns[b], Ks[c], 4096, 8, (int)((a + b + c) % 3));
  /* long and wide sums: 8-bit codes times 2^12, and the largest codes
   * (int32 chunks of 6 products, added in int64) */
  gemm_case(13, 33, 9000, 4096, 255, 0);
  gemm_case(7, 17, 101, 16384, 16384, 1);
  gemm_case(6, 32, 250, 16384, 16384, 2);
  gemm_case(19, 40, 96, 16384, 16384, 0);
}
END_TEST

/* ------------------------------------------------------------------ ConvGrad */

typedef struct ccase {
  const char *what;
  int ns;
  int64_t N, C, M, group;
  int64_t in[3], k[3], s[3], d[3], pb[3], pe[3];
  int xbits, wbits;
  int radix, eb; /* dY's log quantizer */
} ccase;

static nbl_conv_geom geom_of(const ccase *c) {
  return td_conv_geom(c->ns, c->N, c->C, c->M, c->group, c->in, c->k, c->s, c->d, c->pb, c->pe);
}

/* The plain-C integer ConvGrad: direct loops over images, channels, output
 * positions and taps (multi-indices decoded here, independently of the kernels). */
static void conv_ref_int(const nbl_conv_geom *g, const int16_t *dy, const int16_t *x, const int16_t *w, int64_t *dx,
                         int64_t *dw, int64_t *db) {
  const int64_t Cg = g->C / g->group, Mg = g->M / g->group;
  memset(dx, 0, sizeof(int64_t) * (size_t)(g->N * g->C * g->in_sz));
  memset(dw, 0, sizeof(int64_t) * (size_t)(g->M * Cg * g->k_sz));
  memset(db, 0, sizeof(int64_t) * (size_t)g->M);
  for (int64_t n = 0; n < g->N; n++)
    for (int64_t m = 0; m < g->M; m++)
      for (int64_t a = 0; a < g->out_sz; a++) {
        const int64_t yv = dy[(n * g->M + m) * g->out_sz + a];
        db[m] += yv;
        for (int64_t ki = 0; ki < g->k_sz; ki++) {
          int64_t ra = a, rk = ki, idx = 0, inside = 1, o[3], kk[3];
          for (int i = g->ns - 1; i >= 0; i--) {
            o[i] = ra % g->out[i];
            ra /= g->out[i];
            kk[i] = rk % g->k[i];
            rk /= g->k[i];
          }
          for (int i = 0; i < g->ns; i++) {
            int64_t p = o[i] * g->s[i] - g->pb[i] + kk[i] * g->d[i];
            inside &= p >= 0 && p < g->in[i];
            idx = idx * g->in[i] + p;
          }
          if (!inside) continue;
          for (int64_t cc = 0; cc < Cg; cc++) {
            const int64_t ch = (m / Mg) * Cg + cc, xi = (n * g->C + ch) * g->in_sz + idx;
            const int64_t wi = (m * Cg + cc) * g->k_sz + ki;
            dx[xi] += yv * w[wi];
            dw[wi] += yv * x[xi];
          }
        }
      }
}

static attr *conv_attrs(const ccase *c, attr *a) {
  int n = 0;
  a[n] = (attr){.name = "kernel_shape", .kind = 'v', .n = c->ns};
  a[n + 1] = (attr){.name = "strides", .kind = 'v', .n = c->ns};
  a[n + 2] = (attr){.name = "dilations", .kind = 'v', .n = c->ns};
  a[n + 3] = (attr){.name = "pads", .kind = 'v', .n = 2 * c->ns};
  for (int i = 0; i < c->ns; i++) {
    a[0].v[i] = c->k[i];
    a[1].v[i] = c->s[i];
    a[2].v[i] = c->d[i];
    a[3].v[i] = c->pb[i];
    a[3].v[c->ns + i] = c->pe[i];
  }
  a[4] = AI("group", c->group);
  a[5] = AEND;
  return a;
}

/* |y - ref| <= TOL_EPS * abs_sum for every element of output o */
static void expect_close(const char *what, const char *out, const nbl_host_tensor *y, const nbl_host_tensor *ref,
                         const nbl_host_tensor *abs_sum) {
  const int64_t n = (int64_t)(ref->nbytes / sizeof(float));
  ck_assert_int_eq((int64_t)(y->nbytes / sizeof(float)), n);
  for (int64_t i = 0; i < n; i++) {
    double a = h_get(y, i), b = h_get(ref, i), t = TOL_EPS * h_get(abs_sum, i) + 1e-30;
    ck_elem_msg(fabs(a - b) <= t, "%s %s[%lld]: %.9g vs reference %.9g (tolerance %.3g)", what, out, (long long)i, a,
                b, t);
  }
}

static void conv_case(const ccase *c) {
  const nbl_conv_geom g = geom_of(c);
  const int64_t Cg = c->C / c->group;
  tens x = t_rand(NBL_DT_FLOAT, -1, 2, 2 + c->ns, (int64_t[]){c->N, c->C, c->in[0], c->in[1], c->in[2]});
  tens w = t_rand(NBL_DT_FLOAT, -0.5, 0.5, 2 + c->ns, (int64_t[]){c->M, Cg, c->k[0], c->k[1], c->k[2]});
  tens dy = t_new(NBL_DT_FLOAT, 2 + c->ns, (int64_t[]){c->N, c->M, g.out[0], g.out[1], g.out[2]});
  fill_grad(&dy);
  int16_t *xq = malloc(sizeof(int16_t) * (size_t)x.n), *wq = malloc(sizeof(int16_t) * (size_t)w.n);
  int16_t *dyq = malloc(sizeof(int16_t) * (size_t)dy.n);
  float sx = q4_tensor(&x, c->xbits, 1, NBL_Q4_SCALE_MAX, xq);
  const int xz = g_q4_zero;
  float sw = q4_tensor(&w, c->wbits, 0, c->wbits == 4 ? NBL_Q4_SCALE_SAWB : NBL_Q4_SCALE_MAX, wq);
  nbl_log_config lc = log_cfg(c->radix, c->eb, NBL_LOG_NEAREST, 0);
  float u = log_tensor(&dy, &lc, dyq);
  int32_t xm = 0, wm = 0, dm = 0;
  for (int64_t i = 0; i < x.n; i++) xm = abs(xq[i]) > xm ? abs(xq[i]) : xm;
  for (int64_t i = 0; i < w.n; i++) wm = abs(wq[i]) > wm ? abs(wq[i]) : wm;
  for (int64_t i = 0; i < dy.n; i++) dm = abs(dyq[i]) > dm ? abs(dyq[i]) : dm;

  /* 1. the exact accumulators against the integer reference, every variant */
  int64_t *rdx = malloc(sizeof(int64_t) * (size_t)x.n), *rdw = malloc(sizeof(int64_t) * (size_t)w.n);
  int64_t *rdb = malloc(sizeof(int64_t) * (size_t)c->M);
  conv_ref_int(&g, dyq, xq, wq, rdx, rdw, rdb);
  int64_t *adx = malloc(sizeof(int64_t) * (size_t)x.n), *adw = malloc(sizeof(int64_t) * (size_t)w.n);
  int64_t *adb = malloc(sizeof(int64_t) * (size_t)c->M);
  const int ni = n_isas();
  /* the AMX tiles take dW of 2-D one-group undilated layers with 7-bit
   * activation codes, 4 channels or more and every stride phase reached by
   * a tap, and dX of 2-D one-group undilated layers with 7-bit weight codes
   * (phases without taps: zeros) */
  const int amx_geom = c->ns == 2 && c->group == 1 && c->d[0] == 1 && c->d[1] == 1;
  const int amx_cover = c->ns == 2 && c->k[0] >= c->s[0] && c->k[1] >= c->s[1]; /* every stride phase has taps */
  const int amx_dw = amx_geom && amx_cover && xm <= 127 && c->C >= 4;
  const int amx_dx = amx_geom && wm <= 127;
  for (int v = 0; v < ni; v++)
    for (int amx = 0; amx <= (g_isas[v] == NBL_I4B_AVX512 && nbl_i4b_amx_supported()); amx++)
      for (int wide = 1; wide >= 0; wide--) { /* unit strides: from the padded planes, and through im2col */
        nbl_kdebug_set(NBL_KS_I4B_WIDE, wide);
        nbl_i4b_set_amx(amx);
        const long runs = nbl_i4b_amx_runs();
        nbl_i4b_conv_out o = {.dx_acc = adx, .dw_acc = adw, .db_acc = adb};
        ck_assert_int_eq(nbl_i4b_conv_grad(NULL, g_isas[v], &g, dyq, dm, xq, xm, wq, wm, &o), NBL_OK);
        ck_assert_int_eq(nbl_i4b_amx_runs() - runs, amx ? amx_dw + amx_dx : 0);
        for (int64_t i = 0; i < x.n; i++)
          ck_elem_msg(adx[i] == rdx[i], "%s (%s, amx %d, wide %d) dX acc[%lld] %lld != %lld", c->what,
                      nbl_i4b_isa_name(g_isas[v]), amx, wide, (long long)i, (long long)adx[i], (long long)rdx[i]);
        for (int64_t i = 0; i < w.n; i++)
          ck_elem_msg(adw[i] == rdw[i], "%s (%s, amx %d, wide %d) dW acc[%lld] %lld != %lld", c->what,
                      nbl_i4b_isa_name(g_isas[v]), amx, wide, (long long)i, (long long)adw[i], (long long)rdw[i]);
        for (int64_t i = 0; i < c->M; i++) ck_assert(adb[i] == rdb[i]);
      }
  nbl_i4b_set_amx(-1);
  nbl_kdebug_reset();

  /* 2. the op (a session of two threads: the packing sweeps and tiles split
   * between them) against the float reference ConvGrad on the dequantized
   * operands */
  attr a[8];
  conv_attrs(c, a);
  tens in[6] = {dy, x, w, t_scalar(NBL_DT_FLOAT, sx), t_scalar(NBL_DT_FLOAT, sw), NONE};
  runner *ref = runner_new(MS, "ConvGrad", 1, a, 3, in, 3, NULL, 1);
  ck_assert_msg(runner_run(ref, in) == NBL_OK, "%s: %s", c->what, nbl_last_error());
  tens ab[3] = {t_clone(&dy), t_clone(&x), t_clone(&w)};
  for (int t = 0; t < 3; t++)
    for (int64_t i = 0; i < ab[t].n; i++) ((float *)ab[t].data)[i] = fabsf(((float *)ab[t].data)[i]);
  runner *abs_r = runner_new(MS, "ConvGrad", 1, a, 3, ab, 3, NULL, 1);
  ck_assert(runner_run(abs_r, ab) == NBL_OK);
  nbl_host_tensor first[3];
  void *keep[3] = {0};
  const int amx_ok = ni > 0 && g_isas[ni - 1] == NBL_I4B_AVX512 && nbl_i4b_amx_supported();
  for (int v = 0; v < ni + amx_ok; v++) { /* the last: AVX-512 with the AMX tiles */
    nbl_i4b_set_isa(g_isas[v < ni ? v : ni - 1]);
    nbl_i4b_set_amx(v == ni);
    long runs = nbl_i4b_integer_runs(), amx_runs = nbl_i4b_amx_runs();
    runner *r = runner_new("ai.nibble", "Int4LogConvGrad", 1, a, 5, in, 3, NULL, 0);
    ck_assert_msg(runner_run(r, in) == NBL_OK, "%s: %s", c->what, nbl_last_error());
    ck_assert_int_eq(nbl_i4b_integer_runs(), runs + 1);
    /* the op's AMX products: the layers the tiles take */
    ck_assert_int_eq(nbl_i4b_amx_runs() - amx_runs, v == ni ? amx_dw + amx_dx : 0);
    static const char *const names[3] = {"dX", "dW", "dB"};
    for (int o = 0; o < 3; o++) {
      expect_close(c->what, names[o], &r->out[o], &ref->out[o], &abs_r->out[o]);
      if (v == 0) {
        first[o] = r->out[o];
        first[o].data = keep[o] = malloc(r->out[o].nbytes + 1);
        memcpy(keep[o], r->out[o].data, r->out[o].nbytes);
      } else { /* every variant: the same bits */
        ck_assert(memcmp(first[o].data, r->out[o].data, first[o].nbytes) == 0);
      }
    }
    /* the float outputs are the accumulators rescaled once */
    const float *dxo = r->out[0].data, *dwo = r->out[1].data;
    for (int64_t i = 0; i < x.n; i++) ck_elem(dxo[i] == (float)((double)rdx[i] * ((double)u * (double)sw)));
    for (int64_t i = 0; i < w.n; i++) ck_elem(dwo[i] == (float)((double)rdw[i] * ((double)u * (double)sx)));
    runner_free(r);
  }
  /* 4. with the QuantizeLog's codes and top handed over (inputs 6 and 7, as
   * int4-backward wires them): the same bits, every variant, the floats of
   * dY not read (a planted wrong code or top changes the outputs); a NaN's
   * code (or a code past the grid) sends it back to the floats; and with
   * dY omitted (as the pass wires it), the same bits, and a NaN's code
   * gives the float path on the codes' values (NaN outputs: not the same) */
  {
    nbl_log_params lp;
    nbl_log_choose(&lc, dy.data, (size_t)dy.n, &lp);
    tens k8 = t_new(NBL_DT_INT8, dy.rank, dy.dims);
    int64_t nz = -1;
    for (int64_t i = 0; i < dy.n; i++) {
      const int code = nbl_log_code(&lc, &lp, ((float *)dy.data)[i], (uint64_t)i);
      ((int8_t *)k8.data)[i] = (int8_t)code;
      if (code && nz < 0) nz = i;
      ck_elem(nbl_log_value(&lc, &lp, code) == ((float *)dy.data)[i]); /* dY is on its grid */
    }
    ck_assert_int_ge(nz, 0);
    tens in8[8] = {dy, x, w, in[3], in[4], NONE, k8, t_scalar(NBL_DT_FLOAT, lp.top)};
    attr a8[10];
    conv_attrs(c, a8);
    a8[5] = AI("log_radix", c->radix);
    a8[6] = AI("log_exp_bits", c->eb);
    a8[7] = AEND;
    for (int v = 0; v < 2 * (ni + amx_ok); v++) {
      const int nody = v >= ni + amx_ok, vi = v % (ni + amx_ok);
      nbl_i4b_set_isa(g_isas[vi < ni ? vi : ni - 1]);
      nbl_i4b_set_amx(vi == ni);
      in8[0] = nody ? NONE : dy;
      /* 0: as made, 1: one sign flipped, 2: NaN code, 3: top doubled, 4: NaN
       * code at the last element (the last of the chunks that two threads
       * convert, where dY is large enough to split) */
      for (int plant = 0; plant < 5; plant++) {
        int8_t *k = k8.data;
        const int64_t at = plant == 4 ? dy.n - 1 : nz;
        const int8_t keep8 = k[at];
        if (plant == 1) k[nz] = (int8_t)-k[nz];
        if (plant == 2 || plant == 4) k[at] = NBL_LOG_CODE_NAN;
        ((float *)in8[7].data)[0] = plant == 3 ? 2.0f * lp.top : lp.top;
        long runs = nbl_i4b_integer_runs(), fruns = nbl_i4b_float_runs();
        runner *r = runner_new("ai.nibble", "Int4LogConvGrad", 1, a8, 8, in8, 3, NULL, 0);
        ck_assert_msg(runner_run(r, in8) == NBL_OK, "%s: %s", c->what, nbl_last_error());
        const int nan_float = nody && (plant == 2 || plant == 4); /* the float kernel on a NaN */
        ck_assert_int_eq(nbl_i4b_integer_runs(), runs + !nan_float);
        ck_assert_int_eq(nbl_i4b_float_runs(), fruns + nan_float);
        int same = 1;
        for (int o = 0; o < 3; o++) same &= memcmp(first[o].data, r->out[o].data, first[o].nbytes) == 0;
        ck_assert_msg(same == (plant == 0 || ((plant == 2 || plant == 4) && !nody)),
                      "%s: codes handed over (variant %d, dY %s, plant %d): %s", c->what, vi, nody ? "omitted" : "given",
                      plant, same ? "the planted error went unseen" : "outputs differ");
        if (nan_float) ck_assert(isnan(((float *)r->out[2].data)[((at / g.out_sz) % c->M)])); /* dB of its channel */
        k[at] = keep8;
        runner_free(r);
      }
    }
    nbl_i4b_set_isa(-1);
    nbl_i4b_set_amx(-1);
    t_free(&k8);
    t_free(&in8[7]);
  }
  /* 3. dX alone and dW alone (the nodes of the training graphs): on the AMX
   * tiles the products then read the floats of dY and X, their codes made
   * while packing; the same bits as above, every variant */
  for (int v = 0; v < ni + amx_ok; v++) {
    nbl_i4b_set_isa(g_isas[v < ni ? v : ni - 1]);
    nbl_i4b_set_amx(v == ni);
    for (int o = 0; o < 2; o++) {
      const int want[3] = {o == 0, o == 1, 0};
      const long amx_runs = nbl_i4b_amx_runs();
      runner *r = runner_new("ai.nibble", "Int4LogConvGrad", 1, a, 5, in, 3, want, 0);
      ck_assert_msg(runner_run(r, in) == NBL_OK, "%s: %s", c->what, nbl_last_error());
      ck_assert_int_eq((int64_t)r->out[0].nbytes, (int64_t)first[o].nbytes); /* (the one requested output) */
      ck_assert_msg(memcmp(first[o].data, r->out[0].data, first[o].nbytes) == 0, "%s: %s alone (variant %d)",
                    c->what, o ? "dW" : "dX", v);
      ck_assert_int_eq(nbl_i4b_amx_runs() - amx_runs, v == ni ? (o ? amx_dw : amx_dx) : 0);
      runner_free(r);
    }
  }
  /* 5. X's QuantizeInt4 codes and zero point handed over (inputs 8 and 9,
   * as int4-backward wires them; bits <= 6), X given or omitted: the same
   * bits, every variant, all outputs and dW alone; planted wrong codes
   * change dW (every path reads the codes: the AMX tiles as they pack, the
   * others as int16 codes, nbl_i4b_codes_int8); with X a non-finite mark
   * sends the products back to X's floats (the same bits), without X it is
   * X's NaN */
  if (c->xbits <= 6) {
    tens xk = t_new(NBL_DT_INT8, x.rank, x.dims);
    int64_t at = -1;
    for (int64_t i = 0; i < x.n; i++) {
      ((int8_t *)xk.data)[i] = (int8_t)(xq[i] + xz);
      if (at < 0 && xq[i] + xz > -100 && xq[i] + xz < 100 && xq[i] != 0) at = i;
    }
    ck_assert_int_ge(at, 0);
    tens z8 = t_new(NBL_DT_INT8, 0, NULL);
    ((int8_t *)z8.data)[0] = (int8_t)xz;
    tens in10[10] = {dy, x, w, in[3], in[4], NONE, NONE, NONE, xk, z8};
    for (int v = 0; v < ni + amx_ok; v++) {
      nbl_i4b_set_isa(g_isas[v < ni ? v : ni - 1]);
      nbl_i4b_set_amx(v == ni);
      for (int omit = 0; omit < 2; omit++) /* X given, or omitted (the pass drops the QuantizeInt4's Y) */
        for (int alone = 0; alone < 2; alone++)
          for (int plant = 0; plant < 3; plant++) { /* 0: as made, 1: one code + 1, 2: NaN's mark */
            int8_t *k = xk.data;
            const int8_t keep8 = k[at];
            if (plant == 1) /* every code + 1 (one element alone may be a pixel no tap reads) */
              for (int64_t i = 0; i < x.n; i++) k[i] = (int8_t)(k[i] + (k[i] < 126));
            if (plant == 2) k[at] = NBL_Q4_CODE8_NAN;
            const int want[3] = {!alone, 1, !alone};
            in10[1] = omit ? NONE : x;
            runner *r = runner_new("ai.nibble", "Int4LogConvGrad", 1, a, 10, in10, 3, want, 0);
            ck_assert_msg(runner_run(r, in10) == NBL_OK, "%s: %s", c->what, nbl_last_error());
            const nbl_host_tensor *dw = &r->out[alone ? 0 : 1];
            const int same = memcmp(first[1].data, dw->data, first[1].nbytes) == 0;
            /* (a NaN's mark without X: X's NaN, for the float kernel, unless no
             * tap reads it) */
            const int seen = plant == 1;
            if (!(plant == 2 && omit))
              ck_assert_msg(same == !seen, "%s: X's codes handed over (variant %d, X %s, alone %d, plant %d): %s",
                            c->what, v, omit ? "omitted" : "given", alone, plant,
                            same ? "the planted error went unseen" : "dW differs");
            if (!alone && !(plant == 2 && omit)) ck_assert(memcmp(first[0].data, r->out[0].data, first[0].nbytes) == 0);
            if (plant == 1)
              for (int64_t i = 0; i < x.n; i++) k[i] = (int8_t)(xq[i] + xz);
            k[at] = keep8;
            runner_free(r);
          }
    }
    t_free(&xk);
    t_free(&in10[9]);
  }
  nbl_i4b_set_isa(-1);
  nbl_i4b_set_amx(-1);
  for (int o = 0; o < 3; o++) free(keep[o]);
  runner_free(ref);
  runner_free(abs_r);
  for (int t = 0; t < 3; t++) t_free(&ab[t]);
  t_free(&in[3]);
  t_free(&in[4]);
  t_free(&x);
  t_free(&w);
  t_free(&dy);
  free(xq);
  free(wq);
  free(dyq);
  free(rdx);
  free(rdw);
  free(rdb);
  free(adx);
  free(adw);
  free(adb);
}

#define SP2(a, b) {a, b, 1}
static const ccase conv_cases[] = {
    {"LeNet conv2", 2, 3, 6, 16, 1, SP2(12, 12), SP2(5, 5), SP2(1, 1), SP2(1, 1), SP2(0, 0), SP2(0, 0), 4, 4, 4, 3},
    {"LeNet conv1, 8-bit input, two image chunks", 2, 9, 1, 6, 1, SP2(28, 28), SP2(5, 5), SP2(1, 1), SP2(1, 1),
     SP2(0, 0), SP2(0, 0), 8, 4, 4, 3},
    {"strided, asymmetric pads, odd sizes", 2, 3, 3, 17, 1, SP2(9, 11), SP2(3, 3), SP2(2, 2), SP2(1, 1), SP2(1, 0),
     SP2(1, 2), 4, 4, 4, 3},
    {"groups and dilations", 2, 2, 8, 12, 4, SP2(7, 7), SP2(3, 3), SP2(1, 1), SP2(2, 2), SP2(1, 1), SP2(1, 1), 4, 4, 4,
     3},
    {"depthwise", 2, 2, 5, 5, 5, SP2(10, 10), SP2(3, 3), SP2(1, 1), SP2(1, 1), SP2(1, 1), SP2(1, 1), 4, 4, 4, 3},
    {"pointwise stride 2 (ResNet shortcut)", 2, 3, 16, 32, 1, SP2(14, 14), SP2(1, 1), SP2(2, 2), SP2(1, 1), SP2(0, 0),
     SP2(0, 0), 4, 4, 4, 3},
    {"tile edges: 33 channels, 45 rows", 2, 1, 5, 33, 1, SP2(6, 6), SP2(3, 3), SP2(1, 1), SP2(1, 1), SP2(1, 1),
     SP2(1, 1), 4, 4, 4, 3},
    {"stride 1, pads 1 (ResNet block): dX as a convolution of dY", 2, 2, 16, 16, 1, SP2(10, 10), SP2(3, 3),
     SP2(1, 1), SP2(1, 1), SP2(1, 1), SP2(1, 1), 4, 4, 4, 3},
    {"ResNet block at 28 x 28: dW from the padded planes, two image chunks", 2, 6, 16, 16, 1, SP2(28, 28),
     SP2(3, 3), SP2(1, 1), SP2(1, 1), SP2(1, 1), SP2(1, 1), 4, 4, 4, 3},
    {"padded planes with groups, dilation 2, asymmetric pads, 10 channels", 2, 2, 4, 10, 2, {30, 29}, SP2(3, 3),
     SP2(1, 1), SP2(2, 2), {2, 1}, {1, 2}, 4, 4, 4, 3},
    {"stride 1, asymmetric pads, dilation 2, 8-bit weights", 2, 3, 7, 5, 1, SP2(9, 8), SP2(3, 2), SP2(1, 1),
     SP2(2, 1), SP2(2, 0), SP2(1, 1), 4, 8, 4, 3},
    {"pads past the kernel's extent", 2, 1, 3, 4, 1, SP2(5, 5), SP2(2, 2), SP2(1, 1), SP2(1, 1), SP2(3, 3),
     SP2(3, 3), 4, 4, 4, 3},
    {"row stride 2, column stride 1 and dilation 2, 37 columns (col2im by rows of 16)", 2, 2, 3, 5, 1, SP2(9, 37),
     SP2(3, 3), {2, 1}, {1, 2}, {1, 2}, {0, 1}, 4, 4, 4, 3},
    {"1-D", 1, 2, 3, 5, 1, {17}, {4}, {3}, {1}, {2}, {1}, 4, 4, 4, 3},
    {"3-D", 3, 1, 2, 3, 1, {5, 4, 6}, {2, 3, 2}, {1, 2, 1}, {1, 1, 1}, {1, 1, 0}, {0, 1, 1}, 4, 4, 4, 3},
    {"ResNet downsample 16 -> 32, 3 x 3 stride 2 at 28 x 28 (dW over stride-phase planes)", 2, 2, 16, 32, 1,
     SP2(28, 28), SP2(3, 3), SP2(2, 2), SP2(1, 1), SP2(1, 1), SP2(1, 1), 4, 4, 4, 3},
    {"ResNet block 32 -> 32 at 14 x 14: two channel blocks", 2, 2, 32, 32, 1, SP2(14, 14), SP2(3, 3), SP2(1, 1),
     SP2(1, 1), SP2(1, 1), SP2(1, 1), 4, 4, 4, 3},
    {"ResNet block 64 -> 64 at 7 x 7 (dW im2col by whole tap planes)", 2, 2, 64, 64, 1, SP2(7, 7), SP2(3, 3),
     SP2(1, 1), SP2(1, 1), SP2(1, 1), SP2(1, 1), 4, 4, 4, 3},
    {"small planes, asymmetric pads, 2 x 3 kernel", 2, 2, 5, 6, 1, {6, 5}, {2, 3}, SP2(1, 1), SP2(1, 1), {1, 0},
     {0, 2}, 4, 4, 4, 3},
    {"16 images at 28 x 28: dW's image chunks whole on each thread", 2, 16, 8, 8, 1, SP2(28, 28), SP2(3, 3),
     SP2(1, 1), SP2(1, 1), SP2(1, 1), SP2(1, 1), 4, 4, 4, 3},
    {"8 images, 3 x 3 stride 2: im2col dW's image chunks whole on each thread", 2, 8, 8, 16, 1, SP2(14, 14),
     SP2(3, 3), SP2(2, 2), SP2(1, 1), SP2(1, 1), SP2(1, 1), 4, 4, 4, 3},
    {"ResNet block 64 -> 64 at 7 x 7, three images", 2, 3, 64, 64, 1, SP2(7, 7), SP2(3, 3), SP2(1, 1), SP2(1, 1),
     SP2(1, 1), SP2(1, 1), 4, 4, 4, 3},
    {"tile edges: 40 -> 20 channels, 3 x 2 kernel, stride (1, 3), 9 x 20", 2, 2, 40, 20, 1, SP2(9, 20), {3, 2},
     {1, 3}, SP2(1, 1), {1, 0}, {2, 1}, 4, 4, 4, 3},
    {"tile edges: 40 -> 20 channels, 3 x 2 kernel, unit strides, pads (2, 1) / (0, 1), 9 x 20", 2, 2, 40, 20, 1,
     SP2(9, 20), {3, 2}, SP2(1, 1), SP2(1, 1), {2, 1}, {0, 1}, 4, 4, 4, 3},
    {"8-bit affine activations, 5 channels: codes past 127 (AMX declines dW: the VNNI path)", 2, 2, 5, 6, 1,
     SP2(7, 7), SP2(3, 3), SP2(1, 1), SP2(1, 1), SP2(1, 1), SP2(1, 1), 8, 4, 4, 3},
    {"stride 3 with a 3 x 3 kernel, 6 channels (X's phase planes packed element by element)", 2, 2, 6, 8, 1,
     {11, 13}, SP2(3, 3), SP2(3, 3), SP2(1, 1), {1, 0}, {0, 1}, 4, 4, 4, 3},
    {"stride 2, 4 channels, 37 columns (phases of 19 and 18 columns: X's planes 16 columns at a time)", 2, 2, 4, 5,
     1, {9, 37}, SP2(3, 3), SP2(2, 2), SP2(1, 1), {1, 0}, {0, 1}, 4, 4, 4, 3},
    {"pointwise stride 2 at odd sizes, 20 -> 36 channels (dX: three phases of zeros, rows interleaved)", 2, 2, 20,
     36, 1, {9, 13}, SP2(1, 1), SP2(2, 2), SP2(1, 1), SP2(0, 0), SP2(0, 0), 4, 4, 4, 3},
    {"2 x 1 kernel, strides (3, 2), pads (1, 1) / (0, 1), 35 columns (dX: phases without taps in both directions)",
     2, 2, 8, 12, 1, {10, 35}, {2, 1}, {3, 2}, SP2(1, 1), SP2(1, 1), {0, 1}, 4, 4, 4, 3},
    {"512 gradient channels, 8-bit weights: dX's lo + 256 hi past int32 on the tiles (added in double)", 2, 1, 4,
     512, 1, SP2(4, 5), SP2(3, 3), SP2(1, 1), SP2(1, 1), SP2(1, 1), SP2(1, 1), 4, 8, 4, 3},
    {"radix 2, 8-bit weights: dX sums past int32", 2, 2, 2, 128, 1, SP2(5, 5), SP2(3, 3), SP2(1, 1), SP2(1, 1),
     SP2(1, 1), SP2(1, 1), 4, 8, 2, 4},
};

START_TEST(test_conv_grad) { conv_case(&conv_cases[_i]); }
END_TEST

/* ------------------------------------------------------------------ Gemm */

typedef struct gcase {
  int64_t M, N, K;
  int ta, tb;
  float alpha;
  int a_log; /* A is the log-quantized gradient (else both linear) */
} gcase;

static void gemm_op_case(const gcase *c) {
  const int64_t ar = c->ta ? c->K : c->M, ac = c->ta ? c->M : c->K, br = c->tb ? c->N : c->K,
                bc = c->tb ? c->K : c->N;
  tens A = t_new(NBL_DT_FLOAT, DIMS(ar, ac)), B = t_rand(NBL_DT_FLOAT, -1, 1, DIMS(br, bc));
  int16_t *aq = malloc(sizeof(int16_t) * (size_t)A.n), *bq = malloc(sizeof(int16_t) * (size_t)B.n);
  float sa = 0, ua;
  if (c->a_log) {
    fill_grad(&A);
    nbl_log_config lc = log_cfg(4, 3, NBL_LOG_STOCHASTIC, 0);
    ua = log_tensor(&A, &lc, aq);
  } else {
    for (int64_t i = 0; i < A.n; i++) ((float *)A.data)[i] = (float)gc_uni(-2, 2);
    ua = sa = q4_tensor(&A, 4, 0, NBL_Q4_SCALE_MAX, aq);
  }
  float sb = q4_tensor(&B, 4, 0, NBL_Q4_SCALE_SAWB, bq);
  int32_t am = 0, bm = 0;
  for (int64_t i = 0; i < A.n; i++) am = abs(aq[i]) > am ? abs(aq[i]) : am;
  for (int64_t i = 0; i < B.n; i++) bm = abs(bq[i]) > bm ? abs(bq[i]) : bm;
  int64_t *ref = calloc((size_t)(c->M * c->N), sizeof(int64_t)), *acc = malloc(sizeof(int64_t) * (size_t)(c->M * c->N));
  for (int64_t m = 0; m < c->M; m++)
    for (int64_t n = 0; n < c->N; n++)
      for (int64_t k = 0; k < c->K; k++)
        ref[m * c->N + n] += (int64_t)aq[c->ta ? k * c->M + m : m * c->K + k] * bq[c->tb ? n * c->K + k : k * c->N + n];
  const int ni = n_isas();
  for (int v = 0; v < ni; v++) {
    ck_assert_int_eq(nbl_i4b_matmul(NULL, g_isas[v], c->M, c->N, c->K, aq, c->ta, am, bq, c->tb, bm, 1.0, NULL, acc),
                     NBL_OK);
    for (int64_t i = 0; i < c->M * c->N; i++) ck_elem(acc[i] == ref[i]);
  }
  attr a[4] = {AI("transA", c->ta), AI("transB", c->tb), AF("alpha", c->alpha), AEND};
  tens in[4] = {A, B, c->a_log ? NONE : t_scalar(NBL_DT_FLOAT, sa), t_scalar(NBL_DT_FLOAT, sb)};
  runner *rr = runner_new("", "Gemm", 13, a, 2, in, 1, NULL, 1);
  ck_assert(runner_run(rr, in) == NBL_OK);
  tens ab[2] = {t_clone(&A), t_clone(&B)};
  for (int t = 0; t < 2; t++)
    for (int64_t i = 0; i < ab[t].n; i++) ((float *)ab[t].data)[i] = fabsf(((float *)ab[t].data)[i]);
  attr aa[4] = {AI("transA", c->ta), AI("transB", c->tb), AF("alpha", fabsf(c->alpha)), AEND};
  runner *ra = runner_new("", "Gemm", 13, aa, 2, ab, 1, NULL, 1);
  ck_assert(runner_run(ra, ab) == NBL_OK);
  void *first = NULL;
  char what[96];
  snprintf(what, sizeof what, "Gemm %lldx%lldx%lld ta %d tb %d", (long long)c->M, (long long)c->N, (long long)c->K,
           c->ta, c->tb);
  for (int v = 0; v < ni; v++) {
    nbl_i4b_set_isa(g_isas[v]);
    long runs = nbl_i4b_integer_runs();
    runner *r = runner_new("ai.nibble", "Int4LogGemm", 1, a, 4, in, 1, NULL, 0);
    ck_assert_msg(runner_run(r, in) == NBL_OK, "%s: %s", what, nbl_last_error());
    ck_assert_int_eq(nbl_i4b_integer_runs(), runs + 1);
    expect_close(what, "Y", &r->out[0], &rr->out[0], &ra->out[0]);
    const float *y = r->out[0].data;
    const double s = (double)c->alpha * ((double)ua * (double)sb);
    for (int64_t i = 0; i < c->M * c->N; i++) ck_elem(y[i] == (float)((double)ref[i] * s));
    if (!first) {
      first = malloc(r->out[0].nbytes + 1);
      memcpy(first, y, r->out[0].nbytes);
    } else {
      ck_assert(memcmp(first, y, r->out[0].nbytes) == 0);
    }
    runner_free(r);
  }
  nbl_i4b_set_isa(-1);
  free(first);
  runner_free(rr);
  runner_free(ra);
  t_free(&ab[0]);
  t_free(&ab[1]);
  t_free(&in[2]);
  t_free(&in[3]);
  t_free(&A);
  t_free(&B);
  free(aq);
  free(bq);
  free(ref);
  free(acc);
}

static const gcase gemm_cases[] = {
    {64, 256, 120, 0, 0, 1.0f, 1}, /* LeNet fc1 dX = dY * W */
    {120, 256, 64, 1, 0, 1.0f, 1}, /* LeNet fc1 dW = dY^T * X */
    {7, 17, 33, 0, 1, 0.5f, 1},    {6, 32, 64, 1, 1, 1.0f, 1}, {13, 33, 65, 0, 0, -2.0f, 1},
    {1, 1, 1, 0, 0, 1.0f, 1},      {5, 16, 2, 1, 0, 1.0f, 0},  {12, 48, 31, 0, 1, 1.0f, 0},
};

START_TEST(test_gemm_op) { gemm_op_case(&gemm_cases[_i]); }
END_TEST

/* ------------------------------------------------------------------ fallbacks and errors */

/* A LeNet-conv2-like case; variant: 0 on the grids, 1 a dY value off the
 * grid, 2 a NaN in dY, 3 X's scale wrong, 4 W_scale omitted (dX wanted),
 * 5 W_scale omitted with dX not requested (still integer); with 5 input
 * channels (dW and dX on the AMX tiles where the CPU has them): 6 X's
 * scale wrong, 7 an X value off the grid, 8 a NaN in X, 9 on the grids. */
static void fallback_case(int variant) {
  const int64_t C = variant >= 6 ? 5 : 3;
  tens x = t_rand(NBL_DT_FLOAT, -1, 2, DIMS(2, C, 8, 8)), w = t_rand(NBL_DT_FLOAT, -0.5, 0.5, DIMS(4, C, 3, 3));
  tens dy = t_new(NBL_DT_FLOAT, DIMS(2, 4, 6, 6));
  fill_grad(&dy);
  float sx = q4_tensor(&x, 4, 1, NBL_Q4_SCALE_MAX, NULL), sw = q4_tensor(&w, 4, 0, NBL_Q4_SCALE_MAX, NULL);
  nbl_log_config lc = log_cfg(4, 3, NBL_LOG_NEAREST, 0);
  log_tensor(&dy, &lc, NULL);
  float *d = dy.data;
  if (variant == 1) d[5] = d[5] * 3.0f + 1e-3f;
  if (variant == 2) d[7] = NAN;
  float *xv = x.data;
  if (variant == 7) xv[2 * 64 + 9] += sx * 0.5f;
  if (variant == 8) xv[3 * 64 + 63] = NAN;
  tens in[5] = {dy, x, w, t_scalar(NBL_DT_FLOAT, variant == 3 || variant == 6 ? sx * 1.25f : sx),
                variant == 4 || variant == 5 ? NONE : t_scalar(NBL_DT_FLOAT, sw)};
  attr a[3] = {AV("kernel_shape", 3, 3), AEND};
  int want5[3] = {0, 1, 1};
  const int *want = variant == 5 ? want5 : NULL;
  runner *f = runner_new(MS, "ConvGrad", 1, a, 3, in, 3, want, 0);
  ck_assert(runner_run(f, in) == NBL_OK);
  long ir = nbl_i4b_integer_runs(), fr = nbl_i4b_float_runs(), ar = nbl_i4b_amx_runs();
  const int amx = variant >= 6 && nbl_i4b_amx_supported() && nbl_i4b_best_isa() == NBL_I4B_AVX512;
  if (amx) nbl_i4b_set_amx(1);
  runner *r = runner_new("ai.nibble", "Int4LogConvGrad", 1, a, 5, in, 3, want, 0);
  ck_assert_msg(runner_run(r, in) == NBL_OK, "%s", nbl_last_error());
  nbl_i4b_set_amx(-1);
  const int integer = variant == 0 || variant == 5 || variant == 9;
  if (variant == 9) ck_assert_int_eq(nbl_i4b_amx_runs() - ar, amx ? 2 : 0); /* dW and dX */
  ck_assert_int_eq(nbl_i4b_integer_runs(), ir + integer);
  ck_assert_int_eq(nbl_i4b_float_runs(), fr + !integer);
  if (!integer) /* the float kernel itself: the same bits (NaN where it gives NaN) */
    for (int o = 0; o < 3; o++) {
      ck_assert_int_eq(r->out[o].nbytes, f->out[o].nbytes);
      const float *p = r->out[o].data, *q = f->out[o].data;
      for (size_t i = 0; i < f->out[o].nbytes / 4; i++) ck_assert(p[i] == q[i] || (isnan(p[i]) && isnan(q[i])));
    }
  if (variant == 2) ck_assert(isnan(((const float *)r->out[2].data)[0]) || isnan(((const float *)r->out[2].data)[1]));
  runner_free(f);
  runner_free(r);
  t_free(&x);
  t_free(&w);
  t_free(&dy);
  t_free(&in[3]);
  t_free(&in[4]);
}

START_TEST(test_fallbacks) { fallback_case(_i); }
END_TEST

START_TEST(test_bad_inputs_and_reference) {
  tens x = t_rand(NBL_DT_FLOAT, -1, 1, DIMS(1, 2, 5, 5)), w = t_rand(NBL_DT_FLOAT, -1, 1, DIMS(3, 2, 3, 3));
  tens dy = t_new(NBL_DT_FLOAT, DIMS(1, 3, 3, 3));
  fill_grad(&dy);
  float sx = q4_tensor(&x, 4, 0, NBL_Q4_SCALE_MAX, NULL), sw = q4_tensor(&w, 4, 0, NBL_Q4_SCALE_MAX, NULL);
  nbl_log_config lc = log_cfg(4, 3, NBL_LOG_NEAREST, 0);
  log_tensor(&dy, &lc, NULL);
  attr a[2] = {AV("kernel_shape", 3, 3), AEND};
  /* a scale that is not a float32 scalar: an error naming the node and input */
  tens bad[5] = {dy, x, w, t_scalar(NBL_DT_INT64, 1), t_scalar(NBL_DT_FLOAT, sw)};
  for (int reference = 0; reference < 2; reference++) {
    runner *r = runner_new("ai.nibble", "Int4LogConvGrad", 1, a, 5, bad, 3, NULL, reference);
    ck_assert_int_eq(runner_run(r, bad), NBL_ERR_INVALID_MODEL);
    ck_assert_msg(strstr(nbl_last_error(), "n0") && strstr(nbl_last_error(), "X_scale"), "%s", nbl_last_error());
    runner_free(r);
  }
  /* a dY of the wrong shape: the counterpart's message */
  tens dy2 = t_new(NBL_DT_FLOAT, DIMS(1, 3, 4, 4));
  tens in2[5] = {dy2, x, w, t_scalar(NBL_DT_FLOAT, sx), t_scalar(NBL_DT_FLOAT, sw)};
  runner *r2 = runner_new("ai.nibble", "Int4LogConvGrad", 1, a, 5, in2, 3, NULL, 0);
  ck_assert_int_eq(runner_run(r2, in2), NBL_ERR_INVALID_MODEL);
  ck_assert_msg(strstr(nbl_last_error(), "forward output's shape"), "%s", nbl_last_error());
  runner_free(r2);
  /* Gemm scale of the wrong type */
  tens ga[4] = {t_rand(NBL_DT_FLOAT, -1, 1, DIMS(2, 3)), t_rand(NBL_DT_FLOAT, -1, 1, DIMS(3, 4)), NONE,
                t_scalar(NBL_DT_DOUBLE, 1)};
  runner *r3 = runner_new("ai.nibble", "Int4LogGemm", 1, NULL, 4, ga, 1, NULL, 0);
  ck_assert_int_eq(runner_run(r3, ga), NBL_ERR_INVALID_MODEL);
  ck_assert_msg(strstr(nbl_last_error(), "B_scale"), "%s", nbl_last_error());
  runner_free(r3);
  /* a reference session runs ConvGrad's reference kernel: the same bits */
  tens in[5] = {dy, x, w, t_scalar(NBL_DT_FLOAT, sx), t_scalar(NBL_DT_FLOAT, sw)};
  runner *rr = runner_new("ai.nibble", "Int4LogConvGrad", 1, a, 5, in, 3, NULL, 1);
  runner *cr = runner_new(MS, "ConvGrad", 1, a, 3, in, 3, NULL, 1);
  long ir = nbl_i4b_integer_runs();
  ck_assert(runner_run(rr, in) == NBL_OK && runner_run(cr, in) == NBL_OK);
  ck_assert_int_eq(nbl_i4b_integer_runs(), ir);
  for (int o = 0; o < 3; o++) ck_assert(memcmp(rr->out[o].data, cr->out[o].data, cr->out[o].nbytes) == 0);
  runner_free(rr);
  runner_free(cr);
  for (int i = 3; i < 5; i++) {
    t_free(&bad[i]);
    t_free(&in2[i]);
    t_free(&in[i]);
  }
  for (int i = 0; i < 4; i++) t_free(&ga[i]);
  t_free(&dy2);
  t_free(&x);
  t_free(&w);
  t_free(&dy);
}
END_TEST



int main(void) {
  Suite *s = suite_create("int4_backward");
  TCase *tc = tcase_create("codes");
  tcase_add_loop_test(tc, test_codes_pow2, NBL_I4B_SCALAR, NBL_I4B_AVX512 + 1);
  tcase_add_loop_test(tc, test_codes_linear, NBL_I4B_SCALAR, NBL_I4B_AVX512 + 1);
  tcase_add_loop_test(tc, test_codes_int8, NBL_I4B_SCALAR, NBL_I4B_AVX512 + 1);
  tcase_add_loop_test(tc, test_codes_log, NBL_I4B_SCALAR, NBL_I4B_AVX512 + 1);
  tcase_add_test(tc, test_isa_choice);
  suite_add_tcase(s, tc);
  tc = tcase_create("gemm");
  tcase_add_test(tc, test_gemm_exact);
  tcase_add_loop_test(tc, test_gemm_op, 0, (int)(sizeof gemm_cases / sizeof gemm_cases[0]));
  suite_add_tcase(s, tc);
  tc = tcase_create("conv");
  tcase_add_loop_test(tc, test_conv_grad, 0, (int)(sizeof conv_cases / sizeof conv_cases[0]));
  suite_add_tcase(s, tc);
  tc = tcase_create("fallback");
  tcase_add_loop_test(tc, test_fallbacks, 0, 10);
  tcase_add_test(tc, test_bad_inputs_and_reference);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
