/*
 * print_text.c - the ONNX textual syntax (what onnx.parser.parse_model reads),
 * plus nbl_model_print and the helpers the other printers share.
 *
 * The dialect is the one the parser of ONNX 1.12 reads, so a dump can be fed
 * back to the onnx python package installed with nibble:
 *  - Identifiers of that parser are [A-Za-z_][A-Za-z0-9_]* and it has no
 *    quoting. A name outside that set ("onnx::Conv_1", "layer1.0/conv",
 *    "0") is printed mangled: every other character becomes '_', a leading
 *    digit gets a '_' prefix, a name that is a type keyword ("float",
 *    "seq", "nan"...) gets a '_' suffix, and a clash with another name of
 *    the model gets "_2", "_3"... appended. The mangling is the same in
 *    every graph of the model, so subgraphs still refer to outer names.
 *  - Node names have no syntax in 1.12: they follow the node as a comment.
 *  - Omitted optional inputs/outputs are left blank: "Resize(X, , scales)".
 *  - Initializers that are graph inputs are printed in the input list with
 *    "= {values}"; the others in the "<...>" list after the outputs, next
 *    to the value_info entries.
 *  - Summarized mode (full=0): an initializer with more than
 *    NBL_PRINT_SUMMARY_MAX elements keeps its typed declaration but no
 *    value ("float[64,3,7,7] conv1_w") and a comment after it gives the
 *    element count, min/max/mean and the first values. In the "<...>" list
 *    such a declaration parses back as a value_info (the text stays valid
 *    syntax; the values are what is elided). A large tensor attribute is
 *    printed with empty braces "float[1000] {}" and the same comment.
 *  - Features this parser version lacks are printed in the syntax of later
 *    ONNX parsers, so nothing is silently dropped: non-tensor types
 *    ("seq(float[3])", "map(int64, float)", "optional(...)",
 *    "sparse_tensor(...)"), empty list attributes ("a: ints = []"),
 *    "nan"/"inf" values, backslash escapes in strings, float16/bfloat16 data
 *    as raw 16-bit patterns. Sparse tensor attributes, sparse initializers
 *    and model functions have no textual syntax: a comment says what is not
 *    shown. Training info has none either: its graphs (initialization,
 *    algorithm) and bindings follow the model as comment lines ("# "), in
 *    the graph syntax, so the file still parses and the training graph can
 *    be read.
 */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ir.h"
#include "nibble.h" /* implements nbl_model_print of the public API */
#include "print_internal.h"

/* ------------------------------------------------------------------ shared helpers */

char *nbl_fmt_float(char *buf, double v, int is_double, int float_literal) {
  if (isnan(v)) {
    strcpy(buf, "nan");
    return buf;
  }
  if (isinf(v)) {
    strcpy(buf, v < 0 ? "-inf" : "inf");
    return buf;
  }
  /* The fewest significant digits p that read back as v. Reading back is
   * monotone in p (the nearest p+1-digit decimal is at least as close as the
   * p-digit one, which is also a p+1-digit decimal), so a binary search over
   * [1, 9] or [1, 17] finds the same p as trying them in order, in 4 or 5
   * formatting rounds instead of up to 17. The formats are literals: glibc
   * takes a slower path for a '*' precision. */
  static const char *const fmt[18] = {"",     "%.1g",  "%.2g",  "%.3g",  "%.4g",  "%.5g",
                                      "%.6g", "%.7g",  "%.8g",  "%.9g",  "%.10g", "%.11g",
                                      "%.12g", "%.13g", "%.14g", "%.15g", "%.16g", "%.17g"};
  int lo = 1, hi = is_double ? 17 : 9; /* hi always reads back */
  while (lo < hi) {
    const int p = (lo + hi) / 2;
    snprintf(buf, 40, fmt[p], v);
    if (is_double ? strtod(buf, NULL) == v : strtof(buf, NULL) == (float)v) hi = p;
    else lo = p + 1;
  }
  snprintf(buf, 40, fmt[hi], v);
  if (float_literal && !strpbrk(buf, ".eEni")) strcat(buf, ".0");
  return buf;
}

nbl_status nbl_tensor_check_payload(const nbl_tensor *t) {
  const char *nm = (t->name && *t->name) ? t->name : "<unnamed>";
  int64_t n = nbl_tensor_numel(t);
  if (n < 0) return nbl_errorf(NBL_ERR_INVALID_MODEL, "tensor '%s': invalid dims", nm);
  if (t->dtype == NBL_DT_STRING) {
    if (t->n_strings != n || (n > 0 && (!t->strings || !t->string_lens)))
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "tensor '%s': %lld strings for %lld elements", nm,
                        (long long)t->n_strings, (long long)n);
    return NBL_OK;
  }
  if (!nbl_dtype_valid(t->dtype) || nbl_dtype_bits(t->dtype) == 0)
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "tensor '%s': invalid element type %d", nm,
                      (int)t->dtype);
  size_t need = nbl_dtype_nbytes(t->dtype, n);
  if (t->nbytes < need || (need > 0 && !t->data))
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "tensor '%s': %zu bytes of data for %lld %s elements",
                      nm, t->nbytes, (long long)n, nbl_dtype_name(t->dtype));
  return NBL_OK;
}

