/* cmd_compare.c - nibble compare A.onnx B.onnx: run both models on the same
 * inputs and report, per output, per quantized tensor and per intermediate
 * value present in both (by name), the max abs error and the SQNR of B
 * against A. A quantized tensor is a value of B named X_q4 / X_q8 (as
 * quantize-int4 names them, kept by pack-int4 and lower-to-onnx) whose source
 * X is a value of A: its row measures that quantizer's error. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "nibble.h"

typedef struct saved {
  char *name;
  int rank;
  int64_t dims[NBL_MAX_DIMS];
  int64_t n;
  float *data;
} saved;

typedef struct cmp_ctx {
  saved *v;
  int n, cap;
  int failed;
  /* phase 2 */
  int csv;
  int rows;
  const nbl_session *a; /* model A's session: its outputs get their own rows */
  FILE *out;            /* the table, printed once both runs succeeded */
} cmp_ctx;

static int64_t host_numel(const nbl_host_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i < t->rank; i++) n *= t->dims[i];
  return n;
}

static saved *find_saved(cmp_ctx *c, const char *name) {
  for (int i = 0; i < c->n; i++)
    if (!strcmp(c->v[i].name, name)) return &c->v[i];
  return NULL;
}

/* on_value for model A: keep a copy of every float tensor. */
static void keep_value(void *user, const nbl_host_tensor *t) {
  cmp_ctx *c = user;
  /* sequences and optionals are left out (their elements are unnamed) */
  if (t->kind != NBL_VALUE_TENSOR || t->dtype != NBL_DT_FLOAT || !t->name || c->failed ||
      find_saved(c, t->name))
    return;
  if (c->n == c->cap) {
    int cap = c->cap ? c->cap * 2 : 64;
    saved *v = realloc(c->v, sizeof *v * (size_t)cap);
    if (!v) {
      c->failed = 1;
      return;
    }
    c->v = v;
    c->cap = cap;
  }
  saved *s = &c->v[c->n];
  memset(s, 0, sizeof *s);
  s->n = host_numel(t);
  s->name = strdup(t->name);
  s->data = malloc(sizeof(float) * (size_t)(s->n ? s->n : 1));
  if (!s->name || !s->data) {
    free(s->name);
    free(s->data);
    c->failed = 1;
    return;
  }
  s->rank = t->rank;
  memcpy(s->dims, t->dims, sizeof(int64_t) * (size_t)t->rank);
  memcpy(s->data, t->data, sizeof(float) * (size_t)s->n);
  c->n++;
}

/* One row: B's tensor q against A's reference r (n elements). top1 < 0: none. */
static void print_row(cmp_ctx *c, const char *kind, const char *name, const char *ref_name,
                      const float *r, const float *q, int64_t n, double top1) {
  double mx = 0, sr = 0, se = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = (double)r[i] - (double)q[i];
    if (isnan(d)) d = (isnan(r[i]) && isnan(q[i])) ? 0 : INFINITY;
    if (fabs(d) > mx || isnan(mx)) mx = fabs(d);
    sr += (double)r[i] * r[i];
    se += d * d;
  }
  double sqnr = se > 0 ? 10.0 * log10(sr / se) : INFINITY;
  if (c->csv) {
    fprintf(c->out, "%s,%s,%s,%lld,%.6g,%.4f,", kind, name, ref_name, (long long)n, mx, sqnr);
    if (top1 >= 0) fprintf(c->out, "%.4f", top1);
    fprintf(c->out, "\n");
  } else {
    char both[600];
    if (strcmp(name, ref_name)) snprintf(both, sizeof both, "%s (vs %s)", name, ref_name);
    else snprintf(both, sizeof both, "%s", name);
    fprintf(c->out, "%-9s %-60s %10lld %12.4g %9.2f", kind, both, (long long)n, mx, sqnr);
    if (top1 >= 0) fprintf(c->out, " %8.2f%%", 100.0 * top1);
    fprintf(c->out, "\n");
  }
  c->rows++;
}

