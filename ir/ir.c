/* ir.c - core of the IR: errors, arena, dtypes, buffers, tensors, graph building. */
#include "ir.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ errors */

static _Thread_local char err_msg[4096];

const char *nbl_last_error(void) { return err_msg; }

nbl_status nbl_errbuf(char *err, size_t errlen, nbl_status st, const char *fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return st;
}

nbl_status nbl_errorf(nbl_status st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err_msg, sizeof err_msg, fmt, ap);
  va_end(ap);
  return st;
}

void nbl_error_prefix(const char *fmt, ...) {
  char pre[1024], old[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(pre, sizeof pre, fmt, ap);
  va_end(ap);
  snprintf(old, sizeof old, "%s", err_msg);
  snprintf(err_msg, sizeof err_msg, "%s: %s", pre, old);
}

const char *nbl_status_name(nbl_status st) {
  switch (st) {
  case NBL_OK: return "ok";
  case NBL_ERR_INVALID_ARGUMENT: return "invalid-argument";
  case NBL_ERR_IO: return "io";
  case NBL_ERR_PARSE: return "parse";
  case NBL_ERR_INVALID_MODEL: return "invalid-model";
  case NBL_ERR_UNSUPPORTED: return "unsupported";
  case NBL_ERR_OUT_OF_MEMORY: return "out-of-memory";
  case NBL_ERR_RUNTIME: return "runtime";
  case NBL_ERR_MISMATCH: return "mismatch";
  case NBL_ERR_INTERNAL: return "internal";
  case NBL_ERR_TERMINATED: return "terminated";
  }
  return "?";
}

/* ------------------------------------------------------------------ arena */

typedef struct arena_block {
  struct arena_block *next;
  size_t used, cap;
  _Alignas(16) unsigned char mem[];
} arena_block;

struct nbl_arena {
  arena_block *head;
};

nbl_arena *nbl_arena_new(void) { return calloc(1, sizeof(nbl_arena)); }

void nbl_arena_free(nbl_arena *a) {
  if (!a) return;
  arena_block *b = a->head;
  while (b) {
    arena_block *n = b->next;
    free(b);
    b = n;
  }
  free(a);
}

void *nbl_arena_alloc(nbl_arena *a, size_t n) {
  n = (n + 15) & ~(size_t)15;
  if (n == 0) n = 16;
  arena_block *b = a->head;
  if (!b || b->cap - b->used < n) {
    size_t cap = n > 32768 ? n : 32768;
    arena_block *nb = malloc(sizeof(arena_block) + cap);
    if (!nb) return NULL;
    nb->used = 0;
    nb->cap = cap;
    if (b && n > 4096) { /* big one-off: keep the current block in front */
      nb->next = b->next;
      b->next = nb;
    } else {
      nb->next = b;
      a->head = nb;
    }
    b = nb;
  }
  void *p = b->mem + b->used;
  b->used += n;
  memset(p, 0, n);
  return p;
}

char *nbl_arena_strndup(nbl_arena *a, const char *s, size_t n) {
  if (!s) return NULL;
  char *p = nbl_arena_alloc(a, n + 1);
  if (!p) return NULL;
  memcpy(p, s, n);
  p[n] = 0;
  return p;
}

char *nbl_arena_strdup(nbl_arena *a, const char *s) {
  return s ? nbl_arena_strndup(a, s, strlen(s)) : NULL;
}

void *nbl_arena_memdup(nbl_arena *a, const void *p, size_t n) {
  void *q = nbl_arena_alloc(a, n);
  if (q && n) memcpy(q, p, n);
  return q;
}

/* ------------------------------------------------------------------ dtypes */

static const struct {
  const char *name;
  int bits;
} dtype_info[NBL_DT_COUNT_] = {
    [NBL_DT_UNDEFINED] = {"undefined", 0}, [NBL_DT_FLOAT] = {"float", 32},
    [NBL_DT_UINT8] = {"uint8", 8},         [NBL_DT_INT8] = {"int8", 8},
    [NBL_DT_UINT16] = {"uint16", 16},      [NBL_DT_INT16] = {"int16", 16},
    [NBL_DT_INT32] = {"int32", 32},        [NBL_DT_INT64] = {"int64", 64},
    [NBL_DT_STRING] = {"string", 0},       [NBL_DT_BOOL] = {"bool", 8},
    [NBL_DT_FLOAT16] = {"float16", 16},    [NBL_DT_DOUBLE] = {"double", 64},
    [NBL_DT_UINT32] = {"uint32", 32},      [NBL_DT_UINT64] = {"uint64", 64},
    [NBL_DT_COMPLEX64] = {"complex64", 64}, [NBL_DT_COMPLEX128] = {"complex128", 128},
    [NBL_DT_BFLOAT16] = {"bfloat16", 16},  [NBL_DT_FLOAT8E4M3FN] = {"float8e4m3fn", 8},
    [NBL_DT_FLOAT8E4M3FNUZ] = {"float8e4m3fnuz", 8}, [NBL_DT_FLOAT8E5M2] = {"float8e5m2", 8},
    [NBL_DT_FLOAT8E5M2FNUZ] = {"float8e5m2fnuz", 8}, [NBL_DT_UINT4] = {"uint4", 4},
    [NBL_DT_INT4] = {"int4", 4},
};
_Static_assert(NBL_DT_COUNT_ == 23, "dtype table out of date");

bool nbl_dtype_valid(int v) { return v > 0 && v < NBL_DT_COUNT_; }

const char *nbl_dtype_name(nbl_dtype dt) {
  return (dt >= 0 && dt < NBL_DT_COUNT_) ? dtype_info[dt].name : "?";
}

int nbl_dtype_bits(nbl_dtype dt) { return (dt >= 0 && dt < NBL_DT_COUNT_) ? dtype_info[dt].bits : 0; }

size_t nbl_dtype_nbytes(nbl_dtype dt, int64_t n) {
  int bits = nbl_dtype_bits(dt);
  if (n <= 0 || bits == 0) return 0;
  if (bits == 4) return (size_t)((n + 1) / 2);
  return (size_t)n * (size_t)(bits / 8);
}

nbl_dtype nbl_dtype_from_name(const char *name) {
  if (!name) return NBL_DT_UNDEFINED;
  for (int i = 1; i < NBL_DT_COUNT_; i++)
    if (strcmp(dtype_info[i].name, name) == 0) return (nbl_dtype)i;
  return NBL_DT_UNDEFINED;
}

float nbl_half_to_float(uint16_t h) {
  uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 0x1f, m = h & 0x3ff, bits;
  if (e == 0) {
    if (m == 0) {
      bits = s;
    } else { /* subnormal */
      float f = ldexpf((float)m, -24);
      return s ? -f : f;
    }
  } else if (e == 31) {
    bits = s | 0x7f800000u | (m << 13);
  } else {
    bits = s | ((e + 112) << 23) | (m << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

uint16_t nbl_float_to_half(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) /* inf or nan */
    return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 | ((ax >> 13) & 0x3ff) : 0));
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds to >= 65520: inf */
  if (ax < 0x38800000u) { /* subnormal half or zero: round to nearest even in units of 2^-24 */
    float a;
    memcpy(&a, &ax, 4);
    float q = a * 16777216.0f; /* exact scaling */
    uint32_t r = (uint32_t)nearbyintf(q);
    return (uint16_t)(sign | r);
  }
  uint32_t e = (ax >> 23) - 112, m = ax & 0x7fffff;
  uint32_t h = (e << 10) | (m >> 13);
  uint32_t rem = m & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
  return (uint16_t)(sign | h);
}

float nbl_bf16_to_float(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

uint16_t nbl_float_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);
  x += 0x7fff + ((x >> 16) & 1);
  return (uint16_t)(x >> 16);
}

