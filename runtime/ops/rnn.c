/* runtime/ops/rnn.c - op family 'rnn': recurrent layers (RNN, GRU, LSTM) with
 * every activation, direction and layout (see kernel.h for the kernel
 * contract); the fast kernels run the input and hidden products on GEMM.
 *
 * These kernels are reference kernels: inputs are converted to double, the
 * computation runs in double and the result is converted back to the output's
 * element type (float, double or float16). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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

static nbl_status k_rnn_common(nbl_kctx *c, rnn_kind kind, int fast) {
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
  act_fn acts[6];
  if ((st = rnn_activations(c, per_dir, n_dir, acts,
                            kind == RK_RNN ? def_rnn : (kind == RK_GRU ? def_gru : def_lstm))))
    return st;
  const nbl_attr *clip_attr = nbl_node_attr(c->node, "clip");
  double clip = clip_attr ? clip_attr->f : 0.0;
  int lbr = kind == RK_GRU && nbl_attr_int(c->node, "linear_before_reset", 0) != 0;
  int input_forget = kind == RK_LSTM && nbl_attr_int(c->node, "input_forget", 0) != 0;

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
  if (fast && X->dtype == NBL_DT_FLOAT) {
    rnn_cfg q = {kind, G, n_dir, rev_only, layout, lbr, input_forget, S, Bt, I, H, clip, acts, per_dir,
                 X, W, R, B, SL, H0, C0, P};
    return rnn_fast(c, &q);
  }

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
    NBL_OP("RNN", 1, .ref = k_rnn, .fast = k_rnn_fast, .shape = shape_rnn, .stable_since = 7, .no_grad = "no rule yet"),
    NBL_OP("GRU", 1, .ref = k_gru, .fast = k_gru_fast, .shape = shape_gru, .stable_since = 7, .no_grad = "no rule yet"),
    NBL_OP("LSTM", 1, .ref = k_lstm, .fast = k_lstm_fast, .shape = shape_lstm, .stable_since = 7, .no_grad = "no rule yet"),
};
const size_t nbl_ops_rnn_count = sizeof nbl_ops_rnn / sizeof nbl_ops_rnn[0];
