/* fuse_f32.c - the conv-act fusion: an FP32 Conv whose only consumer is a
 * Relu or a constant-bound Clip runs as one node (Conv's kernel applying
 * the activation to each finished block, nbl_fused_conv_act_def). See
 * fuse.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/fusions/fuse.h"

typedef struct f32_fused {
  nbl_node node;
  nbl_attr *attrs; /* Conv's attributes + nibble.act_lo, nibble.act_hi */
  char op[16];
} f32_fused;

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

/* Each float32 Conv with its activation (nbl_fuse_find_activation), unless
 * an earlier fusion took either; the activation nodes leave the order. */
nbl_status nbl_fuse_conv_act_plan(const nbl_fusion_env *env, nbl_id *order, int *n,
                                  void **state) {
  const nbl_model *m = env->m;
  const nbl_graph *g = env->g;
  *state = NULL;
  if (!m || !g || g->n_nodes == 0) return NBL_OK;
  nbl_fuse_state *fu;
  unsigned char *drop;
  nbl_status st = nbl_fuse_plan_begin(g, order, *n, 1, &fu, &drop, NULL);
  if (st != NBL_OK) return st;
  int any = 0;
  for (int s = 0; s < *n; s++) {
    nbl_id id = order[s], act;
    if (drop[id] || env->taken(env, id)) continue;
    f32_fused *f = try_fuse(m, g, id, &act);
    if (!f) continue;
    if (env->taken(env, act)) { /* the activation belongs to another fusion */
      free(f->attrs);
      free(f);
      continue;
    }
    fu->by_node[id] = f;
    drop[act] = 1;
    any = 1;
  }
  nbl_fuse_plan_finish(order, n, drop, any, fu, nbl_fuse_state_free, state);
  return NBL_OK;
}

/* The synthetic node: Conv's inputs and attributes (+ nibble.act_lo,
 * nibble.act_hi), the activation's output, op type "Conv+Relu" or
 * "Conv+Clip". */
