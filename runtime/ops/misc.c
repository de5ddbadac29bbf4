/* runtime/ops/misc.c - op family 'misc': recurrent layers (RNN, GRU, LSTM), signal
 * processing (DFT, STFT, windows, MelWeightMatrix), detection (NonMaxSuppression,
 * RoiAlign), GridSample, Det and TfIdfVectorizer (see kernel.h for the kernel
 * contract).
 *
 * These kernels are reference kernels: inputs are converted to double, the
 * computation runs in double and the result is converted back to the output's
 * element type (float, double or float16). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "runtime/kernels/gemm.h"
#include "runtime/core/kernel.h"

/* ------------------------------------------------------------------ helpers */

static const nbl_rt_tensor *in_at(nbl_kctx *c, int i) { return i < c->n_in ? c->in[i] : NULL; }

static int is_float(nbl_dtype t) {
  return t == NBL_DT_FLOAT || t == NBL_DT_DOUBLE || t == NBL_DT_FLOAT16 || t == NBL_DT_BFLOAT16;
}
static int is_int(nbl_dtype t) {
  return t == NBL_DT_INT8 || t == NBL_DT_UINT8 || t == NBL_DT_INT16 || t == NBL_DT_UINT16 ||
         t == NBL_DT_INT32 || t == NBL_DT_UINT32 || t == NBL_DT_INT64 || t == NBL_DT_UINT64;
}

static nbl_status oom(nbl_kctx *c) { return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory"); }

static nbl_status need_in(nbl_kctx *c, int i, const char *what) {
  if (!in_at(c, i))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "required input %d (%s) is missing", i, what);
  return NBL_OK;
}

static nbl_status need_float(nbl_kctx *c, const nbl_rt_tensor *t, const char *what) {
  if (!is_float(t->dtype))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED,
                    "input %s has element type %s; supported: float, double, float16, bfloat16", what,
                    nbl_dtype_name(t->dtype));
  return NBL_OK;
}

static nbl_status need_rank(nbl_kctx *c, const nbl_rt_tensor *t, int rank, const char *what) {
  if (t->rank != rank)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %s has rank %d, expected %d", what, t->rank, rank);
  return NBL_OK;
}

/* A scalar (or one-element) integer input as int64. */
static nbl_status scalar_i64(nbl_kctx *c, const nbl_rt_tensor *t, const char *what, int64_t *v) {
  if (t->numel != 1 || !(is_int(t->dtype)))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %s must be one integer value (got %s, %lld elements)",
                    what, nbl_dtype_name(t->dtype), (long long)t->numel);
  *v = nbl_rt_get_i64(t, 0);
  return NBL_OK;
}
/* A scalar (or one-element) numeric input as double. */
static nbl_status scalar_f64(nbl_kctx *c, const nbl_rt_tensor *t, const char *what, double *v) {
  if (t->numel != 1 || !(is_int(t->dtype) || is_float(t->dtype)))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %s must be one numeric value (got %s, %lld elements)",
                    what, nbl_dtype_name(t->dtype), (long long)t->numel);
  *v = nbl_rt_get_f64(t, 0);
  return NBL_OK;
}

/* Output element type from the 'output_datatype' attribute (float types only). */
static nbl_status out_dtype_attr(nbl_kctx *c, nbl_dtype *dt) {
  int64_t v = nbl_attr_int(c->node, "output_datatype", NBL_DT_FLOAT);
  nbl_dtype d = (nbl_dtype)v;
  if (!(is_float(d) || is_int(d)))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "output_datatype %lld is not supported", (long long)v);
  *dt = d;
  return NBL_OK;
}

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
  if ((st = need_in(c, 0, "X")) || (st = need_in(c, 1, "W")) || (st = need_in(c, 2, "R"))) return st;
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

/* ------------------------------------------------------------------ Det */

/* Det: determinant of each trailing [M, M] matrix (LU with partial pivoting). */
static nbl_status k_det(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_in(c, 0, "X"))) return st;
  const nbl_rt_tensor *X = c->in[0];
  if ((st = need_float(c, X, "X"))) return st;
  if (X->rank < 2 || X->dims[X->rank - 1] != X->dims[X->rank - 2])
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input X must have shape [*, M, M] (rank %d)", X->rank);
  int64_t M = X->dims[X->rank - 1], nb = 1;
  for (int i = 0; i < X->rank - 2; i++) nb *= X->dims[i];
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, X->rank - 2, X->dims))) return st;
  double *x = nbl_to_f64(X), *out = malloc(sizeof(double) * (size_t)(nb ? nb : 1));
  if (!x || !out) {
    free(x), free(out);
    return oom(c);
  }
  for (int64_t b = 0; b < nb; b++) {
    double *a = x + b * M * M, det = 1.0;
    for (int64_t k = 0; k < M; k++) {
      int64_t piv = k;
      for (int64_t i = k + 1; i < M; i++)
        if (fabs(a[i * M + k]) > fabs(a[piv * M + k])) piv = i;
      if (piv != k) {
        for (int64_t j = 0; j < M; j++) {
          double t = a[k * M + j];
          a[k * M + j] = a[piv * M + j];
          a[piv * M + j] = t;
        }
        det = -det;
      }
      double d = a[k * M + k];
      det *= d;
      if (d == 0.0) break;
      for (int64_t i = k + 1; i < M; i++) {
        double f = a[i * M + k] / d;
        for (int64_t j = k; j < M; j++) a[i * M + j] -= f * a[k * M + j];
      }
    }
    out[b] = det;
  }
  nbl_from_f64(nbl_kctx_out(c, 0), out);
  free(x), free(out);
  return NBL_OK;
}

