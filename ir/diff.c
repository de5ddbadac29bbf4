/* diff.c - what differs between two models: opsets, graph inputs/outputs,
 * nodes added/removed/changed (attributes, inputs), renamed values, changed
 * value types and shapes, initializers added/removed/changed (max |a-b|). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir.h"
#include "nibble.h" /* implements nbl_model_diff of the public API */

/* A node's identity across the two models: its name when the name is
 * non-empty and unique in its graph, else op type + first output name. */
static void node_key(const nbl_graph *g, nbl_id id, int use_name, char *buf, size_t len) {
  const nbl_node *n = &g->nodes[id];
  if (use_name) {
    snprintf(buf, len, "%s", n->name);
  } else {
    const char *o0 = (n->n_outputs && n->outputs[0] != NBL_NONE) ? g->values[n->outputs[0]].name : "";
    snprintf(buf, len, "%s -> %s", n->op_type, o0);
  }
}

static int names_unique(const nbl_graph *g) {
  for (int i = 0; i < g->n_nodes; i++) {
    if (g->nodes[i].dead) continue;
    if (!g->nodes[i].name[0]) return 0;
    for (int j = i + 1; j < g->n_nodes; j++)
      if (!g->nodes[j].dead && strcmp(g->nodes[i].name, g->nodes[j].name) == 0) return 0;
  }
  return 1;
}

static nbl_id find_node(const nbl_graph *g, int use_name, const char *key) {
  char k[1024];
  for (nbl_id i = 0; i < g->n_nodes; i++) {
    if (g->nodes[i].dead) continue;
    node_key(g, i, use_name, k, sizeof k);
    if (strcmp(k, key) == 0) return i;
  }
  return NBL_NONE;
}

static void type_str(const nbl_type *t, char *buf, size_t len) {
  size_t o = 0;
  if (t->kind != NBL_TYPE_TENSOR) {
    snprintf(buf, len, "%s", t->kind == NBL_TYPE_NONE ? "?" : "non-tensor");
    return;
  }
  o += (size_t)snprintf(buf + o, len - o, "%s", nbl_dtype_name(t->elem));
  if (t->rank < 0) return;
  o += (size_t)snprintf(buf + o, len - o, "[");
  for (int i = 0; i < t->rank && o < len; i++) {
    if (t->dims[i].param)
      o += (size_t)snprintf(buf + o, len - o, "%s%s", i ? "," : "", t->dims[i].param);
    else if (t->dims[i].value >= 0)
      o += (size_t)snprintf(buf + o, len - o, "%s%lld", i ? "," : "", (long long)t->dims[i].value);
    else
      o += (size_t)snprintf(buf + o, len - o, "%s?", i ? "," : "");
  }
  if (o < len) snprintf(buf + o, len - o, "]");
}

static void attr_str(const nbl_attr *a, char *buf, size_t len) {
  size_t o = 0;
  switch (a->type) {
  case NBL_ATTR_FLOAT: snprintf(buf, len, "%.9g", a->f); return;
  case NBL_ATTR_INT: snprintf(buf, len, "%lld", (long long)a->i); return;
  case NBL_ATTR_STRING: snprintf(buf, len, "\"%s\"", a->s ? a->s : ""); return;
  case NBL_ATTR_INTS:
  case NBL_ATTR_FLOATS:
    o += (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < a->n && o + 24 < len; i++) {
      if (a->type == NBL_ATTR_INTS)
        o += (size_t)snprintf(buf + o, len - o, "%s%lld", i ? ", " : "", (long long)a->ints[i]);
      else
        o += (size_t)snprintf(buf + o, len - o, "%s%.9g", i ? ", " : "", a->floats[i]);
    }
    snprintf(buf + o, len - o, "]");
    return;
  case NBL_ATTR_TENSOR:
    snprintf(buf, len, "tensor %s (%lld values)", nbl_dtype_name(a->t->dtype),
             (long long)nbl_tensor_numel(a->t));
    return;
  default: snprintf(buf, len, "<%s>", nbl_attr_type_name(a->type)); return;
  }
}

static int attr_equal(const nbl_attr *x, const nbl_attr *y) {
  char a[4096], b[4096];
  if (x->type != y->type) return 0;
  if (x->type == NBL_ATTR_TENSOR) {
    return x->t->dtype == y->t->dtype && x->t->nbytes == y->t->nbytes &&
           (x->t->nbytes == 0 || memcmp(x->t->data, y->t->data, x->t->nbytes) == 0);
  }
  attr_str(x, a, sizeof a);
  attr_str(y, b, sizeof b);
  return strcmp(a, b) == 0;
}

