/*
 * session.c - the training session of nibble.h (nbl_train_*): parameters and
 * optimizer state, the gradient / optimizer / inference engines, train step
 * with gradient accumulation, optimizer step with global-norm clipping, eval
 * step. See train.h for how the pieces fit.
 *
 * Memory: the gradient part runs in its own engine, planned once, so its
 * activations live in one arena laid out from their lifetimes (each freed
 * after its last backward use); the gradients leave it as outputs and are
 * summed into one accumulator each; the optimizer part reads the
 * accumulators and the live parameters, and its outputs are copied over the
 * parameters and state in place.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/session.h"
#include "runtime/train/train.h"

#define DEFAULT_LR 0.01

static nbl_status oom(void) { return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory"); }

static int same_shape(const nbl_rt_tensor *a, const nbl_rt_tensor *b) {
  if (a->dtype != b->dtype || a->rank != b->rank) return 0;
  for (int d = 0; d < a->rank; d++)
    if (a->dims[d] != b->dims[d]) return 0;
  return 1;
}

/* A private deep copy of m (serialized and parsed again: nothing shared). */
static nbl_status deep_copy(const nbl_model *m, nbl_model **out) {
  void *buf = NULL;
  size_t len = 0;
  nbl_status st = nbl_model_save_buffer(m, &buf, &len);
  if (st) return st;
  st = nbl_model_load_buffer(buf, len, nbl_model_label(m), NULL, out);
  free(buf);
  return st;
}

/* Make main-graph initializer v of the work model a fresh malloc'd copy the
 * session may write (shape `t` when given: new zeroed storage of that type). */
static nbl_status own_initializer(nbl_model *w, nbl_id v, const nbl_rt_tensor *shape,
                                  nbl_rt_tensor *view) {
  nbl_graph *g = w->graph;
  nbl_value *val = &g->values[v];
  const nbl_tensor *old = val->init;
  if (old->dtype == NBL_DT_STRING || nbl_dtype_bits(old->dtype) < 8)
    return nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: trained tensor '%s' has element type %s",
                      nbl_model_label(w), val->name, nbl_dtype_name(old->dtype));
  nbl_tensor *t = shape ? nbl_tensor_new(w->arena, val->name, shape->dtype, shape->rank, shape->dims, NULL)
                        : nbl_tensor_new(w->arena, val->name, old->dtype, old->rank, old->dims, old->data);
  if (!t) return oom();
  nbl_graph_set_initializer(g, v, t);
  val = &g->values[v];
  if (val->type.kind == NBL_TYPE_TENSOR)
    nbl_type_set_tensor(w->arena, &val->type, t->dtype, t->rank, t->dims);
  nbl_status st = nbl_rt_from_ir(t, view);
  if (st) return st;
  if (view->nbytes && !view->data) return oom();
  return NBL_OK;
}

static int slot_find(const nbl_train_session *s, const char *name) {
  for (int i = 0; i < s->n_slots; i++)
    if (!strcmp(s->slots[i].name, name)) return i;
  return -1;
}

static int output_index(const nbl_graph *g, const char *name) {
  for (int i = 0; g && i < g->n_outputs; i++)
    if (!strcmp(g->values[g->outputs[i]].name, name)) return i;
  return -1;
}

/* Bind every input of engine e's graph that names a main-graph initializer:
 * trained tensors to their live storage, frozen ones to the model's data. */
static nbl_status bind_constants(nbl_train_session *s, nbl_engine *e) {
  const nbl_graph *g = nbl_engine_graph(e);
  for (int i = 0; i < g->n_inputs; i++) {
    const char *name = g->values[g->inputs[i]].name;
    int k = slot_find(s, name);
    if (k >= 0) {
      nbl_status st = nbl_engine_bind(e, name, &s->slots[k].t);
      if (st) return st;
      continue;
    }
    nbl_id mv = nbl_graph_find(s->work->graph, name);
    if (mv == NBL_NONE || !s->work->graph->values[mv].init) continue;
    nbl_rt_tensor view;
    nbl_status st = nbl_rt_from_ir(s->work->graph->values[mv].init, &view);
    if (st == NBL_OK && view.owns) {
      nbl_rt_tensor_free(&view);
      st = nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: frozen tensor '%s' holds strings",
                      nbl_model_label(s->work), name);
    }
    if (st == NBL_OK) st = nbl_engine_bind(e, name, &view);
    if (st) return st;
  }
  return NBL_OK;
}

