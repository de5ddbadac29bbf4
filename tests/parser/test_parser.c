/* test_parser.c - ONNX parser: typed data, external data, subgraphs, training
 * bindings, and bad input (each with its exact message). Bad models are built
 * with protobuf-c directly, so the test needs no python. */
#include <check.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ir/ir.h"
#include "nibble.h"
#include "onnx.pb-c.h"
#include "parser/parser.h"
#include "tests/test_data.h"

static char tmpdir[PATH_MAX];

static void make_tmp(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/nbl_parser_XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void rm_tmp(void) {
  char cmd[PATH_MAX + 16];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  ck_assert_int_eq(system(cmd), 0);
}

static void write_file(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  ck_assert_ptr_nonnull(f);
  if (len) ck_assert_uint_eq(fwrite(data, 1, len, f), len);
  fclose(f);
}

static void *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  ck_assert_ptr_nonnull(f);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  void *p = malloc((size_t)n + 1);
  ck_assert_uint_eq(fread(p, 1, (size_t)n, f), (size_t)n);
  fclose(f);
  *len = (size_t)n;
  return p;
}

/* ---- a tiny ModelProto builder on protobuf-c structs (fixed-size pools) ---- */

typedef struct mb {
  Onnx__ModelProto m;
  Onnx__GraphProto g;
  Onnx__OperatorSetIdProto op;
  Onnx__OperatorSetIdProto *ops[1];
  Onnx__NodeProto nodes[8];
  Onnx__NodeProto *nodep[8];
  char *io[8][2][4];
  Onnx__ValueInfoProto vis[8];
  Onnx__ValueInfoProto *inp[4], *outp[4];
  Onnx__TypeProto types[8];
  Onnx__TypeProto__Tensor ttypes[8];
  Onnx__TensorProto inits[4];
  Onnx__TensorProto *initp[4];
  int nvi;
} mb;

static void mb_init(mb *b) {
  memset(b, 0, sizeof *b);
  onnx__model_proto__init(&b->m);
  onnx__graph_proto__init(&b->g);
  onnx__operator_set_id_proto__init(&b->op);
  b->op.domain = "";
  b->op.has_version = 1;
  b->op.version = 13;
  b->ops[0] = &b->op;
  b->m.has_ir_version = 1;
  b->m.ir_version = 8;
  b->m.n_opset_import = 1;
  b->m.opset_import = b->ops;
  b->m.graph = &b->g;
  b->g.name = "main";
  b->g.node = b->nodep;
  b->g.input = b->inp;
  b->g.output = b->outp;
  b->g.initializer = b->initp;
}

static Onnx__ValueInfoProto *mb_vi(mb *b, char *name) {
  int i = b->nvi++;
  onnx__value_info_proto__init(&b->vis[i]);
  onnx__type_proto__init(&b->types[i]);
  onnx__type_proto__tensor__init(&b->ttypes[i]);
  b->ttypes[i].has_elem_type = 1;
  b->ttypes[i].elem_type = 1;
  b->types[i].value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
  b->types[i].tensor_type = &b->ttypes[i];
  b->vis[i].name = name;
  b->vis[i].type = &b->types[i];
  return &b->vis[i];
}

static void mb_input(mb *b, char *name) { b->inp[b->g.n_input++] = mb_vi(b, name); }
static void mb_output(mb *b, char *name) { b->outp[b->g.n_output++] = mb_vi(b, name); }

static Onnx__NodeProto *mb_node(mb *b, char *op, char *name, char *in0, char *in1, char *out0) {
  int i = (int)b->g.n_node++;
  Onnx__NodeProto *n = &b->nodes[i];
  onnx__node_proto__init(n);
  n->op_type = op;
  n->name = name;
  b->io[i][0][0] = in0;
  b->io[i][0][1] = in1;
  b->io[i][1][0] = out0;
  n->input = b->io[i][0];
  n->n_input = in1 ? 2 : 1;
  n->output = b->io[i][1];
  n->n_output = 1;
  b->nodep[i] = n;
  return n;
}

static Onnx__TensorProto *mb_init_tensor(mb *b, char *name, int dtype, int rank, int64_t *dims) {
  int i = (int)b->g.n_initializer++;
  Onnx__TensorProto *t = &b->inits[i];
  onnx__tensor_proto__init(t);
  t->name = name;
  t->has_data_type = 1;
  t->data_type = dtype;
  t->n_dims = (size_t)rank;
  t->dims = dims;
  b->initp[i] = t;
  return t;
}

/* Serialize b into tmpdir/name and return the path (static buffer). */
static const char *mb_write(mb *b, const char *name) {
  static char path[PATH_MAX + 64];
  snprintf(path, sizeof path, "%s/%s", tmpdir, name);
  size_t n = onnx__model_proto__get_packed_size(&b->m);
  uint8_t *buf = malloc(n);
  onnx__model_proto__pack(&b->m, buf);
  write_file(path, buf, n);
  free(buf);
  return path;
}

/* Load must fail with status st and exactly "<path>: <msg>". */
static void expect_fail(const char *path, nbl_status st, const char *msg) {
  nbl_model *m = (nbl_model *)1;
  nbl_status got = nbl_model_load(path, &m);
  char want[PATH_MAX + 512];
  snprintf(want, sizeof want, "%s: %s", path, msg);
  ck_assert_msg(got == st, "status %s, wanted %s (%s)", nbl_status_name(got), nbl_status_name(st),
                nbl_last_error());
  ck_assert_ptr_null(m);
  ck_assert_str_eq(nbl_last_error(), want);
}

