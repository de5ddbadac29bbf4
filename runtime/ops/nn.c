/* runtime/ops/nn.c - op family 'nn': convolution, matrix products, pooling,
 * normalization, Einsum (see kernel.h for the kernel contract).
 *
 * Reference kernels convert their inputs to double, compute in double and
 * convert the result back to the input's element type; fast kernels handle
 * float32 with float arithmetic (GEMM from gemm.c) and hand other types to
 * the reference kernel. */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "runtime/fusions/fuse.h"
#include "runtime/kernels/gemm.h"
#include "runtime/core/cpu.h"
#include "runtime/core/kernel.h"

/* ------------------------------------------------------------------ helpers */

static const nbl_rt_tensor *in_at(nbl_kctx *c, int i) { return i < c->n_in ? c->in[i] : NULL; }
static int want_out(nbl_kctx *c, int i) { return i < c->n_out && c->out[i] != NULL; }

static int is_float(nbl_dtype t) {
  return t == NBL_DT_FLOAT || t == NBL_DT_DOUBLE || t == NBL_DT_FLOAT16 || t == NBL_DT_BFLOAT16;
}
static int is_int(nbl_dtype t) {
  return t == NBL_DT_INT8 || t == NBL_DT_UINT8 || t == NBL_DT_INT16 || t == NBL_DT_UINT16 ||
         t == NBL_DT_INT32 || t == NBL_DT_UINT32 || t == NBL_DT_INT64 || t == NBL_DT_UINT64;
}

static nbl_status need_input(nbl_kctx *c, int i, const char *what) {
  if (!in_at(c, i)) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "required input %d (%s) is missing", i, what);
  return NBL_OK;
}

static nbl_status need_float(nbl_kctx *c, const nbl_rt_tensor *t, const char *what) {
  if (!is_float(t->dtype))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "input %s has element type %s; supported: float, double, "
                    "float16, bfloat16", what, nbl_dtype_name(t->dtype));
  return NBL_OK;
}

static nbl_status same_type(nbl_kctx *c, const nbl_rt_tensor *a, const nbl_rt_tensor *b,
                            const char *what) {
  if (a->dtype != b->dtype)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %s has element type %s, expected %s", what,
                    nbl_dtype_name(b->dtype), nbl_dtype_name(a->dtype));
  return NBL_OK;
}

static nbl_status oom(nbl_kctx *c) { return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory"); }

/* Convert inputs to double arrays; all-or-nothing. */
static int conv_inputs(int n, const nbl_rt_tensor **ts, double **out) {
  int ok = 1;
  for (int i = 0; i < n; i++) {
    out[i] = NULL;
    if (ts[i] && !(out[i] = nbl_to_f64(ts[i]))) ok = 0;
  }
  if (!ok)
    for (int i = 0; i < n; i++) {
      free(out[i]);
      out[i] = NULL;
    }
  return ok;
}
static void free_all(int n, double **p) {
  for (int i = 0; i < n; i++) free(p[i]);
}

/* ------------------------------------------------------------------ Gemm */

typedef struct gemm_shape {
  int64_t M, N, K;
  int ta, tb;
  float alpha, beta;
} gemm_shape;

static nbl_status gemm_check(nbl_kctx *c, gemm_shape *s) {
  nbl_status st;
  if ((st = need_input(c, 0, "A")) || (st = need_input(c, 1, "B"))) return st;
  const nbl_rt_tensor *A = c->in[0], *B = c->in[1], *C = in_at(c, 2);
  if (A->rank != 2 || B->rank != 2)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "A and B must be 2-D (got ranks %d and %d)", A->rank,
                    B->rank);
  if ((st = same_type(c, A, B, "B"))) return st;
  if (C && (st = same_type(c, A, C, "C"))) return st;
  if (!is_float(A->dtype) && !is_int(A->dtype))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "element type %s", nbl_dtype_name(A->dtype));
  s->ta = nbl_attr_int(c->node, "transA", 0) != 0;
  s->tb = nbl_attr_int(c->node, "transB", 0) != 0;
  s->alpha = nbl_attr_float(c->node, "alpha", 1.0f);
  s->beta = nbl_attr_float(c->node, "beta", 1.0f);
  s->M = s->ta ? A->dims[1] : A->dims[0];
  s->K = s->ta ? A->dims[0] : A->dims[1];
  int64_t kb = s->tb ? B->dims[1] : B->dims[0];
  s->N = s->tb ? B->dims[0] : B->dims[1];
  if (kb != s->K)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "inner dimensions differ: A gives K=%lld, B gives %lld",
                    (long long)s->K, (long long)kb);
  if (C) {
    int64_t od[2] = {s->M, s->N}, bd[NBL_MAX_RANK];
    int r;
    if (C->rank > 2 || nbl_broadcast_shape(2, od, C->rank, C->dims, &r, bd) != 0 || bd[0] != s->M ||
        bd[1] != s->N)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "C cannot be broadcast to [%lld, %lld]",
                      (long long)s->M, (long long)s->N);
  }
  int64_t od[2] = {s->M, s->N};
  return nbl_kctx_alloc_out(c, 0, A->dtype, 2, od);
}

static nbl_status k_gemm_ref(nbl_kctx *c) {
  gemm_shape s;
  nbl_status st = gemm_check(c, &s);
  if (st) return st;
  const nbl_rt_tensor *A = c->in[0], *B = c->in[1], *C = in_at(c, 2);
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  if (is_int(A->dtype)) {
    for (int64_t i = 0; i < s.M; i++)
      for (int64_t j = 0; j < s.N; j++) {
        uint64_t acc = 0;
        for (int64_t p = 0; p < s.K; p++)
          acc += (uint64_t)nbl_rt_get_i64(A, s.ta ? p * s.M + i : i * s.K + p) *
                 (uint64_t)nbl_rt_get_i64(B, s.tb ? j * s.K + p : p * s.N + j);
        double v = (double)s.alpha * (double)(int64_t)acc;
        if (C) {
          int64_t od[2] = {s.M, s.N};
          v += (double)s.beta * nbl_rt_get_f64(C, nbl_broadcast_index(2, od, i * s.N + j, C->rank, C->dims));
        }
        nbl_rt_set_f64(Y, i * s.N + j, v);
      }
    return NBL_OK;
  }
  const nbl_rt_tensor *ts[3] = {A, B, C};
  double *v[3];
  double *y = malloc((size_t)(Y->numel ? Y->numel : 1) * sizeof(double));
  if (!y || !conv_inputs(3, ts, v)) {
    free(y);
    return oom(c);
  }
  nbl_dgemm_ref(s.ta, s.tb, s.M, s.N, s.K, s.alpha, v[0], s.ta ? s.M : s.K, v[1], s.tb ? s.K : s.N,
                0.0, y, s.N);
  if (C) {
    int64_t od[2] = {s.M, s.N};
    for (int64_t i = 0; i < Y->numel; i++)
      y[i] += (double)s.beta * v[2][nbl_broadcast_index(2, od, i, C->rank, C->dims)];
  }
  nbl_from_f64(Y, y);
  free(y);
  free_all(3, v);
  return NBL_OK;
}

static nbl_status k_gemm_fast(nbl_kctx *c) {
  if (!in_at(c, 0) || c->in[0]->dtype != NBL_DT_FLOAT) return k_gemm_ref(c);
  gemm_shape s;
  nbl_status st = gemm_check(c, &s);
  if (st) return st;
  const nbl_rt_tensor *A = c->in[0], *B = c->in[1], *C = in_at(c, 2);
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  float *y = Y->data;
  float beta = 0.0f;
  if (C && s.beta != 0.0f) {
    const float *cv = C->data;
    int64_t od[2] = {s.M, s.N};
    if (C->numel == Y->numel) memcpy(y, cv, (size_t)Y->numel * sizeof(float));
    else
      for (int64_t i = 0; i < Y->numel; i++) y[i] = cv[nbl_broadcast_index(2, od, i, C->rank, C->dims)];
    beta = s.beta;
  }
  nbl_sgemm(c, s.ta, s.tb, s.M, s.N, s.K, s.alpha, A->data, s.ta ? s.M : s.K, B->data,
            s.tb ? s.K : s.N, beta, y, s.N);
  return NBL_OK;
}

/* ------------------------------------------------------------------ MatMul */

typedef struct mm_shape {
  int64_t M, N, K, batch;
  int br; /* batch rank */
  int64_t bdims[NBL_MAX_RANK], adims[NBL_MAX_RANK], bbdims[NBL_MAX_RANK];
  int ar, bbr; /* ranks of A's and B's batch parts */
} mm_shape;

