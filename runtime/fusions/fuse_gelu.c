/* fuse_gelu.c - the gelu fusion: GELU in its erf form written out, as
 * PyTorch exports nn.GELU / F.gelu below opset 20 (ViT, ConvNeXt, BERT):
 *
 *   y = Mul(Mul(x, Add(Erf(Div(x, C1)), C2)), C3)
 *
 * with C1 = sqrt 2 rounded to float (1.4142135381698608), C2 = 1 and
 * C3 = 0.5, float32 scalar constants (initializers or Constant nodes), the
 * operands of the Add and of both Muls in either order. It runs as one node:
 * one pass over x, each vector divided, put through Erf, added to, and
 * multiplied twice in registers (nbl_unary_f32_gelu_erf,
 * runtime/kernels/unary_f32.h), in parallel chunks. Unfused, the five ops
 * write and read back four intermediate tensors.
 *
 * Same numbers as the five op kernels bit for bit: each step is the float
 * operation the op's kernel does (x / C1, the Erf kernel's float result of
 * that, + C2, x *, * C3), rounded to float at each step as there; the
 * constants are not NaN, so only Mul(x, u) has two operands that can both
 * be NaN, and there the product is Mul's NaN: its first operand's, quieted
 * (x86's rule, which Mul's kernel follows; test_fuse_gelu checks both
 * orders).
 *
 * Only where the graph types x and the intermediates as float32 or leaves
 * them untyped (another type at run time, or the reference engine: the five
 * op kernels run as unfused), each intermediate is read by the next node of
 * the chain alone (not a graph output nor captured by a subgraph: it is
 * skipped), and the Div's x is the Mul's. Other shapes of the pattern (x
 * times 0.5 first, other constants) stay unfused. Not when a value callback
 * watches. See fuse.h; NBL_NO_FUSION=gelu turns it off.
 *
 * The fused node (op type "Gelu(erf)") runs at the last Mul's place, where x
 * and the constants were ready:
 *   inputs:  x, C1, C2, C3 (the constants as the graph's values, for the
 *            unfused fallback)
 *   outputs: the last Mul's
 *   attributes: the last Mul's
 */
#include <stdlib.h>
#include <string.h>

#include "runtime/fusions/fuse.h"
#include "runtime/kernels/unary_f32.h"

#define GELU_C1 0x1.6a09e6p+0f /* sqrt 2 rounded to float: 1.4142135381698608 */

typedef struct gelu_fused {
  nbl_node node; /* first: the kernel sees the whole struct through c->node */
  nbl_id in[4];  /* x, C1, C2, C3 */
  /* the graph's nodes, run as they are on other types: Div, Erf, Add, Mul(x, u), Mul(v, C3) */
  const nbl_node *chain[5];
  int x_first;   /* Mul(x, u), not Mul(u, x) */
  int add_first; /* Add(e, C2), not Add(C2, e) */
  int mul_first; /* Mul(v, C3), not Mul(C3, v) */
  int crank;     /* the largest rank of the constants (their broadcast) */
  char op_type[12];
} gelu_fused;

/* The node reading value v alone (nbl_fuse_only_feeds), with *slot the input
 * it reads v as, when it is a live two-input node of op type `op` with one
 * output, in the schedule and free; else NULL. */
static const nbl_node *only_reader(const nbl_fusion_env *env, const unsigned char *drop, const int *pos,
                                   nbl_id v, const char *op, int *slot) {
  const nbl_graph *g = env->g;
  if (v == NBL_NONE || g->values[v].n_consumers != 1) return NULL;
  nbl_id r = g->values[v].consumers[0];
  const nbl_node *R = &g->nodes[r];
  if (drop[r] || pos[r] < 0 || env->taken(env, r) || !nbl_fuse_is_op(R, "", op) || R->n_outputs != 1 ||
      R->outputs[0] == NBL_NONE || !nbl_fuse_maybe_f32(g, R->outputs[0]))
    return NULL;
  int k = 0;
  while (k < R->n_inputs && R->inputs[k] != v) k++;
  if (k == R->n_inputs || !nbl_fuse_only_feeds(g, v, r, k)) return NULL;
  if (strcmp(op, "Erf") ? R->n_inputs != 2 : R->n_inputs != 1) return NULL;
  *slot = k;
  return R;
}

