/* quantize_int4.c - quantize-int4: put an ai.nibble QuantizeInt4 (fake
 * quantization, see runtime/formats/int4.h) on the weight input (input 1) and the
 * activation input (input 0) of every Conv, ConvTranspose, Gemm and MatMul.
 * Changes numerics. The first and last quantized layers (topological order)
 * get bits=8 by default ("kept in 8 bits"). A value feeding several layers
 * gets one quantizer per bit width. On a model that already has a training
 * graph it is an error: the quantizers belong in the inference graph before
 * build-training, which copies them into the forward part and differentiates
 * through them (QuantizeInt4's rule: QuantizeInt4Grad; a PACT alpha is a
 * parameter like any other). */
#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>

#include "select.h"

/* A quantizer already inserted: (source value, bits) -> quantized value. */
typedef struct qmemo {
  nbl_id src, dst;
  int bits;
} qmemo;

typedef struct qstate {
  nbl_pass_ctx *ctx;
  nbl_graph *g;
  qmemo *memo;
  int n_memo, cap_memo;
  int n_weights, n_acts;
  float pact_alpha;
  const char *act_mode;
  const char *w_mode;
  int narrow;
} qstate;

/* The float32 scalar initializer holding alpha for the PACT clip of `src`. */
static nbl_id add_alpha(qstate *s, nbl_id src, float alpha) {
  nbl_graph *g = s->g;
  char hint[512];
  snprintf(hint, sizeof hint, "%s_pact_alpha", g->values[src].name);
  char *name = nbl_graph_unique_name(g, hint);
  nbl_tensor *t = nbl_tensor_new(g->model->arena, name, NBL_DT_FLOAT, 0, NULL, &alpha);
  if (!t) return NBL_NONE;
  nbl_id v = nbl_graph_add_value(g, name);
  if (v == NBL_NONE) {
    nbl_buffer_unref(t->buf);
    return NBL_NONE;
  }
  nbl_type_set_tensor(g->model->arena, &g->values[v].type, NBL_DT_FLOAT, 0, NULL);
  nbl_graph_set_initializer(g, v, t);
  return v;
}

/* The quantized version of value src (weight or activation) at `bits`,
 * inserting the QuantizeInt4 node the first time. NBL_NONE on failure. */
static nbl_id quantized(qstate *s, nbl_id src, int bits, int is_weight) {
  nbl_graph *g = s->g;
  for (int i = 0; i < s->n_memo; i++)
    if (s->memo[i].src == src && s->memo[i].bits == bits) return s->memo[i].dst;
  char hint[512];
  snprintf(hint, sizeof hint, "%s_q%d", g->values[src].name, bits);
  nbl_id dst = nbl_graph_add_value(g, nbl_graph_unique_name(g, hint));
  if (dst == NBL_NONE) return NBL_NONE;
  nbl_type_copy(g->model->arena, &g->values[dst].type, &g->values[src].type);
  nbl_id ins[2] = {src, NBL_NONE};
  int n_in = 1;
  const char *mode = "symmetric", *source = "max";
  if (is_weight) {
    if (!strcmp(s->w_mode, "sawb")) source = "sawb";
    else if (!strcmp(s->w_mode, "mse")) source = "mse";
  } else if (!strcmp(s->act_mode, "affine")) {
    mode = "affine";
  } else if (!strcmp(s->act_mode, "mse")) {
    mode = "affine";
    source = "mse";
  } else if (!strcmp(s->act_mode, "pact")) {
    mode = "affine";
    source = "pact";
    ins[1] = add_alpha(s, src, s->pact_alpha);
    if (ins[1] == NBL_NONE) return NBL_NONE;
    n_in = 2;
  }
  snprintf(hint, sizeof hint, "%s_quant", g->values[src].name);
  char *nname = nbl_graph_unique_name(g, hint);
  nbl_id nid = nbl_graph_add_node(g, "QuantizeInt4", "ai.nibble", nname, n_in, ins, 1, &dst);
  if (nid == NBL_NONE) return NBL_NONE;
  nbl_node_set_attr_int(g, nid, "bits", bits);
  nbl_node_set_attr_string(g, nid, "mode", mode);
  nbl_node_set_attr_string(g, nid, "scale_source", source);
  if (s->narrow && !strcmp(mode, "symmetric")) nbl_node_set_attr_int(g, nid, "narrow", 1);
  if (s->n_memo == s->cap_memo) {
    int cap = s->cap_memo ? s->cap_memo * 2 : 16;
    qmemo *m = realloc(s->memo, sizeof *m * (size_t)cap);
    if (!m) return NBL_NONE;
    s->memo = m;
    s->cap_memo = cap;
  }
  s->memo[s->n_memo++] = (qmemo){src, dst, bits};
  if (is_weight) s->n_weights++;
  else s->n_acts++;
  s->ctx->changed++;
  return dst;
}