static nbl_status matmul_check(nbl_kctx *c, mm_shape *s, nbl_dtype out_dt) {
  const nbl_rt_tensor *A = c->in[0], *B = c->in[1];
  if (A->rank < 1 || B->rank < 1)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "MatMul inputs must have rank >= 1");
  s->M = A->rank == 1 ? 1 : A->dims[A->rank - 2];
  s->K = A->dims[A->rank - 1];
  int64_t kb = B->rank == 1 ? B->dims[0] : B->dims[B->rank - 2];
  s->N = B->rank == 1 ? 1 : B->dims[B->rank - 1];
  if (kb != s->K)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL,
                    "inner dimensions differ: A [..., %lld] x B [%lld, ...]", (long long)s->K,
                    (long long)kb);
  s->ar = A->rank > 2 ? A->rank - 2 : 0;
  s->bbr = B->rank > 2 ? B->rank - 2 : 0;
  for (int i = 0; i < s->ar; i++) s->adims[i] = A->dims[i];
  for (int i = 0; i < s->bbr; i++) s->bbdims[i] = B->dims[i];
  if (nbl_broadcast_shape(s->ar, s->adims, s->bbr, s->bbdims, &s->br, s->bdims) != 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "batch dimensions of A and B do not broadcast");
  s->batch = 1;
  int64_t od[NBL_MAX_RANK];
  int r = 0;
  for (int i = 0; i < s->br; i++) {
    od[r++] = s->bdims[i];
    s->batch *= s->bdims[i];
  }
  if (A->rank > 1) od[r++] = s->M;
  if (B->rank > 1) od[r++] = s->N;
  if (r > NBL_MAX_RANK) return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "output rank too large");
  return nbl_kctx_alloc_out(c, 0, out_dt, r, od);
}

static nbl_status mm_common(nbl_kctx *c, mm_shape *s) {
  nbl_status st;
  if ((st = need_input(c, 0, "A")) || (st = need_input(c, 1, "B"))) return st;
  if ((st = same_type(c, c->in[0], c->in[1], "B"))) return st;
  nbl_dtype dt = c->in[0]->dtype;
  if (!is_float(dt) && dt != NBL_DT_INT32 && dt != NBL_DT_INT64 && dt != NBL_DT_UINT32 &&
      dt != NBL_DT_UINT64)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "MatMul on element type %s", nbl_dtype_name(dt));
  return matmul_check(c, s, dt);
}

static nbl_status k_matmul_ref(nbl_kctx *c) {
  mm_shape s;
  nbl_status st = mm_common(c, &s);
  if (st) return st;
  const nbl_rt_tensor *A = c->in[0], *B = c->in[1];
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  int64_t MK = s.M * s.K, KN = s.K * s.N, MN = s.M * s.N;
  if (!is_float(A->dtype)) {
    for (int64_t b = 0; b < s.batch; b++) {
      int64_t ao = nbl_broadcast_index(s.br, s.bdims, b, s.ar, s.adims) * MK;
      int64_t bo = nbl_broadcast_index(s.br, s.bdims, b, s.bbr, s.bbdims) * KN;
      for (int64_t i = 0; i < s.M; i++)
        for (int64_t j = 0; j < s.N; j++) {
          uint64_t acc = 0;
          for (int64_t p = 0; p < s.K; p++)
            acc += (uint64_t)nbl_rt_get_i64(A, ao + i * s.K + p) *
                   (uint64_t)nbl_rt_get_i64(B, bo + p * s.N + j);
          nbl_rt_set_i64(Y, b * MN + i * s.N + j, (int64_t)acc);
        }
    }
    return NBL_OK;
  }
  const nbl_rt_tensor *ts[2] = {A, B};
  double *v[2];
  double *y = malloc((size_t)(Y->numel ? Y->numel : 1) * sizeof(double));
  if (!y || !conv_inputs(2, ts, v)) {
    free(y);
    return oom(c);
  }
  for (int64_t b = 0; b < s.batch; b++) {
    int64_t ao = nbl_broadcast_index(s.br, s.bdims, b, s.ar, s.adims) * MK;
    int64_t bo = nbl_broadcast_index(s.br, s.bdims, b, s.bbr, s.bbdims) * KN;
    nbl_dgemm_ref(0, 0, s.M, s.N, s.K, 1.0, v[0] + ao, s.K, v[1] + bo, s.N, 0.0, y + b * MN, s.N);
  }
  nbl_from_f64(Y, y);
  free(y);
  free_all(2, v);
  return NBL_OK;
}

static nbl_status k_matmul_fast(nbl_kctx *c) {
  if (!in_at(c, 0) || c->in[0]->dtype != NBL_DT_FLOAT) return k_matmul_ref(c);
  mm_shape s;
  nbl_status st = mm_common(c, &s);
  if (st) return st;
  const float *a = c->in[0]->data, *b = c->in[1]->data;
  float *y = nbl_kctx_out(c, 0)->data;
  int64_t MK = s.M * s.K, KN = s.K * s.N, MN = s.M * s.N;
  int64_t bnum = 1;
  for (int i = 0; i < s.bbr; i++) bnum *= s.bbdims[i];
  if (bnum == 1 && s.batch > 0) {
    /* B shared by every batch: one product with batch*M rows (A is contiguous) */
    nbl_sgemm(c, 0, 0, s.batch * s.M, s.N, s.K, 1.0f, a, s.K, b, s.N, 0.0f, y, s.N);
    return NBL_OK;
  }
  for (int64_t i = 0; i < s.batch; i++) {
    int64_t ao = nbl_broadcast_index(s.br, s.bdims, i, s.ar, s.adims) * MK;
    int64_t bo = nbl_broadcast_index(s.br, s.bdims, i, s.bbr, s.bbdims) * KN;
    nbl_sgemm(c, 0, 0, s.M, s.N, s.K, 1.0f, a + ao, s.K, b + bo, s.N, 0.0f, y + i * MN, s.N);
  }
  return NBL_OK;
}

/* ------------------------------------------------------------------ Conv */

static nbl_status conv_setup(nbl_kctx *c, nbl_conv_geom *g) {
  nbl_status st;
  if ((st = need_input(c, 0, "X")) || (st = need_input(c, 1, "W"))) return st;
  const nbl_rt_tensor *X = c->in[0], *W = c->in[1], *B = in_at(c, 2);
  if ((st = need_float(c, X, "X")) || (st = same_type(c, X, W, "W"))) return st;
  if (B && (st = same_type(c, X, B, "B"))) return st;
  if (W->rank != X->rank)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "W has rank %d, X has rank %d", W->rank, X->rank);
  if ((st = nbl_conv_geom_init(c, g, X, W->dims + 2, 0))) return st;
  g->group = nbl_attr_int(c->node, "group", 1);
  g->M = W->dims[0];
  if (g->group <= 0 || g->C % g->group || g->M % g->group || W->dims[1] * g->group != g->C)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL,
                    "channels do not match: X has %lld, W is [%lld, %lld, ...], group %lld",
                    (long long)g->C, (long long)g->M, (long long)W->dims[1], (long long)g->group);
  if (B && (B->rank != 1 || B->dims[0] != g->M))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "B must have shape [%lld]", (long long)g->M);
  int64_t od[NBL_MAX_RANK] = {g->N, g->M};
  for (int i = 0; i < g->ns; i++) od[2 + i] = g->out[i];
  return nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, od);
}

static nbl_status k_conv_ref(nbl_kctx *c) {
  nbl_conv_geom g;
  nbl_status st = conv_setup(c, &g);
  if (st) return st;
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  const nbl_rt_tensor *ts[3] = {c->in[0], c->in[1], in_at(c, 2)};
  double *v[3];
  double *y = malloc((size_t)(Y->numel ? Y->numel : 1) * sizeof(double));
  if (!y || !conv_inputs(3, ts, v)) {
    free(y);
    return oom(c);
  }
  nbl_conv_ref_f64(&g, v[0], v[1], v[2], y);
  nbl_from_f64(Y, y);
  free(y);
  free_all(3, v);
  return NBL_OK;
}

static nbl_status k_conv_fast(nbl_kctx *c) {
  if (!in_at(c, 0) || c->in[0]->dtype != NBL_DT_FLOAT) return k_conv_ref(c);
  nbl_conv_geom g;
  nbl_status st = conv_setup(c, &g);
  if (st) return st;
  const nbl_rt_tensor *B = in_at(c, 2);
  return nbl_conv_f32(c, &g, c->in[0]->data, c->in[1]->data, B ? B->data : NULL,
                      nbl_kctx_out(c, 0)->data);
}

