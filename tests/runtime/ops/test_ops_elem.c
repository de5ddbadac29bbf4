/* test_ops_elem.c - elementwise, activation, reduction and softmax kernels:
 * numeric edge cases (empty tensors, broadcasting corners, NaN/Inf, integer
 * corner cases) against hand-computed values, each run as a one-node graph
 * through the session API, plus fast-path vs reference-path agreement. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "nibble.h"
#include "one_node.h"
#include "ck_elem.h"

/* ------------------------------------------------------------------ one-node graphs */


/* float equal with NaN == NaN and a relative tolerance */
static int feq(double a, double b, double tol) {
  if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
  if (isinf(a) || isinf(b)) return a == b;
  return fabs(a - b) <= tol * (1 + fabs(b));
}

#define CK_F(got, want, tol) \
  ck_assert_msg(feq((got), (want), (tol)), "got %.9g, want %.9g", (double)(got), (double)(want))

static void ck_dims(const nbl_host_tensor *t, int rank, const int64_t *dims) {
  ck_assert_int_eq(t->rank, rank);
  for (int d = 0; d < rank; d++) ck_assert_int_eq(t->dims[d], dims[d]);
}

/* ------------------------------------------------------------------ binary */

START_TEST(test_add_broadcast_corners) {
  for (int ref = 0; ref < 2; ref++) {
    /* [2,1,3] + [4,1] -> [2,4,3] */
    float a[6] = {0, 1, 2, 10, 11, 12}, b[4] = {100, 200, 300, 400};
    one *o = one_new("Add", 14, 2, 1);
    one_in(o, 0, NBL_DT_FLOAT, 3, (int64_t[]){2, 1, 3}, a);
    one_in(o, 1, NBL_DT_FLOAT, 2, (int64_t[]){4, 1}, b);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    ck_dims(&o->out[0], 3, (int64_t[]){2, 4, 3});
    for (int i = 0; i < 2; i++)
      for (int j = 0; j < 4; j++)
        for (int k = 0; k < 3; k++)
          ck_assert_float_eq(outf(o, 0)[(i * 4 + j) * 3 + k], a[i * 3 + k] + b[j]);
    one_free(o);

    /* rank-0 scalar - [3] */
    float s = 5, v[3] = {1, 2, INFINITY};
    o = one_new("Sub", 14, 2, 1);
    one_in(o, 0, NBL_DT_FLOAT, 0, NULL, &s);
    one_in(o, 1, NBL_DT_FLOAT, 1, (int64_t[]){3}, v);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    ck_dims(&o->out[0], 1, (int64_t[]){3});
    ck_assert_float_eq(outf(o, 0)[0], 4);
    ck_assert_float_eq(outf(o, 0)[1], 3);
    ck_assert(isinf(outf(o, 0)[2]) && outf(o, 0)[2] < 0);
    one_free(o);

    /* empty: [0,3] * [3] -> [0,3] */
    o = one_new("Mul", 14, 2, 1);
    one_in(o, 0, NBL_DT_FLOAT, 2, (int64_t[]){0, 3}, NULL);
    one_in(o, 1, NBL_DT_FLOAT, 1, (int64_t[]){3}, v);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    ck_dims(&o->out[0], 2, (int64_t[]){0, 3});
    one_free(o);

    /* incompatible shapes are an error naming the inputs */
    o = one_new("Add", 14, 2, 1);
    one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){2}, a);
    one_in(o, 1, NBL_DT_FLOAT, 1, (int64_t[]){3}, v);
    ck_assert_int_eq(one_run(o, ref), NBL_ERR_INVALID_MODEL);
    ck_assert_ptr_nonnull(strstr(nbl_last_error(), "'x0' and 'x1'"));
    one_free(o);
  }
}
END_TEST

/* A larger broadcast [3,1,5,7] op [4,1,7]: fast and reference paths both match
 * a direct computation (exercises row splitting across threads). */
START_TEST(test_binary_fast_vs_reference) {
  enum { A = 3 * 5 * 7, B = 4 * 7 };
  float a[A], b[B];
  for (int i = 0; i < A; i++) a[i] = (float)(i % 13) - 6.5f;
  for (int i = 0; i < B; i++) b[i] = (float)(i % 5) + 0.25f;
  const char *ops[] = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"};
  for (int k = 0; k < 7; k++)
    for (int ref = 0; ref < 2; ref++) {
      one *o = one_new(ops[k], 13, 2, 1);
      one_in(o, 0, NBL_DT_FLOAT, 4, (int64_t[]){3, 1, 5, 7}, a);
      one_in(o, 1, NBL_DT_FLOAT, 3, (int64_t[]){4, 1, 7}, b);
      ck_assert_int_eq(one_run(o, ref), NBL_OK);
      ck_dims(&o->out[0], 4, (int64_t[]){3, 4, 5, 7});
      for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++)
          for (int l = 0; l < 5; l++)
            for (int m = 0; m < 7; m++) {
              double x = a[(i * 5 + l) * 7 + m], y = b[j * 7 + m], want;
              switch (k) {
              case 0: want = x + y; break;
              case 1: want = x - y; break;
              case 2: want = x * y; break;
              case 3: want = x / y; break;
              case 4: want = x > y ? x : y; break;
              case 5: want = x < y ? x : y; break;
              default: want = pow(x, y); break;
              }
              CK_F(outf(o, 0)[((i * 4 + j) * 5 + l) * 7 + m], want, 1e-6);
            }
      one_free(o);
    }
}
END_TEST

/* Pow's float32 rows: an exponent of 2 as x * x, others as pow in double:
 * every element the float rounding of C's pow(x, y) in double (what the
 * reference path computes), bit for bit, over ordinary values, both zeros,
 * denormals, the largest floats (x * x overflows to Inf), Inf and NaN; the
 * scalar exponent 2, a row of exponents holding 2s, and other exponents. */
