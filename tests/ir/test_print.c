/* test_print.c - printers: ONNX text syntax, DOT, JSON and the info summary
 * on hand-built models, compared with exact expected output. The text cases
 * were also checked to parse with onnx.parser.parse_model (ONNX 1.12). */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "nibble.h"

/* Print m in fmt into a malloc'd string (asserts success). */
static char *print_str(const nbl_model *m, nbl_format fmt, int full) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  ck_assert_ptr_nonnull(f);
  nbl_print_options opt = {.full = full};
  nbl_status st = nbl_model_print(m, fmt, &opt, f);
  fclose(f);
  ck_assert_msg(st == NBL_OK, "print failed: %s", nbl_last_error());
  return buf;
}

static char *info_str(const nbl_model *m) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(nbl_model_print_info(m, f), NBL_OK);
  fclose(f);
  return buf;
}

static void set_tensor_type(nbl_graph *g, nbl_id v, nbl_dtype dt, int rank, const int64_t *dims) {
  nbl_type_set_tensor(g->model->arena, &g->values[v].type, dt, rank, dims);
}

/* x: float[N,2] -> Relu -> y, with names that are not identifiers. */
static nbl_model *model_names(void) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  m->ir_version = 8;
  m->producer_name = nbl_arena_strdup(m->arena, "hand \"made\"");
  nbl_graph *g = m->graph;
  g->name = nbl_arena_strdup(m->arena, "torch-jit-export");
  nbl_id x = nbl_graph_add_value(g, "input.1");
  nbl_id t = nbl_graph_add_value(g, "a_b");
  nbl_id u = nbl_graph_add_value(g, "a.b");
  nbl_id f = nbl_graph_add_value(g, "float");
  nbl_id y = nbl_graph_add_value(g, "0");
  int64_t d[2] = {-1, 2};
  set_tensor_type(g, x, NBL_DT_FLOAT, 2, d);
  g->values[x].type.dims[0].param = nbl_arena_strdup(m->arena, "batch size");
  set_tensor_type(g, y, NBL_DT_FLOAT, 2, d);
  nbl_graph_add_input(g, x);
  nbl_graph_add_node(g, "Relu", "", "relu/0", 1, &x, 1, &t);
  nbl_graph_add_node(g, "Neg", "", "", 1, &t, 1, &u);
  nbl_id in2[2] = {u, t};
  nbl_graph_add_node(g, "Add", "", "add", 2, in2, 1, &f);
  nbl_graph_add_node(g, "Identity", "", "", 1, &f, 1, &y);
  nbl_graph_add_output(g, y);
  return m;
}

START_TEST(test_text_names) {
  nbl_model *m = model_names();
  char *s = print_str(m, NBL_FORMAT_TEXT, 0);
  const char *want = "<\n"
                     "  ir_version: 8,\n"
                     "  opset_import: [\"\" : 13],\n"
                     "  producer_name: \"hand \\\"made\\\"\"\n"
                     ">\n"
                     "torch_jit_export (float[batch_size,2] input_1) => (float[?,2] _0)\n"
                     "{\n"
                     "  a_b = Relu (input_1)   # relu/0\n"
                     "  a_b_2 = Neg (a_b)\n"
                     "  float_ = Add (a_b_2, a_b)   # add\n"
                     "  _0 = Identity (float_)\n"
                     "}\n";
  ck_assert_str_eq(s, want);
  free(s);
  nbl_model_free(m);
}
END_TEST

/* Expected outputs. Checked by hand, and the text ones also parse with
 * onnx.parser.parse_model of ONNX 1.12 (apart from the escaped quote and the
 * empty typed list, syntax of later ONNX versions), JSON with json.loads and
 * DOT with `dot -Tsvg`. */
