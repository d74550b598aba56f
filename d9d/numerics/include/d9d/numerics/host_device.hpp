// D9D_HOST_DEVICE: a function compiled for the host and, under nvcc, for the device too. The
// conversion rules (cast_rules.hpp) and the kernels' thread bodies (kernels/*_body.hpp) are written
// once with it, so the CPU and the GPU run the same code.
#pragma once

#if defined(__CUDACC__)
#define D9D_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define D9D_HOST_DEVICE inline
#endif