static int has_input(const nbl_engine *e, const char *name) {
  const nbl_graph *g = nbl_engine_graph(e);
  nbl_id v = nbl_graph_find(g, name);
  return v != NBL_NONE && (g->values[v].flags & NBL_VAL_INPUT);
}

/* Feed the scalars lr and step when the engine's graph reads them. */
/* The key of the random stream of a train step (eval 0) or an eval step
 * (eval 1): the session's rng_seed, the number of train steps done
 * (rng_counter) and the data-parallel rank, mixed. Random ops of a training
 * graph (RandomNormalLike noise, ...) then draw the same values when a run
 * is repeated from the same seed or resumed from a checkpoint, and other
 * values on each step and each rank. */
static uint64_t random_key(const nbl_train_session *s, int eval) {
  return nbl_splitmix64(nbl_splitmix64(nbl_splitmix64(s->prog.rng_seed) ^ s->prog.rng_counter) ^ (uint64_t)nbl_ddp_rank(s)) ^
         (eval ? 0x6576616cull : 0);
}

static nbl_status bind_scalars(nbl_train_session *s, nbl_engine *e, double *lr_f64, float *lr_f32,
                               int64_t *step) {
  const nbl_graph *g = nbl_engine_graph(e);
  nbl_status st = NBL_OK;
  if (has_input(e, "lr")) {
    nbl_id v = nbl_graph_find(g, "lr");
    int dbl = g->values[v].type.kind == NBL_TYPE_TENSOR && g->values[v].type.elem == NBL_DT_DOUBLE;
    double lr = nbl_schedule_lr(&s->sched, s->prog.global_step);
    *lr_f64 = lr;
    *lr_f32 = (float)lr;
    nbl_rt_tensor t = {.dtype = dbl ? NBL_DT_DOUBLE : NBL_DT_FLOAT, .rank = 0, .numel = 1,
                       .data = dbl ? (void *)lr_f64 : (void *)lr_f32, .nbytes = dbl ? 8 : 4};
    st = nbl_engine_bind(e, "lr", &t);
  }
  if (st == NBL_OK && has_input(e, "step")) {
    *step = s->prog.global_step + 1;
    nbl_rt_tensor t = {.dtype = NBL_DT_INT64, .rank = 0, .numel = 1, .data = step, .nbytes = 8};
    st = nbl_engine_bind(e, "step", &t);
  }
  return st;
}

/* Copy engine output `out` over slot k (same type and shape, or an error
 * naming the binding). */
static nbl_status write_back(nbl_train_session *s, int k, const nbl_rt_tensor *t) {
  nbl_train_slot *sl = &s->slots[k];
  if (!t || !same_shape(t, &sl->t))
    return nbl_errorf(NBL_ERR_RUNTIME,
                      "%s: update_binding '%s' <- '%s': the new value %s the type and shape of "
                      "the initializer",
                      nbl_model_label(s->work), sl->name, sl->src, t ? "does not have" : "is missing, not");
  if (t->data != sl->t.data) memmove(sl->t.data, t->data, sl->t.nbytes);
  return NBL_OK;
}

/* ------------------------------------------------------------------ creation */

/* Run the initialization graph for state that is absent (no elements) or
 * all zeros. */
