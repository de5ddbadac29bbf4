/*
 * verify.c - the structural rules of ONNX checked on the IR (nbl_model_verify,
 * nbl_graph_verify) and structural equality of two models (nbl_model_equal).
 */
#include <stdlib.h>
#include <string.h>

#include "ir.h"

/* ------------------------------------------------------------------ verifier */

static bool str_empty(const char *s) { return !s || !*s; }

static nbl_status verify_type(const nbl_type *t, const char *what, const char *vname, int depth) {
  if (depth > 64)
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: value '%s': type nested too deeply", what, vname);
  switch (t->kind) {
  case NBL_TYPE_NONE:
    return NBL_OK;
  case NBL_TYPE_TENSOR:
  case NBL_TYPE_SPARSE_TENSOR:
  case NBL_TYPE_MAP:
    if (t->elem != NBL_DT_UNDEFINED && !nbl_dtype_valid((int)t->elem))
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: value '%s': unknown element type %d", what,
                        vname, (int)t->elem);
    if (t->kind != NBL_TYPE_MAP && t->rank > 0 && !t->dims)
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: value '%s': shape has no dims", what, vname);
    break;
  case NBL_TYPE_SEQUENCE:
  case NBL_TYPE_OPTIONAL:
    break;
  default:
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: value '%s': unknown type kind %d", what, vname,
                      (int)t->kind);
  }
  if (t->inner) return verify_type(t->inner, what, vname, depth + 1);
  return NBL_OK;
}

static nbl_status verify_tensor(const nbl_tensor *t, const char *what) {
  const char *name = t->name ? t->name : "";
  if (!nbl_dtype_valid((int)t->dtype))
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: tensor '%s': unknown element type %d", what, name,
                      (int)t->dtype);
  if (t->rank < 0 || (t->rank > 0 && !t->dims))
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: tensor '%s': bad rank %d", what, name, t->rank);
  int64_t n = nbl_tensor_numel(t);
  if (n < 0)
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: tensor '%s': shape overflows or is negative",
                      what, name);
  if (t->dtype == NBL_DT_STRING) {
    if (t->n_strings != n || (n && !t->strings))
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: tensor '%s': has %lld strings, shape needs %lld",
                        what, name, (long long)t->n_strings, (long long)n);
    return NBL_OK;
  }
  size_t need = nbl_dtype_nbytes(t->dtype, n);
  if (t->nbytes != need || (need && !t->data))
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: tensor '%s': holds %zu bytes, shape of %s needs %zu",
                      what, name, t->nbytes, nbl_dtype_name(t->dtype), need);
  return NBL_OK;
}

/* A value is defined in g when it is a graph input, an initializer, the output
 * of a live node, or captured from an enclosing graph. */
static bool value_defined(const nbl_graph *g, nbl_id v) {
  const nbl_value *val = &g->values[v];
  if (val->dead) return false;
  if (val->flags & (NBL_VAL_INPUT | NBL_VAL_OUTER)) return true;
  if (val->init) return true;
  return val->producer != NBL_NONE && !g->nodes[val->producer].dead;
}

static nbl_status verify_outer(const nbl_graph *g, const nbl_value *val, const char *what) {
  for (const nbl_graph *p = g->parent; p; p = p->parent) {
    nbl_id id = nbl_graph_find(p, val->name);
    if (id == NBL_NONE) continue;
    const nbl_value *pv = &p->values[id];
    if (pv->flags & NBL_VAL_OUTER) continue; /* keep going up */
    if (value_defined(p, id)) return NBL_OK;
    break;
  }
  return nbl_errorf(NBL_ERR_INVALID_MODEL,
                    "%s: '%s' is used from an enclosing graph but no enclosing graph defines it",
                    what, val->name);
}

static nbl_status verify_graph_rec(const nbl_graph *g, const char *what, int depth);

