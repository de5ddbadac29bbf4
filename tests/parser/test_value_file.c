/* test_value_file.c - sequence and optional value files (nbl_value_read,
 * nbl_tensor_write, nbl_host_tensor_free): round trips, files of the ONNX
 * test data, and bad bytes (truncated, mutated, unsupported contents), each
 * with its message naming the file. */
#include <check.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nibble.h"

static char tmpdir[PATH_MAX];

static void make_tmp(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/nbl_value_XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void rm_tmp(void) {
  char cmd[PATH_MAX + 16];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  ck_assert_int_eq(system(cmd), 0);
}

static void tmp_path(char *out, size_t cap, const char *name) {
  snprintf(out, cap, "%s/%s", tmpdir, name);
}

static const char *testdata_node(void) {
  const char *root = getenv("NBL_TESTDATA");
  static char dir[1024];
  snprintf(dir, sizeof dir, "%s/node", root && *root ? root : "/usr/share/libonnx-testdata/data");
  return dir;
}

static void write_bytes(const char *path, const void *b, size_t n) {
  FILE *f = fopen(path, "wb");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(b, 1, n, f), n);
  ck_assert_int_eq(fclose(f), 0);
}

/* The bytes of a file (malloc'd); NULL when it cannot be read. */
static unsigned char *read_bytes(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  unsigned char *b = malloc(1 << 20);
  *n = fread(b, 1, 1 << 20, f);
  fclose(f);
  return b;
}

/* A host tensor viewing `data` (not owned: never passed to nbl_host_tensor_free). */
static nbl_host_tensor view(nbl_dtype dt, int rank, const int64_t *dims, void *data, size_t nbytes) {
  nbl_host_tensor t = {.dtype = dt, .rank = rank, .data = data, .nbytes = nbytes};
  for (int d = 0; d < rank; d++) t.dims[d] = dims[d];
  return t;
}

/* a and b hold the same tensor (type, shape, bytes) */
static void assert_same_tensor(const nbl_host_tensor *a, const nbl_host_tensor *b) {
  ck_assert_int_eq(a->kind, NBL_VALUE_TENSOR);
  ck_assert_int_eq(b->kind, NBL_VALUE_TENSOR);
  ck_assert_int_eq(a->dtype, b->dtype);
  ck_assert_int_eq(a->rank, b->rank);
  for (int d = 0; d < a->rank; d++) ck_assert_int_eq(a->dims[d], b->dims[d]);
  ck_assert_uint_eq(a->nbytes, b->nbytes);
  if (a->nbytes) ck_assert_int_eq(memcmp(a->data, b->data, a->nbytes), 0);
  ck_assert_ptr_null(b->name);
  ck_assert_int_eq(b->n_items, 0);
  ck_assert_ptr_null(b->items);
}

static float f_a[6] = {1.5f, -2, 3, 4.25f, 5, 6}, f_b[1] = {-7.125f}, f_c[8] = {0, 1, 2, 3, 4, 5, 6, 7};
static int64_t i_a[3] = {1, -2, 3}, i_b[4] = {INT64_MAX, INT64_MIN, 0, 42}, i_c[1] = {9};
static const int64_t d23[] = {2, 3}, d1[] = {1}, d222[] = {2, 2, 2}, d3[] = {3}, d4[] = {4},
                     d0[] = {0};

