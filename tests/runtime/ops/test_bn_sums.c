/* test_bn_sums.c - the per-channel sums of the fast float32 BatchNorm
 * kernels (runtime/ops/grad_norm.h: nbl_bn_acc_stats, nbl_bn_acc_grad,
 * nbl_bn_acc_total, nbl_bn_stats_f32_channel), which BatchNormInternal,
 * BatchNormalizationGrad and the fused training chains share:
 *   - the sixteen lanes equal a plain C model of the documented order (lane
 *     i % 16 of each plane, planes in order) bit for bit, at every CPU cap
 *     (scalar, AVX2, AVX-512), at plane sizes around the vector widths;
 *   - the totals and the statistics against a long double reference (two
 *     passes), including data far from zero (the one-pass variance about
 *     the first element) and an outlier as that element;
 *   - NaN and Inf give NaN / Inf statistics as the reference does;
 *   - the forward chain's sweep (nbl_bn_apply_relu_f32: y = x a + b, the
 *     residual, Relu, the range) equals the same float operations in plain
 *     C at every cap and plane size, NaN and Inf flagged;
 *   - the max |X_grad| the gradient kernel takes while it writes X_grad
 *     (for the QuantizeLog pair) equals nbl_logq_absmax of what it wrote,
 *     with NaN and Inf among the elements, at every cap;
 *   - BatchNormInternal and BatchNormalizationGrad (fast path) give the same
 *     bits with one and two threads. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "nibble.h"
#include "one_node.h"
#include "runtime/core/cpu.h"
#include "runtime/kernels/log_quant.h"
#include "runtime/ops/grad_norm.h"
#include "ck_elem.h"

/* deterministic data in [lo, lo + span) */
static void fill(float *x, int64_t n, unsigned seed, float lo, float span) {
  for (int64_t i = 0; i < n; i++) {
    seed = seed * 1103515245u + 12345u;
    x[i] = lo + span * (float)((seed >> 8) & 0xFFFF) / 65536.0f;
  }
}

/* The lanes as documented, in plain C: element i of every plane into lane
 * i % 16, planes in order. */
static void model_lanes(const float *g, const float *x, int64_t N, int64_t C, int64_t sp, int64_t ch, double k,
                        double a[16], double b[16]) {
  memset(a, 0, 16 * sizeof(double));
  memset(b, 0, 16 * sizeof(double));
  for (int64_t n = 0; n < N; n++)
    for (int64_t i = 0; i < sp; i++) {
      int64_t o = (n * C + ch) * sp + i;
      double d = (double)x[o] - k, t = g ? (double)g[o] : d;
      a[i % 16] = a[i % 16] + t;
      b[i % 16] = b[i % 16] + t * d;
    }
}

static const nbl_isa caps[3] = {NBL_ISA_SCALAR, NBL_ISA_AVX2, NBL_ISA_AVX512};

START_TEST(test_lanes_every_cap) {
  static const int64_t sps[] = {1, 3, 4, 7, 8, 15, 16, 17, 31, 33, 49, 100, 196};
  for (size_t si = 0; si < sizeof sps / sizeof *sps; si++)
    for (int64_t N = 1; N <= 3; N += 2) {
      int64_t C = 3, sp = sps[si], n = N * C * sp;
      float *x = malloc(sizeof(float) * (size_t)n), *g = malloc(sizeof(float) * (size_t)n);
      fill(x, n, (unsigned)(sp * 7 + N), -2.0f, 5.0f);
      fill(g, n, (unsigned)(sp * 13 + N), -1.0f, 2.0f);
      for (int64_t ch = 0; ch < C; ch++) {
        double k = 0.375, ma[16], mb[16], ga[16], gb[16];
        model_lanes(NULL, x, N, C, sp, ch, k, ma, mb);
        model_lanes(g, x, N, C, sp, ch, k, ga, gb);
        for (int c = 0; c < 3; c++) {
          nbl_isa prev = nbl_cpu_set_thread_cap(caps[c]);
          nbl_bn_acc s, t;
          memset(&s, 0, sizeof s);
          memset(&t, 0, sizeof t);
          nbl_bn_acc_stats(&s, x, N, C, sp, ch, k);
          nbl_bn_acc_grad(&t, g, x, N, C, sp, ch, k, NULL);
          nbl_cpu_set_thread_cap(prev);
          ck_assert_msg(!memcmp(s.a, ma, sizeof ma) && !memcmp(s.b, mb, sizeof mb),
                        "stats lanes differ from the model: cap %s, N %lld sp %lld ch %lld", nbl_isa_name(caps[c]),
                        (long long)N, (long long)sp, (long long)ch);
          ck_assert_msg(!memcmp(t.a, ga, sizeof ga) && !memcmp(t.b, gb, sizeof gb),
                        "grad lanes differ from the model: cap %s, N %lld sp %lld ch %lld", nbl_isa_name(caps[c]),
                        (long long)N, (long long)sp, (long long)ch);
        }
      }
      free(x);
      free(g);
    }
}
END_TEST

