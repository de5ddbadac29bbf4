/* runtime/formats/log.c - the logarithmic (radix 2/4/10) quantizer; the
 * formulas and their rationale are in log.h. */
#include "runtime/formats/log.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "runtime/formats/int4.h" /* nbl_q4_uniform: the one counter-based generator */

#define LOG_MAX_LEVELS NBL_LOG_MAX_LEVELS

void nbl_log_config_default(nbl_log_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->radix = 4;
  cfg->exp_bits = 3;
  cfg->rounding = NBL_LOG_NEAREST;
}

static const char *const round_names[] = {"nearest", "stochastic", "tpr", "luq"};

int nbl_log_parse_rounding(const char *s, nbl_log_rounding *out) {
  for (int i = 0; i < 4; i++)
    if (s && strcmp(s, round_names[i]) == 0) {
      *out = (nbl_log_rounding)i;
      return 0;
    }
  return -1;
}

const char *nbl_log_rounding_name(nbl_log_rounding r) {
  return (unsigned)r < 4 ? round_names[r] : "?";
}

int nbl_log_validate(const nbl_log_config *cfg, const char **why) {
  if (cfg->radix != 2 && cfg->radix != 4 && cfg->radix != 10) {
    *why = "radix must be 2, 4 or 10";
    return -1;
  }
  if (cfg->exp_bits < 1 || cfg->exp_bits > 4) {
    *why = "exp_bits must be in 1..4";
    return -1;
  }
  if ((unsigned)cfg->rounding > NBL_LOG_LUQ) {
    *why = "rounding must be nearest, stochastic, tpr or luq";
    return -1;
  }
  if (cfg->phase != 0 && cfg->phase != 1) {
    *why = "phase must be 0 or 1";
    return -1;
  }
  if (cfg->phase == 1 && cfg->rounding != NBL_LOG_TPR) {
    *why = "phase=1 is only meaningful with rounding=tpr";
    return -1;
  }
  if (cfg->rounding == NBL_LOG_LUQ && cfg->radix != 2) {
    *why = "rounding=luq needs radix=2";
    return -1;
  }
  *why = NULL;
  return 0;
}

nbl_status nbl_log_config_decode(const nbl_node *n, nbl_log_config *out, char *err, size_t errlen) {
  static const char *const names[] = {"radix", "exp_bits", "rounding", "phase", "seed"};
  static const nbl_attr_type types[] = {NBL_ATTR_INT, NBL_ATTR_INT, NBL_ATTR_STRING, NBL_ATTR_INT,
                                        NBL_ATTR_INT};
  const nbl_attr *a[5];
  for (int i = 0; i < 5; i++) {
    nbl_status st = nbl_node_attr_typed(n, names[i], types[i], &a[i], err, errlen);
    if (st != NBL_OK) return st;
  }
  nbl_log_config cfg;
  nbl_log_config_default(&cfg);
  if (a[0]) {
    if (a[0]->i != 2 && a[0]->i != 4 && a[0]->i != 10)
      return nbl_errbuf(err, errlen, NBL_ERR_UNSUPPORTED, "radix=%lld is not supported (2, 4 or 10)",
                        (long long)a[0]->i);
    cfg.radix = (int)a[0]->i;
  }
  if (a[1]) {
    if (a[1]->i < 1 || a[1]->i > 4)
      return nbl_errbuf(err, errlen, NBL_ERR_UNSUPPORTED, "exp_bits=%lld is not supported (1..4)",
                        (long long)a[1]->i);
    cfg.exp_bits = (int)a[1]->i;
  }
  if (a[2] && nbl_log_parse_rounding(a[2]->s, &cfg.rounding) != 0)
    return nbl_errbuf(err, errlen, NBL_ERR_UNSUPPORTED,
                      "rounding '%s' is not supported (nearest|stochastic|tpr|luq)", a[2]->s);
  if (a[3]) {
    if (a[3]->i != 0 && a[3]->i != 1)
      return nbl_errbuf(err, errlen, NBL_ERR_INVALID_MODEL, "phase must be 0 or 1, got %lld",
                        (long long)a[3]->i);
    cfg.phase = (int)a[3]->i;
  }
  if (a[4]) cfg.seed = a[4]->i;
  const char *why = NULL;
  if (nbl_log_validate(&cfg, &why) != 0)
    return nbl_errbuf(err, errlen, NBL_ERR_INVALID_MODEL, "%s", why);
  *out = cfg;
  return NBL_OK;
}

