/* runtime/ops/misc.c - op family 'misc': Det, detection (NonMaxSuppression,
 * RoiAlign), GridSample with its backward op ai.nibble GridSampleGrad, and
 * the text ops TfIdfVectorizer and StringNormalizer (see kernel.h for the
 * kernel contract).
 *
 * These kernels are reference kernels: inputs are converted to double, the
 * computation runs in double and the result is converted back to the output's
 * element type (float, double or float16). */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "runtime/core/adapt.h"
#include "runtime/core/grad.h"
#include "runtime/core/shape.h"
#include "runtime/kernels/gemm.h"
#include "runtime/ops/ref_common.h"

/* ------------------------------------------------------------------ Det */

/* Det: determinant of each trailing [M, M] matrix (LU with partial pivoting). */
static nbl_status k_det(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_input(c, 0, "X"))) return st;
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

/* nms_suppress for boxes with finite corners: fmax and fmin as comparisons
 * (they can differ only in the sign of a zero, which no test below sees:
 * a zero difference or product is <= 0 either way) and the areas given,
 * computed as nms_suppress computes them: the same decision, without the
 * library calls (the fast kernel makes millions on dense detections). */
static inline int nms_suppress_fin(const double *a, const double *b, double aa, double ab, double thr) {
  double ymin = a[0] > b[0] ? a[0] : b[0], xmin = a[1] > b[1] ? a[1] : b[1];
  double ymax = a[2] < b[2] ? a[2] : b[2], xmax = a[3] < b[3] ? a[3] : b[3];
  double h = ymax - ymin, w = xmax - xmin;
  double inter = (h > 0 ? h : 0.0) * (w > 0 ? w : 0.0);
  if (inter <= 0) return 0;
  if (aa <= 0 || ab <= 0) return 0;
  double uni = aa + ab - inter;
  return uni > 0 && inter / uni > thr;
}

/* The greedy pass's selected boxes of one (batch, class) in a uniform grid
 * over the candidates' extent (the fast kernel): a candidate is compared
 * only with the selected boxes that share a cell with it, the only ones
 * that can suppress it (IOU > thr >= 0 needs a positive intersection, so
 * the boxes overlap, and the cell of a point inside both is in both boxes'
 * cell ranges: the map from coordinate to cell is monotonic). A pair is
 * decided in one cell only, that of its intersection's corner (max y1,
 * max x1). The comparisons that remain are nms_suppress's, so the selection
 * is the reference pass's (a candidate is kept when no selected box
 * suppresses it, whatever the order of the comparisons). Boxes with a
 * non-finite corner, or over more than NMS_SPAN cells, sit in a list that
 * every candidate scans; such a candidate scans every selected box. Each
 * cell's boxes lie side by side (their corners and area copied), room for
 * every candidate that may join counted ahead. */
enum { NMS_SPAN = 16 };

typedef struct nms_ent {
  double b[4], area;
} nms_ent;

typedef struct nms_grid {
  double x0, y0, ix, iy; /* cell of (y, x): ((y - y0) iy, (x - x0) ix), floored and clamped */
  int64_t gx, gy;
  int64_t *off, *fill; /* [gy gx + 1]: cell c's boxes are ent[off[c] .. fill[c]) */
  nms_ent *ent;
  int64_t *wide, nwide; /* slots (in sel) of the boxes every candidate compares with */
  double *area;         /* per box of the batch: (y2 - y1) (x2 - x1), as nms_suppress has it */
} nms_grid;

static int nms_finite(const double *b) { return isfinite(b[0]) && isfinite(b[1]) && isfinite(b[2]) && isfinite(b[3]); }

static int64_t nms_cell(double v, double v0, double inv, int64_t g) {
  double t = (v - v0) * inv;
  if (!(t >= 0)) return 0;
  return t >= (double)(g - 1) ? g - 1 : (int64_t)t;
}

/* The cell range (y0 x0 y1 x1) of a box with finite corners b; 0 when it
 * has another kind of corner or spans more than NMS_SPAN cells. */
static int nms_cells(const nms_grid *gr, const double *b, int64_t *r) {
  if (!nms_finite(b)) return 0;
  r[0] = nms_cell(b[0], gr->y0, gr->iy, gr->gy), r[2] = nms_cell(b[2], gr->y0, gr->iy, gr->gy);
  r[1] = nms_cell(b[1], gr->x0, gr->ix, gr->gx), r[3] = nms_cell(b[3], gr->x0, gr->ix, gr->gx);
  return (r[2] - r[0] + 1) * (r[3] - r[1] + 1) <= NMS_SPAN;
}

/* The grid for the n candidates (boxes corners + 4 cand[i].idx): cells of
 * about the mean finite box's extent, at most about 4 n + 16 of them, and
 * room in each for every candidate over it. 0 out of memory. */
