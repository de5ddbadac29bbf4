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

/* An IR view *t of host tensor h (nothing copied but the strings' lengths:
 * *strings and *lens, which the caller frees, for a STRING tensor). `what`
 * starts messages. */
static nbl_status host_as_ir(const nbl_host_tensor *h, const char *what, nbl_tensor *t,
                             char ***strings, size_t **lens) {
  *strings = NULL;
  *lens = NULL;
  if (h->kind != NBL_VALUE_TENSOR)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: a sequence or optional where a tensor belongs",
                      what);
  if (h->rank < 0 || h->rank > NBL_MAX_DIMS)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: bad rank %d", what, h->rank);
  int64_t numel = nbl_shape_numel(h->rank, h->dims);
  if (numel < 0) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: bad shape", what);
  size_t need = h->dtype == NBL_DT_STRING ? (size_t)numel * sizeof(char *)
                                          : nbl_dtype_nbytes(h->dtype, numel);
  if (h->nbytes < need || (need && !h->data))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: %zu bytes given, the shape needs %zu", what,
                      h->nbytes, need);
  *t = (nbl_tensor){.name = (char *)(h->name ? h->name : ""), .dtype = h->dtype, .rank = h->rank,
                    .dims = (int64_t *)h->dims, .data = h->data, .nbytes = need};
  if (h->dtype == NBL_DT_STRING) {
    char *const *s = h->data;
    char **sv = malloc(sizeof(char *) * (size_t)(numel ? numel : 1));
    size_t *lv = malloc(sizeof(size_t) * (size_t)(numel ? numel : 1));
    if (!sv || !lv) {
      free(sv);
      free(lv);
      return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    for (int64_t i = 0; i < numel; i++) {
      sv[i] = s[i] ? s[i] : "";
      lv[i] = strlen(sv[i]);
    }
    t->n_strings = numel;
    t->strings = sv;
    t->string_lens = lv;
    t->data = NULL;
    t->nbytes = 0;
    *strings = sv;
    *lens = lv;
  }
  return NBL_OK;
}

/* ------------------------------------------------------------------ sequences, optionals */

/* ONNX's SequenceProto and OptionalProto (onnx-data.proto) are not in the
 * onnx.proto the parser is generated from; both messages are small, so they
 * are read and written here in the protobuf wire format, their TensorProto
 * elements through the TensorProto codec (tensor_pb.c). Both messages number
 * their fields alike: 1 name, 2 elem_type, 3 tensor value(s), 4 sparse
 * tensor(s), 5 sequence(s), 6 map(s), 7 optional(s); elem_type 1 tensor, 2
 * sparse tensor, 3 sequence, 4 map, 5 optional. */
enum { PB_ELEM_UNDEFINED = 0, PB_ELEM_TENSOR = 1, PB_ELEM_SPARSE = 2, PB_ELEM_SEQUENCE = 3,
       PB_ELEM_MAP = 4, PB_ELEM_OPTIONAL = 5 };

static const char *kind_word(nbl_value_kind k) {
  return k == NBL_VALUE_SEQUENCE ? "SequenceProto" : "OptionalProto";
}

typedef struct pb_reader {
  const uint8_t *p, *end;
} pb_reader;

static int pb_varint(pb_reader *r, uint64_t *v) {
  uint64_t x = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (r->p >= r->end) return 0;
    uint8_t b = *r->p++;
    x |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      *v = x;
      return 1;
    }
  }
  return 0;
}

/* The next field: its number, wire type, and for wire type 2 its bytes
 * (*sub, *sublen), for 0 its value (*v). 0 at a malformed field. */
static int pb_next(pb_reader *r, uint32_t *field, int *wt, const uint8_t **sub, size_t *sublen,
                   uint64_t *v) {
  uint64_t key;
  if (!pb_varint(r, &key) || (key >> 3) == 0 || (key >> 3) > 0x1fffffff) return 0;
  *field = (uint32_t)(key >> 3);
  *wt = (int)(key & 7);
  switch (*wt) {
  case 0: return pb_varint(r, v);
  case 1:
    if (r->end - r->p < 8) return 0;
    r->p += 8;
    return 1;
  case 5:
    if (r->end - r->p < 4) return 0;
    r->p += 4;
    return 1;
  case 2: {
    uint64_t n;
    if (!pb_varint(r, &n) || n > (uint64_t)(r->end - r->p)) return 0;
    *sub = r->p;
    *sublen = (size_t)n;
    r->p += n;
    return 1;
  }
  default: return 0; /* groups (3, 4) and undefined wire types */
  }
}

/* Append an empty item to h->items (grown to the next power of two when
 * full); returns it (NULL: out of memory). */
