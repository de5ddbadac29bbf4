/* test_cpu.c - the CPU dispatch configuration (runtime/core/cpu.h): the
 * process cap from NBL_ISA / NBL_INT4_ISA (the suite runs this test under
 * several values and the expectation is computed here from the variable),
 * a thread's cap and its reach into the pool's workers, and a session's
 * cap (nbl_session_options.isa) on real models: FP32 depthwise layers whose
 * AVX-512 kernel a cap below avx512 must not run, against a naive double
 * loop, and INT4 LeNet-5 outputs that do not depend on the cap. */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "include/nibble.h"
#include "ir/ir.h"
#include "runtime/core/cpu.h"
#include "runtime/core/threadpool.h"
#include "runtime/kernels/int4_backward.h"
#include "runtime/kernels/int4_gemm.h"
#include "runtime/kernels/kdebug.h"
#include "test_data.h"
#include "ck_elem.h"

/* The process cap the environment asks for, decoded here independently. */
static nbl_isa env_expect(const char **var, int *bad) {
  const char *v = getenv("NBL_ISA");
  *var = "NBL_ISA";
  int alias = 0;
  if (!v || !*v) {
    v = getenv("NBL_INT4_ISA");
    *var = "NBL_INT4_ISA";
    alias = 1;
  }
  *bad = 0;
  if (!v || !*v) {
    *var = NULL;
    return NBL_ISA_DEFAULT;
  }
  if (!strcmp(v, "scalar")) return NBL_ISA_SCALAR;
  if (!strcmp(v, "avx2")) return NBL_ISA_AVX2;
  if (!strcmp(v, "avx512") || (alias && !strcmp(v, "vnni"))) return NBL_ISA_AVX512;
  if (!strcmp(v, "amx")) return NBL_ISA_AMX;
  *bad = 1;
  return NBL_ISA_DEFAULT;
}

static nbl_isa min_cap(nbl_isa a, nbl_isa b) {
  if (a == NBL_ISA_DEFAULT) return b;
  if (b == NBL_ISA_DEFAULT) return a;
  return a < b ? a : b;
}

START_TEST(test_env_cap) {
  const char *var, *got_var, *got_bad;
  int bad;
  nbl_isa want = env_expect(&var, &bad);
  ck_assert_int_eq(nbl_cpu_env_cap(&got_var, &got_bad), want);
  if (var) ck_assert_str_eq(got_var, var);
  ck_assert_int_eq(got_bad != NULL, bad);
  const char *info = nbl_kernel_info();
  if (bad) {
    ck_assert_msg(strstr(info, "not understood: no cap") != NULL, "%s", info);
    ck_assert_str_eq(got_bad, getenv(var));
  }
  nbl_isa best = nbl_cpu_best_level(), level = nbl_cpu_level();
  ck_assert_int_eq(level, want != NBL_ISA_DEFAULT && want < best ? want : best);
  /* the kernel line names a binding cap and where it comes from */
  ck_assert_int_eq(strstr(info, "ISA cap:") != NULL, level < best);
  if (level < best) ck_assert_msg(strstr(info, var) != NULL, "%s", info);
}
END_TEST

/* What a cap allows: nothing past the baseline at scalar, no AVX-512 at
 * avx2; never a feature the CPU lacks; the INT4 variant follows. */
START_TEST(test_thread_cap) {
  unsigned hw = nbl_cpu_features();
  const char *var;
  int bad;
  nbl_isa env = env_expect(&var, &bad);
  for (nbl_isa cap = NBL_ISA_DEFAULT; cap <= NBL_ISA_AVX512; cap++) {
    nbl_isa prev = nbl_cpu_set_thread_cap(cap);
    ck_assert_int_eq(prev, NBL_ISA_DEFAULT);
    nbl_isa eff = min_cap(env, cap);
    for (unsigned f = 1; f <= NBL_CPU_AVX512VNNI; f <<= 1) {
      int allowed = eff == NBL_ISA_DEFAULT || eff >= NBL_ISA_AVX512 ||
                    (eff == NBL_ISA_AVX2 &&
                     (f & (NBL_CPU_AVX | NBL_CPU_AVX2 | NBL_CPU_FMA | NBL_CPU_F16C)));
      ck_assert_msg(nbl_cpu_has(f) == ((hw & f) && allowed), "cap %d feature %#x", cap, f);
    }
    nbl_i4_isa i4 = nbl_i4_best_isa();
    ck_assert(nbl_i4_isa_supported(i4));
    if (eff == NBL_ISA_SCALAR) ck_assert_int_eq(i4, NBL_I4_SCALAR);
    if (eff == NBL_ISA_AVX2) ck_assert_int_le(i4, NBL_I4_AVX2);
    const char *info = nbl_kernel_info();
    ck_assert_msg(strstr(info, nbl_i4_isa_name(i4)) != NULL, "%s", info);
    /* the AMX products of 4-bit training are named when they run (never under an avx512 cap) */
    ck_assert_msg((strstr(info, "AMX tiles") != NULL) == (nbl_i4b_amx_on(nbl_i4b_best_isa()) != 0), "%s", info);
    if (eff != NBL_ISA_DEFAULT && eff <= NBL_ISA_AVX512) ck_assert_msg(strstr(info, "AMX tiles") == NULL, "%s", info);
    if (cap != NBL_ISA_DEFAULT && cap < nbl_cpu_best_level() &&
        (env == NBL_ISA_DEFAULT || cap < env))
      ck_assert_msg(strstr(info, "session option") != NULL, "%s", info);
    nbl_cpu_set_thread_cap(prev);
  }
}
END_TEST