START_TEST(test_pow_rows) {
  enum { N = 61 };
  float a[N], e[N];
  for (int i = 0; i < N; i++) {
    a[i] = (float)((i * 29) % 83) / 9.0f - 4.5f;
    e[i] = i % 3 ? 2.0f : (float)(i % 7) * 0.5f - 1.0f;
  }
  a[1] = 0.0f, a[2] = -0.0f, a[3] = 1e-42f, a[4] = -3.4e38f, a[5] = 1.9e19f, a[6] = INFINITY;
  a[7] = -INFINITY, a[8] = NAN, a[10] = 1.17549435e-38f, a[11] = -1e-20f;
  const float exps[] = {2.0f, 0.5f, 3.0f, -2.0f};
  for (int k = 0; k < 5; k++) { /* k < 4: the scalar exps[k]; 4: the row e */
    one *o = one_new("Pow", 15, 2, 1);
    one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){N}, a);
    if (k < 4) one_in(o, 1, NBL_DT_FLOAT, 0, NULL, &exps[k]);
    else one_in(o, 1, NBL_DT_FLOAT, 1, (int64_t[]){N}, e);
    ck_assert_int_eq(one_run(o, 0), NBL_OK);
    for (int i = 0; i < N; i++) {
      float want = (float)pow((double)a[i], (double)(k < 4 ? exps[k] : e[i])), got = outf(o, 0)[i];
      ck_assert_msg(memcmp(&want, &got, 4) == 0 || (isnan(want) && isnan(got)),
                    "case %d elem %d: pow(%.9g, %.9g) = %.9g, want %.9g", k, i, a[i],
                    k < 4 ? exps[k] : e[i], got, want);
    }
    one_free(o);
  }
}
END_TEST

/* The 8-lane rows of +, -, *, /: contiguous operands and a scalar operand,
 * rows of 8k, 8k + r and fewer than 8 elements, Inf and NaN in lanes; every
 * element must be the float operation itself (float(double op) is the
 * correctly rounded float result for these four). */
START_TEST(test_binary_vector_rows) {
  enum { N = 43 };
  float a[N], b[N], s[1] = {-1.75f};
  for (int i = 0; i < N; i++) {
    a[i] = (float)((i * 37) % 101) / 7.0f - 6.0f;
    b[i] = (float)((i * 53) % 97) / 11.0f - 4.0f;
  }
  a[9] = INFINITY, b[17] = NAN, b[3] = 0.0f, a[30] = -INFINITY;
  const char *ops[] = {"Add", "Sub", "Mul", "Div"};
  const int64_t lens[] = {43, 8, 5, 16};
  for (int k = 0; k < 4; k++)
    for (int li = 0; li < 4; li++)
      for (int bs = 0; bs < 3; bs++) { /* b: full, scalar operand second, scalar first */
        int64_t n = lens[li];
        one *o = one_new(ops[k], 14, 2, 1);
        const float *x = bs == 2 ? s : a, *y = bs == 1 ? s : b;
        one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){bs == 2 ? 1 : n}, x);
        one_in(o, 1, NBL_DT_FLOAT, 1, (int64_t[]){bs == 1 ? 1 : n}, y);
        ck_assert_int_eq(one_run(o, 0), NBL_OK);
        for (int64_t i = 0; i < n; i++) {
          double xv = x[bs == 2 ? 0 : i], yv = y[bs == 1 ? 0 : i], w;
          switch (k) {
          case 0: w = xv + yv; break;
          case 1: w = xv - yv; break;
          case 2: w = xv * yv; break;
          default: w = xv / yv; break;
          }
          float want = (float)w, got = outf(o, 0)[i];
          ck_assert_msg(memcmp(&want, &got, 4) == 0 || (isnan(want) && isnan(got)),
                        "%s n=%lld case %d elem %lld: %.9g want %.9g", ops[k], (long long)n, bs,
                        (long long)i, got, want);
        }
        one_free(o);
      }
}
END_TEST

START_TEST(test_integer_division) {
  int32_t a[4] = {7, -7, 7, -7}, b[4] = {2, 2, -2, -2};
  one *o = one_new("Div", 14, 2, 1);
  one_in(o, 0, NBL_DT_INT32, 1, (int64_t[]){4}, a);
  one_in(o, 1, NBL_DT_INT32, 1, (int64_t[]){4}, b);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  const int32_t *y = o->out[0].data;
  ck_assert_int_eq(y[0], 3);
  ck_assert_int_eq(y[1], -3); /* truncation toward zero, as C and ONNX Runtime */
  ck_assert_int_eq(y[2], -3);
  ck_assert_int_eq(y[3], 3);
  one_free(o);

  /* division by zero is a runtime error, not a crash */
  int32_t z[4] = {1, 0, 1, 1};
  o = one_new("Div", 14, 2, 1);
  one_in(o, 0, NBL_DT_INT32, 1, (int64_t[]){4}, a);
  one_in(o, 1, NBL_DT_INT32, 1, (int64_t[]){4}, z);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_RUNTIME);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "division by zero"));
  one_free(o);

  /* INT64_MIN / -1 wraps instead of trapping */
  int64_t mn = INT64_MIN, m1 = -1;
  o = one_new("Div", 14, 2, 1);
  one_in(o, 0, NBL_DT_INT64, 0, NULL, &mn);
  one_in(o, 1, NBL_DT_INT64, 0, NULL, &m1);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  ck_assert(((const int64_t *)o->out[0].data)[0] == INT64_MIN);
  one_free(o);

  /* uint8 add wraps */
  uint8_t u1[2] = {250, 1}, u2[2] = {10, 2};
  o = one_new("Add", 14, 2, 1);
  one_in(o, 0, NBL_DT_UINT8, 1, (int64_t[]){2}, u1);
  one_in(o, 1, NBL_DT_UINT8, 1, (int64_t[]){2}, u2);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  ck_assert_int_eq(((const uint8_t *)o->out[0].data)[0], 4);
  ck_assert_int_eq(((const uint8_t *)o->out[0].data)[1], 3);
  one_free(o);
}
END_TEST

START_TEST(test_mod) {
  /* integer mod: sign of the divisor (Python); fmod=1: sign of the dividend */
  int64_t a[4] = {-7, 7, -7, 7}, b[4] = {3, -3, -3, 3};
  int64_t want_mod[4] = {2, -2, -1, 1}, want_fmod[4] = {-1, 1, -1, 1};
  for (int fm = 0; fm < 2; fm++) {
    one *o = one_new("Mod", 13, 2, 1);
    nbl_node_set_attr_int(G(o), o->node, "fmod", fm);
    one_in(o, 0, NBL_DT_INT64, 1, (int64_t[]){4}, a);
    one_in(o, 1, NBL_DT_INT64, 1, (int64_t[]){4}, b);
    ck_assert_int_eq(one_run(o, 0), NBL_OK);
    for (int i = 0; i < 4; i++)
      ck_assert_int_eq(((const int64_t *)o->out[0].data)[i], fm ? want_fmod[i] : want_mod[i]);
    one_free(o);
  }
  /* float without fmod=1 is invalid */
  float f[1] = {1};
  one *o = one_new("Mod", 13, 2, 1);
  one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){1}, f);
  one_in(o, 1, NBL_DT_FLOAT, 1, (int64_t[]){1}, f);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_INVALID_MODEL);
  one_free(o);
}
END_TEST

