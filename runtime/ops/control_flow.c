/* runtime/ops/control_flow.c - op family 'control_flow': the ops with
 * subgraphs, If, Loop and Scan (opset 8's batched form and 9+). Bodies run
 * through nbl_kctx_run_subgraph; their shape rules infer the bodies through
 * nbl_shp_subgraphs after seeding the body inputs they know. */
#include <stdlib.h>
#include <string.h>

#include "runtime/core/exec.h"
#include "runtime/core/adapt.h"
#include "runtime/core/shape.h"

/* ------------------------------------------------------------------ helpers */

/* Put an owned tensor into output i without another copy (falls back to a
 * copy for omitted outputs). Takes ownership of *t in every case. */
static nbl_status move_out(nbl_kctx *ctx, int i, nbl_rt_tensor *t) {
  if (ctx->out[i] && t->owns) {
    nbl_rt_tensor_free(ctx->out[i]);
    *ctx->out[i] = *t;
    memset(t, 0, sizeof *t);
    return NBL_OK;
  }
  nbl_status st = nbl_kctx_copy_out(ctx, i, t);
  nbl_rt_tensor_free(t);
  return st;
}

/* ------------------------------------------------------------------ If */

static const nbl_graph *graph_attr(const nbl_node *n, const char *name) {
  const nbl_attr *a = nbl_node_attr(n, name);
  return a && a->type == NBL_ATTR_GRAPH ? a->g : NULL;
}