static int nms_grid_init(nms_grid *gr, const double *corners, const nms_cand *cand, int64_t n) {
  double ylo = INFINITY, xlo = INFINITY, yhi = -INFINITY, xhi = -INFINITY, hs = 0, ws = 0;
  int64_t nf = 0;
  for (int64_t i = 0; i < n; i++) {
    const double *b = corners + 4 * cand[i].idx;
    if (!nms_finite(b)) continue;
    ylo = fmin(ylo, b[0]), xlo = fmin(xlo, b[1]), yhi = fmax(yhi, b[2]), xhi = fmax(xhi, b[3]);
    hs += b[2] - b[0], ws += b[3] - b[1], nf++;
  }
  gr->gx = gr->gy = 1, gr->y0 = gr->x0 = 0, gr->iy = gr->ix = 0, gr->nwide = 0;
  double cell = nf ? fmax(hs, ws) / (double)nf : 0, ry = yhi - ylo, rx = xhi - xlo;
  if (cell > 0 && isfinite(ry) && isfinite(rx) && isfinite(cell)) {
    const double most = 4.0 * (double)n + 16;
    double gy = fmax(1, ceil(ry / cell)), gx = fmax(1, ceil(rx / cell));
    if (gx * gy > most) { /* coarser: the same factor both ways */
      double f = sqrt(gx * gy / most);
      gy = fmax(1, floor(gy / f)), gx = fmax(1, floor(gx / f));
    }
    gr->gy = (int64_t)gy, gr->gx = (int64_t)gx, gr->y0 = ylo, gr->x0 = xlo;
    gr->iy = ry > 0 ? gy / ry : 0, gr->ix = rx > 0 ? gx / rx : 0;
  }
  const int64_t nc = gr->gx * gr->gy;
  free(gr->off), free(gr->ent);
  gr->ent = NULL;
  gr->off = calloc((size_t)(2 * nc + 2), sizeof(int64_t));
  if (!gr->off) return 0;
  gr->fill = gr->off + nc + 1;
  int64_t r[4];
  for (int64_t i = 0; i < n; i++)
    if (nms_cells(gr, corners + 4 * cand[i].idx, r))
      for (int64_t y = r[0]; y <= r[2]; y++)
        for (int64_t x = r[1]; x <= r[3]; x++) gr->off[y * gr->gx + x + 1]++;
  for (int64_t c = 0; c < nc; c++) gr->off[c + 1] += gr->off[c];
  memcpy(gr->fill, gr->off, sizeof(int64_t) * (size_t)nc);
  gr->ent = malloc(sizeof(nms_ent) * (size_t)(gr->off[nc] + 1));
  return gr->ent != NULL;
}

/* 1 when a selected box suppresses box cand: those of the grid, the wide
 * ones (slots into sel), or every one of the m (sel) for a wide cand. */
static int nms_grid_hit(const nms_grid *gr, const double *corners, const int64_t *sel, int64_t m, int64_t cand,
                        double iou) {
  const double *bi = corners + 4 * cand;
  int64_t r[4];
  if (!nms_cells(gr, bi, r)) {
    for (int64_t j = 0; j < m; j++)
      if (nms_suppress(corners + 4 * sel[j], bi, iou)) return 1;
    return 0;
  }
  for (int64_t j = 0; j < gr->nwide; j++)
    if (nms_suppress(corners + 4 * sel[gr->wide[j]], bi, iou)) return 1;
  const double ab = gr->area[cand];
  for (int64_t y = r[0]; y <= r[2]; y++)
    for (int64_t x = r[1]; x <= r[3]; x++) {
      const int64_t c = y * gr->gx + x;
      for (const nms_ent *e = gr->ent + gr->off[c], *end = gr->ent + gr->fill[c]; e < end; e++) {
        const double *a = e->b;
        /* boxes that do not overlap: nms_suppress's 0 at once */
        if (!(a[0] < bi[2] && bi[0] < a[2] && a[1] < bi[3] && bi[1] < a[3])) continue;
        if ((r[0] != r[2] || r[1] != r[3]) && /* the pair's cell */
            (nms_cell(a[0] > bi[0] ? a[0] : bi[0], gr->y0, gr->iy, gr->gy) != y ||
             nms_cell(a[1] > bi[1] ? a[1] : bi[1], gr->x0, gr->ix, gr->gx) != x))
          continue;
        if (nms_suppress_fin(a, bi, e->area, ab, iou)) return 1;
      }
    }
  return 0;
}

/* Box cand, selected at slot, into the grid (or the wide list). */
static void nms_grid_insert(nms_grid *gr, const double *corners, int64_t cand, int64_t slot) {
  const double *bi = corners + 4 * cand;
  int64_t r[4];
  if (!nms_cells(gr, bi, r)) {
    gr->wide[gr->nwide++] = slot;
    return;
  }
  for (int64_t y = r[0]; y <= r[2]; y++)
    for (int64_t x = r[1]; x <= r[3]; x++)
      gr->ent[gr->fill[y * gr->gx + x]++] = (nms_ent){{bi[0], bi[1], bi[2], bi[3]}, gr->area[cand]};
}

/* The reference kernel compares each candidate with every selected box;
 * the fast one (grid = 1) with those of nms_grid_hit. Same selection. */
