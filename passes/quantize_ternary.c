/* quantize_ternary.c - quantize-ternary: BitNet b1.58 style layers. On every
 * selected Conv, Gemm and MatMul whose weight (input 1) is a float32
 * initializer, put an ai.nibble QuantizeTernary on the weight (codes -1, 0, 1
 * times mean|W|, recomputed every run) and a QuantizeAbsmax8 on the
 * activation (input 0; INT8, scale max|x| / 127 per tensor, or per row of the
 * last axis for MatMul and Gemm with transA = 0 when activations=per-row);
 * the math is runtime/formats/ternary.h. The first and last selected layers
 * (topological order) are kept in 8 bits by default: QuantizeInt4 with
 * bits=8, symmetric, max scale on both inputs (for the activation exactly the
 * per-tensor QuantizeAbsmax8 numbers; the INT4 fast path runs them).
 *
 * Changes numerics. Names: a ternary weight W becomes "W_qt", an activation X
 * "X_q8" (made unique when X feeds layers of both kinds), an 8-bit weight
 * "W_q8". A value feeding several layers gets one quantizer per kind.
 *
 * Runs on inference models: post-training, or before build-training for
 * quantization-aware training from scratch (nibble train --ternary); the
 * forward copy of the training graph then holds the quantizers and their
 * gradient rules (straight-through). A model that already has a training
 * graph is refused (its algorithm graph would not see the quantizers). */
#include <stdlib.h>
#include <string.h>

#include "select.h"

enum { Q_TERNARY, Q_ABSMAX8, Q_ABSMAX8_ROW, Q_INT8 };

typedef struct qmemo {
  nbl_id src, dst;
  int kind;
} qmemo;

typedef struct qstate {
  nbl_graph *g;
  qmemo *memo;
  int n_memo, cap_memo;
  int n_tern, n_int8, n_acts;
} qstate;

/* The quantized version of src under `kind`, inserting the node the first time. */
static nbl_id quantized(qstate *s, nbl_id src, int kind) {
  nbl_graph *g = s->g;
  for (int i = 0; i < s->n_memo; i++)
    if (s->memo[i].src == src && s->memo[i].kind == kind) return s->memo[i].dst;
  if (s->n_memo == s->cap_memo) {
    int cap = s->cap_memo ? s->cap_memo * 2 : 16;
    qmemo *m = realloc(s->memo, sizeof *m * (size_t)cap);
    if (!m) return NBL_NONE;
    s->memo = m;
    s->cap_memo = cap;
  }
  char hint[512];
  snprintf(hint, sizeof hint, "%s_%s", g->values[src].name, kind == Q_TERNARY ? "qt" : "q8");
  nbl_id dst = nbl_graph_add_value(g, nbl_graph_unique_name(g, hint));
  if (dst == NBL_NONE) return NBL_NONE;
  nbl_type_copy(g->model->arena, &g->values[dst].type, &g->values[src].type);
  snprintf(hint, sizeof hint, "%s_quant", g->values[src].name);
  char *nname = nbl_graph_unique_name(g, hint);
  const char *op = kind == Q_TERNARY ? "QuantizeTernary" : kind == Q_INT8 ? "QuantizeInt4"
                                                                          : "QuantizeAbsmax8";
  nbl_id nid = nbl_graph_add_node(g, op, "ai.nibble", nname, 1, &src, 1, &dst);
  if (nid == NBL_NONE) return NBL_NONE;
  if (kind == Q_INT8) {
    nbl_node_set_attr_int(g, nid, "bits", 8);
    nbl_node_set_attr_string(g, nid, "mode", "symmetric");
    nbl_node_set_attr_string(g, nid, "scale_source", "max");
  } else if (kind == Q_ABSMAX8_ROW) {
    nbl_node_set_attr_int(g, nid, "per_row", 1);
  }
  s->memo[s->n_memo++] = (qmemo){src, dst, kind};
  return dst;
}

/* Why node n is left alone (NULL: it is quantized). */
static const char *skip_reason(const nbl_graph *g, const nbl_node *n) {
  if (n->n_inputs < 2 || n->inputs[0] == NBL_NONE || n->inputs[1] == NBL_NONE)
    return "missing input";
  const nbl_value *w = &g->values[n->inputs[1]];
  if (w->init && (w->flags & NBL_VAL_INPUT))
    return "weight is a graph input, so not constant (run constant-initializers first)";
  if (!w->init) return "weight not constant";
  for (int i = 0; i < 2; i++) {
    const nbl_value *v = &g->values[n->inputs[i]];
    nbl_dtype dt = v->init ? v->init->dtype : v->type.kind == NBL_TYPE_TENSOR ? v->type.elem : 0;
    if (dt != NBL_DT_UNDEFINED && dt != NBL_DT_FLOAT) return "not float32";
  }
  return NULL;
}