static const char *const want_attrs_text =
    "<\n"
    "  ir_version: 10,\n"
    "  opset_import: [\"\" : 17, \"ai.nibble\" : 1]\n"
    ">\n"
    "main (float[3] x) => (float[3] y, z)\n"
    "{\n"
    "  y,, z = ai.nibble.Everything (x,, x) <\n"
    "      f = 0.1,\n"
    "      f_int = 2.0,\n"
    "      i = -7,\n"
    "      s = \"say \\\"hi\\\"\",\n"
    "      fs = [1.5, -0.25, 1e-05],\n"
    "      is = [1, -2],\n"
    "      empty: ints = [],\n"
    "      ss = [\"a\", \"bc\"],\n"
    "      t = int32[2,2] {1, 2, 3, -4},\n"
    "      tp: type_proto = int64[3],\n"
    "      g = body () => (float[3] out)\n"
    "      {\n"
    "        out = Neg (x)\n"
    "      }\n"
    "    >   # every\n"
    "}\n";

static const char *const want_inits_text =
    "<\n"
    "  ir_version: 4,\n"
    "  opset_import: [\"\" : 13]\n"
    ">\n"
    "main (\n"
    "  float[1,4] x,\n"
    "  int64[5] k = {1, 2, 3, 4, 5}\n"
    ") => (float[1,5] y)\n"
    "<\n"
    "  float[5,4] w,  # 20 values elided: min -1.25, max 1.125, mean -0.0625; first -1.25, -1.125, -1, -0.875\n"
    "  float[5] b = {0.5, -1, 2, 0, 0.125}\n"
    ">\n"
    "{\n"
    "  h = Gemm <transB = 1> (x, w, b)   # fc\n"
    "  y = Add (h, k)\n"
    "}\n";

static const char *const want_inits_full =
    "<\n"
    "  ir_version: 4,\n"
    "  opset_import: [\"\" : 13]\n"
    ">\n"
    "main (\n"
    "  float[1,4] x,\n"
    "  int64[5] k = {1, 2, 3, 4, 5}\n"
    ") => (float[1,5] y)\n"
    "<\n"
    "  float[5,4] w = {\n"
    "    -1.25, -1.125, -1, -0.875, -0.75, -0.625, -0.5, -0.375, -0.25, -0.125, 0, 0.125, 0.25, 0.375, 0.5, 0.625,\n"
    "    0.75, 0.875, 1, 1.125\n"
    "  },\n"
    "  float[5] b = {0.5, -1, 2, 0, 0.125}\n"
    ">\n"
    "{\n"
    "  h = Gemm <transB = 1> (x, w, b)   # fc\n"
    "  y = Add (h, k)\n"
    "}\n";

static const char *const want_inits_dot =
    "digraph \"main\" {\n"
    "  rankdir=TB;\n"
    "  node [fontname=\"Helvetica\", fontsize=10];\n"
    "  edge [fontname=\"Helvetica\", fontsize=8];\n"
    "  \"anchor\" [shape=point, style=invis];\n"
    "  \"in0\" [shape=ellipse, style=filled, fillcolor=\"#c8ecc8\", label=\"x\\nfloat[1,4]\"];\n"
    "  \"i1\" [shape=note, style=filled, fillcolor=\"#e4e4e4\", label=\"w\\nfloat[5,4]\\n[-1.25, 1.125]\"];\n"
    "  \"i2\" [shape=note, style=filled, fillcolor=\"#e4e4e4\", label=\"b\\nfloat[5]\\n[-1, 2]\"];\n"
    "  \"in3\" [shape=ellipse, style=filled, fillcolor=\"#c8ecc8\", label=\"k\\nint64[5]\"];\n"
    "  \"out0\" [shape=ellipse, style=filled, fillcolor=\"#fbd8b0\", label=\"y\\nfloat[1,5]\"];\n"
    "  \"n0\" [shape=box, style=\"rounded,filled\", fillcolor=\"#eef3fb\", label=\"Gemm\\nfc\\ntransB=1\"];\n"
    "  \"n1\" [shape=box, style=\"rounded,filled\", fillcolor=\"#eef3fb\", label=\"Add\"];\n"
    "  \"in0\" -> \"n0\" [label=\"x\\nfloat[1,4]\"];\n"
    "  \"i1\" -> \"n0\" [label=\"w\"];\n"
    "  \"i2\" -> \"n0\" [label=\"b\"];\n"
    "  \"n0\" -> \"n1\" [label=\"h\"];\n"
    "  \"in3\" -> \"n1\" [label=\"k\"];\n"
    "  \"n1\" -> \"out0\" [label=\"y\\nfloat[1,5]\"];\n"
    "}\n";