static nbl_status k_nms_run(nbl_kctx *c, int grid) {
  nbl_status st;
  if ((st = need_input(c, 0, "boxes")) || (st = need_input(c, 1, "scores"))) return st;
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
  nms_grid gr = {0};
  if (grid) {
    gr.wide = malloc(sizeof(int64_t) * (size_t)(ns + 1));
    gr.area = malloc(sizeof(double) * (size_t)(ns + 1));
  }
  if (!bx || !sc || !corners || !cand || !sel || !res || (grid && (!gr.wide || !gr.area))) {
    st = oom(c);
    goto done;
  }
  for (int64_t b = 0; b < nb; b++) {
    for (int64_t i = 0; i < ns; i++) nms_box(bx + (b * ns + i) * 4, center, corners + 4 * i);
    for (int64_t i = 0; grid && i < ns; i++) {
      const double *o = corners + 4 * i;
      gr.area[i] = (o[2] - o[0]) * (o[3] - o[1]);
    }
    for (int64_t k = 0; k < nc && maxout > 0; k++) {
      const double *s = sc + (b * nc + k) * ns;
      int64_t n = 0, m = 0;
      for (int64_t i = 0; i < ns; i++)
        if (!has_thr || s[i] > thr) cand[n].score = s[i], cand[n].idx = i, n++;
      qsort(cand, (size_t)n, sizeof *cand, nms_cmp);
      if (grid && !nms_grid_init(&gr, corners, cand, n)) {
        st = oom(c);
        goto done;
      }
      for (int64_t i = 0; i < n && m < maxout; i++) {
        const double *bi = corners + 4 * cand[i].idx;
        int keep = 1;
        if (grid) {
          keep = !nms_grid_hit(&gr, corners, sel, m, cand[i].idx, iou);
        } else {
          for (int64_t j = 0; j < m && keep; j++)
            if (nms_suppress(corners + 4 * sel[j], bi, iou)) keep = 0;
        }
        if (!keep) continue;
        if (grid) nms_grid_insert(&gr, corners, cand[i].idx, m);
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
  free(gr.off), free(gr.ent), free(gr.wide), free(gr.area);
  return st;
}

static nbl_status k_nms(nbl_kctx *c) { return k_nms_run(c, 0); }
static nbl_status k_nms_fast(nbl_kctx *c) { return k_nms_run(c, 1); }

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
  if ((st = need_input(c, 0, "X")) || (st = need_input(c, 1, "grid"))) return st;
  const nbl_rt_tensor *X = c->in[0], *Gd = c->in[1];
  if ((st = need_float(c, X, "X")) || (st = need_float(c, Gd, "grid")) || (st = need_rank(c, X, 4, "X")) ||
      (st = need_rank(c, Gd, 4, "grid")))
    return st;
  if (Gd->dims[0] != X->dims[0] || Gd->dims[3] != 2)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "grid must have shape [%lld, H_out, W_out, 2]", (long long)X->dims[0]);
  const char *lin = c->opset >= 20 ? "linear" : "bilinear", *cub = c->opset >= 20 ? "cubic" : "bicubic";
  const char *ms = nbl_attr_string(c->node, "mode", lin), *ps = nbl_attr_string(c->node, "padding_mode", "zeros");
  int mode, pad, ac = nbl_attr_int(c->node, "align_corners", 0) != 0;
  if (strcmp(ms, lin) == 0) mode = GS_BILINEAR;
  else if (strcmp(ms, "nearest") == 0) mode = GS_NEAREST;
  else if (strcmp(ms, cub) == 0) mode = GS_BICUBIC;
  else return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "mode '%s' is not supported (%s, nearest, %s)", ms, lin, cub);
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

/* gs_pad with its derivative d (PyTorch's *_set_grad: 0 where the clip
 * holds the coordinate, -1 where the reflection turns it around). */
static double gs_pad_d(double v, int64_t size, int pad, int ac, double *d) {
  *d = 1.0;
  if (pad == GS_REFLECTION) {
    double tlo = ac ? 0 : -1, thi = ac ? 2.0 * (double)(size - 1) : 2.0 * (double)size - 1;
    if (tlo == thi) return *d = 0.0, 0.0;
    double mn = tlo / 2, span = (thi - tlo) / 2;
    v -= mn;
    if (v < 0) v = -v, *d = -1.0;
    double extra = fmod(v, span);
    int64_t flips = (int64_t)floor(v / span);
    v = flips % 2 == 0 ? extra + mn : span - extra + mn;
    if (flips % 2) *d = -*d;
  }
  if (pad != GS_ZEROS && (v <= 0 || v >= (double)(size - 1))) {
    *d = 0.0;
    return v <= 0 ? 0.0 : (double)(size - 1);
  }
  return v;
}

/* ai.nibble GridSampleGrad (dY, X, grid) -> dX, dgrid: GridSample's backward
 * for modes bilinear/linear and nearest (attributes as GridSample's; the
 * mode names of both opsets are taken). dX: each output's dY spread on the
 * taps it read with their weights; dgrid (bilinear): dY times the slope of
 * the interpolation, times the padding's and the unnormalization's
 * derivatives; 0 for nearest (as PyTorch). In double. */
static nbl_status k_gridsample_grad(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_input(c, 0, "dY")) || (st = need_input(c, 1, "X")) || (st = need_input(c, 2, "grid"))) return st;
  const nbl_rt_tensor *dY = c->in[0], *X = c->in[1], *Gd = c->in[2];
  if ((st = need_float(c, X, "X")) || (st = need_float(c, Gd, "grid")) || (st = need_float(c, dY, "dY")) ||
      (st = need_rank(c, X, 4, "X")) || (st = need_rank(c, Gd, 4, "grid")) || (st = need_rank(c, dY, 4, "dY")))
    return st;
  int64_t N = X->dims[0], C = X->dims[1], H = X->dims[2], W = X->dims[3], Ho = Gd->dims[1], Wo = Gd->dims[2];
  if (Gd->dims[0] != N || Gd->dims[3] != 2 || dY->dims[0] != N || dY->dims[1] != C || dY->dims[2] != Ho ||
      dY->dims[3] != Wo)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "grid must be [N, H_out, W_out, 2] and dY [N, C, H_out, W_out] for X");
  const char *ms = nbl_attr_string(c->node, "mode", "bilinear"), *ps = nbl_attr_string(c->node, "padding_mode", "zeros");
  int nearest = !strcmp(ms, "nearest"), ac = nbl_attr_int(c->node, "align_corners", 0) != 0;
  int pad = !strcmp(ps, "zeros") ? GS_ZEROS : !strcmp(ps, "border") ? GS_BORDER : !strcmp(ps, "reflection") ? GS_REFLECTION : -1;
  if (!nearest && strcmp(ms, "bilinear") && strcmp(ms, "linear"))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "mode '%s' is not supported (bilinear, linear, nearest)", ms);
  if (pad < 0) return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "padding_mode '%s' is not supported", ps);
  if ((c->n_out > 0 && c->out[0] && (st = nbl_kctx_alloc_out(c, 0, X->dtype, 4, X->dims))) ||
      (c->n_out > 1 && c->out[1] && (st = nbl_kctx_alloc_out(c, 1, Gd->dtype, 4, Gd->dims))))
    return st;
  double *x = nbl_to_f64(X), *g = nbl_to_f64(Gd), *gy = nbl_to_f64(dY);
  double *gx = calloc((size_t)(X->numel + 1), sizeof(double)), *gg = calloc((size_t)(Gd->numel + 1), sizeof(double));
  if (!x || !g || !gy || !gx || !gg) {
    free(x), free(g), free(gy), free(gx), free(gg);
    return oom(c);
  }
  double sx = ac ? (double)(W - 1) / 2 : (double)W / 2, sy = ac ? (double)(H - 1) / 2 : (double)H / 2;
  for (int64_t n = 0; n < N; n++)
    for (int64_t oh = 0; oh < Ho; oh++)
      for (int64_t ow = 0; ow < Wo; ow++) {
        const double *gp = g + ((n * Ho + oh) * Wo + ow) * 2;
        double dpx, dpy, px = gs_pad_d(gs_unnorm(gp[0], W, ac), W, pad, ac, &dpx),
                         py = gs_pad_d(gs_unnorm(gp[1], H, ac), H, pad, ac, &dpy);
        if (!isfinite(px) || !isfinite(py)) continue;
        double x0 = nearest ? nearbyint(px) : floor(px), y0 = nearest ? nearbyint(py) : floor(py);
        double tx = px - x0, ty = py - y0, sgx = 0, sgy = 0;
        for (int64_t ch = 0; ch < C; ch++) {
          double gv = gy[((n * C + ch) * Ho + oh) * Wo + ow], *dimg = gx + (n * C + ch) * H * W;
          const double *img = x + (n * C + ch) * H * W;
          for (int k = 0; k < (nearest ? 1 : 4); k++) {
            double yy = y0 + (k >> 1), xx = x0 + (k & 1);
            double wy = nearest ? 1 : k >> 1 ? ty : 1 - ty, wx = nearest ? 1 : k & 1 ? tx : 1 - tx;
            if (!(yy >= 0 && yy < (double)H && xx >= 0 && xx < (double)W)) continue;
            int64_t at = (int64_t)yy * W + (int64_t)xx;
            dimg[at] += gv * wy * wx;
            if (nearest) continue;
            sgx += gv * img[at] * wy * (k & 1 ? 1 : -1);
            sgy += gv * img[at] * wx * (k >> 1 ? 1 : -1);
          }
        }
        gg[((n * Ho + oh) * Wo + ow) * 2] = sgx * dpx * sx;
        gg[((n * Ho + oh) * Wo + ow) * 2 + 1] = sgy * dpy * sy;
      }
  if (c->n_out > 0 && c->out[0]) nbl_from_f64(nbl_kctx_out(c, 0), gx);
  if (c->n_out > 1 && c->out[1]) nbl_from_f64(nbl_kctx_out(c, 1), gg);
  free(x), free(g), free(gy), free(gx), free(gg);
  return NBL_OK;
}

