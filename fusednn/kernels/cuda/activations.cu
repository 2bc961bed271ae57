// Activation functions and the fused dense-layer kernels built on them.
//
// NVRTC-friendly on purpose: no #include, math through the CUDA builtins that
// are overloaded for float and double. The activation codes and constants are
// not written here: the build passes them as -D defines generated from
// fusednn/kernels/activation_codes.py, the one source of truth.
//
// Every kernel is a grid-stride loop without shared memory or __syncthreads,
// so any launch configuration covers any size and the per-thread logic also
// runs serially under the CPU shim in tests/cuda_shim/.
//
// Unknown codes: the launcher (fusednn/kernels/cuda/launch.py, prepare_args) refuses
// an activation code outside the table before a launch, on the host, where the code
// is a plain int: no flag to read back, no synchronisation. So the switches below
// never see one; should anything launch them another way, they trap (the launch
// fails) rather than compute the identity.

#if !defined(FUSEDNN_ACT_SOFTPLUS) || !defined(FUSEDNN_SELU_SCALE)
#error "compile with the -D defines of fusednn.kernels.cuda.sources.COMPILE_OPTIONS"
#endif

template <typename T>
__device__ __forceinline__ T sigmoid_stable(T z) {
    // exp of a non-positive number only, so nothing overflows for large |z|.
    const T e = exp(-fabs(z));
    return z >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}

template <typename T>
__device__ __forceinline__ T activation_value(int act, T z) {
    switch (act) {
        case FUSEDNN_ACT_SIGMOID: return sigmoid_stable(z);
        case FUSEDNN_ACT_TANH: return tanh(z);
        case FUSEDNN_ACT_RELU: return z < T(0) ? T(0) : z;  // keeps NaN, like maximum(z, 0)
        case FUSEDNN_ACT_LEAKY_RELU: return z > T(0) ? z : z * T(FUSEDNN_LEAKY_RELU_SLOPE);
        case FUSEDNN_ACT_ELU: return z > T(0) ? z : T(FUSEDNN_ELU_ALPHA) * expm1(z);
        case FUSEDNN_ACT_SELU:
            return T(FUSEDNN_SELU_SCALE) * (z > T(0) ? z : T(FUSEDNN_SELU_ALPHA) * expm1(z));
        case FUSEDNN_ACT_GELU: return T(0.5) * z * (T(1) + erf(z * T(FUSEDNN_SQRT_HALF)));
        case FUSEDNN_ACT_SILU: return z * sigmoid_stable(z);
        case FUSEDNN_ACT_SOFTPLUS: return z > T(FUSEDNN_SOFTPLUS_THRESHOLD) ? z : log1p(exp(z));
        case FUSEDNN_ACT_IDENTITY: return z;
        default: __trap(); return z;  // see "Unknown codes" above
    }
}

// act'(z), from whichever of z and h = act(z) gives it most cheaply.
template <typename T>
__device__ __forceinline__ T activation_derivative(int act, T z, T h) {
    switch (act) {
        case FUSEDNN_ACT_SIGMOID: return h * (T(1) - h);
        case FUSEDNN_ACT_TANH: return T(1) - h * h;
        case FUSEDNN_ACT_RELU: return z > T(0) ? T(1) : T(0);
        case FUSEDNN_ACT_LEAKY_RELU: return z > T(0) ? T(1) : T(FUSEDNN_LEAKY_RELU_SLOPE);
        case FUSEDNN_ACT_ELU: return z > T(0) ? T(1) : T(FUSEDNN_ELU_ALPHA) * exp(z);
        case FUSEDNN_ACT_SELU:
            return T(FUSEDNN_SELU_SCALE) * (z > T(0) ? T(1) : T(FUSEDNN_SELU_ALPHA) * exp(z));
        case FUSEDNN_ACT_GELU:
            return T(0.5) * (T(1) + erf(z * T(FUSEDNN_SQRT_HALF)))
                   + z * exp(T(-0.5) * z * z) * T(FUSEDNN_INV_SQRT_2PI);
        case FUSEDNN_ACT_SILU: {
            const T s = sigmoid_stable(z);
            return s * (T(1) + z * (T(1) - s));
        }
        case FUSEDNN_ACT_SOFTPLUS: return z > T(FUSEDNN_SOFTPLUS_THRESHOLD) ? T(1) : sigmoid_stable(z);
        case FUSEDNN_ACT_IDENTITY: return T(1);
        default: __trap(); return T(1);  // see "Unknown codes" above
    }
}

// h[i] = act(z[i]) for n elements.
template <typename T>
__global__ void activation_forward(const T* z, T* h, long long n, int act) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        h[i] = activation_value(act, z[i]);
    }
}

// dz[i] = dh[i] * act'(z[i]) for n elements.
template <typename T>
__global__ void activation_backward(const T* z, const T* h, const T* dh, T* dz, long long n, int act) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        dz[i] = dh[i] * activation_derivative(act, z[i], h[i]);
    }
}

// Dense forward epilogue over the GEMM output z (rows x cols, row-major), one
// pass: z += b (in place) and y = act(z). y may be z itself (identity).
template <typename T>
__global__ void bias_activation_forward(T* z, const T* b, T* y, long long rows, long long cols, int act) {
    const long long n = rows * cols;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const T v = z[i] + b[i % cols];
        z[i] = v;
        y[i] = activation_value(act, v);
    }
}

// Dense backward, first half: dz = dy * act'(z) and per-chunk column sums of dz.
// One work item per (chunk of rows_per_chunk rows, column); neighbouring
// threads take neighbouring columns so the loads coalesce. Each item writes
// its partial sum to partials[chunk * cols + col] instead of adding it into
// db atomically: atomics would add the chunks in whatever order the threads
// finish, so db (and a resumed training run) would differ in the last bit from
// run to run. bias_grad_sum_chunks then adds the chunks in a fixed order.
// dz may be dy itself (identity).
template <typename T>
__global__ void activation_grad_bias_reduce(const T* z, const T* y, const T* dy, T* dz, T* partials, long long rows,
                                            long long cols, long long rows_per_chunk, int act) {
    const long long chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
    const long long items = chunks * cols;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long item = (long long)blockIdx.x * blockDim.x + threadIdx.x; item < items; item += stride) {
        const long long col = item % cols;
        const long long first = (item / cols) * rows_per_chunk;
        const long long last = first + rows_per_chunk < rows ? first + rows_per_chunk : rows;
        T partial = T(0);
        for (long long r = first; r < last; ++r) {
            const long long i = r * cols + col;
            const T g = dy[i] * activation_derivative(act, z[i], y[i]);
            dz[i] = g;
            partial += g;
        }
        partials[item] = partial;
    }
}

// Dense backward, second half: db[col] = sum over chunks of partials[chunk, col],
// one thread per column adding the chunks in order, so the result is the same
// bits on every run for a given shape.
template <typename T>
__global__ void bias_grad_sum_chunks(const T* partials, T* db, long long chunks, long long cols) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long col = (long long)blockIdx.x * blockDim.x + threadIdx.x; col < cols; col += stride) {
        T total = T(0);
        for (long long c = 0; c < chunks; ++c) {
            total += partials[c * cols + col];
        }
        db[col] = total;
    }
}
