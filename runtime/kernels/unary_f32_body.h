/*
 * runtime/kernels/unary_f32_body.h - the kernels of unary_f32.c, written
 * once in GCC vector types and included by it once per ISA, under that ISA's
 * target pragma, with
 *   UF(name)  the name with the variant's suffix,
 *   UF_VN     floats per step (one hardware vector of doubles).
 * Not a header of its own: unary_f32.c is the only includer.
 *
 * Selections are bit masks rather than branches, every lane computing every
 * path; each mask is written so that a NaN lane (every comparison false)
 * takes a path that carries the NaN through.
 */

typedef float UF(vf) __attribute__((vector_size(UF_VN * 4)));
typedef double UF(vd) __attribute__((vector_size(UF_VN * 8)));
typedef int64_t UF(vl) __attribute__((vector_size(UF_VN * 8)));
typedef uint64_t UF(vu) __attribute__((vector_size(UF_VN * 8)));
typedef int32_t UF(vi) __attribute__((vector_size(UF_VN * 4)));
#define vf UF(vf)
#define vd UF(vd)
#define vl UF(vl)
#define vu UF(vu)
#define vi UF(vi)
#define UF_INL static inline __attribute__((always_inline))
#define SPL(c) ((vd){0} + (c))

UF_INL vd UF(sel)(vl m, vd a, vd b) { return (vd)(((vl)a & m) | ((vl)b & ~m)); }
UF_INL vd UF(fabs)(vd x) { return (vd)((vl)x & INT64_MAX); }
/* |t| with the sign of s */
UF_INL vd UF(copysign)(vd t, vd s) { return (vd)(((vl)t & INT64_MAX) | ((vl)s & INT64_MIN)); }

/* exp(x) within 2e-10: x = n ln2 + r, |r| <= ln2/2, ln2 in two parts so
 * that n ln2_hi is exact; exp(r) by its Taylor polynomial of degree 8; 2^n
 * from the bits of the rounding constant. Arguments beyond [-200, 200] are
 * clamped (their float results are 0 or Inf anyway), and below -200 the
 * result is exactly 0, so that 0 * Inf gives NaN where the reference does.
 * exp_clamped: the steps after the clamp, c being x within [-200, 200]. */
UF_INL vd UF(exp_clamped)(vd x, vd c) {
  vd k = c * 1.4426950408889634 + 0x1.8p52;
  vd n = k - 0x1.8p52;
  vd r = (c - n * 0x1.62e42feep-1) - n * 0x1.a39ef35793c76p-33;
  vd p = 1.0 / 40320 * r + 1.0 / 5040;
  p = p * r + 1.0 / 720;
  p = p * r + 1.0 / 120;
  p = p * r + 1.0 / 24;
  p = p * r + 1.0 / 6;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  vd s = (vd)(((vu)k << 52) + ((uint64_t)1023 << 52)); /* unsigned: n < 0 shifts too */
  return UF(sel)(x < -200.0, SPL(0.0), p * s);
}

UF_INL vd UF(exp)(vd x) {
  vd c = UF(sel)(x < -200.0, SPL(-200.0), x);
  return UF(exp_clamped)(x, UF(sel)(c > 200.0, SPL(200.0), c));
}

/* UF(exp) of x <= 0 (or NaN): the same steps without the upper clamp,
 * which changes none of these arguments (sigmoid, 10% faster) */
UF_INL vd UF(exp_neg)(vd x) { return UF(exp_clamped)(x, UF(sel)(x < -200.0, SPL(-200.0), x)); }

/* erf(x) / x for x^2 = w in [0, 0.81]: a relative-error fit of degree 7
 * (error 7e-12). */
UF_INL vd UF(erf_small)(vd w) {
  vd p = -1.046884045476787e-05 * w + 0.00011501997762546068;
  p = p * w - 0.0008511323000885695;
  p = p * w + 0.00522258617410451;
  p = p * w - 0.026865884011323296;
  p = p * w + 0.11283788751948573;
  p = p * w - 0.37612638789209984;
  return p * w + 1.128379167088156;
}