static nbl_status init_state(nbl_train_session *s) {
  const nbl_training_info *ti = &s->work->training[0];
  nbl_graph *mg = s->work->graph;
  int any = 0;
  for (int b = 0; b < ti->n_init_binding; b++) {
    nbl_id v = nbl_graph_find(mg, ti->init_binding[b].key);
    const nbl_tensor *t = v == NBL_NONE ? NULL : mg->values[v].init;
    if (!t) continue;
    int zero = 1;
    for (size_t i = 0; zero && i < t->nbytes; i++) zero = ((const unsigned char *)t->data)[i] == 0;
    any |= zero;
  }
  if (!any || !s->cut->init) return NBL_OK;
  nbl_engine *e = NULL;
  nbl_status st = nbl_engine_create(s->cut->m, s->cut->init, &s->eopt, &e);
  if (!st) st = bind_constants(s, e);
  if (!st) st = nbl_engine_run(e);
  for (int b = 0; !st && b < ti->n_init_binding; b++) {
    const char *key = ti->init_binding[b].key, *val = ti->init_binding[b].value;
    nbl_id v = nbl_graph_find(mg, key);
    const nbl_tensor *t = mg->values[v].init;
    int zero = 1;
    for (size_t i = 0; zero && i < t->nbytes; i++) zero = ((const unsigned char *)t->data)[i] == 0;
    if (!zero) continue;
    const nbl_rt_tensor *o = nbl_engine_output(e, output_index(s->cut->init, val));
    if (!o || o->dtype == NBL_DT_STRING) {
      st = nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: initialization_binding '%s' <- '%s': no value",
                      nbl_model_label(s->work), key, val);
      break;
    }
    int k = slot_find(s, key);
    nbl_rt_tensor cur;
    if (k >= 0) {
      cur = s->slots[k].t;
    } else if ((st = nbl_rt_from_ir(t, &cur))) {
      break;
    }
    if (!same_shape(o, &cur)) {
      if (t->nbytes) {
        st = nbl_errorf(NBL_ERR_INVALID_MODEL,
                        "%s: initialization_binding '%s' <- '%s': the value's type or shape differs "
                        "from the initializer's", nbl_model_label(s->work), key, val);
        break;
      }
      if ((st = own_initializer(s->work, v, o, &cur))) break; /* absent state: take its shape */
      if (k >= 0) s->slots[k].t = cur;
    } else if (k < 0) {
      if ((st = own_initializer(s->work, v, NULL, &cur))) break;
    }
    if (o->nbytes) memcpy(cur.data, o->data, o->nbytes);
  }
  nbl_engine_free(e);
  return st;
}

static nbl_status make_slots(nbl_train_session *s) {
  const nbl_training_info *ti = &s->work->training[0];
  nbl_graph *mg = s->work->graph;
  s->slots = calloc((size_t)ti->n_update_binding + 1, sizeof *s->slots);
  if (!s->slots) return oom();
  for (int b = 0; b < ti->n_update_binding; b++) {
    nbl_train_slot *sl = &s->slots[s->n_slots];
    sl->name = ti->update_binding[b].key;
    sl->src = ti->update_binding[b].value;
    if (slot_find(s, sl->name) >= 0)
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: update_binding lists '%s' twice",
                        nbl_model_label(s->work), sl->name);
    sl->value = nbl_graph_find(mg, sl->name);
    nbl_status st = own_initializer(s->work, sl->value, NULL, &sl->t);
    if (st) return st;
    sl->grad = -1;
    for (int i = 0; i < s->cut->n_grads; i++)
      if (!strcmp(s->cut->grad_param[i], sl->name)) sl->grad = i;
    sl->out = output_index(s->cut->grad, sl->src);
    sl->part = 0;
    if (sl->out < 0 || sl->out <= s->cut->n_grads) { /* not loss nor a gradient: the optimizer's */
      sl->part = 1;
      sl->out = output_index(s->cut->opt, sl->src);
    }
    if (sl->out < 0)
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: update_binding '%s' <- '%s': no part computes it",
                        nbl_model_label(s->work), sl->name, sl->src);
    s->n_slots++;
  }
  return NBL_OK;
}

