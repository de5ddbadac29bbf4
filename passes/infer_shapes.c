/* infer_shapes.c - the infer-shapes pass: element types and shapes for every
 * value a node produces.
 *
 * Nodes are visited in topological order; each op's rule reads its inputs'
 * types (and, where the output shape depends on input data, the data when it
 * is constant) and produces its outputs' types (runtime/core/shape.h). Symbolic dims ("N") pass
 * through unchanged; a dim computed from a symbolic one becomes unknown.
 * Small integer tensors whose elements are known (initializers, Constant
 * nodes, and what Shape/Gather/Slice/Concat/... compute from them) are kept in
 * a per-value side table, so the usual exported Shape -> Gather -> Concat ->
 * Reshape chains resolve. Declared types are kept when more specific; a
 * contradiction between a declared and an inferred type is an error. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pass.h"
#include "runtime/core/shape.h"

#define MAX_UNK_OPS 24

typedef struct pctx {
  nbl_pass_ctx *ctx;
  nbl_model *m;
  int typed, unknown, changed;
  int n_ops;
  const char *ops[MAX_UNK_OPS];
  int more_ops;
} pctx;

static nbl_status infer_graph(pctx *p, nbl_graph *g);

static void note_unknown_op(pctx *p, const char *op) {
  for (int i = 0; i < p->n_ops; i++)
    if (strcmp(p->ops[i], op) == 0) return;
  if (p->n_ops < MAX_UNK_OPS)
    p->ops[p->n_ops++] = op;
  else
    p->more_ops = 1;
}

/* ------------------------------------------------------------------ op rules */

static nbl_status op_shape(nbl_shape_ctx *c) {
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  if (x.rank < 0) return nbl_shp_set_dt(c, 0, NBL_DT_INT64, 1);
  int64_t s = 0, e = x.rank;
  if (c->opset >= 15) {
    s = nbl_attr_int(c->node, "start", 0);
    e = nbl_attr_int(c->node, "end", x.rank);
    if (s < 0) s += x.rank;
    if (e < 0) e += x.rank;
    if (s < 0) s = 0;
    if (s > x.rank) s = x.rank;
    if (e < 0) e = 0;
    if (e > x.rank) e = x.rank;
  }
  int64_t len = e > s ? e - s : 0;
  nbl_shp o;
  o.dt = NBL_DT_INT64;
  o.rank = 1;
  o.d[0] = nbl_dim_val(len);
  nbl_status st = nbl_shp_set(c, 0, &o);
  if (st || len > NBL_SHP_MAXK) return st;
  nbl_kdata k;
  k.rank = 1;
  k.n = (int)len;
  for (int i = 0; i < len; i++) {
    nbl_dim d = x.d[s + i];
    k.e[i].kind = nbl_dim_known(d) ? NBL_KD_VAL : d.param ? NBL_KD_SYM : NBL_KD_UNK;
    k.e[i].v = d.value;
    k.e[i].p = d.param;
  }
  return nbl_shp_set_kd(c, 0, &k);
}

static nbl_status op_size(nbl_shape_ctx *c) {
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  nbl_status st = nbl_shp_set_dt(c, 0, NBL_DT_INT64, 0);
  if (st || x.rank < 0) return st;
  nbl_dim p = nbl_dim_prod(x.d, x.rank);
  if (!nbl_dim_known(p)) return NBL_OK;
  nbl_kdata k = {.rank = 0, .n = 1};
  k.e[0].kind = NBL_KD_VAL;
  k.e[0].v = p.value;
  return nbl_shp_set_kd(c, 0, &k);
}