/* ------------------------------------------------------------------ windows */

static nbl_status window_common(nbl_kctx *c, double a0, double a1, double a2) {
  nbl_status st;
  int64_t size;
  nbl_dtype dt;
  if ((st = need_in(c, 0, "size")) || (st = scalar_i64(c, c->in[0], "size", &size)) ||
      (st = out_dtype_attr(c, &dt)))
    return st;
  if (size < 0 || size > ((int64_t)1 << 32))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "size %lld is negative or too large", (long long)size);
  int periodic = nbl_attr_int(c->node, "periodic", 1) != 0;
  int64_t dims[1] = {size};
  if ((st = nbl_kctx_alloc_out(c, 0, dt, 1, dims))) return st;
  double *v = malloc(sizeof(double) * (size_t)(size ? size : 1));
  if (!v) return oom(c);
  double N = periodic ? (double)size : (double)(size - 1);
  for (int64_t n = 0; n < size; n++) {
    double t = N > 0 ? 2.0 * M_PI * (double)n / N : 0.0;
    v[n] = a0 - a1 * cos(t) + a2 * cos(2.0 * t);
  }
  nbl_from_f64(nbl_kctx_out(c, 0), v);
  free(v);
  return NBL_OK;
}

static nbl_status k_hann(nbl_kctx *c) { return window_common(c, 0.5, 0.5, 0.0); }
static nbl_status k_hamming(nbl_kctx *c) { return window_common(c, 25.0 / 46.0, 21.0 / 46.0, 0.0); }
static nbl_status k_blackman(nbl_kctx *c) { return window_common(c, 0.42, 0.5, 0.08); }

/* ------------------------------------------------------------------ DFT, STFT */

/* Twiddle table: tw[2e], tw[2e+1] = cos, sin of 2*pi*e/n, e < n (malloc'd). */
static double *dft_twiddles(int64_t n) {
  double *tw = malloc(sizeof(double) * (size_t)(2 * n));
  if (tw)
    for (int64_t e = 0; e < n; e++) {
      tw[2 * e] = cos(2.0 * M_PI * (double)e / (double)n);
      tw[2 * e + 1] = sin(2.0 * M_PI * (double)e / (double)n);
    }
  return tw;
}

/* out[k] = sum_j in[j] * exp(sign * 2*pi*i*j*k/n) for k < n_out; in has n_in
 * complex values (zero beyond), stride 1 (interleaved re, im); tw from dft_twiddles(n). */
static void dft_1d(const double *in, int64_t n_in, int64_t n, int64_t n_out, int inverse, const double *tw,
                   double *out) {
  double sign = inverse ? 1.0 : -1.0;
  int64_t m = n_in < n ? n_in : n;
  for (int64_t k = 0; k < n_out; k++) {
    double re = 0, im = 0;
    int64_t e = 0, step = k % n;
    for (int64_t j = 0; j < m; j++, e = (e + step) % n) {
      double cr = tw[2 * e], ci = sign * tw[2 * e + 1];
      re += in[2 * j] * cr - in[2 * j + 1] * ci;
      im += in[2 * j] * ci + in[2 * j + 1] * cr;
    }
    if (inverse) re /= (double)n, im /= (double)n;
    out[2 * k] = re;
    out[2 * k + 1] = im;
  }
}

static nbl_status k_dft(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_in(c, 0, "input"))) return st;
  const nbl_rt_tensor *X = c->in[0], *L = in_at(c, 1);
  if ((st = need_float(c, X, "input"))) return st;
  int r = X->rank;
  if (r < 2 || (X->dims[r - 1] != 1 && X->dims[r - 1] != 2))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input must have rank >= 2 and a last dimension of 1 or 2");
  int64_t axis = nbl_attr_int(c->node, "axis", 1);
  if (axis < 0) axis += r;
  if (axis < 0 || axis >= r - 1)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld is out of range for rank %d", (long long)axis, r);
  int inverse = nbl_attr_int(c->node, "inverse", 0) != 0, onesided = nbl_attr_int(c->node, "onesided", 0) != 0;
  int64_t n_sig = X->dims[axis], n = n_sig;
  if (L && (st = scalar_i64(c, L, "dft_length", &n))) return st;
  if (n < 1 || n > ((int64_t)1 << 32))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "dft_length %lld must be in [1, 2^32]", (long long)n);
  int cplx = X->dims[r - 1] == 2;
  if (onesided && cplx)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "onesided=1 requires a real input (last dimension 1)");
  int64_t n_out = onesided ? n / 2 + 1 : n;
  int64_t dims[NBL_MAX_RANK];
  memcpy(dims, X->dims, sizeof(int64_t) * (size_t)r);
  dims[axis] = n_out;
  dims[r - 1] = 2;
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, r, dims))) return st;
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < axis; i++) outer *= X->dims[i];
  for (int i = axis + 1; i < r - 1; i++) inner *= X->dims[i];
  double *x = nbl_to_f64(X), *y = malloc(sizeof(double) * (size_t)(outer * n_out * inner * 2 + 1)),
         *bi = malloc(sizeof(double) * (size_t)(2 * n_sig + 2)), *bo = malloc(sizeof(double) * (size_t)(2 * n_out + 2)),
         *tw = dft_twiddles(n);
  if (!x || !y || !bi || !bo || !tw) {
    free(x), free(y), free(bi), free(bo), free(tw);
    return oom(c);
  }
  int ch = cplx ? 2 : 1;
  for (int64_t o = 0; o < outer; o++)
    for (int64_t q = 0; q < inner; q++) {
      for (int64_t j = 0; j < n_sig; j++) {
        const double *s = x + ((o * n_sig + j) * inner + q) * ch;
        bi[2 * j] = s[0];
        bi[2 * j + 1] = cplx ? s[1] : 0.0;
      }
      dft_1d(bi, n_sig, n, n_out, inverse, tw, bo);
      for (int64_t k = 0; k < n_out; k++) {
        double *d = y + ((o * n_out + k) * inner + q) * 2;
        d[0] = bo[2 * k];
        d[1] = bo[2 * k + 1];
      }
    }
  nbl_from_f64(nbl_kctx_out(c, 0), y);
  free(x), free(y), free(bi), free(bo), free(tw);
  return NBL_OK;
}