/* Conv followed by Clip (Relu: lo = 0), as fused at plan time by
 * runtime/fusions/fuse_f32.c: the synthetic node has Conv's inputs and attributes,
 * the activation's output, and the bounds in float attributes nibble.act_lo
 * and nibble.act_hi. float32 (the only type fused) takes the fast path with
 * the activation applied block by block; other types compute the reference
 * convolution and clamp it. */
static nbl_status k_conv_act(nbl_kctx *c) {
  nbl_act act = {1, nbl_attr_float(c->node, "nibble.act_lo", -INFINITY),
                 nbl_attr_float(c->node, "nibble.act_hi", INFINITY)};
  if (!c->reference && in_at(c, 0) && c->in[0]->dtype == NBL_DT_FLOAT) {
    nbl_conv_geom g;
    nbl_status st = conv_setup(c, &g);
    if (st) return st;
    const nbl_rt_tensor *B = in_at(c, 2);
    return nbl_conv_f32_act(c, &g, c->in[0]->data, c->in[1]->data, B ? B->data : NULL,
                            nbl_kctx_out(c, 0)->data, &act);
  }
  nbl_status st = k_conv_ref(c);
  if (st) return st;
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  double *y = nbl_to_f64(Y);
  if (!y) return oom(c);
  for (int64_t i = 0; i < Y->numel; i++) {
    double t = y[i] < act.lo ? act.lo : y[i];
    y[i] = t > act.hi ? act.hi : t;
  }
  nbl_from_f64(Y, y);
  free(y);
  return NBL_OK;
}

const nbl_op_def nbl_fused_conv_act_def = {"ai.nibble", "Conv+act", 1, 1, k_conv_act, k_conv_act};

/* ------------------------------------------------------------------ ConvTranspose */

static nbl_status convt_setup(nbl_kctx *c, nbl_conv_geom *g) {
  nbl_status st;
  if ((st = need_input(c, 0, "X")) || (st = need_input(c, 1, "W"))) return st;
  const nbl_rt_tensor *X = c->in[0], *W = c->in[1], *B = in_at(c, 2);
  if ((st = need_float(c, X, "X")) || (st = same_type(c, X, W, "W"))) return st;
  if (B && (st = same_type(c, X, B, "B"))) return st;
  if (X->rank < 3 || W->rank != X->rank)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "X (rank %d) and W (rank %d) must have equal rank >= 3",
                    X->rank, W->rank);
  const nbl_node *n = c->node;
  memset(g, 0, sizeof *g);
  int ns = X->rank - 2, cnt;
  g->ns = ns;
  g->N = X->dims[0];
  g->C = X->dims[1];
  g->group = nbl_attr_int(n, "group", 1);
  if (g->group <= 0 || W->dims[0] != g->C || g->C % g->group)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "W has %lld input channels, X has %lld (group %lld)",
                    (long long)W->dims[0], (long long)g->C, (long long)g->group);
  g->M = W->dims[1] * g->group;
  if (B && (B->rank != 1 || B->dims[0] != g->M))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "B must have shape [%lld]", (long long)g->M);
  const int64_t *ks = nbl_attr_ints(n, "kernel_shape", &cnt);
  if (ks && cnt != ns) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "kernel_shape has %d values", cnt);
  const int64_t *st_ = nbl_attr_ints(n, "strides", &cnt);
  if (st_ && cnt != ns) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "strides has %d values", cnt);
  const int64_t *dl = nbl_attr_ints(n, "dilations", &cnt);
  if (dl && cnt != ns) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "dilations has %d values", cnt);
  const int64_t *pd = nbl_attr_ints(n, "pads", &cnt);
  if (pd && cnt != 2 * ns) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "pads has %d values", cnt);
  const int64_t *op = nbl_attr_ints(n, "output_padding", &cnt);
  if (op && cnt != ns) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "output_padding has %d values", cnt);
  int osc;
  const int64_t *os = nbl_attr_ints(n, "output_shape", &osc);
  if (os && osc != ns && osc != ns + 2)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "output_shape has %d values", osc);
  if (os && osc == ns + 2) os += 2;
  const char *ap = nbl_attr_string(n, "auto_pad", "NOTSET");
  int same = !strcmp(ap, "SAME_UPPER") ? 1 : !strcmp(ap, "SAME_LOWER") ? 2 : 0;
  if (!same && strcmp(ap, "NOTSET") && strcmp(ap, "VALID") && strcmp(ap, ""))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "unknown auto_pad '%s'", ap);
  g->in_sz = g->k_sz = g->out_sz = 1;
  for (int i = 0; i < ns; i++) {
    g->in[i] = X->dims[2 + i];
    g->k[i] = W->dims[2 + i];
    if (ks && ks[i] != g->k[i])
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "kernel_shape does not match W");
    g->s[i] = st_ ? st_[i] : 1;
    g->d[i] = dl ? dl[i] : 1;
    if (g->s[i] <= 0 || g->d[i] <= 0)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "strides and dilations must be positive");
    int64_t opad = op ? op[i] : 0;
    int64_t dk = (g->k[i] - 1) * g->d[i] + 1;
    int64_t full = g->s[i] * (g->in[i] - 1) + opad + dk;
    if (os || same) {
      int64_t want = os ? os[i] : g->in[i] * g->s[i];
      int64_t total = full - want;
      if (total < 0) total = 0; /* larger output: the extra end is only bias */
      if (same == 1) {
        g->pb[i] = total / 2;
        g->pe[i] = total - total / 2;
      } else {
        g->pb[i] = total - total / 2;
        g->pe[i] = total / 2;
      }
      g->out[i] = want;
    } else {
      g->pb[i] = pd ? pd[i] : 0;
      g->pe[i] = pd ? pd[ns + i] : 0;
      g->out[i] = full - g->pb[i] - g->pe[i];
    }
    if (g->out[i] < 0 || g->pb[i] < 0 || g->pe[i] < 0)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "output spatial dim %d would be %lld", i,
                      (long long)g->out[i]);
    g->in_sz *= g->in[i];
    g->k_sz *= g->k[i];
    g->out_sz *= g->out[i];
  }
  int64_t od[NBL_MAX_RANK] = {g->N, g->M};
  for (int i = 0; i < ns; i++) od[2 + i] = g->out[i];
  return nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, od);
}

/* Scatter one (image, group) of columns [Mg * k_sz, in_sz] into y [Mg, out...]. */
#define COL2IM_BODY(T)                                                                     \
  int ns = g->ns;                                                                          \
  int64_t ii[NBL_CONV_MAX_SP], kk[NBL_CONV_MAX_SP];                                        \
  for (int64_t m = 0; m < Mg; m++)                                                         \
    for (int64_t ki = 0; ki < g->k_sz; ki++) {                                             \
      int64_t rk = ki;                                                                     \
      for (int i = ns - 1; i >= 0; i--) {                                                  \
        kk[i] = rk % g->k[i];                                                              \
        rk /= g->k[i];                                                                     \
      }                                                                                    \
      const T *src = col + (m * g->k_sz + ki) * g->in_sz;                                  \
      T *dst = y + m * g->out_sz;                                                          \
      for (int i = 0; i < ns; i++) ii[i] = 0;                                              \
      for (int64_t xi = 0; xi < g->in_sz; xi++) {                                          \
        int64_t yi = 0;                                                                    \
        int inside = 1;                                                                    \
        for (int i = 0; i < ns; i++) {                                                     \
          int64_t p = ii[i] * g->s[i] - g->pb[i] + kk[i] * g->d[i];                        \
          if (p < 0 || p >= g->out[i]) inside = 0;                                         \
          yi = yi * g->out[i] + p;                                                         \
        }                                                                                  \
        if (inside) dst[yi] += src[xi];                                                    \
        for (int i = ns - 1; i >= 0; i--) {                                                \
          if (++ii[i] < g->in[i]) break;                                                   \
          ii[i] = 0;                                                                       \
        }                                                                                  \
      }                                                                                    \
    }

static void col2im_f64(const nbl_conv_geom *g, int64_t Mg, const double *col, double *y) {
  COL2IM_BODY(double)
}
static void col2im_f32(const nbl_conv_geom *g, int64_t Mg, const float *col, float *y) {
  COL2IM_BODY(float)
}

