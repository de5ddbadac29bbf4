/* exec.c - the engine of exec.h: creation (planning, binding initializers),
 * binding inputs, and running frames step by step. The kernel services
 * kernels call while a step runs are in kctx.c, the plans in plan.c, the
 * arena in arena.c, the public session API on top in session.c. */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/core/engine.h"
#include "runtime/kernels/gemm.h"

void nbl_slot_clear(nbl_rt_tensor *t) {
  nbl_rt_tensor_free(t);
  memset(t, 0, sizeof *t);
}

static nbl_status bind_initializers(const nbl_graph *g, nbl_rt_tensor *vals, unsigned char *set) {
  for (int i = 0; i < g->n_initializers; i++) {
    nbl_id v = g->initializers[i];
    const nbl_value *val = &g->values[v];
    if (!val->init) continue;
    nbl_status st = nbl_rt_from_ir(val->init, &vals[v]);
    if (st != NBL_OK) {
      nbl_error_prefix("graph '%s': initializer '%s'", g->name, val->name);
      return st;
    }
    set[v] = 1;
  }
  return NBL_OK;
}

uint64_t nbl_fresh_random_key(const void *salt) {
  static atomic_uint_fast64_t made;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t z = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
  z ^= (atomic_fetch_add(&made, 1) + 1) * 0xD1B54A32D192ED03ull ^ (uint64_t)(uintptr_t)salt;
  /* the splitmix64 finalizer, so that keys made close together differ in every bit */
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return z ? z : 1;
}

