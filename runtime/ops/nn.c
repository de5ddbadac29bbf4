/* runtime/ops/nn.c - op family 'nn': matrix products, convolution,
 * ConvTranspose (see kernel.h for the kernel contract); pooling is in
 * nn_pool.c, normalization in nn_norm.c, Einsum in einsum.c.
 *
 * Reference kernels convert their inputs to double, compute in double and
 * convert the result back to the input's element type; fast kernels handle
 * float32 with float arithmetic (GEMM from gemm.c) and hand other types to
 * the reference kernel. */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/grad.h"
#include "runtime/fusions/fuse.h"
#include "runtime/kernels/gemm.h"
#include "runtime/core/cpu.h"
#include "runtime/core/adapt.h"
#include "runtime/core/shape.h"
#include "runtime/ops/nn.h"
#include "runtime/ops/ref_common.h"

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
    if (C->numel == Y->numel) memcpy(y, cv, (size_t)Y->numel * sizeof(float));
    else { /* C of rank <= 2 broadcast to [M, N] (gemm_check): row by row */
      const int64_t cm = C->rank == 2 ? C->dims[0] : 1, cn = C->rank >= 1 ? C->dims[C->rank - 1] : 1;
      for (int64_t i = 0; i < s.M; i++) {
        const float *cr = cv + (cm == 1 ? 0 : i * cn);
        float *yr = y + i * s.N;
        if (cn == 1)
          for (int64_t j = 0; j < s.N; j++) yr[j] = cr[0];
        else
          memcpy(yr, cr, (size_t)s.N * sizeof(float));
      }
    }
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

/* Conv's geometry and checks (runtime/ops/nn.h). */
nbl_status nbl_conv_node_geom(nbl_kctx *c, const nbl_rt_tensor *X, const nbl_rt_tensor *W,
                              const nbl_rt_tensor *B, nbl_conv_geom *g) {
  nbl_status st;
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
  return NBL_OK;
}

static nbl_status conv_setup(nbl_kctx *c, nbl_conv_geom *g) {
  nbl_status st;
  if ((st = need_input(c, 0, "X")) || (st = need_input(c, 1, "W"))) return st;
  const nbl_rt_tensor *X = c->in[0];
  if ((st = nbl_conv_node_geom(c, X, c->in[1], in_at(c, 2), g))) return st;
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
 * and nibble.act_hi (none: no activation). With a fused residual Add
 * (Conv -> Add [-> Relu/Clip]), input 3 is the Add's other operand R: added
 * to each finished block before the clamp when it has the output's shape
 * and float32 type, else by the Add op after the convolution. The pads may
 * include a folded Pad's. float32 takes the fast path with the activation
 * applied block by block; other types compute the reference convolution,
 * then the Add, then the clamp. */
static nbl_status k_conv_act(nbl_kctx *c) {
  nbl_act act = {nbl_node_attr(c->node, "nibble.act_lo") != NULL,
                 nbl_attr_float(c->node, "nibble.act_lo", -INFINITY),
                 nbl_attr_float(c->node, "nibble.act_hi", INFINITY), NULL, NULL};
  const nbl_rt_tensor *R = NULL;
  if (c->node->n_inputs > 3) {
    R = c->n_in > 3 ? c->in[3] : NULL;
    if (!R) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "the operand of the fused Add is missing");
  }
  nbl_status st;
  if (!c->reference && in_at(c, 0) && c->in[0]->dtype == NBL_DT_FLOAT) {
    nbl_conv_geom g;
    if ((st = conv_setup(c, &g))) return st;
    nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
    int same = R && R->kind == NBL_RT_TENSOR && R->dtype == NBL_DT_FLOAT && R->rank == Y->rank;
    for (int d = 0; same && d < Y->rank; d++) same = R->dims[d] == Y->dims[d];
    if (same) act.res = R->data, act.y0 = Y->data;
    const nbl_rt_tensor *B = in_at(c, 2);
    st = nbl_conv_f32_act(c, &g, c->in[0]->data, c->in[1]->data, B ? B->data : NULL, Y->data,
                          !R || same ? &act : NULL);
    if (st || !R || same) return st;
  } else if ((st = k_conv_ref(c))) {
    return st;
  }
  /* R broadcasts (or is not float32): the Add op on the convolution */
  if (R && (st = nbl_kctx_add_to_out0(c, NULL, 0, R))) return st;
  if (!act.kind) return NBL_OK;
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

const nbl_op_def nbl_fused_conv_act_def =
    NBL_OP_DEF("ai.nibble", "Conv+act", 1, 1, .ref = k_conv_act,
        .fast = k_conv_act);

/* ------------------------------------------------------------------ ConvTranspose */

/* ConvTranspose's geometry and checks (runtime/ops/nn.h). */
nbl_status nbl_convt_node_geom(nbl_kctx *c, const nbl_rt_tensor *X, const nbl_rt_tensor *W,
                               const nbl_rt_tensor *B, nbl_conv_geom *g) {
  nbl_status st;
  if ((st = need_float(c, X, "X")) || (st = same_type(c, X, W, "W"))) return st;
  if (B && (st = same_type(c, X, B, "B"))) return st;
  if (X->rank < 3 || W->rank != X->rank)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "X (rank %d) and W (rank %d) must have equal rank >= 3",
                    X->rank, W->rank);
  const nbl_node *n = c->node;
  memset(g, 0, sizeof *g);
  int ns = X->rank - 2,
        cnt;
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
    int64_t full = nbl_window_out_t(g->in[i], g->k[i], g->s[i], g->d[i], opad, 0, 0);
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
      g->out[i] = nbl_window_out_t(g->in[i], g->k[i], g->s[i], g->d[i], opad, g->pb[i], g->pe[i]);
    }
    if (g->out[i] < 0 || g->pb[i] < 0 || g->pe[i] < 0)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "output spatial dim %d would be %lld", i,
                      (long long)g->out[i]);
    g->in_sz *= g->in[i];
    g->k_sz *= g->k[i];
    g->out_sz *= g->out[i];
  }
  return NBL_OK;
}