static nbl_status verify_attrs(const nbl_graph *g, const nbl_node *n, const char *what, int depth) {
  char sub[1024];
  for (int k = 0; k < n->n_attrs; k++) {
    const nbl_attr *at = &n->attrs[k];
    nbl_status st = NBL_OK;
    snprintf(sub, sizeof sub, "%s: node '%s' (%s): attribute '%s'", what, n->name, n->op_type,
             at->name ? at->name : "");
    if (str_empty(at->name))
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: node '%s' (%s): attribute without a name", what,
                        n->name, n->op_type);
    switch (at->type) {
    case NBL_ATTR_TENSOR:
      if (!at->t) return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: no tensor", sub);
      st = verify_tensor(at->t, sub);
      break;
    case NBL_ATTR_TENSORS:
      for (int i = 0; i < at->n && !st; i++) st = verify_tensor(at->tensors[i], sub);
      break;
    case NBL_ATTR_GRAPH:
    case NBL_ATTR_GRAPHS: {
      int cnt = at->type == NBL_ATTR_GRAPH ? 1 : at->n;
      for (int i = 0; i < cnt && !st; i++) {
        const nbl_graph *sg = at->type == NBL_ATTR_GRAPH ? at->g : at->graphs[i];
        if (!sg) return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: no graph", sub);
        if (sg->parent != g)
          return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: subgraph's parent is not the enclosing graph",
                            sub);
        char sw[1200];
        snprintf(sw, sizeof sw, "%s: graph '%s'", sub, sg->name);
        st = verify_graph_rec(sg, sw, depth + 1);
      }
      break;
    }
    case NBL_ATTR_TYPE_PROTO:
    case NBL_ATTR_TYPE_PROTOS:
      for (int i = 0; i < at->n && !st; i++) st = verify_type(&at->types[i], sub, at->name, 0);
      break;
    case NBL_ATTR_FLOAT: case NBL_ATTR_INT: case NBL_ATTR_STRING: case NBL_ATTR_FLOATS:
    case NBL_ATTR_INTS: case NBL_ATTR_STRINGS: case NBL_ATTR_SPARSE_TENSOR:
    case NBL_ATTR_SPARSE_TENSORS:
      break;
    default:
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: unknown attribute type %d", sub, (int)at->type);
    }
    if (st) return st;
  }
  return NBL_OK;
}

