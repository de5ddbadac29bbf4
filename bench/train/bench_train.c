/* bench_train.c - nibble's training step time and peak memory, for bench_train.py
 * (both its FP32 comparison with PyTorch and its 4-bit one, --int4).
 *
 *   BUILD/bench/bench_train MODEL.onnx --threads T [--passes PIPELINE] [--data X.npy Y.npy]
 *                           [--batch B] [--warmup W] [--runs N] [--profile[=TOP]]
 *
 * MODEL is a training model (`nibble convert MODEL --passes
 * build-training{...}`), or with --passes an inference model that the
 * `nibble convert --passes` list PIPELINE makes into one in this process
 * (e.g. "build-training" for FP32, "quantize-int4,build-training,
 * quantize-grad-log4{rounding=tpr},int4-backward" for 4-bit training). Its
 * data input is float32 [N,1,28,28] and its label int64 [N]. The batch is
 * the first B rows of X.npy (float32 images) and Y.npy (int64 labels) with
 * --data, else a fixed random batch (pixels uniform in [-1, 1), labels in
 * 0..9, seeded). One training step, as `nibble train` takes it:
 * nbl_train_step (forward, loss, backward), nbl_optimizer_step,
 * nbl_train_reset_grad, constant lr 0.01. Prints one JSON line over N steps
 * after W warm-up steps: threads, batch, runs, median_ms, mean_ms, min_ms
 * (wall time of a step), cpu_ms (CPU time of the process per step, all
 * threads, over the N steps), cpu_median_ms (the median of each step's CPU
 * time), the resident set before the first step (after loading the model
 * and creating the session: rss_base_kb) and its peak over the whole run
 * (peak_rss_kb, VmHWM). With --profile the session's per-op profile of the
 * timed steps goes to stderr (TOP nodes, default 15). Exit status: 0 done,
 * 1 a step failed, 2 bad usage or input. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <unistd.h>

#include "nibble.h"

static double now_ms(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
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

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
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

static int fail(const char *what, int code) {
  fprintf(stderr, "bench_train: %s: %s\n", what, nbl_last_error());
  return code;
}

int main(int argc, char **argv) {
  /* OpenBLAS fell back to its SSE3 kernels on a CPU it does not know: run
   * again with the kernels that fit (nbl_blas_coretype_hint); if that
   * fails, go on as we are */
  const char *blas_core = nbl_blas_coretype_hint();
  if (blas_core && setenv("OPENBLAS_CORETYPE", blas_core, 1) == 0) execv("/proc/self/exe", argv);
  int threads = 1, batch = 64, warmup = 5, runs = 50, profile = 0, top = 15;
  const char *path = NULL, *passes = NULL, *xpath = NULL, *ypath = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    int more = i + 1 < argc;
    if (!strcmp(a, "--threads") && more) threads = atoi(argv[++i]);
    else if (!strcmp(a, "--batch") && more) batch = atoi(argv[++i]);
    else if (!strcmp(a, "--warmup") && more) warmup = atoi(argv[++i]);
    else if (!strcmp(a, "--runs") && more) runs = atoi(argv[++i]);
    else if (!strcmp(a, "--passes") && more) passes = argv[++i];
    else if (!strcmp(a, "--data") && i + 2 < argc) xpath = argv[++i], ypath = argv[++i];
    else if (!strcmp(a, "--profile")) profile = 1;
    else if (!strncmp(a, "--profile=", 10)) profile = 1, top = atoi(a + 10);
    else if (a[0] != '-' && !path) path = a;
    else {
      fprintf(stderr, "bench_train: unknown or incomplete argument '%s'\n", a);
      return 2;
    }
  }
  if (!path || threads < 1 || batch < 1 || warmup < 0 || runs < 1) {
    fprintf(stderr, "usage: bench_train MODEL.onnx --threads T [--passes PIPELINE] [--data X.npy Y.npy] "
                    "[--batch B] [--warmup W] [--runs N] [--profile[=TOP]]\n");
    return 2;
  }
  nbl_model *m = NULL;
  if (nbl_model_load(path, &m)) return fail(path, 2);
  if (passes) {
    nbl_pipeline *p = NULL;
    if (nbl_pipeline_parse(passes, &p)) return fail(passes, 2);
    FILE *null = fopen("/dev/null", "w");
    nbl_pipeline_options po = {.log = null};
    nbl_status st = nbl_pipeline_run(p, m, &po);
    if (null) fclose(null);
    nbl_pipeline_free(p);
    if (st) return fail(passes, 2);
  }
  nbl_train_session *s = NULL;
  nbl_train_options o = {.threads = threads, .profile = profile};
  if (nbl_train_session_create(m, &o, &s)) return fail("session", 2);
  nbl_model_free(m);
  if (nbl_train_set_lr(s, 0.01)) return fail("lr", 2);
  if (nbl_train_input_count(s) != 2) {
    fprintf(stderr, "bench_train: %s takes %d inputs, expected 2 (image, label)\n", path,
            nbl_train_input_count(s));
    return 2;
  }

  /* the batch: x [B,1,28,28] float32 (or X.npy's rows), y [B] int64 */
  nbl_host_tensor x = {0}, y = {0};
  if (xpath) {
    if (nbl_tensor_read(xpath, &x) || nbl_tensor_read(ypath, &y)) return fail("data", 2);
    if (x.rank < 1 || y.rank < 1 || x.dims[0] < batch || y.dims[0] < batch || y.dtype != NBL_DT_INT64) {
      fprintf(stderr, "bench_train: the data has fewer than %d rows (or labels not int64)\n", batch);
      return 2;
    }
    x.nbytes = x.nbytes / (size_t)x.dims[0] * (size_t)batch;
    y.nbytes = (size_t)batch * sizeof(int64_t);
    x.dims[0] = y.dims[0] = batch;
  } else {
    size_t npix = (size_t)batch * 28 * 28;
    float *xv = malloc(npix * sizeof *xv);
    int64_t *yv = malloc((size_t)batch * sizeof *yv);
    if (!xv || !yv) return fail("out of memory", 1);
    for (size_t i = 0; i < npix; i++) xv[i] = (float)((double)(next() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    for (int i = 0; i < batch; i++) yv[i] = (int64_t)(next() % 10);
    x = (nbl_host_tensor){.dtype = NBL_DT_FLOAT, .rank = 4, .dims = {batch, 1, 28, 28}, .data = xv,
                          .nbytes = npix * sizeof *xv};
    y = (nbl_host_tensor){.dtype = NBL_DT_INT64, .rank = 1, .dims = {batch}, .data = yv,
                          .nbytes = (size_t)batch * sizeof *yv};
  }
  nbl_host_tensor in[2], info;
  for (int i = 0; i < 2; i++) { /* the label is the int64 input, whichever comes first */
    if (nbl_train_input_info(s, i, &info)) return fail("input info", 2);
    in[i] = info.dtype == NBL_DT_INT64 ? y : x;
    in[i].name = nbl_train_input_name(s, i);
  }

  long base = status_kb("VmRSS");
  double *ms = malloc((size_t)runs * sizeof *ms), *cpu = malloc((size_t)runs * sizeof *cpu);
  if (!ms || !cpu) return fail("out of memory", 1);
  float loss = 0;
  double c0 = 0, sum = 0;
  for (int i = 0; i < warmup + runs; i++) {
    if (i == warmup && profile) nbl_train_reset_profile(s);
    if (i == warmup) c0 = cpu_ms();
    double t0 = now_ms(CLOCK_MONOTONIC), p0 = now_ms(CLOCK_PROCESS_CPUTIME_ID);
    if (nbl_train_step(s, 2, in, &loss) || nbl_optimizer_step(s) || nbl_train_reset_grad(s))
      return fail("step", 1);
    if (i >= warmup) {
      ms[i - warmup] = now_ms(CLOCK_MONOTONIC) - t0;
      cpu[i - warmup] = now_ms(CLOCK_PROCESS_CPUTIME_ID) - p0;
      sum += ms[i - warmup];
    }
  }
  double cpu_step = (cpu_ms() - c0) / runs;
  if (!isfinite(loss)) {
    fprintf(stderr, "bench_train: the loss is not finite\n");
    return 1;
  }
  if (profile) nbl_train_print_profile(s, stderr, top);
  double med = median(ms, runs), cmed = median(cpu, runs);
  printf("{\"threads\": %d, \"batch\": %d, \"runs\": %d, \"median_ms\": %.3f, \"mean_ms\": %.3f, "
         "\"min_ms\": %.3f, \"cpu_ms\": %.3f, \"cpu_median_ms\": %.3f, \"rss_base_kb\": %ld, "
         "\"peak_rss_kb\": %ld}\n",
         threads, batch, runs, med, sum / runs, ms[0], cpu_step, cmed, base, status_kb("VmHWM"));
  free(ms), free(cpu);
  if (xpath) {
    nbl_host_tensor_free(&x);
    nbl_host_tensor_free(&y);
  } else {
    free(x.data), free(y.data);
  }
  nbl_train_session_free(s);
  return 0;
}
