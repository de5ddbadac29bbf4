/*
 * runtime/ops/elementwise.c - op family 'elementwise': arithmetic, math functions,
 * comparisons, logic, bitwise ops, Where, Clip, variadic Max/Min/Sum/Mean and
 * the activations (see kernel.h for the kernel contract).
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

#include "runtime/core/cpu.h"
#include "runtime/core/grad.h"
#include "runtime/core/adapt.h"
#include "runtime/core/shape.h"

/* ------------------------------------------------------------------ types */

#define TM(dt) (1u << (dt))
#define T_F (TM(NBL_DT_FLOAT) | TM(NBL_DT_DOUBLE) | TM(NBL_DT_FLOAT16) | TM(NBL_DT_BFLOAT16))
#define T_S (TM(NBL_DT_INT8) | TM(NBL_DT_INT16) | TM(NBL_DT_INT32) | TM(NBL_DT_INT64))
#define T_U (TM(NBL_DT_UINT8) | TM(NBL_DT_UINT16) | TM(NBL_DT_UINT32) | TM(NBL_DT_UINT64))
#define T_B TM(NBL_DT_BOOL)
#define T_NUM (T_F | T_S | T_U)

enum { CL_F, CL_S, CL_U }; /* compute class: double, int64, uint64 */

static int dt_class(nbl_dtype dt) {
  if (TM(dt) & T_F) return CL_F;
  if (TM(dt) & (T_U | T_B)) return CL_U;
  return CL_S;
}

static const char *in_name(const nbl_kctx *c, int i) {
  if (i >= c->node->n_inputs || c->node->inputs[i] == NBL_NONE) return "?";
  return c->graph->values[c->node->inputs[i]].name;
}

/* Input i must be present; returns it or NULL with the error set in *st. */
static const nbl_rt_tensor *need_in(nbl_kctx *c, int i, nbl_status *st) {
  if (i >= c->n_in || !c->in[i]) {
    *st = nbl_kerr(c, NBL_ERR_INVALID_MODEL, "required input %d is missing", i);
    return NULL;
  }
  return c->in[i];
}

static nbl_status check_type(nbl_kctx *c, int i, unsigned mask) {
  nbl_dtype dt = c->in[i]->dtype;
  if ((unsigned)dt < 32 && (TM(dt) & mask)) return NBL_OK;
  return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "input '%s' has element type %s, which %s does not support",
                  in_name(c, i), nbl_dtype_name(dt), c->node->op_type);
}

static nbl_status check_same_type(nbl_kctx *c, int i, int j) {
  if (c->in[i]->dtype == c->in[j]->dtype) return NBL_OK;
  return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "inputs '%s' (%s) and '%s' (%s) must have the same element type",
                  in_name(c, i), nbl_dtype_name(c->in[i]->dtype), in_name(c, j),
                  nbl_dtype_name(c->in[j]->dtype));
}

/* Grain (elements per task) for parallel loops: cheap ops get big chunks. */
#define GRAIN_CHEAP 32768
#define GRAIN_MATH 4096

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

/* Opset < 7 "legacy" broadcasting: B's dims are aligned with A starting at
 * `axis` when broadcast=1; otherwise the shapes must match. Writes B's view. */
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
  int64_t bc = nbl_attr_int(c->node, "broadcast", 0);
  if (!bc) {
    int same = A->rank == B->rank;
    for (int d = 0; same && d < A->rank; d++) same = A->dims[d] == B->dims[d];
    if (!same)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL,
                      "opset %d without broadcast=1 needs inputs of the same shape", c->opset);
    return NBL_OK;
  }
  if (!nbl_node_attr(c->node, "axis")) return NBL_OK; /* suffix matching == numpy rule */
  int64_t axis = nbl_attr_int(c->node, "axis", 0);
  if (axis < 0) axis += A->rank;
  if (axis < 0 || axis + B->rank > A->rank)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "legacy broadcast axis %lld does not fit ranks %d and %d",
                    (long long)axis, A->rank, B->rank);
  for (int64_t d = axis + B->rank; d < A->rank; d++) db[(*rb)++] = 1;
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

/* ------------------------------------------------------------------ unary ops */

enum {
  U_ABS, U_NEG, U_RECIP, U_SQRT, U_EXP, U_LOG, U_FLOOR, U_CEIL, U_ROUND, U_SIGN,
  U_SIN, U_COS, U_TAN, U_ASIN, U_ACOS, U_ATAN, U_SINH, U_COSH, U_ASINH, U_ACOSH, U_ATANH,
  U_ERF, U_RELU, U_LEAKY, U_SIGMOID, U_HSIGMOID, U_HSWISH, U_TANH, U_ELU, U_SELU, U_CELU,
  U_SOFTPLUS, U_SOFTSIGN, U_TRELU, U_MISH, U_SHRINK, U_GELU, U_GELU_TANH, U_CLIP,
  U_NOT, U_BITNOT, U_ISNAN, U_ISINF
};

typedef struct uparam {
  double a, b, g;     /* alpha, beta, gamma / lambd, bias / clip lo, hi */
  int64_t ilo, ihi;   /* clip bounds for signed ints */
  uint64_t ulo, uhi;  /* clip bounds for unsigned ints */
  int neg, pos;       /* IsInf */
} uparam;

static double softplus_d(double x) { return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x)); }

