/* test_ops_sequence.c - sequence and optional values (runtime/ops/sequence.c,
 * the executor's value kinds, the public API's host values with items)
 * through small graphs built here, every expected value worked out by hand
 * in the comments: SequenceConstruct / At / Length / Insert / Erase with
 * positive, negative, default and out-of-range positions, SplitToSequence
 * (chunk size, lengths, one row with and without keepdims) and
 * ConcatFromSequence (joined and stacked) back to the input, Optional /
 * OptionalHasElement / OptionalGetElement (full, empty, empty read), a
 * sequence fed as a graph input and returned as a graph output, a Loop
 * carrying a sequence, and the errors: a sequence given to an op that takes
 * tensors, a tensor of another element type inserted, a tensor bound to a
 * sequence input. Each case runs on the reference and the fast kernels. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "nibble.h"
#include "one_node.h"

/* ------------------------------------------------------------------ a small graph builder */

typedef struct gb {
  nbl_model *m;
  nbl_graph *g;
} gb;

static gb gb_new(int opset) {
  gb b = {nbl_model_new(), NULL};
  nbl_model_set_opset(b.m, "", opset);
  b.g = b.m->graph;
  return b;
}

/* Value `name` (made when new). */
static nbl_id val(gb *b, const char *name) {
  nbl_id v = nbl_graph_find(b->g, name);
  return v != NBL_NONE ? v : nbl_graph_add_value(b->g, name);
}

/* A tensor graph input of type dt, rank 1 with dim d0 (d0 < 0: rank 0). */
static void tin(gb *b, const char *name, nbl_dtype dt, int64_t d0) {
  nbl_id v = val(b, name);
  nbl_type_set_tensor(b->m->arena, &b->g->values[v].type, dt, d0 < 0 ? 0 : 1, &d0);
  nbl_graph_add_input(b->g, v);
}

/* A graph input of type sequence(tensor(dt)) (rank unknown). */
static void sin_(gb *b, const char *name, nbl_dtype dt) {
  nbl_id v = val(b, name);
  nbl_type *t = &b->g->values[v].type;
  memset(t, 0, sizeof *t);
  t->kind = NBL_TYPE_SEQUENCE;
  t->rank = -1;
  t->inner = nbl_arena_alloc(b->m->arena, sizeof(nbl_type));
  memset(t->inner, 0, sizeof(nbl_type));
  t->inner->kind = NBL_TYPE_TENSOR;
  t->inner->elem = dt;
  t->inner->rank = -1;
  nbl_graph_add_input(b->g, v);
}

/* A graph input of type optional(tensor(dt)). */
static void oin(gb *b, const char *name, nbl_dtype dt) {
  sin_(b, name, dt);
  b->g->values[val(b, name)].type.kind = NBL_TYPE_OPTIONAL;
}

/* Node op(ins...) -> outs... ("" in a list: omitted); inputs and outputs
 * separated by "|" in one space-separated string: "a b | c". */
static nbl_id node(gb *b, const char *op, const char *io) {
  nbl_id in[8], out[8];
  int ni = 0, no = 0, outs = 0;
  char buf[256];
  snprintf(buf, sizeof buf, "%s", io);
  for (char *tok = strtok(buf, " "); tok; tok = strtok(NULL, " ")) {
    if (!strcmp(tok, "|")) {
      outs = 1;
      continue;
    }
    nbl_id v = !strcmp(tok, "-") ? NBL_NONE : val(b, tok);
    if (outs) out[no++] = v;
    else in[ni++] = v;
  }
  char name[32];
  snprintf(name, sizeof name, "%s_%d", op, b->g->n_nodes);
  return nbl_graph_add_node(b->g, op, "", name, ni, in, no, out);
}

static void gout(gb *b, const char *name) { nbl_graph_add_output(b->g, val(b, name)); }

/* A host tensor over data (not copied). */
static nbl_host_tensor hv(const char *name, nbl_dtype dt, int rank, const int64_t *dims, const void *data) {
  nbl_host_tensor t = ht(dt, rank, dims, data);
  t.name = name;
  return t;
}

