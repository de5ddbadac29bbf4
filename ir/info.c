/*
 * info.c - nbl_model_print_info: a summary of a model for people; nbl_version.
 *
 * Parameters are the initializers of every graph of the model (subgraphs
 * included, training graphs not), counted in elements and bytes per
 * element type. The op histogram covers every graph too, most frequent first.
 */
#include <stdlib.h>
#include <string.h>

#include "ir.h"
#include "nibble.h" /* implements nbl_model_print_info and nbl_version of the public API */
#include "print_internal.h"

const char *nbl_version(void) { return NBL_VERSION_STRING; }

typedef struct op_count {
  const char *domain, *op;
  int64_t count;
} op_count;

typedef struct info_acc {
  op_count *ops;
  int n_ops, cap_ops;
  int64_t numel[NBL_DT_COUNT_], bytes[NBL_DT_COUNT_];
  int64_t n_init[NBL_DT_COUNT_];
  int64_t nodes, graphs;
  bool oom;
} info_acc;

static void count_op(info_acc *a, const nbl_node *nd) {
  for (int i = 0; i < a->n_ops; i++)
    if (strcmp(a->ops[i].op, nd->op_type) == 0 && strcmp(a->ops[i].domain, nd->domain) == 0) {
      a->ops[i].count++;
      return;
    }
  if (a->n_ops == a->cap_ops) {
    int nc = a->cap_ops ? a->cap_ops * 2 : 32;
    op_count *p = realloc(a->ops, sizeof(op_count) * (size_t)nc);
    if (!p) {
      a->oom = true;
      return;
    }
    a->ops = p;
    a->cap_ops = nc;
  }
  a->ops[a->n_ops++] = (op_count){nd->domain ? nd->domain : "", nd->op_type, 1};
}

static void walk(info_acc *a, const nbl_graph *g) {
  a->graphs++;
  for (int i = 0; i < g->n_initializers; i++) {
    const nbl_tensor *t = g->values[g->initializers[i]].init;
    if (!t || t->dtype < 0 || t->dtype >= NBL_DT_COUNT_) continue;
    int64_t n = nbl_tensor_numel(t);
    if (n < 0) continue;
    a->numel[t->dtype] += n;
    a->bytes[t->dtype] += t->dtype == NBL_DT_STRING ? 0 : (int64_t)nbl_dtype_nbytes(t->dtype, n);
    if (t->dtype == NBL_DT_STRING)
      for (int64_t k = 0; k < t->n_strings && t->string_lens; k++)
        a->bytes[t->dtype] += (int64_t)t->string_lens[k];
    a->n_init[t->dtype]++;
  }
  for (nbl_id n = 0; n < g->n_nodes; n++) {
    const nbl_node *nd = &g->nodes[n];
    if (nd->dead) continue;
    a->nodes++;
    count_op(a, nd);
    for (int k = 0; k < nd->n_attrs; k++) {
      const nbl_attr *at = &nd->attrs[k];
      if (at->type == NBL_ATTR_GRAPH && at->g) walk(a, at->g);
      if (at->type == NBL_ATTR_GRAPHS)
        for (int j = 0; j < at->n; j++)
          if (at->graphs && at->graphs[j]) walk(a, at->graphs[j]);
    }
  }
}

static int cmp_ops(const void *x, const void *y) {
  const op_count *a = x, *b = y;
  if (a->count != b->count) return a->count < b->count ? 1 : -1;
  int c = strcmp(a->domain, b->domain);
  return c ? c : strcmp(a->op, b->op);
}

/* "44.6 MiB" style size. */
static const char *human_bytes(int64_t b, char *buf, size_t len) {
  const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = (double)b;
  int i = 0;
  while (v >= 1024 && i < 4) {
    v /= 1024;
    i++;
  }
  if (i == 0)
    snprintf(buf, len, "%lld B", (long long)b);
  else
    snprintf(buf, len, "%.1f %s", v, u[i]);
  return buf;
}

static void put_values(FILE *f, const nbl_graph *g, const nbl_id *ids, int n) {
  int w = 0;
  for (int i = 0; i < n; i++) {
    int l = (int)strlen(g->values[ids[i]].name);
    if (l > w) w = l;
  }
  for (int i = 0; i < n; i++) {
    char tb[256];
    const nbl_value *v = &g->values[ids[i]];
    fprintf(f, "  %-*s  %s\n", w, v->name, nbl_type_to_string(&v->type, tb, sizeof tb));
  }
}

