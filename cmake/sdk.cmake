# The lamp SDK (included from the top-level CMakeLists.txt when XVLM_EDGE_SDK is ON).
#
#   cmake -S . -B build/sdk -G Ninja -DXVLM_EDGE_SDK=ON \
#         -DCMAKE_PREFIX_PATH="$(python -c 'import executorch; print(list(executorch.__path__)[0])')"
#
# ExecuTorch comes from its PyPI wheel (headers, shared libraries, CMake package); its imported targets
# need CMake >= 3.28 (`pip install cmake`). The XNNPACK delegate and the kernel libraries register
# themselves from static initialisers; their imported targets carry the link options that keep them.
if(CMAKE_VERSION VERSION_LESS 3.28)
  message(FATAL_ERROR "XVLM_EDGE_SDK needs CMake >= 3.28 for ExecuTorch's imported targets (this is ${CMAKE_VERSION}); "
                      "pip install cmake")
endif()
find_package(executorch CONFIG REQUIRED)
foreach(_component runtime backend_xnnpack kernels_optimized kernels_quantized threadpool)
  if(NOT TARGET executorch::${_component})
    message(FATAL_ERROR "the ExecuTorch package at ${executorch_DIR} lacks executorch::${_component}")
  endif()
endforeach()
find_package(nlohmann_json 3 CONFIG REQUIRED)  # Debian: nlohmann-json3-dev
find_package(OpenSSL REQUIRED COMPONENTS Crypto)  # Debian: libssl-dev (SHA-256 of the export's files)
if(NOT TARGET xvlm_edge_image_io)
  message(FATAL_ERROR "XVLM_EDGE_SDK needs the image input library (libpng and libjpeg; Debian: libpng-dev libjpeg62-turbo-dev)")
endif()

set(_sdk ${CMAKE_CURRENT_SOURCE_DIR}/csrc/sdk)
add_library(xvlm_edge_sdk SHARED
  ${_sdk}/tensor.cpp
  ${_sdk}/sha256.cpp
  ${_sdk}/manifest.cpp
  ${_sdk}/bounded_calls.cpp
  ${_sdk}/decoding.cpp
  ${_sdk}/answering.cpp
  ${_sdk}/model.cpp
  ${_sdk}/c_api.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/csrc/executorch/executorch_engine.cpp)
set_target_properties(xvlm_edge_sdk PROPERTIES
  OUTPUT_NAME xvlm_edge
  VERSION ${PROJECT_VERSION}
  SOVERSION ${PROJECT_VERSION_MAJOR}
  CXX_VISIBILITY_PRESET hidden  # only the C API (XVLM_EDGE_API) is exported
  VISIBILITY_INLINES_HIDDEN ON)
target_include_directories(xvlm_edge_sdk PUBLIC $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/csrc/include>)
target_compile_definitions(xvlm_edge_sdk PRIVATE XVLM_EDGE_BUILDING_LIBRARY XVLM_EDGE_VERSION="${PROJECT_VERSION}")
target_link_libraries(xvlm_edge_sdk
  PRIVATE xvlm_edge_core xvlm_edge_image_io nlohmann_json::nlohmann_json OpenSSL::Crypto
          executorch::runtime executorch::backend_xnnpack executorch::kernels_optimized
          executorch::kernels_quantized executorch::threadpool)
target_compile_options(xvlm_edge_sdk PRIVATE $<$<CXX_COMPILER_ID:GNU,Clang>:-O2 -Wall -Wextra>)
# The TensorRT GraphEngine (csrc/tensorrt/graph_engine.hpp), where the core was built with the TensorRT runner
# (XVLM_EDGE_TENSORRT_FOUND, CMakeLists.txt); xvlm_edge_core carries XVLM_EDGE_HAS_TENSORRT, TensorRT and cudart.
if(XVLM_EDGE_TENSORRT_FOUND)
  target_sources(xvlm_edge_sdk PRIVATE
    ${CMAKE_CURRENT_SOURCE_DIR}/csrc/tensorrt/graph_engine_host.cpp ${CMAKE_CURRENT_SOURCE_DIR}/csrc/tensorrt/graph_engine.cpp)
endif()

# The example firmware program: the C++ wrapper (xvlm_edge.hpp) over the C API, nothing else.
add_executable(xvlm-lamp csrc/examples/xvlm_lamp.cpp)
target_link_libraries(xvlm-lamp PRIVATE xvlm_edge_sdk)
target_compile_options(xvlm-lamp PRIVATE $<$<CXX_COMPILER_ID:GNU,Clang>:-O2 -Wall -Wextra>)

if(XVLM_EDGE_BUILD_TESTS)
  # The C API's bad-input suite and the 8-thread determinism check (both take the export directory).
  foreach(_test test_c_api test_sdk_threads)
    add_executable(xvlm_edge_${_test} csrc/tests/${_test}.cpp)
    target_link_libraries(xvlm_edge_${_test} PRIVATE xvlm_edge_sdk Threads::Threads)
    target_compile_options(xvlm_edge_${_test} PRIVATE $<$<CXX_COMPILER_ID:GNU,Clang>:-Wall -Wextra>)
  endforeach()
endif()

# The SDK's benchmark program, driven by benchmarks/bench_sdk.py (latency and peak RSS against the Python package).
add_executable(xvlm-bench benchmarks/bench_sdk.cpp)
target_link_libraries(xvlm-bench PRIVATE xvlm_edge_sdk)
target_compile_options(xvlm-bench PRIVATE $<$<CXX_COMPILER_ID:GNU,Clang>:-O2 -Wall -Wextra>)
