"""The kernels themselves: Numba functions for the CPU and CUDA C sources for the GPU.

Kernels are plain functions over arrays and scalars. They know nothing about
devices, models or layers; the backends check arguments and launch them.
"""
