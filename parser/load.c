/*
 * load.c - ONNX protobuf -> IR.
 *
 * The model file is memory-mapped and unpacked by protobuf-c (default
 * allocator, i.e. malloc). Tensor payloads that protobuf-c copied out of the
 * file (raw_data, or a typed field whose layout already is the raw one) are
 * taken over by an nbl_buffer, so initializer data is copied exactly once.
 * External data files are mapped once each and shared by their tensors.
 * Everything the IR does not interpret is kept (functions, sparse tensors and
 * quantization annotations as packed blobs) so that load -> save loses nothing.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nibble.h" /* implements nbl_model_load(_buffer) of the public API */
#include "onnx.pb-c.h"
#include "parser.h"
#include "name_set.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the parser assumes a little-endian host (ONNX raw_data is little-endian)"
#endif

/* ------------------------------------------------------------------ external data */

typedef struct ext_map {
  struct ext_map *next;
  char *real; /* realpath of the file (malloc'd) */
  nbl_buffer *buf;
} ext_map;

struct nbl_ext_ctx {
  const char *base_dir; /* as given */
  char *base_real;      /* realpath of base_dir (malloc'd), NULL until first use */
  ext_map *maps;
};

static void release_munmap(void *base, size_t size, void *ctx) {
  (void)ctx;
  if (base && size) munmap(base, size);
}

static void ext_ctx_clear(nbl_ext_ctx *e) {
  ext_map *m = e->maps;
  while (m) {
    ext_map *n = m->next;
    free(m->real);
    nbl_buffer_unref(m->buf);
    free(m);
    m = n;
  }
  e->maps = NULL;
  free(e->base_real);
  e->base_real = NULL;
}

bool nbl_ext_location_escapes(const char *loc) {
  if (loc[0] == '/') return true;
  const char *p = loc;
  while (*p) {
    const char *s = strchr(p, '/');
    size_t n = s ? (size_t)(s - p) : strlen(p);
    if (n == 2 && p[0] == '.' && p[1] == '.') return true;
    if (!s) break;
    p = s + 1;
  }
  return false;
}

/* Map (once) the external file `loc` and return a borrowed buffer. */
static nbl_status ext_get(nbl_ext_ctx *e, const char *label, const char *tname, const char *loc,
                          nbl_buffer **out) {
  if (nbl_ext_location_escapes(loc))
    return nbl_errorf(NBL_ERR_INVALID_MODEL,
                      "%s: tensor '%s': external data location '%s' escapes the model folder",
                      label, tname, loc);
  if (!e->base_real) {
    e->base_real = realpath(e->base_dir, NULL);
    if (!e->base_real)
      return nbl_errorf(NBL_ERR_IO, "%s: tensor '%s': model folder '%s': %s", label, tname,
                        e->base_dir, strerror(errno));
  }
  size_t bl = strlen(e->base_real), ll = strlen(loc);
  char *joined = malloc(bl + ll + 2);
  if (!joined) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory", label);
  memcpy(joined, e->base_real, bl);
  joined[bl] = '/';
  memcpy(joined + bl + 1, loc, ll + 1);
  char *real = realpath(joined, NULL);
  if (!real) {
    int err = errno;
    free(joined);
    return nbl_errorf(NBL_ERR_IO, "%s: tensor '%s': external data file '%s': %s", label, tname,
                      loc, strerror(err));
  }
  free(joined);
  if (strncmp(real, e->base_real, bl) != 0 || (real[bl] != '/' && bl != 1)) {
    free(real);
    return nbl_errorf(NBL_ERR_INVALID_MODEL,
                      "%s: tensor '%s': external data location '%s' escapes the model folder",
                      label, tname, loc);
  }
  for (ext_map *m = e->maps; m; m = m->next)
    if (strcmp(m->real, real) == 0) {
      free(real);
      *out = m->buf;
      return NBL_OK;
    }
  int fd = open(real, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    int err = fd < 0 ? errno : (S_ISREG(st.st_mode) ? errno : EINVAL);
    if (fd >= 0) close(fd);
    free(real);
    return nbl_errorf(NBL_ERR_IO, "%s: tensor '%s': external data file '%s': %s", label, tname,
                      loc, strerror(err));
  }
  void *base = NULL;
  size_t size = (size_t)st.st_size;
  if (size > 0) {
    base = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (base == MAP_FAILED) {
      int err = errno;
      close(fd);
      free(real);
      return nbl_errorf(NBL_ERR_IO, "%s: tensor '%s': cannot map external data file '%s': %s",
                        label, tname, loc, strerror(err));
    }
  }
  close(fd);
  ext_map *m = calloc(1, sizeof *m);
  nbl_buffer *buf = nbl_buffer_new(base, size, release_munmap, NULL);
  if (!m || !buf) {
    free(m);
    free(real);
    if (buf) nbl_buffer_unref(buf);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory", label);
  }
  m->real = real;
  m->buf = buf;
  m->next = e->maps;
  e->maps = m;
  *out = buf;
  return NBL_OK;
}

/* ------------------------------------------------------------------ tensors */

/* "[2,3]" into buf. */
static const char *shape_str(char *buf, size_t n, int rank, const int64_t *dims) {
  size_t k = 0;
  k += (size_t)snprintf(buf + k, n - k, "[");
  for (int i = 0; i < rank && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? "," : "", (long long)dims[i]);
  if (k < n) snprintf(buf + k, n - k, "]");
  return buf;
}

static int64_t parse_i64(const char *s, bool *ok) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  *ok = (errno == 0 && end != s && *end == 0 && v >= 0);
  return v;
}

