/* registry.c - the one list of passes, in the order `nibble passes` shows them.
 * Adding a pass: write it in its own file, declare it here, add one line. */
#include <string.h>

#include "pass.h"

extern const nbl_pass_def nbl_pass_dce, nbl_pass_eliminate_identity, nbl_pass_fold_batchnorm,
    nbl_pass_fuse_bias, nbl_pass_lower_to_onnx, nbl_pass_test_break_ir;
extern const nbl_pass_def nbl_pass_infer_shapes, nbl_pass_fold_constants;
extern const nbl_pass_def nbl_pass_quantize_int4, nbl_pass_pack_int4;
extern const nbl_pass_def nbl_pass_build_training;

static const nbl_pass_def *const registry[] = {
    &nbl_pass_infer_shapes,
    &nbl_pass_fold_constants,
    &nbl_pass_dce,
    &nbl_pass_eliminate_identity,
    &nbl_pass_fold_batchnorm,
    &nbl_pass_fuse_bias,
    &nbl_pass_quantize_int4,
    &nbl_pass_pack_int4,
    &nbl_pass_lower_to_onnx,
    &nbl_pass_build_training,
    &nbl_pass_test_break_ir,
};

int nbl_pass_count(void) { return (int)(sizeof registry / sizeof registry[0]); }

const nbl_pass_def *nbl_pass_at(int i) {
  return (i >= 0 && i < nbl_pass_count()) ? registry[i] : NULL;
}

const nbl_pass_def *nbl_pass_find(const char *name) {
  for (int i = 0; i < nbl_pass_count(); i++)
    if (strcmp(registry[i]->name, name) == 0) return registry[i];
  return NULL;
}