static nbl_status k_convt_ref(nbl_kctx *c) {
  nbl_conv_geom g;
  nbl_status st = convt_setup(c, &g);
  if (st) return st;
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  const nbl_rt_tensor *ts[3] = {c->in[0], c->in[1], in_at(c, 2)};
  double *v[3];
  int64_t Cg = g.C / g.group, Mg = g.M / g.group;
  double *y = calloc((size_t)(Y->numel ? Y->numel : 1), sizeof(double));
  double *col = malloc((size_t)(Mg * g.k_sz * g.in_sz != 0 ? Mg * g.k_sz * g.in_sz : 1) * sizeof(double));
  if (!y || !col || !conv_inputs(3, ts, v)) {
    free(y);
    free(col);
    return oom(c);
  }
  for (int64_t n = 0; n < g.N; n++)
    for (int64_t gr = 0; gr < g.group; gr++) {
      /* col = W_g^T [Mg*k, Cg] x X_g [Cg, in] */
      nbl_dgemm_ref(1, 0, Mg * g.k_sz, g.in_sz, Cg, 1.0, v[1] + gr * Cg * Mg * g.k_sz, Mg * g.k_sz,
                    v[0] + (n * g.C + gr * Cg) * g.in_sz, g.in_sz, 0.0, col, g.in_sz);
      col2im_f64(&g, Mg, col, y + (n * g.M + gr * Mg) * g.out_sz);
    }
  if (v[2])
    for (int64_t n = 0; n < g.N; n++)
      for (int64_t m = 0; m < g.M; m++)
        for (int64_t i = 0; i < g.out_sz; i++) y[(n * g.M + m) * g.out_sz + i] += v[2][m];
  nbl_from_f64(Y, y);
  free(y);
  free(col);
  free_all(3, v);
  return NBL_OK;
}

static nbl_status k_convt_fast(nbl_kctx *c) {
  if (!in_at(c, 0) || c->in[0]->dtype != NBL_DT_FLOAT) return k_convt_ref(c);
  nbl_conv_geom g;
  nbl_status st = convt_setup(c, &g);
  if (st) return st;
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  const float *x = c->in[0]->data, *w = c->in[1]->data;
  const nbl_rt_tensor *B = in_at(c, 2);
  float *y = Y->data;
  int64_t Cg = g.C / g.group, Mg = g.M / g.group;
  float *col = malloc((size_t)(Mg * g.k_sz * g.in_sz != 0 ? Mg * g.k_sz * g.in_sz : 1) * sizeof(float));
  if (!col) return oom(c);
  if (Y->numel) memset(y, 0, (size_t)Y->numel * sizeof(float));
  for (int64_t n = 0; n < g.N; n++)
    for (int64_t gr = 0; gr < g.group; gr++) {
      nbl_sgemm(c, 1, 0, Mg * g.k_sz, g.in_sz, Cg, 1.0f, w + gr * Cg * Mg * g.k_sz, Mg * g.k_sz,
                x + (n * g.C + gr * Cg) * g.in_sz, g.in_sz, 0.0f, col, g.in_sz);
      col2im_f32(&g, Mg, col, y + (n * g.M + gr * Mg) * g.out_sz);
    }
  if (B) {
    const float *b = B->data;
    for (int64_t n = 0; n < g.N; n++)
      for (int64_t m = 0; m < g.M; m++)
        for (int64_t i = 0; i < g.out_sz; i++) y[(n * g.M + m) * g.out_sz + i] += b[m];
  }
  free(col);
  return NBL_OK;
}

/* ------------------------------------------------------------------ pooling */

enum { POOL_MAX, POOL_AVG, POOL_LP };

typedef struct pool_task {
  const nbl_conv_geom *g;
  const float *x;
  float *y;
} pool_task;

/* Float 2-D max pooling without indices, one (n, c) plane per item; same
 * result as the reference (NaN in a window gives NaN, an empty window -inf). */
/* max that lets NaN through from either side */
static inline float nan_max(float m, float v) { return v > m || v != v ? v : m; }

/* m[i] = nan_max(m[i], v[i]) for i < n */
static void nan_max_row_c(float *m, const float *v, int64_t n) {
  for (int64_t i = 0; i < n; i++) m[i] = nan_max(m[i], v[i]);
}
#if defined(__x86_64__)
__attribute__((target("avx"))) static void nan_max_row_avx(float *m, const float *v, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 a = _mm256_loadu_ps(m + i), b = _mm256_loadu_ps(v + i);
    /* vmaxps(b, a) is b > a ? b : a (a when either is NaN); a NaN b is
     * then OR-ed in: all-ones exponent and a nonzero mantissa stay NaN */
    __m256 r = _mm256_max_ps(b, a);
    r = _mm256_or_ps(r, _mm256_and_ps(_mm256_cmp_ps(b, b, _CMP_UNORD_Q), b));
    _mm256_storeu_ps(m + i, r);
  }
  nan_max_row_c(m + i, v + i, n - i);
}
#endif

/* nan_max_row_c, 8 lanes at a time when avx */
static void nan_max_row(float *m, const float *v, int64_t n, int avx) {
#if defined(__x86_64__)
  if (avx) {
    nan_max_row_avx(m, v, n);
    return;
  }
#endif
  (void)avx;
  nan_max_row_c(m, v, n);
}

/* 2-D max pooling, one (n, c) plane per item: for each output row, the max
 * over the window's input rows (a vector pass over whole rows, into a row
 * padded with -inf), then over the window's columns at every column (vector
 * passes over shifted copies), of which every stride-th is an output. NaN
 * anywhere in a window gives NaN, as in the reference kernel. */
static void maxpool2d_f32(void *arg, int64_t begin, int64_t end) {
  const pool_task *t = arg;
  const nbl_conv_geom *g = t->g;
  int64_t H = g->in[0], W = g->in[1], OH = g->out[0], OW = g->out[1];
  int64_t pl = g->pb[1], KW = g->k[1], dw = g->d[1], sw = g->s[1];
  /* columns of the padded row: every window column in range */
  int64_t Wp = (OW - 1) * sw + (KW - 1) * dw + 1;
  if (Wp < pl + W) Wp = pl + W;
  float *row = malloc(sizeof(float) * (size_t)(2 * Wp)), *hm = row + Wp;
  if (!row) { /* out of memory: the direct loop */
    for (int64_t q = begin; q < end; q++) {
      const float *xp = t->x + q * H * W;
      float *yp = t->y + q * OH * OW;
      for (int64_t oh = 0; oh < OH; oh++)
        for (int64_t ow = 0; ow < OW; ow++) {
          float m = -INFINITY;
          for (int64_t kh = 0; kh < g->k[0]; kh++) {
            int64_t ih = oh * g->s[0] - g->pb[0] + kh * g->d[0];
            for (int64_t kw = 0; ih >= 0 && ih < H && kw < KW; kw++) {
              int64_t iw = ow * sw - pl + kw * dw;
              if (iw >= 0 && iw < W) m = nan_max(m, xp[ih * W + iw]);
            }
          }
          yp[oh * OW + ow] = m;
        }
    }
    return;
  }
  int avx = 0;
#if defined(__x86_64__)
  avx = nbl_cpu_has(NBL_CPU_AVX);
#endif
  for (int64_t i = 0; i < Wp; i++) row[i] = -INFINITY;
  for (int64_t q = begin; q < end; q++) {
    const float *xp = t->x + q * H * W;
    float *yp = t->y + q * OH * OW;
    for (int64_t oh = 0; oh < OH; oh++) {
      float *mid = row + pl; /* the input columns; the padding stays -inf */
      int first = 1;
      for (int64_t kh = 0; kh < g->k[0]; kh++) {
        int64_t ih = oh * g->s[0] - g->pb[0] + kh * g->d[0];
        if (ih < 0 || ih >= H) continue;
        if (first) {
          memcpy(mid, xp + ih * W, sizeof(float) * (size_t)W);
          first = 0;
        } else {
          nan_max_row(mid, xp + ih * W, W, avx);
        }
      }
      if (first)
        for (int64_t i = 0; i < W; i++) mid[i] = -INFINITY;
      /* window max at every column start, then every sw-th of them */
      int64_t nh = (OW - 1) * sw + 1;
      memcpy(hm, row, sizeof(float) * (size_t)nh);
      for (int64_t kw = 1; kw < KW; kw++) nan_max_row(hm, row + kw * dw, nh, avx);
      float *yr = yp + oh * OW;
      for (int64_t ow = 0; ow < OW; ow++) yr[ow] = hm[ow * sw];
    }
  }
  free(row);
}