static double un_f(int op, double x, const uparam *p) {
  switch (op) {
  case U_ABS: return fabs(x);
  case U_NEG: return -x;
  case U_RECIP: return 1.0 / x;
  case U_SQRT: return sqrt(x);
  case U_EXP: return exp(x);
  case U_LOG: return log(x);
  case U_FLOOR: return floor(x);
  case U_CEIL: return ceil(x);
  case U_ROUND: return nearbyint(x);
  case U_SIGN: return x > 0 ? 1.0 : x < 0 ? -1.0 : x;
  case U_SIN: return sin(x);
  case U_COS: return cos(x);
  case U_TAN: return tan(x);
  case U_ASIN: return asin(x);
  case U_ACOS: return acos(x);
  case U_ATAN: return atan(x);
  case U_SINH: return sinh(x);
  case U_COSH: return cosh(x);
  case U_ASINH: return asinh(x);
  case U_ACOSH: return acosh(x);
  case U_ATANH: return atanh(x);
  case U_ERF: return erf(x);
  case U_RELU: return x < 0 ? 0.0 : x;
  case U_LEAKY: return x < 0 ? p->a * x : x;
  case U_SIGMOID: {
    if (x >= 0) return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
  }
  case U_HSIGMOID: {
    double t = p->a * x + p->b;
    return t < 0 ? 0.0 : t > 1 ? 1.0 : t;
  }
  case U_HSWISH: {
    double t = x / 6.0 + 0.5;
    return x * (t < 0 ? 0.0 : t > 1 ? 1.0 : t);
  }
  case U_TANH: return tanh(x);
  case U_ELU: return x < 0 ? p->a * (exp(x) - 1.0) : x;
  case U_SELU: return x <= 0 ? p->g * (p->a * exp(x) - p->a) : p->g * x;
  case U_CELU: return x >= 0 ? x : p->a * (exp(x / p->a) - 1.0);
  case U_SOFTPLUS: return softplus_d(x);
  case U_SOFTSIGN: return x / (1.0 + fabs(x));
  case U_TRELU: return (x > p->a || isnan(x)) ? x : 0.0;
  case U_MISH: return x * tanh(softplus_d(x));
  case U_SHRINK: return x < -p->a ? x + p->b : x > p->a ? x - p->b : isnan(x) ? x : 0.0;
  case U_GELU: return 0.5 * x * (1.0 + erf(x * M_SQRT1_2));
  case U_GELU_TANH:
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
  case U_CLIP: { /* numpy.clip: max first, then min (min > max gives max) */
    double t = x < p->a ? p->a : x;
    return t > p->b ? p->b : t;
  }
  case U_ISNAN: return isnan(x) ? 1 : 0;
  case U_ISINF: return isinf(x) && ((x > 0 && p->pos) || (x < 0 && p->neg)) ? 1 : 0;
  default: return 0;
  }
}

/* Integer forms; returns 0 in *handled when the op is computed via double. */
static int64_t un_s(int op, int64_t x, const uparam *p, int *handled) {
  uint64_t ux = (uint64_t)x;
  *handled = 1;
  switch (op) {
  case U_ABS: return x < 0 ? (int64_t)(0 - ux) : x;
  case U_NEG: return (int64_t)(0 - ux);
  case U_SIGN: return x > 0 ? 1 : x < 0 ? -1 : 0;
  case U_RELU: return x < 0 ? 0 : x;
  case U_CLIP: {
    int64_t t = x < p->ilo ? p->ilo : x;
    return t > p->ihi ? p->ihi : t;
  }
  case U_BITNOT: return ~x;
  default: *handled = 0; return 0;
  }
}

static uint64_t un_u(int op, uint64_t x, const uparam *p, int *handled) {
  *handled = 1;
  switch (op) {
  case U_ABS: case U_RELU: return x;
  case U_SIGN: return x > 0;
  case U_CLIP: {
    uint64_t t = x < p->ulo ? p->ulo : x;
    return t > p->uhi ? p->uhi : t;
  }
  case U_NOT: return !x;
  case U_BITNOT: return ~x;
  default: *handled = 0; return 0;
  }
}

typedef struct ujob {
  int op;
  const nbl_rt_tensor *x;
  nbl_rt_tensor *y;
  uparam p;
} ujob;

static void un_generic(void *arg, int64_t b, int64_t e) {
  const ujob *j = arg;
  const nbl_rt_tensor *X = j->x;
  nbl_rt_tensor *Y = j->y;
  int cls = dt_class(X->dtype);
  for (int64_t i = b; i < e; i++) {
    int h = 0;
    if (cls == CL_S) {
      int64_t r = un_s(j->op, nbl_rt_get_i64(X, i), &j->p, &h);
      if (h) { nbl_rt_set_i64(Y, i, r); continue; }
    } else if (cls == CL_U) {
      uint64_t r = un_u(j->op, (uint64_t)nbl_rt_get_i64(X, i), &j->p, &h);
      if (h) { nbl_rt_set_i64(Y, i, (int64_t)r); continue; }
    }
    nbl_rt_set_f64(Y, i, un_f(j->op, nbl_rt_get_f64(X, i), &j->p));
  }
}

#define F32_UN(EXPR)                              \
  do {                                            \
    for (int64_t i = b; i < e; i++) {             \
      float v = x[i];                             \
      y[i] = (EXPR);                              \
    }                                             \
  } while (0)

