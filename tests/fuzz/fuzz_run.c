/*
 * fuzz_run.c - fuzz target: load -> plan -> run of small models.
 *
 * A model the loader accepts is planned (nbl_session_create, one thread,
 * reference or fast kernels chosen by the input's hash) and run twice (the
 * second run takes the planned-arena path) on inputs synthesized from the
 * declared input types. Everything is bounded so that one input costs at
 * most about a second and a few MB:
 *  - models are refused (not run) when an input type is not a tensor, its
 *    rank exceeds 8, a declared dimension exceeds FUZZ_MAX_DIM, an input
 *    would exceed FUZZ_MAX_FEED_ELEMS elements, or the initializers hold more
 *    than FUZZ_MAX_INIT_ELEMS elements; unknown and symbolic dimensions are
 *    all fed as one size picked by the input's hash (0, 1, 2 or 3, mostly 2);
 *  - at run time every tensor the runtime allocates goes through
 *    nbl_rt_tensor_alloc and every If/Loop/Scan body run through
 *    nbl_kctx_run_subgraph; the link wraps both (-Wl,--wrap=...) and makes
 *    them fail with a clear "fuzz budget" error once one tensor exceeds
 *    FUZZ_MAX_TENSOR_ELEMS elements, the tensors of a run together exceed
 *    FUZZ_MAX_RUN_ELEMS, the body runs exceed FUZZ_MAX_SUBGRAPH_RUNS (this is
 *    what bounds Loop trip counts, including endless ones) or the run has
 *    taken FUZZ_MAX_RUN_MS. Kernels see an ordinary allocation failure, so the
 *    error paths after a failed allocation are fuzzed too.
 * A run may fail with any status and message; only crashes, sanitizer
 * reports, leaks and a failure without a message are findings.
 */
#include <string.h>
#include <time.h>

#include "fuzz_common.h"
#include "include/nibble.h"
#include "ir/ir.h"
#include "fuzz_budget.h"
#include "tests/test_data.h"

#define FUZZ_MAX_DIM 64
#define FUZZ_MAX_FEED_ELEMS 4096
#define FUZZ_MAX_INIT_ELEMS 65536

/* ---- input synthesis */

static uint64_t rng_next(uint64_t *s) { return td_splitmix64(s); }

/* Fill n elements of type dt: small values, so that they also make sense as
 * indices, axes, shapes and counts (integers 0..3); floats in [-2, 2), in
 * [0, 4) or whole numbers 0..3, chosen per tensor. */
static int fill(nbl_host_tensor *h, int64_t n, uint64_t *seed) {
  int mode = (int)(rng_next(seed) % 3);
  size_t es = nbl_dtype_nbytes(h->dtype, 1);
  if (h->dtype == NBL_DT_STRING) {
    char **s = calloc((size_t)(n ? n : 1), sizeof *s);
    if (!s) return -1;
    static char *const words[] = {"", "a", "nibble", "A b"};
    for (int64_t i = 0; i < n; i++) s[i] = words[rng_next(seed) % 4];
    h->data = s;
    h->nbytes = (size_t)n * sizeof *s;
    return 0;
  }
  if (nbl_dtype_bits(h->dtype) == 0) return -1;
  h->nbytes = nbl_dtype_nbytes(h->dtype, n);
  unsigned char *d = calloc(h->nbytes ? h->nbytes : 1, 1);
  if (!d) return -1;
  h->data = d;
  for (int64_t i = 0; i < n; i++) {
    uint64_t r = rng_next(seed);
    int64_t k = (int64_t)(r % 4);
    double f = mode == 2 ? (double)k : (double)(int64_t)(r % 4096) / 1024.0 - (mode ? 0.0 : 2.0);
    switch (h->dtype) {
    case NBL_DT_FLOAT: ((float *)d)[i] = (float)f; break;
    case NBL_DT_DOUBLE: ((double *)d)[i] = f; break;
    case NBL_DT_FLOAT16: ((uint16_t *)d)[i] = nbl_float_to_half((float)f); break;
    case NBL_DT_BFLOAT16: ((uint16_t *)d)[i] = nbl_float_to_bf16((float)f); break;
    case NBL_DT_BOOL: d[i] = (unsigned char)(r & 1); break;
    case NBL_DT_INT4:
    case NBL_DT_UINT4: d[i / 2] |= (unsigned char)((r & 15) << (i % 2 ? 4 : 0)); break;
    default: /* integers, float8 and complex types: bytes of the small value k */
      for (size_t b = 0; b < es; b++)
        d[(size_t)i * es + b] = b == 0 ? (unsigned char)k : 0;
      if (h->dtype == NBL_DT_COMPLEX64) ((float *)d)[2 * i] = (float)f;
      if (h->dtype == NBL_DT_COMPLEX128) ((double *)d)[2 * i] = f;
      break;
    }
  }
  return 0;
}

static int64_t init_elems(const nbl_graph *g) {
  int64_t n = 0;
  for (int i = 0; i < g->n_initializers; i++) {
    const nbl_tensor *t = g->values[g->initializers[i]].init;
    int64_t k = t ? nbl_tensor_numel(t) : 0;
    if (k < 0) return INT64_MAX;
    n += k;
  }
  return n;
}

