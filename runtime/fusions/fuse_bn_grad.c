/* fuse_bn_grad.c - the bn-grad fusion of training graphs: the backward chain
 * that build-training leaves after every Conv -> BatchNormalization -> Relu,
 *
 *   [Add (the gradient sum)] -> [QuantizeInt4Grad] -> ReluGrad -> BatchNormalizationGrad
 *
 * or, where the Relu output feeds a quantized and a float consumer (the
 * stem's Relu: the first block's conv through its quantizer, and its
 * identity shortcut), the QuantizeInt4Grad on one operand of the Add,
 *
 *   QuantizeInt4Grad (of Add's operand 0 or 1) -> Add -> ReluGrad -> BatchNormalizationGrad
 *
 * (the bracketed nodes when present) runs as one node, block of channels by
 * block (nbl_bn_block), through BatchNormalizationGrad's fast kernel for
 * those channels (nbl_bn_grad_f32_block) with hooks: the masked gradient g = (d0 + d1)
 * where the straight-through estimator passes and the Relu output is
 * positive (else +0; with the mask on an operand, (d0 + d1) with that
 * operand +0 where the estimator stops it, then +0 where the Relu output
 * is not positive) is built for each plane just before the kernel sums it
 * (so it is summed from L1), then the kernel writes dX over g and takes
 * the max |dX| the QuantizeLog pair needs in the same sweep. The unfused
 * chain sweeps the memory of each of these tensors once per node (and
 * QuantizeInt4Grad once more for its range): about 11 reads and 4 writes of
 * an activation-sized tensor against 7 and 2 here.
 *
 * Same numbers as the unfused nodes bit for bit: g is the same selection of
 * the same float sum (a + b is exact IEEE addition in either kernel; the
 * masks are the STE's and ReluGrad's comparisons, the STE's division and
 * half-even rounding as the interval of V they pass (nbl_q4t_ste_bounds,
 * as nbl_q4t_ste: two comparisons), or nbl_q4_passes where the quantizer's
 * fast kernel declines: stochastic rounding, a NaN or Inf when V must be
 * scanned for the parameters: with the forward's scale and zero point
 * wired there is no scan and the interval excludes them), and the sums and
 * dX come from the op's own per-channel kernel in its order. See fuse.h;
 * NBL_NO_FUSION=bn-grad (runtime/core/plan.c) turns it off.
 *
 * The fused node (op type "Add+Q4Grad+ReluGrad+BNGrad", "Q4Grad+Add+ReluGrad+BNGrad"
 * with the mask on an operand, and shorter forms)
 * runs at ReluGrad's place in the schedule:
 *   inputs:  d0, d1 (the Add's operands; d1 omitted without an Add: d0 is
 *            then the gradient QuantizeInt4Grad or ReluGrad reads), V (the
 *            Relu output, input 1 of ReluGrad and QuantizeInt4Grad), X,
 *            scale, saved_mean, saved_inv_std (BatchNormalizationGrad's),
 *            q_scale, q_zero_point (QuantizeInt4Grad's inputs scale and
 *            zero_point, the forward quantizer's: omitted when it has none)
 *   outputs: BatchNormalizationGrad's three, then ReluGrad's output when
 *            another node (or the graph) reads it, else omitted, then the
 *            six of the QuantizeLog pair when it runs too (Y, Y, top, top,
 *            codes, codes: nbl_fuse_log_pair_outputs; omitted ones NONE)
 *   attributes: QuantizeInt4Grad's (bits, mode, scale_source, ...) and the
 *            int nibble.q4: 0 without it, 1 on the sum (or the gradient
 *            without an Add), 2 on d0, 3 on d1
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "runtime/core/cpu.h"
#include "runtime/fusions/fuse.h"
#include "runtime/kernels/int4_fused.h"
#include "runtime/kernels/q4_train.h"
#include "runtime/ops/grad_norm.h"
#include "runtime/ops/nibble.h"

/* ------------------------------------------------------------------ plan */