/* Source name of a quantized value "X_q4" / "X_q8" / "X_qt" / "X_q4_3" into out; 0 if none. */
static int quant_source(const char *name, char *out, size_t cap) {
  const char *p = strstr(name, "_q");
  const char *last = NULL;
  while (p) {
    last = p;
    p = strstr(p + 1, "_q");
  }
  if (!last || (last[2] != '4' && last[2] != '8' && last[2] != 't')) return 0;
  const char *t = last + 3;
  if (*t == '_') {
    t++;
    if (!*t) return 0;
    while (*t >= '0' && *t <= '9') t++;
  }
  if (*t) return 0;
  size_t n = (size_t)(last - name);
  if (n == 0 || n >= cap) return 0;
  memcpy(out, name, n);
  out[n] = 0;
  return 1;
}

/* on_value for model B: compare with A. */
static void compare_value(void *user, const nbl_host_tensor *t) {
  cmp_ctx *c = user;
  if (t->kind != NBL_VALUE_TENSOR || t->dtype != NBL_DT_FLOAT || !t->name) return;
  int64_t n = host_numel(t);
  char src[512];
  saved *s = NULL;
  const char *kind = "value";
  if (quant_source(t->name, src, sizeof src) && (s = find_saved(c, src)) != NULL)
    kind = "quantized";
  else
    s = find_saved(c, t->name);
  if (!s || s->n != n) return;
  for (int i = 0; c->a && i < nbl_session_output_count(c->a); i++)
    if (!strcmp(nbl_session_output_name(c->a, i), t->name)) return;
  print_row(c, kind, t->name, s->name, s->data, t->data, n, -1);
}

static void usage(FILE *f) {
  fprintf(f, "usage: nibble compare A.onnx B.onnx [--input NAME=FILE(.pb|.npy)]...\n"
             "                      [--format text|csv] [--reference] [--threads N]\n"
             "Runs both models on the same inputs; per output, quantized tensor and value\n"
             "present in both: max abs error and SQNR (dB) of B against A, top-1 agreement\n"
             "for [N,C] outputs.\n");
}

static const char *kind_name(nbl_value_kind k) {
  return k == NBL_VALUE_SEQUENCE ? "sequence" : k == NBL_VALUE_OPTIONAL ? "optional" : "tensor";
}

/* Rows for output tb of B against ta of A: float tensors of as many
 * elements get a row; sequences and optionals of as many elements a row per
 * float tensor element ("name[i]"); anything else a line saying why not. */
static void output_rows(cmp_ctx *c, const nbl_host_tensor *ta, const nbl_host_tensor *tb,
                        const char *name, int depth) {
  if (ta->kind != tb->kind || ta->n_items != tb->n_items || depth > 8) {
    if (c->csv) return;
    fprintf(c->out, "%-9s %s: not compared (A has a %s of %d elements, B a %s of %d)\n", "output",
            name, kind_name(ta->kind), ta->n_items, kind_name(tb->kind), tb->n_items);
    return;
  }
  if (ta->kind != NBL_VALUE_TENSOR) {
    for (int i = 0; ta->items && tb->items && i < ta->n_items; i++) {
      char nm[600];
      snprintf(nm, sizeof nm, "%s[%d]", name, i);
      output_rows(c, &ta->items[i], &tb->items[i], nm, depth + 1);
    }
    return;
  }
  if (ta->dtype != NBL_DT_FLOAT || tb->dtype != NBL_DT_FLOAT || host_numel(ta) != host_numel(tb))
    return;
  double top1 = -1;
  if (ta->rank == 2 && ta->dims[1] > 1 && ta->dims[0] > 0) {
    int64_t N = ta->dims[0], C = ta->dims[1], same = 0;
    const float *a = ta->data, *b = tb->data;
    for (int64_t r = 0; r < N; r++) {
      int64_t ia = 0, ib = 0;
      for (int64_t k = 1; k < C; k++) {
        if (a[r * C + k] > a[r * C + ia]) ia = k;
        if (b[r * C + k] > b[r * C + ib]) ib = k;
      }
      same += ia == ib;
    }
    top1 = (double)same / (double)N;
  }
  print_row(c, "output", name, name, ta->data, tb->data, host_numel(ta), top1);
}