nbl_status nbl_model_print_info(const nbl_model *m, FILE *out) {
  if (!m || !out || !m->graph)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_model_print_info: NULL argument or no graph");
  const nbl_graph *g = m->graph;
  info_acc a;
  memset(&a, 0, sizeof a);
  walk(&a, g);
  if (a.oom) {
    free(a.ops);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory", nbl_model_label(m));
  }
  if (m->path) fprintf(out, "model:       %s\n", m->path);
  fprintf(out, "ir_version:  %lld\n", (long long)m->ir_version);
  fputs("opsets:     ", out);
  for (int i = 0; i < m->n_opsets; i++)
    fprintf(out, "%s %s %lld", i ? "," : "",
            (m->opsets[i].domain && *m->opsets[i].domain) ? m->opsets[i].domain : "ai.onnx",
            (long long)m->opsets[i].version);
  fputc('\n', out);
  if ((m->producer_name && *m->producer_name) || (m->producer_version && *m->producer_version))
    fprintf(out, "producer:    %s%s%s\n", m->producer_name ? m->producer_name : "",
            (m->producer_version && *m->producer_version) ? " " : "",
            m->producer_version ? m->producer_version : "");
  if (m->domain && *m->domain) fprintf(out, "domain:      %s\n", m->domain);
  if (m->model_version) fprintf(out, "model_version: %lld\n", (long long)m->model_version);
  fprintf(out, "graph:       %s\n", g->name);
  /* graph inputs that are not initializers (the data a caller feeds) */
  int n_real = 0;
  nbl_id *real = malloc(sizeof(nbl_id) * (size_t)(g->n_inputs + 1));
  if (!real) {
    free(a.ops);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory", nbl_model_label(m));
  }
  for (int i = 0; i < g->n_inputs; i++)
    if (!g->values[g->inputs[i]].init) real[n_real++] = g->inputs[i];
  fprintf(out, "inputs (%d):\n", n_real);
  put_values(out, g, real, n_real);
  if (n_real != g->n_inputs)
    fprintf(out, "  (+%d inputs with an initializer as default)\n", g->n_inputs - n_real);
  free(real);
  fprintf(out, "outputs (%d):\n", g->n_outputs);
  put_values(out, g, g->outputs, g->n_outputs);
  fprintf(out, "nodes:       %lld", (long long)a.nodes);
  if (a.graphs > 1) fprintf(out, " (in %lld graphs)", (long long)a.graphs);
  fputc('\n', out);
  if (a.n_ops) qsort(a.ops, (size_t)a.n_ops, sizeof(op_count), cmp_ops); /* a.ops may be NULL */
  fprintf(out, "ops (%d kinds):\n", a.n_ops);
  for (int i = 0; i < a.n_ops; i++)
    fprintf(out, "  %-24s%s%s %lld\n", a.ops[i].op, *a.ops[i].domain ? " " : "",
            a.ops[i].domain, (long long)a.ops[i].count);
  int64_t tn = 0, tb = 0, ti = 0;
  for (int d = 0; d < NBL_DT_COUNT_; d++) {
    tn += a.numel[d];
    tb += a.bytes[d];
    ti += a.n_init[d];
  }
  char hb[32];
  fprintf(out, "parameters:  %lld in %lld initializers, %lld bytes (%s)\n", (long long)tn,
          (long long)ti, (long long)tb, human_bytes(tb, hb, sizeof hb));
  for (int d = 0; d < NBL_DT_COUNT_; d++)
    if (a.n_init[d])
      fprintf(out, "  %-10s %lld in %lld initializers, %lld bytes\n", nbl_dtype_name((nbl_dtype)d),
              (long long)a.numel[d], (long long)a.n_init[d], (long long)a.bytes[d]);
  if (m->n_functions) fprintf(out, "functions:   %d\n", m->n_functions);
  if (m->n_training) fprintf(out, "training_info: %d\n", m->n_training);
  for (int i = 0; i < m->n_metadata; i++) /* e.g. a training checkpoint's progress */
    fprintf(out, "%s %s = %s\n", i ? "            " : "metadata:   ",
            m->metadata[i].key ? m->metadata[i].key : "", m->metadata[i].value ? m->metadata[i].value : "");
  free(a.ops);
  if (ferror(out)) return nbl_errorf(NBL_ERR_IO, "%s: write error", nbl_model_label(m));
  return NBL_OK;
}

int nbl_model_training_count(const nbl_model *m) { return m ? m->n_training : 0; }
