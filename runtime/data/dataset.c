/*
 * dataset.c - datasets for training (nbl_dataset_* of nibble.h): Fashion-MNIST
 * IDX files (gzip'd or not, read with zlib) and NumPy x.npy / y.npy folders;
 * checks against a model's input and label; mini-batch gathering.
 *
 * Fashion-MNIST images stay bytes in memory (47 MB for the training set) and
 * become floats, normalized as models/README.md says ((x / 255 - 0.2860) /
 * 0.3530), when a batch is gathered.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "include/nibble.h"
#include "runtime/core/exec.h"

#define FMNIST_DIR "/usr/share/datasets/fashion-mnist"
#define FMNIST_PKG "dataset-fashion-mnist"
#define FMNIST_MEAN 0.2860f
#define FMNIST_STD 0.3530f

struct nbl_dataset {
  char *xname, *yname; /* files, for messages */
  int64_t n;
  int bytes_u8;        /* 1: x holds IDX bytes, delivered as normalized float */
  nbl_dtype xdt, ydt;  /* element types delivered */
  int srank;           /* delivered sample shape */
  int64_t sdims[NBL_MAX_DIMS];
  int64_t snumel;
  size_t x_esize;      /* bytes per stored x element */
  nbl_rt_tensor x, y;  /* stored data: x [n, ...], y [n] */
};

static nbl_status oom(void) { return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory"); }

static int is_dir(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static char *join(const char *dir, const char *name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char *p = malloc(n);
  if (p) snprintf(p, n, "%s/%s", dir, name);
  return p;
}

/* ------------------------------------------------------------------ IDX */

/* Read a whole (possibly gzip'd) file. */
static nbl_status read_gz(const char *path, unsigned char **out, size_t *len) {
  gzFile f = gzopen(path, "rb");
  if (!f) return nbl_errorf(NBL_ERR_IO, "%s: cannot open: %s", path, strerror(errno ? errno : ENOMEM));
  size_t cap = 1 << 20, n = 0;
  unsigned char *buf = malloc(cap);
  nbl_status st = buf ? NBL_OK : oom();
  while (st == NBL_OK) {
    if (n == cap) {
      unsigned char *nb = cap > ((size_t)1 << 33) ? NULL : realloc(buf, cap * 2);
      if (!nb) {
        st = cap > ((size_t)1 << 33) ? nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: larger than 8 GiB", path) : oom();
        break;
      }
      buf = nb;
      cap *= 2;
    }
    int r = gzread(f, buf + n, (unsigned)((cap - n) > (1u << 30) ? (1u << 30) : (cap - n)));
    if (r < 0) {
      int err;
      const char *msg = gzerror(f, &err);
      st = nbl_errorf(NBL_ERR_IO, "%s: read failed: %s", path, err == Z_ERRNO ? strerror(errno) : msg);
    } else if (r == 0) {
      break;
    } else {
      n += (size_t)r;
    }
  }
  gzclose(f);
  if (st) {
    free(buf);
    return st;
  }
  *out = buf;
  *len = n;
  return NBL_OK;
}

/* Parse an IDX file of unsigned bytes with `ndim` dimensions into t (UINT8). */
static nbl_status read_idx(const char *path, int ndim, nbl_rt_tensor *t) {
  unsigned char *b = NULL;
  size_t len = 0;
  nbl_status st = read_gz(path, &b, &len);
  if (st) return st;
  size_t hdr = 4 + 4 * (size_t)ndim;
  if (len < hdr || b[0] || b[1] || b[2] != 0x08 || b[3] != ndim) {
    free(b);
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                      "%s: not an IDX file of unsigned bytes with %d dimension%s (bad header)", path,
                      ndim, ndim > 1 ? "s" : "");
  }
  int64_t dims[NBL_MAX_RANK];
  for (int d = 0; d < ndim; d++) {
    const unsigned char *p = b + 4 + 4 * d;
    dims[d] = ((int64_t)p[0] << 24) | ((int64_t)p[1] << 16) | ((int64_t)p[2] << 8) | p[3];
  }
  /* dimensions of up to 2^32 - 1 each: their product may exceed 64 bits */
  int64_t numel = nbl_shape_numel(ndim, dims);
  if (numel < 0 || (uint64_t)numel != len - hdr) {
    free(b);
    if (numel < 0)
      return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: the header announces more than 2^63 bytes of data, the file has %zu",
                        path, len - hdr);
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: the header announces %lld bytes of data, the file has %zu (truncated?)",
                      path, (long long)numel, len - hdr);
  }
  memset(t, 0, sizeof *t);
  t->dtype = NBL_DT_UINT8;
  t->rank = ndim;
  memcpy(t->dims, dims, sizeof(int64_t) * (size_t)ndim);
  t->numel = numel;
  memmove(b, b + hdr, (size_t)numel);
  t->data = b;
  t->nbytes = (size_t)numel;
  t->owns = 1;
  return NBL_OK;
}