static nbl_status k_if(nbl_kctx *ctx) {
  const nbl_rt_tensor *c = ctx->in[0];
  if (!c || c->kind != NBL_RT_TENSOR || c->numel != 1)
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "cond must be a tensor of one element");
  int cond = nbl_rt_get_f64(c, 0) != 0;
  const nbl_graph *g = graph_attr(ctx->node, cond ? "then_branch" : "else_branch");
  if (!g) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "missing branch graph");
  nbl_rt_tensor *res = calloc((size_t)(ctx->n_out ? ctx->n_out : 1), sizeof(nbl_rt_tensor));
  nbl_rt_tensor **ptr = calloc((size_t)(ctx->n_out ? ctx->n_out : 1), sizeof(nbl_rt_tensor *));
  if (!res || !ptr) {
    free(res);
    free(ptr);
    return nbl_kerr(ctx, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  for (int i = 0; i < ctx->n_out; i++) ptr[i] = &res[i];
  nbl_status st = nbl_kctx_run_subgraph(ctx, g, 0, NULL, ctx->n_out, ptr);
  for (int i = 0; i < ctx->n_out; i++) {
    if (st == NBL_OK) st = move_out(ctx, i, &res[i]);
    else nbl_rt_tensor_free(&res[i]);
  }
  free(res);
  free(ptr);
  return st;
}

/* ------------------------------------------------------------------ Loop */

typedef struct stack_buf {
  nbl_rt_tensor first; /* shape/type of the first slice (data unused) */
  unsigned char *data;
  size_t len, cap;
  int64_t count;
} stack_buf;

static nbl_status stack_push(nbl_kctx *ctx, stack_buf *b, const nbl_rt_tensor *t, const char *what) {
  if (t->kind != NBL_RT_TENSOR)
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "%s: a %s cannot be stacked (scan outputs are tensors)", what,
                    nbl_rt_kind_name(t->kind));
  if (t->dtype == NBL_DT_STRING || nbl_dtype_bits(t->dtype) < 8)
    return nbl_kerr(ctx, NBL_ERR_UNSUPPORTED, "%s: element type %s cannot be stacked", what,
                    nbl_dtype_name(t->dtype));
  if (b->count == 0) {
    b->first = *t;
    b->first.data = NULL;
    b->first.owns = 0;
    if (t->rank + 1 > NBL_MAX_RANK)
      return nbl_kerr(ctx, NBL_ERR_UNSUPPORTED, "%s: rank too large", what);
  } else {
    int same = b->first.dtype == t->dtype && b->first.rank == t->rank;
    for (int d = 0; same && d < t->rank; d++) same = b->first.dims[d] == t->dims[d];
    if (!same)
      return nbl_kerr(ctx, NBL_ERR_RUNTIME, "%s: shape changes between iterations", what);
  }
  if (b->len + t->nbytes > b->cap) {
    size_t nc = b->cap ? b->cap * 2 : 256;
    while (nc < b->len + t->nbytes) nc *= 2;
    unsigned char *p = realloc(b->data, nc);
    if (!p) return nbl_kerr(ctx, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    b->data = p;
    b->cap = nc;
  }
  if (t->nbytes) memcpy(b->data + b->len, t->data, t->nbytes);
  b->len += t->nbytes;
  b->count++;
  return NBL_OK;
}

/* Output `i`: the stacked slices, with a new leading axis (or `axis`). */
static nbl_status alloc_dst(nbl_kctx *ctx, int i, nbl_rt_tensor *dst, nbl_dtype dt, int rank,
                           const int64_t *dims) {
  if (!dst) return nbl_kctx_alloc_out(ctx, i, dt, rank, dims);
  nbl_status st = nbl_rt_tensor_alloc(dst, dt, rank, dims);
  return st == NBL_OK ? st : nbl_kerr(ctx, st, "%s", nbl_last_error());
}

/* dst NULL: into output i; otherwise into the owned tensor *dst. */
static nbl_status stack_out(nbl_kctx *ctx, int i, nbl_rt_tensor *dst, stack_buf *b,
                            const nbl_value *decl, int axis, int reverse) {
  int64_t dims[NBL_MAX_RANK];
  int rank;
  nbl_dtype dt;
  if (b->count == 0) {
    /* no iteration: shape (0, declared dims...) where known */
    dt = decl && decl->type.kind == NBL_TYPE_TENSOR && decl->type.elem ? decl->type.elem : NBL_DT_FLOAT;
    rank = 1;
    dims[0] = 0;
    if (decl && decl->type.kind == NBL_TYPE_TENSOR && decl->type.rank > 0 &&
        decl->type.rank < NBL_MAX_RANK) {
      for (int d = 0; d < decl->type.rank; d++)
        dims[1 + d] = decl->type.dims[d].value > 0 ? decl->type.dims[d].value : 0;
      rank = 1 + decl->type.rank;
    }
    return alloc_dst(ctx, i, dst, dt, rank, dims);
  }
  dt = b->first.dtype;
  rank = b->first.rank + 1;
  if (axis < 0) axis += rank;
  if (axis < 0 || axis >= rank) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "scan output axis out of range");
  for (int d = 0, s = 0; d < rank; d++) dims[d] = d == axis ? b->count : b->first.dims[s++];
  nbl_status st = alloc_dst(ctx, i, dst, dt, rank, dims);
  if (st != NBL_OK) return st;
  nbl_rt_tensor *y = dst ? dst : nbl_kctx_out(ctx, i);
  size_t es = nbl_rt_elem_size(dt);
  /* slices are [count][outer][inner]; output is [outer][count][inner] */
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < axis; d++) outer *= b->first.dims[d];
  for (int d = axis; d < b->first.rank; d++) inner *= b->first.dims[d];
  size_t slice = (size_t)(outer * inner) * es;
  for (int64_t k = 0; k < b->count; k++) {
    int64_t dst_k = reverse ? b->count - 1 - k : k;
    for (int64_t o = 0; o < outer; o++)
      memcpy((char *)y->data + ((size_t)(o * b->count + dst_k) * (size_t)inner) * es,
             b->data + (size_t)k * slice + (size_t)(o * inner) * es, (size_t)inner * es);
  }
  return NBL_OK;
}