START_TEST(test_sequence_roundtrip) {
  make_tmp();
  char path[PATH_MAX];
  /* floats of three shapes (a scalar among them), then int64 of three */
  nbl_host_tensor fi[3] = {view(NBL_DT_FLOAT, 2, d23, f_a, sizeof f_a),
                           view(NBL_DT_FLOAT, 0, NULL, f_b, sizeof f_b),
                           view(NBL_DT_FLOAT, 3, d222, f_c, sizeof f_c)};
  nbl_host_tensor ii[3] = {view(NBL_DT_INT64, 1, d3, i_a, sizeof i_a),
                           view(NBL_DT_INT64, 1, d4, i_b, sizeof i_b),
                           view(NBL_DT_INT64, 1, d1, i_c, sizeof i_c)};
  const nbl_host_tensor *sets[2] = {fi, ii};
  for (int k = 0; k < 2; k++) {
    nbl_host_tensor seq = {.name = "seq", .kind = NBL_VALUE_SEQUENCE, .dtype = sets[k][0].dtype,
                           .n_items = 3, .items = (nbl_host_tensor *)sets[k]};
    tmp_path(path, sizeof path, k ? "i64.pb" : "f32.pb");
    ck_assert_int_eq(nbl_tensor_write(path, &seq), NBL_OK);
    nbl_host_tensor got;
    ck_assert_int_eq(nbl_value_read(path, NBL_VALUE_SEQUENCE, &got), NBL_OK);
    ck_assert_int_eq(got.kind, NBL_VALUE_SEQUENCE);
    ck_assert_str_eq(got.name, "seq");
    ck_assert_int_eq(got.dtype, sets[k][0].dtype);
    ck_assert_int_eq(got.rank, 0);
    ck_assert_ptr_null(got.data);
    ck_assert_uint_eq(got.nbytes, 0);
    ck_assert_int_eq(got.n_items, 3);
    for (int i = 0; i < 3; i++) assert_same_tensor(&sets[k][i], &got.items[i]);
    nbl_host_tensor_free(&got);
    ck_assert_ptr_null(got.items);
    ck_assert_int_eq(got.n_items, 0);
  }
  /* many elements (the items array grows as they come) */
  {
    static int64_t vals[100];
    nbl_host_tensor many[100];
    for (int i = 0; i < 100; i++) {
      vals[i] = 1000 + i;
      many[i] = view(NBL_DT_INT64, 0, NULL, &vals[i], sizeof vals[i]);
    }
    nbl_host_tensor seq = {.kind = NBL_VALUE_SEQUENCE, .dtype = NBL_DT_INT64, .n_items = 100,
                           .items = many};
    tmp_path(path, sizeof path, "many.pb");
    ck_assert_int_eq(nbl_tensor_write(path, &seq), NBL_OK);
    nbl_host_tensor got;
    ck_assert_int_eq(nbl_value_read(path, NBL_VALUE_SEQUENCE, &got), NBL_OK);
    ck_assert_int_eq(got.n_items, 100);
    for (int i = 0; i < 100; i++) assert_same_tensor(&many[i], &got.items[i]);
    nbl_host_tensor_free(&got);
  }
  /* strings too (each element's strings are copies, freed with the items) */
  char *sa[2] = {"a", "bc"}, *sb[1] = {""};
  const int64_t d2[] = {2};
  nbl_host_tensor si[2] = {view(NBL_DT_STRING, 1, d2, sa, sizeof sa),
                           view(NBL_DT_STRING, 1, d1, sb, sizeof sb)};
  nbl_host_tensor sseq = {.kind = NBL_VALUE_SEQUENCE, .dtype = NBL_DT_STRING, .n_items = 2, .items = si};
  tmp_path(path, sizeof path, "str.pb");
  ck_assert_int_eq(nbl_tensor_write(path, &sseq), NBL_OK);
  nbl_host_tensor got;
  ck_assert_int_eq(nbl_value_read(path, NBL_VALUE_SEQUENCE, &got), NBL_OK);
  ck_assert_ptr_null(got.name);
  ck_assert_int_eq(got.dtype, NBL_DT_STRING);
  ck_assert_int_eq(got.n_items, 2);
  ck_assert_str_eq(((char **)got.items[0].data)[1], "bc");
  ck_assert_str_eq(((char **)got.items[1].data)[0], "");
  nbl_host_tensor_free(&got);
  rm_tmp();
}
END_TEST

