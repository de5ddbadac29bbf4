/*
 * fuzz_dataset.c - fuzz target: the dataset readers of training
 * (nbl_dataset_open: Fashion-MNIST IDX files, gzip'd or not, and NumPy
 * x.npy / y.npy folders), the check against a model's input and label, and
 * batch gathering.
 *
 * The input holds two files and a few choices:
 *   byte 0      flags: bit 0 IDX (fashion-mnist:DIR) / npy folder (npy:DIR);
 *               bit 1 the test split (t10k-*, x_test.npy / y_test.npy);
 *               bit 2 IDX files named *.gz (zlib reads both forms);
 *               bits 3-4 the model input nbl_dataset_check is given: 0 unknown,
 *               1 the dataset's own sample shape, 2 flattened [N, numel],
 *               3 [N, numel + 1] (must be refused);
 *               bit 5 the model has 10 classes (else: any class number)
 *   bytes 1-2   length L of the first file (little-endian, cut to what is left)
 *   L bytes     the samples file (images IDX / x.npy)
 *   the rest    the labels file (labels IDX / y.npy)
 * The files are written to a private temporary folder and opened there.
 * Invariants: a failure leaves no dataset and says why; a dataset that opens
 * reports its size and shape as the files give them; nbl_dataset_batch
 * delivers exactly the stored samples (npy: the bytes of x.npy; IDX: the
 * normalized bytes) and labels; a shape that does not fit is refused.
 */
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "include/nibble.h"
#include "ir/ir.h"

#define MAX_BATCH_SAMPLES 8
#define MAX_BATCH_BYTES (1 << 22)

static char dir[64];

