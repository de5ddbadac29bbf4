/*
 * print_internal.h - helpers shared by the printers (print_text.c,
 * print_dot.c, print_json.c, info.c). Not part of the public API.
 */
#ifndef NBL_PRINT_INTERNAL_H
#define NBL_PRINT_INTERNAL_H

#include "ir.h"

/* Initializers with more elements than this are summarized unless full=1. */
#define NBL_PRINT_SUMMARY_MAX 16
/* Values shown in a summary. */
#define NBL_PRINT_SUMMARY_HEAD 4

/* Print the model in one format (the three back ends of nbl_model_print). */
nbl_status nbl_print_text(const nbl_model *m, int full, FILE *out);
nbl_status nbl_print_dot(const nbl_model *m, int full, FILE *out);
nbl_status nbl_print_json(const nbl_model *m, int full, FILE *out);

/* Shortest decimal text that reads back as exactly `v` (strtof for a float,
 * strtod for a double): "0.1", "1e-05", "nan", "inf", "-inf". When
 * `float_literal` is set, an integral value gets ".0" appended so it reads
 * as a float literal ("2.0"). buf must hold 40 bytes. Returns buf. */
char *nbl_fmt_float(char *buf, double v, int is_double, int float_literal);

/* Statistics of a numeric tensor (every dtype but STRING). */
typedef struct nbl_tensor_stats {
  int64_t n;      /* elements */
  int64_t n_nan;  /* NaN elements (excluded from min/max/mean) */
  double min, max, mean;
} nbl_tensor_stats;

/* Check that a tensor's payload holds every element its dims promise.
 * Returns NBL_OK or NBL_ERR_INVALID_MODEL with a message naming the tensor. */
nbl_status nbl_tensor_check_payload(const nbl_tensor *t);
void nbl_tensor_stats_compute(const nbl_tensor *t, nbl_tensor_stats *st);

/* "float[N,3]" style text of a type into buf (truncated with "..." if long);
 * "?" when the type is not given. Returns buf. */
char *nbl_type_to_string(const nbl_type *t, char *buf, size_t len);

#endif /* NBL_PRINT_INTERNAL_H */
