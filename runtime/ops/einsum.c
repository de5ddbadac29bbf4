/* runtime/ops/einsum.c - op family 'einsum': Einsum's kernels (the
 * reference one: any equation, every product in double; the fast one: two
 * float32 operands as batched GEMM), its shape rule and its gradient rule
 * (split from nn.c, which had reached the 1,200 lines a C file may have).
 * See kernel.h for the kernel contract. */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/grad.h"
#include "runtime/core/shape.h"
#include "runtime/kernels/gemm.h"
#include "runtime/ops/ref_common.h"

/* ------------------------------------------------------------------ Einsum */

#define EIN_MAX_OPS 8
#define EIN_MAX_LABELS 64

/* Labels: letters map to 0..51, ellipsis dims to 52.. (right-aligned). */
static int ein_label(char ch) {
  if (ch >= 'A' && ch <= 'Z') return ch - 'A';
  if (ch >= 'a' && ch <= 'z') return 26 + ch - 'a';
  return -1;
}
static char ein_char(int l) { return l < 26 ? (char)('A' + l) : l < 52 ? (char)('a' + l - 26) : '.'; }

/* dst (row-major over sz[0..nd)) = the elements of src at sum idx[d] * st[d]. */
static void ein_pack(const float *src, int nd, const int64_t *sz, const int64_t *st, float *dst) {
  int64_t idx[EIN_MAX_LABELS] = {0}, off = 0, n = 1;
  for (int d = 0; d < nd; d++) n *= sz[d];
  for (int64_t i = 0; i < n; i++) {
    dst[i] = src[off];
    for (int d = nd - 1; d >= 0; d--) {
      if (++idx[d] < sz[d]) {
        off += st[d];
        break;
      }
      off -= st[d] * (sz[d] - 1);
      idx[d] = 0;
    }
  }
}

/* The fast kernel's path: two float32 operands whose labels (of size > 1)
 * are each a batch label (both operands and the output), an m label (A and
 * the output), an n label (B and the output) or a summed label (A and B):
 * A and B gathered as [batch][M][K] and [batch][K][N], one GEMM per batch
 * (float sums), the result gathered into the output's label order. 1 when
 * done, 0 when the equation is another kind (a repeated label, a label
 * summed in one operand only), -1 out of memory. */
static int ein_gemm(nbl_kctx *c, const nbl_rt_tensor *A, const nbl_rt_tensor *B, nbl_rt_tensor *Y, int nout,
                    const int *out_lab, const int64_t *size, int64_t stride[][EIN_MAX_LABELS],
                    int op_lab[][NBL_MAX_RANK]) {
  for (int i = 0; i < 2; i++) /* a label twice in one operand (a diagonal) */
    for (int d = 0; d < c->in[i]->rank; d++)
      for (int e = d + 1; e < c->in[i]->rank; e++)
        if (op_lab[i][d] == op_lab[i][e]) return 0;
  int in_out[EIN_MAX_LABELS] = {0}, lab[4][EIN_MAX_LABELS], n[4] = {0, 0, 0, 0}; /* batch, m, n, k */
  for (int j = 0; j < nout; j++) in_out[out_lab[j]] = 1;
  int64_t ext[4] = {1, 1, 1, 1};
  for (int l = 0; l < EIN_MAX_LABELS; l++) {
    if (size[l] == 0) return 0; /* empty: the reference loop */
    if (size[l] < 0 || size[l] == 1) continue; /* unused, or of size 1 */
    int a = stride[0][l] != 0, b = stride[1][l] != 0, o = in_out[l];
    int cat = a && b && o ? 0 : a && o ? 1 : b && o ? 2 : a && b ? 3 : -1;
    if (cat < 0) return 0;
    lab[cat][n[cat]++] = l;
    ext[cat] *= size[l];
  }
  const int64_t Bt = ext[0], M = ext[1], N = ext[2], K = ext[3];
  float *ap = malloc(sizeof(float) * (size_t)(Bt * M * K + 1)), *bp = malloc(sizeof(float) * (size_t)(Bt * K * N + 1)),
        *cp = malloc(sizeof(float) * (size_t)(Bt * M * N + 1));
  if (!ap || !bp || !cp) {
    free(ap);
    free(bp);
    free(cp);
    return -1;
  }
  int64_t sz[EIN_MAX_LABELS], st[EIN_MAX_LABELS];
  const int order[2][3] = {{0, 1, 3}, {0, 3, 2}}; /* A: batch, m, k; B: batch, k, n */
  for (int i = 0; i < 2; i++) {
    int nd = 0;
    for (int q = 0; q < 3; q++)
      for (int j = 0; j < n[order[i][q]]; j++) {
        int l = lab[order[i][q]][j];
        sz[nd] = size[l];
        st[nd++] = stride[i][l];
      }
    ein_pack(c->in[i]->data, nd, sz, st, i ? bp : ap);
  }
  for (int64_t b = 0; b < Bt; b++) {
    nbl_sgemm(c, 0, 0, M, N, K, 1.0f, ap + b * M * K, K, bp + b * K * N, N, 0.0f, cp + b * M * N, N);
  }
  /* the output: each label's stride in cp = the extents after it in its category, times the later categories' */
  int64_t cst[EIN_MAX_LABELS] = {0};
  const int64_t after[3] = {M * N, N, 1};
  for (int q = 0; q < 3; q++) {
    int64_t s = after[q];
    for (int j = n[q] - 1; j >= 0; j--) {
      cst[lab[q][j]] = s;
      s *= size[lab[q][j]];
    }
  }
  for (int j = 0; j < nout; j++) sz[j] = size[out_lab[j]], st[j] = size[out_lab[j]] > 1 ? cst[out_lab[j]] : 0;
  ein_pack(cp, nout, sz, st, Y->data);
  free(ap);
  free(bp);
  free(cp);
  return 1;
}

