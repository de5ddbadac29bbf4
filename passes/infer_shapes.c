/* infer_shapes.c - the infer-shapes pass: element types and shapes for every
 * value a node produces.
 *
 * Nodes are visited in topological order; each op's rule reads its inputs'
 * types (and, where the output shape depends on input data, the data when it
 * is constant) and produces its outputs' types. Symbolic dims ("N") pass
 * through unchanged; a dim computed from a symbolic one becomes unknown.
 * Small integer tensors whose elements are known (initializers, Constant
 * nodes, and what Shape/Gather/Slice/Concat/... compute from them) are kept in
 * a per-value side table, so the usual exported Shape -> Gather -> Concat ->
 * Reshape chains resolve. Declared types are kept when more specific; a
 * contradiction between a declared and an inferred type is an error. */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pass.h"

#define MAXR 32 /* highest rank handled; higher ranks stay unknown */
#define MAXK 64 /* longest integer tensor kept in the side table */

/* One inferred tensor type: dt UNDEFINED and rank -1 when unknown. */
typedef struct shp {
  nbl_dtype dt;
  int rank;
  nbl_dim d[MAXR];
} shp;

/* One element of a known small integer tensor: a number, a symbol or unknown. */
enum { K_UNK = 0, K_VAL = 1, K_SYM = 2 };
typedef struct kel {
  int kind;
  int64_t v;
  char *p; /* arena string of the model */
} kel;

/* Known data of a small integer tensor of rank 0 or 1. */
typedef struct kdata {
  int rank;
  int n;
  kel e[MAXK];
} kdata;

#define MAX_UNK_OPS 24

typedef struct pctx {
  nbl_pass_ctx *ctx;
  nbl_model *m;
  int typed, unknown, changed;
  int n_ops;
  const char *ops[MAX_UNK_OPS];
  int more_ops;
} pctx;

typedef struct gctx {
  pctx *p;
  nbl_graph *g;
  kdata **kd; /* per value id, NULL when nothing is known */
  int opset;
  nbl_id node; /* the node being inferred */
} gctx;

static nbl_status infer_graph(pctx *p, nbl_graph *g);

/* ------------------------------------------------------------------ dims */

static nbl_dim dim_val(int64_t v) {
  nbl_dim d = {.value = v};
  return d;
}
static nbl_dim dim_unk(void) {
  nbl_dim d = {.value = -1};
  return d;
}
static bool dknown(nbl_dim d) { return d.value >= 0; }
static bool dsame(nbl_dim a, nbl_dim b) {
  if (dknown(a) || dknown(b)) return a.value == b.value;
  return a.param && b.param && strcmp(a.param, b.param) == 0;
}
/* Two dims that must be equal: the more specific one. */
static nbl_dim dmerge(nbl_dim a, nbl_dim b) {
  if (dknown(a)) return a;
  if (dknown(b)) return b;
  return a.param ? a : b;
}

static void shp_unknown(shp *s, nbl_dtype dt) {
  s->dt = dt;
  s->rank = -1;
}
static void shp_rank(shp *s, nbl_dtype dt, int rank) {
  s->dt = dt;
  s->rank = rank;
  for (int i = 0; i < rank && i < MAXR; i++) s->d[i] = dim_unk();
}

/* Product of dims: known, the one non-1 dim when the rest are 1, else unknown. */
static nbl_dim dprod(const nbl_dim *d, int n) {
  int64_t p = 1;
  int nonknown = -1, n_nonknown = 0;
  for (int i = 0; i < n; i++) {
    if (dknown(d[i])) {
      if (d[i].value != 0 && p > INT64_MAX / d[i].value) return dim_unk();
      p *= d[i].value;
    } else {
      nonknown = i;
      n_nonknown++;
    }
  }
  if (p == 0) return dim_val(0);
  if (n_nonknown == 0) return dim_val(p);
  if (n_nonknown == 1 && p == 1) return d[nonknown];
  return dim_unk();
}

static int norm_axis(int64_t a, int rank) {
  if (a < 0) a += rank;
  return (a < 0 || a >= rank) ? -1 : (int)a;
}

/* ------------------------------------------------------------------ printing */

static void type_str(char *buf, size_t n, nbl_dtype dt, int rank, const nbl_dim *d) {
  size_t k = (size_t)snprintf(buf, n, "%s", dt ? nbl_dtype_name(dt) : "?");
  if (k >= n) return;
  if (rank < 0) {
    snprintf(buf + k, n - k, "[?]");
    return;
  }
  k += (size_t)snprintf(buf + k, n - k, "[");
  for (int i = 0; i < rank && k < n; i++) {
    if (dknown(d[i]))
      k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? "," : "", (long long)d[i].value);
    else if (d[i].param)
      k += (size_t)snprintf(buf + k, n - k, "%s%s", i ? "," : "", d[i].param);
    else
      k += (size_t)snprintf(buf + k, n - k, "%s?", i ? "," : "");
  }
  if (k < n) snprintf(buf + k, n - k, "]");
}

/* ------------------------------------------------------------------ reading inputs */

static const nbl_node *cur(const gctx *c) { return &c->g->nodes[c->node]; }

/* The type of a value captured from an enclosing graph, by name. */
static const nbl_type *outer_type(const nbl_graph *g, const char *name) {
  for (const nbl_graph *p = g->parent; p; p = p->parent) {
    nbl_id v = nbl_graph_find(p, name);
    if (v != NBL_NONE) {
      if (p->values[v].type.kind != NBL_TYPE_NONE || !(p->values[v].flags & NBL_VAL_OUTER))
        return &p->values[v].type;
    }
  }
  return NULL;
}

static void type_to_shp(const nbl_type *t, shp *s) {
  shp_unknown(s, NBL_DT_UNDEFINED);
  if (!t || t->kind != NBL_TYPE_TENSOR) return;
  s->dt = t->elem;
  if (t->rank < 0 || t->rank > MAXR) return;
  s->rank = t->rank;
  for (int i = 0; i < t->rank; i++) {
    s->d[i] = t->dims[i];
    if (s->d[i].value < 0) s->d[i].value = -1;
  }
}

static void value_shp(const gctx *c, nbl_id vid, shp *s) {
  const nbl_value *v = &c->g->values[vid];
  const nbl_type *t = &v->type;
  if (t->kind == NBL_TYPE_NONE && (v->flags & NBL_VAL_OUTER)) t = outer_type(c->g, v->name);
  type_to_shp(t, s);
  if (s->dt == NBL_DT_UNDEFINED && s->rank < 0 && v->init && v->init->rank <= MAXR) {
    s->dt = v->init->dtype;
    s->rank = v->init->rank;
    for (int i = 0; i < s->rank; i++) s->d[i] = dim_val(v->init->dims[i]);
  }
}

/* Input i of the current node; returns false when it is omitted. */
static bool in_shp(const gctx *c, int i, shp *s) {
  const nbl_node *n = cur(c);
  shp_unknown(s, NBL_DT_UNDEFINED);
  if (i >= n->n_inputs || n->inputs[i] == NBL_NONE) return false;
  value_shp(c, n->inputs[i], s);
  return true;
}

static bool has_in(const gctx *c, int i) {
  const nbl_node *n = cur(c);
  return i < n->n_inputs && n->inputs[i] != NBL_NONE;
}

/* The constant tensor behind a value: an initializer or a Constant node's "value". */
static const nbl_tensor *const_tensor(const gctx *c, nbl_id vid) {
  const nbl_value *v = &c->g->values[vid];
  if (v->init) return v->init;
  if (v->producer == NBL_NONE) return NULL;
  const nbl_node *p = &c->g->nodes[v->producer];
  if (strcmp(p->op_type, "Constant") != 0 || p->domain[0]) return NULL;
  const nbl_attr *a = nbl_node_attr(p, "value");
  if (a && a->type == NBL_ATTR_TENSOR && a->t && a->t->data) return a->t;
  return NULL;
}

static bool is_int_dtype(nbl_dtype dt) {
  switch (dt) {
  case NBL_DT_INT64: case NBL_DT_INT32: case NBL_DT_INT16: case NBL_DT_INT8:
  case NBL_DT_UINT64: case NBL_DT_UINT32: case NBL_DT_UINT16: case NBL_DT_UINT8:
    return true;
  default:
    return false;
  }
}

static bool tensor_payload_ok(const nbl_tensor *t, int64_t n) {
  if (n == 0) return true;
  return t->data && t->nbytes >= nbl_dtype_nbytes(t->dtype, n);
}

/* Known integer data of value vid (side table, initializer or Constant). */
static bool get_kd(const gctx *c, nbl_id vid, kdata *out) {
  if (vid == NBL_NONE) return false;
  if (c->kd[vid]) {
    *out = *c->kd[vid];
    return true;
  }
  const nbl_tensor *t = const_tensor(c, vid);
  if (!t || !is_int_dtype(t->dtype) || t->rank > 1) return false;
  int64_t n = nbl_tensor_numel(t);
  if (n < 0 || n > MAXK || !tensor_payload_ok(t, n)) return false;
  out->rank = t->rank;
  out->n = (int)n;
  for (int i = 0; i < n; i++) {
    out->e[i].kind = K_VAL;
    out->e[i].v = nbl_tensor_get_i64(t, i);
    out->e[i].p = NULL;
  }
  return true;
}

/* Known integer data of input i, all elements numbers. */
static bool in_ints(const gctx *c, int i, int64_t *v, int *n) {
  const nbl_node *nd = cur(c);
  if (i >= nd->n_inputs || nd->inputs[i] == NBL_NONE) return false;
  kdata k;
  if (!get_kd(c, nd->inputs[i], &k)) return false;
  for (int j = 0; j < k.n; j++) {
    if (k.e[j].kind != K_VAL) return false;
    v[j] = k.e[j].v;
  }
  *n = k.n;
  return true;
}

/* Known data of input i as kdata (symbols allowed). */
static bool in_kd(const gctx *c, int i, kdata *k) {
  const nbl_node *nd = cur(c);
  if (i >= nd->n_inputs || nd->inputs[i] == NBL_NONE) return false;
  return get_kd(c, nd->inputs[i], k);
}

/* Float data of a constant input (Resize scales). */
static bool in_floats(const gctx *c, int i, double *v, int *n, int max) {
  const nbl_node *nd = cur(c);
  if (i >= nd->n_inputs || nd->inputs[i] == NBL_NONE) return false;
  const nbl_tensor *t = const_tensor(c, nd->inputs[i]);
  if (!t) return false;
  int64_t cnt = nbl_tensor_numel(t);
  if (cnt < 0 || cnt > max || !tensor_payload_ok(t, cnt)) return false;
  for (int j = 0; j < cnt; j++) v[j] = nbl_tensor_get_f64(t, j);
  *n = (int)cnt;
  return true;
}