static nbl_host_tensor *add_item(nbl_host_tensor *h) {
  int n = h->n_items;
  if (n >= (1 << 30)) return NULL;
  nbl_host_tensor *v = h->items;
  if ((n & (n - 1)) == 0) { /* 0, 1, 2, 4, ...: full */
    v = realloc(h->items, sizeof *v * (size_t)(n ? 2 * n : 1));
    if (!v) return NULL;
  }
  h->items = v;
  memset(&v[h->n_items], 0, sizeof *v);
  return &v[h->n_items++];
}

/* One TensorProto element (n bytes at b) into *out (name dropped). */
static nbl_status item_tensor(const uint8_t *b, size_t n, const char *what, nbl_host_tensor *out) {
  nbl_arena *a = nbl_arena_new();
  if (!a) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory", what);
  nbl_tensor *t = NULL;
  nbl_status st = nbl_tensor_parse_pb(b, n, what, a, &t);
  if (st == NBL_OK) {
    st = host_from_ir(t, out);
    if (st != NBL_OK) nbl_error_prefix("%s", what);
  }
  if (t && t->buf) nbl_buffer_unref(t->buf);
  nbl_arena_free(a);
  return st;
}

/* The element type of h's tensors: all must agree (an empty sequence:
 * UNDEFINED). */
static nbl_status settle_dtype(nbl_host_tensor *h, const char *what) {
  h->dtype = NBL_DT_UNDEFINED;
  for (int i = 0; i < h->n_items; i++) {
    nbl_dtype dt = h->items[i].dtype;
    if (i && dt != h->dtype)
      return nbl_errorf(NBL_ERR_INVALID_MODEL,
                        "%s: sequence element %d is a %s tensor, element 0 a %s one (the "
                        "elements of a sequence share their type)",
                        what, i, nbl_dtype_name(dt), nbl_dtype_name(h->dtype));
    h->dtype = dt;
  }
  return NBL_OK;
}

/* A serialized SequenceProto or OptionalProto (len bytes at b, `kind`) into
 * *out, zeroed by the caller; nested (an optional's sequence) when depth > 0.
 * On failure *out may hold items (the caller frees it). */
static nbl_status parse_value(const uint8_t *b, size_t len, nbl_value_kind kind, int depth,
                              const char *what, nbl_host_tensor *out) {
  const char *msg = kind_word(kind);
  out->kind = kind;
  pb_reader r = {b, b + len};
  const uint8_t *name = NULL, *opt_seq = NULL, *opt_tensor = NULL;
  size_t name_len = 0, opt_seq_len = 0, opt_tensor_len = 0;
  uint64_t elem_type = PB_ELEM_UNDEFINED;
  while (r.p < r.end) {
    uint32_t f;
    int wt;
    const uint8_t *sub = NULL;
    size_t sublen = 0;
    uint64_t v = 0;
    if (!pb_next(&r, &f, &wt, &sub, &sublen, &v))
      return nbl_errorf(NBL_ERR_PARSE, "%s: not a valid %s (truncated or malformed bytes at "
                        "offset %zu)", what, msg, (size_t)(r.p - b));
    if (f > 7) continue; /* unknown fields are skipped, as protobuf does */
    if ((f == 2) != (wt == 0) || (f != 2 && wt != 2))
      return nbl_errorf(NBL_ERR_PARSE, "%s: not a valid %s (field %u has wire type %d)", what, msg,
                        f, wt);
    switch (f) {
    case 1: name = sub, name_len = sublen; break;
    case 2: elem_type = v; break;
    case 3:
      if (kind == NBL_VALUE_OPTIONAL) { /* an optional field: the last one counts */
        opt_tensor = sub, opt_tensor_len = sublen;
        opt_seq = NULL;
        break;
      }
      {
        nbl_host_tensor *it = add_item(out);
        if (!it) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory", what);
        char w[600];
        snprintf(w, sizeof w, "%s: element %d", what, out->n_items - 1);
        nbl_status st = item_tensor(sub, sublen, w, it);
        if (st != NBL_OK) return st;
      }
      break;
    case 5:
      if (kind == NBL_VALUE_OPTIONAL && depth == 0) {
        opt_seq = sub, opt_seq_len = sublen;
        opt_tensor = NULL;
        break;
      }
      return nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: a sequence of sequences is not supported "
                        "(only sequences of tensors)", what);
    case 4:
      return nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: sparse tensors in a %s are not supported", what,
                        msg);
    case 6: return nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: maps in a %s are not supported", what, msg);
    case 7:
      return nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: optionals inside a %s are not supported", what,
                        msg);
    }
  }
  if (elem_type == PB_ELEM_SPARSE || elem_type == PB_ELEM_MAP || elem_type == PB_ELEM_OPTIONAL ||
      (elem_type == PB_ELEM_SEQUENCE && (kind == NBL_VALUE_SEQUENCE || depth > 0)))
    return nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: a %s of %s is not supported", what, msg,
                      elem_type == PB_ELEM_SPARSE   ? "sparse tensors"
                      : elem_type == PB_ELEM_MAP    ? "maps"
                      : elem_type == PB_ELEM_OPTIONAL ? "optionals"
                                                    : "sequences");
  if (elem_type > PB_ELEM_OPTIONAL)
    return nbl_errorf(NBL_ERR_PARSE, "%s: not a valid %s (elem_type %llu)", what, msg,
                      (unsigned long long)elem_type);
  if (depth == 0 && name && name_len) {
    out->name = strndup((const char *)name, name_len);
    if (!out->name) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory", what);
  }
  if (kind == NBL_VALUE_SEQUENCE) return settle_dtype(out, what);
  if (!opt_tensor && !opt_seq) return NBL_OK; /* empty */
  nbl_host_tensor *it = add_item(out);
  if (!it) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory", what);
  nbl_status st;
  if (opt_tensor) {
    char w[600];
    snprintf(w, sizeof w, "%s: the optional's tensor", what);
    st = item_tensor(opt_tensor, opt_tensor_len, w, it);
  } else {
    st = parse_value(opt_seq, opt_seq_len, NBL_VALUE_SEQUENCE, depth + 1, what, it);
  }
  out->dtype = it->dtype;
  return st;
}