int64_t nbl_log_step_seed(int64_t seed, int64_t step) {
  return (int64_t)((uint64_t)seed ^ ((uint64_t)step * 0x9E3779B97F4A7C15ull));
}

void nbl_log_choose(const nbl_log_config *cfg, const float *x, size_t n, nbl_log_params *p) {
  float mx = 0.0f;
  for (size_t i = 0; i < n; i++) {
    float a = fabsf(x[i]);
    if (isfinite(a) && a > mx) mx = a;
  }
  nbl_log_choose_max(cfg, mx, p);
}

void nbl_log_choose_max(const nbl_log_config *cfg, float mx, nbl_log_params *p) {
  double top = mx > 0.0f ? (double)mx : 1.0;
  if (cfg->rounding == NBL_LOG_TPR && cfg->phase == 1) top *= sqrt((double)cfg->radix);
  p->top = (float)top;
  if (!(p->top > 0.0f) || isinf(p->top)) p->top = mx > 0.0f ? mx : 1.0f; /* overflow guard */
  p->levels = (1 << cfg->exp_bits) - 1;
}

float nbl_log_level(const nbl_log_config *cfg, const nbl_log_params *p, int k) {
  return (float)((double)p->top * pow((double)cfg->radix, -(double)k));
}

static int stochastic(const nbl_log_config *cfg) {
  return cfg->rounding == NBL_LOG_STOCHASTIC || cfg->rounding == NBL_LOG_LUQ;
}

/* The code of finite x on the levels lev[0..L) (the grid's levels as doubles
 * of their float values): the one rounding rule of every caller. */
static int code_on(const nbl_log_config *cfg, const double *lev, int L, float x, uint64_t index) {
  double a = fabs((double)x);
  int sign = x < 0.0f ? -1 : 1;
  if (a >= lev[0]) return sign;
  /* the first level below a: lev[k] <= a < lev[k-1] (k = L: below the grid) */
  int k = 1;
  while (k < L && a < lev[k]) k++;
  if (a == 0.0) return 0;
  if (k == L) { /* between 0 and m = lev[L-1] */
    double m = lev[L - 1];
    int up = stochastic(cfg) ? nbl_q4_uniform(cfg->seed, index) < a / m : a >= 0.5 * m;
    return up ? sign * L : 0;
  }
  double hi = lev[k - 1], lo = lev[k];
  if (a == lo) return sign * (k + 1);
  int up = stochastic(cfg) ? nbl_q4_uniform(cfg->seed, index) < (a - lo) / (hi - lo)
                           : a >= sqrt(lo * hi);
  return sign * (up ? k : k + 1);
}

/* The levels of p as doubles; L, or 0 when p has no valid level count. */
static int levels_of(const nbl_log_config *cfg, const nbl_log_params *p, double *lev) {
  int L = p->levels;
  if (L < 1 || L > LOG_MAX_LEVELS) return 0;
  for (int k = 0; k < L; k++) lev[k] = (double)nbl_log_level(cfg, p, k);
  return L;
}

int nbl_log_code(const nbl_log_config *cfg, const nbl_log_params *p, float x, uint64_t index) {
  double lev[LOG_MAX_LEVELS];
  int L = levels_of(cfg, p, lev);
  return L ? code_on(cfg, lev, L, x, index) : 0;
}