static bool in_scalar_i64(const gctx *c, int i, int64_t *v) {
  int64_t buf[MAXK];
  int n;
  if (!in_ints(c, i, buf, &n) || n != 1) return false;
  *v = buf[0];
  return true;
}

/* ------------------------------------------------------------------ writing outputs */

static void note_unknown_op(pctx *p, const char *op) {
  for (int i = 0; i < p->n_ops; i++)
    if (strcmp(p->ops[i], op) == 0) return;
  if (p->n_ops < MAX_UNK_OPS)
    p->ops[p->n_ops++] = op;
  else
    p->more_ops = 1;
}

/* Merge the inferred type s into output k of the current node. */
static nbl_status set_out(gctx *c, int k, const shp *s) {
  const nbl_node *n = cur(c);
  if (k >= n->n_outputs || n->outputs[k] == NBL_NONE) return NBL_OK;
  nbl_graph *g = c->g;
  nbl_id vid = n->outputs[k];
  nbl_value *v = &g->values[vid];
  nbl_type *t = &v->type;
  if (s->dt == NBL_DT_UNDEFINED && s->rank < 0) return NBL_OK;
  if (t->kind != NBL_TYPE_NONE && t->kind != NBL_TYPE_TENSOR) return NBL_OK;
  shp old;
  type_to_shp(t, &old);
  bool had = t->kind == NBL_TYPE_TENSOR;
  if (t->kind == NBL_TYPE_TENSOR && t->rank > MAXR) return NBL_OK;
  bool bad = false;
  if (had && old.dt && s->dt && old.dt != s->dt) bad = true;
  if (had && old.rank >= 0 && s->rank >= 0 && old.rank != s->rank) bad = true;
  if (!bad && had && old.rank >= 0 && s->rank >= 0)
    for (int i = 0; i < s->rank; i++)
      if (dknown(old.d[i]) && dknown(s->d[i]) && old.d[i].value != s->d[i].value) bad = true;
  if (bad) {
    char a[256], b[256];
    type_str(a, sizeof a, old.dt, old.rank, old.d);
    type_str(b, sizeof b, s->dt, s->rank, s->d);
    return nbl_errorf(NBL_ERR_INVALID_MODEL,
                      "%s: graph '%s': node '%s' (%s): value '%s' is declared %s but inferred %s",
                      nbl_model_label(c->p->m), g->name, n->name ? n->name : "", n->op_type,
                      v->name, a, b);
  }
  shp r;
  r.dt = old.dt ? old.dt : s->dt;
  r.rank = old.rank >= 0 ? old.rank : s->rank;
  if (old.rank >= 0 && s->rank >= 0) {
    for (int i = 0; i < r.rank; i++) {
      if (dknown(old.d[i]))
        r.d[i] = old.d[i];
      else if (dknown(s->d[i]))
        r.d[i] = s->d[i];
      else
        r.d[i] = old.d[i].param ? old.d[i] : s->d[i];
    }
  } else if (s->rank >= 0) {
    for (int i = 0; i < r.rank; i++) r.d[i] = s->d[i];
  } else {
    for (int i = 0; i < r.rank; i++) r.d[i] = old.d[i];
  }
  bool same = had && r.dt == old.dt && r.rank == old.rank;
  for (int i = 0; same && i < r.rank; i++)
    same = r.d[i].value == old.d[i].value &&
           (r.d[i].param == old.d[i].param ||
            (r.d[i].param && old.d[i].param && !strcmp(r.d[i].param, old.d[i].param)));
  if (same) return NBL_OK;
  nbl_arena *a = g->model->arena;
  nbl_type nt;
  memset(&nt, 0, sizeof nt);
  nt.kind = NBL_TYPE_TENSOR;
  nt.elem = r.dt;
  nt.rank = r.rank;
  nt.denotation = t->denotation;
  if (r.rank > 0) {
    nt.dims = nbl_arena_alloc(a, sizeof(nbl_dim) * (size_t)r.rank);
    if (!nt.dims) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
    for (int i = 0; i < r.rank; i++) {
      nt.dims[i].value = r.d[i].value;
      nt.dims[i].param = r.d[i].param && !dknown(r.d[i]) ? nbl_arena_strdup(a, r.d[i].param) : NULL;
      nt.dims[i].denotation = nbl_arena_strdup(a, r.d[i].denotation);
    }
  }
  v->type = nt;
  c->p->changed++;
  if (!(v->flags & (NBL_VAL_INPUT | NBL_VAL_OUTPUT | NBL_VAL_VALUE_INFO)) && !v->init)
    nbl_graph_add_value_info(g, vid);
  return NBL_OK;
}

/* Record known integer data for output k. */
static nbl_status set_kd(gctx *c, int k, const kdata *d) {
  const nbl_node *n = cur(c);
  if (k >= n->n_outputs || n->outputs[k] == NBL_NONE) return NBL_OK;
  nbl_id v = n->outputs[k];
  if (!c->kd[v]) {
    c->kd[v] = malloc(sizeof(kdata));
    if (!c->kd[v]) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  *c->kd[v] = *d;
  return NBL_OK;
}

static nbl_status set_out_dt(gctx *c, int k, nbl_dtype dt, int rank) {
  shp s;
  shp_rank(&s, dt, rank);
  return set_out(c, k, &s);
}

/* Merge the element types of inputs [from, to): the first known. */
static nbl_dtype in_dtype(const gctx *c, int i) {
  shp s;
  in_shp(c, i, &s);
  return s.dt;
}

/* ------------------------------------------------------------------ broadcasting */

/* numpy broadcast of a and b into o; false when they cannot broadcast. */
static bool bcast(shp *o, const shp *a, const shp *b) {
  if (a->rank < 0 || b->rank < 0) {
    o->rank = -1;
    return true;
  }
  int r = a->rank > b->rank ? a->rank : b->rank;
  o->rank = r;
  for (int i = 0; i < r; i++) {
    int ia = i - (r - a->rank), ib = i - (r - b->rank);
    nbl_dim da = ia >= 0 ? a->d[ia] : dim_val(1), db = ib >= 0 ? b->d[ib] : dim_val(1);
    if (dknown(da) && da.value == 1)
      o->d[i] = db;
    else if (dknown(db) && db.value == 1)
      o->d[i] = da;
    else if (dknown(da) && dknown(db)) {
      if (da.value != db.value) return false;
      o->d[i] = da;
    } else if (dknown(da))
      o->d[i] = da;
    else if (dknown(db))
      o->d[i] = db;
    else if (dsame(da, db))
      o->d[i] = da;
    else
      o->d[i] = dim_unk();
  }
  return true;
}

static nbl_status bcast_err(gctx *c, const shp *a, const shp *b) {
  char x[256], y[256];
  type_str(x, sizeof x, a->dt, a->rank, a->d);
  type_str(y, sizeof y, b->dt, b->rank, b->d);
  const nbl_node *n = cur(c);
  return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: graph '%s': node '%s' (%s): shapes %s and %s do not broadcast",
                    nbl_model_label(c->p->m), c->g->name, n->name ? n->name : "", n->op_type, x, y);
}

/* Broadcast every present input in [from, to); *o gets the result shape. */
static nbl_status bcast_inputs(gctx *c, int from, int to, shp *o) {
  shp acc, s;
  bool first = true;
  shp_unknown(&acc, NBL_DT_UNDEFINED);
  for (int i = from; i < to; i++) {
    if (!in_shp(c, i, &s)) continue;
    if (first) {
      acc = s;
      first = false;
      continue;
    }
    shp r;
    if (!bcast(&r, &acc, &s)) return bcast_err(c, &acc, &s);
    r.dt = acc.dt;
    acc = r;
  }
  *o = acc;
  return NBL_OK;
}

/* ------------------------------------------------------------------ op rules */

static nbl_status op_same(gctx *c) {
  shp s;
  in_shp(c, 0, &s);
  return set_out(c, 0, &s);
}

/* Elementwise on the side table: Add/Sub/Mul/Div of small integer tensors. */
static nbl_status kd_arith(gctx *c, const char *op) {
  kdata a, b, r;
  if (!in_kd(c, 0, &a) || !in_kd(c, 1, &b)) return NBL_OK;
  if (a.n != b.n && a.n != 1 && b.n != 1) return NBL_OK;
  r.n = a.n > b.n ? a.n : b.n;
  r.rank = a.rank > b.rank ? a.rank : b.rank;
  for (int i = 0; i < r.n; i++) {
    kel x = a.e[a.n == 1 ? 0 : i], y = b.e[b.n == 1 ? 0 : i], z = {K_UNK, 0, NULL};
    if (x.kind == K_VAL && y.kind == K_VAL) {
      z.kind = K_VAL;
      if (!strcmp(op, "Add")) z.v = x.v + y.v;
      else if (!strcmp(op, "Sub")) z.v = x.v - y.v;
      else if (!strcmp(op, "Mul")) z.v = x.v * y.v;
      else if (y.v != 0) {
        z.v = x.v / y.v;
      } else
        z.kind = K_UNK;
    } else if (!strcmp(op, "Mul") && y.kind == K_VAL && y.v == 1)
      z = x;
    else if (!strcmp(op, "Mul") && x.kind == K_VAL && x.v == 1)
      z = y;
    else if (!strcmp(op, "Div") && y.kind == K_VAL && y.v == 1)
      z = x;
    else if ((!strcmp(op, "Add") || !strcmp(op, "Sub")) && y.kind == K_VAL && y.v == 0)
      z = x;
    else if (!strcmp(op, "Add") && x.kind == K_VAL && x.v == 0)
      z = y;
    r.e[i] = z;
  }
  return set_kd(c, 0, &r);
}

static nbl_status op_bcast(gctx *c, nbl_dtype out_dt) {
  shp o;
  nbl_status st = bcast_inputs(c, 0, cur(c)->n_inputs, &o);
  if (st) return st;
  if (out_dt) o.dt = out_dt;
  return set_out(c, 0, &o);
}

/* MatMul shape rule (numpy matmul). */
static nbl_status matmul_shape(gctx *c, const shp *a, const shp *b, nbl_dtype dt) {
  shp o;
  if (a->rank < 0 || b->rank < 0 || a->rank == 0 || b->rank == 0) return set_out_dt(c, 0, dt, -1);
  shp A = *a, B = *b;
  bool a1 = A.rank == 1, b1 = B.rank == 1;
  if (a1) {
    A.rank = 2;
    A.d[1] = A.d[0];
    A.d[0] = dim_val(1);
  }
  if (b1) {
    B.rank = 2;
    B.d[1] = dim_val(1);
  }
  if (dknown(A.d[A.rank - 1]) && dknown(B.d[B.rank - 2]) &&
      A.d[A.rank - 1].value != B.d[B.rank - 2].value) {
    shp x = *a, y = *b;
    return bcast_err(c, &x, &y);
  }
  shp ba = A, bb = B;
  ba.rank -= 2;
  bb.rank -= 2;
  if (!bcast(&o, &ba, &bb)) return bcast_err(c, a, b);
  if (o.rank + 2 > MAXR) return set_out_dt(c, 0, dt, -1);
  if (!a1) o.d[o.rank++] = A.d[A.rank - 2];
  if (!b1) o.d[o.rank++] = B.d[B.rank - 1];
  o.dt = dt;
  return set_out(c, 0, &o);
}

