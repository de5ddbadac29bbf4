/*
 * fuse_coded.h - what the two fused integer paths (fuse_int4.c: INT4,
 * fuse_ternary.c: ternary) find the same way at plan time: the consumer
 * Conv / Gemm / MatMul of a quantized X and a quantized constant W, its
 * attributes, the Relu/Clip and residual Add it absorbs and the synthetic
 * node it becomes, all into the nbl_code_consumer part of the fused node
 * (runtime/kernels/code_conv.h), and the walk from a fused Conv to the
 * fused node that alone quantizes its output (the hand-over of codes).
 * fuse_coded.c.
 */
#ifndef NBL_FUSE_CODED_H
#define NBL_FUSE_CODED_H

#include "runtime/fusions/fuse.h"
#include "runtime/kernels/code_conv.h"

/* Node id as a fused consumer: a Conv, Gemm or MatMul (of a model at
 * ai.nibble opset 1) whose input 0 is output 0 of an ai.nibble xq_op node
 * with its input 0 set, and whose input 1 is output 0 of a node with at
 * least one input (the weight source, which the caller checks). Fills o's
 * kind, orig, qx, wnode and ins (X, bias; the others NBL_NONE), res_node
 * and act_node (NBL_NONE), groups (1); 0, or -1 when the pattern does not
 * apply (o partly filled). */
int nbl_fuse_coded_match(const nbl_model *m, const nbl_graph *g, nbl_id id, const char *xq_op,
                         nbl_code_consumer *o);

/* The consumer's attributes against the weight dims o->wdims, o->wrank
 * (set by the caller): a Conv needs a rank-4 weight and a group dividing
 * its output channels (o->groups); a Gemm a rank-2 weight and transA 0
 * (o->trans_b, alpha, beta); a MatMul a rank-2 weight. 0, or -1 when the
 * fused path does not take it. */
int nbl_fuse_coded_attrs(nbl_code_consumer *o);

/* The synthetic node, once the weights are packed: the consumer with 4
 * inputs o->ins, taking a Relu or constant-bound Clip that alone consumes
 * its output; op type prefix + the consumer's op type [+ "+" activation]
 * ("Int4Conv+Relu"). */
void nbl_fuse_coded_node(const nbl_model *m, const nbl_graph *g, nbl_code_consumer *o,
                         const char *prefix);

/* A fused Conv without an activation of its own whose output's only use is
 * an Add with another value r takes that Add into its epilogue (r its fifth
 * input), and with it a Relu/Clip that alone consumes the Add's output. r
 * must be ready where the Conv runs: a graph input or initializer, or made
 * by a node before the Conv in the schedule (pos: node -> position; a node
 * fused away runs with its producer, earlier still). The op type becomes
 * prefix + Conv + "+Add" [+ "+" activation]. */
void nbl_fuse_coded_residual(const nbl_model *m, const nbl_graph *g, nbl_code_consumer *o,
                             const int *pos, const char *prefix);

/* The consumer that may receive F's output as codes: F a fused Conv whose
 * output's only use is an ai.nibble q_op node whose output's only use is
 * that consumer, neither value flagged with any of excluded_flags
 * (NBL_VAL_OUTPUT, and NBL_VAL_OUTER where a captured value is refused too)
 * nor read by a subgraph. Its node id (*q the quantizer's), or NBL_NONE. */
nbl_id nbl_fuse_coded_next(const nbl_graph *g, const nbl_code_consumer *F, const char *q_op,
                           unsigned excluded_flags, nbl_id *q);

/* 1 when G (the fused node of the consumer nbl_fuse_coded_next found, may
 * be NULL) is another fused Conv whose X quantizer is q, reading F's output. */
int nbl_fuse_coded_pair(const nbl_code_consumer *F, const nbl_code_consumer *G, nbl_id q);

#endif /* NBL_FUSE_CODED_H */