static nbl_status k_loop(nbl_kctx *ctx) {
  const nbl_graph *body = graph_attr(ctx->node, "body");
  if (!body) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "missing body graph");
  int N = ctx->n_in - 2;
  if (N < 0) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "Loop needs at least 2 inputs");
  int K = body->n_outputs - 1 - N;
  if (K < 0 || body->n_inputs != N + 2 || ctx->n_out != N + K)
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL,
                    "body has %d inputs and %d outputs for %d loop-carried values and %d outputs",
                    body->n_inputs, body->n_outputs, N, ctx->n_out);
  int64_t trip = INT64_MAX;
  if ((ctx->in[0] && ctx->in[0]->kind != NBL_RT_TENSOR) || (ctx->in[1] && ctx->in[1]->kind != NBL_RT_TENSOR))
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "M and cond must be tensors");
  if (ctx->in[0] && ctx->in[0]->numel > 0) trip = nbl_rt_get_i64(ctx->in[0], 0);
  int cond = 1;
  if (ctx->in[1] && ctx->in[1]->numel > 0) cond = nbl_rt_get_i64(ctx->in[1], 0) != 0;
  for (int i = 0; i < N; i++)
    if (!ctx->in[2 + i])
      return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "loop-carried input %d is missing", i);
  nbl_rt_tensor *carried = calloc((size_t)N + 1, sizeof(nbl_rt_tensor));
  nbl_rt_tensor *res = calloc((size_t)(N + K + 1), sizeof(nbl_rt_tensor));
  nbl_rt_tensor **resp = calloc((size_t)(N + K + 1), sizeof(nbl_rt_tensor *));
  const nbl_rt_tensor **ins = calloc((size_t)(N + 2), sizeof(nbl_rt_tensor *));
  stack_buf *stk = calloc((size_t)K + 1, sizeof(stack_buf));
  nbl_status st = NBL_OK;
  if (!carried || !res || !resp || !ins || !stk) {
    st = nbl_kerr(ctx, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    goto done;
  }
  for (int i = 0; i < N; i++) carried[i] = *ctx->in[2 + i], carried[i].owns = 0;
  for (int i = 0; i < N + K + 1; i++) resp[i] = &res[i];
  int64_t it = 0;
  uint8_t cond_b = (uint8_t)cond;
  nbl_rt_tensor it_t = {.dtype = NBL_DT_INT64, .rank = 0, .numel = 1, .data = &it, .nbytes = 8};
  nbl_rt_tensor cond_t = {.dtype = NBL_DT_BOOL, .rank = 0, .numel = 1, .data = &cond_b, .nbytes = 1};
  for (; it < trip && cond; it++) {
    cond_b = (uint8_t)cond;
    ins[0] = &it_t;
    ins[1] = &cond_t;
    for (int i = 0; i < N; i++) ins[2 + i] = &carried[i];
    st = nbl_kctx_run_subgraph(ctx, body, N + 2, ins, N + K + 1, resp);
    if (st != NBL_OK) goto done;
    if (res[0].kind != NBL_RT_TENSOR || res[0].numel < 1) {
      st = nbl_kerr(ctx, NBL_ERR_RUNTIME, "body condition output is empty or not a tensor");
    } else {
      cond = nbl_rt_get_f64(&res[0], 0) != 0;
    }
    nbl_rt_tensor_free(&res[0]);
    for (int i = 0; i < N; i++) {
      nbl_rt_tensor_free(&carried[i]);
      carried[i] = res[1 + i];
      memset(&res[1 + i], 0, sizeof res[1 + i]);
    }
    for (int k = 0; k < K && st == NBL_OK; k++)
      st = stack_push(ctx, &stk[k], &res[1 + N + k], "scan output");
    for (int k = 0; k < K; k++) nbl_rt_tensor_free(&res[1 + N + k]);
    if (st != NBL_OK) goto done;
  }
  for (int i = 0; i < N && st == NBL_OK; i++) {
    if (carried[i].owns) st = move_out(ctx, i, &carried[i]);
    else st = nbl_kctx_copy_out(ctx, i, &carried[i]);
  }
  for (int k = 0; k < K && st == NBL_OK; k++)
    st = stack_out(ctx, N + k, NULL, &stk[k], &body->values[body->outputs[1 + N + k]], 0, 0);
done:
  if (carried)
    for (int i = 0; i < N; i++) nbl_rt_tensor_free(&carried[i]);
  if (stk)
    for (int k = 0; k < K; k++) free(stk[k].data);
  free(carried);
  free(res);
  free(resp);
  free(ins);
  free(stk);
  return st;
}

/* ------------------------------------------------------------------ Scan (opset 9+) */

/* Copy slice `k` along `axis` of x into a new tensor. */
static nbl_status take_slice(const nbl_rt_tensor *x, int axis, int64_t k, nbl_rt_tensor *out) {
  int64_t dims[NBL_MAX_RANK];
  for (int d = 0, s = 0; d < x->rank; d++)
    if (d != axis) dims[s++] = x->dims[d];
  nbl_status st = nbl_rt_tensor_alloc(out, x->dtype, x->rank - 1, dims);
  if (st != NBL_OK) return st;
  size_t es = nbl_rt_elem_size(x->dtype);
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < axis; d++) outer *= x->dims[d];
  for (int d = axis + 1; d < x->rank; d++) inner *= x->dims[d];
  for (int64_t o = 0; o < outer; o++)
    memcpy((char *)out->data + (size_t)(o * inner) * es,
           (const char *)x->data + (size_t)((o * x->dims[axis] + k) * inner) * es,
           (size_t)inner * es);
  return NBL_OK;
}

