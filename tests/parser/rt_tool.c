/* rt_tool.c - helper the parser's python tests drive.
 *   rt_tool save IN OUT [keep|none|all]   load IN, save to OUT (external data mode)
 *   rt_tool equal A B                     load both; exit 0 if nbl_model_equal
 *   rt_tool pbdump FILE...                one line per TensorProto file:
 *                                         FILE dtype dims(comma) checksum(data)
 * Exit status: 0 ok, 1 failure (message on stderr). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "nibble.h"
#include "parser/parser.h"

/* Positional checksum, easy to recompute with numpy: sum of b[i] * (i * K + 1) mod 2^64. */
static uint64_t checksum(const void *p, size_t n) {
  const unsigned char *b = p;
  uint64_t h = 0;
  for (size_t i = 0; i < n; i++) h += (uint64_t)b[i] * ((uint64_t)i * 2654435761ull + 1);
  return h;
}

int main(int argc, char **argv) {
  if (argc >= 4 && strcmp(argv[1], "save") == 0) {
    nbl_model *m;
    if (nbl_model_load(argv[2], &m)) {
      fprintf(stderr, "%s\n", nbl_last_error());
      return 1;
    }
    nbl_save_options o = {.external = NBL_EXTERNAL_KEEP};
    if (argc >= 5 && strcmp(argv[4], "none") == 0) o.external = NBL_EXTERNAL_NONE;
    if (argc >= 5 && strcmp(argv[4], "all") == 0) o.external = NBL_EXTERNAL_ALL;
    nbl_status st = nbl_model_save(m, argv[3], &o);
    if (st) fprintf(stderr, "%s\n", nbl_last_error());
    nbl_model_free(m);
    return st ? 1 : 0;
  }
  if (argc == 4 && strcmp(argv[1], "equal") == 0) {
    nbl_model *a = NULL, *b = NULL;
    if (nbl_model_load(argv[2], &a) || nbl_model_load(argv[3], &b)) {
      fprintf(stderr, "%s\n", nbl_last_error());
      nbl_model_free(a);
      return 1;
    }
    char why[2048];
    bool eq = nbl_model_equal(a, b, why, sizeof why);
    if (!eq) fprintf(stderr, "differ: %s\n", why);
    nbl_model_free(a);
    nbl_model_free(b);
    return eq ? 0 : 1;
  }
  if (argc >= 2 && strcmp(argv[1], "pbdump") == 0) {
    int rc = 0;
    for (int i = 2; i < argc; i++) {
      nbl_arena *a = nbl_arena_new();
      nbl_tensor *t;
      if (nbl_tensor_load_file(argv[i], a, &t)) {
        printf("%s ERROR %s\n", argv[i], nbl_last_error());
        rc = 1;
      } else {
        printf("%s %d ", argv[i], (int)t->dtype);
        for (int k = 0; k < t->rank; k++) printf("%s%lld", k ? "," : "", (long long)t->dims[k]);
        uint64_t h;
        if (t->dtype == NBL_DT_STRING) {
          h = 0;
          for (int64_t k = 0; k < t->n_strings; k++) h += checksum(t->strings[k], t->string_lens[k]) * ((uint64_t)k + 1);
        } else {
          h = checksum(t->data, t->nbytes);
        }
        printf(" %016llx\n", (unsigned long long)h);
        nbl_buffer_unref(t->buf);
      }
      nbl_arena_free(a);
    }
    return rc;
  }
  fprintf(stderr, "usage: rt_tool save IN OUT [keep|none|all] | equal A B | pbdump FILE...\n");
  return 2;
}
