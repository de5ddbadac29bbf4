/* runtime/formats/log.c - the logarithmic (radix 2/4/10) quantizer; the
 * formulas and their rationale are in log.h. */
#include "runtime/formats/log.h"

#include <math.h>
#include <string.h>

#include "runtime/formats/int4.h" /* nbl_q4_uniform: the one counter-based generator */

#define LOG_MAX_LEVELS 15 /* exp_bits <= 4 */

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

void nbl_log_choose(const nbl_log_config *cfg, const float *x, size_t n, nbl_log_params *p) {
  float mx = 0.0f;
  for (size_t i = 0; i < n; i++) {
    float a = fabsf(x[i]);
    if (isfinite(a) && a > mx) mx = a;
  }
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

/* The levels of p in double (each rounded to float once, as nbl_log_level). */
static int levels_of(const nbl_log_config *cfg, const nbl_log_params *p, double *lev) {
  int L = p->levels;
  if (L < 1 || L > LOG_MAX_LEVELS) return 0;
  for (int k = 0; k < L; k++) lev[k] = (double)nbl_log_level(cfg, p, k);
  return L;
}

/* The code of finite x on the grid lev[0..L) (L >= 1). */
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

int nbl_log_code(const nbl_log_config *cfg, const nbl_log_params *p, float x, uint64_t index) {
  double lev[LOG_MAX_LEVELS] = {0};
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

void nbl_log_fake_quant(const nbl_log_config *cfg, const nbl_log_params *p, const float *x,
                        float *y, size_t n, uint64_t index0) {
  for (size_t i = 0; i < n; i++) {
    float v = x[i];
    y[i] = isfinite(v) ? nbl_log_value(cfg, p, nbl_log_code(cfg, p, v, index0 + i)) : v;
  }
}