typedef struct bg_fused {
  nbl_node node; /* first: the kernel sees the whole struct through c->node */
  const nbl_node *logs[2]; /* the QuantizeLog pair of dX it runs too, or NULL */
  nbl_id in[9], out[10];
  nbl_attr *attrs;
  char op[48];
} bg_fused;

/* 1 if no output but output 0 of node n is read by anything. */
static int only_output0_used(const nbl_graph *g, const nbl_node *n) {
  for (int k = 1; k < n->n_outputs; k++) {
    nbl_id v = n->outputs[k];
    if (v != NBL_NONE && (g->values[v].n_consumers || (g->values[v].flags & (NBL_VAL_OUTPUT | NBL_VAL_OUTER))))
      return 0;
  }
  return n->n_outputs >= 1 && n->outputs[0] != NBL_NONE;
}

static int is_float(const nbl_graph *g, nbl_id v) {
  const nbl_type *t = &g->values[v].type;
  return t->kind == NBL_TYPE_TENSOR && t->elem == NBL_DT_FLOAT;
}

/* 0 where the IR says value v is something else than a float32 tensor (the
 * gradients of a training graph are often untyped: they have the type of
 * the forward value, checked when the kernel runs). */
static int maybe_float(const nbl_graph *g, nbl_id v) {
  const nbl_type *t = &g->values[v].type;
  return t->kind == NBL_TYPE_NONE || (t->kind == NBL_TYPE_TENSOR && (t->elem == NBL_DT_UNDEFINED || t->elem == NBL_DT_FLOAT));
}

/* 1 if QuantizeInt4Grad node q's attributes decode and its mask needs no
 * clip input (not scale_source=pact). */
static int q4_fusable(const nbl_node *q) {
  nbl_q4_config cfg;
  char err[160];
  return nbl_q4_config_decode(q, &cfg, err, sizeof err) == NBL_OK && cfg.scale_source != NBL_Q4_SCALE_PACT;
}

/* 1 if QuantizeInt4Grad node Q (or NULL) can be absorbed as the mask of the
 * gradient value d it makes, d read only by node `by` as input `slot`, V
 * (its input 1) being v. */
static int q4_absorbable(const nbl_fusion_env *env, const nbl_node *Q, nbl_id d, nbl_id v, nbl_id by, int slot) {
  const nbl_graph *g = env->g;
  return nbl_fuse_is_op(Q, "ai.nibble", "QuantizeInt4Grad") && Q->n_inputs >= 2 && Q->n_inputs <= 5 &&
         (Q->n_inputs < 3 || Q->inputs[2] == NBL_NONE) && Q->inputs[1] == v && Q->inputs[0] != NBL_NONE &&
         Q->inputs[0] != v && only_output0_used(g, Q) && nbl_fuse_only_feeds(g, d, by, slot) &&
         !env->taken(env, g->values[d].producer) && q4_fusable(Q);
}

/* The chain ending at BatchNormalizationGrad node b, or NULL. Absorbed nodes
 * in *relu, *q4, *add (NBL_NONE when absent). The QuantizeInt4Grad is the
 * mask of the Add's sum (between the Add and ReluGrad), or, without one
 * there, the mask of one of the Add's operands (a value that feeds both a
 * quantized and a float consumer, as the stem's Relu output feeding the
 * first block's conv through its quantizer and its identity shortcut). */
