/* kernel_util.c - tensor and broadcasting helpers shared by every kernel. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/kernel.h"

size_t nbl_rt_elem_size(nbl_dtype dt) {
  if (dt == NBL_DT_STRING) return sizeof(char *);
  int bits = nbl_dtype_bits(dt);
  return bits >= 8 ? (size_t)(bits / 8) : 0;
}

nbl_status nbl_rt_tensor_alloc(nbl_rt_tensor *t, nbl_dtype dt, int rank, const int64_t *dims) {
  if (rank < 0 || rank > NBL_MAX_RANK)
    return nbl_errorf(NBL_ERR_UNSUPPORTED, "tensor rank %d exceeds the supported maximum %d", rank,
                      NBL_MAX_RANK);
  int64_t n = nbl_shape_numel(rank, dims);
  if (n < 0) return nbl_errorf(NBL_ERR_RUNTIME, "tensor shape has a negative or overflowing size");
  size_t nb = dt == NBL_DT_STRING ? (size_t)n * sizeof(char *) : nbl_dtype_nbytes(dt, n);
  if (dt != NBL_DT_STRING && nbl_dtype_bits(dt) == 0)
    return nbl_errorf(NBL_ERR_UNSUPPORTED, "element type %s cannot be allocated",
                      nbl_dtype_name(dt));
  if (n > 0 && nb / (size_t)n < (nbl_dtype_bits(dt) == 4 ? 0 : 1))
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "tensor too large");
  void *p = calloc(nb ? nb : 1, 1);
  if (!p) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory allocating %zu bytes", nb);
  t->dtype = dt;
  t->rank = rank;
  for (int i = 0; i < rank; i++) t->dims[i] = dims[i];
  t->numel = n;
  t->data = p;
  t->nbytes = nb;
  t->owns = 1;
  t->kind = NBL_RT_TENSOR;
  return NBL_OK;
}

nbl_status nbl_rt_seq_make(nbl_rt_tensor *t, int kind, nbl_dtype elem, int64_t n) {
  memset(t, 0, sizeof *t);
  if (n < 0 || (kind == NBL_RT_OPTIONAL && n > 1) || (kind != NBL_RT_SEQUENCE && kind != NBL_RT_OPTIONAL))
    return nbl_errorf(NBL_ERR_INTERNAL, "bad %s of %lld elements", nbl_rt_kind_name(kind), (long long)n);
  nbl_rt_seq *q = calloc(1, sizeof *q);
  nbl_rt_tensor *items = calloc((size_t)(n ? n : 1), sizeof *items);
  if (!q || !items) {
    free(q);
    free(items);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  q->n = n;
  q->items = items;
  t->kind = kind;
  t->dtype = elem;
  t->data = q;
  t->owns = 1;
  return NBL_OK;
}

const char *nbl_rt_kind_name(int kind) {
  return kind == NBL_RT_SEQUENCE ? "sequence" : kind == NBL_RT_OPTIONAL ? "optional" : "tensor";
}

nbl_status nbl_rt_from_ir(const nbl_tensor *t, nbl_rt_tensor *out) {
  memset(out, 0, sizeof *out);
  int64_t n;
  nbl_status st = nbl_tensor_check_data(t, NBL_MAX_RANK, &n);
  if (st != NBL_OK) return st;
  out->dtype = t->dtype;
  out->rank = t->rank;
  for (int d = 0; d < t->rank; d++) out->dims[d] = t->dims[d];
  out->numel = n;
  if (t->dtype == NBL_DT_STRING) {
    char **s;
    if ((st = nbl_tensor_dup_strings(t, n, &s)) != NBL_OK) return st;
    out->data = s;
    out->nbytes = (size_t)n * sizeof(char *);
    out->owns = 1;
    return NBL_OK;
  }
  out->data = (void *)t->data; /* zero-copy view; kernels never write inputs */
  out->nbytes = nbl_dtype_nbytes(t->dtype, n);
  out->owns = 0;
  return NBL_OK;
}