/* The Scan loop over T steps. states[N] and xs[M] are the inputs; results
 * (N final states, then K stacked outputs) go to ctx outputs, or into the
 * owned tensors res_out[N+K] when res_out is non-NULL. */
static nbl_status scan_core(nbl_kctx *ctx, const nbl_graph *body, int N, int M, int K,
                            const nbl_rt_tensor *const *states_in,
                            const nbl_rt_tensor *const *xs, const int *axes,
                            const int64_t *in_dirs, const int64_t *out_axes,
                            const int64_t *out_dirs, nbl_rt_tensor *res_out) {
  int64_t T = -1;
  for (int j = 0; j < M; j++) {
    const nbl_rt_tensor *x = xs[j];
    if (x->dtype == NBL_DT_STRING || nbl_dtype_bits(x->dtype) < 8)
      return nbl_kerr(ctx, NBL_ERR_UNSUPPORTED, "scan input type %s", nbl_dtype_name(x->dtype));
    if (T >= 0 && x->dims[axes[j]] != T)
      return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "scan inputs disagree on the sequence length");
    T = x->dims[axes[j]];
  }
  nbl_rt_tensor *state = calloc((size_t)N + 1, sizeof(nbl_rt_tensor));
  nbl_rt_tensor *slices = calloc((size_t)M + 1, sizeof(nbl_rt_tensor));
  nbl_rt_tensor *res = calloc((size_t)(N + K + 1), sizeof(nbl_rt_tensor));
  nbl_rt_tensor **resp = calloc((size_t)(N + K + 1), sizeof(nbl_rt_tensor *));
  const nbl_rt_tensor **ins = calloc((size_t)(N + M + 1), sizeof(nbl_rt_tensor *));
  stack_buf *stk = calloc((size_t)K + 1, sizeof(stack_buf));
  nbl_status st = NBL_OK;
  if (!state || !slices || !res || !resp || !ins || !stk) {
    st = nbl_kerr(ctx, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    goto done;
  }
  for (int i = 0; i < N; i++) {
    state[i] = *states_in[i];
    state[i].owns = 0;
  }
  for (int i = 0; i < N + K; i++) resp[i] = &res[i];
  for (int64_t t = 0; t < T; t++) {
    for (int j = 0; j < M; j++) {
      int64_t k = in_dirs && in_dirs[j] ? T - 1 - t : t;
      nbl_rt_tensor_free(&slices[j]);
      st = take_slice(xs[j], axes[j], k, &slices[j]);
      if (st != NBL_OK) {
        nbl_kerr(ctx, st, "%s", nbl_last_error());
        goto done;
      }
    }
    for (int i = 0; i < N; i++) ins[i] = &state[i];
    for (int j = 0; j < M; j++) ins[N + j] = &slices[j];
    st = nbl_kctx_run_subgraph(ctx, body, N + M, ins, N + K, resp);
    if (st != NBL_OK) goto done;
    for (int i = 0; i < N; i++) {
      nbl_rt_tensor_free(&state[i]);
      state[i] = res[i];
      memset(&res[i], 0, sizeof res[i]);
    }
    for (int k = 0; k < K && st == NBL_OK; k++) st = stack_push(ctx, &stk[k], &res[N + k], "scan output");
    for (int k = 0; k < K; k++) nbl_rt_tensor_free(&res[N + k]);
    if (st != NBL_OK) goto done;
  }
  for (int i = 0; i < N && st == NBL_OK; i++) {
    if (res_out) {
      if (state[i].owns) {
        res_out[i] = state[i];
        memset(&state[i], 0, sizeof state[i]);
      } else {
        st = nbl_rt_copy(&res_out[i], &state[i]);
      }
    } else if (state[i].owns) {
      st = move_out(ctx, i, &state[i]);
    } else {
      st = nbl_kctx_copy_out(ctx, i, &state[i]);
    }
  }
  for (int k = 0; k < K && st == NBL_OK; k++)
    st = stack_out(ctx, N + k, res_out ? &res_out[N + k] : NULL, &stk[k],
                   &body->values[body->outputs[N + k]], out_axes ? (int)out_axes[k] : 0,
                   out_dirs ? (int)out_dirs[k] : 0);
done:
  if (state)
    for (int i = 0; i < N; i++) nbl_rt_tensor_free(&state[i]);
  if (slices)
    for (int j = 0; j < M; j++) nbl_rt_tensor_free(&slices[j]);
  if (stk)
    for (int k = 0; k < K; k++) free(stk[k].data);
  free(state);
  free(slices);
  free(res);
  free(resp);
  free(ins);
  free(stk);
  return st;
}

