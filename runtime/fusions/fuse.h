/*
 * fuse.h - plan-time fusions of the executor (engines without `reference`),
 * registered in one table (registry.c) that the planner walks in order.
 *
 * A fusion replaces a node of the schedule by a synthetic node that the
 * executor runs instead (the step's node, with the fusion's kernel) and
 * removes from the schedule the nodes it absorbed. The model is never
 * modified, and a fused node gives the same numbers as the nodes it
 * replaces. The fusions, in table order:
 *   int4      fuse_int4.c: QuantizeInt4 -> Conv/Gemm/MatMul with constant
 *             quantized weights (+ Relu/Clip, + a residual Add) as one
 *             integer kernel (runtime/kernels/int4_fused.h)
 *   conv-act  fuse_f32.c: an FP32 Conv followed by Relu or a constant-bound
 *             Clip, the activation applied to each block of the output
 *             while it is in cache (nbl_conv_f32_act), as ONNX Runtime's
 *             Conv+activation fusion does; and/or preceded by a zero Pad,
 *             folded into the Conv's pads (ONNX Runtime's Pad fusion)
 *   bn-act    fuse_bn_act.c: a training graph's forward chain
 *             BatchNormInternal -> [Add ->] Relu -> QuantizeInt4 as one node
 *             (statistics, then one sweep; the quantizer's range kept)
 *   bn-grad   fuse_bn_grad.c: a training graph's backward chain [Add ->]
 *             [QuantizeInt4Grad ->] ReluGrad -> BatchNormalizationGrad as
 *             one sweep per channel
 *   log-pair  fuse_log_pair.c: the two QuantizeLog (tpr phases) of one
 *             gradient as one scan and one sweep
 *   pad-pool  fuse_pad_pool.c: a zero Pad -> AveragePool counting the
 *             padding as that AveragePool with the pads merged (conv-act
 *             folds such a Pad into the Conv after it the same way)
 *   relu-pool fuse_relu_pool.c: a float32 Relu -> 2-D MaxPool as one node
 *             pooling each plane of the Relu output as it is made
 *   silu      fuse_silu.c: a float32 Sigmoid or HardSigmoid read only by a
 *             Mul whose other operand is the activation's own input (SiLU
 *             and HardSwish written out) as one node, block by block in
 *             cache (ONNX Runtime's QuickGelu fusion)
 *   gelu      fuse_gelu.c: GELU in its erf form written out (PyTorch's
 *             export below opset 20), Mul(Mul(x, Add(Erf(Div(x, sqrt 2)),
 *             1)), 0.5), float32, as one node in one pass (ONNX Runtime's
 *             Gelu fusion)
 *   pool-grad fuse_pool_grad.c: a training graph's MaxPoolGrad -> ReluGrad
 *             as one node writing the masked gradient once
 * A fusion sees only the nodes no earlier fusion of the table replaced.
 * The environment variable NBL_NO_FUSION (a comma-separated list of the
 * names above, or "all") turns fusions off for the engines planned after it
 * is set: the unfused graph is the reference they are tested against.
 *
 * Adding a fusion: a file here with its plan, node and free functions (the
 * shapes below, shared matching helpers in match.c), its fused node's
 * kernel (an nbl_op_def, usually in runtime/kernels/), and one line in
 * registry.c.
 */
#ifndef NBL_FUSE_H
#define NBL_FUSE_H

#include <stddef.h>

#include "runtime/core/kernel.h"

/* What a fusion plans on. */
typedef struct nbl_fusion_env {
  const nbl_model *m;
  const nbl_graph *g; /* the main graph */
  /* 1 when a callback sees every value (nbl_engine_options.on_value): a
   * fused node must then still leave each value it writes as the floats
   * the graph says (no hand-over of other data in their place) */
  int values_watched;
  /* 1 when an earlier fusion of the table replaced node `node` */
  int (*taken)(const struct nbl_fusion_env *env, nbl_id node);
  /* the synthetic node an earlier fusion runs in place of node `node`, or
   * NULL */
  const nbl_node *(*fused)(const struct nbl_fusion_env *env, nbl_id node);
  const void *planner; /* the planner's state for taken */
} nbl_fusion_env;