/* Complex tensors hold 2 scalars per element; stats run over the scalars. */
static double scalar_at(const nbl_tensor *t, int64_t i) {
  if (t->dtype == NBL_DT_COMPLEX64) {
    float v;
    memcpy(&v, (const unsigned char *)t->data + 4 * i, 4);
    return v;
  }
  if (t->dtype == NBL_DT_COMPLEX128) {
    double v;
    memcpy(&v, (const unsigned char *)t->data + 8 * i, 8);
    return v;
  }
  if (t->dtype >= NBL_DT_FLOAT8E4M3FN && t->dtype <= NBL_DT_FLOAT8E5M2FNUZ)
    return ((const unsigned char *)t->data)[i]; /* raw codes */
  return nbl_tensor_get_f64(t, i);
}

static int64_t scalar_count(const nbl_tensor *t) {
  int64_t n = nbl_tensor_numel(t);
  if (t->dtype == NBL_DT_COMPLEX64 || t->dtype == NBL_DT_COMPLEX128) n *= 2;
  return n;
}

void nbl_tensor_stats_compute(const nbl_tensor *t, nbl_tensor_stats *st) {
  memset(st, 0, sizeof *st);
  int64_t n = scalar_count(t);
  st->n = n;
  if (t->dtype == NBL_DT_STRING || n <= 0) return;
  double sum = 0;
  int64_t cnt = 0;
  st->min = INFINITY;
  st->max = -INFINITY;
  for (int64_t i = 0; i < n; i++) {
    double v = scalar_at(t, i);
    if (isnan(v)) {
      st->n_nan++;
      continue;
    }
    if (v < st->min) st->min = v;
    if (v > st->max) st->max = v;
    sum += v;
    cnt++;
  }
  if (cnt) {
    st->mean = sum / (double)cnt;
  } else {
    st->min = st->max = st->mean = NAN;
  }
}

char *nbl_type_to_string(const nbl_type *t, char *buf, size_t len) {
  size_t o = 0;
  buf[0] = 0;
#define PUT(...)                                                       \
  do {                                                                 \
    if (o < len) {                                                     \
      int k_ = snprintf(buf + o, len - o, __VA_ARGS__);                \
      if (k_ > 0) o += (size_t)k_;                                     \
    }                                                                  \
  } while (0)
  if (!t || t->kind == NBL_TYPE_NONE) {
    PUT("?");
  } else if (t->kind == NBL_TYPE_TENSOR || t->kind == NBL_TYPE_SPARSE_TENSOR) {
    if (t->kind == NBL_TYPE_SPARSE_TENSOR) PUT("sparse_tensor(");
    PUT("%s", nbl_dtype_name(t->elem));
    if (t->rank < 0) {
      PUT("[]");
    } else if (t->rank > 0) {
      PUT("[");
      for (int i = 0; i < t->rank; i++) {
        if (i) PUT(",");
        if (t->dims && t->dims[i].param && *t->dims[i].param)
          PUT("%s", t->dims[i].param);
        else if (t->dims && t->dims[i].value >= 0)
          PUT("%lld", (long long)t->dims[i].value);
        else
          PUT("?");
      }
      PUT("]");
    }
    if (t->kind == NBL_TYPE_SPARSE_TENSOR) PUT(")");
  } else {
    char inner[256];
    nbl_type_to_string(t->inner, inner, sizeof inner);
    if (t->kind == NBL_TYPE_SEQUENCE)
      PUT("seq(%s)", inner);
    else if (t->kind == NBL_TYPE_OPTIONAL)
      PUT("optional(%s)", inner);
    else
      PUT("map(%s, %s)", nbl_dtype_name(t->elem), inner);
  }
#undef PUT
  if (o >= len && len > 4) strcpy(buf + len - 4, "...");
  return buf;
}

nbl_status nbl_model_print(const nbl_model *m, nbl_format fmt, const nbl_print_options *opt,
                           FILE *out) {
  if (!m || !out) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_model_print: NULL argument");
  if (!m->graph)
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: model has no graph", nbl_model_label(m));
  int full = opt ? opt->full : 0;
  switch (fmt) {
  case NBL_FORMAT_TEXT: return nbl_print_text(m, full, out);
  case NBL_FORMAT_DOT: return nbl_print_dot(m, full, out);
  case NBL_FORMAT_JSON: return nbl_print_json(m, full, out);
  }
  return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_model_print: unknown format %d", (int)fmt);
}

/* ------------------------------------------------------------------ name mangling */

/* A string -> string map with open addressing; keys and values malloc'd. */
typedef struct strmap {
  char **keys, **vals;
  size_t cap, n;
} strmap;

