/* one_node.h - the one-node test harness: a model holding one node, run
 * through the public session API on inputs given as host tensors. Every test
 * that runs a single op uses it (tests/runtime/ops/, the format and kernel
 * tests, grad_check.h's backward-op checks). Header-only, static functions.
 *
 *   one *o = one_new("Slice", 13, 5, 1);          or one_new_domain(op, domain, ...)
 *   nbl_node_set_attr_int(G(o), o->node, ...);    attributes on the node
 *   one_in(o, 0, NBL_DT_FLOAT, rank, dims, data); each input (one_ins: an array)
 *   one_in(o, 3, NBL_DT_UNDEFINED, 0, NULL, NULL); an omitted optional input ("")
 *   one_skip_out(o, 1);                           an output that is not requested
 *   one_run(o, reference);                        a new session, run once
 *   ... o->out[k] ...                             requested outputs, in order
 *   one_rerun(o);                                 the same session on the inputs' current data
 *   one_free(o);
 *
 * The inputs are named x0, x1, ..., the outputs y0, y1, ..., the node "n0"
 * (error messages name them). At each one_run the graph inputs are typed
 * from the tensors given, as in a model file. one_call does all of it in
 * one call and copies the outputs out. */
#ifndef NBL_TEST_ONE_NODE_H
#define NBL_TEST_ONE_NODE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "nibble.h"

#define ONE_MAX_IN 16
#define ONE_MAX_OUT 8

typedef struct one {
  nbl_model *m;
  nbl_id node;
  int n_in, n_out;
  nbl_host_tensor in[ONE_MAX_IN]; /* as given by one_in (dtype UNDEFINED: not given) */
  int threads;                    /* of the sessions one_run makes: 2 unless changed */
  int reference;                  /* of the current session */
  nbl_session *s;
  const nbl_host_tensor *out; /* the last run's requested outputs, in order */
} one;

/* A host tensor view of `data` (not copied; no name). A string tensor's data
 * is an array of char pointers. */
static inline nbl_host_tensor ht(nbl_dtype dt, int rank, const int64_t *dims, const void *data) {
  nbl_host_tensor t;
  memset(&t, 0, sizeof t);
  t.dtype = dt;
  t.rank = rank;
  for (int i = 0; i < rank; i++) t.dims[i] = dims[i];
  t.data = (void *)data;
  int64_t n = nbl_shape_numel(rank, dims);
  t.nbytes = dt == NBL_DT_STRING ? (size_t)n * sizeof(char *) : nbl_dtype_nbytes(dt, n);
  return t;
}
/* An omitted input in an array given to one_ins / one_call. */
#define ONE_NONE ((nbl_host_tensor){.dtype = NBL_DT_UNDEFINED})

/* A graph with one node `op` of `domain` (imported at `opset`; a domain other
 * than the default one also imports ai.onnx 17), graph inputs x0..x{n_in-1}
 * and outputs y0..y{n_out-1}. Free with one_free. */
static inline one *one_new_domain(const char *op, const char *domain, int opset, int n_in, int n_out) {
  if (n_in > ONE_MAX_IN || n_out > ONE_MAX_OUT) {
    fprintf(stderr, "one_node.h: %s with %d inputs / %d outputs: raise ONE_MAX_IN/OUT\n", op, n_in, n_out);
    abort();
  }
  one *o = calloc(1, sizeof *o);
  o->m = nbl_model_new();
  int dflt = domain[0] == 0;
  nbl_model_set_opset(o->m, "", dflt ? opset : 17);
  if (!dflt) nbl_model_set_opset(o->m, domain, opset);
  nbl_graph *g = o->m->graph;
  nbl_id in[ONE_MAX_IN], out[ONE_MAX_OUT];
  char name[16];
  for (int i = 0; i < n_in; i++) {
    snprintf(name, sizeof name, "x%d", i);
    in[i] = nbl_graph_add_value(g, name);
    nbl_graph_add_input(g, in[i]);
  }
  for (int i = 0; i < n_out; i++) {
    snprintf(name, sizeof name, "y%d", i);
    out[i] = nbl_graph_add_value(g, name);
    nbl_graph_add_output(g, out[i]);
  }
  o->node = nbl_graph_add_node(g, op, domain, "n0", n_in, in, n_out, out);
  o->n_in = n_in;
  o->n_out = n_out;
  o->threads = 2;
  return o;
}

/* One node of the default domain. */
static inline one *one_new(const char *op, int opset, int n_in, int n_out) {
  return one_new_domain(op, "", opset, n_in, n_out);
}

static inline nbl_graph *G(one *o) { return o->m->graph; }
static inline const float *outf(one *o, int i) { return (const float *)o->out[i].data; }
static inline const double *outd(one *o, int i) { return (const double *)o->out[i].data; }

/* Takes value v out of the graph's list (inputs or outputs) and marks it dead. */
static inline void one_drop_(nbl_graph *g, nbl_id *list, int *n, nbl_id v, unsigned flag) {
  int k = 0;
  for (int j = 0; j < *n; j++)
    if (list[j] != v) list[k++] = list[j];
  *n = k;
  g->values[v].flags &= ~flag;
  g->values[v].dead = true;
}

