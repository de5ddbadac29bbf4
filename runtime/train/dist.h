/*
 * dist.h - the transport of data-parallel training: the few collective
 * operations the exchange layer (exchange.c) needs, behind one small
 * interface with two implementations:
 *
 *   dist_mpi.c   MPI (Open MPI), built when meson finds MPI (-Dmpi=auto|enabled);
 *                the only file of nibble that includes mpi.h
 *   dist_none.c  one process (size 1, rank 0): every collective is a local
 *                copy; in a build without MPI it also answers for MPI
 *
 * Every collective is non-blocking: it starts, returns a request, and the
 * caller polls nbl_dist_test until it completes (so the caller can keep a
 * deadline and never blocks forever on a dead peer). All ranks must start
 * the same collectives in the same order. Buffers must stay valid until the
 * request completes. Errors are statuses with a message naming the rank and
 * the operation; nothing here exits, except nbl_dist_abort.
 */
#ifndef NBL_DIST_H
#define NBL_DIST_H

#include <stddef.h>
#include <stdint.h>

#include "include/nibble.h"
#include "ir/ir.h" /* nbl_errorf */

typedef struct nbl_dist nbl_dist;

typedef struct nbl_dist_ops {
  /* Sum n floats (doubles) in place across ranks. */
  nbl_status (*iallreduce_f32)(nbl_dist *d, float *buf, size_t n, int *req);
  nbl_status (*iallreduce_f64)(nbl_dist *d, double *buf, size_t n, int *req);
  /* recv[r * bytes .. (r+1) * bytes) = rank r's send (recv holds size * bytes). */
  nbl_status (*iallgather)(nbl_dist *d, const void *send, size_t bytes, void *recv, int *req);
  /* Rank 0's bytes into buf on every rank. */
  nbl_status (*ibcast)(nbl_dist *d, void *buf, size_t bytes, int *req);
  /* *done = 1 when request req completed (the request is then released). */
  nbl_status (*test)(nbl_dist *d, int req, int *done);
  /* Stop every process of the job with exit status `code` (does not return). */
  void (*abort)(nbl_dist *d, int code);
  void (*close)(nbl_dist *d);
} nbl_dist_ops;

struct nbl_dist {
  const nbl_dist_ops *ops;
  int rank, size;
  const char *name; /* "mpi" or "none" */
};

/* One process: size 1, rank 0. */
nbl_status nbl_dist_open_none(nbl_dist **out);

/* The MPI world (MPI_COMM_WORLD duplicated, errors returned instead of
 * aborting; MPI initialized with MPI_THREAD_FUNNELED when the program has
 * not, and then finalized at exit). In a build without MPI:
 * NBL_ERR_UNSUPPORTED with a message saying so. */
nbl_status nbl_dist_open_mpi(nbl_dist **out);

/* 1 when this build has the MPI transport. */
int nbl_dist_mpi_built(void);

/* 1 when MPI was initialized by someone (the application or a previous
 * session); always 0 without MPI. */
int nbl_dist_mpi_initialized(void);

/* The number of processes a launcher announces in the environment
 * (OMPI_COMM_WORLD_SIZE of Open MPI's mpirun, PMI_SIZE of MPICH/Hydra and
 * Slurm's PMI); 0 when none is set. *local (may be NULL) gets the processes
 * on this machine (OMPI_COMM_WORLD_LOCAL_SIZE, MPI_LOCALNRANKS), 0 unknown;
 * *rank (may be NULL) this process's rank (OMPI_COMM_WORLD_RANK, PMI_RANK), 0
 * when unset. */
int nbl_dist_launcher_size(int *local, int *rank);

#endif /* NBL_DIST_H */
