/* fuse_f32.c - the conv-act fusion: an FP32 Conv whose only consumer is a
 * Relu or a constant-bound Clip, or whose input is a zero Pad that only it
 * reads, or both, runs as one node (Conv's kernel applying the activation
 * to each finished block, nbl_fused_conv_act_def; the Pad folded into its
 * pads, as ONNX Runtime's Pad fusion does: no padded copy of the input).
 * See fuse.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/fusions/fuse.h"

typedef struct f32_fused {
  nbl_node node;
  nbl_attr *attrs; /* Conv's attributes (pads with a folded Pad's) + nibble.act_lo, act_hi */
  nbl_id in[4];    /* Conv's inputs (input 0 the Pad's input when one is folded), the Add's operand */
  int64_t pads[2 * NBL_MAX_RANK];
  char op[24];
} f32_fused;

/* The Pad before Conv node n that folds into its pads (nbl_fuse_find_pad),
 * the merged pads in pads[0..2 ns); 0 when there is none or the Conv's
 * padding is automatic. */
static int find_pad(const nbl_model *m, const nbl_graph *g, nbl_id id, nbl_id *pad, int *ns,
                    int64_t *pads) {
  const nbl_node *n = &g->nodes[id];
  const char *ap = nbl_attr_string(n, "auto_pad", "NOTSET");
  if ((strcmp(ap, "NOTSET") && *ap) || !nbl_fuse_find_pad(m, g, n->inputs[0], id, pad, ns, pads))
    return 0;
  int cnt;
  const int64_t *own = nbl_attr_ints(n, "pads", &cnt);
  if (own && cnt != 2 * *ns) return 0;
  const int64_t *ks = nbl_attr_ints(n, "kernel_shape", &cnt);
  if (ks && cnt != *ns) return 0;
  for (int i = 0; own && i < 2 * *ns; i++) pads[i] += own[i];
  return 1;
}

