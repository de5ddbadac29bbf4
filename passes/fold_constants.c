/* fold_constants.c - fold-constants: evaluate nodes whose inputs are all
 * constant (initializers that are not graph inputs) with the runtime's
 * reference kernels and replace their outputs with initializers. Constant
 * nodes become initializers. Results above `max-bytes` stay as nodes. */
#include <stdlib.h>
#include <string.h>

#include "nibble.h" /* folds a subgraph by running it in a reference session */
#include "pass.h"
#include "runtime/core/kernel.h"

/* A default-domain node without subgraphs whose op is not flagged random in
 * the op table (an op without a kernel is tried, and kept as not evaluable). */
static int foldable_op(const nbl_model *m, const nbl_node *n) {
  if (n->domain[0] && strcmp(n->domain, "ai.onnx") != 0) return 0;
  const nbl_op_def *d = nbl_op_lookup(n->domain, n->op_type, (int)nbl_model_opset(m, n->domain));
  if (d && (d->flags & NBL_OPF_RANDOM)) return 0;
  for (int a = 0; a < n->n_attrs; a++)
    if (n->attrs[a].type == NBL_ATTR_GRAPH || n->attrs[a].type == NBL_ATTR_GRAPHS) return 0;
  return 1;
}

static int is_constant(const nbl_graph *g, nbl_id v) {
  const nbl_value *val = &g->values[v];
  return val->init && !(val->flags & (NBL_VAL_INPUT | NBL_VAL_OUTER)) &&
         val->init->dtype != NBL_DT_STRING;
}

/* A one-node model computing node `id` of g from its constant inputs. */
static nbl_model *one_node_model(const nbl_model *src, const nbl_graph *g, nbl_id id) {
  const nbl_node *n = &g->nodes[id];
  nbl_model *m = nbl_model_new();
  if (!m) return NULL;
  m->ir_version = src->ir_version;
  for (int i = 0; i < src->n_opsets; i++)
    nbl_model_set_opset(m, src->opsets[i].domain, src->opsets[i].version);
  nbl_graph *t = m->graph;
  nbl_id ins[64], outs[64];
  if (n->n_inputs > 64 || n->n_outputs > 64) goto fail;
  for (int i = 0; i < n->n_inputs; i++) {
    ins[i] = NBL_NONE;
    if (n->inputs[i] == NBL_NONE) continue;
    const nbl_value *sv = &g->values[n->inputs[i]];
    nbl_id v = nbl_graph_find(t, sv->name);
    if (v == NBL_NONE) {
      const nbl_tensor *st = sv->init;
      v = nbl_graph_add_value(t, sv->name);
      nbl_tensor *ct = nbl_tensor_new_buf(m->arena, sv->name, st->dtype, st->rank, st->dims,
                                          nbl_buffer_ref(st->buf), st->data, st->nbytes);
      if (v == NBL_NONE || !ct) goto fail;
      nbl_type_set_tensor(m->arena, &t->values[v].type, st->dtype, st->rank, st->dims);
      nbl_graph_set_initializer(t, v, ct);
    }
    ins[i] = v;
  }
  for (int o = 0; o < n->n_outputs; o++) {
    outs[o] = NBL_NONE;
    if (n->outputs[o] == NBL_NONE) continue;
    outs[o] = nbl_graph_add_value(t, g->values[n->outputs[o]].name);
    if (outs[o] == NBL_NONE) goto fail;
  }
  nbl_id nid = nbl_graph_add_node(t, n->op_type, n->domain, n->name, n->n_inputs, ins,
                                  n->n_outputs, outs);
  if (nid == NBL_NONE) goto fail;
  nbl_node *tn = &t->nodes[nid];
  tn->n_attrs = n->n_attrs;
  tn->attrs = n->attrs; /* shared: the temporary model only reads them */
  for (int a = 0; a < n->n_attrs; a++) { /* the temporary model releases tensor refs it holds */
    if (n->attrs[a].type == NBL_ATTR_TENSOR && n->attrs[a].t) nbl_buffer_ref(n->attrs[a].t->buf);
    if (n->attrs[a].type == NBL_ATTR_TENSORS)
      for (int j = 0; j < n->attrs[a].n; j++) nbl_buffer_ref(n->attrs[a].tensors[j]->buf);
  }
  for (int o = 0; o < n->n_outputs; o++)
    if (outs[o] != NBL_NONE) nbl_graph_add_output(t, outs[o]);
  return m;
fail:
  nbl_model_free(m);
  return NULL;
}

