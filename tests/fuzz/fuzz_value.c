/*
 * fuzz_value.c - fuzz target: the SequenceProto / OptionalProto reader.
 *
 * bytes -> nbl_value_parse as a sequence and as an optional (the reader
 * behind nbl_value_read for `nibble test` data sets and `nibble run --input`
 * of such inputs). A value that parses must serialize again (nbl_value_pack)
 * and parse back to the same kind, name, element type, elements and bytes;
 * a failure must leave no items and a message.
 */
#include <string.h>

#include "fuzz_common.h"
#include "include/nibble.h"
#include "parser/parser.h"

static int same_value(const nbl_host_tensor *a, const nbl_host_tensor *b, int top) {
  if (a->kind != b->kind || a->n_items != b->n_items || a->rank != b->rank) return 0;
  if (top && strcmp(a->name ? a->name : "", b->name ? b->name : "") != 0) return 0;
  if (a->kind != NBL_VALUE_TENSOR) {
    /* an empty sequence's element type is not stored */
    if (a->n_items && a->dtype != b->dtype) return 0;
    for (int i = 0; i < a->n_items; i++)
      if (!same_value(&a->items[i], &b->items[i], 0)) return 0;
    return 1;
  }
  if (a->dtype != b->dtype || a->nbytes != b->nbytes) return 0;
  for (int d = 0; d < a->rank; d++)
    if (a->dims[d] != b->dims[d]) return 0;
  if (a->dtype == NBL_DT_STRING) {
    for (size_t i = 0; i < a->nbytes / sizeof(char *); i++)
      if (strcmp(((char **)a->data)[i], ((char **)b->data)[i]) != 0) return 0;
    return 1;
  }
  return !a->nbytes || memcmp(a->data, b->data, a->nbytes) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  for (int kind = NBL_VALUE_SEQUENCE; kind <= NBL_VALUE_OPTIONAL; kind++) {
    nbl_host_tensor v, w;
    if (nbl_value_parse(data, size, (nbl_value_kind)kind, "fuzz.pb", &v) != NBL_OK) {
      if (v.items || v.n_items || v.name) fuzz_fail("a failed parse returned a value");
      if (!nbl_last_error()[0]) fuzz_fail("a failed parse left no message");
      continue;
    }
    if (v.kind != (nbl_value_kind)kind) fuzz_fail("parsed as kind %d, asked for %d", v.kind, kind);
    uint8_t *buf = NULL;
    size_t n = 0;
    nbl_status st = nbl_value_pack(&v, "fuzz.pb", &buf, &n);
    if (st == NBL_OK) {
      if (nbl_value_parse(buf, n, (nbl_value_kind)kind, "repacked.pb", &w) != NBL_OK)
        fuzz_fail("a packed value does not parse: %s", nbl_last_error());
      if (!same_value(&v, &w, 1)) fuzz_fail("a packed value parses to another value");
      nbl_host_tensor_free(&w);
    } else if (st != NBL_ERR_OUT_OF_MEMORY && st != NBL_ERR_UNSUPPORTED) {
      fuzz_fail("a parsed value does not pack: %s", nbl_last_error());
    }
    free(buf);
    nbl_host_tensor_free(&v);
  }
  return 0;
}