/* Compare two initializers; returns 1 if they differ and describes how. */
static int tensor_diff(const nbl_tensor *a, const nbl_tensor *b, char *why, size_t len) {
  if (a->dtype != b->dtype || a->rank != b->rank ||
      (a->rank && memcmp(a->dims, b->dims, sizeof(int64_t) * (size_t)a->rank))) {
    nbl_type ta = {0}, tb = {0};
    nbl_dim da[16] = {{0}}, db[16] = {{0}};
    ta.kind = tb.kind = NBL_TYPE_TENSOR;
    ta.elem = a->dtype;
    tb.elem = b->dtype;
    ta.rank = a->rank > 16 ? 16 : a->rank;
    tb.rank = b->rank > 16 ? 16 : b->rank;
    ta.dims = da;
    tb.dims = db;
    for (int i = 0; i < ta.rank; i++) da[i].value = a->dims[i];
    for (int i = 0; i < tb.rank; i++) db[i].value = b->dims[i];
    char sa[256], sb[256];
    type_str(&ta, sa, sizeof sa);
    type_str(&tb, sb, sizeof sb);
    snprintf(why, len, "%s -> %s", sa, sb);
    return 1;
  }
  if (a->nbytes == b->nbytes && (a->nbytes == 0 || memcmp(a->data, b->data, a->nbytes) == 0))
    return 0;
  if (a->dtype == NBL_DT_STRING) {
    snprintf(why, len, "string data changed");
    return 1;
  }
  int64_t n = nbl_tensor_numel(a), ndiff = 0;
  double maxd = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = fabs(nbl_tensor_get_f64(a, i) - nbl_tensor_get_f64(b, i));
    if (d != 0 || isnan(d)) ndiff++;
    if (d > maxd || isnan(d)) maxd = d;
  }
  snprintf(why, len, "%lld of %lld values differ, max |a-b| = %.6g", (long long)ndiff,
           (long long)n, maxd);
  return 1;
}

typedef struct diff_ctx {
  FILE *out;
  int count;
} diff_ctx;