static nbl_status op_matmul(gctx *c, int ia, int ib, nbl_dtype dt) {
  shp a, b;
  in_shp(c, ia, &a);
  in_shp(c, ib, &b);
  return matmul_shape(c, &a, &b, dt ? dt : a.dt);
}

static nbl_status op_gemm(gctx *c) {
  shp a, b, o;
  in_shp(c, 0, &a);
  in_shp(c, 1, &b);
  shp_rank(&o, a.dt, 2);
  int ta = (int)nbl_attr_int(cur(c), "transA", 0), tb = (int)nbl_attr_int(cur(c), "transB", 0);
  if (a.rank == 2) o.d[0] = a.d[ta ? 1 : 0];
  if (b.rank == 2) o.d[1] = b.d[tb ? 0 : 1];
  return set_out(c, 0, &o);
}

/* Spatial output sizes of Conv/pooling (and ConvTranspose when transpose). */
static void spatial(gctx *c, const shp *x, int nsp, const int64_t *kernel, bool transpose,
                    bool ceil_mode, nbl_dim *out) {
  const nbl_node *n = cur(c);
  int np = 0, ns = 0, nd = 0, nop = 0, nos = 0;
  const int64_t *pads = nbl_attr_ints(n, "pads", &np);
  const int64_t *strides = nbl_attr_ints(n, "strides", &ns);
  const int64_t *dil = nbl_attr_ints(n, "dilations", &nd);
  const int64_t *opad = nbl_attr_ints(n, "output_padding", &nop);
  const int64_t *oshape = nbl_attr_ints(n, "output_shape", &nos);
  const char *ap = nbl_attr_string(n, "auto_pad", "NOTSET");
  for (int i = 0; i < nsp; i++) {
    nbl_dim in = x->rank == nsp + 2 ? x->d[2 + i] : dim_unk();
    int64_t k = kernel ? kernel[i] : -1;
    int64_t s = ns == nsp ? strides[i] : 1, dl = nd == nsp ? dil[i] : 1;
    int64_t pb = np == 2 * nsp ? pads[i] : 0, pe = np == 2 * nsp ? pads[nsp + i] : 0;
    out[i] = dim_unk();
    if (s <= 0 || dl <= 0) continue;
    if (transpose) {
      if (nos == nsp) {
        out[i] = dim_val(oshape[i]);
        continue;
      }
      if (nos == nsp + 2) {
        out[i] = dim_val(oshape[2 + i]);
        continue;
      }
      if (!dknown(in) || k < 0) continue;
      int64_t op = nop == nsp ? opad[i] : 0;
      if (!strcmp(ap, "SAME_UPPER") || !strcmp(ap, "SAME_LOWER"))
        out[i] = dim_val(in.value * s);
      else if (!strcmp(ap, "VALID"))
        out[i] = dim_val(s * (in.value - 1) + op + (k - 1) * dl + 1);
      else
        out[i] = dim_val(s * (in.value - 1) + op + (k - 1) * dl + 1 - pb - pe);
      continue;
    }
    if (!strcmp(ap, "SAME_UPPER") || !strcmp(ap, "SAME_LOWER")) {
      if (dknown(in))
        out[i] = dim_val((in.value + s - 1) / s);
      else if (s == 1)
        out[i] = in;
      continue;
    }
    if (k < 0) continue;
    int64_t ek = (k - 1) * dl + 1;
    bool valid = !strcmp(ap, "VALID");
    if (valid) pb = pe = 0;
    if (!dknown(in)) {
      if (ek == 1 && s == 1 && pb == 0 && pe == 0) out[i] = in;
      continue;
    }
    int64_t num = in.value + pb + pe - ek;
    if (num < 0) continue;
    int64_t o = ceil_mode ? (num + s - 1) / s + 1 : num / s + 1;
    if (ceil_mode && (o - 1) * s >= in.value + pb) o--;
    out[i] = dim_val(o);
  }
}

/* Conv-like: X at input ix, W at input iw. */
static nbl_status op_conv(gctx *c, int ix, int iw, nbl_dtype dt, bool transpose) {
  shp x, w, o;
  in_shp(c, ix, &x);
  in_shp(c, iw, &w);
  int nk = 0;
  const int64_t *ks = nbl_attr_ints(cur(c), "kernel_shape", &nk);
  int rank = x.rank >= 0 ? x.rank : w.rank;
  if (rank < 3) return set_out_dt(c, 0, dt ? dt : x.dt, rank >= 0 ? rank : -1);
  int nsp = rank - 2;
  int64_t kern[MAXR];
  bool have_k = false;
  if (nk == nsp) {
    memcpy(kern, ks, sizeof(int64_t) * (size_t)nsp);
    have_k = true;
  } else if (w.rank == rank) {
    have_k = true;
    for (int i = 0; i < nsp; i++) kern[i] = dknown(w.d[2 + i]) ? w.d[2 + i].value : -1;
  }
  shp_rank(&o, dt ? dt : x.dt, rank);
  if (x.rank == rank) o.d[0] = x.d[0];
  if (w.rank == rank) {
    if (transpose) {
      int64_t grp = nbl_attr_int(cur(c), "group", 1);
      o.d[1] = dknown(w.d[1]) ? dim_val(w.d[1].value * grp) : (grp == 1 ? w.d[1] : dim_unk());
    } else
      o.d[1] = w.d[0];
  }
  spatial(c, &x, nsp, have_k ? kern : NULL, transpose, false, o.d + 2);
  return set_out(c, 0, &o);
}

static nbl_status op_pool(gctx *c, bool global) {
  shp x, o;
  in_shp(c, 0, &x);
  if (x.rank < 0) return set_out_dt(c, 0, x.dt, -1);
  if (x.rank < 2) return set_out(c, 0, &x);
  o = x;
  int nsp = x.rank - 2;
  if (global) {
    for (int i = 0; i < nsp; i++) o.d[2 + i] = dim_val(1);
  } else {
    int nk = 0;
    const int64_t *ks = nbl_attr_ints(cur(c), "kernel_shape", &nk);
    bool ceil_mode = nbl_attr_int(cur(c), "ceil_mode", 0) != 0;
    spatial(c, &x, nsp, nk == nsp ? ks : NULL, false, ceil_mode, o.d + 2);
  }
  nbl_status st = set_out(c, 0, &o);
  if (st) return st;
  o.dt = NBL_DT_INT64; /* MaxPool Indices */
  return set_out(c, 1, &o);
}

static nbl_status op_reduce(gctx *c, bool axes_input) {
  shp x, o;
  in_shp(c, 0, &x);
  const nbl_node *n = cur(c);
  int64_t keep = nbl_attr_int(n, "keepdims", 1), noop = nbl_attr_int(n, "noop_with_empty_axes", 0);
  int64_t axes[MAXK];
  int na = 0;
  bool known = true;
  if (axes_input) {
    if (has_in(c, 1)) {
      if (!in_ints(c, 1, axes, &na)) known = false;
    }
  } else {
    const int64_t *a = nbl_attr_ints(n, "axes", &na);
    if (na > MAXK) return set_out_dt(c, 0, x.dt, -1);
    if (na) memcpy(axes, a, sizeof(int64_t) * (size_t)na);
  }
  if (x.rank < 0) return set_out_dt(c, 0, x.dt, -1);
  if (!known) return set_out_dt(c, 0, x.dt, keep ? x.rank : -1);
  if (na == 0 && noop) return set_out(c, 0, &x);
  bool red[MAXR] = {false};
  for (int i = 0; i < na; i++) {
    int a = norm_axis(axes[i], x.rank);
    if (a < 0)
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: node '%s' (%s): axis %lld out of range for rank %d",
                        nbl_model_label(c->p->m), n->name, n->op_type, (long long)axes[i], x.rank);
    red[a] = true;
  }
  o.dt = x.dt;
  o.rank = 0;
  for (int i = 0; i < x.rank; i++) {
    bool r = na == 0 || red[i];
    if (!r)
      o.d[o.rank++] = x.d[i];
    else if (keep)
      o.d[o.rank++] = dim_val(1);
  }
  return set_out(c, 0, &o);
}

static nbl_status op_argmax(gctx *c) {
  shp x, o;
  in_shp(c, 0, &x);
  int64_t keep = nbl_attr_int(cur(c), "keepdims", 1);
  if (x.rank < 0) return set_out_dt(c, 0, NBL_DT_INT64, -1);
  int a = norm_axis(nbl_attr_int(cur(c), "axis", 0), x.rank);
  if (a < 0) return set_out_dt(c, 0, NBL_DT_INT64, keep ? x.rank : x.rank - 1);
  o = x;
  o.dt = NBL_DT_INT64;
  if (keep)
    o.d[a] = dim_val(1);
  else {
    for (int i = a; i + 1 < x.rank; i++) o.d[i] = x.d[i + 1];
    o.rank--;
  }
  return set_out(c, 0, &o);
}

