/*
 * print_dot.c - the model as a Graphviz digraph (render with `dot -Tsvg`).
 *
 * Ops are rounded boxes labelled with the op type (domain-qualified when not
 * ai.onnx), the node name and a few short attributes. Graph inputs are
 * green ellipses, outputs orange ellipses, initializers grey "note" shapes
 * (with a value summary), values captured from an enclosing graph dashed
 * ellipses. Every edge carries the tensor's name, element type and shape.
 * Subgraphs (If/Loop/Scan bodies) are clusters; a dotted edge joins the
 * owning node to its body. The graphs of training_info (initialization,
 * algorithm: forward, loss, backward, optimizer) follow as clusters of their
 * own; values they read from the main graph are dashed "outer scope" ellipses.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir.h"
#include "print_internal.h"

#define DOT_MAX_ATTRS 6
#define DOT_MAX_ATTR_CHARS 40

typedef struct dp {
  FILE *f;
  int full;
  int n_graphs; /* clusters so far: graph k's ids are prefixed "g<k>_" */
} dp;

/* Write s escaped for a double-quoted DOT string (no quotes). */
static void esc(FILE *f, const char *s) {
  for (; s && *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\')
      fprintf(f, "\\%c", c);
    else if (c == '\n')
      fputs("\\n", f);
    else if (c < 0x20)
      fputc(' ', f);
    else
      fputc(c, f);
  }
}

/* Short text of an attribute value into buf (truncated with "..."). */
static void attr_short(const nbl_attr *a, char *buf, size_t len) {
  size_t o = 0;
  char fb[40];
  buf[0] = 0;
#define PUT(...)                                        \
  do {                                                  \
    if (o < len) {                                      \
      int k_ = snprintf(buf + o, len - o, __VA_ARGS__); \
      if (k_ > 0) o += (size_t)k_;                      \
    }                                                   \
  } while (0)
  switch (a->type) {
  case NBL_ATTR_FLOAT: PUT("%s", nbl_fmt_float(fb, a->f, 0, 0)); break;
  case NBL_ATTR_INT: PUT("%lld", (long long)a->i); break;
  case NBL_ATTR_STRING: PUT("\"%s\"", a->s ? a->s : ""); break;
  case NBL_ATTR_INTS:
  case NBL_ATTR_FLOATS:
    PUT("[");
    for (int i = 0; i < a->n && o < len; i++) {
      if (a->type == NBL_ATTR_INTS)
        PUT(i ? ",%lld" : "%lld", (long long)a->ints[i]);
      else
        PUT(i ? ",%s" : "%s", nbl_fmt_float(fb, a->floats[i], 0, 0));
    }
    PUT("]");
    break;
  case NBL_ATTR_TENSOR:
    if (a->t) {
      char tb[96];
      nbl_type tt = {.kind = NBL_TYPE_TENSOR, .elem = a->t->dtype, .rank = a->t->rank};
      nbl_dim dims[8];
      if (a->t->rank <= 8) {
        for (int i = 0; i < a->t->rank; i++) dims[i] = (nbl_dim){.value = a->t->dims[i]};
        tt.dims = dims;
        PUT("%s", nbl_type_to_string(&tt, tb, sizeof tb));
      } else {
        PUT("tensor");
      }
      if (nbl_tensor_numel(a->t) == 1 && nbl_tensor_check_payload(a->t) == NBL_OK &&
          a->t->dtype != NBL_DT_STRING)
        PUT(" {%s}", nbl_fmt_float(fb, nbl_tensor_get_f64(a->t, 0), 1, 0));
    }
    break;
  case NBL_ATTR_GRAPH: PUT("<graph>"); break;
  default: PUT("<%s>", nbl_attr_type_name(a->type)); break;
  }
#undef PUT
  if (o >= len && len > 4) strcpy(buf + len - 4, "...");
}

/* "float[5,4]" for an initializer's own type. */
static void init_type_string(const nbl_tensor *t, char *buf, size_t len) {
  nbl_type tt = {.kind = NBL_TYPE_TENSOR, .elem = t->dtype, .rank = t->rank};
  nbl_dim dims[16];
  if (t->rank > 16) {
    snprintf(buf, len, "%s[rank %d]", nbl_dtype_name(t->dtype), t->rank);
    return;
  }
  for (int i = 0; i < t->rank; i++) dims[i] = (nbl_dim){.value = t->dims[i]};
  tt.dims = dims;
  nbl_type_to_string(&tt, buf, len);
}

