/* test_unary_f32.c - the vector float32 kernels of the costly unary ops
 * (runtime/kernels/unary_f32.c: Exp, Sigmoid, Tanh, Erf, Gelu both forms,
 * Softplus, Mish, HardSigmoid, HardSwish):
 *   - the error in ulps against a long double libm reference written here,
 *     over a sweep of float bit patterns (every 2039th over all 2^32, every
 *     509th with 2^-8 <= |x| < 32) and the special values (+-0, denormals,
 *     FLT_MIN, FLT_MAX, +-Inf, NaNs, the kernels' thresholds), at every
 *     variant the CPU has (AVX-512, AVX2, scalar: thread caps), NaN where the
 *     reference is NaN, the sign of zero results;
 *   - tails: lengths 1..17 at offsets 0..3 give the full run's bits and
 *     leave the elements past the end alone; in place gives the same bits;
 *   - bad arguments return INVALID_ARGUMENT;
 *   - the ops through a session: the fast path gives the kernel's bits, the
 *     reference path (double, un_f) is within an ulp of the long double one
 *     (Gelu's negative tail included). */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nibble.h"
#include "one_node.h"
#include "runtime/core/cpu.h"
#include "runtime/kernels/unary_f32.h"
#include "ck_elem.h"

/* the bound asserted: the kernels compute in double and round once, so
 * every result is within about half an ulp (unary_f32.h); 1 leaves room for
 * a tie and for the reference's own last bits */
#define MAX_ULP 1.0

/* HardSigmoid's ONNX defaults, as the float attributes give them */
static const double HS_ALPHA = 0.2f, HS_BETA = 0.5f;

static long double ref_one(nbl_uf32 op, float xf) {
  long double x = xf;
  switch (op) {
  case NBL_UF_EXP: return expl(x);
  case NBL_UF_SIGMOID: return x >= 0 ? 1 / (1 + expl(-x)) : expl(x) / (1 + expl(x));
  case NBL_UF_TANH: return tanhl(x);
  case NBL_UF_ERF: return erfl(x);
  case NBL_UF_GELU:
    return x < 0 ? 0.5L * x * erfcl(-x / sqrtl(2)) : 0.5L * x * (1 + erfl(x / sqrtl(2)));
  case NBL_UF_GELU_TANH: {
    long double u2 = 2 * sqrtl(2 / 3.14159265358979323846264338327950288L) * (x + 0.044715L * x * x * x);
    if (u2 >= 0) return x / (1 + expl(-u2));
    long double e = expl(u2);
    return x * e / (1 + e);
  }
  case NBL_UF_SOFTPLUS: return x > 0 ? x + log1pl(expl(-x)) : log1pl(expl(x));
  case NBL_UF_MISH: {
    long double sp = x > 0 ? x + log1pl(expl(-x)) : log1pl(expl(x));
    return x * tanhl(sp);
  }
  case NBL_UF_HARDSIGMOID: {
    long double t = (long double)HS_ALPHA * x + (long double)HS_BETA;
    return t < 0 ? 0 : t > 1 ? 1 : t;
  }
  case NBL_UF_HARDSWISH: {
    long double t = x / 6 + 0.5L;
    return x * (t < 0 ? 0 : t > 1 ? 1 : t);
  }
  default: return NAN;
  }
}

static const char *op_name[NBL_UF_COUNT] = {"Exp", "Sigmoid", "Tanh", "Erf", "Gelu", "Gelu(tanh)",
                                            "Softplus", "Mish", "HardSigmoid", "HardSwish"};

/* |y - r| in ulps of the float binade of r (2^-149 below FLT_MIN); y = r
 * for equal infinities, NaN with NaN; a NaN or an infinity elsewhere: huge. */
