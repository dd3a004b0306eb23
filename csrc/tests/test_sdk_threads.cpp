// One model shared by 8 threads, one context each: every thread's check, ground and caption results must
// equal, bit for bit, the results of a single context run first (the model is read-only; contexts share
// nothing mutable).
//
//   xvlm_edge_test_sdk_threads EXPORT_DIR IMAGE...
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "xvlm_edge/xvlm_edge.hpp"

namespace {

constexpr int kThreads = 8;
constexpr int kRounds = 2;

struct Results {
  std::vector<xvlm_verdict> verdicts;
  std::vector<xvlm_box> boxes;
  std::vector<xvlm::Caption> captions;
};

Results run_all(xvlm::Context& context, const std::vector<xvlm::Image>& images) {
  Results r;
  for (const xvlm::Image& image : images) {
    r.verdicts.push_back(context.check(image, "there are three stars"));
    for (const xvlm_box& b : context.ground(image, {"a red circle", "the blue square"})) r.boxes.push_back(b);
    xvlm_caption_options beams = xvlm_caption_options_default();
    beams.num_beams = 3;
    r.captions.push_back(context.caption(image, beams));
  }
  return r;
}

bool identical(const Results& a, const Results& b) {
  if (a.verdicts.size() != b.verdicts.size() || a.boxes.size() != b.boxes.size() || a.captions.size() != b.captions.size()) return false;
  for (std::size_t i = 0; i < a.verdicts.size(); ++i) {
    if (a.verdicts[i].verdict != b.verdicts[i].verdict || std::memcmp(&a.verdicts[i].probability, &b.verdicts[i].probability, sizeof(double))) {
      return false;
    }
  }
  for (std::size_t i = 0; i < a.boxes.size(); ++i) {
    const xvlm_box &x = a.boxes[i], &y = b.boxes[i];
    const double xs[] = {x.x1, x.y1, x.x2, x.y2}, ys[] = {y.x1, y.y1, y.x2, y.y2};
    if (std::memcmp(xs, ys, sizeof xs)) return false;
  }
  for (std::size_t i = 0; i < a.captions.size(); ++i) {
    const xvlm::Caption &x = a.captions[i], &y = b.captions[i];
    if (x.text != y.text || x.token_ids != y.token_ids || std::memcmp(&x.logprob, &y.logprob, sizeof(double))) return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s EXPORT_DIR IMAGE...\n", argv[0]);
    return 2;
  }
  try {
    const xvlm::Model model = xvlm::Model::open(argv[1], 1);
    std::vector<xvlm::Image> images;
    for (int i = 2; i < argc; ++i) images.push_back(xvlm::Image::from_file(argv[i]));
    xvlm::Context reference_context(model);
    const Results reference = run_all(reference_context, images);

    std::vector<int> mismatches(kThreads, 0);
    std::vector<std::string> errors(kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        try {
          xvlm::Context context(model);
          for (int round = 0; round < kRounds; ++round) mismatches[t] += identical(run_all(context, images), reference) ? 0 : 1;
        } catch (const xvlm::Error& e) {
          errors[t] = e.what();
        }
      });
    }
    for (std::thread& t : threads) t.join();
    int failed = 0;
    for (int t = 0; t < kThreads; ++t) {
      if (!errors[t].empty()) std::printf("thread %d failed: %s\n", t, errors[t].c_str());
      if (mismatches[t]) std::printf("thread %d: %d of %d rounds differ from the single-context results\n", t, mismatches[t], kRounds);
      failed += !errors[t].empty() || mismatches[t];
    }
    std::printf("%d threads x %d rounds over %zu images: %s\n", kThreads, kRounds, images.size(), failed ? "DIFFERENT" : "bit-identical");
    return failed ? 1 : 0;
  } catch (const xvlm::Error& e) {
    std::printf("error: %s\n", e.what());
    return 1;
  }
}