/* A valid Relu(x + W) model. */
static void mb_relu_model(mb *b, float *w, int64_t *dims) {
  mb_init(b);
  mb_input(b, "x");
  mb_output(b, "y");
  Onnx__TensorProto *t = mb_init_tensor(b, "W", 1, 2, dims);
  t->has_raw_data = 1;
  t->raw_data.data = (uint8_t *)w;
  t->raw_data.len = (size_t)dims[0] * (size_t)dims[1] * 4;
  mb_node(b, "Add", "add", "x", "W", "s");
  mb_node(b, "Relu", "relu", "s", NULL, "y");
}

START_TEST(test_valid_and_zero_copy) {
  make_tmp();
  mb b;
  float w[6] = {1, -2, 3, -4, 5, -6};
  int64_t dims[2] = {2, 3};
  mb_relu_model(&b, w, dims);
  const char *p = mb_write(&b, "ok.onnx");
  nbl_model *m;
  ck_assert_int_eq(nbl_model_load(p, &m), NBL_OK);
  nbl_graph *g = m->graph;
  nbl_id W = nbl_graph_find(g, "W");
  ck_assert_int_ne(W, NBL_NONE);
  const nbl_tensor *t = g->values[W].init;
  ck_assert_ptr_nonnull(t);
  ck_assert_int_eq(t->dtype, NBL_DT_FLOAT);
  ck_assert_uint_eq(t->nbytes, 24);
  /* the payload is the buffer protobuf-c allocated, taken over as is */
  ck_assert_ptr_eq(t->data, t->buf->base);
  ck_assert_uint_eq(t->buf->size, 24);
  ck_assert(nbl_tensor_get_f64(t, 3) == -4.0);
  ck_assert_int_eq(g->n_nodes, 2);
  ck_assert_str_eq(g->nodes[1].op_type, "Relu");
  ck_assert_int_eq(nbl_model_opset(m, ""), 13);
  /* save -> reload is equal; save_buffer -> load_buffer too */
  char p2[PATH_MAX + 32];
  snprintf(p2, sizeof p2, "%s/ok2.onnx", tmpdir);
  ck_assert_int_eq(nbl_model_save(m, p2, NULL), NBL_OK);
  nbl_model *m2;
  ck_assert_int_eq(nbl_model_load(p2, &m2), NBL_OK);
  char why[1024];
  ck_assert_msg(nbl_model_equal(m, m2, why, sizeof why), "%s", why);
  void *buf;
  size_t len;
  ck_assert_int_eq(nbl_model_save_buffer(m, &buf, &len), NBL_OK);
  nbl_model *m3;
  ck_assert_int_eq(nbl_model_load_buffer(buf, len, "mem.onnx", NULL, &m3), NBL_OK);
  ck_assert_msg(nbl_model_equal(m, m3, why, sizeof why), "%s", why);
  free(buf);
  /* equality notices a changed weight */
  float *d = (float *)g->values[W].init->data;
  d[0] = 7;
  ck_assert(!nbl_model_equal(m, m3, why, sizeof why));
  ck_assert_str_eq(why, "graph 'main': value 'W': data differs");
  nbl_model_free(m);
  nbl_model_free(m2);
  nbl_model_free(m3);
  rm_tmp();
}
END_TEST

START_TEST(test_empty_random_truncated) {
  make_tmp();
  char p[PATH_MAX + 32];
  snprintf(p, sizeof p, "%s/empty.onnx", tmpdir);
  write_file(p, "", 0);
  expect_fail(p, NBL_ERR_PARSE, "empty file");
  snprintf(p, sizeof p, "%s/missing.onnx", tmpdir);
  expect_fail(p, NBL_ERR_IO, "cannot open: No such file or directory");
  /* random bytes (fixed LCG) */
  unsigned char rnd[4096];
  uint32_t s = 12345;
  for (size_t i = 0; i < sizeof rnd; i++) rnd[i] = (unsigned char)(td_lcg(&s) >> 24);
  snprintf(p, sizeof p, "%s/random.onnx", tmpdir);
  write_file(p, rnd, sizeof rnd);
  expect_fail(p, NBL_ERR_PARSE, "not a valid ONNX model (protobuf parse failed)");
  /* a valid model truncated at several points */
  mb b;
  float w[64 * 4];
  for (int i = 0; i < 256; i++) w[i] = (float)i;
  int64_t dims[2] = {64, 4};
  mb_relu_model(&b, w, dims);
  const char *full = mb_write(&b, "full.onnx");
  size_t len;
  unsigned char *bytes = read_file(full, &len);
  size_t cuts[] = {1, 3, 7, len / 4, len / 2, (3 * len) / 4, len - 3, len - 1};
  for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
    snprintf(p, sizeof p, "%s/cut%zu.onnx", tmpdir, cuts[i]);
    write_file(p, bytes, cuts[i]);
    expect_fail(p, NBL_ERR_PARSE, "not a valid ONNX model (protobuf parse failed)");
  }
  /* cut right after ir_version (a field boundary): parses, but is not a model */
  snprintf(p, sizeof p, "%s/cut2.onnx", tmpdir);
  write_file(p, bytes, 2);
  expect_fail(p, NBL_ERR_INVALID_MODEL, "model has no graph");
  free(bytes);
  rm_tmp();
}
END_TEST

