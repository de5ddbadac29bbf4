/* fuse_log_pair.c - the log-pair fusion of training graphs: the two
 * QuantizeLog nodes that quantize-grad-log4 puts on one gradient (with
 * rounding=tpr, phase 0 for the input-gradient product and phase 1 for the
 * weight-gradient product; any two nearest/tpr QuantizeLog of one tensor)
 * run as one node: one max|x| scan (split across the threads: a maximum does
 * not depend on the order) and one sweep that writes both outputs chunk by
 * chunk while the chunk is in cache. Unfused, each node scans the tensor
 * and then sweeps it (four reads, two writes; here two reads, two writes).
 *
 * Same numbers as the unfused nodes bit for bit: the same maximum, each
 * node's own parameters and threshold table from it (nbl_log_choose_max,
 * nbl_log_table) and the op's nearest-rounding kernel (nbl_logq_nearest).
 * See fuse.h; NBL_NO_FUSION=log-pair turns it off.
 *
 * The fused node runs at the first QuantizeLog's place:
 *   inputs:  X
 *   outputs: the first node's Y, the second node's Y, then their optional
 *            outputs: top (first, second), codes (first, second), each
 *            omitted when the node has none (int4-backward wires top and
 *            codes into the integer products)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/formats/log.h"
#include "runtime/fusions/fuse.h"
#include "runtime/kernels/log_quant.h"

/* ------------------------------------------------------------------ plan */

void nbl_fuse_log_pair_outputs(const nbl_node *a, const nbl_node *b, nbl_id out[6]) {
  for (int k = 0; k < 3; k++) {
    out[2 * k] = k < a->n_outputs ? a->outputs[k] : NBL_NONE;
    out[2 * k + 1] = k < b->n_outputs ? b->outputs[k] : NBL_NONE;
  }
}

typedef struct lp_fused {
  nbl_node node; /* first: the kernel sees the whole struct through c->node */
  const nbl_node *orig[2];
  nbl_id out[6];
  char op[24];
} lp_fused;

int nbl_fuse_log_pairable(const nbl_graph *g, const nbl_node *n) {
  nbl_log_config cfg;
  char err[160];
  if (!nbl_fuse_is_op(n, "ai.nibble", "QuantizeLog") || n->n_inputs != 1 || n->inputs[0] == NBL_NONE ||
      n->n_outputs < 1 || n->n_outputs > 3 ||
      (n->outputs[0] == NBL_NONE && (n->n_outputs < 3 || n->outputs[2] == NBL_NONE)) ||
      nbl_log_config_decode(n, &cfg, err, sizeof err) != NBL_OK ||
      (cfg.rounding != NBL_LOG_NEAREST && cfg.rounding != NBL_LOG_TPR))
    return 0;
  return nbl_fuse_maybe_f32(g, n->inputs[0]);
}

nbl_status nbl_fuse_log_pair_plan(const nbl_fusion_env *env, nbl_id *order, int *n, void **state) {
  if (nbl_fuse_plan_skip(env, state)) return NBL_OK;
  const nbl_graph *g = env->g;
  nbl_fuse_state *fu;
  unsigned char *drop;
  nbl_status st = nbl_fuse_plan_begin(g, order, *n, 0, &fu, &drop, NULL);
  if (st != NBL_OK) return st;
  int any = 0;
  for (int s = 0; s < *n; s++) {
    nbl_id a = order[s];
    const nbl_node *A = &g->nodes[a];
    if (drop[a] || fu->by_node[a] || env->taken(env, a) || !nbl_fuse_log_pairable(g, A)) continue;
    for (int t = s + 1; t < *n; t++) { /* the next QuantizeLog of the same input */
      nbl_id b = order[t];
      const nbl_node *Bn = &g->nodes[b];
      if (drop[b] || fu->by_node[b] || env->taken(env, b) || !nbl_fuse_log_pairable(g, Bn) || Bn->inputs[0] != A->inputs[0])
        continue;
      lp_fused *f = calloc(1, sizeof *f);
      if (!f) break;
      f->orig[0] = A;
      f->orig[1] = Bn;
      nbl_fuse_log_pair_outputs(A, Bn, f->out);
      f->node = *A;
      f->node.outputs = f->out;
      f->node.n_outputs = 6;
      snprintf(f->op, sizeof f->op, "QuantizeLog*2");
      f->node.op_type = f->op;
      fu->by_node[a] = f;
      drop[b] = 1;
      any = 1;
      break;
    }
  }
  nbl_fuse_plan_finish(order, n, drop, any, fu, nbl_fuse_state_free, state);
  return NBL_OK;
}

/* ------------------------------------------------------------------ kernel */

#define LP_CHUNK 32768 /* floats per sweep chunk (128 KiB, in L2 for the second table) */

typedef struct lp_job {
  nbl_logq_isa isa;
  const float *x;
  int64_t n, parts;
  float *part_max;
  float lev[2][NBL_LOG_MAX_LEVELS], thr[2][NBL_LOG_MAX_LEVELS];
  int levels[2];
  float *y[2];
  signed char *codes[2]; /* NULL: not wanted */
} lp_job;