/* The IDX file `stem` in dir, gzip'd or not; NULL (message set) if neither exists. */
static char *idx_path(const char *dir, const char *stem) {
  char name[128];
  snprintf(name, sizeof name, "%s.gz", stem);
  char *p = join(dir, name);
  if (p && is_file(p)) return p;
  free(p);
  p = join(dir, stem);
  if (p && is_file(p)) return p;
  nbl_errorf(NBL_ERR_IO, "%s/%s.gz: no such file (Fashion-MNIST as the Debian package %s installs it)",
             dir, stem, FMNIST_PKG);
  free(p);
  return NULL;
}

static nbl_status open_fmnist(nbl_dataset *d, const char *dir, int def, int test) {
  if (!is_dir(dir)) {
    if (def)
      return nbl_errorf(NBL_ERR_IO,
                        "Fashion-MNIST not found: %s does not exist; install the Debian package %s "
                        "(apt-get install %s) or give --data fashion-mnist:DIR",
                        dir, FMNIST_PKG, FMNIST_PKG);
    return nbl_errorf(NBL_ERR_IO, "fashion-mnist:%s: no such folder (the files of the Debian package %s)",
                      dir, FMNIST_PKG);
  }
  const char *pre = test ? "t10k" : "train";
  char stem[64];
  snprintf(stem, sizeof stem, "%s-images-idx3-ubyte", pre);
  d->xname = idx_path(dir, stem);
  if (!d->xname) return NBL_ERR_IO;
  snprintf(stem, sizeof stem, "%s-labels-idx1-ubyte", pre);
  d->yname = idx_path(dir, stem);
  if (!d->yname) return NBL_ERR_IO;
  nbl_rt_tensor lab;
  nbl_status st = read_idx(d->xname, 3, &d->x);
  if (!st) st = read_idx(d->yname, 1, &lab);
  if (st) return st;
  if (lab.dims[0] != d->x.dims[0]) {
    nbl_rt_tensor_free(&lab);
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: %lld labels for %lld images in %s", d->yname,
                      (long long)lab.dims[0], (long long)d->x.dims[0], d->xname);
  }
  d->n = d->x.dims[0];
  st = nbl_rt_tensor_alloc(&d->y, NBL_DT_INT64, 1, &d->n);
  if (!st)
    for (int64_t i = 0; i < d->n; i++) ((int64_t *)d->y.data)[i] = ((const unsigned char *)lab.data)[i];
  nbl_rt_tensor_free(&lab);
  if (st) return st;
  d->bytes_u8 = 1;
  d->x_esize = 1;
  d->xdt = NBL_DT_FLOAT;
  d->ydt = NBL_DT_INT64;
  d->srank = 3;
  d->sdims[0] = 1;
  d->sdims[1] = d->x.dims[1];
  d->sdims[2] = d->x.dims[2];
  return NBL_OK;
}

/* ------------------------------------------------------------------ npy */

/* A tensor file (.npy or .pb) into an owned runtime tensor, through the
 * public tensor-file API (the parser layer owns the file formats). */
static nbl_status read_tensor(const char *path, nbl_rt_tensor *out) {
  nbl_host_tensor h;
  nbl_status st = nbl_tensor_read(path, &h);
  if (st) return st;
  if (h.dtype == NBL_DT_STRING) {
    nbl_host_tensor_free(&h);
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: string tensors are not samples", path);
  }
  st = nbl_rt_tensor_alloc(out, h.dtype, h.rank, h.dims);
  if (!st && out->nbytes != h.nbytes)
    st = nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: %zu bytes of data for its shape's %zu", path,
                    h.nbytes, out->nbytes);
  if (!st) memcpy(out->data, h.data, h.nbytes);
  nbl_host_tensor_free(&h);
  return st;
}

