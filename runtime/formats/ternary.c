/* runtime/formats/ternary.c - ternary weights and INT8 absmax activations;
 * the formulas are in ternary.h. */
#include "runtime/formats/ternary.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

float nbl_tern_scale(const float *w, size_t n) {
  double sum = 0.0;
  size_t cnt = 0;
  for (size_t i = 0; i < n; i++)
    if (isfinite(w[i])) {
      sum += fabs((double)w[i]);
      cnt++;
    }
  float s = cnt ? (float)(sum / (double)cnt) : 0.0f;
  return s > 0.0f ? s : 1.0f;
}

int nbl_tern_code(float w, float s) {
  float r = rintf(w / s); /* the default rounding mode: half to even */
  return r > 0.0f ? 1 : r < 0.0f ? -1 : 0;
}

void nbl_tern_fake_quant(const float *w, float *y, size_t n, float s) {
  for (size_t i = 0; i < n; i++) y[i] = isfinite(w[i]) ? s * (float)nbl_tern_code(w[i], s) : w[i];
}

void nbl_tern_codes(const float *w, int8_t *q, size_t n, float s) {
  for (size_t i = 0; i < n; i++)
    q[i] = isnan(w[i]) ? 0 : isinf(w[i]) ? (w[i] > 0 ? 1 : -1) : (int8_t)nbl_tern_code(w[i], s);
}

float nbl_absmax8_scale(const float *x, size_t n) {
  float mx = 0.0f;
  for (size_t i = 0; i < n; i++) {
    float a = fabsf(x[i]);
    if (isfinite(a) && a > mx) mx = a;
  }
  return mx > 0.0f ? mx / 127.0f : 1.0f;
}

static void absmax8_run(const float *x, float *y, size_t n) {
  float s = nbl_absmax8_scale(x, n);
  for (size_t i = 0; i < n; i++) {
    if (!isfinite(x[i])) {
      y[i] = x[i];
      continue;
    }
    float q = rintf(x[i] / s);
    q = q < -128.0f ? -128.0f : q > 127.0f ? 127.0f : q;
    y[i] = s * q;
  }
}

void nbl_absmax8_fake_quant(const float *x, float *y, size_t n, size_t row, int per_row) {
  if (!per_row || row == 0 || row >= n) {
    absmax8_run(x, y, n);
    return;
  }
  for (size_t r = 0; r + row <= n; r += row) absmax8_run(x + r, y + r, row);
}

size_t nbl_tern_pack2_bytes(size_t n) { return (n + 3) / 4; }

void nbl_tern_pack2(const int8_t *q, size_t n, uint8_t *dst) {
  for (size_t i = 0; i < nbl_tern_pack2_bytes(n); i++) dst[i] = 0;
  for (size_t i = 0; i < n; i++) dst[i / 4] |= (uint8_t)((q[i] + 1) << (2 * (i % 4)));
}

void nbl_tern_unpack2(const uint8_t *src, size_t n, int8_t *q) {
  for (size_t i = 0; i < n; i++) {
    int u = (src[i / 4] >> (2 * (i % 4))) & 3;
    q[i] = (int8_t)(u > 2 ? 0 : u - 1); /* 3 is not a code: read as 0 */
  }
}

size_t nbl_tern_pack3_bytes(size_t n) { return (n + 4) / 5; }

void nbl_tern_pack3(const int8_t *q, size_t n, uint8_t *dst) {
  for (size_t b = 0; b < nbl_tern_pack3_bytes(n); b++) {
    unsigned v = 0, p = 1;
    for (size_t j = 0; j < 5; j++, p *= 3) {
      size_t i = b * 5 + j;
      if (i < n) v += (unsigned)(q[i] + 1) * p;
    }
    dst[b] = (uint8_t)v;
  }
}

int nbl_tern_unpack3(const uint8_t *src, size_t n, int8_t *q) {
  for (size_t b = 0; b < nbl_tern_pack3_bytes(n); b++) {
    unsigned v = src[b];
    if (v >= 243) return -1;
    for (size_t j = 0; j < 5; j++, v /= 3) {
      size_t i = b * 5 + j;
      if (i < n) q[i] = (int8_t)((int)(v % 3) - 1);
    }
  }
  return 0;
}