START_TEST(test_total_tree) {
  double l[16];
  for (int i = 0; i < 16; i++) l[i] = (double)(i + 1);
  ck_assert(nbl_bn_acc_total(l) == 136.0);
  /* the fixed tree: ((l0 + l8) + (l4 + l12)) + ((l2 + l10) + (l6 + l14)) + ...
   * 1e16 + 1 + ... : lanes 0 and 8 cancel first, the ones survive */
  for (int i = 0; i < 16; i++) l[i] = 1.0;
  l[0] = 1e16;
  l[8] = -1e16;
  ck_assert(nbl_bn_acc_total(l) == 14.0);
}
END_TEST

/* mean and biased variance of channel ch in long double, two passes */
static void ref_stats(const float *x, int64_t N, int64_t C, int64_t sp, int64_t ch, long double *mean,
                      long double *var) {
  long double s = 0, s2 = 0;
  for (int64_t n = 0; n < N; n++)
    for (int64_t i = 0; i < sp; i++) s += x[(n * C + ch) * sp + i];
  *mean = s / (long double)(N * sp);
  for (int64_t n = 0; n < N; n++)
    for (int64_t i = 0; i < sp; i++) {
      long double d = x[(n * C + ch) * sp + i] - *mean;
      s2 += d * d;
    }
  *var = s2 / (long double)(N * sp);
}

START_TEST(test_stats_vs_long_double) {
  /* {lo, span}: centred data, data far from zero (1000 +- 0.001: a naive
   * one-pass E[x^2] - E[x]^2 in float would lose everything), tiny values */
  static const float cases[][2] = {{-1.0f, 2.0f}, {1000.0f, 0.002f}, {-3e-6f, 1e-5f}, {0.0f, 1.0f}};
  for (size_t cs = 0; cs < sizeof cases / sizeof *cases; cs++)
    for (int c = 0; c < 3; c++) {
      int64_t N = 5, C = 2, sp = 37, n = N * C * sp;
      float *x = malloc(sizeof(float) * (size_t)n);
      fill(x, n, (unsigned)(cs + 1), cases[cs][0], cases[cs][1]);
      if (cs == 3) x[1 * sp] = 500.0f; /* an outlier as channel 1's first element (k) */
      for (int64_t ch = 0; ch < C; ch++) {
        long double rm, rv;
        ref_stats(x, N, C, sp, ch, &rm, &rv);
        double mean, var;
        nbl_isa prev = nbl_cpu_set_thread_cap(caps[c]);
        nbl_bn_stats_f32_channel(x, N, C, sp, ch, &mean, &var);
        nbl_cpu_set_thread_cap(prev);
        ck_assert_msg(fabsl(mean - rm) <= 1e-14L * fabsl(rm) + 1e-300L, "case %zu ch %lld mean %.17g vs %.17Lg", cs,
                      (long long)ch, mean, rm);
        ck_assert_msg(fabsl(var - rv) <= 1e-12L * rv, "case %zu ch %lld var %.17g vs %.17Lg", cs, (long long)ch, var,
                      rv);
      }
      free(x);
    }
}
END_TEST