static void edge_label(FILE *f, const nbl_value *v) {
  char tb[160];
  fputs(" [label=\"", f);
  esc(f, v->name);
  if (v->type.kind != NBL_TYPE_NONE) {
    fputs("\\n", f);
    esc(f, nbl_type_to_string(&v->type, tb, sizeof tb));
  }
  fputs("\"]", f);
}

/* The DOT id of the thing that defines value v of graph g (prefix pre). */
static void source_id(FILE *f, const char *pre, const nbl_graph *g, nbl_id v) {
  const nbl_value *val = &g->values[v];
  if (val->producer != NBL_NONE)
    fprintf(f, "\"%sn%d\"", pre, (int)val->producer);
  else if (val->init && !(val->flags & NBL_VAL_INPUT))
    fprintf(f, "\"%si%d\"", pre, (int)v);
  else if (val->flags & NBL_VAL_INPUT)
    fprintf(f, "\"%sin%d\"", pre, (int)v);
  else
    fprintf(f, "\"%sx%d\"", pre, (int)v); /* outer or undefined */
}

static void put_graph(dp *p, const nbl_graph *g, const char *pre, int depth);

static void put_node(dp *p, const nbl_graph *g, nbl_id n, const char *pre, int depth) {
  FILE *f = p->f;
  const nbl_node *nd = &g->nodes[n];
  fprintf(f, "%*s\"%sn%d\" [shape=box, style=\"rounded,filled\", fillcolor=\"#eef3fb\", label=\"",
          depth * 2, "", pre, (int)n);
  if (nd->domain && *nd->domain) {
    esc(f, nd->domain);
    fputc('.', f);
  }
  esc(f, nd->op_type);
  if (nd->name && *nd->name) {
    fputs("\\n", f);
    esc(f, nd->name);
  }
  int shown = 0;
  for (int i = 0; i < nd->n_attrs; i++) {
    const nbl_attr *a = &nd->attrs[i];
    if (a->type == NBL_ATTR_GRAPH || a->type == NBL_ATTR_GRAPHS) continue;
    if (shown == DOT_MAX_ATTRS) {
      fputs("\\n...", f);
      break;
    }
    char buf[DOT_MAX_ATTR_CHARS + 1];
    attr_short(a, buf, sizeof buf);
    fputs("\\n", f);
    esc(f, a->name);
    fputc('=', f);
    esc(f, buf);
    shown++;
  }
  fputs("\"];\n", f);
  for (int i = 0; i < nd->n_attrs; i++) {
    const nbl_attr *a = &nd->attrs[i];
    int cnt = a->type == NBL_ATTR_GRAPH ? 1 : a->type == NBL_ATTR_GRAPHS ? a->n : 0;
    for (int k = 0; k < cnt; k++) {
      const nbl_graph *sub = a->type == NBL_ATTR_GRAPH ? a->g : a->graphs[k];
      if (!sub) continue;
      char spre[32];
      int id = ++p->n_graphs;
      snprintf(spre, sizeof spre, "g%d_", id);
      fprintf(f, "%*ssubgraph \"cluster_%d\" {\n", depth * 2, "", id);
      fprintf(f, "%*s  label=\"", depth * 2, "");
      esc(f, a->name);
      fputs(": ", f);
      esc(f, sub->name);
      fprintf(f, "\"; style=dashed; color=\"#888888\";\n");
      put_graph(p, sub, spre, depth + 1);
      fprintf(f, "%*s}\n", depth * 2, "");
      fprintf(f, "%*s\"%sn%d\" -> \"%sanchor\" [style=dotted, arrowhead=none, label=\"", depth * 2,
              "", pre, (int)n, spre);
      esc(f, a->name);
      fputs("\"];\n", f);
    }
  }
}