/* Run b's model (reference kernels when ref) on n inputs; *s kept for the
 * outputs (the caller frees it). */
static nbl_status run(gb *b, int ref, int n, const nbl_host_tensor *in, nbl_session **s,
                      const nbl_host_tensor **out) {
  nbl_session_options o = {.threads = 2, .reference = ref};
  *s = NULL;
  nbl_status st = nbl_session_create(b->m, &o, s);
  if (st == NBL_OK) st = nbl_session_run(*s, n, in, out);
  return st;
}

static void ck_floats(const nbl_host_tensor *t, int rank, const int64_t *dims, const float *want, int n) {
  ck_assert_int_eq(t->kind, NBL_VALUE_TENSOR);
  ck_assert_int_eq(t->dtype, NBL_DT_FLOAT);
  ck_assert_int_eq(t->rank, rank);
  for (int d = 0; d < rank; d++) ck_assert_int_eq(t->dims[d], dims[d]);
  ck_assert_uint_eq(t->nbytes, sizeof(float) * (size_t)n);
  for (int i = 0; i < n; i++) ck_assert_float_eq(((const float *)t->data)[i], want[i]);
}

static int64_t i64_of(const nbl_host_tensor *t) {
  ck_assert_int_eq(t->dtype, NBL_DT_INT64);
  ck_assert_int_eq(t->rank, 0);
  return *(const int64_t *)t->data;
}

static const float A[2] = {1, 2}, B3[3] = {3, 4, 5}, C1[1] = {9};
static const int64_t D2[1] = {2}, D3[1] = {3}, D1[1] = {1};

/* ------------------------------------------------------------------ construct, at, length, output */

START_TEST(test_construct_at_length) {
  for (int ref = 0; ref < 2; ref++) {
    gb b = gb_new(17);
    tin(&b, "a", NBL_DT_FLOAT, 2);
    tin(&b, "c", NBL_DT_FLOAT, 3);
    tin(&b, "p", NBL_DT_INT64, -1);
    node(&b, "SequenceConstruct", "a c | s");
    node(&b, "SequenceAt", "s p | at");
    node(&b, "SequenceLength", "s | len");
    gout(&b, "s");
    gout(&b, "at");
    gout(&b, "len");
    int64_t pos = -1; /* the last element: c */
    nbl_host_tensor in[3] = {hv("a", NBL_DT_FLOAT, 1, D2, A), hv("c", NBL_DT_FLOAT, 1, D3, B3),
                             hv("p", NBL_DT_INT64, 0, NULL, &pos)};
    nbl_session *s;
    const nbl_host_tensor *out;
    ck_assert_int_eq(run(&b, ref, 3, in, &s, &out), NBL_OK);
    /* s = [a, c], as a graph output: kind, element type, two items with their own shapes */
    ck_assert_int_eq(out[0].kind, NBL_VALUE_SEQUENCE);
    ck_assert_int_eq(out[0].dtype, NBL_DT_FLOAT);
    ck_assert_int_eq(out[0].n_items, 2);
    ck_floats(&out[0].items[0], 1, D2, A, 2);
    ck_floats(&out[0].items[1], 1, D3, B3, 3);
    ck_floats(&out[1], 1, D3, B3, 3);
    ck_assert_int_eq(i64_of(&out[2]), 2);
    /* a second run on the same session (the arena's planned run): the same */
    pos = 0;
    ck_assert_int_eq(nbl_session_run(s, 3, in, &out), NBL_OK);
    ck_floats(&out[1], 1, D2, A, 2);
    ck_assert_int_eq(out[0].n_items, 2);
    /* out of range: 2 of a 2-element sequence */
    pos = 2;
    ck_assert_int_eq(nbl_session_run(s, 3, in, &out), NBL_ERR_RUNTIME);
    ck_assert_ptr_nonnull(strstr(nbl_last_error(), "position 2 is out of range for a sequence of 2"));
    ck_assert_ptr_nonnull(strstr(nbl_last_error(), "SequenceAt"));
    pos = -3;
    ck_assert_int_eq(nbl_session_run(s, 3, in, &out), NBL_ERR_RUNTIME);
    nbl_session_free(s);
    nbl_model_free(b.m);
  }
}
END_TEST