static void say(diff_ctx *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(diff_ctx *d, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfprintf(d->out, fmt, ap);
  va_end(ap);
  fputc('\n', d->out);
  d->count++;
}

static void diff_io(diff_ctx *d, const char *what, const nbl_graph *ga, const nbl_id *la, int na,
                    const nbl_graph *gb, const nbl_id *lb, int nb) {
  for (int i = 0; i < na; i++) {
    int found = 0;
    for (int j = 0; j < nb && !found; j++) found = !strcmp(ga->values[la[i]].name, gb->values[lb[j]].name);
    if (!found) say(d, "- %s '%s'", what, ga->values[la[i]].name);
  }
  for (int j = 0; j < nb; j++) {
    int found = 0;
    for (int i = 0; i < na && !found; i++) found = !strcmp(ga->values[la[i]].name, gb->values[lb[j]].name);
    if (!found) say(d, "+ %s '%s'", what, gb->values[lb[j]].name);
  }
}

static void diff_graph(diff_ctx *d, const nbl_graph *ga, const nbl_graph *gb) {
  char ka[1024], why[1024], sa[512], sb[512];
  diff_io(d, "input", ga, ga->inputs, ga->n_inputs, gb, gb->inputs, gb->n_inputs);
  diff_io(d, "output", ga, ga->outputs, ga->n_outputs, gb, gb->outputs, gb->n_outputs);
  int use_name = names_unique(ga) && names_unique(gb);
  /* nodes: removed and changed */
  for (nbl_id i = 0; i < ga->n_nodes; i++) {
    const nbl_node *na = &ga->nodes[i];
    if (na->dead) continue;
    node_key(ga, i, use_name, ka, sizeof ka);
    nbl_id j = find_node(gb, use_name, ka);
    if (j == NBL_NONE) {
      say(d, "- node '%s' (%s)", na->name, na->op_type);
      continue;
    }
    const nbl_node *nb = &gb->nodes[j];
    if (strcmp(na->op_type, nb->op_type) || strcmp(na->domain, nb->domain))
      say(d, "~ node '%s': op %s -> %s", na->name, na->op_type, nb->op_type);
    int nin = na->n_inputs > nb->n_inputs ? na->n_inputs : nb->n_inputs;
    for (int k = 0; k < nin; k++) {
      const char *xa = k < na->n_inputs && na->inputs[k] != NBL_NONE ? ga->values[na->inputs[k]].name : "";
      const char *xb = k < nb->n_inputs && nb->inputs[k] != NBL_NONE ? gb->values[nb->inputs[k]].name : "";
      if (strcmp(xa, xb)) say(d, "~ node '%s': input %d '%s' -> '%s'", na->name, k, xa, xb);
    }
    int nout = na->n_outputs > nb->n_outputs ? na->n_outputs : nb->n_outputs;
    for (int k = 0; k < nout; k++) {
      const char *xa = k < na->n_outputs && na->outputs[k] != NBL_NONE ? ga->values[na->outputs[k]].name : "";
      const char *xb = k < nb->n_outputs && nb->outputs[k] != NBL_NONE ? gb->values[nb->outputs[k]].name : "";
      if (strcmp(xa, xb)) say(d, "~ value renamed '%s' -> '%s' (output %d of node '%s')", xa, xb, k, na->name);
    }
    for (int k = 0; k < na->n_attrs; k++) {
      const nbl_attr *aa = &na->attrs[k], *ab = nbl_node_attr(nb, aa->name);
      attr_str(aa, sa, sizeof sa);
      if (!ab) {
        say(d, "~ node '%s': attribute %s = %s removed", na->name, aa->name, sa);
      } else if (!attr_equal(aa, ab)) {
        attr_str(ab, sb, sizeof sb);
        say(d, "~ node '%s': attribute %s: %s -> %s", na->name, aa->name, sa, sb);
      }
    }
    for (int k = 0; k < nb->n_attrs; k++)
      if (!nbl_node_attr(na, nb->attrs[k].name)) {
        attr_str(&nb->attrs[k], sb, sizeof sb);
        say(d, "~ node '%s': attribute %s = %s added", na->name, nb->attrs[k].name, sb);
      }
  }
  for (nbl_id j = 0; j < gb->n_nodes; j++) {
    if (gb->nodes[j].dead) continue;
    node_key(gb, j, use_name, ka, sizeof ka);
    if (find_node(ga, use_name, ka) == NBL_NONE)
      say(d, "+ node '%s' (%s)", gb->nodes[j].name, gb->nodes[j].op_type);
  }
  /* values: types and shapes, initializers */
  for (nbl_id i = 0; i < ga->n_values; i++) {
    const nbl_value *va = &ga->values[i];
    if (va->dead) continue;
    nbl_id j = nbl_graph_find(gb, va->name);
    if (j == NBL_NONE) {
      if (va->init) say(d, "- initializer '%s'", va->name);
      continue;
    }
    const nbl_value *vb = &gb->values[j];
    if ((va->type.kind || vb->type.kind) && !nbl_type_equal(&va->type, &vb->type)) {
      type_str(&va->type, sa, sizeof sa);
      type_str(&vb->type, sb, sizeof sb);
      say(d, "~ value '%s': type %s -> %s", va->name, sa, sb);
    }
    if (va->init && !vb->init) say(d, "~ value '%s': no longer an initializer", va->name);
    if (!va->init && vb->init) say(d, "~ value '%s': now an initializer", va->name);
    if (va->init && vb->init && tensor_diff(va->init, vb->init, why, sizeof why))
      say(d, "~ initializer '%s': %s", va->name, why);
  }
  for (nbl_id j = 0; j < gb->n_values; j++) {
    const nbl_value *vb = &gb->values[j];
    if (!vb->dead && vb->init && nbl_graph_find(ga, vb->name) == NBL_NONE) {
      say(d, "+ initializer '%s' (%s, %lld values)", vb->name, nbl_dtype_name(vb->init->dtype),
          (long long)nbl_tensor_numel(vb->init));
    }
  }
}

/* Does m import `domain` ("" and "ai.onnx" alike), at any version, 0 included? */
static bool imports(const nbl_model *m, const char *domain) {
  if (strcmp(domain, "ai.onnx") == 0) domain = "";
  for (int i = 0; i < m->n_opsets; i++) {
    const char *d = m->opsets[i].domain ? m->opsets[i].domain : "";
    if (strcmp(d, domain) == 0 || (!*domain && strcmp(d, "ai.onnx") == 0)) return true;
  }
  return false;
}

nbl_status nbl_model_diff(const nbl_model *a, const nbl_model *b, FILE *out, int *n_differences) {
  if (!a || !b || !out) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_model_diff: NULL argument");
  diff_ctx d = {out, 0};
  for (int i = 0; i < a->n_opsets; i++) {
    int64_t vb = nbl_model_opset(b, a->opsets[i].domain);
    if (vb != a->opsets[i].version)
      say(&d, "~ opset '%s': %lld -> %lld", a->opsets[i].domain[0] ? a->opsets[i].domain : "ai.onnx",
          (long long)a->opsets[i].version, (long long)vb);
  }
  for (int i = 0; i < b->n_opsets; i++)
    if (!imports(a, b->opsets[i].domain))
      say(&d, "+ opset '%s': %lld", b->opsets[i].domain, (long long)b->opsets[i].version);
  if (a->ir_version != b->ir_version)
    say(&d, "~ ir_version %lld -> %lld", (long long)a->ir_version, (long long)b->ir_version);
  diff_graph(&d, a->graph, b->graph);
  if (n_differences) *n_differences = d.count;
  return NBL_OK;
}