START_TEST(test_empty_sequence_and_optionals) {
  make_tmp();
  char path[PATH_MAX];
  nbl_host_tensor got;
  /* an empty sequence: its element type cannot be told */
  nbl_host_tensor empty = {.name = "e", .kind = NBL_VALUE_SEQUENCE, .dtype = NBL_DT_FLOAT};
  tmp_path(path, sizeof path, "empty.pb");
  ck_assert_int_eq(nbl_tensor_write(path, &empty), NBL_OK);
  ck_assert_int_eq(nbl_value_read(path, NBL_VALUE_SEQUENCE, &got), NBL_OK);
  ck_assert_int_eq(got.kind, NBL_VALUE_SEQUENCE);
  ck_assert_str_eq(got.name, "e");
  ck_assert_int_eq(got.n_items, 0);
  ck_assert_int_eq(got.dtype, NBL_DT_UNDEFINED);
  nbl_host_tensor_free(&got);

  /* an optional holding a tensor */
  nbl_host_tensor t = view(NBL_DT_INT64, 1, d4, i_b, sizeof i_b);
  nbl_host_tensor opt = {.name = "o", .kind = NBL_VALUE_OPTIONAL, .dtype = NBL_DT_INT64, .n_items = 1,
                         .items = &t};
  tmp_path(path, sizeof path, "opt_tensor.pb");
  ck_assert_int_eq(nbl_tensor_write(path, &opt), NBL_OK);
  ck_assert_int_eq(nbl_value_read(path, NBL_VALUE_OPTIONAL, &got), NBL_OK);
  ck_assert_int_eq(got.kind, NBL_VALUE_OPTIONAL);
  ck_assert_str_eq(got.name, "o");
  ck_assert_int_eq(got.dtype, NBL_DT_INT64);
  ck_assert_int_eq(got.n_items, 1);
  assert_same_tensor(&t, &got.items[0]);
  nbl_host_tensor_free(&got);

  /* an empty optional */
  nbl_host_tensor none = {.kind = NBL_VALUE_OPTIONAL, .dtype = NBL_DT_FLOAT};
  tmp_path(path, sizeof path, "opt_empty.pb");
  ck_assert_int_eq(nbl_tensor_write(path, &none), NBL_OK);
  ck_assert_int_eq(nbl_value_read(path, NBL_VALUE_OPTIONAL, &got), NBL_OK);
  ck_assert_int_eq(got.kind, NBL_VALUE_OPTIONAL);
  ck_assert_ptr_null(got.name);
  ck_assert_int_eq(got.n_items, 0);
  ck_assert_ptr_null(got.items);
  nbl_host_tensor_free(&got);

  /* an optional holding a sequence of two float tensors (one empty) */
  nbl_host_tensor el[2] = {view(NBL_DT_FLOAT, 2, d23, f_a, sizeof f_a),
                           view(NBL_DT_FLOAT, 1, d0, f_b, 0)};
  nbl_host_tensor seq = {.kind = NBL_VALUE_SEQUENCE, .dtype = NBL_DT_FLOAT, .n_items = 2, .items = el};
  nbl_host_tensor oseq = {.name = "os", .kind = NBL_VALUE_OPTIONAL, .dtype = NBL_DT_FLOAT,
                          .n_items = 1, .items = &seq};
  tmp_path(path, sizeof path, "opt_seq.pb");
  ck_assert_int_eq(nbl_tensor_write(path, &oseq), NBL_OK);
  ck_assert_int_eq(nbl_value_read(path, NBL_VALUE_OPTIONAL, &got), NBL_OK);
  ck_assert_int_eq(got.kind, NBL_VALUE_OPTIONAL);
  ck_assert_str_eq(got.name, "os");
  ck_assert_int_eq(got.dtype, NBL_DT_FLOAT);
  ck_assert_int_eq(got.n_items, 1);
  ck_assert_int_eq(got.items[0].kind, NBL_VALUE_SEQUENCE);
  ck_assert_ptr_null(got.items[0].name);
  ck_assert_int_eq(got.items[0].dtype, NBL_DT_FLOAT);
  ck_assert_int_eq(got.items[0].n_items, 2);
  assert_same_tensor(&el[0], &got.items[0].items[0]);
  assert_same_tensor(&el[1], &got.items[0].items[1]);
  nbl_host_tensor_free(&got);

  /* kind TENSOR reads as nbl_tensor_read does */
  nbl_host_tensor plain = view(NBL_DT_FLOAT, 2, d23, f_a, sizeof f_a);
  plain.name = "p";
  tmp_path(path, sizeof path, "plain.npy");
  ck_assert_int_eq(nbl_tensor_write(path, &plain), NBL_OK);
  ck_assert_int_eq(nbl_value_read(path, NBL_VALUE_TENSOR, &got), NBL_OK);
  ck_assert_int_eq(got.kind, NBL_VALUE_TENSOR);
  ck_assert_int_eq(got.rank, 2);
  ck_assert_int_eq(memcmp(got.data, f_a, sizeof f_a), 0);
  nbl_host_tensor_free(&got);
  /* ... and a .npy file is not a sequence */
  ck_assert_int_eq(nbl_value_read(path, NBL_VALUE_SEQUENCE, &got), NBL_ERR_UNSUPPORTED);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), path));
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "SequenceProto"));
  ck_assert_int_eq(got.n_items, 0);

  /* a sequence is never written as .npy */
  tmp_path(path, sizeof path, "seq.npy");
  ck_assert_int_eq(nbl_tensor_write(path, &seq), NBL_ERR_UNSUPPORTED);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), path));
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), ".pb"));
  ck_assert_int_ne(access(path, F_OK), 0);
  /* a sequence holding a sequence, an optional holding two values: refused */
  nbl_host_tensor seqseq = {.kind = NBL_VALUE_SEQUENCE, .n_items = 1, .items = &seq};
  tmp_path(path, sizeof path, "bad.pb");
  ck_assert_int_eq(nbl_tensor_write(path, &seqseq), NBL_ERR_UNSUPPORTED);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), path));
  nbl_host_tensor two = {.kind = NBL_VALUE_OPTIONAL, .n_items = 2, .items = el};
  ck_assert_int_eq(nbl_tensor_write(path, &two), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), path));
  /* an element whose bytes do not fill its shape */
  nbl_host_tensor shortel = view(NBL_DT_FLOAT, 2, d23, f_a, 8);
  nbl_host_tensor shortseq = {.kind = NBL_VALUE_SEQUENCE, .n_items = 1, .items = &shortel};
  ck_assert_int_eq(nbl_tensor_write(path, &shortseq), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "element 0"));
  rm_tmp();
}
END_TEST

