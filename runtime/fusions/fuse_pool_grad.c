/* fuse_pool_grad.c - the pool-grad fusion of training graphs: MaxPoolGrad
 * whose output only a ReluGrad reads (as its dY; build-training leaves this
 * after every Relu -> MaxPool) runs with it as one node. Unfused, MaxPoolGrad
 * writes an activation-sized dX (mostly zeros) and ReluGrad reads it back
 * with the Relu output and writes it again; fused, each element of the
 * result is written once, masked where it is made
 * (nbl_maxpool_relu_grad, runtime/ops/grad_pool.h: for 2 x 2 windows of
 * stride 2 the dense kernel, one pass).
 *
 * Same numbers as the unfused fast kernels bit for bit: MaxPoolGrad's float
 * sums (0 + dY, in order), kept where the Relu output is > 0 (ReluGrad's
 * ordered comparison), else +0 (another element type: MaxPoolGrad's kernel,
 * then the mask in place). Only where the graph does not type the tensors
 * as something else than float32. See fuse.h;
 * NBL_NO_FUSION=pool-grad turns it off.
 *
 * The fused node (op type "MaxPoolGrad+ReluGrad") runs at ReluGrad's place:
 *   inputs:  dY, Indices, X_shape (MaxPoolGrad's), V (ReluGrad's input 1)
 *   outputs: ReluGrad's output
 *   attributes: MaxPoolGrad's
 */
#include <stdio.h>
#include <stdlib.h>

#include "runtime/fusions/fuse.h"
#include "runtime/ops/grad_pool.h"

typedef struct pg_fused {
  nbl_node node; /* first: the kernel sees the whole struct through c->node */
  nbl_id in[4];
  char op[24];
} pg_fused;

nbl_status nbl_fuse_pool_grad_plan(const nbl_fusion_env *env, nbl_id *order, int *n, void **state) {
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
    if (drop[r] || fu->by_node[r] || env->taken(env, r) || !nbl_fuse_is_op(R, "com.microsoft", "ReluGrad") ||
        R->n_inputs != 2 || R->n_outputs != 1 || R->inputs[0] == NBL_NONE || R->inputs[1] == NBL_NONE ||
        R->outputs[0] == NBL_NONE)
      continue;
    nbl_id p = g->values[R->inputs[0]].producer;
    if (p == NBL_NONE || drop[p] || fu->by_node[p] || env->taken(env, p)) continue;
    const nbl_node *P = &g->nodes[p];
    if (!nbl_fuse_is_op(P, "com.microsoft", "MaxPoolGrad") || P->n_inputs != 3 || P->n_outputs != 1 ||
        P->inputs[0] == NBL_NONE || P->inputs[1] == NBL_NONE || P->inputs[2] == NBL_NONE ||
        !nbl_fuse_only_feeds(g, P->outputs[0], r, 0) || !nbl_fuse_maybe_f32(g, P->inputs[0]) ||
        !nbl_fuse_maybe_f32(g, R->inputs[1]))
      continue;
    pg_fused *f = calloc(1, sizeof *f);
    if (!f) break; /* out of memory: the nodes run unfused */
    for (int k = 0; k < 3; k++) f->in[k] = P->inputs[k];
    f->in[3] = R->inputs[1];
    f->node = *P;
    f->node.inputs = f->in;
    f->node.n_inputs = 4;
    f->node.outputs = R->outputs;
    f->node.n_outputs = 1;
    snprintf(f->op, sizeof f->op, "MaxPoolGrad+ReluGrad");
    f->node.op_type = f->op;
    fu->by_node[r] = f;
    drop[p] = 1;
    any = 1;
  }
  nbl_fuse_plan_finish(order, n, drop, any, fu, nbl_fuse_state_free, state);
  return NBL_OK;
}

static nbl_status k_pool_grad(nbl_kctx *c) {
  return nbl_maxpool_relu_grad(c, c->n_in > 3 ? c->in[3] : NULL);
}

const nbl_op_def nbl_fused_pool_grad_def =
    NBL_OP_DEF("com.microsoft", "MaxPoolGradReluGrad", 1, 1, .ref = k_pool_grad, .fast = k_pool_grad);