/* Reshape: shape from known data, 0 copies (unless allowzero), -1 inferred. */
static nbl_status op_reshape(gctx *c) {
  shp x, sh, o;
  in_shp(c, 0, &x);
  in_shp(c, 1, &sh);
  kdata k;
  if (!in_kd(c, 1, &k)) {
    if (sh.rank == 1 && dknown(sh.d[0]) && sh.d[0].value <= MAXR)
      return set_out_dt(c, 0, x.dt, (int)sh.d[0].value);
    return set_out_dt(c, 0, x.dt, -1);
  }
  if (k.n > MAXR) return set_out_dt(c, 0, x.dt, -1);
  bool allowzero = c->opset >= 14 && nbl_attr_int(cur(c), "allowzero", 0) != 0;
  o.dt = x.dt;
  o.rank = k.n;
  int neg = -1;
  for (int i = 0; i < k.n; i++) {
    kel e = k.e[i];
    if (e.kind == K_VAL && e.v == -1) {
      if (neg >= 0) return nbl_errorf(NBL_ERR_INVALID_MODEL, "node '%s' (Reshape): more than one -1 in the shape", cur(c)->name);
      neg = i;
      o.d[i] = dim_unk();
    } else if (e.kind == K_VAL && e.v == 0 && !allowzero) {
      o.d[i] = (x.rank > i) ? x.d[i] : dim_unk();
    } else if (e.kind == K_VAL && e.v >= 0)
      o.d[i] = dim_val(e.v);
    else if (e.kind == K_SYM) {
      o.d[i] = dim_unk();
      o.d[i].param = e.p;
    } else
      o.d[i] = dim_unk();
  }
  if (neg >= 0 && x.rank >= 0) {
    /* -1 = numel(x) / product(others), cancelling equal symbols */
    int64_t pin = 1, pout = 1;
    const char *sin[MAXR], *sout[MAXR];
    int nin = 0, nout = 0;
    bool ok = true;
    for (int i = 0; i < x.rank && ok; i++) {
      if (dknown(x.d[i])) pin *= x.d[i].value;
      else if (x.d[i].param) sin[nin++] = x.d[i].param;
      else ok = false;
    }
    for (int i = 0; i < o.rank && ok; i++) {
      if (i == neg) continue;
      if (dknown(o.d[i])) pout *= o.d[i].value;
      else if (o.d[i].param) sout[nout++] = o.d[i].param;
      else ok = false;
    }
    for (int i = 0; i < nout && ok; i++) {
      int j;
      for (j = 0; j < nin; j++)
        if (sin[j] && !strcmp(sin[j], sout[i])) break;
      if (j == nin) ok = false;
      else sin[j] = NULL;
    }
    for (int j = 0; j < nin && ok; j++)
      if (sin[j]) ok = false;
    if (ok && pout > 0 && pin % pout == 0) o.d[neg] = dim_val(pin / pout);
  }
  /* one symbol left over: x=[N,C] with known C, shape [-1, C] -> N */
  if (neg >= 0 && !dknown(o.d[neg]) && x.rank >= 0) {
    int64_t pin = 1, pout = 1;
    int nsym = 0;
    nbl_dim sym = dim_unk();
    bool ok = true;
    for (int i = 0; i < x.rank && ok; i++) {
      if (dknown(x.d[i])) pin *= x.d[i].value;
      else if (x.d[i].param && nsym == 0) { sym = x.d[i]; nsym++; }
      else ok = false;
    }
    for (int i = 0; i < o.rank && ok; i++)
      if (i != neg) {
        if (dknown(o.d[i])) pout *= o.d[i].value;
        else ok = false;
      }
    if (ok && nsym == 1 && pin == pout) o.d[neg] = sym;
  }
  return set_out(c, 0, &o);
}

static nbl_status op_flatten(gctx *c) {
  shp x, o;
  in_shp(c, 0, &x);
  if (x.rank < 0) return set_out_dt(c, 0, x.dt, 2);
  int64_t a = nbl_attr_int(cur(c), "axis", 1);
  if (a < 0) a += x.rank;
  if (a < 0 || a > x.rank) return set_out_dt(c, 0, x.dt, 2);
  o.dt = x.dt;
  o.rank = 2;
  o.d[0] = dprod(x.d, (int)a);
  o.d[1] = dprod(x.d + a, x.rank - (int)a);
  return set_out(c, 0, &o);
}

static nbl_status op_transpose(gctx *c) {
  shp x, o;
  in_shp(c, 0, &x);
  if (x.rank < 0) return set_out_dt(c, 0, x.dt, -1);
  int np = 0;
  const int64_t *perm = nbl_attr_ints(cur(c), "perm", &np);
  o.dt = x.dt;
  o.rank = x.rank;
  if (np && np != x.rank)
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "node '%s' (Transpose): perm has %d entries for rank %d",
                      cur(c)->name, np, x.rank);
  for (int i = 0; i < x.rank; i++) {
    int p = np ? norm_axis(perm[i], x.rank) : x.rank - 1 - i;
    o.d[i] = p >= 0 ? x.d[p] : dim_unk();
  }
  return set_out(c, 0, &o);
}

static bool axes_of(gctx *c, int input, int64_t *axes, int *na, bool *present) {
  *present = false;
  *na = 0;
  if (c->opset >= 13) {
    if (!has_in(c, input)) return true;
    *present = true;
    return in_ints(c, input, axes, na);
  }
  int n = 0;
  const int64_t *a = nbl_attr_ints(cur(c), "axes", &n);
  if (n > MAXK) return false;
  if (n) {
    memcpy(axes, a, sizeof(int64_t) * (size_t)n);
    *present = true;
  }
  *na = n;
  return true;
}

static nbl_status op_squeeze(gctx *c) {
  shp x, o;
  in_shp(c, 0, &x);
  int64_t axes[MAXK];
  int na;
  bool present;
  if (!axes_of(c, 1, axes, &na, &present) || x.rank < 0) return set_out_dt(c, 0, x.dt, -1);
  bool sq[MAXR] = {false};
  if (!present) {
    for (int i = 0; i < x.rank; i++) {
      if (!dknown(x.d[i])) return set_out_dt(c, 0, x.dt, -1);
      sq[i] = x.d[i].value == 1;
    }
  }
  for (int i = 0; i < na; i++) {
    int a = norm_axis(axes[i], x.rank);
    if (a < 0) return set_out_dt(c, 0, x.dt, -1);
    sq[a] = true;
  }
  o.dt = x.dt;
  o.rank = 0;
  for (int i = 0; i < x.rank; i++)
    if (!sq[i]) o.d[o.rank++] = x.d[i];
  nbl_status st = set_out(c, 0, &o);
  kdata k;
  if (!st && o.rank == 0 && x.rank == 1 && in_kd(c, 0, &k) && k.n == 1) {
    k.rank = 0;
    st = set_kd(c, 0, &k);
  }
  return st;
}

static nbl_status op_unsqueeze(gctx *c) {
  shp x, o;
  in_shp(c, 0, &x);
  int64_t axes[MAXK];
  int na;
  bool present;
  if (!axes_of(c, 1, axes, &na, &present) || x.rank < 0) {
    if (x.rank >= 0 && c->opset >= 13) {
      shp ax;
      in_shp(c, 1, &ax);
      if (ax.rank == 1 && dknown(ax.d[0])) return set_out_dt(c, 0, x.dt, x.rank + (int)ax.d[0].value);
    }
    return set_out_dt(c, 0, x.dt, -1);
  }
  int r = x.rank + na;
  if (r > MAXR) return set_out_dt(c, 0, x.dt, -1);
  bool ins[MAXR] = {false};
  for (int i = 0; i < na; i++) {
    int a = norm_axis(axes[i], r);
    if (a < 0 || ins[a])
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "node '%s' (Unsqueeze): bad axis %lld for output rank %d",
                        cur(c)->name, (long long)axes[i], r);
    ins[a] = true;
  }
  o.dt = x.dt;
  o.rank = r;
  for (int i = 0, j = 0; i < r; i++) o.d[i] = ins[i] ? dim_val(1) : x.d[j++];
  nbl_status st = set_out(c, 0, &o);
  kdata k;
  if (!st && x.rank == 0 && r == 1 && in_kd(c, 0, &k) && k.n == 1) {
    k.rank = 1;
    st = set_kd(c, 0, &k);
  }
  return st;
}

static nbl_status op_concat(gctx *c) {
  const nbl_node *n = cur(c);
  shp s, o;
  int rank = -1;
  nbl_dtype dt = NBL_DT_UNDEFINED;
  for (int i = 0; i < n->n_inputs; i++) {
    in_shp(c, i, &s);
    if (!dt) dt = s.dt;
    if (s.rank >= 0) rank = s.rank;
  }
  if (rank < 0) return set_out_dt(c, 0, dt, -1);
  int a = norm_axis(nbl_attr_int(n, "axis", 0), rank);
  if (a < 0) return set_out_dt(c, 0, dt, rank);
  shp_rank(&o, dt, rank);
  int64_t sum = 0;
  bool sum_known = true;
  bool first = true;
  for (int i = 0; i < n->n_inputs; i++) {
    if (!in_shp(c, i, &s)) continue;
    if (s.rank < 0) {
      sum_known = false;
      continue;
    }
    if (s.rank != rank)
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "node '%s' (Concat): inputs have ranks %d and %d",
                        n->name, rank, s.rank);
    for (int d = 0; d < rank; d++) {
      if (d == a) {
        if (dknown(s.d[d])) sum += s.d[d].value;
        else sum_known = false;
      } else if (first)
        o.d[d] = s.d[d];
      else {
        if (dknown(o.d[d]) && dknown(s.d[d]) && o.d[d].value != s.d[d].value)
          return bcast_err(c, &o, &s);
        o.d[d] = dmerge(o.d[d], s.d[d]);
      }
    }
    first = false;
  }
  o.d[a] = sum_known ? dim_val(sum) : dim_unk();
  nbl_status st = set_out(c, 0, &o);
  if (st || rank != 1) return st;
  kdata r, k;
  r.rank = 1;
  r.n = 0;
  for (int i = 0; i < n->n_inputs; i++) {
    if (!has_in(c, i)) continue;
    if (!in_kd(c, i, &k) || r.n + k.n > MAXK) return NBL_OK;
    for (int j = 0; j < k.n; j++) r.e[r.n++] = k.e[j];
  }
  return set_kd(c, 0, &r);
}

static nbl_status op_split(gctx *c) {
  const nbl_node *n = cur(c);
  shp x;
  in_shp(c, 0, &x);
  int nout = n->n_outputs;
  if (x.rank < 0) {
    for (int k = 0; k < nout; k++) {
      nbl_status st = set_out_dt(c, k, x.dt, -1);
      if (st) return st;
    }
    return NBL_OK;
  }
  int a = norm_axis(nbl_attr_int(n, "axis", 0), x.rank);
  int64_t sizes[MAXK];
  int ns = 0;
  bool known = true;
  if (c->opset >= 13) {
    if (has_in(c, 1) && !in_ints(c, 1, sizes, &ns)) known = false;
  } else {
    const int64_t *sp = nbl_attr_ints(n, "split", &ns);
    if (ns > MAXK) known = false;
    else if (ns) memcpy(sizes, sp, sizeof(int64_t) * (size_t)ns);
  }
  for (int k = 0; k < nout; k++) {
    shp o = x;
    if (a < 0) {
      shp_rank(&o, x.dt, x.rank);
    } else if (!known) {
      o.d[a] = dim_unk();
    } else if (ns) {
      o.d[a] = k < ns ? dim_val(sizes[k]) : dim_unk();
    } else if (dknown(x.d[a]) && nout > 0) {
      int64_t d = x.d[a].value;
      if (c->opset >= 18) {
        int64_t chunk = (d + nout - 1) / nout;
        int64_t v = k < nout - 1 ? chunk : d - chunk * (nout - 1);
        o.d[a] = dim_val(v < 0 ? 0 : v);
      } else
        o.d[a] = d % nout == 0 ? dim_val(d / nout) : dim_unk();
    } else
      o.d[a] = nout == 1 ? x.d[a] : dim_unk();
    nbl_status st = set_out(c, k, &o);
    if (st) return st;
  }
  return NBL_OK;
}

