/* cmd_convert.c - `nibble convert` (load, rewrite with passes, save) and
 * `nibble passes` (list the passes).
 *
 * Passes: no pass is registered in this build yet, so any pass named with
 * --passes is reported as unknown (exit 2) and `nibble passes` prints an
 * empty list. Both go through the table below: registering a pass means
 * adding one line to `known_passes` and its run function. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "nibble.h"

typedef struct cli_pass {
  const char *name;
  const char *description;
  nbl_status (*run)(nbl_model *m, const char *options);
} cli_pass;

/* The passes `nibble convert --passes` accepts (none yet). */
static const cli_pass known_passes[] = {
    {NULL, NULL, NULL},
};

static const cli_pass *find_pass(const char *name, size_t len) {
  for (const cli_pass *p = known_passes; p->name; p++)
    if (strlen(p->name) == len && strncmp(p->name, name, len) == 0) return p;
  return NULL;
}

int nbl_cmd_passes(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      puts("usage: nibble passes\n\nList every pass with its description and options.");
      return 0;
    }
    fprintf(stderr, "nibble passes: unexpected argument '%s'\n", argv[i]);
    return 2;
  }
  int n = 0;
  for (const cli_pass *p = known_passes; p->name; p++) n++;
  if (n == 0) {
    puts("passes: none registered in this build");
    return 0;
  }
  printf("passes (%d):\n", n);
  for (const cli_pass *p = known_passes; p->name; p++)
    printf("  %-24s %s\n", p->name, p->description);
  return 0;
}

static void convert_usage(FILE *f) {
  fputs("usage: nibble convert MODEL -o OUT [--external-data none|keep|all] [--passes LIST]\n\n"
        "Load MODEL, run the passes (none: a load/save round trip) and save OUT.\n"
        "  -o OUT                  the ONNX file to write\n"
        "  --external-data MODE    keep: tensors that were external stay external (default)\n"
        "                          none: every tensor inline\n"
        "                          all:  every tensor of 1024 bytes or more goes to OUT.data\n"
        "  --passes P1,P2{opt=v}   passes to run, in order (see `nibble passes`)\n",
        f);
}

/* Split the pipeline at top-level commas and run each pass on m (m NULL:
 * only check that every pass exists). Returns an exit code. */
static int run_passes(nbl_model *m, const char *spec) {
  const char *s = spec;
  while (*s) {
    while (*s == ' ' || *s == ',') s++;
    if (!*s) break;
    const char *name = s;
    while (*s && *s != ',' && *s != '{') s++;
    size_t len = (size_t)(s - name);
    while (len && name[len - 1] == ' ') len--;
    const char *opts = NULL;
    size_t opts_len = 0;
    if (*s == '{') {
      opts = ++s;
      while (*s && *s != '}') s++;
      if (*s != '}') {
        fprintf(stderr, "nibble convert: unterminated '{' after pass '%.*s'\n", (int)len, name);
        return 2;
      }
      opts_len = (size_t)(s - opts);
      s++;
    }
    const cli_pass *p = find_pass(name, len);
    if (!p) {
      fprintf(stderr, "nibble convert: unknown pass '%.*s' (see `nibble passes`)\n", (int)len,
              name);
      return 2;
    }
    if (!m) continue;
    char *o = strndup(opts ? opts : "", opts_len);
    if (!o) {
      fputs("nibble: out of memory\n", stderr);
      return 1;
    }
    nbl_status st = p->run(m, o);
    free(o);
    if (st != NBL_OK) {
      fprintf(stderr, "nibble: pass '%s': %s\n", p->name, nbl_last_error());
      return st == NBL_ERR_INVALID_ARGUMENT ? 2 : 1;
    }
  }
  return 0;
}

int nbl_cmd_convert(int argc, char **argv) {
  const char *path = NULL, *outpath = NULL, *passes = NULL;
  nbl_save_options so = {.external = NBL_EXTERNAL_KEEP};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      convert_usage(stdout);
      return 0;
    } else if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0 ||
               strcmp(a, "--external-data") == 0 || strcmp(a, "--passes") == 0) {
      if (i + 1 >= argc) {
        fprintf(stderr, "nibble convert: %s needs a value\n", a);
        return 2;
      }
      const char *v = argv[++i];
      if (a[1] == 'o' || strcmp(a, "--output") == 0) {
        outpath = v;
      } else if (strcmp(a, "--passes") == 0) {
        passes = v;
      } else if (strcmp(v, "none") == 0) {
        so.external = NBL_EXTERNAL_NONE;
      } else if (strcmp(v, "keep") == 0) {
        so.external = NBL_EXTERNAL_KEEP;
      } else if (strcmp(v, "all") == 0) {
        so.external = NBL_EXTERNAL_ALL;
      } else {
        fprintf(stderr, "nibble convert: --external-data must be none, keep or all, not '%s'\n",
                v);
        return 2;
      }
    } else if (a[0] == '-' && a[1]) {
      fprintf(stderr, "nibble convert: unknown option '%s'\n", a);
      convert_usage(stderr);
      return 2;
    } else if (path) {
      fprintf(stderr, "nibble convert: more than one MODEL given ('%s')\n", a);
      return 2;
    } else {
      path = a;
    }
  }
  if (!path || !outpath) {
    fprintf(stderr, "nibble convert: missing %s\n", path ? "-o OUT" : "MODEL");
    convert_usage(stderr);
    return 2;
  }
  /* Check the pipeline before the (possibly long) load. */
  if (passes) {
    int rc = run_passes(NULL, passes);
    if (rc) return rc;
  }
  nbl_model *m = NULL;
  if (nbl_model_load(path, &m) != NBL_OK) {
    fprintf(stderr, "nibble: %s\n", nbl_last_error());
    return 2;
  }
  char *loc = NULL;
  if (so.external == NBL_EXTERNAL_ALL) {
    const char *base = strrchr(outpath, '/');
    base = base ? base + 1 : outpath;
    size_t n = strlen(base) + 6;
    loc = malloc(n);
    if (!loc) {
      nbl_model_free(m);
      fputs("nibble: out of memory\n", stderr);
      return 1;
    }
    snprintf(loc, n, "%s.data", base);
    so.location = loc;
  }
  int rc = passes ? run_passes(m, passes) : 0;
  if (rc == 0 && nbl_model_save(m, outpath, &so) != NBL_OK) {
    fprintf(stderr, "nibble: %s\n", nbl_last_error());
    rc = 1;
  }
  free(loc);
  nbl_model_free(m);
  return rc;
}
