// Fused optimizer steps over one flat parameter buffer: one launch per step.
//
// NVRTC-friendly (no #include; sqrt is the CUDA builtin overloaded for float
// and double). Each rule is torch.optim's single-tensor update, written out in
// fusednn/backends/base.py, as a __device__ function of one element; each has
// two entry points. The plain one (sgd_step, ...) takes the learning rate and
// Adam's bias corrections as scalars, computed on the host in float64. The
// scheduled one (sgd_step_scheduled, ...) reads them from a device vector
// `scalars` (indices FUSEDNN_SCALAR_*, written by update_scalars in
// training_step.cu), so that a captured CUDA graph replays each update with
// that update's values. Buffers a configuration does not use (e.g.
// momentum_buffer with momentum == 0) are never touched, so the launcher may
// pass any array of the right dtype in their place. Flags are ints (0 or 1).

#if !defined(FUSEDNN_SCALAR_RATE)
#error "compile with the -D defines of fusednn.kernels.cuda.sources.COMPILE_OPTIONS"
#endif

// torch.optim.SGD. one_minus_dampening = 1 - dampening; first_step makes the
// momentum buffer start as g (no dampening), as torch does.
template <typename T>
__device__ __forceinline__ void sgd_element(long long i, T* param, const T* grad, T* momentum_buffer, T lr, T momentum,
                                            T one_minus_dampening, T weight_decay, int use_momentum, int nesterov,
                                            int first_step) {
    const T p = param[i];
    T g = grad[i] + weight_decay * p;
    if (use_momentum) {
        const T buf = first_step ? g : momentum * momentum_buffer[i] + one_minus_dampening * g;
        momentum_buffer[i] = buf;
        g = nesterov ? g + momentum * buf : buf;
    }
    param[i] = p - lr * g;
}

template <typename T>
__global__ void sgd_step(T* param, const T* grad, T* momentum_buffer, long long n, T lr, T momentum,
                         T one_minus_dampening, T weight_decay, int use_momentum, int nesterov, int first_step) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        sgd_element(i, param, grad, momentum_buffer, lr, momentum, one_minus_dampening, weight_decay, use_momentum,
                    nesterov, first_step);
    }
}

template <typename T>
__global__ void sgd_step_scheduled(T* param, const T* grad, T* momentum_buffer, long long n, const T* scalars,
                                   T momentum, T one_minus_dampening, T weight_decay, int use_momentum, int nesterov) {
    const T lr = scalars[FUSEDNN_SCALAR_RATE];
    const int first_step = scalars[FUSEDNN_SCALAR_FIRST_STEP] != T(0);
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        sgd_element(i, param, grad, momentum_buffer, lr, momentum, one_minus_dampening, weight_decay, use_momentum,
                    nesterov, first_step);
    }
}

// torch.optim.RMSprop: eps is added outside the square root.
template <typename T>
__device__ __forceinline__ void rmsprop_element(long long i, T* param, const T* grad, T* square_avg, T* grad_avg,
                                                T* momentum_buffer, T lr, T alpha, T one_minus_alpha, T eps,
                                                T weight_decay, T momentum, int centered, int use_momentum) {
    const T p = param[i];
    const T g = grad[i] + weight_decay * p;
    const T sq = alpha * square_avg[i] + one_minus_alpha * g * g;
    square_avg[i] = sq;
    T avg;
    if (centered) {
        const T ga = alpha * grad_avg[i] + one_minus_alpha * g;
        grad_avg[i] = ga;
        avg = sqrt(sq - ga * ga) + eps;
    } else {
        avg = sqrt(sq) + eps;
    }
    if (use_momentum) {
        const T buf = momentum * momentum_buffer[i] + g / avg;
        momentum_buffer[i] = buf;
        param[i] = p - lr * buf;
    } else {
        param[i] = p - lr * (g / avg);
    }
}

template <typename T>
__global__ void rmsprop_step(T* param, const T* grad, T* square_avg, T* grad_avg, T* momentum_buffer, long long n,
                             T lr, T alpha, T one_minus_alpha, T eps, T weight_decay, T momentum, int centered,
                             int use_momentum) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        rmsprop_element(i, param, grad, square_avg, grad_avg, momentum_buffer, lr, alpha, one_minus_alpha, eps,
                        weight_decay, momentum, centered, use_momentum);
    }
}

template <typename T>
__global__ void rmsprop_step_scheduled(T* param, const T* grad, T* square_avg, T* grad_avg, T* momentum_buffer,
                                       long long n, const T* scalars, T alpha, T one_minus_alpha, T eps,
                                       T weight_decay, T momentum, int centered, int use_momentum) {
    const T lr = scalars[FUSEDNN_SCALAR_RATE];
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        rmsprop_element(i, param, grad, square_avg, grad_avg, momentum_buffer, lr, alpha, one_minus_alpha, eps,
                        weight_decay, momentum, centered, use_momentum);
    }
}

// torch.optim.Adam. step_size = lr / (1 - beta1^step) and
// bias_correction2_sqrt = sqrt(1 - beta2^step).
template <typename T>
__device__ __forceinline__ void adam_element(long long i, T* param, const T* grad, T* exp_avg, T* exp_avg_sq,
                                             T* max_exp_avg_sq, T step_size, T bias_correction2_sqrt,
                                             T one_minus_beta1, T beta2, T one_minus_beta2, T eps, T weight_decay,
                                             int amsgrad) {
    const T p = param[i];
    const T g = grad[i] + weight_decay * p;
    const T m = exp_avg[i] + one_minus_beta1 * (g - exp_avg[i]);
    const T v = beta2 * exp_avg_sq[i] + one_minus_beta2 * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    T v_hat = v;
    if (amsgrad) {
        v_hat = max_exp_avg_sq[i] > v ? max_exp_avg_sq[i] : v;
        max_exp_avg_sq[i] = v_hat;
    }
    param[i] = p - step_size * (m / (sqrt(v_hat) / bias_correction2_sqrt + eps));
}

template <typename T>
__global__ void adam_step(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, T* max_exp_avg_sq, long long n,
                          T step_size, T bias_correction2_sqrt, T one_minus_beta1, T beta2, T one_minus_beta2, T eps,
                          T weight_decay, int amsgrad) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        adam_element(i, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step_size, bias_correction2_sqrt,
                     one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, amsgrad);
    }
}

template <typename T>
__global__ void adam_step_scheduled(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, T* max_exp_avg_sq,
                                    long long n, const T* scalars, T one_minus_beta1, T beta2, T one_minus_beta2,
                                    T eps, T weight_decay, int amsgrad) {
    const T step_size = scalars[FUSEDNN_SCALAR_RATE];
    const T bias_correction2_sqrt = scalars[FUSEDNN_SCALAR_BIAS_CORRECTION2_SQRT];
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        adam_element(i, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step_size, bias_correction2_sqrt,
                     one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, amsgrad);
    }
}
