// Fused softmax + cross-entropy: the mean loss and its gradient in one pass.
//
// NVRTC-friendly (no #include; CUDA math builtins overloaded for float and
// double). One thread owns one row: it finds the row maximum, the log of the
// shifted exponentials' sum, writes the row of the gradient and the row's loss
// into row_loss[r]. The host sums row_loss in a fixed order: an atomicAdd into
// one loss would add the rows in whatever order the threads finish, and the
// reported loss (kept in the training History) would change from run to run.
// No shared memory or __syncthreads, so the CPU shim in tests/cuda_shim/ runs
// the same code serially.

// Row statistics for a stable softmax: the maximum m and s = sum_c exp(x_c - m).
// Then p_c = exp(x_c - m) / s and log p_c = (x_c - m) - log(s). Everything is
// computed on the shifted values x_c - m: folding m into one absolute shift
// m + log(s) and subtracting it from x_c would cancel away the low bits of
// log(s) when the logits are large (logits [32, 32] in float32 gave a gradient
// row summing to 1.4e-6 instead of 0). As fusednn/kernels/cpu/losses.py does.
template <typename T>
__device__ __forceinline__ void softmax_stats(const T* x, long long cols, T& m, T& s) {
    m = x[0];
    for (long long c = 1; c < cols; ++c) {
        m = x[c] > m ? x[c] : m;
    }
    s = T(0);
    for (long long c = 0; c < cols; ++c) {
        s += exp(x[c] - m);
    }
}

// Integer class labels (rows,), each in [0, cols). A label outside that range
// makes the loss NaN (a kernel cannot raise; the host must not synchronise to check).
// row_loss[i] = -log p[i, t_i] (the host takes the mean), grad = (p - onehot(t)) * inv_n.
template <typename T>
__global__ void softmax_xent_labels(const T* logits, const long long* labels, T* grad, T* row_loss, long long rows,
                                    long long cols, T inv_n) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += stride) {
        const T* x = logits + r * cols;
        T* g = grad + r * cols;
        T m, s;
        softmax_stats(x, cols, m, s);
        const long long t = labels[r];
        for (long long c = 0; c < cols; ++c) {
            g[c] = (exp(x[c] - m) / s - (c == t ? T(1) : T(0))) * inv_n;
        }
        row_loss[r] = t >= 0 && t < cols ? log(s) - (x[t] - m) : T(nan(""));
    }
}

// Class probabilities (rows, cols). With w_i = sum_c t_ic:
// row_loss[i] = -sum_c t_ic log p_ic (the host takes the mean), grad = (p * w_i - t) * inv_n.
template <typename T>
__global__ void softmax_xent_probs(const T* logits, const T* target, T* grad, T* row_loss, long long rows,
                                   long long cols, T inv_n) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += stride) {
        const T* x = logits + r * cols;
        const T* t = target + r * cols;
        T* g = grad + r * cols;
        T m, s;
        softmax_stats(x, cols, m, s);
        const T log_s = log(s);
        T weight = T(0);
        T loss = T(0);
        for (long long c = 0; c < cols; ++c) {
            weight += t[c];
            loss += t[c] * (log_s - (x[c] - m));
        }
        for (long long c = 0; c < cols; ++c) {
            g[c] = (exp(x[c] - m) / s * weight - t[c]) * inv_n;
        }
        row_loss[r] = loss;
    }
}