/* ------------------------------------------------------------------ insert, erase */

START_TEST(test_insert_erase) {
  for (int ref = 0; ref < 2; ref++) {
    gb b = gb_new(17);
    tin(&b, "a", NBL_DT_FLOAT, 2);
    tin(&b, "c", NBL_DT_FLOAT, 3);
    tin(&b, "t", NBL_DT_FLOAT, 1);
    tin(&b, "p0", NBL_DT_INT32, -1);
    tin(&b, "pm2", NBL_DT_INT64, -1);
    node(&b, "SequenceConstruct", "a c | s");
    node(&b, "SequenceInsert", "s t p0 | front"); /* [t, a, c] */
    node(&b, "SequenceInsert", "s t | back");     /* [a, c, t] */
    node(&b, "SequenceErase", "back | noback");   /* [a, c] */
    node(&b, "SequenceErase", "front pm2 | e2");  /* -2 of [t, a, c] is a: [t, c] */
    gout(&b, "front");
    gout(&b, "back");
    gout(&b, "noback");
    gout(&b, "e2");
    gout(&b, "s");
    int32_t p0 = 0;
    int64_t pm2 = -2;
    nbl_host_tensor in[5] = {hv("a", NBL_DT_FLOAT, 1, D2, A), hv("c", NBL_DT_FLOAT, 1, D3, B3),
                             hv("t", NBL_DT_FLOAT, 1, D1, C1), hv("p0", NBL_DT_INT32, 0, NULL, &p0),
                             hv("pm2", NBL_DT_INT64, 0, NULL, &pm2)};
    nbl_session *s;
    const nbl_host_tensor *out;
    ck_assert_int_eq(run(&b, ref, 5, in, &s, &out), NBL_OK);
    ck_assert_int_eq(out[0].n_items, 3);
    ck_floats(&out[0].items[0], 1, D1, C1, 1);
    ck_floats(&out[0].items[1], 1, D2, A, 2);
    ck_floats(&out[0].items[2], 1, D3, B3, 3);
    ck_assert_int_eq(out[1].n_items, 3);
    ck_floats(&out[1].items[2], 1, D1, C1, 1);
    ck_assert_int_eq(out[2].n_items, 2);
    ck_floats(&out[2].items[1], 1, D3, B3, 3);
    ck_assert_int_eq(out[3].n_items, 2);
    ck_floats(&out[3].items[0], 1, D1, C1, 1);
    ck_floats(&out[3].items[1], 1, D3, B3, 3);
    ck_assert_int_eq(out[4].n_items, 2); /* the input sequence is unchanged */
    /* insert at 3 of a 2-element sequence: out of range ([-2, 2] allowed) */
    p0 = 3;
    ck_assert_int_eq(nbl_session_run(s, 5, in, &out), NBL_ERR_RUNTIME);
    ck_assert_ptr_nonnull(strstr(nbl_last_error(), "position 3 is out of range"));
    p0 = -2; /* the front again */
    ck_assert_int_eq(nbl_session_run(s, 5, in, &out), NBL_OK);
    ck_floats(&out[0].items[0], 1, D1, C1, 1);
    nbl_session_free(s);
    nbl_model_free(b.m);
  }
}
END_TEST

/* ------------------------------------------------------------------ split and concat */

