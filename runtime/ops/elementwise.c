/*
 * runtime/ops/elementwise.c - op family 'elementwise': arithmetic, comparisons,
 * logic and bitwise ops with broadcasting, Where, variadic Max/Min/Sum/Mean
 * (see kernel.h for the kernel contract). The one-input ops (math functions,
 * activations, Clip, Not, IsNaN, ...) are the family 'elementwise_unary'
 * (elementwise_unary.c); what both use is in elementwise.h.
 *
 * Structure: one broadcast engine (bc_*) walks the output in rows of the
 * innermost coalesced dimension, handing each row's operand offsets and inner
 * strides (0 = broadcast, 1 = contiguous) to a row function. Row functions come
 * in two kinds: a float32 one with tight loops the compiler vectorizes (the
 * fast path), and a generic one that computes every element in double, int64
 * or uint64 through the kernel_util accessors (the reference path, and the
 * only path for the less common types). c->reference selects the generic path
 * for float32 too, so the two can be compared.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/adapt.h"
#include "runtime/core/grad.h"
#include "runtime/core/shape.h"
#include "runtime/ops/elementwise.h"

/* ------------------------------------------------------------------ broadcast engine */

#define BC_MAXIN 3

typedef struct bc_t {
  int n;    /* operands */
  int rank; /* coalesced rank, >= 1 */
  int64_t dims[NBL_MAX_RANK];
  int64_t st[BC_MAXIN][NBL_MAX_RANK]; /* element strides, 0 = broadcast */
  int64_t total;
} bc_t;

/* Build the iteration for n operands of the given shapes. Writes the numpy
 * broadcast output shape into (*orank, odims). Returns -1 if incompatible. */
static int bc_init(bc_t *b, int n, const int *ranks, const int64_t *const *dims, int *orank,
                   int64_t *odims) {
  int r = 0;
  int64_t od[NBL_MAX_RANK];
  for (int k = 0; k < n; k++) {
    int64_t tmp[NBL_MAX_RANK];
    int rt;
    if (nbl_broadcast_shape(r, od, ranks[k], dims[k], &rt, tmp) != 0) return -1;
    r = rt;
    memcpy(od, tmp, sizeof(int64_t) * (size_t)r);
  }
  *orank = r;
  memcpy(odims, od, sizeof(int64_t) * (size_t)r);
  b->n = n;
  b->total = nbl_shape_numel(r, od);
  /* per operand strides over the output axes */
  int64_t st[BC_MAXIN][NBL_MAX_RANK];
  for (int k = 0; k < n; k++) {
    int64_t s = 1;
    for (int d = r - 1; d >= 0; d--) {
      int ad = d - (r - ranks[k]);
      if (ad < 0 || dims[k][ad] == 1) {
        st[k][d] = 0;
      } else {
        st[k][d] = s;
        s *= dims[k][ad];
      }
    }
  }
  /* drop size-1 axes, coalesce mergeable neighbours */
  int m = 0;
  for (int d = 0; d < r; d++) {
    if (od[d] == 1) continue;
    if (m > 0) {
      int ok = 1;
      for (int k = 0; k < n; k++)
        if (b->st[k][m - 1] != st[k][d] * od[d]) ok = 0;
      if (ok) {
        b->dims[m - 1] *= od[d];
        for (int k = 0; k < n; k++) b->st[k][m - 1] = st[k][d];
        continue;
      }
    }
    b->dims[m] = od[d];
    for (int k = 0; k < n; k++) b->st[k][m] = st[k][d];
    m++;
  }
  if (m == 0) {
    b->dims[0] = 1;
    for (int k = 0; k < n; k++) b->st[k][0] = 0;
    m = 1;
  }
  b->rank = m;
  return 0;
}

struct bc_job;
/* A row: output elements [o, o+n), operand k starts at element off[k] and
 * advances by inner[k] per output element. */
typedef void (*bc_row_fn)(const struct bc_job *j, int64_t o, const int64_t *off,
                          const int64_t *inner, int64_t n);

typedef struct bc_job {
  const bc_t *bc;
  bc_row_fn row;
  int op;
  const nbl_rt_tensor *in[BC_MAXIN];
  nbl_rt_tensor *out;
  double p0, p1; /* op parameters */
  int err;       /* set by rows on integer division by zero */
} bc_job;

static void bc_range(void *arg, int64_t b, int64_t e) {
  const bc_job *j = arg;
  const bc_t *bc = j->bc;
  int R = bc->rank;
  int64_t inner_n = bc->dims[R - 1];
  int64_t inner[BC_MAXIN];
  for (int k = 0; k < bc->n; k++) inner[k] = bc->st[k][R - 1];
  while (b < e) {
    int64_t row = b / inner_n, col = b % inner_n;
    int64_t off[BC_MAXIN];
    for (int k = 0; k < bc->n; k++) off[k] = col * inner[k];
    int64_t rr = row;
    for (int d = R - 2; d >= 0; d--) {
      int64_t cd = rr % bc->dims[d];
      rr /= bc->dims[d];
      for (int k = 0; k < bc->n; k++) off[k] += cd * bc->st[k][d];
    }
    int64_t n = inner_n - col;
    if (n > e - b) n = e - b;
    j->row(j, b, off, inner, n);
    b += n;
  }
}

static void bc_run(nbl_kctx *c, bc_job *j, int64_t grain) {
  if (j->bc->total <= 0) return;
  nbl_parallel_for(c, j->bc->total, grain, bc_range, j);
}

/* ------------------------------------------------------------------ binary ops */

enum {
  B_ADD, B_SUB, B_MUL, B_DIV, B_POW, B_MOD, B_FMOD, B_MAX, B_MIN,
  B_SHL, B_SHR, B_BAND, B_BOR, B_BXOR,
  B_EQ, B_LT, B_GT, B_LE, B_GE, /* comparisons: bool out */
  B_AND, B_OR, B_XOR,           /* logic on bool */
  B_PRELU
};

