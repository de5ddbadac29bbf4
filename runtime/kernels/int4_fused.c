/* int4_fused.c - the kernel of the fused INT4 node (nbl_i4_fused_def):
 * the activation quantizer's parameters (from the range the producing nbl_i4_fused
 * node recorded, or a scan), the weights packed from their source, the
 * integer Gemm/MatMul, and the literal fake-quantize + float composition
 * for anything the integer path cannot take exactly; convolutions go to
 * int4_conv.c. See int4_fused.h; the pattern matching is in
 * runtime/fusions/fuse_int4.c. */
#include "runtime/kernels/code_conv.h"
#include "runtime/kernels/code_direct.h"
#include "runtime/kernels/int4_fused.h"
#include "runtime/kernels/kdebug.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ weights */

void nbl_i4_fused_unpack(nbl_i4_fused *f) {
  if (f->packed) nbl_i4_weights_free(&f->packed[0]);
  if (f->rows)
    for (int i = 0; i < f->cons.groups; i++) nbl_i4_rows_free(&f->rows[i]);
  if (f->direct) nbl_i4_rows_free(f->direct);
  free(f->direct);
  f->direct = NULL;
  free(f->packed);
  free(f->rows);
  free(f->dw_w);
  f->packed = NULL;
  f->rows = NULL;
  f->dw_w = NULL;
}

/* Integer weight codes (q - z) of tensor w (the W source) into *codes
 * (malloc'd) and the scale into *scale. Returns 0, or -1 if w cannot be
 * represented exactly (non-finite, codes out of int8, bad type, OOM). */
static int weight_codes(const nbl_i4_fused *f, const nbl_rt_tensor *w, int8_t **codes, float *scale) {
  int64_t n = w->numel;
  int8_t *q = malloc((size_t)(n ? n : 1));
  if (!q) return -1;
  if (f->wsrc == WS_QUANT) {
    if (w->dtype != NBL_DT_FLOAT || !nbl_i4_all_finite(w->data, n)) goto fail;
    nbl_q4_params p;
    if (nbl_q4_choose(&f->wcfg, w->data, (size_t)n, 0.0f, &p, NULL) != 0) goto fail;
    nbl_q4_quantize_codes(&f->wcfg, &p, w->data, q, (size_t)n, 0);
    for (int64_t i = 0; i < n; i++) {
      int v = q[i] - p.zero;
      if (v < -128 || v > 127) goto fail;
      q[i] = (int8_t)v;
    }
    *scale = p.scale;
  } else {
    if (w->dtype != NBL_DT_INT4 && w->dtype != NBL_DT_INT8) goto fail;
    if (!isfinite(f->dq_scale) || f->dq_scale <= 0) goto fail;
    for (int64_t i = 0; i < n; i++) {
      int v = (int)nbl_rt_get_i64(w, i) - f->dq_zero;
      if (v < -128 || v > 127) goto fail;
      q[i] = (int8_t)v;
    }
    *scale = f->dq_scale;
  }
  *codes = q;
  return 0;
fail:
  free(q);
  return -1;
}

/* The weights of a Conv of one group for the direct kernel (code_direct.h):
 * row m as k = t * 4 * C4 + c, channels past C zero; f->direct stays NULL
 * when out of memory. */
static void pack_direct(nbl_i4_fused *f, const int8_t *q) {
  int64_t K;
  int8_t *r = nbl_cd_order_weights(q, f->cons.wdims[0], f->cons.wdims[1],
                                   f->cons.wdims[2] * f->cons.wdims[3], &K);
  f->direct = calloc(1, sizeof(nbl_i4_rows));
  if (!r || !f->direct || nbl_i4_pack_rows(r, f->cons.wdims[0], K, K, 1, f->direct) != 0) {
    free(f->direct);
    f->direct = NULL;
  }
  free(r);
}

