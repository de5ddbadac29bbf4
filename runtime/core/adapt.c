/* adapt.c - the services opset adapters call, and the shared adapters
 * (runtime/core/adapt.h). */
#include "runtime/core/adapt.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

nbl_status nbl_adapt_refuse(nbl_adapt_ctx *c, const char *fmt, ...) {
  (void)c;
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return nbl_errorf(NBL_ERR_UNSUPPORTED, "%s", msg);
}

static nbl_status oom(void) { return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory"); }

/* ------------------------------------------------------------------ reading */

/* The value named `name` defined in g or an enclosing graph, with its graph. */
static nbl_id resolve(const nbl_graph *g, const char *name, const nbl_graph **where) {
  for (; g; g = g->parent) {
    nbl_id v = nbl_graph_find(g, name);
    if (v != NBL_NONE && !(g->values[v].flags & NBL_VAL_OUTER)) {
      *where = g;
      return v;
    }
  }
  return NBL_NONE;
}

/* A Constant node's value as a tensor (value, or value_int(s)/value_float(s)). */
static const nbl_tensor *constant_value(nbl_model *m, const nbl_node *n) {
  const nbl_attr *a = nbl_node_attr(n, "value");
  if (a && a->type == NBL_ATTR_TENSOR) return a->t;
  int64_t d;
  if ((a = nbl_node_attr(n, "value_int")) && a->type == NBL_ATTR_INT)
    return nbl_tensor_new(m->arena, "", NBL_DT_INT64, 0, NULL, &a->i);
  if ((a = nbl_node_attr(n, "value_float")) && a->type == NBL_ATTR_FLOAT)
    return nbl_tensor_new(m->arena, "", NBL_DT_FLOAT, 0, NULL, &a->f);
  if ((a = nbl_node_attr(n, "value_ints")) && a->type == NBL_ATTR_INTS)
    return d = a->n, nbl_tensor_new(m->arena, "", NBL_DT_INT64, 1, &d, a->ints);
  if ((a = nbl_node_attr(n, "value_floats")) && a->type == NBL_ATTR_FLOATS)
    return d = a->n, nbl_tensor_new(m->arena, "", NBL_DT_FLOAT, 1, &d, a->floats);
  return NULL;
}

const nbl_tensor *nbl_adapt_const_of(nbl_adapt_ctx *c, nbl_id v) {
  if (v == NBL_NONE) return NULL;
  const nbl_graph *g = c->graph;
  if (g->values[v].flags & NBL_VAL_OUTER) {
    v = resolve(g->parent, g->values[v].name, &g);
    if (v == NBL_NONE) return NULL;
  }
  const nbl_value *val = &g->values[v];
  if (val->init) return (val->flags & NBL_VAL_INPUT) ? NULL : val->init;
  if (val->producer == NBL_NONE) return NULL;
  const nbl_node *p = &g->nodes[val->producer];
  if (p->dead || strcmp(p->op_type, "Constant") || (p->domain[0] && strcmp(p->domain, "ai.onnx")))
    return NULL;
  return constant_value(c->model, p);
}

const nbl_tensor *nbl_adapt_const_input(nbl_adapt_ctx *c, int i) {
  const nbl_node *n = nbl_adapt_node(c);
  return i < n->n_inputs ? nbl_adapt_const_of(c, n->inputs[i]) : NULL;
}

static const nbl_type *type_of(const nbl_adapt_ctx *c, nbl_id v) {
  if (v == NBL_NONE) return NULL;
  const nbl_graph *g = c->graph;
  const nbl_type *t = &g->values[v].type;
  if (t->kind == NBL_TYPE_NONE && (g->values[v].flags & NBL_VAL_OUTER) && g->parent) {
    const nbl_graph *w;
    nbl_id o = resolve(g->parent, g->values[v].name, &w);
    if (o != NBL_NONE) t = &w->values[o].type;
  }
  return t->kind == NBL_TYPE_TENSOR ? t : NULL;
}

nbl_dtype nbl_adapt_elem(const nbl_adapt_ctx *c, nbl_id v) {
  const nbl_type *t = type_of(c, v);
  return t ? t->elem : NBL_DT_UNDEFINED;
}

int nbl_adapt_rank(const nbl_adapt_ctx *c, nbl_id v) {
  const nbl_type *t = type_of(c, v);
  return t ? t->rank : -1;
}

int64_t nbl_adapt_dim(const nbl_adapt_ctx *c, nbl_id v, int64_t axis) {
  const nbl_type *t = type_of(c, v);
  if (!t || t->rank < 0) return -1;
  if (axis < 0) axis += t->rank;
  if (axis < 0 || axis >= t->rank || !t->dims) return -1;
  return t->dims[axis].value;
}

/* Whether a node of g's subgraphs (at any depth) captures `name`. */
static bool captured(const nbl_graph *g, const char *name) {
  for (int i = 0; i < g->n_nodes; i++) {
    const nbl_node *n = &g->nodes[i];
    if (n->dead) continue;
    for (int a = 0; a < n->n_attrs; a++) {
      const nbl_attr *at = &n->attrs[a];
      int cnt = at->type == NBL_ATTR_GRAPH ? 1 : at->type == NBL_ATTR_GRAPHS ? at->n : 0;
      for (int j = 0; j < cnt; j++) {
        const nbl_graph *s = at->type == NBL_ATTR_GRAPH ? at->g : at->graphs[j];
        if (!s) continue;
        nbl_id v = nbl_graph_find(s, name);
        if (v != NBL_NONE && (s->values[v].flags & NBL_VAL_OUTER)) return true;
        if (captured(s, name)) return true;
      }
    }
  }
  return false;
}

bool nbl_adapt_output_used(const nbl_adapt_ctx *c, int k) {
  const nbl_node *n = nbl_adapt_node(c);
  if (k >= n->n_outputs || n->outputs[k] == NBL_NONE) return false;
  const nbl_value *v = &c->graph->values[n->outputs[k]];
  return v->n_consumers > 0 || (v->flags & NBL_VAL_OUTPUT) || captured(c->graph, v->name);
}

/* ------------------------------------------------------------------ rewriting */

/* Whether a value or node of any graph of the model is named `name`. */
static bool name_taken(const nbl_model *m, const char *name) {
  for (const nbl_graph *g = m->owned_graphs; g; g = g->next_owned) {
    if (nbl_graph_find(g, name) != NBL_NONE) return true;
    for (int i = 0; i < g->n_nodes; i++)
      if (!g->nodes[i].dead && !strcmp(g->nodes[i].name, name)) return true;
  }
  return false;
}

/* A name starting with `hint` that no value or node of the model has. */
static char *unique_name(nbl_adapt_ctx *c, const char *hint) {
  char buf[600];
  snprintf(buf, sizeof buf, "%s", hint);
  for (int k = 1; name_taken(c->model, buf); k++) snprintf(buf, sizeof buf, "%s_%d", hint, k);
  return nbl_arena_strdup(c->model->arena, buf);
}

static char *name_for(nbl_adapt_ctx *c, const char *hint) {
  const nbl_node *n = nbl_adapt_node(c);
  char buf[520];
  snprintf(buf, sizeof buf, "%s_%s", n->name[0] ? n->name : n->op_type, hint);
  return unique_name(c, buf);
}

nbl_id nbl_adapt_const(nbl_adapt_ctx *c, const char *hint, nbl_dtype dt, int rank,
                       const int64_t *dims, const void *data) {
  nbl_graph *g = c->graph;
  char *name = name_for(c, hint);
  if (!name) return NBL_NONE;
  nbl_tensor *t = nbl_tensor_new(c->model->arena, name, dt, rank, dims, data);
  if (!t) return NBL_NONE;
  nbl_id v = nbl_graph_add_value(g, name);
  if (v == NBL_NONE) {
    nbl_buffer_unref(t->buf);
    return NBL_NONE;
  }
  nbl_type_set_tensor(c->model->arena, &g->values[v].type, dt, rank, dims);
  nbl_graph_set_initializer(g, v, t);
  return v;
}

nbl_status nbl_adapt_set_input(nbl_adapt_ctx *c, int i, nbl_id v) {
  nbl_node *n = nbl_adapt_node(c);
  if (i >= n->n_inputs && v == NBL_NONE) return NBL_OK;
  nbl_node_set_input(c->graph, c->node, i, v);
  n = nbl_adapt_node(c);
  while (n->n_inputs > 0 && n->inputs[n->n_inputs - 1] == NBL_NONE) n->n_inputs--;
  return NBL_OK;
}

void nbl_adapt_drop_attr(nbl_adapt_ctx *c, const char *name) {
  nbl_node *n = nbl_adapt_node(c);
  for (int i = 0; i < n->n_attrs; i++)
    if (!strcmp(n->attrs[i].name, name)) {
      memmove(&n->attrs[i], &n->attrs[i + 1], sizeof(nbl_attr) * (size_t)(n->n_attrs - i - 1));
      n->n_attrs--;
      return;
    }
}

nbl_status nbl_adapt_rename(nbl_adapt_ctx *c, const char *op_type) {
  char *s = nbl_arena_strdup(c->model->arena, op_type);
  if (!s) return oom();
  nbl_adapt_node(c)->op_type = s;
  return NBL_OK;
}

void nbl_adapt_drop_output(nbl_adapt_ctx *c, int k) {
  nbl_node *n = nbl_adapt_node(c);
  if (k >= n->n_outputs || n->outputs[k] == NBL_NONE) return;
  nbl_value *v = &c->graph->values[n->outputs[k]];
  v->producer = NBL_NONE;
  v->dead = true;
  n->outputs[k] = NBL_NONE;
  while (n->n_outputs > 1 && n->outputs[n->n_outputs - 1] == NBL_NONE) n->n_outputs--;
}

nbl_id nbl_adapt_add_node(nbl_adapt_ctx *c, const char *op, const char *hint, int n_in,
                          const nbl_id *ins, nbl_id out) {
  nbl_graph *g = c->graph;
  if (out == NBL_NONE) {
    char *vn = name_for(c, hint);
    if (!vn || (out = nbl_graph_add_value(g, vn)) == NBL_NONE) return NBL_NONE;
  }
  char *nn = name_for(c, hint);
  if (!nn || nbl_graph_add_node(g, op, "", nn, n_in, ins, 1, &out) == NBL_NONE) return NBL_NONE;
  return out;
}

nbl_id nbl_adapt_detach_output(nbl_adapt_ctx *c, int k, const char *hint) {
  char *vn = name_for(c, hint);
  nbl_id nv = vn ? nbl_graph_add_value(c->graph, vn) : NBL_NONE;
  if (nv == NBL_NONE) return NBL_NONE;
  nbl_node *n = nbl_adapt_node(c);
  nbl_id old = n->outputs[k];
  c->graph->values[old].producer = NBL_NONE;
  n->outputs[k] = nv;
  c->graph->values[nv].producer = c->node;
  return nv;
}

nbl_status nbl_adapt_replace(nbl_adapt_ctx *c, const char *op, int n_in, const nbl_id *ins) {
  nbl_status st = nbl_adapt_rename(c, op);
  if (st) return st;
  nbl_node *n = nbl_adapt_node(c);
  n->n_attrs = 0;
  for (int i = 0; i < n->n_inputs; i++) nbl_node_set_input(c->graph, c->node, i, NBL_NONE);
  for (int i = 0; i < n_in; i++) nbl_node_set_input(c->graph, c->node, i, ins[i]);
  nbl_adapt_node(c)->n_inputs = n_in;
  return NBL_OK;
}

/* ------------------------------------------------------------------ shared adapters */

/* The j-th name of a comma-separated list into buf; false past the end. */
static bool list_item(const char *list, int j, char *buf, size_t len) {
  const char *p = list;
  for (int i = 0; i < j; i++) {
    p = strchr(p, ',');
    if (!p) return false;
    p++;
  }
  size_t n = strcspn(p, ",");
  if (n >= len) n = len - 1;
  memcpy(buf, p, n);
  buf[n] = 0;
  return true;
}

/* A float scalar as one element of type dt into out (8 bytes). */
static bool float_as(nbl_dtype dt, float f, unsigned char *out) {
  switch (dt) {
  case NBL_DT_FLOAT: memcpy(out, &f, 4); return true;
  case NBL_DT_DOUBLE: { double d = f; memcpy(out, &d, 8); return true; }
  case NBL_DT_FLOAT16: { uint16_t h = nbl_float_to_half(f); memcpy(out, &h, 2); return true; }
  case NBL_DT_BFLOAT16: { uint16_t h = nbl_float_to_bf16(f); memcpy(out, &h, 2); return true; }
  default: return false;
  }
}

nbl_dtype nbl_adapt_float_elem(const nbl_adapt_ctx *c, nbl_id v) {
  nbl_dtype dt = nbl_adapt_elem(c, v);
  unsigned char tmp[8];
  return float_as(dt, 0, tmp) ? dt : NBL_DT_UNDEFINED;
}

nbl_id nbl_adapt_const_floats(nbl_adapt_ctx *c, const char *hint, nbl_dtype dt, int rank,
                              const int64_t *dims, const float *v) {
  int64_t n = nbl_shape_numel(rank, dims);
  size_t es = nbl_dtype_nbytes(dt, 1);
  unsigned char tmp[8];
  if (!float_as(dt, 0, tmp) || n < 0) return NBL_NONE;
  unsigned char *data = malloc(es * (size_t)(n ? n : 1));
  if (!data) return NBL_NONE;
  for (int64_t i = 0; i < n; i++) {
    float_as(dt, v[i], tmp);
    memcpy(data + (size_t)i * es, tmp, es);
  }
  nbl_id r = nbl_adapt_const(c, hint, dt, rank, dims, data);
  free(data);
  return r;
}

nbl_status nbl_adapt_attrs_to_inputs(nbl_adapt_ctx *c) {
  const nbl_op_adapter *s = c->step;
  char name[64];
  /* guard: the inputs are free, float scalars have a known type */
  nbl_dtype fdt = s->dtype;
  for (int j = 0; list_item(s->attr, j, name, sizeof name); j++) {
    const nbl_node *n = nbl_adapt_node(c);
    if (!nbl_node_attr(n, name)) continue;
    if (s->input + j < n->n_inputs && n->inputs[s->input + j] != NBL_NONE)
      return nbl_adapt_refuse(c, "has both attribute '%s' and input %d", name, s->input + j);
    const nbl_attr *a = nbl_node_attr(n, name);
    if (a->type != s->attr_type)
      return nbl_adapt_refuse(c, "attribute '%s' is %s, expected %s", name,
                              nbl_attr_type_name(a->type), nbl_attr_type_name(s->attr_type));
    if (s->attr_type == NBL_ATTR_FLOAT && !fdt) {
      fdt = nbl_adapt_elem(c, n->inputs[0]);
      unsigned char tmp[8];
      if (!fdt)
        return nbl_adapt_refuse(c, "the element type of input 0 is not known (attribute '%s' "
                                   "becomes an input of that type)", name);
      if (!float_as(fdt, 0, tmp))
        return nbl_adapt_refuse(c, "attribute '%s' cannot become an input of type %s", name,
                                nbl_dtype_name(fdt));
    }
  }
  for (int j = 0; list_item(s->attr, j, name, sizeof name); j++) {
    const nbl_attr *a = nbl_node_attr(nbl_adapt_node(c), name);
    if (!a) continue;
    nbl_id v;
    int64_t d = a->n;
    unsigned char b[8];
    switch (s->attr_type) {
    case NBL_ATTR_INTS: v = nbl_adapt_const(c, name, NBL_DT_INT64, 1, &d, a->ints); break;
    case NBL_ATTR_INT: d = 1, v = nbl_adapt_const(c, name, NBL_DT_INT64, 1, &d, &a->i); break;
    case NBL_ATTR_FLOATS: v = nbl_adapt_const(c, name, NBL_DT_FLOAT, 1, &d, a->floats); break;
    default:
      float_as(fdt, a->f, b);
      v = nbl_adapt_const(c, name, fdt, 0, NULL, b);
      break;
    }
    if (v == NBL_NONE) return oom();
    nbl_adapt_drop_attr(c, name);
    nbl_adapt_drop_attr(c, "consumed_inputs");
    nbl_status st = nbl_adapt_set_input(c, s->input + j, v);
    if (st) return st;
  }
  return NBL_OK;
}

nbl_status nbl_adapt_inputs_to_attrs(nbl_adapt_ctx *c) {
  const nbl_op_adapter *s = c->step;
  char name[64];
  const nbl_tensor *t[8] = {0};
  int cnt = 0;
  for (int j = 0; j < 8 && list_item(s->attr, j, name, sizeof name); j++, cnt++) {
    const nbl_node *n = nbl_adapt_node(c);
    int i = s->input + j;
    if (i >= n->n_inputs || n->inputs[i] == NBL_NONE) continue;
    t[j] = nbl_adapt_const_input(c, i);
    if (!t[j]) return nbl_adapt_refuse(c, "input %d ('%s') is not a constant", i, name);
    int64_t numel = nbl_tensor_numel(t[j]);
    bool is_int = t[j]->dtype == NBL_DT_INT64 || t[j]->dtype == NBL_DT_INT32;
    bool ok = s->attr_type == NBL_ATTR_INTS   ? is_int && t[j]->rank == 1
              : s->attr_type == NBL_ATTR_INT  ? is_int && numel == 1
              : s->attr_type == NBL_ATTR_FLOATS ? t[j]->dtype == NBL_DT_FLOAT && t[j]->rank == 1
                                               : numel == 1 && t[j]->dtype != NBL_DT_STRING;
    if (!ok) return nbl_adapt_refuse(c, "input %d ('%s') has no attribute form", i, name);
  }
  const nbl_node *n = nbl_adapt_node(c);
  for (int i = s->input + cnt; i < n->n_inputs; i++)
    if (n->inputs[i] != NBL_NONE)
      return nbl_adapt_refuse(c, "input %d has no form before opset %d", i, s->to);
  for (int j = 0; j < cnt; j++) {
    if (!t[j]) continue;
    list_item(s->attr, j, name, sizeof name);
    int64_t numel = nbl_tensor_numel(t[j]);
    if (s->attr_type == NBL_ATTR_INTS || s->attr_type == NBL_ATTR_FLOATS) {
      nbl_attr *a = nbl_node_add_attr(c->graph, c->node, name, s->attr_type);
      if (!a) return oom();
      a->n = (int)numel;
      if (s->attr_type == NBL_ATTR_INTS) {
        a->ints = nbl_arena_alloc(c->model->arena, sizeof(int64_t) * (size_t)(numel ? numel : 1));
        if (!a->ints) return oom();
        for (int64_t k = 0; k < numel; k++) a->ints[k] = nbl_tensor_get_i64(t[j], k);
      } else {
        a->floats = nbl_arena_alloc(c->model->arena, sizeof(float) * (size_t)(numel ? numel : 1));
        if (!a->floats) return oom();
        for (int64_t k = 0; k < numel; k++) a->floats[k] = (float)nbl_tensor_get_f64(t[j], k);
      }
    } else if (s->attr_type == NBL_ATTR_INT) {
      nbl_node_set_attr_int(c->graph, c->node, name, nbl_tensor_get_i64(t[j], 0));
    } else {
      nbl_node_set_attr_float(c->graph, c->node, name, (float)nbl_tensor_get_f64(t[j], 0));
    }
  }
  for (int j = cnt - 1; j >= 0; j--) {
    nbl_status st = nbl_adapt_set_input(c, s->input + j, NBL_NONE);
    if (st) return st;
  }
  return NBL_OK;
}

nbl_status nbl_adapt_keep(nbl_adapt_ctx *c) {
  (void)c;
  return NBL_OK;
}

nbl_status nbl_adapt_drop_attrs(nbl_adapt_ctx *c) {
  char name[64];
  for (int j = 0; list_item(c->step->attr, j, name, sizeof name); j++) nbl_adapt_drop_attr(c, name);
  return NBL_OK;
}

nbl_status nbl_adapt_is_test(nbl_adapt_ctx *c) {
  if (nbl_attr_int(nbl_adapt_node(c), "is_test", 0) == 0)
    return nbl_adapt_refuse(c, "is_test=0 (the default: training mode) is not converted");
  nbl_adapt_drop_attr(c, "is_test");
  nbl_adapt_drop_attr(c, "consumed_inputs");
  return NBL_OK;
}

nbl_status nbl_adapt_is_test_down(nbl_adapt_ctx *c) {
  nbl_node_set_attr_int(c->graph, c->node, "is_test", 1);
  return NBL_OK;
}

/* Cast output 1 of the node, of type `from` in the new form, to `to` (the
 * old form's type), keeping the value's name and uses. */
static nbl_status mask_cast(nbl_adapt_ctx *c, nbl_dtype to) {
  if (!nbl_adapt_output_used(c, 1)) return NBL_OK;
  nbl_id mask = nbl_adapt_node(c)->outputs[1];
  nbl_id m2 = nbl_adapt_detach_output(c, 1, "mask");
  if (m2 == NBL_NONE || nbl_adapt_add_node(c, "Cast", "mask_cast", 1, &m2, mask) == NBL_NONE)
    return oom();
  nbl_node_set_attr_int(c->graph, c->graph->values[mask].producer, "to", to);
  return NBL_OK;
}

nbl_status nbl_adapt_mask_bool(nbl_adapt_ctx *c) {
  const nbl_node *n = nbl_adapt_node(c);
  if (!nbl_adapt_output_used(c, 1)) return NBL_OK;
  nbl_dtype t = n->n_inputs ? nbl_adapt_elem(c, n->inputs[0]) : NBL_DT_UNDEFINED;
  if (!t)
    return nbl_adapt_refuse(c, "output 1 is used and the element type of input 0 is unknown");
  return mask_cast(c, t);
}

nbl_status nbl_adapt_mask_bool_down(nbl_adapt_ctx *c) { return mask_cast(c, NBL_DT_BOOL); }

nbl_status nbl_adapt_align_input(nbl_adapt_ctx *c, int i, int64_t axis) {
  const nbl_node *n = nbl_adapt_node(c);
  int ra = nbl_adapt_rank(c, n->inputs[0]), rb = nbl_adapt_rank(c, n->inputs[i]);
  if (ra < 0 || rb < 0) {
    int which = ra < 0 ? 0 : i;
    const char *name = c->graph->values[n->inputs[which]].name;
    return nbl_adapt_refuse(c, "input %d aligned at axis %lld needs the rank of input %d '%s', "
                               "which is not known", i, (long long)axis, which, name ? name : "");
  }
  int trailing = nbl_bcast_axis_units(ra, rb, axis);
  if (trailing < 0)
    return nbl_adapt_refuse(c, "axis %lld does not fit ranks %d and %d", (long long)axis, ra, rb);
  if (trailing == 0) return NBL_OK;
  if (trailing > NBL_MAX_RANK)
    return nbl_adapt_refuse(c, "rank %d is above the %d nibble handles", ra, NBL_MAX_RANK);
  /* B gets `trailing` unit dims at its end: Unsqueeze (its form at ctx->to) */
  nbl_id b = n->inputs[i];
  nbl_id u = nbl_adapt_add_node(c, "Unsqueeze", "unsqueezed", 1, &b, NBL_NONE);
  if (u == NBL_NONE) return oom();
  int64_t axes[NBL_MAX_RANK];
  for (int k = 0; k < trailing; k++) axes[k] = rb + k;
  nbl_node_set_attr_ints(c->graph, c->graph->values[u].producer, "axes", trailing, axes);
  nbl_node_set_input(c->graph, c->node, i, u);
  return NBL_OK;
}

nbl_status nbl_adapt_legacy_broadcast(nbl_adapt_ctx *c) {
  const nbl_node *n = nbl_adapt_node(c);
  int64_t axis = 0;
  if (n->n_inputs >= 2 && nbl_bcast_legacy(n, c->from, &axis) == NBL_BCAST_AXIS) {
    nbl_status st = nbl_adapt_align_input(c, 1, axis);
    if (st) return st;
  }
  nbl_adapt_drop_attr(c, "broadcast");
  nbl_adapt_drop_attr(c, "axis");
  nbl_adapt_drop_attr(c, "consumed_inputs");
  return NBL_OK;
}

/* ------------------------------------------------------------------ shared histories */

const nbl_op_adapter nbl_adapt_consumed_inputs6[] = {
    {.from = 1, .to = 6, .up = nbl_adapt_drop_attrs, .attr = "consumed_inputs"},
    {0},
};

const nbl_op_adapter nbl_adapt_broadcast7[] = {
    {.from = 1, .to = 7, .up = nbl_adapt_legacy_broadcast},
    {0},
};