/* ------------------------------------------------------------------ RoiAlign */

/* A RoiAlign node's inputs and attributes, checked (rois finite enough for
 * the adaptive grid, batch indices in range), and its output allocated. */
typedef struct roi_cfg {
  const nbl_rt_tensor *X, *Ro, *Bi;
  int is_max, half_pixel;
  int64_t PH, PW, sr, N, C, H, W, nr;
  double scale;
} roi_cfg;

static nbl_status roi_setup(nbl_kctx *c, roi_cfg *q) {
  nbl_status st;
  if ((st = need_input(c, 0, "X")) || (st = need_input(c, 1, "rois")) || (st = need_input(c, 2, "batch_indices")))
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
  *q = (roi_cfg){X, Ro, Bi, is_max, half_pixel, PH, PW, sr, N, C, H, W, nr, scale};
  return NBL_OK;
}

/* Roi r's sampling grid: its start, bin sizes, samples per bin (gh x gw)
 * and the count an average divides by. ro: the roi's 4 coordinates. */
typedef struct roi_grid {
  double sw, sh, bw, bh, count;
  int64_t gh, gw;
} roi_grid;

static roi_grid roi_grid_of(const roi_cfg *q, const double *rr) {
  double off = q->half_pixel ? 0.5 : 0.0, scale = q->scale;
  roi_grid g;
  g.sw = rr[0] * scale - off, g.sh = rr[1] * scale - off;
  double ew = rr[2] * scale - off, eh = rr[3] * scale - off;
  double rw = ew - g.sw, rh = eh - g.sh;
  if (!q->half_pixel) rw = fmax(rw, 1.0), rh = fmax(rh, 1.0);
  g.bh = rh / (double)q->PH, g.bw = rw / (double)q->PW;
  /* at most 65536 (checked); negative, or NaN from inf - inf: no samples */
  double qh = ceil(rh / (double)q->PH), qw = ceil(rw / (double)q->PW);
  g.gh = q->sr > 0 ? q->sr : qh > 0 ? (int64_t)qh : 0, g.gw = q->sr > 0 ? q->sr : qw > 0 ? (int64_t)qw : 0;
  g.count = (double)(g.gh * g.gw > 1 ? g.gh * g.gw : 1);
  return g;
}