int nbl_i4_fused_pack(nbl_i4_fused *f, const nbl_rt_tensor *w) {
  nbl_i4_fused_unpack(f);
  int8_t *q = NULL;
  float s = 0;
  if (weight_codes(f, w, &q, &s) != 0) return -1;
  int ok;
  if (f->cons.kind == NBL_CODE_CONV) {
    /* per group: W[m][k] with k over (c, kh, kw), the weight's own order */
    int64_t Mg = f->cons.wdims[0] / f->cons.groups;
    int64_t Kg = f->cons.wdims[1] * f->cons.wdims[2] * f->cons.wdims[3];
    f->rows = calloc((size_t)f->cons.groups, sizeof(nbl_i4_rows));
    ok = f->rows != NULL;
    for (int gi = 0; ok && gi < f->cons.groups; gi++)
      ok = nbl_i4_pack_rows(q + gi * Mg * Kg, Mg, Kg, Kg, 1, &f->rows[gi]) == 0;
    /* without it (out of memory) the convolution takes the im2col tiles */
    if (ok && f->cons.groups == 1 && f->cons.wrank == 4 && f->isa == NBL_I4_VNNI) pack_direct(f, q);
    if (ok && Mg == 1 && f->cons.wdims[1] == 1) { /* depthwise */
      f->dw_w = malloc(sizeof(float) * (size_t)(f->cons.groups * Kg + 1));
      ok = f->dw_w != NULL;
      for (int64_t i = 0; ok && i < f->cons.groups * Kg; i++) f->dw_w[i] = q[i];
    }
  } else {
    f->packed = calloc(1, sizeof(nbl_i4_weights));
    ok = f->packed != NULL;
    if (ok && f->cons.kind == NBL_CODE_GEMM && f->cons.trans_b)
      ok = nbl_i4_pack_weights(q, f->cons.wdims[1], f->cons.wdims[0], 1, f->cons.wdims[1],
                               &f->packed[0]) == 0;
    else if (ok)
      ok = nbl_i4_pack_weights(q, f->cons.wdims[0], f->cons.wdims[1], f->cons.wdims[1], 1,
                               &f->packed[0]) == 0;
  }
  free(q);
  if (!ok) {
    nbl_i4_fused_unpack(f);
    return -1;
  }
  f->w_scale = s;
  f->wdata = w->data;
  return 0;
}

/* ------------------------------------------------------------------ literal fallback */


/* Fake-quantize X (params p) and W, then the float op's reference kernel. */
nbl_status nbl_i4_run_literal(nbl_kctx *c, nbl_i4_fused *f, const nbl_q4_params *p) {
  const nbl_rt_tensor *X = c->in[0], *W = c->in[1];
  nbl_rt_tensor xh = {0}, wh = {0};
  nbl_status st = nbl_rt_tensor_alloc(&xh, NBL_DT_FLOAT, X->rank, X->dims);
  if (st == NBL_OK) st = nbl_rt_tensor_alloc(&wh, NBL_DT_FLOAT, W->rank, W->dims);
  if (st != NBL_OK) {
    nbl_rt_tensor_free(&xh);
    return nbl_kerr(c, st, "out of memory");
  }
  nbl_q4_fake_quant(&f->xcfg, p, X->data, xh.data, (size_t)X->numel, 0);
  float *wv = wh.data;
  if (f->wsrc == WS_QUANT) {
    nbl_q4_params pw;
    const char *why = "";
    if (W->dtype != NBL_DT_FLOAT ||
        nbl_q4_choose(&f->wcfg, W->data, (size_t)W->numel, 0.0f, &pw, &why) != 0) {
      nbl_rt_tensor_free(&xh);
      nbl_rt_tensor_free(&wh);
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "weight quantizer: %s",
                      W->dtype != NBL_DT_FLOAT ? "W must be float32" : why);
    }
    nbl_q4_fake_quant(&f->wcfg, &pw, W->data, wv, (size_t)W->numel, 0);
  } else {
    for (int64_t i = 0; i < W->numel; i++)
      wv[i] = (float)(nbl_rt_get_i64(W, i) - f->dq_zero) * f->dq_scale;
  }
  st = nbl_code_run_consumer(c, &f->cons, &xh, &wh);
  nbl_rt_tensor_free(&xh);
  nbl_rt_tensor_free(&wh);
  return st;
}