static double bin_f(int op, double a, double b) {
  switch (op) {
  case B_ADD: return a + b;
  case B_SUB: return a - b;
  case B_MUL: return a * b;
  case B_DIV: return a / b;
  case B_POW: return pow(a, b);
  case B_MOD: {
    double r = fmod(a, b);
    if (r != 0 && ((r < 0) != (b < 0))) r += b;
    return r;
  }
  case B_FMOD: return fmod(a, b);
  case B_MAX: return (isnan(a) || a > b || isnan(b)) ? (isnan(b) ? b : a) : b;
  case B_MIN: return (isnan(a) || a < b || isnan(b)) ? (isnan(b) ? b : a) : b;
  case B_PRELU: return a < 0 ? a * b : a;
  case B_EQ: return a == b;
  case B_LT: return a < b;
  case B_GT: return a > b;
  case B_LE: return a <= b;
  case B_GE: return a >= b;
  default: return 0;
  }
}

/* int64 arithmetic wraps (done in uint64 to stay defined). */
static int64_t bin_s(int op, int64_t a, int64_t b, int *err) {
  uint64_t ua = (uint64_t)a, ub = (uint64_t)b;
  switch (op) {
  case B_ADD: return (int64_t)(ua + ub);
  case B_SUB: return (int64_t)(ua - ub);
  case B_MUL: return (int64_t)(ua * ub);
  case B_DIV:
    if (b == 0) { *err = 1; return 0; }
    if (b == -1) return (int64_t)(0 - ua);
    return a / b;
  case B_MOD: case B_FMOD: {
    if (b == 0) { *err = 1; return 0; }
    if (b == -1) return 0;
    int64_t r = a % b;
    if (op == B_MOD && r != 0 && ((r < 0) != (b < 0))) r += b;
    return r;
  }
  case B_MAX: return a > b ? a : b;
  case B_MIN: return a < b ? a : b;
  case B_PRELU: return a < 0 ? (int64_t)(ua * ub) : a;
  case B_BAND: return a & b;
  case B_BOR: return a | b;
  case B_BXOR: return a ^ b;
  case B_EQ: return a == b;
  case B_LT: return a < b;
  case B_GT: return a > b;
  case B_LE: return a <= b;
  case B_GE: return a >= b;
  default: return 0;
  }
}

static uint64_t bin_u(int op, uint64_t a, uint64_t b, int bits, int *err) {
  switch (op) {
  case B_ADD: return a + b;
  case B_SUB: return a - b;
  case B_MUL: return a * b;
  case B_DIV:
    if (b == 0) { *err = 1; return 0; }
    return a / b;
  case B_MOD: case B_FMOD:
    if (b == 0) { *err = 1; return 0; }
    return a % b;
  case B_MAX: return a > b ? a : b;
  case B_MIN: return a < b ? a : b;
  case B_PRELU: return a;
  case B_SHL: return b >= (uint64_t)bits ? 0 : a << b;
  case B_SHR: return b >= (uint64_t)bits ? 0 : a >> b;
  case B_BAND: case B_AND: return a & b;
  case B_BOR: case B_OR: return a | b;
  case B_BXOR: case B_XOR: return a ^ b;
  case B_EQ: return a == b;
  case B_LT: return a < b;
  case B_GT: return a > b;
  case B_LE: return a <= b;
  case B_GE: return a >= b;
  default: return 0;
  }
}

static int is_cmp(int op) { return op >= B_EQ && op <= B_GE; }

/* Generic row: any numeric/bool type, element by element. */
static void row_bin_generic(const bc_job *j, int64_t o, const int64_t *off, const int64_t *inner,
                            int64_t n) {
  const nbl_rt_tensor *A = j->in[0], *B = j->in[1];
  nbl_rt_tensor *O = j->out;
  int cls = dt_class(A->dtype);
  int bits = nbl_dtype_bits(A->dtype);
  int err = 0;
  for (int64_t i = 0; i < n; i++) {
    int64_t ia = off[0] + i * inner[0], ib = off[1] + i * inner[1];
    if (j->op == B_POW) { /* base and exponent may have different types */
      nbl_rt_set_f64(O, o + i, pow(nbl_rt_get_f64(A, ia), nbl_rt_get_f64(B, ib)));
      continue;
    }
    if (cls == CL_F) {
      nbl_rt_set_f64(O, o + i, bin_f(j->op, nbl_rt_get_f64(A, ia), nbl_rt_get_f64(B, ib)));
    } else if (cls == CL_S) {
      nbl_rt_set_i64(O, o + i, bin_s(j->op, nbl_rt_get_i64(A, ia), nbl_rt_get_i64(B, ib), &err));
    } else {
      uint64_t r = bin_u(j->op, (uint64_t)nbl_rt_get_i64(A, ia), (uint64_t)nbl_rt_get_i64(B, ib),
                         bits, &err);
      nbl_rt_set_i64(O, o + i, (int64_t)r);
    }
  }
  if (err) ((bc_job *)j)->err = 1;
}

/* float32 fast rows: one tight loop per (op, stride pattern). */
#define F32_BIN_LOOPS(EXPR)                                                   \
  do {                                                                        \
    if (sa == 1 && sb == 1) {                                                 \
      for (int64_t i = 0; i < n; i++) {                                       \
        float x = a[i], y = b[i];                                             \
        o[i] = (EXPR);                                                        \
      }                                                                       \
    } else if (sa == 1 && sb == 0) {                                          \
      const float y = b[0];                                                   \
      for (int64_t i = 0; i < n; i++) {                                       \
        float x = a[i];                                                       \
        o[i] = (EXPR);                                                        \
      }                                                                       \
    } else if (sa == 0 && sb == 1) {                                          \
      const float x = a[0];                                                   \
      for (int64_t i = 0; i < n; i++) {                                       \
        float y = b[i];                                                       \
        o[i] = (EXPR);                                                        \
      }                                                                       \
    } else {                                                                  \
      for (int64_t i = 0; i < n; i++) {                                       \
        float x = a[i * sa], y = b[i * sb];                                   \
        o[i] = (EXPR);                                                        \
      }                                                                       \
    }                                                                         \
  } while (0)

/* The same for +, -, *, / with the contiguous and scalar-operand patterns
 * 8 lanes at a time (each lane the same IEEE operation), the rest as above. */
