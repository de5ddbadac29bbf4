/* int4_pack.c - INT4/INT8 weight codes packed for the integer kernels:
 * panels for the GEMM micro-kernels, row blocks for the convolution tiles
 * (layouts in int4_gemm.h). */
#include "runtime/kernels/int4_gemm.h"

#include <stdlib.h>
#include <string.h>

int nbl_i4_pack_weights(const int8_t *w, int64_t K, int64_t N, int64_t sk, int64_t sn,
                        nbl_i4_weights *out) {
  memset(out, 0, sizeof *out);
  out->K = K;
  out->N = N;
  out->Kp = (K + 3) / 4 * 4;
  out->Np = (N + NBL_I4_NR - 1) / NBL_I4_NR * NBL_I4_NR;
  size_t bytes = (size_t)(out->Kp * out->Np);
  size_t alloc = (bytes + 63) / 64 * 64;
  out->panels = aligned_alloc(64, alloc ? alloc : 64);
  out->colsum = calloc((size_t)(N ? N : 1), sizeof(int32_t));
  if (!out->panels || !out->colsum) {
    nbl_i4_weights_free(out);
    return -1;
  }
  memset(out->panels, 0, alloc ? alloc : 64);
  int maxabs = 0;
  for (int64_t k = 0; k < K; k++)
    for (int64_t n = 0; n < N; n++) {
      int v = w[k * sk + n * sn];
      int64_t j = n / NBL_I4_NR, c = n % NBL_I4_NR;
      out->panels[j * out->Kp * NBL_I4_NR + ((k / 4) * NBL_I4_NR + c) * 4 + k % 4] = (int8_t)v;
      out->colsum[n] += v;
      if (abs(v) > maxabs) maxabs = abs(v);
    }
  out->maxabs = maxabs;
  if (maxabs > 64) { /* AVX2 splits such weights in two halves of at most 64 */
    out->panels_half = aligned_alloc(64, alloc ? alloc : 64);
    if (!out->panels_half) {
      nbl_i4_weights_free(out);
      return -1;
    }
    for (size_t i = 0; i < (alloc ? alloc : 64); i++)
      out->panels_half[i] = (int8_t)(out->panels[i] >> 1);
  }
  return 0;
}

void nbl_i4_weights_free(nbl_i4_weights *w) {
  free(w->panels_half);
  free(w->panels);
  free(w->colsum);
  memset(w, 0, sizeof *w);
}

int nbl_i4_pack_rows(const int8_t *w, int64_t M, int64_t K, int64_t sm, int64_t sk,
                     nbl_i4_rows *out) {
  memset(out, 0, sizeof *out);
  out->M = M;
  out->K = K;
  out->Kp = (K + 3) / 4 * 4;
  int64_t Mb = (M + NBL_I4_CR - 1) / NBL_I4_CR;
  size_t bytes = (size_t)(Mb * NBL_I4_CR * out->Kp);
  size_t alloc = (bytes + 63) / 64 * 64;
  out->w = aligned_alloc(64, alloc ? alloc : 64);
  out->rowsum = calloc((size_t)(Mb * NBL_I4_CR + 1), sizeof(int32_t));
  if (!out->w || !out->rowsum) {
    nbl_i4_rows_free(out);
    return -1;
  }
  memset(out->w, 0, alloc ? alloc : 64);
  int maxabs = 0;
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = 0; k < K; k++) {
      int v = w[m * sm + k * sk];
      out->w[((m / NBL_I4_CR) * out->Kp + (k / 4) * 4) * NBL_I4_CR + (m % NBL_I4_CR) * 4 + k % 4] =
          (int8_t)v;
      out->rowsum[m] += v;
      if (abs(v) > maxabs) maxabs = abs(v);
    }
  out->maxabs = maxabs;
  if (maxabs > 64) { /* AVX2 splits such weights in two halves of at most 64 */
    out->w_half = aligned_alloc(64, alloc ? alloc : 64);
    if (!out->w_half) {
      nbl_i4_rows_free(out);
      return -1;
    }
    for (size_t i = 0; i < (alloc ? alloc : 64); i++) out->w_half[i] = (int8_t)(out->w[i] >> 1);
  }
  return 0;
}

void nbl_i4_rows_free(nbl_i4_rows *w) {
  free(w->w_half);
  free(w->w);
  free(w->rowsum);
  memset(w, 0, sizeof *w);
}