static nbl_status k_pool(nbl_kctx *c, int kind) {
  nbl_status st;
  if ((st = need_input(c, 0, "X"))) return st;
  const nbl_rt_tensor *X = c->in[0];
  const nbl_node *n = c->node;
  nbl_dtype dt = X->dtype;
  int int_ok = kind == POOL_MAX && (dt == NBL_DT_INT8 || dt == NBL_DT_UINT8);
  if (!is_float(dt) && !int_ok)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "pooling on element type %s", nbl_dtype_name(dt));
  int ceil_mode = (int)nbl_attr_int(n, "ceil_mode", 0);
  nbl_conv_geom g;
  if ((st = nbl_conv_geom_init(c, &g, X, NULL, ceil_mode))) return st;
  int include_pad = (int)nbl_attr_int(n, "count_include_pad", 0);
  double p = kind == POOL_LP ? (double)nbl_attr_int(n, "p", 2) : 0;
  int storage_order = (int)nbl_attr_int(n, "storage_order", 0);
  int64_t od[NBL_MAX_RANK] = {g.N, g.C};
  for (int i = 0; i < g.ns; i++) od[2 + i] = g.out[i];
  if ((st = nbl_kctx_alloc_out(c, 0, dt, X->rank, od))) return st;
  int with_idx = kind == POOL_MAX && want_out(c, 1);
  if (with_idx && (st = nbl_kctx_alloc_out(c, 1, NBL_DT_INT64, X->rank, od))) return st;
  if (with_idx && storage_order && g.ns != 2)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "storage_order=1 is supported for 2-D pooling only");
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  if (kind == POOL_MAX && dt == NBL_DT_FLOAT && !with_idx && !c->reference && g.ns == 2) {
    pool_task t = {&g, X->data, Y->data};
    nbl_parallel_for(c, g.N * g.C, 1, maxpool2d_f32, &t);
    return NBL_OK;
  }
  int64_t *idx = with_idx ? nbl_kctx_out(c, 1)->data : NULL;
  double *x = nbl_to_f64(X);
  double *y = malloc((size_t)(Y->numel ? Y->numel : 1) * sizeof(double));
  if (!x || !y) {
    free(x);
    free(y);
    return oom(c);
  }
  int ns = g.ns;
  int64_t o[NBL_CONV_MAX_SP], kk[NBL_CONV_MAX_SP], pos[NBL_CONV_MAX_SP];
  for (int64_t pl = 0; pl < g.N * g.C; pl++) {
    const double *xp = x + pl * g.in_sz;
    for (int64_t oi = 0; oi < g.out_sz; oi++) {
      int64_t r = oi;
      for (int i = ns - 1; i >= 0; i--) {
        o[i] = r % g.out[i];
        r /= g.out[i];
      }
      double acc = kind == POOL_MAX ? -INFINITY : 0.0;
      int64_t best = -1, cnt_in = 0, cnt_pad = 0;
      int nan = 0;
      for (int64_t ki = 0; ki < g.k_sz; ki++) {
        int64_t rk = ki;
        for (int i = ns - 1; i >= 0; i--) {
          kk[i] = rk % g.k[i];
          rk /= g.k[i];
        }
        int inside = 1, in_pad = 1;
        int64_t xi = 0;
        for (int i = 0; i < ns; i++) {
          pos[i] = o[i] * g.s[i] - g.pb[i] + kk[i] * g.d[i];
          if (pos[i] < 0 || pos[i] >= g.in[i]) inside = 0;
          if (pos[i] < -g.pb[i] || pos[i] >= g.in[i] + g.pe[i]) in_pad = 0;
          xi = xi * g.in[i] + pos[i];
        }
        cnt_pad += in_pad;
        if (!inside) continue;
        cnt_in++;
        double v = xp[xi];
        if (kind == POOL_MAX) {
          if (isnan(v)) nan = 1;
          if (best < 0 || v > xp[best]) best = xi;
        } else if (kind == POOL_AVG) {
          acc += v;
        } else {
          acc += pow(fabs(v), p);
        }
      }
      double out;
      if (kind == POOL_MAX) {
        out = nan ? NAN : best >= 0 ? xp[best] : -INFINITY;
      } else if (kind == POOL_AVG) {
        int64_t div = include_pad ? cnt_pad : cnt_in;
        out = div ? acc / (double)div : NAN;
      } else {
        out = pow(acc, 1.0 / p);
      }
      y[pl * g.out_sz + oi] = out;
      if (idx) {
        int64_t b = best < 0 ? 0 : best;
        if (storage_order) { /* column-major within the plane: w * H + h */
          int64_t h = b / g.in[1], w = b % g.in[1];
          b = w * g.in[0] + h;
        }
        idx[pl * g.out_sz + oi] = pl * g.in_sz + b;
      }
    }
  }
  nbl_from_f64(Y, y);
  free(x);
  free(y);
  return NBL_OK;
}

static nbl_status k_maxpool(nbl_kctx *c) { return k_pool(c, POOL_MAX); }
static nbl_status k_avgpool(nbl_kctx *c) { return k_pool(c, POOL_AVG); }
static nbl_status k_lppool(nbl_kctx *c) { return k_pool(c, POOL_LP); }

static nbl_status k_global_pool(nbl_kctx *c, int kind) {
  nbl_status st;
  if ((st = need_input(c, 0, "X"))) return st;
  const nbl_rt_tensor *X = c->in[0];
  if ((st = need_float(c, X, "X"))) return st;
  if (X->rank < 2) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input rank %d < 2", X->rank);
  int64_t od[NBL_MAX_RANK];
  int64_t sp = 1;
  for (int i = 0; i < X->rank; i++) {
    od[i] = i < 2 ? X->dims[i] : 1;
    if (i >= 2) sp *= X->dims[i];
  }
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, od))) return st;
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  double p = kind == POOL_LP ? (double)nbl_attr_int(c->node, "p", 2) : 0;
  int64_t planes = X->dims[0] * X->dims[1];
  if (X->dtype == NBL_DT_FLOAT && kind != POOL_LP) {
    const float *x = X->data;
    float *y = Y->data;
    int64_t pl = 0;
    if (kind == POOL_AVG) /* 8 planes at a time: independent sums, each in its own order */
      for (; pl + 8 <= planes; pl += 8) {
        double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t i = 0; i < sp; i++)
          for (int k = 0; k < 8; k++) s[k] += x[(pl + k) * sp + i];
        for (int k = 0; k < 8; k++) y[pl + k] = (float)(s[k] / (double)sp);
      }
    for (; pl < planes; pl++) {
      const float *xp = x + pl * sp;
      if (kind == POOL_AVG) {
        double s = 0;
        for (int64_t i = 0; i < sp; i++) s += xp[i];
        y[pl] = (float)(s / (double)sp);
      } else {
        float m = sp ? xp[0] : -INFINITY;
        for (int64_t i = 1; i < sp; i++)
          if (xp[i] > m || isnan(xp[i])) m = isnan(m) ? m : xp[i];
        y[pl] = m;
      }
    }
    return NBL_OK;
  }
  double *x = nbl_to_f64(X), *y = malloc((size_t)(planes ? planes : 1) * sizeof(double));
  if (!x || !y) {
    free(x);
    free(y);
    return oom(c);
  }
  for (int64_t pl = 0; pl < planes; pl++) {
    const double *xp = x + pl * sp;
    double acc = kind == POOL_MAX ? -INFINITY : 0.0;
    int nan = 0;
    for (int64_t i = 0; i < sp; i++) {
      if (isnan(xp[i])) nan = 1;
      if (kind == POOL_MAX) acc = xp[i] > acc ? xp[i] : acc;
      else if (kind == POOL_AVG) acc += xp[i];
      else acc += pow(fabs(xp[i]), p);
    }
    if (kind == POOL_AVG) acc /= (double)sp;
    if (kind == POOL_LP) acc = pow(acc, 1.0 / p);
    y[pl] = nan ? NAN : acc;
  }
  nbl_from_f64(Y, y);
  free(x);
  free(y);
  return NBL_OK;
}
static nbl_status k_gmaxpool(nbl_kctx *c) { return k_global_pool(c, POOL_MAX); }
static nbl_status k_gavgpool(nbl_kctx *c) { return k_global_pool(c, POOL_AVG); }
static nbl_status k_glppool(nbl_kctx *c) { return k_global_pool(c, POOL_LP); }