START_TEST(test_split_concat) {
  for (int ref = 0; ref < 2; ref++) {
    gb b = gb_new(17);
    nbl_id x = val(&b, "x");
    int64_t xd[2] = {5, 2};
    nbl_type_set_tensor(b.m->arena, &b.g->values[x].type, NBL_DT_FLOAT, 2, xd);
    nbl_graph_add_input(b.g, x);
    tin(&b, "k", NBL_DT_INT64, -1);
    tin(&b, "lens", NBL_DT_INT64, 2);
    node(&b, "SplitToSequence", "x k | byk");      /* rows of 2, 2, 1 */
    node(&b, "SplitToSequence", "x lens | bylen"); /* rows 1 and 4 */
    nbl_id n1 = node(&b, "SplitToSequence", "x | cols"); /* axis 1, keepdims 0: two columns of 5 */
    nbl_node_set_attr_int(b.g, n1, "axis", 1);
    nbl_node_set_attr_int(b.g, n1, "keepdims", 0);
    nbl_id n2 = node(&b, "ConcatFromSequence", "byk | joined"); /* x again */
    nbl_node_set_attr_int(b.g, n2, "axis", 0);
    nbl_id n3 = node(&b, "ConcatFromSequence", "cols | stacked"); /* the columns stacked as columns: x */
    nbl_node_set_attr_int(b.g, n3, "axis", -1);
    nbl_node_set_attr_int(b.g, n3, "new_axis", 1);
    nbl_id n4 = node(&b, "ConcatFromSequence", "cols | rows"); /* stacked as rows: x transposed */
    nbl_node_set_attr_int(b.g, n4, "axis", 0);
    nbl_node_set_attr_int(b.g, n4, "new_axis", 1);
    const char *outs[] = {"byk", "bylen", "cols", "joined", "stacked", "rows"};
    for (int i = 0; i < 6; i++) gout(&b, outs[i]);
    float xv[10];
    for (int i = 0; i < 10; i++) xv[i] = (float)i; /* x[r][c] = 2 r + c */
    int64_t k = 2, lens[2] = {1, 4};
    nbl_host_tensor in[3] = {hv("x", NBL_DT_FLOAT, 2, xd, xv), hv("k", NBL_DT_INT64, 0, NULL, &k),
                             hv("lens", NBL_DT_INT64, 1, D2, lens)};
    nbl_session *s;
    const nbl_host_tensor *out;
    ck_assert_int_eq(run(&b, ref, 3, in, &s, &out), NBL_OK);
    const int64_t d22[2] = {2, 2}, d12[2] = {1, 2}, d42[2] = {4, 2}, d5[1] = {5}, d25[2] = {2, 5};
    ck_assert_int_eq(out[0].n_items, 3);
    ck_floats(&out[0].items[0], 2, d22, xv, 4);
    ck_floats(&out[0].items[1], 2, d22, xv + 4, 4);
    ck_floats(&out[0].items[2], 2, d12, xv + 8, 2);
    ck_assert_int_eq(out[1].n_items, 2);
    ck_floats(&out[1].items[0], 2, d12, xv, 2);
    ck_floats(&out[1].items[1], 2, d42, xv + 2, 8);
    const float col0[5] = {0, 2, 4, 6, 8}, col1[5] = {1, 3, 5, 7, 9};
    ck_assert_int_eq(out[2].n_items, 2);
    ck_floats(&out[2].items[0], 1, d5, col0, 5);
    ck_floats(&out[2].items[1], 1, d5, col1, 5);
    ck_floats(&out[3], 2, xd, xv, 10);
    ck_floats(&out[4], 2, xd, xv, 10);
    const float xt[10] = {0, 2, 4, 6, 8, 1, 3, 5, 7, 9};
    ck_floats(&out[5], 2, d25, xt, 10);
    /* a chunk size of 0, and lengths not summing to the axis: errors naming the node */
    k = 0;
    ck_assert_int_eq(nbl_session_run(s, 3, in, &out), NBL_ERR_INVALID_MODEL);
    ck_assert_ptr_nonnull(strstr(nbl_last_error(), "split 0 must be positive"));
    k = 7; /* one part of all 5 rows */
    lens[1] = 3;
    ck_assert_int_eq(nbl_session_run(s, 3, in, &out), NBL_ERR_INVALID_MODEL);
    ck_assert_ptr_nonnull(strstr(nbl_last_error(), "split sizes sum to 4, axis 0 has 5"));
    nbl_session_free(s);
    nbl_model_free(b.m);
  }
}
END_TEST

