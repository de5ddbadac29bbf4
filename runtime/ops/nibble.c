/* runtime/ops/nibble.c - op family 'nibble': nibble's own ops in domain ai.nibble.
 *
 * QuantizeInt4 (version 1): per-tensor fake quantization, float in, float out.
 *   inputs:  X (float32), alpha (optional float32 scalar, the PACT clip)
 *   outputs: Y = s*(q - z) (same shape), scale (optional float32 scalar),
 *            zero_point (optional int8 scalar)
 *   attributes: bits (2..8, default 4), mode (symmetric|affine),
 *            scale_source (max|sawb|fixed|pact), scale (float, fixed),
 *            narrow (0/1), rounding (half_even|stochastic), seed (int)
 * The reference kernel computes the formulas of runtime/formats/int4.h literally. */
#include <math.h>
#include <string.h>

#include "runtime/core/shape.h"
#include "runtime/formats/int4.h"

/* The node's attributes through the one decoder (runtime/formats/int4.h). */
static nbl_status q4_attrs(nbl_kctx *c, nbl_q4_config *cfg) {
  char err[256];
  nbl_status st = nbl_q4_config_decode(c->node, cfg, err, sizeof err);
  return st == NBL_OK ? NBL_OK : nbl_kerr(c, st, "%s", err);
}

static nbl_status k_quantize_int4(nbl_kctx *c) {
  const nbl_rt_tensor *x = c->n_in > 0 ? c->in[0] : NULL;
  if (!x) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input X is missing");
  if (x->dtype != NBL_DT_FLOAT)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "X must be float32, got %s",
                    nbl_dtype_name(x->dtype));
  nbl_q4_config cfg;
  nbl_status st = q4_attrs(c, &cfg);
  if (st != NBL_OK) return st;
  float alpha = 0.0f;
  if (cfg.scale_source == NBL_Q4_SCALE_PACT) {
    const nbl_rt_tensor *a = c->n_in > 1 ? c->in[1] : NULL;
    if (!a) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "scale_source=pact needs input alpha");
    if (a->dtype != NBL_DT_FLOAT || a->numel != 1)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "alpha must be a float32 scalar");
    alpha = ((const float *)a->data)[0];
  }
  nbl_q4_params p;
  const char *why = NULL;
  if (nbl_q4_choose(&cfg, (const float *)x->data, (size_t)x->numel, alpha, &p, &why) != 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "%s", why);
  st = nbl_kctx_alloc_out(c, 0, NBL_DT_FLOAT, x->rank, x->dims);
  if (st != NBL_OK) return st;
  nbl_rt_tensor *y = nbl_kctx_out(c, 0);
  nbl_q4_fake_quant(&cfg, &p, (const float *)x->data, (float *)y->data, (size_t)x->numel, 0);
  if (c->n_out > 1 && c->out[1]) {
    st = nbl_kctx_alloc_out(c, 1, NBL_DT_FLOAT, 0, NULL);
    if (st != NBL_OK) return st;
    ((float *)nbl_kctx_out(c, 1)->data)[0] = p.scale;
  }
  if (c->n_out > 2 && c->out[2]) {
    st = nbl_kctx_alloc_out(c, 2, NBL_DT_INT8, 0, NULL);
    if (st != NBL_OK) return st;
    ((int8_t *)nbl_kctx_out(c, 2)->data)[0] = (int8_t)p.zero;
  }
  return NBL_OK;
}


/* ------------------------------------------------------------------ shape rules */

/* QuantizeInt4: Y like X; scale float32 and zero_point int8 scalars. */
static nbl_status shape_quantize_int4(nbl_shape_ctx *c) {
  nbl_status st = nbl_shape_same(c);
  if (!st) st = nbl_shp_set_dt(c, 1, NBL_DT_FLOAT, 0);
  if (!st) st = nbl_shp_set_dt(c, 2, NBL_DT_INT8, 0);
  return st;
}

/* ------------------------------------------------------------------ table */

const nbl_op_def nbl_ops_nibble[] = {
    NBL_OP_DEF("ai.nibble", "QuantizeInt4", 1, 1, .ref = k_quantize_int4,
        .shape = shape_quantize_int4),
};
const size_t nbl_ops_nibble_count = sizeof nbl_ops_nibble / sizeof nbl_ops_nibble[0];
