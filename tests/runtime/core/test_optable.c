/* test_optable.c - the op table is consistent: every entry is complete (a
 * reference kernel and a shape rule), the opset ranges of one op do not
 * overlap, lookup finds each entry, and no default-domain entry claims an
 * opset above NBL_OPSET_MAX, and each op's opset history (stable_since and the
 * adapter steps convert-opset reads) is well-formed. */
#include <check.h>
#include <string.h>

#include "runtime/core/kernel.h"

static int same_domain(const char *a, const char *b) {
  if (!strcmp(a, "ai.onnx")) a = "";
  if (!strcmp(b, "ai.onnx")) b = "";
  return !strcmp(a, b);
}

START_TEST(test_entries_complete) {
  size_t n = nbl_op_count();
  ck_assert_uint_gt(n, 150);
  ck_assert_ptr_null(nbl_op_at(n));
  for (size_t i = 0; i < n; i++) {
    const nbl_op_def *d = nbl_op_at(i);
    ck_assert_ptr_nonnull(d);
    ck_assert_msg(d->domain && d->name && d->name[0], "entry %zu has no domain or name", i);
    ck_assert_msg(d->ref, "%s: no reference kernel", d->name);
    ck_assert_msg(d->shape, "%s (domain '%s', opset %d): no shape rule", d->name, d->domain,
                  d->since_version);
    ck_assert_msg(d->since_version >= 1 && d->since_version <= d->max_version,
                  "%s: opset range %d..%d", d->name, d->since_version, d->max_version);
    if (!d->domain[0])
      ck_assert_msg(d->max_version <= NBL_OPSET_MAX, "%s: max_version %d above NBL_OPSET_MAX %d",
                    d->name, d->max_version, NBL_OPSET_MAX);
    ck_assert_msg(!(d->grad && d->no_grad), "%s: a gradient rule and a no_grad reason", d->name);
    ck_assert_msg(!d->no_grad || d->no_grad[0], "%s: empty no_grad reason", d->name);
    /* stable_since is read at NBL_OPSET_MAX by the opset upgrade */
    if (d->stable_since)
      ck_assert_msg(!d->domain[0] && d->max_version == NBL_OPSET_MAX && d->stable_since >= 1 &&
                        d->stable_since <= NBL_OPSET_MAX,
                    "%s: stable_since %d on an entry for opsets %d..%d", d->name, d->stable_since,
                    d->since_version, d->max_version);
    /* each entry is what lookup returns anywhere in its range */
    ck_assert_ptr_eq(nbl_op_lookup(d->domain, d->name, d->since_version), d);
    ck_assert_ptr_eq(nbl_op_lookup(d->domain, d->name, d->max_version), d);
    for (size_t j = i + 1; j < n; j++) {
      const nbl_op_def *e = nbl_op_at(j);
      if (strcmp(d->name, e->name) || !same_domain(d->domain, e->domain)) continue;
      ck_assert_msg(e->since_version > d->max_version || e->max_version < d->since_version,
                    "%s: opset ranges %d..%d and %d..%d overlap", d->name, d->since_version,
                    d->max_version, e->since_version, e->max_version);
    }
  }
}
END_TEST

START_TEST(test_lookup) {
  const nbl_op_def *d = nbl_op_lookup("", "Scan", 8);
  ck_assert_ptr_nonnull(d);
  ck_assert_int_eq(d->max_version, 8);
  ck_assert_ptr_ne(nbl_op_lookup("ai.onnx", "Scan", 9), d);
  ck_assert_ptr_null(nbl_op_lookup("", "Mod", 9)); /* Mod came in opset 10 */
  ck_assert_ptr_null(nbl_op_lookup("", "Add", NBL_OPSET_MAX + 1));
  ck_assert_ptr_null(nbl_op_lookup("com.example", "Add", 13));
  ck_assert_ptr_nonnull(nbl_op_lookup("ai.nibble", "QuantizeInt4", 1));
  /* the experimental ops ONNX removed run at opsets 1-9, as in ONNX Runtime */
  ck_assert_ptr_nonnull(nbl_op_lookup("", "ImageScaler", 9));
  ck_assert_ptr_null(nbl_op_lookup("", "ImageScaler", 10));
  ck_assert_int_eq(nbl_op_lookup("", "MeanVarianceNormalization", 8)->max_version, 8);
}
END_TEST

/* The ONNX ops whose outputs are random carry NBL_OPF_RANDOM, so
 * fold-constants never evaluates them ahead of time; each has a kernel from
 * its first opset on, and no other op is flagged. */
