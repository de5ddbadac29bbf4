/* runtime/ops/rnn.c - op family 'rnn': recurrent layers (RNN, GRU, LSTM) with
 * every activation, direction and layout, and their backward ops (see
 * kernel.h for the kernel contract); the fast kernels run the input and
 * hidden products on GEMM.
 *
 * These kernels are reference kernels: inputs are converted to double, the
 * computation runs in double and the result is converted back to the output's
 * element type (float, double or float16). */
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "runtime/core/grad.h"
#include "runtime/core/shape.h"
#include "runtime/kernels/gemm.h"
#include "runtime/ops/ref_common.h"

/* ------------------------------------------------------------------ RNN, GRU, LSTM */

typedef enum { ACT_SIGMOID, ACT_TANH, ACT_RELU, ACT_AFFINE, ACT_LEAKYRELU, ACT_THRESHRELU,
               ACT_SCALEDTANH, ACT_HARDSIGMOID, ACT_ELU, ACT_SOFTSIGN, ACT_SOFTPLUS } act_kind;

typedef struct act_fn {
  act_kind kind;
  double alpha, beta;
} act_fn;

static double act_apply(const act_fn *a, double x) {
  switch (a->kind) {
  case ACT_SIGMOID: return x >= 0 ? 1.0 / (1.0 + exp(-x)) : exp(x) / (1.0 + exp(x));
  case ACT_TANH: return tanh(x);
  case ACT_RELU: return x > 0 ? x : (x == x ? 0.0 : x);
  case ACT_AFFINE: return a->alpha * x + a->beta;
  case ACT_LEAKYRELU: return x >= 0 ? x : a->alpha * x;
  case ACT_THRESHRELU: return x > a->alpha ? x : (x == x ? 0.0 : x);
  case ACT_SCALEDTANH: return a->alpha * tanh(a->beta * x);
  case ACT_HARDSIGMOID: return fmax(0.0, fmin(1.0, a->alpha * x + a->beta));
  case ACT_ELU: return x >= 0 ? x : a->alpha * (exp(x) - 1.0);
  case ACT_SOFTSIGN: return x / (1.0 + fabs(x));
  case ACT_SOFTPLUS: return x > 30 ? x : log1p(exp(x));
  }
  return x;
}

typedef struct act_spec {
  const char *name;
  act_kind kind;
  int n_params; /* 0, 1 (alpha) or 2 (alpha, beta) */
  double alpha, beta;
} act_spec;

static const act_spec act_specs[] = {
    {"Sigmoid", ACT_SIGMOID, 0, 0, 0},         {"Tanh", ACT_TANH, 0, 0, 0},
    {"Relu", ACT_RELU, 0, 0, 0},               {"Affine", ACT_AFFINE, 2, 1.0, 0.0},
    {"LeakyRelu", ACT_LEAKYRELU, 1, 0.01, 0},  {"ThresholdedRelu", ACT_THRESHRELU, 1, 1.0, 0},
    {"ScaledTanh", ACT_SCALEDTANH, 2, 1.0, 1.0}, {"HardSigmoid", ACT_HARDSIGMOID, 2, 0.2, 0.5},
    {"Elu", ACT_ELU, 1, 1.0, 0},               {"Softsign", ACT_SOFTSIGN, 0, 0, 0},
    {"Softplus", ACT_SOFTPLUS, 0, 0, 0},
};

typedef enum { RK_RNN, RK_GRU, RK_LSTM } rnn_kind;

/* Read 'activations' (+ alpha/beta lists) into acts[n_dir * per_dir]. */
static nbl_status rnn_activations(nbl_kctx *c, int per_dir, int n_dir, act_fn *acts,
                                  const char *const *defaults) {
  const nbl_attr *a = nbl_node_attr(c->node, "activations");
  int na = 0, nb = 0, ia = 0, ib = 0;
  const float *alphas = nbl_attr_floats(c->node, "activation_alpha", &na);
  const float *betas = nbl_attr_floats(c->node, "activation_beta", &nb);
  int given = (a && a->type == NBL_ATTR_STRINGS) ? a->n : 0;
  if (given && given != per_dir && given != per_dir * n_dir)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "'activations' has %d entries, expected %d", given,
                    per_dir * n_dir);
  for (int k = 0; k < per_dir * n_dir; k++) {
    const char *name = given ? a->strings[k % given] : defaults[k % per_dir];
    const act_spec *sp = NULL;
    for (size_t s = 0; s < sizeof act_specs / sizeof act_specs[0]; s++)
      if (strcasecmp(act_specs[s].name, name) == 0) sp = &act_specs[s];
    if (!sp) return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "activation function '%s' is not supported", name);
    acts[k].kind = sp->kind;
    acts[k].alpha = sp->alpha;
    acts[k].beta = sp->beta;
    if (given && k < given) { /* parameters belong to the listed functions, in order */
      if (sp->n_params >= 1 && ia < na) acts[k].alpha = alphas[ia++];
      if (sp->n_params >= 2 && ib < nb) acts[k].beta = betas[ib++];
    } else if (given) {
      acts[k] = acts[k % given];
    }
  }
  return NBL_OK;
}

static double clipv(double x, double clip) {
  if (clip > 0) return x < -clip ? -clip : (x > clip ? clip : x);
  return x;
}

/* Shape and options of one RNN/GRU/LSTM node, validated by k_rnn_common. */
typedef struct rnn_cfg {
  rnn_kind kind;
  int G, n_dir, rev_only, layout, lbr, input_forget;
  int64_t S, Bt, I, H;
  double clip;
  const act_fn *acts; /* per_dir entries per direction */
  int per_dir;
  const nbl_rt_tensor *X, *W, *R, *B, *SL, *H0, *C0, *P;
} rnn_cfg;

/* Fast float32 path: the input projection of all steps is one GEMM per
 * direction, the recurrent product one GEMM per step over the batch; the gate
 * arithmetic is the reference's (in double). Outputs are allocated. */