static nbl_status k_scan(nbl_kctx *ctx) {
  const nbl_graph *body = graph_attr(ctx->node, "body");
  if (!body) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "missing body graph");
  int64_t m = nbl_attr_int(ctx->node, "num_scan_inputs", -1);
  int first = ctx->opset < 9 ? 1 : 0; /* Scan-8: sequence_lens comes first */
  if (m < 1 || m > ctx->n_in - first) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "bad num_scan_inputs");
  int M = (int)m, N = ctx->n_in - first - M;
  if (M > 64) return nbl_kerr(ctx, NBL_ERR_UNSUPPORTED, "more than 64 scan inputs");
  int K = ctx->n_out - N;
  if (K < 0 || body->n_inputs != N + M || body->n_outputs != N + K)
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "body signature does not match the node");
  for (int i = first; i < ctx->n_in; i++)
    if (!ctx->in[i]) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "input %d is missing", i);
  int cnt;
  int axes[64];
  if (ctx->opset < 9) {
    const int64_t *dirs = nbl_attr_ints(ctx->node, "directions", &cnt);
    if (dirs && cnt != M) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "directions has %d entries", cnt);
    const nbl_rt_tensor *x0 = ctx->in[first + N];
    int64_t B = x0->rank > 0 ? x0->dims[0] : 0;
    for (int i = first; i < ctx->n_in; i++)
      if (ctx->in[i]->rank < 1 || ctx->in[i]->dims[0] != B || (i >= first + N && ctx->in[i]->rank < 2))
        return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "input %d lacks the batch axis of size %lld", i,
                        (long long)B);
    const nbl_rt_tensor *sl = ctx->in[0];
    if (sl)
      for (int64_t b = 0; b < sl->numel && b < B; b++)
        if (nbl_rt_get_i64(sl, b) != ctx->in[first + N]->dims[1])
          return nbl_kerr(ctx, NBL_ERR_UNSUPPORTED, "sequence_lens shorter than the input is not supported");
    for (int j = 0; j < M; j++) axes[j] = 0;
    nbl_rt_tensor *parts = calloc((size_t)(B * (N + K) + 1), sizeof(nbl_rt_tensor));
    nbl_rt_tensor *bin = calloc((size_t)(N + M + 1), sizeof(nbl_rt_tensor));
    const nbl_rt_tensor **bp = calloc((size_t)(N + M + 1), sizeof(nbl_rt_tensor *));
    nbl_status st = parts && bin && bp ? NBL_OK : nbl_kerr(ctx, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    for (int64_t b = 0; b < B && st == NBL_OK; b++) {
      for (int i = 0; i < N + M && st == NBL_OK; i++) {
        nbl_rt_tensor_free(&bin[i]);
        st = take_slice(ctx->in[first + i], 0, b, &bin[i]);
        bp[i] = &bin[i];
      }
      if (st == NBL_OK)
        st = scan_core(ctx, body, N, M, K, bp, bp + N, axes, dirs, NULL, NULL, parts + b * (N + K));
    }
    /* stack the per-batch results along a new axis 0 */
    for (int o = 0; o < N + K && st == NBL_OK; o++) {
      stack_buf sb = {0};
      for (int64_t b = 0; b < B && st == NBL_OK; b++) st = stack_push(ctx, &sb, &parts[b * (N + K) + o], "output");
      if (st == NBL_OK) st = stack_out(ctx, o, NULL, &sb, NULL, 0, 0);
      free(sb.data);
    }
    if (parts)
      for (int64_t i = 0; i < B * (N + K); i++) nbl_rt_tensor_free(&parts[i]);
    if (bin)
      for (int i = 0; i < N + M; i++) nbl_rt_tensor_free(&bin[i]);
    free(parts);
    free(bin);
    free(bp);
    return st;
  }
  const int64_t *in_axes = nbl_attr_ints(ctx->node, "scan_input_axes", &cnt);
  if (in_axes && cnt != M) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "scan_input_axes has %d entries", cnt);
  const int64_t *in_dirs = nbl_attr_ints(ctx->node, "scan_input_directions", &cnt);
  if (in_dirs && cnt != M) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "scan_input_directions has %d entries", cnt);
  const int64_t *out_axes = nbl_attr_ints(ctx->node, "scan_output_axes", &cnt);
  if (out_axes && cnt != K) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "scan_output_axes has %d entries", cnt);
  const int64_t *out_dirs = nbl_attr_ints(ctx->node, "scan_output_directions", &cnt);
  if (out_dirs && cnt != K) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "scan_output_directions has %d entries", cnt);
  for (int j = 0; j < M; j++) {
    const nbl_rt_tensor *x = ctx->in[N + j];
    int ax = nbl_norm_axis(in_axes ? in_axes[j] : 0, x->rank);
    if (ax < 0) return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "scan input axis out of range");
    axes[j] = ax;
  }
  return scan_core(ctx, body, N, M, K, ctx->in, ctx->in + N, axes, in_dirs, out_axes, out_dirs, NULL);
}