START_TEST(test_stats_nan_inf) {
  float x[2 * 20];
  double mean, var;
  fill(x, 40, 5, -1.0f, 2.0f);
  x[3] = NAN; /* channel 0 (N = 1, C = 2, sp = 20) */
  nbl_bn_stats_f32_channel(x, 1, 2, 20, 0, &mean, &var);
  ck_assert(isnan(mean) && isnan(var));
  nbl_bn_stats_f32_channel(x, 1, 2, 20, 1, &mean, &var); /* channel 1 untouched */
  ck_assert(isfinite(mean) && isfinite(var) && var > 0);
  x[3] = INFINITY; /* a +Inf: mean +Inf, variance NaN (Inf - Inf), as the reference */
  nbl_bn_stats_f32_channel(x, 1, 2, 20, 0, &mean, &var);
  ck_assert(isinf(mean) && mean > 0 && isnan(var));
  x[3] = 0.5f;
  x[0] = -INFINITY; /* as the first element: not taken as k */
  nbl_bn_stats_f32_channel(x, 1, 2, 20, 0, &mean, &var);
  ck_assert(isinf(mean) && mean < 0 && isnan(var));
  nbl_bn_stats_f32_channel(x, 0, 2, 20, 0, &mean, &var); /* no element */
  ck_assert(mean == 0.0 && var == 0.0);
}
END_TEST

START_TEST(test_dx_absmax) {
  int64_t N = 3, C = 2, sp = 37, n = N * C * sp;
  float *x = malloc(sizeof(float) * (size_t)n), *g = malloc(sizeof(float) * (size_t)n);
  float *dx = malloc(sizeof(float) * (size_t)n);
  for (int round = 0; round < 3; round++)
    for (int c = 0; c < 3; c++) {
      fill(x, n, 21, -2.0f, 4.0f);
      fill(g, n, 22, -1.0f, 2.0f);
      if (round == 1) g[1 * sp + 5] = INFINITY, g[3 * sp + 36] = NAN; /* channel 1, planes 0 and 1 */
      if (round == 2) g[1 * sp + 17] = 3e38f; /* finite, but its dX (1.2 g) overflows to Inf */
      for (int64_t ch = 0; ch < C; ch++) {
        float m = 0.0f;
        nbl_bn_grad_hooks h = {NULL, NULL, &m};
        double sg, sgx;
        nbl_isa prev = nbl_cpu_set_thread_cap(caps[c]);
        nbl_bn_grad_f32_channel(g, x, dx, N, C, sp, ch, 0.25, 0.8, 1.5, &sg, &sgx, &h);
        nbl_cpu_set_thread_cap(prev);
        float want = 0.0f;
        for (int64_t k = 0; k < N; k++) {
          float t = nbl_logq_absmax(NBL_LOGQ_SCALAR, dx + (k * C + ch) * sp, (size_t)sp);
          want = t > want ? t : want;
        }
        ck_assert_msg(m == want, "round %d cap %s ch %lld: %a vs %a", round, nbl_isa_name(caps[c]), (long long)ch,
                      (double)m, (double)want);
        if (round != 1 || ch == 0) ck_assert(m > 0.0f && m < INFINITY);
      }
    }
  free(x);
  free(g);
  free(dx);
}
END_TEST