/* erfc(z) for z in [0.9, 10.5] (0 above: NaN stays NaN): exp(-z^2) t f(t),
 * t = 1 / (z + 2), f a relative-error fit of degree 10 of erfc(z) exp(z^2) / t
 * (error 4e-11). z^2 is exact enough in double (z < 11). */
UF_INL vd UF(erfc_tail)(vd z) {
  vd zc = UF(sel)(z > 10.5, SPL(10.5), z);
  vd t = 1.0 / (zc + 2.0);
  vd f = 117.34022152563517 * t - 313.8727878261459;
  f = f * t + 332.7753251152518;
  f = f * t - 165.43598834531281;
  f = f * t + 35.5242476494276;
  f = f * t - 8.3584182409076266;
  f = f * t + 3.7219011295602544;
  f = f * t + 2.7300586387298855;
  f = f * t + 1.9797903035133047;
  f = f * t + 1.128210497086755;
  f = f * t + 0.5641920384592185;
  vd c = UF(exp)(-(zc * zc)) * t * f;
  return UF(sel)(z > 10.5, SPL(0.0), c);
}

UF_INL vd UF(sigmoid)(vd x) {
  vd e = UF(exp_neg)(-UF(fabs)(x)); /* (0, 1]: 1 / (1 + 1/e) never overflows */
  return UF(sel)(x < 0.0, e, SPL(1.0)) / (1.0 + e);
}

/* tanh: the Taylor series to x^15 below 0.25 (no cancellation near 0; error
 * 5e-12), (1 - e) / (1 + e) with e = exp(-2|x|) above. */
UF_INL vd UF(tanh)(vd x) {
  vd a = UF(fabs)(x), w = a * a;
  vd p = -929569.0 / 638512875 * w + 21844.0 / 6081075;
  p = p * w - 1382.0 / 155925;
  p = p * w + 62.0 / 2835;
  p = p * w - 17.0 / 315;
  p = p * w + 2.0 / 15;
  p = p * w - 1.0 / 3;
  vd small = a + a * w * p;
  vd e = UF(exp)(-2.0 * a);
  vd big = (1.0 - e) / (1.0 + e);
  return UF(copysign)(UF(sel)(a < 0.25, small, big), x);
}

UF_INL vd UF(erf)(vd x) {
  vd a = UF(fabs)(x);
  vd small = a * UF(erf_small)(a * a);
  vd big = 1.0 - UF(erfc_tail)(a);
  return UF(copysign)(UF(sel)(a < 0.9, small, big), x);
}

/* 0.5 x (1 + erf z), z = x / sqrt 2: for z <= -0.9 as 0.5 x erfc(-z), whose
 * relative accuracy 1 + erf z would lose (Gelu(-10) is 7.6e-23). */
UF_INL vd UF(gelu)(vd x) {
  vd z = x * 0.70710678118654752440, a = UF(fabs)(z);
  vd small = 1.0 + z * UF(erf_small)(z * z);
  vd c = UF(erfc_tail)(a);
  vd w = UF(sel)(a < 0.9, small, UF(sel)(x > 0.0, 2.0 - c, c));
  return 0.5 * x * w;
}

/* 0.5 x (1 + tanh u) = x sigmoid(2u): the ratio of exponentials, no
 * cancellation; 2u in double, so the far negative tail keeps its digits. */
UF_INL vd UF(gelu_tanh)(vd x) {
  vd u2 = x * (2 * 0.7978845608028654 + 2 * 0.7978845608028654 * 0.044715 * (x * x));
  vd e = UF(exp)(-UF(fabs)(u2));
  return x * (UF(sel)(u2 < 0.0, e, SPL(1.0)) / (1.0 + e));
}

/* log(1 + e^x) = max(x, 0) + log1p(e), e = exp(-|x|) in (0, 1]; log1p(e) =
 * 2 atanh(s), s = e / (2 + e) <= 1/3, by its series to s^21 (error 1e-12). */