/* The declared kind of the input named `name` of s, or -1 if s has none. */
static int input_kind(const nbl_session *s, const char *name) {
  for (int k = 0; k < nbl_session_input_count(s); k++) {
    nbl_host_tensor info;
    if (!strcmp(nbl_session_input_name(s, k), name) &&
        nbl_session_input_info(s, k, &info) == NBL_OK)
      return (int)info.kind;
  }
  return -1;
}

/* The last error, prefixed with the model's path unless it already names it. */
static void report(const char *path) {
  const char *e = nbl_last_error();
  if (strstr(e, path)) fprintf(stderr, "nibble compare: %s\n", e);
  else fprintf(stderr, "nibble compare: %s: %s\n", path, e);
}

/* Load model `path` and make its session; every input it has must be among ins. */
static int open_model(const char *path, nbl_model **m, nbl_session **s, nbl_session_options *so,
                      int n_in, const nbl_host_tensor *ins) {
  if (nbl_model_load(path, m) != NBL_OK) {
    fprintf(stderr, "nibble compare: %s\n", nbl_last_error());
    return 2;
  }
  nbl_status st = nbl_session_create(*m, so, s);
  if (st != NBL_OK) {
    report(path);
    return st == NBL_ERR_UNSUPPORTED || st == NBL_ERR_INVALID_MODEL ? 2 : 1;
  }
  for (int k = 0; k < nbl_session_input_count(*s); k++) {
    const char *nm = nbl_session_input_name(*s, k);
    int found = 0;
    for (int i = 0; i < n_in; i++) found |= !strcmp(ins[i].name, nm);
    if (!found) {
      fprintf(stderr, "nibble compare: %s: input '%s' not given; use --input %s=FILE\n", path,
              nm, nm);
      return 2;
    }
  }
  return 0;
}

/* Run session s (of model `path`) on the inputs it has. */
static int run_model(const char *path, nbl_session *s, int n_in, const nbl_host_tensor *ins,
                     const nbl_host_tensor **outs) {
  nbl_host_tensor *mine = calloc((size_t)n_in + 1, sizeof *mine);
  if (!mine) return 1;
  int k = 0;
  for (int i = 0; i < n_in; i++)
    for (int j = 0; j < nbl_session_input_count(s); j++)
      if (!strcmp(ins[i].name, nbl_session_input_name(s, j))) mine[k++] = ins[i];
  nbl_status st = nbl_session_run(s, k, mine, outs);
  free(mine);
  if (st != NBL_OK) {
    report(path);
    return st == NBL_ERR_INVALID_ARGUMENT ? 2 : 1;
  }
  return 0;
}