/* One bilinear sample at (yy, xx) of an H x W plane: the offsets of its four
 * neighbours and their weights (all 0 outside [-1, H] x [-1, W]; the
 * neighbours then at offset 0). */
static void roi_sample(double yy, double xx, int64_t H, int64_t W, int64_t o[4], double w[4]) {
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
  o[0] = yl * W + xl, o[1] = yl * W + xh, o[2] = yh * W + xl, o[3] = yh * W + xh;
  w[0] = w1, w[1] = w2, w[2] = w3, w[3] = w4;
}

/* The sample iy, ix of bin (ph, pw) of grid g. */
static void roi_at(const roi_grid *g, int64_t ph, int64_t pw, int64_t iy, int64_t ix, int64_t H, int64_t W,
                   int64_t o[4], double w[4]) {
  double yy = g->sh + (double)ph * g->bh + ((double)iy + 0.5) * g->bh / (double)g->gh;
  double xx = g->sw + (double)pw * g->bw + ((double)ix + 0.5) * g->bw / (double)g->gw;
  roi_sample(yy, xx, H, W, o, w);
}

/* A bin's value from its samples' neighbours v[4] (weighted): the sum in
 * sample order, or the max. */
static inline void roi_acc(int is_max, const double v[4], double *acc, int *first) {
  if (is_max) {
    double m = fmax(fmax(fmax(v[0], v[1]), v[2]), v[3]);
    *acc = *first ? m : fmax(*acc, m);
    *first = 0;
  } else {
    *acc += v[0] + v[1] + v[2] + v[3];
  }
}

/* The reference: all of X in double, every sample recomputed per channel. */
static nbl_status roi_ref(nbl_kctx *c, const roi_cfg *cfg) {
  const roi_cfg q = *cfg;
  const int64_t C = q.C, H = q.H, W = q.W, PH = q.PH, PW = q.PW, nr = q.nr;
  double *x = nbl_to_f64(q.X), *ro = nbl_to_f64(q.Ro), *y = malloc(sizeof(double) * (size_t)(nr * C * PH * PW + 1));
  if (!x || !ro || !y) {
    free(x), free(ro), free(y);
    return oom(c);
  }
  for (int64_t r = 0; r < nr; r++) {
    int64_t b = nbl_rt_get_i64(q.Bi, r);
    roi_grid g = roi_grid_of(&q, ro + r * 4);
    for (int64_t ch = 0; ch < C; ch++) {
      const double *img = x + (b * C + ch) * H * W;
      for (int64_t ph = 0; ph < PH; ph++)
        for (int64_t pw = 0; pw < PW; pw++) {
          double acc = 0.0;
          int first = 1;
          for (int64_t iy = 0; iy < g.gh; iy++)
            for (int64_t ix = 0; ix < g.gw; ix++) {
              int64_t o[4];
              double w[4], v[4] = {0, 0, 0, 0};
              roi_at(&g, ph, pw, iy, ix, H, W, o, w);
              if (H > 0 && W > 0)
                for (int k = 0; k < 4; k++) v[k] = w[k] * img[o[k]];
              roi_acc(q.is_max, v, &acc, &first);
            }
          y[((r * C + ch) * PH + ph) * PW + pw] = q.is_max ? acc : acc / g.count;
        }
    }
  }
  nbl_from_f64(nbl_kctx_out(c, 0), y);
  free(x), free(ro), free(y);
  return NBL_OK;
}

static nbl_status k_roialign(nbl_kctx *c) {
  roi_cfg q;
  nbl_status st = roi_setup(c, &q);
  return st ? st : roi_ref(c, &q);
}

/* The float32 RoiAlign: each roi's samples (neighbour offsets and weights)
 * worked out once and used for every channel, reading X's floats where
 * they are (the reference converts all of X to double and recomputes every
 * sample per channel: Faster R-CNN's two RoiAligns were 45 % of its time),
 * rois in parallel. The same double operations in the same order as the
 * reference: the same bits. */
typedef struct roi_job {
  const roi_cfg *q;
  const float *x;
  float *y;
  _Atomic int oom;
} roi_job;