nbl_status nbl_fold_node(nbl_model *m, nbl_graph *g, nbl_id id, int64_t max_bytes, nbl_fold_result *res) {
  *res = NBL_FOLD_NOT_CONSTANT;
  const nbl_node *node = &g->nodes[id];
  if (node->dead || !foldable_op(m, node)) return NBL_OK;
  for (int i = 0; i < node->n_inputs; i++)
    if (node->inputs[i] != NBL_NONE && !is_constant(g, node->inputs[i])) return NBL_OK;
  for (int o = 0; o < node->n_outputs; o++)
    if (node->outputs[o] != NBL_NONE && (g->values[node->outputs[o]].flags & NBL_VAL_OUTPUT))
      return NBL_OK; /* graph outputs stay computed */
  nbl_model *tm = one_node_model(m, g, id);
  if (!tm) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  nbl_session *s = NULL;
  nbl_session_options so = {.threads = 1, .reference = 1};
  const nbl_host_tensor *outs = NULL;
  nbl_status st = nbl_session_create(tm, &so, &s);
  if (st == NBL_OK) st = nbl_session_run(s, 0, NULL, &outs);
  if (st != NBL_OK) { /* not evaluable here (no kernel, or the kernel rejects it): keep the node */
    *res = NBL_FOLD_FAILED;
    nbl_session_free(s);
    nbl_model_free(tm);
    return NBL_OK;
  }
  int n_out = nbl_session_output_count(s), ok = 1;
  size_t total = 0;
  for (int o = 0; o < n_out; o++) {
    total += outs[o].nbytes;
    if (outs[o].dtype == NBL_DT_STRING || outs[o].kind != NBL_VALUE_TENSOR) ok = 0; /* (sequences are no initializers) */
  }
  if (!ok || (max_bytes >= 0 && (int64_t)total > max_bytes)) {
    *res = ok ? NBL_FOLD_TOO_BIG : NBL_FOLD_NOT_CONSTANT;
    nbl_session_free(s);
    nbl_model_free(tm);
    return NBL_OK;
  }
  /* the outputs become initializers of the same values */
  nbl_id outv[64];
  int n_outv = 0;
  for (int o = 0; o < node->n_outputs && n_outv < 64; o++)
    if (node->outputs[o] != NBL_NONE) outv[n_outv++] = node->outputs[o];
  nbl_node_kill(g, id);
  for (int o = 0; o < n_outv && o < n_out && !st; o++) {
    const nbl_host_tensor *h = &outs[o];
    nbl_value *v = &g->values[outv[o]];
    nbl_tensor *t = nbl_tensor_new(m->arena, v->name, h->dtype, h->rank, h->dims, h->data);
    if (!t) {
      st = nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
      break;
    }
    nbl_type_set_tensor(m->arena, &v->type, h->dtype, h->rank, h->dims);
    nbl_graph_set_initializer(g, outv[o], t);
  }
  if (!st) *res = NBL_FOLD_DONE;
  nbl_session_free(s);
  nbl_model_free(tm);
  return st;
}

static nbl_status fold_run(nbl_pass_ctx *ctx) {
  nbl_model *m = ctx->model;
  nbl_graph *g = m->graph;
  int64_t max_bytes = nbl_pass_opt_int(ctx, "max-bytes");
  int too_big = 0, failed = 0;
  nbl_id *order = NULL;
  int n = nbl_graph_topo_order(g, &order);
  if (n < 0) return NBL_ERR_INVALID_MODEL;
  nbl_status st = NBL_OK;
  for (int k = 0; k < n && !st; k++) {
    const nbl_node *node = &g->nodes[order[k]];
    char name[300], op[128];
    snprintf(name, sizeof name, "%s", node->name);
    snprintf(op, sizeof op, "%s", node->op_type);
    nbl_fold_result r;
    st = nbl_fold_node(m, g, order[k], max_bytes, &r);
    if (st) break;
    if (r == NBL_FOLD_DONE) ctx->changed++;
    else if (r == NBL_FOLD_TOO_BIG) too_big++;
    else if (r == NBL_FOLD_FAILED) {
      nbl_pass_logf(ctx, "kept '%s' (%s): %s", name, op, nbl_last_error());
      failed++;
    }
  }
  free(order);
  if (st) return st;
  if (ctx->changed) nbl_graph_dce(g);
  if (ctx->changed || too_big || failed)
    nbl_pass_logf(ctx, "folded %d node(s); %d left (result over %lld bytes), %d not evaluable",
                  ctx->changed, too_big, (long long)max_bytes, failed);
  return NBL_OK;
}

const nbl_pass_def nbl_pass_fold_constants = {
    .name = "fold-constants",
    .description = "evaluate nodes whose inputs are all constant (reference kernels) into initializers",
    .run = fold_run,
    .options = {{"max-bytes", NBL_OPT_INT, "1048576", "largest folded result, in bytes"}},
};