START_TEST(test_random_flag) {
  static const struct {
    const char *op;
    int since;
  } random_ops[] = {{"RandomNormal", 1},      {"RandomUniform", 1}, {"RandomNormalLike", 1},
                    {"RandomUniformLike", 1}, {"Bernoulli", 15},    {"Multinomial", 7}};
  size_t n_random = sizeof random_ops / sizeof random_ops[0];
  for (size_t i = 0; i < n_random; i++)
    for (int v = random_ops[i].since; v <= NBL_OPSET_MAX; v++) {
      const nbl_op_def *d = nbl_op_lookup("", random_ops[i].op, v);
      ck_assert_msg(d != NULL, "%s has no kernel at opset %d", random_ops[i].op, v);
      ck_assert_msg(d->flags & NBL_OPF_RANDOM, "%s has a kernel but no NBL_OPF_RANDOM", d->name);
    }
  for (size_t i = 0; i < nbl_op_count(); i++) {
    const nbl_op_def *d = nbl_op_at(i);
    if (!(d->flags & NBL_OPF_RANDOM)) continue;
    int listed = 0;
    for (size_t k = 0; k < n_random; k++) listed |= !d->domain[0] && !strcmp(d->name, random_ops[k].op);
    ck_assert_msg(listed, "%s is flagged random", d->name);
  }
}
END_TEST

/* A few stable_since values against the ONNX operator changelog: the opset
 * of the last change of meaning (later ones only added types). */
START_TEST(test_stable_since) {
  static const struct {
    const char *op;
    int since;
  } cases[] = {{"Add", 7},        {"Conv", 1},   {"Softmax", 13}, {"ReduceSum", 13},
               {"ReduceMean", 18}, {"Split", 18}, {"Clip", 11},    {"Gelu", 20},
               /* tf_half_pixel_for_nn went at 13; LSTM's output_sequence at 7; Scan's batch at 9 */
               {"Resize", 13},     {"LSTM", 7},   {"Scan", 9}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const nbl_op_def *d = nbl_op_lookup("", cases[i].op, NBL_OPSET_MAX);
    ck_assert_ptr_nonnull(d);
    ck_assert_int_eq(d->stable_since, cases[i].since);
  }
}
END_TEST

/* Every default-domain op has a history convert-opset can read, on the
 * entry reaching NBL_OPSET_MAX, or for an op ONNX removed (no such entry:
 * Affine, Crop, ...) on its newest one: a stable_since within its opsets,
 * adapter steps that join up (each step's `to` is the next one's `from`, the
 * last `to` is stable_since), each with an up function. Only Upsample,
 * Scatter and the removed ops end (stable_since 0: their last step replaces
 * them); a removed op's last step ends where the op does, at max_version + 1. */
START_TEST(test_histories) {
  int removed = 0;
  for (size_t i = 0; i < nbl_op_count(); i++) {
    const nbl_op_def *d = nbl_op_at(i);
    const nbl_op_def *h = d->domain[0] ? NULL : nbl_op_lookup("", d->name, NBL_OPSET_MAX);
    int gone = !d->domain[0] && !h;
    for (size_t j = 0; gone && j < nbl_op_count(); j++) {
      const nbl_op_def *e = nbl_op_at(j);
      if (!e->domain[0] && !strcmp(e->name, d->name) && e->max_version > d->max_version) gone = 0;
    }
    if (d->domain[0] || (d->max_version != NBL_OPSET_MAX && !gone)) {
      ck_assert_msg(!d->adapters, "%s (%d..%d): adapters on an entry that is not the newest",
                    d->name, d->since_version, d->max_version);
      continue;
    }
    removed += gone;
    int ends = gone || !strcmp(d->name, "Upsample") || !strcmp(d->name, "Scatter");
    ck_assert_msg(ends ? d->stable_since == 0 : d->stable_since >= 1, "%s: stable_since %d",
                  d->name, d->stable_since);
    ck_assert_msg(d->stable_since <= NBL_OPSET_MAX, "%s: stable_since %d", d->name, d->stable_since);
    int prev = 0;
    const nbl_op_adapter *a = d->adapters;
    for (; a && a->to; a++) {
      ck_assert_msg(a->from >= 1 && a->from < a->to && a->up, "%s: step %d..%d", d->name, a->from,
                    a->to);
      ck_assert_msg(!prev || a->from == prev, "%s: step from %d does not join %d", d->name,
                    a->from, prev);
      prev = a->to;
    }
    if (prev) ck_assert_msg(ends || prev == d->stable_since, "%s: last step ends at %d, stable "
                            "since %d", d->name, prev, d->stable_since);
    ck_assert_msg(!ends || prev, "%s ends without a step", d->name);
    ck_assert_msg(!gone || prev == d->max_version + 1, "%s (%d..%d): the last step ends at %d",
                  d->name, d->since_version, d->max_version, prev);
  }
  /* Affine, Crop, DynamicSlice, ImageScaler, ParametricSoftplus, Scale, ScaledTanh */
  ck_assert_int_eq(removed, 7);
}
END_TEST

int main(void) {
  Suite *s = suite_create("optable");
  TCase *tc = tcase_create("table");
  tcase_add_test(tc, test_entries_complete);
  tcase_add_test(tc, test_lookup);
  tcase_add_test(tc, test_random_flag);
  tcase_add_test(tc, test_stable_since);
  tcase_add_test(tc, test_histories);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
