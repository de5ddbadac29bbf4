/* grad.c - the automatic differentiation driver and the gradient-rule API
 * (see grad.h for the contract). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/grad.h"
#include "runtime/core/kernel.h"

typedef struct vlist {
  nbl_id *v;
  int n, cap;
} vlist;

#define MAX_TAGS 32

struct nbl_grad_ctx {
  nbl_grad_spec *s;
  nbl_graph *g;
  nbl_model *m;
  int n_fwd_values, n_fwd_nodes;
  int *src;      /* per forward value: 1 + index of the wanted x it derives from, 0: none */
  unsigned char *useful; /* per forward value: some y depends on it */
  vlist *acc;    /* per forward value: gradient contributions */
  /* per value id of any age (grown on demand) */
  int *ccount;         /* times handed to nbl_grad_set_dx */
  unsigned char *made; /* an accumulated gradient the driver made (its own value) */
  int cap_v;
  /* the rule being run */
  nbl_id node;
  char base[400]; /* display name of the forward node */
  nbl_id *gy;     /* per output: its summed gradient */
  unsigned char *own;
  int n_gy;
  nbl_id last; /* node emitted last */
  nbl_status err;
  char tags[MAX_TAGS][64];
  int tagc[MAX_TAGS], n_tags;
  int emitted;
  unsigned char *xblocked; /* per wanted x: fed to an input without a gradient (lenient) */
};

/* ------------------------------------------------------------------ small utilities */

static int is_float_dt(nbl_dtype dt) {
  return dt == NBL_DT_FLOAT || dt == NBL_DT_DOUBLE || dt == NBL_DT_FLOAT16 || dt == NBL_DT_BFLOAT16;
}

static nbl_status set_err(nbl_grad_ctx *gc, nbl_status st) {
  if (!gc->err) gc->err = st ? st : NBL_ERR_INVALID_MODEL;
  return gc->err;
}

static int ensure_v(nbl_grad_ctx *gc, nbl_id v) {
  if (v < gc->cap_v) return 0;
  int cap = gc->cap_v ? gc->cap_v : 64;
  while (cap <= v) cap *= 2;
  int *c = realloc(gc->ccount, sizeof(int) * (size_t)cap);
  if (!c) return -1;
  gc->ccount = c;
  unsigned char *m = realloc(gc->made, (size_t)cap);
  if (!m) return -1;
  gc->made = m;
  memset(gc->ccount + gc->cap_v, 0, sizeof(int) * (size_t)(cap - gc->cap_v));
  memset(gc->made + gc->cap_v, 0, (size_t)(cap - gc->cap_v));
  gc->cap_v = cap;
  return 0;
}

static int vl_push(vlist *l, nbl_id v) {
  if (l->n == l->cap) {
    int cap = l->cap ? 2 * l->cap : 4;
    nbl_id *p = realloc(l->v, sizeof(nbl_id) * (size_t)cap);
    if (!p) return -1;
    l->v = p;
    l->cap = cap;
  }
  l->v[l->n++] = v;
  return 0;
}

/* The value named like v in the nearest enclosing graph (for outer values). */
static const nbl_value *resolve(const nbl_graph *g, nbl_id v) {
  const nbl_value *val = &g->values[v];
  if (!(val->flags & NBL_VAL_OUTER)) return val;
  for (const nbl_graph *p = g->parent; p; p = p->parent) {
    nbl_id pv = nbl_graph_find(p, val->name);
    if (pv == NBL_NONE) continue;
    if (p->values[pv].flags & NBL_VAL_OUTER) continue;
    return &p->values[pv];
  }
  return val;
}

static nbl_dtype value_dtype(const nbl_graph *g, nbl_id v) {
  const nbl_value *val = &g->values[v];
  if (val->type.kind == NBL_TYPE_TENSOR && val->type.elem) return val->type.elem;
  if (val->init) return val->init->dtype;
  const nbl_value *r = resolve(g, v);
  if (r->type.kind == NBL_TYPE_TENSOR && r->type.elem) return r->type.elem;
  if (r->init) return r->init->dtype;
  return NBL_DT_UNDEFINED;
}

/* Gradients flow through float values and values of unknown type. */
static int differentiable(const nbl_graph *g, nbl_id v) {
  nbl_dtype dt = value_dtype(g, v);
  return dt == NBL_DT_UNDEFINED || is_float_dt(dt);
}

/* ------------------------------------------------------------------ reading */

nbl_graph *nbl_grad_graph(nbl_grad_ctx *gc) { return gc->g; }
const nbl_node *nbl_grad_node(nbl_grad_ctx *gc) { return &gc->g->nodes[gc->node]; }

int nbl_grad_opset(nbl_grad_ctx *gc, const char *domain) {
  int64_t v = nbl_model_opset(gc->m, domain ? domain : "");
  if (v == 0 && (!domain || !*domain)) v = nbl_model_opset(gc->m, "ai.onnx");
  return (int)v;
}

int nbl_grad_n_in(nbl_grad_ctx *gc) { return gc->g->nodes[gc->node].n_inputs; }
int nbl_grad_n_out(nbl_grad_ctx *gc) { return gc->g->nodes[gc->node].n_outputs; }

nbl_id nbl_grad_x(nbl_grad_ctx *gc, int i) {
  const nbl_node *n = &gc->g->nodes[gc->node];
  return i >= 0 && i < n->n_inputs ? n->inputs[i] : NBL_NONE;
}

nbl_id nbl_grad_y(nbl_grad_ctx *gc, int i) {
  const nbl_node *n = &gc->g->nodes[gc->node];
  return i >= 0 && i < n->n_outputs ? n->outputs[i] : NBL_NONE;
}