/* ------------------------------------------------------------------ buffers */

static void release_free(void *base, size_t size, void *ctx) {
  (void)size;
  (void)ctx;
  free(base);
}

nbl_buffer *nbl_buffer_new(void *base, size_t size, void (*release)(void *, size_t, void *),
                           void *ctx) {
  nbl_buffer *b = malloc(sizeof *b);
  if (!b) {
    if (release) release(base, size, ctx);
    return NULL;
  }
  b->refcount = 1;
  b->base = base;
  b->size = size;
  b->release = release;
  b->ctx = ctx;
  return b;
}

nbl_buffer *nbl_buffer_from_malloc(void *p, size_t size) {
  return nbl_buffer_new(p, size, release_free, NULL);
}

nbl_buffer *nbl_buffer_ref(nbl_buffer *b) {
  if (b) b->refcount++;
  return b;
}

void nbl_buffer_unref(nbl_buffer *b) {
  if (!b) return;
  if (--b->refcount == 0) {
    if (b->release) b->release(b->base, b->size, b->ctx);
    free(b);
  }
}

/* ------------------------------------------------------------------ tensors */

int64_t nbl_shape_numel(int rank, const int64_t *dims) {
  int64_t n = 1;
  for (int i = 0; i < rank; i++) {
    if (dims[i] < 0) return -1;
    if (dims[i] != 0 && n > INT64_MAX / dims[i]) return -1;
    n *= dims[i];
  }
  return n;
}

int64_t nbl_tensor_numel(const nbl_tensor *t) { return nbl_shape_numel(t->rank, t->dims); }

nbl_status nbl_tensor_check_data(const nbl_tensor *t, int max_rank, int64_t *numel) {
  const char *tn = t->name ? t->name : "";
  if (t->rank < 0 || t->rank > max_rank)
    return nbl_errorf(NBL_ERR_UNSUPPORTED, "tensor '%s': rank %d exceeds the supported maximum %d",
                      tn, t->rank, max_rank);
  int64_t n = nbl_shape_numel(t->rank, t->dims);
  if (n < 0) return nbl_errorf(NBL_ERR_INVALID_MODEL, "tensor '%s': negative or overflowing shape", tn);
  if (t->dtype == NBL_DT_STRING) {
    if (t->n_strings != n)
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "tensor '%s': %lld strings for %lld elements", tn,
                        (long long)t->n_strings, (long long)n);
  } else {
    if (nbl_dtype_bits(t->dtype) == 0)
      return nbl_errorf(NBL_ERR_UNSUPPORTED, "tensor '%s': element type %s is not supported", tn,
                        nbl_dtype_name(t->dtype));
    size_t need = nbl_dtype_nbytes(t->dtype, n);
    if (t->nbytes < need || (need && !t->data))
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "tensor '%s': %zu bytes of data, its shape needs %zu",
                        tn, t->nbytes, need);
  }
  *numel = n;
  return NBL_OK;
}

