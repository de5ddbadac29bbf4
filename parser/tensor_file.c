/*
 * tensor_file.c - tensor files: the NumPy .npy codec (v1-v3, little-endian,
 * C order) beside the TensorProto codec of tensor_pb.c, a reader/writer that
 * picks the format, and the public nbl_tensor_read / nbl_tensor_write /
 * nbl_host_tensor_free (nibble.h) over them. Everything here works on IR
 * tensors (nbl_tensor); the runtime is not involved.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "nibble.h"
#include "parser/parser.h"

/* ------------------------------------------------------------------ .npy */

static const struct {
  nbl_dtype dt;
  const char *descr;
} npy_types[] = {
    {NBL_DT_FLOAT, "<f4"},  {NBL_DT_DOUBLE, "<f8"}, {NBL_DT_FLOAT16, "<f2"},
    {NBL_DT_INT8, "|i1"},   {NBL_DT_UINT8, "|u1"},  {NBL_DT_INT16, "<i2"},
    {NBL_DT_UINT16, "<u2"}, {NBL_DT_INT32, "<i4"},  {NBL_DT_UINT32, "<u4"},
    {NBL_DT_INT64, "<i8"},  {NBL_DT_UINT64, "<u8"}, {NBL_DT_BOOL, "|b1"},
    {NBL_DT_COMPLEX64, "<c8"}, {NBL_DT_COMPLEX128, "<c16"},
};

static nbl_dtype npy_dtype(const char *d, size_t len) {
  char buf[16];
  if (len >= sizeof buf) return NBL_DT_UNDEFINED;
  memcpy(buf, d, len);
  buf[len] = 0;
  /* one-byte types may be spelled with any byte-order mark */
  if (len == 3 && (buf[0] == '<' || buf[0] == '=' || buf[0] == '|')) buf[0] = '<';
  for (size_t i = 0; i < sizeof npy_types / sizeof npy_types[0]; i++) {
    char c[16];
    snprintf(c, sizeof c, "%s", npy_types[i].descr);
    c[0] = '<';
    if (strcmp(c, buf) == 0) return npy_types[i].dt;
  }
  return NBL_DT_UNDEFINED;
}

/* Find the value text after 'key': in a header dict. */
static const char *npy_key(const char *h, size_t hl, const char *key) {
  size_t kl = strlen(key);
  for (size_t i = 0; i + kl + 2 < hl; i++)
    if ((h[i] == '\'' || h[i] == '"') && memcmp(h + i + 1, key, kl) == 0 && h[i + 1 + kl] == h[i]) {
      const char *p = h + i + kl + 2;
      while (p < h + hl && (*p == ' ' || *p == ':')) p++;
      return p;
    }
  return NULL;
}

/* The header dict: h is a NUL-terminated copy of its hl bytes, so that no
 * scan (strtoll, strncmp, memchr) can run past it into the data or past the
 * end of the buffer. */