UF_INL vd UF(softplus)(vd x) {
  vd e = UF(exp)(-UF(fabs)(x));
  vd s = e / (2.0 + e), w = s * s;
  vd p = 1.0 / 21 * w + 1.0 / 19;
  p = p * w + 1.0 / 17;
  p = p * w + 1.0 / 15;
  p = p * w + 1.0 / 13;
  p = p * w + 1.0 / 11;
  p = p * w + 1.0 / 9;
  p = p * w + 1.0 / 7;
  p = p * w + 1.0 / 5;
  p = p * w + 1.0 / 3;
  vd l = 2.0 * s * (p * w + 1.0);
  return UF(sel)(x > 0.0, x + l, l);
}

/* tanh(softplus x) = n / (n + 2), n = e^x (e^x + 2): with e = exp(-|x|),
 * (1 + 2e) / (1 + 2e + 2e^2) for x > 0 and e (e + 2) / (e (e + 2) + 2)
 * below, neither overflowing. */
UF_INL vd UF(mish)(vd x) {
  vd e = UF(exp)(-UF(fabs)(x));
  vd m = e * (e + 2.0);
  vl gt = x > 0.0;
  vd num = UF(sel)(gt, 1.0 + 2.0 * e, m);
  vd den = UF(sel)(gt, 1.0 + 2.0 * e + 2.0 * (e * e), m + 2.0);
  return x * (num / den);
}

/* the clamps, NaN through: each bound replaces only lanes that compare */
UF_INL vd UF(clamp01)(vd t, double hi) {
  t = UF(sel)(t < 0.0, SPL(0.0), t);
  return UF(sel)(t > hi, SPL(hi), t);
}

/* One loop per op: VN floats widened, computed, rounded and stored; the
 * tail through a zeroed vector, loaded and stored for its n - i lanes only. */
#define UF_LOOP(EXPR)                                             \
  do {                                                            \
    int64_t i = 0;                                                \
    for (; i + UF_VN <= n; i += UF_VN) {                          \
      vf v;                                                       \
      memcpy(&v, x + i, sizeof v);                                \
      vd d = __builtin_convertvector(v, vd);                      \
      v = __builtin_convertvector((EXPR), vf);                    \
      memcpy(y + i, &v, sizeof v);                                \
    }                                                             \
    if (i < n) {                                                  \
      vf v = {0};                                                 \
      memcpy(&v, x + i, sizeof(float) * (size_t)(n - i));         \
      vd d = __builtin_convertvector(v, vd);                      \
      v = __builtin_convertvector((EXPR), vf);                    \
      memcpy(y + i, &v, sizeof(float) * (size_t)(n - i));         \
    }                                                             \
  } while (0)

static void UF(run)(nbl_uf32 op, const float *x, float *y, int64_t n, double alpha, double beta) {
  switch (op) {
  case NBL_UF_EXP: UF_LOOP(UF(exp)(d)); break;
  case NBL_UF_SIGMOID: UF_LOOP(UF(sigmoid)(d)); break;
  case NBL_UF_TANH: UF_LOOP(UF(tanh)(d)); break;
  case NBL_UF_ERF: UF_LOOP(UF(erf)(d)); break;
  case NBL_UF_GELU: UF_LOOP(UF(gelu)(d)); break;
  case NBL_UF_GELU_TANH: UF_LOOP(UF(gelu_tanh)(d)); break;
  case NBL_UF_SOFTPLUS: UF_LOOP(UF(softplus)(d)); break;
  case NBL_UF_MISH: UF_LOOP(UF(mish)(d)); break;
  /* alpha x exact in double (24 by 24 bits), so one rounding as the
   * reference path's; HardSwish as x clamp(x + 3, 0, 6) / 6, exact x + 3 */
  case NBL_UF_HARDSIGMOID: UF_LOOP(UF(clamp01)(d * alpha + beta, 1.0)); break;
  case NBL_UF_HARDSWISH: UF_LOOP(d * UF(clamp01)(d + 3.0, 6.0) * (1.0 / 6)); break;
  default: break;
  }
}