/* 1 if value v is the float32 scalar constant `want` (bit for bit); its rank
 * into *crank when larger. */
static int is_const(const nbl_graph *g, nbl_id v, float want, int *crank) {
  float f;
  int rank;
  if (!nbl_fuse_const_f32(g, v, &f, &rank) || memcmp(&f, &want, sizeof f)) return 0;
  if (rank > *crank) *crank = rank;
  return 1;
}

/* The chain from the Erf node en (chain[1]) into f, or 0. */
static int match(const nbl_fusion_env *env, const unsigned char *drop, const int *pos, nbl_id en,
                 gelu_fused *f) {
  const nbl_graph *g = env->g;
  const nbl_node *E = &g->nodes[en];
  if (E->n_inputs != 1 || E->n_outputs != 1 || E->outputs[0] == NBL_NONE ||
      !nbl_fuse_maybe_f32(g, E->outputs[0]))
    return 0;
  const nbl_node *D = nbl_fuse_producer(g, E->inputs[0]);
  if (!D) return 0;
  nbl_id dn = (nbl_id)(D - g->nodes);
  int slot = 0;
  if (drop[dn] || pos[dn] < 0 || env->taken(env, dn) || !nbl_fuse_is_op(D, "", "Div") || D->n_inputs != 2 ||
      D->n_outputs != 1 || D->outputs[0] != E->inputs[0] || !nbl_fuse_maybe_f32(g, D->outputs[0]) ||
      !nbl_fuse_only_feeds(g, E->inputs[0], en, 0))
    return 0;
  nbl_id x = D->inputs[0];
  int crank = 0;
  if (x == NBL_NONE || !nbl_fuse_maybe_f32(g, x) || !is_const(g, D->inputs[1], GELU_C1, &crank))
    return 0;
  const nbl_node *A = only_reader(env, drop, pos, E->outputs[0], "Add", &slot);
  if (!A || !is_const(g, A->inputs[1 - slot], 1.0f, &crank)) return 0;
  f->add_first = slot == 0;
  const nbl_node *M1 = only_reader(env, drop, pos, A->outputs[0], "Mul", &slot);
  if (!M1 || M1->inputs[1 - slot] != x) return 0;
  f->x_first = slot == 1;
  const nbl_node *M2 = only_reader(env, drop, pos, M1->outputs[0], "Mul", &slot);
  if (!M2 || !is_const(g, M2->inputs[1 - slot], 0.5f, &crank)) return 0;
  f->mul_first = slot == 0;
  /* the schedule is topological: D, E, A, M1 run before M2 */
  const nbl_node *chain[5] = {D, E, A, M1, M2};
  memcpy(f->chain, chain, sizeof chain);
  f->in[0] = x;
  f->in[1] = D->inputs[1];
  f->in[2] = A->inputs[f->add_first ? 1 : 0];
  f->in[3] = M2->inputs[f->mul_first ? 1 : 0];
  f->crank = crank;
  return 1;
}

