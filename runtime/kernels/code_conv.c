/* code_conv.c - the literal residual Add of the fused integer paths
 * (runtime/kernels/code_conv.h). */
#include "runtime/kernels/code_conv.h"

nbl_status nbl_code_finish_residual(nbl_kctx *c, const nbl_node *fused, const nbl_node *res_add,
                                    nbl_id conv_out, int act, float lo, float hi) {
  const nbl_rt_tensor *R = c->n_in > 4 ? c->in[4] : NULL;
  if (!R) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "the residual input of the fused Add is missing");
  nbl_rt_tensor *y = nbl_kctx_out(c, 0), t = {0};
  nbl_status st = nbl_rt_tensor_alloc(&t, y->dtype, y->rank, y->dims);
  if (st != NBL_OK) return nbl_kerr(c, st, "out of memory");
  memcpy(t.data, y->data, t.nbytes);
  const nbl_rt_tensor *ins[2];
  int ci = res_add->inputs[0] == conv_out ? 0 : 1;
  ins[ci] = &t;
  ins[1 - ci] = R;
  nbl_node an = *res_add;
  an.outputs = fused->outputs;
  an.n_outputs = fused->n_outputs;
  nbl_kctx c2 = *c;
  c2.node = &an;
  c2.n_in = 2;
  c2.in = ins;
  const nbl_op_def *def = nbl_op_lookup("", "Add", c->opset);
  st = def ? def->ref(&c2) : nbl_kerr(c, NBL_ERR_UNSUPPORTED, "no Add kernel at opset %d", c->opset);
  nbl_rt_tensor_free(&t);
  if (st == NBL_OK && act) {
    y = nbl_kctx_out(c, 0);
    if (y->dtype != NBL_DT_FLOAT)
      return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "the fused Add's output is not float32");
    float *yv = y->data;
    for (int64_t i = 0; i < y->numel; i++) {
      float v = yv[i] < lo ? lo : yv[i];
      yv[i] = v > hi ? hi : v;
    }
  }
  return st;
}