static nbl_status convt_setup(nbl_kctx *c, nbl_conv_geom *g) {
  nbl_status st;
  if ((st = need_input(c, 0, "X")) || (st = need_input(c, 1, "W"))) return st;
  const nbl_rt_tensor *X = c->in[0];
  if ((st = nbl_convt_node_geom(c, X, c->in[1], in_at(c, 2), g))) return st;
  int64_t od[NBL_MAX_RANK] = {g->N, g->M};
  for (int i = 0; i < g->ns; i++) od[2 + i] = g->out[i];
  return nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, od);
}

/* Scatter-add one (image, group) of columns [Mg * k_sz, in_sz] into y [Mg, out...]
 * (runtime/ops/nn.h). */
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

void nbl_col2im_f64(const nbl_conv_geom *g, int64_t Mg, const double *col, double *y) {
  COL2IM_BODY(double)
}
void nbl_col2im_f32(const nbl_conv_geom *g, int64_t Mg, const float *col, float *y) {
  COL2IM_BODY(float)
}

static nbl_status k_convt_ref(nbl_kctx *c) {
  nbl_conv_geom g;
  nbl_status st = convt_setup(c, &g);
  if (st) return st;
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  const nbl_rt_tensor *ts[3] = {c->in[0], c->in[1], in_at(c, 2)};
  double *v[3];
  int64_t Cg = g.C / g.group,
        Mg = g.M / g.group;
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
      nbl_col2im_f64(&g, Mg, col, y + (n * g.M + gr * Mg) * g.out_sz);
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
  const float *x = c->in[0]->data,
        *w = c->in[1]->data;
  const nbl_rt_tensor *B = in_at(c, 2);
  float *y = Y->data;
  int64_t Cg = g.C / g.group,
        Mg = g.M / g.group;
  float *col = malloc((size_t)(Mg * g.k_sz * g.in_sz != 0 ? Mg * g.k_sz * g.in_sz : 1) * sizeof(float));
  if (!col) return oom(c);
  if (Y->numel) memset(y, 0, (size_t)Y->numel * sizeof(float));
  for (int64_t n = 0; n < g.N; n++)
    for (int64_t gr = 0; gr < g.group; gr++) {
      nbl_sgemm(c, 1, 0, Mg * g.k_sz, g.in_sz, Cg, 1.0f, w + gr * Cg * Mg * g.k_sz, Mg * g.k_sz,
                x + (n * g.C + gr * Cg) * g.in_sz, g.in_sz, 0.0f, col, g.in_sz);
      nbl_col2im_f32(&g, Mg, col, y + (n * g.M + gr * Mg) * g.out_sz);
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


/* ------------------------------------------------------------------ shape rules */

/* Gemm's rule on inputs ia (A) and ib (B): [M, N] from transA / transB, of
 * element type dt (A's when NBL_DT_UNDEFINED); shared with com.microsoft
 * QGemm (runtime/ops/quant_contrib.c, nn.h). */
nbl_status nbl_shape_gemm(nbl_shape_ctx *c, int ia, int ib, nbl_dtype dt) {
  nbl_shp a, b, o;
  nbl_shp_in(c, ia, &a);
  nbl_shp_in(c, ib, &b);
  nbl_shp_rank(&o, dt == NBL_DT_UNDEFINED ? a.dt : dt, 2);
  int ta = (int)nbl_attr_int(c->node, "transA", 0), tb = (int)nbl_attr_int(c->node, "transB", 0);
  if (a.rank == 2) o.d[0] = a.d[ta ? 1 : 0];
  if (b.rank == 2) o.d[1] = b.d[tb ? 0 : 1];
  return nbl_shp_set(c, 0, &o);
}

static nbl_status shape_gemm(nbl_shape_ctx *c) { return nbl_shape_gemm(c, 0, 1, NBL_DT_UNDEFINED); }

static nbl_status shape_matmul(nbl_shape_ctx *c) { return nbl_shape_matmul(c, 0, 1, NBL_DT_UNDEFINED); }
static nbl_status shape_conv(nbl_shape_ctx *c) { return nbl_shape_conv(c, 0, 1, NBL_DT_UNDEFINED, false); }
static nbl_status shape_convtranspose(nbl_shape_ctx *c) {
  return nbl_shape_conv(c, 0, 1, NBL_DT_UNDEFINED, true);
}


/* ------------------------------------------------------------------ gradient rules
 * (runtime/core/grad.h; the backward ops are com.microsoft training ops,
 * runtime/ops/grad_conv.c, grad_pool.c and grad_norm.c, or standard ops) */

/* Conv / ConvTranspose: one ConvGrad / ConvTransposeGrad node (dY, X, W ->
 * dX, dW, dB) with the forward attributes; named ".../dXdW" when it computes
 * both products (grad.h). */
static nbl_status conv_like_grad(nbl_grad_ctx *gc, const char *op) {
  int want[3] = {nbl_grad_wants(gc, 0), nbl_grad_wants(gc, 1), nbl_grad_wants(gc, 2)};
  if (!want[0] && !want[1] && !want[2]) return NBL_OK;
  nbl_id in[3] = {nbl_grad_dy_own(gc, 0), nbl_grad_x(gc, 0), nbl_grad_x(gc, 1)}, out[3];
  const char *tag = want[0] && (want[1] || want[2]) ? "dXdW" : want[0] ? "dX" : "dW";
  nbl_grad_opn(gc, op, "com.microsoft", tag, 3, in, 3, want, out);
  nbl_grad_attr_copy(gc, NULL);
  for (int i = 0; i < 3; i++) nbl_grad_set_dx(gc, i, out[i]);
  return nbl_grad_status(gc);
}
static nbl_status g_conv(nbl_grad_ctx *gc) { return conv_like_grad(gc, "ConvGrad"); }
static nbl_status g_convt(nbl_grad_ctx *gc) { return conv_like_grad(gc, "ConvTransposeGrad"); }

/* alpha * op(p) op(q) as a Gemm without C (a zero C before opset 11). */
static nbl_id grad_gemm(nbl_grad_ctx *gc, nbl_id p, nbl_id q, int tp, int tq, float alpha,
                        const char *tag) {
  nbl_id in[3] = {p, q, NBL_NONE};
  int n_in = 2;
  if (nbl_grad_opset(gc, "") < 11) {
    in[2] = nbl_grad_const(gc, nbl_grad_dtype(gc, p), 0.0);
    n_in = 3;
  }
  nbl_id out = NBL_NONE;
  nbl_grad_opn(gc, "Gemm", "", tag, n_in, in, 1, NULL, &out);
  if (tp) nbl_grad_attr_int(gc, "transA", 1);
  if (tq) nbl_grad_attr_int(gc, "transB", 1);
  if (alpha != 1.0f) nbl_grad_attr_float(gc, "alpha", alpha);
  if (n_in == 3) nbl_grad_attr_float(gc, "beta", 0.0f);
  return out;
}

/* Gemm: Y = alpha op(A) op(B) + beta C. d op(A) = alpha dY op(B)^T,
 * d op(B) = alpha op(A)^T dY, dC = beta dY summed to C's shape. */
static nbl_status g_gemm(nbl_grad_ctx *gc) {
  const nbl_node *n = nbl_grad_node(gc);
  int ta = nbl_attr_int(n, "transA", 0) != 0, tb = nbl_attr_int(n, "transB", 0) != 0;
  float alpha = nbl_attr_float(n, "alpha", 1.0f), beta = nbl_attr_float(n, "beta", 1.0f);
  if (nbl_grad_opset(gc, "") < 7)
    return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "gradient of Gemm before opset 7 is not supported");
  nbl_id A = nbl_grad_x(gc, 0), B = nbl_grad_x(gc, 1), C = nbl_grad_x(gc, 2);
  nbl_id dY = nbl_grad_dy_own(gc, 0);
  if (nbl_grad_wants(gc, 0))
    nbl_grad_set_dx(gc, 0, ta ? grad_gemm(gc, B, dY, tb, 1, alpha, "dX")
                              : grad_gemm(gc, dY, B, 0, !tb, alpha, "dX"));
  if (nbl_grad_wants(gc, 1))
    nbl_grad_set_dx(gc, 1, tb ? grad_gemm(gc, dY, A, 1, ta, alpha, "dW")
                              : grad_gemm(gc, A, dY, !ta, 0, alpha, "dW"));
  if (C != NBL_NONE && nbl_grad_wants(gc, 2)) {
    nbl_id g = dY;
    if (beta != 1.0f) g = nbl_grad_bin(gc, "Mul", g, nbl_grad_const(gc, nbl_grad_dtype(gc, C), beta));
    nbl_id dC = nbl_grad_unbroadcast(gc, g, C, nbl_grad_y(gc, 0));
    if (dC != g) nbl_grad_tag(gc, "dB");
    nbl_grad_set_dx(gc, 2, dC);
  }
  return nbl_grad_status(gc);
}

/* v with its last two axes swapped (rank r >= 2). */
static nbl_id swap_last2(nbl_grad_ctx *gc, nbl_id v, int r) {
  int64_t perm[NBL_MAX_RANK];
  for (int k = 0; k < r; k++) perm[k] = k;
  perm[r - 2] = r - 1;
  perm[r - 1] = r - 2;
  return nbl_grad_transpose(gc, v, r, perm);
}

/* g, a product over nb batch dims (those of the MatMul output Y), summed down
 * to operand X (its 2-D-or-more form X2 has xb batch dims), then shaped as X. */
static nbl_id matmul_unbatch(nbl_grad_ctx *gc, nbl_id g, nbl_id X, nbl_id X2, int xb, int nb,
                             nbl_id Y) {
  int64_t axes[NBL_MAX_RANK];
  int na = 0, decided = 1;
  for (int i = 0; i < nb && decided; i++) {
    int kx = i - (nb - xb);
    if (kx < 0) {
      axes[na++] = i;
      continue;
    }
    int64_t xd = nbl_grad_dim(gc, X, kx), yd = nbl_grad_dim(gc, Y, i);
    if (xd == 1 && yd != 1) axes[na++] = i;
    else if (xd < 0 && !nbl_grad_dim_same(gc, X, kx, Y, i)) decided = 0;
  }
  if (!decided) { /* batch shapes known at run time only */
    nbl_id x2s;
    nbl_id r = nbl_grad_sum_broadcast_axes(gc, g, X2, g, &x2s);
    return nbl_grad_reshape_like(gc, r, X);
  }
  nbl_id r = nbl_grad_reduce_sum(gc, g, na, axes, 1);
  return (na > 0 && nb > xb) || X2 != X ? nbl_grad_reshape_like(gc, r, X) : r;
}


/* MatMul (numpy semantics: 1-D operands, batch broadcasting): dA = dY B^T,
 * dB = A^T dY, each summed over the batch dims its operand was broadcast
 * along; a 2-D B under a batched A gets one Gemm over the folded rows. */
static nbl_status g_matmul(nbl_grad_ctx *gc) {
  nbl_id A = nbl_grad_x(gc, 0), B = nbl_grad_x(gc, 1), Y = nbl_grad_y(gc, 0);
  int ra = nbl_grad_rank(gc, A), rb = nbl_grad_rank(gc, B);
  if (ra < 1 || rb < 1)
    return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED,
                         "the ranks of both operands must be known (run infer-shapes)");
  nbl_id dY = nbl_grad_dy_own(gc, 0);
  int wa = nbl_grad_wants(gc, 0), wb = nbl_grad_wants(gc, 1);
  if (ra == 2 && rb == 2) {
    if (wa) nbl_grad_set_dx(gc, 0, grad_gemm(gc, dY, B, 0, 1, 1.0f, "dX"));
    if (wb) nbl_grad_set_dx(gc, 1, grad_gemm(gc, A, dY, 1, 0, 1.0f, "dW"));
    return nbl_grad_status(gc);
  }
  int ry = ra == 1 && rb == 1 ? 0 : ra == 1 ? rb - 1 : rb == 1 ? ra - 1 : (ra > rb ? ra : rb);
  int64_t z0 = 0, z1 = 1, ax = ra == 1 ? ry - 1 : ry;
  nbl_id A2 = ra == 1 ? nbl_grad_unsqueeze(gc, A, 1, &z0) : A;
  nbl_id B2 = rb == 1 ? nbl_grad_unsqueeze(gc, B, 1, &z1) : B;
  nbl_id dY2 = dY;
  if (ra == 1 && rb == 1) {
    int64_t one1[2] = {1, 1};
    dY2 = nbl_grad_bin(gc, "Reshape", dY, nbl_grad_const_i64(gc, 2, one1));
  } else if (ra == 1 || rb == 1) {
    dY2 = nbl_grad_unsqueeze(gc, dY, 1, &ax);
  }
  int ra2 = ra < 2 ? 2 : ra, rb2 = rb < 2 ? 2 : rb;
  int nb = (ra2 > rb2 ? ra2 : rb2) - 2;
  if (wa) {
    nbl_id in[2] = {dY2, swap_last2(gc, B2, rb2)};
    nbl_id p = NBL_NONE;
    nbl_grad_opn(gc, "MatMul", "", "dX", 2, in, 1, NULL, &p);
    nbl_grad_set_dx(gc, 0, matmul_unbatch(gc, p, A, A2, ra2 - 2, nb, Y));
  }
  if (wb) {
    int64_t K = nbl_grad_dim(gc, A, ra - 1), N = rb == 2 ? nbl_grad_dim(gc, B, 1) : 1;
    if (rb <= 2 && ra > 2 && K > 0 && N > 0) { /* fold A's batch into rows: one Gemm */
      int64_t sa[2] = {-1, K}, sy[2] = {-1, N};
      nbl_id a2d = nbl_grad_bin(gc, "Reshape", A, nbl_grad_const_i64(gc, 2, sa));
      nbl_id y2d = nbl_grad_bin(gc, "Reshape", dY2, nbl_grad_const_i64(gc, 2, sy));
      nbl_id p = grad_gemm(gc, a2d, y2d, 1, 0, 1.0f, "dW");
      nbl_grad_set_dx(gc, 1, rb == 1 ? nbl_grad_reshape_like(gc, p, B) : p);
    } else {
      nbl_id in[2] = {swap_last2(gc, A2, ra2), dY2};
      nbl_id p = NBL_NONE;
      nbl_grad_opn(gc, "MatMul", "", "dW", 2, in, 1, NULL, &p);
      nbl_grad_set_dx(gc, 1, matmul_unbatch(gc, p, B, B2, rb2 - 2, nb, Y));
    }
  }
  return nbl_grad_status(gc);
}