START_TEST(test_graph_errors) {
  make_tmp();
  mb b;
  /* cycle: A(x, b) -> a, B(a) -> b */
  mb_init(&b);
  mb_input(&b, "x");
  mb_output(&b, "b");
  mb_node(&b, "Add", "A", "x", "b", "a");
  mb_node(&b, "Relu", "B", "a", NULL, "b");
  expect_fail(mb_write(&b, "cycle.onnx"), NBL_ERR_INVALID_MODEL,
              "graph 'main': node 'A' (Add) is on a cycle");
  /* undefined input */
  mb_init(&b);
  mb_input(&b, "x");
  mb_output(&b, "y");
  mb_node(&b, "Relu", "n1", "q", NULL, "y");
  expect_fail(mb_write(&b, "undef.onnx"), NBL_ERR_INVALID_MODEL,
              "graph 'main': node 'n1' (Relu): input 'q' is not defined");
  /* duplicate output names */
  mb_init(&b);
  mb_input(&b, "x");
  mb_output(&b, "y");
  mb_node(&b, "Relu", "n1", "x", NULL, "y");
  mb_node(&b, "Sigmoid", "n2", "x", NULL, "y");
  expect_fail(mb_write(&b, "dup.onnx"), NBL_ERR_INVALID_MODEL,
              "graph 'main': node 'n2' (Sigmoid): output 'y' is already produced by node 'n1'");
  /* undefined graph output */
  mb_init(&b);
  mb_input(&b, "x");
  mb_output(&b, "z");
  mb_node(&b, "Relu", "n1", "x", NULL, "y");
  expect_fail(mb_write(&b, "outundef.onnx"), NBL_ERR_INVALID_MODEL,
              "graph 'main': graph output 'z' is not defined");
  /* no opset_import */
  mb_init(&b);
  mb_input(&b, "x");
  mb_output(&b, "y");
  mb_node(&b, "Relu", "n1", "x", NULL, "y");
  b.m.n_opset_import = 0;
  expect_fail(mb_write(&b, "noopset.onnx"), NBL_ERR_INVALID_MODEL, "model has no opset_import");
  rm_tmp();
}
END_TEST

START_TEST(test_tensor_errors) {
  make_tmp();
  mb b;
  float w[6] = {0};
  int64_t dims[2] = {2, 3};
  /* raw data shorter than the shape needs */
  mb_relu_model(&b, w, dims);
  b.inits[0].raw_data.len = 12;
  expect_fail(mb_write(&b, "short.onnx"), NBL_ERR_INVALID_MODEL,
              "tensor 'W': raw data has 12 bytes, shape [2,3] of float needs 24");
  /* unknown element type */
  mb_relu_model(&b, w, dims);
  b.inits[0].data_type = 99;
  expect_fail(mb_write(&b, "dtype.onnx"), NBL_ERR_INVALID_MODEL,
              "tensor 'W': unknown element type 99");
  /* dims overflowing when multiplied */
  int64_t big[2] = {INT64_C(1) << 40, INT64_C(1) << 40};
  mb_relu_model(&b, w, big);
  b.inits[0].raw_data.len = 24;
  expect_fail(mb_write(&b, "overflow.onnx"), NBL_ERR_INVALID_MODEL,
              "tensor 'W': shape [1099511627776,1099511627776] overflows");
  /* typed field with the wrong count */
  mb_relu_model(&b, w, dims);
  b.inits[0].has_raw_data = 0;
  b.inits[0].n_float_data = 5;
  b.inits[0].float_data = w;
  expect_fail(mb_write(&b, "count.onnx"), NBL_ERR_INVALID_MODEL,
              "tensor 'W': float_data has 5 values, shape [2,3] of float needs 6");
  /* initializer type differs from the declared input type */
  mb_relu_model(&b, w, dims);
  mb_input(&b, "W");
  b.ttypes[b.nvi - 1].elem_type = 7;
  expect_fail(mb_write(&b, "decl.onnx"), NBL_ERR_INVALID_MODEL,
              "graph 'main': initializer 'W' has element type float, declared int64");
  rm_tmp();
}
END_TEST

