// CPU shim for the shipped CUDA C sources: force-included by g++ (-include shim.h)
// so the very same .cu files build into a host library the tests call through ctypes.
//
// The qualifiers vanish, the built-in index variables become globals, math comes
// from <cmath> (overloaded for float and double like the CUDA builtins), and
// shim_launch runs every (block, thread) of a launch one after another. That is faithful for kernels without shared memory or __syncthreads,
// which is how the fusednn kernels are written.
#pragma once

#include <cmath>
#include <cstdlib>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct shim_dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

// C++17 inline variables: one instance shared by every translation unit of the library.
inline shim_dim3 threadIdx, blockIdx, blockDim, gridDim;

using std::erf;
using std::exp;
using std::expm1;
using std::fabs;
using std::log;
using std::log1p;
using std::nan;
using std::pow;
using std::sqrt;
using std::tanh;

// A trap ends the launch on a GPU (the kernel fails); here it ends the process.
[[noreturn]] inline void __trap() { std::abort(); }

template <typename... Params, typename... Args>
inline void shim_launch(int grid, int block, void (*kernel)(Params...), Args... args) {
    gridDim.x = static_cast<unsigned int>(grid);
    blockDim.x = static_cast<unsigned int>(block);
    for (int b = 0; b < grid; ++b) {
        for (int t = 0; t < block; ++t) {
            blockIdx.x = static_cast<unsigned int>(b);
            threadIdx.x = static_cast<unsigned int>(t);
            kernel(args...);
        }
    }
}