START_TEST(test_compare_logic) {
  float a[4] = {1, NAN, 3, -INFINITY}, b[1] = {1};
  const char *ops[] = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"};
  const uint8_t want[5][4] = {{1, 0, 0, 0}, {0, 0, 0, 1}, {0, 0, 1, 0}, {1, 0, 0, 1}, {1, 0, 1, 0}};
  for (int k = 0; k < 5; k++)
    for (int ref = 0; ref < 2; ref++) {
      one *o = one_new(ops[k], 16, 2, 1);
      one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){4}, a);
      one_in(o, 1, NBL_DT_FLOAT, 1, (int64_t[]){1}, b);
      ck_assert_int_eq(one_run(o, ref), NBL_OK);
      ck_assert_int_eq(o->out[0].dtype, NBL_DT_BOOL);
      for (int i = 0; i < 4; i++)
        ck_assert_msg(((const uint8_t *)o->out[0].data)[i] == want[k][i], "%s [%d]", ops[k], i);
      one_free(o);
    }
  uint8_t p[4] = {0, 0, 1, 1}, q[4] = {0, 1, 0, 1};
  const char *lops[] = {"And", "Or", "Xor"};
  const uint8_t lw[3][4] = {{0, 0, 0, 1}, {0, 1, 1, 1}, {0, 1, 1, 0}};
  for (int k = 0; k < 3; k++) {
    one *o = one_new(lops[k], 7, 2, 1);
    one_in(o, 0, NBL_DT_BOOL, 1, (int64_t[]){4}, p);
    one_in(o, 1, NBL_DT_BOOL, 1, (int64_t[]){4}, q);
    ck_assert_int_eq(one_run(o, 0), NBL_OK);
    for (int i = 0; i < 4; i++) ck_assert_int_eq(((const uint8_t *)o->out[0].data)[i], lw[k][i]);
    one_free(o);
  }
}
END_TEST

/* opset < 7: B aligned with A at `axis` when broadcast=1 */
START_TEST(test_legacy_broadcast) {
  float a[6] = {1, 2, 3, 4, 5, 6}, b[2] = {10, 20};
  one *o = one_new("Add", 6, 2, 1);
  nbl_node_set_attr_int(G(o), o->node, "broadcast", 1);
  nbl_node_set_attr_int(G(o), o->node, "axis", 0);
  one_in(o, 0, NBL_DT_FLOAT, 2, (int64_t[]){2, 3}, a);
  one_in(o, 1, NBL_DT_FLOAT, 1, (int64_t[]){2}, b);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  const float want[6] = {11, 12, 13, 24, 25, 26};
  for (int i = 0; i < 6; i++) ck_assert_float_eq(outf(o, 0)[i], want[i]);
  one_free(o);
  /* B running past A's end from the axis: an error naming the node */
  o = one_new("Add", 6, 2, 1);
  nbl_node_set_attr_int(G(o), o->node, "broadcast", 1);
  nbl_node_set_attr_int(G(o), o->node, "axis", 1);
  one_in(o, 0, NBL_DT_FLOAT, 2, (int64_t[]){2, 3}, a);
  one_in(o, 1, NBL_DT_FLOAT, 2, (int64_t[]){2, 1}, b);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_INVALID_MODEL);
  ck_assert_msg(strstr(nbl_last_error(), "(Add): legacy broadcast axis 1 does not fit ranks 2 and 2"),
                "%s", nbl_last_error());
  one_free(o);
}
END_TEST

START_TEST(test_variadic) {
  /* Max/Min propagate NaN; Sum/Mean broadcast three inputs */
  float a[3] = {1, NAN, 5}, b[3] = {2, 0, -1}, c[1] = {3};
  for (int ref = 0; ref < 2; ref++) {
    one *o = one_new("Max", 13, 3, 1);
    one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){3}, a);
    one_in(o, 1, NBL_DT_FLOAT, 1, (int64_t[]){3}, b);
    one_in(o, 2, NBL_DT_FLOAT, 0, NULL, c);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    CK_F(outf(o, 0)[0], 3, 0);
    CK_F(outf(o, 0)[1], NAN, 0);
    CK_F(outf(o, 0)[2], 5, 0);
    one_free(o);

    float m1[2] = {1, 2}, m2[4] = {10, 20, 30, 40};
    o = one_new("Mean", 13, 3, 1);
    one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){2}, m1);
    one_in(o, 1, NBL_DT_FLOAT, 2, (int64_t[]){2, 2}, m2);
    one_in(o, 2, NBL_DT_FLOAT, 2, (int64_t[]){2, 1}, m1);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    ck_dims(&o->out[0], 2, (int64_t[]){2, 2});
    const float want[4] = {12 / 3.f, 23 / 3.f, 33 / 3.f, 44 / 3.f};
    for (int i = 0; i < 4; i++) CK_F(outf(o, 0)[i], want[i], 1e-6);
    one_free(o);
  }
  int32_t i1[2] = {-5, 7}, i2[2] = {3, 9};
  one *o = one_new("Min", 13, 2, 1);
  one_in(o, 0, NBL_DT_INT32, 1, (int64_t[]){2}, i1);
  one_in(o, 1, NBL_DT_INT32, 1, (int64_t[]){2}, i2);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  ck_assert_int_eq(((const int32_t *)o->out[0].data)[0], -5);
  ck_assert_int_eq(((const int32_t *)o->out[0].data)[1], 7);
  one_free(o);
}
END_TEST

START_TEST(test_where) {
  uint8_t cnd[3] = {1, 0, 1};
  int64_t x[1] = {7}, y[6] = {1, 2, 3, 4, 5, 6};
  one *o = one_new("Where", 16, 3, 1);
  one_in(o, 0, NBL_DT_BOOL, 1, (int64_t[]){3}, cnd);
  one_in(o, 1, NBL_DT_INT64, 0, NULL, x);
  one_in(o, 2, NBL_DT_INT64, 2, (int64_t[]){2, 3}, y);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  ck_dims(&o->out[0], 2, (int64_t[]){2, 3});
  const int64_t want[6] = {7, 2, 7, 7, 5, 7};
  for (int i = 0; i < 6; i++) ck_assert_int_eq(((const int64_t *)o->out[0].data)[i], want[i]);
  one_free(o);
}
END_TEST