/* The expected values below were read with the onnx python package
 * (onnx.SequenceProto / onnx.OptionalProto .ParseFromString, then
 * onnx.numpy_helper.to_array on each tensor) from the files of the ONNX
 * backend test data (libonnx-testdata) named in each block. */
START_TEST(test_onnx_testdata_files) {
  char path[2048];
  snprintf(path, sizeof path, "%s/test_sequence_insert_at_back/test_data_set_0/input_0.pb",
           testdata_node());
  if (access(path, R_OK) != 0) {
    printf("backend test data not found at %s; skipped\n", path);
    return;
  }
  /* name "sequence", elem_type TENSOR: int64 [4] {1,2,3,4}, [3] {5,6,7}, [2] {8,9} */
  nbl_host_tensor got;
  ck_assert_int_eq(nbl_value_read(path, NBL_VALUE_SEQUENCE, &got), NBL_OK);
  ck_assert_int_eq(got.kind, NBL_VALUE_SEQUENCE);
  ck_assert_str_eq(got.name, "sequence");
  ck_assert_int_eq(got.dtype, NBL_DT_INT64);
  ck_assert_int_eq(got.n_items, 3);
  const int64_t want[] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  const int lens[] = {4, 3, 2};
  for (int i = 0, off = 0; i < 3; off += lens[i++]) {
    const nbl_host_tensor *t = &got.items[i];
    ck_assert_int_eq(t->kind, NBL_VALUE_TENSOR);
    ck_assert_ptr_null(t->name);
    ck_assert_int_eq(t->dtype, NBL_DT_INT64);
    ck_assert_int_eq(t->rank, 1);
    ck_assert_int_eq(t->dims[0], lens[i]);
    ck_assert_uint_eq(t->nbytes, sizeof(int64_t) * (size_t)lens[i]);
    ck_assert_int_eq(memcmp(t->data, want + off, t->nbytes), 0);
  }
  nbl_host_tensor_free(&got);

  /* name "optional_input", elem_type SEQUENCE: a sequence of one int32 [4] {1,2,3,4} */
  snprintf(path, sizeof path, "%s/test_optional_get_element_sequence/test_data_set_0/input_0.pb",
           testdata_node());
  ck_assert_int_eq(nbl_value_read(path, NBL_VALUE_OPTIONAL, &got), NBL_OK);
  ck_assert_int_eq(got.kind, NBL_VALUE_OPTIONAL);
  ck_assert_str_eq(got.name, "optional_input");
  ck_assert_int_eq(got.dtype, NBL_DT_INT32);
  ck_assert_int_eq(got.n_items, 1);
  ck_assert_int_eq(got.items[0].kind, NBL_VALUE_SEQUENCE);
  ck_assert_int_eq(got.items[0].n_items, 1);
  const nbl_host_tensor *t = &got.items[0].items[0];
  ck_assert_int_eq(t->dtype, NBL_DT_INT32);
  ck_assert_int_eq(t->rank, 1);
  ck_assert_int_eq(t->dims[0], 4);
  const int32_t w32[] = {1, 2, 3, 4};
  ck_assert_int_eq(memcmp(t->data, w32, sizeof w32), 0);
  nbl_host_tensor_free(&got);

  /* name "optional_input", elem_type UNDEFINED, no value: empty */
  snprintf(path, sizeof path, "%s/test_optional_has_element_empty/test_data_set_0/input_0.pb",
           testdata_node());
  ck_assert_int_eq(nbl_value_read(path, NBL_VALUE_OPTIONAL, &got), NBL_OK);
  ck_assert_int_eq(got.kind, NBL_VALUE_OPTIONAL);
  ck_assert_str_eq(got.name, "optional_input");
  ck_assert_int_eq(got.n_items, 0);
  nbl_host_tensor_free(&got);
}
END_TEST

