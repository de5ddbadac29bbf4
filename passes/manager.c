/* manager.c - pipelines: parsing, running, verification between passes,
 * MLIR/LLVM-style printing and per-pass dump files, pass statistics. */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "nibble.h" /* implements the pipeline API; prints and saves dumps through it */
#include "pass.h"

typedef struct pipeline_entry {
  const nbl_pass_def *pass;
  char *values[NBL_PASS_MAX_OPTIONS];
} pipeline_entry;

struct nbl_pipeline {
  int n;
  pipeline_entry *entries;
};

/* ------------------------------------------------------------------ options */

static int opt_index(const nbl_pass_def *p, const char *name) {
  for (int i = 0; i < NBL_PASS_MAX_OPTIONS && p->options[i].name; i++)
    if (strcmp(p->options[i].name, name) == 0) return i;
  return -1;
}

static const char *opt_text(const nbl_pass_ctx *ctx, const char *name) {
  int i = opt_index(ctx->pass, name);
  if (i < 0) return NULL; /* a pass asking for an option it did not declare: its own bug */
  return ctx->values[i] ? ctx->values[i] : ctx->pass->options[i].dflt;
}

int64_t nbl_pass_opt_int(const nbl_pass_ctx *ctx, const char *name) {
  const char *t = opt_text(ctx, name);
  return t ? strtoll(t, NULL, 0) : 0;
}

double nbl_pass_opt_float(const nbl_pass_ctx *ctx, const char *name) {
  const char *t = opt_text(ctx, name);
  return t ? strtod(t, NULL) : 0.0;
}

static int parse_bool(const char *t, int *out) {
  if (!strcmp(t, "1") || !strcmp(t, "true") || !strcmp(t, "on") || !strcmp(t, "yes")) {
    *out = 1;
    return 0;
  }
  if (!strcmp(t, "0") || !strcmp(t, "false") || !strcmp(t, "off") || !strcmp(t, "no")) {
    *out = 0;
    return 0;
  }
  return -1;
}

int nbl_pass_opt_bool(const nbl_pass_ctx *ctx, const char *name) {
  const char *t = opt_text(ctx, name);
  int b = 0;
  if (t) parse_bool(t, &b);
  return b;
}

const char *nbl_pass_opt_string(const nbl_pass_ctx *ctx, const char *name) {
  const char *t = opt_text(ctx, name);
  return t ? t : "";
}

void nbl_pass_logf(nbl_pass_ctx *ctx, const char *fmt, ...) {
  if (!ctx->log) return;
  va_list ap;
  va_start(ap, fmt);
  fprintf(ctx->log, "%s: ", ctx->pass->name);
  vfprintf(ctx->log, fmt, ap);
  fputc('\n', ctx->log);
  va_end(ap);
}

static const char *opt_type_name(nbl_opt_type t) {
  switch (t) {
  case NBL_OPT_INT: return "int";
  case NBL_OPT_FLOAT: return "float";
  case NBL_OPT_BOOL: return "bool";
  case NBL_OPT_STRING: return "string";
  }
  return "?";
}

void nbl_passes_print(FILE *out) {
  for (int i = 0; i < nbl_pass_count(); i++) {
    const nbl_pass_def *p = nbl_pass_at(i);
    fprintf(out, "%-20s %s%s\n", p->name, p->description,
            p->changes_numerics ? " [changes numerics]" : "");
    for (int k = 0; k < NBL_PASS_MAX_OPTIONS && p->options[k].name; k++)
      fprintf(out, "    %s=<%s> (default %s)  %s\n", p->options[k].name,
              opt_type_name(p->options[k].type), p->options[k].dflt, p->options[k].help);
  }
}

/* ------------------------------------------------------------------ parsing */

void nbl_pipeline_free(nbl_pipeline *p) {
  if (!p) return;
  for (int i = 0; i < p->n; i++)
    for (int k = 0; k < NBL_PASS_MAX_OPTIONS; k++) free(p->entries[i].values[k]);
  free(p->entries);
  free(p);
}

static void list_passes(char *buf, size_t len) {
  size_t o = 0;
  buf[0] = 0;
  for (int i = 0; i < nbl_pass_count() && o < len; i++) {
    o += (size_t)snprintf(buf + o, len - o, "%s%s", o ? ", " : "", nbl_pass_at(i)->name);
  }
}

static void list_options(const nbl_pass_def *p, char *buf, size_t len) {
  size_t o = 0;
  buf[0] = 0;
  for (int i = 0; i < NBL_PASS_MAX_OPTIONS && p->options[i].name && o < len; i++)
    o += (size_t)snprintf(buf + o, len - o, "%s%s", o ? ", " : "", p->options[i].name);
  if (!o) snprintf(buf, len, "(none)");
}