/* Slice bounds for a dim of size d. Returns the element count and first index. */
static int64_t slice_len(int64_t d, int64_t s, int64_t e, int64_t st, int64_t *first) {
  if (st > 0) {
    if (s < 0) s += d;
    if (s < 0) s = 0;
    if (s > d) s = d;
    if (e < 0) e += d;
    if (e < 0) e = 0;
    if (e > d) e = d;
    *first = s;
    return e > s ? (e - s + st - 1) / st : 0;
  }
  if (s < 0) s += d;
  if (s < 0) s = -1;
  if (s > d - 1) s = d - 1;
  if (e < 0) e += d;
  if (e < -1) e = -1;
  if (e > d - 1) e = d - 1;
  *first = s;
  return s > e ? (s - e + (-st) - 1) / (-st) : 0;
}

static nbl_status op_slice(gctx *c) {
  const nbl_node *n = cur(c);
  shp x, o;
  in_shp(c, 0, &x);
  int64_t starts[MAXK], ends[MAXK], axes[MAXK], steps[MAXK];
  int ns = 0, ne = 0, na = 0, nst = 0;
  bool known = true;
  if (c->opset < 10) {
    const int64_t *p;
    p = nbl_attr_ints(n, "starts", &ns);
    if (ns > MAXK) known = false; else if (ns) memcpy(starts, p, sizeof(int64_t) * (size_t)ns);
    p = nbl_attr_ints(n, "ends", &ne);
    if (ne > MAXK) known = false; else if (ne) memcpy(ends, p, sizeof(int64_t) * (size_t)ne);
    p = nbl_attr_ints(n, "axes", &na);
    if (na > MAXK) known = false; else if (na) memcpy(axes, p, sizeof(int64_t) * (size_t)na);
  } else {
    if (!in_ints(c, 1, starts, &ns) || !in_ints(c, 2, ends, &ne)) known = false;
    if (has_in(c, 3) && !in_ints(c, 3, axes, &na)) known = false;
    if (has_in(c, 4) && !in_ints(c, 4, steps, &nst)) known = false;
  }
  if (x.rank < 0) return set_out_dt(c, 0, x.dt, -1);
  if (!known) {
    /* the sliced axes are unknown; without axes any dim may change */
    if (c->opset >= 10 && has_in(c, 3) && in_ints(c, 3, axes, &na)) {
      o = x;
      for (int i = 0; i < na; i++) {
        int a = norm_axis(axes[i], x.rank);
        if (a >= 0) o.d[a] = dim_unk();
      }
      return set_out(c, 0, &o);
    }
    return set_out_dt(c, 0, x.dt, x.rank);
  }
  if (ns != ne || (na && na != ns) || (nst && nst != ns))
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "node '%s' (Slice): starts/ends/axes/steps lengths differ",
                      n->name);
  o = x;
  int64_t first[MAXR], step[MAXR];
  bool sliced[MAXR] = {false};
  for (int i = 0; i < ns; i++) {
    int a = norm_axis(na ? axes[i] : i, x.rank);
    if (a < 0) return set_out_dt(c, 0, x.dt, x.rank);
    int64_t stp = nst ? steps[i] : 1;
    if (stp == 0)
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "node '%s' (Slice): step 0", n->name);
    sliced[a] = true;
    step[a] = stp;
    if (dknown(x.d[a]))
      o.d[a] = dim_val(slice_len(x.d[a].value, starts[i], ends[i], stp, &first[a]));
    else if (stp == 1 && starts[i] == 0 && ends[i] >= INT32_MAX)
      o.d[a] = x.d[a];
    else
      o.d[a] = dim_unk();
  }
  nbl_status st = set_out(c, 0, &o);
  kdata k, r;
  if (st || x.rank != 1 || !in_kd(c, 0, &k) || !dknown(o.d[0]) || o.d[0].value > MAXK) return st;
  r.rank = 1;
  r.n = (int)o.d[0].value;
  int64_t f = sliced[0] ? first[0] : 0, sp = sliced[0] ? step[0] : 1;
  for (int i = 0; i < r.n; i++) {
    int64_t j = f + i * sp;
    if (j < 0 || j >= k.n) return NBL_OK;
    r.e[i] = k.e[j];
  }
  return set_kd(c, 0, &r);
}

static nbl_status op_gather(gctx *c) {
  shp x, idx, o;
  in_shp(c, 0, &x);
  in_shp(c, 1, &idx);
  if (x.rank < 0 || idx.rank < 0) return set_out_dt(c, 0, x.dt, -1);
  int a = norm_axis(nbl_attr_int(cur(c), "axis", 0), x.rank);
  if (a < 0 || x.rank - 1 + idx.rank > MAXR) return set_out_dt(c, 0, x.dt, -1);
  o.dt = x.dt;
  o.rank = 0;
  for (int i = 0; i < a; i++) o.d[o.rank++] = x.d[i];
  for (int i = 0; i < idx.rank; i++) o.d[o.rank++] = idx.d[i];
  for (int i = a + 1; i < x.rank; i++) o.d[o.rank++] = x.d[i];
  nbl_status st = set_out(c, 0, &o);
  kdata k, ki, r;
  if (st || x.rank != 1 || idx.rank > 1 || !in_kd(c, 0, &k) || !in_kd(c, 1, &ki)) return st;
  r.rank = idx.rank;
  r.n = ki.n;
  for (int i = 0; i < ki.n; i++) {
    if (ki.e[i].kind != K_VAL) return NBL_OK;
    int64_t j = ki.e[i].v < 0 ? ki.e[i].v + k.n : ki.e[i].v;
    if (j < 0 || j >= k.n) return NBL_OK;
    r.e[i] = k.e[j];
  }
  return set_kd(c, 0, &r);
}

static nbl_status op_gathernd(gctx *c) {
  shp x, idx, o;
  in_shp(c, 0, &x);
  in_shp(c, 1, &idx);
  int64_t b = nbl_attr_int(cur(c), "batch_dims", 0);
  if (x.rank < 0 || idx.rank < 1 || !dknown(idx.d[idx.rank - 1])) return set_out_dt(c, 0, x.dt, -1);
  int64_t last = idx.d[idx.rank - 1].value;
  int r = idx.rank - 1 + x.rank - (int)b - (int)last;
  if (r < 0 || r > MAXR || b < 0) return set_out_dt(c, 0, x.dt, -1);
  o.dt = x.dt;
  o.rank = 0;
  for (int i = 0; i < idx.rank - 1; i++) o.d[o.rank++] = idx.d[i];
  for (int i = (int)(b + last); i < x.rank; i++) o.d[o.rank++] = x.d[i];
  return set_out(c, 0, &o);
}

/* Expand / broadcast against a shape given as data. */
static nbl_status op_expand(gctx *c) {
  shp x, t, o, sh;
  in_shp(c, 0, &x);
  kdata k;
  if (!in_kd(c, 1, &k) || k.n > MAXR) {
    in_shp(c, 1, &sh);
    if (x.rank >= 0 && sh.rank == 1 && dknown(sh.d[0])) {
      int r = x.rank > sh.d[0].value ? x.rank : (int)sh.d[0].value;
      return set_out_dt(c, 0, x.dt, r <= MAXR ? r : -1);
    }
    return set_out_dt(c, 0, x.dt, -1);
  }
  t.dt = x.dt;
  t.rank = k.n;
  for (int i = 0; i < k.n; i++) {
    t.d[i] = dim_unk();
    if (k.e[i].kind == K_VAL) t.d[i] = dim_val(k.e[i].v);
    else if (k.e[i].kind == K_SYM) t.d[i].param = k.e[i].p;
  }
  if (!bcast(&o, &x, &t)) return bcast_err(c, &x, &t);
  o.dt = x.dt;
  return set_out(c, 0, &o);
}

static nbl_status op_tile(gctx *c) {
  shp x, o;
  in_shp(c, 0, &x);
  int64_t rep[MAXK];
  int nr;
  if (x.rank < 0) return set_out_dt(c, 0, x.dt, -1);
  if (!in_ints(c, 1, rep, &nr) || nr != x.rank) return set_out_dt(c, 0, x.dt, x.rank);
  o = x;
  for (int i = 0; i < x.rank; i++)
    o.d[i] = dknown(x.d[i]) ? dim_val(x.d[i].value * rep[i]) : rep[i] == 1 ? x.d[i] : dim_unk();
  return set_out(c, 0, &o);
}

static nbl_status op_pad(gctx *c) {
  shp x, o;
  in_shp(c, 0, &x);
  int64_t pads[MAXK], axes[MAXK];
  int np = 0, na = 0;
  if (x.rank < 0) return set_out_dt(c, 0, x.dt, -1);
  bool known = true;
  if (c->opset < 11) {
    const int64_t *p = nbl_attr_ints(cur(c), "pads", &np);
    if (np > MAXK) known = false; else if (np) memcpy(pads, p, sizeof(int64_t) * (size_t)np);
  } else {
    if (!in_ints(c, 1, pads, &np)) known = false;
    if (has_in(c, 3) && !in_ints(c, 3, axes, &na)) known = false;
  }
  if (!known) return set_out_dt(c, 0, x.dt, x.rank);
  if (!na) {
    na = x.rank;
    for (int i = 0; i < na; i++) axes[i] = i;
  }
  if (np != 2 * na)
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "node '%s' (Pad): %d pads for %d axes", cur(c)->name, np, na);
  o = x;
  for (int i = 0; i < na; i++) {
    int a = norm_axis(axes[i], x.rank);
    if (a < 0) return set_out_dt(c, 0, x.dt, x.rank);
    int64_t add = pads[i] + pads[na + i];
    o.d[a] = dknown(x.d[a]) ? dim_val(x.d[a].value + add) : add == 0 ? x.d[a] : dim_unk();
  }
  return set_out(c, 0, &o);
}

