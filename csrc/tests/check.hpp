// The plain C++ tests' checks (no framework): CHECK counts a condition, check_throws<Error> a call that must
// throw Error (or a subclass) whose what() names every fragment. report() prints the tally and gives the
// exit status.
#pragma once

#include <cstdio>
#include <exception>
#include <functional>
#include <string>
#include <vector>

namespace xvlm_edge::testing {

inline int g_failures = 0;
inline int g_checks = 0;

#define CHECK(cond)                                                                \
  do {                                                                             \
    ++::xvlm_edge::testing::g_checks;                                              \
    if (!(cond)) {                                                                 \
      ++::xvlm_edge::testing::g_failures;                                          \
      std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                  \
    }                                                                              \
  } while (0)

template <class Error>
void check_throws(const char* file, int line, const std::function<void()>& fn, const std::vector<std::string>& fragments) {
  ++g_checks;
  try {
    fn();
  } catch (const Error& e) {
    const std::string what = e.what();
    for (const std::string& f : fragments) {
      if (what.find(f) == std::string::npos) {
        ++g_failures;
        std::printf("FAIL %s:%d: message lacks \"%s\": %s\n", file, line, f.c_str(), what.c_str());
      }
    }
    return;
  } catch (const std::exception& e) {
    ++g_failures;
    std::printf("FAIL %s:%d: threw another exception type: %s\n", file, line, e.what());
    return;
  }
  ++g_failures;
  std::printf("FAIL %s:%d: did not throw\n", file, line);
}

inline int report() {
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}

}  // namespace xvlm_edge::testing