static char *trim(char *s) {
  while (*s == ' ' || *s == '\t' || *s == '\n') s++;
  char *e = s + strlen(s);
  while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n')) *--e = 0;
  return s;
}

static nbl_status check_value(const nbl_pass_def *p, const nbl_pass_option *o, const char *v) {
  char *end;
  int b;
  switch (o->type) {
  case NBL_OPT_INT:
    errno = 0;
    (void)strtoll(v, &end, 0);
    if (!*v || *end || errno)
      return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "pass '%s': option '%s' wants an int, got '%s'",
                        p->name, o->name, v);
    break;
  case NBL_OPT_FLOAT:
    (void)strtod(v, &end);
    if (!*v || *end)
      return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "pass '%s': option '%s' wants a float, got '%s'",
                        p->name, o->name, v);
    break;
  case NBL_OPT_BOOL:
    if (parse_bool(v, &b))
      return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                        "pass '%s': option '%s' wants a bool (0/1/true/false), got '%s'", p->name,
                        o->name, v);
    break;
  case NBL_OPT_STRING: break;
  }
  return NBL_OK;
}

static nbl_status parse_options(pipeline_entry *e, char *text) {
  /* text: "k=v,k2=v2" ; values may not contain ',' '}' */
  char *save = NULL;
  for (char *kv = strtok_r(text, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
    kv = trim(kv);
    if (!*kv) continue;
    char *eq = strchr(kv, '=');
    if (!eq)
      return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "pass '%s': option '%s' has no value (want key=value)",
                        e->pass->name, kv);
    *eq = 0;
    char *k = trim(kv), *v = trim(eq + 1);
    int i = opt_index(e->pass, k);
    if (i < 0) {
      char opts[1024];
      list_options(e->pass, opts, sizeof opts);
      return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "pass '%s' has no option '%s' (options: %s)",
                        e->pass->name, k, opts);
    }
    nbl_status st = check_value(e->pass, &e->pass->options[i], v);
    if (st) return st;
    free(e->values[i]);
    e->values[i] = strdup(v);
    if (!e->values[i]) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  return NBL_OK;
}

nbl_status nbl_pipeline_parse(const char *spec, nbl_pipeline **out) {
  *out = NULL;
  if (!spec) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "pipeline: no pass list given");
  nbl_pipeline *p = calloc(1, sizeof *p);
  char *s = strdup(spec);
  if (!p || !s) {
    free(p);
    free(s);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  nbl_status st = NBL_OK;
  char *c = s;
  while (*c && st == NBL_OK) {
    /* one item: name [ '{' options '}' ] */
    char *name = c;
    while (*c && *c != ',' && *c != '{') c++;
    char *opts = NULL;
    if (*c == '{') {
      *c++ = 0;
      opts = c;
      while (*c && *c != '}') c++;
      if (!*c) {
        st = nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "pipeline '%s': missing '}'", spec);
        break;
      }
      *c++ = 0;
      while (*c == ' ') c++;
      if (*c && *c != ',') {
        st = nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "pipeline '%s': expected ',' after '}'", spec);
        break;
      }
    }
    if (*c == ',') *c++ = 0;
    name = trim(name);
    if (!*name) {
      if (opts) st = nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "pipeline '%s': options without a pass name", spec);
      continue;
    }
    if (strcmp(name, "default") == 0 && !opts) { /* the standard cleanup pipeline */
      nbl_pipeline *d = NULL;
      st = nbl_pipeline_parse(NBL_DEFAULT_PIPELINE, &d);
      if (st) break;
      pipeline_entry *ne = realloc(p->entries, sizeof(pipeline_entry) * (size_t)(p->n + d->n));
      if (!ne) {
        nbl_pipeline_free(d);
        st = nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
        break;
      }
      p->entries = ne;
      memcpy(&p->entries[p->n], d->entries, sizeof(pipeline_entry) * (size_t)d->n);
      p->n += d->n;
      d->n = 0;
      nbl_pipeline_free(d);
      continue;
    }
    const nbl_pass_def *def = nbl_pass_find(name);
    if (!def) {
      char all[2048];
      list_passes(all, sizeof all);
      st = nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "unknown pass '%s' (passes: %s)", name, all);
      break;
    }
    pipeline_entry *ne = realloc(p->entries, sizeof(pipeline_entry) * (size_t)(p->n + 1));
    if (!ne) {
      st = nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
      break;
    }
    p->entries = ne;
    pipeline_entry *e = &p->entries[p->n++];
    memset(e, 0, sizeof *e);
    e->pass = def;
    if (opts) st = parse_options(e, opts);
  }
  free(s);
  if (st) {
    nbl_pipeline_free(p);
    return st;
  }
  *out = p;
  return NBL_OK;
}