static nbl_status ein_run(nbl_kctx *c, int fast) {
  const char *eq = nbl_attr_string(c->node, "equation", NULL);
  if (!eq) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'equation' is required");
  int nops = c->n_in;
  if (nops < 1 || nops > EIN_MAX_OPS)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "Einsum with %d inputs (supported: 1..%d)", nops,
                    EIN_MAX_OPS);
  nbl_dtype dt = NBL_DT_UNDEFINED;
  for (int i = 0; i < nops; i++) {
    if (!c->in[i]) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %d is missing", i);
    if (i == 0) dt = c->in[0]->dtype;
    else if (c->in[i]->dtype != dt)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "inputs have different element types");
  }
  if (!is_float(dt) && !is_int(dt))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "Einsum on element type %s", nbl_dtype_name(dt));
  /* parse: terms[i] = list of labels of operand i; ellipsis expanded later */
  int term_lab[EIN_MAX_OPS + 1][NBL_MAX_RANK + 1];
  int term_n[EIN_MAX_OPS + 1],
        term_ell[EIN_MAX_OPS + 1]; /* position of "..." or -1 */
  int nterms = 0,
        explicit_out = 0;
  memset(term_n, 0, sizeof term_n);
  for (int i = 0; i <= EIN_MAX_OPS; i++) term_ell[i] = -1;
  const char *p = eq;
  int cur = 0;
  for (;; p++) {
    char ch = *p;
    if (ch == ' ') continue;
    if (ch == ',' || ch == '\0' || (ch == '-' && p[1] == '>')) {
      nterms = cur + 1;
      if (ch == '\0') break;
      if (ch == '-') {
        if (explicit_out) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "equation has two '->'");
        explicit_out = 1;
        p++;
        cur = nops; /* output term */
        if (nterms != nops)
          return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "equation has %d operands, node has %d inputs",
                          nterms, nops);
        continue;
      }
      if (explicit_out) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "',' after '->'");
      if (++cur >= nops)
        return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "equation has more operands than inputs");
      continue;
    }
    if (ch == '.' && p[1] == '.' && p[2] == '.') {
      if (term_ell[cur] >= 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "two ellipses in one term");
      term_ell[cur] = term_n[cur];
      p += 2;
      continue;
    }
    int l = ein_label(ch);
    if (l < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "bad character '%c' in equation '%s'", ch, eq);
    if (term_n[cur] >= NBL_MAX_RANK)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "term too long in equation '%s'", eq);
    term_lab[cur][term_n[cur]++] = l;
  }
  if (!explicit_out && nterms != nops)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "equation has %d operands, node has %d inputs", nterms,
                    nops);
  /* expand ellipsis: each operand's ellipsis covers rank - named dims,
        right-aligned to ell_rank */
  int ell_rank = 0;
  int64_t size[EIN_MAX_LABELS];
  for (int l = 0; l < EIN_MAX_LABELS; l++) size[l] = -1;
  int op_lab[EIN_MAX_OPS][NBL_MAX_RANK];
  for (int i = 0; i < nops; i++) {
    const nbl_rt_tensor *t = c->in[i];
    int ne = t->rank - term_n[i];
    if (ne < 0 || (ne > 0 && term_ell[i] < 0))
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "operand %d has rank %d but its term names %d dims",
                      i, t->rank, term_n[i]);
    if (term_ell[i] >= 0 && ne > ell_rank) ell_rank = ne;
  }
  for (int i = 0; i < nops; i++) {
    const nbl_rt_tensor *t = c->in[i];
    int ne = t->rank - term_n[i], k = 0;
    for (int j = 0; j <= term_n[i]; j++) {
      if (j == term_ell[i])
        for (int e = 0; e < ne; e++) op_lab[i][k++] = 52 + (ell_rank - ne) + e;
      if (j < term_n[i]) op_lab[i][k++] = term_lab[i][j];
    }
    for (int d = 0; d < t->rank; d++) {
      int l = op_lab[i][d];
      int64_t dim = t->dims[d];
      if (size[l] < 0) size[l] = dim;
      else if (size[l] != dim) {
        if (l >= 52 && size[l] == 1) size[l] = dim;
        else if (!(l >= 52 && dim == 1))
          return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "label '%c' has sizes %lld and %lld", ein_char(l),
                          (long long)size[l], (long long)dim);
      }
    }
  }
  /* output labels */
  int out_lab[NBL_MAX_RANK + NBL_MAX_RANK], nout = 0;
  if (explicit_out) {
    for (int j = 0; j <= term_n[nops]; j++) {
      if (j == term_ell[nops])
        for (int e = 0; e < ell_rank; e++) out_lab[nout++] = 52 + e;
      if (j < term_n[nops]) {
        int l = term_lab[nops][j];
        if (size[l] < 0)
          return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "output label '%c' is not in any input",
                          ein_char(l));
        out_lab[nout++] = l;
      }
    }
    if (term_ell[nops] < 0 && ell_rank > 0) {
      /* ellipsis dims not in the output are summed; allowed */
    }
  } else {
    for (int e = 0; e < ell_rank; e++) out_lab[nout++] = 52 + e;
    int count[52] = {0};
    for (int i = 0; i < nops; i++)
      for (int j = 0; j < term_n[i]; j++) count[term_lab[i][j]]++;
    for (int l = 0; l < 52; l++)
      if (count[l] == 1) out_lab[nout++] = l;
  }
  if (nout > NBL_MAX_RANK) return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "output rank too large");
  /* summed labels: used, not in output */
  int in_out[EIN_MAX_LABELS] = {0};
  for (int j = 0; j < nout; j++) {
    if (in_out[out_lab[j]]) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "output repeats a label");
    in_out[out_lab[j]] = 1;
  }
  int all_lab[EIN_MAX_LABELS], nall = 0;
  for (int j = 0; j < nout; j++) all_lab[nall++] = out_lab[j];
  for (int l = 0; l < EIN_MAX_LABELS; l++)
    if (size[l] >= 0 && !in_out[l]) all_lab[nall++] = l;
  /* strides per operand per label (repeated labels add: diagonal; broadcast dims: 0) */
  int64_t stride[EIN_MAX_OPS][EIN_MAX_LABELS];
  memset(stride, 0, sizeof stride);
  for (int i = 0; i < nops; i++) {
    int64_t st[NBL_MAX_RANK];
    nbl_strides(c->in[i]->rank, c->in[i]->dims, st);
    for (int d = 0; d < c->in[i]->rank; d++)
      if (c->in[i]->dims[d] != 1) stride[i][op_lab[i][d]] += st[d];
  }
  int64_t od[NBL_MAX_RANK];
  for (int j = 0; j < nout; j++) od[j] = size[out_lab[j]];
  nbl_status st = nbl_kctx_alloc_out(c, 0, dt, nout, od);
  if (st) return st;
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  if (fast && nops == 2 && dt == NBL_DT_FLOAT) {
    int r = ein_gemm(c, c->in[0], c->in[1], Y, nout, out_lab, size, stride, op_lab);
    if (r < 0) return oom(c);
    if (r) return NBL_OK;
  }
  int64_t out_n = Y->numel, sum_n = 1;
  for (int j = nout; j < nall; j++) sum_n *= size[all_lab[j]];
  double *v[EIN_MAX_OPS];
  const nbl_rt_tensor *ts[EIN_MAX_OPS];
  for (int i = 0; i < nops; i++) ts[i] = c->in[i];
  double *y = malloc((size_t)(out_n ? out_n : 1) * sizeof(double));
  if (!y || !conv_inputs(nops, ts, v)) {
    free(y);
    return oom(c);
  }
  int64_t idx[EIN_MAX_LABELS];
  for (int64_t o = 0; o < out_n; o++) {
    int64_t r = o;
    for (int j = nout - 1; j >= 0; j--) {
      idx[j] = r % od[j];
      r /= od[j];
    }
    int64_t base[EIN_MAX_OPS];
    for (int i = 0; i < nops; i++) {
      base[i] = 0;
      for (int j = 0; j < nout; j++) base[i] += idx[j] * stride[i][out_lab[j]];
    }
    double acc = 0;
    for (int j = nout; j < nall; j++) idx[j] = 0;
    for (int64_t s = 0; s < sum_n; s++) {
      double prod = 1;
      for (int i = 0; i < nops; i++) {
        int64_t off = base[i];
        for (int j = nout; j < nall; j++) off += idx[j] * stride[i][all_lab[j]];
        prod *= v[i][off];
      }
      acc += prod;
      for (int j = nall - 1; j >= nout; j--) {
        if (++idx[j] < size[all_lab[j]]) break;
        idx[j] = 0;
      }
    }
    y[o] = acc;
  }
  nbl_from_f64(Y, y);
  free(y);
  free_all(nops, v);
  return NBL_OK;
}