static nbl_status tensor_external(Onnx__TensorProto *tp, nbl_ext_ctx *ext, nbl_arena *a,
                                  const char *label, const char *tname, size_t need,
                                  nbl_tensor *t) {
  const char *loc = NULL;
  int64_t off = 0, len = -1;
  for (size_t i = 0; i < tp->n_external_data; i++) {
    const char *k = tp->external_data[i]->key ? tp->external_data[i]->key : "";
    const char *v = tp->external_data[i]->value ? tp->external_data[i]->value : "";
    bool ok = true;
    if (strcmp(k, "location") == 0)
      loc = v;
    else if (strcmp(k, "offset") == 0)
      off = parse_i64(v, &ok);
    else if (strcmp(k, "length") == 0)
      len = parse_i64(v, &ok);
    if (!ok)
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: tensor '%s': external data %s '%s' is not a valid number",
                        label, tname, k, v);
  }
  if (!loc || !*loc)
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: tensor '%s': external data has no location",
                      label, tname);
  if (!ext)
    return nbl_errorf(NBL_ERR_INVALID_MODEL,
                      "%s: tensor '%s': external data '%s' is not allowed here (no model folder)",
                      label, tname, loc);
  nbl_buffer *buf = NULL;
  nbl_status st = ext_get(ext, label, tname, loc, &buf);
  if (st) return st;
  if ((uint64_t)off > buf->size)
    return nbl_errorf(NBL_ERR_INVALID_MODEL,
                      "%s: tensor '%s': external data offset %lld is beyond the end of '%s' (%zu bytes)",
                      label, tname, (long long)off, loc, buf->size);
  if (len >= 0 && (uint64_t)len != need)
    return nbl_errorf(NBL_ERR_INVALID_MODEL,
                      "%s: tensor '%s': external data length %lld, shape needs %zu bytes", label,
                      tname, (long long)len, need);
  if (buf->size - (size_t)off < need)
    return nbl_errorf(NBL_ERR_INVALID_MODEL,
                      "%s: tensor '%s': external data file '%s' has %zu bytes after offset %lld, "
                      "shape needs %zu",
                      label, tname, loc, buf->size - (size_t)off, (long long)off, need);
  const unsigned char *p = (const unsigned char *)buf->base + off;
  size_t esz = (size_t)(nbl_dtype_bits(t->dtype) / 8);
  if (esz > 1 && ((uintptr_t)p % esz) != 0) { /* misaligned for its type: copy */
    void *c = malloc(need);
    if (!c) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory", label);
    memcpy(c, p, need);
    t->buf = nbl_buffer_from_malloc(c, need);
    if (!t->buf) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory", label);
    t->data = c;
  } else {
    t->buf = need ? nbl_buffer_ref(buf) : NULL;
    t->data = need ? p : NULL;
  }
  t->nbytes = need;
  t->ext_location = nbl_arena_strdup(a, loc);
  t->ext_offset = off;
  t->ext_length = len;
  return NBL_OK;
}

/* Take over a malloc'd array as the tensor payload. */
static nbl_status adopt(nbl_tensor *t, void *p, size_t n, const char *label) {
  if (n == 0) {
    free(p);
    return NBL_OK;
  }
  t->buf = nbl_buffer_from_malloc(p, n);
  if (!t->buf) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory", label);
  t->data = p;
  t->nbytes = n;
  return NBL_OK;
}