START_TEST(test_typed_fields) {
  /* every typed field converts to the raw little-endian layout */
  nbl_arena *a = nbl_arena_new();
  int64_t d3[1] = {3};
  struct {
    int dtype;
    int32_t i32[3];
    unsigned char want[12];
    size_t nbytes;
  } cases[] = {
      {NBL_DT_INT8, {-1, 2, -128}, {0xff, 0x02, 0x80}, 3},
      {NBL_DT_UINT8, {255, 0, 7}, {0xff, 0x00, 0x07}, 3},
      {NBL_DT_BOOL, {1, 0, 1}, {1, 0, 1}, 3},
      {NBL_DT_INT16, {-2, 258, 0}, {0xfe, 0xff, 0x02, 0x01, 0, 0}, 6},
      {NBL_DT_FLOAT16, {0x3c00, 0xc000, 0x7c00}, {0x00, 0x3c, 0x00, 0xc0, 0x00, 0x7c}, 6},
      {NBL_DT_BFLOAT16, {0x3f80, 0, 0xbf80}, {0x80, 0x3f, 0, 0, 0x80, 0xbf}, 6},
      {NBL_DT_INT32, {-1, 1, 256}, {0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0, 1, 0, 0}, 12},
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    Onnx__TensorProto tp = ONNX__TENSOR_PROTO__INIT;
    tp.name = "t";
    tp.has_data_type = 1;
    tp.data_type = cases[c].dtype;
    tp.n_dims = 1;
    tp.dims = d3;
    tp.n_int32_data = 3;
    tp.int32_data = cases[c].i32;
    size_t n = onnx__tensor_proto__get_packed_size(&tp);
    uint8_t *buf = malloc(n);
    onnx__tensor_proto__pack(&tp, buf);
    nbl_tensor *t;
    ck_assert_int_eq(nbl_tensor_parse_pb(buf, n, "t.pb", a, &t), NBL_OK);
    free(buf);
    ck_assert_uint_eq(t->nbytes, cases[c].nbytes);
    ck_assert_msg(memcmp(t->data, cases[c].want, t->nbytes) == 0, "dtype %d", cases[c].dtype);
    nbl_buffer_unref(t->buf);
  }
  /* int4: int32_data holds packed bytes */
  {
    int32_t packed[2] = {0x7f, 0x08}; /* -1, 7, -8 */
    Onnx__TensorProto tp = ONNX__TENSOR_PROTO__INIT;
    tp.has_data_type = 1;
    tp.data_type = NBL_DT_INT4;
    tp.n_dims = 1;
    tp.dims = d3;
    tp.n_int32_data = 2;
    tp.int32_data = packed;
    size_t n = onnx__tensor_proto__get_packed_size(&tp);
    uint8_t *buf = malloc(n);
    onnx__tensor_proto__pack(&tp, buf);
    nbl_tensor *t;
    ck_assert_int_eq(nbl_tensor_parse_pb(buf, n, "t.pb", a, &t), NBL_OK);
    free(buf);
    ck_assert_int_eq(nbl_tensor_get_i64(t, 0), -1);
    ck_assert_int_eq(nbl_tensor_get_i64(t, 1), 7);
    ck_assert_int_eq(nbl_tensor_get_i64(t, 2), -8);
    nbl_buffer_unref(t->buf);
  }
  /* int64, double, uint32 (uint64_data), string */
  {
    int64_t i64[3] = {-5, INT64_MAX, 0};
    double dd[3] = {0.5, -1e300, 3};
    uint64_t u64[3] = {4000000000u, 1, 2};
    ProtobufCBinaryData strs[3] = {{1, (uint8_t *)"a"}, {0, NULL}, {3, (uint8_t *)"x\0y"}};
    for (int k = 0; k < 4; k++) {
      Onnx__TensorProto tp = ONNX__TENSOR_PROTO__INIT;
      tp.has_data_type = 1;
      tp.n_dims = 1;
      tp.dims = d3;
      if (k == 0) { tp.data_type = NBL_DT_INT64; tp.n_int64_data = 3; tp.int64_data = i64; }
      if (k == 1) { tp.data_type = NBL_DT_DOUBLE; tp.n_double_data = 3; tp.double_data = dd; }
      if (k == 2) { tp.data_type = NBL_DT_UINT32; tp.n_uint64_data = 3; tp.uint64_data = u64; }
      if (k == 3) { tp.data_type = NBL_DT_STRING; tp.n_string_data = 3; tp.string_data = strs; }
      size_t n = onnx__tensor_proto__get_packed_size(&tp);
      uint8_t *buf = malloc(n);
      onnx__tensor_proto__pack(&tp, buf);
      nbl_tensor *t;
      ck_assert_int_eq(nbl_tensor_parse_pb(buf, n, "t.pb", a, &t), NBL_OK);
      free(buf);
      if (k == 0) ck_assert(memcmp(t->data, i64, 24) == 0);
      if (k == 1) ck_assert(memcmp(t->data, dd, 24) == 0);
      if (k == 2) {
        ck_assert_uint_eq(t->nbytes, 12);
        ck_assert_int_eq(nbl_tensor_get_i64(t, 0), 4000000000);
        ck_assert_int_eq(nbl_tensor_get_i64(t, 2), 2);
      }
      if (k == 3) {
        ck_assert_int_eq(t->n_strings, 3);
        ck_assert_uint_eq(t->string_lens[2], 3);
        ck_assert(memcmp(t->strings[2], "x\0y", 3) == 0);
        ck_assert_uint_eq(t->string_lens[1], 0);
      }
      nbl_buffer_unref(t->buf);
    }
  }
  /* save_pb -> load_pb round trip, and a bad .pb */
  {
    make_tmp();
    float v[3] = {1.5f, -2, 0};
    nbl_tensor *t = nbl_tensor_new(a, "v", NBL_DT_FLOAT, 1, d3, v);
    char p[PATH_MAX + 16];
    snprintf(p, sizeof p, "%s/v.pb", tmpdir);
    ck_assert_int_eq(nbl_tensor_save_pb(t, p), NBL_OK);
    nbl_tensor *u;
    ck_assert_int_eq(nbl_tensor_load_file(p, a, &u), NBL_OK);
    ck_assert_str_eq(u->name, "v");
    ck_assert(memcmp(u->data, v, 12) == 0);
    nbl_buffer_unref(t->buf);
    nbl_buffer_unref(u->buf);
    write_file(p, "\x0a\x05", 2);
    ck_assert_int_eq(nbl_tensor_load_file(p, a, &u), NBL_ERR_PARSE);
    char want[PATH_MAX + 80];
    snprintf(want, sizeof want, "%s: not a valid TensorProto (protobuf parse failed)", p);
    ck_assert_str_eq(nbl_last_error(), want);
    rm_tmp();
  }
  nbl_arena_free(a);
}
END_TEST