/* ------------------------------------------------------------------ unary */

START_TEST(test_unary_nan_inf) {
  float x[5] = {NAN, INFINITY, -INFINITY, -1000, 1000};
  struct {
    const char *op;
    float want[5];
  } cases[] = {
      {"Relu", {NAN, INFINITY, 0, 0, 1000}},
      {"Sigmoid", {NAN, 1, 0, 0, 1}},
      {"Tanh", {NAN, 1, -1, -1, 1}},
      {"Exp", {NAN, INFINITY, 0, 0, INFINITY}},
      {"Softplus", {NAN, INFINITY, 0, 0, 1000}},
      {"Abs", {NAN, INFINITY, INFINITY, 1000, 1000}},
      {"Neg", {NAN, -INFINITY, INFINITY, 1000, -1000}},
      {"Sign", {NAN, 1, -1, -1, 1}},
      {"Floor", {NAN, INFINITY, -INFINITY, -1000, 1000}},
      /* x / (1 + |x|) is inf/inf at infinity: NaN, as numpy and ONNX Runtime compute it */
      {"Softsign", {NAN, NAN, NAN, -1000.f / 1001.f, 1000.f / 1001.f}},
      {"Erf", {NAN, 1, -1, -1, 1}},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
    for (int ref = 0; ref < 2; ref++) {
      one *o = one_new(cases[k].op, 13, 1, 1);
      one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){5}, x);
      ck_assert_int_eq(one_run(o, ref), NBL_OK);
      for (int i = 0; i < 5; i++)
        ck_assert_msg(feq(outf(o, 0)[i], cases[k].want[i], 1e-6), "%s(%g) = %g, want %g (ref %d)",
                      cases[k].op, x[i], outf(o, 0)[i], cases[k].want[i], ref);
      one_free(o);
    }
  /* Round: half to even */
  float r[6] = {0.5f, 1.5f, 2.5f, -0.5f, -1.5f, 2.4f}, rw[6] = {0, 2, 2, -0.f, -2, 2};
  for (int ref = 0; ref < 2; ref++) {
    one *o = one_new("Round", 11, 1, 1);
    one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){6}, r);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    for (int i = 0; i < 6; i++) ck_assert_float_eq(outf(o, 0)[i], rw[i]);
    one_free(o);
  }
}
END_TEST

START_TEST(test_activation_params) {
  float x[4] = {-2, -0.5f, 0.5f, 3};
  /* LeakyRelu alpha=0.1, Elu alpha=2, HardSigmoid default (0.2, 0.5), ThresholdedRelu alpha=1,
   * Shrink lambd=1 bias=0.5, HardSwish, Celu alpha=1 */
  one *o = one_new("LeakyRelu", 16, 1, 1);
  nbl_node_set_attr_float(G(o), o->node, "alpha", 0.1f);
  one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){4}, x);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  CK_F(outf(o, 0)[0], -0.2, 1e-6);
  CK_F(outf(o, 0)[3], 3, 0);
  one_free(o);

  o = one_new("Elu", 6, 1, 1);
  nbl_node_set_attr_float(G(o), o->node, "alpha", 2.0f);
  one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){4}, x);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  CK_F(outf(o, 0)[0], 2 * (exp(-2.0) - 1), 1e-6);
  CK_F(outf(o, 0)[2], 0.5, 0);
  one_free(o);

  /* near 0 the negative branches are alpha * expm1(x): exp(x) - 1 in float
   * would be -9.537e-7 at x = -1e-6 (4.6 % off), on both paths */
  const float tiny[2] = {-1e-6f, -3e-8f};
  const char *near0[] = {"Elu", "Selu", "Celu"};
  for (int k = 0; k < 3; k++)
    for (int ref = 0; ref < 2; ref++) {
      o = one_new(near0[k], 12, 1, 1);
      one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){2}, tiny);
      ck_assert_int_eq(one_run(o, ref), NBL_OK);
      const double sc = k == 1 ? 1.0507009873554804934193349852946 * 1.6732632423543772848170429916717 : 1.0;
      for (int i = 0; i < 2; i++)
        ck_assert_msg(fabs(outf(o, 0)[i] - sc * expm1((double)tiny[i])) <= 1e-6 * fabs(sc * tiny[i]),
                      "%s(%g) ref %d: %.9g", near0[k], tiny[i], ref, outf(o, 0)[i]);
      one_free(o);
    }

  o = one_new("HardSigmoid", 6, 1, 1);
  one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){4}, x);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  CK_F(outf(o, 0)[0], 0.1, 1e-6);
  CK_F(outf(o, 0)[1], 0.4, 1e-6);
  CK_F(outf(o, 0)[3], 1, 0);
  one_free(o);

  o = one_new("Shrink", 9, 1, 1);
  nbl_node_set_attr_float(G(o), o->node, "lambd", 1.0f);
  nbl_node_set_attr_float(G(o), o->node, "bias", 0.5f);
  one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){4}, x);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  const float sw[4] = {-1.5f, 0, 0, 2.5f};
  for (int i = 0; i < 4; i++) CK_F(outf(o, 0)[i], sw[i], 0);
  one_free(o);

  o = one_new("HardSwish", 14, 1, 1);
  one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){4}, x);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  CK_F(outf(o, 0)[0], -2 * (-2 / 6.0 + 0.5), 1e-6);
  CK_F(outf(o, 0)[3], 3, 1e-6);
  one_free(o);

  /* Gelu (opset 20): exact and tanh approximation at x = 1 */
  float one_v = 1;
  for (int t = 0; t < 2; t++) {
    o = one_new("Gelu", 20, 1, 1);
    if (t) nbl_node_set_attr_string(G(o), o->node, "approximate", "tanh");
    one_in(o, 0, NBL_DT_FLOAT, 0, NULL, &one_v);
    ck_assert_int_eq(one_run(o, 0), NBL_OK);
    CK_F(outf(o, 0)[0], t ? 0.8411919906082768 : 0.8413447460685429, 1e-6);
    one_free(o);
  }
  /* Mish(1) = tanh(log(1 + e)) */
  o = one_new("Mish", 18, 1, 1);
  one_in(o, 0, NBL_DT_FLOAT, 0, NULL, &one_v);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  CK_F(outf(o, 0)[0], tanh(log1p(exp(1.0))), 1e-6);
  one_free(o);
}
END_TEST