static bg_fused *try_fuse(const nbl_fusion_env *env, const nbl_id *order, int n_order, const int *pos, nbl_id b,
                          nbl_id *relu, nbl_id *q4, nbl_id *add, nbl_id logs[2]) {
  const nbl_graph *g = env->g;
  const nbl_node *B = &g->nodes[b];
  if (!nbl_fuse_is_op(B, "com.microsoft", "BatchNormalizationGrad") || B->n_inputs != 5 || B->n_outputs < 1 ||
      B->n_outputs > 3 || B->outputs[0] == NBL_NONE)
    return NULL;
  for (int k = 0; k < 5; k++)
    if (B->inputs[k] == NBL_NONE || !maybe_float(g, B->inputs[k])) return NULL;
  if (!is_float(g, B->inputs[1])) return NULL; /* X: a forward value, its type known */
  const nbl_node *R = nbl_fuse_producer(g, B->inputs[0]);
  if (!nbl_fuse_is_op(R, "com.microsoft", "ReluGrad") || R->n_inputs != 2 || R->n_outputs != 1 ||
      R->inputs[0] == NBL_NONE || R->inputs[1] == NBL_NONE || R->inputs[0] == R->inputs[1] ||
      env->taken(env, g->values[B->inputs[0]].producer))
    return NULL;
  *relu = g->values[B->inputs[0]].producer;
  nbl_id rout = R->outputs[0], v = R->inputs[1];
  for (int k = 1; k < 5; k++)
    if (B->inputs[k] == rout) return NULL;
  /* R's output also read elsewhere: the fused node writes it */
  int keep_rout = !nbl_fuse_only_feeds(g, rout, b, 0);
  *q4 = *add = NBL_NONE;
  nbl_id d = R->inputs[0];
  const nbl_node *Q = nbl_fuse_producer(g, d);
  int q_on = 0; /* the mask on: 1 the sum (or the gradient), 2 the Add's operand 0, 3 its operand 1 */
  if (q4_absorbable(env, Q, d, v, *relu, 0)) {
    *q4 = g->values[d].producer;
    q_on = 1;
    d = Q->inputs[0];
  }
  nbl_id d1 = NBL_NONE;
  const nbl_node *A = nbl_fuse_producer(g, d);
  if (nbl_fuse_is_op(A, "", "Add") && A->n_inputs == 2 && A->n_outputs == 1 && A->inputs[0] != NBL_NONE &&
      A->inputs[1] != NBL_NONE && A->inputs[0] != A->inputs[1] &&
      nbl_fuse_only_feeds(g, d, *q4 != NBL_NONE ? *q4 : *relu, 0) &&
      !env->taken(env, g->values[d].producer)) {
    *add = g->values[d].producer;
    d1 = A->inputs[1];
    d = A->inputs[0];
    for (int k = 0; k < 2 && !q_on; k++) { /* no mask of the sum: one of an operand */
      nbl_id o = A->inputs[k];
      const nbl_node *P = nbl_fuse_producer(g, o);
      if (!q4_absorbable(env, P, o, v, *add, k)) continue;
      Q = P;
      *q4 = g->values[o].producer;
      q_on = 2 + k;
      if (k) d1 = P->inputs[0];
      else d = P->inputs[0];
      if (d == d1) { /* Add(Q4Grad(a), a): two reads of one value, left unfused */
        *q4 = NBL_NONE;
        q_on = 0;
        d = A->inputs[0];
        d1 = A->inputs[1];
      }
    }
  }
  if (!maybe_float(g, d) || (d1 != NBL_NONE && !maybe_float(g, d1)) || !is_float(g, v)) return NULL;
  /* every input ready where R runs (B's are forward values, written by a
   * node or a fused node of the forward) */
  nbl_id qs = NBL_NONE, qz = NBL_NONE; /* the forward quantizer's scale and zero point */
  if (*q4 != NBL_NONE) {
    qs = Q->n_inputs > 3 ? Q->inputs[3] : NBL_NONE;
    qz = Q->n_inputs > 4 ? Q->inputs[4] : NBL_NONE;
  }
  nbl_id need[9] = {d, d1, v, B->inputs[1], B->inputs[2], B->inputs[3], B->inputs[4], qs, qz};
  for (int k = 0; k < 9; k++)
    if (need[k] != NBL_NONE && nbl_fuse_written_at(env, order, n_order, need[k]) >= pos[*relu]) return NULL;
  bg_fused *f = calloc(1, sizeof *f);
  const nbl_node *src = *q4 != NBL_NONE ? Q : NULL;
  int na = src ? src->n_attrs : 0;
  if (f) f->attrs = calloc((size_t)na + 1, sizeof(nbl_attr));
  if (!f || !f->attrs) {
    free(f);
    return NULL;
  }
  if (na) memcpy(f->attrs, src->attrs, sizeof(nbl_attr) * (size_t)na);
  f->attrs[na] = (nbl_attr){.name = "nibble.q4", .type = NBL_ATTR_INT, .i = q_on};
  nbl_id in[9] = {d, d1, v, B->inputs[1], B->inputs[2], B->inputs[3], B->inputs[4], qs, qz};
  memcpy(f->in, in, sizeof in);
  for (int k = 0; k < 3; k++) f->out[k] = k < B->n_outputs ? B->outputs[k] : NBL_NONE;
  f->out[3] = keep_rout ? rout : NBL_NONE;
  /* dX read only by two QuantizeLog (quantize-grad-log4's tpr pair): run
   * them too, with dX's max |x| taken per channel while it is in cache */
  logs[0] = logs[1] = NBL_NONE;
  for (int k = 4; k < 10; k++) f->out[k] = NBL_NONE;
  const nbl_value *dxv = &g->values[B->outputs[0]];
  if (dxv->n_consumers == 2 && !(dxv->flags & (NBL_VAL_OUTPUT | NBL_VAL_OUTER)) &&
      !nbl_fuse_used_in_subgraphs(g, dxv->name)) {
    nbl_id l0 = dxv->consumers[0], l1 = dxv->consumers[1];
    if (l0 != l1 && nbl_fuse_log_pairable(g, &g->nodes[l0]) && nbl_fuse_log_pairable(g, &g->nodes[l1]) &&
        !env->taken(env, l0) && !env->taken(env, l1)) {
      logs[0] = l0;
      logs[1] = l1;
      f->logs[0] = &g->nodes[l0];
      f->logs[1] = &g->nodes[l1];
      nbl_fuse_log_pair_outputs(&g->nodes[l0], &g->nodes[l1], f->out + 4);
    }
  }
  f->node = *B;
  f->node.inputs = f->in;
  f->node.n_inputs = qs != NBL_NONE || qz != NBL_NONE ? 9 : 7;
  f->node.outputs = f->out;
  f->node.n_outputs = 10;
  f->node.attrs = f->attrs;
  f->node.n_attrs = na + 1;
  snprintf(f->op, sizeof f->op, "%s%s%sReluGrad+BNGrad%s", q_on >= 2 ? "Q4Grad+" : "",
           *add != NBL_NONE ? "Add+" : "", q_on == 1 ? "Q4Grad+" : "", f->logs[0] ? "+Log*2" : "");
  f->node.op_type = f->op;
  return f;
}

