/* fuse_f32.c - Conv + Relu/Clip fusion at plan time, and the activation
 * matching shared with the INT4 fusion. See fuse.h. */
#include "runtime/fusions/fuse.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/exec.h"

static const char *dom(const char *d) { return d && strcmp(d, "ai.onnx") ? d : ""; }

int nbl_fuse_is_op(const nbl_node *n, const char *domain, const char *op) {
  return n && !n->dead && !strcmp(dom(n->domain), domain) && !strcmp(n->op_type, op);
}

static int graph_uses(const nbl_graph *sub, const char *name) {
  for (int v = 0; v < sub->n_values; v++)
    if (!sub->values[v].dead && (sub->values[v].flags & NBL_VAL_OUTER) &&
        !strcmp(sub->values[v].name, name))
      return 1;
  return nbl_fuse_used_in_subgraphs(sub, name);
}

int nbl_fuse_used_in_subgraphs(const nbl_graph *g, const char *name) {
  for (int i = 0; i < g->n_nodes; i++) {
    const nbl_node *nd = &g->nodes[i];
    if (nd->dead) continue;
    for (int a = 0; a < nd->n_attrs; a++) {
      if (nd->attrs[a].type == NBL_ATTR_GRAPH && nd->attrs[a].g && graph_uses(nd->attrs[a].g, name))
        return 1;
      if (nd->attrs[a].type == NBL_ATTR_GRAPHS)
        for (int k = 0; k < nd->attrs[a].n; k++)
          if (graph_uses(nd->attrs[a].graphs[k], name)) return 1;
    }
  }
  return 0;
}

/* The value of a float32 scalar that is an initializer (not overridable by a
 * graph input) or the output of a Constant node; 0 if v is neither. */
static int const_scalar(const nbl_graph *g, nbl_id v, float *out) {
  if (v == NBL_NONE || (g->values[v].flags & NBL_VAL_INPUT)) return 0;
  const nbl_tensor *t = g->values[v].init;
  if (!t && g->values[v].producer != NBL_NONE) {
    const nbl_node *c = &g->nodes[g->values[v].producer];
    if (!nbl_fuse_is_op(c, "", "Constant") || c->n_attrs != 1) return 0;
    if (c->attrs[0].type == NBL_ATTR_FLOAT && !strcmp(c->attrs[0].name, "value_float")) {
      *out = c->attrs[0].f;
      return 1;
    }
    if (c->attrs[0].type != NBL_ATTR_TENSOR || strcmp(c->attrs[0].name, "value")) return 0;
    t = c->attrs[0].t;
  }
  if (!t) return 0;
  nbl_rt_tensor r;
  if (t->dtype != NBL_DT_FLOAT || nbl_shape_numel(t->rank, t->dims) != 1 ||
      nbl_rt_from_ir(t, &r) != NBL_OK || !r.data)
    return 0;
  *out = ((const float *)r.data)[0];
  return 1;
}

int nbl_fuse_find_activation(const nbl_model *m, const nbl_graph *g, const nbl_node *n,
                             nbl_id *act, float *lo, float *hi) {
  if (n->n_outputs != 1 || n->outputs[0] == NBL_NONE) return 0;
  nbl_id y = n->outputs[0];
  const nbl_value *yv = &g->values[y];
  if ((yv->flags & (NBL_VAL_OUTPUT | NBL_VAL_OUTER)) || yv->n_consumers != 1) return 0;
  nbl_id an = yv->consumers[0];
  const nbl_node *a = &g->nodes[an];
  if (a->n_inputs < 1 || a->inputs[0] != y || a->n_outputs != 1 || a->outputs[0] == NBL_NONE)
    return 0;
  for (int k = 1; k < a->n_inputs; k++)
    if (a->inputs[k] == y) return 0;
  int64_t opset = nbl_model_opset(m, "");
  if (opset == 0) opset = nbl_model_opset(m, "ai.onnx");
  float l = -INFINITY, h = INFINITY;
  if (nbl_fuse_is_op(a, "", "Relu")) {
    if (a->n_inputs != 1) return 0;
    l = 0.0f;
  } else if (nbl_fuse_is_op(a, "", "Clip")) {
    if (opset < 11) {
      l = nbl_attr_float(a, "min", -INFINITY);
      h = nbl_attr_float(a, "max", INFINITY);
    } else {
      if (a->n_inputs > 1 && a->inputs[1] != NBL_NONE && !const_scalar(g, a->inputs[1], &l))
        return 0;
      if (a->n_inputs > 2 && a->inputs[2] != NBL_NONE && !const_scalar(g, a->inputs[2], &h))
        return 0;
      if (a->n_inputs > 3) return 0;
    }
  } else {
    return 0;
  }
  if (nbl_fuse_used_in_subgraphs(g, yv->name)) return 0;
  *act = an;
  *lo = l;
  *hi = h;
  return 1;
}