void nbl_log_codes(const nbl_log_config *cfg, const nbl_log_params *p, const float *x, int8_t *codes,
                   size_t n, uint64_t index0) {
  double lev[LOG_MAX_LEVELS] = {0};
  int L = levels_of(cfg, p, lev);
  for (size_t i = 0; i < n; i++)
    codes[i] = (int8_t)(L && isfinite(x[i]) ? code_on(cfg, lev, L, x[i], index0 + i) : 0);
}

float nbl_log_value(const nbl_log_config *cfg, const nbl_log_params *p, int code) {
  if (code == 0) return 0.0f;
  float v = nbl_log_level(cfg, p, (code < 0 ? -code : code) - 1);
  return code < 0 ? -v : v;
}

int32_t nbl_log_code_int(const nbl_log_config *cfg, int code) {
  if (code == 0) return 0;
  int L = (1 << cfg->exp_bits) - 1;
  int k = (code < 0 ? -code : code) - 1;
  int shift = (cfg->radix == 4 ? 2 : 1) * (L - 1 - k);
  int32_t v = (int32_t)1 << shift;
  return code < 0 ? -v : v;
}

int nbl_log_code8_nonfinite(float x) {
  return isnan(x) ? NBL_LOG_CODE_NAN : x > 0 ? NBL_LOG_CODE_POS_INF : NBL_LOG_CODE_NEG_INF;
}

float nbl_log_value8(const nbl_log_config *cfg, const nbl_log_params *p, int code) {
  if (code == NBL_LOG_CODE_NAN) return NAN;
  if (code == NBL_LOG_CODE_POS_INF || code == NBL_LOG_CODE_NEG_INF) return code > 0 ? INFINITY : -INFINITY;
  return nbl_log_value(cfg, p, code);
}

int nbl_log_int_grid(const nbl_log_config *cfg, float top, float *unit) {
  if ((cfg->radix != 2 && cfg->radix != 4) || cfg->exp_bits < 1 || cfg->exp_bits > 4 || !(top > 0.0f) ||
      !isfinite(top))
    return 0;
  const nbl_log_params p = {.top = top, .levels = (1 << cfg->exp_bits) - 1};
  const float u = nbl_log_level(cfg, &p, p.levels - 1);
  if (!isnormal(u)) return 0;
  for (int k = 0; k < p.levels; k++)
    if (nbl_log_level(cfg, &p, k) != u * (float)nbl_log_code_int(cfg, k + 1)) return 0;
  *unit = u;
  return 1;
}

/* The smallest float >= t (t >= 0 finite). */
static float float_ceil(double t) {
  float f = (float)t;
  if ((double)f < t) f = nextafterf(f, INFINITY);
  return f;
}

void nbl_log_table(const nbl_log_config *cfg, const nbl_log_params *p, float *lev, float *thr) {
  int L = p->levels < 1 ? 1 : p->levels > LOG_MAX_LEVELS ? LOG_MAX_LEVELS : p->levels;
  for (int k = 0; k < L; k++) lev[k] = nbl_log_level(cfg, p, k);
  for (int k = 1; k < L; k++) thr[k - 1] = float_ceil(sqrt((double)lev[k - 1] * (double)lev[k]));
  thr[L - 1] = float_ceil(0.5 * (double)lev[L - 1]);
}

void nbl_log_fake_quant(const nbl_log_config *cfg, const nbl_log_params *p, const float *x,
                        float *y, size_t n, uint64_t index0) {
  double lev[LOG_MAX_LEVELS];
  float levf[LOG_MAX_LEVELS];
  int L = levels_of(cfg, p, lev); /* once per call, not per element */
  for (int k = 0; k < L; k++) levf[k] = (float)lev[k];
  for (size_t i = 0; i < n; i++) {
    float v = x[i];
    if (!isfinite(v)) {
      y[i] = v;
      continue;
    }
    int code = L ? code_on(cfg, lev, L, v, index0 + i) : 0;
    float mag = code ? levf[(code < 0 ? -code : code) - 1] : 0.0f;
    y[i] = code < 0 ? -mag : mag; /* nbl_log_value */
  }
}