static inline float sigmoidf_(float v) {
  if (v >= 0) return 1.0f / (1.0f + expf(-v));
  float t = expf(v);
  return t / (1.0f + t);
}
static inline float softplusf_(float v) { return v > 0 ? v + log1pf(expf(-v)) : log1pf(expf(v)); }
static inline float clampf_(float v, float lo, float hi) {
  float t = v < lo ? lo : v;
  return t > hi ? hi : t;
}

typedef float v8f_ __attribute__((vector_size(32)));
typedef int32_t v8i_ __attribute__((vector_size(32)));

/* Relu (lo = 0, hi = +inf) or Clip on x[b..e) into y, 8 lanes at a time; same
 * result as clampf_ per element (NaN stays NaN: comparisons with NaN are false). */
#define CLAMP_BODY                                                        \
  int64_t i = b;                                                          \
  v8f_ vlo = {lo, lo, lo, lo, lo, lo, lo, lo}, vhi = {hi, hi, hi, hi, hi, hi, hi, hi}; \
  for (; i + 8 <= e; i += 8) {                                            \
    v8f_ v;                                                               \
    memcpy(&v, x + i, sizeof v);                                          \
    v8i_ m = v < vlo;                                                     \
    v = (v8f_)(((v8i_)v & ~m) | ((v8i_)vlo & m));                         \
    m = v > vhi;                                                          \
    v = (v8f_)(((v8i_)v & ~m) | ((v8i_)vhi & m));                         \
    memcpy(y + i, &v, sizeof v);                                          \
  }                                                                       \
  for (; i < e; i++) y[i] = clampf_(x[i], lo, hi);

__attribute__((target("avx2"))) static void clamp_avx2(const float *x, float *y, int64_t b,
                                                       int64_t e, float lo, float hi) {
  CLAMP_BODY
}

static void clamp_generic(const float *x, float *y, int64_t b, int64_t e, float lo, float hi) {
  CLAMP_BODY
}

static void clamp_f32(const float *x, float *y, int64_t b, int64_t e, float lo, float hi) {
  if (nbl_cpu_has(NBL_CPU_AVX2))
    clamp_avx2(x, y, b, e, lo, hi);
  else
    clamp_generic(x, y, b, e, lo, hi);
}

static void un_f32(void *arg, int64_t b, int64_t e) {
  const ujob *j = arg;
  const float *x = j->x->data;
  float *y = j->y->data;
  const float pa = (float)j->p.a, pb = (float)j->p.b, pg = (float)j->p.g;
  if (j->op == U_RELU) {
    clamp_f32(x, y, b, e, 0.0f, INFINITY);
    return;
  }
  if (j->op == U_CLIP) {
    clamp_f32(x, y, b, e, pa, pb);
    return;
  }
  switch (j->op) {
  case U_ABS: F32_UN(fabsf(v)); break;
  case U_NEG: F32_UN(-v); break;
  case U_RECIP: F32_UN(1.0f / v); break;
  case U_SQRT: F32_UN(sqrtf(v)); break;
  case U_EXP: F32_UN(expf(v)); break;
  case U_LOG: F32_UN(logf(v)); break;
  case U_FLOOR: F32_UN(floorf(v)); break;
  case U_CEIL: F32_UN(ceilf(v)); break;
  case U_ROUND: F32_UN(nearbyintf(v)); break;
  case U_SIGN: F32_UN(v > 0 ? 1.0f : v < 0 ? -1.0f : v); break;
  case U_ERF: F32_UN(erff(v)); break;
  case U_RELU: F32_UN(v < 0 ? 0.0f : v); break;
  case U_LEAKY: F32_UN(v < 0 ? pa * v : v); break;
  case U_SIGMOID: F32_UN(sigmoidf_(v)); break;
  case U_HSIGMOID: F32_UN(clampf_(pa * v + pb, 0.0f, 1.0f)); break;
  case U_HSWISH: F32_UN(v * clampf_(v / 6.0f + 0.5f, 0.0f, 1.0f)); break;
  case U_TANH: F32_UN(tanhf(v)); break;
  case U_ELU: F32_UN(v < 0 ? pa * (expf(v) - 1.0f) : v); break;
  case U_SELU: F32_UN(v <= 0 ? pg * (pa * expf(v) - pa) : pg * v); break;
  case U_SOFTPLUS: F32_UN(softplusf_(v)); break;
  case U_SOFTSIGN: F32_UN(v / (1.0f + fabsf(v))); break;
  case U_MISH: F32_UN(v * tanhf(softplusf_(v))); break;
  case U_GELU: F32_UN(0.5f * v * (1.0f + erff(v * (float)M_SQRT1_2))); break;
  case U_GELU_TANH:
    F32_UN(0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v))));
    break;
  case U_CLIP: F32_UN(clampf_(v, pa, pb)); break;
  default: /* the rest: double precision per element */
    for (int64_t i = b; i < e; i++) y[i] = (float)un_f(j->op, x[i], &j->p);
    break;
  }
}

static int un_cheap(int op) {
  return op == U_ABS || op == U_NEG || op == U_RELU || op == U_LEAKY || op == U_CLIP ||
         op == U_FLOOR || op == U_CEIL || op == U_SIGN || op == U_HSIGMOID || op == U_HSWISH ||
         op == U_NOT || op == U_BITNOT;
}