static nbl_status npy_header(const char *h, size_t hl, const char *what, nbl_dtype *dt,
                             int *rank, int64_t *dims) {
  const char *p = npy_key(h, hl, "descr");
  if (!p || (*p != '\'' && *p != '"'))
    return nbl_errorf(NBL_ERR_PARSE, "%s: .npy header has no 'descr'", what);
  const char *q = memchr(p + 1, *p, hl - (size_t)(p + 1 - h));
  if (!q) return nbl_errorf(NBL_ERR_PARSE, "%s: bad 'descr' in .npy header", what);
  *dt = npy_dtype(p + 1, (size_t)(q - p - 1));
  if (*dt == NBL_DT_UNDEFINED)
    return nbl_errorf(NBL_ERR_UNSUPPORTED,
                      "%s: .npy element type '%.*s' is not supported (little-endian numbers and "
                      "bool only)",
                      what, (int)(q - p - 1), p + 1);
  p = npy_key(h, hl, "fortran_order");
  if (!p) return nbl_errorf(NBL_ERR_PARSE, "%s: .npy header has no 'fortran_order'", what);
  if (strncmp(p, "True", 4) == 0)
    return nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: Fortran-ordered .npy arrays are not supported",
                      what);
  p = npy_key(h, hl, "shape");
  if (!p || *p != '(') return nbl_errorf(NBL_ERR_PARSE, "%s: .npy header has no 'shape'", what);
  p++;
  *rank = 0;
  const char *end = h + hl;
  while (p < end && *p != ')') {
    while (p < end && (*p == ' ' || *p == ',')) p++;
    if (p < end && *p == ')') break;
    char *e;
    long long v = strtoll(p, &e, 10);
    if (e == p || v < 0) return nbl_errorf(NBL_ERR_PARSE, "%s: bad 'shape' in .npy header", what);
    if (*rank >= NBL_MAX_DIMS)
      return nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: rank exceeds the supported maximum %d", what,
                        NBL_MAX_DIMS);
    dims[(*rank)++] = v;
    p = e;
    while (p < end && *p == 'L') p++;
  }
  if (p >= end) return nbl_errorf(NBL_ERR_PARSE, "%s: bad 'shape' in .npy header", what);
  return NBL_OK;
}

nbl_status nbl_tensor_parse_npy(const void *data, size_t len, const char *what, nbl_arena *a,
                                nbl_tensor **out) {
  if (!a || !out || (!data && len))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_tensor_parse_npy: NULL argument");
  if (!what) what = "<tensor>";
  *out = NULL;
  const unsigned char *b = data;
  if (len < 10 || memcmp(b, "\x93NUMPY", 6) != 0)
    return nbl_errorf(NBL_ERR_PARSE, "%s: not a .npy file (bad magic)", what);
  int major = b[6];
  size_t hl, ho;
  if (major == 1) {
    hl = (size_t)b[8] | ((size_t)b[9] << 8);
    ho = 10;
  } else if (major == 2 || major == 3) {
    if (len < 12) return nbl_errorf(NBL_ERR_PARSE, "%s: truncated .npy header", what);
    hl = (size_t)b[8] | ((size_t)b[9] << 8) | ((size_t)b[10] << 16) | ((size_t)b[11] << 24);
    ho = 12;
  } else {
    return nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: .npy format version %d is not supported", what,
                      major);
  }
  if (hl > len - ho) return nbl_errorf(NBL_ERR_PARSE, "%s: truncated .npy header", what);
  char *h = malloc(hl + 1);
  if (!h) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory", what);
  memcpy(h, b + ho, hl);
  h[hl] = 0;
  nbl_dtype dt = NBL_DT_UNDEFINED;
  int rank = 0;
  int64_t dims[NBL_MAX_DIMS];
  nbl_status st = npy_header(h, hl, what, &dt, &rank, dims);
  free(h);
  if (st) return st;
  int64_t n = nbl_shape_numel(rank, dims);
  if (n < 0)
    return nbl_errorf(NBL_ERR_RUNTIME, "%s: tensor shape has a negative or overflowing size",
                      what);
  size_t need = nbl_dtype_nbytes(dt, n), off = ho + hl;
  if (len - off < need)
    return nbl_errorf(NBL_ERR_PARSE, "%s: .npy data is truncated (%zu bytes, %zu needed)", what,
                      len - off, need);
  nbl_tensor *t = nbl_tensor_new(a, NULL, dt, rank, dims, b + off);
  if (!t) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory", what);
  *out = t;
  return NBL_OK;
}