START_TEST(test_clip) {
  float x[4] = {-5, NAN, 0.5f, 9};
  float lo = 1, hi = 0; /* min > max: everything becomes max (numpy.clip) */
  for (int ref = 0; ref < 2; ref++) {
    one *o = one_new("Clip", 13, 3, 1);
    one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){4}, x);
    one_in(o, 1, NBL_DT_FLOAT, 0, NULL, &lo);
    one_in(o, 2, NBL_DT_FLOAT, 0, NULL, &hi);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    CK_F(outf(o, 0)[0], 0, 0);
    CK_F(outf(o, 0)[1], NAN, 0);
    CK_F(outf(o, 0)[3], 0, 0);
    one_free(o);
  }
  /* opset 6: attributes */
  one *o = one_new("Clip", 6, 1, 1);
  nbl_node_set_attr_float(G(o), o->node, "min", -1);
  nbl_node_set_attr_float(G(o), o->node, "max", 1);
  one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){4}, x);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  CK_F(outf(o, 0)[0], -1, 0);
  CK_F(outf(o, 0)[2], 0.5, 0);
  CK_F(outf(o, 0)[3], 1, 0);
  one_free(o);
  /* int8 with only max (input 'min' omitted) */
  int8_t xi[3] = {-128, 5, 127}, mx = 6;
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_id in[3] = {nbl_graph_add_value(m->graph, "x"), NBL_NONE, nbl_graph_add_value(m->graph, "mx")};
  nbl_id out = nbl_graph_add_value(m->graph, "y");
  nbl_graph_add_input(m->graph, in[0]);
  nbl_graph_add_input(m->graph, in[2]);
  nbl_graph_add_output(m->graph, out);
  nbl_graph_add_node(m->graph, "Clip", "", "c", 3, in, 1, &out);
  nbl_session *s;
  ck_assert_int_eq(nbl_session_create(m, NULL, &s), NBL_OK);
  nbl_host_tensor feeds[2] = {{.name = "x", .dtype = NBL_DT_INT8, .rank = 1, .dims = {3}, .data = xi, .nbytes = 3},
                              {.name = "mx", .dtype = NBL_DT_INT8, .rank = 0, .data = &mx, .nbytes = 1}};
  const nbl_host_tensor *outs;
  ck_assert_int_eq(nbl_session_run(s, 2, feeds, &outs), NBL_OK);
  const int8_t *yi = outs[0].data;
  ck_assert_int_eq(yi[0], -128);
  ck_assert_int_eq(yi[1], 5);
  ck_assert_int_eq(yi[2], 6);
  nbl_session_free(s);
  nbl_model_free(m);
}
END_TEST

START_TEST(test_isinf_isnan) {
  float x[4] = {INFINITY, -INFINITY, NAN, 1};
  one *o = one_new("IsInf", 10, 1, 1);
  nbl_node_set_attr_int(G(o), o->node, "detect_negative", 0);
  one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){4}, x);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  const uint8_t *y = o->out[0].data;
  ck_assert(y[0] == 1 && y[1] == 0 && y[2] == 0 && y[3] == 0);
  one_free(o);
  o = one_new("IsNaN", 13, 1, 1);
  one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){4}, x);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  y = o->out[0].data;
  ck_assert(y[0] == 0 && y[1] == 0 && y[2] == 1 && y[3] == 0);
  one_free(o);
}
END_TEST

/* float32 fast loops vs reference, at sizes around vector widths and the parallel grain */
START_TEST(test_unary_fast_vs_reference) {
  const char *ops[] = {"Relu", "Sigmoid", "Tanh", "Exp", "Erf", "Softplus", "Elu", "Selu",
                       "HardSigmoid", "Abs", "Sqrt", "Log", "Softsign", "Neg", "Ceil"};
  const int64_t sizes[] = {1, 7, 8, 33, 40001};
  float *x = malloc(sizeof(float) * 40001);
  for (int i = 0; i < 40001; i++) x[i] = (float)sin(i * 0.37) * 8.0f;
  for (size_t k = 0; k < sizeof ops / sizeof ops[0]; k++)
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
      one *o = one_new(ops[k], 13, 1, 1);
      one_in(o, 0, NBL_DT_FLOAT, 1, &sizes[s], x);
      ck_assert_int_eq(one_run(o, 1), NBL_OK);
      float *ref = malloc(sizeof(float) * (size_t)sizes[s]);
      memcpy(ref, o->out[0].data, sizeof(float) * (size_t)sizes[s]);
      ck_assert_int_eq(one_run(o, 0), NBL_OK);
      for (int64_t i = 0; i < sizes[s]; i++)
        ck_elem_msg(feq(outf(o, 0)[i], ref[i], 1e-6), "%s(%g): fast %.9g ref %.9g", ops[k],
                    x[i], outf(o, 0)[i], ref[i]);
      free(ref);
      one_free(o);
    }
  free(x);
}
END_TEST

/* Cast double -> float16 rounds once (nbl_rt_set_f64): 1 + 2^-11 + 2^-40 is
 * just past the midpoint between 1 and 1 + 2^-10 and goes up (NumPy gives
 * 1.000977); through float it would hit the tie 1 + 2^-11 and round to even,
 * 1. The tie itself rounds to even, and a value that fits float stays. */
START_TEST(test_cast_double_to_half_rounds_once) {
  const double x[4] = {1 + ldexp(1, -11) + ldexp(1, -40), 1 + ldexp(1, -11), -(1 + ldexp(1, -11) + ldexp(1, -40)), 0.1};
  const uint16_t want[4] = {0x3C01, 0x3C00, 0xBC01, 0x2E66};
  for (int ref = 0; ref < 2; ref++) {
    one *o = one_new("Cast", 13, 1, 1);
    nbl_node_set_attr_int(G(o), o->node, "to", NBL_DT_FLOAT16);
    one_in(o, 0, NBL_DT_DOUBLE, 1, (int64_t[]){4}, x);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    const uint16_t *y = o->out[0].data;
    for (int i = 0; i < 4; i++) ck_assert_msg(y[i] == want[i], "x[%d] ref %d: 0x%04x", i, ref, y[i]);
    one_free(o);
  }
}
END_TEST

START_TEST(test_unsupported_type) {
  int32_t x[1] = {4};
  one *o = one_new("Sqrt", 13, 1, 1);
  one_in(o, 0, NBL_DT_INT32, 1, (int64_t[]){1}, x);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_UNSUPPORTED);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "int32"));
  one_free(o);
}
END_TEST