static nbl_status k_stft(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_in(c, 0, "signal")) || (st = need_in(c, 1, "frame_step"))) return st;
  const nbl_rt_tensor *X = c->in[0], *Win = in_at(c, 2), *FL = in_at(c, 3);
  if ((st = need_float(c, X, "signal"))) return st;
  if (X->rank != 3 || (X->dims[2] != 1 && X->dims[2] != 2))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "signal must have shape [batch, length, 1 or 2]");
  int64_t step, flen = -1;
  if ((st = scalar_i64(c, c->in[1], "frame_step", &step))) return st;
  if (FL && (st = scalar_i64(c, FL, "frame_length", &flen))) return st;
  if (Win) {
    if (Win->rank != 1) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "window must be 1-D");
    if (flen >= 0 && flen != Win->dims[0])
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "window length %lld differs from frame_length %lld",
                      (long long)Win->dims[0], (long long)flen);
    flen = Win->dims[0];
  }
  if (flen < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "neither window nor frame_length is given");
  int64_t len = X->dims[1], nb = X->dims[0];
  if (step < 1 || flen < 1 || flen > len)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "frame_step %lld / frame_length %lld invalid for signal length %lld",
                    (long long)step, (long long)flen, (long long)len);
  int cplx = X->dims[2] == 2, onesided = nbl_attr_int(c->node, "onesided", 1) != 0;
  if (onesided && cplx)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "onesided=1 requires a real signal (last dimension 1)");
  int64_t frames = (len - flen) / step + 1, bins = onesided ? flen / 2 + 1 : flen;
  int64_t dims[4] = {nb, frames, bins, 2};
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, 4, dims))) return st;
  double *x = nbl_to_f64(X), *wv = Win ? nbl_to_f64(Win) : NULL,
         *y = malloc(sizeof(double) * (size_t)(nb * frames * bins * 2 + 1)),
         *bi = malloc(sizeof(double) * (size_t)(2 * flen)), *bo = malloc(sizeof(double) * (size_t)(2 * bins)),
         *tw = dft_twiddles(flen);
  if (!x || (Win && !wv) || !y || !bi || !bo || !tw) {
    free(x), free(wv), free(y), free(bi), free(bo), free(tw);
    return oom(c);
  }
  int ch = cplx ? 2 : 1;
  for (int64_t b = 0; b < nb; b++)
    for (int64_t f = 0; f < frames; f++) {
      for (int64_t j = 0; j < flen; j++) {
        const double *s = x + (b * len + f * step + j) * ch;
        double wj = wv ? wv[j] : 1.0;
        bi[2 * j] = s[0] * wj;
        bi[2 * j + 1] = cplx ? s[1] * wj : 0.0;
      }
      dft_1d(bi, flen, flen, bins, 0, tw, bo);
      memcpy(y + (b * frames + f) * bins * 2, bo, sizeof(double) * (size_t)(2 * bins));
    }
  nbl_from_f64(nbl_kctx_out(c, 0), y);
  free(x), free(wv), free(y), free(bi), free(bo), free(tw);
  return NBL_OK;
}

/* ------------------------------------------------------------------ MelWeightMatrix */

