// Kernels of the layers beyond Dense: dropout from Philox 4x32-10, and batch normalisation.
//
// The same functions as fusednn/kernels/cpu/layers.py and the NumPy reference
// (fusednn/backends/philox.py, fusednn/backends/base.py): dropout's masks agree
// bit for bit on every device. The Philox constants arrive as -D defines from
// fusednn/kernels/philox_constants.py. No shared memory or __syncthreads, so the
// CPU shim in tests/cuda_shim/ runs the same code serially.

#if !defined(FUSEDNN_PHILOX_M0) || !defined(FUSEDNN_PHILOX_ROUNDS)
#error "compile with the -D defines of fusednn.kernels.cuda.sources.COMPILE_OPTIONS"
#endif

// Philox 4x32-10 of counter c under key (k0, k1), in place; 64-bit products give the high words.
__device__ __forceinline__ void philox4x32_10(unsigned int c[4], unsigned int k0, unsigned int k1) {
    for (int round = 0; round < FUSEDNN_PHILOX_ROUNDS; ++round) {
        const unsigned long long p0 = static_cast<unsigned long long>(FUSEDNN_PHILOX_M0) * c[0];
        const unsigned long long p1 = static_cast<unsigned long long>(FUSEDNN_PHILOX_M1) * c[2];
        const unsigned int next0 = static_cast<unsigned int>(p1 >> 32) ^ c[1] ^ k0;
        const unsigned int next2 = static_cast<unsigned int>(p0 >> 32) ^ c[3] ^ k1;
        c[1] = static_cast<unsigned int>(p1);
        c[3] = static_cast<unsigned int>(p0);
        c[0] = next0;
        c[2] = next2;
        k0 += FUSEDNN_PHILOX_W0;
        k1 += FUSEDNN_PHILOX_W1;
    }
}

// Known-answer entry point: out[0..3] = Philox 4x32-10 of words[0..3] under key words[4..5].
template <typename T>
__global__ void philox_block(const long long* words, long long* out) {
    if (blockIdx.x * blockDim.x + threadIdx.x != 0) return;
    unsigned int c[4];
    for (int k = 0; k < 4; ++k) c[k] = static_cast<unsigned int>(words[k]);
    philox4x32_10(c, static_cast<unsigned int>(words[4]), static_cast<unsigned int>(words[5]));
    for (int k = 0; k < 4; ++k) out[k] = static_cast<long long>(c[k]);
}

// y[i] = x[i] * scale where element first + i's word is >= threshold, else 0. Element e of the
// batch takes word e % 4 of the block of counter (e / 4, layer, step_lo, step_hi) under key
// (seed_lo, seed_hi); x holds elements first .. first + n - 1, so its first and last blocks may
// be partial. One thread per block of four elements; the caller keeps first + n within 2^34.
template <typename T>
__global__ void dropout_apply(const T* x, T* y, long long n, long long threshold, T scale, long long seed_lo,
                              long long seed_hi, long long step_lo, long long step_hi, long long layer,
                              long long first) {
    const long long begin = first / 4;
    const long long groups = (first + n + 3) / 4 - begin;
    const unsigned long long bound = static_cast<unsigned long long>(threshold);
    for (long long t = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; t < groups;
         t += static_cast<long long>(gridDim.x) * blockDim.x) {
        const long long g = begin + t;
        unsigned int c[4] = {static_cast<unsigned int>(g), static_cast<unsigned int>(layer),
                             static_cast<unsigned int>(step_lo), static_cast<unsigned int>(step_hi)};
        philox4x32_10(c, static_cast<unsigned int>(seed_lo), static_cast<unsigned int>(seed_hi));
        const long long base = 4 * g - first;  // the index in x of the block's word 0
        for (int k = base < 0 ? static_cast<int>(-base) : 0; k < 4 && base + k < n; ++k) {
            y[base + k] = c[k] >= bound ? x[base + k] * scale : T(0);
        }
    }
}

// One thread per feature column j of x (rows, cols): batch statistics in training (one pass of
// sums shifted by the first row, in double; running statistics updated with the unbiased
// variance, as torch.nn.BatchNorm1d), the running ones in evaluation, then y in a second pass.
template <typename T>
__global__ void batchnorm_forward(const T* x, const T* gamma, const T* beta, T* running_mean, T* running_var, T* y,
                                  T* mean, T* inv_std, long long rows, long long cols, T momentum, T eps,
                                  int training) {
    for (long long j = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; j < cols;
         j += static_cast<long long>(gridDim.x) * blockDim.x) {
        if (training) {
            const double shift = static_cast<double>(x[j]);
            double s1 = 0.0, s2 = 0.0;
            for (long long i = 0; i < rows; ++i) {
                const double d = static_cast<double>(x[i * cols + j]) - shift;
                s1 += d;
                s2 += d * d;
            }
            const double shifted_mean = s1 / rows;
            double var = s2 / rows - shifted_mean * shifted_mean;
            var = var > 0.0 ? var : 0.0;
            const double batch_mean = shift + shifted_mean;
            const double m = static_cast<double>(momentum);
            mean[j] = static_cast<T>(batch_mean);
            inv_std[j] = static_cast<T>(1.0 / sqrt(var + static_cast<double>(eps)));
            running_mean[j] = static_cast<T>((1.0 - m) * static_cast<double>(running_mean[j]) + m * batch_mean);
            running_var[j] = static_cast<T>((1.0 - m) * static_cast<double>(running_var[j])
                                            + m * (var * static_cast<double>(rows) / static_cast<double>(rows - 1)));
        } else {
            mean[j] = running_mean[j];
            inv_std[j] = static_cast<T>(1.0 / sqrt(static_cast<double>(running_var[j]) + static_cast<double>(eps)));
        }
        const T mu = mean[j], s = inv_std[j], g = gamma[j], b = beta[j];
        for (long long i = 0; i < rows; ++i) {
            y[i * cols + j] = (x[i * cols + j] - mu) * s * g + b;
        }
    }
}

// One thread per feature column: dbeta = sum dy and dgamma = sum dy * xhat in one pass (double),
// then dx = gamma * inv_std * (dy - dbeta / N - xhat * dgamma / N) in training, or
// gamma * inv_std * dy in evaluation, in a second pass when need_dx.
template <typename T>
__global__ void batchnorm_backward(const T* x, const T* dy, const T* gamma, const T* mean, const T* inv_std, T* dx,
                                   T* dgamma, T* dbeta, long long rows, long long cols, int training, int need_dx) {
    for (long long j = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; j < cols;
         j += static_cast<long long>(gridDim.x) * blockDim.x) {
        const double mu = static_cast<double>(mean[j]), s = static_cast<double>(inv_std[j]);
        double s_dy = 0.0, s_dyx = 0.0;
        for (long long i = 0; i < rows; ++i) {
            const double g = static_cast<double>(dy[i * cols + j]);
            s_dy += g;
            s_dyx += g * ((static_cast<double>(x[i * cols + j]) - mu) * s);
        }
        dbeta[j] = static_cast<T>(s_dy);
        dgamma[j] = static_cast<T>(s_dyx);
        if (!need_dx) continue;
        const double a = static_cast<double>(gamma[j]) * s;
        for (long long i = 0; i < rows; ++i) {
            double g = static_cast<double>(dy[i * cols + j]);
            if (training) {
                const double xhat = (static_cast<double>(x[i * cols + j]) - mu) * s;
                g = g - s_dy / rows - xhat * s_dyx / rows;
            }
            dx[i * cols + j] = static_cast<T>(a * g);
        }
    }
}
