/* cmd_diff.c - `nibble diff A.onnx B.onnx`: what differs between two models
 * (typically two stages of a --dump-dir). Exit 0 when nothing differs, 1 when
 * something does (as diff(1)), 2 on bad usage or a model that does not load. */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "nibble.h"

int nbl_cmd_diff(int argc, char **argv) {
  const char *path[2] = {NULL, NULL};
  int n = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      puts("usage: nibble diff A.onnx B.onnx\n\n"
           "Print what differs between two models, one line each: '+' only in B, '-' only in A,\n"
           "'~' changed (op, inputs, attributes, renamed values, types/shapes, initializer data\n"
           "with the largest absolute difference). Exit 0 if equal, 1 if they differ.");
      return 0;
    }
    if (argv[i][0] == '-' && argv[i][1]) {
      fprintf(stderr, "nibble diff: unknown option '%s'\n", argv[i]);
      return 2;
    }
    if (n == 2) {
      fprintf(stderr, "nibble diff: more than two models given\n");
      return 2;
    }
    path[n++] = argv[i];
  }
  if (n != 2) {
    fprintf(stderr, "usage: nibble diff A.onnx B.onnx\n");
    return 2;
  }
  nbl_model *m[2] = {NULL, NULL};
  for (int k = 0; k < 2; k++)
    if (nbl_model_load(path[k], &m[k]) != NBL_OK) {
      fprintf(stderr, "nibble: %s\n", nbl_last_error());
      nbl_model_free(m[0]);
      return 2;
    }
  int count = 0;
  nbl_status st = nbl_model_diff(m[0], m[1], stdout, &count);
  if (st != NBL_OK) fprintf(stderr, "nibble: %s\n", nbl_last_error());
  else if (count == 0) printf("no differences\n");
  else printf("%d difference%s\n", count, count == 1 ? "" : "s");
  nbl_model_free(m[0]);
  nbl_model_free(m[1]);
  return st != NBL_OK ? 2 : count ? 1 : 0;
}