/* External data: set initializer W of b to (location, offset, length). */
static Onnx__StringStringEntryProto ext_kv[3];
static Onnx__StringStringEntryProto *ext_kvp[3];
static char ext_off[32], ext_len[32];
static void set_external(Onnx__TensorProto *t, char *loc, long off, long len) {
  for (int i = 0; i < 3; i++) {
    onnx__string_string_entry_proto__init(&ext_kv[i]);
    ext_kvp[i] = &ext_kv[i];
  }
  snprintf(ext_off, sizeof ext_off, "%ld", off);
  snprintf(ext_len, sizeof ext_len, "%ld", len);
  ext_kv[0].key = "location";
  ext_kv[0].value = loc;
  ext_kv[1].key = "offset";
  ext_kv[1].value = ext_off;
  ext_kv[2].key = "length";
  ext_kv[2].value = ext_len;
  t->n_external_data = 3;
  t->external_data = ext_kvp;
  t->has_data_location = 1;
  t->data_location = ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
  t->has_raw_data = 0;
}

START_TEST(test_external_data) {
  make_tmp();
  char p[PATH_MAX + 64], q[PATH_MAX + 64];
  float data[16];
  for (int i = 0; i < 16; i++) data[i] = (float)i * 0.5f;
  snprintf(p, sizeof p, "%s/weights.bin", tmpdir);
  write_file(p, data, sizeof data);
  mb b;
  int64_t dims[2] = {2, 3};
  mb_relu_model(&b, data, dims);
  /* a second initializer in the same file */
  int64_t d2[1] = {4};
  Onnx__TensorProto *t2 = mb_init_tensor(&b, "V", 1, 1, d2);
  Onnx__StringStringEntryProto kv2[2], *kv2p[2] = {&kv2[0], &kv2[1]};
  onnx__string_string_entry_proto__init(&kv2[0]);
  onnx__string_string_entry_proto__init(&kv2[1]);
  kv2[0].key = "location";
  kv2[0].value = "weights.bin";
  kv2[1].key = "offset";
  kv2[1].value = "32";
  t2->n_external_data = 2;
  t2->external_data = kv2p;
  t2->has_data_location = 1;
  t2->data_location = ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
  mb_node(&b, "Relu", "r2", "V", NULL, "v2");
  set_external(&b.inits[0], "weights.bin", 8, 24);
  const char *mp = mb_write(&b, "ext.onnx");
  nbl_model *m;
  ck_assert_int_eq(nbl_model_load(mp, &m), NBL_OK);
  const nbl_tensor *W = m->graph->values[nbl_graph_find(m->graph, "W")].init;
  const nbl_tensor *V = m->graph->values[nbl_graph_find(m->graph, "V")].init;
  ck_assert(nbl_tensor_get_f64(W, 0) == 1.0); /* offset 8 = element 2 */
  ck_assert(nbl_tensor_get_f64(W, 5) == 3.5);
  ck_assert(nbl_tensor_get_f64(V, 0) == 4.0);
  ck_assert_ptr_eq(W->buf, V->buf); /* one mapping shared */
  ck_assert_str_eq(W->ext_location, "weights.bin");
  /* save with KEEP into another folder, reload, equal */
  snprintf(q, sizeof q, "%s/out", tmpdir);
  ck_assert_int_eq(mkdir(q, 0700), 0);
  snprintf(q, sizeof q, "%s/out/model.onnx", tmpdir);
  ck_assert_int_eq(nbl_model_save(m, q, NULL), NBL_OK);
  snprintf(p, sizeof p, "%s/out/weights.bin", tmpdir);
  ck_assert_int_eq(access(p, R_OK), 0);
  nbl_model *m2;
  ck_assert_int_eq(nbl_model_load(q, &m2), NBL_OK);
  char why[1024];
  ck_assert_msg(nbl_model_equal(m, m2, why, sizeof why), "%s", why);
  /* save over itself (the mapped file is replaced, not overwritten) */
  ck_assert_int_eq(nbl_model_save(m2, q, NULL), NBL_OK);
  ck_assert_msg(nbl_model_equal(m, m2, why, sizeof why), "%s", why);
  nbl_model_free(m2);
  /* NONE: everything inline */
  nbl_save_options none = {.external = NBL_EXTERNAL_NONE};
  ck_assert_int_eq(nbl_model_save(m, q, &none), NBL_OK);
  ck_assert_int_eq(nbl_model_load(q, &m2), NBL_OK);
  ck_assert_ptr_null(m2->graph->values[nbl_graph_find(m2->graph, "W")].init->ext_location);
  ck_assert(nbl_tensor_get_f64(m2->graph->values[nbl_graph_find(m2->graph, "W")].init, 5) == 3.5);
  nbl_model_free(m2);
  /* ALL with a threshold: W (24 bytes) goes out, V (16 bytes) stays inline */
  nbl_save_options all = {.external = NBL_EXTERNAL_ALL, .location = "big.data", .threshold = 20};
  ck_assert_int_eq(nbl_model_save(m, q, &all), NBL_OK);
  ck_assert_int_eq(nbl_model_load(q, &m2), NBL_OK);
  ck_assert_str_eq(m2->graph->values[nbl_graph_find(m2->graph, "W")].init->ext_location, "big.data");
  ck_assert_ptr_null(m2->graph->values[nbl_graph_find(m2->graph, "V")].init->ext_location);
  ck_assert(nbl_tensor_get_f64(m2->graph->values[nbl_graph_find(m2->graph, "W")].init, 5) == 3.5);
  nbl_model_free(m2);
  nbl_model_free(m);
  /* buffers without a folder refuse external data */
  size_t len;
  void *bytes = read_file(mp, &len);
  ck_assert_int_eq(nbl_model_load_buffer(bytes, len, "buf.onnx", NULL, &m), NBL_ERR_INVALID_MODEL);
  ck_assert_str_eq(nbl_last_error(),
                   "buf.onnx: tensor 'W': external data 'weights.bin' is not allowed here (no model folder)");
  free(bytes);
  /* too short */
  set_external(&b.inits[0], "weights.bin", 48, 24);
  expect_fail(mb_write(&b, "ext_short.onnx"), NBL_ERR_INVALID_MODEL,
              "tensor 'W': external data file 'weights.bin' has 16 bytes after offset 48, shape needs 24");
  /* escapes: ../x, absolute, symlink out */
  set_external(&b.inits[0], "../x", 0, 24);
  expect_fail(mb_write(&b, "esc1.onnx"), NBL_ERR_INVALID_MODEL,
              "tensor 'W': external data location '../x' escapes the model folder");
  set_external(&b.inits[0], "/etc/passwd", 0, 24);
  expect_fail(mb_write(&b, "esc2.onnx"), NBL_ERR_INVALID_MODEL,
              "tensor 'W': external data location '/etc/passwd' escapes the model folder");
  set_external(&b.inits[0], "sub/../../x", 0, 24);
  expect_fail(mb_write(&b, "esc3.onnx"), NBL_ERR_INVALID_MODEL,
              "tensor 'W': external data location 'sub/../../x' escapes the model folder");
  /* a symlink inside the folder pointing outside it */
  char outside[PATH_MAX + 64], link[PATH_MAX + 64];
  snprintf(outside, sizeof outside, "%s.outside.bin", tmpdir);
  write_file(outside, data, sizeof data);
  snprintf(link, sizeof link, "%s/link.bin", tmpdir);
  ck_assert_int_eq(symlink(outside, link), 0);
  set_external(&b.inits[0], "link.bin", 0, 24);
  expect_fail(mb_write(&b, "esc4.onnx"), NBL_ERR_INVALID_MODEL,
              "tensor 'W': external data location 'link.bin' escapes the model folder");
  unlink(outside);
  set_external(&b.inits[0], "nope.bin", 0, 24);
  expect_fail(mb_write(&b, "missing.onnx"), NBL_ERR_IO,
              "tensor 'W': external data file 'nope.bin': No such file or directory");
  rm_tmp();
}
END_TEST