static uint64_t hash_s(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

static void strmap_free(strmap *m) {
  for (size_t i = 0; i < m->cap; i++) {
    free(m->keys[i]);
    free(m->vals[i]);
  }
  free(m->keys);
  free(m->vals);
  memset(m, 0, sizeof *m);
}

static size_t strmap_slot(const strmap *m, const char *k) {
  size_t i = (size_t)hash_s(k) & (m->cap - 1);
  while (m->keys[i] && strcmp(m->keys[i], k) != 0) i = (i + 1) & (m->cap - 1);
  return i;
}

static const char *strmap_get(const strmap *m, const char *k) {
  if (!m->cap) return NULL;
  size_t i = strmap_slot(m, k);
  return m->keys[i] ? m->vals[i] : NULL;
}

/* Insert (k takes ownership of nothing: both are copied). false: out of memory. */
static bool strmap_put(strmap *m, const char *k, const char *v) {
  if ((m->n + 1) * 2 > m->cap) {
    size_t nc = m->cap ? m->cap * 2 : 64;
    char **nk = calloc(nc, sizeof(char *)), **nv = calloc(nc, sizeof(char *));
    if (!nk || !nv) {
      free(nk);
      free(nv);
      return false;
    }
    strmap old = *m;
    m->keys = nk;
    m->vals = nv;
    m->cap = nc;
    for (size_t i = 0; i < old.cap; i++)
      if (old.keys[i]) {
        size_t j = strmap_slot(m, old.keys[i]);
        m->keys[j] = old.keys[i];
        m->vals[j] = old.vals[i];
      }
    free(old.keys);
    free(old.vals);
  }
  size_t i = strmap_slot(m, k);
  if (m->keys[i]) return true;
  m->keys[i] = strdup(k);
  m->vals[i] = strdup(v);
  if (!m->keys[i] || !m->vals[i]) {
    free(m->keys[i]);
    free(m->vals[i]);
    m->keys[i] = m->vals[i] = NULL;
    return false;
  }
  m->n++;
  return true;
}

static const char *const reserved_words[] = {
    "float",  "uint8",  "int8",      "uint16",     "int16",         "int32",
    "int64",  "string", "bool",      "float16",    "double",        "uint32",
    "uint64", "complex64", "complex128", "bfloat16", "seq",         "map",
    "optional", "sparse_tensor"};

static bool is_reserved(const char *s) {
  for (size_t i = 0; i < sizeof reserved_words / sizeof reserved_words[0]; i++)
    if (strcmp(s, reserved_words[i]) == 0) return true;
  return strcasecmp(s, "nan") == 0 || strcasecmp(s, "inf") == 0 ||
         strcasecmp(s, "infinity") == 0;
}

static bool is_plain(const char *s) {
  if (!s || !(isalpha((unsigned char)*s) || *s == '_')) return false;
  for (const char *p = s; *p; p++)
    if (!(isalnum((unsigned char)*p) || *p == '_')) return false;
  return !is_reserved(s);
}

/* The mangled spelling of s (malloc'd), before clash resolution. */
static char *mangle_base(const char *s) {
  size_t n = strlen(s);
  char *r = malloc(n + 3);
  if (!r) return NULL;
  size_t o = 0;
  if (n == 0 || isdigit((unsigned char)s[0])) r[o++] = '_';
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    r[o++] = (isalnum(c) || c == '_') ? (char)c : '_';
  }
  r[o] = 0;
  if (is_reserved(r)) {
    r[o++] = '_';
    r[o] = 0;
  }
  return r;
}

typedef struct tp {
  FILE *f;
  int full;
  const nbl_model *m;
  strmap names; /* original -> printed */
  strmap used;  /* printed -> printed (a set) */
  bool oom;
} tp;

static void reserve_plain(tp *p, const char *s) {
  if (!s || !*s || !is_plain(s) || strmap_get(&p->names, s)) return;
  if (!strmap_put(&p->names, s, s) || !strmap_put(&p->used, s, s)) p->oom = true;
}

static void assign_mangled(tp *p, const char *s) {
  if (!s || !*s || strmap_get(&p->names, s)) return;
  char *base = mangle_base(s);
  if (!base) {
    p->oom = true;
    return;
  }
  size_t bl = strlen(base);
  char *cand = malloc(bl + 24);
  if (!cand) {
    free(base);
    p->oom = true;
    return;
  }
  strcpy(cand, base);
  for (unsigned k = 2; strmap_get(&p->used, cand) || strmap_get(&p->names, cand); k++)
    snprintf(cand, bl + 24, "%s_%u", base, k);
  if (!strmap_put(&p->names, s, cand) || !strmap_put(&p->used, cand, cand)) p->oom = true;
  free(base);
  free(cand);
}

static void walk_names(tp *p, const nbl_graph *g, void (*fn)(tp *, const char *)) {
  fn(p, g->name);
  for (nbl_id v = 0; v < g->n_values; v++)
    if (!g->values[v].dead) fn(p, g->values[v].name);
  for (nbl_id n = 0; n < g->n_nodes; n++) {
    const nbl_node *nd = &g->nodes[n];
    if (nd->dead) continue;
    for (int a = 0; a < nd->n_attrs; a++) {
      const nbl_attr *at = &nd->attrs[a];
      if (at->type == NBL_ATTR_GRAPH && at->g) walk_names(p, at->g, fn);
      if (at->type == NBL_ATTR_GRAPHS)
        for (int i = 0; i < at->n; i++)
          if (at->graphs && at->graphs[i]) walk_names(p, at->graphs[i], fn);
    }
  }
}