/* ------------------------------------------------------------------ shape rules */

/* Merge two graph output types (If branches): unknown where they differ. */
static void merge_branch(nbl_shp *a, const nbl_shp *b) {
  if (!a->dt) a->dt = b->dt;
  if (a->rank < 0 || b->rank < 0 || a->rank != b->rank) {
    a->rank = -1;
    return;
  }
  for (int i = 0; i < a->rank; i++)
    if (!nbl_dim_same(a->d[i], b->d[i])) a->d[i] = nbl_dim_unk();
}

static nbl_status shape_if(nbl_shape_ctx *c) {
  nbl_status st0 = nbl_shp_subgraphs(c);
  if (st0) return st0;
  const nbl_node *n = c->node;
  const nbl_graph *t = graph_attr(n, "then_branch"), *e = graph_attr(n, "else_branch");
  if (!t) return NBL_OK;
  for (int k = 0; k < n->n_outputs && k < t->n_outputs; k++) {
    nbl_shp a, b;
    const nbl_type *tt = &t->values[t->outputs[k]].type;
    if (tt->kind == NBL_TYPE_SEQUENCE || tt->kind == NBL_TYPE_OPTIONAL) { /* the then branch's type */
      nbl_status st = nbl_shp_set_type(c, k, tt);
      if (st) return st;
      continue;
    }
    nbl_shp_from_type(tt, &a);
    if (e && k < e->n_outputs) {
      nbl_shp_from_type(&e->values[e->outputs[k]].type, &b);
      merge_branch(&a, &b);
    }
    nbl_status st = nbl_shp_set(c, k, &a);
    if (st) return st;
  }
  return NBL_OK;
}

/* Loop body inputs without a type get (iter int64[], cond bool[], carried from the loop). */
static void loop_seed_body(nbl_shape_ctx *c, nbl_graph *body) {
  const nbl_node *n = c->node;
  nbl_arena *a = body->model->arena;
  for (int i = 0; i < body->n_inputs; i++) {
    nbl_value *v = &body->values[body->inputs[i]];
    if (v->type.kind != NBL_TYPE_NONE) continue;
    if (i == 0) nbl_type_set_tensor(a, &v->type, NBL_DT_INT64, 0, NULL);
    else if (i == 1) nbl_type_set_tensor(a, &v->type, NBL_DT_BOOL, 0, NULL);
    else if (i < n->n_inputs && n->inputs[i] != NBL_NONE) {
      const nbl_value *src = &c->graph->values[n->inputs[i]];
      if (src->type.kind == NBL_TYPE_TENSOR) {
        nbl_type_copy(a, &v->type, &src->type);
        v->type.rank = -1; /* the carried shape may change from one iteration to the next */
        v->type.dims = NULL;
      } else if (src->type.kind == NBL_TYPE_SEQUENCE || src->type.kind == NBL_TYPE_OPTIONAL) {
        nbl_type_copy(a, &v->type, &src->type);
      }
    }
  }
}