static nbl_status rnn_fast(nbl_kctx *c, const rnn_cfg *q) {
  const int64_t S = q->S, Bt = q->Bt, I = q->I, H = q->H, GH = q->G * q->H;
  const float *x = q->X->data, *w = q->W->data, *r = q->R->data, *bb = q->B ? q->B->data : NULL,
              *h0 = q->H0 ? q->H0->data : NULL, *c0 = q->C0 ? q->C0->data : NULL, *p = q->P ? q->P->data : NULL;
  float *y = nbl_kctx_out(c, 0)->data;
  float *yh = c->n_out > 1 ? nbl_kctx_out(c, 1)->data : NULL;
  float *yc = q->kind == RK_LSTM && c->n_out > 2 ? nbl_kctx_out(c, 2)->data : NULL;
  size_t ny = (size_t)(S * q->n_dir * Bt * H);
  if (ny) memset(y, 0, ny * sizeof(float));
  float *xw = malloc(sizeof(float) * (size_t)(S * Bt * GH + 1)), *hr = malloc(sizeof(float) * (size_t)(Bt * GH + 1)),
        *h = malloc(sizeof(float) * (size_t)(Bt * H + 1)), *cs = malloc(sizeof(float) * (size_t)(Bt * H + 1)),
        *rh = malloc(sizeof(float) * (size_t)(Bt * H + 1)), *hc = malloc(sizeof(float) * (size_t)(Bt * H + 1)),
        *zz = malloc(sizeof(float) * (size_t)(Bt * H + 1));
  int64_t *len = malloc(sizeof(int64_t) * (size_t)(Bt + 1));
  if (!xw || !hr || !h || !cs || !rh || !hc || !zz || !len) {
    free(xw), free(hr), free(h), free(cs), free(rh), free(hc), free(zz), free(len);
    return oom(c);
  }
  for (int64_t b = 0; b < Bt; b++) len[b] = q->SL ? nbl_rt_get_i64(q->SL, b) : S;
  const double clip = q->clip;
  for (int d = 0; d < q->n_dir; d++) {
    int reverse = q->rev_only || d == 1;
    const float *wd = w + (size_t)d * GH * I, *rd = r + (size_t)d * GH * H;
    const float *wb = bb ? bb + (size_t)d * 2 * GH : NULL, *rb = wb ? wb + GH : NULL;
    const float *pd = p ? p + (size_t)d * 3 * H : NULL;
    const act_fn *af = &q->acts[d * q->per_dir];
    /* xw row = the X row (t, b) in X's own layout */
    nbl_sgemm(c, 0, 1, S * Bt, GH, I, 1.0f, x, I, wd, I, 0.0f, xw, GH);
    for (int64_t b = 0; b < Bt; b++) {
      size_t sidx = q->layout ? (size_t)((b * q->n_dir + d) * H) : (size_t)((d * Bt + b) * H);
      for (int64_t j = 0; j < H; j++) {
        h[b * H + j] = h0 ? h0[sidx + j] : 0.0f;
        cs[b * H + j] = c0 ? c0[sidx + j] : 0.0f;
      }
    }
    for (int64_t s = 0; s < S; s++) {
      nbl_sgemm(c, 0, 1, Bt, GH, H, 1.0f, h, H, rd, H, 0.0f, hr, GH);
      for (int64_t b = 0; b < Bt; b++) {
        if (s >= len[b]) continue;
        int64_t t = reverse ? len[b] - 1 - s : s;
        const float *gx = xw + (q->layout ? b * S + t : t * Bt + b) * GH, *gh = hr + b * GH;
        float *hb = h + b * H, *cb = cs + b * H;
#define BX(k) ((double)gx[k] + (wb ? (double)wb[k] : 0.0))
#define BH(k) ((double)gh[k] + (rb ? (double)rb[k] : 0.0))
        if (q->kind == RK_RNN) {
          for (int64_t j = 0; j < H; j++) hb[j] = (float)act_apply(&af[0], clipv(BX(j) + BH(j), clip));
        } else if (q->kind == RK_GRU) {
          for (int64_t j = 0; j < H; j++) {
            double z = act_apply(&af[0], clipv(BX(j) + BH(j), clip));
            double rr = act_apply(&af[0], clipv(BX(H + j) + BH(H + j), clip));
            zz[b * H + j] = (float)z;
            if (q->lbr) {
              double cand = act_apply(&af[1], clipv(BX(2 * H + j) + rr * BH(2 * H + j), clip));
              hc[b * H + j] = (float)cand;
            } else {
              rh[b * H + j] = (float)(rr * hb[j]);
            }
          }
        } else {
          for (int64_t j = 0; j < H; j++) {
            double vi = BX(j) + BH(j), vo = BX(H + j) + BH(H + j), vf = BX(2 * H + j) + BH(2 * H + j),
                   vc = BX(3 * H + j) + BH(3 * H + j);
            if (pd) {
              vi += (double)pd[j] * cb[j];
              vf += (double)pd[2 * H + j] * cb[j];
            }
            double gi = act_apply(&af[0], clipv(vi, clip));
            double gf = q->input_forget ? 1.0 - gi : act_apply(&af[0], clipv(vf, clip));
            double gc = act_apply(&af[1], clipv(vc, clip));
            double cn = gf * cb[j] + gi * gc;
            if (pd) vo += (double)pd[H + j] * cn;
            double go = act_apply(&af[0], clipv(vo, clip));
            cb[j] = (float)cn;
            hb[j] = (float)(go * act_apply(&af[2], cn));
          }
        }
      }
      if (q->kind == RK_GRU && !q->lbr) /* (r . h) R_h^T, then the candidate */
        nbl_sgemm(c, 0, 1, Bt, H, H, 1.0f, rh, H, rd + 2 * H * H, H, 0.0f, hr, H);
      for (int64_t b = 0; b < Bt; b++) {
        if (s >= len[b]) continue;
        int64_t t = reverse ? len[b] - 1 - s : s;
        float *hb = h + b * H;
        if (q->kind == RK_GRU) {
          const float *gx = xw + (q->layout ? b * S + t : t * Bt + b) * GH;
          for (int64_t j = 0; j < H; j++) {
            double cand = hc[b * H + j];
            if (!q->lbr)
              cand = act_apply(&af[1], clipv(BX(2 * H + j) + (double)hr[b * H + j] + (rb ? (double)rb[2 * H + j] : 0.0), clip));
            double z = zz[b * H + j];
            hb[j] = (float)((1.0 - z) * cand + z * hb[j]);
          }
        }
        float *yt = y + (q->layout ? ((b * S + t) * q->n_dir + d) * H : ((t * q->n_dir + d) * Bt + b) * H);
        memcpy(yt, hb, sizeof(float) * (size_t)H);
      }
#undef BX
#undef BH
    }
    for (int64_t b = 0; b < Bt; b++) {
      size_t sidx = q->layout ? (size_t)((b * q->n_dir + d) * H) : (size_t)((d * Bt + b) * H);
      if (yh) memcpy(yh + sidx, h + b * H, sizeof(float) * (size_t)H);
      if (yc) memcpy(yc + sidx, cs + b * H, sizeof(float) * (size_t)H);
    }
  }
  free(xw), free(hr), free(h), free(cs), free(rh), free(hc), free(zz), free(len);
  return NBL_OK;
}