nbl_status nbl_engine_create(const nbl_model *m, const nbl_graph *g,
                             const nbl_engine_options *opt, nbl_engine **out) {
  if (!m || !out) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_engine_create: NULL argument");
  *out = NULL;
  if (!g) g = m->graph;
  if (!g) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: model has no graph", nbl_model_label(m));
  nbl_engine *e = calloc(1, sizeof *e);
  if (!e) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  e->m = m;
  e->g = g;
  e->threads = opt && opt->threads > 0 ? opt->threads : nbl_default_threads();
  e->reference = opt ? opt->reference : 0;
  e->no_arena = opt ? opt->no_arena : 0;
  e->profile = opt ? opt->profile : 0;
  e->isa = opt ? opt->isa : NBL_ISA_DEFAULT;
  e->on_value = opt ? opt->on_value : NULL;
  e->user = opt ? opt->user : NULL;
  e->rng_key = opt && opt->seed ? opt->seed : nbl_fresh_random_key(e);
  atomic_init(&e->rng_pos, 0);
  nbl_isa cap = nbl_cpu_set_thread_cap(e->isa); /* fusions choose kernels while planning */
  nbl_status st = nbl_plan_graph(e, g);
  nbl_cpu_set_thread_cap(cap);
  if (st != NBL_OK) {
    nbl_error_prefix("%s", nbl_model_label(m));
    nbl_engine_free(e);
    return st;
  }
  size_t nv = (size_t)(g->n_values ? g->n_values : 1);
  e->vals = calloc(nv, sizeof(nbl_rt_tensor));
  e->set = calloc(nv, 1);
  e->bound = calloc(nv, 1);
  e->binds = calloc(nv, sizeof(nbl_rt_tensor));
  e->state = calloc(nv, sizeof(nbl_rt_tensor));
  e->feeds = calloc((size_t)(g->n_inputs + 1), sizeof(nbl_id));
  if (!e->vals || !e->set || !e->bound || !e->binds || !e->state || !e->feeds ||
      nbl_out_arena_init(&e->ar, e->plans[0]->n_slots) != NBL_OK) {
    nbl_engine_free(e);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  unsigned char *dummy = calloc(nv, 1);
  if (!dummy) {
    nbl_engine_free(e);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  st = bind_initializers(g, e->state, dummy);
  free(dummy);
  if (st != NBL_OK) {
    nbl_error_prefix("%s", nbl_model_label(m));
    nbl_engine_free(e);
    return st;
  }
  for (int i = 0; i < g->n_inputs; i++) {
    nbl_id v = g->inputs[i];
    if (!g->values[v].init) e->feeds[e->n_feeds++] = v;
  }
  if (e->profile) {
    const nbl_gplan *p0 = e->plans[0];
    e->prof_ns = calloc((size_t)p0->n_steps + 1, sizeof(int64_t));
    e->prof_node = calloc((size_t)p0->n_steps + 1, sizeof(*e->prof_node));
    if (!e->prof_ns || !e->prof_node) {
      nbl_engine_free(e);
      return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
    }
  }
  nbl_blas_single_thread(); /* before the pool's threads run: OpenBLAS's own would compete with them */
  if (e->threads > 1) e->pool = nbl_pool_new(e->threads);
  *out = e;
  return NBL_OK;
}

static void free_top_values(nbl_engine *e) {
  if (!e->vals) return;
  for (int v = 0; v < e->g->n_values; v++) {
    nbl_slot_clear(&e->vals[v]);
    e->set[v] = 0;
  }
}

void nbl_engine_free(nbl_engine *e) {
  if (!e) return;
  free_top_values(e);
  if (e->state)
    for (int v = 0; v < e->g->n_values; v++) nbl_rt_tensor_free(&e->state[v]);
  for (int i = 0; i < e->n_plans; i++) nbl_plan_free(e->plans[i]);
  free(e->plans);
  nbl_pool_free(e->pool);
  for (size_t k = 0; e->fusion_state && k < nbl_fusions_count; k++)
    if (e->fusion_state[k]) nbl_fusions[k].free(e->fusion_state[k]);
  free(e->fusion_state);
  free(e->vals);
  free(e->set);
  free(e->bound);
  if (e->binds)
    for (int v = 0; v < e->g->n_values; v++) nbl_rt_tensor_free(&e->binds[v]);
  free(e->binds);
  free(e->state);
  free(e->feeds);
  nbl_out_arena_free(&e->ar);
  free(e->prof_ns);
  free(e->prof_node);
  free(e);
}

int nbl_engine_profile(const nbl_engine *e, int *n, const nbl_node *const **nodes,
                       const int64_t **ns, int *runs) {
  if (!e || !e->prof_ns) return 0;
  const nbl_gplan *p0 = e->plans[0];
  for (int s = 0; s < p0->n_steps; s++) /* steps may be fused after planning */
    e->prof_node[s] = p0->steps[s].fnode ? p0->steps[s].fnode : &e->g->nodes[p0->steps[s].node];
  *n = p0->n_steps;
  *nodes = e->prof_node;
  *ns = e->prof_ns;
  *runs = e->prof_runs;
  return 1;
}

void nbl_engine_reset_profile(nbl_engine *e) {
  if (!e || !e->prof_ns) return;
  memset(e->prof_ns, 0, sizeof(int64_t) * (size_t)e->plans[0]->n_steps);
  e->prof_runs = 0;
}

int nbl_engine_n_feeds(const nbl_engine *e) { return e->n_feeds; }
nbl_id nbl_engine_feed_value(const nbl_engine *e, int i) { return e->feeds[i]; }
const nbl_graph *nbl_engine_graph(const nbl_engine *e) { return e->g; }
int nbl_engine_threads(const nbl_engine *e) { return e->threads; }

void nbl_engine_get_stats(const nbl_engine *e, nbl_engine_stats *st) {
  *st = e->stats;
  st->arena_bytes = e->ar.arena_bytes;
}

/* The runtime kind of a declared type (-1: none the runtime holds). */
static int rt_kind_of(nbl_type_kind k) {
  switch (k) {
  case NBL_TYPE_TENSOR: return NBL_RT_TENSOR;
  case NBL_TYPE_SEQUENCE: return NBL_RT_SEQUENCE;
  case NBL_TYPE_OPTIONAL: return NBL_RT_OPTIONAL;
  default: return -1;
  }
}

static const char *a_kind(int kind) {
  return kind == NBL_RT_SEQUENCE ? "a sequence" : kind == NBL_RT_OPTIONAL ? "an optional" : kind < 0 ? "a map or sparse tensor" : "a tensor";
}

static nbl_status check_against_type(const nbl_value *val, const nbl_rt_tensor *t) {
  const nbl_type *ty = &val->type;
  int want = rt_kind_of(ty->kind);
  /* where an optional is declared, its element's kind is taken as the
   * optional holding it (as ONNX Runtime does; runtime/ops/sequence.c) */
  int inner = ty->kind == NBL_TYPE_OPTIONAL && ty->inner ? rt_kind_of(ty->inner->kind) : -2;
  if (ty->kind != NBL_TYPE_NONE && want != t->kind && inner != t->kind)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "input '%s': got %s, the model expects %s", val->name,
                      a_kind(t->kind), a_kind(want));
  if (ty->kind != NBL_TYPE_TENSOR) return NBL_OK;
  if (ty->elem != NBL_DT_UNDEFINED && ty->elem != t->dtype)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "input '%s': got element type %s, the model expects %s",
                      val->name, nbl_dtype_name(t->dtype), nbl_dtype_name(ty->elem));
  if (ty->rank >= 0) {
    if (ty->rank != t->rank)
      return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "input '%s': got rank %d, the model expects %d",
                        val->name, t->rank, ty->rank);
    for (int d = 0; d < t->rank; d++)
      if (ty->dims[d].value >= 0 && ty->dims[d].param == NULL && ty->dims[d].value != t->dims[d])
        return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                          "input '%s': dimension %d is %lld, the model expects %lld", val->name, d,
                          (long long)t->dims[d], (long long)ty->dims[d].value);
  }
  return NBL_OK;
}

