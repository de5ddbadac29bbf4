/* bench_train4.c - the time of one training step (nbl_train_step, then
 * nbl_optimizer_step and nbl_train_reset_grad) of a model after a pass
 * pipeline, through the public API, for run_train4_bench.py.
 *
 *   bench_train4 MODEL PIPELINE X.npy Y.npy [--batch B] [--threads T]
 *                [--warmup W] [--runs N] [--profile[=TOP]] [--ab]
 *
 * PIPELINE is a `nibble convert --passes` list that makes the training model
 * (e.g. "build-training" for FP32, "quantize-int4,build-training,
 * quantize-grad-log4{rounding=tpr},int4-backward" for 4-bit training); the
 * batch is the first B rows of X.npy (float32 images) and Y.npy (int64
 * labels). Prints one JSON line {"runs", "median_ms", "mean_ms", "min_ms",
 * "cpu_median_ms"} over N steps after W warm-up steps (wall time; the last
 * the process's CPU time per step), and with --profile the
 * training profile of the timed steps on stderr.
 * --ab: two sessions of the model, one planned without the plan-time
 * fusions (NBL_NO_FUSION=all while it is created) and one with them, step
 * by step in turn (the order swapped every pair, so both see the same load);
 * prints {"runs", "unfused_median_ms", "fused_median_ms", "unfused_min_ms",
 * "fused_min_ms", "unfused_cpu_median_ms", "fused_cpu_median_ms",
 * "pair_ratio_median"} (the median over the pairs of fused / unfused wall
 * time) and with --profile both profiles (unfused first).
 * Exit status: 0 done, 1 a step failed, 2 bad usage or input. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "include/nibble.h"

static double now_ms(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: bench_train4 MODEL PIPELINE X.npy Y.npy [--batch B] [--threads T] [--warmup W] "
                    "[--runs N] [--profile[=TOP]] [--ab]\n");
    return 2;
  }
  int batch = 64, threads = 1, warmup = 3, runs = 10, profile = 0, top = 15, ab = 0;
  for (int i = 5; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--batch") && v) batch = atoi(v), i++;
    else if (!strcmp(a, "--threads") && v) threads = atoi(v), i++;
    else if (!strcmp(a, "--warmup") && v) warmup = atoi(v), i++;
    else if (!strcmp(a, "--runs") && v) runs = atoi(v), i++;
    else if (!strcmp(a, "--profile")) profile = 1;
    else if (!strcmp(a, "--ab")) ab = 1;
    else if (!strncmp(a, "--profile=", 10)) profile = 1, top = atoi(a + 10);
    else {
      fprintf(stderr, "bench_train4: unknown or incomplete option '%s'\n", a);
      return 2;
    }
  }
  if (batch < 1 || runs < 1 || warmup < 0) {
    fprintf(stderr, "bench_train4: --batch and --runs must be >= 1, --warmup >= 0\n");
    return 2;
  }
  nbl_model *m = NULL;
  nbl_pipeline *p = NULL;
  nbl_host_tensor x = {0}, y = {0};
  if (nbl_model_load(argv[1], &m) || nbl_pipeline_parse(argv[2], &p) || nbl_tensor_read(argv[3], &x) ||
      nbl_tensor_read(argv[4], &y)) {
    fprintf(stderr, "bench_train4: %s\n", nbl_last_error());
    return 2;
  }
  FILE *null = fopen("/dev/null", "w");
  nbl_pipeline_options po = {.log = null};
  nbl_status st = nbl_pipeline_run(p, m, &po);
  if (null) fclose(null);
  nbl_pipeline_free(p);
  if (st) {
    fprintf(stderr, "bench_train4: %s: %s\n", argv[2], nbl_last_error());
    return 2;
  }
  if (x.dims[0] < batch || y.dims[0] < batch || y.dtype != NBL_DT_INT64) {
    fprintf(stderr, "bench_train4: the data has fewer than %d rows (or labels not int64)\n", batch);
    return 2;
  }
  x.nbytes = x.nbytes / (size_t)x.dims[0] * (size_t)batch;
  y.nbytes = (size_t)batch * sizeof(int64_t);
  x.dims[0] = y.dims[0] = batch;
  nbl_train_options to = {.threads = threads, .profile = profile};
  int ns = ab ? 2 : 1;
  nbl_train_session *ss[2] = {NULL, NULL};
  for (int k = 0; k < ns; k++) {
    if (ab && k == 0) setenv("NBL_NO_FUSION", "all", 1);
    st = nbl_train_session_create(m, &to, &ss[k]);
    if (ab && k == 0) unsetenv("NBL_NO_FUSION");
    if (st != NBL_OK) {
      fprintf(stderr, "bench_train4: %s\n", nbl_last_error());
      return 2;
    }
    nbl_train_set_lr(ss[k], 0.01);
  }
  nbl_host_tensor in[2];
  for (int i = 0; i < 2 && i < nbl_train_input_count(ss[0]); i++) {
    const char *nm = nbl_train_input_name(ss[0], i);
    in[i] = strcmp(nm, "label") ? x : y;
    in[i].name = nm;
  }
  double *t[2], *cpu[2], *ratio = malloc(sizeof(double) * (size_t)runs);
  for (int k = 0; k < 2; k++) {
    t[k] = malloc(sizeof(double) * (size_t)runs);
    cpu[k] = malloc(sizeof(double) * (size_t)runs);
    if (!t[k] || !cpu[k] || !ratio) return 1;
  }
  for (int k = 0; k < warmup + runs; k++) {
    for (int o = 0; o < ns; o++) {
      int w = ns == 2 ? (o + k) % 2 : 0; /* which session: the order swapped every pair */
      nbl_train_session *s = ss[w];
      if (k == warmup && profile && o == 0)
        for (int q = 0; q < ns; q++) nbl_train_reset_profile(ss[q]);
      double t0 = now_ms(CLOCK_MONOTONIC), c0 = now_ms(CLOCK_PROCESS_CPUTIME_ID);
      float loss;
      if (nbl_train_step(s, 2, in, &loss) || nbl_optimizer_step(s) || nbl_train_reset_grad(s)) {
        fprintf(stderr, "bench_train4: step %d: %s\n", k, nbl_last_error());
        return 1;
      }
      if (k >= warmup) {
        t[w][k - warmup] = now_ms(CLOCK_MONOTONIC) - t0;
        cpu[w][k - warmup] = now_ms(CLOCK_PROCESS_CPUTIME_ID) - c0;
      }
    }
    if (ab && k >= warmup) ratio[k - warmup] = t[1][k - warmup] / t[0][k - warmup];
  }
  double sum = 0, med[2], cmed[2], mn[2];
  for (int k = 0; k < runs; k++) sum += t[0][k];
  for (int w = 0; w < ns; w++) {
    qsort(t[w], (size_t)runs, sizeof(double), cmp_d);
    qsort(cpu[w], (size_t)runs, sizeof(double), cmp_d);
    med[w] = runs % 2 ? t[w][runs / 2] : 0.5 * (t[w][runs / 2 - 1] + t[w][runs / 2]);
    cmed[w] = runs % 2 ? cpu[w][runs / 2] : 0.5 * (cpu[w][runs / 2 - 1] + cpu[w][runs / 2]);
    mn[w] = t[w][0];
  }
  if (ab) {
    qsort(ratio, (size_t)runs, sizeof(double), cmp_d);
    double rmed = runs % 2 ? ratio[runs / 2] : 0.5 * (ratio[runs / 2 - 1] + ratio[runs / 2]);
    printf("{\"runs\": %d, \"unfused_median_ms\": %.4f, \"fused_median_ms\": %.4f, \"unfused_min_ms\": %.4f, "
           "\"fused_min_ms\": %.4f, \"unfused_cpu_median_ms\": %.4f, \"fused_cpu_median_ms\": %.4f, "
           "\"pair_ratio_median\": %.4f}\n",
           runs, med[0], med[1], mn[0], mn[1], cmed[0], cmed[1], rmed);
  } else {
    printf("{\"runs\": %d, \"median_ms\": %.4f, \"mean_ms\": %.4f, \"min_ms\": %.4f, \"cpu_median_ms\": %.4f}\n",
           runs, med[0], sum / runs, mn[0], cmed[0]);
  }
  for (int w = 0; w < ns; w++) {
    if (profile) nbl_train_print_profile(ss[w], stderr, top);
    nbl_train_session_free(ss[w]);
  }
  for (int k = 0; k < 2; k++) {
    free(t[k]);
    free(cpu[k]);
  }
  free(ratio);
  nbl_host_tensor_free(&x);
  nbl_host_tensor_free(&y);
  nbl_model_free(m);
  return 0;
}