typedef struct nbl_fusion_def {
  const char *name;
  /* Find the fusion's patterns in env->g along its schedule order[0..*n)
   * (nodes taken by an earlier fusion are left alone) and remove the nodes
   * the fused nodes absorb from order (*n shrinks, the order of the rest
   * kept). *state is NULL when nothing was fused; else it belongs to the
   * caller (free) and refers to the model, which must outlive it. */
  nbl_status (*plan)(const nbl_fusion_env *env, nbl_id *order, int *n, void **state);
  /* The synthetic node to run in place of node `node` (NULL: not fused). */
  const nbl_node *(*node)(const void *state, nbl_id node);
  void (*free)(void *state);
  /* The kernel of the fused nodes; NULL: the op table's for the synthetic
   * node's own op type (a fusion that only rewrites a node's inputs and
   * attributes). */
  const nbl_op_def *kernel;
} nbl_fusion_def;

/* The table (registry.c), in the order the planner runs the fusions. */
extern const nbl_fusion_def nbl_fusions[];
extern const size_t nbl_fusions_count;

/* Each fusion file defines nbl_fuse_NAME_plan with the shape of
 * nbl_fusion_def's member; a file with a state of its own also defines
 * nbl_fuse_NAME_node and _free (NBL_FUSION_STATE), the others keep an
 * nbl_fuse_state (below) and the table names nbl_fuse_state_node/_free. */
#define NBL_FUSION(name)                                                                  \
  nbl_status nbl_fuse_##name##_plan(const nbl_fusion_env *env, nbl_id *order, int *n,    \
                                    void **state);
#define NBL_FUSION_STATE(name)                                                            \
  NBL_FUSION(name)                                                                        \
  const nbl_node *nbl_fuse_##name##_node(const void *state, nbl_id node);                \
  void nbl_fuse_##name##_free(void *state);

NBL_FUSION_STATE(int4)    /* fuse_int4.c */
NBL_FUSION_STATE(ternary) /* fuse_ternary.c */
NBL_FUSION(conv_act)      /* fuse_f32.c */
NBL_FUSION(bn_act)        /* fuse_bn_act.c */
NBL_FUSION(bn_grad)       /* fuse_bn_grad.c */
NBL_FUSION(log_pair)      /* fuse_log_pair.c */
NBL_FUSION(pad_pool)      /* fuse_pad_pool.c */
NBL_FUSION(relu_pool)     /* fuse_relu_pool.c */
NBL_FUSION(silu)          /* fuse_silu.c */
NBL_FUSION(gelu)          /* fuse_gelu.c */
NBL_FUSION(pool_grad)     /* fuse_pool_grad.c */

/* The plan state of most fusions: per node of the graph, its fused node or
 * NULL. A fused node is a calloc'ed struct whose first member is its
 * nbl_node (the kernel sees the whole struct through c->node); with
 * owns_attrs its node.attrs array was calloc'ed too and is freed with it. */
typedef struct nbl_fuse_state {
  int n_nodes, owns_attrs;
  void **by_node;
} nbl_fuse_state;
/* A state for n_nodes nodes, none fused; NULL when out of memory. */
nbl_fuse_state *nbl_fuse_state_new(int n_nodes, int owns_attrs);
/* Frees the state and its fused nodes (NULL: nothing). */
void nbl_fuse_state_free(void *state);
/* The fused node keyed by node (its nbl_node), or NULL. */
const nbl_node *nbl_fuse_state_node(const void *state, nbl_id node);

/* The kernel of the conv-act fused nodes (runtime/ops/nn.c): Conv, then Clip
 * with the bounds in the synthetic node's float attributes nibble.act_lo /
 * act_hi. The INT4 one is nbl_i4_fused_def (runtime/kernels/int4_fused.h). */
extern const nbl_op_def nbl_fused_conv_act_def;
/* The kernels of the bn-act and bn-grad fused nodes (fuse_bn_act.c,
 * fuse_bn_grad.c). */
extern const nbl_op_def nbl_fused_bn_act_def;
extern const nbl_op_def nbl_fused_bn_grad_def;
/* The kernel of the log-pair fused nodes (fuse_log_pair.c). */
extern const nbl_op_def nbl_fused_log_pair_def;
/* The kernels of the relu-pool and pool-grad fused nodes (fuse_relu_pool.c,
 * fuse_pool_grad.c). */
extern const nbl_op_def nbl_fused_relu_pool_def;
extern const nbl_op_def nbl_fused_pool_grad_def;
/* The kernel of the silu fused nodes (fuse_silu.c). */
extern const nbl_op_def nbl_fused_silu_def;
/* The kernel of the gelu fused nodes (fuse_gelu.c). */
extern const nbl_op_def nbl_fused_gelu_def;