START_TEST(test_subgraph_scoping) {
  make_tmp();
  mb b;
  mb_init(&b);
  mb_input(&b, "x");
  mb_input(&b, "c");
  b.ttypes[1].elem_type = 9;
  mb_output(&b, "y");
  mb_node(&b, "Relu", "r", "x", NULL, "rx");
  Onnx__NodeProto *ifn = mb_node(&b, "If", "if", "c", NULL, "y");
  /* then: Neg(rx) from the outer graph; else: Identity(captured name) */
  Onnx__GraphProto sg[2];
  Onnx__NodeProto sn[2], *snp[2][1];
  char *sin[2][1], *sout[2][1];
  Onnx__ValueInfoProto *so[2][1];
  Onnx__AttributeProto at[2], *atp[2];
  char *captured[2] = {"rx", "x"};
  for (int i = 0; i < 2; i++) {
    onnx__graph_proto__init(&sg[i]);
    onnx__node_proto__init(&sn[i]);
    sg[i].name = i ? "else" : "then";
    sn[i].op_type = i ? "Identity" : "Neg";
    sn[i].name = i ? "id" : "neg";
    sin[i][0] = captured[i];
    sout[i][0] = i ? "eo" : "to";
    sn[i].n_input = 1;
    sn[i].input = sin[i];
    sn[i].n_output = 1;
    sn[i].output = sout[i];
    snp[i][0] = &sn[i];
    sg[i].n_node = 1;
    sg[i].node = snp[i];
    so[i][0] = mb_vi(&b, sout[i][0]);
    sg[i].n_output = 1;
    sg[i].output = so[i];
    onnx__attribute_proto__init(&at[i]);
    at[i].name = i ? "else_branch" : "then_branch";
    at[i].has_type = 1;
    at[i].type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPH;
    at[i].g = &sg[i];
    atp[i] = &at[i];
  }
  ifn->n_attribute = 2;
  ifn->attribute = atp;
  const char *p = mb_write(&b, "if.onnx");
  nbl_model *m;
  ck_assert_int_eq(nbl_model_load(p, &m), NBL_OK);
  const nbl_node *n = &m->graph->nodes[1];
  const nbl_graph *tg = nbl_node_attr(n, "then_branch")->g;
  ck_assert_ptr_eq(tg->parent, m->graph);
  nbl_id rx = nbl_graph_find(tg, "rx");
  ck_assert_int_ne(rx, NBL_NONE);
  ck_assert(tg->values[rx].flags & NBL_VAL_OUTER);
  ck_assert(!(tg->values[nbl_graph_find(tg, "to")].flags & NBL_VAL_OUTER));
  /* round trip keeps the subgraphs */
  char q[PATH_MAX + 32], why[1024];
  snprintf(q, sizeof q, "%s/if2.onnx", tmpdir);
  ck_assert_int_eq(nbl_model_save(m, q, NULL), NBL_OK);
  nbl_model *m2;
  ck_assert_int_eq(nbl_model_load(q, &m2), NBL_OK);
  ck_assert_msg(nbl_model_equal(m, m2, why, sizeof why), "%s", why);
  nbl_model_free(m2);
  nbl_model_free(m);
  /* a captured name nobody defines */
  sin[1][0] = "ghost";
  expect_fail(mb_write(&b, "ghost.onnx"), NBL_ERR_INVALID_MODEL,
              "graph 'main': node 'if' (If): attribute 'else_branch': graph 'else': 'ghost' is "
              "used from an enclosing graph but no enclosing graph defines it");
  rm_tmp();
}
END_TEST