static nbl_status shape_loop(nbl_shape_ctx *c) {
  const nbl_node *n = c->node;
  const nbl_graph *body = graph_attr(n, "body");
  if (body) loop_seed_body(c, (nbl_graph *)body);
  nbl_status st0 = nbl_shp_subgraphs(c);
  if (st0 || !body) return st0;
  int ncarried = n->n_inputs - 2;
  for (int k = 0; k < n->n_outputs; k++) {
    int bo = k + 1;
    if (bo >= body->n_outputs) break;
    nbl_shp s;
    const nbl_type *bt = &body->values[body->outputs[bo]].type;
    if (k < ncarried && (bt->kind == NBL_TYPE_SEQUENCE || bt->kind == NBL_TYPE_OPTIONAL)) {
      nbl_status st = nbl_shp_set_type(c, k, bt);
      if (st) return st;
      continue;
    }
    nbl_shp_from_type(bt, &s);
    if (k < ncarried) {
      nbl_shp init;
      nbl_shp_in(c, k + 2, &init);
      if (!s.dt) s.dt = init.dt;
      merge_branch(&s, &init);
    } else if (s.rank >= 0 && s.rank < NBL_SHP_MAXR) {
      memmove(s.d + 1, s.d, sizeof(nbl_dim) * (size_t)s.rank);
      s.d[0] = nbl_dim_unk();
      s.rank++;
    } else
      s.rank = -1;
    nbl_status st = nbl_shp_set(c, k, &s);
    if (st) return st;
  }
  return NBL_OK;
}

/* x without dims [from, from + n). */
static void drop_dims(nbl_shp *x, int from, int n) {
  if (x->rank < from + n) {
    x->rank = -1;
    return;
  }
  for (int i = from; i + n < x->rank; i++) x->d[i] = x->d[i + n];
  x->rank -= n;
}

/* x with dim d inserted at axis a (a in [0, rank]). */
static void insert_dim(nbl_shp *x, int a, nbl_dim d) {
  if (x->rank < 0 || x->rank >= NBL_SHP_MAXR || a < 0 || a > x->rank) {
    x->rank = -1;
    return;
  }
  for (int i = x->rank; i > a; i--) x->d[i] = x->d[i - 1];
  x->d[a] = d;
  x->rank++;
}

/* Scan: the body's inputs are seeded (state variables as the initial states,
 * scan elements without the scan axis), the body inferred; the outputs are the
 * final states (the initial states' types) and the scan outputs, the body's
 * scan output elements stacked along scan_output_axes with the sequence
 * length. Opset 8 is the batched form: sequence_lens first, every state and
 * input with a batch axis 0, the sequence axis 1; scan outputs
 * [batch, sequence, ...]. */
static nbl_status shape_scan(nbl_shape_ctx *c) {
  const nbl_node *n = c->node;
  nbl_graph *body = (nbl_graph *)graph_attr(n, "body");
  int64_t m = nbl_attr_int(n, "num_scan_inputs", -1);
  int first = c->opset < 9 ? 1 : 0;
  if (!body || m < 1 || m > n->n_inputs - first) return nbl_shp_subgraphs(c);
  int M = (int)m, N = n->n_inputs - first - M, K = n->n_outputs - N;
  if (K < 0 || body->n_inputs != N + M) return nbl_shp_subgraphs(c);
  int cnt = 0;
  const int64_t *in_axes = first ? NULL : nbl_attr_ints(n, "scan_input_axes", &cnt);
  if (in_axes && cnt != M) in_axes = NULL;
  const int64_t *out_axes = first ? NULL : nbl_attr_ints(n, "scan_output_axes", &cnt);
  if (out_axes && cnt != K) out_axes = NULL;
  nbl_dim T = nbl_dim_unk(), B = nbl_dim_unk();
  nbl_status st = NBL_OK;
  for (int i = 0; i < N + M && !st; i++) {
    nbl_shp s;
    nbl_shp_in(c, first + i, &s);
    if (first) {
      if (s.rank >= 1) B = nbl_dim_merge(B, s.d[0]);
      if (i >= N && s.rank >= 2) T = nbl_dim_merge(T, s.d[1]);
      drop_dims(&s, 0, i >= N ? 2 : 1);
    } else if (i >= N && s.rank >= 1) {
      int a = nbl_norm_axis(in_axes ? in_axes[i - N] : 0, s.rank);
      if (a >= 0) T = nbl_dim_merge(T, s.d[a]);
      if (a >= 0) drop_dims(&s, a, 1);
      else s.rank = -1;
    }
    st = nbl_shp_seed(c, body, body->inputs[i], &s);
  }
  if (!st) st = nbl_shp_subgraphs(c);
  for (int k = 0; k < N && !st; k++) {
    nbl_shp s;
    nbl_shp_in(c, first + k, &s);
    st = nbl_shp_set(c, k, &s);
  }
  for (int k = 0; k < K && N + k < body->n_outputs && !st; k++) {
    nbl_shp s;
    nbl_shp_from_type(&body->values[body->outputs[N + k]].type, &s);
    if (first) {
      insert_dim(&s, 0, T);
      insert_dim(&s, 0, B);
    } else {
      insert_dim(&s, s.rank >= 0 ? nbl_norm_axis(out_axes ? out_axes[k] : 0, s.rank + 1) : 0, T);
    }
    st = nbl_shp_set(c, N + k, &s);
  }
  return st;
}