nbl_status nbl_train_session_create(const nbl_model *m, const nbl_train_options *opt,
                                    nbl_train_session **out) {
  if (!m || !out) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_train_session_create: NULL argument");
  *out = NULL;
  nbl_train_session *s = calloc(1, sizeof *s);
  if (!s) return oom();
  if (opt) {
    s->eopt.threads = opt->threads;
    s->eopt.reference = opt->reference;
    s->eopt.profile = opt->profile ? 1 : 0;
    s->max_grad_norm = opt->max_grad_norm > 0 ? opt->max_grad_norm : 0;
  }
  nbl_status st = nbl_schedule_parse("constant", DEFAULT_LR, 0, &s->sched);
  if (!st) st = deep_copy(m, &s->work);
  if (!st) st = nbl_train_cut_build(s->work, &s->cut);
  if (!st) st = make_slots(s);
  if (!st) st = init_state(s);
  int is_ckpt = 0;
  if (!st) st = nbl_train_read_meta(s, s->work, nbl_model_label(s->work), &is_ckpt);
  if (!st) st = nbl_engine_create(s->cut->m, s->cut->grad, &s->eopt, &s->eg);
  if (!st) st = bind_constants(s, s->eg);
  if (!st && s->cut->opt) st = nbl_engine_create(s->cut->m, s->cut->opt, &s->eopt, &s->eo);
  if (!st && s->eo) st = bind_constants(s, s->eo);
  if (!st) {
    const nbl_graph *g = s->cut->grad;
    s->acc = calloc((size_t)s->cut->n_grads + 1, sizeof *s->acc);
    s->feeds = calloc((size_t)g->n_inputs + 1, sizeof *s->feeds);
    s->eval_outs = calloc((size_t)s->work->graph->n_outputs + 1, sizeof *s->eval_outs);
    if (!s->acc || !s->feeds || !s->eval_outs) st = oom();
    const nbl_graph *alg = s->work->training[0].algorithm;
    for (int i = 0; !st && i < g->n_inputs; i++) {
      const nbl_value *v = &g->values[g->inputs[i]];
      nbl_id av = nbl_graph_find(alg, v->name);
      if (av != NBL_NONE && (alg->values[av].flags & NBL_VAL_INPUT) && strcmp(v->name, "lr") &&
          strcmp(v->name, "step"))
        s->feeds[s->n_feeds++] = g->inputs[i];
    }
  }
  if (st) {
    nbl_train_session_free(s);
    return st;
  }
  s->version = 1;
  *out = s;
  return NBL_OK;
}

void nbl_train_session_free(nbl_train_session *s) {
  if (!s) return;
  nbl_engine_free(s->eg);
  nbl_engine_free(s->eo);
  nbl_engine_free(s->ee);
  nbl_ddp_free(s);
  free(s->grad_done);
  for (int i = 0; s->acc && s->cut && i < s->cut->n_grads; i++) nbl_rt_tensor_free(&s->acc[i]);
  free(s->acc);
  free(s->feeds);
  if (s->eval_outs && s->work) nbl_host_outputs_release(s->eval_outs, s->work->graph->n_outputs);
  free(s->eval_outs);
  free(s->slots);
  for (int i = 0; i < s->n_meta; i++) {
    free(s->meta_key[i]);
    free(s->meta_val[i]);
  }
  nbl_train_cut_free(s->cut);
  nbl_model_free(s->work);
  free(s);
}

nbl_engine *nbl_train_engine(nbl_train_session *s, int which) {
  return which == 0 ? s->eg : which == 1 ? s->eo : s->ee;
}

