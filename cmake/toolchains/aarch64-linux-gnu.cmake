# Cross-building for 64-bit ARM Linux (the desk lamp) from an x86_64 Debian host with Debian's cross compiler
# and multiarch libraries (docs/sdk-aarch64.md):
#
#   apt-get install g++-aarch64-linux-gnu qemu-user
#   dpkg --add-architecture arm64 && apt-get update
#   apt-get install libssl-dev:arm64 libpng-dev:arm64 libjpeg62-turbo-dev:arm64 nlohmann-json3-dev
#
#   cmake -S . -B build/aarch64 --toolchain cmake/toolchains/aarch64-linux-gnu.cmake -DXVLM_EDGE_SDK=ON \
#         -DCMAKE_PREFIX_PATH="$(python csrc/tools/fetch_executorch_runtime.py build/executorch-aarch64)"
#
# Debian's cross g++ already searches the multiarch directories (/usr/include/aarch64-linux-gnu,
# /usr/lib/aarch64-linux-gnu) and its own libc (/usr/aarch64-linux-gnu), so there is no sysroot: CMake's find
# calls look in the same places through CMAKE_LIBRARY_ARCHITECTURE, and the host's x86_64 directories are
# ignored outright, so a missing :arm64 package fails the configure instead of linking an x86_64 library.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

# Programs (code generators, pkg-config) are the host's; libraries, headers and CMake packages the target's.
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
list(APPEND CMAKE_IGNORE_PATH /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu /usr/include/x86_64-linux-gnu)
# FindOpenSSL and friends ask pkg-config first: point it at the arm64 .pc files only.
set(ENV{PKG_CONFIG_LIBDIR} /usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig)

# ctest (and anything using CMAKE_CROSSCOMPILING_EMULATOR) runs aarch64 programs through qemu's user mode.
# The CPU is pinned to a core of the lamp's class: qemu's default `-cpu max` turns on every optional extension
# (SVE2, SME, the i8mm/bf16 dot products), and there the INT8 answers come out wrong through the SME code path
# (docs/sdk-aarch64.md has the measurement).
# -L makes the cross libc's loader (/lib/ld-linux-aarch64.so.1) resolve inside /usr/aarch64-linux-gnu, and
# LD_LIBRARY_PATH keeps libc.so.6 there too: the :arm64 packages pull in Debian's libc6:arm64, whose libc.so.6
# the loader would otherwise find first in /usr/lib/aarch64-linux-gnu, and a libc from another glibc build
# than its loader hangs in the first pthread_create. The :arm64 libraries (libcrypto, libpng, libjpeg) still
# come from /usr/lib/aarch64-linux-gnu.
set(XVLM_EDGE_AARCH64_LIBC /usr/aarch64-linux-gnu)
find_program(XVLM_EDGE_QEMU_AARCH64 qemu-aarch64)
if(XVLM_EDGE_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${XVLM_EDGE_QEMU_AARCH64} -cpu cortex-a76 -L ${XVLM_EDGE_AARCH64_LIBC}
                                    -E LD_LIBRARY_PATH=${XVLM_EDGE_AARCH64_LIBC}/lib)
endif()
