/* optable.c - the one op table: the families' arrays, looked up by domain,
 * op type and opset version (the highest since_version <= the model's import),
 * and its public view (nbl_op_table_entry, for `nibble ops`). */
#include <string.h>

#include "nibble.h"
#include "runtime/core/kernel.h"

static const struct {
  const nbl_op_def *ops;
  const size_t *count;
} families[] = {
    {nbl_ops_elementwise, &nbl_ops_elementwise_count},
    {nbl_ops_elementwise_unary, &nbl_ops_elementwise_unary_count},
    {nbl_ops_reduce, &nbl_ops_reduce_count},
    {nbl_ops_loss, &nbl_ops_loss_count},
    {nbl_ops_nn, &nbl_ops_nn_count},
    {nbl_ops_nn_pool, &nbl_ops_nn_pool_count},
    {nbl_ops_nn_norm, &nbl_ops_nn_norm_count},
    {nbl_ops_quant, &nbl_ops_quant_count},
    {nbl_ops_quant_contrib, &nbl_ops_quant_contrib_count},
    {nbl_ops_shape, &nbl_ops_shape_count},
    {nbl_ops_shape_strided, &nbl_ops_shape_strided_count},
    {nbl_ops_shape_index, &nbl_ops_shape_index_count},
    {nbl_ops_shape_resize, &nbl_ops_shape_resize_count},
    {nbl_ops_control, &nbl_ops_control_count},
    {nbl_ops_control_flow, &nbl_ops_control_flow_count},
    {nbl_ops_train, &nbl_ops_train_count},
    {nbl_ops_rnn, &nbl_ops_rnn_count},
    {nbl_ops_signal, &nbl_ops_signal_count},
    {nbl_ops_misc, &nbl_ops_misc_count},
    {nbl_ops_random, &nbl_ops_random_count},
    {nbl_ops_sequence, &nbl_ops_sequence_count},
    {nbl_ops_einsum, &nbl_ops_einsum_count},
    {nbl_ops_nibble, &nbl_ops_nibble_count},
    {nbl_ops_grad_elementwise, &nbl_ops_grad_elementwise_count},
    {nbl_ops_grad_reduce, &nbl_ops_grad_reduce_count},
    {nbl_ops_grad_shape, &nbl_ops_grad_shape_count},
    {nbl_ops_grad_conv, &nbl_ops_grad_conv_count},
    {nbl_ops_grad_pool, &nbl_ops_grad_pool_count},
    {nbl_ops_grad_norm, &nbl_ops_grad_norm_count},
    {nbl_ops_grad_int4, &nbl_ops_grad_int4_count},
};

static int same_domain(const char *a, const char *b) {
  if (!a || strcmp(a, "ai.onnx") == 0) a = "";
  if (!b || strcmp(b, "ai.onnx") == 0) b = "";
  return strcmp(a, b) == 0;
}

const nbl_op_def *nbl_op_lookup(const char *domain, const char *op_type, int opset) {
  const nbl_op_def *best = NULL;
  for (size_t f = 0; f < sizeof families / sizeof families[0]; f++)
    for (size_t i = 0; i < *families[f].count; i++) {
      const nbl_op_def *d = &families[f].ops[i];
      if (strcmp(d->name, op_type) != 0 || !same_domain(d->domain, domain)) continue;
      if (d->since_version > opset || opset > d->max_version) continue;
      if (!best || d->since_version > best->since_version) best = d;
    }
  return best;
}

const nbl_op_def *nbl_op_lookup_nearest(const char *domain, const char *op_type, int opset) {
  const nbl_op_def *exact = nbl_op_lookup(domain, op_type, opset);
  if (exact) return exact;
  const nbl_op_def *older = NULL, *oldest = NULL;
  for (size_t f = 0; f < sizeof families / sizeof families[0]; f++)
    for (size_t i = 0; i < *families[f].count; i++) {
      const nbl_op_def *d = &families[f].ops[i];
      if (strcmp(d->name, op_type) != 0 || !same_domain(d->domain, domain)) continue;
      if (d->max_version < opset && (!older || d->max_version > older->max_version)) older = d;
      if (!oldest || d->since_version < oldest->since_version) oldest = d;
    }
  return older ? older : oldest;
}

size_t nbl_op_count(void) {
  size_t n = 0;
  for (size_t f = 0; f < sizeof families / sizeof families[0]; f++) n += *families[f].count;
  return n;
}

const nbl_op_def *nbl_op_at(size_t i) {
  for (size_t f = 0; f < sizeof families / sizeof families[0]; f++) {
    if (i < *families[f].count) return &families[f].ops[i];
    i -= *families[f].count;
  }
  return NULL;
}

int nbl_op_table_size(void) { return (int)nbl_op_count(); }

nbl_status nbl_op_table_entry(int i, nbl_op_info *out) {
  const nbl_op_def *d = i >= 0 ? nbl_op_at((size_t)i) : NULL;
  if (!d || !out)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "op table entry %d: out of range [0, %d)", i,
                      nbl_op_table_size());
  *out = (nbl_op_info){.domain = d->domain,
                       .name = d->name,
                       .since_version = d->since_version,
                       .max_version = d->max_version,
                       .shape_rule = d->shape != NULL,
                       .grad_rule = d->grad != NULL,
                       .no_grad = d->grad ? NULL : d->no_grad,
                       .fast_kernel = d->fast != NULL,
                       .stable_since = d->stable_since,
                       .convert_from = d->adapters && d->adapters[0].to ? d->adapters[0].from
                                                                        : d->stable_since,
                       .random = (d->flags & NBL_OPF_RANDOM) != 0};
  return NBL_OK;
}