nbl_status nbl_train_hook_grad_engine(nbl_train_session *s, nbl_value_cb cb) {
  nbl_engine_options o = s->eopt;
  o.on_value = cb;
  o.user = s;
  nbl_engine *e = NULL;
  nbl_status st = nbl_engine_create(s->cut->m, s->cut->grad, &o, &e);
  if (!st) st = bind_constants(s, e);
  if (st) {
    nbl_engine_free(e);
    return st;
  }
  if (!s->grad_done && !(s->grad_done = calloc((size_t)s->cut->n_grads + 1, 1))) {
    nbl_engine_free(e);
    return oom();
  }
  nbl_engine_free(s->eg);
  s->eg = e;
  return NBL_OK;
}

/* ------------------------------------------------------------------ inputs and outputs */

int nbl_train_input_count(const nbl_train_session *s) { return s ? s->n_feeds : 0; }

const char *nbl_train_input_name(const nbl_train_session *s, int i) {
  if (!s || i < 0 || i >= s->n_feeds) return NULL;
  return s->cut->grad->values[s->feeds[i]].name;
}

nbl_status nbl_train_input_info(const nbl_train_session *s, int i, nbl_host_tensor *info) {
  if (!s || !info || i < 0 || i >= s->n_feeds)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "training input index %d out of range", i);
  nbl_host_info(&s->cut->grad->values[s->feeds[i]], info);
  return NBL_OK;
}

int nbl_eval_output_count(const nbl_train_session *s) { return s ? s->work->graph->n_outputs : 0; }

nbl_status nbl_eval_output_info(const nbl_train_session *s, int i, nbl_host_tensor *info) {
  if (!s || !info || i < 0 || i >= s->work->graph->n_outputs)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "eval output index %d out of range", i);
  nbl_host_info(&s->work->graph->values[s->work->graph->outputs[i]], info);
  return NBL_OK;
}

int nbl_train_param_count(const nbl_train_session *s) { return s ? s->n_slots : 0; }

nbl_status nbl_train_param(const nbl_train_session *s, int i, nbl_host_tensor *view) {
  if (!s || !view || i < 0 || i >= s->n_slots)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "trained tensor index %d out of range", i);
  *view = nbl_host_view(s->slots[i].name, &s->slots[i].t);
  return NBL_OK;
}

int nbl_train_grad_count(const nbl_train_session *s) { return s ? s->cut->n_grads : 0; }

nbl_status nbl_train_grad(nbl_train_session *s, int i, nbl_host_tensor *view) {
  if (!s || !view || i < 0 || i >= s->cut->n_grads)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "gradient index %d out of range", i);
  const nbl_rt_tensor *t = &s->acc[i];
  if (s->n_accum == 0 || !t->data)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "gradient '%s_grad': no train step since the last reset",
                      s->cut->grad_param[i]);
  *view = nbl_host_view(s->cut->grad_param[i], t);
  return NBL_OK;
}

/* Bind the caller's tensors to e's inputs `allowed` (ids of e's graph). */
static nbl_status bind_feeds(nbl_engine *e, const nbl_id *allowed, int n_allowed, int n,
                             const nbl_host_tensor *in, const char *what) {
  const nbl_graph *g = nbl_engine_graph(e);
  for (int i = 0; i < n_allowed; i++) nbl_engine_bind(e, g->values[allowed[i]].name, NULL);
  for (int i = 0; i < n; i++) {
    const nbl_host_tensor *h = &in[i];
    int ok = 0;
    for (int k = 0; h->name && k < n_allowed; k++) ok |= !strcmp(g->values[allowed[k]].name, h->name);
    if (!ok)
      return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: '%s' is not an input of the model%s", what,
                        h->name ? h->name : "(no name)", n_allowed ? "" : " (it takes none)");
    nbl_status st = nbl_engine_bind_host(e, h);
    if (st) return st;
  }
  for (int i = 0; i < n_allowed; i++) {
    int given = 0;
    for (int k = 0; k < n; k++) given |= in[k].name && !strcmp(in[k].name, g->values[allowed[i]].name);
    if (!given)
      return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: input '%s' was not given", what,
                        g->values[allowed[i]].name);
  }
  return NBL_OK;
}

/* ------------------------------------------------------------------ steps */

