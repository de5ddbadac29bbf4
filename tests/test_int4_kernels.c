/* test_int4_kernels.c - the fused INT4 fast path: integer GEMM micro-kernels
 * (every variant this CPU has) equal a plain-C integer reference exactly at
 * tile-boundary sizes; activation bytes equal the quant4.h codes bit for bit;
 * fused Conv/Gemm/MatMul sessions agree with the reference path (QuantizeInt4
 * computed literally, then the float op). */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "runtime/int4_gemm.h"
#include "runtime/quant4.h"

static uint32_t rng = 2024;
static uint32_t next_u32(void) {
  rng ^= rng << 13;
  rng ^= rng >> 17;
  rng ^= rng << 5;
  return rng;
}
static int irange(int lo, int hi) { return lo + (int)(next_u32() % (uint32_t)(hi - lo + 1)); }
static float frand(void) { return (float)(next_u32() >> 8) / 8388608.0f - 1.0f; }

static const int64_t tsizes[] = {1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65};
#define NTS (sizeof tsizes / sizeof tsizes[0])

/* One GEMM case: codes qa in [alo, ahi] with zero point z, weights in [wlo, whi];
 * every variant against sum_k (qa - z) * w computed here in int64. */
static void gemm_case(int64_t M, int64_t N, int64_t K, int alo, int ahi, int z, int wlo, int whi) {
  int8_t *qa = malloc((size_t)(M * K)), *w = malloc((size_t)(K * N));
  for (int64_t i = 0; i < M * K; i++) qa[i] = (int8_t)irange(alo, ahi);
  for (int64_t i = 0; i < K * N; i++) w[i] = (int8_t)irange(wlo, whi);
  /* extreme values at the corners so saturation would show */
  qa[0] = (int8_t)alo;
  qa[M * K - 1] = (int8_t)ahi;
  w[0] = (int8_t)wlo;
  w[K * N - 1] = (int8_t)whi;
  int64_t *ref = calloc((size_t)(M * N), sizeof(int64_t));
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      int64_t s = 0;
      for (int64_t k = 0; k < K; k++) s += (int64_t)(qa[m * K + k] - z) * w[k * N + n];
      ref[m * N + n] = s;
    }
  nbl_q4_params p = {.scale = 1, .zero = z, .qmin = alo, .qmax = ahi};
  int off = nbl_i4_act_offset(&p);
  ck_assert(alo + off >= 0 && ahi + off <= 255 && z + off >= 0 && z + off <= 255);
  nbl_i4_weights W;
  ck_assert_int_eq(nbl_i4_pack_weights(w, K, N, N, 1, &W), 0);
  int64_t lda = W.Kp + 3; /* an odd row pitch */
  uint8_t *A = malloc((size_t)(M * lda));
  memset(A, 0x5a, (size_t)(M * lda)); /* padding bytes must not matter */
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = 0; k < K; k++) A[m * lda + k] = (uint8_t)(qa[m * K + k] + off);
  int32_t *C = malloc(sizeof(int32_t) * (size_t)(M * N));
  for (int isa = NBL_I4_SCALAR; isa <= NBL_I4_VNNI; isa++) {
    if (!nbl_i4_isa_supported((nbl_i4_isa)isa)) continue;
    for (int64_t i = 0; i < M * N; i++) C[i] = 0x7eadbeef;
    /* two row ranges, as threads would split them */
    int64_t mid = M / 2;
    nbl_i4_gemm((nbl_i4_isa)isa, &W, A, lda, 0, mid, z + off, C, N);
    nbl_i4_gemm((nbl_i4_isa)isa, &W, A, lda, mid, M, z + off, C, N);
    for (int64_t i = 0; i < M * N; i++)
      ck_assert_msg(C[i] == ref[i], "%s M=%lld N=%lld K=%lld a[%d,%d] z=%d w[%d,%d] i=%lld: %d vs %lld",
                    nbl_i4_isa_name((nbl_i4_isa)isa), (long long)M, (long long)N, (long long)K, alo,
                    ahi, z, wlo, whi, (long long)i, C[i], (long long)ref[i]);
  }
  nbl_i4_weights_free(&W);
  free(qa), free(w), free(ref), free(A), free(C);
}