nbl_status nbl_pb_tensor_to_ir(Onnx__TensorProto *tp, nbl_ext_ctx *ext, nbl_arena *a,
                               const char *label, nbl_tensor **out) {
  const char *tname = tp->name ? tp->name : "";
  char sbuf[256];
  if (tp->n_dims > 64)
    return nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: tensor '%s': rank %zu is more than 64", label,
                      tname, tp->n_dims);
  int rank = (int)tp->n_dims;
  int dt = tp->data_type;
  if (!nbl_dtype_valid(dt))
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: tensor '%s': unknown element type %d", label,
                      tname, dt);
  for (int i = 0; i < rank; i++)
    if (tp->dims[i] < 0)
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: tensor '%s': negative dimension in shape %s",
                        label, tname, shape_str(sbuf, sizeof sbuf, rank, tp->dims));
  int64_t n = nbl_shape_numel(rank, tp->dims);
  /* bytes must fit too: at most 16 bytes per element */
  if (n < 0 || n > INT64_MAX / 16)
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: tensor '%s': shape %s overflows", label, tname,
                      shape_str(sbuf, sizeof sbuf, rank, tp->dims));
  if (tp->segment)
    return nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: tensor '%s': segmented tensors are not supported",
                      label, tname);
  nbl_tensor *t = nbl_tensor_new_buf(a, tname, (nbl_dtype)dt, rank, tp->dims, NULL, NULL, 0);
  if (!t) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory", label);
  t->doc_string = nbl_arena_strdup(a, tp->doc_string);
  t->ext_offset = 0;
  t->ext_length = -1;
  size_t need = nbl_dtype_nbytes((nbl_dtype)dt, n);
  const char *dtn = nbl_dtype_name((nbl_dtype)dt);
  nbl_status st = NBL_OK;

  if (dt == NBL_DT_STRING) {
    if (tp->has_data_location && tp->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL)
      return nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: tensor '%s': external string data is not supported",
                        label, tname);
    if ((int64_t)tp->n_string_data != n)
      return nbl_errorf(NBL_ERR_INVALID_MODEL,
                        "%s: tensor '%s': string_data has %zu values, shape %s needs %lld", label,
                        tname, tp->n_string_data, shape_str(sbuf, sizeof sbuf, rank, tp->dims),
                        (long long)n);
    t->n_strings = n;
    t->strings = nbl_arena_alloc(a, sizeof(char *) * (size_t)(n ? n : 1));
    t->string_lens = nbl_arena_alloc(a, sizeof(size_t) * (size_t)(n ? n : 1));
    if (!t->strings || !t->string_lens) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory", label);
    for (int64_t i = 0; i < n; i++) {
      t->strings[i] = nbl_arena_strndup(a, (const char *)tp->string_data[i].data,
                                        tp->string_data[i].len);
      if (!t->strings[i]) t->strings[i] = nbl_arena_strdup(a, "");
      t->string_lens[i] = tp->string_data[i].len;
    }
    *out = t;
    return NBL_OK;
  }

  if (tp->has_data_location && tp->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL) {
    st = tensor_external(tp, ext, a, label, tname, need, t);
    if (st) return st;
    *out = t;
    return NBL_OK;
  }

  if (tp->has_raw_data) {
    if (tp->raw_data.len != need)
      return nbl_errorf(NBL_ERR_INVALID_MODEL,
                        "%s: tensor '%s': raw data has %zu bytes, shape %s of %s needs %zu", label,
                        tname, tp->raw_data.len, shape_str(sbuf, sizeof sbuf, rank, tp->dims), dtn,
                        need);
    void *p = tp->raw_data.data;
    tp->raw_data.data = NULL;
    tp->raw_data.len = 0;
    tp->has_raw_data = 0;
    st = adopt(t, p, need, label);
    if (st) return st;
    *out = t;
    return NBL_OK;
  }

  /* typed fields */
  const char *field;
  size_t have;
  int64_t want = n;
  switch (dt) {
  case NBL_DT_FLOAT: case NBL_DT_COMPLEX64:
    field = "float_data"; have = tp->n_float_data;
    if (dt == NBL_DT_COMPLEX64) want = 2 * n;
    break;
  case NBL_DT_DOUBLE: case NBL_DT_COMPLEX128:
    field = "double_data"; have = tp->n_double_data;
    if (dt == NBL_DT_COMPLEX128) want = 2 * n;
    break;
  case NBL_DT_INT64:
    field = "int64_data"; have = tp->n_int64_data;
    break;
  case NBL_DT_UINT32: case NBL_DT_UINT64:
    field = "uint64_data"; have = tp->n_uint64_data;
    break;
  case NBL_DT_INT4: case NBL_DT_UINT4:
    field = "int32_data"; have = tp->n_int32_data; want = (n + 1) / 2;
    break;
  default:
    field = "int32_data"; have = tp->n_int32_data;
    break;
  }
  if ((int64_t)have != want)
    return nbl_errorf(NBL_ERR_INVALID_MODEL,
                      "%s: tensor '%s': %s has %zu values, shape %s of %s needs %lld", label, tname,
                      field, have, shape_str(sbuf, sizeof sbuf, rank, tp->dims), dtn,
                      (long long)want);
  if (need == 0) {
    *out = t;
    return NBL_OK;
  }
  switch (dt) { /* same layout: take the array over */
  case NBL_DT_FLOAT: case NBL_DT_COMPLEX64: {
    void *p = tp->float_data;
    tp->float_data = NULL; tp->n_float_data = 0;
    st = adopt(t, p, need, label);
    break;
  }
  case NBL_DT_DOUBLE: case NBL_DT_COMPLEX128: {
    void *p = tp->double_data;
    tp->double_data = NULL; tp->n_double_data = 0;
    st = adopt(t, p, need, label);
    break;
  }
  case NBL_DT_INT64: {
    void *p = tp->int64_data;
    tp->int64_data = NULL; tp->n_int64_data = 0;
    st = adopt(t, p, need, label);
    break;
  }
  case NBL_DT_UINT64: {
    void *p = tp->uint64_data;
    tp->uint64_data = NULL; tp->n_uint64_data = 0;
    st = adopt(t, p, need, label);
    break;
  }
  case NBL_DT_INT32: {
    void *p = tp->int32_data;
    tp->int32_data = NULL; tp->n_int32_data = 0;
    st = adopt(t, p, need, label);
    break;
  }
  default: { /* narrow: convert */
    unsigned char *p = malloc(need);
    if (!p) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory", label);
    int bits = nbl_dtype_bits((nbl_dtype)dt);
    if (dt == NBL_DT_UINT32) {
      for (int64_t i = 0; i < n; i++) {
        uint32_t v = (uint32_t)tp->uint64_data[i];
        memcpy(p + 4 * i, &v, 4);
      }
    } else if (bits == 16) {
      for (int64_t i = 0; i < n; i++) {
        uint16_t v = (uint16_t)tp->int32_data[i];
        memcpy(p + 2 * i, &v, 2);
      }
    } else { /* 8 bits, or 4 bits packed one byte per int32 */
      for (size_t i = 0; i < need; i++) p[i] = (unsigned char)tp->int32_data[i];
    }
    st = adopt(t, p, need, label);
    break;
  }
  }
  if (st) return st;
  *out = t;
  return NBL_OK;
}

/* ------------------------------------------------------------------ model */

typedef struct load_ctx {
  nbl_model *m;
  const char *label;
  nbl_ext_ctx ext;
  bool has_ext;
} load_ctx;

static nbl_status oom(load_ctx *c) {
  return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory", c->label);
}

static nbl_status type_from_pb(load_ctx *c, const Onnx__TypeProto *tp, nbl_type *t, int depth);