typedef float bin_v8f __attribute__((vector_size(32)));
#define F32_BIN_VEC(OP)                                                       \
  do {                                                                        \
    int64_t vi = 0;                                                           \
    if (n >= 8 && sa == 1 && (sb == 1 || sb == 0)) {                          \
      bin_v8f yb = {b[0], b[0], b[0], b[0], b[0], b[0], b[0], b[0]};          \
      for (; vi + 8 <= n; vi += 8) {                                          \
        bin_v8f x, y = yb, r;                                                 \
        memcpy(&x, a + vi, sizeof x);                                         \
        if (sb) memcpy(&y, b + vi, sizeof y);                                 \
        r = x OP y;                                                           \
        memcpy(o + vi, &r, sizeof r);                                         \
      }                                                                       \
    }                                                                         \
    a += vi * sa, b += vi * sb, o += vi, n -= vi;                             \
    F32_BIN_LOOPS(x OP y);                                                    \
  } while (0)

/* NaN in either operand gives NaN (numpy.maximum / numpy.minimum). */
static inline float f32_max(float x, float y) { return (x != x || x > y) ? x : y; }
static inline float f32_min(float x, float y) { return (x != x || x < y) ? x : y; }

static void row_bin_f32(const bc_job *j, int64_t oo, const int64_t *off, const int64_t *inner,
                        int64_t n) {
  const float *a = (const float *)j->in[0]->data + off[0];
  const float *b = (const float *)j->in[1]->data + off[1];
  float *o = (float *)j->out->data + oo;
  int64_t sa = inner[0], sb = inner[1];
  switch (j->op) {
  case B_ADD: F32_BIN_VEC(+); break;
  case B_SUB: F32_BIN_VEC(-); break;
  case B_MUL: F32_BIN_VEC(*); break;
  case B_DIV: F32_BIN_VEC(/); break;
  case B_MAX: F32_BIN_LOOPS(f32_max(x, y)); break;
  case B_MIN: F32_BIN_LOOPS(f32_min(x, y)); break;
  case B_PRELU: F32_BIN_LOOPS(x < 0 ? x * y : x); break;
  case B_POW:
    /* the generic row's value: pow in double, rounded once. An exponent of
     * 2 is x * x: the float product of x is x^2 rounded once, as exact
     * (24-bit factors) as pow(x, 2) in double (LayerNormalization written
     * out, squared errors: 30 % of ConvNeXt-T's time went to pow) */
    if (sb == 0 && b[0] == 2.0f) {
      if (sa == 1)
        for (int64_t i = 0; i < n; i++) o[i] = a[i] * a[i];
      else
        for (int64_t i = 0; i < n; i++) o[i] = a[i * sa] * a[i * sa];
      break;
    }
    F32_BIN_LOOPS((float)pow((double)x, (double)y));
    break;
  default: row_bin_generic(j, oo, off, inner, n); break;
  }
}

static void row_cmp_f32(const bc_job *j, int64_t oo, const int64_t *off, const int64_t *inner,
                        int64_t n) {
  const float *a = (const float *)j->in[0]->data + off[0];
  const float *b = (const float *)j->in[1]->data + off[1];
  uint8_t *o = (uint8_t *)j->out->data + oo;
  int64_t sa = inner[0], sb = inner[1];
  switch (j->op) {
  case B_EQ: for (int64_t i = 0; i < n; i++) o[i] = a[i * sa] == b[i * sb]; break;
  case B_LT: for (int64_t i = 0; i < n; i++) o[i] = a[i * sa] < b[i * sb]; break;
  case B_GT: for (int64_t i = 0; i < n; i++) o[i] = a[i * sa] > b[i * sb]; break;
  case B_LE: for (int64_t i = 0; i < n; i++) o[i] = a[i * sa] <= b[i * sb]; break;
  case B_GE: for (int64_t i = 0; i < n; i++) o[i] = a[i * sa] >= b[i * sb]; break;
  default: break;
  }
}

/* Opset < 7 "legacy" broadcasting (nbl_bcast_legacy): B's dims are aligned
 * with A starting at `axis` when broadcast=1; otherwise the shapes must match.
 * Writes B's view. */
static nbl_status legacy_bshape(nbl_kctx *c, const nbl_rt_tensor *A, const nbl_rt_tensor *B,
                                int *rb, int64_t *db) {
  *rb = B->rank;
  memcpy(db, B->dims, sizeof(int64_t) * (size_t)B->rank);
  if (c->opset >= 7) return NBL_OK;
  if (!strcmp(c->node->op_type, "PRelu")) { /* opset 6: slope [C] is per channel of [N,C,...] */
    if (B->rank == 1 && A->rank >= 2 && B->dims[0] == A->dims[1] && B->dims[0] != 1)
      for (int d = 2; d < A->rank; d++) db[(*rb)++] = 1;
    return NBL_OK;
  }
  int64_t axis = 0;
  nbl_bcast_kind k = nbl_bcast_legacy(c->node, c->opset, &axis);
  if (k == NBL_BCAST_EQUAL) {
    int same = A->rank == B->rank;
    for (int d = 0; same && d < A->rank; d++) same = A->dims[d] == B->dims[d];
    if (!same)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL,
                      "opset %d without broadcast=1 needs inputs of the same shape", c->opset);
    return NBL_OK;
  }
  if (k != NBL_BCAST_AXIS) return NBL_OK;
  int units = nbl_bcast_axis_units(A->rank, B->rank, axis);
  if (units < 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "legacy broadcast axis %lld does not fit ranks %d and %d",
                    (long long)axis, A->rank, B->rank);
  for (int u = 0; u < units; u++) db[(*rb)++] = 1;
  return NBL_OK;
}