int nbl_cmd_compare(int argc, char **argv) {
  const char *pa = NULL, *pb = NULL, *format = "text";
  int reference = 0, threads = 0, n_in = 0;
  char **specs = calloc((size_t)argc + 1, sizeof(char *));
  if (!specs) return 2;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    int nx = i + 1 < argc;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      free(specs);
      return 0;
    } else if (!strcmp(a, "--input") && nx) {
      specs[n_in++] = argv[++i];
    } else if (!strcmp(a, "--format") && nx) {
      format = argv[++i];
    } else if (!strcmp(a, "--reference")) {
      reference = 1;
    } else if (!strcmp(a, "--threads") && nx) {
      threads = atoi(argv[++i]);
    } else if (a[0] == '-' || (pa && pb)) {
      fprintf(stderr, "nibble compare: unexpected argument '%s'\n", a);
      usage(stderr);
      free(specs);
      return 2;
    } else if (!pa) {
      pa = a;
    } else {
      pb = a;
    }
  }
  if (!pa || !pb || (strcmp(format, "text") && strcmp(format, "csv"))) {
    usage(stderr);
    free(specs);
    return 2;
  }
  int rc = 2;
  char *table = NULL;
  size_t table_len = 0;
  cmp_ctx c = {0};
  c.csv = !strcmp(format, "csv");
  nbl_model *ma = NULL, *mb = NULL;
  nbl_session *sa = NULL, *sb = NULL;
  nbl_host_tensor *ins = calloc((size_t)n_in + 1, sizeof *ins);
  if (!ins) goto out;
  for (int i = 0; i < n_in; i++) {
    char *eq = strchr(specs[i], '=');
    if (!eq || eq == specs[i]) {
      fprintf(stderr, "nibble compare: --input expects NAME=FILE, got '%s'\n", specs[i]);
      goto out;
    }
    ins[i].name = strndup(specs[i], (size_t)(eq - specs[i]));
    if (!ins[i].name) goto out;
  }
  const nbl_host_tensor *oa = NULL, *ob = NULL;
  nbl_session_options so = {.threads = threads, .reference = reference, .on_value = keep_value,
                            .user = &c};
  /* both models open (and every input given) before anything runs or prints */
  nbl_session_options sob = so;
  sob.on_value = compare_value;
  rc = open_model(pa, &ma, &sa, &so, n_in, ins);
  if (!rc) rc = open_model(pb, &mb, &sb, &sob, n_in, ins);
  if (rc) goto out;
  /* the files, read as the kind of value (tensor, sequence, optional) the models declare */
  for (int i = 0; i < n_in; i++) {
    const char *name = ins[i].name;
    int kind = input_kind(sa, name);
    if (kind < 0) kind = input_kind(sb, name);
    nbl_value_kind vk = kind < 0 ? NBL_VALUE_TENSOR : (nbl_value_kind)kind;
    if (nbl_value_read(strchr(specs[i], '=') + 1, vk, &ins[i]) != NBL_OK) {
      fprintf(stderr, "nibble compare: %s\n", nbl_last_error());
      free((void *)name);
      rc = 2;
      goto out;
    }
    free((void *)ins[i].name);
    ins[i].name = name;
  }
  for (int i = 0; i < n_in; i++) keep_value(&c, &ins[i]); /* graph inputs are quantized too */
  if (!rc) rc = run_model(pa, sa, n_in, ins, &oa);
  if (rc) goto out;
  if (c.failed) {
    fprintf(stderr, "nibble compare: out of memory keeping the values of %s\n", pa);
    rc = 1;
    goto out;
  }
  c.out = open_memstream(&table, &table_len);
  if (!c.out) {
    fprintf(stderr, "nibble compare: out of memory\n");
    rc = 1;
    goto out;
  }
  if (c.csv) fprintf(c.out, "kind,name,reference,numel,max_abs_err,sqnr_db,top1_agreement\n");
  else
    fprintf(c.out, "%-9s %-60s %10s %12s %9s %9s\n", "kind", "name", "numel", "max abs err",
            "SQNR dB", "top-1");
  c.a = sa;
  rc = run_model(pb, sb, n_in, ins, &ob);
  if (rc) goto out;
  for (int i = 0; i < nbl_session_output_count(sb); i++)
    for (int j = 0; j < nbl_session_output_count(sa); j++)
      if (!strcmp(oa[j].name, ob[i].name)) output_rows(&c, &oa[j], &ob[i], ob[i].name, 0);
  rc = 0;
out:
  if (c.out) {
    fclose(c.out); /* table and table_len valid from here */
    if (rc == 0) fwrite(table, 1, table_len, stdout);
    free(table);
  }
  for (int i = 0; ins && i < n_in; i++) nbl_host_tensor_free(&ins[i]);
  free(ins);
  free(specs);
  for (int i = 0; i < c.n; i++) {
    free(c.v[i].name);
    free(c.v[i].data);
  }
  free(c.v);
  nbl_session_free(sa);
  nbl_session_free(sb);
  nbl_model_free(ma);
  nbl_model_free(mb);
  return rc;
}