static const char *const want_inits_json =
    "{\"ir_version\": 4,\n"
    "\"producer_name\": \"\", \"producer_version\": \"\", \"domain\": \"\", \"model_version\": 0, \"doc_string\": \"\",\n"
    "\"opset_import\": [{\"domain\": \"\", \"version\": 13}],\n"
    "\"metadata_props\": [],\n"
    "\"graph\": {\"name\": \"main\", \"doc_string\": \"\",\n"
    "\"inputs\": [{\"name\": \"x\", \"type\": {\"tensor\": {\"elem_type\": \"float\", \"shape\": [1, 4]}}}, {\"name\": \"k\", \"type\": null}],\n"
    "\"outputs\": [{\"name\": \"y\", \"type\": {\"tensor\": {\"elem_type\": \"float\", \"shape\": [1, 5]}}}],\n"
    "\"value_info\": [],\n"
    "\"initializers\": [{\"name\": \"w\", \"elem_type\": \"float\", \"dims\": [5, 4], \"numel\": 20, \"nbytes\": 80, \"summary\": {\"min\": -1.25, \"max\": 1.125, \"mean\": -0.0625, \"nan\": 0}},\n"
    "{\"name\": \"b\", \"elem_type\": \"float\", \"dims\": [5], \"numel\": 5, \"nbytes\": 20, \"summary\": {\"min\": -1, \"max\": 2, \"mean\": 0.325, \"nan\": 0}, \"data\": [0.5, -1, 2, 0, 0.125]},\n"
    "{\"name\": \"k\", \"elem_type\": \"int64\", \"dims\": [5], \"numel\": 5, \"nbytes\": 40, \"summary\": {\"min\": 1, \"max\": 5, \"mean\": 3, \"nan\": 0}, \"data\": [1, 2, 3, 4, 5]}],\n"
    "\"nodes\": [\n"
    "{\"name\": \"fc\", \"op_type\": \"Gemm\", \"domain\": \"\", \"inputs\": [\"x\", \"w\", \"b\"], \"outputs\": [\"h\"], \"attributes\": [{\"name\": \"transB\", \"type\": \"int\", \"value\": 1}]},\n"
    "{\"name\": \"\", \"op_type\": \"Add\", \"domain\": \"\", \"inputs\": [\"h\", \"k\"], \"outputs\": [\"y\"], \"attributes\": []}],\n"
    "\"sparse_initializers\": 0, \"quantization_annotations\": 0},\n"
    "\"training_info\": [],\n"
    "\"functions\": 0}\n";