/* Run a binary op: out type = `odt` (NBL_DT_UNDEFINED: A's type). */
static nbl_status binary(nbl_kctx *c, int op, unsigned types, int same_type, nbl_dtype odt) {
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *A = need_in(c, 0, &st), *B = A ? need_in(c, 1, &st) : NULL;
  if (!B) return st;
  if ((st = check_type(c, 0, types)) || (st = check_type(c, 1, types))) return st;
  if (same_type && (st = check_same_type(c, 0, 1))) return st;
  int rb;
  int64_t db[NBL_MAX_RANK];
  if ((st = legacy_bshape(c, A, B, &rb, db))) return st;
  int ranks[2] = {A->rank, rb};
  const int64_t *dims[2] = {A->dims, db};
  bc_t bc;
  int orank;
  int64_t od[NBL_MAX_RANK];
  if (bc_init(&bc, 2, ranks, dims, &orank, od) != 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "inputs '%s' and '%s' have shapes that do not broadcast",
                    in_name(c, 0), in_name(c, 1));
  if (op == B_PRELU) { /* unidirectional: output has X's shape */
    int same = orank == A->rank;
    for (int d = 0; same && d < orank; d++) same = od[d] == A->dims[d];
    if (!same)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "slope '%s' does not broadcast to the shape of '%s'",
                      in_name(c, 1), in_name(c, 0));
  }
  if (odt == NBL_DT_UNDEFINED) odt = A->dtype;
  if ((st = nbl_kctx_alloc_out(c, 0, odt, orank, od))) return st;
  bc_job j = {.bc = &bc, .op = op, .in = {A, B}, .out = nbl_kctx_out(c, 0)};
  j.row = row_bin_generic;
  int64_t grain = GRAIN_CHEAP;
  if (!c->reference && A->dtype == NBL_DT_FLOAT && B->dtype == NBL_DT_FLOAT) {
    if (is_cmp(op)) j.row = row_cmp_f32;
    else if (odt == NBL_DT_FLOAT) j.row = row_bin_f32;
  }
  if (j.row == row_bin_generic) grain = GRAIN_MATH;
  bc_run(c, &j, grain);
  if (j.err) return nbl_kerr(c, NBL_ERR_RUNTIME, "integer division by zero");
  return NBL_OK;
}

static nbl_status k_add(nbl_kctx *c) { return binary(c, B_ADD, T_NUM, 1, 0); }
static nbl_status k_sub(nbl_kctx *c) { return binary(c, B_SUB, T_NUM, 1, 0); }
static nbl_status k_mul(nbl_kctx *c) { return binary(c, B_MUL, T_NUM, 1, 0); }
static nbl_status k_div(nbl_kctx *c) { return binary(c, B_DIV, T_NUM, 1, 0); }
static nbl_status k_pow(nbl_kctx *c) { return binary(c, B_POW, T_NUM, c->opset < 12, 0); }
static nbl_status k_prelu(nbl_kctx *c) { return binary(c, B_PRELU, T_NUM, 1, 0); }

static nbl_status k_mod(nbl_kctx *c) {
  int fm = (int)nbl_attr_int(c->node, "fmod", 0);
  if (c->n_in > 0 && c->in[0] && (TM(c->in[0]->dtype) & T_F) && !fm)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "fmod must be 1 for floating-point inputs");
  return binary(c, fm ? B_FMOD : B_MOD, T_NUM, 1, 0);
}

static nbl_status k_bitshift(nbl_kctx *c) {
  const char *dir = nbl_attr_string(c->node, "direction", NULL);
  if (!dir || (strcmp(dir, "LEFT") != 0 && strcmp(dir, "RIGHT") != 0))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'direction' must be \"LEFT\" or \"RIGHT\"");
  return binary(c, dir[0] == 'L' ? B_SHL : B_SHR, T_U, 1, 0);
}
static nbl_status k_bitand(nbl_kctx *c) { return binary(c, B_BAND, T_S | T_U, 1, 0); }
static nbl_status k_bitor(nbl_kctx *c) { return binary(c, B_BOR, T_S | T_U, 1, 0); }
static nbl_status k_bitxor(nbl_kctx *c) { return binary(c, B_BXOR, T_S | T_U, 1, 0); }

static nbl_status k_equal(nbl_kctx *c) { return binary(c, B_EQ, T_NUM | T_B, 1, NBL_DT_BOOL); }
static nbl_status k_less(nbl_kctx *c) { return binary(c, B_LT, T_NUM, 1, NBL_DT_BOOL); }
static nbl_status k_greater(nbl_kctx *c) { return binary(c, B_GT, T_NUM, 1, NBL_DT_BOOL); }
static nbl_status k_lessequal(nbl_kctx *c) { return binary(c, B_LE, T_NUM, 1, NBL_DT_BOOL); }
static nbl_status k_greaterequal(nbl_kctx *c) { return binary(c, B_GE, T_NUM, 1, NBL_DT_BOOL); }
static nbl_status k_and(nbl_kctx *c) { return binary(c, B_AND, T_B, 1, NBL_DT_BOOL); }
static nbl_status k_or(nbl_kctx *c) { return binary(c, B_OR, T_B, 1, NBL_DT_BOOL); }
static nbl_status k_xor(nbl_kctx *c) { return binary(c, B_XOR, T_B, 1, NBL_DT_BOOL); }

/* ------------------------------------------------------------------ variadic Max/Min/Sum/Mean */

static void row_acc_generic(const bc_job *j, int64_t o, const int64_t *off, const int64_t *inner,
                            int64_t n) {
  /* operand 0 is the output itself (same shape), operand 1 the new input */
  const nbl_rt_tensor *B = j->in[1];
  nbl_rt_tensor *O = j->out;
  int cls = dt_class(O->dtype);
  int bits = nbl_dtype_bits(O->dtype);
  int err = 0;
  for (int64_t i = 0; i < n; i++) {
    int64_t io = o + i, ib = off[1] + i * inner[1];
    if (j->op == -1) { /* copy (first operand) */
      if (cls == CL_F) nbl_rt_set_f64(O, io, nbl_rt_get_f64(B, ib));
      else nbl_rt_set_i64(O, io, nbl_rt_get_i64(B, ib));
    } else if (cls == CL_F) {
      nbl_rt_set_f64(O, io, bin_f(j->op, nbl_rt_get_f64(O, io), nbl_rt_get_f64(B, ib)));
    } else if (cls == CL_S) {
      nbl_rt_set_i64(O, io, bin_s(j->op, nbl_rt_get_i64(O, io), nbl_rt_get_i64(B, ib), &err));
    } else {
      nbl_rt_set_i64(O, io, (int64_t)bin_u(j->op, (uint64_t)nbl_rt_get_i64(O, io),
                                           (uint64_t)nbl_rt_get_i64(B, ib), bits, &err));
    }
  }
}

