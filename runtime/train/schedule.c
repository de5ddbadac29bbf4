/*
 * schedule.c - learning-rate schedules (train.h): constant, step, cosine, and
 * a linear warm-up in front of any of them. The rate is a pure function of
 * the update count, so a resumed run continues the same curve.
 *
 *   constant          base
 *   step:N:G          base * G^floor(t / N)
 *   cosine[:MIN]      MIN + (base - MIN) * (1 + cos(pi * t / T)) / 2, T = total updates
 *                     (after the warm-up); MIN from t >= T on
 *   warmup:N,REST     base * (t + 1) / N for t < N, then REST at t - N
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/train/train.h"

static int parse_i64(const char *s, char **end, int64_t *v) {
  errno = 0;
  long long x = strtoll(s, end, 10);
  if (errno || *end == s) return -1;
  *v = x;
  return 0;
}

static int parse_f64(const char *s, char **end, double *v) {
  errno = 0;
  double x = strtod(s, end);
  if (errno || *end == s || !isfinite(x)) return -1;
  *v = x;
  return 0;
}

nbl_status nbl_schedule_parse(const char *spec, double base, int64_t total, nbl_schedule *out) {
  if (!spec || !*spec) spec = "constant";
  if (!isfinite(base) || base < 0)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "learning rate %g: must be a finite number >= 0", base);
  nbl_schedule s = {.base = base, .total = total, .kind = NBL_SCHED_CONSTANT};
  if (strlen(spec) >= sizeof s.spec)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "schedule '%.40s...': too long", spec);
  snprintf(s.spec, sizeof s.spec, "%s", spec);
  const char *p = spec;
  char *end;
  if (!strncmp(p, "warmup:", 7)) {
    if (parse_i64(p + 7, &end, &s.warmup) || s.warmup < 1 || (*end != ',' && *end != 0))
      goto bad;
    p = *end ? end + 1 : end;
    if (!*p) p = "constant";
  }
  if (!strcmp(p, "constant")) {
    s.kind = NBL_SCHED_CONSTANT;
  } else if (!strncmp(p, "step:", 5)) {
    s.kind = NBL_SCHED_STEP;
    if (parse_i64(p + 5, &end, &s.step_n) || s.step_n < 1 || *end != ':') goto bad;
    if (parse_f64(end + 1, &end, &s.gamma) || s.gamma < 0 || *end) goto bad;
  } else if (!strncmp(p, "cosine", 6)) {
    s.kind = NBL_SCHED_COSINE;
    if (p[6] == ':') {
      if (parse_f64(p + 7, &end, &s.min_lr) || s.min_lr < 0 || *end) goto bad;
    } else if (p[6]) {
      goto bad;
    }
    if (total <= s.warmup)
      return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                        "schedule '%s': the cosine needs the total number of updates (%lld) to "
                        "exceed the warm-up (%lld)",
                        spec, (long long)total, (long long)s.warmup);
  } else {
    goto bad;
  }
  *out = s;
  return NBL_OK;
bad:
  return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                    "schedule '%s': expected constant, step:N:G, cosine[:MIN] or warmup:N[,REST] "
                    "(N a positive integer, G and MIN numbers >= 0)",
                    spec);
}

double nbl_schedule_lr(const nbl_schedule *s, int64_t t) {
  if (t < 0) t = 0;
  if (t < s->warmup) return s->base * (double)(t + 1) / (double)s->warmup;
  t -= s->warmup;
  switch (s->kind) {
  case NBL_SCHED_STEP:
    return s->base * pow(s->gamma, (double)(t / s->step_n));
  case NBL_SCHED_COSINE: {
    int64_t T = s->total - s->warmup;
    if (t >= T) return s->min_lr;
    return s->min_lr + (s->base - s->min_lr) * 0.5 * (1.0 + cos(M_PI * (double)t / (double)T));
  }
  case NBL_SCHED_CONSTANT:
  default:
    return s->base;
  }
}