static nbl_status shape_from_pb(load_ctx *c, const Onnx__TensorShapeProto *sp, nbl_type *t) {
  nbl_arena *a = c->m->arena;
  if (!sp) {
    t->rank = -1;
    return NBL_OK;
  }
  t->rank = (int)sp->n_dim;
  if (sp->n_dim == 0) return NBL_OK;
  t->dims = nbl_arena_alloc(a, sizeof(nbl_dim) * sp->n_dim);
  if (!t->dims) return oom(c);
  for (size_t i = 0; i < sp->n_dim; i++) {
    const Onnx__TensorShapeProto__Dimension *d = sp->dim[i];
    t->dims[i].value = -1;
    t->dims[i].denotation = nbl_arena_strdup(a, d->denotation);
    if (d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE)
      t->dims[i].value = d->dim_value;
    else if (d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM)
      t->dims[i].param = nbl_arena_strdup(a, d->dim_param ? d->dim_param : "");
  }
  return NBL_OK;
}

static nbl_status inner_from_pb(load_ctx *c, const Onnx__TypeProto *tp, nbl_type *t, int depth) {
  if (!tp) return NBL_OK;
  t->inner = nbl_arena_alloc(c->m->arena, sizeof(nbl_type));
  if (!t->inner) return oom(c);
  nbl_status st = type_from_pb(c, tp, t->inner, depth + 1);
  /* an empty element type says nothing: no inner type, as save writes it */
  if (st == NBL_OK && t->inner->kind == NBL_TYPE_NONE && !t->inner->denotation) t->inner = NULL;
  return st;
}

static nbl_status type_from_pb(load_ctx *c, const Onnx__TypeProto *tp, nbl_type *t, int depth) {
  memset(t, 0, sizeof *t);
  t->rank = -1;
  if (!tp) return NBL_OK;
  if (depth > 64)
    return nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: type nested more than 64 levels", c->label);
  t->denotation = nbl_arena_strdup(c->m->arena, tp->denotation);
  switch (tp->value_case) {
  case ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE:
    t->kind = NBL_TYPE_TENSOR;
    t->elem = (nbl_dtype)tp->tensor_type->elem_type;
    return shape_from_pb(c, tp->tensor_type->shape, t);
  case ONNX__TYPE_PROTO__VALUE_SPARSE_TENSOR_TYPE:
    t->kind = NBL_TYPE_SPARSE_TENSOR;
    t->elem = (nbl_dtype)tp->sparse_tensor_type->elem_type;
    return shape_from_pb(c, tp->sparse_tensor_type->shape, t);
  case ONNX__TYPE_PROTO__VALUE_SEQUENCE_TYPE:
    t->kind = NBL_TYPE_SEQUENCE;
    return inner_from_pb(c, tp->sequence_type->elem_type, t, depth);
  case ONNX__TYPE_PROTO__VALUE_OPTIONAL_TYPE:
    t->kind = NBL_TYPE_OPTIONAL;
    return inner_from_pb(c, tp->optional_type->elem_type, t, depth);
  case ONNX__TYPE_PROTO__VALUE_MAP_TYPE:
    t->kind = NBL_TYPE_MAP;
    t->elem = (nbl_dtype)tp->map_type->key_type;
    return inner_from_pb(c, tp->map_type->value_type, t, depth);
  default:
    return NBL_OK;
  }
}

/* Pack a protobuf message into an arena blob. */
static nbl_status pack_blob(load_ctx *c, const ProtobufCMessage *msg, nbl_blob *b) {
  size_t n = protobuf_c_message_get_packed_size(msg);
  b->data = nbl_arena_alloc(c->m->arena, n ? n : 1);
  if (!b->data) return oom(c);
  b->len = protobuf_c_message_pack(msg, b->data);
  return NBL_OK;
}

static nbl_status graph_from_pb(load_ctx *c, Onnx__GraphProto *gp, nbl_graph *g, int depth);

/* Infer the type of an attribute written without one (very old models). */
static int attr_infer_type(const Onnx__AttributeProto *ap) {
  if (ap->has_f) return NBL_ATTR_FLOAT;
  if (ap->has_i) return NBL_ATTR_INT;
  if (ap->has_s) return NBL_ATTR_STRING;
  if (ap->t) return NBL_ATTR_TENSOR;
  if (ap->g) return NBL_ATTR_GRAPH;
  if (ap->sparse_tensor) return NBL_ATTR_SPARSE_TENSOR;
  if (ap->tp) return NBL_ATTR_TYPE_PROTO;
  if (ap->n_floats) return NBL_ATTR_FLOATS;
  if (ap->n_ints) return NBL_ATTR_INTS;
  if (ap->n_strings) return NBL_ATTR_STRINGS;
  if (ap->n_tensors) return NBL_ATTR_TENSORS;
  if (ap->n_graphs) return NBL_ATTR_GRAPHS;
  if (ap->n_sparse_tensors) return NBL_ATTR_SPARSE_TENSORS;
  if (ap->n_type_protos) return NBL_ATTR_TYPE_PROTOS;
  return NBL_ATTR_UNDEFINED;
}

