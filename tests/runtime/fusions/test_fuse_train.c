/* test_fuse_train.c - the training-graph fusions (runtime/fusions/fuse_bn_grad.c)
 * against the unfused graph, which stays the reference (NBL_NO_FUSION).
 *
 * sessions: the shipped LeNet-5 and ResNet-8 training graphs, FP32
 *   (build-training) and 4-bit (quantize-int4, build-training,
 *   quantize-grad-log4{rounding=tpr}, int4-backward), train four steps side
 *   by side, one session planned with the fusions and one with
 *   NBL_NO_FUSION=all, at 1 and 2 threads: every loss, every gradient and
 *   every updated parameter must be equal bit for bit. The fused kernels
 *   compute the same float operations in the same order as the op kernels
 *   they replace (selections of the same float sums, then
 *   BatchNormalizationGrad's own per-channel kernel), so there is no
 *   rounding to allow for: any difference is a bug. The profile must show
 *   the fused nodes (ResNet-8: every BatchNormalizationGrad but the two of
 *   the projection shortcuts; LeNet-5 has no BatchNorm: nothing fuses and
 *   the runs must still agree).
 * kernel: a hand-built chain Add -> QuantizeInt4Grad -> ReluGrad ->
 *   BatchNormalizationGrad (and the shorter chains) on odd sizes (channels
 *   and planes off the vector widths), with zeros, NaN and Inf among the
 *   inputs, a broadcast Add operand and a ReluGrad output that is also a
 *   graph output: fused and unfused engines give the same bits.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "include/nibble.h"
#include "ir/ir.h"
#include "runtime/core/exec.h"

static char *src_path(const char *rel) {
  const char *root = getenv("NBL_SOURCE_ROOT");
  if (!root) root = ".";
  size_t n = strlen(root) + strlen(rel) + 2;
  char *p = malloc(n);
  ck_assert_ptr_nonnull(p);
  snprintf(p, n, "%s/%s", root, rel);
  return p;
}

static nbl_model *prepared(const char *model, const char *spec) {
  char *path = src_path(model);
  nbl_model *m = NULL;
  ck_assert_msg(nbl_model_load(path, &m) == NBL_OK, "%s", nbl_last_error());
  free(path);
  nbl_pipeline *p = NULL;
  ck_assert_msg(nbl_pipeline_parse(spec, &p) == NBL_OK, "%s", nbl_last_error());
  FILE *null = fopen("/dev/null", "w");
  nbl_pipeline_options po = {.log = null};
  ck_assert_msg(nbl_pipeline_run(p, m, &po) == NBL_OK, "%s: %s", spec, nbl_last_error());
  if (null) fclose(null);
  nbl_pipeline_free(p);
  return m;
}

static void batch(int B, nbl_host_tensor *x, nbl_host_tensor *y) {
  char *xp = src_path("models/data/fmnist_test_100.npy"), *yp = src_path("models/data/fmnist_test_100_labels.npy");
  ck_assert_msg(nbl_tensor_read(xp, x) == NBL_OK, "%s", nbl_last_error());
  ck_assert_msg(nbl_tensor_read(yp, y) == NBL_OK, "%s", nbl_last_error());
  free(xp);
  free(yp);
  x->dims[0] = y->dims[0] = B;
  x->nbytes = (size_t)B * 28 * 28 * sizeof(float);
  y->nbytes = (size_t)B * sizeof(int64_t);
}

typedef struct run {
  nbl_train_session *s;
  nbl_host_tensor in[2];
} run;

/* A session of m; fused = 0 plans it with NBL_NO_FUSION=all. */
static void run_open(run *r, const nbl_model *m, int fused, int threads, const nbl_host_tensor *x,
                     const nbl_host_tensor *y) {
  if (!fused) setenv("NBL_NO_FUSION", "all", 1);
  nbl_train_options o = {.threads = threads, .profile = 1};
  nbl_status st = nbl_train_session_create(m, &o, &r->s);
  unsetenv("NBL_NO_FUSION");
  ck_assert_msg(st == NBL_OK, "%s", nbl_last_error());
  for (int i = 0; i < 2; i++) {
    const char *nm = nbl_train_input_name(r->s, i);
    r->in[i] = strcmp(nm, "label") ? *x : *y;
    r->in[i].name = nm;
  }
  ck_assert_int_eq(nbl_train_set_lr(r->s, 0.05), NBL_OK);
}