/* The printed spelling of a value or graph name. */
static const char *pname(tp *p, const char *s) {
  const char *r = (s && *s) ? strmap_get(&p->names, s) : NULL;
  return r ? r : (s && *s ? s : "_");
}

/* ------------------------------------------------------------------ output helpers */

static void indent(tp *p, int n) {
  for (int i = 0; i < n; i++) fputs("  ", p->f);
}

static void put_string(FILE *f, const char *s, size_t len) {
  fputc('"', f);
  for (size_t i = 0; i < len; i++) {
    if (s[i] == '"' || s[i] == '\\') fputc('\\', f);
    fputc(s[i], f);
  }
  fputc('"', f);
}

/* A dim_param or tensor name where an identifier goes (no clash check). */
static void put_ident_local(FILE *f, const char *s) {
  if (is_plain(s)) {
    fputs(s, f);
    return;
  }
  char *r = mangle_base(s);
  fputs(r ? r : "_", f);
  free(r);
}

static void put_type(tp *p, const nbl_type *t) {
  FILE *f = p->f;
  switch (t->kind) {
  case NBL_TYPE_TENSOR:
  case NBL_TYPE_SPARSE_TENSOR:
    if (t->kind == NBL_TYPE_SPARSE_TENSOR) fputs("sparse_tensor(", f);
    fputs(nbl_dtype_name(t->elem), f);
    if (t->rank < 0) {
      fputs("[]", f);
    } else if (t->rank > 0) {
      fputc('[', f);
      for (int i = 0; i < t->rank; i++) {
        if (i) fputc(',', f);
        if (t->dims && t->dims[i].param && *t->dims[i].param)
          put_ident_local(f, t->dims[i].param);
        else if (t->dims && t->dims[i].value >= 0)
          fprintf(f, "%lld", (long long)t->dims[i].value);
        else
          fputc('?', f);
      }
      fputc(']', f);
    }
    if (t->kind == NBL_TYPE_SPARSE_TENSOR) fputc(')', f);
    break;
  case NBL_TYPE_SEQUENCE:
  case NBL_TYPE_OPTIONAL:
    fputs(t->kind == NBL_TYPE_SEQUENCE ? "seq(" : "optional(", f);
    if (t->inner) put_type(p, t->inner);
    fputc(')', f);
    break;
  case NBL_TYPE_MAP:
    fprintf(f, "map(%s, ", nbl_dtype_name(t->elem));
    if (t->inner) put_type(p, t->inner);
    fputc(')', f);
    break;
  case NBL_TYPE_NONE:
    break;
  }
}

static bool type_printable(const nbl_type *t) {
  if (t->kind == NBL_TYPE_NONE) return false;
  if ((t->kind == NBL_TYPE_TENSOR || t->kind == NBL_TYPE_SPARSE_TENSOR) &&
      t->elem == NBL_DT_UNDEFINED)
    return false;
  return true;
}

/* The tensor's own type: elem[d0,d1,...] */
static void put_tensor_type(FILE *f, const nbl_tensor *t) {
  fputs(nbl_dtype_name(t->dtype), f);
  if (t->rank > 0) {
    fputc('[', f);
    for (int i = 0; i < t->rank; i++) fprintf(f, i ? ",%lld" : "%lld", (long long)t->dims[i]);
    fputc(']', f);
  }
}

/* Element i of t as the parser reads it for this dtype. */
static void put_elem(FILE *f, const nbl_tensor *t, int64_t i) {
  char b[40];
  const unsigned char *d = t->data;
  switch (t->dtype) {
  case NBL_DT_FLOAT:
  case NBL_DT_COMPLEX64:
    fputs(nbl_fmt_float(b, scalar_at(t, i), 0, 0), f);
    break;
  case NBL_DT_DOUBLE:
  case NBL_DT_COMPLEX128:
    fputs(nbl_fmt_float(b, scalar_at(t, i), 1, 0), f);
    break;
  case NBL_DT_FLOAT16:
  case NBL_DT_BFLOAT16: {
    uint16_t v;
    memcpy(&v, d + 2 * i, 2);
    fprintf(f, "%u", (unsigned)v);
    break;
  }
  case NBL_DT_FLOAT8E4M3FN:
  case NBL_DT_FLOAT8E4M3FNUZ:
  case NBL_DT_FLOAT8E5M2:
  case NBL_DT_FLOAT8E5M2FNUZ:
    fprintf(f, "%u", (unsigned)d[i]);
    break;
  case NBL_DT_UINT64: {
    uint64_t v;
    memcpy(&v, d + 8 * i, 8);
    fprintf(f, "%llu", (unsigned long long)v);
    break;
  }
  case NBL_DT_STRING:
    put_string(f, t->strings[i], t->string_lens[i]);
    break;
  default:
    fprintf(f, "%lld", (long long)nbl_tensor_get_i64(t, i));
    break;
  }
}