static f32_fused *try_fuse(const nbl_fusion_env *env, nbl_id id, nbl_id *act, nbl_id *pad,
                           nbl_id *add) {
  const nbl_model *m = env->m;
  const nbl_graph *g = env->g;
  const nbl_node *n = &g->nodes[id];
  if (!nbl_fuse_is_op(n, "", "Conv") || n->n_inputs < 2 || n->n_inputs > 3 ||
      n->inputs[0] == NBL_NONE || n->inputs[1] == NBL_NONE)
    return NULL;
  /* not where the IR says the data is another type than float32 (a Clip
   * with float bounds implies float32; an untyped Relu input of another type
   * takes the kernel's generic path) */
  const nbl_value *x = &g->values[n->inputs[0]];
  if (x->type.kind == NBL_TYPE_TENSOR && x->type.elem != NBL_DT_UNDEFINED &&
      x->type.elem != NBL_DT_FLOAT)
    return NULL;
  float lo, hi;
  int64_t pads[2 * NBL_MAX_RANK];
  int ns = 0;
  *act = *pad = *add = NBL_NONE;
  nbl_id r = NBL_NONE;
  if (!nbl_fuse_find_activation(m, g, n, act, &lo, &hi)) {
    *act = NBL_NONE;
    /* Conv -> Add [-> Relu/Clip]: the fused node runs at the Add's place,
     * where the other operand is ready whatever the order (ResNet's
     * shortcut convolution may come after the block's last one); not below
     * opset 7 (the Add's legacy broadcast attributes) */
    int64_t opset = nbl_model_opset(m, "");
    if (opset == 0) opset = nbl_model_opset(m, "ai.onnx");
    if (opset >= 7 && n->n_outputs == 1)
      *add = nbl_fuse_find_residual(g, id, n->outputs[0], NULL, &r);
    if (*add != NBL_NONE && !nbl_fuse_find_activation(m, g, &g->nodes[*add], act, &lo, &hi))
      *act = NBL_NONE;
  }
  /* a value callback sees the Pad's output: the Pad runs */
  if (env->values_watched || !find_pad(m, g, id, pad, &ns, pads)) *pad = NBL_NONE;
  if (*act == NBL_NONE && *pad == NBL_NONE && *add == NBL_NONE) return NULL;
  f32_fused *f = calloc(1, sizeof *f);
  if (!f) return NULL;
  f->attrs = calloc((size_t)n->n_attrs + 3, sizeof(nbl_attr));
  if (!f->attrs) {
    free(f);
    return NULL;
  }
  int na = 0, has_pads = 0;
  for (int a = 0; a < n->n_attrs; a++) {
    f->attrs[na] = n->attrs[a];
    if (*pad != NBL_NONE && !strcmp(n->attrs[a].name, "pads")) {
      f->attrs[na].ints = f->pads;
      has_pads = 1;
    }
    na++;
  }
  if (*pad != NBL_NONE) {
    memcpy(f->pads, pads, sizeof(int64_t) * (size_t)(2 * ns));
    if (!has_pads)
      f->attrs[na++] = (nbl_attr){.name = "pads", .type = NBL_ATTR_INTS, .n = 2 * ns, .ints = f->pads};
  }
  if (*act != NBL_NONE) {
    f->attrs[na++] = (nbl_attr){.name = "nibble.act_lo", .type = NBL_ATTR_FLOAT, .f = lo};
    f->attrs[na++] = (nbl_attr){.name = "nibble.act_hi", .type = NBL_ATTR_FLOAT, .f = hi};
  }
  f->node = *n;
  f->node.attrs = f->attrs;
  f->node.n_attrs = na;
  memcpy(f->in, n->inputs, sizeof(nbl_id) * (size_t)n->n_inputs);
  if (*pad != NBL_NONE) f->in[0] = g->nodes[*pad].inputs[0];
  if (*add != NBL_NONE) {
    if (n->n_inputs < 3) f->in[2] = NBL_NONE;
    f->in[3] = r;
    f->node.n_inputs = 4;
    f->node.n_outputs = g->nodes[*add].n_outputs;
    f->node.outputs = g->nodes[*add].outputs;
  }
  f->node.inputs = f->in;
  if (*act != NBL_NONE) {
    f->node.n_outputs = g->nodes[*act].n_outputs;
    f->node.outputs = g->nodes[*act].outputs;
  }
  snprintf(f->op, sizeof f->op, "%sConv%s%s%s", *pad != NBL_NONE ? "Pad+" : "",
           *add != NBL_NONE ? "+Add" : "", *act != NBL_NONE ? "+" : "",
           *act != NBL_NONE ? g->nodes[*act].op_type : "");
  f->node.op_type = f->op;
  return f;
}

/* Each float32 Conv with its activation (nbl_fuse_find_activation) and/or
 * the zero Pad before it (nbl_fuse_find_pad), unless an earlier fusion took
 * one of them; the activation and Pad nodes leave the order. */
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
    nbl_id id = order[s], act, pad, add;
    if (drop[id] || fu->by_node[id] || env->taken(env, id)) continue;
    f32_fused *f = try_fuse(env, id, &act, &pad, &add);
    if (!f) continue;
    /* an activation, Add or Pad another fusion took (or this one, as its
     * Conv's node or an absorbed one) */
    if ((act != NBL_NONE && (env->taken(env, act) || drop[act] || fu->by_node[act])) ||
        (add != NBL_NONE && (env->taken(env, add) || drop[add] || fu->by_node[add])) ||
        (pad != NBL_NONE && (env->taken(env, pad) || drop[pad] || fu->by_node[pad]))) {
      free(f->attrs);
      free(f);
      continue;
    }
    if (add != NBL_NONE) { /* at the Add's place: the Conv leaves the order */
      fu->by_node[add] = f;
      drop[id] = 1;
    } else {
      fu->by_node[id] = f;
    }
    if (act != NBL_NONE) drop[act] = 1;
    if (pad != NBL_NONE) drop[pad] = 1;
    any = 1;
  }
  nbl_fuse_plan_finish(order, n, drop, any, fu, nbl_fuse_state_free, state);
  return NBL_OK;
}

/* The synthetic node: Conv's inputs and attributes (+ nibble.act_lo,
 * nibble.act_hi), the activation's output, op type "Conv+Relu" or
 * "Conv+Clip"; with a folded Pad, the Pad's input as input 0, pads the sum
 * of both, op type "Pad+Conv[+Relu|+Clip]". */