static nbl_status open_npy(nbl_dataset *d, const char *dir, int test) {
  if (!is_dir(dir)) return nbl_errorf(NBL_ERR_IO, "npy:%s: no such folder", dir);
  d->xname = join(dir, test ? "x_test.npy" : "x.npy");
  d->yname = join(dir, test ? "y_test.npy" : "y.npy");
  if (!d->xname || !d->yname) return oom();
  nbl_status st = read_tensor(d->xname, &d->x);
  if (!st) st = read_tensor(d->yname, &d->y);
  if (st) return st;
  if (d->x.rank < 1)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: a scalar; expected samples [N, ...]", d->xname);
  if (d->x.dtype == NBL_DT_STRING || nbl_dtype_bits(d->x.dtype) < 8)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: element type %s is not supported", d->xname,
                      nbl_dtype_name(d->x.dtype));
  if (d->y.rank != 1)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: labels must have shape [N], this has rank %d",
                      d->yname, d->y.rank);
  if (d->y.dims[0] != d->x.dims[0])
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: %lld labels for %lld samples in %s", d->yname,
                      (long long)d->y.dims[0], (long long)d->x.dims[0], d->xname);
  if (d->y.dtype == NBL_DT_STRING || nbl_dtype_bits(d->y.dtype) < 8)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: labels of element type %s", d->yname,
                      nbl_dtype_name(d->y.dtype));
  d->n = d->x.dims[0];
  d->xdt = d->x.dtype;
  d->ydt = d->y.dtype;
  d->x_esize = nbl_rt_elem_size(d->x.dtype);
  d->srank = d->x.rank - 1;
  for (int k = 1; k < d->x.rank; k++) d->sdims[k - 1] = d->x.dims[k];
  return NBL_OK;
}

/* ------------------------------------------------------------------ API */

nbl_status nbl_dataset_open(const char *spec, int test, nbl_dataset **out) {
  if (!spec || !out) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_dataset_open: NULL argument");
  *out = NULL;
  nbl_dataset *d = calloc(1, sizeof *d);
  if (!d) return oom();
  nbl_status st;
  if (!strcmp(spec, "fashion-mnist")) st = open_fmnist(d, FMNIST_DIR, 1, test);
  else if (!strncmp(spec, "fashion-mnist:", 14) && spec[14]) st = open_fmnist(d, spec + 14, 0, test);
  else if (!strncmp(spec, "npy:", 4) && spec[4]) st = open_npy(d, spec + 4, test);
  else
    st = nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                    "dataset '%s': expected fashion-mnist, fashion-mnist:DIR or npy:DIR", spec);
  if (st) {
    nbl_dataset_free(d);
    return st;
  }
  /* with no samples (N = 0) the other dimensions are not bounded by the file */
  d->snumel = nbl_shape_numel(d->srank, d->sdims);
  if (d->snumel < 0) {
    nbl_status e = nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: a sample has more elements than 2^63", d->xname);
    nbl_dataset_free(d);
    return e;
  }
  *out = d;
  return NBL_OK;
}

void nbl_dataset_free(nbl_dataset *d) {
  if (!d) return;
  nbl_rt_tensor_free(&d->x);
  nbl_rt_tensor_free(&d->y);
  free(d->xname);
  free(d->yname);
  free(d);
}

int64_t nbl_dataset_size(const nbl_dataset *d) { return d ? d->n : 0; }

void nbl_dataset_info(const nbl_dataset *d, nbl_host_tensor *x, nbl_host_tensor *y) {
  if (x) {
    memset(x, 0, sizeof *x);
    x->dtype = d->xdt;
    x->rank = d->srank + 1;
    x->dims[0] = d->n;
    for (int k = 0; k < d->srank; k++) x->dims[k + 1] = d->sdims[k];
  }
  if (y) {
    memset(y, 0, sizeof *y);
    y->dtype = d->ydt;
    y->rank = 1;
    y->dims[0] = d->n;
  }
}

static void shape_text(char *buf, size_t cap, int rank, const int64_t *dims) {
  size_t k = 0;
  buf[0] = 0;
  for (int i = 0; i < rank && k < cap; i++)
    k += (size_t)snprintf(buf + k, cap - k, i ? "x%lld" : "%lld", (long long)dims[i]);
  if (!rank) snprintf(buf, cap, "scalar");
}