static const char *const want_attrs_json =
    "{\"ir_version\": 10,\n"
    "\"producer_name\": \"\", \"producer_version\": \"\", \"domain\": \"\", \"model_version\": 0, \"doc_string\": \"\",\n"
    "\"opset_import\": [{\"domain\": \"\", \"version\": 17}, {\"domain\": \"ai.nibble\", \"version\": 1}],\n"
    "\"metadata_props\": [],\n"
    "\"graph\": {\"name\": \"main\", \"doc_string\": \"\",\n"
    "\"inputs\": [{\"name\": \"x\", \"type\": {\"tensor\": {\"elem_type\": \"float\", \"shape\": [3]}}}],\n"
    "\"outputs\": [{\"name\": \"y\", \"type\": {\"tensor\": {\"elem_type\": \"float\", \"shape\": [3]}}}, {\"name\": \"z\", \"type\": null}],\n"
    "\"value_info\": [],\n"
    "\"initializers\": [],\n"
    "\"nodes\": [\n"
    "{\"name\": \"every\", \"op_type\": \"Everything\", \"domain\": \"ai.nibble\", \"inputs\": [\"x\", \"\", \"x\"], \"outputs\": [\"y\", \"\", \"z\"], \"attributes\": [{\"name\": \"f\", \"type\": \"float\", \"value\": 0.1}, {\"name\": \"f_int\", \"type\": \"float\", \"value\": 2}, {\"name\": \"i\", \"type\": \"int\", \"value\": -7}, {\"name\": \"s\", \"type\": \"string\", \"value\": \"say \\\"hi\\\"\"}, {\"name\": \"fs\", \"type\": \"floats\", \"value\": [1.5, -0.25, 1e-05]}, {\"name\": \"is\", \"type\": \"ints\", \"value\": [1, -2]}, {\"name\": \"empty\", \"type\": \"ints\", \"value\": []}, {\"name\": \"ss\", \"type\": \"strings\", \"value\": [\"a\", \"bc\"]}, {\"name\": \"t\", \"type\": \"tensor\", \"value\": {\"name\": \"\", \"elem_type\": \"int32\", \"dims\": [2, 2], \"numel\": 4, \"nbytes\": 16, \"summary\": {\"min\": -4, \"max\": 3, \"mean\": 0.5, \"nan\": 0}, \"data\": [1, 2, 3, -4]}}, {\"name\": \"tp\", \"type\": \"type_proto\", \"value\": {\"tensor\": {\"elem_type\": \"int64\", \"shape\": [3]}}}, {\"name\": \"g\", \"type\": \"graph\", \"value\": {\"name\": \"body\", \"doc_string\": \"\",\n"
    "\"inputs\": [],\n"
    "\"outputs\": [{\"name\": \"out\", \"type\": {\"tensor\": {\"elem_type\": \"float\", \"shape\": [3]}}}],\n"
    "\"value_info\": [],\n"
    "\"initializers\": [],\n"
    "\"nodes\": [\n"
    "{\"name\": \"\", \"op_type\": \"Neg\", \"domain\": \"\", \"inputs\": [\"x\"], \"outputs\": [\"out\"], \"attributes\": []}],\n"
    "\"sparse_initializers\": 0, \"quantization_annotations\": 0}}]}],\n"
    "\"sparse_initializers\": 0, \"quantization_annotations\": 0},\n"
    "\"training_info\": [],\n"
    "\"functions\": 0}\n";

static const char *const want_inits_info =
    "ir_version:  4\n"
    "opsets:      ai.onnx 13\n"
    "graph:       main\n"
    "inputs (1):\n"
    "  x  float[1,4]\n"
    "  (+1 inputs with an initializer as default)\n"
    "outputs (1):\n"
    "  y  float[1,5]\n"
    "nodes:       2\n"
    "ops (2 kinds):\n"
    "  Add                      1\n"
    "  Gemm                     1\n"
    "parameters:  30 in 3 initializers, 140 bytes (140 B)\n"
    "  float      25 in 2 initializers, 100 bytes\n"
    "  int64      5 in 1 initializers, 40 bytes\n";

