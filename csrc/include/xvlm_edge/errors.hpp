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

}  // namespace xvlm_edge