nbl_status nbl_tensor_save_npy(const nbl_tensor *t, const char *path) {
  if (!t || !path)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_tensor_save_npy: NULL argument");
  const char *descr = NULL;
  for (size_t i = 0; i < sizeof npy_types / sizeof npy_types[0]; i++)
    if (npy_types[i].dt == t->dtype) descr = npy_types[i].descr;
  if (!descr)
    return nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: element type %s cannot be stored in .npy (use .pb)",
                      path, nbl_dtype_name(t->dtype));
  int64_t numel = nbl_tensor_numel(t);
  size_t need = numel < 0 ? 0 : nbl_dtype_nbytes(t->dtype, numel);
  if (numel < 0 || t->rank < 0 || t->nbytes < need || (need && !t->data))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: tensor '%s': %zu bytes of data, bad shape",
                      path, t->name ? t->name : "", t->nbytes);
  char hdr[512];
  size_t n = (size_t)snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                              descr);
  for (int d = 0; d < t->rank && n < sizeof hdr; d++)
    n += (size_t)snprintf(hdr + n, sizeof hdr - n, "%s%lld%s", d ? ", " : "",
                          (long long)t->dims[d], t->rank == 1 ? "," : "");
  if (n < sizeof hdr) n += (size_t)snprintf(hdr + n, sizeof hdr - n, "), }");
  if (n >= sizeof hdr)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: .npy header too long", path);
  size_t total = 10 + n + 1;
  size_t pad = (64 - total % 64) % 64;
  FILE *f = fopen(path, "wb");
  if (!f) return nbl_errorf(NBL_ERR_IO, "%s: cannot open for writing", path);
  unsigned hl = (unsigned)(n + pad + 1);
  unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hl & 0xff),
                           (unsigned char)(hl >> 8)};
  int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(hdr, 1, n, f) == n;
  for (size_t i = 0; ok && i < pad; i++) ok = fputc(' ', f) != EOF;
  ok = ok && fputc('\n', f) != EOF;
  if (ok && need) ok = fwrite(t->data, 1, need, f) == need;
  if (fclose(f) != 0) ok = 0;
  if (!ok) return nbl_errorf(NBL_ERR_IO, "%s: write failed", path);
  return NBL_OK;
}

/* ------------------------------------------------------------------ either format */