static nbl_status op_constant_of_shape(nbl_shape_ctx *c) {
  const nbl_attr *a = nbl_node_attr(c->node, "value");
  nbl_dtype dt = (a && a->type == NBL_ATTR_TENSOR && a->t) ? a->t->dtype : NBL_DT_FLOAT;
  nbl_kdata k;
  nbl_shp o, sh;
  if (!nbl_shp_in_kd(c, 0, &k) || k.n > NBL_SHP_MAXR) {
    nbl_shp_in(c, 0, &sh);
    if (sh.rank == 1 && nbl_dim_known(sh.d[0]) && sh.d[0].value <= NBL_SHP_MAXR)
      return nbl_shp_set_dt(c, 0, dt, (int)sh.d[0].value);
    return nbl_shp_set_dt(c, 0, dt, -1);
  }
  o.dt = dt;
  o.rank = k.n;
  for (int i = 0; i < k.n; i++) {
    o.d[i] = nbl_dim_unk();
    if (k.e[i].kind == NBL_KD_VAL) o.d[i] = nbl_dim_val(k.e[i].v);
    else if (k.e[i].kind == NBL_KD_SYM) o.d[i].param = k.e[i].p;
  }
  nbl_status st = nbl_shp_set(c, 0, &o);
  /* a small integer result is known data too */
  if (!st && k.n == 1 && k.e[0].kind == NBL_KD_VAL && k.e[0].v <= NBL_SHP_MAXK && nbl_shp_is_int(dt) && a &&
      a->t && nbl_shp_payload_ok(a->t, 1)) {
    nbl_kdata r = {.rank = 1, .n = (int)k.e[0].v};
    for (int i = 0; i < r.n; i++) {
      r.e[i].kind = NBL_KD_VAL;
      r.e[i].v = nbl_tensor_get_i64(a->t, 0);
    }
    st = nbl_shp_set_kd(c, 0, &r);
  }
  return st;
}

static nbl_status op_range(nbl_shape_ctx *c) {
  nbl_dtype dt = nbl_shp_in_dtype(c, 0);
  double s[1], l[1], d[1];
  int n1, n2, n3;
  if (nbl_shp_in_floats(c, 0, s, &n1, 1) && nbl_shp_in_floats(c, 1, l, &n2, 1) && nbl_shp_in_floats(c, 2, d, &n3, 1) &&
      n1 == 1 && n2 == 1 && n3 == 1 && d[0] != 0) {
    double cnt = ceil((l[0] - s[0]) / d[0]);
    if (cnt < 0) cnt = 0;
    nbl_shp o;
    o.dt = dt;
    o.rank = 1;
    o.d[0] = nbl_dim_val((int64_t)cnt);
    return nbl_shp_set(c, 0, &o);
  }
  return nbl_shp_set_dt(c, 0, dt, 1);
}

static nbl_status op_constant(nbl_shape_ctx *c) {
  const nbl_node *n = c->node;
  nbl_shp o;
  for (int i = 0; i < n->n_attrs; i++) {
    const nbl_attr *a = &n->attrs[i];
    if (!strcmp(a->name, "value") && a->type == NBL_ATTR_TENSOR && a->t) {
      if (a->t->rank > NBL_SHP_MAXR) return nbl_shp_set_dt(c, 0, a->t->dtype, -1);
      o.dt = a->t->dtype;
      o.rank = a->t->rank;
      for (int d = 0; d < o.rank; d++) o.d[d] = nbl_dim_val(a->t->dims[d]);
      return nbl_shp_set(c, 0, &o);
    }
    nbl_kdata k = {.rank = 0, .n = 0};
    if (!strcmp(a->name, "value_float")) return nbl_shp_set_dt(c, 0, NBL_DT_FLOAT, 0);
    if (!strcmp(a->name, "value_string")) return nbl_shp_set_dt(c, 0, NBL_DT_STRING, 0);
    if (!strcmp(a->name, "value_int")) {
      nbl_status st = nbl_shp_set_dt(c, 0, NBL_DT_INT64, 0);
      k.n = 1;
      k.e[0].kind = NBL_KD_VAL;
      k.e[0].v = a->i;
      return st ? st : nbl_shp_set_kd(c, 0, &k);
    }
    int len = a->n;
    nbl_dtype dt = !strcmp(a->name, "value_floats") ? NBL_DT_FLOAT
                   : !strcmp(a->name, "value_ints") ? NBL_DT_INT64
                   : !strcmp(a->name, "value_strings") ? NBL_DT_STRING
                   : NBL_DT_UNDEFINED;
    if (!dt) continue;
    o.dt = dt;
    o.rank = 1;
    o.d[0] = nbl_dim_val(len);
    nbl_status st = nbl_shp_set(c, 0, &o);
    if (st || dt != NBL_DT_INT64 || len > NBL_SHP_MAXK) return st;
    k.rank = 1;
    k.n = len;
    for (int j = 0; j < len; j++) {
      k.e[j].kind = NBL_KD_VAL;
      k.e[j].v = a->ints[j];
    }
    return nbl_shp_set_kd(c, 0, &k);
  }
  return NBL_OK; /* sparse_value: left unknown */
}