static nbl_status op_resize(gctx *c) {
  shp x, o;
  in_shp(c, 0, &x);
  if (x.rank < 0) return set_out_dt(c, 0, x.dt, -1);
  int64_t sizes[MAXK], axes[MAXK];
  double scales[MAXK];
  int nsz = 0, nsc = 0, na = 0;
  const int64_t *ax = nbl_attr_ints(cur(c), "axes", &na);
  if (na > MAXK) return set_out_dt(c, 0, x.dt, x.rank);
  for (int i = 0; i < na; i++) axes[i] = ax[i];
  if (!na) {
    na = x.rank;
    for (int i = 0; i < na; i++) axes[i] = i;
  }
  const char *policy = nbl_attr_string(cur(c), "keep_aspect_ratio_policy", "stretch");
  int iscales = c->opset >= 11 ? 2 : 1, isizes = 3;
  o = x;
  if (c->opset >= 11 && in_ints(c, isizes, sizes, &nsz) && nsz > 0) {
    if (nsz != na || strcmp(policy, "stretch") != 0) return set_out_dt(c, 0, x.dt, x.rank);
    for (int i = 0; i < na; i++) {
      int a = norm_axis(axes[i], x.rank);
      if (a < 0) return set_out_dt(c, 0, x.dt, x.rank);
      o.d[a] = dim_val(sizes[i]);
    }
    return set_out(c, 0, &o);
  }
  if (in_floats(c, iscales, scales, &nsc, MAXK) && nsc > 0) {
    if (nsc != na) return set_out_dt(c, 0, x.dt, x.rank);
    for (int i = 0; i < na; i++) {
      int a = norm_axis(axes[i], x.rank);
      if (a < 0) return set_out_dt(c, 0, x.dt, x.rank);
      if (dknown(x.d[a]))
        o.d[a] = dim_val((int64_t)floor((double)x.d[a].value * scales[i] + 1e-9));
      else
        o.d[a] = scales[i] == 1.0 ? x.d[a] : dim_unk();
    }
    return set_out(c, 0, &o);
  }
  return set_out_dt(c, 0, x.dt, x.rank);
}

static nbl_status op_shape(gctx *c) {
  shp x;
  in_shp(c, 0, &x);
  if (x.rank < 0) return set_out_dt(c, 0, NBL_DT_INT64, 1);
  int64_t s = 0, e = x.rank;
  if (c->opset >= 15) {
    s = nbl_attr_int(cur(c), "start", 0);
    e = nbl_attr_int(cur(c), "end", x.rank);
    if (s < 0) s += x.rank;
    if (e < 0) e += x.rank;
    if (s < 0) s = 0;
    if (s > x.rank) s = x.rank;
    if (e < 0) e = 0;
    if (e > x.rank) e = x.rank;
  }
  int64_t len = e > s ? e - s : 0;
  shp o;
  o.dt = NBL_DT_INT64;
  o.rank = 1;
  o.d[0] = dim_val(len);
  nbl_status st = set_out(c, 0, &o);
  if (st || len > MAXK) return st;
  kdata k;
  k.rank = 1;
  k.n = (int)len;
  for (int i = 0; i < len; i++) {
    nbl_dim d = x.d[s + i];
    k.e[i].kind = dknown(d) ? K_VAL : d.param ? K_SYM : K_UNK;
    k.e[i].v = d.value;
    k.e[i].p = d.param;
  }
  return set_kd(c, 0, &k);
}

static nbl_status op_size(gctx *c) {
  shp x;
  in_shp(c, 0, &x);
  nbl_status st = set_out_dt(c, 0, NBL_DT_INT64, 0);
  if (st || x.rank < 0) return st;
  nbl_dim p = dprod(x.d, x.rank);
  if (!dknown(p)) return NBL_OK;
  kdata k = {.rank = 0, .n = 1};
  k.e[0].kind = K_VAL;
  k.e[0].v = p.value;
  return set_kd(c, 0, &k);
}

static nbl_status op_constant_of_shape(gctx *c) {
  const nbl_attr *a = nbl_node_attr(cur(c), "value");
  nbl_dtype dt = (a && a->type == NBL_ATTR_TENSOR && a->t) ? a->t->dtype : NBL_DT_FLOAT;
  kdata k;
  shp o, sh;
  if (!in_kd(c, 0, &k) || k.n > MAXR) {
    in_shp(c, 0, &sh);
    if (sh.rank == 1 && dknown(sh.d[0]) && sh.d[0].value <= MAXR)
      return set_out_dt(c, 0, dt, (int)sh.d[0].value);
    return set_out_dt(c, 0, dt, -1);
  }
  o.dt = dt;
  o.rank = k.n;
  for (int i = 0; i < k.n; i++) {
    o.d[i] = dim_unk();
    if (k.e[i].kind == K_VAL) o.d[i] = dim_val(k.e[i].v);
    else if (k.e[i].kind == K_SYM) o.d[i].param = k.e[i].p;
  }
  nbl_status st = set_out(c, 0, &o);
  /* a small integer result is known data too */
  if (!st && k.n == 1 && k.e[0].kind == K_VAL && k.e[0].v <= MAXK && is_int_dtype(dt) && a &&
      a->t && tensor_payload_ok(a->t, 1)) {
    kdata r = {.rank = 1, .n = (int)k.e[0].v};
    for (int i = 0; i < r.n; i++) {
      r.e[i].kind = K_VAL;
      r.e[i].v = nbl_tensor_get_i64(a->t, 0);
    }
    st = set_kd(c, 0, &r);
  }
  return st;
}

static nbl_status op_range(gctx *c) {
  nbl_dtype dt = in_dtype(c, 0);
  double s[1], l[1], d[1];
  int n1, n2, n3;
  if (in_floats(c, 0, s, &n1, 1) && in_floats(c, 1, l, &n2, 1) && in_floats(c, 2, d, &n3, 1) &&
      n1 == 1 && n2 == 1 && n3 == 1 && d[0] != 0) {
    double cnt = ceil((l[0] - s[0]) / d[0]);
    if (cnt < 0) cnt = 0;
    shp o;
    o.dt = dt;
    o.rank = 1;
    o.d[0] = dim_val((int64_t)cnt);
    return set_out(c, 0, &o);
  }
  return set_out_dt(c, 0, dt, 1);
}

static nbl_status op_constant(gctx *c) {
  const nbl_node *n = cur(c);
  shp o;
  for (int i = 0; i < n->n_attrs; i++) {
    const nbl_attr *a = &n->attrs[i];
    if (!strcmp(a->name, "value") && a->type == NBL_ATTR_TENSOR && a->t) {
      if (a->t->rank > MAXR) return set_out_dt(c, 0, a->t->dtype, -1);
      o.dt = a->t->dtype;
      o.rank = a->t->rank;
      for (int d = 0; d < o.rank; d++) o.d[d] = dim_val(a->t->dims[d]);
      return set_out(c, 0, &o);
    }
    kdata k = {.rank = 0, .n = 0};
    if (!strcmp(a->name, "value_float")) return set_out_dt(c, 0, NBL_DT_FLOAT, 0);
    if (!strcmp(a->name, "value_string")) return set_out_dt(c, 0, NBL_DT_STRING, 0);
    if (!strcmp(a->name, "value_int")) {
      nbl_status st = set_out_dt(c, 0, NBL_DT_INT64, 0);
      k.n = 1;
      k.e[0].kind = K_VAL;
      k.e[0].v = a->i;
      return st ? st : set_kd(c, 0, &k);
    }
    int len = a->n;
    nbl_dtype dt = !strcmp(a->name, "value_floats") ? NBL_DT_FLOAT
                   : !strcmp(a->name, "value_ints") ? NBL_DT_INT64
                   : !strcmp(a->name, "value_strings") ? NBL_DT_STRING
                   : NBL_DT_UNDEFINED;
    if (!dt) continue;
    o.dt = dt;
    o.rank = 1;
    o.d[0] = dim_val(len);
    nbl_status st = set_out(c, 0, &o);
    if (st || dt != NBL_DT_INT64 || len > MAXK) return st;
    k.rank = 1;
    k.n = len;
    for (int j = 0; j < len; j++) {
      k.e[j].kind = K_VAL;
      k.e[j].v = a->ints[j];
    }
    return set_kd(c, 0, &k);
  }
  return NBL_OK; /* sparse_value: left unknown */
}

static nbl_status op_cast(gctx *c, nbl_dtype to) {
  shp x;
  in_shp(c, 0, &x);
  x.dt = to;
  nbl_status st = set_out(c, 0, &x);
  kdata k;
  if (!st && is_int_dtype(to) && in_kd(c, 0, &k)) st = set_kd(c, 0, &k);
  return st;
}

static nbl_status op_identity(gctx *c) {
  nbl_status st = op_same(c);
  kdata k;
  if (!st && in_kd(c, 0, &k)) st = set_kd(c, 0, &k);
  return st;
}

/* Einsum: letters to dims per operand, "..." broadcast. */
static nbl_status op_einsum(gctx *c) {
  const nbl_node *n = cur(c);
  const char *eq = nbl_attr_string(n, "equation", NULL);
  nbl_dtype dt = in_dtype(c, 0);
  if (!eq) return set_out_dt(c, 0, dt, -1);
  nbl_dim letter[128];
  bool seen[128] = {false};
  int count[128] = {0};
  shp ell;
  ell.rank = -1;
  const char *p = eq;
  int op = 0;
  bool ok = true;
  while (*p && !(p[0] == '-' && p[1] == '>')) {
    shp s;
    in_shp(c, op, &s);
    const char *q = p;
    int nl = 0;
    bool has_ell = false;
    while (*q && *q != ',' && !(q[0] == '-' && q[1] == '>')) {
      if (*q == '.') {
        has_ell = true;
        q += 3;
        continue;
      }
      if (*q != ' ') nl++;
      q++;
    }
    int ne = s.rank >= 0 ? s.rank - nl : -1;
    if (s.rank < 0 || ne < 0) ok = false;
    int di = 0;
    for (const char *r = p; r < q && ok;) {
      if (*r == '.') {
        shp e;
        e.rank = ne;
        for (int i = 0; i < ne; i++) e.d[i] = s.d[di + i];
        if (ell.rank < 0) ell = e;
        else {
          shp m;
          if (!bcast(&m, &ell, &e)) return bcast_err(c, &ell, &e);
          ell = m;
        }
        di += ne;
        r += 3;
        continue;
      }
      unsigned ch = (unsigned char)*r++;
      if (ch == ' ' || ch >= 128) continue;
      nbl_dim d = s.d[di++];
      if (!seen[ch] || (!dknown(letter[ch]) && dknown(d))) letter[ch] = d;
      else if (dknown(letter[ch]) && dknown(d) && letter[ch].value != d.value &&
               d.value != 1 && letter[ch].value != 1)
        return nbl_errorf(NBL_ERR_INVALID_MODEL, "node '%s' (Einsum): label '%c' has sizes %lld and %lld",
                          n->name, ch, (long long)letter[ch].value, (long long)d.value);
      else if (dknown(letter[ch]) && letter[ch].value == 1 && dknown(d))
        letter[ch] = d;
      seen[ch] = true;
      count[ch]++;
    }
    if (!has_ell && ne > 0) ok = false;
    op++;
    p = q;
    if (*p == ',') p++;
  }
  if (!ok) return set_out_dt(c, 0, dt, -1);
  shp o;
  o.dt = dt;
  o.rank = 0;
  if (p[0] == '-') {
    for (p += 2; *p; p++) {
      if (*p == '.') {
        for (int i = 0; i < ell.rank && o.rank < MAXR; i++) o.d[o.rank++] = ell.d[i];
        p += 2;
        continue;
      }
      unsigned ch = (unsigned char)*p;
      if (ch == ' ' || ch >= 128) continue;
      if (!seen[ch] || o.rank >= MAXR) return set_out_dt(c, 0, dt, -1);
      o.d[o.rank++] = letter[ch];
    }
  } else {
    for (int i = 0; i < ell.rank; i++) o.d[o.rank++] = ell.d[i];
    for (int ch = 0; ch < 128; ch++)
      if (seen[ch] && count[ch] == 1 && o.rank < MAXR) o.d[o.rank++] = letter[ch];
  }
  return set_out(c, 0, &o);
}