/* The AMX tiles: only with no cap or the amx level (avx512 and lower turn
 * them off), never on a CPU (or kernel) without them; the 4-bit training
 * products follow. */
START_TEST(test_amx_cap) {
  const unsigned hw = nbl_cpu_features();
  const char *var;
  int bad;
  nbl_isa env = env_expect(&var, &bad);
  if (!(hw & NBL_CPU_AVX512F)) ck_assert(!(hw & NBL_CPU_AMX));
  for (nbl_isa cap = NBL_ISA_DEFAULT; cap <= NBL_ISA_AMX; cap++) {
    nbl_isa prev = nbl_cpu_set_thread_cap(cap);
    ck_assert_int_eq(nbl_cpu_thread_cap(), cap);
    nbl_isa eff = min_cap(env, cap);
    const int want = (hw & NBL_CPU_AMX) && (eff == NBL_ISA_DEFAULT || eff == NBL_ISA_AMX);
    ck_assert_msg(nbl_cpu_has(NBL_CPU_AMX) == want, "cap %d", cap);
    nbl_i4b_set_amx(-1);
    ck_assert_int_eq(nbl_i4b_amx_on(NBL_I4B_AVX512), want && nbl_i4b_amx_supported());
    ck_assert_int_eq(nbl_i4b_amx_on(NBL_I4B_AVX2), 0);
    nbl_i4b_set_amx(0);
    ck_assert_int_eq(nbl_i4b_amx_on(NBL_I4B_AVX512), 0);
    nbl_i4b_set_amx(-1);
    nbl_cpu_set_thread_cap(prev);
  }
  ck_assert_str_eq(nbl_isa_name(NBL_ISA_AMX), "amx");
}
END_TEST

/* The pool's workers run a job under the cap of the thread that started it. */
typedef struct cap_job {
  pthread_t caller;
  nbl_isa seen[8];
  int on_worker[8];
} cap_job;

static void cap_chunk(void *arg, int64_t b, int64_t e) {
  cap_job *j = arg;
  for (int64_t i = b; i < e; i++) {
    struct timespec ts = {0, 3000000}; /* 3 ms: the worker wakes and takes its share */
    nanosleep(&ts, NULL);
    j->seen[i] = nbl_cpu_thread_cap();
    j->on_worker[i] = !pthread_equal(pthread_self(), j->caller);
  }
}

START_TEST(test_pool_carries_cap) {
  nbl_pool *p = nbl_pool_new(2);
  ck_assert_ptr_nonnull(p);
  cap_job warm = {.caller = pthread_self()}; /* a worker joins jobs published after it started */
  ck_assert(nbl_pool_run(p, 8, 1, 2, cap_chunk, &warm));
  for (nbl_isa cap = NBL_ISA_SCALAR; cap <= NBL_ISA_AVX512; cap++) {
    cap_job j = {.caller = pthread_self()};
    nbl_isa prev = nbl_cpu_set_thread_cap(cap);
    ck_assert(nbl_pool_run(p, 8, 1, 2, cap_chunk, &j));
    nbl_cpu_set_thread_cap(prev);
    int workers = 0;
    for (int i = 0; i < 8; i++) {
      ck_assert_int_eq(j.seen[i], cap);
      workers += j.on_worker[i];
    }
    ck_assert_int_gt(workers, 0);
  }
  nbl_pool_free(p);
}
END_TEST

static uint32_t rng = 4242;
static float frand(void) { return td_lcg_float(&rng); }

/* A 3x3 depthwise Conv, 32 channels of 14 x 14 (the planes on which the
 * FP32 path takes its AVX-512 kernel 16 channels at a time), run in a
 * session capped at `cap`; returns the output (malloc'd) and checks it
 * against a naive double loop. *blocked: runs of the AVX-512 kernel. */
