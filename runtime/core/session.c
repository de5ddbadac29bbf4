/* session.c - the public session API of nibble.h, on top of the engine of
 * exec.h (nothing here reaches into the engine's state). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nibble.h"
#include "runtime/core/cpu.h"
#include "runtime/core/exec.h"
#include "runtime/core/session.h"

struct nbl_session {
  nbl_engine *e;
  nbl_host_tensor *outs;
  nbl_session_value_fn on_value;
  void *user;
  nbl_isa isa; /* the session's ISA cap (for the profile's kernel line) */
};

/* ------------------------------------------------------------------ shared with runtime/train/session.c */

nbl_host_tensor nbl_host_view(const char *name, const nbl_rt_tensor *t) {
  nbl_host_tensor h;
  memset(&h, 0, sizeof h);
  h.name = name;
  h.dtype = t->dtype;
  h.rank = t->rank;
  for (int d = 0; d < t->rank && d < NBL_MAX_DIMS; d++) h.dims[d] = t->dims[d];
  h.data = t->data;
  h.nbytes = t->nbytes;
  return h;
}

nbl_status nbl_host_view_value(const char *name, const nbl_rt_tensor *t, nbl_host_tensor *h) {
  *h = nbl_host_view(name, t);
  const nbl_rt_seq *q = nbl_rt_seq_of(t);
  if (!q) return NBL_OK;
  h->kind = t->kind == NBL_RT_SEQUENCE ? NBL_VALUE_SEQUENCE : NBL_VALUE_OPTIONAL;
  h->rank = 0;
  h->data = NULL;
  h->nbytes = 0;
  if (q->n > INT32_MAX)
    return nbl_errorf(NBL_ERR_UNSUPPORTED, "'%s': a sequence of %lld values", name ? name : "", (long long)q->n);
  h->items = calloc((size_t)(q->n ? q->n : 1), sizeof *h->items);
  if (!h->items) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  h->n_items = (int)q->n;
  for (int64_t i = 0; i < q->n; i++) {
    nbl_status st = nbl_host_view_value(NULL, &q->items[i], &h->items[i]);
    if (st != NBL_OK) {
      nbl_host_view_release(h);
      return st;
    }
  }
  return NBL_OK;
}

void nbl_host_view_release(nbl_host_tensor *h) {
  if (!h || !h->items) return;
  for (int i = 0; i < h->n_items; i++) nbl_host_view_release(&h->items[i]);
  free(h->items);
  h->items = NULL;
  h->n_items = 0;
}

/* *rt = a runtime view of host value h: a tensor's data as is; a
 * sequence's or optional's list made in *rt (owned: nbl_rt_tensor_free),
 * its tensors' data viewed and checked against their shapes. `what` names
 * the input in messages. */
static nbl_status host_to_rt(const nbl_host_tensor *h, nbl_rt_tensor *rt, const char *what, int depth) {
  memset(rt, 0, sizeof *rt);
  if (h->kind == NBL_VALUE_TENSOR) {
    if (h->rank < 0 || h->rank > NBL_MAX_DIMS || h->rank > NBL_MAX_RANK)
      return nbl_errorf(NBL_ERR_UNSUPPORTED, "input '%s': rank %d exceeds the supported maximum %d", what, h->rank,
                        NBL_MAX_DIMS);
    *rt = (nbl_rt_tensor){.dtype = h->dtype, .rank = h->rank, .data = h->data, .nbytes = h->nbytes};
    for (int d = 0; d < h->rank; d++) rt->dims[d] = h->dims[d];
    return NBL_OK; /* nbl_engine_bind checks the shape and the bytes, an element's too */
  }
  if ((h->kind != NBL_VALUE_SEQUENCE && h->kind != NBL_VALUE_OPTIONAL) || h->n_items < 0 ||
      (h->n_items && !h->items) || (h->kind == NBL_VALUE_OPTIONAL && h->n_items > 1) || depth > 16)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "input '%s': kind %d with %d items", what, (int)h->kind,
                      h->n_items);
  nbl_status st = nbl_rt_seq_make(rt, h->kind == NBL_VALUE_SEQUENCE ? NBL_RT_SEQUENCE : NBL_RT_OPTIONAL, h->dtype,
                                  h->n_items);
  if (st != NBL_OK) return st;
  nbl_rt_seq *q = rt->data;
  for (int i = 0; i < h->n_items && st == NBL_OK; i++) {
    const nbl_host_tensor *it = &h->items[i];
    if (h->kind == NBL_VALUE_SEQUENCE && (it->kind != NBL_VALUE_TENSOR || it->dtype != h->dtype))
      st = nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "input '%s': element %d is not a tensor of the sequence's type %s",
                      what, i, nbl_dtype_name(h->dtype));
    else
      st = host_to_rt(it, &q->items[i], what, depth + 1);
  }
  if (st != NBL_OK) nbl_rt_tensor_free(rt); /* (the elements are views: only the list goes) */
  return st;
}