START_TEST(test_training_bindings) {
  make_tmp();
  mb b;
  float w[6] = {0};
  int64_t dims[2] = {2, 3};
  mb_relu_model(&b, w, dims);
  /* algorithm: W_new = Neg(W) (W captured from the main graph) */
  Onnx__GraphProto alg = ONNX__GRAPH_PROTO__INIT;
  Onnx__NodeProto an = ONNX__NODE_PROTO__INIT, *anp[1] = {&an};
  char *ain[1] = {"W"}, *aout[1] = {"W_new"};
  an.op_type = "Neg";
  an.name = "upd";
  an.n_input = 1;
  an.input = ain;
  an.n_output = 1;
  an.output = aout;
  alg.name = "alg";
  alg.n_node = 1;
  alg.node = anp;
  Onnx__ValueInfoProto *ao[1] = {mb_vi(&b, "W_new")};
  alg.n_output = 1;
  alg.output = ao;
  Onnx__StringStringEntryProto bind = ONNX__STRING_STRING_ENTRY_PROTO__INIT, *bindp[1] = {&bind};
  bind.key = "W";
  bind.value = "W_new";
  Onnx__TrainingInfoProto ti = ONNX__TRAINING_INFO_PROTO__INIT, *tip[1] = {&ti};
  ti.algorithm = &alg;
  ti.n_update_binding = 1;
  ti.update_binding = bindp;
  b.m.n_training_info = 1;
  b.m.training_info = tip;
  const char *p = mb_write(&b, "train.onnx");
  nbl_model *m;
  ck_assert_int_eq(nbl_model_load(p, &m), NBL_OK);
  ck_assert_int_eq(m->n_training, 1);
  ck_assert_str_eq(m->training[0].update_binding[0].key, "W");
  char q[PATH_MAX + 32], why[1024];
  snprintf(q, sizeof q, "%s/train2.onnx", tmpdir);
  ck_assert_int_eq(nbl_model_save(m, q, NULL), NBL_OK);
  nbl_model *m2;
  ck_assert_int_eq(nbl_model_load(q, &m2), NBL_OK);
  ck_assert_msg(nbl_model_equal(m, m2, why, sizeof why), "%s", why);
  nbl_model_free(m2);
  nbl_model_free(m);
  bind.key = "s";
  expect_fail(mb_write(&b, "train_bad1.onnx"), NBL_ERR_INVALID_MODEL,
              "training_info[0]: update_binding key 's' is not an initializer of the main graph");
  bind.key = "W";
  bind.value = "nothing";
  expect_fail(mb_write(&b, "train_bad2.onnx"), NBL_ERR_INVALID_MODEL,
              "training_info[0]: update_binding value 'nothing' is not an output of the algorithm graph");
  rm_tmp();
}
END_TEST

START_TEST(test_save_refuses_invalid) {
  make_tmp();
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_graph *g = m->graph;
  nbl_id x = nbl_graph_add_value(g, "x"), y = nbl_graph_add_value(g, "y");
  nbl_graph_add_node(g, "Relu", "", "r", 1, &x, 1, &y); /* x is not an input */
  nbl_graph_add_output(g, y);
  char p[PATH_MAX + 32];
  snprintf(p, sizeof p, "%s/bad.onnx", tmpdir);
  ck_assert_int_eq(nbl_model_save(m, p, NULL), NBL_ERR_INVALID_MODEL);
  ck_assert_str_eq(nbl_last_error(), "<model>: graph 'main': node 'r' (Relu): input 'x' is not defined");
  ck_assert_int_ne(access(p, F_OK), 0);
  /* fix it; nodes added out of order are sorted on save */
  nbl_graph_add_input(g, x);
  nbl_id z = nbl_graph_add_value(g, "z");
  nbl_id n2 = nbl_graph_add_node(g, "Neg", "", "n", 1, &z, 0, NULL);
  (void)n2;
  nbl_graph_add_node(g, "Sigmoid", "", "s", 1, &y, 1, &z);
  ck_assert_int_eq(nbl_model_save(m, p, NULL), NBL_OK);
  nbl_model *m2;
  ck_assert_int_eq(nbl_model_load(p, &m2), NBL_OK);
  ck_assert_str_eq(m2->graph->nodes[0].name, "r");
  ck_assert_str_eq(m2->graph->nodes[1].name, "s");
  ck_assert_str_eq(m2->graph->nodes[2].name, "n");
  nbl_model_free(m2);
  nbl_model_free(m);
  rm_tmp();
}
END_TEST

/* Node names repeated in the IR (passes can make them; models can bring
 * them) are written unique, first come keeps its name, the others the
 * first free suffix among all the graph's names; empty names stay empty. */