/* ------------------------------------------------------------------ table */

/* Gemm before opset 7: a broadcast attribute (C broadcast to A*B when 1,
 * else C is M x N); from 7 C always broadcasts that way. */
static const nbl_op_adapter gemm_steps[] = {
    {.from = 1, .to = 7, .up = nbl_adapt_drop_attrs, .attr = "broadcast"},
    {0},
};

const nbl_op_def nbl_ops_nn[] = {
    NBL_OP("Conv", 1, .ref = k_conv_ref, .fast = k_conv_fast, .shape = shape_conv,
        .stable_since = 1, .grad = g_conv),
    NBL_OP("ConvTranspose", 1, .ref = k_convt_ref, .fast = k_convt_fast,
        .shape = shape_convtranspose, .stable_since = 1, .grad = g_convt),
    NBL_OP("Gemm", 1, .ref = k_gemm_ref, .fast = k_gemm_fast, .shape = shape_gemm,
        .stable_since = 7, .adapters = gemm_steps, .grad = g_gemm),
    NBL_OP("MatMul", 1, .ref = k_matmul_ref, .fast = k_matmul_fast, .shape = shape_matmul,
        .stable_since = 1, .grad = g_matmul),
};
const size_t nbl_ops_nn_count = sizeof nbl_ops_nn / sizeof nbl_ops_nn[0];