/* MaxUnpool: scatter X into zeros at the flat indices I (as MaxPool returned them). */
static nbl_status k_maxunpool(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_input(c, 0, "X")) || (st = need_input(c, 1, "I"))) return st;
  const nbl_rt_tensor *X = c->in[0], *I = c->in[1], *OS = in_at(c, 2);
  if ((st = need_float(c, X, "X"))) return st;
  if (I->dtype != NBL_DT_INT64 || I->numel != X->numel)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "I must be int64 with X's shape");
  nbl_conv_geom g;
  if ((st = nbl_conv_geom_init(c, &g, X, NULL, 0))) return st;
  int64_t od[NBL_MAX_RANK] = {X->dims[0], X->dims[1]};
  for (int i = 0; i < g.ns; i++) {
    int cnt;
    const int64_t *pd = nbl_attr_ints(c->node, "pads", &cnt);
    od[2 + i] = (g.in[i] - 1) * g.s[i] + g.k[i] - (pd ? pd[i] + pd[g.ns + i] : 0);
  }
  int64_t dd[NBL_MAX_RANK]; /* default shape: the layout the indices refer to */
  memcpy(dd, od, sizeof dd);
  int64_t dnum = nbl_shape_numel(X->rank, dd);
  if (OS) {
    if (OS->numel != X->rank || !is_int(OS->dtype))
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "output_shape must hold %d integers", X->rank);
    for (int i = 0; i < X->rank; i++) od[i] = nbl_rt_get_i64(OS, i);
  }
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, od))) return st;
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  if (Y->nbytes) memset(Y->data, 0, Y->nbytes);
  const int64_t *idx = I->data;
  for (int64_t i = 0; i < X->numel; i++) {
    if (idx[i] < 0 || idx[i] >= dnum)
      return nbl_kerr(c, NBL_ERR_RUNTIME, "index %lld out of range [0, %lld)", (long long)idx[i],
                      (long long)dnum);
    /* decode in the default shape, re-encode in the requested output shape */
    int64_t r = idx[i], co[NBL_MAX_RANK], yi = 0;
    int inside = 1;
    for (int d = X->rank - 1; d >= 0; d--) {
      co[d] = r % dd[d];
      r /= dd[d];
    }
    for (int d = 0; d < X->rank; d++) {
      if (co[d] >= od[d]) inside = 0;
      yi = yi * od[d] + co[d];
    }
    if (inside) nbl_rt_set_f64(Y, yi, nbl_rt_get_f64(X, i));
  }
  return NBL_OK;
}

/* ------------------------------------------------------------------ BatchNormalization */

static nbl_status bn_check(nbl_kctx *c, int *training) {
  nbl_status st;
  const char *names[5] = {"X", "scale", "B", "mean", "var"};
  for (int i = 0; i < 5; i++)
    if ((st = need_input(c, i, names[i]))) return st;
  const nbl_rt_tensor *X = c->in[0];
  if ((st = need_float(c, X, "X"))) return st;
  if (X->rank < 2) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "X has rank %d, expected >= 2", X->rank);
  for (int i = 1; i < 5; i++) {
    if ((st = need_float(c, c->in[i], names[i]))) return st;
    if (c->in[i]->rank != 1 || c->in[i]->dims[0] != X->dims[1])
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %s must have shape [%lld]", names[i],
                      (long long)X->dims[1]);
  }
  if (c->opset < 9 && nbl_attr_int(c->node, "spatial", 1) == 0)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "spatial=0 is not supported");
  *training = c->opset >= 14 ? (int)nbl_attr_int(c->node, "training_mode", 0) : 0;
  if (c->opset < 14 && (want_out(c, 1) || want_out(c, 2) || want_out(c, 3) || want_out(c, 4)))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED,
                    "training-mode outputs before opset 14 are not supported");
  if (!*training && c->opset >= 14 && (want_out(c, 1) || want_out(c, 2)))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL,
                    "running_mean/var outputs are only allowed with training_mode=1");
  return nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, X->dims);
}

static nbl_status k_bn_ref(nbl_kctx *c) {
  int training;
  nbl_status st = bn_check(c, &training);
  if (st) return st;
  const nbl_rt_tensor *X = c->in[0];
  int64_t N = X->dims[0], C = X->dims[1], sp = X->numel / (N * C != 0 ? N * C : 1);
  if (N * C == 0) sp = 0;
  double eps = nbl_attr_float(c->node, "epsilon", 1e-5f);
  double mom = nbl_attr_float(c->node, "momentum", 0.9f);
  const nbl_rt_tensor *ts[5] = {c->in[0], c->in[1], c->in[2], c->in[3], c->in[4]};
  double *v[5];
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  double *y = malloc((size_t)(Y->numel ? Y->numel : 1) * sizeof(double));
  double *bm = malloc((size_t)(C ? C : 1) * sizeof(double) * 2);
  if (!y || !bm || !conv_inputs(5, ts, v)) {
    free(y);
    free(bm);
    return oom(c);
  }
  double *bv = bm + C;
  for (int64_t ch = 0; ch < C; ch++) {
    double mean = v[3][ch], var = v[4][ch];
    if (training) {
      double s = 0, s2 = 0;
      for (int64_t n = 0; n < N; n++)
        for (int64_t i = 0; i < sp; i++) s += v[0][(n * C + ch) * sp + i];
      double cntd = (double)(N * sp);
      mean = s / cntd;
      for (int64_t n = 0; n < N; n++)
        for (int64_t i = 0; i < sp; i++) {
          double d = v[0][(n * C + ch) * sp + i] - mean;
          s2 += d * d;
        }
      var = s2 / cntd;
    }
    bm[ch] = mean;
    bv[ch] = var;
    double a = v[1][ch] / sqrt(var + eps);
    for (int64_t n = 0; n < N; n++)
      for (int64_t i = 0; i < sp; i++) {
        int64_t k = (n * C + ch) * sp + i;
        y[k] = (v[0][k] - mean) * a + v[2][ch];
      }
  }
  nbl_from_f64(Y, y);
  for (int o = 1; o <= 2 && training; o++) {
    if (!want_out(c, o)) continue;
    if ((st = nbl_kctx_alloc_out(c, o, c->in[2 + o]->dtype, 1, &C))) break;
    nbl_rt_tensor *R = nbl_kctx_out(c, o);
    double *src = o == 1 ? bm : bv, *run = v[2 + o];
    for (int64_t ch = 0; ch < C; ch++) nbl_rt_set_f64(R, ch, run[ch] * mom + src[ch] * (1 - mom));
  }
  free(y);
  free(bm);
  free_all(5, v);
  return st;
}

static nbl_status k_bn_fast(nbl_kctx *c) {
  for (int i = 0; i < 5; i++)
    if (!in_at(c, i) || c->in[i]->dtype != NBL_DT_FLOAT) return k_bn_ref(c);
  if (c->opset >= 14 && nbl_attr_int(c->node, "training_mode", 0)) return k_bn_ref(c);
  int training;
  nbl_status st = bn_check(c, &training);
  if (st) return st;
  const nbl_rt_tensor *X = c->in[0];
  int64_t N = X->dims[0], C = X->dims[1], sp = N * C != 0 ? X->numel / (N * C) : 0;
  float eps = nbl_attr_float(c->node, "epsilon", 1e-5f);
  const float *x = X->data, *sc = c->in[1]->data, *b = c->in[2]->data, *mu = c->in[3]->data,
              *var = c->in[4]->data;
  float *y = nbl_kctx_out(c, 0)->data;
  for (int64_t ch = 0; ch < C; ch++) {
    double a = sc[ch] / sqrt((double)var[ch] + eps);
    float fa = (float)a, fb = (float)(b[ch] - mu[ch] * a);
    for (int64_t n = 0; n < N; n++) {
      const float *xp = x + (n * C + ch) * sp;
      float *yp = y + (n * C + ch) * sp;
      for (int64_t i = 0; i < sp; i++) yp[i] = xp[i] * fa + fb;
    }
  }
  return NBL_OK;
}

/* ------------------------------------------------------------------ InstanceNormalization */

