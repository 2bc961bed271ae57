// The kernels a training step needs to be captured into a CUDA graph and replayed.
//
// A graph replays the arguments it captured, so nothing here takes a value that
// changes between steps: which batch a step trains on, which optimizer update of
// the epoch it is and the optimizer's step count are read from a device int64
// vector `counters` (indices FUSEDNN_COUNTER_*), the learning rate of each update
// from a device vector uploaded once per epoch. Sizes, codes and constants that
// are the same on every replay of one graph are plain arguments.
//
// NVRTC-friendly (no #include); grid-stride loops without shared memory or
// __syncthreads, so the CPU shim in tests/cuda_shim/ runs the same code serially.
// Reductions are two fixed-order passes (chunk sums, then one thread adding the
// chunks), never atomics, so a step's loss is the same bits on every run.

#if !defined(FUSEDNN_COUNTER_BATCH) || !defined(FUSEDNN_LOSS_BINARY_CROSSENTROPY)
#error "compile with the -D defines of fusednn.kernels.cuda.sources.COMPILE_OPTIONS"
#endif

// c (m x n) = op(a) @ op(b), row-major, where op(a) is m x k and op(b) is k x n;
// op transposes when its flag is set (a stored k x m, b stored n x k). One thread
// per output element, neighbouring threads on neighbouring columns so that the
// loads of an untransposed b coalesce. Meant for the tiny products of a captured
// step, where a cuBLAS call buys nothing (larger ones go to cuBLAS, called directly).
template <typename T>
__global__ void gemm(const T* a, const T* b, T* c, long long m, long long n, long long k, int trans_a, int trans_b) {
    const long long items = m * n;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long item = (long long)blockIdx.x * blockDim.x + threadIdx.x; item < items; item += stride) {
        const long long i = item / n;
        const long long j = item % n;
        T sum = T(0);
        for (long long p = 0; p < k; ++p) {
            const T x = trans_a ? a[p * m + i] : a[i * k + p];
            const T y = trans_b ? b[j * k + p] : b[p * n + j];
            sum += x * y;
        }
        c[item] = sum;
    }
}

// dst (rows x cols) = rows order[start], order[start + 1], ... of src, where
// start = counters[BATCH] * batch: the mini-batch of the current step.
template <typename T>
__global__ void gather_rows(const T* src, const long long* order, const long long* counters, T* dst, long long batch,
                            long long rows, long long cols) {
    const long long start = counters[FUSEDNN_COUNTER_BATCH] * batch;
    const long long items = rows * cols;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < items; i += stride) {
        dst[i] = src[order[start + i / cols] * cols + i % cols];
    }
}

// gather_rows for the int64 class labels of the current step (T is unused).
template <typename T>
__global__ void gather_labels(const long long* src, const long long* order, const long long* counters, long long* dst,
                              long long batch, long long rows) {
    const long long start = counters[FUSEDNN_COUNTER_BATCH] * batch;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < rows; i += stride) {
        dst[i] = src[order[start + i]];
    }
}

// Rows start .. start + rows - 1 of dst (cols wide) = src, start as in gather_rows:
// the step's outputs, stored in the order the epoch visits the rows.
template <typename T>
__global__ void store_rows(const T* src, const long long* counters, T* dst, long long batch, long long rows,
                           long long cols) {
    T* block = dst + counters[FUSEDNN_COUNTER_BATCH] * batch * cols;
    const long long items = rows * cols;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < items; i += stride) {
        block[i] = src[i];
    }
}

template <typename T>
__device__ __forceinline__ T sign_of(T v) {
    return v > T(0) ? T(1) : (v < T(0) ? T(-1) : v - v);  // 0 for zero, NaN for NaN, like np.sign
}

// MSE, MAE or binary cross-entropy on logits (code FUSEDNN_LOSS_*, any other traps), one thread per row:
// row_loss[r] = the row's sum of elementwise losses (the caller scales the total by 1 / size),
// grad = the loss's gradient with grad_scale = 2 / size (MSE) or 1 / size. The formulas of the
// reference backend (mean_squared_error, mean_absolute_error, binary_cross_entropy_with_logits).
template <typename T>
__global__ void elementwise_loss(const T* out, const T* target, T* grad, T* row_loss, long long rows, long long cols,
                                 int loss, T grad_scale) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += stride) {
        T total = T(0);
        for (long long c = r * cols; c < (r + 1) * cols; ++c) {
            const T o = out[c];
            const T t = target[c];
            if (loss == FUSEDNN_LOSS_MSE) {
                const T d = o - t;
                total += d * d;
                grad[c] = d * grad_scale;
            } else if (loss == FUSEDNN_LOSS_MAE) {
                const T d = o - t;
                total += fabs(d);
                grad[c] = sign_of(d) * grad_scale;
            } else if (loss == FUSEDNN_LOSS_BINARY_CROSSENTROPY) {
                // max(o, 0) - o t + log(1 + exp(-|o|)); gradient sigmoid(o) - t.
                const T e = exp(-fabs(o));
                total += (o > T(0) ? o : T(0)) - o * t + log1p(e);
                const T s = o >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
                grad[c] = (s - t) * grad_scale;
            } else {
                __trap();  // the launcher refuses unknown loss codes; never reached through it
            }
        }
        row_loss[r] = total;
    }
}