static nbl_status op_topk(gctx *c) {
  shp x, o;
  in_shp(c, 0, &x);
  int64_t k = -1;
  if (c->opset < 10)
    k = nbl_attr_int(cur(c), "k", -1);
  else if (!in_scalar_i64(c, 1, &k))
    k = -1;
  o = x;
  if (x.rank >= 0) {
    int a = norm_axis(nbl_attr_int(cur(c), "axis", -1), x.rank);
    if (a >= 0) o.d[a] = k >= 0 ? dim_val(k) : dim_unk();
  }
  nbl_status st = set_out(c, 0, &o);
  if (st) return st;
  o.dt = NBL_DT_INT64;
  return set_out(c, 1, &o);
}

static nbl_status op_onehot(gctx *c) {
  shp idx, o;
  in_shp(c, 0, &idx);
  nbl_dtype dt = in_dtype(c, 2);
  if (idx.rank < 0 || idx.rank + 1 > MAXR) return set_out_dt(c, 0, dt, -1);
  int r = idx.rank + 1;
  int a = norm_axis(nbl_attr_int(cur(c), "axis", -1), r);
  double dep[1];
  int nd;
  nbl_dim depth = dim_unk();
  if (in_floats(c, 1, dep, &nd, 1) && nd == 1) depth = dim_val((int64_t)dep[0]);
  if (a < 0) return set_out_dt(c, 0, dt, r);
  o.dt = dt;
  o.rank = r;
  for (int i = 0, j = 0; i < r; i++) o.d[i] = i == a ? depth : idx.d[j++];
  return set_out(c, 0, &o);
}

static nbl_status op_depth_space(gctx *c, bool to_space) {
  shp x, o;
  in_shp(c, 0, &x);
  int64_t b = nbl_attr_int(cur(c), "blocksize", 0);
  if (x.rank != 4 || b <= 0) return set_out_dt(c, 0, x.dt, x.rank == 4 ? 4 : -1);
  o = x;
  if (to_space) {
    o.d[1] = dknown(x.d[1]) ? dim_val(x.d[1].value / (b * b)) : dim_unk();
    for (int i = 2; i < 4; i++) o.d[i] = dknown(x.d[i]) ? dim_val(x.d[i].value * b) : dim_unk();
  } else {
    o.d[1] = dknown(x.d[1]) ? dim_val(x.d[1].value * b * b) : dim_unk();
    for (int i = 2; i < 4; i++) o.d[i] = dknown(x.d[i]) ? dim_val(x.d[i].value / b) : dim_unk();
  }
  return set_out(c, 0, &o);
}

static nbl_status op_batchnorm(gctx *c) {
  nbl_status st = op_same(c);
  if (st) return st;
  shp s;
  if (c->opset >= 14) {
    in_shp(c, 3, &s);
    st = set_out(c, 1, &s);
    if (!st) {
      in_shp(c, 4, &s);
      st = set_out(c, 2, &s);
    }
    return st;
  }
  for (int k = 1; k < 5 && !st; k++) {
    in_shp(c, k < 3 ? k + 2 : 1, &s);
    st = set_out(c, k, &s);
  }
  return st;
}

static nbl_status op_layernorm(gctx *c) {
  nbl_status st = op_same(c);
  if (st) return st;
  shp x;
  in_shp(c, 0, &x);
  nbl_dtype sdt = (nbl_dtype)nbl_attr_int(cur(c), "stash_type", NBL_DT_FLOAT);
  if (x.rank < 0) {
    st = set_out_dt(c, 1, sdt, -1);
    return st ? st : set_out_dt(c, 2, sdt, -1);
  }
  int a = norm_axis(nbl_attr_int(cur(c), "axis", -1), x.rank);
  shp o = x;
  o.dt = sdt;
  if (a >= 0)
    for (int i = a; i < x.rank; i++) o.d[i] = dim_val(1);
  else
    shp_rank(&o, sdt, x.rank);
  st = set_out(c, 1, &o);
  return st ? st : set_out(c, 2, &o);
}

static nbl_status op_quantize(gctx *c) {
  shp x;
  in_shp(c, 0, &x);
  nbl_dtype dt = NBL_DT_UINT8;
  int64_t od = c->opset >= 21 ? nbl_attr_int(cur(c), "output_dtype", 0) : 0;
  if (od) dt = (nbl_dtype)od;
  else if (has_in(c, 2)) dt = in_dtype(c, 2);
  x.dt = dt;
  return set_out(c, 0, &x);
}

static nbl_status op_dequantize(gctx *c) {
  shp x;
  in_shp(c, 0, &x);
  nbl_dtype dt = in_dtype(c, 1);
  x.dt = dt ? dt : NBL_DT_FLOAT;
  return set_out(c, 0, &x);
}

static nbl_status op_dynquant(gctx *c) {
  shp x;
  in_shp(c, 0, &x);
  x.dt = NBL_DT_UINT8;
  nbl_status st = set_out(c, 0, &x);
  if (!st) st = set_out_dt(c, 1, NBL_DT_FLOAT, 0);
  if (!st) st = set_out_dt(c, 2, NBL_DT_UINT8, 0);
  return st;
}

static nbl_status op_nonzero(gctx *c) {
  shp x, o;
  in_shp(c, 0, &x);
  shp_rank(&o, NBL_DT_INT64, 2);
  if (x.rank >= 0) o.d[0] = dim_val(x.rank);
  return set_out(c, 0, &o);
}

/* Merge two graph output types (If branches): unknown where they differ. */
static void merge_branch(shp *a, const shp *b) {
  if (!a->dt) a->dt = b->dt;
  if (a->rank < 0 || b->rank < 0 || a->rank != b->rank) {
    a->rank = -1;
    return;
  }
  for (int i = 0; i < a->rank; i++)
    if (!dsame(a->d[i], b->d[i])) a->d[i] = dim_unk();
}

static const nbl_graph *graph_attr(const nbl_node *n, const char *name) {
  const nbl_attr *a = nbl_node_attr(n, name);
  return a && a->type == NBL_ATTR_GRAPH ? a->g : NULL;
}

static nbl_status op_if(gctx *c) {
  const nbl_node *n = cur(c);
  const nbl_graph *t = graph_attr(n, "then_branch"), *e = graph_attr(n, "else_branch");
  if (!t) return NBL_OK;
  for (int k = 0; k < n->n_outputs && k < t->n_outputs; k++) {
    shp a, b;
    type_to_shp(&t->values[t->outputs[k]].type, &a);
    if (e && k < e->n_outputs) {
      type_to_shp(&e->values[e->outputs[k]].type, &b);
      merge_branch(&a, &b);
    }
    nbl_status st = set_out(c, k, &a);
    if (st) return st;
  }
  return NBL_OK;
}

/* Loop body inputs without a type get (iter int64[], cond bool[], carried from the loop). */
static void loop_seed_body(gctx *c, nbl_graph *body) {
  const nbl_node *n = cur(c);
  nbl_arena *a = body->model->arena;
  for (int i = 0; i < body->n_inputs; i++) {
    nbl_value *v = &body->values[body->inputs[i]];
    if (v->type.kind != NBL_TYPE_NONE) continue;
    if (i == 0) nbl_type_set_tensor(a, &v->type, NBL_DT_INT64, 0, NULL);
    else if (i == 1) nbl_type_set_tensor(a, &v->type, NBL_DT_BOOL, 0, NULL);
    else if (i < n->n_inputs && n->inputs[i] != NBL_NONE) {
      const nbl_value *src = &c->g->values[n->inputs[i]];
      if (src->type.kind == NBL_TYPE_TENSOR) {
        nbl_type_copy(a, &v->type, &src->type);
        v->type.rank = -1; /* the carried shape may change from one iteration to the next */
        v->type.dims = NULL;
      }
    }
  }
}

static nbl_status op_loop(gctx *c) {
  const nbl_node *n = cur(c);
  const nbl_graph *body = graph_attr(n, "body");
  if (!body) return NBL_OK;
  int ncarried = n->n_inputs - 2;
  for (int k = 0; k < n->n_outputs; k++) {
    int bo = k + 1;
    if (bo >= body->n_outputs) break;
    shp s;
    type_to_shp(&body->values[body->outputs[bo]].type, &s);
    if (k < ncarried) {
      shp init;
      in_shp(c, k + 2, &init);
      if (!s.dt) s.dt = init.dt;
      merge_branch(&s, &init);
    } else if (s.rank >= 0 && s.rank < MAXR) {
      memmove(s.d + 1, s.d, sizeof(nbl_dim) * (size_t)s.rank);
      s.d[0] = dim_unk();
      s.rank++;
    } else
      s.rank = -1;
    nbl_status st = set_out(c, k, &s);
    if (st) return st;
  }
  return NBL_OK;
}

/* ------------------------------------------------------------------ op lists */

static const char *const unary_ops[] = {
    "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Sigmoid", "Tanh", "Relu", "Floor", "Ceil",
    "Round", "Sign", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh",
    "Atanh", "Erf", "Softplus", "Softsign", "Elu", "Selu", "LeakyRelu", "HardSigmoid", "HardSwish",
    "ThresholdedRelu", "Celu", "Mish", "Gelu", "Not", "BitwiseNot", "Softmax", "LogSoftmax",
    "Hardmax", "LRN", "Clip", "Shrink", "LpNormalization", "MeanVarianceNormalization",
    "InstanceNormalization", "CumSum", "Trilu", "Dropout",
    "PRelu" /* the slope broadcasts to X (unidirectionally) */, NULL};
static const char *const bcast_ops[] = {"Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min",
                                        "Sum", "Mean", "BitShift", "BitwiseAnd",
                                        "BitwiseOr", "BitwiseXor", NULL};
static const char *const bool_bcast_ops[] = {"And", "Or", "Xor", "Equal", "Less", "Greater",
                                             "LessOrEqual", "GreaterOrEqual", NULL};
static const char *const reduce_ops[] = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin",
                                         "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
                                         "ReduceLogSumExp", "ReduceSumSquare", NULL};

static bool in_list(const char *const *l, const char *s) {
  for (; *l; l++)
    if (!strcmp(*l, s)) return true;
  return false;
}