/* "{v, v, ...}" with line breaks every 16 values at indentation `ind`. */
static void put_tensor_values(tp *p, const nbl_tensor *t, int ind) {
  int64_t n = scalar_count(t);
  if (t->dtype == NBL_DT_STRING) n = t->n_strings;
  fputc('{', p->f);
  for (int64_t i = 0; i < n; i++) {
    if (i) fputs(",", p->f);
    if (n > 16 && i % 16 == 0) {
      fputc('\n', p->f);
      indent(p, ind + 1);
    } else if (i) {
      fputc(' ', p->f);
    }
    put_elem(p->f, t, i);
  }
  if (n > 16) {
    fputc('\n', p->f);
    indent(p, ind);
  }
  fputc('}', p->f);
}

static bool summarize(const tp *p, const nbl_tensor *t) {
  return !p->full && nbl_tensor_numel(t) > NBL_PRINT_SUMMARY_MAX;
}

/* The comment for a summarized tensor (no newline). */
static void put_summary_comment(tp *p, const nbl_tensor *t) {
  FILE *f = p->f;
  int64_t n = nbl_tensor_numel(t);
  fprintf(f, "# %lld values elided", (long long)n);
  if (t->dtype == NBL_DT_STRING) return;
  nbl_tensor_stats st;
  nbl_tensor_stats_compute(t, &st);
  char a[40], b[40], c[40];
  fprintf(f, ": min %s, max %s, mean %s", nbl_fmt_float(a, st.min, 0, 0),
          nbl_fmt_float(b, st.max, 0, 0), nbl_fmt_float(c, st.mean, 0, 0));
  if (st.n_nan) fprintf(f, ", %lld NaN", (long long)st.n_nan);
  fputs("; first", f);
  for (int64_t i = 0; i < NBL_PRINT_SUMMARY_HEAD && i < st.n; i++) {
    double v = scalar_at(t, i);
    fprintf(f, "%s %s", i ? "," : "", nbl_fmt_float(a, v, 0, 0));
  }
  if (t->ext_location) fprintf(f, "; external \"%s\"", t->ext_location);
}

/* ------------------------------------------------------------------ graphs */

static nbl_status put_graph(tp *p, const nbl_graph *g, int ind);

static void put_attr_value(tp *p, const nbl_attr *a, int ind, bool *need_nl);

/* A tensor literal "float[2] name {1.0, 2.0}" as an attribute value. A
 * summarized one leaves a comment pending (needs a newline after). */
static void put_tensor_literal(tp *p, const nbl_tensor *t, int ind, bool *need_nl) {
  put_tensor_type(p->f, t);
  if (t->name && *t->name) {
    fputc(' ', p->f);
    put_ident_local(p->f, t->name);
  }
  fputc(' ', p->f);
  if (nbl_tensor_check_payload(t) != NBL_OK) {
    fputs("{}", p->f);
    *need_nl = true;
    fprintf(p->f, " # invalid payload: %s", nbl_last_error());
    return;
  }
  if (summarize(p, t)) {
    fputs("{} ", p->f);
    put_summary_comment(p, t);
    *need_nl = true;
  } else {
    put_tensor_values(p, t, ind);
  }
}

static void put_attr_value(tp *p, const nbl_attr *a, int ind, bool *need_nl) {
  FILE *f = p->f;
  char b[40];
  switch (a->type) {
  case NBL_ATTR_FLOAT: fputs(nbl_fmt_float(b, a->f, 0, 1), f); break;
  case NBL_ATTR_INT: fprintf(f, "%lld", (long long)a->i); break;
  case NBL_ATTR_STRING: put_string(f, a->s ? a->s : "", a->s ? a->s_len : 0); break;
  case NBL_ATTR_TENSOR:
    if (a->t)
      put_tensor_literal(p, a->t, ind, need_nl);
    else
      fputs("float {}", f);
    break;
  case NBL_ATTR_GRAPH:
    if (a->g) put_graph(p, a->g, ind);
    break;
  case NBL_ATTR_FLOATS:
  case NBL_ATTR_INTS:
  case NBL_ATTR_STRINGS:
  case NBL_ATTR_TENSORS:
  case NBL_ATTR_GRAPHS:
  case NBL_ATTR_TYPE_PROTOS:
    fputc('[', f);
    for (int i = 0; i < a->n; i++) {
      if (i) fputs(", ", f);
      switch (a->type) {
      case NBL_ATTR_FLOATS: fputs(nbl_fmt_float(b, a->floats[i], 0, 1), f); break;
      case NBL_ATTR_INTS: fprintf(f, "%lld", (long long)a->ints[i]); break;
      case NBL_ATTR_STRINGS: put_string(f, a->strings[i], a->string_lens ? a->string_lens[i] : strlen(a->strings[i])); break;
      case NBL_ATTR_TENSORS: put_tensor_literal(p, a->tensors[i], ind, need_nl); break;
      case NBL_ATTR_GRAPHS: put_graph(p, a->graphs[i], ind); break;
      default: put_type(p, &a->types[i]); break;
      }
      if (*need_nl && i + 1 < a->n) {
        fputc('\n', f);
        indent(p, ind);
        *need_nl = false;
      }
    }
    fputc(']', f);
    break;
  case NBL_ATTR_TYPE_PROTO:
    if (a->types) put_type(p, &a->types[0]);
    break;
  case NBL_ATTR_SPARSE_TENSOR:
  case NBL_ATTR_SPARSE_TENSORS:
  case NBL_ATTR_UNDEFINED:
    break;
  }
}