static const char *const names[2][2][2] = {
    /* [idx][test][x or y] */
    {{"x.npy", "y.npy"}, {"x_test.npy", "y_test.npy"}},
    {{"train-images-idx3-ubyte", "train-labels-idx1-ubyte"},
     {"t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}},
};

static void path_of(char *buf, size_t cap, const char *name, int gz) {
  snprintf(buf, cap, "%s/%s%s", dir, name, gz ? ".gz" : "");
}

static void cleanup(void) {
  char p[128];
  for (int i = 0; i < 2; i++)
    for (int t = 0; t < 2; t++)
      for (int k = 0; k < 2; k++)
        for (int gz = 0; gz < 2; gz++) {
          path_of(p, sizeof p, names[i][t][k], gz);
          unlink(p);
        }
  if (dir[0]) rmdir(dir);
}

static void put_file(const char *name, int gz, const uint8_t *d, size_t n) {
  char p[128];
  path_of(p, sizeof p, name, gz);
  FILE *f = fopen(p, "wb");
  if (!f || (n && fwrite(d, 1, n, f) != n) || fclose(f) != 0) fuzz_fail("cannot write %s", p);
}

/* The stored samples: x.npy read again through the tensor reader (npy), the
 * raw IDX bytes after the header (IDX, only when not gzip'd); NULL if unknown. */
static const uint8_t *expected_x(int idx, const uint8_t *x, size_t xlen, nbl_host_tensor *xt,
                                 const char *xname) {
  if (idx) {
    if (xlen < 16 || (x[0] == 0x1f && x[1] == 0x8b)) return NULL;
    return x + 16;
  }
  char p[128];
  path_of(p, sizeof p, xname, 0);
  if (nbl_tensor_read(p, xt) != NBL_OK) fuzz_fail("x.npy opened as a dataset but does not read: %s", nbl_last_error());
  return xt->data;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!dir[0]) {
    snprintf(dir, sizeof dir, "%s/nbl-fuzz-dataset-%ld", fuzz_tmp_dir(), (long)getpid());
    if (mkdir(dir, 0700) != 0 && !(access(dir, W_OK) == 0)) fuzz_fail("cannot create %s", dir);
    atexit(cleanup);
  }
  if (size < 3) return 0;
  int flags = data[0], idx = flags & 1, test = (flags >> 1) & 1, gz = idx && (flags >> 2) & 1;
  int shape_mode = (flags >> 3) & 3, classes = (flags >> 5) & 1 ? 10 : 0;
  size_t xlen = (size_t)data[1] | (size_t)data[2] << 8;
  if (xlen > size - 3) xlen = size - 3;
  const uint8_t *x = data + 3, *y = data + 3 + xlen;
  size_t ylen = size - 3 - xlen;
  /* the files of the previous input (another split or .gz) must not be found */
  static char last[2][128];
  for (int k = 0; k < 2; k++)
    if (last[k][0]) unlink(last[k]);
  path_of(last[0], sizeof last[0], names[idx][test][0], gz);
  path_of(last[1], sizeof last[1], names[idx][test][1], gz);
  put_file(names[idx][test][0], gz, x, xlen);
  put_file(names[idx][test][1], gz, y, ylen);

  char spec[96];
  snprintf(spec, sizeof spec, "%s:%s", idx ? "fashion-mnist" : "npy", dir);
  nbl_dataset *d = NULL;
  if (nbl_dataset_open(spec, test, &d) != NBL_OK) {
    if (d) fuzz_fail("a failed open returned a dataset");
    if (!nbl_last_error()[0]) fuzz_fail("a failed open left no message");
    return 0;
  }
  int64_t n = nbl_dataset_size(d);
  nbl_host_tensor xi, yi;
  nbl_dataset_info(d, &xi, &yi);
  if (n < 0 || xi.dims[0] != n || yi.dims[0] != n || yi.rank != 1 || xi.rank < 1)
    fuzz_fail("dataset of %lld samples: info x rank %d [%lld], y rank %d [%lld]", (long long)n,
              xi.rank, (long long)xi.dims[0], yi.rank, (long long)yi.dims[0]);
  int64_t snumel = 1;
  for (int k = 1; k < xi.rank; k++)
    if (xi.dims[k] < 0 || __builtin_mul_overflow(snumel, xi.dims[k], &snumel))
      fuzz_fail("a dataset whose sample size is out of range (dimension %d: %lld)", k,
                (long long)xi.dims[k]);

  /* the model's input and label */
  nbl_host_tensor mx = {.name = "input", .dtype = NBL_DT_UNDEFINED, .rank = -1};
  nbl_host_tensor my = {.name = "label", .dtype = NBL_DT_UNDEFINED, .rank = -1};
  if (shape_mode == 1) {
    mx = xi;
    mx.name = "input";
    mx.dims[0] = -1;
  } else if (shape_mode >= 2) {
    mx.dtype = xi.dtype;
    mx.rank = 2;
    mx.dims[0] = -1;
    mx.dims[1] = snumel + (shape_mode == 3);
  }
  nbl_status st = nbl_dataset_check(d, &mx, &my, classes);
  if (st != NBL_OK && !nbl_last_error()[0]) fuzz_fail("a failed check left no message");
  if (shape_mode == 3 && st == NBL_OK)
    fuzz_fail("samples of %lld values accepted for an input of %lld", (long long)snumel,
              (long long)(snumel + 1));
  if (shape_mode == 2 && st == NBL_OK) {
    nbl_host_tensor x2;
    nbl_dataset_info(d, &x2, NULL);
    if (x2.rank != 2 || x2.dims[1] != snumel) fuzz_fail("the flattened layout was not taken");
  }

  /* a batch of up to MAX_BATCH_SAMPLES samples (even after a failed check:
   * batches do not depend on it) */
  int64_t nb = n < MAX_BATCH_SAMPLES ? n : MAX_BATCH_SAMPLES;
  size_t xs = nbl_dtype_nbytes(xi.dtype, snumel), ys = nbl_dtype_nbytes(yi.dtype, 1);
  if (nb > 0 && snumel > 0 && xs * (size_t)nb > MAX_BATCH_BYTES) nb = 0;
  int64_t ids[MAX_BATCH_SAMPLES];
  for (int64_t i = 0; i < nb; i++) ids[i] = (i * 7 + 3) % n;
  nbl_host_tensor bx = {.nbytes = xs * (size_t)nb + 1}, by = {.nbytes = ys * (size_t)nb + 1};
  bx.data = malloc(bx.nbytes);
  by.data = malloc(by.nbytes);
  if (!bx.data || !by.data) fuzz_fail("out of memory");
  if (nbl_dataset_batch(d, ids, nb, &bx, &by) != NBL_OK)
    fuzz_fail("a batch of %lld samples fails: %s", (long long)nb, nbl_last_error());
  if (bx.dims[0] != nb || by.dims[0] != nb || by.rank != 1 || bx.dtype != xi.dtype || by.dtype != yi.dtype)
    fuzz_fail("the batch's types or shapes differ from the dataset's");
  nbl_host_tensor xt = {0};
  const uint8_t *src = nb ? expected_x(idx, x, xlen, &xt, names[idx][test][0]) : NULL;
  for (int64_t i = 0; src && i < nb; i++) {
    const uint8_t *s = src + (size_t)ids[i] * (idx ? (size_t)snumel : xs);
    if (!idx) {
      if (memcmp((const char *)bx.data + (size_t)i * xs, s, xs) != 0)
        fuzz_fail("sample %lld of the batch is not sample %lld of x.npy", (long long)i, (long long)ids[i]);
      continue;
    }
    const float *o = (const float *)bx.data + (size_t)i * (size_t)snumel;
    for (int64_t k = 0; k < snumel; k++)
      if (!(fabsf(o[k] - (((float)s[k] / 255.0f - 0.2860f) / 0.3530f)) <= 1e-6f))
        fuzz_fail("IDX sample %lld, pixel %lld: %g for byte %d", (long long)ids[i], (long long)k,
                  (double)o[k], s[k]);
  }
  nbl_host_tensor_free(&xt);
  /* the labels: y.npy's elements (npy), the label bytes as int64 (IDX) */
  nbl_host_tensor yt = {0};
  if (!idx && nb) {
    char p[128];
    path_of(p, sizeof p, names[0][test][1], 0);
    if (nbl_tensor_read(p, &yt) != NBL_OK) fuzz_fail("y.npy does not read: %s", nbl_last_error());
  }
  int yplain = idx && ylen >= 8 && !(y[0] == 0x1f && y[1] == 0x8b);
  for (int64_t i = 0; i < nb && (yplain || !idx); i++) {
    const void *want = idx ? NULL : (const char *)yt.data + (size_t)ids[i] * ys;
    int64_t lab = idx ? y[8 + ids[i]] : 0;
    if (memcmp((const char *)by.data + (size_t)i * ys, idx ? (const void *)&lab : want, ys) != 0)
      fuzz_fail("label %lld of the batch is not label %lld of the file", (long long)i, (long long)ids[i]);
  }
  nbl_host_tensor_free(&yt);
  /* a sample past the end is refused */
  int64_t past = n;
  if (nbl_dataset_batch(d, &past, 1, &bx, &by) == NBL_OK)
    fuzz_fail("sample %lld of %lld delivered", (long long)n, (long long)n);
  free(bx.data);
  free(by.data);
  nbl_dataset_free(d);
  return 0;
}