nbl_status nbl_engine_bind_host(nbl_engine *e, const nbl_host_tensor *h) {
  nbl_rt_tensor t;
  nbl_status st = host_to_rt(h, &t, h->name ? h->name : "", 0);
  if (st != NBL_OK) return st;
  st = nbl_engine_bind(e, h->name, &t);
  if (t.kind != NBL_RT_TENSOR) nbl_rt_tensor_free(&t); /* the engine made its own copy */
  return st;
}

nbl_status nbl_engine_host_outputs(const nbl_engine *e, nbl_host_tensor *outs) {
  const nbl_graph *g = nbl_engine_graph(e);
  nbl_host_outputs_release(outs, g->n_outputs);
  for (int i = 0; i < g->n_outputs; i++) {
    nbl_status st = nbl_host_view_value(g->values[g->outputs[i]].name, nbl_engine_output(e, i), &outs[i]);
    if (st != NBL_OK) return st;
  }
  return NBL_OK;
}

void nbl_host_outputs_release(nbl_host_tensor *outs, int n) {
  for (int i = 0; outs && i < n; i++) nbl_host_view_release(&outs[i]);
}

void nbl_host_info(const nbl_value *v, nbl_host_tensor *info) {
  memset(info, 0, sizeof *info);
  info->name = v->name;
  if (v->type.kind == NBL_TYPE_SEQUENCE || v->type.kind == NBL_TYPE_OPTIONAL) {
    const nbl_type *in = v->type.inner, *el = in && in->kind == NBL_TYPE_SEQUENCE ? in->inner : in;
    info->kind = v->type.kind == NBL_TYPE_SEQUENCE ? NBL_VALUE_SEQUENCE : NBL_VALUE_OPTIONAL;
    info->dtype = el && el->kind == NBL_TYPE_TENSOR ? el->elem : NBL_DT_UNDEFINED;
    info->rank = -1;
    return;
  }
  info->dtype = v->type.kind == NBL_TYPE_TENSOR ? v->type.elem : NBL_DT_UNDEFINED;
  info->rank = v->type.kind == NBL_TYPE_TENSOR ? v->type.rank : -1;
  for (int d = 0; d < info->rank && d < NBL_MAX_DIMS; d++)
    info->dims[d] = v->type.dims[d].param ? -1 : v->type.dims[d].value;
}

/* ------------------------------------------------------------------ the inference session */

static void session_value_cb(void *user, const char *name, const nbl_rt_tensor *t) {
  nbl_session *s = user;
  nbl_host_tensor h;
  if (nbl_host_view_value(name, t, &h) != NBL_OK) return; /* (out of memory: not shown) */
  s->on_value(s->user, &h);
  nbl_host_view_release(&h);
}