nbl_id nbl_grad_y_need(nbl_grad_ctx *gc, int i) {
  if (gc->err || i < 0) return NBL_NONE;
  nbl_graph *g = gc->g;
  nbl_id have = nbl_grad_y(gc, i);
  if (have != NBL_NONE) return have;
  char hint[480];
  snprintf(hint, sizeof hint, "%s_out%d", gc->base, i);
  nbl_id v = nbl_graph_add_value(g, nbl_graph_unique_name(g, hint));
  if (v == NBL_NONE) return set_err(gc, NBL_ERR_OUT_OF_MEMORY), NBL_NONE;
  nbl_node *n = &g->nodes[gc->node];
  if (i >= n->n_outputs) {
    nbl_id *outs = nbl_arena_alloc(g->model->arena, sizeof(nbl_id) * (size_t)(i + 1));
    if (!outs) return set_err(gc, nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory")), NBL_NONE;
    for (int k = 0; k <= i; k++) outs[k] = k < n->n_outputs ? n->outputs[k] : NBL_NONE;
    n->outputs = outs;
    n->n_outputs = i + 1;
  }
  n->outputs[i] = v;
  g->values[v].producer = gc->node;
  return v;
}

nbl_id nbl_grad_dy(nbl_grad_ctx *gc, int i) {
  return i >= 0 && i < gc->n_gy ? gc->gy[i] : NBL_NONE;
}

int nbl_grad_wants(nbl_grad_ctx *gc, int i) {
  nbl_id x = nbl_grad_x(gc, i);
  return x != NBL_NONE && x < gc->n_fwd_values && gc->src[x] && differentiable(gc->g, x);
}

nbl_dtype nbl_grad_dtype(nbl_grad_ctx *gc, nbl_id v) {
  return v == NBL_NONE ? NBL_DT_UNDEFINED : value_dtype(gc->g, v);
}

static const nbl_type *value_type(const nbl_graph *g, nbl_id v) {
  const nbl_value *val = &g->values[v];
  if (val->type.kind == NBL_TYPE_TENSOR && val->type.rank >= 0) return &val->type;
  const nbl_value *r = resolve(g, v);
  if (r->type.kind == NBL_TYPE_TENSOR && r->type.rank >= 0) return &r->type;
  return NULL;
}

int nbl_grad_rank(nbl_grad_ctx *gc, nbl_id v) {
  if (v == NBL_NONE) return -1;
  const nbl_type *t = value_type(gc->g, v);
  if (t) return t->rank;
  const nbl_value *r = resolve(gc->g, v);
  return r->init ? r->init->rank : -1;
}

int64_t nbl_grad_dim(nbl_grad_ctx *gc, nbl_id v, int axis) {
  if (v == NBL_NONE) return -1;
  const nbl_type *t = value_type(gc->g, v);
  if (t) {
    if (axis < 0 || axis >= t->rank || t->dims[axis].param) return -1;
    return t->dims[axis].value;
  }
  const nbl_value *r = resolve(gc->g, v);
  if (r->init && axis >= 0 && axis < r->init->rank) return r->init->dims[axis];
  return -1;
}

/* The symbolic name of a dim (NULL when none). */
static const char *dim_param(nbl_grad_ctx *gc, nbl_id v, int axis) {
  const nbl_type *t = value_type(gc->g, v);
  if (!t || axis < 0 || axis >= t->rank) return NULL;
  return t->dims[axis].param;
}

int nbl_grad_dim_same(nbl_grad_ctx *gc, nbl_id v, int a, nbl_id w, int b) {
  int64_t x = nbl_grad_dim(gc, v, a), y = nbl_grad_dim(gc, w, b);
  if (x >= 0 || y >= 0) return x == y;
  const char *p = dim_param(gc, v, a), *q = dim_param(gc, w, b);
  return p && q && !strcmp(p, q);
}

static int tensor_ints(const nbl_tensor *t, int64_t *out, int max) {
  if (!t || t->rank > 1 || (t->dtype != NBL_DT_INT64 && t->dtype != NBL_DT_INT32)) return -1;
  int64_t n = nbl_tensor_numel(t);
  if (n < 0 || n > max) return -1;
  for (int64_t i = 0; i < n; i++) out[i] = nbl_tensor_get_i64(t, i);
  return (int)n;
}

int nbl_grad_const_ints(nbl_grad_ctx *gc, nbl_id v, int64_t *out, int max) {
  if (v == NBL_NONE) return -1;
  const nbl_value *r = resolve(gc->g, v);
  if (r->init) return tensor_ints(r->init, out, max);
  const nbl_value *val = &gc->g->values[v];
  if (val->producer == NBL_NONE) return -1;
  const nbl_node *p = &gc->g->nodes[val->producer];
  if (strcmp(p->op_type, "Constant") || p->domain[0]) return -1;
  const nbl_attr *a = nbl_node_attr(p, "value");
  if (a && a->type == NBL_ATTR_TENSOR) return tensor_ints(a->t, out, max);
  a = nbl_node_attr(p, "value_ints");
  if (a && a->type == NBL_ATTR_INTS && a->n <= max) {
    memcpy(out, a->ints, sizeof(int64_t) * (size_t)a->n);
    return a->n;
  }
  a = nbl_node_attr(p, "value_int");
  if (a && a->type == NBL_ATTR_INT && max >= 1) {
    out[0] = a->i;
    return 1;
  }
  return -1;
}

/* ------------------------------------------------------------------ errors */

nbl_status nbl_grad_fail(nbl_grad_ctx *gc, nbl_status st, const char *fmt, ...) {
  if (gc->err) return gc->err;
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  const nbl_node *n = &gc->g->nodes[gc->node];
  nbl_errorf(st, "node '%s' (%s): %s", n->name ? n->name : "", n->op_type, msg);
  return set_err(gc, st);
}

nbl_status nbl_grad_status(nbl_grad_ctx *gc) { return gc->err; }

/* When x is the output of an Identity (or a chain of them) whose first input
 * wants a gradient: ", an alias of 'ROOT' made by node 'N' (Identity)" (N the
 * Identity writing x) into buf; "" otherwise. Exporters write tensors that
 * hold equal values this way (PyTorch's eval-mode export), so the input a
 * rule refuses may be a parameter under another name. */
static void alias_note(nbl_grad_ctx *gc, nbl_id x, char *buf, size_t cap) {
  const nbl_graph *g = gc->g;
  buf[0] = 0;
  nbl_id v = x, first = NBL_NONE;
  for (int hops = 0; hops <= g->n_nodes; hops++) {
    nbl_id p = g->values[v].producer;
    if (p == NBL_NONE) break;
    const nbl_node *n = &g->nodes[p];
    if (n->dead || strcmp(n->op_type, "Identity") || (n->domain[0] && strcmp(n->domain, "ai.onnx")) ||
        n->n_inputs < 1 || n->inputs[0] == NBL_NONE)
      break;
    if (first == NBL_NONE) first = p;
    v = n->inputs[0];
  }
  if (first == NBL_NONE || v >= gc->n_fwd_values || !gc->src[v]) return;
  snprintf(buf, cap, ", an alias of '%s' made by node '%s' (Identity)", g->values[v].name,
           g->nodes[first].name ? g->nodes[first].name : "");
}

void nbl_grad_no_dx(nbl_grad_ctx *gc, int i, const char *why) {
  if (!nbl_grad_wants(gc, i)) return;
  nbl_id x = nbl_grad_x(gc, i);
  if (gc->s->lenient)
    for (int k = 0; k < gc->s->n_x; k++)
      if (gc->s->x[k] == x) { /* a parameter fed straight into this input: it is not trained */
        gc->xblocked[k] = 1;
        return;
      }
  char note[600];
  alias_note(gc, x, note, sizeof note);
  nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "no gradient for input %d ('%s'%s): %s", i,
                gc->g->values[x].name, note, why);
}