START_TEST(test_apply_relu) {
  static const int64_t sps[] = {1, 5, 16, 17, 49, 196};
  for (size_t si = 0; si < sizeof sps / sizeof *sps; si++)
    for (int bad_at = -1; bad_at < 2; bad_at++)
      for (int c = 0; c < 3; c++) {
        int64_t N = 3, C = 2, sp = sps[si], n = N * C * sp;
        float *x = malloc(sizeof(float) * (size_t)n), *r = malloc(sizeof(float) * (size_t)n);
        float *v = malloc(sizeof(float) * (size_t)n);
        fill(x, n, (unsigned)sp, -2.0f, 4.0f);
        fill(r, n, (unsigned)sp + 1, -1.0f, 2.0f);
        if (bad_at == 0) x[(2 * C + 1) * sp + sp - 1] = NAN; /* channel 1's last element */
        if (bad_at == 1) r[(1 * C + 1) * sp] = INFINITY;
        for (int res = 0; res < 2; res++)
          for (int64_t ch = 0; ch < C; ch++) {
            const float a = 1.25f, b = -0.375f;
            float rg[2], lo = INFINITY, hi = -INFINITY;
            int want_bad = 0;
            nbl_isa prev = nbl_cpu_set_thread_cap(caps[c]);
            memset(v, 0, sizeof(float) * (size_t)n);
            int got_bad = nbl_bn_apply_relu_f32(v, x, res ? r : NULL, N, C, sp, ch, a, b, rg);
            nbl_cpu_set_thread_cap(prev);
            for (int64_t k = 0; k < N; k++)
              for (int64_t i = 0; i < sp; i++) {
                int64_t o = (k * C + ch) * sp + i;
                float t = x[o] * a + b;
                if (res) t = t + r[o];
                t = t < 0 ? 0.0f : t;
                ck_elem_msg(!memcmp(&t, &v[o], sizeof t), "cap %s sp %lld res %d [%lld]: %a vs %a",
                            nbl_isa_name(caps[c]), (long long)sp, res, (long long)o, (double)v[o], (double)t);
                want_bad |= !isfinite(t);
                lo = t < lo ? t : lo;
                hi = t > hi ? t : hi;
              }
            ck_assert_int_eq(got_bad, want_bad);
            if (!want_bad) ck_assert(rg[0] == lo && rg[1] == hi);
            /* other channel's planes untouched */
            for (int64_t k = 0; k < N; k++) ck_assert(v[(k * C + (1 - ch)) * sp] == 0.0f);
          }
        free(x);
        free(r);
        free(v);
      }
}
END_TEST

/* The block functions (several channels at once, planes in the order n,
 * then c; past NBL_BN_BLOCK_MAX channels in sub-blocks) give each channel
 * the bits of the per-channel functions: statistics, the gradient's sums
 * and dX (with a `before` hook writing g plane by plane, and max |dX|), and
 * the apply with its range; at every cap, plane sizes around the vector
 * width and the block threshold, blocks that start past channel 0. */
static const float *g_src; /* the hook's source: g = 2 * src, plane by plane */
static float *g_dst;
static void hook_g(void *arg, int64_t at, int64_t n) {
  (void)arg;
  for (int64_t i = 0; i < n; i++) g_dst[at + i] = 2.0f * g_src[at + i];
}