nbl_status nbl_fuse_gelu_plan(const nbl_fusion_env *env, nbl_id *order, int *n, void **state) {
  if (nbl_fuse_plan_skip(env, state)) return NBL_OK;
  const nbl_graph *g = env->g;
  int64_t opset = nbl_model_opset(env->m, "");
  if (opset == 0) opset = nbl_model_opset(env->m, "ai.onnx");
  if (opset < 9) return NBL_OK; /* Erf is opset 9's (and no legacy broadcasting) */
  nbl_fuse_state *fu;
  unsigned char *drop;
  int *pos;
  nbl_status st = nbl_fuse_plan_begin(g, order, *n, 0, &fu, &drop, &pos);
  if (st != NBL_OK) return st;
  int any = 0;
  for (int s = 0; s < *n; s++) {
    nbl_id en = order[s];
    const nbl_node *E = &g->nodes[en];
    if (drop[en] || env->taken(env, en) || !nbl_fuse_is_op(E, "", "Erf")) continue;
    gelu_fused m = {0};
    if (!match(env, drop, pos, en, &m)) continue;
    gelu_fused *f = calloc(1, sizeof *f);
    if (!f) break; /* out of memory: the nodes run unfused */
    *f = m;
    const nbl_node *M2 = f->chain[4];
    nbl_id mn = (nbl_id)(M2 - g->nodes);
    f->node = *M2;
    f->node.inputs = f->in;
    f->node.n_inputs = 4;
    strcpy(f->op_type, "Gelu(erf)");
    f->node.op_type = f->op_type;
    fu->by_node[mn] = f;
    for (int k = 0; k < 4; k++) drop[f->chain[k] - g->nodes] = 1;
    any = 1;
  }
  free(pos);
  nbl_fuse_plan_finish(order, n, drop, any, fu, nbl_fuse_state_free, state);
  return NBL_OK;
}

/* ------------------------------------------------------------------ kernel */

static void gelu_run(const void *arg, const float *x, float *y, int64_t n) {
  const gelu_fused *f = arg;
  /* the arguments are valid by construction: the status can only be OK */
  (void)nbl_unary_f32_gelu_erf(x, y, n, GELU_C1, 1.0f, 0.5f, f->x_first);
}

/* x of another type than float32 (the graph left it untyped), constants
 * broadcasting x to a larger rank, or the reference engine: the five ops'
 * kernels, the first four into tensors of their own, the last into the fused
 * node's output, as the unfused graph runs them. */
static nbl_status k_unfused(nbl_kctx *c, const gelu_fused *f) {
  static const char *const ops[5] = {"Div", "Erf", "Add", "Mul", "Mul"};
  nbl_rt_tensor t[4];
  memset(t, 0, sizeof t);
  nbl_status st = NBL_OK;
  for (int k = 0; k < 5 && st == NBL_OK; k++) {
    nbl_kernel_fn kf = nbl_fuse_op_kernel(c, ops[k]);
    if (!kf) {
      st = nbl_kerr(c, NBL_ERR_UNSUPPORTED, "no kernel for %s", ops[k]);
      break;
    }
    const nbl_rt_tensor *in[NBL_KCTX_MIN_IN] = {0};
    const nbl_rt_tensor *prev = k ? &t[k - 1] : NULL;
    int n_in = 2;
    switch (k) {
    case 0: in[0] = c->in[0], in[1] = c->in[1]; break;
    case 1: in[0] = prev, n_in = 1; break;
    case 2: in[f->add_first ? 0 : 1] = prev, in[f->add_first ? 1 : 0] = c->in[2]; break;
    case 3: in[f->x_first ? 0 : 1] = c->in[0], in[f->x_first ? 1 : 0] = prev; break;
    default: in[f->mul_first ? 0 : 1] = prev, in[f->mul_first ? 1 : 0] = c->in[3]; break;
    }
    if (k < 4) {
      st = nbl_fuse_run_private(c, kf, f->chain[k], in, n_in, &t[k]);
    } else { /* the last into the fused node's output */
      nbl_kctx ck = *c;
      ck.node = f->chain[k];
      ck.n_in = n_in;
      ck.in = in;
      st = kf(&ck);
    }
  }
  for (int k = 0; k < 4; k++) nbl_rt_tensor_free(&t[k]);
  return st;
}

static nbl_status k_gelu(nbl_kctx *c) {
  const gelu_fused *f = (const gelu_fused *)c->node;
  const nbl_rt_tensor *X = c->n_in > 0 ? c->in[0] : NULL;
  if (!X) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "required input 0 is missing");
  if (X->dtype != NBL_DT_FLOAT || X->kind != NBL_RT_TENSOR || X->rank < f->crank || c->reference)
    return k_unfused(c, f);
  return nbl_fuse_map_f32(c, X, gelu_run, f);
}

const nbl_op_def nbl_fused_gelu_def = NBL_OP_DEF("", "GeluErf", 1, 1, .ref = k_gelu, .fast = k_gelu);