static void lp_max(void *arg, int64_t b, int64_t e) {
  lp_job *j = arg;
  for (int64_t p = b; p < e; p++) {
    int64_t lo = j->n * p / j->parts, hi = j->n * (p + 1) / j->parts;
    j->part_max[p] = nbl_logq_absmax(j->isa, j->x + lo, (size_t)(hi - lo));
  }
}

static void lp_sweep(void *arg, int64_t b, int64_t e) {
  const lp_job *j = arg;
  for (int64_t at = b; at < e; at += LP_CHUNK) { /* both outputs of a chunk while it is in cache */
    int64_t len = e - at < LP_CHUNK ? e - at : LP_CHUNK;
    if (j->codes[0] && j->codes[1] && !j->y[0] && !j->y[1]) { /* the codes only: one sweep for both */
      const float *lev[2] = {j->lev[0], j->lev[1]}, *thr[2] = {j->thr[0], j->thr[1]};
      signed char *const cd[2] = {j->codes[0] + at, j->codes[1] + at};
      nbl_logq_nearest_codes2(j->isa, lev, thr, j->levels, j->x + at, cd, (size_t)len);
      continue;
    }
    for (int k = 0; k < 2; k++)
      if (j->codes[k])
        nbl_logq_nearest_codes(j->isa, j->lev[k], j->thr[k], j->levels[k], j->x + at,
                               j->y[k] ? j->y[k] + at : NULL, j->codes[k] + at, (size_t)len);
      else
        nbl_logq_nearest(j->isa, j->lev[k], j->thr[k], j->levels[k], j->x + at, j->y[k] + at, (size_t)len);
  }
}

nbl_status nbl_fuse_log_pair_run(nbl_kctx *c, const nbl_node *const orig[2], const nbl_rt_tensor *X, float absmax,
                                 int out) {
  if (X->dtype != NBL_DT_FLOAT)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "X must be float32, got %s", nbl_dtype_name(X->dtype));
  nbl_log_config cfg[2];
  for (int k = 0; k < 2; k++) {
    char err[256];
    nbl_status st = nbl_log_config_decode(orig[k], &cfg[k], err, sizeof err);
    if (st != NBL_OK) return nbl_kerr(c, st, "%s", err);
  }
  lp_job j = {.isa = nbl_logq_best_isa(), .x = X->data, .n = X->numel};
  float m = absmax;
  if (!(m >= 0)) { /* max |x| over the finite elements: the maximum of the parts' maxima */
    j.parts = c->threads > 1 && X->numel >= 2 * LP_CHUNK ? 4 * c->threads : 1;
    float one;
    j.part_max = j.parts > 1 ? malloc(sizeof(float) * (size_t)j.parts) : &one;
    if (!j.part_max) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    nbl_parallel_for(c, j.parts, 1, lp_max, &j);
    m = 0.0f;
    for (int64_t p = 0; p < j.parts; p++) m = j.part_max[p] > m ? j.part_max[p] : m;
    if (j.part_max != &one) free(j.part_max);
  }
  for (int k = 0; k < 2; k++) {
    nbl_log_params p;
    nbl_log_choose_max(&cfg[k], m, &p);
    nbl_log_table(&cfg[k], &p, j.lev[k], j.thr[k]);
    j.levels[k] = p.levels;
    nbl_status st = NBL_OK;
    const int want_codes = c->n_out > out + 4 + k && c->out[out + 4 + k];
    if (c->out[out + k] || !want_codes) { /* Y (omitted with the codes wanted: not written) */
      if ((st = nbl_kctx_alloc_out(c, out + k, NBL_DT_FLOAT, X->rank, X->dims))) return st;
      j.y[k] = nbl_kctx_out(c, out + k)->data;
    }
    if (c->n_out > out + 2 + k && c->out[out + 2 + k]) { /* top */
      if ((st = nbl_kctx_alloc_out(c, out + 2 + k, NBL_DT_FLOAT, 0, NULL))) return st;
      ((float *)nbl_kctx_out(c, out + 2 + k)->data)[0] = p.top;
    }
    if (want_codes) { /* codes */
      if ((st = nbl_kctx_alloc_out(c, out + 4 + k, NBL_DT_INT8, X->rank, X->dims))) return st;
      j.codes[k] = nbl_kctx_out(c, out + 4 + k)->data;
    }
  }
  nbl_parallel_for(c, X->numel, LP_CHUNK, lp_sweep, &j);
  return NBL_OK;
}

static nbl_status k_log_pair(nbl_kctx *c) {
  const lp_fused *f = (const lp_fused *)c->node;
  const nbl_rt_tensor *X = c->n_in > 0 ? c->in[0] : NULL;
  if (!X) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input X is missing");
  return nbl_fuse_log_pair_run(c, f->orig, X, -1.0f, 0);
}

const nbl_op_def nbl_fused_log_pair_def = NBL_OP_DEF("ai.nibble", "QuantizeLogPair", 1, 1, .ref = k_log_pair,
                                                     .fast = k_log_pair);