/* Run a unary op on input 0. odt: output type (UNDEFINED: same as input). */
static nbl_status unary_p(nbl_kctx *c, int op, unsigned types, nbl_dtype odt, const uparam *p) {
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *X = need_in(c, 0, &st);
  if (!X) return st;
  if ((st = check_type(c, 0, types))) return st;
  if (odt == NBL_DT_UNDEFINED) odt = X->dtype;
  if ((st = nbl_kctx_alloc_out(c, 0, odt, X->rank, X->dims))) return st;
  ujob j = {.op = op, .x = X, .y = nbl_kctx_out(c, 0)};
  if (p) j.p = *p;
  if (X->numel == 0) return NBL_OK;
  int f32 = !c->reference && X->dtype == NBL_DT_FLOAT && odt == NBL_DT_FLOAT;
  nbl_parallel_for(c, X->numel, un_cheap(op) && f32 ? GRAIN_CHEAP : GRAIN_MATH,
                   f32 ? un_f32 : un_generic, &j);
  return NBL_OK;
}

static nbl_status unary(nbl_kctx *c, int op, unsigned types) {
  return unary_p(c, op, types, NBL_DT_UNDEFINED, NULL);
}

static nbl_status unary_a(nbl_kctx *c, int op, unsigned types, float da, float db) {
  uparam p = {.a = nbl_attr_float(c->node, "alpha", da), .b = nbl_attr_float(c->node, "beta", db)};
  return unary_p(c, op, types, NBL_DT_UNDEFINED, &p);
}

#define UNARY_K(fn, OP, TYPES) \
  static nbl_status fn(nbl_kctx *c) { return unary(c, OP, TYPES); }
UNARY_K(k_abs, U_ABS, T_NUM)
UNARY_K(k_neg, U_NEG, T_F | T_S)
UNARY_K(k_reciprocal, U_RECIP, T_F)
UNARY_K(k_sqrt, U_SQRT, T_F)
UNARY_K(k_exp, U_EXP, T_F)
UNARY_K(k_log, U_LOG, T_F)
UNARY_K(k_floor, U_FLOOR, T_F)
UNARY_K(k_ceil, U_CEIL, T_F)
UNARY_K(k_round, U_ROUND, T_F)
UNARY_K(k_sign, U_SIGN, T_NUM)
UNARY_K(k_sin, U_SIN, T_F)
UNARY_K(k_cos, U_COS, T_F)
UNARY_K(k_tan, U_TAN, T_F)
UNARY_K(k_asin, U_ASIN, T_F)
UNARY_K(k_acos, U_ACOS, T_F)
UNARY_K(k_atan, U_ATAN, T_F)
UNARY_K(k_sinh, U_SINH, T_F)
UNARY_K(k_cosh, U_COSH, T_F)
UNARY_K(k_asinh, U_ASINH, T_F)
UNARY_K(k_acosh, U_ACOSH, T_F)
UNARY_K(k_atanh, U_ATANH, T_F)
UNARY_K(k_erf, U_ERF, T_NUM)
UNARY_K(k_relu, U_RELU, T_F | T_S)
UNARY_K(k_sigmoid, U_SIGMOID, T_F)
UNARY_K(k_hardswish, U_HSWISH, T_F)
UNARY_K(k_tanh, U_TANH, T_F)
UNARY_K(k_softplus, U_SOFTPLUS, T_F)
UNARY_K(k_softsign, U_SOFTSIGN, T_F)
UNARY_K(k_mish, U_MISH, T_F)
UNARY_K(k_not, U_NOT, T_B)
UNARY_K(k_bitnot, U_BITNOT, T_S | T_U)

static nbl_status k_leakyrelu(nbl_kctx *c) { return unary_a(c, U_LEAKY, T_F, 0.01f, 0); }
static nbl_status k_hardsigmoid(nbl_kctx *c) { return unary_a(c, U_HSIGMOID, T_F, 0.2f, 0.5f); }
static nbl_status k_elu(nbl_kctx *c) { return unary_a(c, U_ELU, T_F, 1.0f, 0); }
static nbl_status k_thresholdedrelu(nbl_kctx *c) { return unary_a(c, U_TRELU, T_F, 1.0f, 0); }

static nbl_status k_celu(nbl_kctx *c) {
  float a = nbl_attr_float(c->node, "alpha", 1.0f);
  if (a == 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'alpha' must not be 0");
  uparam p = {.a = a};
  return unary_p(c, U_CELU, TM(NBL_DT_FLOAT), NBL_DT_UNDEFINED, &p);
}

static nbl_status k_selu(nbl_kctx *c) {
  uparam p = {.a = nbl_attr_float(c->node, "alpha", 1.67326319217681884765625f),
              .g = nbl_attr_float(c->node, "gamma", 1.05070102214813232421875f)};
  return unary_p(c, U_SELU, T_F, NBL_DT_UNDEFINED, &p);
}

static nbl_status k_shrink(nbl_kctx *c) {
  uparam p = {.a = nbl_attr_float(c->node, "lambd", 0.5f), .b = nbl_attr_float(c->node, "bias", 0.0f)};
  return unary_p(c, U_SHRINK, T_NUM, NBL_DT_UNDEFINED, &p);
}

static nbl_status k_gelu(nbl_kctx *c) {
  const char *ap = nbl_attr_string(c->node, "approximate", "none");
  int op;
  if (strcmp(ap, "none") == 0) op = U_GELU;
  else if (strcmp(ap, "tanh") == 0) op = U_GELU_TANH;
  else return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'approximate' must be \"none\" or \"tanh\", not \"%s\"", ap);
  return unary(c, op, T_F);
}