static nbl_status k_einsum(nbl_kctx *c) { return ein_run(c, 0); }
static nbl_status k_einsum_fast(nbl_kctx *c) { return ein_run(c, 1); }

/* ------------------------------------------------------------------ shape rule */

/* Einsum: letters to dims per operand, "..." broadcast. */
static nbl_status shape_einsum(nbl_shape_ctx *c) {
  const nbl_node *n = c->node;
  const char *eq = nbl_attr_string(n, "equation", NULL);
  nbl_dtype dt = nbl_shp_in_dtype(c, 0);
  if (!eq) return nbl_shp_set_dt(c, 0, dt, -1);
  nbl_dim letter[128];
  bool seen[128] = {false};
  int count[128] = {0};
  nbl_shp ell;
  ell.rank = -1;
  const char *p = eq;
  int op = 0;
  bool ok = true;
  while (*p && !(p[0] == '-' && p[1] == '>')) {
    nbl_shp s;
    nbl_shp_in(c, op, &s);
    const char *q = p;
    int nl = 0;
    bool has_ell = false;
    while (*q && *q != ',' && !(q[0] == '-' && q[1] == '>')) {
      if (*q == '.') {
        has_ell = true;
        q += 3;
        continue;
      }
      if (*q != ' ') nl++;
      q++;
    }
    int ne = s.rank >= 0 ? s.rank - nl : -1;
    if (s.rank < 0 || ne < 0) ok = false;
    int di = 0;
    for (const char *r = p; r < q && ok;) {
      if (*r == '.') {
        nbl_shp e;
        e.rank = ne;
        for (int i = 0; i < ne; i++) e.d[i] = s.d[di + i];
        if (ell.rank < 0) ell = e;
        else {
          nbl_shp m;
          if (!nbl_shp_bcast(&m, &ell, &e)) return nbl_shp_bcast_err(c, &ell, &e);
          ell = m;
        }
        di += ne;
        r += 3;
        continue;
      }
      unsigned ch = (unsigned char)*r++;
      if (ch == ' ' || ch >= 128) continue;
      nbl_dim d = s.d[di++];
      if (!seen[ch] || (!nbl_dim_known(letter[ch]) && nbl_dim_known(d))) letter[ch] = d;
      else if (nbl_dim_known(letter[ch]) && nbl_dim_known(d) && letter[ch].value != d.value &&
               d.value != 1 && letter[ch].value != 1)
        return nbl_errorf(NBL_ERR_INVALID_MODEL, "node '%s' (Einsum): label '%c' has sizes %lld and %lld",
                          n->name, ch, (long long)letter[ch].value, (long long)d.value);
      else if (nbl_dim_known(letter[ch]) && letter[ch].value == 1 && nbl_dim_known(d))
        letter[ch] = d;
      seen[ch] = true;
      count[ch]++;
    }
    if (!has_ell && ne > 0) ok = false;
    op++;
    p = q;
    if (*p == ',') p++;
  }
  if (!ok) return nbl_shp_set_dt(c, 0, dt, -1);
  nbl_shp o;
  o.dt = dt;
  o.rank = 0;
  if (p[0] == '-') {
    for (p += 2; *p; p++) {
      if (*p == '.') {
        for (int i = 0; i < ell.rank && o.rank < NBL_SHP_MAXR; i++) o.d[o.rank++] = ell.d[i];
        p += 2;
        continue;
      }
      unsigned ch = (unsigned char)*p;
      if (ch == ' ' || ch >= 128) continue;
      if (!seen[ch] || o.rank >= NBL_SHP_MAXR) return nbl_shp_set_dt(c, 0, dt, -1);
      o.d[o.rank++] = letter[ch];
    }
  } else {
    for (int i = 0; i < ell.rank; i++) o.d[o.rank++] = ell.d[i];
    for (int ch = 0; ch < 128; ch++)
      if (seen[ch] && count[ch] == 1 && o.rank < NBL_SHP_MAXR) o.d[o.rank++] = letter[ch];
  }
  return nbl_shp_set(c, 0, &o);
}