void nbl_rt_tensor_free(nbl_rt_tensor *t) {
  if (!t) return;
  if (t->kind != NBL_RT_TENSOR) {
    nbl_rt_seq *q = t->data;
    if (t->owns && q) {
      for (int64_t i = 0; i < q->n; i++) nbl_rt_tensor_free(&q->items[i]);
      free(q->items);
      free(q);
    }
    t->data = NULL;
    t->owns = 0;
    t->nbytes = 0;
    return;
  }
  if (t->owns && t->data) {
    if (t->dtype == NBL_DT_STRING) {
      char **s = t->data;
      for (int64_t i = 0; i < t->numel; i++) free(s[i]);
    }
    free(t->data);
  }
  t->data = NULL;
  t->owns = 0;
  t->nbytes = 0;
}

double nbl_rt_get_f64(const nbl_rt_tensor *t, int64_t i) {
  const void *d = t->data;
  switch (t->dtype) {
  case NBL_DT_FLOAT: return ((const float *)d)[i];
  case NBL_DT_DOUBLE: return ((const double *)d)[i];
  case NBL_DT_FLOAT16: return nbl_half_to_float(((const uint16_t *)d)[i]);
  case NBL_DT_BFLOAT16: return nbl_bf16_to_float(((const uint16_t *)d)[i]);
  case NBL_DT_UINT64: return (double)((const uint64_t *)d)[i];
  default: return (double)nbl_rt_get_i64(t, i);
  }
}

int64_t nbl_rt_get_i64(const nbl_rt_tensor *t, int64_t i) {
  const void *d = t->data;
  switch (t->dtype) {
  case NBL_DT_UINT8: return ((const uint8_t *)d)[i];
  case NBL_DT_BOOL: return ((const uint8_t *)d)[i] != 0;
  case NBL_DT_INT8: return ((const int8_t *)d)[i];
  case NBL_DT_UINT16: return ((const uint16_t *)d)[i];
  case NBL_DT_INT16: return ((const int16_t *)d)[i];
  case NBL_DT_INT32: return ((const int32_t *)d)[i];
  case NBL_DT_UINT32: return ((const uint32_t *)d)[i];
  case NBL_DT_INT64: return ((const int64_t *)d)[i];
  case NBL_DT_UINT64: return (int64_t)((const uint64_t *)d)[i];
  case NBL_DT_INT4: {
    int v = (((const uint8_t *)d)[i / 2] >> (4 * (i & 1))) & 0xf;
    return v >= 8 ? v - 16 : v;
  }
  case NBL_DT_UINT4: return (((const uint8_t *)d)[i / 2] >> (4 * (i & 1))) & 0xf;
  case NBL_DT_FLOAT: case NBL_DT_DOUBLE: case NBL_DT_FLOAT16: case NBL_DT_BFLOAT16: {
    double v = nbl_rt_get_f64(t, i);
    if (isnan(v)) return 0;
    if (v >= 9.2e18) return INT64_MAX;
    if (v <= -9.2e18) return INT64_MIN;
    return (int64_t)v;
  }
  default: return 0;
  }
}

/* v rounded to float16 once: to float with round-to-odd (toward zero, the
 * last bit set when inexact), then to nearest even; float's 13 extra bits
 * make the two roundings equal to one (a plain double -> float -> half
 * rounds twice and can miss at a tie). */
static uint16_t half_of_double(double v) {
  float f = (float)v;
  if ((double)f != v && isfinite(f)) {
    if (fabs((double)f) > fabs(v)) f = nextafterf(f, 0.0f);
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    b |= 1;
    memcpy(&f, &b, sizeof f);
  }
  return nbl_float_to_half(f);
}