/* Why node n cannot be quantized (NULL: it can). */
static const char *skip_reason(const nbl_graph *g, const nbl_node *n) {
  if (n->n_inputs < 2 || n->inputs[0] == NBL_NONE || n->inputs[1] == NBL_NONE)
    return "missing input";
  for (int i = 0; i < 2; i++) {
    const nbl_value *v = &g->values[n->inputs[i]];
    nbl_dtype dt = v->init ? v->init->dtype : v->type.kind == NBL_TYPE_TENSOR ? v->type.elem : 0;
    if (dt != NBL_DT_UNDEFINED && dt != NBL_DT_FLOAT) return "not float32";
  }
  return NULL;
}

static nbl_status qint4_run(nbl_pass_ctx *ctx) {
  nbl_model *m = ctx->model;
  nbl_graph *g = m->graph;
  const char *ops = nbl_pass_opt_string(ctx, "ops");
  const char *include = nbl_pass_opt_string(ctx, "include");
  const char *exclude = nbl_pass_opt_string(ctx, "exclude");
  int first_last = nbl_pass_opt_bool(ctx, "skip-first-last");
  int weights_only = nbl_pass_opt_bool(ctx, "weights-only");
  qstate s = {.ctx = ctx, .g = g};
  s.act_mode = nbl_pass_opt_string(ctx, "activations");
  s.w_mode = nbl_pass_opt_string(ctx, "weights");
  s.narrow = nbl_pass_opt_bool(ctx, "narrow");
  s.pact_alpha = (float)nbl_pass_opt_float(ctx, "pact-alpha");
  if (strcmp(s.act_mode, "max") && strcmp(s.act_mode, "affine") && strcmp(s.act_mode, "pact") &&
      strcmp(s.act_mode, "mse"))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                      "quantize-int4: activations='%s' (want max, affine, mse or pact)", s.act_mode);
  if (strcmp(s.w_mode, "max") && strcmp(s.w_mode, "sawb") && strcmp(s.w_mode, "mse"))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "quantize-int4: weights='%s' (want max, sawb or mse)",
                      s.w_mode);
  if (!(s.pact_alpha > 0))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "quantize-int4: pact-alpha must be > 0");
  if (m->n_training)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                      "quantize-int4: %s already has a training graph, whose backward was derived "
                      "without the quantizers; run quantize-int4 before build-training (then the "
                      "forward copy holds the quantizers, their straight-through rule is in the "
                      "backward and a PACT clip is trained; nibble train --int4 does so)",
                      nbl_model_label(m));

  /* Pass 1: the layers to quantize, in topological order (passes/select.c). */
  nbl_textlist skipped = {0}, kept8 = {0};
  nbl_id *layers = NULL;
  int nl = nbl_select_layers(g, ops, include, exclude, skip_reason, &layers, &skipped);
  if (nl < 0) {
    free(skipped.s);
    return NBL_ERR_INVALID_MODEL;
  }
  nbl_status st = NBL_OK;
  if (nl > 0 && nbl_model_opset(m, "ai.nibble") == 0) st = nbl_model_set_opset(m, "ai.nibble", 1);
  int w_inputs = 0; /* weights that are initializers listed as graph inputs */
  /* Pass 2: insert the quantizers. */
  for (int i = 0; i < nl && !st; i++) {
    nbl_id nid = layers[i];
    int bits = 4;
    if (first_last && (i == 0 || i == nl - 1)) {
      bits = 8;
      char lb[300];
      nbl_textlist_add(&kept8, "%s", nbl_node_label(g, &g->nodes[nid], lb, sizeof lb));
    }
    nbl_id w = g->nodes[nid].inputs[1];
    int w_const = g->values[w].init != NULL && !(g->values[w].flags & NBL_VAL_INPUT);
    w_inputs += g->values[w].init != NULL && !w_const;
    nbl_id qw = quantized(&s, w, bits, w_const);
    if (qw == NBL_NONE) {
      st = nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "quantize-int4: node '%s': cannot add quantizer",
                      g->nodes[nid].name);
      break;
    }
    nbl_node_set_input(g, nid, 1, qw);
    if (!weights_only) {
      nbl_id a = g->nodes[nid].inputs[0];
      int a_const = g->values[a].init != NULL && !(g->values[a].flags & NBL_VAL_INPUT);
      nbl_id qa = quantized(&s, a, bits, a_const);
      if (qa == NBL_NONE) {
        st = nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "quantize-int4: node '%s': cannot add quantizer",
                        g->nodes[nid].name);
        break;
      }
      nbl_node_set_input(g, nid, 0, qa);
    }
  }
  if (!st)
    nbl_pass_logf(ctx, "quantized %d layers (%d weights, %d activations); kept in 8 bits: %s; "
                       "skipped: %s",
                  nl, s.n_weights, s.n_acts, kept8.s ? kept8.s : "none",
                  skipped.s ? skipped.s : "none");
  if (!st && w_inputs)
    nbl_pass_logf(ctx, "%d weight(s) are initializers listed as graph inputs, so not constant: quantized as "
                       "activations (run constant-initializers first to quantize them as weights)", w_inputs);
  free(layers);
  free(skipped.s);
  free(kept8.s);
  free(s.memo);
  return st;
}