static float *run_depthwise(nbl_isa cap, int threads, long *blocked) {
  enum { C = 32, H = 14, W = 14 };
  static float x[C * H * W], w[C * 9], b[C];
  rng = 4242;
  for (int i = 0; i < C * H * W; i++) x[i] = frand();
  for (int i = 0; i < C * 9; i++) w[i] = frand();
  for (int i = 0; i < C; i++) b[i] = frand();
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_graph *g = m->graph;
  int64_t dx[4] = {1, C, H, W}, dw[4] = {C, 1, 3, 3}, db[1] = {C};
  nbl_id vx = nbl_graph_add_value(g, "x"), vw = nbl_graph_add_value(g, "w");
  nbl_id vb = nbl_graph_add_value(g, "b"), vy = nbl_graph_add_value(g, "y");
  nbl_type_set_tensor(m->arena, &g->values[vx].type, NBL_DT_FLOAT, 4, dx);
  nbl_graph_add_input(g, vx);
  nbl_graph_set_initializer(g, vw, nbl_tensor_new(m->arena, "w", NBL_DT_FLOAT, 4, dw, w));
  nbl_graph_set_initializer(g, vb, nbl_tensor_new(m->arena, "b", NBL_DT_FLOAT, 1, db, b));
  nbl_id ins[3] = {vx, vw, vb};
  nbl_id n = nbl_graph_add_node(g, "Conv", "", "dw", 3, ins, 1, &vy);
  int64_t pd[4] = {1, 1, 1, 1};
  nbl_node_set_attr_ints(g, n, "pads", 4, pd);
  nbl_node_set_attr_int(g, n, "group", C);
  nbl_graph_add_output(g, vy);
  nbl_session_options opt = {.threads = threads, .isa = cap};
  nbl_session *s = NULL;
  ck_assert_msg(nbl_session_create(m, &opt, &s) == NBL_OK, "%s", nbl_last_error());
  nbl_host_tensor feed = {.name = "x", .dtype = NBL_DT_FLOAT, .rank = 4, .data = x,
                          .nbytes = sizeof x};
  memcpy(feed.dims, dx, sizeof dx);
  nbl_kernel_stats s0, s1;
  nbl_kernel_stats_get(&s0);
  const nbl_host_tensor *res = NULL;
  ck_assert_msg(nbl_session_run(s, 1, &feed, &res) == NBL_OK, "%s", nbl_last_error());
  nbl_kernel_stats_get(&s1);
  *blocked = s1.n[NBL_KC_F32_DW_BLOCKED_RUNS] - s0.n[NBL_KC_F32_DW_BLOCKED_RUNS];
  ck_assert_uint_eq(res[0].nbytes, sizeof x);
  float *y = malloc(sizeof x);
  memcpy(y, res[0].data, sizeof x);
  for (int c = 0; c < C; c++)
    for (int oh = 0; oh < H; oh++)
      for (int ow = 0; ow < W; ow++) {
        double acc = b[c], mag = fabs(acc);
        for (int kh = 0; kh < 3; kh++)
          for (int kw = 0; kw < 3; kw++) {
            int ih = oh - 1 + kh, iw = ow - 1 + kw;
            if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
            double p = (double)x[(c * H + ih) * W + iw] * w[c * 9 + kh * 3 + kw];
            acc += p;
            mag += fabs(p);
          }
        float got = y[(c * H + oh) * W + ow];
        ck_elem_msg(fabs(got - acc) <= 1e-5 * (1 + mag), "cap %d: y[%d,%d,%d] %g vs %g", cap,
                    c, oh, ow, got, acc);
      }
  nbl_session_free(s);
  nbl_model_free(m);
  return y;
}

/* A session's cap keeps its kernels below avx512; the depthwise kernels of
 * every level compute the same expression in the same order, so the
 * outputs are bit-identical whatever the cap. */
START_TEST(test_session_cap_fp32) {
  const char *var;
  int bad;
  nbl_isa env = env_expect(&var, &bad);
  for (int t = 1; t <= 2; t++) {
    long blocked_default, blocked;
    float *y0 = run_depthwise(NBL_ISA_DEFAULT, t, &blocked_default);
    int avx512 = (nbl_cpu_features() & NBL_CPU_AVX512F) &&
                 (env == NBL_ISA_DEFAULT || env >= NBL_ISA_AVX512);
    ck_assert_int_eq(blocked_default, avx512);
    for (nbl_isa cap = NBL_ISA_SCALAR; cap <= NBL_ISA_AVX512; cap++) {
      float *y = run_depthwise(cap, t, &blocked);
      ck_assert_int_eq(blocked, (cap == NBL_ISA_AVX512 ? avx512 : 0));
      ck_assert_msg(memcmp(y, y0, 32 * 14 * 14 * sizeof(float)) == 0, "cap %d, %d threads", cap,
                    t);
      free(y);
    }
    free(y0);
  }
}
END_TEST

