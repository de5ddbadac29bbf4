/* test_ir.c - IR core: building, ids, consumers, topological order, compaction, dtypes. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"

START_TEST(test_build_and_links) {
  nbl_model *m = nbl_model_new();
  ck_assert_ptr_nonnull(m);
  nbl_graph *g = m->graph;
  nbl_id x = nbl_graph_add_value(g, "x");
  nbl_id y = nbl_graph_add_value(g, "y");
  nbl_id z = nbl_graph_add_value(g, "z");
  ck_assert_int_eq(nbl_graph_add_value(g, "x"), NBL_NONE);
  ck_assert_str_eq(nbl_last_error(), "graph 'main': value name 'x' is defined twice");
  nbl_graph_add_input(g, x);
  nbl_id in1[] = {x, x};
  nbl_id n0 = nbl_graph_add_node(g, "Add", "", "add0", 2, in1, 1, &y);
  nbl_id n1 = nbl_graph_add_node(g, "Relu", "", "relu0", 1, &y, 1, &z);
  nbl_graph_add_output(g, z);
  ck_assert_int_eq(g->values[x].n_consumers, 2);
  ck_assert_int_eq(g->values[y].producer, n0);
  ck_assert_int_eq(g->values[z].producer, n1);
  ck_assert_int_eq(nbl_graph_find(g, "z"), z);
  ck_assert_int_eq(nbl_graph_find(g, "nope"), NBL_NONE);
  /* an output can have only one producer */
  ck_assert_int_eq(nbl_graph_add_node(g, "Relu", "", "dup", 1, &x, 1, &z), NBL_NONE);
  ck_assert_str_eq(nbl_last_error(),
                   "graph 'main': node 'dup' (Relu): output 'z' is already produced by node 'relu0'");
  nbl_id *order;
  int n = nbl_graph_topo_order(g, &order);
  ck_assert_int_eq(n, 2);
  ck_assert_int_eq(order[0], n0);
  ck_assert_int_eq(order[1], n1);
  free(order);
  nbl_model_free(m);
}
END_TEST

START_TEST(test_cycle) {
  nbl_model *m = nbl_model_new();
  nbl_graph *g = m->graph;
  nbl_id a = nbl_graph_add_value(g, "a"), b = nbl_graph_add_value(g, "b");
  nbl_graph_add_node(g, "Relu", "", "r1", 1, &a, 1, &b);
  nbl_graph_add_node(g, "Relu", "", "r2", 1, &b, 1, &a);
  nbl_id *order = NULL;
  ck_assert_int_eq(nbl_graph_topo_order(g, &order), -1);
  ck_assert_str_eq(nbl_last_error(), "graph 'main': node 'r1' (Relu) is on a cycle");
  nbl_model_free(m);
}
END_TEST

START_TEST(test_kill_compact_replace) {
  nbl_model *m = nbl_model_new();
  nbl_graph *g = m->graph;
  nbl_id x = nbl_graph_add_value(g, "x"), t = nbl_graph_add_value(g, "t"),
         y = nbl_graph_add_value(g, "y");
  nbl_graph_add_input(g, x);
  nbl_id id = nbl_graph_add_node(g, "Identity", "", "id", 1, &x, 1, &t);
  nbl_graph_add_node(g, "Neg", "", "neg", 1, &t, 1, &y);
  nbl_graph_add_output(g, y);
  nbl_value_replace_uses(g, t, x);
  ck_assert_int_eq(g->values[t].n_consumers, 0);
  ck_assert_int_eq(g->values[x].n_consumers, 2);
  nbl_node_kill(g, id);
  g->values[t].dead = true;
  nbl_graph_compact(g);
  ck_assert_int_eq(g->n_nodes, 1);
  ck_assert_int_eq(g->n_values, 2);
  ck_assert_str_eq(g->nodes[0].op_type, "Neg");
  nbl_id nx = nbl_graph_find(g, "x"), ny = nbl_graph_find(g, "y");
  ck_assert_int_eq(g->nodes[0].inputs[0], nx);
  ck_assert_int_eq(g->values[ny].producer, 0);
  ck_assert_int_eq(g->values[nx].n_consumers, 1);
  ck_assert_int_eq(g->outputs[0], ny);
  ck_assert_int_eq(nbl_graph_find(g, "t"), NBL_NONE);
  nbl_model_free(m);
}
END_TEST