/* y = x * op(x) as Mul(x, op(x)) (act_first: Mul(op(x), x)) computes it
 * on the op's float result: each vector's op(x) exactly as UF_LOOP makes it
 * (the same inline function on the same lanes), rounded to float, then one
 * float product; a NaN first operand gives that operand quieted, as x86's
 * multiply (and so Mul's kernel) does whichever order the compiler picks. */
#define UF_MUL_STEP(EXPR, BYTES)                                  \
  do {                                                            \
    vf v = {0};                                                   \
    memcpy(&v, x + i, (BYTES));                                   \
    vd d = __builtin_convertvector(v, vd);                        \
    vf s = __builtin_convertvector((EXPR), vf);                   \
    vf a = act_first ? s : v, r = v * s;                          \
    vi m = a != a;                                                \
    r = (vf)(((vi)r & ~m) | (((vi)a | quiet) & m));               \
    memcpy(y + i, &r, (BYTES));                                   \
  } while (0)
#define UF_LOOP_MUL(EXPR)                                                       \
  do {                                                                          \
    const vi quiet = (vi){0} + 0x400000;                                        \
    int64_t i = 0;                                                              \
    for (; i + UF_VN <= n; i += UF_VN) UF_MUL_STEP(EXPR, sizeof(vf));           \
    if (i < n) UF_MUL_STEP(EXPR, sizeof(float) * (size_t)(n - i));              \
  } while (0)

static void UF(run_mul)(nbl_uf32 op, const float *x, float *y, int64_t n, double alpha, double beta,
                        int act_first) {
  switch (op) {
  case NBL_UF_SIGMOID: UF_LOOP_MUL(UF(sigmoid)(d)); break;
  case NBL_UF_HARDSIGMOID: UF_LOOP_MUL(UF(clamp01)(d * alpha + beta, 1.0)); break;
  default: break;
  }
}

/* y = Mul(Mul(x, Add(Erf(Div(x, c1)), c2)), c3) as the five ops' kernels
 * compute it, each step one float operation rounded to float: t = x / c1,
 * e = erf(t) exactly as UF_LOOP makes it (the same inline function on the
 * same lanes), u = e + c2, v = x * u (x_first) or u * x, y = v * c3. The
 * constants are not NaN, so only v can see two NaN operands: there it is the
 * first operand's NaN, quieted, as x86's multiply (and so Mul's kernel)
 * gives it; elsewhere the order of the operands changes no bit. (Erf passes
 * a NaN's sign and payload through, so today u's NaN is x's, quieted, and
 * the order of v's operands shows in no bit either; the rule is kept so
 * that the result does not depend on that.) */
#define UF_GELU_ERF_STEP(BYTES)                                   \
  do {                                                            \
    vf v = {0};                                                   \
    memcpy(&v, x + i, (BYTES));                                   \
    vf t = v / vc1;                                               \
    vf e = __builtin_convertvector(UF(erf)(__builtin_convertvector(t, vd)), vf); \
    vf u = e + vc2;                                               \
    vf a = x_first ? v : u, r = v * u;                            \
    vi m = a != a;                                                \
    r = (vf)(((vi)r & ~m) | (((vi)a | quiet) & m));               \
    r = r * vc3;                                                  \
    memcpy(y + i, &r, (BYTES));                                   \
  } while (0)

static void UF(run_gelu_erf)(const float *x, float *y, int64_t n, float c1, float c2, float c3,
                             int x_first) {
  const vi quiet = (vi){0} + 0x400000;
  const vf vc1 = (vf){0} + c1, vc2 = (vf){0} + c2, vc3 = (vf){0} + c3;
  int64_t i = 0;
  for (; i + UF_VN <= n; i += UF_VN) UF_GELU_ERF_STEP(sizeof(vf));
  if (i < n) UF_GELU_ERF_STEP(sizeof(float) * (size_t)(n - i));
}