/* ------------------------------------------------------------------ table */

/* ------------------------------------------------------------------ opset adapters */

/* Scan 8 -> 9. Scan-8 is batched: an optional sequence_lens first, then the
 * states [B, ...] and scan inputs [B, T, ...]; outputs [B, ...] and
 * [B, T, ...]; `directions` for the scan inputs. Scan-9 has no batch axis nor
 * sequence_lens. With B known to be 1 and no sequence_lens the body is the
 * same: every input loses its batch axis (Squeeze), every output gets it back
 * (Unsqueeze), and directions becomes scan_input_directions. */
static nbl_status scan_up9(nbl_adapt_ctx *c) {
  const nbl_node *n = nbl_adapt_node(c);
  if (n->n_inputs > 0 && n->inputs[0] != NBL_NONE)
    return nbl_adapt_refuse(c, "sequence_lens has no form from opset 9 on");
  int ni = n->n_inputs - 1;
  nbl_id ins[64];
  if (ni < 1 || ni > 64) return nbl_adapt_refuse(c, "%d inputs", ni);
  for (int i = 0; i < ni; i++) {
    ins[i] = n->inputs[i + 1];
    if (ins[i] == NBL_NONE || nbl_adapt_dim(c, ins[i], 0) != 1)
      return nbl_adapt_refuse(c, "the batch size of input %d is not known to be 1 (the only batch "
                                 "Scan-9 can express)", i + 1);
  }
  const int64_t zero = 0;
  for (int i = 0; i < ni; i++) {
    nbl_id sq = nbl_adapt_add_node(c, "Squeeze", "unbatched", 1, &ins[i], NBL_NONE);
    if (sq == NBL_NONE) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
    nbl_node_set_attr_ints(c->graph, c->graph->values[sq].producer, "axes", 1, &zero);
    ins[i] = sq;
  }
  for (int i = 0; i <= ni; i++) nbl_node_set_input(c->graph, c->node, i, NBL_NONE);
  for (int i = 0; i < ni; i++) nbl_node_set_input(c->graph, c->node, i, ins[i]);
  nbl_adapt_node(c)->n_inputs = ni;
  int cnt = 0;
  const int64_t *dirs = nbl_attr_ints(nbl_adapt_node(c), "directions", &cnt);
  if (dirs) nbl_node_set_attr_ints(c->graph, c->node, "scan_input_directions", cnt, dirs);
  nbl_adapt_drop_attr(c, "directions");
  for (int k = 0; k < nbl_adapt_node(c)->n_outputs; k++) {
    nbl_id y = nbl_adapt_node(c)->outputs[k];
    if (y == NBL_NONE) continue;
    nbl_id y9 = nbl_adapt_detach_output(c, k, "unbatched");
    if (y9 == NBL_NONE || nbl_adapt_add_node(c, "Unsqueeze", "batched", 1, &y9, y) == NBL_NONE)
      return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
    nbl_node_set_attr_ints(c->graph, c->graph->values[y].producer, "axes", 1, &zero);
  }
  return NBL_OK;
}

static const nbl_op_adapter scan_steps[] = {{.from = 8, .to = 9, .up = scan_up9}, {0}};

const nbl_op_def nbl_ops_control_flow[] = {
    NBL_OP("If", 1, .ref = k_if, .shape = shape_if, .stable_since = 1, .no_grad = "no rule yet",
        .flags = NBL_OPF_VALUES),
    NBL_OP("Loop", 1, .ref = k_loop, .shape = shape_loop, .stable_since = 1, .no_grad = "no rule yet",
        .flags = NBL_OPF_VALUES),
    /* batched form, sequence_lens first */
    NBL_OP_DEF("", "Scan", 8, 8, .ref = k_scan, .shape = shape_scan, .no_grad = "no rule yet"),
    NBL_OP("Scan", 9, .ref = k_scan, .shape = shape_scan, .stable_since = 9,
        .adapters = scan_steps, .no_grad = "no rule yet"),
};
const size_t nbl_ops_control_flow_count = sizeof nbl_ops_control_flow / sizeof nbl_ops_control_flow[0];
