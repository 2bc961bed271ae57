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

// param[i] = p - lr * d for direction g, through SGD's momentum when use_momentum (SGD's and LARS's).
// one_minus_dampening = 1 - dampening; first_step makes the momentum buffer start as g (no
// dampening), as torch does.
template <typename T>
__device__ __forceinline__ void descend(long long i, T* param, T p, T g, T* momentum_buffer, T lr, T momentum,
                                        T one_minus_dampening, int use_momentum, int nesterov, int first_step) {
    if (use_momentum) {
        const T buf = first_step ? g : momentum * momentum_buffer[i] + one_minus_dampening * g;
        momentum_buffer[i] = buf;
        g = nesterov ? g + momentum * buf : buf;
    }
    param[i] = p - lr * g;
}

// torch.optim.SGD.
template <typename T>
__device__ __forceinline__ void sgd_element(long long i, T* param, const T* grad, T* momentum_buffer, T lr, T momentum,
                                            T one_minus_dampening, T weight_decay, int use_momentum, int nesterov,
                                            int first_step) {
    const T p = param[i];
    descend(i, param, p, grad[i] + weight_decay * p, momentum_buffer, lr, momentum, one_minus_dampening, use_momentum,
            nesterov, first_step);
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

// torch.optim.AdamW: the parameter shrinks by decay = 1 - lr * weight_decay, then takes Adam's step
// without L2 in the gradient.
template <typename T>
__global__ void adamw_step(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, T* max_exp_avg_sq, long long n,
                           T step_size, T bias_correction2_sqrt, T one_minus_beta1, T beta2, T one_minus_beta2, T eps,
                           T decay, int amsgrad) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        param[i] *= decay;
        adam_element(i, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step_size, bias_correction2_sqrt,
                     one_minus_beta1, beta2, one_minus_beta2, eps, T(0), amsgrad);
    }
}

// The per-tensor rules (LAMB, LARS) in two launches, because a tensor's trust ratio needs norms over
// the whole tensor before any of its elements moves. Work item j of `items` (int64 rows
// [start, stop, first, lanes]) is lane j - first of its tensor's `lanes` lanes: it visits elements
// start + (j - first) + k * lanes below stop, so a warp's lanes read neighbouring elements. The
// first launch (<rule>_norms) writes each item's two float64 partial sums of squares into
// partials[2j], partials[2j + 1]; the second (<rule>_step) sums its tensor's partials, in the same
// order in every item, and applies the update. No shared memory, atomics or __syncthreads: results
// do not depend on the launch configuration, and the CPU shim runs the same code.

struct Lane {
    long long begin, stop, step, first, count;
};

__device__ __forceinline__ Lane lane_of(const long long* items, long long j) {
    const long long* row = items + 4 * j;
    return Lane{row[0] + (j - row[2]), row[1], row[3], row[2], row[3]};
}

__device__ __forceinline__ void segment_sums(const double* partials, const Lane& lane, double& a, double& b) {
    a = 0.0;
    b = 0.0;
    for (long long k = lane.first; k < lane.first + lane.count; ++k) {
        a += partials[2 * k];
        b += partials[2 * k + 1];
    }
}

// LAMB (You et al. 2019), as timm.optim.Lamb with grad_averaging, always_adapt and no gradient clipping.
template <typename T>
__device__ __forceinline__ T lamb_direction(T p, T m, T v, T bias_correction1, T bias_correction2_sqrt, T eps,
                                            T weight_decay) {
    return (m / bias_correction1) / (sqrt(v) / bias_correction2_sqrt + eps) + weight_decay * p;
}

template <typename T>
__global__ void lamb_norms(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, const long long* items,
                           double* partials, long long n_items, T lr, T bias_correction1, T bias_correction2_sqrt,
                           T one_minus_beta1, T beta2, T one_minus_beta2, T eps, T weight_decay) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < n_items; j += stride) {
        const Lane lane = lane_of(items, j);
        double p_sq = 0.0, u_sq = 0.0;
        for (long long i = lane.begin; i < lane.stop; i += lane.step) {
            const T g = grad[i];
            const T m = exp_avg[i] + one_minus_beta1 * (g - exp_avg[i]);
            const T v = beta2 * exp_avg_sq[i] + one_minus_beta2 * g * g;
            exp_avg[i] = m;
            exp_avg_sq[i] = v;
            const T p = param[i];
            const T u = lamb_direction(p, m, v, bias_correction1, bias_correction2_sqrt, eps, weight_decay);
            p_sq += (double)(p * p);
            u_sq += (double)(u * u);
        }
        partials[2 * j] = p_sq;
        partials[2 * j + 1] = u_sq;
    }
}

template <typename T>
__global__ void lamb_step(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, const long long* items,
                          double* partials, long long n_items, T lr, T bias_correction1, T bias_correction2_sqrt,
                          T one_minus_beta1, T beta2, T one_minus_beta2, T eps, T weight_decay) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < n_items; j += stride) {
        const Lane lane = lane_of(items, j);
        double p_sq, u_sq;
        segment_sums(partials, lane, p_sq, u_sq);
        const T rate = (p_sq > 0.0 && u_sq > 0.0) ? lr * (T)(sqrt(p_sq) / sqrt(u_sq)) : lr;
        for (long long i = lane.begin; i < lane.stop; i += lane.step) {
            const T p = param[i];
            param[i] = p - rate * lamb_direction(p, exp_avg[i], exp_avg_sq[i], bias_correction1,
                                                 bias_correction2_sqrt, eps, weight_decay);
        }
    }
}

// LARS (You et al. 2017), as timm.optim.Lars with always_adapt: SGD on ratio * (g + weight_decay * p).
template <typename T>
__global__ void lars_norms(T* param, const T* grad, T* momentum_buffer, const long long* items, double* partials,
                           long long n_items, T lr, T momentum, T one_minus_dampening, T weight_decay,
                           T trust_coefficient, T eps, int use_momentum, int nesterov, int first_step) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < n_items; j += stride) {
        const Lane lane = lane_of(items, j);
        double p_sq = 0.0, g_sq = 0.0;
        for (long long i = lane.begin; i < lane.stop; i += lane.step) {
            p_sq += (double)(param[i] * param[i]);
            g_sq += (double)(grad[i] * grad[i]);
        }
        partials[2 * j] = p_sq;
        partials[2 * j + 1] = g_sq;
    }
}

template <typename T>
__global__ void lars_step(T* param, const T* grad, T* momentum_buffer, const long long* items, double* partials,
                          long long n_items, T lr, T momentum, T one_minus_dampening, T weight_decay,
                          T trust_coefficient, T eps, int use_momentum, int nesterov, int first_step) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < n_items; j += stride) {
        const Lane lane = lane_of(items, j);
        double p_sq, g_sq;
        segment_sums(partials, lane, p_sq, g_sq);
        T ratio = T(1);
        if (p_sq > 0.0 && g_sq > 0.0) {
            const double p_norm = sqrt(p_sq), g_norm = sqrt(g_sq);
            ratio = (T)((double)trust_coefficient * p_norm /
                        (g_norm + (double)weight_decay * p_norm + (double)eps));
        }
        for (long long i = lane.begin; i < lane.stop; i += lane.step) {
            const T p = param[i];
            descend(i, param, p, (grad[i] + weight_decay * p) * ratio, momentum_buffer, lr, momentum,
                    one_minus_dampening, use_momentum, nesterov, first_step);
        }
    }
}