static nbl_status attr_from_pb(load_ctx *c, Onnx__AttributeProto *ap, nbl_graph *g,
                               const Onnx__NodeProto *np, nbl_attr *at, int depth) {
  nbl_arena *a = c->m->arena;
  nbl_status st;
  at->name = nbl_arena_strdup(a, ap->name ? ap->name : "");
  at->doc_string = nbl_arena_strdup(a, ap->doc_string);
  at->ref_attr_name = nbl_arena_strdup(a, ap->ref_attr_name);
  int type = ap->has_type ? (int)ap->type : attr_infer_type(ap);
  at->type = (nbl_attr_type)type;
  const char *nname = np->name ? np->name : "";
  const char *op = np->op_type ? np->op_type : "";
  switch (type) {
  case NBL_ATTR_FLOAT: at->f = ap->f; break;
  case NBL_ATTR_INT: at->i = ap->i; break;
  case NBL_ATTR_STRING:
    at->s = nbl_arena_strndup(a, ap->s.data ? (const char *)ap->s.data : "", ap->s.len);
    at->s_len = ap->s.len;
    break;
  case NBL_ATTR_TENSOR:
    if (!ap->t)
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: graph '%s': node '%s' (%s): attribute '%s' has no tensor",
                        c->label, g->name, nname, op, at->name);
    return nbl_pb_tensor_to_ir(ap->t, c->has_ext ? &c->ext : NULL, a, c->label, &at->t);
  case NBL_ATTR_GRAPH:
    if (!ap->g)
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: graph '%s': node '%s' (%s): attribute '%s' has no graph",
                        c->label, g->name, nname, op, at->name);
    at->g = nbl_graph_new(c->m, g, ap->g->name);
    if (!at->g) return oom(c);
    return graph_from_pb(c, ap->g, at->g, depth + 1);
  case NBL_ATTR_SPARSE_TENSOR:
    if (!ap->sparse_tensor)
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: graph '%s': node '%s' (%s): attribute '%s' has no sparse tensor",
                        c->label, g->name, nname, op, at->name);
    at->n = 1;
    at->sparse = nbl_arena_alloc(a, sizeof(nbl_blob));
    if (!at->sparse) return oom(c);
    return pack_blob(c, &ap->sparse_tensor->base, at->sparse);
  case NBL_ATTR_TYPE_PROTO:
    at->n = 1;
    at->types = nbl_arena_alloc(a, sizeof(nbl_type));
    if (!at->types) return oom(c);
    return type_from_pb(c, ap->tp, at->types, 0);
  case NBL_ATTR_FLOATS:
    at->n = (int)ap->n_floats;
    at->floats = nbl_arena_memdup(a, ap->floats, sizeof(float) * ap->n_floats);
    if (!at->floats) return oom(c);
    break;
  case NBL_ATTR_INTS:
    at->n = (int)ap->n_ints;
    at->ints = nbl_arena_memdup(a, ap->ints, sizeof(int64_t) * ap->n_ints);
    if (!at->ints) return oom(c);
    break;
  case NBL_ATTR_STRINGS:
    at->n = (int)ap->n_strings;
    at->strings = nbl_arena_alloc(a, sizeof(char *) * (ap->n_strings + 1));
    at->string_lens = nbl_arena_alloc(a, sizeof(size_t) * (ap->n_strings + 1));
    if (!at->strings || !at->string_lens) return oom(c);
    for (size_t i = 0; i < ap->n_strings; i++) {
      at->strings[i] = nbl_arena_strndup(
          a, ap->strings[i].data ? (const char *)ap->strings[i].data : "", ap->strings[i].len);
      at->string_lens[i] = ap->strings[i].len;
    }
    break;
  case NBL_ATTR_TENSORS:
    at->n = (int)ap->n_tensors;
    at->tensors = nbl_arena_alloc(a, sizeof(nbl_tensor *) * (ap->n_tensors + 1));
    if (!at->tensors) return oom(c);
    for (size_t i = 0; i < ap->n_tensors; i++) {
      st = nbl_pb_tensor_to_ir(ap->tensors[i], c->has_ext ? &c->ext : NULL, a, c->label,
                               &at->tensors[i]);
      if (st) {
        for (size_t k = 0; k < i; k++) nbl_buffer_unref(at->tensors[k]->buf);
        at->n = 0;
        return st;
      }
    }
    break;
  case NBL_ATTR_GRAPHS:
    at->n = (int)ap->n_graphs;
    at->graphs = nbl_arena_alloc(a, sizeof(nbl_graph *) * (ap->n_graphs + 1));
    if (!at->graphs) return oom(c);
    for (size_t i = 0; i < ap->n_graphs; i++) {
      at->graphs[i] = nbl_graph_new(c->m, g, ap->graphs[i]->name);
      if (!at->graphs[i]) return oom(c);
      st = graph_from_pb(c, ap->graphs[i], at->graphs[i], depth + 1);
      if (st) return st;
    }
    break;
  case NBL_ATTR_SPARSE_TENSORS:
    at->n = (int)ap->n_sparse_tensors;
    at->sparse = nbl_arena_alloc(a, sizeof(nbl_blob) * (ap->n_sparse_tensors + 1));
    if (!at->sparse) return oom(c);
    for (size_t i = 0; i < ap->n_sparse_tensors; i++) {
      st = pack_blob(c, &ap->sparse_tensors[i]->base, &at->sparse[i]);
      if (st) return st;
    }
    break;
  case NBL_ATTR_TYPE_PROTOS:
    at->n = (int)ap->n_type_protos;
    at->types = nbl_arena_alloc(a, sizeof(nbl_type) * (ap->n_type_protos + 1));
    if (!at->types) return oom(c);
    for (size_t i = 0; i < ap->n_type_protos; i++) {
      st = type_from_pb(c, ap->type_protos[i], &at->types[i], 0);
      if (st) return st;
    }
    break;
  default:
    return nbl_errorf(NBL_ERR_INVALID_MODEL,
                      "%s: graph '%s': node '%s' (%s): attribute '%s' has unknown type %d",
                      c->label, g->name, nname, op, at->name, type);
  }
  return NBL_OK;
}

/* Find a value for `name` in g, creating it (flagged OUTER if the graph proto
 * does not define it and g is a subgraph). */
static nbl_id resolve(load_ctx *c, nbl_graph *g, const name_set *local, const char *name) {
  nbl_id v = nbl_graph_find(g, name);
  if (v != NBL_NONE) return v;
  v = nbl_graph_add_value(g, name);
  if (v == NBL_NONE) return v;
  if (g->parent && !name_set_has(local, name)) g->values[v].flags |= NBL_VAL_OUTER;
  (void)c;
  return v;
}

