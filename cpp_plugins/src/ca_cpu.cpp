// The CPU reference of the fused channel attention: the same arithmetic as the CUDA kernels,
// written plainly, in double precision, for tests and for machines without a GPU.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "tldeploy_ca.h"

extern "C" int tldeploy_ca_version(void) { return TLDEPLOY_CA_VERSION; }

extern "C" const char* tldeploy_ca_error_string(int code) {
    if (code == 0) return "success";
    if (code == TLDEPLOY_CA_ERROR_INVALID_ARGUMENT) return "invalid argument (a null pointer, a size below 1 or an unknown dtype)";
    return "CUDA error (see cudaGetErrorString)";
}

extern "C" int tldeploy_ca_cpu_forward(const float* x, const float* w1, const float* b1, const float* w2, const float* b2, float* y,
                                       int64_t n, int64_t c, int64_t hw, int64_t hidden) {
    if (!x || !w1 || !b1 || !w2 || !b2 || !y || n < 1 || c < 1 || hw < 1 || hidden < 1) return TLDEPLOY_CA_ERROR_INVALID_ARGUMENT;
    std::vector<double> avg(c), mx(c), h(hidden);
    for (int64_t img = 0; img < n; ++img) {
        const float* xi = x + img * c * hw;
        for (int64_t ch = 0; ch < c; ++ch) {
            double s = 0.0, m = -std::numeric_limits<double>::infinity();
            for (int64_t i = 0; i < hw; ++i) {
                s += xi[ch * hw + i];
                m = std::max(m, static_cast<double>(xi[ch * hw + i]));
            }
            avg[ch] = s / static_cast<double>(hw);
            mx[ch] = m;
        }
        // MLP(avg) + MLP(max) = W2 (relu(W1 avg + b1) + relu(W1 max + b1)) + 2 b2
        for (int64_t j = 0; j < hidden; ++j) {
            double sa = b1[j], sm = b1[j];
            for (int64_t ch = 0; ch < c; ++ch) {
                sa += static_cast<double>(w1[j * c + ch]) * avg[ch];
                sm += static_cast<double>(w1[j * c + ch]) * mx[ch];
            }
            h[j] = std::max(sa, 0.0) + std::max(sm, 0.0);
        }
        float* yi = y + img * c * hw;
        for (int64_t ch = 0; ch < c; ++ch) {
            double z = 2.0 * b2[ch];
            for (int64_t j = 0; j < hidden; ++j) z += static_cast<double>(w2[ch * hidden + j]) * h[j];
            const double att = 1.0 / (1.0 + std::exp(-z));
            for (int64_t i = 0; i < hw; ++i) yi[ch * hw + i] = static_cast<float>(xi[ch * hw + i] * att);
        }
    }
    return 0;
}
