/*
 * dist_none.c - the one-process transport of dist.h (size 1, rank 0): a
 * collective over one rank is a copy (or nothing), complete at once. It lets
 * the exchange layer run unchanged in a single process (the 4-bit exchange
 * then quantizes this process's own gradients, with error feedback). In a
 * build without MPI it also provides nbl_dist_open_mpi, which says so.
 */
#include <stdlib.h>
#include <string.h>

#include "runtime/train/dist.h"

static nbl_status none_iallreduce_f32(nbl_dist *d, float *buf, size_t n, int *req) {
  *req = 0;
  return NBL_OK;
}

static nbl_status none_iallreduce_f64(nbl_dist *d, double *buf, size_t n, int *req) {
  *req = 0;
  return NBL_OK;
}

static nbl_status none_iallgather(nbl_dist *d, const void *send, size_t bytes, void *recv, int *req) {
  if (bytes && recv != send) memmove(recv, send, bytes);
  *req = 0;
  return NBL_OK;
}

static nbl_status none_ibcast(nbl_dist *d, void *buf, size_t bytes, int *req) {
  *req = 0;
  return NBL_OK;
}

static nbl_status none_test(nbl_dist *d, int req, int *done) {
  *done = 1;
  return NBL_OK;
}

static void none_abort(nbl_dist *d, int code) { exit(code); }

static void none_close(nbl_dist *d) { free(d); }

static const nbl_dist_ops none_ops = {none_iallreduce_f32, none_iallreduce_f64, none_iallgather,
                                      none_ibcast, none_test, none_abort, none_close};

nbl_status nbl_dist_open_none(nbl_dist **out) {
  nbl_dist *d = calloc(1, sizeof *d);
  if (!d) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  d->ops = &none_ops;
  d->rank = 0;
  d->size = 1;
  d->name = "none";
  *out = d;
  return NBL_OK;
}

int nbl_dist_launcher_size(int *local, int *rank) {
  static const char *const sizes[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"};
  static const char *const locals[] = {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"};
  int n = 0;
  for (size_t i = 0; i < 2 && n <= 0; i++) {
    const char *v = getenv(sizes[i]);
    n = v ? atoi(v) : 0;
  }
  if (local) {
    *local = 0;
    for (size_t i = 0; i < 2 && *local <= 0; i++) {
      const char *v = getenv(locals[i]);
      *local = v ? atoi(v) : 0;
    }
    if (*local < 0) *local = 0;
  }
  if (rank) {
    const char *v = getenv("OMPI_COMM_WORLD_RANK");
    if (!v) v = getenv("PMI_RANK");
    *rank = v ? atoi(v) : 0;
    if (*rank < 0) *rank = 0;
  }
  return n > 0 ? n : 0;
}

#ifndef NBL_HAVE_MPI
nbl_status nbl_dist_open_mpi(nbl_dist **out) {
  *out = NULL;
  return nbl_errorf(NBL_ERR_UNSUPPORTED,
                    "this nibble was built without MPI (meson -Dmpi=enabled, with Open MPI's "
                    "libopenmpi-dev installed, builds it in)");
}

int nbl_dist_mpi_built(void) { return 0; }

int nbl_dist_mpi_initialized(void) { return 0; }
#endif
