/* test_model.h - the C tests' way to a prepared model: a path under the
 * source tree, a model loaded and rewritten by a pass pipeline, and a batch
 * of the shipped test images.
 * Header-only, static inline functions (Check's assertions on failure). */
#ifndef NBL_TEST_MODEL_H
#define NBL_TEST_MODEL_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "include/nibble.h"
#include "ir/ir.h" /* nbl_model_equal */

/* NBL_SOURCE_ROOT/rel (. when unset), malloc'ed. */
static inline char *tm_src_path(const char *rel) {
  const char *root = getenv("NBL_SOURCE_ROOT");
  if (!root) root = ".";
  size_t n = strlen(root) + strlen(rel) + 2;
  char *p = malloc(n);
  ck_assert_ptr_nonnull(p);
  snprintf(p, n, "%s/%s", root, rel);
  return p;
}

/* The model at the source-relative path `model` after the pipeline `spec`
 * (the passes' log discarded). */
static inline nbl_model *tm_prepared(const char *model, const char *spec) {
  char *path = tm_src_path(model);
  nbl_model *m = NULL;
  ck_assert_msg(nbl_model_load(path, &m) == NBL_OK, "%s", nbl_last_error());
  free(path);
  nbl_pipeline *p = NULL;
  ck_assert_msg(nbl_pipeline_parse(spec, &p) == NBL_OK, "%s", nbl_last_error());
  FILE *null = fopen("/dev/null", "w");
  nbl_pipeline_options po = {.log = null};
  ck_assert_msg(nbl_pipeline_run(p, m, &po) == NBL_OK, "%s: %s", spec, nbl_last_error());
  if (null) fclose(null);
  nbl_pipeline_free(p);
  return m;
}

/* A run's inputs: the first B (<= 100) shipped Fashion-MNIST test images
 * (models/data/fmnist_test_100.npy) and their labels. */
static inline void tm_batch(int B, nbl_host_tensor *x, nbl_host_tensor *y) {
  char *xp = tm_src_path("models/data/fmnist_test_100.npy");
  char *yp = tm_src_path("models/data/fmnist_test_100_labels.npy");
  ck_assert_msg(nbl_tensor_read(xp, x) == NBL_OK, "%s", nbl_last_error());
  ck_assert_msg(nbl_tensor_read(yp, y) == NBL_OK, "%s", nbl_last_error());
  free(xp);
  free(yp);
  x->dims[0] = y->dims[0] = B;
  x->nbytes = (size_t)B * 28 * 28 * sizeof(float);
  y->nbytes = (size_t)B * sizeof(int64_t);
}

/* m saved to a temporary file and loaded back, checked equal to m
 * (nbl_model_equal); the loaded model, which the caller frees. */
static inline nbl_model *tm_saved_and_loaded(const nbl_model *m) {
  char path[] = "/tmp/nbl_test_model_XXXXXX";
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  close(fd);
  ck_assert_msg(nbl_model_save(m, path, NULL) == NBL_OK, "%s", nbl_last_error());
  nbl_model *back = NULL;
  ck_assert_msg(nbl_model_load(path, &back) == NBL_OK, "%s", nbl_last_error());
  unlink(path);
  char why[512] = {0};
  ck_assert_msg(nbl_model_equal(m, back, why, sizeof why), "round trip: %s", why);
  return back;
}

#endif
