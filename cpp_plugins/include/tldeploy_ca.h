/* Channel attention (CBAM), fused: the C ABI of the cpp_plugins libraries.
 *
 *   y = x * sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))[:, :, None, None]
 *   MLP(v) = W2 relu(W1 v + b1) + b2         (shared by both branches)
 *
 * x, y: N x C x H x W (NCHW, contiguous); W1: hidden x C; b1: hidden; W2: C x hidden; b2: C
 * (nn.Linear layouts). hw = H * W. All pointers are raw buffers, e.g. PyTorch's data_ptr().
 * Every function returns 0 on success, else an error code (see tldeploy_ca_error_string).
 */
#ifndef TLDEPLOY_CA_H
#define TLDEPLOY_CA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TLDEPLOY_CA_VERSION 1
#define TLDEPLOY_CA_FLOAT32 0
#define TLDEPLOY_CA_FLOAT16 1
#define TLDEPLOY_CA_ERROR_INVALID_ARGUMENT (-1)

int tldeploy_ca_version(void);
const char* tldeploy_ca_error_string(int code);

/* The reference, in plain C++ on the CPU, float32 in and out, double accumulation. */
int tldeploy_ca_cpu_forward(const float* x, const float* w1, const float* b1, const float* w2, const float* b2, float* y,
                            int64_t n, int64_t c, int64_t hw, int64_t hidden);

/* The fused CUDA op (libtldeploy_ca_cuda): dtype TLDEPLOY_CA_FLOAT32 or TLDEPLOY_CA_FLOAT16 for x,
 * the weights and y (accumulation is float32). `workspace` is device memory of
 * tldeploy_ca_cuda_workspace_size(n, c, hidden) bytes; `stream` a cudaStream_t (NULL: default).
 * Asynchronous: returns once the three kernels are enqueued (a launch error is returned). */
size_t tldeploy_ca_cuda_workspace_size(int64_t n, int64_t c, int64_t hidden);
int tldeploy_ca_cuda_forward(int dtype, const void* x, const void* w1, const void* b1, const void* w2, const void* b2,
                             void* y, void* workspace, int64_t n, int64_t c, int64_t hw, int64_t hidden, void* stream);
/* The GPU architectures the kernels were compiled for, e.g. "87;90". */
const char* tldeploy_ca_cuda_architectures(void);

#ifdef __cplusplus
}
#endif

#endif /* TLDEPLOY_CA_H */
