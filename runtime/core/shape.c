/* shape.c - the machinery shape rules call (runtime/core/shape.h): reading
 * input types and known data, merging inferred types into outputs,
 * broadcasting, window (convolution / pooling) geometry and the rules shared
 * by several op families. */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/shape.h"

#define MAXR NBL_SHP_MAXR
#define MAXK NBL_SHP_MAXK

/* ------------------------------------------------------------------ dims */

bool nbl_dim_same(nbl_dim a, nbl_dim b) {
  if (nbl_dim_known(a) || nbl_dim_known(b)) return a.value == b.value;
  return a.param && b.param && strcmp(a.param, b.param) == 0;
}

nbl_dim nbl_dim_merge(nbl_dim a, nbl_dim b) {
  if (nbl_dim_known(a)) return a;
  if (nbl_dim_known(b)) return b;
  return a.param ? a : b;
}

nbl_dim nbl_dim_prod(const nbl_dim *d, int n) {
  int64_t p = 1;
  int nonknown = -1, n_nonknown = 0;
  for (int i = 0; i < n; i++) {
    if (nbl_dim_known(d[i])) {
      if (d[i].value != 0 && p > INT64_MAX / d[i].value) return nbl_dim_unk();
      p *= d[i].value;
    } else {
      nonknown = i;
      n_nonknown++;
    }
  }
  if (p == 0) return nbl_dim_val(0);
  if (n_nonknown == 0) return nbl_dim_val(p);
  if (n_nonknown == 1 && p == 1) return d[nonknown];
  return nbl_dim_unk();
}

void nbl_shp_unknown(nbl_shp *s, nbl_dtype dt) {
  s->dt = dt;
  s->rank = -1;
}

void nbl_shp_rank(nbl_shp *s, nbl_dtype dt, int rank) {
  s->dt = dt;
  s->rank = rank;
  for (int i = 0; i < rank && i < MAXR; i++) s->d[i] = nbl_dim_unk();
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
    if (nbl_dim_known(d[i]))
      k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? "," : "", (long long)d[i].value);
    else if (d[i].param)
      k += (size_t)snprintf(buf + k, n - k, "%s%s", i ? "," : "", d[i].param);
    else
      k += (size_t)snprintf(buf + k, n - k, "%s?", i ? "," : "");
  }
  if (k < n) snprintf(buf + k, n - k, "]");
}

const char *nbl_shp_str(char *buf, size_t n, const nbl_shp *s) {
  type_str(buf, n, s->dt, s->rank, s->d);
  return buf;
}

/* ------------------------------------------------------------------ reading inputs */

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

void nbl_shp_from_type(const nbl_type *t, nbl_shp *s) {
  nbl_shp_unknown(s, NBL_DT_UNDEFINED);
  if (!t || t->kind != NBL_TYPE_TENSOR) return;
  s->dt = t->elem;
  if (t->rank < 0 || t->rank > MAXR) return;
  s->rank = t->rank;
  for (int i = 0; i < t->rank; i++) {
    s->d[i] = t->dims[i];
    if (s->d[i].value < 0) s->d[i].value = -1;
  }
}

static void value_shp(const nbl_shape_ctx *c, nbl_id vid, nbl_shp *s) {
  const nbl_value *v = &c->graph->values[vid];
  const nbl_type *t = &v->type;
  if (t->kind == NBL_TYPE_NONE && (v->flags & NBL_VAL_OUTER)) t = outer_type(c->graph, v->name);
  nbl_shp_from_type(t, s);
  if (s->dt == NBL_DT_UNDEFINED && s->rank < 0 && v->init && v->init->rank <= MAXR) {
    s->dt = v->init->dtype;
    s->rank = v->init->rank;
    for (int i = 0; i < s->rank; i++) s->d[i] = nbl_dim_val(v->init->dims[i]);
  }
}

bool nbl_shp_in(const nbl_shape_ctx *c, int i, nbl_shp *s) {
  const nbl_node *n = c->node;
  nbl_shp_unknown(s, NBL_DT_UNDEFINED);
  if (i >= n->n_inputs || n->inputs[i] == NBL_NONE) return false;
  value_shp(c, n->inputs[i], s);
  return true;
}