/* The inputs and attributes of an RNN/GRU/LSTM node (or its backward op,
 * whose inputs 0-7 are the forward's), checked, into *q; acts holds the
 * activations (q->acts points at it). */
static nbl_status rnn_setup(nbl_kctx *c, rnn_kind kind, rnn_cfg *q, act_fn *acts) {
  static const char *const def_rnn[] = {"Tanh"};
  static const char *const def_gru[] = {"Sigmoid", "Tanh"};
  static const char *const def_lstm[] = {"Sigmoid", "Tanh", "Tanh"};
  const int G = kind == RK_RNN ? 1 : (kind == RK_GRU ? 3 : 4);
  const int per_dir = kind == RK_RNN ? 1 : (kind == RK_GRU ? 2 : 3);
  nbl_status st;
  if ((st = need_input(c, 0, "X")) || (st = need_input(c, 1, "W")) || (st = need_input(c, 2, "R"))) return st;
  const nbl_rt_tensor *X = c->in[0], *W = c->in[1], *R = c->in[2], *B = in_at(c, 3),
                      *SL = in_at(c, 4), *H0 = in_at(c, 5), *C0 = kind == RK_LSTM ? in_at(c, 6) : NULL,
                      *P = kind == RK_LSTM ? in_at(c, 7) : NULL;
  if ((st = need_float(c, X, "X")) || (st = need_rank(c, X, 3, "X")) || (st = need_rank(c, W, 3, "W")) ||
      (st = need_rank(c, R, 3, "R")))
    return st;
  const nbl_rt_tensor *same[] = {W, R, B, H0, C0, P};
  for (int i = 0; i < 6; i++)
    if (same[i] && same[i]->dtype != X->dtype)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %d has element type %s, expected %s (as X)",
                      i == 0 ? 1 : i + 1, nbl_dtype_name(same[i]->dtype), nbl_dtype_name(X->dtype));
  int layout = (int)nbl_attr_int(c->node, "layout", 0);
  if (layout != 0 && layout != 1) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "layout %d is not 0 or 1", layout);
  const char *dir = nbl_attr_string(c->node, "direction", "forward");
  int n_dir, rev_only = 0;
  if (strcmp(dir, "forward") == 0) n_dir = 1;
  else if (strcmp(dir, "reverse") == 0) n_dir = 1, rev_only = 1;
  else if (strcmp(dir, "bidirectional") == 0) n_dir = 2;
  else return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "direction '%s' is not forward, reverse or bidirectional", dir);
  const int64_t S = layout ? X->dims[1] : X->dims[0], Bt = layout ? X->dims[0] : X->dims[1], I = X->dims[2];
  int64_t H = nbl_attr_int(c->node, "hidden_size", -1);
  if (H < 0) H = W->dims[1] / G;
  if (W->dims[0] != n_dir || W->dims[1] != G * H || W->dims[2] != I)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "W has shape [%lld,%lld,%lld], expected [%d,%lld,%lld]",
                    (long long)W->dims[0], (long long)W->dims[1], (long long)W->dims[2], n_dir,
                    (long long)(G * H), (long long)I);
  if (R->dims[0] != n_dir || R->dims[1] != G * H || R->dims[2] != H)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "R has shape [%lld,%lld,%lld], expected [%d,%lld,%lld]",
                    (long long)R->dims[0], (long long)R->dims[1], (long long)R->dims[2], n_dir,
                    (long long)(G * H), (long long)H);
  if (B && (B->rank != 2 || B->dims[0] != n_dir || B->dims[1] != 2 * G * H))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "B must have shape [%d,%lld]", n_dir, (long long)(2 * G * H));
  const nbl_rt_tensor *states[] = {H0, C0};
  for (int i = 0; i < 2; i++) {
    const nbl_rt_tensor *s = states[i];
    if (!s) continue;
    int64_t e0 = layout ? Bt : n_dir, e1 = layout ? n_dir : Bt;
    if (s->rank != 3 || s->dims[0] != e0 || s->dims[1] != e1 || s->dims[2] != H)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "%s must have shape [%lld,%lld,%lld]",
                      i ? "initial_c" : "initial_h", (long long)e0, (long long)e1, (long long)H);
  }
  if (P && (P->rank != 2 || P->dims[0] != n_dir || P->dims[1] != 3 * H))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "P must have shape [%d,%lld]", n_dir, (long long)(3 * H));
  if (SL) {
    if (!is_int(SL->dtype) || SL->numel != Bt)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "sequence_lens must hold %lld integers", (long long)Bt);
    for (int64_t b = 0; b < Bt; b++) {
      int64_t l = nbl_rt_get_i64(SL, b);
      if (l < 0 || l > S)
        return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "sequence_lens[%lld] = %lld is outside [0, %lld]",
                        (long long)b, (long long)l, (long long)S);
    }
  }
  if ((st = rnn_activations(c, per_dir, n_dir, acts,
                            kind == RK_RNN ? def_rnn : (kind == RK_GRU ? def_gru : def_lstm))))
    return st;
  const nbl_attr *clip_attr = nbl_node_attr(c->node, "clip");
  double clip = clip_attr ? clip_attr->f : 0.0;
  int lbr = kind == RK_GRU && nbl_attr_int(c->node, "linear_before_reset", 0) != 0;
  int input_forget = kind == RK_LSTM && nbl_attr_int(c->node, "input_forget", 0) != 0;

  *q = (rnn_cfg){kind, G, n_dir, rev_only, layout, lbr, input_forget, S, Bt, I, H, clip, acts, per_dir,
                 X, W, R, B, SL, H0, C0, P};
  return NBL_OK;
}