/* ------------------------------------------------------------------ matching helpers (match.c) */

/* 1 if n is a live node of op type `op` in `domain` ("" for ai.onnx, which
 * matches a node that names its domain "ai.onnx" too). */
int nbl_fuse_is_op(const nbl_node *n, const char *domain, const char *op);

/* 1 when a fusion that takes intermediate values out of the graph has nothing
 * to plan: no model or graph, an empty graph, or a value callback watching
 * (it must see every intermediate). Sets *state = NULL either way: the first
 * line of such a fusion's plan function. */
int nbl_fuse_plan_skip(const nbl_fusion_env *env, void **state);

/* The start of a fusion's plan over order[0..n) of g: *fu a new state
 * (nbl_fuse_state_new(g->n_nodes, owns_attrs)), *drop a zeroed mark per node
 * and, when pos is not NULL, *pos the position of each node in order (-1
 * when absent). On NBL_ERR_OUT_OF_MEMORY (message set) nothing is left
 * allocated. The end is nbl_fuse_plan_finish (the caller frees *pos). */
nbl_status nbl_fuse_plan_begin(const nbl_graph *g, const nbl_id *order, int n, int owns_attrs,
                               nbl_fuse_state **fu, unsigned char **drop, int **pos);

/* The end of a fusion's plan: when it made a fusion (any != 0), removes the
 * nodes marked in drop[] (indexed by node id) from order[0..*n) and sets
 * *state = fu; otherwise frees fu with free_state and leaves *state NULL.
 * Frees drop either way. */
void nbl_fuse_plan_finish(nbl_id *order, int *n, unsigned char *drop, int any, void *fu,
                          void (*free_state)(void *), void **state);

/* If node n's only output feeds exactly one Relu or Clip (with constant
 * float32 scalar bounds or none) and nothing else (not a graph output, not
 * captured by a subgraph), store that node's id in *act and Clip's bounds in
 * *lo, *hi (Relu: 0, +inf) and return 1; else 0. */
int nbl_fuse_find_activation(const nbl_model *m, const nbl_graph *g, const nbl_node *n,
                             nbl_id *act, float *lo, float *hi);

/* If value x is the output of a Pad that zero-pads only the spatial dims
 * of its input (mode constant, constant value 0 or absent, pads constant
 * and not negative, N and C unpadded, no axes input) and x is read only by
 * node `by`, as its input 0 (nbl_fuse_only_feeds): the Pad's node id in
 * *pad, the number of spatial dims in *ns and their pads in pads[0..2 ns)
 * (begins, then ends: the order of Conv's and the pools' pads attribute),
 * and 1; else 0. Such a Pad folds into a Conv's pads, or an AveragePool's
 * that counts the padding (the same sums: the zeros are read either way). */
int nbl_fuse_find_pad(const nbl_model *m, const nbl_graph *g, nbl_id x, nbl_id by, nbl_id *pad,
                      int *ns, int64_t *pads);

/* 1 if a subgraph of any node of g captures the outer value `name`. */
int nbl_fuse_used_in_subgraphs(const nbl_graph *g, const char *name);

/* What a fused node takes over from the graph: its original node and the
 * quantizer nodes whose output 0 it reads as input 0 (qx) and input 1
 * (wnode), NBL_NONE when none. */
typedef struct nbl_fuse_operands {
  const nbl_node *orig;
  nbl_id qx, wnode;
} nbl_fuse_operands;

/* 1 if every use of node q's outputs is by a fused node, as its input 0
 * when q is that node's qx or as its input 1 when q is its wnode, and none
 * of them is a graph output or outer value: q can leave the schedule (the
 * caller still checks subgraph captures). operands(state, node, &o) fills o
 * and returns 1 for a fused node, 0 for another. */
int nbl_fuse_absorbed(const nbl_graph *g, nbl_id q,
                      int (*operands)(const void *state, nbl_id node, nbl_fuse_operands *o),
                      const void *state);

/* The node that produces value v; NULL for none (graph input, initializer,
 * outer value) or v == NBL_NONE. */
const nbl_node *nbl_fuse_producer(const nbl_graph *g, nbl_id v);

