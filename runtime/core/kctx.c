/* kctx.c - the kernel services of kernel.h: error messages, output
 * storage (from the arena when planned), per-node caches, parallel loops
 * and subgraph runs. Kernels reach the executor only through these. */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/engine.h"

nbl_status nbl_kerr(nbl_kctx *ctx, nbl_status st, const char *fmt, ...) {
  char buf[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  const nbl_node *n = ctx ? ctx->node : NULL;
  return nbl_errorf(st, "node '%s' (%s): %s", n && n->name ? n->name : "", n ? n->op_type : "?",
                    buf);
}

static nbl_rt_tensor *out_slot(nbl_kctx *ctx, int i) {
  if (ctx->out && ctx->out[i]) return ctx->out[i];
  struct nbl_exec *x = ctx->exec;
  if (!x) return NULL;
  if (!x->scratch) {
    x->scratch = calloc((size_t)(ctx->n_out ? ctx->n_out : 1), sizeof(nbl_rt_tensor));
    if (!x->scratch) return NULL;
    x->n_scratch = ctx->n_out;
  }
  return i < x->n_scratch ? &x->scratch[i] : NULL;
}

nbl_rt_tensor *nbl_kctx_out(nbl_kctx *ctx, int i) {
  if (!ctx || i < 0 || i >= ctx->n_out) return NULL;
  return out_slot(ctx, i);
}

nbl_status nbl_kctx_alloc_out(nbl_kctx *ctx, int i, nbl_dtype dt, int rank, const int64_t *dims) {
  if (!ctx || i < 0 || i >= ctx->n_out)
    return nbl_kerr(ctx, NBL_ERR_INTERNAL, "output index %d out of range", i);
  nbl_rt_tensor *t = out_slot(ctx, i);
  if (!t) return nbl_kerr(ctx, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  nbl_slot_clear(t);
  if (rank < 0 || rank > NBL_MAX_RANK)
    return nbl_kerr(ctx, NBL_ERR_UNSUPPORTED, "output %d: rank %d exceeds the supported maximum %d",
                    i, rank, NBL_MAX_RANK);
  for (int d = 0; d < rank; d++)
    if (dims[d] < 0)
      return nbl_kerr(ctx, NBL_ERR_RUNTIME, "output %d: negative dimension %lld", i,
                      (long long)dims[d]);
  struct nbl_exec *x = ctx->exec;
  nbl_engine *e = x ? x->f->e : NULL;
  int slot = -1;
  const nbl_node *nd = ctx->node;
  int is_graph_out = 0;
  if (x && x->f->top && nd && i < nd->n_outputs) {
    slot = x->st->out_base + i;
    nbl_id v = nd->outputs[i];
    if (v != NBL_NONE && x->f->p->last_use[v] == INT_MAX) is_graph_out = 1;
  }
  if (slot >= 0 && !is_graph_out && dt != NBL_DT_STRING && nbl_dtype_bits(dt) > 0 && !e->no_arena) {
    int64_t n = nbl_shape_numel(rank, dims);
    if (n < 0) return nbl_kerr(ctx, NBL_ERR_RUNTIME, "output %d: shape too large", i);
    size_t nb = nbl_dtype_nbytes(dt, n);
    nbl_id v = nd->outputs[i];
    int lu = v == NBL_NONE ? x->step : x->f->p->last_use[v];
    if (nbl_out_arena_take(e, slot, x->step, lu, t, dt, rank, dims, nb)) return NBL_OK;
  }
  nbl_status st = nbl_rt_tensor_alloc(t, dt, rank, dims);
  if (st != NBL_OK) return nbl_node_error_context(nd, st);
  if (e) e->stats.mallocs++;
  return NBL_OK;
}

nbl_status nbl_kctx_move_out(nbl_kctx *ctx, int i, nbl_rt_tensor *v) {
  nbl_rt_tensor *t = ctx && i >= 0 && i < ctx->n_out ? out_slot(ctx, i) : NULL;
  if (!t) {
    nbl_rt_tensor_free(v);
    memset(v, 0, sizeof *v);
    return nbl_kerr(ctx, ctx && (i < 0 || i >= ctx->n_out) ? NBL_ERR_INTERNAL : NBL_ERR_OUT_OF_MEMORY,
                    "output %d: no slot", i);
  }
  if (!v->owns) { /* a view: its copy */
    nbl_rt_tensor c;
    nbl_status st = nbl_rt_copy(&c, v);
    if (st != NBL_OK) return nbl_node_error_context(ctx->node, st);
    *v = c;
  }
  nbl_slot_clear(t);
  *t = *v;
  memset(v, 0, sizeof *v);
  return NBL_OK;
}

nbl_status nbl_kctx_copy_out(nbl_kctx *ctx, int i, const nbl_rt_tensor *src) {
  if (src->kind != NBL_RT_TENSOR) {
    nbl_rt_tensor c;
    nbl_status st = nbl_rt_copy(&c, src);
    if (st != NBL_OK) return nbl_node_error_context(ctx->node, st);
    return nbl_kctx_move_out(ctx, i, &c);
  }
  nbl_status st = nbl_kctx_alloc_out(ctx, i, src->dtype, src->rank, src->dims);
  if (st != NBL_OK) return st;
  nbl_rt_tensor *t = out_slot(ctx, i);
  if (src->dtype == NBL_DT_STRING) {
    char **d = t->data, *const *s = src->data;
    for (int64_t k = 0; k < t->numel; k++) {
      d[k] = strdup(s[k] ? s[k] : "");
      if (!d[k]) return nbl_kerr(ctx, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    }
  } else if (t->nbytes) {
    memmove(t->data, src->data, t->nbytes);
  }
  return NBL_OK;
}

nbl_kcache *nbl_kctx_cache(nbl_kctx *ctx) {
  struct nbl_exec *x = ctx ? ctx->exec : NULL;
  if (!x || !x->f || !x->f->p || !x->f->p->caches || x->step < 0 || x->step >= x->f->p->n_steps)
    return NULL;
  return &x->f->p->caches[x->step];
}

int64_t nbl_kctx_random_seed(nbl_kctx *ctx) {
  static atomic_uint_fast64_t loose_pos; /* calls outside an executor */
  static _Atomic uint64_t loose_key;
  struct nbl_exec *x = ctx ? ctx->exec : NULL;
  nbl_engine *e = x && x->f ? x->f->e : NULL;
  uint64_t key, pos;
  if (e) {
    key = e->rng_key;
    pos = atomic_fetch_add(&e->rng_pos, 1);
  } else {
    key = atomic_load(&loose_key);
    if (!key) {
      uint64_t fresh = nbl_fresh_random_key(&loose_key), zero = 0;
      key = atomic_compare_exchange_strong(&loose_key, &zero, fresh) ? fresh : zero;
    }
    pos = atomic_fetch_add(&loose_pos, 1);
  }
  return (int64_t)(key ^ (pos * 0x9E3779B97F4A7C15ull));
}

void nbl_parallel_for(nbl_kctx *ctx, int64_t n, int64_t grain,
                      void (*fn)(void *arg, int64_t begin, int64_t end), void *arg) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  int threads = ctx ? ctx->threads : 1;
  struct nbl_exec *x = ctx ? ctx->exec : NULL;
  nbl_pool *p = x ? x->f->e->pool : NULL;
  if (threads <= 1 || n <= grain || !p || !nbl_pool_run(p, n, grain, threads, fn, arg)) {
    fn(arg, 0, n);
    return;
  }
  x->f->e->stats.parallel_regions++;
}

nbl_status nbl_kctx_run_subgraph(nbl_kctx *ctx, const nbl_graph *sub, int n_in,
                                 const nbl_rt_tensor *const *in, int n_out, nbl_rt_tensor **out) {
  struct nbl_exec *x = ctx ? ctx->exec : NULL;
  if (!x || !sub) return nbl_kerr(ctx, NBL_ERR_INTERNAL, "subgraph run outside an executor");
  nbl_engine *e = x->f->e;
  /* every Loop/Scan iteration and If branch passes here: a request to stop
   * ends even an iteration whose body has no node */
  nbl_status tst = nbl_engine_check_terminate(e);
  if (tst != NBL_OK) return nbl_node_error_context(ctx->node, tst);
  const nbl_gplan *p = nbl_plan_find(e, sub);
  if (!p) return nbl_kerr(ctx, NBL_ERR_INTERNAL, "subgraph '%s' was not planned", sub->name);
  if (n_in != sub->n_inputs)
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "subgraph '%s' takes %d inputs, %d given", sub->name,
                    sub->n_inputs, n_in);
  if (n_out != sub->n_outputs)
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "subgraph '%s' has %d outputs, %d expected",
                    sub->name, sub->n_outputs, n_out);
  nbl_frame f;
  nbl_status st = nbl_frame_init(&f, e, p, x->f);
  if (st != NBL_OK) return nbl_node_error_context(ctx->node, st);
  for (int i = 0; i < n_in; i++) {
    nbl_id v = sub->inputs[i];
    nbl_rt_tensor_free(&f.vals[v]);
    if (!in[i]) {
      memset(&f.vals[v], 0, sizeof f.vals[v]);
      f.set[v] = 0;
      continue;
    }
    f.vals[v] = *in[i];
    f.vals[v].owns = 0;
    f.set[v] = 1;
  }
  st = nbl_frame_run(&f);
  if (st != NBL_OK) {
    nbl_error_prefix("node '%s' (%s): subgraph '%s'", ctx->node->name ? ctx->node->name : "",
                     ctx->node->op_type, sub->name);
    nbl_frame_free(&f);
    return st;
  }
  int i;
  for (i = 0; i < n_out; i++) {
    nbl_id v = sub->outputs[i];
    nbl_rt_tensor *t = nbl_frame_lookup(&f, v);
    memset(out[i], 0, sizeof *out[i]);
    if (!t) {
      st = nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "subgraph '%s': output '%s' was not computed",
                    sub->name, sub->values[v].name);
      break;
    }
    int later = 0;
    for (int j = i + 1; j < n_out; j++)
      if (sub->outputs[j] == v) later = 1;
    if (t->owns && !later && t == &f.vals[v]) {
      *out[i] = *t;
      memset(t, 0, sizeof *t);
      f.set[v] = 0;
    } else {
      st = nbl_rt_copy(out[i], t);
      if (st != NBL_OK) {
        nbl_node_error_context(ctx->node, st);
        break;
      }
    }
  }
  if (st != NBL_OK)
    for (int j = 0; j < i; j++) nbl_rt_tensor_free(out[j]);
  nbl_frame_free(&f);
  return st;
}