static nbl_status k_rnn_common(nbl_kctx *c, rnn_kind kind, int fast) {
  rnn_cfg cfg = {0};
  act_fn acts[6];
  nbl_status st = rnn_setup(c, kind, &cfg, acts);
  if (st) return st;
  const int G = cfg.G, n_dir = cfg.n_dir, rev_only = cfg.rev_only, layout = cfg.layout, lbr = cfg.lbr,
            input_forget = cfg.input_forget, per_dir = cfg.per_dir;
  const int64_t S = cfg.S, Bt = cfg.Bt, I = cfg.I, H = cfg.H;
  const double clip = cfg.clip;
  const nbl_rt_tensor *X = cfg.X, *W = cfg.W, *R = cfg.R, *B = cfg.B, *SL = cfg.SL, *H0 = cfg.H0, *C0 = cfg.C0,
                      *P = cfg.P;
  int64_t ydims[4], hdims[3];
  if (layout) {
    ydims[0] = Bt, ydims[1] = S, ydims[2] = n_dir, ydims[3] = H;
    hdims[0] = Bt, hdims[1] = n_dir, hdims[2] = H;
  } else {
    ydims[0] = S, ydims[1] = n_dir, ydims[2] = Bt, ydims[3] = H;
    hdims[0] = n_dir, hdims[1] = Bt, hdims[2] = H;
  }
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, 4, ydims))) return st;
  if (c->n_out > 1 && (st = nbl_kctx_alloc_out(c, 1, X->dtype, 3, hdims))) return st;
  if (kind == RK_LSTM && c->n_out > 2 && (st = nbl_kctx_alloc_out(c, 2, X->dtype, 3, hdims))) return st;
  if (fast && X->dtype == NBL_DT_FLOAT) return rnn_fast(c, &cfg);

  double *x = nbl_to_f64(X), *w = nbl_to_f64(W), *r = nbl_to_f64(R), *bb = B ? nbl_to_f64(B) : NULL,
         *h0 = H0 ? nbl_to_f64(H0) : NULL, *c0 = C0 ? nbl_to_f64(C0) : NULL, *p = P ? nbl_to_f64(P) : NULL;
  size_t ny = (size_t)(S * n_dir * Bt * H), nh = (size_t)(n_dir * Bt * H);
  double *y = calloc(ny ? ny : 1, sizeof(double)), *yh = calloc(nh ? nh : 1, sizeof(double)),
         *yc = calloc(nh ? nh : 1, sizeof(double));
  double *gx = malloc(sizeof(double) * (size_t)(G * H + 1)), *gh = malloc(sizeof(double) * (size_t)(G * H + 1)),
         *h = malloc(sizeof(double) * (size_t)(H + 1)), *cs = malloc(sizeof(double) * (size_t)(H + 1)),
         *tmp = malloc(sizeof(double) * (size_t)(H + 1));
  if (!x || !w || !r || (B && !bb) || (H0 && !h0) || (C0 && !c0) || (P && !p) || !y || !yh || !yc || !gx ||
      !gh || !h || !cs || !tmp) {
    st = oom(c);
    goto done;
  }
  for (int d = 0; d < n_dir; d++) {
    int reverse = rev_only || d == 1;
    const double *wd = w + (size_t)d * G * H * I, *rd = r + (size_t)d * G * H * H;
    const double *wb = bb ? bb + (size_t)d * 2 * G * H : NULL, *rb = wb ? wb + G * H : NULL;
    const double *pd = p ? p + (size_t)d * 3 * H : NULL;
    const act_fn *af = &acts[d * per_dir];
    for (int64_t b = 0; b < Bt; b++) {
      int64_t len = SL ? nbl_rt_get_i64(SL, b) : S;
      size_t sidx = layout ? (size_t)((b * n_dir + d) * H) : (size_t)((d * Bt + b) * H);
      for (int64_t j = 0; j < H; j++) {
        h[j] = h0 ? h0[sidx + j] : 0.0;
        cs[j] = c0 ? c0[sidx + j] : 0.0;
      }
      for (int64_t s = 0; s < len; s++) {
        int64_t t = reverse ? len - 1 - s : s;
        const double *xt = x + (layout ? (size_t)((b * S + t) * I) : (size_t)((t * Bt + b) * I));
        for (int64_t k = 0; k < G * H; k++) {
          double ax = wb ? wb[k] : 0.0, ah = rb ? rb[k] : 0.0;
          const double *wk = wd + k * I, *rk = rd + k * H;
          for (int64_t i = 0; i < I; i++) ax += wk[i] * xt[i];
          if (!(kind == RK_GRU && k >= 2 * H && !lbr))
            for (int64_t i = 0; i < H; i++) ah += rk[i] * h[i];
          gx[k] = ax;
          gh[k] = ah;
        }
        if (kind == RK_RNN) {
          for (int64_t j = 0; j < H; j++) h[j] = act_apply(&af[0], clipv(gx[j] + gh[j], clip));
        } else if (kind == RK_GRU) {
          double *z = tmp;
          for (int64_t j = 0; j < H; j++) z[j] = act_apply(&af[0], clipv(gx[j] + gh[j], clip));
          double *rr = gx + H; /* reuse: rr[j] = r gate */
          for (int64_t j = 0; j < H; j++) rr[j] = act_apply(&af[0], clipv(gx[H + j] + gh[H + j], clip));
          /* candidate */
          double *hc = gh; /* reuse first H of gh as candidate */
          for (int64_t j = 0; j < H; j++) {
            double v;
            if (lbr) {
              v = gx[2 * H + j] + rr[j] * gh[2 * H + j];
            } else {
              double ah = rb ? rb[2 * H + j] : 0.0;
              const double *rk = rd + (2 * H + j) * H;
              for (int64_t i = 0; i < H; i++) ah += rk[i] * (rr[i] * h[i]);
              v = gx[2 * H + j] + ah;
            }
            hc[j] = act_apply(&af[1], clipv(v, clip));
          }
          for (int64_t j = 0; j < H; j++) h[j] = (1.0 - z[j]) * hc[j] + z[j] * h[j];
        } else { /* LSTM: gates i, o, f, c */
          for (int64_t j = 0; j < H; j++) {
            double vi = gx[j] + gh[j], vo = gx[H + j] + gh[H + j], vf = gx[2 * H + j] + gh[2 * H + j],
                   vc = gx[3 * H + j] + gh[3 * H + j];
            if (pd) {
              vi += pd[j] * cs[j];
              vf += pd[2 * H + j] * cs[j];
            }
            double gi = act_apply(&af[0], clipv(vi, clip));
            double gf = input_forget ? 1.0 - gi : act_apply(&af[0], clipv(vf, clip));
            double gc = act_apply(&af[1], clipv(vc, clip));
            double cn = gf * cs[j] + gi * gc;
            if (pd) vo += pd[H + j] * cn;
            double go = act_apply(&af[0], clipv(vo, clip));
            cs[j] = cn;
            h[j] = go * act_apply(&af[2], cn);
          }
        }
        double *yt = y + (layout ? (size_t)(((b * S + t) * n_dir + d) * H) : (size_t)(((t * n_dir + d) * Bt + b) * H));
        memcpy(yt, h, sizeof(double) * (size_t)H);
      }
      memcpy(yh + sidx, h, sizeof(double) * (size_t)H);
      memcpy(yc + sidx, cs, sizeof(double) * (size_t)H);
    }
  }
  nbl_from_f64(nbl_kctx_out(c, 0), y);
  if (c->n_out > 1) nbl_from_f64(nbl_kctx_out(c, 1), yh);
  if (kind == RK_LSTM && c->n_out > 2) nbl_from_f64(nbl_kctx_out(c, 2), yc);
  st = NBL_OK;