/* Each BatchNormalizationGrad fed by a ReluGrad (through QuantizeInt4Grad
 * and an Add when there), unless an earlier fusion took one of them; the
 * fused node takes ReluGrad's place and the other nodes leave the order. */
nbl_status nbl_fuse_bn_grad_plan(const nbl_fusion_env *env, nbl_id *order, int *n, void **state) {
  if (nbl_fuse_plan_skip(env, state)) return NBL_OK;
  const nbl_graph *g = env->g;
  nbl_fuse_state *fu;
  unsigned char *drop;
  int *pos;
  nbl_status st = nbl_fuse_plan_begin(g, order, *n, 1, &fu, &drop, &pos);
  if (st != NBL_OK) return st;
  int any = 0;
  for (int s = 0; s < *n; s++) {
    nbl_id id = order[s], r, q, a, lg[2];
    if (drop[id] || env->taken(env, id)) continue;
    bg_fused *f = try_fuse(env, order, *n, pos, id, &r, &q, &a, lg);
    if (!f) continue;
    if (drop[r] || fu->by_node[r] || (q != NBL_NONE && drop[q]) || (a != NBL_NONE && drop[a]) ||
        (lg[0] != NBL_NONE && (drop[lg[0]] || drop[lg[1]] || fu->by_node[lg[0]] || fu->by_node[lg[1]]))) {
      free(f->attrs);
      free(f);
      continue;
    }
    fu->by_node[r] = f;
    drop[id] = 1;
    if (q != NBL_NONE) drop[q] = 1;
    if (a != NBL_NONE) drop[a] = 1;
    if (lg[0] != NBL_NONE) drop[lg[0]] = drop[lg[1]] = 1;
    any = 1;
  }
  free(pos);
  nbl_fuse_plan_finish(order, n, drop, any, fu, nbl_fuse_state_free, state);
  return NBL_OK;
}