nbl_status nbl_train_accumulate(nbl_train_session *s, int i, const nbl_rt_tensor *g) {
  nbl_rt_tensor *a = &s->acc[i];
  nbl_status st;
  if (!g || (g->dtype != NBL_DT_FLOAT && g->dtype != NBL_DT_DOUBLE))
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: gradient '%s_grad' has element type %s",
                      nbl_model_label(s->work), s->cut->grad_param[i],
                      nbl_dtype_name(g ? g->dtype : NBL_DT_UNDEFINED));
  if (s->n_accum == 0 || !same_shape(a, g)) {
    if (s->n_accum && !same_shape(a, g))
      return nbl_errorf(NBL_ERR_RUNTIME, "%s: gradient '%s_grad' changed shape between steps",
                        nbl_model_label(s->work), s->cut->grad_param[i]);
    if (!same_shape(a, g) || !a->data) {
      nbl_rt_tensor_free(a);
      memset(a, 0, sizeof *a);
      if ((st = nbl_rt_copy(a, g))) return st;
    } else if (g->nbytes) {
      memcpy(a->data, g->data, g->nbytes);
    }
  } else if (g->dtype == NBL_DT_FLOAT) {
    float *d = a->data;
    const float *x = g->data;
    for (int64_t k = 0; k < a->numel; k++) d[k] += x[k];
  } else {
    double *d = a->data;
    const double *x = g->data;
    for (int64_t k = 0; k < a->numel; k++) d[k] += x[k];
  }
  return NBL_OK;
}

nbl_status nbl_train_step(nbl_train_session *s, int n_inputs, const nbl_host_tensor *inputs,
                          float *loss) {
  if (!s || (n_inputs && !inputs))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_train_step: NULL argument");
  double lr64;
  float lr32;
  int64_t step;
  nbl_status st = bind_feeds(s->eg, s->feeds, s->n_feeds, n_inputs, inputs, "train step");
  if (!st) st = bind_scalars(s, s->eg, &lr64, &lr32, &step);
  nbl_engine_set_random_key(s->eg, random_key(s, 0));
  if (!st && s->ddp) st = nbl_ddp_before_step(s);
  if (!st) st = nbl_engine_run(s->eg);
  if (s->ddp) {
    nbl_status hs = nbl_ddp_after_run(s, st);
    if (!st) st = hs;
  }
  if (st) return st;
  const nbl_rt_tensor *l = nbl_engine_output(s->eg, 0);
  if (!l || l->numel != 1 || (l->dtype != NBL_DT_FLOAT && l->dtype != NBL_DT_DOUBLE))
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: the loss '%s' is not a float scalar",
                      nbl_model_label(s->work), s->cut->grad->values[s->cut->grad->outputs[0]].name);
  if (loss) *loss = (float)nbl_rt_get_f64(l, 0);
  /* sum the gradients (those the exchange's hook saw during the run are summed already) */
  for (int i = 0; i < s->cut->n_grads; i++) {
    if (s->grad_done && s->grad_done[i]) continue;
    if ((st = nbl_train_accumulate(s, i, nbl_engine_output(s->eg, 1 + i)))) return st;
  }
  /* running statistics and other update values without a gradient */
  int wrote = 0;
  for (int k = 0; k < s->n_slots; k++) {
    if (s->slots[k].part != 0) continue;
    if ((st = write_back(s, k, nbl_engine_output(s->eg, s->slots[k].out)))) return st;
    wrote = 1;
  }
  if (wrote) s->version++;
  s->n_accum++;
  s->prog.rng_counter++;
  return s->ddp ? nbl_ddp_after_step(s) : NBL_OK;
}

nbl_status nbl_train_reset_grad(nbl_train_session *s) {
  if (!s) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_train_reset_grad: NULL session");
  s->n_accum = 0;
  return NBL_OK;
}