static double ulp_err(float y, long double r) {
  if (isnan(r)) return isnan(y) ? 0 : 1e30;
  if (isnan(y)) return 1e30;
  float rf = (float)r;
  if (isinf(rf) || isinf(y)) return y == rf ? 0 : 1e30;
  if (r == 0 && y == 0 && signbit(y) != signbit(rf)) return 1e30;
  int e;
  frexpl(r, &e);
  long double ulp = ldexpl(1, (e - 24 < -149 ? -149 : e - 24));
  return (double)(fabsl((long double)y - r) / ulp);
}

static float bits_f(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static const float specials[] = {
    0.0f, -0.0f, 1.0f, -1.0f, 0.5f, -0.5f, 0x1p-149f, -0x1p-149f, 0x1.fffffcp-127f, -0x1.fffffcp-127f,
    FLT_MIN, -FLT_MIN, FLT_MAX, -FLT_MAX, INFINITY, -INFINITY, NAN, -NAN, 1e-30f, -1e-30f, 1e-7f,
    -1e-7f, 0.25f, -0.25f, 0x1.fffffep-3f, -0x1.fffffep-3f, 0.9f, -0.9f, 0x1.ccccccp-1f, -0x1.ccccccp-1f,
    1.2727922f, -1.2727922f, 3.0f, -3.0f, 2.9999998f, -2.9999998f, 3.0000002f, -3.0000002f, 6.0f,
    -6.0f, -2.5f, 2.5f, 88.72283f, 88.72284f, 89.0f, -87.33654f, -87.4f, -103.27893f, -103.97208f,
    -104.0f, -150.0f, -200.0f, -201.0f, 200.0f, 201.0f, 14.142136f, -14.142136f, -14.9f, -15.0f,
    -14.2f, -13.0f, -10.0f, -5.0f, -9.0f, 9.0f, 4.0f, -4.0f, 10.5f, -10.5f, 1e10f, -1e10f, 7e12f,
    -7e12f, 3e38f, -3e38f};

/* the inputs of the sweep: the specials, then bit patterns */
static float *sweep(int64_t *n_out) {
  int64_t ns = (int64_t)(sizeof specials / sizeof *specials);
  int64_t cap = ns + ((int64_t)1 << 32) / 2039 + 2 * (0x42000000 - 0x3B800000) / 509 + 16;
  float *x = malloc(sizeof(float) * (size_t)cap);
  int64_t n = 0;
  for (int64_t i = 0; i < ns; i++) x[n++] = specials[i];
  x[n++] = bits_f(0x7f800001u); /* a signalling NaN's pattern */
  x[n++] = bits_f(0xffc00001u);
  for (uint64_t u = 0; u < ((uint64_t)1 << 32); u += 2039) x[n++] = bits_f((uint32_t)u);
  for (uint32_t u = 0x3B800000u; u < 0x42000000u; u += 509) {
    x[n++] = bits_f(u);
    x[n++] = bits_f(u | 0x80000000u);
  }
  ck_assert_int_le(n, cap);
  *n_out = n;
  return x;
}

typedef struct variant {
  nbl_isa cap;
  unsigned need;
  const char *name;
} variant;

static const variant variants[] = {
    {NBL_ISA_SCALAR, 0, "scalar"},
    {NBL_ISA_AVX2, NBL_CPU_AVX2 | NBL_CPU_FMA, "avx2"},
    {NBL_ISA_AVX512, NBL_CPU_AVX512F | NBL_CPU_AVX512DQ | NBL_CPU_AVX512VL | NBL_CPU_AVX512BW, "avx512"},
};

/* Run op over x[0..n) capped at v; returns 0 when the CPU lacks the variant. */
static int run_capped(const variant *v, nbl_uf32 op, const float *x, float *y, int64_t n) {
  if ((nbl_cpu_features() & v->need) != v->need) return 0;
  nbl_isa prev = nbl_cpu_set_thread_cap(v->cap);
  const char *got = nbl_unary_f32_variant();
  nbl_status st = nbl_unary_f32(op, x, y, n, HS_ALPHA, HS_BETA);
  nbl_cpu_set_thread_cap(prev);
  ck_assert_int_eq(st, NBL_OK);
  /* under NBL_ISA the process cap may lower the variant; without it each cap
   * must run its own */
  if (nbl_cpu_env_cap(NULL, NULL) == NBL_ISA_DEFAULT)
    ck_assert_msg(!strcmp(got, v->name), "cap %s ran the %s variant", v->name, got);
  return 1;
}

START_TEST(test_ulp_sweep) {
  int64_t n;
  float *x = sweep(&n);
  long double *r = malloc(sizeof(long double) * (size_t)n);
  float *y = malloc(sizeof(float) * (size_t)n);
  int ran = 0;
  for (int op = 0; op < NBL_UF_COUNT; op++) {
    for (int64_t i = 0; i < n; i++) r[i] = ref_one((nbl_uf32)op, x[i]);
    for (size_t vi = 0; vi < sizeof variants / sizeof *variants; vi++) {
      const variant *v = &variants[vi];
      if (!run_capped(v, (nbl_uf32)op, x, y, n)) continue;
      ran++;
      double worst = 0;
      int64_t wi = 0;
      for (int64_t i = 0; i < n; i++) {
        double e = ulp_err(y[i], r[i]);
        if (e > worst) worst = e, wi = i;
      }
      printf("%-12s %-7s max %.3f ulp (x = %a: %a, reference %La)\n", op_name[op], v->name, worst,
             (double)x[wi], (double)y[wi], r[wi]);
      ck_assert_msg(worst <= MAX_ULP, "%s %s: %.3g ulp at x = %a: %a, reference %La", op_name[op], v->name,
                    worst, (double)x[wi], (double)y[wi], r[wi]);
    }
  }
  ck_assert_int_ge(ran, NBL_UF_COUNT); /* the scalar variant at least */
  free(x);
  free(r);
  free(y);
}
END_TEST

/* Short runs and tails: each element's bits as in a long run, nothing
 * written past the end, at every variant and misalignment. */
START_TEST(test_tails) {
  enum { M = 64 };
  float x[M], full[M], buf[M + 40];
  uint32_t s = 12345;
  int ns = (int)(sizeof specials / sizeof *specials);
  for (int i = 0; i < M; i++) {
    s = s * 1664525u + 1013904223u;
    x[i] = i % 3 == 0 ? specials[(s >> 8) % (unsigned)ns] : ((float)(s >> 8) / 16777216.0f - 0.5f) * 40.0f;
  }
  const uint32_t guard = 0x7fa5a5a5u; /* a NaN pattern no kernel writes */
  for (int op = 0; op < NBL_UF_COUNT; op++)
    for (size_t vi = 0; vi < sizeof variants / sizeof *variants; vi++) {
      if (!run_capped(&variants[vi], (nbl_uf32)op, x, full, M)) continue;
      for (int len = 1; len <= 17; len++)
        for (int off = 0; off <= 3; off++) {
          for (int i = 0; i < M + 40; i++) memcpy(&buf[i], &guard, 4);
          run_capped(&variants[vi], (nbl_uf32)op, x + off, buf + 8, len);
          for (int i = 0; i < M + 40; i++) {
            int inside = i >= 8 && i < 8 + len;
            const void *want = inside ? (const void *)&full[off + i - 8] : (const void *)&guard;
            ck_elem_msg(!memcmp(&buf[i], want, 4), "%s %s len %d off %d: element %d is %a", op_name[op],
                        variants[vi].name, len, off, i - 8, (double)buf[i]);
          }
        }
      /* in place */
      memcpy(buf, x, sizeof x);
      run_capped(&variants[vi], (nbl_uf32)op, buf, buf, M);
      ck_assert_msg(!memcmp(buf, full, sizeof full), "%s %s in place", op_name[op], variants[vi].name);
    }
}
END_TEST

START_TEST(test_bad_args) {
  float x[4] = {0}, y[4];
  ck_assert_int_eq(nbl_unary_f32(NBL_UF_COUNT, x, y, 4, 0, 0), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(nbl_unary_f32((nbl_uf32)-1, x, y, 4, 0, 0), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(nbl_unary_f32(NBL_UF_EXP, x, y, -1, 0, 0), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(nbl_unary_f32(NBL_UF_EXP, NULL, y, 4, 0, 0), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(nbl_unary_f32(NBL_UF_EXP, x, NULL, 4, 0, 0), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(nbl_unary_f32(NBL_UF_EXP, NULL, NULL, 0, 0, 0), NBL_OK);
}
END_TEST

/* The ops in sessions: the fast path is the kernel (same bits, split across
 * two threads), the reference path within an ulp of long double. */
START_TEST(test_ops_in_session) {
  static const struct {
    const char *op;
    int opset;
    nbl_uf32 k;
    const char *approx;
  } ops[] = {{"Exp", 13, NBL_UF_EXP, NULL},           {"Sigmoid", 13, NBL_UF_SIGMOID, NULL},
             {"Tanh", 13, NBL_UF_TANH, NULL},         {"Erf", 13, NBL_UF_ERF, NULL},
             {"Gelu", 20, NBL_UF_GELU, NULL},         {"Gelu", 20, NBL_UF_GELU_TANH, "tanh"},
             {"Softplus", 13, NBL_UF_SOFTPLUS, NULL}, {"Mish", 18, NBL_UF_MISH, NULL},
             {"HardSigmoid", 6, NBL_UF_HARDSIGMOID, NULL}, {"HardSwish", 14, NBL_UF_HARDSWISH, NULL}};
  enum { N = 50021 }; /* past the parallel grain, odd */
  float *x = malloc(sizeof(float) * N), *want = malloc(sizeof(float) * N);
  int ns = (int)(sizeof specials / sizeof *specials);
  for (int i = 0; i < N; i++) x[i] = i < ns ? specials[i] : -20.0f + 40.0f * (float)i / N;
  int64_t dims[1] = {N};
  for (size_t k = 0; k < sizeof ops / sizeof *ops; k++) {
    ck_assert_int_eq(nbl_unary_f32(ops[k].k, x, want, N, HS_ALPHA, HS_BETA), NBL_OK);
    one *o = one_new(ops[k].op, ops[k].opset, 1, 1);
    if (ops[k].approx) nbl_node_set_attr_string(G(o), o->node, "approximate", ops[k].approx);
    one_in(o, 0, NBL_DT_FLOAT, 1, dims, x);
    ck_assert_int_eq(one_run(o, 0), NBL_OK);
    const float *y = outf(o, 0);
    for (int i = 0; i < N; i++)
      ck_elem_msg(!memcmp(&y[i], &want[i], 4), "%s fast path at x = %a: %a, kernel %a", op_name[ops[k].k],
                  (double)x[i], (double)y[i], (double)want[i]);
    ck_assert_int_eq(one_run(o, 1), NBL_OK);
    y = outf(o, 0);
    for (int i = 0; i < N; i++) {
      long double r = ref_one(ops[k].k, x[i]);
      ck_elem_msg(ulp_err(y[i], r) <= MAX_ULP, "%s reference path at x = %a: %a, long double %La",
                  op_name[ops[k].k], (double)x[i], (double)y[i], r);
    }
    one_free(o);
  }
  free(x);
  free(want);
}
END_TEST

int main(void) {
  Suite *s = suite_create("unary_f32");
  TCase *t = tcase_create("core");
  tcase_set_timeout(t, 600);
  tcase_add_test(t, test_ulp_sweep);
  tcase_add_test(t, test_tails);
  tcase_add_test(t, test_bad_args);
  tcase_add_test(t, test_ops_in_session);
  suite_add_tcase(s, t);
  SRunner *r = srunner_create(s);
  srunner_run_all(r, CK_NORMAL);
  int nf = srunner_ntests_failed(r);
  srunner_free(r);
  return nf ? 1 : 0;
}
