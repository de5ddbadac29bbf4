/* fuse_silu.c - the silu fusion: SiLU (Swish) written out as
 * Mul(x, Sigmoid(x)) or Mul(Sigmoid(x), x), as PyTorch exports nn.SiLU
 * (EfficientNet, YOLO after every Conv), and HardSwish written out as
 * Mul(x, HardSigmoid(x)), run as one node: one pass over x, each vector
 * put through the activation and multiplied by x in registers
 * (nbl_unary_f32_mul, runtime/kernels/unary_f32.h), in parallel chunks.
 * Unfused, the activation output is written to memory and read back with x
 * by the Mul; here it is never written (ONNX Runtime fuses the same pattern
 * into its QuickGelu op).
 *
 * Same numbers as the two op kernels bit for bit: the activation is the
 * float32 kernel the op runs (the same inline function of unary_f32_body.h,
 * whose results do not depend on where a chunk starts), rounded to float,
 * then the same float multiplication as Mul's; where x is NaN the product
 * is Mul's NaN: its first operand's, quieted (x86's rule, which Mul's
 * kernel follows; test_fuse_silu checks both orders).
 *
 * Only where the graph types the activation's input as float32 or leaves it
 * untyped (another type at run time: the two op kernels run as unfused), the
 * activation's output is read by that Mul alone (not a graph output nor
 * captured by a subgraph: it is skipped) and the Mul's other operand is the
 * activation's own input (the same value: same shape, no broadcasting).
 * Not when a value callback watches. See fuse.h; NBL_NO_FUSION=silu turns
 * it off.
 *
 * The fused node (op type "Sigmoid+Mul" or "HardSigmoid+Mul") runs at the
 * Mul's place, where both x and the activation were ready:
 *   inputs:  x
 *   outputs: the Mul's
 *   attributes: the Mul's (the HardSigmoid's alpha and beta kept in the
 *   fused struct)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/fusions/fuse.h"
#include "runtime/kernels/unary_f32.h"

typedef struct silu_fused {
  nbl_node node; /* first: the kernel sees the whole struct through c->node */
  nbl_id in[1];
  const nbl_node *act, *mul; /* the graph's nodes, run as they are on other types */
  nbl_uf32 op;        /* NBL_UF_SIGMOID or NBL_UF_HARDSIGMOID */
  int act_first;      /* the Mul is Mul(act(x), x) */
  double alpha, beta; /* HardSigmoid's, as its kernel takes them */
  char op_type[24];
} silu_fused;

/* The activation node whose output Mul node `mn` reads as input `slot`
 * while its other input is the activation's input, or NULL. */
static const nbl_node *find_act(const nbl_fusion_env *env, const unsigned char *drop, nbl_id mn,
                                int slot, nbl_uf32 *op) {
  const nbl_graph *g = env->g;
  const nbl_node *M = &g->nodes[mn];
  nbl_id s = M->inputs[slot], x = M->inputs[1 - slot];
  const nbl_node *A = nbl_fuse_producer(g, s);
  if (!A || x == NBL_NONE || s == x) return NULL;
  nbl_id an = (nbl_id)(A - g->nodes);
  if (drop[an] || env->taken(env, an) || A->n_inputs != 1 || A->n_outputs != 1 || A->inputs[0] != x ||
      A->outputs[0] != s)
    return NULL;
  if (nbl_fuse_is_op(A, "", "Sigmoid"))
    *op = NBL_UF_SIGMOID;
  else if (nbl_fuse_is_op(A, "", "HardSigmoid"))
    *op = NBL_UF_HARDSIGMOID;
  else
    return NULL;
  if (!nbl_fuse_maybe_f32(g, x) || !nbl_fuse_only_feeds(g, s, mn, slot)) return NULL;
  return A;
}