nbl_status nbl_value_parse(const void *data, size_t len, nbl_value_kind kind, const char *what,
                           nbl_host_tensor *out) {
  if (!out || (!data && len))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_value_parse: NULL argument");
  if (!what) what = "<value>";
  memset(out, 0, sizeof *out);
  if (kind != NBL_VALUE_SEQUENCE && kind != NBL_VALUE_OPTIONAL)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: value kind %d is not a sequence or optional",
                      what, (int)kind);
  nbl_status st;
  if (len >= 6 && memcmp(data, "\x93NUMPY", 6) == 0)
    st = nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: a .npy file holds a tensor, not the %s expected here "
                    "(a serialized %s)", what, kind == NBL_VALUE_SEQUENCE ? "sequence" : "optional",
                    kind_word(kind));
  else
    st = parse_value(data, len, kind, 0, what, out);
  if (st != NBL_OK) nbl_host_tensor_free(out);
  return st;
}

nbl_status nbl_value_read(const char *path, nbl_value_kind kind, nbl_host_tensor *out) {
  if (!path || !out) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_value_read: NULL argument");
  if (kind == NBL_VALUE_TENSOR) return nbl_tensor_read(path, out);
  memset(out, 0, sizeof *out);
  if (kind != NBL_VALUE_SEQUENCE && kind != NBL_VALUE_OPTIONAL)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: unknown value kind %d", path, (int)kind);
  unsigned char *data = NULL;
  size_t len = 0;
  nbl_status st = read_all(path, &data, &len);
  if (st != NBL_OK) return st;
  st = nbl_value_parse(data, len, kind, path, out);
  free(data);
  return st;
}

/* A growing byte buffer for the writer; `oom` set once an append failed. */
typedef struct pb_buf {
  uint8_t *p;
  size_t n, cap;
  int oom;
} pb_buf;

static void buf_put(pb_buf *b, const void *d, size_t n) {
  if (b->oom || !n) return;
  if (b->n + n > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + n) cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) {
      b->oom = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->n, d, n);
  b->n += n;
}