done:
  free(x), free(w), free(r), free(bb), free(h0), free(c0), free(p);
  free(y), free(yh), free(yc), free(gx), free(gh), free(h), free(cs), free(tmp);
  return st;
}

static nbl_status k_rnn(nbl_kctx *c) { return k_rnn_common(c, RK_RNN, 0); }
static nbl_status k_gru(nbl_kctx *c) { return k_rnn_common(c, RK_GRU, 0); }
static nbl_status k_lstm(nbl_kctx *c) { return k_rnn_common(c, RK_LSTM, 0); }
static nbl_status k_rnn_fast(nbl_kctx *c) { return k_rnn_common(c, RK_RNN, 1); }
static nbl_status k_gru_fast(nbl_kctx *c) { return k_rnn_common(c, RK_GRU, 1); }
static nbl_status k_lstm_fast(nbl_kctx *c) { return k_rnn_common(c, RK_LSTM, 1); }

/* ------------------------------------------------------------------ backward ops */

/* f'(x) of an activation (at the clipped pre-activation x). */
static double act_deriv(const act_fn *a, double x) {
  switch (a->kind) {
  case ACT_SIGMOID: {
    double s = act_apply(a, x);
    return s * (1.0 - s);
  }
  case ACT_TANH: {
    double t = tanh(x);
    return 1.0 - t * t;
  }
  case ACT_RELU: return x > 0 ? 1.0 : 0.0;
  case ACT_AFFINE: return a->alpha;
  case ACT_LEAKYRELU: return x >= 0 ? 1.0 : a->alpha;
  case ACT_THRESHRELU: return x > a->alpha ? 1.0 : 0.0;
  case ACT_SCALEDTANH: {
    double t = tanh(a->beta * x);
    return a->alpha * a->beta * (1.0 - t * t);
  }
  case ACT_HARDSIGMOID: {
    double v = a->alpha * x + a->beta;
    return v > 0 && v < 1 ? a->alpha : 0.0;
  }
  case ACT_ELU: return x >= 0 ? 1.0 : a->alpha * exp(x);
  case ACT_SOFTSIGN: return 1.0 / ((1.0 + fabs(x)) * (1.0 + fabs(x)));
  case ACT_SOFTPLUS: return x > 30 ? 1.0 : 1.0 / (1.0 + exp(-x));
  }
  return 1.0;
}

/* d f(clip(v)) / dv: 0 where the clip cut v. */
static double act_dclip(const act_fn *a, double v, double clip) {
  if (clip > 0 && (v < -clip || v > clip)) return 0.0;
  return act_deriv(a, v);
}

/* RNNGrad / GRUGrad / LSTMGrad (ai.nibble 1): the forward's inputs 0-7 (X,
 * W, R, B, sequence_lens, initial_h, initial_c, P; the last two LSTM's),
 * then the gradients of its outputs (Y, Y_h, Y_c; each may be omitted:
 * zero) -> the gradients of X, W, R, B, initial_h, initial_c, P (each
 * optional). The forward is recomputed in double for each direction and
 * batch element (its states and gate pre-activations kept), then
 * backpropagated through time; steps past a sequence's length take no
 * gradient, as they produce none. */