/* ------------------------------------------------------------------ Gemm / MatMul */

typedef struct mm_job {
  nbl_i4_fused *f;
  const uint8_t *A;
  int64_t lda, N;
  int32_t a_zero;
  int32_t *C;
} mm_job;

static void mm_rows(void *arg, int64_t b, int64_t e) {
  mm_job *j = arg;
  nbl_i4_gemm(j->f->isa, &j->f->packed[0], j->A, j->lda, b, e, j->a_zero, j->C, j->N);
}

static nbl_status run_mm(nbl_kctx *c, nbl_i4_fused *f, const nbl_q4_params *p) {
  const nbl_rt_tensor *X = c->in[0], *Cb = f->cons.kind == NBL_CODE_GEMM && c->n_in > 2 ? c->in[2] : NULL;
  const nbl_i4_weights *W = &f->packed[0];
  int64_t K = W->K, N = W->N, M;
  int64_t od[NBL_MAX_RANK];
  int orank;
  if (f->cons.kind == NBL_CODE_GEMM) {
    if (X->rank != 2 || X->dims[1] != K) return nbl_i4_run_literal(c, f, p);
    M = X->dims[0];
    od[0] = M;
    od[1] = N;
    orank = 2;
  } else {
    if (X->rank < 1 || X->dims[X->rank - 1] != K) return nbl_i4_run_literal(c, f, p);
    M = K ? X->numel / K : 0;
    if (!K) {
      M = 1;
      for (int i = 0; i < X->rank - 1; i++) M *= X->dims[i];
    }
    orank = X->rank;
    for (int i = 0; i < X->rank - 1; i++) od[i] = X->dims[i];
    od[orank - 1] = N;
  }
  /* Gemm C: scalar, [N], [1,N] or [M,N]; anything else takes the literal path */
  int cmode = 0; /* 0 none, 1 scalar, 2 row, 3 full */
  if (Cb && f->cons.beta != 0.0f) {
    if (Cb->dtype != NBL_DT_FLOAT) return nbl_i4_run_literal(c, f, p);
    if (Cb->numel == 1) cmode = 1;
    else if (Cb->rank >= 1 && Cb->dims[Cb->rank - 1] == N && Cb->numel == N) cmode = 2;
    else if (Cb->rank == 2 && Cb->dims[0] == M && Cb->dims[1] == N) cmode = 3;
    else return nbl_i4_run_literal(c, f, p);
  }
  nbl_status st = nbl_kctx_alloc_out(c, 0, NBL_DT_FLOAT, orank, od);
  if (st) return st;
  float *y = nbl_kctx_out(c, 0)->data;
  if (M * N == 0) return NBL_OK;
  int64_t lda = W->Kp;
  uint8_t *A = malloc((size_t)(M * lda) + 1);
  int32_t *C = malloc(sizeof(int32_t) * (size_t)(M * N));
  if (!A || !C) {
    free(A);
    free(C);
    return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  int off = nbl_i4_act_offset(p);
  if (lda == K) {
    nbl_i4_quantize_x(c, &f->xcfg, p, X->data, A, M * K, off);
  } else {
    const float *x = X->data;
    nbl_i4_quantizer q;
    nbl_i4_quantizer_init(&q, &f->xcfg, p);
    for (int64_t m = 0; m < M; m++) {
      nbl_i4_quantize_u8(&q, x + m * K, A + m * lda, (size_t)K, (uint64_t)(m * K), off);
      memset(A + m * lda + K, 0, (size_t)(lda - K));
    }
  }
  mm_job j = {f, A, lda, N, p->zero + off, C};
  nbl_parallel_for(c, M, NBL_I4_MR * 2, mm_rows, &j);
  float sc = p->scale * f->w_scale;
  if (f->cons.kind == NBL_CODE_GEMM) sc *= f->cons.alpha;
  const float *cv = Cb ? Cb->data : NULL;
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      float v = sc * (float)C[m * N + n];
      if (cmode == 1) v += f->cons.beta * cv[0];
      else if (cmode == 2) v += f->cons.beta * cv[n];
      else if (cmode == 3) v += f->cons.beta * cv[m * N + n];
      y[m * N + n] = nbl_i4_act(f, v);
    }
  free(A);
  free(C);
  return NBL_OK;
}