static nbl_status k_isnan(nbl_kctx *c) { return unary_p(c, U_ISNAN, T_F, NBL_DT_BOOL, NULL); }

static nbl_status k_isinf(nbl_kctx *c) {
  uparam p = {.neg = (int)nbl_attr_int(c->node, "detect_negative", 1),
              .pos = (int)nbl_attr_int(c->node, "detect_positive", 1)};
  return unary_p(c, U_ISINF, T_F, NBL_DT_BOOL, &p);
}

/* Clip: bounds from attributes (opset < 11) or optional scalar inputs (>= 11). */
static nbl_status k_clip(nbl_kctx *c) {
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *X = need_in(c, 0, &st);
  if (!X) return st;
  uparam p = {.a = -INFINITY, .b = INFINITY, .ilo = INT64_MIN, .ihi = INT64_MAX, .ulo = 0,
              .uhi = UINT64_MAX};
  if (c->opset < 11) {
    p.a = nbl_attr_float(c->node, "min", -INFINITY);
    p.b = nbl_attr_float(c->node, "max", INFINITY);
    return unary_p(c, U_CLIP, T_F, NBL_DT_UNDEFINED, &p);
  }
  if ((st = check_type(c, 0, T_NUM))) return st;
  for (int k = 1; k <= 2 && k < c->n_in; k++) {
    const nbl_rt_tensor *t = c->in[k];
    if (!t) continue;
    if ((st = check_same_type(c, 0, k))) return st;
    if (t->numel != 1)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "bound '%s' must be a scalar, it has %lld elements",
                      in_name(c, k), (long long)t->numel);
    double v = nbl_rt_get_f64(t, 0);
    int64_t iv = nbl_rt_get_i64(t, 0);
    if (k == 1) { p.a = v; p.ilo = iv; p.ulo = (uint64_t)iv; }
    else { p.b = v; p.ihi = iv; p.uhi = (uint64_t)iv; }
  }
  return unary_p(c, U_CLIP, T_NUM, NBL_DT_UNDEFINED, &p);
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

/* Add, Sub, Mul, Div: numpy broadcasting; known small integer data computed. */
static nbl_status shape_arith(nbl_shape_ctx *c) {
  nbl_status st = nbl_shape_bcast(c);
  return st ? st : kd_arith(c, c->node->op_type);
}

/* Neg: the input's type; known small integer data negated. */
static nbl_status shape_neg(nbl_shape_ctx *c) {
  nbl_status st = nbl_shape_same(c);
  nbl_kdata k;
  if (!st && nbl_shp_in_kd(c, 0, &k)) {
    for (int i = 0; i < k.n; i++)
      if (k.e[i].kind == NBL_KD_VAL) k.e[i].v = -k.e[i].v;
      else k.e[i].kind = NBL_KD_UNK;
    st = nbl_shp_set_kd(c, 0, &k);
  }
  return st;
}

/* IsNaN, IsInf: the input's shape, bool. */
static nbl_status shape_bool_same(nbl_shape_ctx *c) {
  nbl_shp s;
  nbl_shp_in(c, 0, &s);
  s.dt = NBL_DT_BOOL;
  return nbl_shp_set(c, 0, &s);
}

/* Where: condition, X and Y broadcast; X's type. */
static nbl_status shape_where(nbl_shape_ctx *c) {
  nbl_shp o;
  nbl_status st = nbl_shp_bcast_inputs(c, 0, 3, &o);
  if (st) return st;
  o.dt = nbl_shp_in_dtype(c, 1);
  return nbl_shp_set(c, 0, &o);
}

/* ------------------------------------------------------------------ gradient rules
 * (runtime/core/grad.h). Broadcast operands get the output gradient summed
 * down to their shape (nbl_grad_unbroadcast). */

static nbl_id gx(nbl_grad_ctx *gc, int i) { return nbl_grad_x(gc, i); }
static nbl_id gy0(nbl_grad_ctx *gc) { return nbl_grad_y(gc, 0); }
static nbl_id gdy(nbl_grad_ctx *gc) { return nbl_grad_dy(gc, 0); }
static nbl_id gbin(nbl_grad_ctx *gc, const char *op, nbl_id a, nbl_id b) {
  return nbl_grad_bin(gc, op, a, b);
}
static nbl_id gconst(nbl_grad_ctx *gc, nbl_id like, double v) {
  return nbl_grad_const(gc, nbl_grad_dtype(gc, like), v);
}
/* Hand g (shaped like the output) to input i, summed to its shape. */
static void dx_bcast(nbl_grad_ctx *gc, int i, nbl_id g) {
  nbl_grad_set_dx(gc, i, nbl_grad_unbroadcast(gc, g, gx(gc, i), gy0(gc)));
}
/* dX = dY * f for a one-input op. */
static nbl_status dx_times(nbl_grad_ctx *gc, nbl_id f) {
  nbl_grad_set_dx(gc, 0, gbin(gc, "Mul", gdy(gc), f));
  return nbl_grad_status(gc);
}

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

