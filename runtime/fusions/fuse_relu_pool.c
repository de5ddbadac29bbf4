/* fuse_relu_pool.c - the relu-pool fusion: a float32 Relu whose output a 2-D
 * MaxPool reads (Relu -> MaxPool, as in LeNet-5 and most convolutional
 * networks; in training graphs MaxPool also writes its Indices) runs with
 * that MaxPool as one node: each (n, c) plane of the Relu output is made
 * and pooled while it is in cache (nbl_relu_maxpool, runtime/ops/nn_pool.h).
 * Unfused, the pooling reads the whole Relu output back. The Relu output is
 * still written (ReluGrad, Shape and any other reader see it).
 *
 * Same numbers as the two op kernels bit for bit: Relu's own float kernel,
 * then MaxPool's. Only where the graph types the Relu input as float32. See
 * fuse.h; NBL_NO_FUSION=relu-pool turns it off.
 *
 * The fused node (op type "Relu+MaxPool") runs at Relu's place:
 *   inputs:  X (Relu's)
 *   outputs: Relu's output, then MaxPool's (Y, Indices when requested)
 *   attributes: MaxPool's
 */
#include <stdio.h>
#include <stdlib.h>

#include "runtime/fusions/fuse.h"
#include "runtime/ops/nn_pool.h"

typedef struct rp_fused {
  nbl_node node; /* first: the kernel sees the whole struct through c->node */
  nbl_id out[3];
  char op[16];
} rp_fused;

nbl_status nbl_fuse_relu_pool_plan(const nbl_fusion_env *env, nbl_id *order, int *n, void **state) {
  if (nbl_fuse_plan_skip(env, state)) return NBL_OK;
  const nbl_graph *g = env->g;
  nbl_fuse_state *fu;
  unsigned char *drop;
  nbl_status st = nbl_fuse_plan_begin(g, order, *n, 0, &fu, &drop, NULL);
  if (st != NBL_OK) return st;
  int any = 0;
  for (int s = 0; s < *n; s++) {
    nbl_id r = order[s];
    const nbl_node *R = &g->nodes[r];
    if (drop[r] || fu->by_node[r] || env->taken(env, r) || !nbl_fuse_is_op(R, "", "Relu") || R->n_inputs != 1 ||
        R->n_outputs != 1 || R->inputs[0] == NBL_NONE || R->outputs[0] == NBL_NONE)
      continue;
    const nbl_type *xt = &g->values[R->inputs[0]].type;
    if (xt->kind != NBL_TYPE_TENSOR || xt->elem != NBL_DT_FLOAT || (xt->rank >= 0 && xt->rank != 4)) continue;
    const nbl_value *v = &g->values[R->outputs[0]];
    for (int k = 0; k < v->n_consumers; k++) { /* the first MaxPool reading it (as X) later in the order */
      nbl_id p = v->consumers[k];
      const nbl_node *P = &g->nodes[p];
      if (drop[p] || fu->by_node[p] || env->taken(env, p) || !nbl_fuse_is_op(P, "", "MaxPool") ||
          P->n_inputs != 1 || P->inputs[0] != R->outputs[0] || P->n_outputs < 1 || P->n_outputs > 2 ||
          P->outputs[0] == NBL_NONE)
        continue;
      int later = 0;
      for (int t = s + 1; t < *n && !later; t++) later = order[t] == p;
      if (!later) continue;
      rp_fused *f = calloc(1, sizeof *f);
      if (!f) break; /* out of memory: the nodes run unfused */
      f->out[0] = R->outputs[0];
      f->out[1] = P->outputs[0];
      f->out[2] = P->n_outputs > 1 ? P->outputs[1] : NBL_NONE;
      f->node = *P;
      f->node.inputs = R->inputs;
      f->node.n_inputs = 1;
      f->node.outputs = f->out;
      f->node.n_outputs = 3;
      snprintf(f->op, sizeof f->op, "Relu+MaxPool");
      f->node.op_type = f->op;
      fu->by_node[r] = f;
      drop[p] = 1;
      any = 1;
      break;
    }
  }
  nbl_fuse_plan_finish(order, n, drop, any, fu, nbl_fuse_state_free, state);
  return NBL_OK;
}

static nbl_status k_relu_pool(nbl_kctx *c) { return nbl_relu_maxpool(c); }

const nbl_op_def nbl_fused_relu_pool_def =
    NBL_OP_DEF("", "ReluMaxPool", 1, 1, .ref = k_relu_pool, .fast = k_relu_pool);