static nbl_status k_melweight(nbl_kctx *c) {
  nbl_status st;
  int64_t nmel, dftlen, rate;
  double lo, hi;
  nbl_dtype dt;
  for (int i = 0; i < 5; i++)
    if ((st = need_in(c, i, "MelWeightMatrix input"))) return st;
  if ((st = scalar_i64(c, c->in[0], "num_mel_bins", &nmel)) ||
      (st = scalar_i64(c, c->in[1], "dft_length", &dftlen)) ||
      (st = scalar_i64(c, c->in[2], "sample_rate", &rate)) ||
      (st = scalar_f64(c, c->in[3], "lower_edge_hertz", &lo)) ||
      (st = scalar_f64(c, c->in[4], "upper_edge_hertz", &hi)) || (st = out_dtype_attr(c, &dt)))
    return st;
  if (nmel < 1 || dftlen < 1 || nmel > ((int64_t)1 << 20) || dftlen > ((int64_t)1 << 30) || rate < 1 || lo < 0 || hi < lo || hi > rate / 2.0 + 1e-9)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "invalid arguments: num_mel_bins %lld, dft_length %lld, "
                    "sample_rate %lld, edges [%g, %g]", (long long)nmel, (long long)dftlen, (long long)rate, lo, hi);
  int64_t nspec = dftlen / 2 + 1;
  int64_t dims[2] = {nspec, nmel};
  if ((st = nbl_kctx_alloc_out(c, 0, dt, 2, dims))) return st;
  double *out = calloc((size_t)(nspec * nmel), sizeof(double));
  int64_t *fb = malloc(sizeof(int64_t) * (size_t)(nmel + 2));
  if (!out || !fb) {
    free(out), free(fb);
    return oom(c);
  }
  double lmel = 2595.0 * log10(1.0 + lo / 700.0), hmel = 2595.0 * log10(1.0 + hi / 700.0);
  double step = (hmel - lmel) / (double)(nmel + 2);
  for (int64_t i = 0; i < nmel + 2; i++) {
    double f = 700.0 * (pow(10.0, ((double)i * step + lmel) / 2595.0) - 1.0);
    fb[i] = (int64_t)floor((double)(dftlen + 1) * f / (double)rate);
    if (fb[i] < 0) fb[i] = 0;
    if (fb[i] > nspec - 1) fb[i] = nspec - 1;
  }
  for (int64_t i = 0; i < nmel; i++) {
    int64_t l = fb[i], ce = fb[i + 1], h = fb[i + 2];
    if (ce - l == 0) out[ce * nmel + i] = 1.0;
    else
      for (int64_t j = l; j <= ce; j++) out[j * nmel + i] = (double)(j - l) / (double)(ce - l);
    if (h - ce > 0)
      for (int64_t j = ce; j < h; j++) out[j * nmel + i] = (double)(h - j) / (double)(h - ce);
  }
  nbl_from_f64(nbl_kctx_out(c, 0), out);
  free(out), free(fb);
  return NBL_OK;
}

/* ------------------------------------------------------------------ NonMaxSuppression */

typedef struct nms_cand {
  double score;
  int64_t idx;
} nms_cand;

static int nms_cmp(const void *a, const void *b) {
  const nms_cand *x = a, *y = b;
  int xn = isnan(x->score), yn = isnan(y->score); /* NaN scores sort last */
  if (xn != yn) return xn - yn;
  if (!xn && x->score != y->score) return x->score > y->score ? -1 : 1;
  return x->idx < y->idx ? -1 : (x->idx > y->idx);
}

/* Corners (y1, x1, y2, x2) normalized so that y1 <= y2, x1 <= x2. */
static void nms_box(const double *b, int center, double *o) {
  if (center) {
    o[1] = b[0] - b[2] / 2, o[3] = b[0] + b[2] / 2;
    o[0] = b[1] - b[3] / 2, o[2] = b[1] + b[3] / 2;
  } else {
    o[0] = fmin(b[0], b[2]), o[2] = fmax(b[0], b[2]);
    o[1] = fmin(b[1], b[3]), o[3] = fmax(b[1], b[3]);
  }
}

/* 1 if IOU(a, b) > thr. */
static int nms_suppress(const double *a, const double *b, double thr) {
  double ymin = fmax(a[0], b[0]), xmin = fmax(a[1], b[1]), ymax = fmin(a[2], b[2]), xmax = fmin(a[3], b[3]);
  double inter = fmax(0.0, ymax - ymin) * fmax(0.0, xmax - xmin);
  if (inter <= 0) return 0;
  double aa = (a[2] - a[0]) * (a[3] - a[1]), ab = (b[2] - b[0]) * (b[3] - b[1]);
  if (aa <= 0 || ab <= 0) return 0;
  double uni = aa + ab - inter;
  return uni > 0 && inter / uni > thr;
}

static nbl_status k_nms(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_in(c, 0, "boxes")) || (st = need_in(c, 1, "scores"))) return st;
  const nbl_rt_tensor *Bx = c->in[0], *Sc = c->in[1], *Mx = in_at(c, 2), *Iou = in_at(c, 3), *Th = in_at(c, 4);
  if ((st = need_float(c, Bx, "boxes")) || (st = need_float(c, Sc, "scores"))) return st;
  if (Bx->rank != 3 || Bx->dims[2] != 4)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "boxes must have shape [batch, spatial, 4]");
  if (Sc->rank != 3 || Sc->dims[0] != Bx->dims[0] || Sc->dims[2] != Bx->dims[1])
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "scores must have shape [%lld, classes, %lld]",
                    (long long)Bx->dims[0], (long long)Bx->dims[1]);
  int64_t maxout = 0;
  double iou = 0.0, thr = 0.0;
  int has_thr = Th != NULL;
  if (Mx && Mx->numel > 0 && (st = scalar_i64(c, Mx, "max_output_boxes_per_class", &maxout))) return st;
  if (Iou && Iou->numel > 0 && (st = scalar_f64(c, Iou, "iou_threshold", &iou))) return st;
  if (Th && Th->numel > 0 && (st = scalar_f64(c, Th, "score_threshold", &thr))) return st;
  if (Th && Th->numel == 0) has_thr = 0;
  if (iou < 0 || iou > 1) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "iou_threshold %g is outside [0, 1]", iou);
  int center = nbl_attr_int(c->node, "center_point_box", 0) != 0;
  int64_t nb = Bx->dims[0], ns = Bx->dims[1], nc = Sc->dims[1];
  if (maxout < 0) maxout = 0;
  double *bx = nbl_to_f64(Bx), *sc = nbl_to_f64(Sc), *corners = malloc(sizeof(double) * (size_t)(4 * ns + 4));
  nms_cand *cand = malloc(sizeof(nms_cand) * (size_t)(ns + 1));
  int64_t *sel = malloc(sizeof(int64_t) * (size_t)(ns + 1)), cap = 64, nsel = 0;
  int64_t *res = malloc(sizeof(int64_t) * (size_t)cap * 3);
  if (!bx || !sc || !corners || !cand || !sel || !res) {
    st = oom(c);
    goto done;
  }
  for (int64_t b = 0; b < nb; b++) {
    for (int64_t i = 0; i < ns; i++) nms_box(bx + (b * ns + i) * 4, center, corners + 4 * i);
    for (int64_t k = 0; k < nc && maxout > 0; k++) {
      const double *s = sc + (b * nc + k) * ns;
      int64_t n = 0, m = 0;
      for (int64_t i = 0; i < ns; i++)
        if (!has_thr || s[i] > thr) cand[n].score = s[i], cand[n].idx = i, n++;
      qsort(cand, (size_t)n, sizeof *cand, nms_cmp);
      for (int64_t i = 0; i < n && m < maxout; i++) {
        const double *bi = corners + 4 * cand[i].idx;
        int keep = 1;
        for (int64_t j = 0; j < m && keep; j++)
          if (nms_suppress(corners + 4 * sel[j], bi, iou)) keep = 0;
        if (!keep) continue;
        sel[m++] = cand[i].idx;
        if (nsel == cap) {
          int64_t *nr = realloc(res, sizeof(int64_t) * (size_t)cap * 6);
          if (!nr) {
            st = oom(c);
            goto done;
          }
          res = nr, cap *= 2;
        }
        res[3 * nsel] = b, res[3 * nsel + 1] = k, res[3 * nsel + 2] = cand[i].idx;
        nsel++;
      }
    }
  }
  int64_t dims[2] = {nsel, 3};
  if ((st = nbl_kctx_alloc_out(c, 0, NBL_DT_INT64, 2, dims))) goto done;
  if (nsel) memcpy(nbl_kctx_out(c, 0)->data, res, sizeof(int64_t) * (size_t)(3 * nsel));
  st = NBL_OK;