static void row_acc_f32(const bc_job *j, int64_t oo, const int64_t *off, const int64_t *inner,
                        int64_t n) {
  const float *b = (const float *)j->in[1]->data + off[1];
  float *o = (float *)j->out->data + oo;
  const float *a = o;
  int64_t sa = 1, sb = inner[1];
  switch (j->op) {
  case -1: for (int64_t i = 0; i < n; i++) o[i] = b[i * sb]; break;
  case B_ADD: F32_BIN_LOOPS(x + y); break;
  case B_MAX: F32_BIN_LOOPS(f32_max(x, y)); break;
  case B_MIN: F32_BIN_LOOPS(f32_min(x, y)); break;
  default: break;
  }
}

static void scale_f(void *arg, int64_t b, int64_t e) {
  const bc_job *j = arg;
  for (int64_t i = b; i < e; i++) nbl_rt_set_f64(j->out, i, nbl_rt_get_f64(j->out, i) * j->p0);
}

static nbl_status variadic(nbl_kctx *c, int op, unsigned types, int mean) {
  int n = c->n_in;
  if (n < 1) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "needs at least one input");
  nbl_status st;
  int orank = 0;
  int64_t od[NBL_MAX_RANK];
  for (int k = 0; k < n; k++) {
    if (!c->in[k]) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %d is missing", k);
    if ((st = check_type(c, k, types)) || (st = check_same_type(c, 0, k))) return st;
    int64_t tmp[NBL_MAX_RANK];
    int rt;
    if (nbl_broadcast_shape(orank, od, c->in[k]->rank, c->in[k]->dims, &rt, tmp) != 0)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input '%s' does not broadcast with the others",
                      in_name(c, k));
    orank = rt;
    memcpy(od, tmp, sizeof(int64_t) * (size_t)rt);
  }
  nbl_dtype dt = c->in[0]->dtype;
  if ((st = nbl_kctx_alloc_out(c, 0, dt, orank, od))) return st;
  nbl_rt_tensor *O = nbl_kctx_out(c, 0);
  int f32 = !c->reference && dt == NBL_DT_FLOAT;
  for (int k = 0; k < n; k++) {
    bc_t bc;
    int ranks[2] = {orank, c->in[k]->rank};
    const int64_t *dims[2] = {od, c->in[k]->dims};
    int r2;
    int64_t od2[NBL_MAX_RANK];
    bc_init(&bc, 2, ranks, dims, &r2, od2);
    bc_job j = {.bc = &bc, .op = k == 0 ? -1 : op, .in = {O, c->in[k]}, .out = O};
    j.row = f32 ? row_acc_f32 : row_acc_generic;
    bc_run(c, &j, f32 ? GRAIN_CHEAP : GRAIN_MATH);
  }
  if (mean && n > 1 && O->numel > 0) {
    bc_job j = {.out = O, .p0 = 1.0 / n};
    if (f32) {
      float *o = O->data;
      float s = (float)n;
      for (int64_t i = 0; i < O->numel; i++) o[i] /= s;
    } else {
      nbl_parallel_for(c, O->numel, GRAIN_MATH, scale_f, &j);
    }
  }
  return NBL_OK;
}

static nbl_status k_max(nbl_kctx *c) { return variadic(c, B_MAX, T_NUM, 0); }
static nbl_status k_min(nbl_kctx *c) { return variadic(c, B_MIN, T_NUM, 0); }
static nbl_status k_sum(nbl_kctx *c) { return variadic(c, B_ADD, T_F, 0); }
static nbl_status k_mean(nbl_kctx *c) { return variadic(c, B_ADD, T_F, 1); }

/* ------------------------------------------------------------------ Where */

static void row_where(const bc_job *j, int64_t o, const int64_t *off, const int64_t *inner,
                      int64_t n) {
  const uint8_t *cd = (const uint8_t *)j->in[0]->data + off[0];
  size_t es = nbl_rt_elem_size(j->out->dtype);
  int64_t sc = inner[0], sx = inner[1], sy = inner[2];
#define WHERE_T(T)                                                             \
  do {                                                                         \
    const T *x = (const T *)j->in[1]->data + off[1];                           \
    const T *y = (const T *)j->in[2]->data + off[2];                           \
    T *out = (T *)j->out->data + o;                                            \
    for (int64_t i = 0; i < n; i++) out[i] = cd[i * sc] ? x[i * sx] : y[i * sy]; \
  } while (0)
  switch (es) {
  case 1: WHERE_T(uint8_t); break;
  case 2: WHERE_T(uint16_t); break;
  case 4: WHERE_T(uint32_t); break;
  case 8: WHERE_T(uint64_t); break;
  default: break;
  }
#undef WHERE_T
}

static nbl_status k_where(nbl_kctx *c) {
  nbl_status st = NBL_OK;
  for (int k = 0; k < 3; k++)
    if (!need_in(c, k, &st)) return st;
  if ((st = check_type(c, 0, T_B))) return st;
  if ((st = check_same_type(c, 1, 2))) return st;
  nbl_dtype dt = c->in[1]->dtype;
  size_t es = nbl_rt_elem_size(dt);
  if (dt == NBL_DT_STRING || !(es == 1 || es == 2 || es == 4 || es == 8))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "element type %s is not supported", nbl_dtype_name(dt));
  int ranks[3] = {c->in[0]->rank, c->in[1]->rank, c->in[2]->rank};
  const int64_t *dims[3] = {c->in[0]->dims, c->in[1]->dims, c->in[2]->dims};
  bc_t bc;
  int orank;
  int64_t od[NBL_MAX_RANK];
  if (bc_init(&bc, 3, ranks, dims, &orank, od) != 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "inputs have shapes that do not broadcast");
  if ((st = nbl_kctx_alloc_out(c, 0, dt, orank, od))) return st;
  bc_job j = {.bc = &bc, .row = row_where, .in = {c->in[0], c->in[1], c->in[2]},
              .out = nbl_kctx_out(c, 0)};
  bc_run(c, &j, GRAIN_CHEAP);
  return NBL_OK;
}

/* ------------------------------------------------------------------ shape rules */

