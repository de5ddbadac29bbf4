/* cmd_convert.c - `nibble convert` (load, rewrite with passes, save) and
 * `nibble passes` (list the passes).
 *
 * Passes come from the pass manager (passes/): --passes takes a pipeline
 * string; the dump options mirror MLIR/LLVM (--print-after-all, ...).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "nibble.h"

int nbl_cmd_passes(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      puts("usage: nibble passes\n\nList every pass with its description and options.");
      return 0;
    }
    fprintf(stderr, "nibble passes: unexpected argument '%s'\n", argv[i]);
    return 2;
  }
  puts("passes (use as: nibble convert MODEL -o OUT --passes P1,P2{option=value};\n"
       "  the name 'default' stands for " NBL_DEFAULT_PIPELINE "):");
  nbl_passes_print(stdout);
  return 0;
}

static void convert_usage(FILE *f) {
  fputs("usage: nibble convert MODEL -o OUT [--external-data none|keep|all] [--passes LIST]\n\n"
        "Load MODEL, run the passes (none: a load/save round trip) and save OUT.\n"
        "  -o OUT                  the ONNX file to write\n"
        "  --external-data MODE    keep: tensors that were external stay external (default)\n"
        "                          none: every tensor inline\n"
        "                          all:  every tensor of 1024 bytes or more goes to OUT.data\n"
        "  --passes P1,P2{opt=v}   passes to run, in order (see `nibble passes`)\n"
        "  --verify-each           run the verifier after every pass (names the pass that broke it)\n"
        "  --print-after-all       print the IR after every pass (ONNX text syntax, to stdout)\n"
        "  --print-before-all      print the IR before every pass\n"
        "  --print-after P         print the IR after pass P (repeatable, or P1,P2)\n"
        "  --print-before P        print the IR before pass P\n"
        "  --print-changed         print the IR after every pass that changed something\n"
        "  --dump-dir DIR          write NN-<pass>.onnxtxt, .dot and .onnx after every pass\n"
        "  --pass-stats            print time, nodes/values added/removed, initializer bytes per pass\n"
        "Nothing is written to OUT when a pass or the verifier fails.\n",
        f);
}

/* Append "v" to a comma-separated list held in *list (malloc'd). */
static int list_append(char **list, const char *v) {
  size_t n = (*list ? strlen(*list) + 1 : 0) + strlen(v) + 1;
  char *p = malloc(n);
  if (!p) return -1;
  snprintf(p, n, "%s%s%s", *list ? *list : "", *list ? "," : "", v);
  free(*list);
  *list = p;
  return 0;
}

int nbl_cmd_convert(int argc, char **argv) {
  const char *path = NULL, *outpath = NULL, *passes = NULL;
  nbl_save_options so = {.external = NBL_EXTERNAL_KEEP};
  nbl_pipeline_options po = {0};
  nbl_pipeline *pipe = NULL;
  nbl_model *m = NULL;
  char *loc = NULL, *after = NULL, *before = NULL;
  int rc = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      convert_usage(stdout);
      goto out;
    } else if (strcmp(a, "--verify-each") == 0) {
      po.verify_each = 1;
    } else if (strcmp(a, "--print-after-all") == 0) {
      po.print_after_all = 1;
    } else if (strcmp(a, "--print-before-all") == 0) {
      po.print_before_all = 1;
    } else if (strcmp(a, "--print-changed") == 0) {
      po.print_changed = 1;
    } else if (strcmp(a, "--pass-stats") == 0) {
      po.pass_stats = 1;
    } else if (strcmp(a, "--print-after") == 0 || strcmp(a, "--print-before") == 0 ||
               strcmp(a, "--dump-dir") == 0) {
      if (i + 1 >= argc) {
        fprintf(stderr, "nibble convert: %s needs a value\n", a);
        rc = 2;
        goto out;
      }
      const char *v = argv[++i];
      if (strcmp(a, "--dump-dir") == 0) {
        po.dump_dir = v;
      } else if (list_append(strcmp(a, "--print-after") == 0 ? &after : &before, v)) {
        fputs("nibble: out of memory\n", stderr);
        rc = 1;
        goto out;
      }
    } else if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0 ||
               strcmp(a, "--external-data") == 0 || strcmp(a, "--passes") == 0) {
      if (i + 1 >= argc) {
        fprintf(stderr, "nibble convert: %s needs a value\n", a);
        rc = 2;
        goto out;
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
        rc = 2;
        goto out;
      }
    } else if (a[0] == '-' && a[1]) {
      fprintf(stderr, "nibble convert: unknown option '%s'\n", a);
      convert_usage(stderr);
      rc = 2;
      goto out;
    } else if (path) {
      fprintf(stderr, "nibble convert: more than one MODEL given ('%s')\n", a);
      rc = 2;
      goto out;
    } else {
      path = a;
    }
  }
  if (!path || !outpath) {
    fprintf(stderr, "nibble convert: missing %s\n", path ? "-o OUT" : "MODEL");
    convert_usage(stderr);
    rc = 2;
    goto out;
  }
  /* Check the pipeline before the (possibly long) load. */
  if (nbl_pipeline_parse(passes ? passes : "", &pipe) != NBL_OK) {
    fprintf(stderr, "nibble convert: %s\n", nbl_last_error());
    rc = 2;
    goto out;
  }
  if (nbl_model_load(path, &m) != NBL_OK) {
    fprintf(stderr, "nibble: %s\n", nbl_last_error());
    rc = 2;
    goto out;
  }
  if (so.external == NBL_EXTERNAL_ALL) {
    const char *base = strrchr(outpath, '/');
    base = base ? base + 1 : outpath;
    size_t n = strlen(base) + 6;
    loc = malloc(n);
    if (!loc) {
      fputs("nibble: out of memory\n", stderr);
      rc = 1;
      goto out;
    }
    snprintf(loc, n, "%s.data", base);
    so.location = loc;
  }
  po.print_after = after;
  po.print_before = before;
  nbl_status st = nbl_pipeline_run(pipe, m, &po);
  if (st != NBL_OK) {
    fprintf(stderr, "nibble: %s: %s\n", path, nbl_last_error());
    /* a pass that refuses the model (invalid, or something nibble does not
     * support) is bad input, as for run and train */
    rc = st == NBL_ERR_INVALID_ARGUMENT || st == NBL_ERR_INVALID_MODEL || st == NBL_ERR_UNSUPPORTED ? 2 : 1;
    goto out;
  }
  if (nbl_model_save(m, outpath, &so) != NBL_OK) {
    fprintf(stderr, "nibble: %s\n", nbl_last_error());
    rc = 1;
  }
out:
  free(loc);
  free(after);
  free(before);
  nbl_pipeline_free(pipe);
  nbl_model_free(m);
  return rc;
}
