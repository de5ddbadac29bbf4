/* make_train_model - write the hand-built MLP training model of mlp_train.h
 * to a file, for the command-line training tests (tests/train/).
 *
 *   make_train_model OUT.onnx [--opt sgd|momentum|nesterov|adam] [--hidden H]
 *                    [--input CxHxW] [--classes K] [--bn] [--wd X] [--momentum M] [--seed S]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/mlp_train.h"

int main(int argc, char **argv) {
  mlp_cfg c = {.dt = NBL_DT_FLOAT, .c = 1, .h = 28, .w = 28, .hidden = 64, .classes = 10,
               .opt = "momentum", .momentum = 0.9f, .seed = 1};
  const char *out = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--bn")) {
      c.bn = 1;
    } else if (a[0] == '-' && !v) {
      fprintf(stderr, "make_train_model: %s needs a value\n", a);
      return 2;
    } else if (!strcmp(a, "--opt")) {
      c.opt = argv[++i];
    } else if (!strcmp(a, "--hidden")) {
      c.hidden = atoi(argv[++i]);
    } else if (!strcmp(a, "--classes")) {
      c.classes = atoi(argv[++i]);
    } else if (!strcmp(a, "--wd")) {
      c.wd = (float)atof(argv[++i]);
    } else if (!strcmp(a, "--momentum")) {
      c.momentum = (float)atof(argv[++i]);
    } else if (!strcmp(a, "--seed")) {
      c.seed = strtoull(argv[++i], NULL, 10);
    } else if (!strcmp(a, "--input")) {
      if (sscanf(argv[++i], "%dx%dx%d", &c.c, &c.h, &c.w) != 3) {
        fprintf(stderr, "make_train_model: --input CxHxW\n");
        return 2;
      }
    } else if (a[0] != '-' && !out) {
      out = a;
    } else {
      fprintf(stderr, "make_train_model: unexpected '%s'\n", a);
      return 2;
    }
  }
  if (!out) {
    fprintf(stderr, "usage: make_train_model OUT.onnx [options]\n");
    return 2;
  }
  nbl_model *m = mlp_train_model(&c);
  nbl_status st = nbl_model_save(m, out, NULL);
  if (st) fprintf(stderr, "make_train_model: %s\n", nbl_last_error());
  nbl_model_free(m);
  return st ? 1 : 0;
}