/* The residual pattern of the fused convolutions: value v, the only output
 * of node conv, is used once only, by an Add (two distinct operands, one
 * output) whose other operand *r is ready where conv runs (a graph input or
 * initializer, or made by a node before conv in the schedule; pos: node ->
 * position, -1 for a node not in it; pos NULL: *r anywhere, for a fused
 * node that runs at the Add's place); v is not a graph output nor captured
 * by a subgraph. Returns the Add's node id, or NBL_NONE. */
nbl_id nbl_fuse_find_residual(const nbl_graph *g, nbl_id conv, nbl_id v, const int *pos, nbl_id *r);

/* 1 if value v is a float32 constant of one element (an initializer not
 * overridable by a graph input, or the value or value_float of a Constant
 * node): its value in *out and its rank in *rank; else 0. */
int nbl_fuse_const_f32(const nbl_graph *g, nbl_id v, float *out, int *rank);

/* 1 unless the graph types value v as something else than a float32
 * tensor (untyped values and tensors of unknown element type pass). */
int nbl_fuse_maybe_f32(const nbl_graph *g, nbl_id v);

/* 1 if value v is read once only, by node `by` as its input `slot` (and by
 * no other input of it), and is no graph output, outer value or subgraph
 * capture: a fused node that absorbs both ends may skip it. */
int nbl_fuse_only_feeds(const nbl_graph *g, nbl_id v, nbl_id by, int slot);

/* The step of the schedule order[0..n) (as earlier fusions left it: their
 * synthetic nodes in place of the nodes they replaced) that writes value v:
 * -1 when nothing has to (a graph input, initializer or outer value),
 * INT_MAX when no step does. */
int nbl_fuse_written_at(const nbl_fusion_env *env, const nbl_id *order, int n, nbl_id v);

/* 1 if a step s <= at of order[0..n) (as earlier fusions left it) reads
 * value v, not counting the nodes skip[0..ns). */
int nbl_fuse_read_by(const nbl_fusion_env *env, const nbl_id *order, int n, nbl_id v, int at,
                     const nbl_id *skip, int ns);

/* ------------------------------------------------------------------ shared by fused paths */

/* The kernel of op `op` (default domain) at c's opset: its fast one unless
 * c runs the reference engine; NULL when the op has none. For a fused node
 * that runs the ops it replaced (an input of a type its own kernel does not
 * take). */
nbl_kernel_fn nbl_fuse_op_kernel(const nbl_kctx *c, const char *op);

/* Kernel kf as node `node` would run it in c's step, on in[0..n_in), into
 * the tensor *out of the caller's (zeroed; freed by the caller): no
 * executor (out is no output slot of the step), one thread. */
nbl_status nbl_fuse_run_private(const nbl_kctx *c, nbl_kernel_fn kf, const nbl_node *node,
                                const nbl_rt_tensor *const *in, int n_in, nbl_rt_tensor *out);

/* A fused elementwise float32 node's run: output 0 allocated with X's
 * shape, then fn(arg, x + b, y + b, e - b) on ranges [b, e) of its elements
 * split over the threads (in steps of 4096, the costly unary ops' grain). */
typedef void (*nbl_fuse_map_fn)(const void *arg, const float *x, float *y, int64_t n);
nbl_status nbl_fuse_map_f32(nbl_kctx *c, const nbl_rt_tensor *X, nbl_fuse_map_fn fn, const void *arg);

/* 1 if node n is a QuantizeLog of one float32 (or untyped) input with
 * nearest or tpr rounding: two of them on one tensor run as one sweep
 * (fuse_log_pair.c). */
int nbl_fuse_log_pairable(const nbl_graph *g, const nbl_node *n);

/* The six outputs of a fused pair a, b: Y of a, Y of b, top of a, top of
 * b, codes of a, codes of b (NBL_NONE where the node has none). */
void nbl_fuse_log_pair_outputs(const nbl_node *a, const nbl_node *b, nbl_id out[6]);

/* The QuantizeLog nodes orig[0], orig[1] (nbl_fuse_log_pairable) of X into
 * outputs out .. out + 5 of c (nbl_fuse_log_pair_outputs' order; the tops
 * and codes when c wants them), the same bits as the nodes: absmax is
 * max |x| over X's finite elements when the caller has it, else negative
 * (then scanned, in parallel). */
nbl_status nbl_fuse_log_pair_run(nbl_kctx *c, const nbl_node *const orig[2], const nbl_rt_tensor *X, float absmax,
                                 int out);

#endif /* NBL_FUSE_H */