/* ------------------------------------------------------------------ statistics */

typedef struct snapshot {
  int n_nodes, n_values;
  char **nodes; /* sorted "op|name|out0" keys */
  char **values; /* sorted names */
  size_t init_bytes;
} snapshot;

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static void snap_graph(const nbl_graph *g, snapshot *s) {
  for (int i = 0; i < g->n_nodes; i++) {
    const nbl_node *n = &g->nodes[i];
    if (n->dead) continue;
    const char *o0 = (n->n_outputs && n->outputs[0] != NBL_NONE) ? g->values[n->outputs[0]].name : "";
    size_t len = strlen(n->op_type) + strlen(n->name) + strlen(o0) + strlen(g->name) + 4;
    char *k = malloc(len);
    if (!k) continue;
    snprintf(k, len, "%s|%s|%s|%s", g->name, n->op_type, n->name, o0);
    char **nn = realloc(s->nodes, sizeof(char *) * (size_t)(s->n_nodes + 1));
    if (!nn) {
      free(k);
      continue;
    }
    s->nodes = nn;
    s->nodes[s->n_nodes++] = k;
    for (int a = 0; a < n->n_attrs; a++) {
      if (n->attrs[a].type == NBL_ATTR_GRAPH && n->attrs[a].g) snap_graph(n->attrs[a].g, s);
      if (n->attrs[a].type == NBL_ATTR_GRAPHS)
        for (int j = 0; j < n->attrs[a].n; j++) snap_graph(n->attrs[a].graphs[j], s);
    }
  }
  for (int i = 0; i < g->n_values; i++) {
    const nbl_value *v = &g->values[i];
    if (v->dead) continue;
    if (v->init) s->init_bytes += v->init->nbytes;
    size_t len = strlen(v->name) + strlen(g->name) + 2;
    char *k = malloc(len);
    if (!k) continue;
    snprintf(k, len, "%s|%s", g->name, v->name);
    char **nv = realloc(s->values, sizeof(char *) * (size_t)(s->n_values + 1));
    if (!nv) {
      free(k);
      continue;
    }
    s->values = nv;
    s->values[s->n_values++] = k;
  }
}

static void snap_take(const nbl_model *m, snapshot *s) {
  memset(s, 0, sizeof *s);
  snap_graph(m->graph, s);
  if (s->nodes) qsort(s->nodes, (size_t)s->n_nodes, sizeof(char *), cmp_str);
  if (s->values) qsort(s->values, (size_t)s->n_values, sizeof(char *), cmp_str);
}

static void snap_free(snapshot *s) {
  for (int i = 0; i < s->n_nodes; i++) free(s->nodes[i]);
  for (int i = 0; i < s->n_values; i++) free(s->values[i]);
  free(s->nodes);
  free(s->values);
}

/* Count keys only in a (removed) and only in b (added); both sorted. */
static void diff_sorted(char **a, int na, char **b, int nb, int *only_a, int *only_b) {
  int i = 0, j = 0;
  *only_a = *only_b = 0;
  while (i < na || j < nb) {
    int c = i >= na ? 1 : j >= nb ? -1 : strcmp(a[i], b[j]);
    if (c == 0) {
      i++;
      j++;
    } else if (c < 0) {
      (*only_a)++;
      i++;
    } else {
      (*only_b)++;
      j++;
    }
  }
}

/* ------------------------------------------------------------------ running */

static int name_in_list(const char *list, const char *name) {
  if (!list) return 0;
  size_t n = strlen(name);
  for (const char *p = list; *p;) {
    const char *e = strchr(p, ',');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    if (len == n && strncmp(p, name, n) == 0) return 1;
    if (!e) break;
    p = e + 1;
  }
  return 0;
}

static nbl_status print_ir(const nbl_model *m, FILE *out, const char *when, const char *pass,
                           int idx, int total) {
  fprintf(out, "// ----- IR %s %s (%d/%d) ----- //\n", when, pass, idx, total);
  nbl_status st = nbl_model_print(m, NBL_FORMAT_TEXT, NULL, out);
  fputc('\n', out);
  return st;
}