/* Elementwise on the side table: Add/Sub/Mul/Div of small integer tensors. */
static nbl_status kd_arith(nbl_shape_ctx *c, const char *op) {
  nbl_kdata a, b, r;
  if (!nbl_shp_in_kd(c, 0, &a) || !nbl_shp_in_kd(c, 1, &b)) return NBL_OK;
  if (a.n != b.n && a.n != 1 && b.n != 1) return NBL_OK;
  r.n = a.n > b.n ? a.n : b.n;
  r.rank = a.rank > b.rank ? a.rank : b.rank;
  for (int i = 0; i < r.n; i++) {
    nbl_kel x = a.e[a.n == 1 ? 0 : i], y = b.e[b.n == 1 ? 0 : i], z = {NBL_KD_UNK, 0, NULL};
    if (x.kind == NBL_KD_VAL && y.kind == NBL_KD_VAL) {
      z.kind = NBL_KD_VAL;
      if (!strcmp(op, "Add")) z.v = x.v + y.v;
      else if (!strcmp(op, "Sub")) z.v = x.v - y.v;
      else if (!strcmp(op, "Mul")) z.v = x.v * y.v;
      else if (y.v != 0) {
        z.v = x.v / y.v;
      } else
        z.kind = NBL_KD_UNK;
    } else if (!strcmp(op, "Mul") && y.kind == NBL_KD_VAL && y.v == 1)
      z = x;
    else if (!strcmp(op, "Mul") && x.kind == NBL_KD_VAL && x.v == 1)
      z = y;
    else if (!strcmp(op, "Div") && y.kind == NBL_KD_VAL && y.v == 1)
      z = x;
    else if ((!strcmp(op, "Add") || !strcmp(op, "Sub")) && y.kind == NBL_KD_VAL && y.v == 0)
      z = x;
    else if (!strcmp(op, "Add") && x.kind == NBL_KD_VAL && x.v == 0)
      z = y;
    r.e[i] = z;
  }
  return nbl_shp_set_kd(c, 0, &r);
}

/* The name of input i (for messages). */
static const char *shp_in_name(const nbl_shape_ctx *c, int i) {
  const char *s = c->graph->values[c->node->inputs[i]].name;
  return s ? s : "";
}

/* A binary op's output: A and B broadcast as the kernel does (numpy, or the
 * legacy form before opset 7 that nbl_bcast_legacy reads from the node: equal
 * shapes, or B lined up with A from `axis` on); element type dt (UNDEFINED:
 * A's). */
static nbl_status shape_binary(nbl_shape_ctx *c, nbl_dtype dt) {
  nbl_shp a, b, o;
  int64_t axis = 0;
  nbl_bcast_kind k = NBL_BCAST_NUMPY;
  if (c->node->n_inputs == 2 && nbl_shp_in(c, 0, &a) && nbl_shp_in(c, 1, &b))
    k = nbl_bcast_legacy(c->node, c->opset, &axis);
  char x[256], y[256];
  if (k == NBL_BCAST_NUMPY) {
    nbl_status st = nbl_shp_bcast_inputs(c, 0, c->node->n_inputs, &o);
    if (st) return st;
  } else if (k == NBL_BCAST_EQUAL) {
    o = a.rank >= 0 ? a : b;
    bool same = a.rank < 0 || b.rank < 0 || a.rank == b.rank;
    for (int d = 0; same && a.rank >= 0 && b.rank >= 0 && d < a.rank; d++) {
      same = !nbl_dim_known(a.d[d]) || !nbl_dim_known(b.d[d]) || a.d[d].value == b.d[d].value;
      o.d[d] = nbl_dim_merge(a.d[d], b.d[d]);
    }
    if (!same)
      return nbl_shp_err(c, "opset %d without broadcast=1 needs inputs of the same shape: '%s' is "
                            "%s, '%s' is %s", c->opset, shp_in_name(c, 0),
                         nbl_shp_str(x, sizeof x, &a), shp_in_name(c, 1), nbl_shp_str(y, sizeof y, &b));
  } else if (a.rank < 0) {
    nbl_shp_unknown(&o, a.dt); /* A's rank, unknown */
  } else {
    /* B and its unit dims; when B's rank is unknown, dims unknown from axis
     * on (the view always spans A's dims from axis to the end) */
    nbl_shp view = b;
    int units = nbl_bcast_axis_units(a.rank, b.rank < 0 ? 0 : b.rank, axis);
    if (b.rank < 0 && units >= 0)
      nbl_shp_rank(&view, b.dt, units);
    else
      for (int u = 0; u < units && view.rank < NBL_SHP_MAXR; u++)
        view.d[view.rank++] = nbl_dim_val(1);
    if (units < 0 || !nbl_shp_bcast(&o, &a, &view))
      return nbl_shp_err(c, "broadcast=1: input '%s' %s does not line up with input '%s' %s from "
                            "axis %lld", shp_in_name(c, 1), nbl_shp_str(y, sizeof y, &b),
                         shp_in_name(c, 0), nbl_shp_str(x, sizeof x, &a), (long long)axis);
  }
  o.dt = dt ? dt : (k == NBL_BCAST_NUMPY ? o.dt : a.dt);
  return nbl_shp_set(c, 0, &o);
}

/* Add, Sub, Mul, Div: the broadcast of A and B; known small integer data computed. */
static nbl_status shape_arith(nbl_shape_ctx *c) {
  nbl_status st = shape_binary(c, NBL_DT_UNDEFINED);
  return st ? st : kd_arith(c, c->node->op_type);
}
/* Pow: A's type; And, Or, Xor, Equal, Less, Greater: bool. */
static nbl_status shape_pow(nbl_shape_ctx *c) { return shape_binary(c, NBL_DT_UNDEFINED); }
static nbl_status shape_logic(nbl_shape_ctx *c) { return shape_binary(c, NBL_DT_BOOL); }

/* Where: condition, X and Y broadcast; X's type. */
static nbl_status shape_where(nbl_shape_ctx *c) {
  nbl_shp o;
  nbl_status st = nbl_shp_bcast_inputs(c, 0, 3, &o);
  if (st) return st;
  o.dt = nbl_shp_in_dtype(c, 1);
  return nbl_shp_set(c, 0, &o);
}