/* Input i: dt/rank/dims/data (data not copied, read at each run). dtype
 * NBL_DT_UNDEFINED makes it an omitted optional input (""), for good. */
static inline void one_in(one *o, int i, nbl_dtype dt, int rank, const int64_t *dims, const void *data) {
  nbl_graph *g = G(o);
  nbl_id v = g->nodes[o->node].inputs[i];
  if (dt == NBL_DT_UNDEFINED) {
    if (v != NBL_NONE) {
      nbl_node_set_input(g, o->node, i, NBL_NONE);
      one_drop_(g, g->inputs, &g->n_inputs, v, NBL_VAL_INPUT);
    }
    memset(&o->in[i], 0, sizeof o->in[i]);
    return;
  }
  o->in[i] = ht(dt, rank, dims, data);
  o->in[i].name = v != NBL_NONE ? g->values[v].name : NULL;
}

/* Inputs 0..n-1 from host tensors (their names are not used; dtype
 * UNDEFINED, e.g. ONE_NONE: omitted). */
static inline void one_ins(one *o, int n, const nbl_host_tensor *in) {
  for (int i = 0; i < n; i++) one_in(o, i, in[i].dtype, in[i].rank, in[i].dims, in[i].data);
}

/* Output i is not requested (the node's output becomes ""): call before one_run. */
static inline void one_skip_out(one *o, int i) {
  nbl_graph *g = G(o);
  nbl_id v = g->nodes[o->node].outputs[i];
  if (v == NBL_NONE) return;
  g->nodes[o->node].outputs[i] = NBL_NONE;
  g->values[v].producer = NBL_NONE;
  one_drop_(g, g->outputs, &g->n_outputs, v, NBL_VAL_OUTPUT);
}

/* Runs the current session on the inputs' current data (a new session, on
 * the reference kernels as at the last one_run, when there is none). */
static inline nbl_status one_rerun(one *o);

/* A new session (reference kernels when reference != 0, o->threads threads)
 * on the model as it is now, the graph inputs typed from the inputs given,
 * run once. Returns the status of creating or running it. */
static inline nbl_status one_run(one *o, int reference) {
  nbl_session_free(o->s);
  o->s = NULL;
  o->out = NULL;
  o->reference = reference;
  nbl_graph *g = G(o);
  for (int i = 0; i < o->n_in; i++) {
    nbl_id v = g->nodes[o->node].inputs[i];
    const nbl_host_tensor *t = &o->in[i];
    if (v != NBL_NONE && t->dtype != NBL_DT_UNDEFINED)
      nbl_type_set_tensor(o->m->arena, &g->values[v].type, t->dtype, t->rank, t->dims);
  }
  nbl_session_options opt = {.threads = o->threads, .reference = reference};
  nbl_status st = nbl_session_create(o->m, &opt, &o->s);
  if (st) return st;
  return one_rerun(o);
}

static inline nbl_status one_rerun(one *o) {
  if (!o->s) return one_run(o, o->reference);
  nbl_host_tensor feeds[ONE_MAX_IN];
  int nf = 0;
  for (int i = 0; i < o->n_in; i++)
    if (o->in[i].dtype != NBL_DT_UNDEFINED) feeds[nf++] = o->in[i];
  return nbl_session_run(o->s, nf, feeds, &o->out);
}

static inline void one_free(one *o) {
  if (!o) return;
  nbl_session_free(o->s);
  nbl_model_free(o->m);
  free(o);
}

/* Sets attributes on the node (for one_call). */
typedef void (*one_attr_fn)(nbl_graph *g, nbl_id n);

/* All in one: node `op` (default domain, opset; attributes set by af when not
 * NULL) on ins[0..n_in) (dtype UNDEFINED: omitted), output i requested
 * unless want && !want[i], run with `threads` threads (reference kernels when
 * reference != 0). outs[i] receives a malloc'd copy of each requested output
 * (the caller frees its data; name NULL). Returns the status of creating or
 * running the session. */
static inline nbl_status one_call(const char *op, int opset, one_attr_fn af, int n_in,
                                  const nbl_host_tensor *ins, int n_out, const int *want,
                                  nbl_host_tensor *outs, int reference, int threads) {
  one *o = one_new(op, opset, n_in, n_out);
  if (af) af(G(o), o->node);
  one_ins(o, n_in, ins);
  for (int i = 0; i < n_out; i++)
    if (want && !want[i]) one_skip_out(o, i);
  o->threads = threads;
  nbl_status st = one_run(o, reference);
  for (int i = 0, k = 0; st == NBL_OK && i < n_out; i++) {
    if (want && !want[i]) continue;
    outs[i] = o->out[k++];
    outs[i].name = NULL;
    outs[i].data = malloc(outs[i].nbytes ? outs[i].nbytes : 1);
    if (outs[i].nbytes) memcpy(outs[i].data, o->out[k - 1].data, outs[i].nbytes);
  }
  one_free(o);
  return st;
}

#endif