/* ------------------------------------------------------------------ gradient rule */

/* A letter no term of the equation uses (marked used); the sticky error when none is left. */
static char ein_fresh(nbl_grad_ctx *gc, int *used) {
  for (int l = 0; l < 52; l++)
    if (!used[l]) return used[l] = 1, ein_char(l);
  nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "the equation uses every letter");
  return 'A';
}

/* The Einsum equation in letters (subs[0..n): operands, subs[n]: the output,
 * made explicit): an ellipsis becomes a letter per dim, shared, or the
 * operand's own where its dim is 1 against a larger one (a broadcast: the
 * forward sums that label over its one element). Needs the ranks of operands
 * with an ellipsis and their dims known (or the same symbol) to tell. */
static nbl_status ein_letters(nbl_grad_ctx *gc, const char *eq, int n, char subs[][EIN_MAX_LABELS + 1], int *used) {
  char raw[EIN_MAX_OPS + 1][EIN_MAX_LABELS + 1]; /* '.' stands for an ellipsis */
  int cnt[52] = {0}, k = 0, len = 0, explicit_out = 0;
  for (const char *p = eq;; p++) {
    char ch = *p;
    if (ch == ' ') continue;
    if (ch == ',' || ch == '-' || ch == 0) {
      raw[k++][len] = 0, len = 0;
      if (ch == 0) break;
      if (ch == '-' && (p[1] != '>' || explicit_out || k != n))
        return nbl_grad_fail(gc, NBL_ERR_INVALID_MODEL, "equation '%s' does not match %d operands", eq, n);
      if (ch == '-') p++, explicit_out = 1;
      else if (k >= n || explicit_out)
        return nbl_grad_fail(gc, NBL_ERR_INVALID_MODEL, "equation '%s' has more operands than inputs", eq);
      continue;
    }
    if (ch == '.' && (p[1] != '.' || p[2] != '.' || memchr(raw[k], '.', (size_t)len)))
      return nbl_grad_fail(gc, NBL_ERR_INVALID_MODEL, "equation '%s' has a bad ellipsis", eq);
    if (ch != '.' && ein_label(ch) < 0)
      return nbl_grad_fail(gc, NBL_ERR_INVALID_MODEL, "equation '%s' has a bad label '%c'", eq, ch);
    if (ch == '.') p += 2;
    else used[ein_label(ch)] = 1, cnt[ein_label(ch)] += !explicit_out;
    if (len >= EIN_MAX_LABELS - 1) return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "equation '%s' is too long", eq);
    raw[k][len++] = ch;
  }
  if (k != n + explicit_out)
    return nbl_grad_fail(gc, NBL_ERR_INVALID_MODEL, "equation '%s' has %d operands for %d inputs", eq, k, n);
  int ne[EIN_MAX_OPS] = {0}, E = 0, any = 0;
  for (int i = 0; i < n; i++) {
    if (!strchr(raw[i], '.')) continue;
    int r = nbl_grad_rank(gc, nbl_grad_x(gc, i));
    if (r < 0) return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "operand %d has an ellipsis and an unknown rank", i);
    ne[i] = r - ((int)strlen(raw[i]) - 1);
    if (ne[i] < 0) return nbl_grad_fail(gc, NBL_ERR_INVALID_MODEL, "operand %d has rank %d, fewer dims than labels", i, r);
    any = 1, E = ne[i] > E ? ne[i] : E;
  }
  if (!explicit_out) { /* implicit output: the ellipsis, then the labels seen once in order */
    len = 0;
    if (any) raw[n][len++] = '.';
    for (int l = 0; l < 52; l++)
      if (cnt[l] == 1) raw[n][len++] = ein_char(l);
    raw[n][len] = 0;
  }
  /* per ellipsis dim g (right-aligned): the shared letter, and per operand its letter */
  char shared[NBL_MAX_RANK], own[EIN_MAX_OPS][NBL_MAX_RANK];
  for (int g = 0; g < E; g++) {
    shared[g] = ein_fresh(gc, used);
    int64_t big = 1;
    int pos[EIN_MAX_OPS];
    for (int i = 0; i < n; i++) {
      pos[i] = g - (E - ne[i]) < 0 ? -1 : (int)(strchr(raw[i], '.') - raw[i]) + g - (E - ne[i]);
      int64_t d = pos[i] < 0 ? 1 : nbl_grad_dim(gc, nbl_grad_x(gc, i), pos[i]);
      big = d > big ? d : big;
    }
    for (int i = 0; i < n; i++) {
      if (pos[i] < 0) continue;
      nbl_id xi = nbl_grad_x(gc, i);
      int64_t d = nbl_grad_dim(gc, xi, pos[i]);
      own[i][g] = d == 1 && big > 1 ? ein_fresh(gc, used) : shared[g];
      for (int j = 0; j < n && d < 0; j++)
        if (j != i && pos[j] >= 0 && !nbl_grad_dim_same(gc, xi, pos[i], nbl_grad_x(gc, j), pos[j]))
          return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "equation '%s': the ellipsis dims must be known (a broadcast?)", eq);
    }
  }
  for (int i = 0; i <= n; i++) {
    int o = 0;
    for (const char *q = raw[i]; *q; q++)
      if (*q != '.') subs[i][o++] = *q;
      else
        for (int g = i < n ? E - ne[i] : 0; g < E; g++) subs[i][o++] = i < n ? own[i][g] : shared[g];
    subs[i][o] = 0;
  }
  return nbl_grad_status(gc);
}