static nbl_status qtern_run(nbl_pass_ctx *ctx) {
  nbl_model *m = ctx->model;
  nbl_graph *g = m->graph;
  const char *acts = nbl_pass_opt_string(ctx, "activations");
  int first_last = nbl_pass_opt_bool(ctx, "skip-first-last");
  int weights_only = nbl_pass_opt_bool(ctx, "weights-only");
  if (strcmp(acts, "per-tensor") && strcmp(acts, "per-row"))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                      "quantize-ternary: activations='%s' (want per-tensor or per-row)", acts);
  if (m->n_training > 0)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                      "quantize-ternary: %s already has a training graph; run quantize-ternary "
                      "before build-training (nibble train --ternary does)", nbl_model_label(m));
  nbl_textlist skipped = {0}, kept8 = {0};
  nbl_id *layers = NULL;
  int nl = nbl_select_layers(g, nbl_pass_opt_string(ctx, "ops"), nbl_pass_opt_string(ctx, "include"),
                             nbl_pass_opt_string(ctx, "exclude"), skip_reason, &layers, &skipped);
  if (nl < 0) {
    free(skipped.s);
    return NBL_ERR_INVALID_MODEL;
  }
  qstate s = {.g = g};
  nbl_status st = NBL_OK;
  if (nl > 0 && nbl_model_opset(m, "ai.nibble") == 0) st = nbl_model_set_opset(m, "ai.nibble", 1);
  for (int i = 0; i < nl && !st; i++) {
    nbl_id nid = layers[i];
    const nbl_node *nd = &g->nodes[nid];
    int eight = first_last && (i == 0 || i == nl - 1);
    int row = !strcmp(acts, "per-row") &&
              (!strcmp(nd->op_type, "MatMul") ||
               (!strcmp(nd->op_type, "Gemm") && nbl_attr_int(nd, "transA", 0) == 0));
    char lb[300];
    if (eight) nbl_textlist_add(&kept8, "%s", nbl_node_label(g, nd, lb, sizeof lb));
    nbl_id qw = quantized(&s, nd->inputs[1], eight ? Q_INT8 : Q_TERNARY);
    nbl_id qa = NBL_NONE;
    if (qw != NBL_NONE && !weights_only)
      qa = quantized(&s, g->nodes[nid].inputs[0], eight ? Q_INT8 : row ? Q_ABSMAX8_ROW : Q_ABSMAX8);
    if (qw == NBL_NONE || (!weights_only && qa == NBL_NONE)) {
      st = nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "quantize-ternary: node '%s': cannot add quantizer",
                      g->nodes[nid].name);
      break;
    }
    nbl_node_set_input(g, nid, 1, qw);
    if (qa != NBL_NONE) nbl_node_set_input(g, nid, 0, qa);
    if (eight) s.n_int8++;
    else s.n_tern++;
    ctx->changed++;
  }
  if (!st)
    nbl_pass_logf(ctx, "%d ternary layers, %d kept in 8 bits (%s), %d quantizers; skipped: %s",
                  s.n_tern, s.n_int8, kept8.s ? kept8.s : "none", s.n_memo,
                  skipped.s ? skipped.s : "none");
  free(layers);
  free(skipped.s);
  free(kept8.s);
  free(s.memo);
  return st;
}

const nbl_pass_def nbl_pass_quantize_ternary = {
    .name = "quantize-ternary",
    .description = "ternary weights (ai.nibble QuantizeTernary, scale mean|W|) and INT8 absmax "
                   "activations (QuantizeAbsmax8) on Conv/Gemm/MatMul with constant weights; "
                   "first/last layers 8-bit (changes numerics)",
    .run = qtern_run,
    .changes_numerics = 1,
    .options =
        {
            {"ops", NBL_OPT_STRING, "Conv,Gemm,MatMul",
             "op types to quantize (separated by ',', ';', ':' or '|')"},
            {"include", NBL_OPT_STRING, "", "only nodes whose name matches one of these globs"},
            {"exclude", NBL_OPT_STRING, "", "skip nodes whose name matches one of these globs"},
            {"skip-first-last", NBL_OPT_BOOL, "1",
             "keep the first and last quantized layers in 8 bits"},
            {"weights-only", NBL_OPT_BOOL, "0", "quantize weights only"},
            {"activations", NBL_OPT_STRING, "per-tensor",
             "activation scale: per-tensor, or per-row (per token: MatMul and Gemm with transA=0)"},
        },
};