/* ------------------------------------------------------------------ reductions */

START_TEST(test_reduce_axes) {
  /* x[2,3,2] = 0..11; ReduceSum over axes {0,2} (not consecutive) and {1,2} (consecutive) */
  float x[12];
  for (int i = 0; i < 12; i++) x[i] = (float)i;
  int64_t ax02[2] = {0, 2}, ax12[2] = {-2, -1};
  for (int ref = 0; ref < 2; ref++) {
    one *o = one_new("ReduceSum", 13, 2, 1);
    one_in(o, 0, NBL_DT_FLOAT, 3, (int64_t[]){2, 3, 2}, x);
    one_in(o, 1, NBL_DT_INT64, 1, (int64_t[]){2}, ax02);
    nbl_node_set_attr_int(G(o), o->node, "keepdims", 0);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    ck_dims(&o->out[0], 1, (int64_t[]){3});
    /* j: sum over i,k of (i*6 + j*2 + k) = 4*2j + (0+0+1+1) + (6*2) = 8j + 14 */
    for (int j = 0; j < 3; j++) CK_F(outf(o, 0)[j], 8 * j + 14, 0);
    one_free(o);

    o = one_new("ReduceMean", 13, 1, 1);
    nbl_node_set_attr_ints(G(o), o->node, "axes", 2, ax12);
    one_in(o, 0, NBL_DT_FLOAT, 3, (int64_t[]){2, 3, 2}, x);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    ck_dims(&o->out[0], 3, (int64_t[]){2, 1, 1});
    CK_F(outf(o, 0)[0], 2.5, 1e-7);
    CK_F(outf(o, 0)[1], 8.5, 1e-7);
    one_free(o);

    /* axis 0 with inner > 1 (strided fast path): max and min */
    o = one_new("ReduceMax", 13, 1, 1);
    nbl_node_set_attr_ints(G(o), o->node, "axes", 1, (int64_t[]){0});
    one_in(o, 0, NBL_DT_FLOAT, 3, (int64_t[]){2, 3, 2}, x);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    for (int i = 0; i < 6; i++) CK_F(outf(o, 0)[i], 6 + i, 0);
    one_free(o);
  }
}
END_TEST

START_TEST(test_reduce_empty_and_special) {
  for (int ref = 0; ref < 2; ref++) {
    /* noop_with_empty_axes: identity */
    float x[3] = {1, -2, 3};
    one *o = one_new("ReduceSum", 13, 1, 1);
    nbl_node_set_attr_int(G(o), o->node, "noop_with_empty_axes", 1);
    one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){3}, x);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    ck_dims(&o->out[0], 1, (int64_t[]){3});
    CK_F(outf(o, 0)[1], -2, 0);
    one_free(o);

    /* no axes, no noop: reduce everything */
    o = one_new("ReduceSum", 13, 1, 1);
    one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){3}, x);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    ck_dims(&o->out[0], 1, (int64_t[]){1});
    CK_F(outf(o, 0)[0], 2, 0);
    one_free(o);

    /* reduction over an empty axis: sum 0, prod 1, max -inf, logsumexp -inf */
    const char *ops[] = {"ReduceSum", "ReduceProd", "ReduceMax", "ReduceLogSumExp", "ReduceMin"};
    const float want[] = {0, 1, -INFINITY, -INFINITY, INFINITY};
    for (int k = 0; k < 5; k++) {
      o = one_new(ops[k], 11, 1, 1);
      nbl_node_set_attr_ints(G(o), o->node, "axes", 1, (int64_t[]){1});
      one_in(o, 0, NBL_DT_FLOAT, 2, (int64_t[]){2, 0}, NULL);
      ck_assert_int_eq(one_run(o, ref), NBL_OK);
      ck_dims(&o->out[0], 2, (int64_t[]){2, 1});
      CK_F(outf(o, 0)[0], want[k], 0);
      CK_F(outf(o, 0)[1], want[k], 0);
      one_free(o);
    }

    /* LogSumExp is stable for large values; NaN propagates through Max */
    float big[2] = {1000, 1000}, nanv[3] = {1, NAN, 2};
    o = one_new("ReduceLogSumExp", 13, 1, 1);
    one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){2}, big);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    CK_F(outf(o, 0)[0], 1000 + log(2.0), 1e-7);
    one_free(o);
    o = one_new("ReduceMax", 13, 1, 1);
    one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){3}, nanv);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    CK_F(outf(o, 0)[0], NAN, 0);
    one_free(o);
  }
  /* int64 sums are exact beyond 2^53 */
  int64_t big[2] = {(1LL << 60) + 1, 1};
  one *o = one_new("ReduceSum", 13, 1, 1);
  one_in(o, 0, NBL_DT_INT64, 1, (int64_t[]){2}, big);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  ck_assert(((const int64_t *)o->out[0].data)[0] == (1LL << 60) + 2);
  one_free(o);
  /* an axes attribute where the opset takes axes as an input is rejected */
  float x[2] = {1, 2};
  o = one_new("ReduceSum", 13, 1, 1);
  nbl_node_set_attr_ints(G(o), o->node, "axes", 1, (int64_t[]){0});
  one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){2}, x);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_INVALID_MODEL);
  one_free(o);
}
END_TEST