nbl_status nbl_optimizer_step(nbl_train_session *s) {
  if (!s) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_optimizer_step: NULL session");
  if (!s->eo)
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: no update_binding value depends on a gradient "
                      "(the model has no optimizer)", nbl_model_label(s->work));
  if (s->n_accum == 0 && !s->ddp)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                      "nbl_optimizer_step: no gradients (no train step since the last reset)");
  if (s->ddp) { /* the gradients of the global batch, the same on every rank */
    nbl_status xs = nbl_ddp_finish(s);
    if (xs) return xs;
  }
  double sq = 0;
  for (int i = 0; i < s->cut->n_grads; i++) {
    const nbl_rt_tensor *a = &s->acc[i];
    if (a->dtype == NBL_DT_FLOAT) {
      const float *d = a->data;
      for (int64_t k = 0; k < a->numel; k++) sq += (double)d[k] * d[k];
    } else {
      const double *d = a->data;
      for (int64_t k = 0; k < a->numel; k++) sq += d[k] * d[k];
    }
  }
  s->last_norm = sqrt(sq);
  if (s->max_grad_norm > 0 && s->last_norm > s->max_grad_norm) {
    double c = s->max_grad_norm / (s->last_norm + 1e-6);
    for (int i = 0; i < s->cut->n_grads; i++) {
      nbl_rt_tensor *a = &s->acc[i];
      if (a->dtype == NBL_DT_FLOAT) {
        float *d = a->data, cf = (float)c;
        for (int64_t k = 0; k < a->numel; k++) d[k] *= cf;
      } else {
        double *d = a->data;
        for (int64_t k = 0; k < a->numel; k++) d[k] *= c;
      }
    }
  }
  const nbl_graph *og = s->cut->opt;
  for (int i = 0; i < og->n_inputs; i++) {
    const char *name = og->values[og->inputs[i]].name;
    for (int k = 0; k < s->cut->n_grads; k++) {
      size_t pl = strlen(s->cut->grad_param[k]);
      if (strncmp(name, s->cut->grad_param[k], pl) || strcmp(name + pl, "_grad")) continue;
      nbl_status st = nbl_engine_bind(s->eo, name, &s->acc[k]);
      if (st) return st;
    }
  }
  double lr64;
  float lr32;
  int64_t step;
  nbl_status st = bind_scalars(s, s->eo, &lr64, &lr32, &step);
  if (!st) st = nbl_engine_run(s->eo);
  for (int k = 0; !st && k < s->n_slots; k++)
    if (s->slots[k].part == 1) st = write_back(s, k, nbl_engine_output(s->eo, s->slots[k].out));
  if (st) return st;
  s->prog.global_step++;
  s->version++;
  return NBL_OK;
}

nbl_status nbl_eval_step(nbl_train_session *s, int n_inputs, const nbl_host_tensor *inputs,
                         const nbl_host_tensor **outputs) {
  if (!s || (n_inputs && !inputs))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_eval_step: NULL argument");
  if (!s->ee || s->eval_version != s->version) {
    /* a new engine: kernel caches derived from the weights start afresh */
    nbl_engine_free(s->ee);
    s->ee = NULL;
    nbl_status st = nbl_engine_create(s->work, NULL, &s->eopt, &s->ee);
    if (st) return st;
    s->eval_version = s->version;
  }
  nbl_engine *e = s->ee;
  int nf = nbl_engine_n_feeds(e);
  nbl_id *f = malloc(sizeof(nbl_id) * (size_t)(nf + 1));
  if (!f) return oom();
  for (int i = 0; i < nf; i++) f[i] = nbl_engine_feed_value(e, i);
  nbl_status st = bind_feeds(e, f, nf, n_inputs, inputs, "eval step");
  free(f);
  nbl_engine_set_random_key(e, random_key(s, 1));
  if (!st) st = nbl_engine_run(e);
  if (st) return st;
  if ((st = nbl_engine_host_outputs(e, s->eval_outs))) return st;
  if (outputs) *outputs = s->eval_outs;
  return NBL_OK;
}