bool nbl_shp_has_in(const nbl_shape_ctx *c, int i) {
  const nbl_node *n = c->node;
  return i < n->n_inputs && n->inputs[i] != NBL_NONE;
}

nbl_dtype nbl_shp_in_dtype(const nbl_shape_ctx *c, int i) {
  nbl_shp s;
  nbl_shp_in(c, i, &s);
  return s.dt;
}

/* The constant tensor behind a value: an initializer or a Constant node's "value". */
static const nbl_tensor *const_tensor(const nbl_shape_ctx *c, nbl_id vid) {
  const nbl_value *v = &c->graph->values[vid];
  if (v->init) return v->init;
  if (v->producer == NBL_NONE) return NULL;
  const nbl_node *p = &c->graph->nodes[v->producer];
  if (strcmp(p->op_type, "Constant") != 0 || p->domain[0]) return NULL;
  const nbl_attr *a = nbl_node_attr(p, "value");
  if (a && a->type == NBL_ATTR_TENSOR && a->t && a->t->data) return a->t;
  return NULL;
}

const nbl_tensor *nbl_shp_in_const(const nbl_shape_ctx *c, int i) {
  if (!nbl_shp_has_in(c, i)) return NULL;
  return const_tensor(c, c->node->inputs[i]);
}

bool nbl_shp_is_int(nbl_dtype dt) {
  switch (dt) {
  case NBL_DT_INT64: case NBL_DT_INT32: case NBL_DT_INT16: case NBL_DT_INT8:
  case NBL_DT_UINT64: case NBL_DT_UINT32: case NBL_DT_UINT16: case NBL_DT_UINT8:
    return true;
  default:
    return false;
  }
}

bool nbl_shp_payload_ok(const nbl_tensor *t, int64_t n) {
  if (n == 0) return true;
  return t->data && t->nbytes >= nbl_dtype_nbytes(t->dtype, n);
}

/* Known integer data of value vid (side table, initializer or Constant). */
static bool get_kd(const nbl_shape_ctx *c, nbl_id vid, nbl_kdata *out) {
  if (vid == NBL_NONE) return false;
  if (c->kd[vid]) {
    *out = *c->kd[vid];
    return true;
  }
  const nbl_tensor *t = const_tensor(c, vid);
  if (!t || !nbl_shp_is_int(t->dtype) || t->rank > 1) return false;
  int64_t n = nbl_tensor_numel(t);
  if (n < 0 || n > MAXK || !nbl_shp_payload_ok(t, n)) return false;
  out->rank = t->rank;
  out->n = (int)n;
  for (int i = 0; i < n; i++) {
    out->e[i].kind = NBL_KD_VAL;
    out->e[i].v = nbl_tensor_get_i64(t, i);
    out->e[i].p = NULL;
  }
  return true;
}

bool nbl_shp_in_ints(const nbl_shape_ctx *c, int i, int64_t *v, int *n) {
  const nbl_node *nd = c->node;
  if (i >= nd->n_inputs || nd->inputs[i] == NBL_NONE) return false;
  nbl_kdata k;
  if (!get_kd(c, nd->inputs[i], &k)) return false;
  for (int j = 0; j < k.n; j++) {
    if (k.e[j].kind != NBL_KD_VAL) return false;
    v[j] = k.e[j].v;
  }
  *n = k.n;
  return true;
}

bool nbl_shp_in_kd(const nbl_shape_ctx *c, int i, nbl_kdata *k) {
  const nbl_node *nd = c->node;
  if (i >= nd->n_inputs || nd->inputs[i] == NBL_NONE) return false;
  return get_kd(c, nd->inputs[i], k);
}

bool nbl_shp_in_floats(const nbl_shape_ctx *c, int i, double *v, int *n, int max) {
  const nbl_tensor *t = nbl_shp_in_const(c, i);
  if (!t) return false;
  int64_t cnt = nbl_tensor_numel(t);
  if (cnt < 0 || cnt > max || !nbl_shp_payload_ok(t, cnt)) return false;
  for (int j = 0; j < cnt; j++) v[j] = nbl_tensor_get_f64(t, j);
  *n = (int)cnt;
  return true;
}