static void roi_run(void *arg, int64_t begin, int64_t end) {
  roi_job *j = arg;
  const roi_cfg *q = j->q;
  const int64_t C = q->C, H = q->H, W = q->W, PH = q->PH, PW = q->PW;
  for (int64_t r = begin; r < end; r++) {
    double rr[4];
    for (int k = 0; k < 4; k++) rr[k] = nbl_rt_get_f64(q->Ro, 4 * r + k);
    int64_t b = nbl_rt_get_i64(q->Bi, r);
    roi_grid g = roi_grid_of(q, rr);
    int64_t ns = g.gh * g.gw, nbin = PH * PW; /* samples a bin; at most 65536^2, checked below */
    if (ns > ((int64_t)1 << 24) / nbin) { /* too many to keep: the reference for all */
      atomic_store(&j->oom, 1);
      return;
    }
    int64_t *o = malloc(sizeof(int64_t) * 4 * (size_t)(nbin * ns + 1));
    double *w = malloc(sizeof(double) * 4 * (size_t)(nbin * ns + 1));
    if (!o || !w) {
      free(o), free(w);
      atomic_store(&j->oom, 1);
      return;
    }
    for (int64_t ph = 0, s = 0; ph < PH; ph++)
      for (int64_t pw = 0; pw < PW; pw++)
        for (int64_t iy = 0; iy < g.gh; iy++)
          for (int64_t ix = 0; ix < g.gw; ix++, s++) roi_at(&g, ph, pw, iy, ix, H, W, o + 4 * s, w + 4 * s);
    for (int64_t ch = 0; ch < C; ch++) {
      const float *img = j->x + (b * C + ch) * H * W;
      float *yc = j->y + (r * C + ch) * nbin;
      for (int64_t bi = 0; bi < nbin; bi++) {
        double acc = 0.0;
        int first = 1;
        const int64_t *os = o + 4 * bi * ns;
        const double *ws = w + 4 * bi * ns;
        for (int64_t s = 0; s < ns; s++) {
          double v[4] = {0, 0, 0, 0};
          if (H > 0 && W > 0)
            for (int k = 0; k < 4; k++) v[k] = ws[4 * s + k] * (double)img[os[4 * s + k]];
          roi_acc(q->is_max, v, &acc, &first);
        }
        yc[bi] = (float)(q->is_max ? acc : acc / g.count);
      }
    }
    free(o), free(w);
  }
}

static nbl_status k_roialign_fast(nbl_kctx *c) {
  if (!in_at(c, 0) || c->in[0]->dtype != NBL_DT_FLOAT) return k_roialign(c);
  roi_cfg q;
  nbl_status st = roi_setup(c, &q);
  if (st) return st;
  roi_job j = {&q, q.X->data, nbl_kctx_out(c, 0)->data, 0};
  nbl_parallel_for(c, q.nr, 1, roi_run, &j);
  /* a roi with too many samples to keep (or no memory for them): all of it
   * by the reference, which writes every output */
  return atomic_load(&j.oom) ? roi_ref(c, &q) : NBL_OK;
}

/* ------------------------------------------------------------------ TfIdfVectorizer */

static nbl_status k_tfidf(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_input(c, 0, "X"))) return st;
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

/* ------------------------------------------------------------------ shape rules */

/* Det: [*, M, M] -> [*]. */
static nbl_status shape_det(nbl_shape_ctx *c) {
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  if (x.rank < 2) return nbl_shp_set_dt(c, 0, x.dt, -1);
  x.rank -= 2;
  return nbl_shp_set(c, 0, &x);
}

/* NonMaxSuppression: selected_indices int64 [?, 3]. */
static nbl_status shape_nms(nbl_shape_ctx *c) {
  nbl_shp o;
  nbl_shp_rank(&o, NBL_DT_INT64, 2);
  o.d[1] = nbl_dim_val(3);
  return nbl_shp_set(c, 0, &o);
}

/* GridSample: X [N, C, spatial...], grid [N, out spatial..., rank - 2] ->
 * [N, C, out spatial...]. */
static nbl_status shape_gridsample(nbl_shape_ctx *c) {
  nbl_shp x, g, o;
  nbl_shp_in(c, 0, &x);
  nbl_shp_in(c, 1, &g);
  int rank = x.rank >= 0 ? x.rank : g.rank;
  if (rank < 3) return nbl_shp_set_dt(c, 0, x.dt, rank);
  nbl_shp_rank(&o, x.dt, rank);
  if (x.rank == rank) {
    o.d[0] = x.d[0];
    o.d[1] = x.d[1];
  }
  if (g.rank == rank) {
    o.d[0] = nbl_dim_merge(o.d[0], g.d[0]);
    for (int i = 2; i < rank; i++) o.d[i] = g.d[i - 1];
  }
  return nbl_shp_set(c, 0, &o);
}

/* RoiAlign: [num_rois, C, output_height, output_width]. */
static nbl_status shape_roialign(nbl_shape_ctx *c) {
  nbl_shp x, r, b, o;
  nbl_shp_in(c, 0, &x);
  nbl_shp_in(c, 1, &r);
  nbl_shp_in(c, 2, &b);
  nbl_shp_rank(&o, x.dt, 4);
  if (r.rank == 2) o.d[0] = r.d[0];
  if (b.rank == 1) o.d[0] = nbl_dim_merge(o.d[0], b.d[0]);
  if (x.rank == 4) o.d[1] = x.d[1];
  int64_t oh = nbl_attr_int(c->node, "output_height", 1), ow = nbl_attr_int(c->node, "output_width", 1);
  o.d[2] = oh >= 0 ? nbl_dim_val(oh) : nbl_dim_unk();
  o.d[3] = ow >= 0 ? nbl_dim_val(ow) : nbl_dim_unk();
  return nbl_shp_set(c, 0, &o);
}

