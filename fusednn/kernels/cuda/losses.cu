// Fused softmax + cross-entropy: the mean loss and its gradient in one pass.
//
// NVRTC-friendly (no #include; CUDA math builtins overloaded for float and
// double). One thread owns one row: it finds the row maximum, the log of the
// shifted exponentials' sum, writes the row of the gradient and adds the row's
// share of the mean loss with one atomicAdd into *loss (zeroed beforehand).
// No shared memory or __syncthreads, so the CPU shim in tests/cuda_shim/ runs
// the same code serially.

// Row statistics for a stable log-softmax: log p_c = x_c - shift, with
// shift = max + log(sum_c exp(x_c - max)).
template <typename T>
__device__ __forceinline__ T log_softmax_shift(const T* x, long long cols) {
    T m = x[0];
    for (long long c = 1; c < cols; ++c) {
        m = x[c] > m ? x[c] : m;
    }
    T s = T(0);
    for (long long c = 0; c < cols; ++c) {
        s += exp(x[c] - m);
    }
    return m + log(s);
}

// Integer class labels (rows,), each in [0, cols). A label outside that range
// makes the loss NaN (a kernel cannot raise; the host must not synchronise to check).
// loss = -mean_i log p[i, t_i], grad = (p - onehot(t)) * inv_n.
template <typename T>
__global__ void softmax_xent_labels(const T* logits, const long long* labels, T* grad, T* loss, long long rows,
                                    long long cols, T inv_n) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += stride) {
        const T* x = logits + r * cols;
        T* g = grad + r * cols;
        const T shift = log_softmax_shift(x, cols);
        const long long t = labels[r];
        for (long long c = 0; c < cols; ++c) {
            g[c] = (exp(x[c] - shift) - (c == t ? T(1) : T(0))) * inv_n;
        }
        const T row_loss = t >= 0 && t < cols ? (shift - x[t]) * inv_n : T(nan(""));
        atomicAdd(loss, row_loss);
    }
}

// Class probabilities (rows, cols). With w_i = sum_c t_ic:
// loss = -mean_i sum_c t_ic log p_ic, grad = (p * w_i - t) * inv_n.
template <typename T>
__global__ void softmax_xent_probs(const T* logits, const T* target, T* grad, T* loss, long long rows, long long cols,
                                   T inv_n) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += stride) {
        const T* x = logits + r * cols;
        const T* t = target + r * cols;
        T* g = grad + r * cols;
        const T shift = log_softmax_shift(x, cols);
        T weight = T(0);
        T row_loss = T(0);
        for (long long c = 0; c < cols; ++c) {
            weight += t[c];
            row_loss += t[c] * (shift - x[c]);
        }
        for (long long c = 0; c < cols; ++c) {
            g[c] = (exp(x[c] - shift) * weight - t[c]) * inv_n;
        }
        atomicAdd(loss, row_loss * inv_n);
    }
}