nbl_status nbl_session_create(const nbl_model *m, const nbl_session_options *opt,
                              nbl_session **out) {
  if (!m || !out) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_session_create: NULL argument");
  *out = NULL;
  nbl_session *s = calloc(1, sizeof *s);
  if (!s) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  nbl_engine_options eo = {0};
  if (opt) {
    eo.threads = opt->threads;
    eo.reference = opt->reference;
    eo.profile = opt->profile;
    eo.isa = opt->isa;
    eo.seed = opt->seed;
    s->isa = opt->isa;
    if (opt->on_value) {
      s->on_value = opt->on_value;
      s->user = opt->user;
      eo.on_value = session_value_cb;
      eo.user = s;
    }
  }
  nbl_status st = nbl_engine_create(m, NULL, &eo, &s->e);
  if (st != NBL_OK) {
    free(s);
    return st;
  }
  s->outs = calloc((size_t)(m->graph->n_outputs + 1), sizeof(nbl_host_tensor));
  if (!s->outs) {
    nbl_session_free(s);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  *out = s;
  return NBL_OK;
}

int nbl_session_input_count(const nbl_session *s) { return s ? nbl_engine_n_feeds(s->e) : 0; }

const char *nbl_session_input_name(const nbl_session *s, int i) {
  if (!s || i < 0 || i >= nbl_engine_n_feeds(s->e)) return NULL;
  return nbl_engine_graph(s->e)->values[nbl_engine_feed_value(s->e, i)].name;
}

nbl_status nbl_session_input_info(const nbl_session *s, int i, nbl_host_tensor *info) {
  if (!s || !info || i < 0 || i >= nbl_engine_n_feeds(s->e))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "session input index %d out of range", i);
  nbl_host_info(&nbl_engine_graph(s->e)->values[nbl_engine_feed_value(s->e, i)], info);
  return NBL_OK;
}

int nbl_session_output_count(const nbl_session *s) {
  return s ? nbl_engine_graph(s->e)->n_outputs : 0;
}

const char *nbl_session_output_name(const nbl_session *s, int i) {
  const nbl_graph *g = s ? nbl_engine_graph(s->e) : NULL;
  if (!g || i < 0 || i >= g->n_outputs) return NULL;
  return g->values[g->outputs[i]].name;
}

nbl_status nbl_session_output_info(const nbl_session *s, int i, nbl_host_tensor *info) {
  const nbl_graph *g = s ? nbl_engine_graph(s->e) : NULL;
  if (!g || !info || i < 0 || i >= g->n_outputs)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "session output index %d out of range", i);
  nbl_host_info(&g->values[g->outputs[i]], info);
  return NBL_OK;
}

void nbl_session_terminate(nbl_session *s, int terminate) {
  if (s) nbl_engine_terminate(s->e, terminate);
}

nbl_status nbl_session_run(nbl_session *s, int n_inputs, const nbl_host_tensor *inputs,
                           const nbl_host_tensor **outputs) {
  if (!s || (n_inputs && !inputs))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_session_run: NULL argument");
  nbl_engine *e = s->e;
  const nbl_graph *g = nbl_engine_graph(e);
  for (int i = 0; i < g->n_inputs; i++) /* inputs of earlier runs: unbound */
    nbl_engine_bind(e, g->values[g->inputs[i]].name, NULL);
  for (int i = 0; i < n_inputs; i++) {
    const nbl_host_tensor *h = &inputs[i];
    if (!h->name) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "input %d has no name", i);
    nbl_status st = nbl_engine_bind_host(e, h);
    if (st != NBL_OK) return st;
  }
  nbl_status st = nbl_engine_run(e);
  if (st == NBL_OK) st = nbl_engine_host_outputs(e, s->outs);
  if (st != NBL_OK) return st;
  if (outputs) *outputs = s->outs;
  return NBL_OK;
}

nbl_status nbl_session_copy_output(const nbl_session *s, int i, void *buf, size_t cap) {
  if (!s || i < 0 || i >= nbl_session_output_count(s))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "session output index %d out of range", i);
  const nbl_rt_tensor *t = nbl_engine_output(s->e, i);
  if (!t) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "no output: the session has not run");
  if (t->kind != NBL_RT_TENSOR)
    return nbl_errorf(NBL_ERR_UNSUPPORTED, "output '%s' is a %s; read the view's items instead",
                      nbl_session_output_name(s, i), nbl_rt_kind_name(t->kind));
  if (t->dtype == NBL_DT_STRING)
    return nbl_errorf(NBL_ERR_UNSUPPORTED, "output '%s' holds strings; read the view instead",
                      nbl_session_output_name(s, i));
  if (cap < t->nbytes)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "output '%s' needs %zu bytes, buffer has %zu",
                      nbl_session_output_name(s, i), t->nbytes, cap);
  if (t->nbytes) memcpy(buf, t->data, t->nbytes);
  return NBL_OK;
}