/* A caller's value checked before it is bound: a tensor's shape, element
 * type and bytes (*need: the bytes its shape takes), a sequence's or
 * optional's elements the same way. Errors name input `name` (and the
 * element, item >= 0). */
static nbl_status check_view(const nbl_rt_tensor *t, const char *name, int64_t item, size_t *need) {
  char who[300];
  if (item < 0) snprintf(who, sizeof who, "input '%s'", name);
  else snprintf(who, sizeof who, "input '%s' element %lld", name, (long long)item);
  if (t->kind != NBL_RT_TENSOR) {
    const nbl_rt_seq *q = nbl_rt_seq_of(t);
    size_t n;
    for (int64_t i = 0; q && i < q->n; i++) {
      nbl_status st = check_view(&q->items[i], name, i, &n);
      if (st != NBL_OK) return st;
    }
    *need = 0;
    return NBL_OK;
  }
  if (t->rank < 0 || t->rank > NBL_MAX_RANK)
    return nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: rank %d exceeds the supported maximum %d", who, t->rank, NBL_MAX_RANK);
  int64_t numel = nbl_shape_numel(t->rank, t->dims);
  if (numel < 0) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: negative or overflowing shape", who);
  *need = t->dtype == NBL_DT_STRING ? (size_t)numel * sizeof(char *) : nbl_dtype_nbytes(t->dtype, numel);
  if (t->dtype != NBL_DT_STRING && nbl_dtype_bits(t->dtype) == 0)
    return nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: element type %s is not supported", who, nbl_dtype_name(t->dtype));
  if (t->nbytes < *need || (*need && !t->data))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: %zu bytes given, the shape needs %zu", who, t->nbytes, *need);
  return NBL_OK;
}