static nbl_status k_rnn_grad_common(nbl_kctx *c, rnn_kind kind) {
  rnn_cfg q = {0};
  act_fn acts[6];
  nbl_status st = rnn_setup(c, kind, &q, acts);
  if (st) return st;
  const int G = q.G, nd = q.n_dir, L = q.layout;
  const int64_t S = q.S, Bt = q.Bt, I = q.I, H = q.H, GH = G * H;
  const nbl_rt_tensor *dY = in_at(c, 8), *dYh = in_at(c, 9), *dYc = kind == RK_LSTM ? in_at(c, 10) : NULL;
  const int64_t ys = S * nd * Bt * H, hs = nd * Bt * H;
  if ((dY && (dY->dtype != q.X->dtype || dY->numel != ys)) || (dYh && (dYh->dtype != q.X->dtype || dYh->numel != hs)) ||
      (dYc && (dYc->dtype != q.X->dtype || dYc->numel != hs)))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "an output gradient does not have its output's shape and type");
  const nbl_rt_tensor *fw[8] = {q.X, q.W, q.R, q.B, NULL, q.H0, q.C0, q.P};
  static const int out_of_in[7] = {0, 1, 2, 3, 5, 6, 7};
  double *g[7] = {0}, *in[8] = {0}, *gy = NULL, *gyh = NULL, *gyc = NULL;
  for (int k = 0; k < 8; k++)
    if (fw[k] && !(in[k] = nbl_to_f64(fw[k]))) st = oom(c);
  if (!st && dY && !(gy = nbl_to_f64(dY))) st = oom(c);
  if (!st && dYh && !(gyh = nbl_to_f64(dYh))) st = oom(c);
  if (!st && dYc && !(gyc = nbl_to_f64(dYc))) st = oom(c);
  for (int k = 0; k < 7 && !st; k++) {
    const nbl_rt_tensor *src = fw[out_of_in[k]];
    if (k >= c->n_out || !c->out[k]) continue;
    if (!src) {
      st = nbl_kerr(c, NBL_ERR_INVALID_MODEL, "output %d asks for the gradient of an omitted input", k);
      break;
    }
    if ((st = nbl_kctx_alloc_out(c, k, q.X->dtype, src->rank, src->dims))) break;
    if (!(g[k] = calloc((size_t)(src->numel ? src->numel : 1), sizeof(double)))) st = oom(c);
  }
  /* per step: states before it, gate pre-activations (and GRU's recurrent candidate term) */
  const int64_t SS = S > 0 ? S : 1;
  double *hp = malloc(sizeof(double) * (size_t)(SS * H + 1)), *cp = malloc(sizeof(double) * (size_t)(SS * H + 1)),
         *vv = malloc(sizeof(double) * (size_t)(SS * GH + 1)), *qq = malloc(sizeof(double) * (size_t)(SS * H + 1)),
         *cn = malloc(sizeof(double) * (size_t)(SS * H + 1)), *h = malloc(sizeof(double) * (size_t)(H + 1)),
         *cs = malloc(sizeof(double) * (size_t)(H + 1)), *dh = malloc(sizeof(double) * (size_t)(H + 1)),
         *dc = malloc(sizeof(double) * (size_t)(H + 1)), *dv = malloc(sizeof(double) * (size_t)(GH + 1)),
         *dhp = malloc(sizeof(double) * (size_t)(H + 1)), *tmp = malloc(sizeof(double) * (size_t)(H + 1));
  if (!st && (!hp || !cp || !vv || !qq || !cn || !h || !cs || !dh || !dc || !dv || !dhp || !tmp)) st = oom(c);
  for (int d = 0; d < nd && !st; d++) {
    const int reverse = q.rev_only || d == 1;
    const double *wd = in[1] + (size_t)d * GH * I, *rd = in[2] + (size_t)d * GH * H;
    const double *wb = in[3] ? in[3] + (size_t)d * 2 * GH : NULL, *rb = wb ? wb + GH : NULL;
    const double *pd = in[7] ? in[7] + (size_t)d * 3 * H : NULL;
    double *gW = g[1] ? g[1] + (size_t)d * GH * I : NULL, *gR = g[2] ? g[2] + (size_t)d * GH * H : NULL;
    double *gB = g[3] ? g[3] + (size_t)d * 2 * GH : NULL, *gP = g[6] ? g[6] + (size_t)d * 3 * H : NULL;
    const act_fn *af = &q.acts[d * q.per_dir];
    const double clip = q.clip;
    for (int64_t b = 0; b < Bt; b++) {
      const int64_t len = q.SL ? nbl_rt_get_i64(q.SL, b) : S;
      const size_t sidx = L ? (size_t)((b * nd + d) * H) : (size_t)((d * Bt + b) * H);
#define XAT(t) (in[0] + (L ? (size_t)((b * S + (t)) * I) : (size_t)(((t) * Bt + b) * I)))
#define YAT(t) (L ? (size_t)((((b * S + (t)) * nd) + d) * H) : (size_t)((((t) * nd + d) * Bt + b) * H))
      for (int64_t j = 0; j < H; j++) {
        h[j] = in[5] ? in[5][sidx + j] : 0.0;
        cs[j] = in[6] ? in[6][sidx + j] : 0.0;
      }
      for (int64_t s = 0; s < len; s++) { /* forward, keeping what the backward needs */
        const int64_t t = reverse ? len - 1 - s : s;
        const double *xt = XAT(t);
        double *v = vv + s * GH;
        memcpy(hp + s * H, h, sizeof(double) * (size_t)H);
        memcpy(cp + s * H, cs, sizeof(double) * (size_t)H);
        for (int64_t k = 0; k < GH; k++) {
          double ax = wb ? wb[k] + rb[k] : 0.0;
          for (int64_t i = 0; i < I; i++) ax += wd[k * I + i] * xt[i];
          if (!(kind == RK_GRU && k >= 2 * H)) /* GRU's candidate: its recurrent term below */
            for (int64_t i = 0; i < H; i++) ax += rd[k * H + i] * h[i];
          v[k] = ax;
        }
        if (kind == RK_RNN) {
          for (int64_t j = 0; j < H; j++) h[j] = act_apply(&af[0], clipv(v[j], clip));
        } else if (kind == RK_GRU) {
          for (int64_t j = 0; j < H; j++) {
            const double r = act_apply(&af[0], clipv(v[H + j], clip));
            double a = rb ? rb[2 * H + j] : 0.0;
            if (q.lbr) {
              for (int64_t i = 0; i < H; i++) a += rd[(2 * H + j) * H + i] * h[i];
              qq[s * H + j] = a; /* R_h h + Rb_h, which r scales */
              v[2 * H + j] = v[2 * H + j] - (rb ? rb[2 * H + j] : 0.0) + r * a;
            } else {
              for (int64_t i = 0; i < H; i++) a += rd[(2 * H + j) * H + i] * act_apply(&af[0], clipv(v[H + i], clip)) * h[i];
              v[2 * H + j] = v[2 * H + j] - (rb ? rb[2 * H + j] : 0.0) + a;
            }
          }
          for (int64_t j = 0; j < H; j++) {
            const double z = act_apply(&af[0], clipv(v[j], clip)), hc = act_apply(&af[1], clipv(v[2 * H + j], clip));
            tmp[j] = (1.0 - z) * hc + z * h[j];
          }
          memcpy(h, tmp, sizeof(double) * (size_t)H);
        } else {
          for (int64_t j = 0; j < H; j++) {
            if (pd) {
              v[j] += pd[j] * cs[j];
              v[2 * H + j] += pd[2 * H + j] * cs[j];
            }
            const double gi = act_apply(&af[0], clipv(v[j], clip));
            const double gf = q.input_forget ? 1.0 - gi : act_apply(&af[0], clipv(v[2 * H + j], clip));
            const double gc = act_apply(&af[1], clipv(v[3 * H + j], clip));
            const double cnew = gf * cs[j] + gi * gc;
            if (pd) v[H + j] += pd[H + j] * cnew;
            cn[s * H + j] = cs[j] = cnew;
            h[j] = act_apply(&af[0], clipv(v[H + j], clip)) * act_apply(&af[2], cnew);
          }
        }
      }
      for (int64_t j = 0; j < H; j++) {
        dh[j] = gyh ? gyh[sidx + j] : 0.0;
        dc[j] = gyc ? gyc[sidx + j] : 0.0;
      }
      for (int64_t s = len - 1; s >= 0; s--) { /* back through time */
        const int64_t t = reverse ? len - 1 - s : s;
        const double *xt = XAT(t), *v = vv + s * GH, *hq = hp + s * H, *cq = cp + s * H;
        if (gy)
          for (int64_t j = 0; j < H; j++) dh[j] += gy[YAT(t) + j];
        for (int64_t j = 0; j < H; j++) dhp[j] = 0.0;
        if (kind == RK_RNN) {
          for (int64_t j = 0; j < H; j++) dv[j] = dh[j] * act_dclip(&af[0], v[j], clip);
        } else if (kind == RK_GRU) {
          for (int64_t j = 0; j < H; j++) {
            const double z = act_apply(&af[0], clipv(v[j], clip)), r = act_apply(&af[0], clipv(v[H + j], clip));
            const double hc = act_apply(&af[1], clipv(v[2 * H + j], clip));
            dhp[j] += dh[j] * z;
            dv[j] = dh[j] * (hq[j] - hc) * act_dclip(&af[0], v[j], clip);
            dv[2 * H + j] = dh[j] * (1.0 - z) * act_dclip(&af[1], v[2 * H + j], clip);
            tmp[j] = r; /* r, for the candidate's recurrent term */
          }
          for (int64_t j = 0; j < H; j++) dv[H + j] = 0.0;
          for (int64_t j = 0; j < H; j++) { /* the candidate's recurrent term */
            const double dvh = dv[2 * H + j];
            if (q.lbr) { /* vh = ... + r_j (R_h h + Rb_h)_j */
              dv[H + j] += dvh * qq[s * H + j];
              const double dq = dvh * tmp[j];
              if (gB) gB[GH + 2 * H + j] += dq;
              for (int64_t i = 0; i < H; i++) {
                if (gR) gR[(2 * H + j) * H + i] += dq * hq[i];
                dhp[i] += dq * rd[(2 * H + j) * H + i];
              }
            } else { /* vh = ... + (R_h (r . h))_j + Rb_h */
              if (gB) gB[GH + 2 * H + j] += dvh;
              for (int64_t i = 0; i < H; i++) {
                if (gR) gR[(2 * H + j) * H + i] += dvh * tmp[i] * hq[i];
                const double du = dvh * rd[(2 * H + j) * H + i];
                dv[H + i] += du * hq[i]; /* dr_i, before r's derivative */
                dhp[i] += du * tmp[i];
              }
            }
          }
          for (int64_t j = 0; j < H; j++) dv[H + j] *= act_dclip(&af[0], v[H + j], clip);
        } else {
          for (int64_t j = 0; j < H; j++) {
            const double gi = act_apply(&af[0], clipv(v[j], clip));
            const double gf = q.input_forget ? 1.0 - gi : act_apply(&af[0], clipv(v[2 * H + j], clip));
            const double gc = act_apply(&af[1], clipv(v[3 * H + j], clip));
            const double go = act_apply(&af[0], clipv(v[H + j], clip)), c1 = cn[s * H + j];
            const double dvo = dh[j] * act_apply(&af[2], c1) * act_dclip(&af[0], v[H + j], clip);
            double dcn = dc[j] + dh[j] * go * act_deriv(&af[2], c1) + (pd ? dvo * pd[H + j] : 0.0);
            double dgi = dcn * gc, dgf = dcn * cq[j];
            const double dgc = dcn * gi;
            if (q.input_forget) dgi -= dgf, dgf = 0.0;
            const double dvi = dgi * act_dclip(&af[0], v[j], clip);
            const double dvf = q.input_forget ? 0.0 : dgf * act_dclip(&af[0], v[2 * H + j], clip);
            dv[j] = dvi, dv[H + j] = dvo, dv[2 * H + j] = dvf;
            dv[3 * H + j] = dgc * act_dclip(&af[1], v[3 * H + j], clip);
            dc[j] = dcn * gf + (pd ? dvi * pd[j] + dvf * pd[2 * H + j] : 0.0);
            if (gP) {
              gP[j] += dvi * cq[j];
              gP[H + j] += dvo * c1;
              gP[2 * H + j] += dvf * cq[j];
            }
          }
        }
        double *gx = g[0] ? g[0] + (XAT(t) - in[0]) : NULL;
        for (int64_t k = 0; k < GH; k++) {
          const double e = dv[k];
          if (e == 0.0) continue;
          if (gB) {
            gB[k] += e;
            if (!(kind == RK_GRU && k >= 2 * H)) gB[GH + k] += e;
          }
          for (int64_t i = 0; i < I; i++) {
            if (gW) gW[k * I + i] += e * xt[i];
            if (gx) gx[i] += e * wd[k * I + i];
          }
          if (kind == RK_GRU && k >= 2 * H) continue; /* done above */
          for (int64_t i = 0; i < H; i++) {
            if (gR) gR[k * H + i] += e * hq[i];
            dhp[i] += e * rd[k * H + i];
          }
        }
        memcpy(dh, dhp, sizeof(double) * (size_t)H);
      }
      for (int64_t j = 0; j < H; j++) {
        if (g[4]) g[4][sidx + j] = dh[j];
        if (g[5]) g[5][sidx + j] = dc[j];
      }
#undef XAT
#undef YAT
    }
  }
  for (int k = 0; k < 7 && !st; k++)
    if (g[k]) nbl_from_f64(nbl_kctx_out(c, k), g[k]);
  for (int k = 0; k < 8; k++) free(in[k]);
  for (int k = 0; k < 7; k++) free(g[k]);
  free(gy), free(gyh), free(gyc), free(hp), free(cp), free(vv), free(qq), free(cn), free(h), free(cs);
  free(dh), free(dc), free(dv), free(dhp), free(tmp);
  return st;
}