nbl_status nbl_fuse_silu_plan(const nbl_fusion_env *env, nbl_id *order, int *n, void **state) {
  if (nbl_fuse_plan_skip(env, state)) return NBL_OK;
  const nbl_graph *g = env->g;
  nbl_fuse_state *fu;
  unsigned char *drop;
  int *pos;
  nbl_status st = nbl_fuse_plan_begin(g, order, *n, 0, &fu, &drop, &pos);
  if (st != NBL_OK) return st;
  int any = 0;
  for (int s = 0; s < *n; s++) {
    nbl_id mn = order[s];
    const nbl_node *M = &g->nodes[mn];
    if (drop[mn] || fu->by_node[mn] || env->taken(env, mn) || !nbl_fuse_is_op(M, "", "Mul") ||
        M->n_inputs != 2 || M->n_outputs != 1 || M->outputs[0] == NBL_NONE)
      continue;
    nbl_uf32 op = NBL_UF_SIGMOID;
    int slot = 1;
    const nbl_node *A = find_act(env, drop, mn, slot, &op);
    if (!A) A = find_act(env, drop, mn, slot = 0, &op);
    if (!A) continue;
    nbl_id an = (nbl_id)(A - g->nodes);
    if (pos[an] < 0 || pos[an] >= s) continue; /* the activation runs before the Mul */
    silu_fused *f = calloc(1, sizeof *f);
    if (!f) break; /* out of memory: the nodes run unfused */
    f->in[0] = A->inputs[0];
    f->act = A;
    f->mul = M;
    f->op = op;
    f->act_first = slot == 0;
    if (op == NBL_UF_HARDSIGMOID) { /* as HardSigmoid's kernel reads them */
      f->alpha = nbl_attr_float(A, "alpha", 0.2f);
      f->beta = nbl_attr_float(A, "beta", 0.5f);
    }
    f->node = *M;
    f->node.inputs = f->in;
    f->node.n_inputs = 1;
    snprintf(f->op_type, sizeof f->op_type, "%s+Mul", A->op_type);
    f->node.op_type = f->op_type;
    fu->by_node[mn] = f;
    drop[an] = 1;
    any = 1;
  }
  free(pos);
  nbl_fuse_plan_finish(order, n, drop, any, fu, nbl_fuse_state_free, state);
  return NBL_OK;
}

/* ------------------------------------------------------------------ kernel */

static void silu_run(const void *arg, const float *x, float *y, int64_t n) {
  const silu_fused *f = arg;
  /* the arguments are valid by construction: the status can only be OK */
  (void)nbl_unary_f32_mul(f->op, x, y, n, f->alpha, f->beta, f->act_first);
}

/* An x of another type than float32 (the graph left it untyped): the
 * activation's kernel into a tensor of its own, then Mul's into the fused
 * node's output, as the unfused graph runs them. */
static nbl_status k_unfused(nbl_kctx *c, const silu_fused *f, const nbl_rt_tensor *X) {
  nbl_kernel_fn ka = nbl_fuse_op_kernel(c, f->act->op_type), km = nbl_fuse_op_kernel(c, "Mul");
  if (!ka || !km) return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "no kernel for %s or Mul", f->act->op_type);
  nbl_rt_tensor s = {0};
  const nbl_rt_tensor *ain[NBL_KCTX_MIN_IN] = {X}, *min[NBL_KCTX_MIN_IN] = {0};
  nbl_status st = nbl_fuse_run_private(c, ka, f->act, ain, 1, &s);
  if (st == NBL_OK) {
    min[f->act_first ? 0 : 1] = &s;
    min[f->act_first ? 1 : 0] = X;
    nbl_kctx cm = *c;
    cm.node = f->mul;
    cm.n_in = 2;
    cm.in = min;
    st = km(&cm);
  }
  nbl_rt_tensor_free(&s);
  return st;
}

static nbl_status k_silu(nbl_kctx *c) {
  const nbl_rt_tensor *X = c->n_in > 0 ? c->in[0] : NULL;
  if (!X) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "required input 0 is missing");
  if (X->dtype != NBL_DT_FLOAT || X->kind != NBL_RT_TENSOR || c->reference)
    return k_unfused(c, (const silu_fused *)c->node, X);
  return nbl_fuse_map_f32(c, X, silu_run, c->node);
}

const nbl_op_def nbl_fused_silu_def = NBL_OP_DEF("", "SigmoidMul", 1, 1, .ref = k_silu, .fast = k_silu);