/* TfIdfVectorizer: float [max(ngram_indexes) + 1] for a 1-D input, [B, that]
 * for a 2-D one. */
static nbl_status shape_tfidf(nbl_shape_ctx *c) {
  nbl_shp x, o;
  nbl_shp_in(c, 0, &x);
  int n = 0;
  const int64_t *idx = nbl_attr_ints(c->node, "ngram_indexes", &n);
  int64_t len = n ? 0 : -1;
  for (int i = 0; i < n && len >= 0; i++)
    len = idx[i] < 0 || idx[i] == INT64_MAX ? -1 : idx[i] + 1 > len ? idx[i] + 1 : len;
  if (x.rank != 1 && x.rank != 2) return nbl_shp_set_dt(c, 0, NBL_DT_FLOAT, -1);
  o.dt = NBL_DT_FLOAT;
  o.rank = x.rank;
  o.d[0] = x.d[0];
  o.d[x.rank - 1] = len >= 0 ? nbl_dim_val(len) : nbl_dim_unk();
  return nbl_shp_set(c, 0, &o);
}

/* ------------------------------------------------------------------ table */

/* GridSample (modes bilinear/linear and nearest): ai.nibble GridSampleGrad
 * (dY, X, grid) -> dX, dgrid, the forward's attributes. */
static nbl_status g_gridsample(nbl_grad_ctx *gc) {
  const char *ms = nbl_attr_string(nbl_grad_node(gc), "mode", nbl_grad_opset(gc, "") >= 20 ? "linear" : "bilinear");
  if (strcmp(ms, "linear") && strcmp(ms, "bilinear") && strcmp(ms, "nearest"))
    return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "gradient of mode '%s': no rule yet (bilinear, nearest)", ms);
  nbl_id in[3] = {nbl_grad_dy(gc, 0), nbl_grad_x(gc, 0), nbl_grad_x(gc, 1)}, out[2];
  int want[2] = {nbl_grad_wants(gc, 0), nbl_grad_wants(gc, 1)};
  if (!want[0] && !want[1]) return NBL_OK;
  nbl_grad_opn(gc, "GridSampleGrad", "ai.nibble", NULL, 3, in, 2, want, out);
  nbl_grad_attr_copy(gc, (const char *const[]){"mode", NULL});
  nbl_grad_attr_string(gc, "mode", strcmp(ms, "nearest") ? "bilinear" : "nearest");
  if (want[0]) nbl_grad_set_dx(gc, 0, out[0]);
  if (want[1]) nbl_grad_set_dx(gc, 1, out[1]);
  return nbl_grad_status(gc);
}

/* GridSampleGrad: dX shaped as X (input 1), dgrid as grid (input 2). */
static nbl_status shape_gridsample_grad(nbl_shape_ctx *c) {
  nbl_status st = nbl_shp_copy_in(c, 0, 1);
  return st ? st : nbl_shp_copy_in(c, 1, 2);
}

/* GridSample: the modes bilinear and bicubic are linear and cubic from opset
 * 20 (which also takes volumetric inputs: the old form is 4-D only). */
static nbl_status gridsample_rename(nbl_adapt_ctx *c, const char *a, const char *b,
                                    const char *dflt) {
  const char *m = nbl_attr_string(nbl_adapt_node(c), "mode", dflt);
  if (!strcmp(m, a)) nbl_node_set_attr_string(c->graph, c->node, "mode", b);
  return NBL_OK;
}

static nbl_status gridsample_up(nbl_adapt_ctx *c) {
  gridsample_rename(c, "bilinear", "linear", "bilinear");
  return gridsample_rename(c, "bicubic", "cubic", "");
}

static nbl_status gridsample_down(nbl_adapt_ctx *c) {
  if (nbl_adapt_rank(c, nbl_adapt_node(c)->inputs[0]) != 4)
    return nbl_adapt_refuse(c, "X is not known to be 4-D (the only form before opset 20)");
  gridsample_rename(c, "linear", "bilinear", "linear");
  return gridsample_rename(c, "cubic", "bicubic", "");
}

/* ------------------------------------------------------------------ StringNormalizer */

/* 1 if string s is one of the stopwords (case-insensitive: ASCII letters
 * compared without case, as strcasecmp in the C locale). */
static int is_stopword(const nbl_attr *sw, const char *s, int sensitive) {
  for (int i = 0; sw && i < sw->n; i++)
    if (sw->strings[i] && (sensitive ? strcmp(sw->strings[i], s) : strcasecmp(sw->strings[i], s)) == 0) return 1;
  return 0;
}

/* StringNormalizer (opset 10): X [C] or [1, C] strings; the stopwords taken
 * out, then ASCII letters lowered or raised (case_change_action LOWER /
 * UPPER; NONE keeps them; other bytes, UTF-8 sequences included, as they
 * are: locale is not read). Y has X's rank with C' columns; when every
 * string is taken out, Y is [1] (or [1, 1]) holding "" (ONNX's rule). */