START_TEST(test_attrs) {
  nbl_model *m = nbl_model_new();
  nbl_graph *g = m->graph;
  nbl_id x = nbl_graph_add_value(g, "x"), y = nbl_graph_add_value(g, "y");
  nbl_id n = nbl_graph_add_node(g, "Conv", "", "c", 1, &x, 1, &y);
  int64_t pads[] = {1, 1, 1, 1};
  nbl_node_set_attr_ints(g, n, "pads", 4, pads);
  nbl_node_set_attr_int(g, n, "group", 2);
  nbl_node_set_attr_string(g, n, "auto_pad", "NOTSET");
  nbl_node_set_attr_int(g, n, "group", 3); /* replaces */
  const nbl_node *node = &g->nodes[n];
  ck_assert_int_eq(node->n_attrs, 3);
  ck_assert_int_eq(nbl_attr_int(node, "group", 1), 3);
  ck_assert_int_eq(nbl_attr_int(node, "missing", 7), 7);
  int cnt;
  const int64_t *p = nbl_attr_ints(node, "pads", &cnt);
  ck_assert_int_eq(cnt, 4);
  ck_assert_int_eq(p[3], 1);
  ck_assert_str_eq(nbl_attr_string(node, "auto_pad", ""), "NOTSET");
  nbl_model_free(m);
}
END_TEST

START_TEST(test_dtypes) {
  ck_assert_uint_eq(nbl_dtype_nbytes(NBL_DT_INT4, 5), 3);
  ck_assert_uint_eq(nbl_dtype_nbytes(NBL_DT_FLOAT, 5), 20);
  ck_assert_str_eq(nbl_dtype_name(NBL_DT_INT4), "int4");
  ck_assert_int_eq(nbl_dtype_from_name("bfloat16"), NBL_DT_BFLOAT16);
  /* hand-computed half-precision encodings */
  ck_assert_uint_eq(nbl_float_to_half(1.0f), 0x3c00);
  ck_assert_uint_eq(nbl_float_to_half(-2.0f), 0xc000);
  ck_assert_uint_eq(nbl_float_to_half(65504.0f), 0x7bff);
  ck_assert_uint_eq(nbl_float_to_half(1e6f), 0x7c00);
  ck_assert_uint_eq(nbl_float_to_half(5.9604645e-8f), 0x0001); /* smallest subnormal */
  ck_assert_uint_eq(nbl_float_to_half(1.0f + 1.0f / 2048), 0x3c00); /* tie -> even */
  ck_assert(isnan(nbl_half_to_float(0x7e00)));
  ck_assert(nbl_half_to_float(0x0001) == 5.9604645e-8f);
  ck_assert(nbl_half_to_float(0x3555) == 0.333251953125f);
  ck_assert_uint_eq(nbl_float_to_bf16(1.0f), 0x3f80);
  /* int4 packing: low nibble first */
  uint8_t packed[] = {0x9f, 0x07}; /* elements: -1 (0xf), -7 (0x9), 7 */
  int64_t dims[] = {3};
  nbl_arena *a = nbl_arena_new();
  nbl_tensor *t = nbl_tensor_new(a, "w", NBL_DT_INT4, 1, dims, packed);
  ck_assert_uint_eq(t->nbytes, 2);
  ck_assert_int_eq(nbl_tensor_get_i64(t, 0), -1);
  ck_assert_int_eq(nbl_tensor_get_i64(t, 1), -7);
  ck_assert_int_eq(nbl_tensor_get_i64(t, 2), 7);
  nbl_buffer_unref(t->buf);
  nbl_arena_free(a);
  int64_t big[] = {INT64_MAX / 2, 3};
  ck_assert_int_eq(nbl_shape_numel(2, big), -1);
}
END_TEST

Suite *ir_suite(void) {
  Suite *s = suite_create("ir");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_build_and_links);
  tcase_add_test(tc, test_cycle);
  tcase_add_test(tc, test_kill_compact_replace);
  tcase_add_test(tc, test_attrs);
  tcase_add_test(tc, test_dtypes);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(ir_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