static nbl_status value_info_apply(load_ctx *c, nbl_graph *g, nbl_id v,
                                   const Onnx__ValueInfoProto *vi, bool overwrite) {
  nbl_value *val = &g->values[v];
  if (vi->doc_string && (overwrite || !val->doc_string))
    val->doc_string = nbl_arena_strdup(c->m->arena, vi->doc_string);
  if (vi->type && (overwrite || val->type.kind == NBL_TYPE_NONE)) {
    nbl_type t;
    nbl_status st = type_from_pb(c, vi->type, &t, 0);
    if (st) return st;
    g->values[v].type = t;
  }
  return NBL_OK;
}

static nbl_status graph_from_pb(load_ctx *c, Onnx__GraphProto *gp, nbl_graph *g, int depth) {
  nbl_arena *a = c->m->arena;
  nbl_status st = NBL_OK;
  if (depth > 64)
    return nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: graph '%s': subgraphs nested more than 64 levels",
                      c->label, g->name);
  g->doc_string = nbl_arena_strdup(a, gp->doc_string);

  /* every name the graph proto defines */
  size_t total = gp->n_input + gp->n_initializer + 1;
  for (size_t i = 0; i < gp->n_node; i++) total += gp->node[i]->n_output;
  name_set local = {0}, nodes_all = {0}, nodes_seen = {0};
  if (!name_set_init(&local, total) || !name_set_init(&nodes_all, gp->n_node) ||
      !name_set_init(&nodes_seen, gp->n_node)) {
    name_set_free(&local);
    name_set_free(&nodes_all);
    return oom(c);
  }
  /* a node name the graph repeats gets the writer's suffix here already
   * (name_set.h), so that the IR is what a save writes */
  for (size_t i = 0; i < gp->n_node; i++) name_set_add(&nodes_all, gp->node[i]->name);
  for (size_t i = 0; i < gp->n_input; i++) name_set_add(&local, gp->input[i]->name);
  for (size_t i = 0; i < gp->n_initializer; i++) name_set_add(&local, gp->initializer[i]->name);
  for (size_t i = 0; i < gp->n_node; i++)
    for (size_t k = 0; k < gp->node[i]->n_output; k++) name_set_add(&local, gp->node[i]->output[k]);

  for (size_t i = 0; i < gp->n_input; i++) {
    const Onnx__ValueInfoProto *vi = gp->input[i];
    nbl_id v = nbl_graph_add_value(g, vi->name ? vi->name : "");
    if (v == NBL_NONE || !vi->name || !*vi->name) {
      st = nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: graph '%s': input %zu '%s' is %s", c->label,
                      g->name, i, vi->name ? vi->name : "", (vi->name && *vi->name) ? "listed twice" : "unnamed");
      goto done;
    }
    st = value_info_apply(c, g, v, vi, true);
    if (st) goto done;
    nbl_graph_add_input(g, v);
  }
  for (size_t i = 0; i < gp->n_initializer; i++) {
    Onnx__TensorProto *tp = gp->initializer[i];
    const char *name = tp->name ? tp->name : "";
    if (!*name) {
      st = nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: graph '%s': initializer %zu has no name",
                      c->label, g->name, i);
      goto done;
    }
    nbl_id v = nbl_graph_find(g, name);
    if (v != NBL_NONE && g->values[v].init) {
      st = nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: graph '%s': initializer '%s' is defined twice",
                      c->label, g->name, name);
      goto done;
    }
    if (v == NBL_NONE) v = nbl_graph_add_value(g, name);
    if (v == NBL_NONE) {
      st = oom(c);
      goto done;
    }
    nbl_tensor *t;
    st = nbl_pb_tensor_to_ir(tp, c->has_ext ? &c->ext : NULL, a, c->label, &t);
    if (st) goto done;
    nbl_graph_set_initializer(g, v, t);
  }
  if (gp->n_sparse_initializer) {
    g->sparse_initializers = nbl_arena_alloc(a, sizeof(nbl_blob) * gp->n_sparse_initializer);
    if (!g->sparse_initializers) {
      st = oom(c);
      goto done;
    }
    for (size_t i = 0; i < gp->n_sparse_initializer; i++) {
      st = pack_blob(c, &gp->sparse_initializer[i]->base, &g->sparse_initializers[i]);
      if (st) goto done;
    }
    g->n_sparse_initializers = (int)gp->n_sparse_initializer;
  }
  for (size_t i = 0; i < gp->n_node; i++) {
    Onnx__NodeProto *np = gp->node[i];
    const char *op = np->op_type ? np->op_type : "";
    const char *nname = np->name ? np->name : "";
    if (name_set_repeated(&nodes_seen, nname)) {
      size_t len = strlen(nname) + 24;
      char *nm = nbl_arena_alloc(a, len);
      if (!nm) {
        st = oom(c);
        goto done;
      }
      name_set_suffix(&nodes_all, &nodes_seen, nname, nm, len);
      nname = nm;
    }
    name_set_add(&nodes_seen, nname);
    nbl_id stack_ids[16];
    size_t nio = np->n_input + np->n_output;
    nbl_id *ids = nio <= 16 ? stack_ids : malloc(sizeof(nbl_id) * nio);
    if (!ids) {
      st = oom(c);
      goto done;
    }
    nbl_id *in = ids, *outs = ids + np->n_input;
    for (size_t k = 0; k < np->n_input && !st; k++) {
      const char *nm = np->input[k] ? np->input[k] : "";
      in[k] = *nm ? resolve(c, g, &local, nm) : NBL_NONE;
      if (*nm && in[k] == NBL_NONE) st = oom(c);
    }
    for (size_t k = 0; k < np->n_output && !st; k++) {
      const char *nm = np->output[k] ? np->output[k] : "";
      outs[k] = *nm ? resolve(c, g, &local, nm) : NBL_NONE;
      if (*nm && outs[k] == NBL_NONE) st = oom(c);
      else if (*nm && (g->values[outs[k]].flags & NBL_VAL_INPUT || g->values[outs[k]].init))
        st = nbl_errorf(NBL_ERR_INVALID_MODEL,
                        "%s: graph '%s': node '%s' (%s): output '%s' is also a graph input or initializer",
                        c->label, g->name, nname, op, nm);
    }
    nbl_id nid = NBL_NONE;
    if (!st) {
      nid = nbl_graph_add_node(g, op, np->domain, nname, (int)np->n_input, in,
                               (int)np->n_output, outs);
      if (nid == NBL_NONE) {
        st = NBL_ERR_INVALID_MODEL;
        nbl_error_prefix("%s", c->label);
      }
    }
    if (ids != stack_ids) free(ids);
    if (st) goto done;
    nbl_node *node = &g->nodes[nid];
    node->doc_string = nbl_arena_strdup(a, np->doc_string);
    if (np->n_attribute) {
      nbl_attr *attrs = nbl_arena_alloc(a, sizeof(nbl_attr) * np->n_attribute);
      if (!attrs) {
        st = oom(c);
        goto done;
      }
      g->nodes[nid].attrs = attrs;
      for (size_t k = 0; k < np->n_attribute; k++) {
        st = attr_from_pb(c, np->attribute[k], g, np, &attrs[k], depth);
        if (st) goto done;
        g->nodes[nid].n_attrs = (int)k + 1; /* only complete attrs are freed */
      }
    }
  }
  for (size_t i = 0; i < gp->n_output; i++) {
    const Onnx__ValueInfoProto *vi = gp->output[i];
    const char *nm = vi->name ? vi->name : "";
    if (!*nm) {
      st = nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: graph '%s': output %zu has no name", c->label,
                      g->name, i);
      goto done;
    }
    nbl_id v = resolve(c, g, &local, nm);
    if (v == NBL_NONE) {
      st = oom(c);
      goto done;
    }
    st = value_info_apply(c, g, v, vi, !(g->values[v].flags & NBL_VAL_INPUT));
    if (st) goto done;
    nbl_graph_add_output(g, v);
  }
  for (size_t i = 0; i < gp->n_value_info; i++) {
    const Onnx__ValueInfoProto *vi = gp->value_info[i];
    const char *nm = vi->name ? vi->name : "";
    if (!*nm) continue;
    nbl_id v = resolve(c, g, &local, nm);
    if (v == NBL_NONE) {
      st = oom(c);
      goto done;
    }
    st = value_info_apply(c, g, v, vi, false);
    if (st) goto done;
    nbl_graph_add_value_info(g, v);
  }
  if (gp->n_quantization_annotation) {
    g->quantization_annotation = nbl_arena_alloc(a, sizeof(nbl_blob) * gp->n_quantization_annotation);
    if (!g->quantization_annotation) {
      st = oom(c);
      goto done;
    }
    for (size_t i = 0; i < gp->n_quantization_annotation; i++) {
      st = pack_blob(c, &gp->quantization_annotation[i]->base, &g->quantization_annotation[i]);
      if (st) goto done;
    }
    g->n_quantization_annotation = (int)gp->n_quantization_annotation;
  }
