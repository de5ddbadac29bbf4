/* bench_load.c - time nbl_model_load of a model against reading its file once
 * (read() into a malloc'd buffer), and report the ratio.
 *
 *   bench_load MODEL.onnx [--repeat N]
 *
 * Both are measured with the file in the page cache (one untimed read first);
 * the read is timed into a new malloc'd buffer (page faults included, as a loader
 * pays them) and into a reused pre-touched one (the pure copy);
 * each figure is the median of N runs (default 10). For a model with external
 * data, the "read" column reads the .onnx file and every file in its folder that
 * the model references, so the ratio compares like with like. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ir/ir.h"
#include "nibble.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* read() the whole file into `into` (pre-touched, reused) or, when NULL, a new
 * malloc'd buffer; returns bytes read, or -1. */
static long long read_file_into(const char *path, char *into) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return -1;
  struct stat st;
  if (fstat(fd, &st) != 0) {
    close(fd);
    return -1;
  }
  size_t len = (size_t)st.st_size, got = 0;
  char *buf = into ? into : malloc(len ? len : 1);
  while (buf && got < len) {
    ssize_t r = read(fd, buf + got, len - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += (size_t)r;
  }
  /* touch the data so the read cannot be optimized out */
  volatile char sink = len ? buf[len - 1] : 0;
  (void)sink;
  if (!into) free(buf);
  close(fd);
  return got == len ? (long long)len : -1;
}

static long long read_file(const char *path) { return read_file_into(path, NULL); }

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: bench_load MODEL.onnx [--repeat N]\n");
    return 2;
  }
  const char *path = argv[1];
  int reps = 10;
  if (argc >= 4 && strcmp(argv[2], "--repeat") == 0) reps = atoi(argv[3]);
  if (reps < 1) reps = 1;
  /* files the model consists of: the model and its external data files */
  nbl_model *m;
  if (nbl_model_load(path, &m)) {
    fprintf(stderr, "bench_load: %s\n", nbl_last_error());
    return 1;
  }
  char *files[64];
  int nf = 0;
  files[nf++] = strdup(path);
  const char *slash = strrchr(path, '/');
  int dl = slash ? (int)(slash - path) : 1;
  const char *dir = slash ? path : ".";
  size_t params = 0;
  for (int i = 0; i < m->graph->n_initializers; i++) {
    const nbl_tensor *t = m->graph->values[m->graph->initializers[i]].init;
    params += t->nbytes;
    if (!t->ext_location || nf == 64) continue;
    char p[4096];
    snprintf(p, sizeof p, "%.*s/%s", dl, dir, t->ext_location);
    bool seen = false;
    for (int k = 0; k < nf; k++) seen |= strcmp(files[k], p) == 0;
    if (!seen) files[nf++] = strdup(p);
  }
  nbl_model_free(m);
  double *tr = malloc(sizeof(double) * (size_t)reps), *tl = malloc(sizeof(double) * (size_t)reps);
  double *tw = malloc(sizeof(double) * (size_t)reps);
  long long bytes = 0, biggest = 0;
  for (int k = 0; k < nf; k++) { /* warm the page cache */
    long long b = read_file(files[k]);
    bytes += b;
    if (b > biggest) biggest = b;
  }
  char *warm = malloc((size_t)biggest + 1);
  memset(warm, 1, (size_t)biggest + 1);
  for (int r = 0; r < reps; r++) {
    double t0 = now();
    for (int k = 0; k < nf; k++) read_file(files[k]);
    tr[r] = now() - t0;
    t0 = now();
    for (int k = 0; k < nf; k++) read_file_into(files[k], warm);
    tw[r] = now() - t0;
    t0 = now();
    if (nbl_model_load(path, &m)) {
      fprintf(stderr, "bench_load: %s\n", nbl_last_error());
      return 1;
    }
    tl[r] = now() - t0;
    nbl_model_free(m);
  }
  qsort(tr, (size_t)reps, sizeof(double), cmp);
  qsort(tl, (size_t)reps, sizeof(double), cmp);
  qsort(tw, (size_t)reps, sizeof(double), cmp);
  double mr = tr[reps / 2], ml = tl[reps / 2], mw = tw[reps / 2];
  printf("model: %s (%d file%s, %.1f MB, %.1f MB of initializers)\n", path, nf, nf > 1 ? "s" : "",
         (double)bytes / 1e6, (double)params / 1e6);
  printf("read() once into a new buffer:        %8.2f ms  (median of %d)\n", mr * 1e3, reps);
  printf("read() once into a pre-touched buffer: %8.2f ms  (median of %d)\n", mw * 1e3, reps);
  printf("nbl_model_load:                        %8.2f ms  (median of %d, includes verify)\n", ml * 1e3, reps);
  printf("ratio load / read (new buffer):        %8.2f\n", ml / mr);
  printf("ratio load / read (pre-touched):       %8.2f\n", ml / mw);
  for (int k = 0; k < nf; k++) free(files[k]);
  free(tr);
  free(tl);
  free(tw);
  free(warm);
  return 0;
}