static nbl_status read_all(const char *path, unsigned char **data, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return nbl_errorf(NBL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
  size_t cap = 1 << 16, n = 0;
  unsigned char *b = malloc(cap);
  while (b) {
    size_t r = fread(b + n, 1, cap - n, f);
    n += r;
    if (n < cap) break;
    unsigned char *nb = realloc(b, cap * 2);
    if (!nb) {
      free(b);
      b = NULL;
      break;
    }
    b = nb;
    cap *= 2;
  }
  int err = ferror(f);
  fclose(f);
  if (!b) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory reading", path);
  if (err) {
    free(b);
    return nbl_errorf(NBL_ERR_IO, "%s: read error", path);
  }
  *data = b;
  *len = n;
  return NBL_OK;
}

nbl_status nbl_tensor_load_file(const char *path, nbl_arena *a, nbl_tensor **out) {
  if (!path || !a || !out)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_tensor_load_file: NULL argument");
  *out = NULL;
  unsigned char *data = NULL;
  size_t len = 0;
  nbl_status st = read_all(path, &data, &len);
  if (st != NBL_OK) return st;
  if (len >= 6 && memcmp(data, "\x93NUMPY", 6) == 0)
    st = nbl_tensor_parse_npy(data, len, path, a, out);
  else
    st = nbl_tensor_parse_pb(data, len, path, a, out);
  free(data);
  return st;
}

static int ends_with(const char *s, const char *suf) {
  size_t a = strlen(s), b = strlen(suf);
  return a >= b && strcmp(s + a - b, suf) == 0;
}

/* Write t: .npy when path ends in ".npy", otherwise a TensorProto. */
static nbl_status save_file(const nbl_tensor *t, const char *path) {
  return ends_with(path, ".npy") ? nbl_tensor_save_npy(t, path) : nbl_tensor_save_pb(t, path);
}

/* ------------------------------------------------------------------ public */

/* Copy IR tensor t into *out (malloc'd data; STRING: a char*[] of copies). */
static nbl_status host_from_ir(const nbl_tensor *t, nbl_host_tensor *out) {
  int64_t n;
  nbl_status st = nbl_tensor_check_data(t, NBL_MAX_DIMS, &n);
  if (st != NBL_OK) return st;
  out->dtype = t->dtype;
  out->rank = t->rank;
  for (int d = 0; d < t->rank; d++) out->dims[d] = t->dims[d];
  if (t->dtype == NBL_DT_STRING) {
    char **s;
    if ((st = nbl_tensor_dup_strings(t, n, &s)) != NBL_OK) return st;
    out->data = s;
    out->nbytes = (size_t)n * sizeof(char *);
    return NBL_OK;
  }
  size_t need = nbl_dtype_nbytes(t->dtype, n);
  out->data = malloc(need ? need : 1);
  if (!out->data) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  if (need) memcpy(out->data, t->data, need);
  out->nbytes = need;
  return NBL_OK;
}

nbl_status nbl_tensor_read(const char *path, nbl_host_tensor *out) {
  if (!path || !out) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_tensor_read: NULL argument");
  memset(out, 0, sizeof *out);
  nbl_arena *a = nbl_arena_new();
  if (!a) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  nbl_tensor *t = NULL;
  nbl_status st = nbl_tensor_load_file(path, a, &t);
  if (st == NBL_OK) {
    st = host_from_ir(t, out);
    if (st != NBL_OK) nbl_error_prefix("%s", path);
  }
  if (st == NBL_OK && t->name && *t->name) {
    out->name = strdup(t->name);
    if (!out->name) st = nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  if (st != NBL_OK) nbl_host_tensor_free(out);
  if (t && t->buf) nbl_buffer_unref(t->buf);
  nbl_arena_free(a);
  return st;
}

nbl_status nbl_tensor_write(const char *path, const nbl_host_tensor *h) {
  if (!path || !h) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_tensor_write: NULL argument");
  if (h->rank < 0 || h->rank > NBL_MAX_DIMS)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: bad rank %d", path, h->rank);
  int64_t numel = nbl_shape_numel(h->rank, h->dims);
  if (numel < 0) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: bad shape", path);
  size_t need = h->dtype == NBL_DT_STRING ? (size_t)numel * sizeof(char *)
                                          : nbl_dtype_nbytes(h->dtype, numel);
  if (h->nbytes < need)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: %zu bytes given, the shape needs %zu", path,
                      h->nbytes, need);
  /* a view of the caller's data as an IR tensor (nothing copied but strings' lengths) */
  nbl_tensor t = {.name = (char *)(h->name ? h->name : ""), .dtype = h->dtype, .rank = h->rank,
                  .dims = (int64_t *)h->dims, .data = h->data, .nbytes = need};
  char **strings = NULL;
  size_t *lens = NULL;
  if (h->dtype == NBL_DT_STRING) {
    char *const *s = h->data;
    strings = malloc(sizeof(char *) * (size_t)(numel ? numel : 1));
    lens = malloc(sizeof(size_t) * (size_t)(numel ? numel : 1));
    if (!strings || !lens) {
      free(strings);
      free(lens);
      return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    for (int64_t i = 0; i < numel; i++) {
      strings[i] = s[i] ? s[i] : "";
      lens[i] = strlen(strings[i]);
    }
    t.n_strings = numel;
    t.strings = strings;
    t.string_lens = lens;
    t.data = NULL;
    t.nbytes = 0;
  }
  nbl_status st = save_file(&t, path);
  free(strings);
  free(lens);
  return st;
}

void nbl_host_tensor_free(nbl_host_tensor *h) {
  if (!h) return;
  if (h->data && h->dtype == NBL_DT_STRING) {
    char **s = h->data;
    size_t n = h->nbytes / sizeof(char *);
    for (size_t i = 0; i < n; i++) free(s[i]);
  }
  free(h->data);
  free((void *)h->name);
  memset(h, 0, sizeof *h);
}
