/*
 * fuse.h - plan-time fusions of the executor (sessions without `reference`).
 *
 * A fusion replaces a node of the schedule by a synthetic node that the
 * executor runs instead (exec.c takes it as the step's node) and removes from
 * the schedule the nodes it absorbed. The model is never modified. Two
 * fusions exist: the INT4 integer path (fuse_int4.c, int4_gemm.h) and the
 * FP32 one here: Conv followed by Relu or a constant-bound Clip, the
 * activation applied to each block of the convolution's output while it is
 * still in cache (nbl_conv_f32_act), as ONNX Runtime's Conv+activation fusion
 * does. Both give the same numbers as the unfused nodes: the activation is
 * the same float operation on the same values.
 */
#ifndef NBL_FUSE_H
#define NBL_FUSE_H

#include "runtime/core/kernel.h"

/* 1 if n is a live node of op type `op` in `domain` ("" for ai.onnx, which
 * matches a node that names its domain "ai.onnx" too). */
int nbl_fuse_is_op(const nbl_node *n, const char *domain, const char *op);

/* If node n's only output feeds exactly one Relu or Clip (with constant
 * float32 scalar bounds or none) and nothing else (not a graph output, not
 * captured by a subgraph), store that node's id in *act and Clip's bounds in
 * *lo, *hi (Relu: 0, +inf) and return 1; else 0. */
int nbl_fuse_find_activation(const nbl_model *m, const nbl_graph *g, const nbl_node *n,
                             nbl_id *act, float *lo, float *hi);

/* 1 if a subgraph of any node of g captures the outer value `name`. */
int nbl_fuse_used_in_subgraphs(const nbl_graph *g, const char *name);

typedef struct nbl_f32_fusion nbl_f32_fusion;

/* For graph g (order[0..*n) its schedule): fuse each float32 Conv with its
 * activation (nbl_fuse_find_activation) unless `taken(user, node)` says the
 * node already has a fused replacement; the activation nodes leave order (*n
 * shrinks). *out is NULL when nothing was fused. The model must outlive it. */
nbl_status nbl_f32_fuse(const nbl_model *m, const nbl_graph *g, nbl_id *order, int *n,
                        int (*taken)(const void *user, nbl_id node), const void *user,
                        nbl_f32_fusion **out);

/* The synthetic node to run for node `node` (Conv's inputs and attributes,
 * the activation's output, op type "Conv+Relu" or "Conv+Clip") and its op
 * definition; NULL for any other node. */
const nbl_node *nbl_f32_fused_node(const nbl_f32_fusion *fu, nbl_id node, const nbl_op_def **def);
void nbl_f32_fusion_free(nbl_f32_fusion *fu);

/* The kernel of the fused nodes (runtime/ops/nn.c): Conv, then Clip with the
 * bounds in the synthetic node's float attributes nibble.act_lo / act_hi. */
extern const nbl_op_def nbl_fused_conv_act_def;

#endif