static nbl_status k_strnorm(nbl_kctx *c) {
  const nbl_rt_tensor *X = c->in[0];
  if (!X || X->dtype != NBL_DT_STRING)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "X must be a tensor of strings");
  if (!(X->rank == 1 || (X->rank == 2 && X->dims[0] == 1)))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "X must have shape [C] or [1, C], has rank %d", X->rank);
  const char *act = nbl_attr_string(c->node, "case_change_action", "NONE");
  int mode = !strcmp(act, "LOWER") ? 1 : !strcmp(act, "UPPER") ? 2 : !strcmp(act, "NONE") ? 0 : -1;
  if (mode < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "case_change_action '%s' is not LOWER, UPPER or NONE", act);
  const int sensitive = nbl_attr_int(c->node, "is_case_sensitive", 0) != 0;
  const nbl_attr *sw = nbl_node_attr(c->node, "stopwords");
  if (sw && sw->type != NBL_ATTR_STRINGS) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "stopwords must be strings");
  char *const *xs = X->data;
  int64_t kept = 0;
  for (int64_t i = 0; i < X->numel; i++) kept += !is_stopword(sw, xs[i] ? xs[i] : "", sensitive);
  int64_t od[2] = {1, kept ? kept : 1};
  nbl_status st = X->rank == 1 ? nbl_kctx_alloc_out(c, 0, NBL_DT_STRING, 1, od + 1)
                               : nbl_kctx_alloc_out(c, 0, NBL_DT_STRING, 2, od);
  if (st) return st;
  char **ys = nbl_kctx_out(c, 0)->data;
  int64_t k = 0;
  for (int64_t i = 0; i < X->numel && kept; i++) {
    const char *s = xs[i] ? xs[i] : "";
    if (is_stopword(sw, s, sensitive)) continue;
    if (!(ys[k] = strdup(s))) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    for (char *p = ys[k]; *p && mode; p++)
      if (mode == 1 && *p >= 'A' && *p <= 'Z') *p = (char)(*p - 'A' + 'a');
      else if (mode == 2 && *p >= 'a' && *p <= 'z') *p = (char)(*p - 'a' + 'A');
    k++;
  }
  if (!kept && !(ys[0] = strdup(""))) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  return NBL_OK;
}

/* Y: X's rank and element type, the columns unknown (they depend on the values). */
static nbl_status shape_strnorm(nbl_shape_ctx *c) {
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  if (x.rank >= 1) x.d[x.rank - 1] = nbl_dim_unk();
  if (x.rank == 2) x.d[0] = nbl_dim_val(1);
  x.dt = NBL_DT_STRING;
  return nbl_shp_set(c, 0, &x);
}

/* RoiAlign: coordinate_transformation_mode came in opset 16 with the default
 * half_pixel; before, the pixel shift was output_half_pixel. */
static nbl_status roialign_up(nbl_adapt_ctx *c) {
  nbl_node_set_attr_string(c->graph, c->node, "coordinate_transformation_mode", "output_half_pixel");
  return NBL_OK;
}

static nbl_status roialign_down(nbl_adapt_ctx *c) {
  if (strcmp(nbl_attr_string(nbl_adapt_node(c), "coordinate_transformation_mode", "half_pixel"),
             "output_half_pixel"))
    return nbl_adapt_refuse(c, "coordinate_transformation_mode half_pixel has no form before opset 16");
  nbl_adapt_drop_attr(c, "coordinate_transformation_mode");
  return NBL_OK;
}

static const nbl_op_adapter gridsample_steps[] = {
    {.from = 16, .to = 20, .up = gridsample_up, .down = gridsample_down},
    {0},
};
static const nbl_op_adapter roialign_steps[] = {
    {.from = 10, .to = 16, .up = roialign_up, .down = roialign_down},
    {0},
};

const nbl_op_def nbl_ops_misc[] = {
    NBL_OP("Det", 11, .ref = k_det, .shape = shape_det, .stable_since = 11, .no_grad = "no rule yet"),
    NBL_OP("NonMaxSuppression", 10, .ref = k_nms, .fast = k_nms_fast, .shape = shape_nms, .stable_since = 10,
        .no_grad = NBL_NO_GRAD_INT),
    NBL_OP("GridSample", 16, .ref = k_gridsample, .shape = shape_gridsample, .stable_since = 20,
        .adapters = gridsample_steps, .grad = g_gridsample),
    NBL_OP_DEF("ai.nibble", "GridSampleGrad", 1, 1, .ref = k_gridsample_grad, .shape = shape_gridsample_grad,
        .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP("RoiAlign", 10, .ref = k_roialign, .fast = k_roialign_fast, .shape = shape_roialign, .stable_since = 16,
        .adapters = roialign_steps, .no_grad = "no rule yet"),
    NBL_OP("TfIdfVectorizer", 9, .ref = k_tfidf, .shape = shape_tfidf, .stable_since = 9,
        .no_grad = NBL_NO_GRAD_INT),
    NBL_OP("StringNormalizer", 10, .ref = k_strnorm, .shape = shape_strnorm, .stable_since = 10,
        .no_grad = "string output"),
};
const size_t nbl_ops_misc_count = sizeof nbl_ops_misc / sizeof nbl_ops_misc[0];