done:
  name_set_free(&local);
  name_set_free(&nodes_all);
  name_set_free(&nodes_seen);
  return st;
}

static nbl_status kv_from_pb(load_ctx *c, Onnx__StringStringEntryProto **e, size_t n, nbl_kv **out,
                             int *count) {
  *count = 0;
  if (!n) return NBL_OK;
  nbl_kv *kv = nbl_arena_alloc(c->m->arena, sizeof(nbl_kv) * n);
  if (!kv) return oom(c);
  for (size_t i = 0; i < n; i++) {
    kv[i].key = nbl_arena_strdup(c->m->arena, e[i]->key ? e[i]->key : "");
    kv[i].value = nbl_arena_strdup(c->m->arena, e[i]->value ? e[i]->value : "");
  }
  *out = kv;
  *count = (int)n;
  return NBL_OK;
}

static nbl_status model_from_pb(load_ctx *c, Onnx__ModelProto *mp) {
  nbl_model *m = c->m;
  nbl_arena *a = m->arena;
  nbl_status st;
  m->ir_version = mp->has_ir_version ? mp->ir_version : 0;
  m->producer_name = nbl_arena_strdup(a, mp->producer_name);
  m->producer_version = nbl_arena_strdup(a, mp->producer_version);
  m->domain = nbl_arena_strdup(a, mp->domain);
  m->doc_string = nbl_arena_strdup(a, mp->doc_string);
  m->model_version = mp->has_model_version ? mp->model_version : 0;
  if (mp->n_opset_import) {
    m->opsets = nbl_arena_alloc(a, sizeof(nbl_opset) * mp->n_opset_import);
    if (!m->opsets) return oom(c);
    for (size_t i = 0; i < mp->n_opset_import; i++) {
      m->opsets[i].domain = nbl_arena_strdup(a, mp->opset_import[i]->domain ? mp->opset_import[i]->domain : "");
      m->opsets[i].version = mp->opset_import[i]->version;
    }
    m->n_opsets = (int)mp->n_opset_import;
  }
  st = kv_from_pb(c, mp->metadata_props, mp->n_metadata_props, &m->metadata, &m->n_metadata);
  if (st) return st;
  if (!mp->graph) return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: model has no graph", c->label);
  m->graph->name = nbl_arena_strdup(a, mp->graph->name ? mp->graph->name : "");
  st = graph_from_pb(c, mp->graph, m->graph, 0);
  if (st) return st;
  /* Before IR 4 every initializer had to be listed in graph.input, and such
   * an initializer is a constant, not an input a caller may override (ONNX
   * Runtime's rule too: it lets a caller override an initializer only from
   * IR 4 on). So the main graph of an IR < 4 model keeps only its true
   * inputs; the passes and the runtime see its weights as the constants they
   * are, and the saver lists the initializers again when it writes IR < 4. */
  if (m->ir_version < 4) {
    nbl_graph_drop_init_inputs(m->graph);
    /* an initializer the file did not list (which IR < 4 requires) gets the
     * type its listing has: its tensor's, as the saver writes it; else the
     * model would change through save and load */
    for (int i = 0; i < m->graph->n_initializers; i++) {
      nbl_value *v = &m->graph->values[m->graph->initializers[i]];
      if (!v->init || v->type.kind != NBL_TYPE_NONE) continue;
      nbl_type_set_tensor(a, &v->type, v->init->dtype, v->init->rank, v->init->dims);
      if (v->type.rank > 0 && !v->type.dims) return oom(c);
    }
  }
  if (mp->n_training_info) {
    m->training = nbl_arena_alloc(a, sizeof(nbl_training_info) * mp->n_training_info);
    if (!m->training) return oom(c);
    m->n_training = (int)mp->n_training_info;
    for (size_t i = 0; i < mp->n_training_info; i++) {
      Onnx__TrainingInfoProto *tp = mp->training_info[i];
      nbl_training_info *ti = &m->training[i];
      /* algorithm and initialization graphs see the main graph's names */
      if (tp->initialization) {
        ti->initialization = nbl_graph_new(m, m->graph, tp->initialization->name);
        if (!ti->initialization) return oom(c);
        st = graph_from_pb(c, tp->initialization, ti->initialization, 1);
        if (st) return st;
      }
      if (tp->algorithm) {
        ti->algorithm = nbl_graph_new(m, m->graph, tp->algorithm->name);
        if (!ti->algorithm) return oom(c);
        st = graph_from_pb(c, tp->algorithm, ti->algorithm, 1);
        if (st) return st;
      }
      st = kv_from_pb(c, tp->initialization_binding, tp->n_initialization_binding,
                      &ti->init_binding, &ti->n_init_binding);
      if (st) return st;
      st = kv_from_pb(c, tp->update_binding, tp->n_update_binding, &ti->update_binding,
                      &ti->n_update_binding);
      if (st) return st;
    }
  }
  if (mp->n_functions) {
    m->functions = nbl_arena_alloc(a, sizeof(nbl_blob) * mp->n_functions);
    if (!m->functions) return oom(c);
    for (size_t i = 0; i < mp->n_functions; i++) {
      st = pack_blob(c, &mp->functions[i]->base, &m->functions[i]);
      if (st) return st;
    }
    m->n_functions = (int)mp->n_functions;
  }
  return NBL_OK;
}

