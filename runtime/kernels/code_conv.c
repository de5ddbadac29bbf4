/* code_conv.c - the literal composition of the fused integer paths' consumer,
 * with its residual Add and activation, and the geometry of a fused Conv
 * (runtime/kernels/code_conv.h). */
#include "runtime/kernels/code_conv.h"

nbl_status nbl_code_finish_residual(nbl_kctx *c, const nbl_code_consumer *o) {
  const nbl_node *res_add = o->res_add; /* c->node is o->node, whose outputs the Add writes */
  nbl_id conv_out = o->conv_out;
  int act = o->act;
  float lo = o->act_lo, hi = o->act_hi;
  const nbl_rt_tensor *R = c->n_in > 4 ? c->in[4] : NULL;
  if (!R) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "the residual input of the fused Add is missing");
  nbl_status st = nbl_kctx_add_to_out0(c, res_add, res_add->inputs[0] == conv_out ? 0 : 1, R);
  if (st == NBL_OK && act) {
    nbl_rt_tensor *y = nbl_kctx_out(c, 0);
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

nbl_status nbl_code_run_consumer(nbl_kctx *c, const nbl_code_consumer *o, const nbl_rt_tensor *xh,
                                 const nbl_rt_tensor *wh) {
  const nbl_rt_tensor *ins[3] = {xh, wh, c->n_in > 2 ? c->in[2] : NULL};
  nbl_kctx c2 = *c;
  nbl_node on = *o->orig; /* its attributes; the fused node's outputs (for the arena) */
  on.outputs = o->node.outputs;
  on.n_outputs = o->node.n_outputs;
  c2.node = &on;
  c2.n_in = o->orig->n_inputs < 3 ? o->orig->n_inputs : 3;
  c2.in = ins;
  const nbl_op_def *def = nbl_op_lookup("", o->orig->op_type, c->opset);
  nbl_status st = def ? def->ref(&c2)
                      : nbl_kerr(c, NBL_ERR_UNSUPPORTED, "no kernel for %s at opset %d",
                                 o->orig->op_type, c->opset);
  if (st == NBL_OK && o->res_add) {
    st = nbl_code_finish_residual(c, o);
  } else if (st == NBL_OK && o->act) {
    nbl_rt_tensor *y = nbl_kctx_out(c, 0);
    float *yv = y->data;
    for (int64_t i = 0; i < y->numel; i++) yv[i] = nbl_code_act(o, yv[i]);
  }
  return st;
}

nbl_status nbl_code_conv_geom(nbl_kctx *c, const nbl_code_consumer *o, const nbl_rt_tensor *X,
                              const nbl_rt_tensor *B, nbl_conv_geom *g, int *take) {
  *take = 0;
  if (X->rank != 4) return NBL_OK;
  nbl_status st = nbl_conv_geom_init(c, g, X, o->wdims + 2, 0);
  if (st != NBL_OK) return st;
  g->group = o->groups;
  g->M = o->wdims[0];
  *take = g->C == o->wdims[1] * g->group && (!B || (B->dtype == NBL_DT_FLOAT && B->numel == g->M));
  return NBL_OK;
}
