// SHA-256 of a file, as lower-case hex: the digest every export manifest records (xvlm_edge/files.py).
#pragma once

#include <string>

namespace xvlm_edge::sdk {

// Throws ModelError (manifest.hpp) naming the path when the file cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace xvlm_edge::sdk