/* ------------------------------------------------------------------ optional */

START_TEST(test_optional) {
  for (int ref = 0; ref < 2; ref++) {
    gb b = gb_new(17);
    tin(&b, "a", NBL_DT_FLOAT, 2);
    node(&b, "Optional", "a | o");
    node(&b, "OptionalHasElement", "o | has");
    node(&b, "OptionalGetElement", "o | got");
    nbl_id e = node(&b, "Optional", "| none");
    /* attribute type = tensor(float) */
    nbl_attr *at = nbl_arena_alloc(b.m->arena, sizeof(nbl_attr) * (size_t)(b.g->nodes[e].n_attrs + 1));
    memset(at, 0, sizeof *at);
    at->name = "type";
    at->type = NBL_ATTR_TYPE_PROTO;
    at->n = 1;
    at->types = nbl_arena_alloc(b.m->arena, sizeof(nbl_type));
    nbl_type_set_tensor(b.m->arena, at->types, NBL_DT_FLOAT, 1, D2);
    b.g->nodes[e].attrs = at;
    b.g->nodes[e].n_attrs = 1;
    node(&b, "OptionalHasElement", "none | hasnot");
    node(&b, "OptionalHasElement", "a | hastensor"); /* a value where an optional is expected: present */
    node(&b, "OptionalGetElement", "a | gottensor");
    gout(&b, "o");
    gout(&b, "has");
    gout(&b, "got");
    gout(&b, "none");
    gout(&b, "hasnot");
    gout(&b, "hastensor");
    gout(&b, "gottensor");
    nbl_host_tensor in[1] = {hv("a", NBL_DT_FLOAT, 1, D2, A)};
    nbl_session *s;
    const nbl_host_tensor *out;
    ck_assert_int_eq(run(&b, ref, 1, in, &s, &out), NBL_OK);
    ck_assert_int_eq(out[0].kind, NBL_VALUE_OPTIONAL);
    ck_assert_int_eq(out[0].n_items, 1);
    ck_floats(&out[0].items[0], 1, D2, A, 2);
    ck_assert_int_eq(*(const uint8_t *)out[1].data, 1);
    ck_floats(&out[2], 1, D2, A, 2);
    ck_assert_int_eq(out[3].kind, NBL_VALUE_OPTIONAL);
    ck_assert_int_eq(out[3].n_items, 0);
    ck_assert_int_eq(out[3].dtype, NBL_DT_FLOAT);
    ck_assert_int_eq(*(const uint8_t *)out[4].data, 0);
    ck_assert_int_eq(*(const uint8_t *)out[5].data, 1);
    ck_floats(&out[6], 1, D2, A, 2);
    nbl_session_free(s);
    /* reading the empty one: a runtime error */
    node(&b, "OptionalGetElement", "none | bad");
    gout(&b, "bad");
    ck_assert_int_eq(run(&b, ref, 1, in, &s, &out), NBL_ERR_RUNTIME);
    ck_assert_ptr_nonnull(strstr(nbl_last_error(), "the optional is empty"));
    nbl_session_free(s);
    nbl_model_free(b.m);
  }
}
END_TEST

/* ------------------------------------------------------------------ a sequence as a graph input; a Loop carrying one */

