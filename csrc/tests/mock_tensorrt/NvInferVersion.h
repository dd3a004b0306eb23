// MOCK of TensorRT's NvInferVersion.h, for the syntax/type check of csrc/tensorrt/engine.cpp only (see
// ../README.md). XVLM_EDGE_MOCK_TENSORRT_MAJOR picks the API generation mocked: 10 (default) or 11.
#pragma once

#ifndef XVLM_EDGE_MOCK_TENSORRT_MAJOR
#define XVLM_EDGE_MOCK_TENSORRT_MAJOR 10
#endif

#define NV_TENSORRT_MAJOR XVLM_EDGE_MOCK_TENSORRT_MAJOR
#define NV_TENSORRT_MINOR 0
#define NV_TENSORRT_PATCH 0
#define NV_TENSORRT_BUILD 0