/* ------------------------------------------------------------------ gradient rules
 * (runtime/core/grad.h); helpers in elementwise.h. Broadcast operands get the
 * output gradient summed down to their shape (nbl_grad_unbroadcast). */

static nbl_status g_add(nbl_grad_ctx *gc) {
  for (int i = 0; i < 2; i++)
    if (nbl_grad_wants(gc, i)) dx_bcast(gc, i, gdy(gc));
  return nbl_grad_status(gc);
}

static nbl_status g_sub(nbl_grad_ctx *gc) {
  if (nbl_grad_wants(gc, 0)) dx_bcast(gc, 0, gdy(gc));
  if (nbl_grad_wants(gc, 1)) dx_bcast(gc, 1, nbl_grad_un(gc, "Neg", gdy(gc)));
  return nbl_grad_status(gc);
}

static nbl_status g_mul(nbl_grad_ctx *gc) {
  if (nbl_grad_wants(gc, 0)) dx_bcast(gc, 0, gbin(gc, "Mul", gdy(gc), gx(gc, 1)));
  if (nbl_grad_wants(gc, 1)) dx_bcast(gc, 1, gbin(gc, "Mul", gdy(gc), gx(gc, 0)));
  return nbl_grad_status(gc);
}

/* Y = A / B: dA = dY / B, dB = -dY Y / B. */
static nbl_status g_div(nbl_grad_ctx *gc) {
  if (nbl_grad_wants(gc, 0)) dx_bcast(gc, 0, gbin(gc, "Div", gdy(gc), gx(gc, 1)));
  if (nbl_grad_wants(gc, 1)) {
    nbl_id t = gbin(gc, "Div", gbin(gc, "Mul", gdy(gc), gy0(gc)), gx(gc, 1));
    dx_bcast(gc, 1, nbl_grad_un(gc, "Neg", t));
  }
  return nbl_grad_status(gc);
}

/* Y = A^B: dA = dY B A^(B-1), dB = dY Y ln A (B of another type is cast). */
static nbl_status g_pow(nbl_grad_ctx *gc) {
  nbl_id A = gx(gc, 0), B = gx(gc, 1);
  if (nbl_grad_wants(gc, 0)) {
    nbl_id Bf = B;
    if (nbl_grad_dtype(gc, B) != nbl_grad_dtype(gc, A)) {
      Bf = nbl_grad_un(gc, "Cast", B);
      nbl_grad_attr_int(gc, "to", nbl_grad_dtype(gc, A));
    }
    nbl_id p = gbin(gc, "Pow", A, gbin(gc, "Sub", Bf, gconst(gc, A, 1.0)));
    dx_bcast(gc, 0, gbin(gc, "Mul", gdy(gc), gbin(gc, "Mul", Bf, p)));
  }
  if (nbl_grad_wants(gc, 1))
    dx_bcast(gc, 1, gbin(gc, "Mul", gbin(gc, "Mul", gdy(gc), gy0(gc)), nbl_grad_un(gc, "Log", A)));
  return nbl_grad_status(gc);
}

/* Where(C, A, B): dA = dY where C, dB = dY where not C. */
static nbl_status g_where(nbl_grad_ctx *gc) {
  nbl_id c = gx(gc, 0), dy = gdy(gc);
  for (int i = 1; i <= 2; i++) {
    if (!nbl_grad_wants(gc, i)) continue;
    nbl_id z = gconst(gc, gx(gc, i), 0.0);
    nbl_id in[3] = {c, i == 1 ? dy : z, i == 1 ? z : dy};
    dx_bcast(gc, i, nbl_grad_op(gc, "Where", "", 3, in));
  }
  return nbl_grad_status(gc);
}

/* Sum / Mean of n inputs: each gets dY (Mean: dY / n), summed to its shape. */
static nbl_status g_sum(nbl_grad_ctx *gc) {
  for (int i = 0; i < nbl_grad_n_in(gc); i++)
    if (nbl_grad_wants(gc, i)) dx_bcast(gc, i, gdy(gc));
  return nbl_grad_status(gc);
}
static nbl_status g_mean(nbl_grad_ctx *gc) {
  int n = nbl_grad_n_in(gc);
  nbl_id g = gbin(gc, "Div", gdy(gc), gconst(gc, gy0(gc), (double)n));
  for (int i = 0; i < n; i++)
    if (nbl_grad_wants(gc, i)) dx_bcast(gc, i, g);
  return nbl_grad_status(gc);
}

/* Max / Min of n inputs: dY goes to the inputs equal to the result, split
 * evenly among ties (as PyTorch's maximum / minimum for two), summed to
 * each input's shape. */
static nbl_status g_extreme(nbl_grad_ctx *gc) {
  int n = nbl_grad_n_in(gc);
  if (n == 1) {
    if (nbl_grad_wants(gc, 0)) nbl_grad_set_dx(gc, 0, gdy(gc));
    return nbl_grad_status(gc);
  }
  nbl_id Y = gy0(gc), cnt = NBL_NONE, m[64];
  if (n > 64) return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "more than 64 inputs: no rule yet");
  for (int i = 0; i < n; i++) {
    m[i] = nbl_grad_tie_mask(gc, gx(gc, i), Y);
    cnt = i ? gbin(gc, "Add", cnt, m[i]) : m[i];
  }
  nbl_id share = gbin(gc, "Div", gdy(gc), cnt); /* cnt >= 1 wherever Y is one of the inputs */
  for (int i = 0; i < n; i++)
    if (nbl_grad_wants(gc, i)) dx_bcast(gc, i, gbin(gc, "Mul", share, m[i]));
  return nbl_grad_status(gc);
}

/* PRelu (opset >= 7: the slope broadcasts to X): Y = X > 0 ? X : slope X,
 * so dX = dY where X > 0, else slope dY, and dslope = X dY where X <= 0
 * (PyTorch's prelu backward: X = 0 takes the slope's side). */