static nbl_status g_neg(nbl_grad_ctx *gc) {
  nbl_grad_set_dx(gc, 0, nbl_grad_un(gc, "Neg", gdy(gc)));
  return nbl_grad_status(gc);
}
static nbl_status g_abs(nbl_grad_ctx *gc) { return dx_times(gc, nbl_grad_un(gc, "Sign", gx(gc, 0))); }
/* Y = 1/X: dX = -dY Y^2 */
static nbl_status g_reciprocal(nbl_grad_ctx *gc) {
  nbl_id y = gy0(gc);
  return dx_times(gc, nbl_grad_un(gc, "Neg", gbin(gc, "Mul", y, y)));
}
/* Y = sqrt(X): dX = dY 0.5 / Y */
static nbl_status g_sqrt(nbl_grad_ctx *gc) {
  nbl_grad_set_dx(gc, 0, gbin(gc, "Div", gbin(gc, "Mul", gdy(gc), gconst(gc, gy0(gc), 0.5)), gy0(gc)));
  return nbl_grad_status(gc);
}
static nbl_status g_exp(nbl_grad_ctx *gc) { return dx_times(gc, gy0(gc)); }
static nbl_status g_log(nbl_grad_ctx *gc) {
  nbl_grad_set_dx(gc, 0, gbin(gc, "Div", gdy(gc), gx(gc, 0)));
  return nbl_grad_status(gc);
}
static nbl_status g_sin(nbl_grad_ctx *gc) { return dx_times(gc, nbl_grad_un(gc, "Cos", gx(gc, 0))); }
static nbl_status g_cos(nbl_grad_ctx *gc) {
  return dx_times(gc, nbl_grad_un(gc, "Neg", nbl_grad_un(gc, "Sin", gx(gc, 0))));
}
/* erf'(x) = 2/sqrt(pi) exp(-x^2) */
static nbl_status g_erf(nbl_grad_ctx *gc) {
  nbl_id x = gx(gc, 0);
  nbl_id e = nbl_grad_un(gc, "Exp", nbl_grad_un(gc, "Neg", gbin(gc, "Mul", x, x)));
  return dx_times(gc, gbin(gc, "Mul", e, gconst(gc, x, 1.1283791670955126)));
}
/* softplus'(x) = sigmoid(x); softsign'(x) = 1 / (1 + |x|)^2 */
static nbl_status g_softplus(nbl_grad_ctx *gc) {
  return dx_times(gc, nbl_grad_un(gc, "Sigmoid", gx(gc, 0)));
}
static nbl_status g_softsign(nbl_grad_ctx *gc) {
  nbl_id x = gx(gc, 0);
  nbl_id d = gbin(gc, "Add", gconst(gc, x, 1.0), nbl_grad_un(gc, "Abs", x));
  nbl_grad_set_dx(gc, 0, gbin(gc, "Div", gdy(gc), gbin(gc, "Mul", d, d)));
  return nbl_grad_status(gc);
}

/* A com.microsoft backward op (dY, v) -> dX with the forward's attributes. */
static nbl_status dx_msop(nbl_grad_ctx *gc, const char *op, nbl_id v) {
  nbl_id in[2] = {gdy(gc), v};
  nbl_id dx = nbl_grad_op(gc, op, "com.microsoft", 2, in);
  nbl_grad_attr_copy(gc, NULL);
  nbl_grad_set_dx(gc, 0, dx);
  return nbl_grad_status(gc);
}
/* ReluGrad takes the output: Y > 0 exactly where X > 0, and Y is kept anyway
 * as the next layer's input. */