bool nbl_shp_in_scalar_i64(const nbl_shape_ctx *c, int i, int64_t *v) {
  int64_t buf[MAXK];
  int n;
  if (!nbl_shp_in_ints(c, i, buf, &n) || n != 1) return false;
  *v = buf[0];
  return true;
}

nbl_status nbl_shp_subgraphs(nbl_shape_ctx *c) {
  const nbl_node *n = c->node;
  c->subgraphs_done = true;
  for (int a = 0; a < n->n_attrs; a++) {
    const nbl_attr *at = &n->attrs[a];
    int ng = at->type == NBL_ATTR_GRAPH ? 1 : at->type == NBL_ATTR_GRAPHS ? at->n : 0;
    for (int j = 0; j < ng; j++) {
      nbl_graph *sub = at->type == NBL_ATTR_GRAPH ? at->g : at->graphs[j];
      if (!sub) continue;
      nbl_status st = c->infer_graph(c->driver, sub);
      if (st) return st;
    }
  }
  return NBL_OK;
}

/* ------------------------------------------------------------------ writing outputs */

/* The IR type of r (dims and symbols copied into arena a). */
static nbl_status shp_to_type(nbl_arena *a, const nbl_shp *r, char *denotation, nbl_type *nt) {
  memset(nt, 0, sizeof *nt);
  nt->kind = NBL_TYPE_TENSOR;
  nt->elem = r->dt;
  nt->rank = r->rank;
  nt->denotation = denotation;
  if (r->rank > 0) {
    nt->dims = nbl_arena_alloc(a, sizeof(nbl_dim) * (size_t)r->rank);
    if (!nt->dims) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
    for (int i = 0; i < r->rank; i++) {
      nt->dims[i].value = r->d[i].value;
      nt->dims[i].param =
          r->d[i].param && !nbl_dim_known(r->d[i]) ? nbl_arena_strdup(a, r->d[i].param) : NULL;
      nt->dims[i].denotation = nbl_arena_strdup(a, r->d[i].denotation);
    }
  }
  return NBL_OK;
}

nbl_status nbl_shp_seed(nbl_shape_ctx *c, nbl_graph *g, nbl_id v, const nbl_shp *s) {
  nbl_value *val = &g->values[v];
  if (val->type.kind != NBL_TYPE_NONE || !s->dt) return NBL_OK;
  nbl_type nt;
  if (shp_to_type(c->model->arena, s, NULL, &nt)) return NBL_ERR_OUT_OF_MEMORY;
  val->type = nt;
  return NBL_OK;
}