int nbl_tern_grad_pass(float w, float s) {
  if (!isfinite(w)) return 0;
  return fabsf(rintf(w / s)) <= 1.0f;
}

/* ------------------------------------------------------------------ the ops' attributes */

nbl_status nbl_tern_attrs_decode(const nbl_node *n, nbl_tern_attrs *out, char *err, size_t errlen) {
  nbl_tern_attrs a;
  memset(&a, 0, sizeof a);
  a.packing = NBL_TERN_PACK_BASE3;
  const char *op = n->op_type;
  nbl_status st;
  if (!strcmp(op, "QuantizeTernary") || !strcmp(op, "QuantizeTernaryGrad")) {
    *out = a;
    return NBL_OK;
  }
  if (!strcmp(op, "QuantizeAbsmax8")) {
    const nbl_attr *pr;
    if ((st = nbl_node_attr_typed(n, "per_row", NBL_ATTR_INT, &pr, err, errlen))) return st;
    if (pr && pr->i != 0 && pr->i != 1)
      return nbl_errbuf(err, errlen, NBL_ERR_INVALID_MODEL, "per_row must be 0 or 1, got %lld",
                        (long long)pr->i);
    a.per_row = pr ? (int)pr->i : 0;
    *out = a;
    return NBL_OK;
  }
  if (!strcmp(op, "DequantizeTernary")) {
    const nbl_attr *shape, *packing;
    if ((st = nbl_node_attr_typed(n, "shape", NBL_ATTR_INTS, &shape, err, errlen))) return st;
    if ((st = nbl_node_attr_typed(n, "packing", NBL_ATTR_STRING, &packing, err, errlen))) return st;
    if (!shape)
      return nbl_errbuf(err, errlen, NBL_ERR_INVALID_MODEL, "attribute 'shape' is required");
    if (shape->n > NBL_TERN_MAX_RANK)
      return nbl_errbuf(err, errlen, NBL_ERR_INVALID_MODEL, "shape has %d dims (at most %d)",
                        shape->n, NBL_TERN_MAX_RANK);
    int64_t numel = 1;
    for (int i = 0; i < shape->n; i++) {
      int64_t d = shape->ints[i];
      if (d < 0 || d >= ((int64_t)1 << 48))
        return nbl_errbuf(err, errlen, NBL_ERR_INVALID_MODEL, "shape[%d] = %lld is not a size", i,
                          (long long)d);
      if (d && numel > ((int64_t)1 << 48) / d)
        return nbl_errbuf(err, errlen, NBL_ERR_INVALID_MODEL, "shape has more than 2^48 elements");
      numel *= d;
      a.dims[i] = d;
    }
    a.rank = shape->n;
    a.numel = numel;
    if (packing) {
      if (!strcmp(packing->s, "base3")) a.packing = NBL_TERN_PACK_BASE3;
      else if (!strcmp(packing->s, "2bit")) a.packing = NBL_TERN_PACK_2BIT;
      else
        return nbl_errbuf(err, errlen, NBL_ERR_UNSUPPORTED,
                          "packing '%s' is not supported (base3|2bit)", packing->s);
    }
    *out = a;
    return NBL_OK;
  }
  return nbl_errbuf(err, errlen, NBL_ERR_INTERNAL, "op '%s' is not a ternary op", op);
}

size_t nbl_tern_packed_bytes(nbl_tern_packing packing, size_t n) {
  return packing == NBL_TERN_PACK_2BIT ? nbl_tern_pack2_bytes(n) : nbl_tern_pack3_bytes(n);
}

int nbl_tern_unpack(nbl_tern_packing packing, const uint8_t *src, size_t n, int8_t *q) {
  if (packing == NBL_TERN_PACK_BASE3) return nbl_tern_unpack3(src, n, q);
  for (size_t i = 0; i < n; i++) {
    int u = (src[i / 4] >> (2 * (i % 4))) & 3;
    if (u == 3) return -1;
    q[i] = (int8_t)(u - 1);
  }
  return 0;
}

void nbl_tern_pack(nbl_tern_packing packing, const int8_t *q, size_t n, uint8_t *dst) {
  if (packing == NBL_TERN_PACK_BASE3) nbl_tern_pack3(q, n, dst);
  else nbl_tern_pack2(q, n, dst);
}