static nbl_status verify_graph_rec(const nbl_graph *g, const char *what, int depth) {
  if (depth > 64) return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: subgraphs nested too deeply", what);
  nbl_status st;
  /* values */
  for (nbl_id v = 0; v < g->n_values; v++) {
    const nbl_value *val = &g->values[v];
    if (val->dead) continue;
    if (str_empty(val->name))
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: value %d has no name", what, v);
    if (nbl_graph_find(g, val->name) != v)
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: value name '%s' is defined twice", what, val->name);
    st = verify_type(&val->type, what, val->name, 0);
    if (st) return st;
    if (val->flags & NBL_VAL_OUTER) {
      if (val->producer != NBL_NONE || val->init || (val->flags & NBL_VAL_INPUT))
        return nbl_errorf(NBL_ERR_INVALID_MODEL,
                          "%s: '%s' is defined here but also marked as coming from an enclosing graph",
                          what, val->name);
      if (!g->parent)
        return nbl_errorf(NBL_ERR_INVALID_MODEL,
                          "%s: value '%s' is not defined (the main graph has no enclosing graph)",
                          what, val->name);
      st = verify_outer(g, val, what);
      if (st) return st;
    }
    if (val->init) {
      const nbl_tensor *t = val->init;
      char tw[1100];
      snprintf(tw, sizeof tw, "%s: initializer", what);
      st = verify_tensor(t, what);
      if (st) return st;
      if (val->producer != NBL_NONE && !g->nodes[val->producer].dead)
        return nbl_errorf(NBL_ERR_INVALID_MODEL,
                          "%s: initializer '%s' is also the output of node '%s' (%s)", what,
                          val->name, g->nodes[val->producer].name, g->nodes[val->producer].op_type);
      if (val->type.kind == NBL_TYPE_TENSOR) {
        if (val->type.elem != NBL_DT_UNDEFINED && val->type.elem != t->dtype)
          return nbl_errorf(NBL_ERR_INVALID_MODEL,
                            "%s: initializer '%s' has element type %s, declared %s", what, val->name,
                            nbl_dtype_name(t->dtype), nbl_dtype_name(val->type.elem));
        bool bad = val->type.rank >= 0 && val->type.rank != t->rank;
        for (int i = 0; !bad && val->type.rank >= 0 && i < t->rank; i++)
          if (val->type.dims[i].value >= 0 && !val->type.dims[i].param &&
              val->type.dims[i].value != t->dims[i])
            bad = true;
        if (bad)
          return nbl_errorf(NBL_ERR_INVALID_MODEL,
                            "%s: initializer '%s' has a shape that differs from its declared type",
                            what, val->name);
      } else if (val->type.kind != NBL_TYPE_NONE) {
        return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: initializer '%s' is declared as a non-tensor",
                          what, val->name);
      }
    }
  }
  for (int i = 0; i < g->n_inputs; i++)
    if (g->inputs[i] < 0 || g->inputs[i] >= g->n_values || g->values[g->inputs[i]].dead)
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: graph input %d is a dead value", what, i);
  for (int i = 0; i < g->n_initializers; i++) {
    nbl_id v = g->initializers[i];
    if (v < 0 || v >= g->n_values)
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: initializer %d is not a value", what, i);
    for (int k = 0; k < i; k++)
      if (g->initializers[k] == v && !g->values[v].dead)
        return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: initializer '%s' is listed twice", what,
                          g->values[v].name);
    if (i > 64) break; /* quadratic check only on short lists; names are unique anyway */
  }
  /* nodes: producers, definitions */
  for (nbl_id ni = 0; ni < g->n_nodes; ni++) {
    const nbl_node *n = &g->nodes[ni];
    if (n->dead) continue;
    if (str_empty(n->op_type))
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: node '%s' has no op_type", what, n->name);
    if (!n->domain)
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: node '%s' (%s) has a NULL domain", what,
                        n->name, n->op_type);
    for (int k = 0; k < n->n_outputs; k++) {
      nbl_id v = n->outputs[k];
      if (v == NBL_NONE) continue;
      if (v < 0 || v >= g->n_values || g->values[v].dead)
        return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: node '%s' (%s): output %d is a dead value",
                          what, n->name, n->op_type, k);
      const nbl_value *val = &g->values[v];
      if (val->producer != ni)
        return nbl_errorf(NBL_ERR_INVALID_MODEL,
                          "%s: node '%s' (%s): output '%s' is also produced by another node", what,
                          n->name, n->op_type, val->name);
      for (int j = 0; j < k; j++)
        if (n->outputs[j] == v)
          return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: node '%s' (%s): output '%s' is listed twice",
                            what, n->name, n->op_type, val->name);
      if (val->flags & NBL_VAL_INPUT)
        return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: node '%s' (%s): output '%s' is a graph input",
                          what, n->name, n->op_type, val->name);
    }
    for (int k = 0; k < n->n_inputs; k++) {
      nbl_id v = n->inputs[k];
      if (v == NBL_NONE) continue;
      if (v < 0 || v >= g->n_values || !value_defined(g, v))
        return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: node '%s' (%s): input '%s' is not defined",
                          what, n->name, n->op_type,
                          (v >= 0 && v < g->n_values) ? g->values[v].name : "?");
    }
    st = verify_attrs(g, n, what, depth);
    if (st) return st;
  }
  for (int i = 0; i < g->n_outputs; i++) {
    nbl_id v = g->outputs[i];
    if (v < 0 || v >= g->n_values || !value_defined(g, v))
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: graph output '%s' is not defined", what,
                        (v >= 0 && v < g->n_values) ? g->values[v].name : "?");
  }
  /* cycles */
  nbl_id *order = NULL;
  int cnt = nbl_graph_topo_order(g, &order);
  if (cnt < 0) {
    /* the message reads "graph 'x': node ... is on a cycle"; keep our context */
    const char *msg = nbl_last_error();
    const char *p = strstr(msg, ": node ");
    char tail[1024];
    snprintf(tail, sizeof tail, "%s", p ? p + 2 : msg);
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: %s", what, tail);
  }
  free(order);
  return NBL_OK;
}