void nbl_rt_set_f64(nbl_rt_tensor *t, int64_t i, double v) {
  void *d = t->data;
  switch (t->dtype) {
  case NBL_DT_FLOAT: ((float *)d)[i] = (float)v; return;
  case NBL_DT_DOUBLE: ((double *)d)[i] = v; return;
  case NBL_DT_FLOAT16: ((uint16_t *)d)[i] = half_of_double(v); return;
  case NBL_DT_BFLOAT16: ((uint16_t *)d)[i] = nbl_float_to_bf16((float)v); return;
  case NBL_DT_BOOL: ((uint8_t *)d)[i] = v != 0; return;
  default: {
    int64_t x;
    if (isnan(v)) x = 0;
    else if (v >= 9.2e18) x = INT64_MAX;
    else if (v <= -9.2e18) x = INT64_MIN;
    else x = (int64_t)v;
    nbl_rt_set_i64(t, i, x);
  }
  }
}

void nbl_rt_set_i64(nbl_rt_tensor *t, int64_t i, int64_t v) {
  void *d = t->data;
  switch (t->dtype) {
  case NBL_DT_UINT8: ((uint8_t *)d)[i] = (uint8_t)v; return;
  case NBL_DT_BOOL: ((uint8_t *)d)[i] = v != 0; return;
  case NBL_DT_INT8: ((int8_t *)d)[i] = (int8_t)v; return;
  case NBL_DT_UINT16: ((uint16_t *)d)[i] = (uint16_t)v; return;
  case NBL_DT_INT16: ((int16_t *)d)[i] = (int16_t)v; return;
  case NBL_DT_INT32: ((int32_t *)d)[i] = (int32_t)v; return;
  case NBL_DT_UINT32: ((uint32_t *)d)[i] = (uint32_t)v; return;
  case NBL_DT_INT64: ((int64_t *)d)[i] = v; return;
  case NBL_DT_UINT64: ((uint64_t *)d)[i] = (uint64_t)v; return;
  case NBL_DT_INT4: case NBL_DT_UINT4: {
    uint8_t *b = (uint8_t *)d + i / 2;
    int sh = 4 * (int)(i & 1);
    *b = (uint8_t)((*b & ~(0xf << sh)) | ((v & 0xf) << sh));
    return;
  }
  case NBL_DT_FLOAT: case NBL_DT_DOUBLE: case NBL_DT_FLOAT16: case NBL_DT_BFLOAT16:
    nbl_rt_set_f64(t, i, (double)v);
    return;
  default: return;
  }
}

int nbl_broadcast_shape(int ra, const int64_t *a, int rb, const int64_t *b, int *rout,
                        int64_t *out) {
  int r = ra > rb ? ra : rb;
  if (r > NBL_MAX_RANK) return -1;
  for (int i = 0; i < r; i++) {
    int64_t da = i < r - ra ? 1 : a[i - (r - ra)];
    int64_t db = i < r - rb ? 1 : b[i - (r - rb)];
    if (da == db || db == 1) out[i] = da;
    else if (da == 1) out[i] = db;
    else return -1;
  }
  *rout = r;
  return 0;
}

int64_t nbl_broadcast_index(int rank, const int64_t *dims, int64_t i, int ra, const int64_t *a) {
  int64_t idx = 0, stride = 1;
  for (int d = rank - 1; d >= 0; d--) {
    int64_t c = dims[d] ? i % dims[d] : 0;
    i = dims[d] ? i / dims[d] : 0;
    int ad = d - (rank - ra);
    if (ad >= 0) {
      if (a[ad] != 1) idx += c * stride;
      stride *= a[ad];
    }
  }
  return idx;
}

nbl_bcast_kind nbl_bcast_legacy(const nbl_node *n, int opset, int64_t *axis) {
  if (opset >= 7) return NBL_BCAST_NUMPY;
  if (!nbl_attr_int(n, "broadcast", 0)) return NBL_BCAST_EQUAL;
  const nbl_attr *ax = nbl_node_attr(n, "axis");
  if (!ax) return NBL_BCAST_NUMPY; /* suffix matching: the numpy rule */
  *axis = nbl_attr_int(n, "axis", 0);
  return NBL_BCAST_AXIS;
}

