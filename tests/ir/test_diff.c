/* test_diff.c - nbl_model_diff on hand-built models: exact lines. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "nibble.h"

/* x -> Conv(W, pads) -> c [-> Relu -> y] */
static nbl_model *build(int pad, float w1, int with_relu) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_graph *g = m->graph;
  int64_t wd[] = {2};
  float w[] = {1.0f, w1};
  nbl_id x = nbl_graph_add_value(g, "x"), W = nbl_graph_add_value(g, "W");
  nbl_graph_set_initializer(g, W, nbl_tensor_new(m->arena, "W", NBL_DT_FLOAT, 1, wd, w));
  nbl_id c = nbl_graph_add_value(g, with_relu ? "c" : "y");
  nbl_graph_add_input(g, x);
  nbl_id in[] = {x, W};
  nbl_id conv = nbl_graph_add_node(g, "Conv", "", "conv", 2, in, 1, &c);
  int64_t pads[] = {pad, pad};
  nbl_node_set_attr_ints(g, conv, "pads", 2, pads);
  if (with_relu) {
    nbl_id y = nbl_graph_add_value(g, "y");
    nbl_graph_add_node(g, "Relu", "", "relu", 1, &c, 1, &y);
    nbl_graph_add_output(g, y);
  } else {
    nbl_graph_add_output(g, c);
  }
  return m;
}

static char *diff(const nbl_model *a, const nbl_model *b, int *count) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  ck_assert_int_eq(nbl_model_diff(a, b, f, count), NBL_OK);
  fclose(f);
  return buf;
}

START_TEST(test_diff_same) {
  nbl_model *a = build(0, 2.0f, 0), *b = build(0, 2.0f, 0);
  int n = -1;
  char *s = diff(a, b, &n);
  ck_assert_int_eq(n, 0);
  ck_assert_str_eq(s, "");
  free(s);
  nbl_model_free(a);
  nbl_model_free(b);
}
END_TEST

START_TEST(test_diff_changes) {
  nbl_model *a = build(0, 2.0f, 0), *b = build(1, 2.5f, 1);
  int n = -1;
  char *s = diff(a, b, &n);
  ck_assert_str_eq(s, "~ value renamed 'y' -> 'c' (output 0 of node 'conv')\n"
                      "~ node 'conv': attribute pads: [0, 0] -> [1, 1]\n"
                      "+ node 'relu' (Relu)\n"
                      "~ initializer 'W': 1 of 2 values differ, max |a-b| = 0.5\n");
  ck_assert_int_eq(n, 4);
  free(s);
  nbl_model_free(a);
  nbl_model_free(b);
}
END_TEST

int main(void) {
  Suite *s = suite_create("diff");
  TCase *tc = tcase_create("diff");
  tcase_add_test(tc, test_diff_same);
  tcase_add_test(tc, test_diff_changes);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
