// MOCK of the one CUDA runtime declaration engine.cpp uses (cudaStream_t), as CUDA declares it.
#pragma once

typedef struct CUstream_st* cudaStream_t;
