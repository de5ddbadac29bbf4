/* node_run.h - test helper: run one node of the default domain through the
 * public session API, with inputs given as host tensors (test_ops_nn.c,
 * test_ops_misc.c). Header-only, static functions. */
#ifndef NBL_TEST_NODE_RUN_H
#define NBL_TEST_NODE_RUN_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "nibble.h"

typedef void (*attr_fn)(nbl_graph *g, nbl_id n);

/* A host tensor view of `data` (not copied). */
static inline nbl_host_tensor ht(nbl_dtype dt, int rank, const int64_t *dims, void *data) {
  nbl_host_tensor t;
  memset(&t, 0, sizeof t);
  t.dtype = dt;
  t.rank = rank;
  for (int i = 0; i < rank; i++) t.dims[i] = dims[i];
  t.data = data;
  t.nbytes = nbl_dtype_nbytes(dt, nbl_shape_numel(rank, dims));
  return t;
}

/* Run node `op` (opset, attributes set by af) on inputs ins[0..n_in); an input
 * whose dtype is UNDEFINED is omitted (""). Output i is requested unless
 * want && !want[i]; outs[i] receives a malloc'd copy of each requested one
 * (free its data). Returns the status of planning or running. */
static inline nbl_status node_run(const char *op, int opset, attr_fn af, int n_in,
                                  const nbl_host_tensor *ins, int n_out, const int *want,
                                  nbl_host_tensor *outs, int reference, int threads) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", opset);
  nbl_graph *g = m->graph;
  nbl_id iv[16], ov[8];
  char name[32];
  nbl_host_tensor feeds[16];
  int nf = 0, no = 0;
  for (int i = 0; i < n_in; i++) {
    if (ins[i].dtype == NBL_DT_UNDEFINED) {
      iv[i] = NBL_NONE;
      continue;
    }
    snprintf(name, sizeof name, "in%d", i);
    iv[i] = nbl_graph_add_value(g, name);
    nbl_type_set_tensor(m->arena, &g->values[iv[i]].type, ins[i].dtype, ins[i].rank, ins[i].dims);
    nbl_graph_add_input(g, iv[i]);
    feeds[nf] = ins[i];
    feeds[nf].name = g->values[iv[i]].name;
    nf++;
  }
  for (int i = 0; i < n_out; i++) {
    if (want && !want[i]) {
      ov[i] = NBL_NONE;
      continue;
    }
    snprintf(name, sizeof name, "out%d", i);
    ov[i] = nbl_graph_add_value(g, name);
  }
  nbl_id n = nbl_graph_add_node(g, op, "", "n0", n_in, iv, n_out, ov);
  if (af) af(g, n);
  for (int i = 0; i < n_out; i++)
    if (ov[i] != NBL_NONE) nbl_graph_add_output(g, ov[i]);
  nbl_session_options opt = {.threads = threads, .reference = reference};
  nbl_session *s = NULL;
  nbl_status st = nbl_session_create(m, &opt, &s);
  const nbl_host_tensor *res = NULL;
  if (st == NBL_OK) st = nbl_session_run(s, nf, feeds, &res);
  if (st == NBL_OK)
    for (int i = 0; i < n_out; i++) {
      if (ov[i] == NBL_NONE) continue;
      outs[i] = res[no++];
      outs[i].name = NULL;
      outs[i].data = malloc(outs[i].nbytes ? outs[i].nbytes : 1);
      if (outs[i].nbytes) memcpy(outs[i].data, res[no - 1].data, outs[i].nbytes);
    }
  nbl_session_free(s);
  nbl_model_free(m);
  return st;
}

#endif