nbl_status nbl_shp_set(nbl_shape_ctx *c, int k, const nbl_shp *s) {
  const nbl_node *n = c->node;
  if (k >= n->n_outputs || n->outputs[k] == NBL_NONE) return NBL_OK;
  nbl_graph *g = c->graph;
  nbl_id vid = n->outputs[k];
  nbl_value *v = &g->values[vid];
  nbl_type *t = &v->type;
  if (s->dt == NBL_DT_UNDEFINED && s->rank < 0) return NBL_OK;
  if (t->kind != NBL_TYPE_NONE && t->kind != NBL_TYPE_TENSOR) return NBL_OK;
  nbl_shp old;
  nbl_shp_from_type(t, &old);
  bool had = t->kind == NBL_TYPE_TENSOR;
  if (t->kind == NBL_TYPE_TENSOR && t->rank > MAXR) return NBL_OK;
  bool bad = false;
  if (had && old.dt && s->dt && old.dt != s->dt) bad = true;
  if (had && old.rank >= 0 && s->rank >= 0 && old.rank != s->rank) bad = true;
  if (!bad && had && old.rank >= 0 && s->rank >= 0)
    for (int i = 0; i < s->rank; i++)
      if (nbl_dim_known(old.d[i]) && nbl_dim_known(s->d[i]) && old.d[i].value != s->d[i].value)
        bad = true;
  if (bad) {
    char a[256], b[256];
    type_str(a, sizeof a, old.dt, old.rank, old.d);
    type_str(b, sizeof b, s->dt, s->rank, s->d);
    return nbl_errorf(NBL_ERR_INVALID_MODEL,
                      "%s: graph '%s': node '%s' (%s): value '%s' is declared %s but inferred %s",
                      nbl_model_label(c->model), g->name, n->name ? n->name : "", n->op_type,
                      v->name, a, b);
  }
  nbl_shp r;
  r.dt = old.dt ? old.dt : s->dt;
  r.rank = old.rank >= 0 ? old.rank : s->rank;
  if (old.rank >= 0 && s->rank >= 0) {
    for (int i = 0; i < r.rank; i++) {
      if (nbl_dim_known(old.d[i]))
        r.d[i] = old.d[i];
      else if (nbl_dim_known(s->d[i]))
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
  nbl_type nt;
  if (shp_to_type(g->model->arena, &r, t->denotation, &nt)) return NBL_ERR_OUT_OF_MEMORY;
  v->type = nt;
  (*c->changed)++;
  if (!(v->flags & (NBL_VAL_INPUT | NBL_VAL_OUTPUT | NBL_VAL_VALUE_INFO)) && !v->init)
    nbl_graph_add_value_info(g, vid);
  return NBL_OK;
}

const nbl_type *nbl_shp_in_type(const nbl_shape_ctx *c, int i) {
  const nbl_node *n = c->node;
  if (i >= n->n_inputs || n->inputs[i] == NBL_NONE) return NULL;
  const nbl_type *t = &c->graph->values[n->inputs[i]].type;
  return t->kind == NBL_TYPE_NONE ? NULL : t;
}

nbl_status nbl_shp_set_type(nbl_shape_ctx *c, int k, const nbl_type *t) {
  const nbl_node *n = c->node;
  if (!t || t->kind == NBL_TYPE_NONE || k >= n->n_outputs || n->outputs[k] == NBL_NONE) return NBL_OK;
  if (t->kind == NBL_TYPE_TENSOR) {
    nbl_shp s;
    nbl_shp_from_type(t, &s);
    return nbl_shp_set(c, k, &s);
  }
  nbl_graph *g = c->graph;
  nbl_id vid = n->outputs[k];
  nbl_value *v = &g->values[vid];
  if (v->type.kind != NBL_TYPE_NONE) {
    if (v->type.kind == t->kind) return NBL_OK; /* declared: kept */
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: graph '%s': node '%s' (%s): value '%s' is declared a %s but is a %s",
                      nbl_model_label(c->model), g->name, n->name ? n->name : "", n->op_type, v->name,
                      v->type.kind == NBL_TYPE_TENSOR ? "tensor" : v->type.kind == NBL_TYPE_SEQUENCE ? "sequence" : "non-tensor",
                      t->kind == NBL_TYPE_SEQUENCE ? "sequence" : "optional");
  }
  nbl_type_copy(g->model->arena, &v->type, t);
  (*c->changed)++;
  if (!(v->flags & (NBL_VAL_INPUT | NBL_VAL_OUTPUT | NBL_VAL_VALUE_INFO)) && !v->init)
    nbl_graph_add_value_info(g, vid);
  return NBL_OK;
}

nbl_status nbl_shp_set_seq(nbl_shape_ctx *c, int k, nbl_type_kind kind, int inner_seq, const nbl_shp *elem) {
  nbl_arena *a = c->graph->model->arena;
  nbl_type el, mid, t;
  memset(&el, 0, sizeof el);
  if (elem && (elem->dt != NBL_DT_UNDEFINED || elem->rank >= 0)) {
    if (shp_to_type(a, elem, NULL, &el)) return NBL_ERR_OUT_OF_MEMORY;
  } else {
    el.kind = NBL_TYPE_TENSOR;
    el.rank = -1;
  }
  memset(&t, 0, sizeof t);
  t.kind = kind;
  t.rank = -1;
  t.inner = &el;
  if (kind == NBL_TYPE_OPTIONAL && inner_seq) {
    memset(&mid, 0, sizeof mid);
    mid.kind = NBL_TYPE_SEQUENCE;
    mid.rank = -1;
    mid.inner = &el;
    t.inner = &mid;
  }
  return nbl_shp_set_type(c, k, &t); /* (copied into the arena) */
}

nbl_status nbl_shp_set_kd(nbl_shape_ctx *c, int k, const nbl_kdata *d) {
  const nbl_node *n = c->node;
  if (k >= n->n_outputs || n->outputs[k] == NBL_NONE) return NBL_OK;
  nbl_id v = n->outputs[k];
  if (!c->kd[v]) {
    c->kd[v] = malloc(sizeof(nbl_kdata));
    if (!c->kd[v]) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  *c->kd[v] = *d;
  return NBL_OK;
}

nbl_status nbl_shp_set_dt(nbl_shape_ctx *c, int k, nbl_dtype dt, int rank) {
  nbl_shp s;
  nbl_shp_rank(&s, dt, rank);
  return nbl_shp_set(c, k, &s);
}

nbl_status nbl_shp_err(nbl_shape_ctx *c, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return nbl_errorf(NBL_ERR_INVALID_MODEL, "node '%s' (%s): %s", c->node->name ? c->node->name : "",
                    c->node->op_type, msg);
}

/* ------------------------------------------------------------------ broadcasting */

bool nbl_shp_bcast(nbl_shp *o, const nbl_shp *a, const nbl_shp *b) {
  if (a->rank < 0 || b->rank < 0) {
    o->rank = -1;
    return true;
  }
  int r = a->rank > b->rank ? a->rank : b->rank;
  o->rank = r;
  for (int i = 0; i < r; i++) {
    int ia = i - (r - a->rank), ib = i - (r - b->rank);
    nbl_dim da = ia >= 0 ? a->d[ia] : nbl_dim_val(1), db = ib >= 0 ? b->d[ib] : nbl_dim_val(1);
    if (nbl_dim_known(da) && da.value == 1)
      o->d[i] = db;
    else if (nbl_dim_known(db) && db.value == 1)
      o->d[i] = da;
    else if (nbl_dim_known(da) && nbl_dim_known(db)) {
      if (da.value != db.value) return false;
      o->d[i] = da;
    } else if (nbl_dim_known(da))
      o->d[i] = da;
    else if (nbl_dim_known(db))
      o->d[i] = db;
    else if (nbl_dim_same(da, db))
      o->d[i] = da;
    else
      o->d[i] = nbl_dim_unk();
  }
  return true;
}

nbl_status nbl_shp_bcast_err(nbl_shape_ctx *c, const nbl_shp *a, const nbl_shp *b) {
  char x[256], y[256];
  type_str(x, sizeof x, a->dt, a->rank, a->d);
  type_str(y, sizeof y, b->dt, b->rank, b->d);
  const nbl_node *n = c->node;
  return nbl_errorf(NBL_ERR_INVALID_MODEL,
                    "%s: graph '%s': node '%s' (%s): shapes %s and %s do not broadcast",
                    nbl_model_label(c->model), c->graph->name, n->name ? n->name : "", n->op_type,
                    x, y);
}

nbl_status nbl_shp_bcast_inputs(nbl_shape_ctx *c, int from, int to, nbl_shp *o) {
  nbl_shp acc, s;
  bool first = true;
  nbl_shp_unknown(&acc, NBL_DT_UNDEFINED);
  for (int i = from; i < to; i++) {
    if (!nbl_shp_in(c, i, &s)) continue;
    if (first) {
      acc = s;
      first = false;
      continue;
    }
    nbl_shp r;
    if (!nbl_shp_bcast(&r, &acc, &s)) return nbl_shp_bcast_err(c, &acc, &s);
    r.dt = acc.dt;
    acc = r;
  }
  *o = acc;
  return NBL_OK;
}

/* ------------------------------------------------------------------ shared rules */

nbl_status nbl_shape_same(nbl_shape_ctx *c) {
  nbl_shp s;
  nbl_shp_in(c, 0, &s);
  return nbl_shp_set(c, 0, &s);
}

nbl_status nbl_shp_copy_in(nbl_shape_ctx *c, int k, int i) {
  nbl_shp s;
  if (!nbl_shp_in(c, i, &s)) return NBL_OK;
  return nbl_shp_set(c, k, &s);
}

nbl_status nbl_shp_from_data(nbl_shape_ctx *c, int k, int i, int dt_from) {
  nbl_dtype dt = nbl_shp_in_dtype(c, dt_from);
  nbl_kdata kd;
  if (nbl_shp_in_kd(c, i, &kd) && kd.rank == 1 && kd.n <= NBL_SHP_MAXR) {
    nbl_shp t;
    t.dt = dt;
    t.rank = kd.n;
    for (int j = 0; j < kd.n; j++) {
      t.d[j] = nbl_dim_unk();
      if (kd.e[j].kind == NBL_KD_VAL && kd.e[j].v >= 0) t.d[j] = nbl_dim_val(kd.e[j].v);
      else if (kd.e[j].kind == NBL_KD_SYM) t.d[j].param = kd.e[j].p;
    }
    return nbl_shp_set(c, k, &t);
  }
  nbl_shp sh;
  nbl_shp_in(c, i, &sh);
  int rank = sh.rank == 1 && nbl_dim_known(sh.d[0]) && sh.d[0].value <= NBL_SHP_MAXR
                 ? (int)sh.d[0].value
                 : -1;
  return nbl_shp_set_dt(c, k, dt, rank);
}

nbl_status nbl_shape_bcast(nbl_shape_ctx *c) {
  nbl_shp o;
  nbl_status st = nbl_shp_bcast_inputs(c, 0, c->node->n_inputs, &o);
  return st ? st : nbl_shp_set(c, 0, &o);
}

nbl_status nbl_shape_bcast_bool(nbl_shape_ctx *c) {
  nbl_shp o;
  nbl_status st = nbl_shp_bcast_inputs(c, 0, c->node->n_inputs, &o);
  if (st) return st;
  o.dt = NBL_DT_BOOL;
  return nbl_shp_set(c, 0, &o);
}

nbl_status nbl_shape_matmul(nbl_shape_ctx *c, int ia, int ib, nbl_dtype dt) {
  nbl_shp a, b, o;
  nbl_shp_in(c, ia, &a);
  nbl_shp_in(c, ib, &b);
  if (!dt) dt = a.dt;
  if (a.rank < 0 || b.rank < 0 || a.rank == 0 || b.rank == 0) return nbl_shp_set_dt(c, 0, dt, -1);
  nbl_shp A = a, B = b;
  bool a1 = A.rank == 1, b1 = B.rank == 1;
  if (a1) {
    A.rank = 2;
    A.d[1] = A.d[0];
    A.d[0] = nbl_dim_val(1);
  }
  if (b1) {
    B.rank = 2;
    B.d[1] = nbl_dim_val(1);
  }
  if (nbl_dim_known(A.d[A.rank - 1]) && nbl_dim_known(B.d[B.rank - 2]) &&
      A.d[A.rank - 1].value != B.d[B.rank - 2].value)
    return nbl_shp_bcast_err(c, &a, &b);
  nbl_shp ba = A, bb = B;
  ba.rank -= 2;
  bb.rank -= 2;
  if (!nbl_shp_bcast(&o, &ba, &bb)) return nbl_shp_bcast_err(c, &a, &b);
  if (o.rank + 2 > MAXR) return nbl_shp_set_dt(c, 0, dt, -1);
  if (!a1) o.d[o.rank++] = A.d[A.rank - 2];
  if (!b1) o.d[o.rank++] = B.d[B.rank - 1];
  o.dt = dt;
  return nbl_shp_set(c, 0, &o);
}

/* ------------------------------------------------------------------ windows */

void nbl_shp_window(nbl_shape_ctx *c, const nbl_shp *x, int nsp, const int64_t *kernel,
                    bool transpose, bool ceil_mode, nbl_dim *out) {
  const nbl_node *n = c->node;
  int np = 0, ns = 0, nd = 0, nop = 0, nos = 0;
  const int64_t *pads = nbl_attr_ints(n, "pads", &np);
  const int64_t *strides = nbl_attr_ints(n, "strides", &ns);
  const int64_t *dil = nbl_attr_ints(n, "dilations", &nd);
  const int64_t *opad = nbl_attr_ints(n, "output_padding", &nop);
  const int64_t *oshape = nbl_attr_ints(n, "output_shape", &nos);
  const char *ap = nbl_attr_string(n, "auto_pad", "NOTSET");
  bool same = !strcmp(ap, "SAME_UPPER") || !strcmp(ap, "SAME_LOWER"), valid = !strcmp(ap, "VALID");
  for (int i = 0; i < nsp; i++) {
    nbl_dim in = x->rank == nsp + 2 ? x->d[2 + i] : nbl_dim_unk();
    int64_t k = kernel ? kernel[i] : -1;
    int64_t s = ns == nsp ? strides[i] : 1, dl = nd == nsp ? dil[i] : 1;
    int64_t pb = np == 2 * nsp ? pads[i] : 0, pe = np == 2 * nsp ? pads[nsp + i] : 0;
    out[i] = nbl_dim_unk();
    if (s <= 0 || dl <= 0) continue;
    if (valid) pb = pe = 0;
    if (transpose) {
      if (nos == nsp) {
        out[i] = nbl_dim_val(oshape[i]);
        continue;
      }
      if (nos == nsp + 2) {
        out[i] = nbl_dim_val(oshape[2 + i]);
        continue;
      }
      if (!nbl_dim_known(in) || k < 0) continue;
      int64_t op = nop == nsp ? opad[i] : 0;
      out[i] = nbl_dim_val(same ? in.value * s : nbl_window_out_t(in.value, k, s, dl, op, pb, pe));
      continue;
    }
    if (same) {
      if (nbl_dim_known(in))
        out[i] = nbl_dim_val(nbl_window_out_same(in.value, s));
      else if (s == 1)
        out[i] = in;
      continue;
    }
    if (k < 0) continue;
    if (!nbl_dim_known(in)) {
      if (k == 1 && s == 1 && pb == 0 && pe == 0) out[i] = in; /* extent (k-1)*dl+1 is 1 */
      continue;
    }
    int64_t o = nbl_window_out(in.value, k, s, dl, pb, pe, ceil_mode);
    if (o >= 0) out[i] = nbl_dim_val(o);
  }
}

nbl_status nbl_shape_conv(nbl_shape_ctx *c, int ix, int iw, nbl_dtype dt, bool transpose) {
  nbl_shp x, w, o;
  nbl_shp_in(c, ix, &x);
  nbl_shp_in(c, iw, &w);
  int nk = 0;
  const int64_t *ks = nbl_attr_ints(c->node, "kernel_shape", &nk);
  int rank = x.rank >= 0 ? x.rank : w.rank;
  if (rank < 3) return nbl_shp_set_dt(c, 0, dt ? dt : x.dt, rank >= 0 ? rank : -1);
  int nsp = rank - 2;
  int64_t kern[MAXR];
  bool have_k = false;
  if (nk == nsp) {
    memcpy(kern, ks, sizeof(int64_t) * (size_t)nsp);
    have_k = true;
  } else if (w.rank == rank) {
    have_k = true;
    for (int i = 0; i < nsp; i++) kern[i] = nbl_dim_known(w.d[2 + i]) ? w.d[2 + i].value : -1;
  }
  nbl_shp_rank(&o, dt ? dt : x.dt, rank);
  if (x.rank == rank) o.d[0] = x.d[0];
  if (w.rank == rank) {
    if (transpose) {
      int64_t grp = nbl_attr_int(c->node, "group", 1);
      o.d[1] = nbl_dim_known(w.d[1]) ? nbl_dim_val(w.d[1].value * grp)
                                     : (grp == 1 ? w.d[1] : nbl_dim_unk());
    } else
      o.d[1] = w.d[0];
  }
  nbl_shp_window(c, &x, nsp, have_k ? kern : NULL, transpose, false, o.d + 2);
  return nbl_shp_set(c, 0, &o);
}