static nbl_status op_cast(nbl_shape_ctx *c, nbl_dtype to) {
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  x.dt = to;
  nbl_status st = nbl_shp_set(c, 0, &x);
  nbl_kdata k;
  if (!st && nbl_shp_is_int(to) && nbl_shp_in_kd(c, 0, &k)) st = nbl_shp_set_kd(c, 0, &k);
  return st;
}

static nbl_status op_identity(nbl_shape_ctx *c) {
  nbl_status st = nbl_shape_same(c);
  nbl_kdata k;
  if (!st && nbl_shp_in_kd(c, 0, &k)) st = nbl_shp_set_kd(c, 0, &k);
  return st;
}

static nbl_status op_quantize(nbl_shape_ctx *c) {
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  nbl_dtype dt = NBL_DT_UINT8;
  int64_t od = c->opset >= 21 ? nbl_attr_int(c->node, "output_dtype", 0) : 0;
  if (od) dt = (nbl_dtype)od;
  else if (nbl_shp_has_in(c, 2)) dt = nbl_shp_in_dtype(c, 2);
  x.dt = dt;
  return nbl_shp_set(c, 0, &x);
}

static nbl_status op_dequantize(nbl_shape_ctx *c) {
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  nbl_dtype dt = nbl_shp_in_dtype(c, 1);
  x.dt = dt ? dt : NBL_DT_FLOAT;
  return nbl_shp_set(c, 0, &x);
}

static nbl_status op_dynquant(nbl_shape_ctx *c) {
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  x.dt = NBL_DT_UINT8;
  nbl_status st = nbl_shp_set(c, 0, &x);
  if (!st) st = nbl_shp_set_dt(c, 1, NBL_DT_FLOAT, 0);
  if (!st) st = nbl_shp_set_dt(c, 2, NBL_DT_UINT8, 0);
  return st;
}

/* Merge two graph output types (If branches): unknown where they differ. */
static void merge_branch(nbl_shp *a, const nbl_shp *b) {
  if (!a->dt) a->dt = b->dt;
  if (a->rank < 0 || b->rank < 0 || a->rank != b->rank) {
    a->rank = -1;
    return;
  }
  for (int i = 0; i < a->rank; i++)
    if (!nbl_dim_same(a->d[i], b->d[i])) a->d[i] = nbl_dim_unk();
}

static const nbl_graph *graph_attr(const nbl_node *n, const char *name) {
  const nbl_attr *a = nbl_node_attr(n, name);
  return a && a->type == NBL_ATTR_GRAPH ? a->g : NULL;
}