static void buf_varint(pb_buf *b, uint64_t v) {
  uint8_t t[10];
  size_t n = 0;
  do {
    t[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
    v >>= 7;
  } while (v);
  buf_put(b, t, n);
}

static void buf_bytes_field(pb_buf *b, uint32_t field, const void *d, size_t n) {
  buf_varint(b, (uint64_t)field << 3 | 2);
  buf_varint(b, n);
  buf_put(b, d, n);
}

/* Serialize sequence/optional h (named `name` at the top: NULL else) into b. */
static nbl_status pack_value(const nbl_host_tensor *h, const char *name, int depth,
                             const char *what, pb_buf *b) {
  if ((h->kind != NBL_VALUE_SEQUENCE && h->kind != NBL_VALUE_OPTIONAL) || h->n_items < 0 ||
      (h->n_items && !h->items) || (h->kind == NBL_VALUE_OPTIONAL && h->n_items > 1))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: kind %d with %d items is not a sequence or "
                      "optional", what, (int)h->kind, h->n_items);
  if (name && *name) buf_bytes_field(b, 1, name, strlen(name));
  int elem = PB_ELEM_TENSOR;
  if (h->kind == NBL_VALUE_OPTIONAL)
    elem = h->n_items == 0                             ? PB_ELEM_UNDEFINED
           : h->items[0].kind == NBL_VALUE_SEQUENCE ? PB_ELEM_SEQUENCE
                                                      : PB_ELEM_TENSOR;
  buf_varint(b, 2 << 3 | 0);
  buf_varint(b, (uint64_t)elem);
  for (int i = 0; i < h->n_items; i++) {
    const nbl_host_tensor *it = &h->items[i];
    char w[600];
    snprintf(w, sizeof w, "%s: element %d", what, i);
    if (it->kind == NBL_VALUE_SEQUENCE && h->kind == NBL_VALUE_OPTIONAL && depth == 0) {
      pb_buf sub = {0};
      nbl_status st = pack_value(it, NULL, depth + 1, w, &sub);
      if (st == NBL_OK) buf_bytes_field(b, 5, sub.p, sub.n);
      if (sub.oom) b->oom = 1;
      free(sub.p);
      if (st != NBL_OK) return st;
      continue;
    }
    if (it->kind != NBL_VALUE_TENSOR)
      return nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: a %s inside a %s cannot be written (only "
                        "tensors, and an optional's sequence of tensors)", w,
                        it->kind == NBL_VALUE_SEQUENCE ? "sequence" : "optional",
                        h->kind == NBL_VALUE_SEQUENCE ? "sequence" : "optional");
    nbl_tensor t;
    char **strings;
    size_t *lens;
    nbl_host_tensor anon = *it;
    anon.name = NULL; /* elements are unnamed */
    nbl_status st = host_as_ir(&anon, w, &t, &strings, &lens);
    uint8_t *tb = NULL;
    size_t tn = 0;
    if (st == NBL_OK) st = nbl_tensor_pack_pb(&t, w, &tb, &tn);
    if (st == NBL_OK) buf_bytes_field(b, 3, tb, tn);
    free(tb);
    free(strings);
    free(lens);
    if (st != NBL_OK) return st;
  }
  return NBL_OK;
}

nbl_status nbl_value_pack(const nbl_host_tensor *h, const char *what, uint8_t **data, size_t *len) {
  if (!h || !data || !len)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_value_pack: NULL argument");
  if (!what) what = "<value>";
  *data = NULL;
  *len = 0;
  pb_buf b = {0};
  nbl_status st = pack_value(h, h->name, 0, what, &b);
  if (st == NBL_OK && b.oom) st = nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory", what);
  if (st != NBL_OK) {
    free(b.p);
    return st;
  }
  if (!b.p && !(b.p = malloc(1)))
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory", what);
  *data = b.p;
  *len = b.n;
  return NBL_OK;
}

nbl_status nbl_tensor_write(const char *path, const nbl_host_tensor *h) {
  if (!path || !h) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_tensor_write: NULL argument");
  if (h->kind != NBL_VALUE_TENSOR) {
    const char *word = h->kind == NBL_VALUE_SEQUENCE   ? "sequence"
                       : h->kind == NBL_VALUE_OPTIONAL ? "optional"
                                                       : "value of unknown kind";
    if (ends_with(path, ".npy"))
      return nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: '%s' is a %s, which .npy cannot hold: it is "
                        "written as a .pb file (%s)", path, h->name ? h->name : "", word,
                        h->kind == NBL_VALUE_SEQUENCE ? "SequenceProto" : "OptionalProto");
    uint8_t *buf = NULL;
    size_t n = 0;
    nbl_status st = nbl_value_pack(h, path, &buf, &n);
    if (st == NBL_OK) st = nbl_bytes_save(buf, n, path);
    free(buf);
    return st;
  }
  nbl_tensor t;
  char **strings;
  size_t *lens;
  nbl_status st = host_as_ir(h, path, &t, &strings, &lens);
  if (st == NBL_OK) st = save_file(&t, path);
  free(strings);
  free(lens);
  return st;
}

static void host_free_items(nbl_host_tensor *h, int depth) {
  if (h->data && h->dtype == NBL_DT_STRING && h->kind == NBL_VALUE_TENSOR) {
    char **s = h->data;
    size_t n = h->nbytes / sizeof(char *);
    for (size_t i = 0; i < n; i++) free(s[i]);
  }
  free(h->data);
  free((void *)h->name);
  if (h->items && depth < 64)
    for (int i = 0; i < h->n_items; i++) host_free_items(&h->items[i], depth + 1);
  free(h->items);
  memset(h, 0, sizeof *h);
}

void nbl_host_tensor_free(nbl_host_tensor *h) {
  if (h) host_free_items(h, 0);
}
