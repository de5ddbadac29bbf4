/* runtime/ops/grad_norm.h - what the 'grad_norm' family
 * (runtime/ops/grad_norm.c) shares with the fused training paths
 * (runtime/fusions/fuse_bn_grad.c, fuse_bn_act.c): the float32 fast kernels
 * of BatchNormInternal and BatchNormalizationGrad for one channel or a
 * block of channels, so that a fused node gives the ops' numbers bit for
 * bit. */
#ifndef NBL_OPS_GRAD_NORM_H
#define NBL_OPS_GRAD_NORM_H

#include <stdint.h>

/* What a sweep over channel ch's planes fetches ahead while it works on
 * plane n of N (planes of sp floats at stride C sp): the plane about 2 KiB
 * further (ceil(512 / sp) planes on), as an offset in floats from plane n;
 * 0 (the plane itself) near the end. Small planes are short streams that the
 * hardware prefetcher barely starts on. */
static inline int64_t nbl_bn_ahead(int64_t n, int64_t N, int64_t C, int64_t sp) {
  int64_t k = sp > 0 ? (512 + sp - 1) / sp : 1;
  return n + k < N ? k * C * sp : 0;
}

/* The fast kernels and the fused chains work on blocks of channels: planes
 * of NBL_BN_BLOCK_PLANE floats or more one channel at a time (its planes at
 * stride C sp, the plane ahead fetched while one is worked on), smaller ones
 * nbl_bn_block channels at once, the planes in the order n, then c (each
 * image's planes of the block one run of memory, which the hardware
 * prefetcher follows; 7x7 planes alone are 196-byte pieces 12 KiB apart;
 * at 28x28 channel by channel measured faster than blocks of two).
 * Each channel's planes are still taken in plane order, so every result is
 * the same bits whatever the blocks. */
#define NBL_BN_BLOCK_PLANE 512
#define NBL_BN_BLOCK_MAX 64

/* Channels per block for planes of sp floats: enough for a run of at least
 * NBL_BN_BLOCK_PLANE floats, at most NBL_BN_BLOCK_MAX, and no more than C /
 * threads (rounded up), so each thread gets a block. */
int64_t nbl_bn_block(int64_t C, int64_t sp, int threads);

/* Sixteen double accumulators per sum, element i of every plane added to
 * lane i % 16, the lanes added by nbl_bn_acc_total in a fixed tree: the
 * same bits on every instruction set (AVX-512, AVX2 and the scalar path
 * run the same double operations per lane) and thread count. Zero it
 * (memset) before the first call. */
typedef struct nbl_bn_acc {
  double a[16], b[16];
} nbl_bn_acc;

/* a += x - k, b += (x - k)^2 over channel ch of float32 x laid out
 * [N, C, sp], plane by plane in plane order (the statistics about k). */
void nbl_bn_acc_stats(nbl_bn_acc *s, const float *x, int64_t N, int64_t C, int64_t sp, int64_t ch, double k);

typedef struct nbl_bn_grad_hooks nbl_bn_grad_hooks;

/* a += g, b += g * (x - mean) over channel ch of g and x laid out
 * [N, C, sp] (BatchNormalizationGrad's sums), plane by plane in plane
 * order; h->before (when h and it are not NULL) runs on each plane just
 * before it is summed. */
void nbl_bn_acc_grad(nbl_bn_acc *s, const float *g, const float *x, int64_t N, int64_t C, int64_t sp, int64_t ch,
                     double mean, const nbl_bn_grad_hooks *h);

/* The sum of the sixteen lanes as a fixed tree (the upper half added to the
 * lower lane by lane: 8, then 4, 2, 1). */
double nbl_bn_acc_total(const double lanes[16]);