static nbl_status g_prelu(nbl_grad_ctx *gc) {
  if (nbl_grad_opset(gc, "") < 7)
    return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED,
                         "gradient of PRelu before opset 7 (per-channel slope): convert-opset{target=7} or later first");
  nbl_id X = gx(gc, 0), S = gx(gc, 1), dy = gdy(gc), pos = gbin(gc, "Greater", X, gconst(gc, X, 0.0));
  if (nbl_grad_wants(gc, 0)) {
    nbl_id in[3] = {pos, dy, gbin(gc, "Mul", dy, S)};
    nbl_grad_set_dx(gc, 0, nbl_grad_op(gc, "Where", "", 3, in));
  }
  if (nbl_grad_wants(gc, 1)) {
    nbl_id in[3] = {pos, gconst(gc, X, 0.0), gbin(gc, "Mul", dy, X)};
    dx_bcast(gc, 1, nbl_grad_op(gc, "Where", "", 3, in));
  }
  return nbl_grad_status(gc);
}

/* ------------------------------------------------------------------ table */

/* PRelu before opset 7: a 1-D slope of X's channel count (dim 1) is per channel; from
 * 7 the slope broadcasts numpy-style (from the right). */
static nbl_status prelu_up7(nbl_adapt_ctx *c) {
  const nbl_node *n = nbl_adapt_node(c);
  nbl_adapt_drop_attr(c, "consumed_inputs");
  if (n->n_inputs < 2 || nbl_adapt_rank(c, n->inputs[1]) != 1) return NBL_OK;
  int64_t k = nbl_adapt_dim(c, n->inputs[1], 0), ch = nbl_adapt_dim(c, n->inputs[0], 1);
  if (k == 1 || (k >= 0 && ch >= 0 && k != ch)) return NBL_OK;
  if (k < 0) return nbl_adapt_refuse(c, "the length of the 1-D slope is not known");
  return nbl_adapt_align_input(c, 1, 1);
}
static const nbl_op_adapter prelu_steps[] = {{.from = 1, .to = 7, .up = prelu_up7}, {0}};

const nbl_op_def nbl_ops_elementwise[] = {
    NBL_OP("Add", 1, .ref = k_add, .shape = shape_arith, NBL_SINCE7_BROADCAST, .grad = g_add),
    NBL_OP("Sub", 1, .ref = k_sub, .shape = shape_arith, NBL_SINCE7_BROADCAST, .grad = g_sub),
    NBL_OP("Mul", 1, .ref = k_mul, .shape = shape_arith, NBL_SINCE7_BROADCAST, .grad = g_mul),
    NBL_OP("Div", 1, .ref = k_div, .shape = shape_arith, NBL_SINCE7_BROADCAST, .grad = g_div),
    NBL_OP("Pow", 1, .ref = k_pow, .shape = shape_pow, NBL_SINCE7_BROADCAST, .grad = g_pow),
    NBL_OP("Mod", 10, .ref = k_mod, .shape = nbl_shape_bcast, .stable_since = 10, .no_grad = "no rule yet"),
    NBL_OP("Equal", 1, .ref = k_equal, .shape = shape_logic, NBL_SINCE7_BROADCAST,
        .no_grad = NBL_NO_GRAD_BOOL),
    NBL_OP("Less", 1, .ref = k_less, .shape = shape_logic, NBL_SINCE7_BROADCAST,
        .no_grad = NBL_NO_GRAD_BOOL),
    NBL_OP("Greater", 1, .ref = k_greater, .shape = shape_logic, NBL_SINCE7_BROADCAST,
        .no_grad = NBL_NO_GRAD_BOOL),
    NBL_OP("LessOrEqual", 12, .ref = k_lessequal, .shape = nbl_shape_bcast_bool, .stable_since = 12,
        .no_grad = NBL_NO_GRAD_BOOL),
    NBL_OP("GreaterOrEqual", 12, .ref = k_greaterequal, .shape = nbl_shape_bcast_bool,
        .stable_since = 12, .no_grad = NBL_NO_GRAD_BOOL),
    NBL_OP("And", 1, .ref = k_and, .shape = shape_logic, NBL_SINCE7_BROADCAST,
        .no_grad = NBL_NO_GRAD_BOOL),
    NBL_OP("Or", 1, .ref = k_or, .shape = shape_logic, NBL_SINCE7_BROADCAST,
        .no_grad = NBL_NO_GRAD_BOOL),
    NBL_OP("Xor", 1, .ref = k_xor, .shape = shape_logic, NBL_SINCE7_BROADCAST,
        .no_grad = NBL_NO_GRAD_BOOL),
    NBL_OP("BitShift", 11, .ref = k_bitshift, .shape = nbl_shape_bcast, .stable_since = 11,
        .no_grad = NBL_NO_GRAD_INT),
    NBL_OP("BitwiseAnd", 18, .ref = k_bitand, .shape = nbl_shape_bcast, .stable_since = 18,
        .no_grad = NBL_NO_GRAD_INT),
    NBL_OP("BitwiseOr", 18, .ref = k_bitor, .shape = nbl_shape_bcast, .stable_since = 18,
        .no_grad = NBL_NO_GRAD_INT),
    NBL_OP("BitwiseXor", 18, .ref = k_bitxor, .shape = nbl_shape_bcast, .stable_since = 18,
        .no_grad = NBL_NO_GRAD_INT),
    NBL_OP("Where", 9, .ref = k_where, .shape = shape_where, .stable_since = 9, .grad = g_where),
    NBL_OP("Max", 1, .ref = k_max, .shape = nbl_shape_bcast, NBL_SINCE6_CONSUMED, .grad = g_extreme),
    NBL_OP("Min", 1, .ref = k_min, .shape = nbl_shape_bcast, NBL_SINCE6_CONSUMED, .grad = g_extreme),
    NBL_OP("Sum", 1, .ref = k_sum, .shape = nbl_shape_bcast, NBL_SINCE6_CONSUMED, .grad = g_sum),
    NBL_OP("Mean", 1, .ref = k_mean, .shape = nbl_shape_bcast, NBL_SINCE6_CONSUMED, .grad = g_mean),
    NBL_OP("PRelu", 1, .ref = k_prelu, .shape = nbl_shape_same, .stable_since = 7,
        .adapters = prelu_steps, .grad = g_prelu),
};
const size_t nbl_ops_elementwise_count = sizeof nbl_ops_elementwise / sizeof nbl_ops_elementwise[0];