nbl_status nbl_graph_verify(const nbl_graph *g, const char *what) {
  if (!g) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_graph_verify: NULL graph");
  char w[512];
  if (!what) {
    snprintf(w, sizeof w, "graph '%s'", g->name ? g->name : "");
    what = w;
  }
  return verify_graph_rec(g, what, 0);
}

static bool graph_has_output(const nbl_graph *g, const char *name) {
  for (int i = 0; i < g->n_outputs; i++)
    if (strcmp(g->values[g->outputs[i]].name, name) == 0) return true;
  return false;
}

static nbl_status verify_model(const nbl_model *m) {
  if (!m->graph) return nbl_errorf(NBL_ERR_INVALID_MODEL, "model has no graph");
  if (m->ir_version >= 3 && m->n_opsets == 0)
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "model has no opset_import");
  for (int i = 0; i < m->n_opsets; i++)
    for (int k = 0; k < i; k++) {
      const char *a = m->opsets[i].domain ? m->opsets[i].domain : "";
      const char *b = m->opsets[k].domain ? m->opsets[k].domain : "";
      /* "" and "ai.onnx" name the same domain (nbl_model_opset) */
      if (strcmp(a, b) == 0 || (!strcmp(a, "ai.onnx") && !*b) || (!*a && !strcmp(b, "ai.onnx")))
        return nbl_errorf(NBL_ERR_INVALID_MODEL, "opset_import lists domain '%s' twice",
                          *a ? a : "ai.onnx");
    }
  char w[512];
  snprintf(w, sizeof w, "graph '%s'", m->graph->name ? m->graph->name : "");
  nbl_status st = verify_graph_rec(m->graph, w, 0);
  if (st) return st;
  const nbl_graph *mg = m->graph;
  for (int i = 0; i < m->n_training; i++) {
    const nbl_training_info *ti = &m->training[i];
    if (ti->initialization) {
      snprintf(w, sizeof w, "training_info[%d]: initialization graph '%s'", i, ti->initialization->name);
      st = verify_graph_rec(ti->initialization, w, 1);
      if (st) return st;
    }
    if (ti->algorithm) {
      snprintf(w, sizeof w, "training_info[%d]: algorithm graph '%s'", i, ti->algorithm->name);
      st = verify_graph_rec(ti->algorithm, w, 1);
      if (st) return st;
    }
    for (int pass = 0; pass < 2; pass++) {
      int n = pass ? ti->n_update_binding : ti->n_init_binding;
      const nbl_kv *kv = pass ? ti->update_binding : ti->init_binding;
      const nbl_graph *src = pass ? ti->algorithm : ti->initialization;
      const char *bname = pass ? "update_binding" : "initialization_binding";
      const char *gname = pass ? "algorithm" : "initialization";
      for (int k = 0; k < n; k++) {
        nbl_id v = nbl_graph_find(mg, kv[k].key ? kv[k].key : "");
        if (v == NBL_NONE || !mg->values[v].init)
          return nbl_errorf(NBL_ERR_INVALID_MODEL,
                            "training_info[%d]: %s key '%s' is not an initializer of the main graph",
                            i, bname, kv[k].key ? kv[k].key : "");
        if (!src || !graph_has_output(src, kv[k].value ? kv[k].value : ""))
          return nbl_errorf(NBL_ERR_INVALID_MODEL,
                            "training_info[%d]: %s value '%s' is not an output of the %s graph", i,
                            bname, kv[k].value ? kv[k].value : "", gname);
      }
    }
  }
  return NBL_OK;
}

nbl_status nbl_model_verify(const nbl_model *m) {
  if (!m) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_model_verify: NULL model");
  nbl_status st = verify_model(m);
  if (st) nbl_error_prefix("%s", nbl_model_label(m));
  return st;
}

/* ------------------------------------------------------------------ equality */

typedef struct eq_ctx {
  char *why;
  size_t len;
} eq_ctx;

static bool differ(eq_ctx *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool differ(eq_ctx *e, const char *fmt, ...) {
  if (e->why && e->len) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->why, e->len, fmt, ap);
    va_end(ap);
  }
  return false;
}