/* LeNet-5 in INT4 (every layer) on 8 random images: the outputs of the
 * fused integer path do not depend on the cap (each ISA variant computes
 * the same exact integer sums), match the reference path, and the profile
 * header names the kernels the session's cap allows. */
static float *run_lenet(nbl_model *m, const float *x, nbl_isa cap, int threads, int reference,
                        char *header, size_t hcap) {
  nbl_session_options opt = {.threads = threads, .reference = reference, .profile = 1, .isa = cap};
  nbl_session *s = NULL;
  ck_assert_msg(nbl_session_create(m, &opt, &s) == NBL_OK, "%s", nbl_last_error());
  nbl_host_tensor feed = {.name = "input", .dtype = NBL_DT_FLOAT, .rank = 4,
                          .dims = {8, 1, 28, 28}, .data = (void *)x,
                          .nbytes = sizeof(float) * 8 * 28 * 28};
  const nbl_host_tensor *res = NULL;
  ck_assert_msg(nbl_session_run(s, 1, &feed, &res) == NBL_OK, "%s", nbl_last_error());
  ck_assert_uint_eq(res[0].nbytes, sizeof(float) * 80);
  float *y = malloc(res[0].nbytes);
  memcpy(y, res[0].data, res[0].nbytes);
  if (header) {
    FILE *f = fmemopen(header, hcap, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert(nbl_session_print_profile(s, f, 0) == NBL_OK);
    fclose(f);
  }
  nbl_session_free(s);
  return y;
}

START_TEST(test_session_cap_int4) {
  char path[4096];
  const char *root = getenv("NBL_SOURCE_ROOT");
  snprintf(path, sizeof path, "%s/models/lenet5.onnx", root ? root : ".");
  nbl_model *m = NULL;
  ck_assert_msg(nbl_model_load(path, &m) == NBL_OK, "%s", nbl_last_error());
  nbl_pipeline *p = NULL;
  ck_assert(nbl_pipeline_parse("quantize-int4{skip-first-last=0}", &p) == NBL_OK);
  FILE *devnull = fopen("/dev/null", "w");
  nbl_pipeline_options po = {.out = devnull, .log = devnull};
  ck_assert_msg(nbl_pipeline_run(p, m, &po) == NBL_OK, "%s", nbl_last_error());
  fclose(devnull);
  nbl_pipeline_free(p);
  float *x = malloc(sizeof(float) * 8 * 28 * 28);
  rng = 99;
  for (int i = 0; i < 8 * 28 * 28; i++) x[i] = 0.5f * frand() + 0.5f;
  float *ref = run_lenet(m, x, NBL_ISA_DEFAULT, 1, 1, NULL, 0);
  float *y0 = run_lenet(m, x, NBL_ISA_DEFAULT, 1, 0, NULL, 0);
  double top = 0;
  for (int i = 0; i < 80; i++) top = fmax(top, fabs(ref[i]));
  for (int i = 0; i < 80; i++)
    ck_assert_msg(fabs(y0[i] - ref[i]) <= 1e-4 * top, "logit %d: %g vs reference %g", i, y0[i],
                  ref[i]);
  for (int t = 1; t <= 2; t++)
    for (nbl_isa cap = NBL_ISA_SCALAR; cap <= NBL_ISA_AVX512; cap++) {
      char header[4096];
      float *y = run_lenet(m, x, cap, t, 0, header, sizeof header);
      ck_assert_msg(memcmp(y, y0, sizeof(float) * 80) == 0, "cap %d, %d threads", cap, t);
      nbl_isa prev = nbl_cpu_set_thread_cap(cap);
      nbl_i4_isa i4 = nbl_i4_best_isa();
      nbl_cpu_set_thread_cap(prev);
      char want[64];
      snprintf(want, sizeof want, "INT4: %s", nbl_i4_isa_name(i4));
      ck_assert_msg(strstr(header, want) != NULL, "cap %d: %s", cap, header);
      free(y);
    }
  free(x);
  free(ref);
  free(y0);
  nbl_model_free(m);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("cpu");
  TCase *tc = tcase_create("dispatch");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_env_cap);
  tcase_add_test(tc, test_thread_cap);
  tcase_add_test(tc, test_amx_cap);
  tcase_add_test(tc, test_pool_carries_cap);
  tcase_add_test(tc, test_session_cap_fp32);
  tcase_add_test(tc, test_session_cap_int4);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