START_TEST(test_argmax_topk_cumsum) {
  float x[6] = {3, 1, 3, 2, 2, 0};
  for (int last = 0; last < 2; last++) {
    one *o = one_new("ArgMax", 13, 1, 1);
    nbl_node_set_attr_int(G(o), o->node, "axis", 1);
    nbl_node_set_attr_int(G(o), o->node, "select_last_index", last);
    one_in(o, 0, NBL_DT_FLOAT, 2, (int64_t[]){2, 3}, x);
    ck_assert_int_eq(one_run(o, 0), NBL_OK);
    ck_dims(&o->out[0], 2, (int64_t[]){2, 1});
    ck_assert_int_eq(((const int64_t *)o->out[0].data)[0], last ? 2 : 0);
    ck_assert_int_eq(((const int64_t *)o->out[0].data)[1], last ? 1 : 0);
    one_free(o);
  }
  /* TopK: ties by lower index, largest and smallest */
  int64_t k = 2;
  for (int largest = 0; largest < 2; largest++) {
    one *o = one_new("TopK", 11, 2, 2);
    nbl_node_set_attr_int(G(o), o->node, "largest", largest);
    one_in(o, 0, NBL_DT_FLOAT, 2, (int64_t[]){2, 3}, x);
    one_in(o, 1, NBL_DT_INT64, 1, (int64_t[]){1}, &k);
    ck_assert_int_eq(one_run(o, 0), NBL_OK);
    ck_dims(&o->out[0], 2, (int64_t[]){2, 2});
    const int64_t *ix = o->out[1].data;
    if (largest) {
      ck_assert(ix[0] == 0 && ix[1] == 2 && ix[2] == 0 && ix[3] == 1);
      CK_F(outf(o, 0)[2], 2, 0);
    } else {
      ck_assert(ix[0] == 1 && ix[1] == 0 && ix[2] == 2 && ix[3] == 0);
      CK_F(outf(o, 0)[0], 1, 0);
    }
    one_free(o);
  }
  /* k larger than the axis is an error */
  int64_t k9 = 9;
  one *o = one_new("TopK", 11, 2, 2);
  one_in(o, 0, NBL_DT_FLOAT, 2, (int64_t[]){2, 3}, x);
  one_in(o, 1, NBL_DT_INT64, 1, (int64_t[]){1}, &k9);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_INVALID_MODEL);
  one_free(o);
  /* CumSum exclusive + reverse on int32 */
  int32_t ci[4] = {1, 2, 3, 4}, axis = 0;
  o = one_new("CumSum", 14, 2, 1);
  nbl_node_set_attr_int(G(o), o->node, "exclusive", 1);
  nbl_node_set_attr_int(G(o), o->node, "reverse", 1);
  one_in(o, 0, NBL_DT_INT32, 1, (int64_t[]){4}, ci);
  one_in(o, 1, NBL_DT_INT32, 0, NULL, &axis);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  const int32_t cw[4] = {9, 7, 4, 0};
  for (int i = 0; i < 4; i++) ck_assert_int_eq(((const int32_t *)o->out[0].data)[i], cw[i]);
  one_free(o);
}
END_TEST

/* TopK where k is small against the axis (the kernel keeps a heap of the k
 * best instead of sorting all): 2 x 5000 x 3 values drawn from 7 levels and
 * NaNs (ties everywhere), k = 37 along axis 1, largest and smallest, float
 * and int32, against a selection written here: the k first by value, ties
 * by lower index, NaN after every number for largest = 0 and before for
 * largest = 1 (the kernel's rule, as ONNX Runtime's). */
static const float *tk_order_v;
static int tk_order_largest;
static int tk_before(int64_t a, int64_t b) { /* 1 if element a comes first */
  float x = tk_order_v[a], y = tk_order_v[b];
  int xn = isnan(x), yn = isnan(y);
  if (xn != yn) return tk_order_largest ? xn : yn;
  if (!xn && x != y) return tk_order_largest ? x > y : x < y;
  return a < b;
}

START_TEST(test_topk_small_k) {
  enum { A = 2, R = 5000, B = 3, K = 37 };
  static float xf[A * R * B];
  static int32_t xi[A * R * B];
  uint32_t s = 99;
  for (int i = 0; i < A * R * B; i++) {
    s = s * 1664525u + 1013904223u;
    int lv = (int)(s >> 29); /* 0..7: 7 is a NaN (an int 99) */
    xf[i] = lv == 7 ? NAN : (float)lv - 3.0f;
    xi[i] = lv == 7 ? 99 : lv - 3;
  }
  int64_t k = K, dims[3] = {A, R, B}, od[3] = {A, K, B};
  static float col[R];
  for (int isint = 0; isint < 2; isint++)
    for (int largest = 0; largest < 2; largest++) {
      one *o = one_new("TopK", 11, 2, 2);
      nbl_node_set_attr_int(G(o), o->node, "largest", largest);
      nbl_node_set_attr_int(G(o), o->node, "axis", 1);
      one_in(o, 0, isint ? NBL_DT_INT32 : NBL_DT_FLOAT, 3, dims, isint ? (const void *)xi : (const void *)xf);
      one_in(o, 1, NBL_DT_INT64, 1, (int64_t[]){1}, &k);
      ck_assert_int_eq(one_run(o, 0), NBL_OK);
      ck_dims(&o->out[1], 3, od);
      const int64_t *ix = o->out[1].data;
      for (int a = 0; a < A; a++)
        for (int b = 0; b < B; b++) {
          for (int r = 0; r < R; r++) col[r] = isint ? (float)xi[(a * R + r) * B + b] : xf[(a * R + r) * B + b];
          tk_order_v = col;
          tk_order_largest = largest;
          /* selection: K passes, each taking the first not yet taken */
          static unsigned char taken[R];
          memset(taken, 0, sizeof taken);
          for (int t = 0; t < K; t++) {
            int64_t best = -1;
            for (int64_t r = 0; r < R; r++)
              if (!taken[r] && (best < 0 || tk_before(r, best))) best = r;
            taken[best] = 1;
            ck_assert_msg(ix[(a * K + t) * B + b] == best, "int %d largest %d (%d, %d) rank %d: index %lld, want %lld",
                          isint, largest, a, b, t, (long long)ix[(a * K + t) * B + b], (long long)best);
            float got = isint ? (float)((const int32_t *)o->out[0].data)[(a * K + t) * B + b]
                              : outf(o, 0)[(a * K + t) * B + b];
            ck_assert(isnan(got) ? isnan(col[best]) : got == col[best]);
          }
        }
      one_free(o);
    }
}
END_TEST

