/* cmd_model.c - `nibble info` and `nibble dump`: look at a model. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "nibble.h"

static void info_usage(FILE *f) {
  fputs("usage: nibble info MODEL\n\n"
        "Print ir/opset versions, producer, inputs and outputs with types and shapes,\n"
        "the op histogram and the parameter count and bytes per element type.\n",
        f);
}

static void dump_usage(FILE *f) {
  fputs("usage: nibble dump MODEL [--format text|dot|json] [--full] [-o FILE]\n\n"
        "  --format F   text: ONNX textual syntax (default; onnx.parser reads it)\n"
        "               dot:  Graphviz (render with `dot -Tsvg`)\n"
        "               json: the model's structure as JSON\n"
        "  --full       print every value of every initializer (default: large ones\n"
        "               are summarized with count, min/max/mean and the first values)\n"
        "  -o FILE      write to FILE instead of standard output\n",
        f);
}

/* Load or print "nibble: <message>" and return NULL. */
static nbl_model *load_or_report(const char *path) {
  nbl_model *m = NULL;
  if (nbl_model_load(path, &m) != NBL_OK) {
    fprintf(stderr, "nibble: %s\n", nbl_last_error());
    return NULL;
  }
  return m;
}

int nbl_cmd_info(int argc, char **argv) {
  const char *path = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      info_usage(stdout);
      return 0;
    }
    if (argv[i][0] == '-' && argv[i][1]) {
      fprintf(stderr, "nibble info: unknown option '%s'\n", argv[i]);
      info_usage(stderr);
      return 2;
    }
    if (path) {
      fprintf(stderr, "nibble info: more than one MODEL given ('%s')\n", argv[i]);
      return 2;
    }
    path = argv[i];
  }
  if (!path) {
    fputs("nibble info: missing MODEL\n", stderr);
    info_usage(stderr);
    return 2;
  }
  nbl_model *m = load_or_report(path);
  if (!m) return 2;
  nbl_status st = nbl_model_print_info(m, stdout);
  nbl_model_free(m);
  if (st != NBL_OK) {
    fprintf(stderr, "nibble: %s\n", nbl_last_error());
    return 1;
  }
  return 0;
}

int nbl_cmd_dump(int argc, char **argv) {
  const char *path = NULL, *outpath = NULL;
  nbl_format fmt = NBL_FORMAT_TEXT;
  nbl_print_options opt = {0};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      dump_usage(stdout);
      return 0;
    } else if (strcmp(a, "--full") == 0) {
      opt.full = 1;
    } else if (strcmp(a, "--format") == 0 || strncmp(a, "--format=", 9) == 0) {
      const char *v = a[8] == '=' ? a + 9 : (i + 1 < argc ? argv[++i] : NULL);
      if (!v) {
        fputs("nibble dump: --format needs a value (text, dot or json)\n", stderr);
        return 2;
      }
      if (strcmp(v, "text") == 0)
        fmt = NBL_FORMAT_TEXT;
      else if (strcmp(v, "dot") == 0)
        fmt = NBL_FORMAT_DOT;
      else if (strcmp(v, "json") == 0)
        fmt = NBL_FORMAT_JSON;
      else {
        fprintf(stderr, "nibble dump: unknown format '%s' (text, dot or json)\n", v);
        return 2;
      }
    } else if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) {
      if (i + 1 >= argc) {
        fprintf(stderr, "nibble dump: %s needs a FILE\n", a);
        return 2;
      }
      outpath = argv[++i];
    } else if (a[0] == '-' && a[1]) {
      fprintf(stderr, "nibble dump: unknown option '%s'\n", a);
      dump_usage(stderr);
      return 2;
    } else if (path) {
      fprintf(stderr, "nibble dump: more than one MODEL given ('%s')\n", a);
      return 2;
    } else {
      path = a;
    }
  }
  if (!path) {
    fputs("nibble dump: missing MODEL\n", stderr);
    dump_usage(stderr);
    return 2;
  }
  nbl_model *m = load_or_report(path);
  if (!m) return 2;
  FILE *out = stdout;
  if (outpath) {
    out = fopen(outpath, "w");
    if (!out) {
      fprintf(stderr, "nibble: %s: cannot open for writing: %s\n", outpath, strerror(errno));
      nbl_model_free(m);
      return 2;
    }
  }
  nbl_status st = nbl_model_print(m, fmt, &opt, out);
  int rc = 0;
  if (st != NBL_OK) {
    fprintf(stderr, "nibble: %s\n", nbl_last_error());
    rc = st == NBL_ERR_IO ? 1 : 2;
  }
  if (out != stdout) {
    if (fclose(out) != 0 && rc == 0) {
      fprintf(stderr, "nibble: %s: write failed: %s\n", outpath, strerror(errno));
      rc = 1;
    }
  } else if (fflush(out) != 0 && rc == 0) {
    fprintf(stderr, "nibble: write to standard output failed: %s\n", strerror(errno));
    rc = 1;
  }
  nbl_model_free(m);
  return rc;
}
