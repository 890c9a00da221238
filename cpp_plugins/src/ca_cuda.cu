// The fused channel attention on CUDA: three kernels instead of PyTorch's ten or so.
//
//   pool_kernel    one warp per (image, channel): mean and max over H x W      reads x once
//   hidden_kernel  one warp per (image, hidden unit): relu(W1 v + b1) for both pooled vectors
//   scale_kernel   one block per (image, 16 channels): sigmoid(W2 h + 2 b2) for its channels,
//                  then y = x * attention                                      reads x again, writes y
//
// x is read twice and y written once; the pooled vectors and hidden activations (a few KB per
// image) go through `workspace`. Accumulation is float32 for float16 inputs too. No framework
// headers: the TensorRT plugin and the ctypes tests call the same launcher.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "tldeploy_ca.h"

#ifndef TLDEPLOY_CA_ARCHS
#define TLDEPLOY_CA_ARCHS "unknown"
#endif

namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;
constexpr int kChannelsPerBlock = 16;

__device__ __forceinline__ float load(const float* p, int64_t i) { return __ldg(p + i); }
__device__ __forceinline__ float load(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__half* p, int64_t i, float v) { p[i] = __float2half(v); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = kWarp / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

template <typename T>
__global__ void pool_kernel(const T* __restrict__ x, float* __restrict__ avg, float* __restrict__ mx, int64_t nc, int64_t hw) {
    const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
    const int lane = threadIdx.x % kWarp;
    if (row >= nc) return;
    const T* p = x + row * hw;
    float s = 0.f, m = -INFINITY;
    for (int64_t i = lane; i < hw; i += kWarp) {
        const float v = load(p, i);
        s += v;
        m = fmaxf(m, v);
    }
    s = warp_sum(s);
    m = warp_max(m);
    if (lane == 0) {
        avg[row] = s / static_cast<float>(hw);
        mx[row] = m;
    }
}

// h[img, j] = relu(W1[j] . avg[img] + b1[j]) + relu(W1[j] . max[img] + b1[j])
template <typename T>
__global__ void hidden_kernel(const float* __restrict__ avg, const float* __restrict__ mx, const T* __restrict__ w1,
                              const T* __restrict__ b1, float* __restrict__ h, int64_t n, int64_t c, int64_t hidden) {
    const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
    const int lane = threadIdx.x % kWarp;
    if (row >= n * hidden) return;
    const int64_t img = row / hidden, j = row % hidden;
    const T* w = w1 + j * c;
    const float* a = avg + img * c;
    const float* m = mx + img * c;
    float sa = 0.f, sm = 0.f;
    for (int64_t i = lane; i < c; i += kWarp) {
        const float wv = load(w, i);
        sa += wv * a[i];
        sm += wv * m[i];
    }
    sa = warp_sum(sa);
    sm = warp_sum(sm);
    if (lane == 0) {
        const float bias = load(b1, j);
        h[row] = fmaxf(sa + bias, 0.f) + fmaxf(sm + bias, 0.f);
    }
}

// Block (blockIdx.x, image blockIdx.y) owns channels [c0, c0 + kChannelsPerBlock).
template <typename T>
__global__ void scale_kernel(const T* __restrict__ x, const float* __restrict__ h, const T* __restrict__ w2,
                             const T* __restrict__ b2, T* __restrict__ y, int64_t c, int64_t hw, int64_t hidden) {
    __shared__ float att[kChannelsPerBlock];
    const int64_t img = blockIdx.y;
    const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kChannelsPerBlock;
    const int64_t nch = min(static_cast<int64_t>(kChannelsPerBlock), c - c0);
    const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
    const float* hi = h + img * hidden;
    for (int64_t k = warp; k < nch; k += kThreads / kWarp) {
        const T* w = w2 + (c0 + k) * hidden;
        float z = 0.f;
        for (int64_t j = lane; j < hidden; j += kWarp) z += load(w, j) * hi[j];
        z = warp_sum(z);
        if (lane == 0) att[k] = 1.f / (1.f + __expf(-(z + 2.f * load(b2, c0 + k))));
    }
    __syncthreads();
    const int64_t base = (img * c + c0) * hw;
    const int64_t count = nch * hw;
    for (int64_t i = threadIdx.x; i < count; i += kThreads) store(y, base + i, load(x, base + i) * att[i / hw]);
}

template <typename T>
int launch(const void* x, const void* w1, const void* b1, const void* w2, const void* b2, void* y, void* workspace,
           int64_t n, int64_t c, int64_t hw, int64_t hidden, cudaStream_t stream) {
    float* avg = static_cast<float*>(workspace);
    float* mx = avg + n * c;
    float* h = mx + n * c;
    const int warps_per_block = kThreads / kWarp;
    pool_kernel<T><<<static_cast<unsigned>((n * c + warps_per_block - 1) / warps_per_block), kThreads, 0, stream>>>(
        static_cast<const T*>(x), avg, mx, n * c, hw);
    hidden_kernel<T><<<static_cast<unsigned>((n * hidden + warps_per_block - 1) / warps_per_block), kThreads, 0, stream>>>(
        avg, mx, static_cast<const T*>(w1), static_cast<const T*>(b1), h, n, c, hidden);
    const dim3 grid(static_cast<unsigned>((c + kChannelsPerBlock - 1) / kChannelsPerBlock), static_cast<unsigned>(n));
    scale_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(x), h, static_cast<const T*>(w2),
                                                   static_cast<const T*>(b2), static_cast<T*>(y), c, hw, hidden);
    return static_cast<int>(cudaGetLastError());
}

}  // namespace

extern "C" size_t tldeploy_ca_cuda_workspace_size(int64_t n, int64_t c, int64_t hidden) {
    return static_cast<size_t>(2 * n * c + n * hidden) * sizeof(float);
}

extern "C" int tldeploy_ca_cuda_forward(int dtype, const void* x, const void* w1, const void* b1, const void* w2, const void* b2,
                                        void* y, void* workspace, int64_t n, int64_t c, int64_t hw, int64_t hidden, void* stream) {
    if (!x || !w1 || !b1 || !w2 || !b2 || !y || !workspace || n < 1 || c < 1 || hw < 1 || hidden < 1 || n > 65535)
        return TLDEPLOY_CA_ERROR_INVALID_ARGUMENT;
    const auto s = static_cast<cudaStream_t>(stream);
    if (dtype == TLDEPLOY_CA_FLOAT32) return launch<float>(x, w1, b1, w2, b2, y, workspace, n, c, hw, hidden, s);
    if (dtype == TLDEPLOY_CA_FLOAT16) return launch<__half>(x, w1, b1, w2, b2, y, workspace, n, c, hw, hidden, s);
    return TLDEPLOY_CA_ERROR_INVALID_ARGUMENT;
}

extern "C" const char* tldeploy_ca_cuda_architectures(void) { return TLDEPLOY_CA_ARCHS; }
