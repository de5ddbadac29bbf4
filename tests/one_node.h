/* one_node.h - test helper: a model with one node, run through the public
 * session API (used by the op-family tests). Header-only, static functions. */
#ifndef NBL_TEST_ONE_NODE_H
#define NBL_TEST_ONE_NODE_H

#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "nibble.h"

#define MAX_IN 12
#define MAX_OUT 6

typedef struct one {
  nbl_model *m;
  nbl_id node;
  int n_in;
  nbl_host_tensor in[MAX_IN];
  nbl_session *s;
  const nbl_host_tensor *out;
} one;

/* A graph with one node `op` of `domain` (imported at `opset`), inputs
 * x0..x{n_in-1} and outputs y0..y{n_out-1}. */
static inline one *one_new_domain(const char *op, const char *domain, int opset, int n_in, int n_out) {
  one *o = calloc(1, sizeof *o);
  o->m = nbl_model_new();
  int train = strcmp(domain, "") != 0;
  nbl_model_set_opset(o->m, "", train ? 13 : opset);
  if (train) nbl_model_set_opset(o->m, domain, opset);
  nbl_graph *g = o->m->graph;
  nbl_id in[MAX_IN], out[MAX_OUT];
  static const char *inames[] = {"x0", "x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8", "x9", "x10", "x11"};
  static const char *onames[] = {"y0", "y1", "y2", "y3", "y4", "y5"};
  for (int i = 0; i < n_in; i++) {
    in[i] = nbl_graph_add_value(g, inames[i]);
    nbl_graph_add_input(g, in[i]);
    o->in[i].name = inames[i];
  }
  for (int i = 0; i < n_out; i++) {
    out[i] = nbl_graph_add_value(g, onames[i]);
    nbl_graph_add_output(g, out[i]);
  }
  o->node = nbl_graph_add_node(g, op, domain, "n", n_in, in, n_out, out);
  o->n_in = n_in;
  return o;
}

static inline void one_in(one *o, int i, nbl_dtype dt, int rank, const int64_t *dims, const void *data) {
  nbl_host_tensor *t = &o->in[i];
  t->dtype = dt;
  t->rank = rank;
  int64_t n = 1;
  for (int d = 0; d < rank; d++) n *= (t->dims[d] = dims[d]);
  t->data = (void *)data;
  t->nbytes = nbl_dtype_nbytes(dt, n);
}

static inline nbl_status one_run(one *o, int reference) {
  nbl_session_free(o->s);
  o->s = NULL;
  nbl_session_options opt = {.threads = 2, .reference = reference};
  nbl_status st = nbl_session_create(o->m, &opt, &o->s);
  if (st) return st;
  return nbl_session_run(o->s, o->n_in, o->in, &o->out);
}

static inline void one_free(one *o) {
  nbl_session_free(o->s);
  nbl_model_free(o->m);
  free(o);
}

static inline nbl_graph *G(one *o) { return o->m->graph; }
static inline const float *outf(one *o, int i) { return (const float *)o->out[i].data; }
static inline const double *outd(one *o, int i) { return (const double *)o->out[i].data; }

/* One node of the default domain. */
static inline one *one_new(const char *op, int opset, int n_in, int n_out) {
  return one_new_domain(op, "", opset, n_in, n_out);
}

#endif
