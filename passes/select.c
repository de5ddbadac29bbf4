/* select.c - the layers a quantization pass works on; see select.h. */
#include "select.h"

#include <fnmatch.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LIST_SEPS ",;:| "

int nbl_list_has(const char *list, const char *word, int glob) {
  size_t wl = strlen(word);
  const char *p = list;
  while (p && *p) {
    size_t n = strcspn(p, LIST_SEPS);
    if (n > 0) {
      char item[256];
      size_t k = n < sizeof item - 1 ? n : sizeof item - 1;
      memcpy(item, p, k);
      item[k] = 0;
      if (glob ? fnmatch(item, word, 0) == 0 : (n == wl && strncmp(p, word, n) == 0)) return 1;
    }
    p += n;
    while (*p && strchr(LIST_SEPS, *p)) p++;
  }
  return 0;
}

void nbl_textlist_add(nbl_textlist *b, const char *fmt, ...) {
  char tmp[700];
  va_list ap;
  va_start(ap, fmt);
  int len = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (len < 0) return;
  if ((size_t)len >= sizeof tmp) len = (int)sizeof tmp - 1;
  if (b->n + (size_t)len + 3 > b->cap) {
    size_t cap = (b->cap ? b->cap * 2 : 256) + (size_t)len;
    char *s = realloc(b->s, cap);
    if (!s) return;
    b->s = s;
    b->cap = cap;
  }
  if (b->n) {
    memcpy(b->s + b->n, ", ", 2);
    b->n += 2;
  }
  memcpy(b->s + b->n, tmp, (size_t)len);
  b->n += (size_t)len;
  b->s[b->n] = 0;
}

const char *nbl_node_label(const nbl_graph *g, const nbl_node *n, char *buf, size_t len) {
  if (n->name && n->name[0]) snprintf(buf, len, "%s", n->name);
  else if (n->n_outputs > 0 && n->outputs[0] != NBL_NONE)
    snprintf(buf, len, "%s -> '%s'", n->op_type, g->values[n->outputs[0]].name);
  else snprintf(buf, len, "%s (unnamed)", n->op_type);
  return buf;
}

/* Weight w of a layer, computed from constants only (a Constant node, a
 * Transpose or Cast of an initializer, ... as exporters that do not fold
 * write them): the nodes that compute it folded into initializers, inputs
 * first, as fold-constants folds them (depth at most 16 nodes). Returns 1
 * when w is an initializer now, 0 when it is not constant, -1 on error. */
static int fold_weight(nbl_graph *g, nbl_id w, int depth) {
  const nbl_value *v = &g->values[w];
  if (v->init) return !(v->flags & (NBL_VAL_INPUT | NBL_VAL_OUTER));
  if (v->producer == NBL_NONE || depth > 16) return 0;
  const nbl_id p = v->producer;
  for (int i = 0; i < g->nodes[p].n_inputs; i++) {
    const nbl_id in = g->nodes[p].inputs[i];
    if (in == NBL_NONE) continue;
    const int r = fold_weight(g, in, depth + 1);
    if (r <= 0) return r;
  }
  nbl_fold_result res;
  if (nbl_fold_node(g->model, g, p, -1, &res)) return -1;
  return res == NBL_FOLD_DONE;
}

int nbl_select_layers(nbl_graph *g, const char *ops, const char *include, const char *exclude,
                      const char *(*skip)(const nbl_graph *g, const nbl_node *n), nbl_id **layers,
                      nbl_textlist *skipped) {
  for (nbl_id i = 0; i < g->n_nodes; i++) {
    const nbl_node *nd = &g->nodes[i];
    if (nd->dead || nd->domain[0] || !nbl_list_has(ops, nd->op_type, 0) || nd->n_inputs < 2 ||
        nd->inputs[1] == NBL_NONE)
      continue;
    if (fold_weight(g, nd->inputs[1], 0) < 0) return -1;
  }
  nbl_id *order = NULL;
  int n = nbl_graph_topo_order(g, &order);
  if (n < 0) return -1;
  nbl_id *out = malloc(sizeof(nbl_id) * (size_t)(n ? n : 1));
  if (!out) {
    free(order);
    nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
    return -1;
  }
  int nl = 0;
  for (int i = 0; i < n; i++) {
    const nbl_node *nd = &g->nodes[order[i]];
    if (nd->domain[0] || !nbl_list_has(ops, nd->op_type, 0)) continue;
    char lb[300];
    if (include[0] && !nbl_list_has(include, nd->name, 1)) {
      nbl_textlist_add(skipped, "%s (%s)", nbl_node_label(g, nd, lb, sizeof lb), "not included");
      continue;
    }
    if (exclude[0] && nbl_list_has(exclude, nd->name, 1)) {
      nbl_textlist_add(skipped, "%s (%s)", nbl_node_label(g, nd, lb, sizeof lb), "excluded");
      continue;
    }
    const char *why = skip ? skip(g, nd) : NULL;
    if (why) {
      nbl_textlist_add(skipped, "%s (%s)", nbl_node_label(g, nd, lb, sizeof lb), why);
      continue;
    }
    out[nl++] = order[i];
  }
  free(order);
  *layers = out;
  return nl;
}