static nbl_status op_if(nbl_shape_ctx *c) {
  nbl_status st0 = nbl_shp_subgraphs(c);
  if (st0) return st0;
  const nbl_node *n = c->node;
  const nbl_graph *t = graph_attr(n, "then_branch"), *e = graph_attr(n, "else_branch");
  if (!t) return NBL_OK;
  for (int k = 0; k < n->n_outputs && k < t->n_outputs; k++) {
    nbl_shp a, b;
    nbl_shp_from_type(&t->values[t->outputs[k]].type, &a);
    if (e && k < e->n_outputs) {
      nbl_shp_from_type(&e->values[e->outputs[k]].type, &b);
      merge_branch(&a, &b);
    }
    nbl_status st = nbl_shp_set(c, k, &a);
    if (st) return st;
  }
  return NBL_OK;
}

/* Loop body inputs without a type get (iter int64[], cond bool[], carried from the loop). */
static void loop_seed_body(nbl_shape_ctx *c, nbl_graph *body) {
  const nbl_node *n = c->node;
  nbl_arena *a = body->model->arena;
  for (int i = 0; i < body->n_inputs; i++) {
    nbl_value *v = &body->values[body->inputs[i]];
    if (v->type.kind != NBL_TYPE_NONE) continue;
    if (i == 0) nbl_type_set_tensor(a, &v->type, NBL_DT_INT64, 0, NULL);
    else if (i == 1) nbl_type_set_tensor(a, &v->type, NBL_DT_BOOL, 0, NULL);
    else if (i < n->n_inputs && n->inputs[i] != NBL_NONE) {
      const nbl_value *src = &c->graph->values[n->inputs[i]];
      if (src->type.kind == NBL_TYPE_TENSOR) {
        nbl_type_copy(a, &v->type, &src->type);
        v->type.rank = -1; /* the carried shape may change from one iteration to the next */
        v->type.dims = NULL;
      }
    }
  }
}

static nbl_status op_loop(nbl_shape_ctx *c) {
  const nbl_node *n = c->node;
  const nbl_graph *body = graph_attr(n, "body");
  if (body) loop_seed_body(c, (nbl_graph *)body);
  nbl_status st0 = nbl_shp_subgraphs(c);
  if (st0 || !body) return st0;
  int ncarried = n->n_inputs - 2;
  for (int k = 0; k < n->n_outputs; k++) {
    int bo = k + 1;
    if (bo >= body->n_outputs) break;
    nbl_shp s;
    nbl_shp_from_type(&body->values[body->outputs[bo]].type, &s);
    if (k < ncarried) {
      nbl_shp init;
      nbl_shp_in(c, k + 2, &init);
      if (!s.dt) s.dt = init.dt;
      merge_branch(&s, &init);
    } else if (s.rank >= 0 && s.rank < NBL_SHP_MAXR) {
      memmove(s.d + 1, s.d, sizeof(nbl_dim) * (size_t)s.rank);
      s.d[0] = nbl_dim_unk();
      s.rank++;
    } else
      s.rank = -1;
    nbl_status st = nbl_shp_set(c, k, &s);
    if (st) return st;
  }
  return NBL_OK;
}

/* ------------------------------------------------------------------ op lists */

static const char *const unary_ops[] = {"Dropout", NULL};

static bool in_list(const char *const *l, const char *s) {
  for (; *l; l++)
    if (!strcmp(*l, s)) return true;
  return false;
}