nbl_status nbl_dataset_check(nbl_dataset *d, const nbl_host_tensor *x, const nbl_host_tensor *y,
                             int64_t classes) {
  if (!d || !x || !y) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_dataset_check: NULL argument");
  const char *xn = x->name ? x->name : "?", *yn = y->name ? y->name : "?";
  if (x->dtype != NBL_DT_UNDEFINED && x->dtype != d->xdt)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: samples are %s, the model's input '%s' takes %s",
                      d->xname, nbl_dtype_name(d->xdt), xn, nbl_dtype_name(x->dtype));
  if (y->dtype != NBL_DT_UNDEFINED && y->dtype != d->ydt)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: labels are %s, the model's label '%s' takes %s",
                      d->yname, nbl_dtype_name(d->ydt), yn, nbl_dtype_name(y->dtype));
  if (y->rank >= 0 && y->rank != 1)
    return nbl_errorf(NBL_ERR_UNSUPPORTED, "the model's label '%s' has rank %d; datasets give one label per sample",
                      yn, y->rank);
  if (x->rank >= 1) {
    int same = x->rank - 1 == d->srank, known = 1;
    int64_t prod = 1;
    for (int k = 1; k < x->rank; k++) {
      if (x->dims[k] < 0) known = 0;
      else if (__builtin_mul_overflow(prod, x->dims[k], &prod)) known = 0; /* more than any sample */
      if (same && x->dims[k] >= 0 && x->dims[k] != d->sdims[k - 1]) same = 0;
    }
    if (!same) {
      char have[128], want[128] = "N";
      shape_text(have, sizeof have, d->srank, d->sdims);
      for (int k = 1; k < x->rank; k++)
        snprintf(want + strlen(want), sizeof want - strlen(want), x->dims[k] < 0 ? "x?" : "x%lld",
                 (long long)x->dims[k]);
      if (!known || prod != d->snumel)
        return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                          "%s: samples are %s (%lld values), the model's input '%s' takes %s",
                          d->xname, have, (long long)d->snumel, xn, want);
      d->srank = x->rank - 1; /* the same values in the model's layout */
      for (int k = 1; k < x->rank; k++) d->sdims[k - 1] = x->dims[k];
    }
  } else if (x->rank == 0) {
    return nbl_errorf(NBL_ERR_UNSUPPORTED, "the model's input '%s' is a scalar; datasets give batches", xn);
  }
  for (int64_t i = 0; i < d->n; i++) {
    int64_t c = nbl_rt_get_i64(&d->y, i);
    double f = nbl_rt_get_f64(&d->y, i);
    if (c < 0 || (double)c != f || (classes > 0 && c >= classes)) {
      if (classes > 0)
        return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                          "%s: label %g of sample %lld is outside [0, %lld) (the model has %lld classes)",
                          d->yname, f, (long long)i, (long long)classes, (long long)classes);
      return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: label %g of sample %lld is not a class number",
                        d->yname, f, (long long)i);
    }
  }
  return NBL_OK;
}

nbl_status nbl_dataset_batch(const nbl_dataset *d, const int64_t *idx, int64_t n,
                             nbl_host_tensor *x, nbl_host_tensor *y) {
  if (!d || (n && !idx) || !x || !y || n < 0)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_dataset_batch: NULL argument");
  size_t xs = d->bytes_u8 ? sizeof(float) * (size_t)d->snumel : d->x_esize * (size_t)d->snumel;
  size_t ys = nbl_rt_elem_size(d->ydt);
  if (!x->data || !y->data || x->nbytes < xs * (size_t)n || y->nbytes < ys * (size_t)n)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                      "nbl_dataset_batch: buffers of %zu and %zu bytes, %lld samples need %zu and %zu",
                      x->nbytes, y->nbytes, (long long)n, xs * (size_t)n, ys * (size_t)n);
  for (int64_t i = 0; i < n; i++) {
    int64_t j = idx[i];
    if (j < 0 || j >= d->n)
      return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_dataset_batch: sample %lld of %lld", (long long)j,
                        (long long)d->n);
    if (d->bytes_u8) {
      const unsigned char *s = (const unsigned char *)d->x.data + j * d->snumel;
      float *o = (float *)x->data + i * d->snumel;
      for (int64_t k = 0; k < d->snumel; k++) o[k] = ((float)s[k] / 255.0f - FMNIST_MEAN) / FMNIST_STD;
    } else {
      memcpy((char *)x->data + (size_t)i * xs, (const char *)d->x.data + (size_t)j * xs, xs);
    }
    memcpy((char *)y->data + (size_t)i * ys, (const char *)d->y.data + (size_t)j * ys, ys);
  }
  x->dtype = d->xdt;
  x->rank = d->srank + 1;
  x->dims[0] = n;
  for (int k = 0; k < d->srank; k++) x->dims[k + 1] = d->sdims[k];
  y->dtype = d->ydt;
  y->rank = 1;
  y->dims[0] = n;
  return NBL_OK;
}