START_TEST(test_save_unique_node_names) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_graph *g = m->graph;
  const char *names[] = {"q", "q", "q_1", "q", "", ""};
  nbl_id v = nbl_graph_add_value(g, "x");
  nbl_graph_add_input(g, v);
  for (int i = 0; i < 6; i++) {
    char nm[8];
    snprintf(nm, sizeof nm, "v%d", i);
    nbl_id o = nbl_graph_add_value(g, nm);
    ck_assert_int_ne(nbl_graph_add_node(g, "Relu", "", names[i], 1, &v, 1, &o), NBL_NONE);
    v = o;
  }
  nbl_graph_add_output(g, v);
  void *buf = NULL;
  size_t len = 0;
  ck_assert_int_eq(nbl_model_save_buffer(m, &buf, &len), NBL_OK);
  Onnx__ModelProto *mp = onnx__model_proto__unpack(NULL, len, buf);
  ck_assert_ptr_nonnull(mp);
  ck_assert_uint_eq(mp->graph->n_node, 6);
  const char *want[] = {"q", "q_2", "q_1", "q_3", "", ""};
  for (int i = 0; i < 6; i++) {
    const char *got = mp->graph->node[i]->name ? mp->graph->node[i]->name : "";
    ck_assert_str_eq(got, want[i]);
  }
  onnx__model_proto__free_unpacked(mp, NULL);
  free(buf);
  ck_assert_str_eq(g->nodes[1].name, "q"); /* the IR is not changed */
  nbl_model_free(m);
}
END_TEST

/* Below IR 4 every initializer is listed as a graph input and is a
 * constant (ONNX Runtime lets a caller override an initializer only from IR
 * 4 on): the loader keeps only the true inputs, the saver lists the
 * initializers again after them (the file as it was), and the same model at
 * IR 4 keeps W as an input with a default. */
START_TEST(test_ir3_initializer_inputs) {
  make_tmp();
  for (int ir = 3; ir <= 4; ir++) {
    mb b;
    float w[6] = {1, -2, 3, -4, 5, -6};
    int64_t dims[2] = {2, 3};
    mb_relu_model(&b, w, dims);
    b.m.ir_version = ir;
    mb_input(&b, "W");
    const char *p = mb_write(&b, "ir3.onnx");
    nbl_model *m;
    ck_assert_int_eq(nbl_model_load(p, &m), NBL_OK);
    nbl_graph *g = m->graph;
    const nbl_id W = nbl_graph_find(g, "W");
    ck_assert_int_eq(g->n_inputs, ir < 4 ? 1 : 2);
    ck_assert_str_eq(g->values[g->inputs[0]].name, "x");
    ck_assert_int_eq(!!(g->values[W].flags & NBL_VAL_INPUT), ir >= 4);
    ck_assert_ptr_nonnull(g->values[W].init);
    ck_assert_int_eq(m->ir_version, ir);
    void *buf = NULL;
    size_t len = 0;
    ck_assert_int_eq(nbl_model_save_buffer(m, &buf, &len), NBL_OK);
    Onnx__ModelProto *mp = onnx__model_proto__unpack(NULL, len, buf);
    ck_assert_ptr_nonnull(mp);
    ck_assert_int_eq(mp->ir_version, ir);
    ck_assert_uint_eq(mp->graph->n_input, 2);
    ck_assert_str_eq(mp->graph->input[0]->name, "x");
    ck_assert_str_eq(mp->graph->input[1]->name, "W");
    ck_assert_uint_eq(mp->graph->n_initializer, 1);
    onnx__model_proto__free_unpacked(mp, NULL);
    nbl_model *m2;
    ck_assert_int_eq(nbl_model_load_buffer(buf, len, "ir3.onnx", NULL, &m2), NBL_OK);
    char why[1024];
    ck_assert_msg(nbl_model_equal(m, m2, why, sizeof why), "%s", why);
    free(buf);
    nbl_model_free(m2);
    /* a new initializer without a value info is listed with its tensor's type */
    if (ir < 4) {
      int64_t d1 = 3;
      float bv[3] = {0.5f, 1, 2};
      nbl_id B = nbl_graph_add_value(g, "B");
      nbl_graph_set_initializer(g, B, nbl_tensor_new(m->arena, "B", NBL_DT_FLOAT, 1, &d1, bv));
      ck_assert_int_eq(nbl_model_save_buffer(m, &buf, &len), NBL_OK);
      mp = onnx__model_proto__unpack(NULL, len, buf);
      ck_assert_ptr_nonnull(mp);
      ck_assert_uint_eq(mp->graph->n_input, 3);
      const Onnx__ValueInfoProto *vb = mp->graph->input[2];
      ck_assert_str_eq(vb->name, "B");
      ck_assert_int_eq(vb->type->tensor_type->elem_type, 1);
      ck_assert_uint_eq(vb->type->tensor_type->shape->n_dim, 1);
      ck_assert_int_eq(vb->type->tensor_type->shape->dim[0]->dim_value, 3);
      onnx__model_proto__free_unpacked(mp, NULL);
      free(buf);
    }
    nbl_model_free(m);
  }
  rm_tmp();
}
END_TEST

Suite *parser_suite(void) {
  Suite *s = suite_create("parser");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_valid_and_zero_copy);
  tcase_add_test(tc, test_empty_random_truncated);
  tcase_add_test(tc, test_graph_errors);
  tcase_add_test(tc, test_tensor_errors);
  tcase_add_test(tc, test_typed_fields);
  tcase_add_test(tc, test_external_data);
  tcase_add_test(tc, test_subgraph_scoping);
  tcase_add_test(tc, test_training_bindings);
  tcase_add_test(tc, test_save_refuses_invalid);
  tcase_add_test(tc, test_save_unique_node_names);
  tcase_add_test(tc, test_ir3_initializer_inputs);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(parser_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