/* ------------------------------------------------------------------ writing */

static void node_name(nbl_grad_ctx *gc, const char *tag, char *out, size_t cap) {
  int k = 0;
  for (; k < gc->n_tags; k++)
    if (!strcmp(gc->tags[k], tag)) break;
  if (k == gc->n_tags && k < MAX_TAGS) {
    snprintf(gc->tags[k], sizeof gc->tags[k], "%s", tag);
    gc->tagc[k] = 0;
    gc->n_tags++;
  }
  int c = k < MAX_TAGS ? ++gc->tagc[k] : 0;
  if (c <= 1)
    snprintf(out, cap, "%s_grad/%s", gc->base, tag);
  else
    snprintf(out, cap, "%s_grad/%s_%d", gc->base, tag, c);
}

static void import_domain(nbl_grad_ctx *gc, const char *domain) {
  if (!domain || !*domain || !strcmp(domain, "ai.onnx")) return;
  if (nbl_model_opset(gc->m, domain) == 0) nbl_model_set_opset(gc->m, domain, 1);
}

/* Emit a node named `nname` with outputs named from `oname` (unique). */
static nbl_id emit(nbl_grad_ctx *gc, const char *op, const char *domain, const char *nname,
                   const char *oname, int n_in, const nbl_id *in, int n_out, const int *want,
                   nbl_id *out) {
  nbl_graph *g = gc->g;
  for (int k = 0; k < n_out; k++) out[k] = NBL_NONE;
  if (gc->err) return NBL_NONE;
  for (int k = 0; k < n_out; k++) {
    if (want && !want[k]) continue;
    char hint[520];
    if (n_out > 1)
      snprintf(hint, sizeof hint, "%s_%d", oname, k);
    else
      snprintf(hint, sizeof hint, "%s", oname);
    out[k] = nbl_graph_add_value(g, nbl_graph_unique_name(g, hint));
    if (out[k] == NBL_NONE) return set_err(gc, NBL_ERR_OUT_OF_MEMORY), NBL_NONE;
  }
  nbl_id nid = nbl_graph_add_node(g, op, domain ? domain : "", nname, n_in, in, n_out, out);
  if (nid == NBL_NONE) return set_err(gc, NBL_ERR_INVALID_MODEL), NBL_NONE;
  if (ensure_v(gc, g->n_values) != 0)
    return set_err(gc, nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory")), NBL_NONE;
  import_domain(gc, domain);
  gc->last = nid;
  gc->emitted++;
  return nid;
}

nbl_id nbl_grad_opn(nbl_grad_ctx *gc, const char *op, const char *domain, const char *tag,
                    int n_in, const nbl_id *in, int n_out, const int *want, nbl_id *out) {
  char nname[520];
  node_name(gc, tag ? tag : op, nname, sizeof nname);
  return emit(gc, op, domain, nname, nname, n_in, in, n_out, want, out);
}

nbl_id nbl_grad_op(nbl_grad_ctx *gc, const char *op, const char *domain, int n_in,
                   const nbl_id *in) {
  nbl_id out = NBL_NONE;
  nbl_grad_opn(gc, op, domain, NULL, n_in, in, 1, NULL, &out);
  return out;
}

void nbl_grad_tag(nbl_grad_ctx *gc, const char *tag) {
  if (gc->err || gc->last == NBL_NONE) return;
  char nname[520];
  node_name(gc, tag, nname, sizeof nname);
  gc->g->nodes[gc->last].name = nbl_arena_strdup(gc->m->arena, nname);
}

void nbl_grad_attr_int(nbl_grad_ctx *gc, const char *name, int64_t v) {
  if (!gc->err && gc->last != NBL_NONE) nbl_node_set_attr_int(gc->g, gc->last, name, v);
}
void nbl_grad_attr_float(nbl_grad_ctx *gc, const char *name, float v) {
  if (!gc->err && gc->last != NBL_NONE) nbl_node_set_attr_float(gc->g, gc->last, name, v);
}
void nbl_grad_attr_ints(nbl_grad_ctx *gc, const char *name, int n, const int64_t *v) {
  if (!gc->err && gc->last != NBL_NONE) nbl_node_set_attr_ints(gc->g, gc->last, name, n, v);
}
void nbl_grad_attr_string(nbl_grad_ctx *gc, const char *name, const char *v) {
  if (!gc->err && gc->last != NBL_NONE) nbl_node_set_attr_string(gc->g, gc->last, name, v);
}

void nbl_grad_attr_copy(nbl_grad_ctx *gc, const char *const *except) {
  if (gc->err || gc->last == NBL_NONE) return;
  int na = gc->g->nodes[gc->node].n_attrs;
  for (int k = 0; k < na; k++) {
    nbl_attr src = gc->g->nodes[gc->node].attrs[k];
    int skip = 0;
    for (int e = 0; except && except[e] && !skip; e++) skip = !strcmp(except[e], src.name);
    if (skip) continue;
    nbl_attr *a = nbl_node_add_attr(gc->g, gc->last, src.name, src.type);
    if (!a) {
      set_err(gc, nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory"));
      return;
    }
    *a = src; /* arrays live in the model's arena and are never changed in place */
    if (src.type == NBL_ATTR_TENSOR && src.t && src.t->buf) nbl_buffer_ref(src.t->buf);
    for (int j = 0; src.type == NBL_ATTR_TENSORS && j < src.n; j++)
      if (src.tensors[j] && src.tensors[j]->buf) nbl_buffer_ref(src.tensors[j]->buf);
  }
}

static nbl_id const_tensor(nbl_grad_ctx *gc, nbl_tensor *t) {
  if (!t) return set_err(gc, nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory")), NBL_NONE;
  nbl_id out = NBL_NONE;
  nbl_id nid = nbl_grad_opn(gc, "Constant", "", NULL, 0, NULL, 1, NULL, &out);
  if (nid == NBL_NONE) return NBL_NONE;
  nbl_node_set_attr_tensor(gc->g, nid, "value", t);
  nbl_type_set_tensor(gc->m->arena, &gc->g->values[out].type, t->dtype, t->rank, t->dims);
  return out;
}

/* A one-element tensor of dt holding v, rank `rank` (0 or 1). */
static nbl_tensor *scalar_tensor(nbl_grad_ctx *gc, nbl_dtype dt, double v, int rank) {
  unsigned char buf[8];
  switch (dt) {
  case NBL_DT_FLOAT: {
    float f = (float)v;
    memcpy(buf, &f, 4);
  } break;
  case NBL_DT_DOUBLE: memcpy(buf, &v, 8); break;
  case NBL_DT_FLOAT16: {
    uint16_t h = nbl_float_to_half((float)v);
    memcpy(buf, &h, 2);
  } break;
  case NBL_DT_BFLOAT16: {
    uint16_t h = nbl_float_to_bf16((float)v);
    memcpy(buf, &h, 2);
  } break;
  case NBL_DT_INT64: {
    int64_t i = (int64_t)v;
    memcpy(buf, &i, 8);
  } break;
  case NBL_DT_INT32: {
    int32_t i = (int32_t)v;
    memcpy(buf, &i, 4);
  } break;
  default:
    set_err(gc, nbl_errorf(NBL_ERR_UNSUPPORTED, "node '%s': no constant of element type %s",
                           gc->base, nbl_dtype_name(dt)));
    return NULL;
  }
  int64_t one = 1;
  return nbl_tensor_new(gc->m->arena, "", dt, rank, &one, buf);
}

nbl_id nbl_grad_const(nbl_grad_ctx *gc, nbl_dtype dt, double v) {
  if (gc->err) return NBL_NONE;
  nbl_tensor *t = scalar_tensor(gc, dt, v, 0);
  if (!t) return set_err(gc, NBL_ERR_UNSUPPORTED), NBL_NONE;
  return const_tensor(gc, t);
}

nbl_id nbl_grad_const_i64(nbl_grad_ctx *gc, int n, const int64_t *v) {
  if (gc->err) return NBL_NONE;
  int64_t d = n;
  return const_tensor(gc, nbl_tensor_new(gc->m->arena, "", NBL_DT_INT64, 1, &d, v));
}

void nbl_grad_set_dx(nbl_grad_ctx *gc, int i, nbl_id v) {
  if (gc->err || v == NBL_NONE || !nbl_grad_wants(gc, i)) return;
  nbl_id x = nbl_grad_x(gc, i);
  if (ensure_v(gc, v) != 0 || vl_push(&gc->acc[x], v) != 0) {
    set_err(gc, nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory"));
    return;
  }
  gc->ccount[v]++;
}

/* ------------------------------------------------------------------ accumulation */

/* v is a backward value nothing else uses: made by the driver, or handed
 * once and not consumed yet. */
static int exclusive(nbl_grad_ctx *gc, nbl_id v) {
  if (v < gc->n_fwd_values) return 0;
  const nbl_value *val = &gc->g->values[v];
  if (val->n_consumers != 0 || (val->flags & NBL_VAL_OUTPUT)) return 0;
  /* a driver-made sum may have been handed on once (Identity, Reshape, ...) */
  return gc->made[v] ? gc->ccount[v] <= 1 : gc->ccount[v] == 1;
}

/* The summed gradient of forward value y. name: the exact name it must get
 * (NULL: any; then a Sum gets "<y>_grad"). */
static nbl_id accumulate(nbl_grad_ctx *gc, nbl_id y, const char *name) {
  vlist *l = &gc->acc[y];
  nbl_graph *g = gc->g;
  if (gc->err || l->n == 0) return NBL_NONE;
  if (l->n == 1 && !name) return l->v[0];
  char hint[520];
  snprintf(hint, sizeof hint, "%s_grad", g->values[y].name);
  if (name && nbl_graph_find(g, name) != NBL_NONE) {
    if (l->n == 1 && !strcmp(g->values[l->v[0]].name, name)) return l->v[0];
    nbl_errorf(NBL_ERR_INVALID_MODEL, "the gradient of '%s' cannot be named '%s': name taken",
               g->values[y].name, name);
    return set_err(gc, NBL_ERR_INVALID_MODEL), NBL_NONE;
  }
  const char *oname = name ? name : nbl_graph_unique_name(g, hint);
  if (l->n == 1 && exclusive(gc, l->v[0])) {
    if (nbl_value_rename(g, l->v[0], oname) != NBL_OK) return set_err(gc, NBL_ERR_INVALID_MODEL), NBL_NONE;
    gc->made[l->v[0]] = 1;
    return l->v[0];
  }
  char nname[520];
  snprintf(nname, sizeof nname, "%s_grad/%s", g->values[y].name, l->n == 1 ? "Identity" : "Sum");
  const char *op = l->n == 1 ? "Identity" : l->n == 2 ? "Add" : "Sum";
  nbl_id out;
  /* the values are copied: l->v may be reallocated by nothing here, but keep it simple */
  emit(gc, op, "", nname, oname, l->n, l->v, 1, NULL, &out);
  if (out == NBL_NONE) return NBL_NONE;
  if (strcmp(g->values[out].name, oname) != 0 && nbl_value_rename(g, out, oname) != NBL_OK)
    return set_err(gc, NBL_ERR_INVALID_MODEL), NBL_NONE;
  gc->made[out] = 1;
  return out;
}

nbl_id nbl_grad_dy_own(nbl_grad_ctx *gc, int i) {
  if (gc->err || i < 0 || i >= gc->n_gy || gc->gy[i] == NBL_NONE) return NBL_NONE;
  if (gc->own[i]) return gc->gy[i];
  nbl_graph *g = gc->g;
  nbl_id v = gc->gy[i], y = nbl_grad_y(gc, i);
  char hint[520];
  snprintf(hint, sizeof hint, "%s_grad", g->values[y].name);
  if (exclusive(gc, v)) {
    if (strcmp(g->values[v].name, hint) != 0 &&
        nbl_value_rename(g, v, nbl_graph_unique_name(g, hint)) != NBL_OK)
      return set_err(gc, NBL_ERR_INVALID_MODEL), NBL_NONE;
  } else {
    char nname[520];
    node_name(gc, "dY", nname, sizeof nname);
    nbl_id in = v;
    emit(gc, "Identity", "", nname, nbl_graph_unique_name(g, hint), 1, &in, 1, NULL, &v);
    if (v == NBL_NONE) return NBL_NONE;
  }
  gc->made[v] = 1;
  gc->own[i] = 1;
  gc->gy[i] = v;
  return v;
}

/* ------------------------------------------------------------------ helpers for rules */

nbl_id nbl_grad_bin(nbl_grad_ctx *gc, const char *op, nbl_id a, nbl_id b) {
  nbl_id in[2] = {a, b};
  return nbl_grad_op(gc, op, "", 2, in);
}

nbl_id nbl_grad_un(nbl_grad_ctx *gc, const char *op, nbl_id a) {
  return nbl_grad_op(gc, op, "", 1, &a);
}

nbl_id nbl_grad_shape(nbl_grad_ctx *gc, nbl_id v) { return nbl_grad_un(gc, "Shape", v); }

/* 1 when every dim of v is known (and > 0): its dims into d. */
static int static_shape(nbl_grad_ctx *gc, nbl_id v, int64_t *d, int *rank) {
  int r = nbl_grad_rank(gc, v);
  if (r < 0 || r > NBL_MAX_RANK) return 0;
  for (int k = 0; k < r; k++) {
    d[k] = nbl_grad_dim(gc, v, k);
    if (d[k] <= 0) return 0;
  }
  *rank = r;
  return 1;
}

nbl_id nbl_grad_reshape_like(nbl_grad_ctx *gc, nbl_id g, nbl_id like) {
  int64_t d[NBL_MAX_RANK];
  int r;
  nbl_id shape = static_shape(gc, like, d, &r) ? nbl_grad_const_i64(gc, r, d)
                                               : nbl_grad_shape(gc, like);
  return nbl_grad_bin(gc, "Reshape", g, shape);
}

nbl_id nbl_grad_reduce_sum(nbl_grad_ctx *gc, nbl_id v, int n_axes, const int64_t *axes,
                           int keepdims) {
  if (n_axes == 0) return v;
  nbl_id out;
  if (nbl_grad_opset(gc, "") >= 13) {
    nbl_id in[2] = {v, nbl_grad_const_i64(gc, n_axes, axes)};
    out = nbl_grad_op(gc, "ReduceSum", "", 2, in);
  } else {
    out = nbl_grad_op(gc, "ReduceSum", "", 1, &v);
    nbl_grad_attr_ints(gc, "axes", n_axes, axes);
  }
  nbl_grad_attr_int(gc, "keepdims", keepdims);
  return out;
}

nbl_id nbl_grad_unsqueeze(nbl_grad_ctx *gc, nbl_id v, int n_axes, const int64_t *axes) {
  if (n_axes == 0) return v;
  if (nbl_grad_opset(gc, "") >= 13) {
    nbl_id in[2] = {v, nbl_grad_const_i64(gc, n_axes, axes)};
    return nbl_grad_op(gc, "Unsqueeze", "", 2, in);
  }
  nbl_id out = nbl_grad_op(gc, "Unsqueeze", "", 1, &v);
  nbl_grad_attr_ints(gc, "axes", n_axes, axes);
  return out;
}

nbl_id nbl_grad_transpose(nbl_grad_ctx *gc, nbl_id v, int n, const int64_t *perm) {
  nbl_id out = nbl_grad_op(gc, "Transpose", "", 1, &v);
  nbl_grad_attr_ints(gc, "perm", n, perm);
  return out;
}

nbl_id nbl_grad_fill_like(nbl_grad_ctx *gc, nbl_id v, double fill) {
  nbl_dtype dt = nbl_grad_dtype(gc, v);
  if (dt == NBL_DT_UNDEFINED) dt = NBL_DT_FLOAT;
  nbl_tensor *t = gc->err ? NULL : scalar_tensor(gc, dt, fill, 1);
  if (!t) return set_err(gc, NBL_ERR_UNSUPPORTED), NBL_NONE;
  nbl_id shape = nbl_grad_shape(gc, v);
  nbl_id out = nbl_grad_op(gc, "ConstantOfShape", "", 1, &shape);
  if (out != NBL_NONE) nbl_node_set_attr_tensor(gc->g, gc->last, "value", t);
  return out;
}

nbl_id nbl_grad_zeros_like(nbl_grad_ctx *gc, nbl_id v) { return nbl_grad_fill_like(gc, v, 0.0); }

nbl_id nbl_grad_unbroadcast(nbl_grad_ctx *gc, nbl_id g, nbl_id x, nbl_id y) {
  if (g == NBL_NONE || gc->err) return NBL_NONE;
  int rx = nbl_grad_rank(gc, x), ry = nbl_grad_rank(gc, y);
  if (rx >= 0 && ry >= 0 && rx <= ry && ry <= NBL_MAX_RANK) {
    int64_t axes[NBL_MAX_RANK];
    int na = 0, decided = 1;
    for (int k = 0; k < ry && decided; k++) {
      int kx = k - (ry - rx);
      int64_t yd = nbl_grad_dim(gc, y, k);
      if (kx < 0) {
        axes[na++] = k;
        continue;
      }
      int64_t xd = nbl_grad_dim(gc, x, kx);
      if (xd == 1) {
        if (yd != 1) axes[na++] = k;
      } else if (xd < 0) {
        const char *px = dim_param(gc, x, kx), *py = dim_param(gc, y, k);
        if (!(px && py && !strcmp(px, py)) && !(yd >= 0 && yd == xd)) decided = 0;
      }
    }
    if (decided) {
      if (na == 0 && rx == ry) return g;
      /* only the leading axes x lacks: summing them away gives x's shape */
      if (na == ry - rx && (na == 0 || axes[na - 1] == na - 1))
        return nbl_grad_reduce_sum(gc, g, na, axes, 0);
      nbl_id r = nbl_grad_reduce_sum(gc, g, na, axes, 1);
      return rx == ry ? r : nbl_grad_reshape_like(gc, r, x);
    }
  }
  /* shapes known only at run time */
  if (nbl_grad_opset(gc, "") < 13) {
    nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED,
                  "the broadcast of '%s' is known only at run time, which needs opset 13",
                  gc->g->values[x].name);
    return NBL_NONE;
  }
  nbl_id xs;
  nbl_id r = nbl_grad_sum_broadcast_axes(gc, g, x, y, &xs);
  return nbl_grad_bin(gc, "Reshape", r, xs);
}

nbl_id nbl_grad_sum_broadcast_axes(nbl_grad_ctx *gc, nbl_id g, nbl_id a, nbl_id b, nbl_id *a_shape) {
  nbl_id in[2] = {nbl_grad_shape(gc, a), nbl_grad_shape(gc, b)}, axes[2];
  int want[2] = {1, 0};
  nbl_grad_opn(gc, "BroadcastGradientArgs", "com.microsoft", NULL, 2, in, 2, want, axes);
  nbl_id rin[2] = {g, axes[0]};
  nbl_id r = nbl_grad_op(gc, "ReduceSum", "", 2, rin);
  nbl_grad_attr_int(gc, "keepdims", 1);
  nbl_grad_attr_int(gc, "noop_with_empty_axes", 1);
  *a_shape = in[0];
  return r;
}

nbl_id nbl_grad_tie_mask(nbl_grad_ctx *gc, nbl_id X, nbl_id Y) {
  nbl_id m = nbl_grad_un(gc, "Cast", nbl_grad_bin(gc, "Equal", X, Y));
  nbl_grad_attr_int(gc, "to", nbl_grad_dtype(gc, X));
  return m;
}

nbl_id nbl_grad_tie_share(nbl_grad_ctx *gc, nbl_id X, nbl_id Y, int n_axes, const int64_t *axes) {
  nbl_id m = nbl_grad_tie_mask(gc, X, Y);
  return nbl_grad_bin(gc, "Div", m, nbl_grad_reduce_sum(gc, m, n_axes, axes, 1));
}

nbl_id nbl_grad_count_ratio(nbl_grad_ctx *gc, nbl_id X, nbl_id Y) {
  int r = nbl_grad_rank(gc, X), ry = nbl_grad_rank(gc, Y);
  nbl_dtype dt = nbl_grad_dtype(gc, X);
  if (dt == NBL_DT_UNDEFINED) {
    nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "the element type of '%s' is unknown (run infer-shapes)",
                  gc->g->values[X].name);
    return NBL_NONE;
  }
  if (r >= 0) {
    double cnt = 1;
    int known = 1;
    for (int k = 0; k < r && known; k++) {
      int64_t dx = nbl_grad_dim(gc, X, k);
      if (r == ry && nbl_grad_dim_same(gc, X, k, Y, k)) continue;
      if (dx >= 0 && (r != ry || nbl_grad_dim(gc, Y, k) == 1)) cnt *= (double)dx;
      else known = 0;
    }
    if (known && r != ry) { /* keepdims=0: Y's elements are the product of its dims */
      for (int k = 0; k < ry && known; k++) {
        int64_t d = nbl_grad_dim(gc, Y, k);
        if (d > 0) cnt /= (double)d;
        else known = 0;
      }
    }
    if (known && ry >= 0) return nbl_grad_const(gc, dt, cnt);
  }
  nbl_id q = nbl_grad_bin(gc, "Div", nbl_grad_un(gc, "Size", X), nbl_grad_un(gc, "Size", Y));
  nbl_id c = nbl_grad_un(gc, "Cast", q);
  nbl_grad_attr_int(gc, "to", dt);
  return c;
}

nbl_status nbl_grad_zero(nbl_grad_ctx *gc) {
  (void)gc;
  return NBL_OK;
}

/* ------------------------------------------------------------------ the driver */

static void ctx_free(nbl_grad_ctx *gc) {
  if (gc->acc)
    for (int v = 0; v < gc->n_fwd_values; v++) free(gc->acc[v].v);
  free(gc->acc);
  free(gc->src);
  free(gc->useful);
  free(gc->ccount);
  free(gc->made);
  free(gc->gy);
  free(gc->own);
  free(gc->xblocked);
}

static void set_base(nbl_grad_ctx *gc, nbl_id n) {
  const nbl_node *nd = &gc->g->nodes[n];
  const char *b = nd->name && nd->name[0] ? nd->name
                  : nd->n_outputs && nd->outputs[0] != NBL_NONE ? gc->g->values[nd->outputs[0]].name
                                                                : nd->op_type;
  snprintf(gc->base, sizeof gc->base, "%s", b);
  gc->n_tags = 0;
  gc->node = n;
  gc->last = NBL_NONE;
}

/* Seed gradient of y: ones shaped like y. */
static nbl_id ones_like(nbl_grad_ctx *gc, nbl_id y) {
  nbl_dtype dt = value_dtype(gc->g, y);
  if (!is_float_dt(dt)) {
    nbl_errorf(NBL_ERR_INVALID_MODEL, "cannot differentiate '%s': its element type %s is not a float type",
               gc->g->values[y].name, dt ? nbl_dtype_name(dt) : "(unknown)");
    return set_err(gc, NBL_ERR_INVALID_MODEL), NBL_NONE;
  }
  if (nbl_grad_rank(gc, y) == 0) return nbl_grad_const(gc, dt, 1.0);
  nbl_tensor *t = scalar_tensor(gc, dt, 1.0, 1);
  nbl_id shape = nbl_grad_shape(gc, y);
  nbl_id out = nbl_grad_op(gc, "ConstantOfShape", "", 1, &shape);
  if (out != NBL_NONE) nbl_node_set_attr_tensor(gc->g, gc->last, "value", t);
  return out;
}

static const char *dom_label(const char *d) { return d && *d ? d : "ai.onnx"; }

nbl_status nbl_grad_build(nbl_grad_spec *s) {
  nbl_graph *g = s->g;
  nbl_grad_ctx ctx, *gc = &ctx;
  memset(gc, 0, sizeof ctx);
  gc->s = s;
  gc->g = g;
  gc->m = g->model;
  gc->n_fwd_values = g->n_values;
  gc->n_fwd_nodes = g->n_nodes;
  s->n_emitted = 0;
  for (int i = 0; i < s->n_x; i++) s->dx[i] = NBL_NONE;
  size_t nv = (size_t)(g->n_values ? g->n_values : 1);
  gc->src = calloc(nv, sizeof(int));
  gc->useful = calloc(nv, 1);
  gc->acc = calloc(nv, sizeof(vlist));
  gc->xblocked = calloc((size_t)s->n_x + 1, 1);
  nbl_id *order = NULL;
  if (!gc->src || !gc->useful || !gc->acc || !gc->xblocked || ensure_v(gc, g->n_values) != 0) {
    ctx_free(gc);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  int n = nbl_graph_topo_order(g, &order);
  if (n < 0) {
    ctx_free(gc);
    return NBL_ERR_INVALID_MODEL;
  }
  /* forward: which values derive from a wanted x (through float values) */
  for (int i = 0; i < s->n_x; i++)
    if (s->x[i] != NBL_NONE && differentiable(g, s->x[i]) && !gc->src[s->x[i]])
      gc->src[s->x[i]] = i + 1;
  for (int k = 0; k < n; k++) {
    const nbl_node *nd = &g->nodes[order[k]];
    int from = 0;
    for (int i = 0; i < nd->n_inputs && !from; i++)
      if (nd->inputs[i] != NBL_NONE) from = gc->src[nd->inputs[i]];
    if (!from) continue;
    for (int o = 0; o < nd->n_outputs; o++)
      if (nd->outputs[o] != NBL_NONE && differentiable(g, nd->outputs[o]) && !gc->src[nd->outputs[o]])
        gc->src[nd->outputs[o]] = from;
  }
  /* backward: which values some y depends on */
  for (int i = 0; i < s->n_y; i++) gc->useful[s->y[i]] = 1;
  for (int k = n - 1; k >= 0; k--) {
    const nbl_node *nd = &g->nodes[order[k]];
    int used = 0;
    for (int o = 0; o < nd->n_outputs && !used; o++)
      used = nd->outputs[o] != NBL_NONE && gc->useful[nd->outputs[o]];
    if (!used) continue;
    for (int i = 0; i < nd->n_inputs; i++)
      if (nd->inputs[i] != NBL_NONE) gc->useful[nd->inputs[i]] = 1;
  }
  /* seeds */
  gc->node = n > 0 ? order[n - 1] : 0;
  for (int i = 0; i < s->n_y && !gc->err; i++) {
    nbl_id y = s->y[i];
    if (!gc->src[y]) continue; /* no wanted x reaches it */
    snprintf(gc->base, sizeof gc->base, "%s", g->values[y].name);
    gc->n_tags = 0;
    nbl_id seed = s->dy && s->dy[i] != NBL_NONE ? s->dy[i] : ones_like(gc, y);
    if (seed != NBL_NONE && vl_push(&gc->acc[y], seed) != 0)
      set_err(gc, nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory"));
  }
  /* reverse sweep */
  for (int k = n - 1; k >= 0 && !gc->err; k--) {
    nbl_id nid = order[k];
    const nbl_node *nd = &g->nodes[nid];
    int active = 0;
    for (int o = 0; o < nd->n_outputs && !active; o++) {
      nbl_id y = nd->outputs[o];
      active = y != NBL_NONE && gc->src[y] && gc->useful[y] && gc->acc[y].n > 0;
    }
    if (!active) continue;
    set_base(gc, nid);
    free(gc->gy);
    free(gc->own);
    gc->n_gy = nd->n_outputs;
    gc->gy = calloc((size_t)gc->n_gy + 1, sizeof(nbl_id));
    gc->own = calloc((size_t)gc->n_gy + 1, 1);
    if (!gc->gy || !gc->own) {
      set_err(gc, nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory"));
      break;
    }
    for (int o = 0; o < gc->n_gy; o++) {
      nbl_id y = g->nodes[nid].outputs[o];
      gc->gy[o] = y == NBL_NONE ? NBL_NONE : accumulate(gc, y, NULL);
    }
    if (gc->err) break;
    nd = &g->nodes[nid];
    int opset = nbl_grad_opset(gc, nd->domain);
    const nbl_op_def *def = nbl_op_lookup(nd->domain, nd->op_type, opset);
    int from = 0;
    for (int i = 0; i < nd->n_inputs && !from; i++)
      if (nd->inputs[i] != NBL_NONE) from = gc->src[nd->inputs[i]];
    const char *xname = from ? g->values[s->x[from - 1]].name : "?";
    if (!def || !def->grad) {
      const char *why = !def ? "the op table has no entry for it"
                        : def->no_grad ? def->no_grad
                                       : "no gradient rule";
      nbl_errorf(NBL_ERR_UNSUPPORTED,
                 "node '%s' (%s, domain '%s', opset %d): no gradient (%s); it lies on the path "
                 "from '%s' to '%s'",
                 nd->name ? nd->name : "", nd->op_type, dom_label(nd->domain), opset, why, xname,
                 s->n_y ? g->values[s->y[0]].name : "?");
      set_err(gc, NBL_ERR_UNSUPPORTED);
      break;
    }
    nbl_status st = def->grad(gc);
    if (st && !gc->err) set_err(gc, st);
  }
  /* the gradients asked for */
  for (int i = 0; i < s->n_x && !gc->err; i++) {
    nbl_id x = s->x[i];
    if (s->blocked) s->blocked[i] = gc->xblocked[i];
    if (x == NBL_NONE || gc->xblocked[i]) continue;
    char name[520];
    if (s->dx_names && s->dx_names[i])
      snprintf(name, sizeof name, "%s", s->dx_names[i]);
    else
      snprintf(name, sizeof name, "%s_grad", g->values[x].name);
    snprintf(gc->base, sizeof gc->base, "%s", g->values[x].name);
    gc->n_tags = 0;
    nbl_id d = accumulate(gc, x, name);
    if (d == NBL_NONE && !gc->err && s->zeros_for_unreached) {
      nbl_id z = nbl_grad_zeros_like(gc, x);
      if (z != NBL_NONE && nbl_value_rename(g, z, name) != NBL_OK) set_err(gc, NBL_ERR_INVALID_MODEL);
      d = z;
    }
    s->dx[i] = d;
  }
  s->n_emitted = gc->emitted;
  nbl_status st = gc->err;
  free(order);
  ctx_free(gc);
  return st;
}