done:
  free(bx), free(sc), free(corners), free(cand), free(sel), free(res);
  return st;
}

/* ------------------------------------------------------------------ GridSample */

enum { GS_BILINEAR, GS_NEAREST, GS_BICUBIC };
enum { GS_ZEROS, GS_BORDER, GS_REFLECTION };

static double gs_unnorm(double v, int64_t size, int ac) {
  return ac ? (v + 1.0) / 2.0 * (double)(size - 1) : ((v + 1.0) * (double)size - 1.0) / 2.0;
}

static double gs_reflect(double v, double tlo, double thi) {
  if (tlo == thi) return 0.0;
  double mn = tlo / 2, span = (thi - tlo) / 2;
  v = fabs(v - mn);
  double extra = fmod(v, span);
  int64_t flips = (int64_t)floor(v / span);
  return (flips % 2 == 0) ? extra + mn : span - extra + mn;
}

/* Apply the padding mode to a source coordinate (as PyTorch's grid_sampler_compute_source_index). */
static double gs_pad(double v, int64_t size, int pad, int ac) {
  if (pad == GS_BORDER) {
    v = fmin(fmax(v, 0.0), (double)(size - 1));
  } else if (pad == GS_REFLECTION) {
    v = ac ? gs_reflect(v, 0, 2.0 * (double)(size - 1)) : gs_reflect(v, -1, 2.0 * (double)size - 1);
    v = fmin(fmax(v, 0.0), (double)(size - 1));
  }
  return v;
}

/* Pixel (y, x) of an H x W image, 0 outside (coordinates are integral doubles). */
static double gs_at(const double *img, int64_t H, int64_t W, double y, double x) {
  if (!(y >= 0 && y < (double)H && x >= 0 && x < (double)W)) return 0.0;
  return img[(int64_t)y * W + (int64_t)x];
}

static void gs_cubic_coeffs(double t, double *w) {
  const double A = -0.75;
  double x1 = t + 1, x2 = t, x3 = 1 - t, x4 = 2 - t;
  w[0] = ((A * x1 - 5 * A) * x1 + 8 * A) * x1 - 4 * A;
  w[1] = ((A + 2) * x2 - (A + 3)) * x2 * x2 + 1;
  w[2] = ((A + 2) * x3 - (A + 3)) * x3 * x3 + 1;
  w[3] = ((A * x4 - 5 * A) * x4 + 8 * A) * x4 - 4 * A;
}

