"""Helpers that build the shipped CUDA C sources without a GPU (nvcc checks and the g++ CPU shim)."""