int nbl_bcast_axis_units(int ra, int rb, int64_t axis) {
  if (axis < 0) axis += ra;
  if (axis < 0 || axis > ra || rb < 0 || axis + rb > ra) return -1;
  return (int)(ra - axis - rb);
}

void nbl_strides(int rank, const int64_t *dims, int64_t *strides) {
  int64_t s = 1;
  for (int d = rank - 1; d >= 0; d--) {
    strides[d] = s;
    s *= dims[d];
  }
}

int nbl_norm_axis(int64_t axis, int rank) {
  if (axis < -rank || axis >= rank) return -1;
  return (int)(axis < 0 ? axis + rank : axis);
}

nbl_status nbl_rt_copy(nbl_rt_tensor *dst, const nbl_rt_tensor *src) {
  nbl_rt_tensor t = {0};
  if (src->kind != NBL_RT_TENSOR) {
    const nbl_rt_seq *q = nbl_rt_seq_of(src);
    int64_t n = q ? q->n : 0;
    nbl_status st = nbl_rt_seq_make(&t, src->kind, src->dtype, n);
    if (st != NBL_OK) return st;
    nbl_rt_seq *d = t.data;
    for (int64_t i = 0; i < n; i++)
      if ((st = nbl_rt_copy(&d->items[i], &q->items[i])) != NBL_OK) {
        nbl_rt_tensor_free(&t);
        return st;
      }
    *dst = t;
    return NBL_OK;
  }
  nbl_status st = nbl_rt_tensor_alloc(&t, src->dtype, src->rank, src->dims);
  if (st != NBL_OK) return st;
  if (src->dtype == NBL_DT_STRING) {
    char **d = t.data, *const *s = src->data;
    for (int64_t i = 0; i < t.numel; i++) {
      d[i] = strdup(s[i] ? s[i] : "");
      if (!d[i]) {
        nbl_rt_tensor_free(&t);
        return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory copying strings");
      }
    }
  } else if (t.nbytes && src->data) {
    memcpy(t.data, src->data, t.nbytes < src->nbytes ? t.nbytes : src->nbytes);
  }
  *dst = t;
  return NBL_OK;
}

nbl_status nbl_kctx_add_to_out0(nbl_kctx *c, const nbl_node *add, int first, const nbl_rt_tensor *R) {
  nbl_rt_tensor *y = nbl_kctx_out(c, 0), t = {0};
  if (!y) return nbl_kerr(c, NBL_ERR_INTERNAL, "no output 0 for the fused Add");
  nbl_status st = nbl_rt_tensor_alloc(&t, y->dtype, y->rank, y->dims);
  if (st != NBL_OK) return nbl_kerr(c, st, "out of memory");
  memcpy(t.data, y->data, t.nbytes);
  const nbl_rt_tensor *ins[2];
  ins[first ? 1 : 0] = &t;
  ins[first ? 0 : 1] = R;
  nbl_node an;
  if (add) {
    an = *add;
  } else {
    an = *c->node;
    an.op_type = "Add";
    an.domain = "";
    an.attrs = NULL;
    an.n_attrs = 0;
  }
  an.n_inputs = 2;
  an.outputs = c->node->outputs;
  an.n_outputs = c->node->n_outputs;
  nbl_kctx c2 = *c;
  c2.node = &an;
  c2.n_in = 2;
  c2.in = ins;
  const nbl_op_def *def = nbl_op_lookup("", "Add", c->opset);
  st = def ? def->ref(&c2) : nbl_kerr(c, NBL_ERR_UNSUPPORTED, "no Add kernel at opset %d", c->opset);
  nbl_rt_tensor_free(&t);
  return st;
}