static void put_graph(dp *p, const nbl_graph *g, const char *pre, int depth) {
  FILE *f = p->f;
  int ind = depth * 2;
  char tb[160];
  /* an invisible point the owning node's dotted edge attaches to */
  fprintf(f, "%*s\"%sanchor\" [shape=point, style=invis];\n", ind, "", pre);
  for (nbl_id v = 0; v < g->n_values; v++) {
    const nbl_value *val = &g->values[v];
    if (val->dead) continue;
    nbl_type_to_string(&val->type, tb, sizeof tb);
    if (val->init && val->type.kind == NBL_TYPE_NONE) init_type_string(val->init, tb, sizeof tb);
    if (val->flags & NBL_VAL_INPUT) {
      fprintf(f, "%*s\"%sin%d\" [shape=ellipse, style=filled, fillcolor=\"#c8ecc8\", label=\"", ind,
              "", pre, (int)v);
      esc(f, val->name);
      fputs("\\n", f);
      esc(f, tb);
      fputs("\"];\n", f);
    } else if (val->init) {
      const nbl_tensor *t = val->init;
      init_type_string(t, tb, sizeof tb);
      fprintf(f, "%*s\"%si%d\" [shape=note, style=filled, fillcolor=\"#e4e4e4\", label=\"", ind, "",
              pre, (int)v);
      esc(f, val->name);
      fputs("\\n", f);
      esc(f, tb);
      if (t->dtype != NBL_DT_STRING && nbl_tensor_check_payload(t) == NBL_OK &&
          nbl_tensor_numel(t) > 0) {
        nbl_tensor_stats st;
        nbl_tensor_stats_compute(t, &st);
        char a[40], b[40];
        if (st.n == 1)
          fprintf(f, "\\n= %s", nbl_fmt_float(a, st.min, 0, 0));
        else
          fprintf(f, "\\n[%s, %s]", nbl_fmt_float(a, st.min, 0, 0), nbl_fmt_float(b, st.max, 0, 0));
      }
      fputs("\"];\n", f);
    } else if (val->producer == NBL_NONE && val->n_consumers > 0) {
      fprintf(f, "%*s\"%sx%d\" [shape=ellipse, style=dashed, label=\"", ind, "", pre, (int)v);
      esc(f, val->name);
      fputs((val->flags & NBL_VAL_OUTER) ? "\\n(outer scope)" : "\\n(undefined)", f);
      fputs("\"];\n", f);
    }
  }
  for (int i = 0; i < g->n_outputs; i++) {
    const nbl_value *val = &g->values[g->outputs[i]];
    fprintf(f, "%*s\"%sout%d\" [shape=ellipse, style=filled, fillcolor=\"#fbd8b0\", label=\"", ind,
            "", pre, i);
    esc(f, val->name);
    fputs("\\n", f);
    esc(f, nbl_type_to_string(&val->type, tb, sizeof tb));
    fputs("\"];\n", f);
  }
  for (nbl_id n = 0; n < g->n_nodes; n++)
    if (!g->nodes[n].dead) put_node(p, g, n, pre, depth);
  for (nbl_id n = 0; n < g->n_nodes; n++) {
    const nbl_node *nd = &g->nodes[n];
    if (nd->dead) continue;
    for (int i = 0; i < nd->n_inputs; i++) {
      nbl_id v = nd->inputs[i];
      if (v == NBL_NONE) continue;
      fprintf(f, "%*s", ind, "");
      source_id(f, pre, g, v);
      fprintf(f, " -> \"%sn%d\"", pre, (int)n);
      edge_label(f, &g->values[v]);
      fputs(";\n", f);
    }
  }
  for (int i = 0; i < g->n_outputs; i++) {
    nbl_id v = g->outputs[i];
    fprintf(f, "%*s", ind, "");
    source_id(f, pre, g, v);
    fprintf(f, " -> \"%sout%d\"", pre, i);
    edge_label(f, &g->values[v]);
    fputs(";\n", f);
  }
}

nbl_status nbl_print_dot(const nbl_model *m, int full, FILE *out) {
  dp p = {.f = out, .full = full};
  fputs("digraph \"", out);
  esc(out, m->graph->name);
  fputs("\" {\n  rankdir=TB;\n  node [fontname=\"Helvetica\", fontsize=10];\n"
        "  edge [fontname=\"Helvetica\", fontsize=8];\n", out);
  put_graph(&p, m->graph, "", 1);
  for (int i = 0; i < m->n_training; i++) {
    const nbl_graph *tg[2] = {m->training[i].initialization, m->training[i].algorithm};
    static const char *const what[2] = {"initialization", "algorithm"};
    for (int k = 0; k < 2; k++) {
      if (!tg[k]) continue;
      char pre[32];
      int id = ++p.n_graphs;
      snprintf(pre, sizeof pre, "g%d_", id);
      fprintf(out, "  subgraph \"cluster_%d\" {\n    label=\"training_info[%d].%s\"; style=dashed; "
                   "color=\"#888888\";\n", id, i, what[k]);
      put_graph(&p, tg[k], pre, 2);
      fputs("  }\n", out);
    }
  }
  fputs("}\n", out);
  if (ferror(out))
    return nbl_errorf(NBL_ERR_IO, "%s: write error while printing", nbl_model_label(m));
  return NBL_OK;
}