/* Identity on a sequence (test_identity_sequence): the input and output
 * declared as sequences, the input read, run, written, and the file equal
 * byte for byte to the test data's output. */
START_TEST(test_session_sequence_io) {
  char dir[1024], path[2048];
  snprintf(dir, sizeof dir, "%s/test_identity_sequence", testdata_node());
  snprintf(path, sizeof path, "%s/model.onnx", dir);
  if (access(path, R_OK) != 0) {
    printf("backend test data not found at %s; skipped\n", path);
    return;
  }
  make_tmp();
  nbl_model *m = NULL;
  nbl_session *s = NULL;
  ck_assert_int_eq(nbl_model_load(path, &m), NBL_OK);
  ck_assert_int_eq(nbl_session_create(m, NULL, &s), NBL_OK);
  nbl_host_tensor info;
  ck_assert_int_eq(nbl_session_input_info(s, 0, &info), NBL_OK);
  ck_assert_int_eq(info.kind, NBL_VALUE_SEQUENCE);
  ck_assert_int_eq(info.dtype, NBL_DT_FLOAT);
  ck_assert_int_eq(nbl_session_output_info(s, 0, &info), NBL_OK);
  ck_assert_int_eq(info.kind, NBL_VALUE_SEQUENCE);
  ck_assert_int_eq(info.dtype, NBL_DT_FLOAT);
  ck_assert_str_eq(info.name, nbl_session_output_name(s, 0));
  ck_assert_int_eq(nbl_session_output_info(s, 1, &info), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(nbl_session_output_info(s, -1, &info), NBL_ERR_INVALID_ARGUMENT);

  nbl_host_tensor in;
  snprintf(path, sizeof path, "%s/test_data_set_0/input_0.pb", dir);
  ck_assert_int_eq(nbl_value_read(path, NBL_VALUE_SEQUENCE, &in), NBL_OK);
  free((void *)in.name);
  in.name = strdup(nbl_session_input_name(s, 0));
  const nbl_host_tensor *outs = NULL;
  ck_assert_int_eq(nbl_session_run(s, 1, &in, &outs), NBL_OK);
  ck_assert_int_eq(outs[0].kind, NBL_VALUE_SEQUENCE);
  ck_assert_int_eq(outs[0].n_items, in.n_items);
  char out_path[PATH_MAX];
  tmp_path(out_path, sizeof out_path, "y.pb");
  ck_assert_int_eq(nbl_tensor_write(out_path, &outs[0]), NBL_OK);
  snprintf(path, sizeof path, "%s/test_data_set_0/output_0.pb", dir);
  size_t na = 0, nb = 0;
  unsigned char *a = read_bytes(out_path, &na), *b = read_bytes(path, &nb);
  ck_assert_ptr_nonnull(a);
  ck_assert_ptr_nonnull(b);
  ck_assert_uint_eq(na, nb);
  ck_assert_int_eq(memcmp(a, b, na), 0);
  free(a);
  free(b);
  nbl_host_tensor_free(&in);
  nbl_session_free(s);
  nbl_model_free(m);
  rm_tmp();
}
END_TEST

/* A sequence of three int64 tensors as the writer makes it (the same bytes
 * as test_sequence_insert_at_back's input_0.pb). */
static unsigned char *sample(size_t *n, char *path, size_t cap) {
  tmp_path(path, cap, "sample.pb");
  static int64_t v1[] = {1, 2, 3, 4}, v2[] = {5, 6, 7}, v3[] = {8, 9};
  const int64_t e4[] = {4}, e3[] = {3}, e2[] = {2};
  nbl_host_tensor el[3] = {view(NBL_DT_INT64, 1, e4, v1, sizeof v1),
                           view(NBL_DT_INT64, 1, e3, v2, sizeof v2),
                           view(NBL_DT_INT64, 1, e2, v3, sizeof v3)};
  nbl_host_tensor seq = {.name = "sequence", .kind = NBL_VALUE_SEQUENCE, .dtype = NBL_DT_INT64,
                         .n_items = 3, .items = el};
  ck_assert_int_eq(nbl_tensor_write(path, &seq), NBL_OK);
  return read_bytes(path, n);
}

START_TEST(test_bad_bytes) {
  make_tmp();
  char path[PATH_MAX], bad[PATH_MAX];
  size_t n = 0;
  unsigned char *b = sample(&n, path, sizeof path);
  ck_assert_ptr_nonnull(b);
  ck_assert_uint_eq(n, 108); /* the size of the test data's file */
  tmp_path(bad, sizeof bad, "bad.pb");
  nbl_host_tensor got;
  /* every prefix: a valid sequence of fewer elements when it ends between
   * fields, else an error naming the file */
  int errors = 0;
  for (size_t k = 0; k < n; k++) {
    write_bytes(bad, b, k);
    nbl_status st = nbl_value_read(bad, NBL_VALUE_SEQUENCE, &got);
    if (st == NBL_OK) {
      ck_assert_int_lt(got.n_items, 3);
      nbl_host_tensor_free(&got);
    } else {
      ck_assert_int_eq(st, NBL_ERR_PARSE);
      ck_assert_ptr_nonnull(strstr(nbl_last_error(), bad));
      ck_assert_int_eq(got.n_items, 0);
      ck_assert_ptr_null(got.items);
      errors++;
    }
  }
  ck_assert_int_ge(errors, (int)n - 6);
  /* cut inside the first element's header and inside its data */
  write_bytes(bad, b, 13);
  ck_assert_int_eq(nbl_value_read(bad, NBL_VALUE_SEQUENCE, &got), NBL_ERR_PARSE);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "truncated"));
  write_bytes(bad, b, 50);
  ck_assert_int_eq(nbl_value_read(bad, NBL_VALUE_SEQUENCE, &got), NBL_ERR_PARSE);
  /* an element whose own length is right but whose TensorProto is cut */
  {
    unsigned char m[64];
    memcpy(m, b, 12);          /* name, elem_type */
    m[12] = 0x1a, m[13] = 4;   /* tensor_values, 4 bytes: */
    m[14] = 0x08, m[15] = 0x04, m[16] = 0x10, m[17] = 0x87; /* dims 4, data_type varint cut */
    write_bytes(bad, m, 18);
    ck_assert_int_eq(nbl_value_read(bad, NBL_VALUE_SEQUENCE, &got), NBL_ERR_PARSE);
    ck_assert_ptr_nonnull(strstr(nbl_last_error(), bad));
    ck_assert_ptr_nonnull(strstr(nbl_last_error(), "element 0"));
  }
  /* single-byte changes at every offset (three values each): no crash, and
   * every failure names the file */
  for (size_t k = 0; k < n; k++) {
    static const unsigned char vals[] = {0x00, 0xff, 0x7f};
    for (int v = 0; v < 3; v++) {
      unsigned char m[128];
      memcpy(m, b, n);
      m[k] = vals[v];
      write_bytes(bad, m, n);
      for (int kind = NBL_VALUE_SEQUENCE; kind <= NBL_VALUE_OPTIONAL; kind++) {
        nbl_status st = nbl_value_read(bad, (nbl_value_kind)kind, &got);
        if (st == NBL_OK) nbl_host_tensor_free(&got);
        else ck_assert_ptr_nonnull(strstr(nbl_last_error(), bad));
      }
    }
  }
  free(b);
  /* unsupported contents, refused by name */
  static const struct {
    unsigned char bytes[8];
    size_t n;
    nbl_value_kind kind;
    const char *says;
  } cases[] = {
      {{0x22, 0x00}, 2, NBL_VALUE_SEQUENCE, "sparse"},          /* sparse_tensor_values */
      {{0x2a, 0x00}, 2, NBL_VALUE_SEQUENCE, "sequence of sequences"}, /* sequence_values */
      {{0x32, 0x00}, 2, NBL_VALUE_SEQUENCE, "maps"},            /* map_values */
      {{0x3a, 0x00}, 2, NBL_VALUE_SEQUENCE, "optionals inside"}, /* optional_values */
      {{0x10, 0x04}, 2, NBL_VALUE_SEQUENCE, "maps"},            /* elem_type MAP */
      {{0x10, 0x03}, 2, NBL_VALUE_SEQUENCE, "sequences"},       /* elem_type SEQUENCE */
      {{0x32, 0x00}, 2, NBL_VALUE_OPTIONAL, "maps"},            /* map_value */
      {{0x22, 0x00}, 2, NBL_VALUE_OPTIONAL, "sparse"},          /* sparse_tensor_value */
      {{0x3a, 0x00}, 2, NBL_VALUE_OPTIONAL, "optionals inside"}, /* optional_value */
      {{0x2a, 0x02, 0x2a, 0x00}, 4, NBL_VALUE_OPTIONAL, "sequence of sequences"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    write_bytes(bad, cases[i].bytes, cases[i].n);
    ck_assert_int_eq(nbl_value_read(bad, cases[i].kind, &got), NBL_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(nbl_last_error(), bad));
    ck_assert_msg(strstr(nbl_last_error(), cases[i].says), "case %zu: %s", i, nbl_last_error());
  }
  /* wrong wire types and undefined elem_type values: parse errors */
  static const unsigned char wt_name[] = {0x08, 0x01}, wt_elem[] = {0x12, 0x00}, big_elem[] = {0x10, 0x09};
  write_bytes(bad, wt_name, 2);
  ck_assert_int_eq(nbl_value_read(bad, NBL_VALUE_SEQUENCE, &got), NBL_ERR_PARSE);
  write_bytes(bad, wt_elem, 2);
  ck_assert_int_eq(nbl_value_read(bad, NBL_VALUE_OPTIONAL, &got), NBL_ERR_PARSE);
  write_bytes(bad, big_elem, 2);
  ck_assert_int_eq(nbl_value_read(bad, NBL_VALUE_SEQUENCE, &got), NBL_ERR_PARSE);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "elem_type 9"));
  /* elements of two types: the file is at fault */
  {
    float one = 1;
    int64_t two = 2;
    nbl_host_tensor el[2] = {view(NBL_DT_FLOAT, 1, d1, &one, sizeof one),
                             view(NBL_DT_INT64, 1, d1, &two, sizeof two)};
    nbl_host_tensor mixed = {.kind = NBL_VALUE_SEQUENCE, .n_items = 2, .items = el};
    ck_assert_int_eq(nbl_tensor_write(bad, &mixed), NBL_OK);
    ck_assert_int_eq(nbl_value_read(bad, NBL_VALUE_SEQUENCE, &got), NBL_ERR_INVALID_MODEL);
    ck_assert_ptr_nonnull(strstr(nbl_last_error(), bad));
    ck_assert_ptr_nonnull(strstr(nbl_last_error(), "element 1"));
    ck_assert_ptr_null(got.items);
  }
  /* a missing file, an unknown kind */
  tmp_path(bad, sizeof bad, "missing.pb");
  ck_assert_int_eq(nbl_value_read(bad, NBL_VALUE_SEQUENCE, &got), NBL_ERR_IO);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), bad));
  ck_assert_int_eq(nbl_value_read(path, (nbl_value_kind)7, &got), NBL_ERR_INVALID_ARGUMENT);
  rm_tmp();
}
END_TEST

Suite *value_file_suite(void) {
  Suite *s = suite_create("value_file");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_sequence_roundtrip);
  tcase_add_test(tc, test_empty_sequence_and_optionals);
  tcase_add_test(tc, test_onnx_testdata_files);
  tcase_add_test(tc, test_session_sequence_io);
  tcase_add_test(tc, test_bad_bytes);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(value_file_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