/* NULL and "" are the same (protobuf cannot tell them apart on every path). */
static bool s_eq(const char *a, const char *b) {
  return strcmp(a ? a : "", b ? b : "") == 0;
}

static bool blob_eq(const nbl_blob *a, const nbl_blob *b) {
  return a->len == b->len && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

static bool tensor_eq(eq_ctx *e, const nbl_tensor *a, const nbl_tensor *b, const char *where,
                      bool check_name) {
  if (!a || !b) return (a == b) || differ(e, "%s: tensor missing on one side", where);
  if (check_name && !s_eq(a->name, b->name))
    return differ(e, "%s: tensor name '%s' vs '%s'", where, a->name, b->name);
  if (!s_eq(a->doc_string, b->doc_string)) return differ(e, "%s: tensor doc_string differs", where);
  if (a->dtype != b->dtype)
    return differ(e, "%s: dtype %s vs %s", where, nbl_dtype_name(a->dtype), nbl_dtype_name(b->dtype));
  if (a->rank != b->rank) return differ(e, "%s: rank %d vs %d", where, a->rank, b->rank);
  for (int i = 0; i < a->rank; i++)
    if (a->dims[i] != b->dims[i]) return differ(e, "%s: dim %d differs", where, i);
  if (a->nbytes != b->nbytes) return differ(e, "%s: %zu vs %zu bytes", where, a->nbytes, b->nbytes);
  if (a->nbytes && memcmp(a->data, b->data, a->nbytes) != 0)
    return differ(e, "%s: data differs", where);
  if (a->n_strings != b->n_strings) return differ(e, "%s: string count differs", where);
  for (int64_t i = 0; i < a->n_strings; i++) {
    size_t la = a->string_lens ? a->string_lens[i] : strlen(a->strings[i]);
    size_t lb = b->string_lens ? b->string_lens[i] : strlen(b->strings[i]);
    if (la != lb || memcmp(a->strings[i], b->strings[i], la) != 0)
      return differ(e, "%s: string %lld differs", where, (long long)i);
  }
  if (!s_eq(a->ext_location, b->ext_location))
    return differ(e, "%s: external location '%s' vs '%s'", where,
                  a->ext_location ? a->ext_location : "", b->ext_location ? b->ext_location : "");
  return true;
}

static bool type_eq(eq_ctx *e, const nbl_type *a, const nbl_type *b, const char *where, int depth) {
  if (depth > 64) return true;
  if (a->kind != b->kind) return differ(e, "%s: type kind %d vs %d", where, a->kind, b->kind);
  if (a->elem != b->elem) return differ(e, "%s: element type %d vs %d", where, a->elem, b->elem);
  if (a->rank != b->rank) return differ(e, "%s: rank %d vs %d", where, a->rank, b->rank);
  if (!s_eq(a->denotation, b->denotation)) return differ(e, "%s: type denotation differs", where);
  for (int i = 0; i < a->rank; i++) {
    if (a->dims[i].value != b->dims[i].value || !s_eq(a->dims[i].param, b->dims[i].param) ||
        !s_eq(a->dims[i].denotation, b->dims[i].denotation))
      return differ(e, "%s: dim %d differs", where, i);
  }
  if (!a->inner || !b->inner)
    return (!a->inner && !b->inner) || differ(e, "%s: inner type missing on one side", where);
  return type_eq(e, a->inner, b->inner, where, depth + 1);
}

static bool graph_eq(eq_ctx *e, const nbl_graph *a, const nbl_graph *b, const char *where, int depth);

static bool attr_eq(eq_ctx *e, const nbl_attr *a, const nbl_attr *b, const char *where, int depth) {
  if (!s_eq(a->name, b->name)) return differ(e, "%s: attribute '%s' vs '%s'", where, a->name, b->name);
  char w[1024];
  snprintf(w, sizeof w, "%s: attribute '%s'", where, a->name);
  if (a->type != b->type) return differ(e, "%s: type %d vs %d", w, a->type, b->type);
  if (!s_eq(a->doc_string, b->doc_string)) return differ(e, "%s: doc_string differs", w);
  if (!s_eq(a->ref_attr_name, b->ref_attr_name)) return differ(e, "%s: ref_attr_name differs", w);
  switch (a->type) {
  case NBL_ATTR_FLOAT:
    if (memcmp(&a->f, &b->f, sizeof(float)) != 0) return differ(e, "%s: value differs", w);
    return true;
  case NBL_ATTR_INT:
    return a->i == b->i || differ(e, "%s: %lld vs %lld", w, (long long)a->i, (long long)b->i);
  case NBL_ATTR_STRING:
    if (a->s_len != b->s_len || (a->s_len && memcmp(a->s, b->s, a->s_len) != 0))
      return differ(e, "%s: string differs", w);
    return true;
  case NBL_ATTR_TENSOR:
    return tensor_eq(e, a->t, b->t, w, true);
  case NBL_ATTR_GRAPH:
    if (!a->g || !b->g) return (a->g == b->g) || differ(e, "%s: graph missing", w);
    return graph_eq(e, a->g, b->g, w, depth + 1);
  default:
    break;
  }
  if (a->n != b->n) return differ(e, "%s: %d vs %d elements", w, a->n, b->n);
  for (int i = 0; i < a->n; i++) {
    switch (a->type) {
    case NBL_ATTR_FLOATS:
      if (memcmp(&a->floats[i], &b->floats[i], sizeof(float)) != 0) return differ(e, "%s: [%d] differs", w, i);
      break;
    case NBL_ATTR_INTS:
      if (a->ints[i] != b->ints[i]) return differ(e, "%s: [%d] differs", w, i);
      break;
    case NBL_ATTR_STRINGS: {
      size_t la = a->string_lens ? a->string_lens[i] : strlen(a->strings[i]);
      size_t lb = b->string_lens ? b->string_lens[i] : strlen(b->strings[i]);
      if (la != lb || memcmp(a->strings[i], b->strings[i], la) != 0) return differ(e, "%s: [%d] differs", w, i);
      break;
    }
    case NBL_ATTR_TENSORS:
      if (!tensor_eq(e, a->tensors[i], b->tensors[i], w, true)) return false;
      break;
    case NBL_ATTR_GRAPHS:
      if (!graph_eq(e, a->graphs[i], b->graphs[i], w, depth + 1)) return false;
      break;
    case NBL_ATTR_SPARSE_TENSOR:
    case NBL_ATTR_SPARSE_TENSORS:
      if (!blob_eq(&a->sparse[i], &b->sparse[i])) return differ(e, "%s: sparse tensor %d differs", w, i);
      break;
    case NBL_ATTR_TYPE_PROTO:
    case NBL_ATTR_TYPE_PROTOS:
      if (!type_eq(e, &a->types[i], &b->types[i], w, 0)) return false;
      break;
    default:
      break;
    }
  }
  return true;
}

static bool id_list_eq(eq_ctx *e, const nbl_graph *ga, const nbl_id *a, int na, const nbl_graph *gb,
                       const nbl_id *b, int nb, const char *where, const char *what) {
  if (na != nb) return differ(e, "%s: %d vs %d %s", where, na, nb, what);
  for (int i = 0; i < na; i++)
    if (!s_eq(ga->values[a[i]].name, gb->values[b[i]].name))
      return differ(e, "%s: %s %d is '%s' vs '%s'", where, what, i, ga->values[a[i]].name,
                    gb->values[b[i]].name);
  return true;
}

static int live_nodes(const nbl_graph *g) {
  int n = 0;
  for (int i = 0; i < g->n_nodes; i++) n += !g->nodes[i].dead;
  return n;
}

static bool graph_eq(eq_ctx *e, const nbl_graph *a, const nbl_graph *b, const char *where, int depth) {
  if (depth > 64) return true;
  char w[1024];
  snprintf(w, sizeof w, "%s%sgraph '%s'", where, *where ? ": " : "", a->name);
  if (!s_eq(a->name, b->name)) return differ(e, "%s: name vs '%s'", w, b->name);
  if (!s_eq(a->doc_string, b->doc_string)) return differ(e, "%s: doc_string differs", w);
  if (!id_list_eq(e, a, a->inputs, a->n_inputs, b, b->inputs, b->n_inputs, w, "inputs")) return false;
  if (!id_list_eq(e, a, a->outputs, a->n_outputs, b, b->outputs, b->n_outputs, w, "outputs"))
    return false;
  if (!id_list_eq(e, a, a->initializers, a->n_initializers, b, b->initializers, b->n_initializers,
                  w, "initializers"))
    return false;
  if (!id_list_eq(e, a, a->value_infos, a->n_value_infos, b, b->value_infos, b->n_value_infos, w,
                  "value_infos"))
    return false;
  if (a->n_sparse_initializers != b->n_sparse_initializers)
    return differ(e, "%s: sparse initializer count differs", w);
  for (int i = 0; i < a->n_sparse_initializers; i++)
    if (!blob_eq(&a->sparse_initializers[i], &b->sparse_initializers[i]))
      return differ(e, "%s: sparse initializer %d differs", w, i);
  if (a->n_quantization_annotation != b->n_quantization_annotation)
    return differ(e, "%s: quantization annotation count differs", w);
  for (int i = 0; i < a->n_quantization_annotation; i++)
    if (!blob_eq(&a->quantization_annotation[i], &b->quantization_annotation[i]))
      return differ(e, "%s: quantization annotation %d differs", w, i);
  /* values, matched by name */
  int la = 0, lb = 0;
  for (int i = 0; i < a->n_values; i++) la += !a->values[i].dead;
  for (int i = 0; i < b->n_values; i++) lb += !b->values[i].dead;
  if (la != lb) return differ(e, "%s: %d vs %d values", w, la, lb);
  for (int i = 0; i < a->n_values; i++) {
    const nbl_value *va = &a->values[i];
    if (va->dead) continue;
    nbl_id j = nbl_graph_find(b, va->name);
    if (j == NBL_NONE) return differ(e, "%s: value '%s' missing", w, va->name);
    const nbl_value *vb = &b->values[j];
    char vw[1200];
    snprintf(vw, sizeof vw, "%s: value '%s'", w, va->name);
    if (va->flags != vb->flags) return differ(e, "%s: flags %u vs %u", vw, va->flags, vb->flags);
    if (!s_eq(va->doc_string, vb->doc_string)) return differ(e, "%s: doc_string differs", vw);
    if (!type_eq(e, &va->type, &vb->type, vw, 0)) return false;
    if (!tensor_eq(e, va->init, vb->init, vw, false)) return false;
  }
  /* nodes, live ones in order */
  if (live_nodes(a) != live_nodes(b))
    return differ(e, "%s: %d vs %d nodes", w, live_nodes(a), live_nodes(b));
  int j = 0;
  for (int i = 0; i < a->n_nodes; i++) {
    const nbl_node *na = &a->nodes[i];
    if (na->dead) continue;
    while (b->nodes[j].dead) j++;
    const nbl_node *nb = &b->nodes[j++];
    char nw[1200];
    snprintf(nw, sizeof nw, "%s: node %d '%s' (%s)", w, i, na->name, na->op_type);
    if (!s_eq(na->name, nb->name) || !s_eq(na->op_type, nb->op_type) || !s_eq(na->domain, nb->domain))
      return differ(e, "%s: vs '%s' (%s) domain '%s'", nw, nb->name, nb->op_type, nb->domain);
    if (!s_eq(na->doc_string, nb->doc_string)) return differ(e, "%s: doc_string differs", nw);
    if (na->n_inputs != nb->n_inputs || na->n_outputs != nb->n_outputs)
      return differ(e, "%s: input/output counts differ", nw);
    for (int k = 0; k < na->n_inputs; k++) {
      const char *x = na->inputs[k] == NBL_NONE ? "" : a->values[na->inputs[k]].name;
      const char *y = nb->inputs[k] == NBL_NONE ? "" : b->values[nb->inputs[k]].name;
      if (strcmp(x, y) != 0) return differ(e, "%s: input %d '%s' vs '%s'", nw, k, x, y);
    }
    for (int k = 0; k < na->n_outputs; k++) {
      const char *x = na->outputs[k] == NBL_NONE ? "" : a->values[na->outputs[k]].name;
      const char *y = nb->outputs[k] == NBL_NONE ? "" : b->values[nb->outputs[k]].name;
      if (strcmp(x, y) != 0) return differ(e, "%s: output %d '%s' vs '%s'", nw, k, x, y);
    }
    if (na->n_attrs != nb->n_attrs) return differ(e, "%s: %d vs %d attributes", nw, na->n_attrs, nb->n_attrs);
    for (int k = 0; k < na->n_attrs; k++)
      if (!attr_eq(e, &na->attrs[k], &nb->attrs[k], nw, depth)) return false;
  }
  return true;
}

static bool kv_eq(eq_ctx *e, const nbl_kv *a, int na, const nbl_kv *b, int nb, const char *what) {
  if (na != nb) return differ(e, "%s: %d vs %d entries", what, na, nb);
  for (int i = 0; i < na; i++)
    if (!s_eq(a[i].key, b[i].key) || !s_eq(a[i].value, b[i].value))
      return differ(e, "%s: entry %d '%s' differs", what, i, a[i].key ? a[i].key : "");
  return true;
}

bool nbl_model_equal(const nbl_model *a, const nbl_model *b, char *why, size_t why_len) {
  eq_ctx e = {why, why_len};
  if (why && why_len) why[0] = 0;
  if (!a || !b) return a == b || differ(&e, "one model is NULL");
  if (a->ir_version != b->ir_version) return differ(&e, "ir_version %lld vs %lld", (long long)a->ir_version, (long long)b->ir_version);
  if (!s_eq(a->producer_name, b->producer_name)) return differ(&e, "producer_name differs");
  if (!s_eq(a->producer_version, b->producer_version)) return differ(&e, "producer_version differs");
  if (!s_eq(a->domain, b->domain)) return differ(&e, "domain differs");
  if (!s_eq(a->doc_string, b->doc_string)) return differ(&e, "doc_string differs");
  if (a->model_version != b->model_version) return differ(&e, "model_version differs");
  if (a->n_opsets != b->n_opsets) return differ(&e, "%d vs %d opset imports", a->n_opsets, b->n_opsets);
  for (int i = 0; i < a->n_opsets; i++)
    if (!s_eq(a->opsets[i].domain, b->opsets[i].domain) || a->opsets[i].version != b->opsets[i].version)
      return differ(&e, "opset import %d differs", i);
  if (!kv_eq(&e, a->metadata, a->n_metadata, b->metadata, b->n_metadata, "metadata_props")) return false;
  if (a->n_functions != b->n_functions) return differ(&e, "%d vs %d functions", a->n_functions, b->n_functions);
  for (int i = 0; i < a->n_functions; i++)
    if (!blob_eq(&a->functions[i], &b->functions[i])) return differ(&e, "function %d differs", i);
  if (!a->graph || !b->graph) return a->graph == b->graph || differ(&e, "graph missing");
  if (!graph_eq(&e, a->graph, b->graph, "", 0)) return false;
  if (a->n_training != b->n_training) return differ(&e, "%d vs %d training infos", a->n_training, b->n_training);
  for (int i = 0; i < a->n_training; i++) {
    const nbl_training_info *x = &a->training[i], *y = &b->training[i];
    char w[64];
    snprintf(w, sizeof w, "training_info[%d]", i);
    if (!x->initialization != !y->initialization || !x->algorithm != !y->algorithm)
      return differ(&e, "%s: graphs present on one side only", w);
    if (x->initialization && !graph_eq(&e, x->initialization, y->initialization, w, 1)) return false;
    if (x->algorithm && !graph_eq(&e, x->algorithm, y->algorithm, w, 1)) return false;
    if (!kv_eq(&e, x->init_binding, x->n_init_binding, y->init_binding, y->n_init_binding, w)) return false;
    if (!kv_eq(&e, x->update_binding, x->n_update_binding, y->update_binding, y->n_update_binding, w))
      return false;
  }
  return true;
}