/* An output view must be readable: every byte of a tensor, every element
 * of a sequence or optional (as many as it says it has). */
static void touch(const nbl_host_tensor *o, int depth) {
  if (o->kind != NBL_VALUE_TENSOR) {
    if (o->n_items < 0 || (o->n_items && !o->items) || depth > 4) fuzz_fail("a bad sequence view");
    for (int j = 0; j < o->n_items; j++) touch(&o->items[j], depth + 1);
    return;
  }
  volatile unsigned char sink = 0;
  if (o->dtype != NBL_DT_STRING)
    for (size_t b = 0; b < o->nbytes; b++) sink ^= ((const unsigned char *)o->data)[b];
  (void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  nbl_model *m = NULL;
  if (nbl_model_load_buffer(data, size, "fuzz.onnx", NULL, &m) != NBL_OK) return 0;
  uint64_t seed = 1469598103934665603ull; /* FNV-1a of the input: reproducible */
  for (size_t i = 0; i < size; i++) seed = (seed ^ data[i]) * 1099511628211ull;
  nbl_session *s = NULL;
  nbl_host_tensor *in = NULL;
  int n_in = 0, n_alloc = 0;
  nbl_status st = NBL_OK;
  if (init_elems(m->graph) > FUZZ_MAX_INIT_ELEMS) goto done;
  nbl_session_options opt = {.threads = 1, .reference = (int)(seed & 1)};
  budget_start();
  st = nbl_session_create(m, &opt, &s);
  budget.active = 0;
  if (st != NBL_OK) {
    if (s) fuzz_fail("a failed session_create returned a session");
    if (!nbl_last_error()[0]) fuzz_fail("session_create failed without a message");
    goto done;
  }
  /* unknown and symbolic dimensions: one size per fuzz input, mostly 2,
   * sometimes 0 (empty tensors), 1 or 3 */
  static const int64_t unknown_dims[8] = {0, 1, 2, 2, 2, 2, 3, 3};
  int64_t unknown = unknown_dims[(seed >> 8) % 8];
  int n = nbl_session_input_count(s);
  in = calloc((size_t)(n ? n : 1), sizeof *in);
  if (!in) goto done;
  n_alloc = n;
  for (; n_in < n; n_in++) {
    nbl_host_tensor *h = &in[n_in];
    if (nbl_session_input_info(s, n_in, h) != NBL_OK)
      fuzz_fail("input %d of %d has no info: %s", n_in, n, nbl_last_error());
    if (h->dtype == NBL_DT_UNDEFINED || h->rank > NBL_MAX_DIMS) goto done;
    if (h->rank < 0) { /* shape not declared: feed a vector */
      h->rank = 1;
      h->dims[0] = -1;
    }
    int64_t numel = 1;
    for (int d = 0; d < h->rank; d++) {
      if (h->dims[d] < 0) h->dims[d] = unknown;
      if (h->dims[d] > FUZZ_MAX_DIM) goto done;
      numel *= h->dims[d];
    }
    if (numel > FUZZ_MAX_FEED_ELEMS) goto done;
    if (fill(h, numel, &seed) != 0) goto done;
    if (h->kind != NBL_VALUE_TENSOR) { /* a sequence (0-3) or optional (0-1) of such tensors */
      int k = (int)((seed >> 16) % (h->kind == NBL_VALUE_OPTIONAL ? 2 : 4));
      nbl_host_tensor el = *h;
      el.kind = NBL_VALUE_TENSOR;
      el.name = NULL;
      h->items = calloc((size_t)k + 1, sizeof *h->items);
      if (!h->items) goto done;
      h->n_items = k;
      for (int j = 0; j < k; j++) {
        h->items[j] = el;
        h->items[j].data = malloc(el.nbytes ? el.nbytes : 1);
        if (!h->items[j].data) goto done;
        if (el.nbytes) memcpy(h->items[j].data, el.data, el.nbytes);
      }
    }
  }
  for (int run = 0; run < 2; run++) {
    const nbl_host_tensor *outs = NULL;
    budget_start();
    st = nbl_session_run(s, n_in, in, &outs);
    budget.active = 0;
    if (st != NBL_OK) {
      if (!nbl_last_error()[0]) fuzz_fail("a run failed without a message");
      break;
    }
    int n_out = nbl_session_output_count(s);
    for (int i = 0; i < n_out; i++) touch(&outs[i], 0);
  }
done:
  if (getenv("NBL_FUZZ_VERBOSE")) /* replay_main: which models ran, which were refused */
    fprintf(stderr, "  %s\n", !s ? "not planned" : n_in < nbl_session_input_count(s) ? "refused"
                               : st == NBL_OK ? "ran" : nbl_last_error());
  for (int i = 0; in && i < n_alloc; i++) {
    free(in[i].data);
    for (int j = 0; in[i].items && j < in[i].n_items; j++) free(in[i].items[j].data);
    free(in[i].items);
  }
  free(in);
  nbl_session_free(s);
  nbl_model_free(m);
  return 0;
}