static bool attr_is_multiline(const nbl_attr *a) {
  return a->type == NBL_ATTR_GRAPH || a->type == NBL_ATTR_GRAPHS ||
         a->type == NBL_ATTR_TENSORS || a->type == NBL_ATTR_SPARSE_TENSOR ||
         a->type == NBL_ATTR_SPARSE_TENSORS;
}

/* "<a = 1, b = [1, 2]>"; one attribute per line when any is a graph. */
static void put_attrs(tp *p, const nbl_node *nd, int ind) {
  FILE *f = p->f;
  bool multi = false;
  for (int i = 0; i < nd->n_attrs; i++)
    if (attr_is_multiline(&nd->attrs[i])) multi = true;
  fputc('<', f);
  bool need_nl = false;
  for (int i = 0; i < nd->n_attrs; i++) {
    const nbl_attr *a = &nd->attrs[i];
    if (i) fputc(',', f);
    if (need_nl || multi) {
      fputc('\n', f);
      indent(p, ind + 2);
      need_nl = false;
    } else if (i) {
      fputc(' ', f);
    }
    fputs(a->name, f);
    if (a->type == NBL_ATTR_SPARSE_TENSOR || a->type == NBL_ATTR_SPARSE_TENSORS) {
      /* no textual syntax exists for sparse tensors: leave an explicit gap */
      fprintf(f, ": %s = # %d SparseTensorProto value(s), not printable in this syntax",
              nbl_attr_type_name(a->type), a->n ? a->n : 1);
      need_nl = true;
      continue;
    }
    bool empty_list = a->n == 0 && (a->type == NBL_ATTR_FLOATS || a->type == NBL_ATTR_INTS ||
                                    a->type == NBL_ATTR_STRINGS || a->type == NBL_ATTR_TENSORS ||
                                    a->type == NBL_ATTR_GRAPHS ||
                                    a->type == NBL_ATTR_TYPE_PROTOS);
    if (empty_list || a->type == NBL_ATTR_TYPE_PROTO || a->type == NBL_ATTR_TYPE_PROTOS)
      fprintf(f, ": %s", nbl_attr_type_name(a->type));
    fputs(" = ", f);
    put_attr_value(p, a, ind + 2, &need_nl);
  }
  if (need_nl) {
    fputc('\n', f);
    indent(p, ind + 1);
  } else if (multi) {
    fputc('\n', f);
    indent(p, ind + 1);
  }
  fputc('>', f);
}

static void put_idlist(tp *p, const nbl_graph *g, int n, const nbl_id *ids) {
  for (int i = 0; i < n; i++) {
    if (i) fputs(ids[i] == NBL_NONE ? "," : ", ", p->f);
    if (ids[i] != NBL_NONE) fputs(pname(p, g->values[ids[i]].name), p->f);
  }
}

static void put_node(tp *p, const nbl_graph *g, const nbl_node *nd, int ind) {
  FILE *f = p->f;
  indent(p, ind);
  put_idlist(p, g, nd->n_outputs, nd->outputs);
  fputs(" = ", f);
  if (nd->domain && *nd->domain) fprintf(f, "%s.", nd->domain);
  fputs(nd->op_type, f);
  bool graph_attr = false;
  for (int i = 0; i < nd->n_attrs; i++)
    if (attr_is_multiline(&nd->attrs[i])) graph_attr = true;
  if (nd->n_attrs && !graph_attr) {
    fputc(' ', f);
    put_attrs(p, nd, ind);
  }
  fputs(" (", f);
  put_idlist(p, g, nd->n_inputs, nd->inputs);
  fputc(')', f);
  if (nd->n_attrs && graph_attr) {
    fputc(' ', f);
    put_attrs(p, nd, ind);
  }
  if (nd->name && *nd->name) fprintf(f, "   # %s", nd->name);
  fputc('\n', f);
}

/* One "type name [= {values}]" entry of an input or "<...>" list. The
 * trailing comment (if any) is written after the separator by the caller:
 * returns true when the entry wants one (and leaves it in *comment_for). */
static void put_decl(tp *p, const nbl_value *v, bool with_value, int ind, bool *comment) {
  FILE *f = p->f;
  *comment = false;
  if (v->init && with_value) {
    put_tensor_type(f, v->init);
    fprintf(f, " %s", pname(p, v->name));
    if (nbl_tensor_check_payload(v->init) != NBL_OK) {
      *comment = true;
      return;
    }
    if (summarize(p, v->init)) {
      *comment = true;
      return;
    }
    fputs(" = ", f);
    put_tensor_values(p, v->init, ind);
    return;
  }
  if (type_printable(&v->type)) {
    put_type(p, &v->type);
    fputc(' ', f);
  } else if (v->init) {
    put_tensor_type(f, v->init);
    fputc(' ', f);
  }
  fputs(pname(p, v->name), f);
}