START_TEST(test_sequence_input_and_loop) {
  for (int ref = 0; ref < 2; ref++) {
    gb b = gb_new(17);
    sin_(&b, "seq", NBL_DT_FLOAT);
    tin(&b, "trip", NBL_DT_INT64, -1);
    node(&b, "SequenceLength", "seq | len");
    nbl_id cn = node(&b, "ConcatFromSequence", "seq | cat");
    nbl_node_set_attr_int(b.g, cn, "axis", 0);
    /* Loop: each iteration i appends SequenceAt(seq, i) to the carried sequence:
     * after trip = 2 iterations the carried one is [seq[0], seq[1]] */
    nbl_id ln = node(&b, "Loop", "trip - seq | acc");
    nbl_graph *body = nbl_graph_new(b.m, b.g, "body");
    gb bb = {b.m, body};
    nbl_id it = val(&bb, "i"), c = val(&bb, "cond");
    nbl_type_set_tensor(b.m->arena, &body->values[it].type, NBL_DT_INT64, 0, NULL);
    nbl_type_set_tensor(b.m->arena, &body->values[c].type, NBL_DT_BOOL, 0, NULL);
    nbl_graph_add_input(body, it);
    nbl_graph_add_input(body, c);
    nbl_graph_add_input(body, val(&bb, "carried"));
    node(&bb, "Identity", "cond | cond_out");
    node(&bb, "SequenceAt", "seq i | elem"); /* seq: captured from the outer graph */
    node(&bb, "SequenceInsert", "carried elem | carried_out");
    gout(&bb, "cond_out");
    gout(&bb, "carried_out");
    nbl_node_set_attr_graph(b.g, ln, "body", body);
    /* the loop starts from seq itself, so it ends [seq..., seq[0], seq[1]] */
    gout(&b, "len");
    gout(&b, "cat");
    gout(&b, "acc");
    nbl_host_tensor items[3] = {ht(NBL_DT_FLOAT, 1, D2, A), ht(NBL_DT_FLOAT, 1, D3, B3), ht(NBL_DT_FLOAT, 1, D1, C1)};
    nbl_host_tensor sq = {.name = "seq", .dtype = NBL_DT_FLOAT, .kind = NBL_VALUE_SEQUENCE, .n_items = 3, .items = items};
    int64_t trip = 2;
    nbl_host_tensor in[2] = {sq, hv("trip", NBL_DT_INT64, 0, NULL, &trip)};
    nbl_session *s;
    const nbl_host_tensor *out;
    ck_assert_int_eq(run(&b, ref, 2, in, &s, &out), NBL_OK);
    ck_assert_int_eq(i64_of(&out[0]), 3);
    const float cat[6] = {1, 2, 3, 4, 5, 9};
    const int64_t d6[1] = {6};
    ck_floats(&out[1], 1, d6, cat, 6);
    ck_assert_int_eq(out[2].n_items, 5);
    ck_floats(&out[2].items[3], 1, D2, A, 2);
    ck_floats(&out[2].items[4], 1, D3, B3, 3);
    /* bad feeds: a tensor for the sequence, a sequence item of another type */
    nbl_host_tensor bad[2] = {hv("seq", NBL_DT_FLOAT, 1, D2, A), in[1]};
    ck_assert_int_eq(nbl_session_run(s, 2, bad, &out), NBL_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(nbl_last_error(), "input 'seq': got a tensor, the model expects a sequence"));
    int64_t iv[2] = {1, 2};
    items[1] = ht(NBL_DT_INT64, 1, D2, iv);
    ck_assert_int_eq(nbl_session_run(s, 2, in, &out), NBL_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(nbl_last_error(), "element 1 is not a tensor of the sequence's type"));
    items[1] = ht(NBL_DT_FLOAT, 1, D3, B3);
    items[1].nbytes = 4; /* fewer bytes than its shape needs */
    ck_assert_int_eq(nbl_session_run(s, 2, in, &out), NBL_ERR_INVALID_ARGUMENT);
    nbl_session_free(s);
    nbl_model_free(b.m);
  }
}
END_TEST

/* ------------------------------------------------------------------ kinds and types refused */