/* Infer the outputs of node nid; *covered false when the op has no rule. */
static nbl_status infer_node(gctx *c, bool *covered) {
  const nbl_node *n = cur(c);
  const char *op = n->op_type;
  *covered = true;
  if (!strcmp(n->domain, "ai.nibble")) {
    if (!strcmp(op, "QuantizeInt4") || !strcmp(op, "QuantizeLog") || !strcmp(op, "QuantizeTernary"))
      return op_same(c);
    *covered = false;
    return NBL_OK;
  }
  if (n->domain[0] && strcmp(n->domain, "ai.onnx")) {
    *covered = false;
    return NBL_OK;
  }
  if (!strcmp(op, "Neg")) {
    nbl_status st = op_same(c);
    kdata k;
    if (!st && in_kd(c, 0, &k)) {
      for (int i = 0; i < k.n; i++)
        if (k.e[i].kind == K_VAL) k.e[i].v = -k.e[i].v;
        else k.e[i].kind = K_UNK;
      st = set_kd(c, 0, &k);
    }
    return st;
  }
  if (in_list(unary_ops, op)) {
    nbl_status st = op_same(c);
    if (!st && !strcmp(op, "Dropout")) {
      shp s;
      in_shp(c, 0, &s);
      s.dt = NBL_DT_BOOL;
      st = set_out(c, 1, &s);
    }
    return st;
  }
  if (in_list(bcast_ops, op)) {
    nbl_status st = op_bcast(c, NBL_DT_UNDEFINED);
    if (!st && (!strcmp(op, "Add") || !strcmp(op, "Sub") || !strcmp(op, "Mul") || !strcmp(op, "Div")))
      st = kd_arith(c, op);
    return st;
  }
  if (in_list(bool_bcast_ops, op)) return op_bcast(c, NBL_DT_BOOL);
  if (!strcmp(op, "IsNaN") || !strcmp(op, "IsInf")) {
    shp s;
    in_shp(c, 0, &s);
    s.dt = NBL_DT_BOOL;
    return set_out(c, 0, &s);
  }
  if (!strcmp(op, "Where")) {
    shp o;
    nbl_status st = bcast_inputs(c, 0, 3, &o);
    if (st) return st;
    o.dt = in_dtype(c, 1);
    return set_out(c, 0, &o);
  }
  if (in_list(reduce_ops, op))
    return op_reduce(c, c->opset >= 18 || (!strcmp(op, "ReduceSum") && c->opset >= 13));
  if (!strcmp(op, "ArgMax") || !strcmp(op, "ArgMin")) return op_argmax(c);
  if (!strcmp(op, "MatMul")) return op_matmul(c, 0, 1, NBL_DT_UNDEFINED);
  if (!strcmp(op, "MatMulInteger")) return op_matmul(c, 0, 1, NBL_DT_INT32);
  if (!strcmp(op, "QLinearMatMul")) {
    nbl_dtype dt = in_dtype(c, 7);
    return op_matmul(c, 0, 3, dt ? dt : in_dtype(c, 0));
  }
  if (!strcmp(op, "Gemm")) return op_gemm(c);
  if (!strcmp(op, "Conv")) return op_conv(c, 0, 1, NBL_DT_UNDEFINED, false);
  if (!strcmp(op, "ConvInteger")) return op_conv(c, 0, 1, NBL_DT_INT32, false);
  if (!strcmp(op, "QLinearConv")) {
    nbl_dtype dt = in_dtype(c, 7);
    return op_conv(c, 0, 3, dt ? dt : in_dtype(c, 0), false);
  }
  if (!strcmp(op, "ConvTranspose")) return op_conv(c, 0, 1, NBL_DT_UNDEFINED, true);
  if (!strcmp(op, "MaxPool") || !strcmp(op, "AveragePool") || !strcmp(op, "LpPool"))
    return op_pool(c, false);
  if (!strcmp(op, "GlobalMaxPool") || !strcmp(op, "GlobalAveragePool") || !strcmp(op, "GlobalLpPool"))
    return op_pool(c, true);
  if (!strcmp(op, "BatchNormalization")) return op_batchnorm(c);
  if (!strcmp(op, "LayerNormalization")) return op_layernorm(c);
  if (!strcmp(op, "Reshape")) return op_reshape(c);
  if (!strcmp(op, "Flatten")) return op_flatten(c);
  if (!strcmp(op, "Transpose")) return op_transpose(c);
  if (!strcmp(op, "Squeeze")) return op_squeeze(c);
  if (!strcmp(op, "Unsqueeze")) return op_unsqueeze(c);
  if (!strcmp(op, "Concat")) return op_concat(c);
  if (!strcmp(op, "Split")) return op_split(c);
  if (!strcmp(op, "Slice")) return op_slice(c);
  if (!strcmp(op, "Gather")) return op_gather(c);
  if (!strcmp(op, "GatherElements")) {
    shp s;
    in_shp(c, 1, &s);
    s.dt = in_dtype(c, 0);
    return set_out(c, 0, &s);
  }
  if (!strcmp(op, "GatherND")) return op_gathernd(c);
  if (!strcmp(op, "Expand")) return op_expand(c);
  if (!strcmp(op, "Tile")) return op_tile(c);
  if (!strcmp(op, "Pad")) return op_pad(c);
  if (!strcmp(op, "Resize")) return op_resize(c);
  if (!strcmp(op, "Cast")) {
    int64_t to = nbl_attr_int(n, "to", 0);
    if (!nbl_dtype_valid((int)to))
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "node '%s' (Cast): bad 'to' %lld", n->name, (long long)to);
    return op_cast(c, (nbl_dtype)to);
  }
  if (!strcmp(op, "CastLike")) return op_cast(c, in_dtype(c, 1));
  if (!strcmp(op, "Shape")) return op_shape(c);
  if (!strcmp(op, "Size")) return op_size(c);
  if (!strcmp(op, "ConstantOfShape")) return op_constant_of_shape(c);
  if (!strcmp(op, "Range")) return op_range(c);
  if (!strcmp(op, "Constant")) return op_constant(c);
  if (!strcmp(op, "Identity")) return op_identity(c);
  if (!strcmp(op, "Einsum")) return op_einsum(c);
  if (!strcmp(op, "TopK")) return op_topk(c);
  if (!strcmp(op, "NonZero")) return op_nonzero(c);
  if (!strcmp(op, "OneHot")) return op_onehot(c);
  if (!strcmp(op, "QuantizeLinear")) return op_quantize(c);
  if (!strcmp(op, "DequantizeLinear")) return op_dequantize(c);
  if (!strcmp(op, "DynamicQuantizeLinear")) return op_dynquant(c);
  if (!strcmp(op, "DepthToSpace")) return op_depth_space(c, true);
  if (!strcmp(op, "SpaceToDepth")) return op_depth_space(c, false);
  if (!strcmp(op, "If")) return op_if(c);
  if (!strcmp(op, "Loop")) return op_loop(c);
  *covered = false;
  return NBL_OK;
}

/* ------------------------------------------------------------------ driver */

static nbl_status infer_subgraphs(gctx *c) {
  const nbl_node *n = cur(c);
  bool is_loop = !strcmp(n->op_type, "Loop") && !n->domain[0];
  for (int a = 0; a < n->n_attrs; a++) {
    const nbl_attr *at = &n->attrs[a];
    int ng = at->type == NBL_ATTR_GRAPH ? 1 : at->type == NBL_ATTR_GRAPHS ? at->n : 0;
    for (int j = 0; j < ng; j++) {
      nbl_graph *sub = at->type == NBL_ATTR_GRAPH ? at->g : at->graphs[j];
      if (!sub) continue;
      if (is_loop && !strcmp(at->name, "body")) loop_seed_body(c, sub);
      nbl_status st = infer_graph(c->p, sub);
      if (st) return st;
    }
  }
  return NBL_OK;
}

static nbl_status infer_graph(pctx *p, nbl_graph *g) {
  gctx c = {.p = p, .g = g, .opset = (int)nbl_model_opset(p->m, "")};
  c.kd = calloc((size_t)(g->n_values ? g->n_values : 1), sizeof(kdata *));
  if (!c.kd) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  nbl_id *order = NULL;
  int cnt = nbl_graph_topo_order(g, &order);
  nbl_status st = NBL_OK;
  if (cnt < 0) st = NBL_ERR_INVALID_MODEL;
  for (int i = 0; i < cnt && !st; i++) {
    c.node = order[i];
    st = infer_subgraphs(&c);
    if (st) break;
    bool covered;
    st = infer_node(&c, &covered);
    if (st) {
      if (!strstr(nbl_last_error(), "node '")) {
        const nbl_node *n = cur(&c);
        nbl_error_prefix("node '%s' (%s)", n->name ? n->name : "", n->op_type);
      }
      break;
    }
    const nbl_node *n = cur(&c);
    bool unk = false;
    for (int k = 0; k < n->n_outputs; k++) {
      if (n->outputs[k] == NBL_NONE) continue;
      const nbl_type *t = &g->values[n->outputs[k]].type;
      if (t->kind == NBL_TYPE_NONE || (t->kind == NBL_TYPE_TENSOR && !t->elem)) {
        p->unknown++;
        unk = true;
      } else
        p->typed++;
    }
    if (unk) note_unknown_op(p, n->op_type);
  }
  free(order);
  for (int v = 0; v < g->n_values; v++) free(c.kd[v]);
  free(c.kd);
  return st;
}

static nbl_status infer_shapes_run(nbl_pass_ctx *ctx) {
  pctx p = {.ctx = ctx, .m = ctx->model};
  nbl_status st = infer_graph(&p, ctx->model->graph);
  for (int t = 0; !st && t < ctx->model->n_training; t++) {
    nbl_training_info *ti = &ctx->model->training[t];
    if (ti->initialization) st = infer_graph(&p, ti->initialization);
    if (!st && ti->algorithm) st = infer_graph(&p, ti->algorithm);
  }
  if (st) return st;
  ctx->changed = p.changed;
  char ops[512];
  size_t k = 0;
  ops[0] = 0;
  for (int i = 0; i < p.n_ops && k < sizeof ops; i++)
    k += (size_t)snprintf(ops + k, sizeof ops - k, "%s%s", i ? ", " : "", p.ops[i]);
  if (p.more_ops && k < sizeof ops) snprintf(ops + k, sizeof ops - k, ", ...");
  if (p.unknown)
    nbl_pass_logf(ctx, "%d values typed, %d left unknown (ops: %s)", p.typed, p.unknown, ops);
  else
    nbl_pass_logf(ctx, "%d values typed, 0 left unknown", p.typed);
  return NBL_OK;
}

const nbl_pass_def nbl_pass_infer_shapes = {
    .name = "infer-shapes",
    .description = "infer element types and shapes of every value (symbolic dims kept); "
                   "adds them to value_info",
    .run = infer_shapes_run,
};