static void put_decl_comment(tp *p, const nbl_value *v) {
  if (nbl_tensor_check_payload(v->init) != NBL_OK)
    fprintf(p->f, "  # invalid initializer: %s", nbl_last_error());
  else {
    fputs("  ", p->f);
    put_summary_comment(p, v->init);
  }
}

/* "(a, b)" inline, or one entry per line when any carries data or a comment. */
static void put_vlist(tp *p, const nbl_graph *g, const nbl_id *ids, int n, bool inputs,
                      char open, char close, int ind) {
  FILE *f = p->f;
  bool multi = n > 4;
  for (int i = 0; i < n && !multi; i++)
    if (g->values[ids[i]].init) multi = true;
  fputc(open, f);
  for (int i = 0; i < n; i++) {
    const nbl_value *v = &g->values[ids[i]];
    if (multi) {
      fputc('\n', f);
      indent(p, ind + 1);
    }
    bool comment;
    put_decl(p, v, inputs || v->init, ind + 1, &comment);
    if (i + 1 < n) fputs(multi ? "," : ", ", f);
    if (comment) put_decl_comment(p, v);
  }
  if (multi && n) {
    fputc('\n', f);
    indent(p, ind);
  }
  fputc(close, f);
}

static nbl_status put_graph(tp *p, const nbl_graph *g, int ind) {
  FILE *f = p->f;
  fputs(pname(p, g->name), f);
  fputc(' ', f);
  nbl_id *ins = NULL;
  const int n_ins = nbl_graph_file_inputs(g, &ins); /* IR < 4: the initializers too */
  if (n_ins < 0) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "printing graph '%s'", g->name);
  const bool inits_listed = n_ins > g->n_inputs; /* then every initializer is */
  put_vlist(p, g, ins, n_ins, true, '(', ')', ind);
  free(ins);
  fputs(" => ", f);
  /* outputs: declarations only */
  {
    bool multi = g->n_outputs > 4;
    fputc('(', f);
    for (int i = 0; i < g->n_outputs; i++) {
      const nbl_value *v = &g->values[g->outputs[i]];
      if (multi) {
        fputc('\n', f);
        indent(p, ind + 1);
      } else if (i) {
        fputs(", ", f);
      }
      bool c;
      put_decl(p, v, false, ind + 1, &c);
      if (multi && i + 1 < g->n_outputs) fputc(',', f);
    }
    if (multi) {
      fputc('\n', f);
      indent(p, ind);
    }
    fputc(')', f);
  }
  /* value_info entries and initializers that are not inputs */
  int n_extra = 0;
  for (int i = 0; i < g->n_value_infos; i++)
    if (!g->values[g->value_infos[i]].init) n_extra++;
  for (int i = 0; i < g->n_initializers && !inits_listed; i++)
    if (!(g->values[g->initializers[i]].flags & NBL_VAL_INPUT)) n_extra++;
  if (n_extra) {
    nbl_id *ids = malloc(sizeof(nbl_id) * (size_t)n_extra);
    if (!ids) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "printing graph '%s'", g->name);
    int k = 0;
    for (int i = 0; i < g->n_value_infos; i++)
      if (!g->values[g->value_infos[i]].init) ids[k++] = g->value_infos[i];
    for (int i = 0; i < g->n_initializers && !inits_listed; i++)
      if (!(g->values[g->initializers[i]].flags & NBL_VAL_INPUT)) ids[k++] = g->initializers[i];
    fputc('\n', f);
    indent(p, ind);
    fputc('<', f);
    for (int i = 0; i < k; i++) {
      const nbl_value *v = &g->values[ids[i]];
      fputc('\n', f);
      indent(p, ind + 1);
      bool comment;
      put_decl(p, v, true, ind + 1, &comment);
      if (i + 1 < k) fputc(',', f);
      if (comment) put_decl_comment(p, v);
    }
    fputc('\n', f);
    indent(p, ind);
    fputc('>', f);
    free(ids);
  }
  fputc('\n', f);
  indent(p, ind);
  fputs("{\n", f);
  nbl_id *order = NULL;
  int cnt = nbl_graph_topo_order(g, &order);
  if (cnt < 0) {
    /* print in stored order; the cycle is reported by the verifier */
    for (nbl_id n = 0; n < g->n_nodes; n++)
      if (!g->nodes[n].dead) put_node(p, g, &g->nodes[n], ind + 1);
  } else {
    for (int i = 0; i < cnt; i++) put_node(p, g, &g->nodes[order[i]], ind + 1);
  }
  free(order);
  indent(p, ind);
  fputc('}', f);
  return NBL_OK;
}

/* Training info i as comment lines: each graph printed into memory, then
 * every line prefixed with "# ". */