/* ------------------------------------------------------------------ the kernel */

static nbl_status k_fused_int4(nbl_kctx *c) {
  nbl_i4_fused *f = (nbl_i4_fused *)(void *)c->node;
  f->out = (nbl_i4_handover){0}; /* nothing known yet about this run's output */
  const nbl_rt_tensor *X = c->in[0], *W = c->in[1];
  if (!X || !W) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input X or W is missing");
  if (X->dtype != NBL_DT_FLOAT)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "X must be float32, got %s", nbl_dtype_name(X->dtype));
  float alpha = 0.0f;
  if (f->xcfg.scale_source == NBL_Q4_SCALE_PACT) {
    const nbl_rt_tensor *a = c->n_in > 3 ? c->in[3] : NULL;
    if (!a || a->dtype != NBL_DT_FLOAT || a->numel != 1)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "alpha must be a float32 scalar");
    alpha = ((const float *)a->data)[0];
  }
  const nbl_i4_handover *xh = f->xsrc ? &f->xsrc->out : NULL;
  nbl_q4_params p;
  if (nbl_i4_x_is_codes(f)) { /* activation bytes from the producer (link_codes) */
    p = (nbl_q4_params){.scale = xh->code_scale, .zero = xh->code_zero, .qmin = xh->code_qmin,
                        .qmax = xh->code_qmax};
    if (W->data != f->wdata || !f->dw_w || nbl_i4_act_offset(&p) != xh->code_off)
      return nbl_kerr(c, NBL_ERR_INTERNAL, "activation bytes for an unprepared consumer");
    nbl_kcount(NBL_KC_I4_INTEGER_RUNS);
    return nbl_i4_run_conv(c, f, &p);
  }
  const char *why = "";
  float lo, hi;
  int finite;
  /* the range recorded by the fused node that wrote X */
  if (xh && xh->range_known && nbl_kdebug_get(NBL_KS_I4_RANGE_REUSE)) {
    finite = 1;
    lo = xh->lo;
    hi = xh->hi;
    nbl_kcount(NBL_KC_I4_RANGE_REUSES);
  } else {
    finite = nbl_i4_scan(c, X, &lo, &hi);
  }
  if (finite && f->xcfg.scale_source == NBL_Q4_SCALE_MAX && f->xcfg.bits >= 2 && f->xcfg.bits <= 8)
    nbl_i4_params_from_range(&f->xcfg, X->numel, lo, hi, &p);
  else if (finite && f->xcfg.scale_source == NBL_Q4_SCALE_MSE && f->xcfg.bits >= 2 && f->xcfg.bits <= 8)
    nbl_q4_params_from_mse(&f->xcfg, X->data, (size_t)X->numel, lo, hi, &p);
  else if (nbl_q4_choose(&f->xcfg, X->data, (size_t)X->numel, alpha, &p, &why) != 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "activation quantizer: %s", why);
  if (W->data != f->wdata || (!f->packed && !f->rows)) {
    if (nbl_i4_fused_pack(f, W) != 0) return nbl_i4_run_literal(c, f, &p);
  }
  if (!finite) return nbl_i4_run_literal(c, f, &p);
  nbl_kcount(NBL_KC_I4_INTEGER_RUNS);
  return f->cons.kind == NBL_CODE_CONV ? nbl_i4_run_conv(c, f, &p) : run_mm(c, f, &p);
}

const nbl_op_def nbl_i4_fused_def = {.domain = "ai.nibble",
                                     .name = "FusedInt4",
                                     .since_version = 1,
                                     .max_version = 1,
                                     .ref = k_fused_int4,
                                     .fast = k_fused_int4};