static nbl_status k_gridsample(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_in(c, 0, "X")) || (st = need_in(c, 1, "grid"))) return st;
  const nbl_rt_tensor *X = c->in[0], *Gd = c->in[1];
  if ((st = need_float(c, X, "X")) || (st = need_float(c, Gd, "grid")) || (st = need_rank(c, X, 4, "X")) ||
      (st = need_rank(c, Gd, 4, "grid")))
    return st;
  if (Gd->dims[0] != X->dims[0] || Gd->dims[3] != 2)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "grid must have shape [%lld, H_out, W_out, 2]", (long long)X->dims[0]);
  const char *ms = nbl_attr_string(c->node, "mode", "bilinear"), *ps = nbl_attr_string(c->node, "padding_mode", "zeros");
  int mode, pad, ac = nbl_attr_int(c->node, "align_corners", 0) != 0;
  if (strcmp(ms, "bilinear") == 0) mode = GS_BILINEAR;
  else if (strcmp(ms, "nearest") == 0) mode = GS_NEAREST;
  else if (strcmp(ms, "bicubic") == 0) mode = GS_BICUBIC;
  else return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "mode '%s' is not supported (bilinear, nearest, bicubic)", ms);
  if (strcmp(ps, "zeros") == 0) pad = GS_ZEROS;
  else if (strcmp(ps, "border") == 0) pad = GS_BORDER;
  else if (strcmp(ps, "reflection") == 0) pad = GS_REFLECTION;
  else return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "padding_mode '%s' is not supported", ps);
  int64_t N = X->dims[0], C = X->dims[1], H = X->dims[2], W = X->dims[3], Ho = Gd->dims[1], Wo = Gd->dims[2];
  int64_t dims[4] = {N, C, Ho, Wo};
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, 4, dims))) return st;
  double *x = nbl_to_f64(X), *g = nbl_to_f64(Gd), *y = malloc(sizeof(double) * (size_t)(N * C * Ho * Wo + 1));
  if (!x || !g || !y) {
    free(x), free(g), free(y);
    return oom(c);
  }
  for (int64_t n = 0; n < N; n++)
    for (int64_t oh = 0; oh < Ho; oh++)
      for (int64_t ow = 0; ow < Wo; ow++) {
        const double *gp = g + ((n * Ho + oh) * Wo + ow) * 2;
        double ix = gs_unnorm(gp[0], W, ac), iy = gs_unnorm(gp[1], H, ac);
        for (int64_t ch = 0; ch < C; ch++) {
          const double *img = x + (n * C + ch) * H * W;
          double v = 0.0;
          if (mode == GS_BICUBIC) {
            double fx = floor(ix), fy = floor(iy), wx[4], wy[4];
            gs_cubic_coeffs(ix - fx, wx);
            gs_cubic_coeffs(iy - fy, wy);
            for (int i = 0; i < 4; i++) {
              double row = 0.0;
              for (int j = 0; j < 4; j++) {
                double sx = gs_pad(fx - 1 + j, W, pad, ac), sy = gs_pad(fy - 1 + i, H, pad, ac);
                row += wx[j] * gs_at(img, H, W, sy, sx);
              }
              v += wy[i] * row;
            }
          } else {
            double px = gs_pad(ix, W, pad, ac), py = gs_pad(iy, H, pad, ac);
            if (mode == GS_NEAREST) {
              double rx = nearbyint(px), ry = nearbyint(py);
              v = gs_at(img, H, W, ry, rx);
            } else if (isfinite(px) && isfinite(py)) {
              double x0 = floor(px), y0 = floor(py), tx = px - x0, ty = py - y0;
              v = (1 - ty) * ((1 - tx) * gs_at(img, H, W, y0, x0) + tx * gs_at(img, H, W, y0, x0 + 1)) +
                  ty * ((1 - tx) * gs_at(img, H, W, y0 + 1, x0) + tx * gs_at(img, H, W, y0 + 1, x0 + 1));
            } else {
              v = NAN;
            }
          }
          y[((n * C + ch) * Ho + oh) * Wo + ow] = v;
        }
      }
  nbl_from_f64(nbl_kctx_out(c, 0), y);
  free(x), free(g), free(y);
  return NBL_OK;
}

/* ------------------------------------------------------------------ RoiAlign */