static nbl_status k_instnorm(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_input(c, 0, "input")) || (st = need_input(c, 1, "scale")) ||
      (st = need_input(c, 2, "B")))
    return st;
  const nbl_rt_tensor *X = c->in[0];
  if ((st = need_float(c, X, "input"))) return st;
  if (X->rank < 3) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input has rank %d, expected >= 3", X->rank);
  int64_t N = X->dims[0], C = X->dims[1], sp = N * C != 0 ? X->numel / (N * C) : 0;
  for (int i = 1; i < 3; i++)
    if (c->in[i]->rank != 1 || c->in[i]->dims[0] != C)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %d must have shape [%lld]", i, (long long)C);
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, X->dims))) return st;
  double eps = nbl_attr_float(c->node, "epsilon", 1e-5f);
  const nbl_rt_tensor *ts[3] = {X, c->in[1], c->in[2]};
  double *v[3];
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  double *y = malloc((size_t)(Y->numel ? Y->numel : 1) * sizeof(double));
  if (!y || !conv_inputs(3, ts, v)) {
    free(y);
    return oom(c);
  }
  for (int64_t pl = 0; pl < N * C; pl++) {
    int64_t ch = pl % C;
    const double *xp = v[0] + pl * sp;
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < sp; i++) s += xp[i];
    double mean = s / (double)sp;
    for (int64_t i = 0; i < sp; i++) s2 += (xp[i] - mean) * (xp[i] - mean);
    double a = v[1][ch] / sqrt(s2 / (double)sp + eps);
    for (int64_t i = 0; i < sp; i++) y[pl * sp + i] = (xp[i] - mean) * a + v[2][ch];
  }
  nbl_from_f64(Y, y);
  free(y);
  free_all(3, v);
  return NBL_OK;
}

/* ------------------------------------------------------------------ LayerNormalization */

static nbl_status k_layernorm(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_input(c, 0, "X")) || (st = need_input(c, 1, "Scale"))) return st;
  const nbl_rt_tensor *X = c->in[0], *S = c->in[1], *B = in_at(c, 2);
  if ((st = need_float(c, X, "X")) || (st = need_float(c, S, "Scale"))) return st;
  if (B && (st = need_float(c, B, "B"))) return st;
  int axis = nbl_norm_axis(nbl_attr_int(c->node, "axis", -1), X->rank);
  if (axis < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis out of range for rank %d", X->rank);
  double eps = nbl_attr_float(c->node, "epsilon", 1e-5f);
  int nr = X->rank - axis;
  const int64_t *nd = X->dims + axis;
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < axis; i++) outer *= X->dims[i];
  for (int i = axis; i < X->rank; i++) inner *= X->dims[i];
  int64_t tmp[NBL_MAX_RANK];
  int r;
  if (S->rank > nr || nbl_broadcast_shape(nr, nd, S->rank, S->dims, &r, tmp) || r != nr ||
      memcmp(tmp, nd, (size_t)nr * sizeof(int64_t)) ||
      (B && (B->rank > nr || nbl_broadcast_shape(nr, nd, B->rank, B->dims, &r, tmp) || r != nr ||
             memcmp(tmp, nd, (size_t)nr * sizeof(int64_t)))))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "Scale/B do not broadcast to the normalized shape");
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, X->dims))) return st;
  int64_t sd[NBL_MAX_RANK];
  for (int i = 0; i < X->rank; i++) sd[i] = i < axis ? X->dims[i] : 1;
  nbl_dtype stash = nbl_attr_int(c->node, "stash_type", 1) == 1 ? NBL_DT_FLOAT : X->dtype;
  if (want_out(c, 1) && (st = nbl_kctx_alloc_out(c, 1, stash, X->rank, sd))) return st;
  if (want_out(c, 2) && (st = nbl_kctx_alloc_out(c, 2, stash, X->rank, sd))) return st;
  const nbl_rt_tensor *ts[3] = {X, S, B};
  double *v[3];
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  double *y = malloc((size_t)(Y->numel ? Y->numel : 1) * sizeof(double));
  if (!y || !conv_inputs(3, ts, v)) {
    free(y);
    return oom(c);
  }
  for (int64_t o = 0; o < outer; o++) {
    const double *xp = v[0] + o * inner;
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < inner; i++) s += xp[i];
    double mean = s / (double)inner;
    for (int64_t i = 0; i < inner; i++) s2 += (xp[i] - mean) * (xp[i] - mean);
    double inv = 1.0 / sqrt(s2 / (double)inner + eps);
    for (int64_t i = 0; i < inner; i++) {
      double sc = v[1][nbl_broadcast_index(nr, nd, i, S->rank, S->dims)];
      double bb = B ? v[2][nbl_broadcast_index(nr, nd, i, B->rank, B->dims)] : 0.0;
      y[o * inner + i] = (xp[i] - mean) * inv * sc + bb;
    }
    if (want_out(c, 1)) nbl_rt_set_f64(nbl_kctx_out(c, 1), o, mean);
    if (want_out(c, 2)) nbl_rt_set_f64(nbl_kctx_out(c, 2), o, inv);
  }
  nbl_from_f64(Y, y);
  free(y);
  free_all(3, v);
  return NBL_OK;
}

/* ------------------------------------------------------------------ LRN */

static nbl_status k_lrn(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_input(c, 0, "X"))) return st;
  const nbl_rt_tensor *X = c->in[0];
  if ((st = need_float(c, X, "X"))) return st;
  if (X->rank < 2) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "X has rank %d, expected >= 2", X->rank);
  int64_t size = nbl_attr_int(c->node, "size", 0);
  if (size <= 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'size' must be positive");
  double alpha = nbl_attr_float(c->node, "alpha", 1e-4f), beta = nbl_attr_float(c->node, "beta", 0.75f),
         bias = nbl_attr_float(c->node, "bias", 1.0f);
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, X->dims))) return st;
  int64_t N = X->dims[0], C = X->dims[1], sp = N * C != 0 ? X->numel / (N * C) : 0;
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  double *x = nbl_to_f64(X), *y = malloc((size_t)(Y->numel ? Y->numel : 1) * sizeof(double));
  if (!x || !y) {
    free(x);
    free(y);
    return oom(c);
  }
  int64_t lo = (size - 1) / 2, hi = size - 1 - lo;
  for (int64_t n = 0; n < N; n++)
    for (int64_t ch = 0; ch < C; ch++)
      for (int64_t i = 0; i < sp; i++) {
        double ss = 0;
        for (int64_t cc = ch - lo; cc <= ch + hi; cc++)
          if (cc >= 0 && cc < C) {
            double v = x[(n * C + cc) * sp + i];
            ss += v * v;
          }
        int64_t k = (n * C + ch) * sp + i;
        y[k] = x[k] / pow(bias + alpha / (double)size * ss, beta);
      }
  nbl_from_f64(Y, y);
  free(x);
  free(y);
  return NBL_OK;
}

/* ------------------------------------------------------------------ Einsum */

#define EIN_MAX_OPS 8
#define EIN_MAX_LABELS 64

/* Labels: letters map to 0..51, ellipsis dims to 52.. (right-aligned). */
static int ein_label(char ch) {
  if (ch >= 'A' && ch <= 'Z') return ch - 'A';
  if (ch >= 'a' && ch <= 'z') return 26 + ch - 'a';
  return -1;
}
static char ein_char(int l) { return l < 26 ? (char)('A' + l) : l < 52 ? (char)('a' + l - 26) : '.'; }