static nbl_status k_rnn_grad(nbl_kctx *c) { return k_rnn_grad_common(c, RK_RNN); }
static nbl_status k_gru_grad(nbl_kctx *c) { return k_rnn_grad_common(c, RK_GRU); }
static nbl_status k_lstm_grad(nbl_kctx *c) { return k_rnn_grad_common(c, RK_LSTM); }

/* RNN / GRU / LSTM: ai.nibble RNNGrad / GRUGrad / LSTMGrad on the node's
 * inputs and its outputs' gradients, with its attributes. */
static nbl_status g_recurrent(nbl_grad_ctx *gc) {
  const nbl_node *n = nbl_grad_node(gc);
  nbl_grad_no_dx(gc, 4, "sequence_lens are integers");
  int want[7] = {0}, any = 0;
  static const int in_of_out[7] = {0, 1, 2, 3, 5, 6, 7};
  for (int k = 0; k < 7; k++) any |= want[k] = in_of_out[k] < nbl_grad_n_in(gc) && nbl_grad_wants(gc, in_of_out[k]);
  if (!any) return nbl_grad_status(gc);
  nbl_id in[11];
  for (int k = 0; k < 8; k++) in[k] = k < nbl_grad_n_in(gc) ? nbl_grad_x(gc, k) : NBL_NONE;
  for (int k = 0; k < 3; k++) in[8 + k] = k < nbl_grad_n_out(gc) ? nbl_grad_dy(gc, k) : NBL_NONE;
  char op[16];
  snprintf(op, sizeof op, "%sGrad", n->op_type);
  nbl_id out[7];
  nbl_grad_opn(gc, op, "ai.nibble", NULL, 11, in, 7, want, out);
  nbl_grad_attr_copy(gc, NULL);
  for (int k = 0; k < 7; k++)
    if (want[k]) nbl_grad_set_dx(gc, in_of_out[k], out[k]);
  return nbl_grad_status(gc);
}

