/* cmd_run.c - `nibble run` (run a model on tensor files) and `nibble test`
 * (the ONNX backend-test layout: model.onnx + test_data_set_N/{input,output}_K.pb). */
#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "commands.h"
#include "nibble.h"

/* ------------------------------------------------------------------ helpers */

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int64_t numel(const nbl_host_tensor *t) {
  int64_t n = 1;
  for (int d = 0; d < t->rank; d++) n *= t->dims[d];
  return n;
}

static int is_dir(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int ensure_dir(const char *p) {
  if (is_dir(p)) return 0;
  if (nbl_make_dirs(p) != NBL_OK) {
    fprintf(stderr, "nibble: %s\n", nbl_last_error());
    return -1;
  }
  return 0;
}

/* Element i as double (numeric types). */
static double elem_f64(const nbl_host_tensor *t, int64_t i) {
  const void *d = t->data;
  switch (t->dtype) {
  case NBL_DT_FLOAT: return ((const float *)d)[i];
  case NBL_DT_DOUBLE: return ((const double *)d)[i];
  case NBL_DT_UINT8: return ((const uint8_t *)d)[i];
  case NBL_DT_INT8: return ((const int8_t *)d)[i];
  case NBL_DT_UINT16: return ((const uint16_t *)d)[i];
  case NBL_DT_INT16: return ((const int16_t *)d)[i];
  case NBL_DT_INT32: return ((const int32_t *)d)[i];
  case NBL_DT_INT64: return (double)((const int64_t *)d)[i];
  case NBL_DT_UINT32: return ((const uint32_t *)d)[i];
  case NBL_DT_UINT64: return (double)((const uint64_t *)d)[i];
  case NBL_DT_BOOL: return ((const uint8_t *)d)[i] != 0;
  case NBL_DT_FLOAT16: case NBL_DT_BFLOAT16: {
    uint16_t h = ((const uint16_t *)d)[i];
    uint32_t bits;
    if (t->dtype == NBL_DT_BFLOAT16) {
      bits = (uint32_t)h << 16;
    } else {
      uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 0x1f, m = h & 0x3ff;
      if (e == 0) {
        float f = ldexpf((float)m, -24);
        return s ? -f : f;
      }
      bits = e == 31 ? s | 0x7f800000u | (m << 13) : s | ((e + 112) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
  }
  case NBL_DT_INT4: case NBL_DT_UINT4: {
    int v = (((const uint8_t *)d)[i / 2] >> (4 * (i & 1))) & 0xf;
    return t->dtype == NBL_DT_INT4 && v >= 8 ? v - 16 : v;
  }
  default: return NAN;
  }
}

static int exact_type(nbl_dtype dt) {
  return dt != NBL_DT_FLOAT && dt != NBL_DT_DOUBLE && dt != NBL_DT_FLOAT16 &&
         dt != NBL_DT_BFLOAT16;
}

static void print_shape(FILE *f, const nbl_host_tensor *t) {
  fputc('[', f);
  for (int d = 0; d < t->rank; d++) fprintf(f, "%s%lld", d ? ", " : "", (long long)t->dims[d]);
  fputc(']', f);
}

static const char *kind_name(nbl_value_kind k) {
  return k == NBL_VALUE_SEQUENCE ? "sequence" : k == NBL_VALUE_OPTIONAL ? "optional" : "tensor";
}

/* One line per tensor: "label: type [shape] [first values]"; a sequence or
 * an optional as a heading line with its elements below, indented. */
static void print_value(FILE *f, const nbl_host_tensor *t, const char *label, int indent,
                        int depth) {
  fprintf(f, "%*s%s: ", indent, "", label);
  if (t->kind != NBL_VALUE_TENSOR) {
    if (t->kind == NBL_VALUE_OPTIONAL && t->n_items == 0) {
      fprintf(f, "optional: empty\n");
      return;
    }
    if (t->kind == NBL_VALUE_OPTIONAL)
      fprintf(f, "optional holding a %s\n", t->items ? kind_name(t->items[0].kind) : "?");
    else
      fprintf(f, "sequence of %d %s tensor%s\n", t->n_items, nbl_dtype_name(t->dtype),
              t->n_items == 1 ? "" : "s");
    for (int i = 0; t->items && i < t->n_items && depth < 8; i++) {
      char l[32];
      snprintf(l, sizeof l, "[%d]", i);
      print_value(f, &t->items[i], l, indent + 2, depth + 1);
    }
    return;
  }
  fprintf(f, "%s ", nbl_dtype_name(t->dtype));
  print_shape(f, t);
  int64_t n = numel(t);
  fprintf(f, " [");
  for (int64_t i = 0; i < n && i < 8; i++) {
    if (i) fprintf(f, ", ");
    if (t->dtype == NBL_DT_STRING) fprintf(f, "\"%s\"", ((char **)t->data)[i]);
    else if (exact_type(t->dtype)) fprintf(f, "%.0f", elem_f64(t, i));
    else fprintf(f, "%.6g", elem_f64(t, i));
  }
  fprintf(f, "%s]\n", n > 8 ? ", ..." : "");
}

static void print_summary(FILE *f, const nbl_host_tensor *t) {
  print_value(f, t, t->name ? t->name : "?", 0, 0);
}

/* A file name for a tensor name ("a/b:0" -> "a_b_0"). */
static void safe_name(const char *name, char *out, size_t cap) {
  size_t k = 0;
  for (const char *p = name && *name ? name : "unnamed"; *p && k + 1 < cap; p++)
    out[k++] = (char)((*p == '/' || *p == '\\' || *p == ':' || *p == ' ') ? '_' : *p);
  out[k] = 0;
}

/* Write value t into dir as NAME.npy, or NAME.pb (a TensorProto) when .npy
 * cannot hold its type; a sequence or optional always as NAME.pb (a
 * SequenceProto / OptionalProto: .npy cannot hold one). */
static nbl_status write_tensor(const char *dir, const nbl_host_tensor *t) {
  char base[512], path[4096];
  safe_name(t->name, base, sizeof base);
  snprintf(path, sizeof path, "%s/%s.%s", dir, base, t->kind == NBL_VALUE_TENSOR ? "npy" : "pb");
  nbl_status st = nbl_tensor_write(path, t);
  if (st == NBL_ERR_UNSUPPORTED && t->kind == NBL_VALUE_TENSOR) { /* not representable in .npy */
    snprintf(path, sizeof path, "%s/%s.pb", dir, base);
    st = nbl_tensor_write(path, t);
  }
  return st;
}

/* The declared kind of the session input named `name` (a tensor when it
 * has none of that name: the run then names the unknown input). */
static nbl_value_kind input_kind(const nbl_session *s, const char *name, size_t len) {
  for (int k = 0; k < nbl_session_input_count(s); k++) {
    const char *nm = nbl_session_input_name(s, k);
    nbl_host_tensor info;
    if (strlen(nm) == len && strncmp(nm, name, len) == 0 &&
        nbl_session_input_info(s, k, &info) == NBL_OK)
      return info.kind;
  }
  return NBL_VALUE_TENSOR;
}

typedef struct dump_ctx {
  const char *dir;
  int failed;
} dump_ctx;

static void dump_value(void *user, const nbl_host_tensor *t) {
  dump_ctx *d = user;
  if (write_tensor(d->dir, t) != NBL_OK && !d->failed) {
    fprintf(stderr, "nibble run: %s\n", nbl_last_error());
    d->failed = 1;
  }
}

/* ------------------------------------------------------------------ run */

static void run_usage(FILE *f) {
  fprintf(f, "usage: nibble run MODEL [--input NAME=FILE(.pb|.npy)]... [--output-dir DIR]\n"
             "                  [--threads N] [--repeat N] [--dump-tensors DIR] [--reference]\n"
             "                  [--profile[=N]] time per op type and the N (default 15)\n"
             "                                slowest nodes (runs after the first when\n"
             "                                --repeat > 1)\n"
             "                  [--timeout SECONDS] stop the run(s) after SECONDS (exit 1)\n"
             "                  [--seed N] key of the random ops without a seed attribute\n"
             "                                (RandomNormal, Bernoulli, ...): the same N draws\n"
             "                                the same values (default: fresh each invocation)\n"
             "  Tensors are read from and written (--output-dir, --dump-tensors) as NAME.npy,\n"
             "  or NAME.pb (TensorProto) for types .npy lacks; sequence and optional values\n"
             "  are read from and written as NAME.pb (SequenceProto / OptionalProto) only.\n");
}

/* --timeout: a thread that terminates the session when the deadline passes
 * before the runs end (watchdog_stop). */
typedef struct watchdog {
  nbl_session *s;
  struct timespec deadline; /* CLOCK_REALTIME, for pthread_cond_timedwait */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done, fired;
  pthread_t th;
} watchdog;

static void *watchdog_main(void *arg) {
  watchdog *w = arg;
  pthread_mutex_lock(&w->mu);
  while (!w->done) {
    if (pthread_cond_timedwait(&w->cv, &w->mu, &w->deadline) == ETIMEDOUT && !w->done) {
      w->fired = 1;
      nbl_session_terminate(w->s, 1);
      break;
    }
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

static int watchdog_start(watchdog *w, nbl_session *s, double seconds) {
  memset(w, 0, sizeof *w);
  w->s = s;
  clock_gettime(CLOCK_REALTIME, &w->deadline);
  double whole = floor(seconds);
  w->deadline.tv_sec += (time_t)whole;
  w->deadline.tv_nsec += (long)((seconds - whole) * 1e9);
  if (w->deadline.tv_nsec >= 1000000000L) {
    w->deadline.tv_sec++;
    w->deadline.tv_nsec -= 1000000000L;
  }
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, NULL);
  if (pthread_create(&w->th, NULL, watchdog_main, w) != 0) {
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    return -1;
  }
  return 0;
}

/* End the watchdog; returns 1 if it terminated the session. */
static int watchdog_stop(watchdog *w) {
  pthread_mutex_lock(&w->mu);
  w->done = 1;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
  pthread_join(w->th, NULL);
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
  return w->fired;
}

int nbl_cmd_run(int argc, char **argv) {
  const char *model_path = NULL, *out_dir = NULL, *dump_dir = NULL;
  int threads = 0, repeat = 1, reference = 0, profile = 0, profile_top = 15;
  double timeout = 0;
  uint64_t seed = 0;
  int n_in = 0;
  char **in_specs = calloc((size_t)argc + 1, sizeof(char *));
  if (!in_specs) return 2;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    int has_next = i + 1 < argc;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      run_usage(stdout);
      free(in_specs);
      return 0;
    } else if (strcmp(a, "--input") == 0 && has_next) {
      in_specs[n_in++] = argv[++i];
    } else if (strcmp(a, "--output-dir") == 0 && has_next) {
      out_dir = argv[++i];
    } else if (strcmp(a, "--dump-tensors") == 0 && has_next) {
      dump_dir = argv[++i];
    } else if (strcmp(a, "--threads") == 0 && has_next) {
      threads = atoi(argv[++i]);
      if (threads < 1) {
        fprintf(stderr, "nibble run: --threads needs a positive number\n");
        free(in_specs);
        return 2;
      }
    } else if (strcmp(a, "--repeat") == 0 && has_next) {
      repeat = atoi(argv[++i]);
      if (repeat < 1) {
        fprintf(stderr, "nibble run: --repeat needs a positive number\n");
        free(in_specs);
        return 2;
      }
    } else if (strcmp(a, "--timeout") == 0 && has_next) {
      char *end = NULL;
      const char *v = argv[++i];
      timeout = strtod(v, &end);
      if (!*v || *end || !(timeout > 0) || timeout > 1e9) {
        fprintf(stderr, "nibble run: --timeout wants a positive number of seconds, got '%s'\n", v);
        free(in_specs);
        return 2;
      }
    } else if (strcmp(a, "--seed") == 0 && has_next) {
      char *end = NULL;
      const char *v = argv[++i];
      errno = 0;
      unsigned long long sv = strtoull(v, &end, 10);
      if (!*v || *end || *v == '-' || errno || sv == 0) {
        fprintf(stderr, "nibble run: --seed wants a positive integer, got '%s'\n", v);
        free(in_specs);
        return 2;
      }
      seed = (uint64_t)sv;
    } else if (strcmp(a, "--reference") == 0) {
      reference = 1;
    } else if (strcmp(a, "--profile") == 0) {
      profile = 1;
    } else if (strncmp(a, "--profile=", 10) == 0) {
      char *end = NULL;
      long v = strtol(a + 10, &end, 10);
      if (!*(a + 10) || *end || v < 0 || v > 100000) {
        fprintf(stderr, "nibble run: --profile=N wants a count of nodes, got '%s'\n", a + 10);
        free(in_specs);
        return 2;
      }
      profile = 1;
      profile_top = (int)v;
    } else if (a[0] == '-' || model_path) {
      fprintf(stderr, "nibble run: unexpected argument '%s'\n", a);
      run_usage(stderr);
      free(in_specs);
      return 2;
    } else {
      model_path = a;
    }
  }
  if (!model_path) {
    run_usage(stderr);
    free(in_specs);
    return 2;
  }
  int rc = 2;
  nbl_model *m = NULL;
  nbl_session *s = NULL;
  nbl_host_tensor *ins = calloc((size_t)n_in + 1, sizeof *ins);
  dump_ctx dc = {dump_dir, 0};
  if (!ins) goto out;
  if (nbl_model_load(model_path, &m) != NBL_OK) {
    fprintf(stderr, "nibble run: %s\n", nbl_last_error());
    goto out;
  }
  if ((out_dir && ensure_dir(out_dir)) || (dump_dir && ensure_dir(dump_dir))) goto out;
  nbl_session_options so = {.threads = threads, .reference = reference, .profile = profile, .seed = seed};
  if (dump_dir) {
    so.on_value = dump_value;
    so.user = &dc;
  }
  nbl_status st = nbl_session_create(m, &so, &s);
  if (st != NBL_OK) {
    fprintf(stderr, "nibble run: %s\n", nbl_last_error());
    rc = st == NBL_ERR_UNSUPPORTED || st == NBL_ERR_INVALID_MODEL ? 2 : 1;
    goto out;
  }
  for (int i = 0; i < n_in; i++) {
    char *eq = strchr(in_specs[i], '=');
    if (!eq || eq == in_specs[i]) {
      fprintf(stderr, "nibble run: --input expects NAME=FILE, got '%s'\n", in_specs[i]);
      goto out;
    }
    nbl_value_kind kind = input_kind(s, in_specs[i], (size_t)(eq - in_specs[i]));
    if (nbl_value_read(eq + 1, kind, &ins[i]) != NBL_OK) {
      fprintf(stderr, "nibble run: %s\n", nbl_last_error());
      goto out;
    }
    free((void *)ins[i].name);
    ins[i].name = strndup(in_specs[i], (size_t)(eq - in_specs[i]));
  }
  for (int k = 0; k < nbl_session_input_count(s); k++) {
    const char *nm = nbl_session_input_name(s, k);
    int found = 0;
    for (int i = 0; i < n_in; i++) found |= ins[i].name && strcmp(ins[i].name, nm) == 0;
    if (!found) {
      nbl_host_tensor info;
      nbl_session_input_info(s, k, &info);
      fprintf(stderr, "nibble run: input '%s' (", nm);
      if (info.kind != NBL_VALUE_TENSOR) fprintf(stderr, "%s of ", kind_name(info.kind));
      fprintf(stderr, "%s", nbl_dtype_name(info.dtype));
      if (info.rank >= 0) {
        fputc(' ', stderr);
        print_shape(stderr, &info);
      }
      fprintf(stderr, ") not given; use --input %s=FILE\n", nm);
      goto out;
    }
  }
  const nbl_host_tensor *outs = NULL;
  double t0 = now_ms(), first = 0;
  watchdog wd;
  int watching = timeout > 0;
  if (watching && watchdog_start(&wd, s, timeout) != 0) {
    fprintf(stderr, "nibble run: cannot start the --timeout thread\n");
    rc = 1;
    goto out;
  }
  for (int r = 0; r < repeat; r++) {
    st = nbl_session_run(s, n_in, ins, &outs);
    if (st != NBL_OK) {
      int fired = watching && watchdog_stop(&wd);
      watching = 0;
      if (fired && st == NBL_ERR_TERMINATED) {
        fprintf(stderr, "nibble run: timed out after %g s (%s)\n", timeout, nbl_last_error());
        rc = 1;
        goto out;
      }
      fprintf(stderr, "nibble run: %s\n", nbl_last_error());
      rc = st == NBL_ERR_INVALID_ARGUMENT ? 2 : 1;
      goto out;
    }
    if (r == 0) {
      first = now_ms() - t0;
      if (profile && repeat > 1) nbl_session_reset_profile(s);
    }
    so.on_value = NULL;
  }
  if (watching) watchdog_stop(&wd);
  double total = now_ms() - t0;
  if (dc.failed) {
    rc = 1;
    goto out;
  }
  for (int i = 0; i < nbl_session_output_count(s); i++) {
    print_summary(stdout, &outs[i]);
    if (out_dir && write_tensor(out_dir, &outs[i]) != NBL_OK) {
      fprintf(stderr, "nibble run: %s\n", nbl_last_error());
      rc = 1;
      goto out;
    }
  }
  if (profile) nbl_session_print_profile(s, stdout, profile_top);
  if (repeat > 1)
    printf("time: first run %.3f ms, mean of the next %d runs %.3f ms\n", first, repeat - 1,
           (total - first) / (repeat - 1));
  else
    printf("time: %.3f ms\n", total);
  rc = 0;
out:
  if (ins)
    for (int i = 0; i < n_in; i++) nbl_host_tensor_free(&ins[i]);
  free(ins);
  free(in_specs);
  nbl_session_free(s);
  nbl_model_free(m);
  return rc;
}

/* ------------------------------------------------------------------ test */

typedef struct entry {
  char *name;   /* test name or glob */
  char *reason; /* expected failures: reason; "skip: ..." skips */
  double rtol, atol;
  int hit;      /* seen in this run */
} entry;

typedef struct entry_list {
  entry *v;
  int n, cap;
} entry_list;

static int list_add(entry_list *l, entry e) {
  if (l->n == l->cap) {
    int nc = l->cap ? l->cap * 2 : 64;
    entry *nv = realloc(l->v, sizeof(entry) * (size_t)nc);
    if (!nv) return -1;
    l->v = nv;
    l->cap = nc;
  }
  l->v[l->n++] = e;
  return 0;
}

static void list_free(entry_list *l) {
  for (int i = 0; i < l->n; i++) {
    free(l->v[i].name);
    free(l->v[i].reason);
  }
  free(l->v);
}

static char *trim(char *s) {
  while (*s == ' ' || *s == '\t') s++;
  size_t n = strlen(s);
  while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
    s[--n] = 0;
  return s;
}

/* "name  reason..." per line, '#' comments. */
static int read_expected(const char *path, entry_list *l) {
  FILE *f = fopen(path, "r");
  if (!f) {
    fprintf(stderr, "nibble test: cannot open %s\n", path);
    return -1;
  }
  char line[4096];
  int lineno = 0;
  while (fgets(line, sizeof line, f)) {
    lineno++;
    char *s = trim(line);
    if (!*s || *s == '#') continue;
    char *sp = s + strcspn(s, " \t");
    char *reason = *sp ? trim(sp + 1) : sp;
    *sp = 0;
    if (!*reason) {
      fprintf(stderr, "nibble test: %s:%d: '%s' has no reason\n", path, lineno, s);
      fclose(f);
      return -1;
    }
    entry e = {strdup(s), strdup(reason), 0, 0, 0};
    if (!e.name || !e.reason || list_add(l, e)) {
      fclose(f);
      return -1;
    }
  }
  fclose(f);
  return 0;
}

/* "pattern rtol atol" per line (pattern: test name or glob), '#' comments. */
static int read_tolerances(const char *path, entry_list *l) {
  FILE *f = fopen(path, "r");
  if (!f) {
    fprintf(stderr, "nibble test: cannot open %s\n", path);
    return -1;
  }
  char line[4096];
  int lineno = 0;
  while (fgets(line, sizeof line, f)) {
    lineno++;
    char *s = trim(line);
    if (!*s || *s == '#') continue;
    char pat[1024];
    double rtol, atol;
    if (sscanf(s, "%1023s %lf %lf", pat, &rtol, &atol) != 3 || rtol < 0 || atol < 0) {
      fprintf(stderr, "nibble test: %s:%d: expected 'PATTERN RTOL ATOL'\n", path, lineno);
      fclose(f);
      return -1;
    }
    entry e = {strdup(pat), NULL, rtol, atol, 0};
    if (!e.name || list_add(l, e)) {
      fclose(f);
      return -1;
    }
  }
  fclose(f);
  return 0;
}

static entry *find_entry(entry_list *l, const char *name, int glob) {
  for (int i = 0; i < l->n; i++)
    if (strcmp(l->v[i].name, name) == 0) return &l->v[i];
  if (glob)
    for (int i = 0; i < l->n; i++)
      if (fnmatch(l->v[i].name, name, 0) == 0) return &l->v[i];
  return NULL;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted subfolder names of dir starting with prefix (NULL: all). */
static int list_dirs(const char *dir, const char *prefix, char ***out) {
  DIR *d = opendir(dir);
  *out = NULL;
  if (!d) return -1;
  int n = 0, cap = 0;
  char **v = NULL;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (de->d_name[0] == '.') continue;
    if (prefix && strncmp(de->d_name, prefix, strlen(prefix)) != 0) continue;
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
    if (!is_dir(p)) continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 32;
      char **nv = realloc(v, sizeof(char *) * (size_t)cap);
      if (!nv) break;
      v = nv;
    }
    v[n++] = strdup(de->d_name);
  }
  closedir(d);
  if (n) qsort(v, (size_t)n, sizeof(char *), cmp_str);
  *out = v;
  return n;
}

static void free_strs(char **v, int n) {
  for (int i = 0; i < n; i++) free(v[i]);
  free(v);
}

/* Compare tensors got and exp; on mismatch write the reason, which starts
 * with `label` (the output's name and the element's index). Returns 1 if
 * equal (values == 0: the types and shapes only). */
static int compare_tensor(const nbl_host_tensor *got, const nbl_host_tensor *exp, const char *label,
                          double rtol, double atol, int values, char *why, size_t cap) {
  if (got->dtype != exp->dtype) {
    snprintf(why, cap, "%s: type %s, expected %s", label, nbl_dtype_name(got->dtype),
             nbl_dtype_name(exp->dtype));
    return 0;
  }
  int same = got->rank == exp->rank;
  for (int d = 0; same && d < got->rank; d++) same = got->dims[d] == exp->dims[d];
  if (!same) {
    char a[256] = "[", b[256] = "[";
    for (int d = 0; d < got->rank; d++)
      snprintf(a + strlen(a), sizeof a - strlen(a), "%s%lld", d ? "," : "", (long long)got->dims[d]);
    for (int d = 0; d < exp->rank; d++)
      snprintf(b + strlen(b), sizeof b - strlen(b), "%s%lld", d ? "," : "", (long long)exp->dims[d]);
    snprintf(why, cap, "%s: shape %s], expected %s]", label, a, b);
    return 0;
  }
  if (!values) return 1;
  int64_t n = numel(exp);
  if (exp->dtype == NBL_DT_STRING) {
    for (int64_t i = 0; i < n; i++) {
      const char *x = ((char **)got->data)[i], *y = ((char **)exp->data)[i];
      if (strcmp(x ? x : "", y ? y : "") != 0) {
        snprintf(why, cap, "%s: index %lld: got \"%s\", expected \"%s\"", label, (long long)i,
                 x ? x : "", y ? y : "");
        return 0;
      }
    }
    return 1;
  }
  int exact = exact_type(exp->dtype);
  for (int64_t i = 0; i < n; i++) {
    double x = elem_f64(got, i), y = elem_f64(exp, i);
    int ok;
    if (exact) {
      if (exp->dtype == NBL_DT_INT64 || exp->dtype == NBL_DT_UINT64)
        ok = memcmp((const char *)got->data + 8 * i, (const char *)exp->data + 8 * i, 8) == 0;
      else
        ok = x == y;
    } else if (isnan(y)) {
      ok = isnan(x);
    } else if (isinf(y)) {
      ok = x == y;
    } else {
      ok = fabs(x - y) <= atol + rtol * fabs(y);
    }
    if (!ok) {
      snprintf(why, cap, "%s: index %lld: got %.9g, expected %.9g (rtol %g, atol %g)", label,
               (long long)i, x, y, rtol, atol);
      return 0;
    }
  }
  return 1;
}

/* Compare values got and exp (tensors, or sequences / optionals element by
 * element: the kinds and element counts must match); `label` names the
 * value in the reason. */
static int compare_value(const nbl_host_tensor *got, const nbl_host_tensor *exp, const char *label,
                         double rtol, double atol, int values, char *why, size_t cap, int depth) {
  if (got->kind != exp->kind) {
    snprintf(why, cap, "%s: a %s, expected a %s", label, kind_name(got->kind),
             kind_name(exp->kind));
    return 0;
  }
  if (got->kind == NBL_VALUE_TENSOR)
    return compare_tensor(got, exp, label, rtol, atol, values, why, cap);
  if (got->n_items != exp->n_items) {
    snprintf(why, cap, "%s: %s of %d elements, expected %d", label, kind_name(got->kind),
             got->n_items, exp->n_items);
    return 0;
  }
  for (int i = 0; i < got->n_items; i++) {
    char l[600];
    snprintf(l, sizeof l, "%s element %d", label, i);
    if (depth > 8 || !got->items || !exp->items) {
      snprintf(why, cap, "%s: malformed value", l);
      return 0;
    }
    if (!compare_value(&got->items[i], &exp->items[i], l, rtol, atol, values, why, cap, depth + 1))
      return 0;
  }
  return 1;
}

/* Compare output got with expected; on mismatch write the reason. Returns 1
 * if equal (values == 0: the types and shapes only). */
static int compare(const nbl_host_tensor *got, const nbl_host_tensor *exp, double rtol,
                   double atol, int values, char *why, size_t cap) {
  char label[600];
  snprintf(label, sizeof label, "output '%s'", got->name ? got->name : "?");
  return compare_value(got, exp, label, rtol, atol, values, why, cap, 0);
}

/* The ONNX test data stores bfloat16 tensors as their uint16 bit patterns:
 * the tensors of h that are UINT16 where `want` is BFLOAT16 become BFLOAT16
 * (a sequence's or optional's elements as well, and its dtype). */
static void bf16_patch(nbl_host_tensor *h, nbl_dtype want, int depth) {
  if (want != NBL_DT_BFLOAT16 || h->dtype != NBL_DT_UINT16 || depth > 8) return;
  h->dtype = NBL_DT_BFLOAT16;
  for (int i = 0; h->items && i < h->n_items; i++) bf16_patch(&h->items[i], want, depth + 1);
}

/* Run one test folder. Returns 1 passed, 0 failed (reason in why). values 0:
 * the outputs' types and shapes are checked, not their values. */
static int run_test(const char *dir, int reference, double rtol, double atol, int values,
                    char *why, size_t cap) {
  char path[4096];
  snprintf(path, sizeof path, "%s/model.onnx", dir);
  nbl_model *m = NULL;
  nbl_session *s = NULL;
  char **sets = NULL;
  int n_sets = 0, ok = 0;
  nbl_host_tensor ins[64], exps[64];
  int n_ins = 0, n_exps = 0;
  memset(ins, 0, sizeof ins);
  memset(exps, 0, sizeof exps);
  if (nbl_model_load(path, &m) != NBL_OK) {
    snprintf(why, cap, "%s", nbl_last_error());
    return 0;
  }
  nbl_session_options so = {.reference = reference};
  if (nbl_session_create(m, &so, &s) != NBL_OK) {
    snprintf(why, cap, "%s", nbl_last_error());
    goto done;
  }
  n_sets = list_dirs(dir, "test_data_set_", &sets);
  if (n_sets <= 0) {
    snprintf(why, cap, "no test_data_set_* folders");
    goto done;
  }
  for (int k = 0; k < n_sets; k++) {
    char set[4096];
    snprintf(set, sizeof set, "%s/%s", dir, sets[k]);
    for (n_ins = 0; n_ins < 64; n_ins++) {
      snprintf(path, sizeof path, "%s/input_%d.pb", set, n_ins);
      if (!is_file(path)) break;
      nbl_host_tensor info = {0};
      if (n_ins >= nbl_session_input_count(s) || nbl_session_input_info(s, n_ins, &info) != NBL_OK)
        info.kind = NBL_VALUE_TENSOR; /* a file too many: counted below */
      if (nbl_value_read(path, info.kind, &ins[n_ins]) != NBL_OK) {
        snprintf(why, cap, "%s", nbl_last_error());
        n_ins++;
        goto done;
      }
    }
    int n_feeds = nbl_session_input_count(s);
    if (n_ins != n_feeds) {
      snprintf(why, cap, "%s: %d input files for %d model inputs", sets[k], n_ins, n_feeds);
      goto done;
    }
    /* inputs are positional; the TensorProto names are informative only */
    for (int i = 0; i < n_ins; i++) {
      free((void *)ins[i].name);
      ins[i].name = strdup(nbl_session_input_name(s, i));
      /* the ONNX test data stores bfloat16 tensors as their uint16 bit patterns */
      nbl_host_tensor info;
      if (nbl_session_input_info(s, i, &info) == NBL_OK && info.kind == ins[i].kind)
        bf16_patch(&ins[i], info.dtype, 0);
    }
    int n_out = nbl_session_output_count(s);
    for (n_exps = 0; n_exps < 64; n_exps++) {
      snprintf(path, sizeof path, "%s/output_%d.pb", set, n_exps);
      if (!is_file(path)) break;
      nbl_host_tensor info = {0};
      if (n_exps >= n_out || nbl_session_output_info(s, n_exps, &info) != NBL_OK)
        info.kind = NBL_VALUE_TENSOR; /* a file too many: counted below */
      if (nbl_value_read(path, info.kind, &exps[n_exps]) != NBL_OK) {
        snprintf(why, cap, "%s", nbl_last_error());
        n_exps++;
        goto done;
      }
    }
    if (n_exps != n_out) {
      snprintf(why, cap, "%s: %d output files for %d model outputs", sets[k], n_exps, n_out);
      goto done;
    }
    /* twice: the first run records sizes and lifetimes, the second runs in
     * the planned arena (memory holding the previous run's values) */
    for (int pass = 0; pass < 2; pass++) {
      const nbl_host_tensor *outs = NULL;
      if (nbl_session_run(s, n_ins, ins, &outs) != NBL_OK) {
        snprintf(why, cap, "%s%s", pass ? "second run: " : "", nbl_last_error());
        goto done;
      }
      for (int i = 0; i < n_out; i++) {
        char w[1024];
        if (outs[i].kind == exps[i].kind) /* bit patterns, as above */
          bf16_patch(&exps[i], outs[i].dtype, 0);
        if (!compare(&outs[i], &exps[i], rtol, atol, values, w, sizeof w)) {
          snprintf(why, cap, "%s: %s%s", sets[k], pass ? "second run (planned arena): " : "", w);
          goto done;
        }
      }
    }
    for (int i = 0; i < n_ins; i++) nbl_host_tensor_free(&ins[i]);
    for (int i = 0; i < n_exps; i++) nbl_host_tensor_free(&exps[i]);
    n_ins = n_exps = 0;
  }
  ok = 1;
done:
  for (int i = 0; i < n_ins; i++) nbl_host_tensor_free(&ins[i]);
  for (int i = 0; i < n_exps; i++) nbl_host_tensor_free(&exps[i]);
  free_strs(sets, n_sets > 0 ? n_sets : 0);
  nbl_session_free(s);
  nbl_model_free(m);
  return ok;
}

static void test_usage(FILE *f) {
  fprintf(f, "usage: nibble test DIR... [--expected-failures FILE] [--tolerances FILE]\n"
             "                   [--reference] [-v]\n"
             "  DIR is a test folder (model.onnx + test_data_set_*/) or a folder of them.\n"
             "  exit 0 only when every failure is listed as expected and no listed test passes;\n"
             "  a test listed with 'random: REASON' (random outputs) has only its outputs' types\n"
             "  and shapes checked: XFAIL when they match, FAIL when not\n");
}

int nbl_cmd_test(int argc, char **argv) {
  const char *xfail_path = NULL, *tol_path = NULL;
  int reference = 0, verbose = 0, n_dirs = 0;
  char **dirs = calloc((size_t)argc + 1, sizeof(char *));
  if (!dirs) return 2;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      test_usage(stdout);
      free(dirs);
      return 0;
    } else if (strcmp(a, "--expected-failures") == 0 && i + 1 < argc) {
      xfail_path = argv[++i];
    } else if (strcmp(a, "--tolerances") == 0 && i + 1 < argc) {
      tol_path = argv[++i];
    } else if (strcmp(a, "--reference") == 0) {
      reference = 1;
    } else if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
      verbose = 1;
    } else if (a[0] == '-') {
      fprintf(stderr, "nibble test: unexpected argument '%s'\n", a);
      test_usage(stderr);
      free(dirs);
      return 2;
    } else {
      dirs[n_dirs++] = argv[i];
    }
  }
  if (!n_dirs) {
    test_usage(stderr);
    free(dirs);
    return 2;
  }
  entry_list xf = {0}, tol = {0};
  int rc = 2;
  if ((xfail_path && read_expected(xfail_path, &xf)) || (tol_path && read_tolerances(tol_path, &tol)))
    goto out;
  int passed = 0, failed = 0, skipped = 0, unexpected_fail = 0, unexpected_pass = 0;
  for (int di = 0; di < n_dirs; di++) {
    char **tests = NULL;
    int n_tests;
    char mp[4096];
    snprintf(mp, sizeof mp, "%s/model.onnx", dirs[di]);
    const char *parent = dirs[di];
    char *single = NULL;
    if (is_file(mp)) {
      single = strdup(dirs[di]);
      tests = &single;
      n_tests = 1;
      parent = NULL;
    } else {
      n_tests = list_dirs(dirs[di], NULL, &tests);
      if (n_tests < 0) {
        fprintf(stderr, "nibble test: %s is not a test folder nor a folder of them\n", dirs[di]);
        goto out;
      }
    }
    for (int t = 0; t < n_tests; t++) {
      char tdir[4096];
      if (parent) snprintf(tdir, sizeof tdir, "%s/%s", parent, tests[t]);
      else snprintf(tdir, sizeof tdir, "%s", tests[t]);
      const char *name = strrchr(tdir, '/') ? strrchr(tdir, '/') + 1 : tdir;
      if (!*name) name = tdir;
      snprintf(mp, sizeof mp, "%s/model.onnx", tdir);
      if (!is_file(mp)) continue;
      entry *x = find_entry(&xf, name, 0);
      if (x) x->hit = 1;
      if (x && strncmp(x->reason, "skip:", 5) == 0) {
        skipped++;
        if (verbose) printf("SKIP %s: %s\n", name, x->reason + 5);
        continue;
      }
      double rtol = 1e-3, atol = 1e-7;
      entry *te = find_entry(&tol, name, 1);
      if (te) rtol = te->rtol, atol = te->atol;
      char why[2048] = "";
      if (x && strncmp(x->reason, "random:", 7) == 0) {
        /* random outputs: the values cannot match the test data's; the types
         * and shapes must, and the test stays an expected failure */
        if (run_test(tdir, reference, rtol, atol, 0, why, sizeof why)) {
          printf("XFAIL %s: random outputs: types and shapes match, values not compared\n", name);
        } else {
          unexpected_fail++;
          for (char *p = why; *p; p++)
            if (*p == '\n') *p = ' ';
          printf("FAIL %s: %s\n", name, why);
        }
        failed++;
        fflush(stdout);
        continue;
      }
      int ok = run_test(tdir, reference, rtol, atol, 1, why, sizeof why);
      if (ok) {
        passed++;
        if (x) {
          unexpected_pass++;
          printf("UNEXPECTED PASS %s (listed as expected failure: %s)\n", name, x->reason);
        } else if (verbose) {
          printf("PASS %s\n", name);
        }
      } else {
        failed++;
        for (char *p = why; *p; p++)
          if (*p == '\n') *p = ' ';
        if (x) {
          printf("XFAIL %s: %s\n", name, why);
        } else {
          unexpected_fail++;
          printf("FAIL %s: %s\n", name, why);
        }
      }
      fflush(stdout);
    }
    if (single) free(single);
    else free_strs(tests, n_tests);
  }
  if (xfail_path)
    printf("%d unexpected failures, %d unexpected passes\n", unexpected_fail, unexpected_pass);
  printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
  rc = unexpected_fail || unexpected_pass ? 1 : 0;
out:
  list_free(&xf);
  list_free(&tol);
  free(dirs);
  return rc;
}
