/* test_optable.c - the op table is consistent: every entry is complete (a
 * reference kernel and a shape rule), the opset ranges of one op do not
 * overlap, lookup finds each entry, and no default-domain entry claims an
 * opset above NBL_OPSET_MAX. */
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
}
END_TEST

int main(void) {
  Suite *s = suite_create("optable");
  TCase *tc = tcase_create("table");
  tcase_add_test(tc, test_entries_complete);
  tcase_add_test(tc, test_lookup);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