START_TEST(test_softmax) {
  float x[4] = {1000, 1000, -INFINITY, 0};
  for (int ref = 0; ref < 2; ref++) {
    /* large values do not overflow; -inf gets probability 0 */
    one *o = one_new("Softmax", 13, 1, 1);
    one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){4}, x);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    CK_F(outf(o, 0)[0], 0.5, 1e-6);
    CK_F(outf(o, 0)[1], 0.5, 1e-6);
    CK_F(outf(o, 0)[2], 0, 0);
    CK_F(outf(o, 0)[3], 0, 1e-6);
    one_free(o);

    o = one_new("LogSoftmax", 13, 1, 1);
    one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){4}, x);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    CK_F(outf(o, 0)[0], -log(2.0), 1e-6);
    CK_F(outf(o, 0)[2], -INFINITY, 0);
    one_free(o);

    /* opset 11 coerces to 2-D at axis 1: [2,2] rows of the [2,2,1]... here x[2,2] as one row of 4 */
    float y[8] = {0, 0, 0, 0, 1, 1, 1, 1};
    o = one_new("Softmax", 11, 1, 1);
    one_in(o, 0, NBL_DT_FLOAT, 3, (int64_t[]){2, 2, 2}, y);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    for (int i = 0; i < 8; i++) CK_F(outf(o, 0)[i], 0.25, 1e-6);
    one_free(o);
    /* opset 13 on the same data, axis 1: pairs along the middle axis */
    float z[8] = {0, 1, 0, 1, 2, 2, 2, 2};
    o = one_new("Softmax", 13, 1, 1);
    nbl_node_set_attr_int(G(o), o->node, "axis", 1);
    one_in(o, 0, NBL_DT_FLOAT, 3, (int64_t[]){2, 2, 2}, z);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    for (int i = 0; i < 8; i++) CK_F(outf(o, 0)[i], 0.5, 1e-6);
    one_free(o);

    /* Hardmax: first maximum wins */
    float h[3] = {2, 5, 5};
    o = one_new("Hardmax", 13, 1, 1);
    one_in(o, 0, NBL_DT_FLOAT, 1, (int64_t[]){3}, h);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    CK_F(outf(o, 0)[0], 0, 0);
    CK_F(outf(o, 0)[1], 1, 0);
    CK_F(outf(o, 0)[2], 0, 0);
    one_free(o);
  }
}
END_TEST

START_TEST(test_normalization) {
  float x[4] = {3, 4, 0, 0};
  one *o = one_new("LpNormalization", 1, 1, 1);
  one_in(o, 0, NBL_DT_FLOAT, 2, (int64_t[]){2, 2}, x);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  CK_F(outf(o, 0)[0], 0.6, 1e-6);
  CK_F(outf(o, 0)[1], 0.8, 1e-6);
  one_free(o);
  /* MVN over axis 1 of [1,4]: mean 2.5, std sqrt(1.25) */
  float m[4] = {1, 2, 3, 4};
  o = one_new("MeanVarianceNormalization", 13, 1, 1);
  nbl_node_set_attr_ints(G(o), o->node, "axes", 1, (int64_t[]){1});
  one_in(o, 0, NBL_DT_FLOAT, 2, (int64_t[]){1, 4}, m);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  for (int i = 0; i < 4; i++) CK_F(outf(o, 0)[i], (m[i] - 2.5) / sqrt(1.25), 1e-6);
  one_free(o);
}
END_TEST

START_TEST(test_losses) {
  /* NLL: lp[2,3], target {2, 0} with ignore_index 0 and weights {1,2,3}:
   * only sample 0 counts: -3 * -3 = 9; mean divides by the weight used (3) */
  float lp[6] = {-1, -2, -3, -4, -5, -6}, w[3] = {1, 2, 3};
  int64_t tg[2] = {2, 0};
  const char *red[3] = {"none", "sum", "mean"};
  for (int r = 0; r < 3; r++) {
    one *o = one_new("NegativeLogLikelihoodLoss", 13, 3, 1);
    nbl_node_set_attr_string(G(o), o->node, "reduction", red[r]);
    nbl_node_set_attr_int(G(o), o->node, "ignore_index", 0);
    one_in(o, 0, NBL_DT_FLOAT, 2, (int64_t[]){2, 3}, lp);
    one_in(o, 1, NBL_DT_INT64, 1, (int64_t[]){2}, tg);
    one_in(o, 2, NBL_DT_FLOAT, 1, (int64_t[]){3}, w);
    ck_assert_int_eq(one_run(o, 0), NBL_OK);
    if (r == 0) {
      ck_dims(&o->out[0], 1, (int64_t[]){2});
      CK_F(outf(o, 0)[0], 9, 0);
      CK_F(outf(o, 0)[1], 0, 0);
    } else {
      ck_assert_int_eq(o->out[0].rank, 0);
      CK_F(outf(o, 0)[0], r == 1 ? 9 : 3, 0);
    }
    one_free(o);
  }
  /* a target outside [0, C) is a runtime error */
  int64_t bad[2] = {5, 1};
  one *o = one_new("NegativeLogLikelihoodLoss", 13, 2, 1);
  one_in(o, 0, NBL_DT_FLOAT, 2, (int64_t[]){2, 3}, lp);
  one_in(o, 1, NBL_DT_INT64, 1, (int64_t[]){2}, bad);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_RUNTIME);
  one_free(o);
  /* SoftmaxCrossEntropyLoss of equal scores over C=4 classes: log(4), log_prob = -log(4) */
  float sc[8] = {0, 0, 0, 0, 7, 7, 7, 7};
  int32_t lab[2] = {1, 3};
  o = one_new("SoftmaxCrossEntropyLoss", 13, 2, 2);
  one_in(o, 0, NBL_DT_FLOAT, 2, (int64_t[]){2, 4}, sc);
  one_in(o, 1, NBL_DT_INT32, 1, (int64_t[]){2}, lab);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  CK_F(outf(o, 0)[0], log(4.0), 1e-6);
  for (int i = 0; i < 8; i++) CK_F(outf(o, 1)[i], -log(4.0), 1e-6);
  one_free(o);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("ops_elem");
  TCase *t = tcase_create("core");
  tcase_set_timeout(t, 120);
  tcase_add_test(t, test_add_broadcast_corners);
  tcase_add_test(t, test_binary_fast_vs_reference);
  tcase_add_test(t, test_binary_vector_rows);
  tcase_add_test(t, test_pow_rows);
  tcase_add_test(t, test_integer_division);
  tcase_add_test(t, test_mod);
  tcase_add_test(t, test_compare_logic);
  tcase_add_test(t, test_legacy_broadcast);
  tcase_add_test(t, test_variadic);
  tcase_add_test(t, test_where);
  tcase_add_test(t, test_unary_nan_inf);
  tcase_add_test(t, test_activation_params);
  tcase_add_test(t, test_clip);
  tcase_add_test(t, test_isinf_isnan);
  tcase_add_test(t, test_unary_fast_vs_reference);
  tcase_add_test(t, test_unsupported_type);
  tcase_add_test(t, test_cast_double_to_half_rounds_once);
  tcase_add_test(t, test_reduce_axes);
  tcase_add_test(t, test_reduce_empty_and_special);
  tcase_add_test(t, test_argmax_topk_cumsum);
  tcase_add_test(t, test_topk_small_k);
  tcase_add_test(t, test_softmax);
  tcase_add_test(t, test_normalization);
  tcase_add_test(t, test_losses);
  suite_add_tcase(s, t);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