/* ------------------------------------------------------------------ kernel */

enum { MASK_RELU, MASK_Q4_FAST, MASK_Q4_REF };

typedef struct bg_job {
  nbl_kctx *c;
  int64_t N, C, sp;
  const float *d0, *d1, *v, *x, *scale, *mean, *inv;
  float *g, *dx, *dscale, *dbias;
  int mask;
  int q_on;               /* the Q4 mask on: 1 the sum, 2 d0, 3 d1 (nibble.q4) */
  nbl_q4_config cfg;
  nbl_q4_params p;
  float lo, hi; /* the STE passes exactly lo <= v <= hi (nbl_q4t_ste_bounds) */
  float *cmax;            /* per block of channels: max |dX| over its finite elements (NULL: not needed) */
  int64_t blk;            /* channels per block (nbl_bn_block) */
} bg_job;

#if defined(__x86_64__)
/* next: the offset of the plane fetched into the cache while this one is
 * made (nbl_bn_ahead) */
__attribute__((target("avx512f"))) static int64_t g_avx512(const bg_job *j, float *g, const float *d0,
                                                           const float *d1, const float *v, int64_t n,
                                                           int64_t next) {
  const __m512 lo = _mm512_set1_ps(j->lo), hi = _mm512_set1_ps(j->hi), zero = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm_prefetch((const char *)(d0 + next + i), _MM_HINT_T0);
    _mm_prefetch((const char *)(v + next + i), _MM_HINT_T0);
    if (d1) _mm_prefetch((const char *)(d1 + next + i), _MM_HINT_T0);
    __m512 vv = _mm512_loadu_ps(v + i), t = _mm512_loadu_ps(d0 + i);
    __mmask16 ok = _mm512_cmp_ps_mask(vv, zero, _CMP_GT_OQ), q = 0xFFFF;
    if (j->mask == MASK_Q4_FAST) q = _mm512_cmp_ps_mask(vv, lo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(vv, hi, _CMP_LE_OQ);
    if (j->q_on == 2) t = _mm512_maskz_mov_ps(q, t); /* the operand as QuantizeInt4Grad wrote it */
    if (d1) t = _mm512_add_ps(t, j->q_on == 3 ? _mm512_maskz_loadu_ps(q, d1 + i) : _mm512_loadu_ps(d1 + i));
    if (j->q_on == 1) ok &= q;
    _mm512_storeu_ps(g + i, _mm512_maskz_mov_ps(ok, t));
  }
  return i;
}

__attribute__((target("avx2"))) static int64_t g_avx2(const bg_job *j, float *g, const float *d0,
                                                      const float *d1, const float *v, int64_t n) {
  const __m256 lo = _mm256_set1_ps(j->lo), hi = _mm256_set1_ps(j->hi), zero = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 vv = _mm256_loadu_ps(v + i), t = _mm256_loadu_ps(d0 + i);
    __m256 ok = _mm256_cmp_ps(vv, zero, _CMP_GT_OQ), q = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    if (j->mask == MASK_Q4_FAST) q = _mm256_and_ps(_mm256_cmp_ps(vv, lo, _CMP_GE_OQ), _mm256_cmp_ps(vv, hi, _CMP_LE_OQ));
    if (j->q_on == 2) t = _mm256_and_ps(q, t); /* the operand as QuantizeInt4Grad wrote it */
    if (d1) t = _mm256_add_ps(t, j->q_on == 3 ? _mm256_and_ps(q, _mm256_loadu_ps(d1 + i)) : _mm256_loadu_ps(d1 + i));
    if (j->q_on == 1) ok = _mm256_and_ps(ok, q);
    _mm256_storeu_ps(g + i, _mm256_and_ps(ok, t));
  }
  return i;
}
#endif