/* One node of a custom domain carrying every attribute type. */
static nbl_model *model_attrs(void) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 17);
  nbl_model_set_opset(m, "ai.nibble", 1);
  nbl_graph *g = m->graph;
  nbl_arena *a = m->arena;
  nbl_id x = nbl_graph_add_value(g, "x"), y = nbl_graph_add_value(g, "y");
  nbl_id z = nbl_graph_add_value(g, "z");
  int64_t d3[1] = {3};
  set_tensor_type(g, x, NBL_DT_FLOAT, 1, d3);
  nbl_graph_add_input(g, x);
  nbl_id ins[3] = {x, NBL_NONE, x};
  nbl_id outs[3] = {y, NBL_NONE, z};
  nbl_id n = nbl_graph_add_node(g, "Everything", "ai.nibble", "every", 3, ins, 3, outs);
  nbl_node_set_attr_float(g, n, "f", 0.1f);
  nbl_node_set_attr_float(g, n, "f_int", 2.0f);
  nbl_node_set_attr_int(g, n, "i", -7);
  nbl_node_set_attr_string(g, n, "s", "say \"hi\"");
  float fl[3] = {1.5f, -0.25f, 1e-5f};
  nbl_node_set_attr_floats(g, n, "fs", 3, fl);
  int64_t il[2] = {1, -2};
  nbl_node_set_attr_ints(g, n, "is", 2, il);
  nbl_node_set_attr_ints(g, n, "empty", 0, NULL);
  nbl_attr *ss = nbl_node_add_attr(g, n, "ss", NBL_ATTR_STRINGS);
  ss->n = 2;
  ss->strings = nbl_arena_alloc(a, 2 * sizeof(char *));
  ss->string_lens = nbl_arena_alloc(a, 2 * sizeof(size_t));
  ss->strings[0] = nbl_arena_strdup(a, "a");
  ss->strings[1] = nbl_arena_strdup(a, "bc");
  ss->string_lens[0] = 1;
  ss->string_lens[1] = 2;
  int64_t d2[2] = {2, 2};
  int32_t iv[4] = {1, 2, 3, -4};
  nbl_node_set_attr_tensor(g, n, "t", nbl_tensor_new(a, "", NBL_DT_INT32, 2, d2, iv));
  nbl_attr *tp = nbl_node_add_attr(g, n, "tp", NBL_ATTR_TYPE_PROTO);
  tp->n = 1;
  tp->types = nbl_arena_alloc(a, sizeof(nbl_type));
  nbl_type_set_tensor(a, tp->types, NBL_DT_INT64, 1, d3);
  /* a subgraph using an outer value */
  nbl_graph *sub = nbl_graph_new(m, g, "body");
  nbl_id sx = nbl_graph_add_value(sub, "x"), so = nbl_graph_add_value(sub, "out");
  sub->values[sx].flags |= NBL_VAL_OUTER;
  set_tensor_type(sub, so, NBL_DT_FLOAT, 1, d3);
  nbl_graph_add_node(sub, "Neg", "", "", 1, &sx, 1, &so);
  nbl_graph_add_output(sub, so);
  nbl_node_set_attr_graph(g, n, "g", sub);
  set_tensor_type(g, y, NBL_DT_FLOAT, 1, d3);
  nbl_graph_add_output(g, y);
  nbl_graph_add_output(g, z);
  return m;
}

START_TEST(test_text_attrs) {
  nbl_model *m = model_attrs();
  char *s = print_str(m, NBL_FORMAT_TEXT, 0);
  ck_assert_str_eq(s, want_attrs_text);
  free(s);
  nbl_model_free(m);
}
END_TEST