void nbl_session_free(nbl_session *s) {
  if (!s) return;
  if (s->outs && s->e) nbl_host_outputs_release(s->outs, nbl_engine_graph(s->e)->n_outputs);
  nbl_engine_free(s->e);
  free(s->outs);
  free(s);
}

typedef struct prof_row {
  const char *op;
  int64_t ns;
  int count;
} prof_row;

static int cmp_row(const void *a, const void *b) {
  int64_t x = ((const prof_row *)a)->ns, y = ((const prof_row *)b)->ns;
  return x < y ? 1 : x > y ? -1 : 0;
}

typedef struct { int s; int64_t ns; } step_ns;

static int cmp_step(const void *a, const void *b) {
  int64_t x = ((const step_ns *)a)->ns, y = ((const step_ns *)b)->ns;
  return x < y ? 1 : x > y ? -1 : 0;
}

nbl_status nbl_session_print_profile(const nbl_session *s, FILE *out, int top) {
  int n = 0, runs = 0;
  const nbl_node *const *nodes = NULL;
  const int64_t *ns = NULL;
  if (!s || !out || !nbl_engine_profile(s->e, &n, &nodes, &ns, &runs))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                      "nbl_session_print_profile: the session was created without profiling");
  prof_row *rows = calloc((size_t)n + 1, sizeof *rows);
  step_ns *order = calloc((size_t)n + 1, sizeof *order);
  if (!rows || !order) {
    free(rows);
    free(order);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  int nr = 0;
  int64_t total = 0;
  for (int i = 0; i < n; i++) {
    const char *op = nodes[i]->op_type ? nodes[i]->op_type : "?";
    int r = 0;
    while (r < nr && strcmp(rows[r].op, op) != 0) r++;
    if (r == nr) rows[nr++].op = op;
    rows[r].ns += ns[i];
    rows[r].count++;
    total += ns[i];
    order[i].s = i;
    order[i].ns = ns[i];
  }
  qsort(rows, (size_t)nr, sizeof *rows, cmp_row);
  nbl_isa cap = nbl_cpu_set_thread_cap(s->isa); /* the kernels as this session runs them */
  const char *info = nbl_kernel_info();
  nbl_cpu_set_thread_cap(cap);
  double div = runs > 0 ? 1e6 * runs : 1e6;
  fprintf(out, "profile: %d run(s), %d node(s), %.3f ms per run in nodes, %d thread(s)\n%s\n",
          runs, n, total / div, nbl_engine_threads(s->e), info);
  fprintf(out, "%-24s %6s %12s %7s\n", "op", "nodes", "ms/run", "share");
  for (int r = 0; r < nr; r++)
    fprintf(out, "%-24s %6d %12.3f %6.1f%%\n", rows[r].op, rows[r].count, rows[r].ns / div,
            total ? 100.0 * (double)rows[r].ns / (double)total : 0.0);
  if (top > 0) {
    qsort(order, (size_t)n, sizeof *order, cmp_step);
    if (top > n) top = n;
    fprintf(out, "slowest nodes:\n%-40s %-20s %12s\n", "node", "op", "ms/run");
    for (int i = 0; i < top; i++) {
      const nbl_node *nd = nodes[order[i].s];
      fprintf(out, "%-40s %-20s %12.3f\n", nd->name && *nd->name ? nd->name : "(unnamed)",
              nd->op_type ? nd->op_type : "?", order[i].ns / div);
    }
  }
  free(rows);
  free(order);
  return NBL_OK;
}

void nbl_session_reset_profile(nbl_session *s) {
  if (s) nbl_engine_reset_profile(s->e);
}