/* 1 where QuantizeInt4Grad passes element `at` of value x (the interval of
 * the fast kernel, or the reference's test). */
static int q_pass(const bg_job *j, float x, int64_t at) {
  if (j->mask == MASK_Q4_FAST) return x >= j->lo && x <= j->hi;
  return j->mask != MASK_Q4_REF || (isfinite(x) && nbl_q4_passes(&j->cfg, &j->p, x, (uint64_t)at));
}

/* g[i] = (d0[i] + d1[i]) where V passes both masks, else +0 (with the Q4
 * mask on an operand: that operand +0 where it stops it, then the sum where
 * V > 0, else +0), over the n floats of one plane starting at flat index
 * `at` (stochastic rounding's element index). */
static void make_g(const bg_job *j, int64_t at, int64_t n) {
  float *g = j->g + at;
  const float *d0 = j->d0 + at, *d1 = j->d1 ? j->d1 + at : NULL, *v = j->v + at;
  int64_t i = 0;
#if defined(__x86_64__)
  if (j->mask != MASK_Q4_REF) {
    int64_t next = nbl_bn_ahead(at / (j->C * j->sp), j->N, j->C, j->sp);
    if (nbl_cpu_has(NBL_CPU_AVX512F)) i = g_avx512(j, g, d0, d1, v, n, next);
    else if (nbl_cpu_has(NBL_CPU_AVX2)) i = g_avx2(j, g, d0, d1, v, n);
  }
#endif
  for (; i < n; i++) {
    int ok = v[i] > 0;
    if (j->q_on >= 2) { /* the operand's mask matters only where V > 0 */
      float a = d0[i], b = d1[i];
      if (ok && !q_pass(j, v[i], at + i)) *(j->q_on == 2 ? &a : &b) = 0.0f;
      g[i] = ok ? a + b : 0.0f;
      continue;
    }
    float t = d1 ? d0[i] + d1[i] : d0[i];
    if (ok && j->mask == MASK_Q4_FAST) {
      ok = v[i] >= j->lo && v[i] <= j->hi;
    } else if (ok && j->mask == MASK_Q4_REF) {
      ok = isfinite(v[i]) && nbl_q4_passes(&j->cfg, &j->p, v[i], (uint64_t)(at + i));
    }
    g[i] = ok ? t : 0.0f;
  }
}

static void bg_before(void *arg, int64_t at, int64_t n) {
  const bg_job *j = arg;
  make_g(j, at, n);
}

/* A block of channels (nbl_bn_block) through BatchNormalizationGrad's
 * kernel, g made plane by plane just before it is summed (from L1) and max
 * |dX| taken as dX is written. */
static void bg_run(void *arg, int64_t b, int64_t e) {
  const bg_job *j = arg;
  for (int64_t it = b; it < e; it++) {
    const int64_t c0 = it * j->blk, c1 = c0 + j->blk < j->C ? c0 + j->blk : j->C;
    float m = 0.0f;
    nbl_bn_grad_hooks h = {bg_before, (void *)j, j->cmax ? &m : NULL};
    double mean[NBL_BN_BLOCK_MAX], inv[NBL_BN_BLOCK_MAX], scale[NBL_BN_BLOCK_MAX], sg[NBL_BN_BLOCK_MAX],
        sgx[NBL_BN_BLOCK_MAX];
    for (int64_t ch = c0; ch < c1; ch++)
      mean[ch - c0] = j->mean[ch], inv[ch - c0] = j->inv[ch], scale[ch - c0] = j->scale[ch];
    nbl_bn_grad_f32_block(j->g, j->x, j->dx, j->N, j->C, j->sp, c0, c1, mean, inv, scale, sg, sgx, &h);
    for (int64_t ch = c0; ch < c1; ch++) {
      if (j->dscale) j->dscale[ch] = (float)sgx[ch - c0];
      if (j->dbias) j->dbias[ch] = (float)sg[ch - c0];
    }
    if (j->cmax) j->cmax[it] = m;
  }
}