nbl_status nbl_engine_bind(nbl_engine *e, const char *name, const nbl_rt_tensor *view) {
  nbl_id v = nbl_graph_find(e->g, name);
  if (v == NBL_NONE || !(e->g->values[v].flags & (NBL_VAL_INPUT | NBL_VAL_OUTER)))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: graph '%s' has no input named '%s'",
                      nbl_model_label(e->m), e->g->name, name);
  nbl_rt_tensor_free(&e->binds[v]); /* a sequence's copy; nothing for a tensor's view */
  memset(&e->binds[v], 0, sizeof e->binds[v]);
  if (!view) {
    e->bound[v] = 0;
    return NBL_OK;
  }
  /* (before check_against_type, which reads the dims) */
  if (view->rank < 0 || view->rank > NBL_MAX_RANK)
    return nbl_errorf(NBL_ERR_UNSUPPORTED, "input '%s': rank %d exceeds the supported maximum %d",
                      name, view->rank, NBL_MAX_RANK);
  nbl_status st = check_against_type(&e->g->values[v], view);
  size_t need = 0;
  if (st == NBL_OK) st = check_view(view, name, -1, &need);
  if (st != NBL_OK) return st;
  if (view->kind != NBL_RT_TENSOR) { /* the engine's own copy of the list (freed on the next bind) */
    nbl_rt_tensor c;
    if ((st = nbl_rt_copy(&c, view)) != NBL_OK) return st;
    nbl_rt_tensor_free(&e->binds[v]);
    e->binds[v] = c;
    e->bound[v] = 1;
    return NBL_OK;
  }
  nbl_rt_tensor t = *view;
  t.numel = nbl_shape_numel(t.rank, t.dims);
  t.nbytes = need;
  t.owns = 0;
  e->binds[v] = t;
  e->bound[v] = 1;
  return NBL_OK;
}

nbl_rt_tensor *nbl_engine_state(nbl_engine *e, const char *name) {
  nbl_id v = nbl_graph_find(e->g, name);
  if (v == NBL_NONE || !e->g->values[v].init) {
    nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: no initializer named '%s'", nbl_model_label(e->m),
               name ? name : "");
    return NULL;
  }
  nbl_rt_tensor *t = &e->state[v];
  if (!t->owns) {
    nbl_rt_tensor c;
    if (nbl_rt_copy(&c, t) != NBL_OK) return NULL;
    *t = c;
  }
  /* The caller may now change the state in place: kernel caches derived from
   * constant weights (transformed Winograd weights, ...) are dropped and
   * rebuilt on the next run. */
  for (int i = 0; i < e->n_plans; i++) {
    nbl_gplan *p = e->plans[i];
    for (int k = 0; p && p->caches && k < p->n_steps; k++) {
      if (p->caches[k].free_fn) p->caches[k].free_fn(p->caches[k].data);
      p->caches[k].data = NULL;
      p->caches[k].free_fn = NULL;
    }
  }
  return t;
}

const nbl_rt_tensor *nbl_engine_output(const nbl_engine *e, int i) {
  if (!e->ran || i < 0 || i >= e->g->n_outputs) return NULL;
  nbl_id v = e->g->outputs[i];
  return e->set[v] ? &e->vals[v] : NULL;
}


nbl_rt_tensor *nbl_frame_lookup(nbl_frame *f, nbl_id v) {
  if (f->set[v]) return &f->vals[v];
  const nbl_value *val = &f->g->values[v];
  if (!(val->flags & NBL_VAL_OUTER) && f->g->values[v].producer != NBL_NONE) return NULL;
  for (nbl_frame *p = f->parent; p; p = p->parent) {
    nbl_id pv = nbl_graph_find(p->g, val->name);
    if (pv != NBL_NONE && p->set[pv]) return &p->vals[pv];
  }
  return NULL;
}