/* Fused nodes of the session's profile (op types with "BNGrad"). */
static int fused_nodes(const run *r) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(nbl_train_print_profile(r->s, f, 0), NBL_OK);
  fclose(f);
  int n = 0;
  for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
    char op[128];
    int cnt;
    if (strstr(line, "BNGrad") && sscanf(line, "%127s %*s %d", op, &cnt) == 2) n += cnt;
  }
  free(buf);
  return n;
}

static void same_bits(const nbl_host_tensor *a, const nbl_host_tensor *b, const char *what, const char *model,
                      int threads, int step) {
  ck_assert_uint_eq(a->nbytes, b->nbytes);
  const float *pa = a->data, *pb = b->data;
  for (size_t k = 0; k < a->nbytes / sizeof(float); k++)
    ck_assert_msg(!memcmp(&pa[k], &pb[k], sizeof(float)), "%s, %d thread(s), step %d: %s %s [%zu]: fused %.9g vs %.9g",
                  model, threads, step, what, a->name ? a->name : "?", k, pa[k], pb[k]);
}

typedef struct train_case {
  const char *model, *spec;
  int fused; /* fused nodes expected */
} train_case;

#define Q4 "quantize-int4,build-training,quantize-grad-log4{rounding=tpr},int4-backward"
static const train_case tcases[] = {
    {"models/resnet8_init.onnx", "build-training", 7},
    {"models/resnet8_init.onnx", Q4, 7},
    {"models/lenet5_init.onnx", "build-training", 0},
    {"models/lenet5_init.onnx", Q4, 0},
};

START_TEST(test_sessions) {
  const train_case *c = &tcases[_i / 2];
  int threads = 1 + _i % 2;
  nbl_model *m = prepared(c->model, c->spec);
  nbl_host_tensor x, y;
  batch(16, &x, &y);
  run rf, ru;
  run_open(&rf, m, 1, threads, &x, &y);
  run_open(&ru, m, 0, threads, &x, &y);
  for (int step = 1; step <= 4; step++) {
    float lf, lu;
    ck_assert_msg(nbl_train_step(rf.s, 2, rf.in, &lf) == NBL_OK, "%s", nbl_last_error());
    ck_assert_msg(nbl_train_step(ru.s, 2, ru.in, &lu) == NBL_OK, "%s", nbl_last_error());
    ck_assert_msg(!memcmp(&lf, &lu, sizeof lf), "%s %s, %d thread(s), step %d: loss %.9g fused vs %.9g", c->model,
                  c->spec, threads, step, lf, lu);
    int n = nbl_train_grad_count(rf.s);
    ck_assert_int_eq(n, nbl_train_grad_count(ru.s));
    for (int i = 0; i < n; i++) {
      nbl_host_tensor a, b;
      ck_assert_int_eq(nbl_train_grad(rf.s, i, &a), NBL_OK);
      ck_assert_int_eq(nbl_train_grad(ru.s, i, &b), NBL_OK);
      same_bits(&a, &b, "gradient", c->model, threads, step);
    }
    for (run *r = &rf; r; r = r == &rf ? &ru : NULL) {
      ck_assert_msg(nbl_optimizer_step(r->s) == NBL_OK, "%s", nbl_last_error());
      ck_assert_int_eq(nbl_train_reset_grad(r->s), NBL_OK);
    }
    n = nbl_train_param_count(rf.s);
    for (int i = 0; i < n; i++) {
      nbl_host_tensor a, b;
      ck_assert_int_eq(nbl_train_param(rf.s, i, &a), NBL_OK);
      ck_assert_int_eq(nbl_train_param(ru.s, i, &b), NBL_OK);
      same_bits(&a, &b, "parameter", c->model, threads, step);
    }
  }
  ck_assert_int_eq(fused_nodes(&rf), c->fused);
  ck_assert_int_eq(fused_nodes(&ru), 0);
  nbl_train_session_free(rf.s);
  nbl_train_session_free(ru.s);
  nbl_host_tensor_free(&x);
  nbl_host_tensor_free(&y);
  nbl_model_free(m);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("fuse_train");
  TCase *tc = tcase_create("sessions");
  tcase_set_timeout(tc, 300);
  tcase_add_loop_test(tc, test_sessions, 0, (int)(2 * sizeof tcases / sizeof tcases[0]));
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int nf = srunner_ntests_failed(sr);
  srunner_free(sr);
  return nf == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