static nbl_status k_einsum(nbl_kctx *c) {
  const char *eq = nbl_attr_string(c->node, "equation", NULL);
  if (!eq) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'equation' is required");
  int nops = c->n_in;
  if (nops < 1 || nops > EIN_MAX_OPS)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "Einsum with %d inputs (supported: 1..%d)", nops,
                    EIN_MAX_OPS);
  nbl_dtype dt = NBL_DT_UNDEFINED;
  for (int i = 0; i < nops; i++) {
    if (!c->in[i]) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %d is missing", i);
    if (i == 0) dt = c->in[0]->dtype;
    else if (c->in[i]->dtype != dt)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "inputs have different element types");
  }
  if (!is_float(dt) && !is_int(dt))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "Einsum on element type %s", nbl_dtype_name(dt));
  /* parse: terms[i] = list of labels of operand i; ellipsis expanded later */
  int term_lab[EIN_MAX_OPS + 1][NBL_MAX_RANK + 1];
  int term_n[EIN_MAX_OPS + 1], term_ell[EIN_MAX_OPS + 1]; /* position of "..." or -1 */
  int nterms = 0, explicit_out = 0;
  memset(term_n, 0, sizeof term_n);
  for (int i = 0; i <= EIN_MAX_OPS; i++) term_ell[i] = -1;
  const char *p = eq;
  int cur = 0;
  for (;; p++) {
    char ch = *p;
    if (ch == ' ') continue;
    if (ch == ',' || ch == '\0' || (ch == '-' && p[1] == '>')) {
      nterms = cur + 1;
      if (ch == '\0') break;
      if (ch == '-') {
        if (explicit_out) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "equation has two '->'");
        explicit_out = 1;
        p++;
        cur = nops; /* output term */
        if (nterms != nops)
          return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "equation has %d operands, node has %d inputs",
                          nterms, nops);
        continue;
      }
      if (explicit_out) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "',' after '->'");
      if (++cur >= nops)
        return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "equation has more operands than inputs");
      continue;
    }
    if (ch == '.' && p[1] == '.' && p[2] == '.') {
      if (term_ell[cur] >= 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "two ellipses in one term");
      term_ell[cur] = term_n[cur];
      p += 2;
      continue;
    }
    int l = ein_label(ch);
    if (l < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "bad character '%c' in equation '%s'", ch, eq);
    if (term_n[cur] >= NBL_MAX_RANK)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "term too long in equation '%s'", eq);
    term_lab[cur][term_n[cur]++] = l;
  }
  if (!explicit_out && nterms != nops)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "equation has %d operands, node has %d inputs", nterms,
                    nops);
  /* expand ellipsis: each operand's ellipsis covers rank - named dims, right-aligned to ell_rank */
  int ell_rank = 0;
  int64_t size[EIN_MAX_LABELS];
  for (int l = 0; l < EIN_MAX_LABELS; l++) size[l] = -1;
  int op_lab[EIN_MAX_OPS][NBL_MAX_RANK];
  for (int i = 0; i < nops; i++) {
    const nbl_rt_tensor *t = c->in[i];
    int ne = t->rank - term_n[i];
    if (ne < 0 || (ne > 0 && term_ell[i] < 0))
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "operand %d has rank %d but its term names %d dims",
                      i, t->rank, term_n[i]);
    if (term_ell[i] >= 0 && ne > ell_rank) ell_rank = ne;
  }
  for (int i = 0; i < nops; i++) {
    const nbl_rt_tensor *t = c->in[i];
    int ne = t->rank - term_n[i], k = 0;
    for (int j = 0; j <= term_n[i]; j++) {
      if (j == term_ell[i])
        for (int e = 0; e < ne; e++) op_lab[i][k++] = 52 + (ell_rank - ne) + e;
      if (j < term_n[i]) op_lab[i][k++] = term_lab[i][j];
    }
    for (int d = 0; d < t->rank; d++) {
      int l = op_lab[i][d];
      int64_t dim = t->dims[d];
      if (size[l] < 0) size[l] = dim;
      else if (size[l] != dim) {
        if (l >= 52 && size[l] == 1) size[l] = dim;
        else if (!(l >= 52 && dim == 1))
          return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "label '%c' has sizes %lld and %lld", ein_char(l),
                          (long long)size[l], (long long)dim);
      }
    }
  }
  /* output labels */
  int out_lab[NBL_MAX_RANK + NBL_MAX_RANK], nout = 0;
  if (explicit_out) {
    for (int j = 0; j <= term_n[nops]; j++) {
      if (j == term_ell[nops])
        for (int e = 0; e < ell_rank; e++) out_lab[nout++] = 52 + e;
      if (j < term_n[nops]) {
        int l = term_lab[nops][j];
        if (size[l] < 0)
          return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "output label '%c' is not in any input",
                          ein_char(l));
        out_lab[nout++] = l;
      }
    }
    if (term_ell[nops] < 0 && ell_rank > 0) {
      /* ellipsis dims not in the output are summed; allowed */
    }
  } else {
    for (int e = 0; e < ell_rank; e++) out_lab[nout++] = 52 + e;
    int count[52] = {0};
    for (int i = 0; i < nops; i++)
      for (int j = 0; j < term_n[i]; j++) count[term_lab[i][j]]++;
    for (int l = 0; l < 52; l++)
      if (count[l] == 1) out_lab[nout++] = l;
  }
  if (nout > NBL_MAX_RANK) return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "output rank too large");
  /* summed labels: used, not in output */
  int in_out[EIN_MAX_LABELS] = {0};
  for (int j = 0; j < nout; j++) {
    if (in_out[out_lab[j]]) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "output repeats a label");
    in_out[out_lab[j]] = 1;
  }
  int all_lab[EIN_MAX_LABELS], nall = 0;
  for (int j = 0; j < nout; j++) all_lab[nall++] = out_lab[j];
  for (int l = 0; l < EIN_MAX_LABELS; l++)
    if (size[l] >= 0 && !in_out[l]) all_lab[nall++] = l;
  /* strides per operand per label (repeated labels add: diagonal; broadcast dims: 0) */
  int64_t stride[EIN_MAX_OPS][EIN_MAX_LABELS];
  memset(stride, 0, sizeof stride);
  for (int i = 0; i < nops; i++) {
    int64_t st[NBL_MAX_RANK];
    nbl_strides(c->in[i]->rank, c->in[i]->dims, st);
    for (int d = 0; d < c->in[i]->rank; d++)
      if (c->in[i]->dims[d] != 1) stride[i][op_lab[i][d]] += st[d];
  }
  int64_t od[NBL_MAX_RANK];
  for (int j = 0; j < nout; j++) od[j] = size[out_lab[j]];
  nbl_status st = nbl_kctx_alloc_out(c, 0, dt, nout, od);
  if (st) return st;
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  int64_t out_n = Y->numel, sum_n = 1;
  for (int j = nout; j < nall; j++) sum_n *= size[all_lab[j]];
  double *v[EIN_MAX_OPS];
  const nbl_rt_tensor *ts[EIN_MAX_OPS];
  for (int i = 0; i < nops; i++) ts[i] = c->in[i];
  double *y = malloc((size_t)(out_n ? out_n : 1) * sizeof(double));
  if (!y || !conv_inputs(nops, ts, v)) {
    free(y);
    return oom(c);
  }
  int64_t idx[EIN_MAX_LABELS];
  for (int64_t o = 0; o < out_n; o++) {
    int64_t r = o;
    for (int j = nout - 1; j >= 0; j--) {
      idx[j] = r % od[j];
      r /= od[j];
    }
    int64_t base[EIN_MAX_OPS];
    for (int i = 0; i < nops; i++) {
      base[i] = 0;
      for (int j = 0; j < nout; j++) base[i] += idx[j] * stride[i][out_lab[j]];
    }
    double acc = 0;
    for (int j = nout; j < nall; j++) idx[j] = 0;
    for (int64_t s = 0; s < sum_n; s++) {
      double prod = 1;
      for (int i = 0; i < nops; i++) {
        int64_t off = base[i];
        for (int j = nout; j < nall; j++) off += idx[j] * stride[i][all_lab[j]];
        prod *= v[i][off];
      }
      acc += prod;
      for (int j = nall - 1; j >= nout; j--) {
        if (++idx[j] < size[all_lab[j]]) break;
        idx[j] = 0;
      }
    }
    y[o] = acc;
  }
  nbl_from_f64(Y, y);
  free(y);
  free_all(nops, v);
  return NBL_OK;
}

/* ------------------------------------------------------------------ table */

const nbl_op_def nbl_ops_nn[] = {
    {"", "Conv", 1, 21, k_conv_ref, k_conv_fast},
    {"", "ConvTranspose", 1, 21, k_convt_ref, k_convt_fast},
    {"", "Gemm", 1, 21, k_gemm_ref, k_gemm_fast},
    {"", "MatMul", 1, 21, k_matmul_ref, k_matmul_fast},
    {"", "MaxPool", 1, 21, k_maxpool, NULL},
    {"", "AveragePool", 1, 21, k_avgpool, NULL},
    {"", "LpPool", 1, 21, k_lppool, NULL},
    {"", "MaxUnpool", 9, 21, k_maxunpool, NULL},
    {"", "GlobalMaxPool", 1, 21, k_gmaxpool, NULL},
    {"", "GlobalAveragePool", 1, 21, k_gavgpool, NULL},
    {"", "GlobalLpPool", 1, 21, k_glppool, NULL},
    {"", "BatchNormalization", 1, 21, k_bn_ref, k_bn_fast},
    {"", "InstanceNormalization", 1, 21, k_instnorm, NULL},
    {"", "LayerNormalization", 17, 21, k_layernorm, NULL},
    {"", "LRN", 1, 21, k_lrn, NULL},
    {"", "Einsum", 12, 21, k_einsum, NULL},
};
const size_t nbl_ops_nn_count = sizeof nbl_ops_nn / sizeof nbl_ops_nn[0];
