/* bench_train4.c - the time of one training step (nbl_train_step, then
 * nbl_optimizer_step and nbl_train_reset_grad) of a model after a pass
 * pipeline, through the public API, for run_train4_bench.py.
 *
 *   bench_train4 MODEL PIPELINE X.npy Y.npy [--batch B] [--threads T]
 *                [--warmup W] [--runs N] [--profile[=TOP]]
 *
 * PIPELINE is a `nibble convert --passes` list that makes the training model
 * (e.g. "build-training" for FP32, "quantize-int4,build-training,
 * quantize-grad-log4{rounding=tpr},int4-backward" for 4-bit training); the
 * batch is the first B rows of X.npy (float32 images) and Y.npy (int64
 * labels). Prints one JSON line {"runs", "median_ms", "mean_ms", "min_ms",
 * "cpu_median_ms"} over N steps after W warm-up steps (wall time; the last
 * the process's CPU time per step), and with --profile the
 * training profile of the timed steps on stderr.
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
                    "[--runs N] [--profile[=TOP]]\n");
    return 2;
  }
  int batch = 64, threads = 1, warmup = 3, runs = 10, profile = 0, top = 15;
  for (int i = 5; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--batch") && v) batch = atoi(v), i++;
    else if (!strcmp(a, "--threads") && v) threads = atoi(v), i++;
    else if (!strcmp(a, "--warmup") && v) warmup = atoi(v), i++;
    else if (!strcmp(a, "--runs") && v) runs = atoi(v), i++;
    else if (!strcmp(a, "--profile")) profile = 1;
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
  nbl_train_session *s = NULL;
  if (nbl_train_session_create(m, &to, &s) != NBL_OK) {
    fprintf(stderr, "bench_train4: %s\n", nbl_last_error());
    return 2;
  }
  nbl_host_tensor in[2];
  for (int i = 0; i < 2 && i < nbl_train_input_count(s); i++) {
    const char *nm = nbl_train_input_name(s, i);
    in[i] = strcmp(nm, "label") ? x : y;
    in[i].name = nm;
  }
  nbl_train_set_lr(s, 0.01);
  double *t = malloc(sizeof(double) * (size_t)runs), *cpu = malloc(sizeof(double) * (size_t)runs);
  if (!t || !cpu) return 1;
  for (int k = 0; k < warmup + runs; k++) {
    if (k == warmup && profile) nbl_train_reset_profile(s);
    double t0 = now_ms(CLOCK_MONOTONIC), c0 = now_ms(CLOCK_PROCESS_CPUTIME_ID);
    float loss;
    if (nbl_train_step(s, 2, in, &loss) || nbl_optimizer_step(s) || nbl_train_reset_grad(s)) {
      fprintf(stderr, "bench_train4: step %d: %s\n", k, nbl_last_error());
      return 1;
    }
    if (k >= warmup) {
      t[k - warmup] = now_ms(CLOCK_MONOTONIC) - t0;
      cpu[k - warmup] = now_ms(CLOCK_PROCESS_CPUTIME_ID) - c0;
    }
  }
  double sum = 0;
  for (int k = 0; k < runs; k++) sum += t[k];
  qsort(t, (size_t)runs, sizeof *t, cmp_d);
  qsort(cpu, (size_t)runs, sizeof *cpu, cmp_d);
  double med = runs % 2 ? t[runs / 2] : 0.5 * (t[runs / 2 - 1] + t[runs / 2]);
  double cmed = runs % 2 ? cpu[runs / 2] : 0.5 * (cpu[runs / 2 - 1] + cpu[runs / 2]);
  printf("{\"runs\": %d, \"median_ms\": %.4f, \"mean_ms\": %.4f, \"min_ms\": %.4f, \"cpu_median_ms\": %.4f}\n",
         runs, med, sum / runs, t[0], cmed);
  if (profile) nbl_train_print_profile(s, stderr, top);
  free(t);
  free(cpu);
  nbl_train_session_free(s);
  nbl_host_tensor_free(&x);
  nbl_host_tensor_free(&y);
  nbl_model_free(m);
  return 0;
}