nbl_status nbl_frame_init(nbl_frame *f, nbl_engine *e, const nbl_gplan *p, nbl_frame *parent) {
  memset(f, 0, sizeof *f);
  f->e = e;
  f->p = p;
  f->g = p->g;
  f->parent = parent;
  size_t nv = (size_t)(p->g->n_values ? p->g->n_values : 1);
  f->vals = calloc(nv, sizeof(nbl_rt_tensor));
  f->set = calloc(nv, 1);
  if (!f->vals || !f->set) {
    free(f->vals);
    free(f->set);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  return bind_initializers(p->g, f->vals, f->set);
}

void nbl_frame_free(nbl_frame *f) {
  for (int v = 0; v < f->g->n_values; v++) nbl_rt_tensor_free(&f->vals[v]);
  free(f->vals);
  free(f->set);
}

nbl_status nbl_node_error_context(const nbl_node *nd, nbl_status st) {
  const char *msg = nbl_last_error();
  if (strncmp(msg, "node '", 6) != 0)
    nbl_error_prefix("node '%s' (%s)", nd->name ? nd->name : "", nd->op_type);
  return st;
}

nbl_status nbl_frame_run(nbl_frame *f) {
  nbl_engine *e = f->e;
  const nbl_gplan *p = f->p;
  const nbl_graph *g = f->g;
  nbl_status st = NBL_OK;
  const nbl_rt_tensor **ins = NULL;
  nbl_rt_tensor **outs = NULL;
  int cap_in = 0, cap_out = 0;
  for (int s = 0; s < p->n_steps && st == NBL_OK; s++) {
    const nbl_step *sp = &p->steps[s];
    const nbl_node *nd = sp->fnode ? sp->fnode : &g->nodes[sp->node];
    st = nbl_engine_check_terminate(e);
    if (st != NBL_OK) {
      nbl_error_prefix("before node '%s' (%s)", nd->name ? nd->name : "", nd->op_type);
      break;
    }
    /* at least NBL_KCTX_MIN_IN entries, NULL past the node's inputs (kernel.h) */
    if (nd->n_inputs > cap_in || !ins) {
      cap_in = nd->n_inputs > NBL_KCTX_MIN_IN ? nd->n_inputs : NBL_KCTX_MIN_IN;
      free(ins);
      ins = malloc(sizeof(*ins) * (size_t)cap_in);
    }
    if (nd->n_outputs > cap_out) {
      cap_out = nd->n_outputs;
      free(outs);
      outs = malloc(sizeof(*outs) * (size_t)cap_out);
    }
    if (!ins || (nd->n_outputs && !outs)) {
      st = nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
      break;
    }
    for (int k = nd->n_inputs; k < cap_in; k++) ins[k] = NULL;
    for (int k = 0; k < nd->n_inputs; k++) {
      nbl_id v = nd->inputs[k];
      ins[k] = NULL;
      if (v == NBL_NONE) continue;
      ins[k] = nbl_frame_lookup(f, v);
      if (!ins[k]) {
        st = nbl_errorf(NBL_ERR_INVALID_MODEL, "node '%s' (%s): input '%s' has no value",
                        nd->name ? nd->name : "", nd->op_type, g->values[v].name);
        break;
      }
      if (ins[k]->kind != NBL_RT_TENSOR && !(sp->def->flags & NBL_OPF_VALUES)) {
        st = nbl_errorf(NBL_ERR_INVALID_MODEL, "node '%s' (%s): input %d ('%s') is a %s; the op takes tensors",
                        nd->name ? nd->name : "", nd->op_type, k, g->values[v].name, nbl_rt_kind_name(ins[k]->kind));
        break;
      }
    }
    if (st != NBL_OK) break;
    for (int k = 0; k < nd->n_outputs; k++) {
      nbl_id v = nd->outputs[k];
      outs[k] = NULL;
      if (v == NBL_NONE) continue;
      nbl_slot_clear(&f->vals[v]);
      f->set[v] = 0;
      outs[k] = &f->vals[v];
    }
    struct nbl_exec call = {.f = f, .step = s, .st = sp};
    nbl_kctx ctx = {.graph = g,
                    .node = nd,
                    .opset = sp->opset,
                    .n_in = nd->n_inputs,
                    .in = ins,
                    .n_out = nd->n_outputs,
                    .out = outs,
                    .reference = e->reference,
                    .threads = e->threads,
                    .exec = &call};
    nbl_kernel_fn fn = (!e->reference && sp->def->fast) ? sp->def->fast : sp->def->ref;
    struct timespec t0, t1;
    int timed = f->top && e->prof_ns;
    if (timed) clock_gettime(CLOCK_MONOTONIC, &t0);
    st = fn(&ctx);
    if (timed) {
      clock_gettime(CLOCK_MONOTONIC, &t1);
      e->prof_ns[s] += (int64_t)(t1.tv_sec - t0.tv_sec) * 1000000000 + (t1.tv_nsec - t0.tv_nsec);
    }
    if (st == NBL_OK) {
      for (int k = 0; k < nd->n_outputs; k++) {
        nbl_id v = nd->outputs[k];
        if (v == NBL_NONE) continue;
        const nbl_rt_tensor *t = &f->vals[v];
        if (t->data == NULL && !(t->numel == 0 && t->dtype != NBL_DT_UNDEFINED)) {
          st = nbl_errorf(NBL_ERR_INTERNAL, "node '%s' (%s): kernel produced no output %d ('%s')",
                          nd->name ? nd->name : "", nd->op_type, k, g->values[v].name);
          break;
        }
        f->set[v] = 1;
        if (e->on_value) e->on_value(e->user, g->values[v].name, t);
      }
    } else {
      nbl_node_error_context(nd, st);
    }
    for (int k = 0; k < call.n_scratch; k++) nbl_rt_tensor_free(&call.scratch[k]);
    free(call.scratch);
    /* values captured by this node's subgraphs (and any other use ending here) */
    for (int k = p->free_start[s]; k < p->free_start[s + 1]; k++) {
      nbl_id v = p->free_list[k];
      if (f->set[v]) {
        nbl_slot_clear(&f->vals[v]);
        f->set[v] = 0;
        e->stats.frees_early++;
      }
    }
  }
  free(ins);
  free(outs);
  return st;
}

static nbl_status engine_run(nbl_engine *e) {
  const nbl_graph *g = e->g;
  free_top_values(e);
  e->ran = 0;
  /* bind state, then caller inputs */
  for (int i = 0; i < g->n_initializers; i++) {
    nbl_id v = g->initializers[i];
    if (!g->values[v].init) continue;
    e->vals[v] = e->state[v];
    e->vals[v].owns = 0;
    e->set[v] = 1;
  }
  for (nbl_id v = 0; v < g->n_values; v++) /* outer values of a training graph, bound by the caller */
    if ((g->values[v].flags & NBL_VAL_OUTER) && e->bound[v]) {
      e->vals[v] = e->binds[v];
      e->vals[v].owns = 0;
      e->set[v] = 1;
    }
  for (int i = 0; i < g->n_inputs; i++) {
    nbl_id v = g->inputs[i];
    if (e->bound[v]) {
      e->vals[v] = e->binds[v];
      e->vals[v].owns = 0; /* a view of the caller's tensor or of the engine's copy */
      e->set[v] = 1;
    } else if (!e->set[v]) {
      return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: input '%s' was not given",
                        nbl_model_label(e->m), g->values[v].name);
    }
  }
  nbl_status st = nbl_out_arena_begin_run(e);
  if (st != NBL_OK) return st;
  nbl_frame f = {.e = e, .p = e->plans[0], .g = g, .vals = e->vals, .set = e->set, .top = 1};
  st = nbl_frame_run(&f);
  if (st != NBL_OK) {
    nbl_error_prefix("%s", nbl_model_label(e->m));
    nbl_out_arena_forget(e);
    free_top_values(e);
    return st;
  }
  for (int i = 0; i < g->n_outputs; i++) {
    nbl_id v = g->outputs[i];
    if (!e->set[v]) {
      free_top_values(e);
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: graph output '%s' was not computed",
                        nbl_model_label(e->m), g->values[v].name);
    }
  }
  nbl_out_arena_end_run(e);
  e->ran = 1;
  e->stats.runs++;
  if (e->prof_ns) e->prof_runs++;
  return NBL_OK;
}

void nbl_engine_set_random_key(nbl_engine *e, uint64_t key) {
  if (!e) return;
  e->rng_key = key ? key : 1;
  atomic_store(&e->rng_pos, 0);
}

void nbl_engine_terminate(nbl_engine *e, int on) {
  if (e) atomic_store(&e->terminate, on ? 1 : 0);
}

nbl_status nbl_engine_check_terminate(nbl_engine *e) {
  if (atomic_load_explicit(&e->terminate, memory_order_relaxed))
    return nbl_errorf(NBL_ERR_TERMINATED, "run terminated");
  return NBL_OK;
}

nbl_status nbl_engine_run(nbl_engine *e) {
  nbl_isa cap = nbl_cpu_set_thread_cap(e->isa); /* the pool carries it into its workers */
  nbl_status st = engine_run(e);
  nbl_cpu_set_thread_cap(cap);
  return st;
}
