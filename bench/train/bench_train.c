/* bench_train.c - nibble's training step time and peak memory, for bench_train.py.
 *
 *   BUILD/bench/bench_train TRAINING_MODEL.onnx --threads T [--batch B] [--warmup W]
 *                           [--runs N] [--profile]
 *
 * TRAINING_MODEL is a training model (`nibble convert MODEL --passes
 * build-training{...}`) whose data input is float32 [N,1,28,28] and whose
 * label is int64 [N]. One training step, as `nibble train` takes it:
 * nbl_train_step (forward, loss, backward), nbl_optimizer_step,
 * nbl_train_reset_grad, on a fixed random batch (pixels uniform in [-1, 1),
 * labels in 0..9, seeded), constant lr 0.01. Prints one JSON line: threads,
 * batch, runs, median_ms, min_ms, cpu_ms (CPU time of the process per step,
 * all threads), the resident set before the first step
 * (after loading the model and creating the session: rss_base_kb) and its
 * peak over the whole run (peak_rss_kb, VmHWM). With --profile the session's
 * per-op profile goes to stderr. Exit status: 0 done, 1 a step failed, 2 bad
 * usage. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "nibble.h"

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* CPU time of the process (all threads, user + system), ms */
static double cpu_ms(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* A field of /proc/self/status in kB (VmRSS, VmHWM); 0 when absent. */
static long status_kb(const char *key) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long v = 0;
  size_t n = strlen(key);
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, key, n) && line[n] == ':') v = strtol(line + n + 1, NULL, 10);
  if (f) fclose(f);
  return v;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t next(void) { /* xorshift64* */
  rng ^= rng >> 12, rng ^= rng << 25, rng ^= rng >> 27;
  return rng * 2685821657736338717ull;
}

static int fail(const char *what) {
  fprintf(stderr, "bench_train: %s: %s\n", what, nbl_last_error());
  return 1;
}

int main(int argc, char **argv) {
  int threads = 1, batch = 64, warmup = 5, runs = 50, profile = 0;
  const char *path = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--warmup") && i + 1 < argc) warmup = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--profile")) profile = 1;
    else if (argv[i][0] != '-' && !path) path = argv[i];
    else {
      fprintf(stderr, "bench_train: unknown argument '%s'\n", argv[i]);
      return 2;
    }
  }
  if (!path || threads < 1 || batch < 1 || warmup < 0 || runs < 1) {
    fprintf(stderr, "usage: bench_train TRAINING_MODEL.onnx --threads T [--batch B] [--warmup W] [--runs N] "
                    "[--profile]\n");
    return 2;
  }
  nbl_model *m = NULL;
  nbl_train_session *s = NULL;
  if (nbl_model_load(path, &m)) return fail(path);
  nbl_train_options o = {.threads = threads, .profile = profile};
  if (nbl_train_session_create(m, &o, &s)) return fail("session");
  nbl_model_free(m);
  if (nbl_train_set_lr(s, 0.01)) return fail("lr");

  size_t npix = (size_t)batch * 28 * 28;
  float *x = malloc(npix * sizeof *x);
  int64_t *y = malloc((size_t)batch * sizeof *y);
  if (!x || !y) return fail("out of memory");
  for (size_t i = 0; i < npix; i++) x[i] = (float)((double)(next() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
  for (int i = 0; i < batch; i++) y[i] = (int64_t)(next() % 10);
  nbl_host_tensor in[2] = {
      {.name = nbl_train_input_name(s, 0), .dtype = NBL_DT_FLOAT, .rank = 4, .dims = {batch, 1, 28, 28},
       .data = x, .nbytes = npix * sizeof *x},
      {.name = nbl_train_input_name(s, 1), .dtype = NBL_DT_INT64, .rank = 1, .dims = {batch},
       .data = y, .nbytes = (size_t)batch * sizeof *y}};
  if (nbl_train_input_count(s) != 2) {
    fprintf(stderr, "bench_train: %s takes %d inputs, expected 2 (image, label)\n", path,
            nbl_train_input_count(s));
    return 2;
  }
  nbl_host_tensor info;
  if (nbl_train_input_info(s, 1, &info)) return fail("input info");
  if (info.dtype != NBL_DT_INT64) { /* the label comes first: swap */
    const char *n0 = in[0].name;
    in[0].name = in[1].name, in[1].name = n0;
  }

  long base = status_kb("VmRSS");
  double *ms = malloc((size_t)runs * sizeof *ms);
  float loss = 0;
  double c0 = 0;
  for (int i = 0; i < warmup + runs; i++) {
    if (i == warmup && profile) nbl_train_reset_profile(s);
    if (i == warmup) c0 = cpu_ms();
    double t0 = now_ms();
    if (nbl_train_step(s, 2, in, &loss) || nbl_optimizer_step(s) || nbl_train_reset_grad(s)) return fail("step");
    if (i >= warmup) ms[i - warmup] = now_ms() - t0;
  }
  double cpu = (cpu_ms() - c0) / runs;
  if (!isfinite(loss)) {
    fprintf(stderr, "bench_train: the loss is not finite\n");
    return 1;
  }
  if (profile) nbl_train_print_profile(s, stderr, 20);
  qsort(ms, (size_t)runs, sizeof *ms, cmp);
  double med = runs % 2 ? ms[runs / 2] : 0.5 * (ms[runs / 2 - 1] + ms[runs / 2]);
  printf("{\"threads\": %d, \"batch\": %d, \"runs\": %d, \"median_ms\": %.3f, \"min_ms\": %.3f, \"cpu_ms\": %.3f, "
         "\"rss_base_kb\": %ld, \"peak_rss_kb\": %ld}\n",
         threads, batch, runs, med, ms[0], cpu, base, status_kb("VmHWM"));
  free(ms), free(x), free(y);
  nbl_train_session_free(s);
  return 0;
}
