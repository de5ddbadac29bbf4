/* runtime/ops/nibble.h - what the ai.nibble family (runtime/ops/nibble.c) shares
 * with other families: the QuantizeInt4 attribute decoder, so that
 * QuantizeInt4Grad (runtime/ops/grad_elementwise.c) reads the attributes
 * exactly as the forward op does. */
#ifndef NBL_OPS_NIBBLE_H
#define NBL_OPS_NIBBLE_H

#include "runtime/core/kernel.h"
#include "runtime/formats/int4.h"

/* Decode the QuantizeInt4 attributes of ctx's node (bits, mode,
 * scale_source, scale, narrow, rounding, seed) into cfg. Returns NBL_OK or an
 * error naming the bad attribute (message set via nbl_kerr). */
nbl_status nbl_q4_attrs(nbl_kctx *c, nbl_q4_config *cfg);

#endif
