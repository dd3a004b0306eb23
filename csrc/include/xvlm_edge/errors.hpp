// Exceptions thrown by the core library. The Python binding maps each one to the class of the same name in
// xvlm_edge/errors.py; firmware catches them directly. The core never aborts on bad input.
#pragma once

#include <stdexcept>

namespace xvlm_edge {

// A caller-supplied value (size, pointer, option) is unusable; what() names the value and the limit.
class InputError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// An image buffer has an unsupported layout or size.
class ImageError : public InputError {
 public:
  using InputError::InputError;
};

// An inference engine refused to build, load or run: a manifest that does not parse, a TensorRT version
// mismatch, a shape outside every optimisation profile, a missing or unknown tensor. what() names the
// tensor, the dimension and the allowed range or version.
class EngineError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace xvlm_edge