START_TEST(test_blocks_same_bits) {
  static const int64_t shapes[][3] = {{3, 70, 49}, {2, 5, 7}, {2, 9, 784}, {2, 3, 1500}, {4, 20, 196}, {1, 1, 17}};
  for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
    for (int c = 0; c < 3; c++) {
      const int64_t N = shapes[si][0], C = shapes[si][1], sp = shapes[si][2], n = N * C * sp;
      const int64_t c0 = C > 2 ? 1 : 0, c1 = C > 2 ? C - 1 : C, nb = c1 - c0;
      float *x = malloc(sizeof(float) * (size_t)n), *d = malloc(sizeof(float) * (size_t)n);
      float *g1 = calloc((size_t)n, sizeof(float)), *g2 = calloc((size_t)n, sizeof(float));
      float *dx1 = calloc((size_t)n, sizeof(float)), *dx2 = calloc((size_t)n, sizeof(float));
      double *mu1 = malloc(sizeof(double) * (size_t)C), *va1 = malloc(sizeof(double) * (size_t)C);
      double *mu2 = malloc(sizeof(double) * (size_t)C), *va2 = malloc(sizeof(double) * (size_t)C);
      double *inv = malloc(sizeof(double) * (size_t)C), *scl = malloc(sizeof(double) * (size_t)C);
      double *sg1 = malloc(sizeof(double) * (size_t)C), *sgx1 = malloc(sizeof(double) * (size_t)C);
      double *sg2 = malloc(sizeof(double) * (size_t)C), *sgx2 = malloc(sizeof(double) * (size_t)C);
      float *fa = malloc(sizeof(float) * (size_t)C), *fb = malloc(sizeof(float) * (size_t)C);
      fill(x, n, 21 + (unsigned)si, -2.0f, 5.0f);
      fill(d, n, 31 + (unsigned)si, -1.0f, 2.0f);
      nbl_isa prev = nbl_cpu_set_thread_cap(caps[c]);
      float m1 = 0.0f, m2 = 0.0f, r1[2] = {INFINITY, -INFINITY}, r2[2];
      int bad1 = 0;
      g_src = d;
      for (int64_t ch = c0; ch < c1; ch++) {
        nbl_bn_stats_f32_channel(x, N, C, sp, ch, &mu1[ch], &va1[ch]);
        inv[ch] = 1.0 / sqrt(va1[ch] + 1e-5), scl[ch] = 0.5 + 0.01 * (double)ch;
        fa[ch] = (float)(scl[ch] * inv[ch]), fb[ch] = (float)(0.1 - mu1[ch] * scl[ch] * inv[ch]);
        g_dst = g1;
        float m = 0.0f, rg[2];
        nbl_bn_grad_hooks h = {hook_g, NULL, &m};
        nbl_bn_grad_f32_channel(g1, x, dx1, N, C, sp, ch, mu1[ch], inv[ch], scl[ch], &sg1[ch], &sgx1[ch], &h);
        m1 = m > m1 ? m : m1;
        bad1 |= nbl_bn_apply_relu_f32(g1, x, d, N, C, sp, ch, fa[ch], fb[ch], rg);
        r1[0] = rg[0] < r1[0] ? rg[0] : r1[0];
        r1[1] = rg[1] > r1[1] ? rg[1] : r1[1];
      }
      nbl_bn_stats_f32_block(x, N, C, sp, c0, c1, mu2 + c0, va2 + c0);
      g_dst = g2;
      nbl_bn_grad_hooks h2 = {hook_g, NULL, &m2};
      nbl_bn_grad_f32_block(g2, x, dx2, N, C, sp, c0, c1, mu1 + c0, inv + c0, scl + c0, sg2 + c0, sgx2 + c0, &h2);
      const int bad2 = nbl_bn_apply_relu_f32_block(g2, x, d, N, C, sp, c0, c1, fa + c0, fb + c0, r2);
      nbl_cpu_set_thread_cap(prev);
      ck_assert(nb > 0);
      ck_assert_msg(!memcmp(mu1 + c0, mu2 + c0, sizeof(double) * (size_t)nb) &&
                        !memcmp(va1 + c0, va2 + c0, sizeof(double) * (size_t)nb),
                    "statistics differ: cap %s, N %lld C %lld sp %lld", nbl_isa_name(caps[c]), (long long)N,
                    (long long)C, (long long)sp);
      ck_assert_msg(!memcmp(sg1 + c0, sg2 + c0, sizeof(double) * (size_t)nb) &&
                        !memcmp(sgx1 + c0, sgx2 + c0, sizeof(double) * (size_t)nb),
                    "gradient sums differ: cap %s, sp %lld", nbl_isa_name(caps[c]), (long long)sp);
      ck_assert_msg(!memcmp(dx1, dx2, sizeof(float) * (size_t)n) && !memcmp(g1, g2, sizeof(float) * (size_t)n),
                    "dX or the applied planes differ: cap %s, sp %lld", nbl_isa_name(caps[c]), (long long)sp);
      ck_assert(m1 == m2 && m1 > 0.0f && bad1 == bad2 && !bad1 && r1[0] == r2[0] && r1[1] == r2[1]);
      free(x), free(d), free(g1), free(g2), free(dx1), free(dx2), free(mu1), free(va1), free(mu2), free(va2);
      free(inv), free(scl), free(sg1), free(sgx1), free(sg2), free(sgx2), free(fa), free(fb);
    }
  ck_assert_int_eq(nbl_bn_block(64, 49, 1), 11); /* ceil(512 / 49) */
  ck_assert_int_eq(nbl_bn_block(64, 49, 2), 11);
  ck_assert_int_eq(nbl_bn_block(16, 49, 2), 8); /* half the channels each */
  ck_assert_int_eq(nbl_bn_block(512, 1, 1), NBL_BN_BLOCK_MAX);
  ck_assert_int_eq(nbl_bn_block(64, 784, 1), 1); /* 28 x 28: channel by channel */
}
END_TEST