static nbl_status k_roialign(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_in(c, 0, "X")) || (st = need_in(c, 1, "rois")) || (st = need_in(c, 2, "batch_indices")))
    return st;
  const nbl_rt_tensor *X = c->in[0], *Ro = c->in[1], *Bi = c->in[2];
  if ((st = need_float(c, X, "X")) || (st = need_float(c, Ro, "rois")) || (st = need_rank(c, X, 4, "X")))
    return st;
  if (Ro->rank != 2 || Ro->dims[1] != 4)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "rois must have shape [num_rois, 4]");
  if (!is_int(Bi->dtype) || Bi->numel != Ro->dims[0])
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "batch_indices must hold %lld integers", (long long)Ro->dims[0]);
  const char *ms = nbl_attr_string(c->node, "mode", "avg");
  int is_max;
  if (strcmp(ms, "avg") == 0) is_max = 0;
  else if (strcmp(ms, "max") == 0) is_max = 1;
  else return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "mode '%s' is not supported (avg, max)", ms);
  int half_pixel = 0;
  if (c->opset >= 16) {
    const char *ct = nbl_attr_string(c->node, "coordinate_transformation_mode", "half_pixel");
    if (strcmp(ct, "half_pixel") == 0) half_pixel = 1;
    else if (strcmp(ct, "output_half_pixel") != 0)
      return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "coordinate_transformation_mode '%s' is not supported", ct);
  }
  int64_t PH = nbl_attr_int(c->node, "output_height", 1), PW = nbl_attr_int(c->node, "output_width", 1);
  int64_t sr = nbl_attr_int(c->node, "sampling_ratio", 0);
  double scale = nbl_attr_float(c->node, "spatial_scale", 1.0f);
  if (PH < 1 || PW < 1 || sr < 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "output_height/output_width must be >= 1, sampling_ratio >= 0");
  int64_t N = X->dims[0], C = X->dims[1], H = X->dims[2], W = X->dims[3], nr = Ro->dims[0];
  for (int64_t i = 0; i < nr; i++) {
    int64_t b = nbl_rt_get_i64(Bi, i);
    if (b < 0 || b >= N)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "batch_indices[%lld] = %lld is outside [0, %lld)", (long long)i,
                      (long long)b, (long long)N);
  }
  for (int64_t i = 0; i < nr && sr == 0; i++) { /* the adaptive grid must stay finite */
    double rw = nbl_rt_get_f64(Ro, 4 * i + 2) * scale - nbl_rt_get_f64(Ro, 4 * i) * scale,
           rh = nbl_rt_get_f64(Ro, 4 * i + 3) * scale - nbl_rt_get_f64(Ro, 4 * i + 1) * scale;
    if (!(rh / (double)PH <= 65536.0 && rw / (double)PW <= 65536.0))
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "roi %lld is not finite or too large for adaptive sampling",
                      (long long)i);
  }
  int64_t dims[4] = {nr, C, PH, PW};
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, 4, dims))) return st;
  double *x = nbl_to_f64(X), *ro = nbl_to_f64(Ro), *y = malloc(sizeof(double) * (size_t)(nr * C * PH * PW + 1));
  if (!x || !ro || !y) {
    free(x), free(ro), free(y);
    return oom(c);
  }
  double off = half_pixel ? 0.5 : 0.0;
  for (int64_t r = 0; r < nr; r++) {
    const double *rr = ro + r * 4;
    int64_t b = nbl_rt_get_i64(Bi, r);
    double sw = rr[0] * scale - off, sh = rr[1] * scale - off, ew = rr[2] * scale - off, eh = rr[3] * scale - off;
    double rw = ew - sw, rh = eh - sh;
    if (!half_pixel) rw = fmax(rw, 1.0), rh = fmax(rh, 1.0);
    double bh = rh / (double)PH, bw = rw / (double)PW;
    /* at most 65536 (checked above); negative, or NaN from inf - inf: no samples */
    double qh = ceil(rh / (double)PH), qw = ceil(rw / (double)PW);
    int64_t gh = sr > 0 ? sr : qh > 0 ? (int64_t)qh : 0, gw = sr > 0 ? sr : qw > 0 ? (int64_t)qw : 0;
    double count = (double)(gh * gw > 1 ? gh * gw : 1);
    for (int64_t ch = 0; ch < C; ch++) {
      const double *img = x + (b * C + ch) * H * W;
      for (int64_t ph = 0; ph < PH; ph++)
        for (int64_t pw = 0; pw < PW; pw++) {
          double acc = 0.0;
          int first = 1;
          for (int64_t iy = 0; iy < gh; iy++) {
            double yy = sh + (double)ph * bh + ((double)iy + 0.5) * bh / (double)gh;
            for (int64_t ix = 0; ix < gw; ix++) {
              double xx = sw + (double)pw * bw + ((double)ix + 0.5) * bw / (double)gw;
              double w1 = 0, w2 = 0, w3 = 0, w4 = 0;
              int64_t yl = 0, yh = 0, xl = 0, xh = 0;
              if (H > 0 && W > 0 && yy >= -1.0 && yy <= (double)H && xx >= -1.0 && xx <= (double)W) {
                double yv = yy <= 0 ? 0 : yy, xv = xx <= 0 ? 0 : xx;
                yl = (int64_t)yv, xl = (int64_t)xv;
                if (yl >= H - 1) yh = yl = H - 1, yv = (double)yl;
                else yh = yl + 1;
                if (xl >= W - 1) xh = xl = W - 1, xv = (double)xl;
                else xh = xl + 1;
                double ly = yv - (double)yl, lx = xv - (double)xl, hy = 1 - ly, hx = 1 - lx;
                w1 = hy * hx, w2 = hy * lx, w3 = ly * hx, w4 = ly * lx;
              }
              double v1 = 0, v2 = 0, v3 = 0, v4 = 0;
              if (H > 0 && W > 0)
                v1 = w1 * img[yl * W + xl], v2 = w2 * img[yl * W + xh], v3 = w3 * img[yh * W + xl],
                v4 = w4 * img[yh * W + xh];
              if (is_max) {
                double m = fmax(fmax(fmax(v1, v2), v3), v4);
                acc = first ? m : fmax(acc, m);
                first = 0;
              } else {
                acc += v1 + v2 + v3 + v4;
              }
            }
          }
          y[((r * C + ch) * PH + ph) * PW + pw] = is_max ? acc : acc / count;
        }
    }
  }
  nbl_from_f64(nbl_kctx_out(c, 0), y);
  free(x), free(ro), free(y);
  return NBL_OK;
}

/* ------------------------------------------------------------------ TfIdfVectorizer */

