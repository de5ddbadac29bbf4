/* nibble - the command-line tool. Subcommands live in cmd_*.c (commands.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"
#include "nibble.h"

static const struct {
  const char *name;
  int (*fn)(int, char **);
  const char *help;
} commands[] = {
    {"info", nbl_cmd_info, "MODEL: versions, inputs/outputs, op histogram, parameters"},
    {"dump", nbl_cmd_dump, "MODEL [--format text|dot|json] [--full] [-o FILE]"},
    {"passes", nbl_cmd_passes, "list every pass with its description and options"},
    {"ops", nbl_cmd_ops, "[--format text|md]: the op table (opsets, shape rule, gradient, fast paths)"},
    {"convert", nbl_cmd_convert, "MODEL -o OUT [--passes P1,P2{opt=v}] [dump options]"},
    {"run", nbl_cmd_run, "MODEL [--input NAME=FILE]... [--output-dir DIR] [--threads N] [--timeout S]"},
    {"test", nbl_cmd_test, "DIR...: run ONNX backend-test folders"},
    {"diff", nbl_cmd_diff, "A.onnx B.onnx: nodes, attributes, values, types and weights that differ"},
    {"compare", nbl_cmd_compare, "A.onnx B.onnx [--input NAME=FILE]... [--format text|csv]: error of B vs A"},
    {"train", nbl_cmd_train, "MODEL --data SPEC [--epochs E] [--batch B] [--lr LR] ...: train on a dataset"},
};

static void usage(FILE *f) {
  fprintf(f, "usage: nibble COMMAND [ARGS]\n\ncommands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].help);
  fprintf(f, "\n  nibble COMMAND --help   options of one command\n"
             "  nibble --version\n\nexit status: 0 success, 1 run failed or outputs mismatched, "
             "2 bad usage or bad input\n");
}

int main(int argc, char **argv) {
  /* OpenBLAS fell back to its SSE3 kernels on a CPU it does not know: run
   * again with the kernels that fit (nbl_blas_coretype_hint); if that
   * fails, go on as we are */
  const char *blas_core = nbl_blas_coretype_hint();
  if (blas_core && setenv("OPENBLAS_CORETYPE", blas_core, 1) == 0) execv("/proc/self/exe", argv);
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
    printf("nibble %s\n%s\n", nbl_version(), nbl_kernel_info());
    return 0;
  }
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
      strcmp(argv[1], "help") == 0) {
    usage(stdout);
    return 0;
  }
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (strcmp(argv[1], commands[i].name) == 0) return commands[i].fn(argc - 1, argv + 1);
  fprintf(stderr, "nibble: unknown command '%s'\n", argv[1]);
  usage(stderr);
  return 2;
}