#undef UF_GELU_ERF_STEP

#undef UF_LOOP_MUL
#undef UF_MUL_STEP
#undef UF_LOOP

/* Softmax (log_out 0) or LogSoftmax (1) of `rows` rows of n floats each (y
 * may be x), as the double reference path of runtime/ops/reduce.c: m = the
 * row's max, d = x - m in double, s = sum of exp(d); y = exp(d) / s (here
 * exp(d) * (1 / s)) or d - log(s), rounded once to float. exp is the one
 * above (2e-10), log libm's. A NaN anywhere, or an infinite max, makes the
 * row NaN as there (d or s NaN). The tail goes through a vector padded
 * with -Inf (exp 0). Softmax rows up to UF_SM_KEEP long keep exp(d) in
 * double for the scaling; longer ones compute it again (the same bits). */
#ifndef UF_SM_KEEP
#define UF_SM_KEEP 1024 /* rows up to this long keep their exponentials (8 KB) */
#endif
static void UF(softmax_rows)(const float *x, float *y, int64_t rows, int64_t n, int log_out) {
  double ex[UF_SM_KEEP];
  for (int64_t row = 0; row < rows; row++, x += n, y += n) {
    int64_t nv = n - n % UF_VN;
    vf v;
    vd md = SPL(-INFINITY);
    for (int64_t i = 0; i < nv; i += UF_VN) {
      memcpy(&v, x + i, sizeof v);
      vd d = __builtin_convertvector(v, vd);
      md = UF(sel)(d > md, d, md);
    }
    vd tail = SPL(-INFINITY);
    for (int64_t i = nv; i < n; i++) tail[i - nv] = (double)x[i];
    md = UF(sel)(tail > md, tail, md);
    double m = -INFINITY;
    for (int l = 0; l < UF_VN; l++) m = md[l] > m ? md[l] : m;
    vd vm = SPL(m), acc = SPL(0.0);
    int keep = !log_out && n <= UF_SM_KEEP; /* the exponentials kept for the scaling */
    for (int64_t i = 0; i < nv; i += UF_VN) {
      memcpy(&v, x + i, sizeof v);
      vd ev = UF(exp)(__builtin_convertvector(v, vd) - vm);
      if (keep) memcpy(ex + i, &ev, sizeof ev);
      acc += ev;
    }
    vd et = SPL(0.0);
    if (nv < n) acc += et = UF(exp)(tail - vm);
    double s = 0;
    for (int l = 0; l < UF_VN; l++) s += acc[l];
    if (log_out) {
      vd ls = SPL(log(s));
      for (int64_t i = 0; i < nv; i += UF_VN) {
        memcpy(&v, x + i, sizeof v);
        v = __builtin_convertvector((__builtin_convertvector(v, vd) - vm) - ls, vf);
        memcpy(y + i, &v, sizeof v);
      }
      if (nv < n) {
        v = __builtin_convertvector((tail - vm) - ls, vf);
        memcpy(y + nv, &v, sizeof(float) * (size_t)(n - nv));
      }
    } else {
      vd inv = SPL(1.0 / s);
      for (int64_t i = 0; i < nv; i += UF_VN) {
        vd ev;
        if (keep) {
          memcpy(&ev, ex + i, sizeof ev);
        } else {
          memcpy(&v, x + i, sizeof v);
          ev = UF(exp)(__builtin_convertvector(v, vd) - vm);
        }
        v = __builtin_convertvector(ev * inv, vf);
        memcpy(y + i, &v, sizeof v);
      }
      if (nv < n) {
        v = __builtin_convertvector(et * inv, vf);
        memcpy(y + nv, &v, sizeof(float) * (size_t)(n - nv));
      }
    }
  }
}
#undef SPL
#undef UF_INL
#undef vu
#undef vl
#undef vd
#undef vf
#undef vi
