/*
 * nibble_types.h - the vocabulary every layer of nibble and its public API
 * share: status codes, element types, and the three functions over them.
 * libc only. Included by nibble.h (the public API) and by ir/ir.h, so that
 * the IR, and every layer built on it, can speak of a status or an element
 * type without seeing the public API.
 */
#ifndef NIBBLE_TYPES_H
#define NIBBLE_TYPES_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes. Values are stable. */
typedef enum nbl_status {
  NBL_OK = 0,
  NBL_ERR_INVALID_ARGUMENT = 1, /* caller passed something unusable (NULL, bad option) */
  NBL_ERR_IO = 2,               /* a file could not be opened, read, mapped or written */
  NBL_ERR_PARSE = 3,            /* bytes are not a valid ONNX protobuf */
  NBL_ERR_INVALID_MODEL = 4,    /* parsed, but the model breaks an ONNX rule (verifier) */
  NBL_ERR_UNSUPPORTED = 5,      /* valid ONNX that nibble does not implement */
  NBL_ERR_OUT_OF_MEMORY = 6,
  NBL_ERR_RUNTIME = 7,          /* a kernel failed on the data it was given */
  NBL_ERR_MISMATCH = 8,         /* results differ from an expected value */
  NBL_ERR_INTERNAL = 9,         /* a broken internal invariant (a nibble bug) */
  NBL_ERR_TERMINATED = 10       /* a run stopped on request (nbl_session_terminate) */
} nbl_status;

/* Element types: the numbers of ONNX TensorProto.DataType. */
typedef enum nbl_dtype {
  NBL_DT_UNDEFINED = 0,
  NBL_DT_FLOAT = 1,
  NBL_DT_UINT8 = 2,
  NBL_DT_INT8 = 3,
  NBL_DT_UINT16 = 4,
  NBL_DT_INT16 = 5,
  NBL_DT_INT32 = 6,
  NBL_DT_INT64 = 7,
  NBL_DT_STRING = 8,
  NBL_DT_BOOL = 9,
  NBL_DT_FLOAT16 = 10,
  NBL_DT_DOUBLE = 11,
  NBL_DT_UINT32 = 12,
  NBL_DT_UINT64 = 13,
  NBL_DT_COMPLEX64 = 14,
  NBL_DT_COMPLEX128 = 15,
  NBL_DT_BFLOAT16 = 16,
  NBL_DT_FLOAT8E4M3FN = 17,
  NBL_DT_FLOAT8E4M3FNUZ = 18,
  NBL_DT_FLOAT8E5M2 = 19,
  NBL_DT_FLOAT8E5M2FNUZ = 20,
  NBL_DT_UINT4 = 21, /* packed two per byte, low nibble first */
  NBL_DT_INT4 = 22,  /* packed two per byte, low nibble first, codes -8..7 */
  NBL_DT_COUNT_ = 23
} nbl_dtype;

/* The message of the last failing call on this thread ("" if none). */
const char *nbl_last_error(void);

/* A short constant name for a status ("ok", "invalid-model", ...). */
const char *nbl_status_name(nbl_status st);

/* Name of an element type as ONNX spells it ("float", "int4", ...), or "?" */
const char *nbl_dtype_name(nbl_dtype dt);

#ifdef __cplusplus
}
#endif
#endif /* NIBBLE_TYPES_H */