/* BatchNormInternal then BatchNormalizationGrad on [N, C, H, W] with
 * `threads` threads (fast path); all outputs copied into out[0..7]. */
static void run_bn(int threads, int64_t N, int64_t C, int64_t H, int64_t W, float *out[8]) {
  int64_t n = N * C * H * W, dx[4] = {N, C, H, W}, dc[1] = {C};
  float *x = malloc(sizeof(float) * (size_t)n), *dy = malloc(sizeof(float) * (size_t)n);
  float sc[64], b[64], rm[64], rv[64];
  fill(x, n, 11, -3.0f, 7.0f);
  fill(dy, n, 12, -1.0f, 2.0f);
  fill(sc, C, 13, 0.5f, 1.0f);
  fill(b, C, 14, -0.5f, 1.0f);
  fill(rm, C, 15, -0.1f, 0.2f);
  fill(rv, C, 16, 0.9f, 0.2f);
  one *f = one_new_domain("BatchNormInternal", "com.microsoft", 1, 5, 5);
  nbl_host_tensor fin[5] = {ht(NBL_DT_FLOAT, 4, dx, x), ht(NBL_DT_FLOAT, 1, dc, sc), ht(NBL_DT_FLOAT, 1, dc, b),
                            ht(NBL_DT_FLOAT, 1, dc, rm), ht(NBL_DT_FLOAT, 1, dc, rv)};
  one_ins(f, 5, fin);
  f->threads = threads;
  ck_assert_int_eq(one_run(f, 0), NBL_OK);
  for (int k = 0; k < 5; k++) {
    out[k] = malloc(f->out[k].nbytes);
    memcpy(out[k], f->out[k].data, f->out[k].nbytes);
  }
  one *g = one_new_domain("BatchNormalizationGrad", "com.microsoft", 1, 5, 3);
  nbl_host_tensor bin[5] = {ht(NBL_DT_FLOAT, 4, dx, dy), ht(NBL_DT_FLOAT, 4, dx, x), ht(NBL_DT_FLOAT, 1, dc, sc),
                            ht(NBL_DT_FLOAT, 1, dc, out[3]), ht(NBL_DT_FLOAT, 1, dc, out[4])};
  one_ins(g, 5, bin);
  g->threads = threads;
  ck_assert_int_eq(one_run(g, 0), NBL_OK);
  for (int k = 0; k < 3; k++) {
    out[5 + k] = malloc(g->out[k].nbytes);
    memcpy(out[5 + k], g->out[k].data, g->out[k].nbytes);
  }
  one_free(f);
  one_free(g);
  free(x);
  free(dy);
}

START_TEST(test_threads_same_bits) {
  int64_t N = 3, C = 5, H = 7, W = 9, n = N * C * H * W;
  float *one_t[8], *two_t[8];
  run_bn(1, N, C, H, W, one_t);
  run_bn(2, N, C, H, W, two_t);
  static const char *const what[8] = {"Y", "running_mean", "running_var", "saved_mean", "saved_inv_std",
                                      "dX", "dScale", "dBias"};
  for (int k = 0; k < 8; k++) {
    int64_t len = k == 0 || k == 5 ? n : C;
    ck_assert_msg(!memcmp(one_t[k], two_t[k], sizeof(float) * (size_t)len), "%s differs with 2 threads", what[k]);
    free(one_t[k]);
    free(two_t[k]);
  }
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("bn_sums");
  TCase *t = tcase_create("bn_sums");
  tcase_add_test(t, test_lanes_every_cap);
  tcase_add_test(t, test_total_tree);
  tcase_add_test(t, test_stats_vs_long_double);
  tcase_add_test(t, test_stats_nan_inf);
  tcase_add_test(t, test_dx_absmax);
  tcase_add_test(t, test_apply_relu);
  tcase_add_test(t, test_blocks_same_bits);
  tcase_add_test(t, test_threads_same_bits);
  suite_add_tcase(s, t);
  return s;
}

int main(void) {
  SRunner *r = srunner_create(suite());
  srunner_run_all(r, CK_NORMAL);
  int failed = srunner_ntests_failed(r);
  srunner_free(r);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
