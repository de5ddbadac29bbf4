/*
 * fuzz_load.c - fuzz target: the model loader and the save round trip.
 *
 * bytes -> nbl_model_load_buffer (no external data allowed). A model the
 * loader accepts must then verify, save to a buffer, load back, compare equal
 * to the first (nbl_model_equal; only when its nodes were in a topological
 * order, which save establishes) and save to the very same bytes again. A
 * rejected input must leave nothing behind (the leak checker sees it).
 */
#include <string.h>

#include "fuzz_common.h"
#include "include/nibble.h"
#include "ir/ir.h"

/* Nodes stored in a topological order, in g and every subgraph? The loader
 * accepts any order; save writes a topological one, so only then must the
 * reloaded model equal the first. (model_sorted: also the training_info
 * graphs, which save sorts too.) */
static int sorted(const nbl_graph *g) {
  for (int n = 0; n < g->n_nodes; n++) {
    const nbl_node *nd = &g->nodes[n];
    for (int i = 0; i < nd->n_inputs; i++) {
      nbl_id v = nd->inputs[i];
      if (v != NBL_NONE && g->values[v].producer != NBL_NONE && g->values[v].producer >= n)
        return 0;
    }
    for (int a = 0; a < nd->n_attrs; a++) {
      const nbl_attr *at = &nd->attrs[a];
      if (at->type == NBL_ATTR_GRAPH && at->g && !sorted(at->g)) return 0;
      if (at->type == NBL_ATTR_GRAPHS)
        for (int k = 0; k < at->n; k++)
          if (at->graphs[k] && !sorted(at->graphs[k])) return 0;
    }
  }
  return 1;
}

static int model_sorted(const nbl_model *m) {
  if (!sorted(m->graph)) return 0;
  for (int t = 0; t < m->n_training; t++) {
    const nbl_training_info *ti = &m->training[t];
    if ((ti->initialization && !sorted(ti->initialization)) || (ti->algorithm && !sorted(ti->algorithm)))
      return 0;
  }
  return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  nbl_model *m = NULL;
  if (nbl_model_load_buffer(data, size, "fuzz.onnx", NULL, &m) != NBL_OK) {
    if (m) fuzz_fail("a failed load returned a model");
    if (!nbl_last_error()[0]) fuzz_fail("a failed load left no message");
    return 0;
  }
  if (nbl_model_verify(m) != NBL_OK)
    fuzz_fail("a loaded model does not verify: %s", nbl_last_error());
  void *b1 = NULL, *b2 = NULL;
  size_t l1 = 0, l2 = 0;
  if (nbl_model_save_buffer(m, &b1, &l1) != NBL_OK)
    fuzz_fail("a loaded model does not save: %s", nbl_last_error());
  nbl_model *m2 = NULL;
  if (nbl_model_load_buffer(b1, l1, "saved.onnx", NULL, &m2) != NBL_OK)
    fuzz_fail("a saved model does not load back: %s", nbl_last_error());
  char why[512];
  if (model_sorted(m) && !nbl_model_equal(m, m2, why, sizeof why))
    fuzz_fail("the model changed through save and load: %s", why);
  if (nbl_model_save_buffer(m2, &b2, &l2) != NBL_OK)
    fuzz_fail("a reloaded model does not save: %s", nbl_last_error());
  if (l1 != l2 || memcmp(b1, b2, l1) != 0)
    fuzz_fail("saving the reloaded model gives other bytes (%zu vs %zu)", l1, l2);
  free(b1);
  free(b2);
  nbl_model_free(m2);
  nbl_model_free(m);
  return 0;
}