/* Infer the outputs of node nid; *covered false when the op has no rule. */
static nbl_status infer_node(nbl_shape_ctx *c, bool *covered) {
  const nbl_node *n = c->node;
  const char *op = n->op_type;
  *covered = true;
  if (!strcmp(n->domain, "ai.nibble")) {
    if (!strcmp(op, "QuantizeInt4") || !strcmp(op, "QuantizeLog") || !strcmp(op, "QuantizeTernary"))
      return nbl_shape_same(c);
    *covered = false;
    return NBL_OK;
  }
  if (n->domain[0] && strcmp(n->domain, "ai.onnx")) {
    *covered = false;
    return NBL_OK;
  }
  if (in_list(unary_ops, op)) {
    nbl_status st = nbl_shape_same(c);
    if (!st && !strcmp(op, "Dropout")) {
      nbl_shp s;
      nbl_shp_in(c, 0, &s);
      s.dt = NBL_DT_BOOL;
      st = nbl_shp_set(c, 1, &s);
    }
    return st;
  }
  if (!strcmp(op, "MatMulInteger")) return nbl_shape_matmul(c, 0, 1, NBL_DT_INT32);
  if (!strcmp(op, "QLinearMatMul")) {
    nbl_dtype dt = nbl_shp_in_dtype(c, 7);
    return nbl_shape_matmul(c, 0, 3, dt ? dt : nbl_shp_in_dtype(c, 0));
  }
  if (!strcmp(op, "ConvInteger")) return nbl_shape_conv(c, 0, 1, NBL_DT_INT32, false);
  if (!strcmp(op, "QLinearConv")) {
    nbl_dtype dt = nbl_shp_in_dtype(c, 7);
    return nbl_shape_conv(c, 0, 3, dt ? dt : nbl_shp_in_dtype(c, 0), false);
  }
  if (!strcmp(op, "Cast")) {
    int64_t to = nbl_attr_int(n, "to", 0);
    if (!nbl_dtype_valid((int)to))
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "node '%s' (Cast): bad 'to' %lld", n->name, (long long)to);
    return op_cast(c, (nbl_dtype)to);
  }
  if (!strcmp(op, "CastLike")) return op_cast(c, nbl_shp_in_dtype(c, 1));
  if (!strcmp(op, "Shape")) return op_shape(c);
  if (!strcmp(op, "Size")) return op_size(c);
  if (!strcmp(op, "ConstantOfShape")) return op_constant_of_shape(c);
  if (!strcmp(op, "Range")) return op_range(c);
  if (!strcmp(op, "Constant")) return op_constant(c);
  if (!strcmp(op, "Identity")) return op_identity(c);
  if (!strcmp(op, "QuantizeLinear")) return op_quantize(c);
  if (!strcmp(op, "DequantizeLinear")) return op_dequantize(c);
  if (!strcmp(op, "DynamicQuantizeLinear")) return op_dynquant(c);
  if (!strcmp(op, "If")) return op_if(c);
  if (!strcmp(op, "Loop")) return op_loop(c);
  *covered = false;
  return NBL_OK;
}

/* ------------------------------------------------------------------ driver */

static nbl_status infer_graph_cb(void *driver, nbl_graph *g) { return infer_graph(driver, g); }

static nbl_status infer_graph(pctx *p, nbl_graph *g) {
  nbl_shape_ctx c = {.model = p->m, .graph = g, .changed = &p->changed,
                     .infer_graph = infer_graph_cb, .driver = p};
  c.kd = calloc((size_t)(g->n_values ? g->n_values : 1), sizeof(nbl_kdata *));
  if (!c.kd) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  nbl_id *order = NULL;
  int cnt = nbl_graph_topo_order(g, &order);
  nbl_status st = NBL_OK;
  if (cnt < 0) st = NBL_ERR_INVALID_MODEL;
  for (int i = 0; i < cnt && !st; i++) {
    const nbl_node *n = &g->nodes[order[i]];
    c.node = n;
    c.subgraphs_done = false;
    int64_t opset = nbl_model_opset(p->m, n->domain);
    const nbl_op_def *def = nbl_op_lookup_nearest(n->domain, n->op_type, (int)opset);
    c.opset = (int)opset;
    bool covered = def && def->shape;
    if (covered)
      st = def->shape(&c);
    else {
      c.opset = (int)nbl_model_opset(p->m, "");
      st = infer_node(&c, &covered);
    }
    if (!st && !c.subgraphs_done) st = nbl_shp_subgraphs(&c);
    if (st) {
      if (!strstr(nbl_last_error(), "node '"))
        nbl_error_prefix("node '%s' (%s)", n->name ? n->name : "", n->op_type);
      break;
    }
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
