/*
 * dist_mpi.c - the MPI transport of dist.h, the only file of nibble that
 * includes mpi.h (built when meson finds MPI; -Dmpi=disabled leaves it out).
 *
 * The world communicator is duplicated, so nibble's collectives never match
 * an application's own, and its error handler is set to MPI_ERRORS_RETURN:
 * a failing call becomes a status naming the rank and the operation instead
 * of MPI's default abort. Collectives are the non-blocking MPI-3 ones
 * (MPI_Iallreduce, MPI_Iallgather, MPI_Ibcast); the caller polls them with
 * MPI_Test, which is also what makes Open MPI progress them, so a caller that
 * polls between the nodes of the backward pass overlaps communication with
 * computation. MPI is called from the thread that created the session only
 * (MPI_THREAD_FUNNELED).
 */
#include <limits.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/train/dist.h"

typedef struct dist_mpi {
  nbl_dist base;
  MPI_Comm comm;
  MPI_Request *reqs;
  int n_reqs;
} dist_mpi;

static nbl_status mpi_fail(dist_mpi *m, int rc, const char *what) {
  char msg[MPI_MAX_ERROR_STRING + 1];
  int len = 0;
  if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) len = 0;
  msg[len] = 0;
  return nbl_errorf(NBL_ERR_RUNTIME, "rank %d of %d: %s failed: %s", m->base.rank, m->base.size, what,
                    len ? msg : "unknown MPI error");
}

/* A free request slot (grown on demand). */
static nbl_status slot(dist_mpi *m, int *req) {
  for (int i = 0; i < m->n_reqs; i++)
    if (m->reqs[i] == MPI_REQUEST_NULL) {
      *req = i;
      return NBL_OK;
    }
  int n = m->n_reqs ? 2 * m->n_reqs : 16;
  MPI_Request *r = realloc(m->reqs, sizeof *r * (size_t)n);
  if (!r) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  for (int i = m->n_reqs; i < n; i++) r[i] = MPI_REQUEST_NULL;
  *req = m->n_reqs;
  m->reqs = r;
  m->n_reqs = n;
  return NBL_OK;
}

static nbl_status too_big(dist_mpi *m, const char *what, size_t n) {
  return nbl_errorf(NBL_ERR_UNSUPPORTED, "rank %d: %s of %zu elements exceeds MPI's int count", m->base.rank,
                    what, n);
}

static nbl_status mpi_iallreduce_f32(nbl_dist *d, float *buf, size_t n, int *req) {
  dist_mpi *m = (dist_mpi *)d;
  if (n > INT_MAX) return too_big(m, "all-reduce", n);
  nbl_status st = slot(m, req);
  if (st) return st;
  int rc = MPI_Iallreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, m->comm, &m->reqs[*req]);
  return rc == MPI_SUCCESS ? NBL_OK : mpi_fail(m, rc, "MPI_Iallreduce (float)");
}

static nbl_status mpi_iallreduce_f64(nbl_dist *d, double *buf, size_t n, int *req) {
  dist_mpi *m = (dist_mpi *)d;
  if (n > INT_MAX) return too_big(m, "all-reduce", n);
  nbl_status st = slot(m, req);
  if (st) return st;
  int rc = MPI_Iallreduce(MPI_IN_PLACE, buf, (int)n, MPI_DOUBLE, MPI_SUM, m->comm, &m->reqs[*req]);
  return rc == MPI_SUCCESS ? NBL_OK : mpi_fail(m, rc, "MPI_Iallreduce (double)");
}

static nbl_status mpi_iallgather(nbl_dist *d, const void *send, size_t bytes, void *recv, int *req) {
  dist_mpi *m = (dist_mpi *)d;
  if (bytes > INT_MAX) return too_big(m, "all-gather", bytes);
  nbl_status st = slot(m, req);
  if (st) return st;
  int rc = MPI_Iallgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, m->comm, &m->reqs[*req]);
  return rc == MPI_SUCCESS ? NBL_OK : mpi_fail(m, rc, "MPI_Iallgather");
}

static nbl_status mpi_ibcast(nbl_dist *d, void *buf, size_t bytes, int *req) {
  dist_mpi *m = (dist_mpi *)d;
  if (bytes > INT_MAX) return too_big(m, "broadcast", bytes);
  nbl_status st = slot(m, req);
  if (st) return st;
  int rc = MPI_Ibcast(buf, (int)bytes, MPI_BYTE, 0, m->comm, &m->reqs[*req]);
  return rc == MPI_SUCCESS ? NBL_OK : mpi_fail(m, rc, "MPI_Ibcast");
}

static nbl_status mpi_test(nbl_dist *d, int req, int *done) {
  dist_mpi *m = (dist_mpi *)d;
  *done = 0;
  if (req < 0 || req >= m->n_reqs) return nbl_errorf(NBL_ERR_INTERNAL, "bad MPI request %d", req);
  if (m->reqs[req] == MPI_REQUEST_NULL) {
    *done = 1;
    return NBL_OK;
  }
  int flag = 0;
  int rc = MPI_Test(&m->reqs[req], &flag, MPI_STATUS_IGNORE);
  if (rc != MPI_SUCCESS) return mpi_fail(m, rc, "MPI_Test");
  *done = flag != 0;
  return NBL_OK;
}

static void mpi_abort(nbl_dist *d, int code) {
  dist_mpi *m = (dist_mpi *)d;
  MPI_Abort(m->comm, code);
  exit(code); /* not reached */
}

static void mpi_close(nbl_dist *d) {
  dist_mpi *m = (dist_mpi *)d;
  int fin = 0;
  MPI_Finalized(&fin);
  if (!fin) {
    for (int i = 0; i < m->n_reqs; i++)
      if (m->reqs[i] != MPI_REQUEST_NULL) MPI_Request_free(&m->reqs[i]);
    MPI_Comm_free(&m->comm);
  }
  free(m->reqs);
  free(m);
}

static const nbl_dist_ops mpi_ops = {mpi_iallreduce_f32, mpi_iallreduce_f64, mpi_iallgather, mpi_ibcast,
                                     mpi_test, mpi_abort, mpi_close};

static void finalize_at_exit(void) {
  int fin = 0;
  MPI_Finalized(&fin);
  if (!fin) MPI_Finalize();
}

nbl_status nbl_dist_open_mpi(nbl_dist **out) {
  *out = NULL;
  int init = 0, fin = 0;
  MPI_Finalized(&fin);
  if (fin) return nbl_errorf(NBL_ERR_RUNTIME, "MPI was already finalized in this process");
  MPI_Initialized(&init);
  if (!init) {
    int provided = 0;
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
      return nbl_errorf(NBL_ERR_RUNTIME, "MPI_Init_thread failed");
    atexit(finalize_at_exit);
  }
  dist_mpi *m = calloc(1, sizeof *m);
  if (!m) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  m->base.ops = &mpi_ops;
  m->base.name = "mpi";
  int rc = MPI_Comm_dup(MPI_COMM_WORLD, &m->comm);
  if (rc != MPI_SUCCESS) {
    free(m);
    return nbl_errorf(NBL_ERR_RUNTIME, "MPI_Comm_dup of the world communicator failed");
  }
  MPI_Comm_set_errhandler(m->comm, MPI_ERRORS_RETURN);
  MPI_Comm_rank(m->comm, &m->base.rank);
  MPI_Comm_size(m->comm, &m->base.size);
  *out = &m->base;
  return NBL_OK;
}

int nbl_dist_mpi_built(void) { return 1; }

int nbl_dist_mpi_initialized(void) {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return init && !fin;
}