typedef struct f32_fused {
  nbl_node node;
  nbl_attr *attrs; /* Conv's attributes + nibble.act_lo, nibble.act_hi */
  char op[16];
} f32_fused;

struct nbl_f32_fusion {
  int n_nodes;
  f32_fused **by_node;
};

void nbl_f32_fusion_free(nbl_f32_fusion *fu) {
  if (!fu) return;
  for (int i = 0; i < fu->n_nodes; i++)
    if (fu->by_node[i]) {
      free(fu->by_node[i]->attrs);
      free(fu->by_node[i]);
    }
  free(fu->by_node);
  free(fu);
}

static f32_fused *try_fuse(const nbl_model *m, const nbl_graph *g, nbl_id id, nbl_id *act) {
  const nbl_node *n = &g->nodes[id];
  if (!nbl_fuse_is_op(n, "", "Conv") || n->n_inputs < 2 || n->inputs[0] == NBL_NONE ||
      n->inputs[1] == NBL_NONE)
    return NULL;
  /* not where the IR says the data is another type than float32 (a Clip
   * with float bounds implies float32; an untyped Relu input of another type
   * takes the kernel's generic path) */
  const nbl_value *x = &g->values[n->inputs[0]];
  if (x->type.kind == NBL_TYPE_TENSOR && x->type.elem != NBL_DT_UNDEFINED &&
      x->type.elem != NBL_DT_FLOAT)
    return NULL;
  float lo, hi;
  if (!nbl_fuse_find_activation(m, g, n, act, &lo, &hi)) return NULL;
  const nbl_node *a = &g->nodes[*act];
  f32_fused *f = calloc(1, sizeof *f);
  if (!f) return NULL;
  f->attrs = calloc((size_t)n->n_attrs + 2, sizeof(nbl_attr));
  if (!f->attrs) {
    free(f);
    return NULL;
  }
  if (n->n_attrs) memcpy(f->attrs, n->attrs, sizeof(nbl_attr) * (size_t)n->n_attrs);
  f->attrs[n->n_attrs] = (nbl_attr){.name = "nibble.act_lo", .type = NBL_ATTR_FLOAT, .f = lo};
  f->attrs[n->n_attrs + 1] = (nbl_attr){.name = "nibble.act_hi", .type = NBL_ATTR_FLOAT, .f = hi};
  f->node = *n;
  f->node.attrs = f->attrs;
  f->node.n_attrs = n->n_attrs + 2;
  f->node.n_outputs = a->n_outputs;
  f->node.outputs = a->outputs;
  snprintf(f->op, sizeof f->op, "Conv+%s", a->op_type);
  f->node.op_type = f->op;
  return f;
}

nbl_status nbl_f32_fuse(const nbl_model *m, const nbl_graph *g, nbl_id *order, int *n,
                        int (*taken)(const void *user, nbl_id node), const void *user,
                        nbl_f32_fusion **out) {
  *out = NULL;
  if (!m || !g || g->n_nodes == 0) return NBL_OK;
  nbl_f32_fusion *fu = calloc(1, sizeof *fu);
  unsigned char *drop = calloc((size_t)g->n_nodes, 1);
  if (fu) fu->by_node = calloc((size_t)g->n_nodes, sizeof(f32_fused *));
  if (!fu || !drop || !fu->by_node) {
    free(drop);
    if (fu) free(fu->by_node);
    free(fu);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  fu->n_nodes = g->n_nodes;
  int any = 0;
  for (int s = 0; s < *n; s++) {
    nbl_id id = order[s], act;
    if (drop[id] || (taken && taken(user, id))) continue;
    f32_fused *f = try_fuse(m, g, id, &act);
    if (!f) continue;
    if (taken && taken(user, act)) { /* the activation belongs to another fusion */
      free(f->attrs);
      free(f);
      continue;
    }
    fu->by_node[id] = f;
    drop[act] = 1;
    any = 1;
  }
  if (!any) {
    free(drop);
    nbl_f32_fusion_free(fu);
    return NBL_OK;
  }
  int w = 0;
  for (int s = 0; s < *n; s++)
    if (!drop[order[s]]) order[w++] = order[s];
  *n = w;
  free(drop);
  *out = fu;
  return NBL_OK;
}

const nbl_node *nbl_f32_fused_node(const nbl_f32_fusion *fu, nbl_id node, const nbl_op_def **def) {
  if (!fu || node < 0 || node >= fu->n_nodes || !fu->by_node[node]) return NULL;
  *def = &nbl_fused_conv_act_def;
  return &fu->by_node[node]->node;
}