/* Initializers: a small one (printed), a large one (summarized), one that is also an input. */
static nbl_model *model_inits(void) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  m->ir_version = 4; /* k: an input with a default (below IR 4 a constant) */
  nbl_graph *g = m->graph;
  nbl_arena *a = m->arena;
  nbl_id x = nbl_graph_add_value(g, "x"), w = nbl_graph_add_value(g, "w");
  nbl_id b = nbl_graph_add_value(g, "b"), k = nbl_graph_add_value(g, "k");
  nbl_id h = nbl_graph_add_value(g, "h"), y = nbl_graph_add_value(g, "y");
  int64_t dx[2] = {1, 4}, dw[2] = {5, 4}, db[1] = {5}, dk[1] = {5};
  set_tensor_type(g, x, NBL_DT_FLOAT, 2, dx);
  nbl_graph_add_input(g, x);
  float wv[20], bv[5] = {0.5f, -1, 2, 0, 0.125f};
  for (int i = 0; i < 20; i++) wv[i] = (float)(i - 10) / 8;
  nbl_graph_set_initializer(g, w, nbl_tensor_new(a, "w", NBL_DT_FLOAT, 2, dw, wv));
  nbl_graph_set_initializer(g, b, nbl_tensor_new(a, "b", NBL_DT_FLOAT, 1, db, bv));
  int64_t kv[5] = {1, 2, 3, 4, 5};
  nbl_graph_add_input(g, k);
  nbl_graph_set_initializer(g, k, nbl_tensor_new(a, "k", NBL_DT_INT64, 1, dk, kv));
  nbl_id gin[3] = {x, w, b};
  nbl_id gn = nbl_graph_add_node(g, "Gemm", "", "fc", 3, gin, 1, &h);
  nbl_node_set_attr_int(g, gn, "transB", 1);
  nbl_id ain[2] = {h, k};
  nbl_graph_add_node(g, "Add", "", "", 2, ain, 1, &y);
  int64_t dy[2] = {1, 5};
  set_tensor_type(g, y, NBL_DT_FLOAT, 2, dy);
  nbl_graph_add_output(g, y);
  return m;
}

START_TEST(test_text_initializers) {
  nbl_model *m = model_inits();
  char *s = print_str(m, NBL_FORMAT_TEXT, 0);
  ck_assert_str_eq(s, want_inits_text);
  free(s);
  s = print_str(m, NBL_FORMAT_TEXT, 1);
  ck_assert_str_eq(s, want_inits_full);
  free(s);
  nbl_model_free(m);
}
END_TEST

START_TEST(test_dot) {
  nbl_model *m = model_inits();
  char *s = print_str(m, NBL_FORMAT_DOT, 0);
  ck_assert_str_eq(s, want_inits_dot);
  free(s);
  nbl_model_free(m);
}
END_TEST

START_TEST(test_json) {
  nbl_model *m = model_inits();
  char *s = print_str(m, NBL_FORMAT_JSON, 0);
  ck_assert_str_eq(s, want_inits_json);
  free(s);
  nbl_model_free(m);
  m = model_attrs();
  s = print_str(m, NBL_FORMAT_JSON, 0);
  ck_assert_str_eq(s, want_attrs_json);
  free(s);
  nbl_model_free(m);
}
END_TEST

START_TEST(test_info) {
  nbl_model *m = model_inits();
  char *s = info_str(m);
  ck_assert_str_eq(s, want_inits_info);
  free(s);
  nbl_model_free(m);
}
END_TEST

/* Mangled names are the same in a subgraph that captures an outer value;
 * bad arguments and broken tensors are errors or comments, never crashes. */