// partials[c] = values[c] + values[c + chunks] + values[c + 2 chunks] + ...: the first
// pass of a fixed-order sum (strided, so that neighbouring threads read neighbouring values).
template <typename T>
__global__ void chunk_sums(const T* values, T* partials, long long n, long long chunks) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += stride) {
        T sum = T(0);
        for (long long i = c; i < n; i += chunks) {
            sum += values[i];
        }
        partials[c] = sum;
    }
}

// L1/L2 penalty of one weight matrix w (n elements): adds l1 sign(w) + two_l2 w to its
// gradient g and writes the penalty l1 |w| + l2 w^2, summed as chunk_sums does, to partials.
template <typename T>
__global__ void penalty_grad(const T* w, T* g, T* partials, long long n, long long chunks, T l1, T l2, T two_l2) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += stride) {
        T sum = T(0);
        for (long long i = c; i < n; i += chunks) {
            const T v = w[i];
            sum += l1 * fabs(v) + l2 * v * v;
            g[i] += l1 * sign_of(v) + two_l2 * v;
        }
        partials[c] = sum;
    }
}

// The step's loss, by one thread: scale * (sum of loss_partials) + (sum of penalty_partials),
// written to step_losses[counters[BATCH]]. Then it advances counters[BATCH]: it is the last
// kernel of a step that reads which batch the step trains on.
template <typename T>
__global__ void step_loss(const T* loss_partials, long long loss_chunks, T scale, const T* penalty_partials,
                          long long penalty_chunks, long long* counters, T* step_losses) {
    if (blockIdx.x != 0 || threadIdx.x != 0) {
        return;
    }
    T loss = T(0);
    for (long long c = 0; c < loss_chunks; ++c) {
        loss += loss_partials[c];
    }
    loss *= scale;
    if (penalty_chunks > 0) {
        T penalty = T(0);
        for (long long c = 0; c < penalty_chunks; ++c) {
            penalty += penalty_partials[c];
        }
        loss += penalty;
    }
    step_losses[counters[FUSEDNN_COUNTER_BATCH]] = loss;
    counters[FUSEDNN_COUNTER_BATCH] += 1;
}

// Gradient accumulation over micro-batches, each weighted by its share of the group's rows:
// accumulated = share g (first micro-batch of a group) or accumulated + share g; with
// write_back (the group's last micro-batch) g = accumulated, which the optimizer then reads.
template <typename T>
__global__ void accumulate_gradient(T* g, T* accumulated, long long n, T share, int first, int write_back) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const T sum = first ? g[i] * share : accumulated[i] + g[i] * share;
        accumulated[i] = sum;
        if (write_back) {
            g[i] = sum;
        }
    }
}

// The scalars of the next optimizer update (indices FUSEDNN_SCALAR_*), by one thread, from
// rates[counters[UPDATE]] and the step count t = counters[STEP] + 1, in double as the host's
// adam_scalars computes them; then it advances both counters. With adam == 0 the rate is the
// learning rate itself.
template <typename T>
__global__ void update_scalars(const double* rates, long long* counters, T* scalars, double beta1, double beta2,
                               int adam) {
    if (blockIdx.x != 0 || threadIdx.x != 0) {
        return;
    }
    const long long done = counters[FUSEDNN_COUNTER_STEP];
    const double lr = rates[counters[FUSEDNN_COUNTER_UPDATE]];
    const double t = (double)(done + 1);
    scalars[FUSEDNN_SCALAR_RATE] = T(adam ? lr / (1.0 - pow(beta1, t)) : lr);
    scalars[FUSEDNN_SCALAR_BIAS_CORRECTION2_SQRT] = T(adam ? sqrt(1.0 - pow(beta2, t)) : 1.0);
    scalars[FUSEDNN_SCALAR_FIRST_STEP] = T(done == 0 ? 1 : 0);
    counters[FUSEDNN_COUNTER_UPDATE] += 1;
    counters[FUSEDNN_COUNTER_STEP] = done + 1;
}