START_TEST(test_errors) {
  /* a sequence given to Add: the executor refuses it, naming the node and the value */
  gb b = gb_new(17);
  tin(&b, "a", NBL_DT_FLOAT, 2);
  node(&b, "SequenceConstruct", "a a | s");
  node(&b, "Add", "s a | y");
  gout(&b, "y");
  nbl_host_tensor in[2] = {hv("a", NBL_DT_FLOAT, 1, D2, A), hv("t", NBL_DT_INT64, 1, D1, D1)};
  nbl_session *s;
  const nbl_host_tensor *out;
  ck_assert_int_eq(run(&b, 0, 1, in, &s, &out), NBL_ERR_INVALID_MODEL);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "input 0 ('s') is a sequence; the op takes tensors"));
  nbl_session_free(s);
  nbl_model_free(b.m);
  /* an int64 tensor inserted into a float sequence; SequenceAt on a tensor */
  b = gb_new(17);
  tin(&b, "a", NBL_DT_FLOAT, 2);
  tin(&b, "t", NBL_DT_INT64, 1);
  node(&b, "SequenceConstruct", "a | s");
  node(&b, "SequenceInsert", "s t | y");
  gout(&b, "y");
  ck_assert_int_eq(run(&b, 1, 2, in, &s, &out), NBL_ERR_INVALID_MODEL);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "the tensor has element type int64, the sequence holds float"));
  nbl_session_free(s);
  nbl_model_free(b.m);
  b = gb_new(17);
  tin(&b, "a", NBL_DT_FLOAT, 2);
  tin(&b, "t", NBL_DT_INT64, 1);
  node(&b, "SequenceAt", "a t | y");
  gout(&b, "y");
  ck_assert_int_eq(run(&b, 1, 2, in, &s, &out), NBL_ERR_INVALID_MODEL);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "input 'input_sequence' is a tensor, the op takes a sequence"));
  nbl_session_free(s);
  nbl_model_free(b.m);
}
END_TEST

/* An optional(tensor) graph input: fed an empty optional, an optional
 * holding a tensor, or the tensor itself (taken as the optional holding it,
 * as ONNX Runtime does); a sequence is refused. */
START_TEST(test_optional_input) {
  gb b = gb_new(16);
  oin(&b, "o", NBL_DT_FLOAT);
  node(&b, "OptionalHasElement", "o | has");
  gout(&b, "has");
  nbl_host_tensor a = ht(NBL_DT_FLOAT, 1, D2, A);
  nbl_host_tensor feeds[4] = {{.name = "o", .dtype = NBL_DT_FLOAT, .kind = NBL_VALUE_OPTIONAL},
                              {.name = "o", .dtype = NBL_DT_FLOAT, .kind = NBL_VALUE_OPTIONAL, .n_items = 1, .items = &a},
                              hv("o", NBL_DT_FLOAT, 1, D2, A),
                              {.name = "o", .dtype = NBL_DT_FLOAT, .kind = NBL_VALUE_SEQUENCE, .n_items = 1, .items = &a}};
  const int want[3] = {0, 1, 1};
  nbl_session *s;
  const nbl_host_tensor *out;
  ck_assert_int_eq(run(&b, 0, 1, feeds, &s, &out), NBL_OK);
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(nbl_session_run(s, 1, &feeds[i], &out), NBL_OK);
    ck_assert_int_eq(*(const uint8_t *)out[0].data, want[i]);
  }
  ck_assert_int_eq(nbl_session_run(s, 1, &feeds[3], &out), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "got a sequence, the model expects an optional"));
  nbl_session_free(s);
  nbl_model_free(b.m);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("ops_sequence");
  TCase *tc = tcase_create("all");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_construct_at_length);
  tcase_add_test(tc, test_insert_erase);
  tcase_add_test(tc, test_split_concat);
  tcase_add_test(tc, test_optional);
  tcase_add_test(tc, test_sequence_input_and_loop);
  tcase_add_test(tc, test_errors);
  tcase_add_test(tc, test_optional_input);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *r = srunner_create(suite());
  srunner_run_all(r, CK_NORMAL);
  int nf = srunner_ntests_failed(r);
  srunner_free(r);
  return nf ? 1 : 0;
}