static int same_dims(const nbl_rt_tensor *a, const nbl_rt_tensor *b) {
  if (a->rank != b->rank) return 0;
  for (int i = 0; i < a->rank; i++)
    if (a->dims[i] != b->dims[i]) return 0;
  return 1;
}

/* Numpy-style strides of tensor t aligned to the rank-r shape dims (0 along
 * a broadcast axis); 0 if t does not broadcast to dims. */
static int bcast_strides(const nbl_rt_tensor *t, int r, const int64_t *dims, int64_t *st) {
  if (t->rank > r) return 0;
  int64_t s = 1;
  for (int i = r - 1; i >= 0; i--) {
    int k = i - (r - t->rank);
    int64_t d = k >= 0 ? t->dims[k] : 1;
    if (d != dims[i] && d != 1) return 0;
    st[i] = d == 1 ? 0 : s;
    s *= d;
  }
  return 1;
}

/* out = a + b broadcast to X's shape (the Add's output when its operands
 * are not both X's shape; a float sum as the Add kernel's, which computes in
 * double and rounds: the same float). 0 if they do not broadcast to it. */
static int bcast_add(const nbl_rt_tensor *a, const nbl_rt_tensor *b, const nbl_rt_tensor *X, float *out) {
  int r = X->rank;
  int64_t sa[NBL_MAX_DIMS], sb[NBL_MAX_DIMS], idx[NBL_MAX_DIMS] = {0};
  if (!bcast_strides(a, r, X->dims, sa) || !bcast_strides(b, r, X->dims, sb)) return 0;
  const float *pa = a->data, *pb = b->data;
  int64_t ia = 0, ib = 0;
  for (int64_t i = 0; i < X->numel; i++) {
    out[i] = pa[ia] + pb[ib];
    for (int k = r - 1; k >= 0; k--) { /* next multi-index */
      ia += sa[k];
      ib += sb[k];
      if (++idx[k] < X->dims[k]) break;
      ia -= sa[k] * idx[k];
      ib -= sb[k] * idx[k];
      idx[k] = 0;
    }
  }
  return 1;
}

