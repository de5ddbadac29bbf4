/* runtime/core/session.h - what the two session APIs on the engine share
 * (inference: runtime/core/session.c; training: runtime/train/session.c):
 * host tensors into and out of an engine, and a value's declared type as
 * host tensor info. Implemented in runtime/core/session.c. */
#ifndef NBL_CORE_SESSION_H
#define NBL_CORE_SESSION_H

#include "nibble.h"
#include "runtime/core/exec.h"

/* A host tensor view of runtime tensor t, named `name` (neither copied);
 * a sequence or optional as one with no items (nbl_host_view_value lists
 * them). */
nbl_host_tensor nbl_host_view(const char *name, const nbl_rt_tensor *t);
/* *h = a host view of runtime value t, named `name`; a sequence's or
 * optional's elements as views in new items arrays, which
 * nbl_host_view_release frees (and nothing else). */
nbl_status nbl_host_view_value(const char *name, const nbl_rt_tensor *t, nbl_host_tensor *h);
void nbl_host_view_release(nbl_host_tensor *h);

/* Binds host tensor h (a view: not copied, valid through the next run) to
 * the input of e named h->name. Errors: a rank above NBL_MAX_DIMS, and those
 * of nbl_engine_bind (unknown input, type mismatch, too few bytes). */
nbl_status nbl_engine_bind_host(nbl_engine *e, const nbl_host_tensor *h);

/* After a run of e: outs[i] = a view of graph output i, named after it
 * (valid until the next run); outs holds one per graph output, and the
 * items arrays of the views it held before are released first (outs
 * zeroed or filled by this function). */
nbl_status nbl_engine_host_outputs(const nbl_engine *e, nbl_host_tensor *outs);
/* Release the items arrays of n views filled by nbl_engine_host_outputs. */
void nbl_host_outputs_release(nbl_host_tensor *outs, int n);

/* The declared type of value v as host tensor info: name, kind, dtype
 * (the tensors' element type of a sequence or optional, UNDEFINED when not
 * declared), rank (-1 when unknown or not a tensor) and dims (-1 for a
 * symbolic dim); no data. */
void nbl_host_info(const nbl_value *v, nbl_host_tensor *info);

#endif
