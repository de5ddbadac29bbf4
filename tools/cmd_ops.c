/* cmd_ops.c - `nibble ops`: the op table, as an answer to "does nibble
 * support my model": every op with its opset range, whether infer-shapes has a
 * rule for it, its gradient rule, fast kernel and flags. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "nibble.h"

static void ops_usage(FILE *f) {
  fputs("usage: nibble ops [--format text|md]\n\n"
        "Print the op table: one row per op and opset range, sorted by domain and op.\n"
        "  --format F   text: aligned columns (default); md: a Markdown table\n"
        "Columns: domain, op, opsets (the range implemented), shape (infer-shapes has a\n"
        "rule), fast (an optimized kernel beside the reference one), flags (stable since\n"
        "N: the opset from which its meaning is unchanged; converts from N: the oldest\n"
        "opset convert-opset rewrites it from; random), gradient (yes; no:\n"
        "why the op is not differentiable; missing).\n",
        f);
}

static const char *dom(const nbl_op_info *o) { return o->domain[0] ? o->domain : "ai.onnx"; }

static int cmp_info(const void *a, const void *b) {
  const nbl_op_info *x = a, *y = b;
  int c = strcmp(dom(x), dom(y));
  if (!c) c = strcmp(x->name, y->name);
  return c ? c : x->since_version - y->since_version;
}

/* The gradient cell: "yes", "no: REASON" or "missing". */
static void grad_cell(const nbl_op_info *o, char *buf, size_t n) {
  if (o->grad_rule)
    snprintf(buf, n, "yes");
  else if (o->no_grad)
    snprintf(buf, n, "no: %s", o->no_grad);
  else
    snprintf(buf, n, "missing");
}

static void flags_cell(const nbl_op_info *o, char *buf, size_t n) {
  size_t k = 0;
  buf[0] = 0;
  if (o->stable_since) k += (size_t)snprintf(buf + k, n - k, "stable since %d", o->stable_since);
  if (o->convert_from && o->convert_from != o->stable_since && k < n)
    k += (size_t)snprintf(buf + k, n - k, "%sconverts from %d", k ? ", " : "", o->convert_from);
  if (o->random && k < n) snprintf(buf + k, n - k, "%srandom", k ? ", " : "");
}

int nbl_cmd_ops(int argc, char **argv) {
  int md = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      ops_usage(stdout);
      return 0;
    } else if (strcmp(argv[i], "--format") == 0 && i + 1 < argc) {
      const char *f = argv[++i];
      if (strcmp(f, "md") == 0) md = 1;
      else if (strcmp(f, "text") != 0) {
        fprintf(stderr, "nibble ops: unknown format '%s' (text or md)\n", f);
        return 2;
      }
    } else {
      fprintf(stderr, "nibble ops: unexpected argument '%s'\n", argv[i]);
      ops_usage(stderr);
      return 2;
    }
  }
  int n = nbl_op_table_size();
  nbl_op_info *ops = calloc((size_t)(n > 0 ? n : 1), sizeof *ops);
  if (!ops) {
    fprintf(stderr, "nibble ops: out of memory\n");
    return 1;
  }
  for (int i = 0; i < n; i++)
    if (nbl_op_table_entry(i, &ops[i]) != NBL_OK) {
      fprintf(stderr, "nibble: %s\n", nbl_last_error());
      free(ops);
      return 1;
    }
  qsort(ops, (size_t)n, sizeof *ops, cmp_info);
  int w_dom = 6, w_op = 2, shape = 0, grad = 0, no_grad = 0, fast = 0, distinct = 0;
  for (int i = 0; i < n; i++) {
    int ld = (int)strlen(dom(&ops[i])), lo = (int)strlen(ops[i].name);
    if (ld > w_dom) w_dom = ld;
    if (lo > w_op) w_op = lo;
    shape += ops[i].shape_rule;
    grad += ops[i].grad_rule;
    no_grad += !ops[i].grad_rule && ops[i].no_grad;
    fast += ops[i].fast_kernel;
    distinct += i == 0 || strcmp(ops[i].name, ops[i - 1].name) || strcmp(dom(&ops[i]), dom(&ops[i - 1]));
  }
  if (md)
    puts("| domain | op | opsets | shape rule | fast kernel | flags | gradient |\n"
         "|---|---|---|---|---|---|---|");
  else
    printf("%-*s  %-*s  %-7s  %-5s  %-4s  %-15s  %s\n", w_dom, "domain", w_op, "op", "opsets",
           "shape", "fast", "flags", "gradient");
  for (int i = 0; i < n; i++) {
    const nbl_op_info *o = &ops[i];
    char range[32], g[160], fl[64];
    if (o->since_version == o->max_version)
      snprintf(range, sizeof range, "%d", o->since_version);
    else
      snprintf(range, sizeof range, "%d-%d", o->since_version, o->max_version);
    grad_cell(o, g, sizeof g);
    flags_cell(o, fl, sizeof fl);
    if (md)
      printf("| %s | %s | %s | %s | %s | %s | %s |\n", dom(o), o->name, range,
             o->shape_rule ? "yes" : "no", o->fast_kernel ? "yes" : "no", fl, g);
    else {
      printf("%-*s  %-*s  %-7s  %-5s  %-4s  %-15s  %s\n", w_dom, dom(o), w_op, o->name, range,
             o->shape_rule ? "yes" : "no", o->fast_kernel ? "yes" : "no", fl, g);
    }
  }
  printf("\n%d ops in %d entries: %d with a shape rule, %d with a gradient rule, %d not "
         "differentiable, %d with a fast kernel\n",
         distinct, n, shape, grad, no_grad, fast);
  free(ops);
  return 0;
}