/* What a fused chain adds to nbl_bn_grad_f32_channel, plane by plane while
 * the plane is in cache: before(arg, at, n) (when not NULL) writes dY's n
 * floats at flat index `at` just before they are summed; when dx_absmax is
 * not NULL, *dx_absmax = max(*dx_absmax, |X_grad|) over the finite X_grad
 * written (taken in the sweep that writes them; 0 stays 0 when there is no
 * finite one, as nbl_logq_absmax). */
struct nbl_bn_grad_hooks {
  void (*before)(void *arg, int64_t at, int64_t n);
  void *arg;
  float *dx_absmax;
};

/* BatchNormalizationGrad of channel ch of float32 tensors laid out
 * [N, C, sp]: dY g, input x, the forward's saved mean and inverse standard
 * deviation and the channel's scale. *sg_out = sum g, *sgx_out = sum g *
 * (x - mean) * inv (the scale and bias gradients), summed with
 * nbl_bn_acc_grad plane by plane in plane order; when dx is not NULL,
 * writes the channel's input gradient there (dx may be g: each element is
 * read before it is written). hooks may be NULL. */
void nbl_bn_grad_f32_channel(const float *g, const float *x, float *dx, int64_t N, int64_t C, int64_t sp,
                             int64_t ch, double mean, double inv, double scale, double *sg_out,
                             double *sgx_out, const nbl_bn_grad_hooks *hooks);

/* nbl_bn_grad_f32_channel for channels [c0, c1) at once (mean, inv, scale,
 * sg_out and sgx_out indexed c - c0; the planes in bn_block order, h->before
 * on each before it is summed, *dx_absmax over the block). */
void nbl_bn_grad_f32_block(const float *g, const float *x, float *dx, int64_t N, int64_t C, int64_t sp, int64_t c0,
                           int64_t c1, const double *mean, const double *inv, const double *scale, double *sg_out,
                           double *sgx_out, const nbl_bn_grad_hooks *hooks);

/* nbl_bn_stats_f32_channel for channels [c0, c1) at once (mean and var
 * indexed c - c0). */
void nbl_bn_stats_f32_block(const float *x, int64_t N, int64_t C, int64_t sp, int64_t c0, int64_t c1, double *mean,
                            double *var);

/* nbl_bn_apply_relu_f32 for channels [c0, c1) at once (fa and fb indexed
 * c - c0), range over all of them. */
int nbl_bn_apply_relu_f32_block(float *v, const float *x, const float *r, int64_t N, int64_t C, int64_t sp,
                                int64_t c0, int64_t c1, const float *fa, const float *fb, float range[2]);

/* BatchNormInternal's training statistics of channel ch of float32 x laid
 * out [N, C, sp]: the mean and the biased variance, from one pass of
 * nbl_bn_acc_stats about the channel's first element. */
void nbl_bn_stats_f32_channel(const float *x, int64_t N, int64_t C, int64_t sp, int64_t ch, double *mean,
                              double *var);

/* The channel's normalization as the fast kernel applies it: Y = x * fa + fb
 * in float (a product, then a sum) with fa = scale / sqrt(var + eps) and
 * fb = bias - mean * fa rounded from double. Returns 1 / sqrt(var + eps)
 * (the saved inverse standard deviation). */
double nbl_bn_affine_f32(double mean, double var, double eps, double scale, double bias, float *fa, float *fb);

/* The forward chain's sweep of channel ch of float32 tensors laid out
 * [N, C, sp] (runtime/fusions/fuse_bn_act.c): v = relu(x * fa + fb + r)
 * (no r when r is NULL) with the float operations of BatchNormInternal's
 * own apply (a product, then a sum), the Add (a float sum) and Relu
 * (t < 0 ? 0 : t), and range[0], range[1] = the minimum and maximum of the
 * values written. Returns 1 if one of them is NaN or Inf (range then
 * undefined), else 0. */
int nbl_bn_apply_relu_f32(float *v, const float *x, const float *r, int64_t N, int64_t C, int64_t sp, int64_t ch,
                          float fa, float fb, float range[2]);

#endif
