/*
 * profile.c - where a training session spends its time: the per-node times of
 * the gradient part's and the optimizer part's engines (nbl_engine_profile),
 * summed per op type and per part, and the slowest nodes of both.
 */
#include <stdlib.h>
#include <string.h>

#include "runtime/core/threadpool.h"
#include "runtime/train/train.h"

typedef struct prow {
  const char *op;
  int part;
  int64_t ns;
  int count;
} prow;

typedef struct pnode {
  const nbl_node *n;
  int part;
  int64_t ns;
} pnode;

static int cmp_prow(const void *a, const void *b) {
  int64_t x = ((const prow *)a)->ns, y = ((const prow *)b)->ns;
  return x < y ? 1 : x > y ? -1 : 0;
}

static int cmp_pnode(const void *a, const void *b) {
  int64_t x = ((const pnode *)a)->ns, y = ((const pnode *)b)->ns;
  return x < y ? 1 : x > y ? -1 : 0;
}

static const char *const part_name[2] = {"gradient", "optimizer"};

nbl_status nbl_train_print_profile(const nbl_train_session *s, FILE *out, int top) {
  int n[2] = {0, 0}, runs[2] = {0, 0};
  const nbl_node *const *nodes[2] = {NULL, NULL};
  const int64_t *ns[2] = {NULL, NULL};
  if (!s || !out || !s->eopt.profile || !nbl_engine_profile(s->eg, &n[0], &nodes[0], &ns[0], &runs[0]))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                      "nbl_train_print_profile: the session was created without profiling");
  if (s->eo) nbl_engine_profile(s->eo, &n[1], &nodes[1], &ns[1], &runs[1]);
  prow *rows = calloc((size_t)(n[0] + n[1]) + 1, sizeof *rows);
  pnode *all = calloc((size_t)(n[0] + n[1]) + 1, sizeof *all);
  if (!rows || !all) {
    free(rows);
    free(all);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  int nr = 0, na = 0;
  double per[2] = {0, 0}; /* ms per run of each part */
  for (int p = 0; p < 2; p++) {
    double div = runs[p] > 0 ? 1e6 * runs[p] : 1e6;
    for (int i = 0; i < n[p]; i++) {
      const char *op = nodes[p][i]->op_type ? nodes[p][i]->op_type : "?";
      int r = 0;
      while (r < nr && (rows[r].part != p || strcmp(rows[r].op, op))) r++;
      if (r == nr) rows[nr].op = op, rows[nr++].part = p;
      rows[r].ns += ns[p][i];
      rows[r].count++;
      per[p] += (double)ns[p][i] / div;
      all[na++] = (pnode){nodes[p][i], p, ns[p][i]};
    }
  }
  double total = per[0] + per[1];
  int threads = s->eopt.threads > 0 ? s->eopt.threads : nbl_default_threads();
  fprintf(out, "training profile: %d train step(s) (gradient part: %d nodes, %.3f ms per step), "
          "%d optimizer step(s) (%d nodes, %.3f ms per step), %d thread(s)\n%s\n",
          runs[0], n[0], per[0], runs[1], n[1], per[1], threads, nbl_kernel_info());
  qsort(rows, (size_t)nr, sizeof *rows, cmp_prow);
  fprintf(out, "%-28s %-9s %6s %12s %7s\n", "op", "part", "nodes", "ms/step", "share");
  for (int r = 0; r < nr; r++) {
    int p = rows[r].part;
    double ms = (double)rows[r].ns / (runs[p] > 0 ? 1e6 * runs[p] : 1e6);
    fprintf(out, "%-28s %-9s %6d %12.3f %6.1f%%\n", rows[r].op, part_name[p], rows[r].count, ms,
            total > 0 ? 100.0 * ms / total : 0.0);
  }
  if (top > 0) {
    qsort(all, (size_t)na, sizeof *all, cmp_pnode);
    if (top > na) top = na;
    fprintf(out, "slowest nodes:\n%-48s %-24s %12s\n", "node", "op", "ms/step");
    for (int i = 0; i < top; i++) {
      const nbl_node *nd = all[i].n;
      int p = all[i].part;
      fprintf(out, "%-48s %-24s %12.3f\n", nd->name && *nd->name ? nd->name : "(unnamed)",
              nd->op_type ? nd->op_type : "?",
              (double)all[i].ns / (runs[p] > 0 ? 1e6 * runs[p] : 1e6));
    }
  }
  free(rows);
  free(all);
  return NBL_OK;
}

void nbl_train_reset_profile(nbl_train_session *s) {
  if (!s) return;
  if (s->eg) nbl_engine_reset_profile(s->eg);
  if (s->eo) nbl_engine_reset_profile(s->eo);
}