static nbl_status g_relu(nbl_grad_ctx *gc) { return dx_msop(gc, "ReluGrad", gy0(gc)); }
static nbl_status g_leakyrelu(nbl_grad_ctx *gc) { return dx_msop(gc, "LeakyReluGrad", gy0(gc)); }
static nbl_status g_sigmoid(nbl_grad_ctx *gc) { return dx_msop(gc, "SigmoidGrad", gy0(gc)); }
static nbl_status g_tanh(nbl_grad_ctx *gc) { return dx_msop(gc, "TanhGrad", gy0(gc)); }
static nbl_status g_gelu(nbl_grad_ctx *gc) {
  const char *a = nbl_attr_string(nbl_grad_node(gc), "approximate", "none");
  nbl_id in[2] = {gdy(gc), gx(gc, 0)};
  nbl_id dx = nbl_grad_op(gc, !strcmp(a, "tanh") ? "FastGeluGrad" : "GeluGrad", "com.microsoft", 2, in);
  nbl_grad_set_dx(gc, 0, dx);
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

/* Clip: dY passes where the input was not clipped (Y == X, bounds included,
 * as PyTorch's clamp); min and max get none. */
static nbl_status g_clip(nbl_grad_ctx *gc) {
  nbl_grad_no_dx(gc, 1, "the bounds of Clip get no gradient");
  nbl_grad_no_dx(gc, 2, "the bounds of Clip get no gradient");
  if (!nbl_grad_wants(gc, 0)) return nbl_grad_status(gc);
  nbl_id x = gx(gc, 0);
  nbl_id in[3] = {gbin(gc, "Equal", gy0(gc), x), gdy(gc), gconst(gc, x, 0.0)};
  nbl_grad_set_dx(gc, 0, nbl_grad_op(gc, "Where", "", 3, in));
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

#define NOT_DIFF_BOOL "not differentiable: boolean output"
#define NOT_DIFF_INT "not differentiable: integer operands and output"

/* ------------------------------------------------------------------ table */

/* Clip: min and max are float attributes before opset 11, inputs of X's type from 11. */
static const nbl_op_adapter clip_steps[] = {
    {.from = 1, .to = 11, .up = nbl_adapt_attrs_to_inputs, .down = nbl_adapt_inputs_to_attrs,
     .attr = "min,max", .input = 1, .attr_type = NBL_ATTR_FLOAT},
    {0}};

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
    NBL_OP("Pow", 1, .ref = k_pow, .shape = nbl_shape_bcast, NBL_SINCE7_BROADCAST, .grad = g_pow),
    NBL_OP("Mod", 10, .ref = k_mod, .shape = nbl_shape_bcast, .stable_since = 10, .no_grad = "no rule yet"),
    NBL_OP("Abs", 1, .ref = k_abs, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .grad = g_abs),
    NBL_OP("Neg", 1, .ref = k_neg, .shape = shape_neg, NBL_SINCE6_CONSUMED, .grad = g_neg),
    NBL_OP("Reciprocal", 1, .ref = k_reciprocal, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .grad = g_reciprocal),
    NBL_OP("Sqrt", 1, .ref = k_sqrt, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .grad = g_sqrt),
    NBL_OP("Exp", 1, .ref = k_exp, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .grad = g_exp),
    NBL_OP("Log", 1, .ref = k_log, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .grad = g_log),
    NBL_OP("Floor", 1, .ref = k_floor, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .grad = nbl_grad_zero),
    NBL_OP("Ceil", 1, .ref = k_ceil, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .grad = nbl_grad_zero),
    NBL_OP("Round", 11, .ref = k_round, .shape = nbl_shape_same, .stable_since = 11, .grad = nbl_grad_zero),
    NBL_OP("Sign", 9, .ref = k_sign, .shape = nbl_shape_same, .stable_since = 9, .grad = nbl_grad_zero),
    NBL_OP("Sin", 7, .ref = k_sin, .shape = nbl_shape_same, .stable_since = 7, .grad = g_sin),
    NBL_OP("Cos", 7, .ref = k_cos, .shape = nbl_shape_same, .stable_since = 7, .grad = g_cos),
    NBL_OP("Tan", 7, .ref = k_tan, .shape = nbl_shape_same, .stable_since = 7, .no_grad = "no rule yet"),
    NBL_OP("Asin", 7, .ref = k_asin, .shape = nbl_shape_same, .stable_since = 7, .no_grad = "no rule yet"),
    NBL_OP("Acos", 7, .ref = k_acos, .shape = nbl_shape_same, .stable_since = 7, .no_grad = "no rule yet"),
    NBL_OP("Atan", 7, .ref = k_atan, .shape = nbl_shape_same, .stable_since = 7, .no_grad = "no rule yet"),
    NBL_OP("Sinh", 9, .ref = k_sinh, .shape = nbl_shape_same, .stable_since = 9, .no_grad = "no rule yet"),
    NBL_OP("Cosh", 9, .ref = k_cosh, .shape = nbl_shape_same, .stable_since = 9, .no_grad = "no rule yet"),
    NBL_OP("Asinh", 9, .ref = k_asinh, .shape = nbl_shape_same, .stable_since = 9, .no_grad = "no rule yet"),
    NBL_OP("Acosh", 9, .ref = k_acosh, .shape = nbl_shape_same, .stable_since = 9, .no_grad = "no rule yet"),
    NBL_OP("Atanh", 9, .ref = k_atanh, .shape = nbl_shape_same, .stable_since = 9, .no_grad = "no rule yet"),
    NBL_OP("Erf", 9, .ref = k_erf, .shape = nbl_shape_same, .stable_since = 9, .grad = g_erf),
    NBL_OP("Equal", 1, .ref = k_equal, .shape = nbl_shape_bcast_bool, NBL_SINCE7_BROADCAST,
        .no_grad = NBL_NO_GRAD_BOOL),
    NBL_OP("Less", 1, .ref = k_less, .shape = nbl_shape_bcast_bool, NBL_SINCE7_BROADCAST,
        .no_grad = NBL_NO_GRAD_BOOL),
    NBL_OP("Greater", 1, .ref = k_greater, .shape = nbl_shape_bcast_bool, NBL_SINCE7_BROADCAST,
        .no_grad = NBL_NO_GRAD_BOOL),
    NBL_OP("LessOrEqual", 12, .ref = k_lessequal, .shape = nbl_shape_bcast_bool, .stable_since = 12,
        .no_grad = NBL_NO_GRAD_BOOL),
    NBL_OP("GreaterOrEqual", 12, .ref = k_greaterequal, .shape = nbl_shape_bcast_bool,
        .stable_since = 12, .no_grad = NBL_NO_GRAD_BOOL),
    NBL_OP("And", 1, .ref = k_and, .shape = nbl_shape_bcast_bool, NBL_SINCE7_BROADCAST,
        .no_grad = NBL_NO_GRAD_BOOL),
    NBL_OP("Or", 1, .ref = k_or, .shape = nbl_shape_bcast_bool, NBL_SINCE7_BROADCAST,
        .no_grad = NBL_NO_GRAD_BOOL),
    NBL_OP("Xor", 1, .ref = k_xor, .shape = nbl_shape_bcast_bool, NBL_SINCE7_BROADCAST,
        .no_grad = NBL_NO_GRAD_BOOL),
    NBL_OP("Not", 1, .ref = k_not, .shape = nbl_shape_same, .stable_since = 1,
        .no_grad = NBL_NO_GRAD_BOOL),
    NBL_OP("BitShift", 11, .ref = k_bitshift, .shape = nbl_shape_bcast, .stable_since = 11,
        .no_grad = NBL_NO_GRAD_INT),
    NBL_OP("BitwiseAnd", 18, .ref = k_bitand, .shape = nbl_shape_bcast, .stable_since = 18,
        .no_grad = NBL_NO_GRAD_INT),
    NBL_OP("BitwiseOr", 18, .ref = k_bitor, .shape = nbl_shape_bcast, .stable_since = 18,
        .no_grad = NBL_NO_GRAD_INT),
    NBL_OP("BitwiseXor", 18, .ref = k_bitxor, .shape = nbl_shape_bcast, .stable_since = 18,
        .no_grad = NBL_NO_GRAD_INT),
    NBL_OP("BitwiseNot", 18, .ref = k_bitnot, .shape = nbl_shape_same, .stable_since = 18,
        .no_grad = NBL_NO_GRAD_INT),
    NBL_OP("IsNaN", 9, .ref = k_isnan, .shape = shape_bool_same, .stable_since = 9,
        .no_grad = NBL_NO_GRAD_BOOL),
    NBL_OP("IsInf", 10, .ref = k_isinf, .shape = shape_bool_same, .stable_since = 10,
        .no_grad = NBL_NO_GRAD_BOOL),
    NBL_OP("Where", 9, .ref = k_where, .shape = shape_where, .stable_since = 9, .grad = g_where),
    NBL_OP("Clip", 1, .ref = k_clip, .shape = nbl_shape_same, .stable_since = 11,
        .adapters = clip_steps, .grad = g_clip),
    NBL_OP("Max", 1, .ref = k_max, .shape = nbl_shape_bcast, NBL_SINCE6_CONSUMED, .no_grad = "no rule yet"),
    NBL_OP("Min", 1, .ref = k_min, .shape = nbl_shape_bcast, NBL_SINCE6_CONSUMED, .no_grad = "no rule yet"),
    NBL_OP("Sum", 1, .ref = k_sum, .shape = nbl_shape_bcast, NBL_SINCE6_CONSUMED, .grad = g_sum),
    NBL_OP("Mean", 1, .ref = k_mean, .shape = nbl_shape_bcast, NBL_SINCE6_CONSUMED, .grad = g_mean),
    NBL_OP("Relu", 1, .ref = k_relu, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .grad = g_relu),
    NBL_OP("LeakyRelu", 1, .ref = k_leakyrelu, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .grad = g_leakyrelu),
    /* the slope broadcasts to X */
    NBL_OP("PRelu", 1, .ref = k_prelu, .shape = nbl_shape_same, .stable_since = 7,
        .adapters = prelu_steps, .no_grad = "no rule yet"),
    NBL_OP("Sigmoid", 1, .ref = k_sigmoid, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .grad = g_sigmoid),
    NBL_OP("HardSigmoid", 1, .ref = k_hardsigmoid, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .no_grad = "no rule yet"),
    NBL_OP("HardSwish", 14, .ref = k_hardswish, .shape = nbl_shape_same, .stable_since = 14, .no_grad = "no rule yet"),
    NBL_OP("Tanh", 1, .ref = k_tanh, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .grad = g_tanh),
    NBL_OP("Elu", 1, .ref = k_elu, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .no_grad = "no rule yet"),
    NBL_OP("Selu", 1, .ref = k_selu, .shape = nbl_shape_same, NBL_SINCE6_CONSUMED, .no_grad = "no rule yet"),
    NBL_OP("Celu", 12, .ref = k_celu, .shape = nbl_shape_same, .stable_since = 12, .no_grad = "no rule yet"),
    NBL_OP("Softplus", 1, .ref = k_softplus, .shape = nbl_shape_same, .stable_since = 1, .grad = g_softplus),
    NBL_OP("Softsign", 1, .ref = k_softsign, .shape = nbl_shape_same, .stable_since = 1, .grad = g_softsign),
    NBL_OP("ThresholdedRelu", 10, .ref = k_thresholdedrelu, .shape = nbl_shape_same,
        .stable_since = 10, .no_grad = "no rule yet"),
    NBL_OP("Mish", 18, .ref = k_mish, .shape = nbl_shape_same, .stable_since = 18, .no_grad = "no rule yet"),
    NBL_OP("Shrink", 9, .ref = k_shrink, .shape = nbl_shape_same, .stable_since = 9, .no_grad = "no rule yet"),
    NBL_OP("Gelu", 20, .ref = k_gelu, .shape = nbl_shape_same, .stable_since = 20, .grad = g_gelu),
};
const size_t nbl_ops_elementwise_count = sizeof nbl_ops_elementwise / sizeof nbl_ops_elementwise[0];