/* ------------------------------------------------------------------ rate, progress, metadata */

nbl_status nbl_train_set_lr(nbl_train_session *s, double lr) {
  if (!s) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_train_set_lr: NULL session");
  return nbl_schedule_parse("constant", lr, 0, &s->sched);
}

nbl_status nbl_train_set_schedule(nbl_train_session *s, const char *spec, double base_lr,
                                  int64_t total_steps) {
  if (!s) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_train_set_schedule: NULL session");
  return nbl_schedule_parse(spec, base_lr, total_steps, &s->sched);
}

double nbl_train_lr(const nbl_train_session *s) {
  return s ? nbl_schedule_lr(&s->sched, s->prog.global_step) : 0;
}

double nbl_train_last_grad_norm(const nbl_train_session *s) { return s ? s->last_norm : 0; }

void nbl_train_get_progress(const nbl_train_session *s, nbl_train_progress *p) {
  if (s && p) *p = s->prog;
}

void nbl_train_set_progress(nbl_train_session *s, const nbl_train_progress *p) {
  if (s && p) s->prog = *p;
}

int nbl_train_meta_key_ok(const char *k) {
  if (!k || !*k || strlen(k) > 64) return 0;
  for (; *k; k++)
    if (!((*k >= 'a' && *k <= 'z') || (*k >= 'A' && *k <= 'Z') || (*k >= '0' && *k <= '9') ||
          *k == '_' || *k == '-'))
      return 0;
  return 1;
}

nbl_status nbl_train_set_meta(nbl_train_session *s, const char *key, const char *value) {
  if (!s || !value) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_train_set_meta: NULL argument");
  if (!nbl_train_meta_key_ok(key))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                      "metadata key '%s': use 1 to 64 letters, digits, '_' or '-'", key ? key : "");
  int i = 0;
  while (i < s->n_meta && strcmp(s->meta_key[i], key)) i++;
  if (i == NBL_TRAIN_MAX_META)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "metadata key '%s': at most %d keys", key,
                      NBL_TRAIN_MAX_META);
  char *v = strdup(value), *k = i < s->n_meta ? NULL : strdup(key);
  if (!v || (i == s->n_meta && !k)) {
    free(v);
    free(k);
    return oom();
  }
  if (i == s->n_meta) s->meta_key[s->n_meta++] = k;
  free(s->meta_val[i]);
  s->meta_val[i] = v;
  return NBL_OK;
}

const char *nbl_train_get_meta(const nbl_train_session *s, const char *key) {
  for (int i = 0; s && key && i < s->n_meta; i++)
    if (!strcmp(s->meta_key[i], key)) return s->meta_val[i];
  return NULL;
}

/* ------------------------------------------------------------------ checkpoints */

nbl_status nbl_train_adopt(nbl_train_session *s, const nbl_model *ck, const char *label) {
  const nbl_graph *g = ck->graph;
  for (int pass = 0; pass < 2; pass++)
    for (int k = 0; k < s->n_slots; k++) {
      const nbl_train_slot *sl = &s->slots[k];
      nbl_id v = nbl_graph_find(g, sl->name);
      const nbl_tensor *t = v == NBL_NONE ? NULL : g->values[v].init;
      if (pass == 1) {
        if (t->nbytes) memcpy(sl->t.data, t->data, t->nbytes);
        continue;
      }
      if (!t)
        return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: no initializer '%s' (a checkpoint of another model?)",
                          label, sl->name);
      int same = t->dtype == sl->t.dtype && t->rank == sl->t.rank && t->nbytes == sl->t.nbytes;
      for (int d = 0; same && d < t->rank; d++) same = t->dims[d] == sl->t.dims[d];
      if (!same)
        return nbl_errorf(NBL_ERR_INVALID_MODEL,
                          "%s: initializer '%s' differs in type or shape from the model's (a "
                          "checkpoint of another model?)", label, sl->name);
    }
  s->version++;
  s->n_accum = 0;
  return NBL_OK;
}