static nbl_status k_tfidf(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_in(c, 0, "X"))) return st;
  const nbl_rt_tensor *X = c->in[0];
  const nbl_node *nd = c->node;
  int64_t minn = nbl_attr_int(nd, "min_gram_length", 0), maxn = nbl_attr_int(nd, "max_gram_length", 0),
          maxskip = nbl_attr_int(nd, "max_skip_count", 0);
  const char *mode_s = nbl_attr_string(nd, "mode", "");
  int mode;
  if (strcmp(mode_s, "TF") == 0) mode = 0;
  else if (strcmp(mode_s, "IDF") == 0) mode = 1;
  else if (strcmp(mode_s, "TFIDF") == 0) mode = 2;
  else return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "mode '%s' is not TF, IDF or TFIDF", mode_s);
  int ncnt = 0, nidx = 0, npi = 0, nw = 0;
  const int64_t *cnts = nbl_attr_ints(nd, "ngram_counts", &ncnt), *idxs = nbl_attr_ints(nd, "ngram_indexes", &nidx),
                *pool_i = nbl_attr_ints(nd, "pool_int64s", &npi);
  const float *wts = nbl_attr_floats(nd, "weights", &nw);
  const nbl_attr *ps = nbl_node_attr(nd, "pool_strings");
  int strings = ps && ps->type == NBL_ATTR_STRINGS && ps->n > 0;
  int64_t npool = strings ? ps->n : npi;
  if (minn < 1 || maxn < minn || maxskip < 0 || ncnt < maxn)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "invalid gram lengths [%lld, %lld], max_skip_count %lld or "
                    "ngram_counts size %d", (long long)minn, (long long)maxn, (long long)maxskip, ncnt);
  if (strings ? X->dtype != NBL_DT_STRING : !(X->dtype == NBL_DT_INT32 || X->dtype == NBL_DT_INT64))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "input has element type %s; expected %s", nbl_dtype_name(X->dtype),
                    strings ? "string (pool_strings)" : "int32 or int64 (pool_int64s)");
  /* grams of length n occupy pool[cnts[n-1] .. end_n); gram numbers are consecutive */
  int64_t ngrams = 0;
  for (int i = 0; i < ncnt; i++) {
    int64_t beg = cnts[i], end = i + 1 < ncnt ? cnts[i + 1] : npool;
    if (beg < 0 || end < beg || end > npool || (end - beg) % (i + 1) != 0)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "ngram_counts[%d] = %lld is inconsistent with the pool", i,
                      (long long)beg);
    ngrams += (end - beg) / (i + 1);
  }
  if (nidx != ngrams)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "ngram_indexes has %d entries, the pool holds %lld n-grams", nidx,
                    (long long)ngrams);
  if (nw && nw != ngrams)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "weights has %d entries, expected %lld", nw, (long long)ngrams);
  int64_t outlen = 0;
  for (int i = 0; i < nidx; i++) {
    if (idxs[i] < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "ngram_indexes[%d] is negative", i);
    if (idxs[i] + 1 > outlen) outlen = idxs[i] + 1;
  }
  if (X->rank != 1 && X->rank != 2) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input must be 1-D or 2-D");
  int64_t rows = X->rank == 2 ? X->dims[0] : 1, C = X->dims[X->rank - 1];
  int64_t dims[2];
  if (X->rank == 2) dims[0] = rows, dims[1] = outlen;
  else dims[0] = outlen;
  if ((st = nbl_kctx_alloc_out(c, 0, NBL_DT_FLOAT, X->rank, dims))) return st;
  float *y = nbl_kctx_out(c, 0)->data;
  double *cnt = calloc((size_t)(ngrams + 1), sizeof(double));
  if (!cnt) return oom(c);
  char *const *xs = strings ? (char *const *)X->data : NULL;
  for (int64_t r = 0; r < rows; r++) {
    memset(cnt, 0, sizeof(double) * (size_t)(ngrams + 1));
    for (int64_t s = 0; s < C; s++)
      for (int64_t skip = 0; skip <= maxskip; skip++)
        for (int64_t n = minn; n <= maxn; n++) {
          if (n == 1 && skip > 0) continue;
          if (s + (n - 1) * (skip + 1) >= C) continue;
          int64_t beg = cnts[n - 1], end = n < ncnt ? cnts[n] : npool, gno = 0;
          for (int64_t i = 0; i < n - 1; i++) {
            int64_t e2 = i + 1 < ncnt ? cnts[i + 1] : npool;
            gno += (e2 - cnts[i]) / (i + 1);
          }
          for (int64_t p = beg; p < end; p += n, gno++) {
            int match = 1;
            for (int64_t q = 0; q < n && match; q++) {
              int64_t pos = r * C + s + q * (skip + 1);
              if (strings) match = strcmp(xs[pos], ps->strings[p + q]) == 0;
              else match = nbl_rt_get_i64(X, pos) == pool_i[p + q];
            }
            if (match) {
              cnt[gno] += 1;
              break;
            }
          }
        }
    float *yr = y + r * outlen;
    for (int64_t i = 0; i < outlen; i++) yr[i] = 0.0f;
    for (int64_t g = 0; g < ngrams; g++) {
      double v = cnt[g];
      if (mode == 1) v = (v > 0 ? 1.0 : 0.0) * (nw ? wts[g] : 1.0);
      else if (mode == 2) v *= nw ? wts[g] : 1.0;
      yr[idxs[g]] = (float)v;
    }
  }
  free(cnt);
  return NBL_OK;
}


/* ------------------------------------------------------------------ table */

const nbl_op_def nbl_ops_misc[] = {
    {"", "RNN", 1, 21, k_rnn, k_rnn_fast},
    {"", "GRU", 1, 21, k_gru, k_gru_fast},
    {"", "LSTM", 1, 21, k_lstm, k_lstm_fast},
    {"", "Det", 11, 21, k_det, NULL},
    {"", "HannWindow", 17, 21, k_hann, NULL},
    {"", "HammingWindow", 17, 21, k_hamming, NULL},
    {"", "BlackmanWindow", 17, 21, k_blackman, NULL},
    {"", "DFT", 17, 19, k_dft, NULL},
    {"", "STFT", 17, 21, k_stft, NULL},
    {"", "MelWeightMatrix", 17, 21, k_melweight, NULL},
    {"", "NonMaxSuppression", 10, 21, k_nms, NULL},
    {"", "GridSample", 16, 19, k_gridsample, NULL},
    {"", "RoiAlign", 10, 21, k_roialign, NULL},
    {"", "TfIdfVectorizer", 9, 21, k_tfidf, NULL},
};
const size_t nbl_ops_misc_count = sizeof nbl_ops_misc / sizeof nbl_ops_misc[0];