static nbl_status k_bn_grad_fused(nbl_kctx *c) {
  static const char *const names[] = {"dY", "dY (second Add operand)", "V", "X", "scale", "saved_mean",
                                      "saved_inv_std"};
  for (int k = 0; k < 7; k++) {
    const nbl_rt_tensor *t = c->in[k];
    if (k == 1 && !t) continue;
    if (!t) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "missing input %s", names[k]);
    if (t->dtype != NBL_DT_FLOAT)
      return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "input %s must be float32 (got %s)", names[k],
                      nbl_dtype_name(t->dtype));
  }
  const nbl_rt_tensor *X = c->in[3];
  if (X->rank < 2) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input X must have rank >= 2");
  /* operands of another shape than X's: the Add broadcast them (below) */
  int bcast = c->in[1] && (!same_dims(c->in[0], X) || !same_dims(c->in[1], X));
  for (int k = bcast ? 2 : 0; k < 3; k++)
    if (c->in[k] && !same_dims(c->in[k], X))
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %s must have the shape of X", names[k]);
  int64_t N = X->dims[0], C = X->dims[1], sp = N * C > 0 ? X->numel / (N * C) : 0;
  for (int k = 4; k < 7; k++)
    if (c->in[k]->rank != 1 || c->in[k]->dims[0] != C)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %s must have shape [%lld]", names[k], (long long)C);
  bg_job j = {.c = c, .N = N, .C = C, .sp = sp, .d0 = c->in[0]->data, .d1 = c->in[1] ? c->in[1]->data : NULL,
              .v = c->in[2]->data, .x = X->data, .scale = c->in[4]->data, .mean = c->in[5]->data,
              .inv = c->in[6]->data, .mask = MASK_RELU};
  j.q_on = (int)nbl_attr_int(c->node, "nibble.q4", 0);
  if (j.q_on < 0 || j.q_on > 3 || (j.q_on >= 2 && !c->in[1]))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute nibble.q4=%d: not 0 to 3, or on an Add operand without an Add",
                    j.q_on); /* never planned */
  if (j.q_on) {
    nbl_status st = nbl_q4_attrs(c, &j.cfg);
    if (st) return st;
    if (j.cfg.scale_source == NBL_Q4_SCALE_PACT)
      return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "scale_source=pact is not fused"); /* never planned */
    int have = 0;
    if ((st = nbl_q4_grad_given(c, &j.cfg, c->n_in > 7 ? c->in[7] : NULL, c->n_in > 8 ? c->in[8] : NULL, &j.p,
                                &have)))
      return st;
    if (have ? j.cfg.rounding == NBL_Q4_ROUND_HALF_EVEN : nbl_q4t_params(c, &j.cfg, c->in[2], &j.p) == 0) {
      /* the forward's parameters, or V all finite: the mask is an interval of V */
      j.mask = MASK_Q4_FAST;
      nbl_q4t_ste_bounds(&j.p, &j.lo, &j.hi);
    } else if (have) {
      j.mask = MASK_Q4_REF; /* stochastic rounding */
    } else {
      if ((st = nbl_q4_kernel_params(c, &j.cfg, c->in[2], NULL, &j.p))) return st;
      j.mask = MASK_Q4_REF;
    }
  }
  nbl_status st = nbl_kctx_alloc_out(c, 0, NBL_DT_FLOAT, X->rank, X->dims);
  for (int o = 1; !st && o <= 2; o++)
    if (c->out[o]) st = nbl_kctx_alloc_out(c, o, NBL_DT_FLOAT, 1, &C);
  if (!st && c->out[3]) st = nbl_kctx_alloc_out(c, 3, NBL_DT_FLOAT, X->rank, X->dims);
  if (st) return st;
  j.dx = nbl_kctx_out(c, 0)->data;
  j.g = c->out[3] ? nbl_kctx_out(c, 3)->data : j.dx; /* without ReluGrad's output: dX is built over g */
  j.dscale = c->out[1] ? nbl_kctx_out(c, 1)->data : NULL;
  j.dbias = c->out[2] ? nbl_kctx_out(c, 2)->data : NULL;
  if (bcast) { /* the Add's output first, masked in place */
    nbl_rt_tensor a = *c->in[0], b = *c->in[1];
    if (j.q_on >= 2) { /* QuantizeInt4Grad's output first, into g (its element i only read for element i) */
      nbl_rt_tensor *q = j.q_on == 2 ? &a : &b;
      if (!same_dims(q, X))
        return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %s (QuantizeInt4Grad's dY) must have the shape of X",
                        names[j.q_on - 2]);
      const float *src = q->data;
      for (int64_t i = 0; i < X->numel; i++) j.g[i] = q_pass(&j, j.v[i], i) ? src[i] : 0.0f;
      q->data = j.g;
      j.q_on = 0;
      j.mask = MASK_RELU;
    }
    if (!bcast_add(&a, &b, X, j.g))
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "the gradients added do not broadcast to the shape of X");
    j.d0 = j.g;
    j.d1 = NULL;
  }
  const bg_fused *f = (const bg_fused *)c->node;
  j.blk = nbl_bn_block(C, sp, c->threads);
  const int64_t nblk = C > 0 ? (C + j.blk - 1) / j.blk : 0;
  if (f->logs[0]) {
    j.cmax = malloc(sizeof(float) * (size_t)(nblk > 0 ? nblk : 1));
    if (!j.cmax) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  nbl_parallel_for(c, nblk, 1, bg_run, &j);
  if (!f->logs[0]) return NBL_OK;
  float m = 0.0f; /* max |dX| over the finite elements: the blocks' maximum */
  for (int64_t ch = 0; ch < nblk; ch++) m = j.cmax[ch] > m ? j.cmax[ch] : m;
  free(j.cmax);
  return nbl_fuse_log_pair_run(c, f->logs, nbl_kctx_out(c, 0), m, 4);
}

const nbl_op_def nbl_fused_bn_grad_def = NBL_OP_DEF("ai.nibble", "BNGradChain", 1, 1, .ref = k_bn_grad_fused,
                                                    .fast = k_bn_grad_fused);