/* Einsum: operand i's gradient is the Einsum of dY and the other operands
 * to operand i's labels ("ij,jk->ik": dA = "ik,jk->ij"(dY, B)); a label only
 * operand i has (summed away by the forward) is left out of that product
 * and dY broadcast along it (Unsqueeze + Expand). An ellipsis is first
 * written as letters (ein_letters). A label repeated within operand i (a
 * diagonal, "ii->i") gives the gradient of its diagonal, which is then put
 * back on the diagonal by one more Einsum with identity matrices (EyeLike;
 * their sizes must be known): "iij": "ij,iA->iAj"(d, I). */
static nbl_status g_einsum(nbl_grad_ctx *gc) {
  const char *eq = nbl_attr_string(nbl_grad_node(gc), "equation", NULL);
  int n = nbl_grad_n_in(gc);
  if (!eq || n < 1 || n > EIN_MAX_OPS) return nbl_grad_fail(gc, NBL_ERR_INVALID_MODEL, "bad equation or operands");
  char subs[EIN_MAX_OPS + 1][EIN_MAX_LABELS + 1]; /* operands' labels, then the output's */
  int used[52] = {0};
  if (ein_letters(gc, eq, n, subs, used)) return nbl_grad_status(gc);
  const char *out = subs[n];
  nbl_id dy = nbl_grad_dy(gc, 0);
  for (int i = 0; i < n; i++) {
    if (!nbl_grad_wants(gc, i)) continue;
    char kept[EIN_MAX_LABELS + 1], dsub[EIN_MAX_LABELS + 1], eq2[(EIN_MAX_OPS + 2) * (EIN_MAX_LABELS + 2)];
    int64_t miss[EIN_MAX_LABELS];
    int nk = 0, nm = 0, nd = 0;
    for (const char *q = subs[i]; *q; q++) /* the labels once each: the diagonal's */
      if (!memchr(dsub, *q, (size_t)nd)) dsub[nd++] = *q;
    dsub[nd] = 0;
    for (int d = 0; d < nd; d++) {
      int elsewhere = strchr(out, dsub[d]) != NULL;
      for (int j = 0; j < n && !elsewhere; j++) elsewhere = j != i && strchr(subs[j], dsub[d]);
      if (elsewhere) kept[nk++] = dsub[d];
      else miss[nm++] = d;
    }
    kept[nk] = 0;
    nbl_id in[EIN_MAX_OPS + NBL_MAX_RANK], X = nbl_grad_x(gc, i);
    int m = 0, rep = nd != (int)strlen(subs[i]);
    size_t o = (size_t)snprintf(eq2, sizeof eq2, "%s", out);
    in[m++] = dy;
    for (int j = 0; j < n; j++)
      if (j != i) {
        o += (size_t)snprintf(eq2 + o, sizeof eq2 - o, ",%s", subs[j]);
        in[m++] = nbl_grad_x(gc, j);
      }
    snprintf(eq2 + o, sizeof eq2 - o, "->%s", kept);
    nbl_id g = nbl_grad_op(gc, "Einsum", "", m, in);
    nbl_grad_attr_string(gc, "equation", eq2);
    if (nm) { /* labels only operand i had: dY is constant along them */
      nbl_id like = X;
      if (rep) { /* the diagonal's shape */
        like = nbl_grad_op(gc, "Einsum", "", 1, &X);
        snprintf(eq2, sizeof eq2, "%s->%s", subs[i], dsub);
        nbl_grad_attr_string(gc, "equation", eq2);
      }
      g = nbl_grad_unsqueeze(gc, g, nm, miss);
      g = nbl_grad_bin(gc, "Expand", g, nbl_grad_shape(gc, like));
    }
    if (rep) { /* back onto the diagonal: a letter of its own per repeat, tied by an identity */
      char full[EIN_MAX_LABELS + 1];
      int r = (int)strlen(subs[i]);
      m = 0;
      in[m++] = g;
      o = (size_t)snprintf(eq2, sizeof eq2, "%s", dsub);
      for (int d = 0; d < r; d++) {
        const char *first = strchr(subs[i], subs[i][d]);
        full[d] = subs[i][d];
        if (first == subs[i] + d) continue;
        int64_t sz = nbl_grad_dim(gc, X, d), dims[2];
        if (sz < 0) sz = nbl_grad_dim(gc, X, (int)(first - subs[i]));
        if (sz < 0) return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "label '%c' is repeated in operand %d: its size must be known", full[d], i);
        full[d] = ein_fresh(gc, used);
        dims[0] = dims[1] = sz;
        nbl_id z = nbl_grad_op(gc, "ConstantOfShape", "", 1, (nbl_id[]){nbl_grad_const_i64(gc, 2, dims)});
        in[m] = nbl_grad_op(gc, "EyeLike", "", 1, &z);
        nbl_grad_attr_int(gc, "dtype", nbl_grad_dtype(gc, X));
        m++;
        o += (size_t)snprintf(eq2 + o, sizeof eq2 - o, ",%c%c", subs[i][d], full[d]);
      }
      full[r] = 0;
      snprintf(eq2 + o, sizeof eq2 - o, "->%s", full);
      g = nbl_grad_op(gc, "Einsum", "", m, in);
      nbl_grad_attr_string(gc, "equation", eq2);
    }
    nbl_grad_set_dx(gc, i, g);
  }
  return nbl_grad_status(gc);
}

/* ------------------------------------------------------------------ table */

const nbl_op_def nbl_ops_einsum[] = {
    NBL_OP("Einsum", 12, .ref = k_einsum, .fast = k_einsum_fast, .shape = shape_einsum, .stable_since = 12,
        .grad = g_einsum),
};
const size_t nbl_ops_einsum_count = sizeof nbl_ops_einsum / sizeof nbl_ops_einsum[0];