static nbl_status put_training(tp *p, const nbl_model *m, int i) {
  const nbl_training_info *ti = &m->training[i];
  FILE *out = p->f;
  fprintf(out, "# training_info[%d] (no textual syntax: shown as comments)\n", i);
  const nbl_graph *tg[2] = {ti->initialization, ti->algorithm};
  static const char *const what[2] = {"initialization", "algorithm"};
  nbl_status st = NBL_OK;
  for (int k = 0; k < 2 && st == NBL_OK; k++) {
    if (!tg[k]) continue;
    char *buf = NULL;
    size_t len = 0;
    FILE *mf = open_memstream(&buf, &len);
    if (!mf) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory while printing", nbl_model_label(m));
    p->f = mf;
    st = put_graph(p, tg[k], 0);
    p->f = out;
    fclose(mf);
    fprintf(out, "# %s:\n# ", what[k]);
    for (size_t j = 0; j < len; j++) {
      fputc(buf[j], out);
      if (buf[j] == '\n' && j + 1 < len) fputs("# ", out);
    }
    fputc('\n', out);
    free(buf);
  }
  const struct {
    const char *name;
    int n;
    const nbl_kv *kv;
  } b[2] = {{"initialization_binding", ti->n_init_binding, ti->init_binding},
            {"update_binding", ti->n_update_binding, ti->update_binding}};
  for (int k = 0; k < 2; k++) {
    if (!b[k].n) continue;
    fprintf(out, "# %s:", b[k].name);
    for (int j = 0; j < b[k].n; j++)
      fprintf(out, "%s %s <- %s", j ? "," : "", b[k].kv[j].key ? b[k].kv[j].key : "",
              b[k].kv[j].value ? b[k].kv[j].value : "");
    fputc('\n', out);
  }
  return st;
}

nbl_status nbl_print_text(const nbl_model *m, int full, FILE *out) {
  tp p = {.f = out, .full = full, .m = m};
  walk_names(&p, m->graph, reserve_plain);
  walk_names(&p, m->graph, assign_mangled);
  for (int i = 0; i < m->n_training; i++) { /* after the main graph: its spelling stays */
    const nbl_graph *tg[2] = {m->training[i].initialization, m->training[i].algorithm};
    for (int k = 0; k < 2; k++)
      if (tg[k]) walk_names(&p, tg[k], reserve_plain);
    for (int k = 0; k < 2; k++)
      if (tg[k]) walk_names(&p, tg[k], assign_mangled);
  }
  if (p.oom) {
    strmap_free(&p.names);
    strmap_free(&p.used);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory while printing",
                      nbl_model_label(m));
  }
  fprintf(out, "<\n  ir_version: %lld,\n  opset_import: [", (long long)m->ir_version);
  for (int i = 0; i < m->n_opsets; i++) {
    if (i) fputs(", ", out);
    const char *d = m->opsets[i].domain ? m->opsets[i].domain : "";
    put_string(out, d, strlen(d));
    fprintf(out, " : %lld", (long long)m->opsets[i].version);
  }
  fputc(']', out);
  const struct {
    const char *key, *val;
  } strs[] = {{"producer_name", m->producer_name},
              {"producer_version", m->producer_version},
              {"domain", m->domain},
              {"doc_string", m->doc_string}};
  for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++)
    if (strs[i].val && *strs[i].val) {
      fprintf(out, ",\n  %s: ", strs[i].key);
      put_string(out, strs[i].val, strlen(strs[i].val));
    }
  if (m->model_version) fprintf(out, ",\n  model_version: %lld", (long long)m->model_version);
  if (m->n_metadata) {
    fputs(",\n  metadata_props: [", out);
    for (int i = 0; i < m->n_metadata; i++) {
      if (i) fputs(", ", out);
      const char *k = m->metadata[i].key ? m->metadata[i].key : "";
      const char *v = m->metadata[i].value ? m->metadata[i].value : "";
      put_string(out, k, strlen(k));
      fputs(": ", out);
      put_string(out, v, strlen(v));
    }
    fputc(']', out);
  }
  fputs("\n>\n", out);
  nbl_status st = put_graph(&p, m->graph, 0);
  fputc('\n', out);
  const nbl_graph *g = m->graph;
  if (g->n_sparse_initializers)
    fprintf(out, "# %d sparse initializer(s) not shown (no textual syntax)\n",
            g->n_sparse_initializers);
  if (g->n_quantization_annotation)
    fprintf(out, "# %d quantization annotation(s) not shown (no textual syntax)\n",
            g->n_quantization_annotation);
  if (m->n_functions)
    fprintf(out, "# %d model-local function(s) not shown\n", m->n_functions);
  for (int i = 0; i < m->n_training && st == NBL_OK; i++) st = put_training(&p, m, i);
  strmap_free(&p.names);
  strmap_free(&p.used);
  if (st != NBL_OK) return st;
  if (ferror(out))
    return nbl_errorf(NBL_ERR_IO, "%s: write error while printing", nbl_model_label(m));
  return NBL_OK;
}