nbl_status nbl_tensor_dup_strings(const nbl_tensor *t, int64_t numel, char ***out) {
  char **s = calloc((size_t)(numel ? numel : 1), sizeof(char *));
  if (!s) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  for (int64_t i = 0; i < numel; i++) {
    size_t len = t->string_lens ? t->string_lens[i] : strlen(t->strings[i]);
    s[i] = malloc(len + 1);
    if (!s[i]) {
      for (int64_t j = 0; j < i; j++) free(s[j]);
      free(s);
      return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    if (len) memcpy(s[i], t->strings[i], len);
    s[i][len] = 0;
  }
  *out = s;
  return NBL_OK;
}

/* Every buffer a model holds must be released at nbl_model_free; tensors are
 * tracked in a per-model list kept in the arena. */
typedef struct tensor_link {
  struct tensor_link *next;
  nbl_tensor *t;
} tensor_link;

nbl_tensor *nbl_tensor_new_buf(nbl_arena *a, const char *name, nbl_dtype dt, int rank,
                               const int64_t *dims, nbl_buffer *buf, const void *data,
                               size_t nbytes) {
  nbl_tensor *t = nbl_arena_alloc(a, sizeof *t);
  if (!t) {
    nbl_buffer_unref(buf);
    return NULL;
  }
  t->name = nbl_arena_strdup(a, name ? name : "");
  t->dtype = dt;
  t->rank = rank;
  t->dims = rank > 0 ? nbl_arena_memdup(a, dims, sizeof(int64_t) * (size_t)rank) : NULL;
  t->buf = buf;
  t->data = data;
  t->nbytes = nbytes;
  return t;
}

nbl_tensor *nbl_tensor_new(nbl_arena *a, const char *name, nbl_dtype dt, int rank,
                           const int64_t *dims, const void *data) {
  int64_t n = nbl_shape_numel(rank, dims);
  if (n < 0) return NULL;
  size_t nb = nbl_dtype_nbytes(dt, n);
  nbl_buffer *buf = NULL;
  void *p = NULL;
  if (nb) {
    p = malloc(nb);
    if (!p) return NULL;
    if (data)
      memcpy(p, data, nb);
    else
      memset(p, 0, nb);
    buf = nbl_buffer_from_malloc(p, nb);
    if (!buf) return NULL;
  }
  return nbl_tensor_new_buf(a, name, dt, rank, dims, buf, p, nb);
}

double nbl_tensor_get_f64(const nbl_tensor *t, int64_t i) {
  const unsigned char *d = t->data;
  switch (t->dtype) {
  case NBL_DT_FLOAT: { float v; memcpy(&v, d + 4 * i, 4); return v; }
  case NBL_DT_DOUBLE: { double v; memcpy(&v, d + 8 * i, 8); return v; }
  case NBL_DT_FLOAT16: { uint16_t v; memcpy(&v, d + 2 * i, 2); return nbl_half_to_float(v); }
  case NBL_DT_BFLOAT16: { uint16_t v; memcpy(&v, d + 2 * i, 2); return nbl_bf16_to_float(v); }
  case NBL_DT_UINT64: { uint64_t v; memcpy(&v, d + 8 * i, 8); return (double)v; }
  default: return (double)nbl_tensor_get_i64(t, i);
  }
}

int64_t nbl_tensor_get_i64(const nbl_tensor *t, int64_t i) {
  const unsigned char *d = t->data;
  switch (t->dtype) {
  case NBL_DT_UINT8: case NBL_DT_BOOL: return d[i];
  case NBL_DT_INT8: return (int8_t)d[i];
  case NBL_DT_UINT16: { uint16_t v; memcpy(&v, d + 2 * i, 2); return v; }
  case NBL_DT_INT16: { int16_t v; memcpy(&v, d + 2 * i, 2); return v; }
  case NBL_DT_INT32: { int32_t v; memcpy(&v, d + 4 * i, 4); return v; }
  case NBL_DT_UINT32: { uint32_t v; memcpy(&v, d + 4 * i, 4); return v; }
  case NBL_DT_INT64: { int64_t v; memcpy(&v, d + 8 * i, 8); return v; }
  case NBL_DT_UINT64: { uint64_t v; memcpy(&v, d + 8 * i, 8); return (int64_t)v; }
  case NBL_DT_INT4: { int v = (d[i / 2] >> (4 * (i & 1))) & 0xf; return v >= 8 ? v - 16 : v; }
  case NBL_DT_UINT4: return (d[i / 2] >> (4 * (i & 1))) & 0xf;
  case NBL_DT_FLOAT: case NBL_DT_DOUBLE: case NBL_DT_FLOAT16: case NBL_DT_BFLOAT16:
    return (int64_t)nbl_tensor_get_f64(t, i);
  default: return 0;
  }
}

/* ------------------------------------------------------------------ types */

void nbl_type_copy(nbl_arena *a, nbl_type *dst, const nbl_type *src) {
  *dst = *src;
  if (src->rank > 0 && src->dims) {
    dst->dims = nbl_arena_alloc(a, sizeof(nbl_dim) * (size_t)src->rank);
    for (int i = 0; i < src->rank; i++) {
      dst->dims[i].value = src->dims[i].value;
      dst->dims[i].param = nbl_arena_strdup(a, src->dims[i].param);
      dst->dims[i].denotation = nbl_arena_strdup(a, src->dims[i].denotation);
    }
  }
  dst->denotation = nbl_arena_strdup(a, src->denotation);
  if (src->inner) {
    dst->inner = nbl_arena_alloc(a, sizeof(nbl_type));
    nbl_type_copy(a, dst->inner, src->inner);
  }
}

static bool str_eq(const char *a, const char *b) {
  if (!a || !b) return a == b;
  return strcmp(a, b) == 0;
}

bool nbl_type_equal(const nbl_type *x, const nbl_type *y) {
  if (x->kind != y->kind || x->elem != y->elem || x->rank != y->rank) return false;
  if (!str_eq(x->denotation, y->denotation)) return false;
  for (int i = 0; i < x->rank; i++) {
    if (x->dims[i].value != y->dims[i].value) return false;
    if (!str_eq(x->dims[i].param, y->dims[i].param)) return false;
    if (!str_eq(x->dims[i].denotation, y->dims[i].denotation)) return false;
  }
  if (!x->inner || !y->inner) return x->inner == y->inner;
  return nbl_type_equal(x->inner, y->inner);
}

void nbl_type_set_tensor(nbl_arena *a, nbl_type *t, nbl_dtype dt, int rank, const int64_t *dims) {
  memset(t, 0, sizeof *t);
  t->kind = NBL_TYPE_TENSOR;
  t->elem = dt;
  t->rank = rank;
  if (rank > 0) {
    t->dims = nbl_arena_alloc(a, sizeof(nbl_dim) * (size_t)rank);
    for (int i = 0; i < rank; i++) t->dims[i].value = dims ? dims[i] : -1;
  }
}

/* ------------------------------------------------------------------ model */

nbl_model *nbl_model_new(void) {
  nbl_model *m = calloc(1, sizeof *m);
  if (!m) return NULL;
  m->arena = nbl_arena_new();
  if (!m->arena) {
    free(m);
    return NULL;
  }
  m->ir_version = 10;
  m->producer_name = m->producer_version = m->domain = m->doc_string = NULL;
  m->graph = nbl_graph_new(m, NULL, "main");
  if (!m->graph) {
    nbl_model_free(m);
    return NULL;
  }
  return m;
}

static void free_tensor_bufs(nbl_tensor *t) {
  if (t) nbl_buffer_unref(t->buf);
}

/* Drop the buffer references a node's tensor attributes hold. */
static void release_node_tensors(nbl_node *n) {
  for (int k = 0; k < n->n_attrs; k++) {
    nbl_attr *at = &n->attrs[k];
    if (at->type == NBL_ATTR_TENSOR) free_tensor_bufs(at->t);
    if (at->type == NBL_ATTR_TENSORS)
      for (int j = 0; j < at->n; j++) free_tensor_bufs(at->tensors[j]);
  }
  n->n_attrs = 0;
}

static void free_graph_arrays(nbl_graph *g) {
  for (int i = 0; i < g->n_values; i++) {
    free(g->values[i].consumers);
    free_tensor_bufs(g->values[i].init);
  }
  for (int i = 0; i < g->n_nodes; i++) release_node_tensors(&g->nodes[i]);
  free(g->values);
  free(g->nodes);
  free(g->inputs);
  free(g->outputs);
  free(g->initializers);
  free(g->value_infos);
  free(g->index);
}

void nbl_model_free(nbl_model *m) {
  if (!m) return;
  for (nbl_graph *g = m->owned_graphs; g; g = g->next_owned) free_graph_arrays(g);
  nbl_arena_free(m->arena);
  free(m);
}

int64_t nbl_model_opset(const nbl_model *m, const char *domain) {
  if (!domain || strcmp(domain, "ai.onnx") == 0) domain = "";
  for (int i = 0; i < m->n_opsets; i++) {
    const char *d = m->opsets[i].domain ? m->opsets[i].domain : "";
    if (strcmp(d, "ai.onnx") == 0) d = "";
    if (strcmp(d, domain) == 0) return m->opsets[i].version;
  }
  return 0;
}

nbl_status nbl_model_set_opset(nbl_model *m, const char *domain, int64_t version) {
  if (!domain) domain = "";
  for (int i = 0; i < m->n_opsets; i++)
    if (strcmp(m->opsets[i].domain, domain) == 0) {
      m->opsets[i].version = version;
      return NBL_OK;
    }
  nbl_opset *o = nbl_arena_alloc(m->arena, sizeof(nbl_opset) * (size_t)(m->n_opsets + 1));
  if (!o) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  if (m->n_opsets) memcpy(o, m->opsets, sizeof(nbl_opset) * (size_t)m->n_opsets);
  o[m->n_opsets].domain = nbl_arena_strdup(m->arena, domain);
  o[m->n_opsets].version = version;
  m->opsets = o;
  m->n_opsets++;
  return NBL_OK;
}

const char *nbl_model_label(const nbl_model *m) {
  return (m && m->path) ? m->path : "<model>";
}

/* ------------------------------------------------------------------ graphs */

nbl_graph *nbl_graph_new(nbl_model *m, nbl_graph *parent, const char *name) {
  nbl_graph *g = nbl_arena_alloc(m->arena, sizeof *g);
  if (!g) return NULL;
  g->model = m;
  g->parent = parent;
  g->name = nbl_arena_strdup(m->arena, name ? name : "");
  g->next_owned = m->owned_graphs;
  m->owned_graphs = g;
  return g;
}

static uint64_t hash_str(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

static void index_insert(nbl_graph *g, nbl_id v) {
  unsigned mask = (unsigned)g->index_cap - 1;
  unsigned i = (unsigned)hash_str(g->values[v].name) & mask;
  while (g->index[i] != NBL_NONE) i = (i + 1) & mask;
  g->index[i] = v;
}

static bool index_rebuild(nbl_graph *g, int cap) {
  nbl_id *idx = malloc(sizeof(nbl_id) * (size_t)cap);
  if (!idx) return false;
  for (int i = 0; i < cap; i++) idx[i] = NBL_NONE;
  free(g->index);
  g->index = idx;
  g->index_cap = cap;
  for (nbl_id v = 0; v < g->n_values; v++)
    if (!g->values[v].dead) index_insert(g, v);
  return true;
}

nbl_id nbl_graph_find(const nbl_graph *g, const char *name) {
  if (!name || !g->index_cap) return NBL_NONE;
  unsigned mask = (unsigned)g->index_cap - 1;
  unsigned i = (unsigned)hash_str(name) & mask;
  while (g->index[i] != NBL_NONE) {
    nbl_id v = g->index[i];
    if (!g->values[v].dead && strcmp(g->values[v].name, name) == 0) return v;
    i = (i + 1) & mask;
  }
  return NBL_NONE;
}

nbl_status nbl_value_rename(nbl_graph *g, nbl_id v, const char *name) {
  if (nbl_graph_find(g, name) != NBL_NONE)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "graph '%s': cannot rename '%s' to '%s': taken",
                      g->name, g->values[v].name, name);
  g->values[v].name = nbl_arena_strdup(g->model->arena, name);
  index_rebuild(g, g->index_cap);
  return NBL_OK;
}

static bool name_taken_in_scope(const nbl_graph *g, const char *name) {
  for (; g; g = g->parent)
    if (nbl_graph_find(g, name) != NBL_NONE) return true;
  return false;
}

char *nbl_graph_unique_name(nbl_graph *g, const char *hint) {
  char buf[512];
  if (!hint || !*hint) hint = "_v";
  if (!name_taken_in_scope(g, hint)) return nbl_arena_strdup(g->model->arena, hint);
  for (unsigned k = 1;; k++) {
    snprintf(buf, sizeof buf, "%s_%u", hint, k);
    if (!name_taken_in_scope(g, buf)) return nbl_arena_strdup(g->model->arena, buf);
  }
}

nbl_id nbl_graph_add_value(nbl_graph *g, const char *name) {
  char *nm;
  if (!name || !*name) {
    char buf[32];
    snprintf(buf, sizeof buf, "_v%d", g->n_values);
    nm = nbl_graph_unique_name(g, buf);
  } else {
    if (nbl_graph_find(g, name) != NBL_NONE) {
      nbl_errorf(NBL_ERR_INVALID_MODEL, "graph '%s': value name '%s' is defined twice", g->name,
                 name);
      return NBL_NONE;
    }
    nm = nbl_arena_strdup(g->model->arena, name);
  }
  if (!nm) return NBL_NONE;
  if (g->n_values == g->cap_values) {
    int cap = g->cap_values ? 2 * g->cap_values : 16;
    nbl_value *nv = realloc(g->values, sizeof(nbl_value) * (size_t)cap);
    if (!nv) {
      nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
      return NBL_NONE;
    }
    g->values = nv;
    g->cap_values = cap;
  }
  nbl_id id = g->n_values++;
  nbl_value *v = &g->values[id];
  memset(v, 0, sizeof *v);
  v->name = nm;
  v->producer = NBL_NONE;
  v->type.rank = -1;
  if (2 * g->n_values > g->index_cap) {
    if (!index_rebuild(g, g->index_cap ? 2 * g->index_cap : 32)) {
      g->n_values--;
      nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
      return NBL_NONE;
    }
  } else {
    index_insert(g, id);
  }
  return id;
}

static void add_consumer(nbl_graph *g, nbl_id v, nbl_id n) {
  nbl_value *val = &g->values[v];
  if (val->n_consumers == val->cap_consumers) {
    int cap = val->cap_consumers ? 2 * val->cap_consumers : 4;
    nbl_id *c = realloc(val->consumers, sizeof(nbl_id) * (size_t)cap);
    if (!c) return; /* consumer lists are advisory caches; verifier rebuilds use from nodes */
    val->consumers = c;
    val->cap_consumers = cap;
  }
  val->consumers[val->n_consumers++] = n;
}

static void remove_consumer(nbl_graph *g, nbl_id v, nbl_id n) {
  nbl_value *val = &g->values[v];
  for (int i = 0; i < val->n_consumers; i++)
    if (val->consumers[i] == n) {
      memmove(&val->consumers[i], &val->consumers[i + 1],
              sizeof(nbl_id) * (size_t)(val->n_consumers - i - 1));
      val->n_consumers--;
      return;
    }
}

nbl_id nbl_graph_add_node(nbl_graph *g, const char *op_type, const char *domain,
                          const char *name, int n_in, const nbl_id *in, int n_out,
                          const nbl_id *out) {
  nbl_arena *a = g->model->arena;
  for (int i = 0; i < n_out; i++)
    if (out[i] != NBL_NONE && g->values[out[i]].producer != NBL_NONE) {
      nbl_errorf(NBL_ERR_INVALID_MODEL,
                 "graph '%s': node '%s' (%s): output '%s' is already produced by node '%s'",
                 g->name, name ? name : "", op_type, g->values[out[i]].name,
                 g->nodes[g->values[out[i]].producer].name);
      return NBL_NONE;
    }
  if (g->n_nodes == g->cap_nodes) {
    int cap = g->cap_nodes ? 2 * g->cap_nodes : 16;
    nbl_node *nn = realloc(g->nodes, sizeof(nbl_node) * (size_t)cap);
    if (!nn) {
      nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
      return NBL_NONE;
    }
    g->nodes = nn;
    g->cap_nodes = cap;
  }
  nbl_id id = g->n_nodes++;
  nbl_node *n = &g->nodes[id];
  memset(n, 0, sizeof *n);
  n->name = nbl_arena_strdup(a, name ? name : "");
  n->op_type = nbl_arena_strdup(a, op_type);
  n->domain = nbl_arena_strdup(a, domain ? domain : "");
  n->n_inputs = n_in;
  n->inputs = nbl_arena_alloc(a, sizeof(nbl_id) * (size_t)(n_in ? n_in : 1));
  n->n_outputs = n_out;
  n->outputs = nbl_arena_alloc(a, sizeof(nbl_id) * (size_t)(n_out ? n_out : 1));
  for (int i = 0; i < n_in; i++) {
    n->inputs[i] = in[i];
    if (in[i] != NBL_NONE) add_consumer(g, in[i], id);
  }
  for (int i = 0; i < n_out; i++) {
    n->outputs[i] = out[i];
    if (out[i] != NBL_NONE) g->values[out[i]].producer = id;
  }
  return id;
}

void nbl_node_set_input(nbl_graph *g, nbl_id n, int idx, nbl_id v) {
  nbl_node *node = &g->nodes[n];
  if (idx >= node->n_inputs) {
    nbl_id *ni = nbl_arena_alloc(g->model->arena, sizeof(nbl_id) * (size_t)(idx + 1));
    for (int i = 0; i < node->n_inputs; i++) ni[i] = node->inputs[i];
    for (int i = node->n_inputs; i <= idx; i++) ni[i] = NBL_NONE;
    node->inputs = ni;
    node->n_inputs = idx + 1;
  }
  if (node->inputs[idx] != NBL_NONE) remove_consumer(g, node->inputs[idx], n);
  node->inputs[idx] = v;
  if (v != NBL_NONE) add_consumer(g, v, n);
}

void nbl_value_replace_uses(nbl_graph *g, nbl_id from, nbl_id to) {
  nbl_value *f = &g->values[from];
  while (f->n_consumers > 0) {
    nbl_id n = f->consumers[0];
    nbl_node *node = &g->nodes[n];
    bool found = false;
    for (int i = 0; i < node->n_inputs; i++)
      if (node->inputs[i] == from) {
        nbl_node_set_input(g, n, i, to);
        found = true;
        break;
      }
    if (!found) remove_consumer(g, from, n);
    f = &g->values[from];
  }
  for (int i = 0; i < g->n_outputs; i++)
    if (g->outputs[i] == from) {
      g->outputs[i] = to;
      g->values[from].flags &= ~(unsigned)NBL_VAL_OUTPUT;
      g->values[to].flags |= NBL_VAL_OUTPUT;
    }
}

void nbl_node_kill(nbl_graph *g, nbl_id n) {
  nbl_node *node = &g->nodes[n];
  if (node->dead) return;
  for (int i = 0; i < node->n_inputs; i++)
    if (node->inputs[i] != NBL_NONE) remove_consumer(g, node->inputs[i], n);
  for (int i = 0; i < node->n_outputs; i++)
    if (node->outputs[i] != NBL_NONE && g->values[node->outputs[i]].producer == n)
      g->values[node->outputs[i]].producer = NBL_NONE;
  node->dead = true;
}

static bool grow_ids(nbl_id **arr, int *n, int *cap, nbl_id v) {
  if (*n == *cap) {
    int c = *cap ? 2 * *cap : 8;
    nbl_id *p = realloc(*arr, sizeof(nbl_id) * (size_t)c);
    if (!p) return false;
    *arr = p;
    *cap = c;
  }
  (*arr)[(*n)++] = v;
  return true;
}

void nbl_graph_add_input(nbl_graph *g, nbl_id v) {
  if (grow_ids(&g->inputs, &g->n_inputs, &g->cap_inputs, v)) g->values[v].flags |= NBL_VAL_INPUT;
}

int nbl_graph_file_inputs(const nbl_graph *g, nbl_id **ids) {
  const int inits = !g->parent && g->model && g->model->graph == g && g->model->ir_version < 4;
  nbl_id *p = malloc(sizeof(nbl_id) * (size_t)(g->n_inputs + (inits ? g->n_initializers : 0) + 1));
  *ids = p;
  if (!p) return -1;
  int n = 0;
  for (int i = 0; i < g->n_inputs; i++) p[n++] = g->inputs[i];
  for (int i = 0; inits && i < g->n_initializers; i++) {
    const nbl_value *v = &g->values[g->initializers[i]];
    if (!v->dead && v->init && !(v->flags & NBL_VAL_INPUT)) p[n++] = g->initializers[i];
  }
  return n;
}

int nbl_graph_drop_init_inputs(nbl_graph *g) {
  int kept = 0, dropped = 0;
  for (int i = 0; i < g->n_inputs; i++) {
    nbl_value *v = &g->values[g->inputs[i]];
    if (v->init) {
      v->flags &= ~(unsigned)NBL_VAL_INPUT;
      dropped++;
    } else {
      g->inputs[kept++] = g->inputs[i];
    }
  }
  g->n_inputs = kept;
  return dropped;
}

void nbl_graph_add_output(nbl_graph *g, nbl_id v) {
  if (grow_ids(&g->outputs, &g->n_outputs, &g->cap_outputs, v))
    g->values[v].flags |= NBL_VAL_OUTPUT;
}

void nbl_graph_set_initializer(nbl_graph *g, nbl_id v, nbl_tensor *t) {
  nbl_value *val = &g->values[v];
  if (val->init) {
    nbl_buffer_unref(val->init->buf);
    val->init = t;
    return;
  }
  if (grow_ids(&g->initializers, &g->n_initializers, &g->cap_initializers, v)) val->init = t;
}

void nbl_graph_add_value_info(nbl_graph *g, nbl_id v) {
  if (grow_ids(&g->value_infos, &g->n_value_infos, &g->cap_value_infos, v))
    g->values[v].flags |= NBL_VAL_VALUE_INFO;
}

static void remap_list(nbl_id *arr, int *n, const nbl_id *map) {
  int k = 0;
  for (int i = 0; i < *n; i++)
    if (map[arr[i]] != NBL_NONE) arr[k++] = map[arr[i]];
  *n = k;
}

void nbl_graph_compact(nbl_graph *g) {
  nbl_id *vmap = malloc(sizeof(nbl_id) * (size_t)(g->n_values ? g->n_values : 1));
  nbl_id *nmap = malloc(sizeof(nbl_id) * (size_t)(g->n_nodes ? g->n_nodes : 1));
  if (!vmap || !nmap) {
    free(vmap);
    free(nmap);
    return;
  }
  int nv = 0, nn = 0;
  for (int i = 0; i < g->n_values; i++) {
    if (g->values[i].dead) {
      free(g->values[i].consumers);
      nbl_buffer_unref(g->values[i].init ? g->values[i].init->buf : NULL);
      vmap[i] = NBL_NONE;
    } else {
      vmap[i] = nv;
      g->values[nv++] = g->values[i];
    }
  }
  for (int i = 0; i < g->n_nodes; i++) {
    if (g->nodes[i].dead) {
      release_node_tensors(&g->nodes[i]);
      nmap[i] = NBL_NONE;
    } else {
      nmap[i] = nn;
      g->nodes[nn++] = g->nodes[i];
    }
  }
  g->n_values = nv;
  g->n_nodes = nn;
  for (int i = 0; i < nn; i++) {
    nbl_node *n = &g->nodes[i];
    for (int k = 0; k < n->n_inputs; k++)
      if (n->inputs[k] != NBL_NONE) n->inputs[k] = vmap[n->inputs[k]];
    for (int k = 0; k < n->n_outputs; k++)
      if (n->outputs[k] != NBL_NONE) n->outputs[k] = vmap[n->outputs[k]];
  }
  for (int i = 0; i < nv; i++) {
    nbl_value *v = &g->values[i];
    v->producer = v->producer == NBL_NONE ? NBL_NONE : nmap[v->producer];
    int k = 0;
    for (int c = 0; c < v->n_consumers; c++)
      if (nmap[v->consumers[c]] != NBL_NONE) v->consumers[k++] = nmap[v->consumers[c]];
    v->n_consumers = k;
  }
  remap_list(g->inputs, &g->n_inputs, vmap);
  remap_list(g->outputs, &g->n_outputs, vmap);
  remap_list(g->initializers, &g->n_initializers, vmap);
  remap_list(g->value_infos, &g->n_value_infos, vmap);
  index_rebuild(g, g->index_cap ? g->index_cap : 32);
  free(vmap);
  free(nmap);
}

/* ------------------------------------------------------------------ attributes */

const nbl_attr *nbl_node_attr(const nbl_node *n, const char *name) {
  for (int i = 0; i < n->n_attrs; i++)
    if (strcmp(n->attrs[i].name, name) == 0) return &n->attrs[i];
  return NULL;
}

nbl_status nbl_node_attr_typed(const nbl_node *n, const char *name, nbl_attr_type want,
                               const nbl_attr **out, char *err, size_t errlen) {
  const nbl_attr *a = nbl_node_attr(n, name);
  *out = a;
  if (a && a->type != want)
    return nbl_errbuf(err, errlen, NBL_ERR_INVALID_MODEL, "attribute '%s' must be %s, got %s", name,
                      nbl_attr_type_name(want), nbl_attr_type_name(a->type));
  return NBL_OK;
}

int64_t nbl_attr_int(const nbl_node *n, const char *name, int64_t dflt) {
  const nbl_attr *a = nbl_node_attr(n, name);
  return (a && a->type == NBL_ATTR_INT) ? a->i : dflt;
}

float nbl_attr_float(const nbl_node *n, const char *name, float dflt) {
  const nbl_attr *a = nbl_node_attr(n, name);
  if (a && a->type == NBL_ATTR_FLOAT) return a->f;
  if (a && a->type == NBL_ATTR_INT) return (float)a->i;
  return dflt;
}

const char *nbl_attr_string(const nbl_node *n, const char *name, const char *dflt) {
  const nbl_attr *a = nbl_node_attr(n, name);
  return (a && a->type == NBL_ATTR_STRING) ? a->s : dflt;
}

const int64_t *nbl_attr_ints(const nbl_node *n, const char *name, int *count) {
  const nbl_attr *a = nbl_node_attr(n, name);
  if (a && a->type == NBL_ATTR_INTS) {
    *count = a->n;
    return a->ints;
  }
  *count = 0;
  return NULL;
}

const float *nbl_attr_floats(const nbl_node *n, const char *name, int *count) {
  const nbl_attr *a = nbl_node_attr(n, name);
  if (a && a->type == NBL_ATTR_FLOATS) {
    *count = a->n;
    return a->floats;
  }
  *count = 0;
  return NULL;
}

nbl_attr *nbl_node_add_attr(nbl_graph *g, nbl_id nid, const char *name, nbl_attr_type type) {
  nbl_node *n = &g->nodes[nid];
  nbl_arena *a = g->model->arena;
  for (int i = 0; i < n->n_attrs; i++)
    if (strcmp(n->attrs[i].name, name) == 0) {
      memset(&n->attrs[i], 0, sizeof(nbl_attr));
      n->attrs[i].name = nbl_arena_strdup(a, name);
      n->attrs[i].type = type;
      return &n->attrs[i];
    }
  nbl_attr *na = nbl_arena_alloc(a, sizeof(nbl_attr) * (size_t)(n->n_attrs + 1));
  if (!na) return NULL;
  if (n->n_attrs) memcpy(na, n->attrs, sizeof(nbl_attr) * (size_t)n->n_attrs);
  n->attrs = na;
  nbl_attr *at = &na[n->n_attrs++];
  at->name = nbl_arena_strdup(a, name);
  at->type = type;
  return at;
}

void nbl_node_set_attr_int(nbl_graph *g, nbl_id n, const char *name, int64_t v) {
  nbl_attr *a = nbl_node_add_attr(g, n, name, NBL_ATTR_INT);
  if (a) a->i = v;
}

void nbl_node_set_attr_float(nbl_graph *g, nbl_id n, const char *name, float v) {
  nbl_attr *a = nbl_node_add_attr(g, n, name, NBL_ATTR_FLOAT);
  if (a) a->f = v;
}

void nbl_node_set_attr_string(nbl_graph *g, nbl_id n, const char *name, const char *v) {
  nbl_attr *a = nbl_node_add_attr(g, n, name, NBL_ATTR_STRING);
  if (a) {
    a->s = nbl_arena_strdup(g->model->arena, v);
    a->s_len = strlen(v);
  }
}

void nbl_node_set_attr_ints(nbl_graph *g, nbl_id n, const char *name, int count, const int64_t *v) {
  nbl_attr *a = nbl_node_add_attr(g, n, name, NBL_ATTR_INTS);
  if (a) {
    a->n = count;
    a->ints = nbl_arena_memdup(g->model->arena, v, sizeof(int64_t) * (size_t)count);
  }
}

void nbl_node_set_attr_floats(nbl_graph *g, nbl_id n, const char *name, int count, const float *v) {
  nbl_attr *a = nbl_node_add_attr(g, n, name, NBL_ATTR_FLOATS);
  if (a) {
    a->n = count;
    a->floats = nbl_arena_memdup(g->model->arena, v, sizeof(float) * (size_t)count);
  }
}

void nbl_node_set_attr_tensor(nbl_graph *g, nbl_id n, const char *name, nbl_tensor *t) {
  nbl_attr *a = nbl_node_add_attr(g, n, name, NBL_ATTR_TENSOR);
  if (a) a->t = t;
}

void nbl_node_set_attr_graph(nbl_graph *g, nbl_id n, const char *name, nbl_graph *sub) {
  nbl_attr *a = nbl_node_add_attr(g, n, name, NBL_ATTR_GRAPH);
  if (a) a->g = sub;
}

const char *nbl_attr_type_name(nbl_attr_type t) {
  static const char *names[] = {"undefined", "float",  "int",     "string",        "tensor",
                                "graph",     "floats", "ints",    "strings",       "tensors",
                                "graphs",    "sparse_tensor", "sparse_tensors", "type_proto",
                                "type_protos"};
  return (t >= 0 && t <= NBL_ATTR_TYPE_PROTOS) ? names[t] : "?";
}

/* ------------------------------------------------------------------ analysis */

/* Edges "producer -> node" of g from values its subgraphs capture (at any
 * depth) that a live node of g produces. */
typedef struct cap_edges {
  nbl_id *from, *to;
  int n, cap;
  bool oom;
} cap_edges;

static void cap_edge_push(cap_edges *e, nbl_id from, nbl_id to) {
  if (e->n == e->cap) {
    int c = e->cap ? 2 * e->cap : 16;
    nbl_id *f = realloc(e->from, sizeof(nbl_id) * (size_t)c);
    if (!f) {
      e->oom = true;
      return;
    }
    e->from = f;
    nbl_id *t = realloc(e->to, sizeof(nbl_id) * (size_t)c);
    if (!t) {
      e->oom = true;
      return;
    }
    e->to = t;
    e->cap = c;
  }
  e->from[e->n] = from;
  e->to[e->n++] = to;
}

static void cap_edges_of(const nbl_graph *g, const nbl_graph *sub, nbl_id node, cap_edges *e,
                         int depth) {
  if (!sub || depth > 64) return;
  for (int v = 0; v < sub->n_values; v++) {
    const nbl_value *val = &sub->values[v];
    if (val->dead || !(val->flags & NBL_VAL_OUTER)) continue;
    /* the name resolves in g unless a graph between sub and g defines it */
    const nbl_graph *p = sub->parent;
    while (p && p != g) {
      nbl_id pv = nbl_graph_find(p, val->name);
      if (pv != NBL_NONE && !(p->values[pv].flags & NBL_VAL_OUTER)) break;
      p = p->parent;
    }
    if (p != g) continue;
    nbl_id gv = nbl_graph_find(g, val->name);
    if (gv == NBL_NONE) continue;
    nbl_id prod = g->values[gv].producer;
    if (prod != NBL_NONE && prod != node && !g->nodes[prod].dead) cap_edge_push(e, prod, node);
  }
  for (int i = 0; i < sub->n_nodes; i++) {
    const nbl_node *n = &sub->nodes[i];
    if (n->dead) continue;
    for (int a = 0; a < n->n_attrs; a++) {
      if (n->attrs[a].type == NBL_ATTR_GRAPH) cap_edges_of(g, n->attrs[a].g, node, e, depth + 1);
      if (n->attrs[a].type == NBL_ATTR_GRAPHS)
        for (int k = 0; k < n->attrs[a].n; k++) cap_edges_of(g, n->attrs[a].graphs[k], node, e, depth + 1);
    }
  }
}

int nbl_graph_topo_order(const nbl_graph *g, nbl_id **order) {
  int nn = g->n_nodes;
  nbl_id *out = malloc(sizeof(nbl_id) * (size_t)(nn ? nn : 1));
  int *indeg = calloc((size_t)(nn ? nn : 1), sizeof(int));
  nbl_id *queue = malloc(sizeof(nbl_id) * (size_t)(nn ? nn : 1));
  /* a node with subgraphs also waits for the producers of the values they
   * capture (a capture is an input the node's input list does not show) */
  cap_edges ce = {0};
  for (int i = 0; i < nn; i++) {
    const nbl_node *n = &g->nodes[i];
    if (n->dead) continue;
    for (int a = 0; a < n->n_attrs; a++) {
      if (n->attrs[a].type == NBL_ATTR_GRAPH) cap_edges_of(g, n->attrs[a].g, i, &ce, 0);
      if (n->attrs[a].type == NBL_ATTR_GRAPHS)
        for (int k = 0; k < n->attrs[a].n; k++) cap_edges_of(g, n->attrs[a].graphs[k], i, &ce, 0);
    }
  }
  /* the capture edges by producer: cap_start[p] .. cap_start[p + 1] in cap_to */
  int *cap_start = calloc((size_t)nn + 1, sizeof(int));
  nbl_id *cap_to = malloc(sizeof(nbl_id) * (size_t)(ce.n ? ce.n : 1));
  if (!out || !indeg || !queue || ce.oom || !cap_start || !cap_to) {
    free(out);
    free(indeg);
    free(queue);
    free(ce.from);
    free(ce.to);
    free(cap_start);
    free(cap_to);
    nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
    return -1;
  }
  for (int k = 0; k < ce.n; k++) cap_start[ce.from[k] + 1]++;
  for (int i = 0; i < nn; i++) cap_start[i + 1] += cap_start[i];
  for (int k = 0; k < ce.n; k++) {
    int pos = cap_start[ce.from[k]]++;
    cap_to[pos] = ce.to[k];
    indeg[ce.to[k]]++;
  }
  for (int i = nn; i > 0; i--) cap_start[i] = cap_start[i - 1];
  cap_start[0] = 0;
  free(ce.from);
  free(ce.to);
  int live = 0;
  for (int i = 0; i < nn; i++) {
    const nbl_node *n = &g->nodes[i];
    if (n->dead) continue;
    live++;
    for (int k = 0; k < n->n_inputs; k++) {
      nbl_id v = n->inputs[k];
      if (v != NBL_NONE && g->values[v].producer != NBL_NONE &&
          !g->nodes[g->values[v].producer].dead)
        indeg[i]++;
    }
  }
  int qh = 0, qt = 0, cnt = 0;
  for (int i = 0; i < nn; i++)
    if (!g->nodes[i].dead && indeg[i] == 0) queue[qt++] = i;
  while (qh < qt) {
    nbl_id i = queue[qh++];
    out[cnt++] = i;
    const nbl_node *n = &g->nodes[i];
    for (int k = 0; k < n->n_outputs; k++) {
      nbl_id v = n->outputs[k];
      if (v == NBL_NONE) continue;
      const nbl_value *val = &g->values[v];
      for (int c = 0; c < val->n_consumers; c++) {
        nbl_id cn = val->consumers[c];
        if (!g->nodes[cn].dead && --indeg[cn] == 0) queue[qt++] = cn;
      }
    }
    for (int k = cap_start[i]; k < cap_start[i + 1]; k++)
      if (--indeg[cap_to[k]] == 0) queue[qt++] = cap_to[k];
  }
  free(cap_start);
  free(cap_to);
  if (cnt != live) {
    for (int i = 0; i < nn; i++)
      if (!g->nodes[i].dead && indeg[i] > 0) {
        nbl_errorf(NBL_ERR_INVALID_MODEL, "graph '%s': node '%s' (%s) is on a cycle", g->name,
                   g->nodes[i].name, g->nodes[i].op_type);
        break;
      }
    free(out);
    free(indeg);
    free(queue);
    return -1;
  }
  free(indeg);
  free(queue);
  *order = out;
  return cnt;
}