/* Parse + convert + verify. `label` is used in messages and kept as m->path. */
static nbl_status load_mem(const void *data, size_t len, const char *label, const char *base_dir,
                           nbl_model **out) {
  *out = NULL;
  if (len == 0) return nbl_errorf(NBL_ERR_PARSE, "%s: empty file", label);
  Onnx__ModelProto *mp = onnx__model_proto__unpack(NULL, len, data);
  if (!mp)
    return nbl_errorf(NBL_ERR_PARSE, "%s: not a valid ONNX model (protobuf parse failed)", label);
  nbl_model *m = nbl_model_new();
  if (!m) {
    onnx__model_proto__free_unpacked(mp, NULL);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory", label);
  }
  m->path = nbl_arena_strdup(m->arena, label);
  if (base_dir) m->dir = nbl_arena_strdup(m->arena, base_dir);
  load_ctx c = {.m = m, .label = m->path, .ext = {.base_dir = base_dir}, .has_ext = base_dir != NULL};
  nbl_status st = model_from_pb(&c, mp);
  onnx__model_proto__free_unpacked(mp, NULL);
  ext_ctx_clear(&c.ext); /* tensors hold their own references */
  if (!st) st = nbl_model_verify(m);
  if (st) {
    nbl_model_free(m);
    return st;
  }
  *out = m;
  return NBL_OK;
}

nbl_status nbl_model_load_buffer(const void *data, size_t len, const char *name,
                                 const char *base_dir, nbl_model **out) {
  if (!out || (!data && len)) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_model_load_buffer: NULL argument");
  return load_mem(data, len, name ? name : "<buffer>", base_dir, out);
}

nbl_status nbl_model_load(const char *path, nbl_model **out) {
  if (!path || !out) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_model_load: NULL argument");
  *out = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return nbl_errorf(NBL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int err = errno;
    close(fd);
    return nbl_errorf(NBL_ERR_IO, "%s: cannot stat: %s", path, strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return nbl_errorf(NBL_ERR_IO, "%s: not a regular file", path);
  }
  size_t len = (size_t)st.st_size;
  if (len == 0) {
    close(fd);
    return nbl_errorf(NBL_ERR_PARSE, "%s: empty file", path);
  }
  void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
  if (map == MAP_FAILED) {
    int err = errno;
    close(fd);
    return nbl_errorf(NBL_ERR_IO, "%s: cannot map: %s", path, strerror(err));
  }
  close(fd);
  /* folder of the model for external data */
  const char *slash = strrchr(path, '/');
  char *dir;
  if (!slash)
    dir = strdup(".");
  else if (slash == path)
    dir = strdup("/");
  else
    dir = strndup(path, (size_t)(slash - path));
  if (!dir) {
    munmap(map, len);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
  }
  nbl_status s = load_mem(map, len, path, dir, out);
  munmap(map, len);
  free(dir);
  return s;
}