const nbl_pass_def nbl_pass_quantize_int4 = {
    .name = "quantize-int4",
    .description = "insert ai.nibble QuantizeInt4 on the weight and activation inputs of "
                   "Conv/ConvTranspose/Gemm/MatMul (changes numerics)",
    .run = qint4_run,
    .changes_numerics = 1,
    .options =
        {
            {"ops", NBL_OPT_STRING, "Conv,ConvTranspose,Gemm,MatMul",
             "op types to quantize (separated by ',', ';', ':' or '|')"},
            {"include", NBL_OPT_STRING, "", "only nodes whose name matches one of these globs"},
            {"exclude", NBL_OPT_STRING, "", "skip nodes whose name matches one of these globs"},
            {"skip-first-last", NBL_OPT_BOOL, "1",
             "keep the first and last quantized layers in 8 bits"},
            {"weights-only", NBL_OPT_BOOL, "0", "quantize weights only"},
            {"activations", NBL_OPT_STRING, "affine",
             "activation quantizer: affine (min..max on all 16 codes), mse (affine, the top "
             "pulled in to the clip of least squared error, every run), max (symmetric) or pact"},
            {"weights", NBL_OPT_STRING, "sawb", "weight scale: max, sawb or mse"},
            {"narrow", NBL_OPT_BOOL, "0", "symmetric codes in [-7, 7] instead of [-8, 7]"},
            {"pact-alpha", NBL_OPT_FLOAT, "6.0", "initial PACT clip (activations=pact)"},
        },
};