START_TEST(test_text_scopes_and_errors) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_graph *g = m->graph;
  nbl_id c = nbl_graph_add_value(g, "cond:0"), x = nbl_graph_add_value(g, "in.0");
  nbl_id y = nbl_graph_add_value(g, "out/1");
  nbl_graph_add_input(g, c);
  nbl_graph_add_input(g, x);
  nbl_graph *th = nbl_graph_new(m, g, "then-branch");
  nbl_id tx = nbl_graph_add_value(th, "in.0"), to = nbl_graph_add_value(th, "t.out");
  th->values[tx].flags |= NBL_VAL_OUTER;
  nbl_graph_add_node(th, "Identity", "", "", 1, &tx, 1, &to);
  nbl_graph_add_output(th, to);
  nbl_id n = nbl_graph_add_node(g, "If", "", "if:1", 1, &c, 1, &y);
  nbl_node_set_attr_graph(g, n, "then_branch", th);
  nbl_graph_add_output(g, y);
  /* a tensor attribute whose payload is shorter than its dims say */
  int64_t d = 1000;
  nbl_tensor *t = nbl_tensor_new(m->arena, "", NBL_DT_FLOAT, 1, &d, NULL);
  t->nbytes = 8;
  nbl_node_set_attr_tensor(g, n, "bogus", t);
  char *s = print_str(m, NBL_FORMAT_TEXT, 0);
  ck_assert_ptr_nonnull(strstr(s, "main (cond_0, in_0) => (out_1)"));
  ck_assert_ptr_nonnull(strstr(s, "then_branch = then_branch () => (t_out)"));
  ck_assert_ptr_nonnull(strstr(s, "t_out = Identity (in_0)"));
  ck_assert_ptr_nonnull(strstr(s, "out_1 = If (cond_0) <"));
  ck_assert_ptr_nonnull(
      strstr(s, "bogus = float[1000] {} # invalid payload: tensor '<unnamed>': 8 bytes of data for "
                "1000 float elements\n"));
  free(s);
  s = print_str(m, NBL_FORMAT_JSON, 0);
  ck_assert_ptr_nonnull(strstr(s, "\"error\": \"tensor '<unnamed>': 8 bytes of data for 1000 float elements\"}"));
  free(s);
  s = print_str(m, NBL_FORMAT_DOT, 0);
  ck_assert_ptr_nonnull(strstr(s, "subgraph \"cluster_1\""));
  ck_assert_ptr_nonnull(strstr(s, "\"g1_x0\" [shape=ellipse, style=dashed, label=\"in.0\\n(outer scope)\"]"));
  free(s);
  ck_assert_int_eq(nbl_model_print(NULL, NBL_FORMAT_TEXT, NULL, stdout), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(nbl_model_print(m, (nbl_format)7, NULL, stdout), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_str_eq(nbl_last_error(), "nbl_model_print: unknown format 7");
  ck_assert_int_eq(nbl_model_print_info(NULL, stdout), NBL_ERR_INVALID_ARGUMENT);
  nbl_model_free(m);
}
END_TEST

/* Floats print as the shortest text that reads back exactly. */
START_TEST(test_float_format) {
  nbl_model *m = nbl_model_new();
  nbl_graph *g = m->graph;
  nbl_id x = nbl_graph_add_value(g, "x"), y = nbl_graph_add_value(g, "y");
  nbl_graph_add_input(g, x);
  nbl_id n = nbl_graph_add_node(g, "Foo", "", "", 1, &x, 1, &y);
  float v[7] = {1.0f / 3, 1e20f, -0.0f, 16777216.0f, NAN, -INFINITY, 1.17549435e-38f};
  nbl_node_set_attr_floats(g, n, "v", 7, v);
  nbl_graph_add_output(g, y);
  char *s = print_str(m, NBL_FORMAT_TEXT, 0);
  ck_assert_ptr_nonnull(
      strstr(s, "<v = [0.33333334, 1e+20, -0.0, 16777216.0, nan, -inf, 1.1754944e-38]>"));
  free(s);
  s = print_str(m, NBL_FORMAT_JSON, 0);
  ck_assert_ptr_nonnull(
      strstr(s, "[0.33333334, 1e+20, -0, 16777216, \"NaN\", \"-Infinity\", 1.1754944e-38]"));
  free(s);
  nbl_model_free(m);
}
END_TEST

static Suite *print_suite(void) {
  Suite *s = suite_create("print");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_text_names);
  tcase_add_test(tc, test_text_attrs);
  tcase_add_test(tc, test_text_initializers);
  tcase_add_test(tc, test_dot);
  tcase_add_test(tc, test_json);
  tcase_add_test(tc, test_info);
  tcase_add_test(tc, test_text_scopes_and_errors);
  tcase_add_test(tc, test_float_format);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(print_suite());
  srunner_run_all(sr, CK_NORMAL);
  int nf = srunner_ntests_failed(sr);
  srunner_free(sr);
  return nf ? EXIT_FAILURE : EXIT_SUCCESS;
}