START_TEST(test_gemm_int4_tiles) {
  for (size_t a = 0; a < NTS; a++)
    for (size_t b = 0; b < NTS; b++)
      for (size_t k = 0; k < NTS; k++)
        gemm_case(tsizes[a], tsizes[b], tsizes[k], -8, 7, (int)(a + b + k) % 5 - 2, -8, 7);
}
END_TEST

START_TEST(test_gemm_int8_extremes) {
  /* INT8 x INT4 and INT8 x INT8 (8-bit layers); AVX2 must fall back for |w| > 64 */
  for (size_t a = 0; a < NTS; a += 2)
    for (size_t k = 0; k < NTS; k++) {
      gemm_case(tsizes[a], 33, tsizes[k], -128, 127, 0, -8, 7);
      gemm_case(tsizes[a], 17, tsizes[k], -128, 127, 0, -128, 127);
      gemm_case(tsizes[a], 16, tsizes[k], -8, 7, -128, -15, 15); /* affine, far zero point */
      gemm_case(tsizes[a], 9, tsizes[k], -8, 7, 127, -64, 64);
    }
  /* a long K: 255 * 127 * 4608 stays well inside int32 */
  gemm_case(7, 35, 4608, -128, 127, 0, -128, 127);
}
END_TEST

START_TEST(test_isa_names) {
  ck_assert(nbl_i4_isa_supported(NBL_I4_SCALAR));
  ck_assert(nbl_i4_isa_supported(nbl_i4_best_isa()));
  ck_assert_str_eq(nbl_i4_isa_name(NBL_I4_VNNI), "avx512vnni");
}
END_TEST

/* Activation bytes equal nbl_q4_quantize_codes + off, ties included. */
static void quant_case(nbl_q4_config *cfg, const float *x, size_t n, float alpha) {
  nbl_q4_params p;
  const char *why = NULL;
  ck_assert_msg(nbl_q4_choose(cfg, x, n, alpha, &p, &why) == 0, "%s", why);
  int8_t *q = malloc(n);
  uint8_t *u = malloc(n);
  nbl_q4_quantize_codes(cfg, &p, x, q, n, 5);
  int off = nbl_i4_act_offset(&p);
  nbl_i4_quantize_u8(cfg, &p, x, u, n, 5, off);
  for (size_t i = 0; i < n; i++)
    ck_assert_msg(u[i] == q[i] + off, "i=%zu x=%.9g: byte %d, code %d + %d", i, x[i], u[i], q[i],
                  off);
  free(q), free(u);
}

START_TEST(test_quantize_bytes) {
  size_t n = 1000;
  float *x = malloc(n * sizeof(float));
  for (size_t i = 0; i < n; i++) x[i] = 3.0f * frand();
  x[0] = 3.5f; /* max: s = 0.5, so k*0.25 hits ties */
  for (size_t i = 1; i < 200; i++) x[i] = 0.25f * (float)irange(-14, 14);
  nbl_q4_config cfg;
  nbl_q4_config_default(&cfg);
  quant_case(&cfg, x, n, 0);
  cfg.mode = NBL_Q4_AFFINE;
  quant_case(&cfg, x, n, 0);
  for (size_t i = 0; i < n; i++) x[i] = fabsf(x[i]) + 1.0f; /* zero point far below -8 */
  quant_case(&cfg, x, n, 0);
  cfg.mode = NBL_Q4_SYMMETRIC;
  cfg.narrow = 1;
  quant_case(&cfg, x, n, 0);
  cfg.narrow = 0;
  cfg.bits = 8;
  quant_case(&cfg, x, n, 0);
  cfg.bits = 4;
  cfg.scale_source = NBL_Q4_SCALE_PACT;
  quant_case(&cfg, x, n, 1.7f);
  cfg.scale_source = NBL_Q4_SCALE_SAWB;
  quant_case(&cfg, x, n, 0);
  cfg.scale_source = NBL_Q4_SCALE_MAX;
  cfg.rounding = NBL_Q4_ROUND_STOCHASTIC;
  cfg.seed = 77;
  quant_case(&cfg, x, n, 0);
  free(x);
}
END_TEST

Suite *int4_suite(void);
Suite *int4_suite(void) {
  Suite *s = suite_create("int4_kernels");
  TCase *tc = tcase_create("gemm");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, test_isa_names);
  tcase_add_test(tc, test_gemm_int4_tiles);
  tcase_add_test(tc, test_gemm_int8_extremes);
  tcase_add_test(tc, test_quantize_bytes);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(int4_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