static nbl_status write_dump(const nbl_model *m, const char *dir, int idx, const char *name) {
  static const struct {
    const char *ext;
    nbl_format fmt;
  } kinds[] = {{"onnxtxt", NBL_FORMAT_TEXT}, {"dot", NBL_FORMAT_DOT}};
  char path[4096];
  for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
    snprintf(path, sizeof path, "%s/%02d-%s.%s", dir, idx, name, kinds[k].ext);
    FILE *f = fopen(path, "w");
    if (!f) return nbl_errorf(NBL_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    nbl_status st = nbl_model_print(m, kinds[k].fmt, NULL, f);
    if (fclose(f) != 0 && st == NBL_OK)
      st = nbl_errorf(NBL_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    if (st) return st;
  }
  snprintf(path, sizeof path, "%s/%02d-%s.onnx", dir, idx, name);
  nbl_save_options so = {NBL_EXTERNAL_NONE, NULL, 0};
  return nbl_model_save(m, path, &so);
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

nbl_status nbl_make_dirs(const char *path) {
  if (!path || !*path) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "empty folder name");
  size_t n = strlen(path);
  char *p = malloc(n + 1);
  if (!p) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: creating the folder", path);
  memcpy(p, path, n + 1);
  nbl_status st = NBL_OK;
  struct stat sb;
  for (size_t i = 1; i <= n && !st; i++) { /* each prefix that ends a component */
    if (p[i] != '/' && p[i] != '\0') continue;
    char c = p[i];
    p[i] = '\0';
    if (mkdir(p, 0777) != 0 && errno != EEXIST)
      st = nbl_errorf(NBL_ERR_IO, "%s: cannot create folder %s: %s", path, p, strerror(errno));
    else if (stat(p, &sb) != 0 || !S_ISDIR(sb.st_mode))
      st = nbl_errorf(NBL_ERR_IO, "%s: cannot create folder: %s is not a folder", path, p);
    p[i] = c;
  }
  free(p);
  return st;
}

nbl_status nbl_pipeline_run(const nbl_pipeline *p, nbl_model *m, const nbl_pipeline_options *opt) {
  nbl_pipeline_options none = {0};
  if (!opt) opt = &none;
  FILE *out = opt->out ? opt->out : stdout;
  FILE *log = opt->log ? opt->log : stderr;
  nbl_status st = NBL_OK;
  if (opt->dump_dir) {
    if ((st = nbl_make_dirs(opt->dump_dir))) return st;
    if ((st = write_dump(m, opt->dump_dir, 0, "input"))) return st;
  }
  if (opt->pass_stats)
    fprintf(out, "%-3s %-22s %9s %7s %7s %7s %7s %12s %12s %7s\n", "#", "pass", "ms", "nodes+",
            "nodes-", "values+", "values-", "init-bytes", "->", "changes");
  for (int i = 0; i < p->n; i++) {
    const pipeline_entry *e = &p->entries[i];
    const char *name = e->pass->name;
    if (opt->print_before_all || name_in_list(opt->print_before, name))
      if ((st = print_ir(m, out, "before", name, i + 1, p->n))) return st;
    snapshot before, after;
    if (opt->pass_stats) snap_take(m, &before);
    nbl_pass_ctx ctx = {.model = m, .pass = e->pass, .log = log};
    for (int k = 0; k < NBL_PASS_MAX_OPTIONS; k++) ctx.values[k] = e->values[k];
    double t0 = now_ms();
    st = e->pass->run(&ctx);
    double t1 = now_ms();
    if (st) {
      nbl_error_prefix("pass '%s' (%d/%d)", name, i + 1, p->n);
      if (opt->pass_stats) snap_free(&before);
      return st;
    }
    if (opt->verify_each && (st = nbl_model_verify(m))) {
      nbl_error_prefix("the IR is invalid after pass '%s' (%d/%d)", name, i + 1, p->n);
      if (opt->pass_stats) snap_free(&before);
      return st;
    }
    if (opt->pass_stats) {
      snap_take(m, &after);
      int nr, na, vr, va;
      diff_sorted(before.nodes, before.n_nodes, after.nodes, after.n_nodes, &nr, &na);
      diff_sorted(before.values, before.n_values, after.values, after.n_values, &vr, &va);
      fprintf(out, "%-3d %-22s %9.3f %7d %7d %7d %7d %12zu %12zu %7d\n", i + 1, name, t1 - t0, na,
              nr, va, vr, before.init_bytes, after.init_bytes, ctx.changed);
      snap_free(&before);
      snap_free(&after);
    }
    if (opt->print_after_all || name_in_list(opt->print_after, name) ||
        (opt->print_changed && ctx.changed))
      if ((st = print_ir(m, out, "after", name, i + 1, p->n))) return st;
    if (opt->dump_dir) {
      char nm[256];
      snprintf(nm, sizeof nm, "%s", name);
      if ((st = write_dump(m, opt->dump_dir, i + 1, nm))) return st;
    }
  }
  return NBL_OK;
}
