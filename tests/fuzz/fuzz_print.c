/*
 * fuzz_print.c - fuzz target: the printers over loaded models.
 *
 * A model the loader accepts is printed as text (summarized and with every
 * value), JSON and DOT, summarized (info), and diffed against itself (no
 * differences expected). Output goes to /dev/null: only crashes, sanitizer
 * reports and the invariants below count.
 */
#include "fuzz_common.h"
#include "nibble.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  nbl_model *m = NULL;
  if (nbl_model_load_buffer(data, size, "fuzz.onnx", NULL, &m) != NBL_OK) return 0;
  FILE *out = fuzz_null_file();
  nbl_print_options full = {.full = 1};
  static const nbl_format fmts[] = {NBL_FORMAT_TEXT, NBL_FORMAT_JSON, NBL_FORMAT_DOT};
  for (size_t i = 0; i < sizeof fmts / sizeof fmts[0]; i++) {
    if (nbl_model_print(m, fmts[i], NULL, out) != NBL_OK)
      fuzz_fail("printing a loaded model (format %d) failed: %s", (int)fmts[i], nbl_last_error());
  }
  if (nbl_model_print(m, NBL_FORMAT_TEXT, &full, out) != NBL_OK)
    fuzz_fail("printing a loaded model in full failed: %s", nbl_last_error());
  if (nbl_model_print_info(m, out) != NBL_OK)
    fuzz_fail("the info of a loaded model failed: %s", nbl_last_error());
  int n = -1;
  if (nbl_model_diff(m, m, out, &n) != NBL_OK)
    fuzz_fail("diffing a model with itself failed: %s", nbl_last_error());
  if (n != 0) fuzz_fail("a model differs from itself in %d places", n);
  nbl_model_free(m);
  return 0;
}