/* The gradients: each output k has the shape and type of forward input
 * 0, 1, 2, 3, 5, 6, 7. */
static nbl_status shape_rnn_grad(nbl_shape_ctx *c) {
  static const int in_of_out[7] = {0, 1, 2, 3, 5, 6, 7};
  nbl_status st = NBL_OK;
  for (int k = 0; k < 7 && !st; k++) st = nbl_shp_copy_in(c, k, in_of_out[k]);
  return st;
}

/* ------------------------------------------------------------------ shape rules */

/* RNN (G = 1), GRU (3), LSTM (4): X is [seq, batch, input] (layout 0) or
 * [batch, seq, input] (layout 1); hidden_size from the attribute or W
 * ([dirs, G * hidden, input]). Y is [seq, dirs, batch, hidden] (layout 0) or
 * [batch, seq, dirs, hidden]; Y_h and LSTM's Y_c [dirs, batch, hidden] or
 * [batch, dirs, hidden]. */
static nbl_status shape_recurrent(nbl_shape_ctx *c, int G) {
  nbl_shp x, w, r, y, h;
  nbl_shp_in(c, 0, &x);
  nbl_shp_in(c, 1, &w);
  nbl_shp_in(c, 2, &r);
  int64_t layout = nbl_attr_int(c->node, "layout", 0);
  const char *dir = nbl_attr_string(c->node, "direction", "forward");
  if (layout != 0 && layout != 1) {
    nbl_status st = nbl_shp_set_dt(c, 0, x.dt, 4);
    for (int k = 1; k < 3 && !st; k++) st = nbl_shp_set_dt(c, k, x.dt, 3);
    return st;
  }
  nbl_dim nd = !strcmp(dir, "bidirectional") ? nbl_dim_val(2)
               : !strcmp(dir, "forward") || !strcmp(dir, "reverse") ? nbl_dim_val(1)
                                                                    : nbl_dim_unk();
  nbl_dim H = nbl_dim_unk(), S = nbl_dim_unk(), B = nbl_dim_unk();
  const nbl_attr *hs = nbl_node_attr(c->node, "hidden_size");
  if (hs) H = hs->i >= 0 ? nbl_dim_val(hs->i) : nbl_dim_unk();
  else if (w.rank == 3 && nbl_dim_known(w.d[1])) H = nbl_dim_val(w.d[1].value / G);
  else if (r.rank == 3) H = r.d[2];
  if (x.rank == 3) {
    S = x.d[layout ? 1 : 0];
    B = x.d[layout ? 0 : 1];
  }
  y.dt = h.dt = x.dt;
  y.rank = 4;
  h.rank = 3;
  if (layout) {
    y.d[0] = B, y.d[1] = S, y.d[2] = nd, y.d[3] = H;
    h.d[0] = B, h.d[1] = nd, h.d[2] = H;
  } else {
    y.d[0] = S, y.d[1] = nd, y.d[2] = B, y.d[3] = H;
    h.d[0] = nd, h.d[1] = B, h.d[2] = H;
  }
  nbl_status st = nbl_shp_set(c, 0, &y);
  if (!st) st = nbl_shp_set(c, 1, &h);
  if (!st && G == 4) st = nbl_shp_set(c, 2, &h);
  return st;
}

static nbl_status shape_rnn(nbl_shape_ctx *c) { return shape_recurrent(c, 1); }
static nbl_status shape_gru(nbl_shape_ctx *c) { return shape_recurrent(c, 3); }
static nbl_status shape_lstm(nbl_shape_ctx *c) { return shape_recurrent(c, 4); }

/* ------------------------------------------------------------------ table */

const nbl_op_def nbl_ops_rnn[] = {
    NBL_OP("RNN", 1, .ref = k_rnn, .fast = k_rnn_fast, .shape = shape_rnn, .stable_since = 7, .grad = g_recurrent),
    NBL_OP("GRU", 1, .ref = k_gru, .fast = k_gru_fast, .shape = shape_gru, .stable_since = 7, .grad = g_recurrent),
    NBL_OP("LSTM", 1, .ref = k_lstm, .fast = k_lstm_fast, .shape = shape_lstm, .stable_since = 7, .grad = g_recurrent),
    NBL_OP_DEF("ai.nibble", "RNNGrad", 1, 1, .ref = k_rnn_grad, .shape = shape_rnn_grad, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF("ai.nibble", "GRUGrad", 1, 1, .ref = k_gru_grad, .shape = shape_rnn_grad, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF("ai.nibble", "LSTMGrad", 1, 1, .ref = k_lstm_grad, .shape = shape_rnn_grad, .no_grad = NBL_NO_GRAD_BACKWARD),
};
const size_t nbl_ops_rnn_count = sizeof nbl_ops_rnn / sizeof nbl_ops_rnn[0];
