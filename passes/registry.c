/* registry.c - the one list of passes, in the order `nibble passes` shows them.
 * Adding a pass: write it in its own file, declare it here, add one line.
 * Passes from outside the library (tests) are added with nbl_pass_register. */
#include <string.h>

#include "pass.h"

extern const nbl_pass_def nbl_pass_dce, nbl_pass_eliminate_identity, nbl_pass_fold_batchnorm,
    nbl_pass_fuse_bias, nbl_pass_lower_to_onnx;
extern const nbl_pass_def nbl_pass_infer_shapes, nbl_pass_fold_constants;
extern const nbl_pass_def nbl_pass_quantize_int4, nbl_pass_pack_int4, nbl_pass_convert_opset;
extern const nbl_pass_def nbl_pass_quantize_ternary, nbl_pass_pack_ternary;
extern const nbl_pass_def nbl_pass_build_training, nbl_pass_quantize_grad_log4;
extern const nbl_pass_def nbl_pass_int4_backward, nbl_pass_constant_initializers;

static const nbl_pass_def *const registry[] = {
    &nbl_pass_infer_shapes,
    &nbl_pass_fold_constants,
    &nbl_pass_dce,
    &nbl_pass_eliminate_identity,
    &nbl_pass_constant_initializers,
    &nbl_pass_fold_batchnorm,
    &nbl_pass_fuse_bias,
    &nbl_pass_convert_opset,
    &nbl_pass_quantize_int4,
    &nbl_pass_pack_int4,
    &nbl_pass_quantize_ternary,
    &nbl_pass_pack_ternary,
    &nbl_pass_lower_to_onnx,
    &nbl_pass_build_training,
    &nbl_pass_quantize_grad_log4,
    &nbl_pass_int4_backward,
};
#define N_BUILTIN ((int)(sizeof registry / sizeof registry[0]))

static const nbl_pass_def *added[NBL_PASS_MAX_ADDED];
static int n_added;

int nbl_pass_count(void) { return N_BUILTIN + n_added; }

const nbl_pass_def *nbl_pass_at(int i) {
  if (i >= 0 && i < N_BUILTIN) return registry[i];
  if (i >= N_BUILTIN && i < nbl_pass_count()) return added[i - N_BUILTIN];
  return NULL;
}

nbl_status nbl_pass_register(const nbl_pass_def *def) {
  if (!def || !def->name || !def->name[0] || !def->run)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                      "nbl_pass_register: a pass needs a name and a run function");
  const nbl_pass_def *old = nbl_pass_find(def->name);
  if (old == def) return NBL_OK;
  if (old)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_pass_register: a pass named '%s' exists",
                      def->name);
  if (n_added == NBL_PASS_MAX_ADDED)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_pass_register: more than %d added passes",
                      NBL_PASS_MAX_ADDED);
  added[n_added++] = def;
  return NBL_OK;
}

const nbl_pass_def *nbl_pass_find(const char *name) {
  for (int i = 0; i < nbl_pass_count(); i++)
    if (strcmp(nbl_pass_at(i)->name, name) == 0) return nbl_pass_at(i);
  return NULL;
}
