// xvlm-lamp: the desk lamp's firmware loop in one program, built on the SDK's C++ wrapper only.
//
//   xvlm-lamp check IMAGE "there are three stars" --model DIR [--threshold T]
//   xvlm-lamp caption IMAGE --model DIR [--beams N] [--max-length N]
//   xvlm-lamp ground IMAGE PHRASE... --model DIR
//   xvlm-lamp answer IMAGE "what shape is the red object?" --model DIR [--answers A B ...] [-k N]
//
// answer ranks the given answers, else the model's answer list, else generates the answer (needs an export
// of a checkpoint with the vqa head).
//
// DIR is an ExecuTorch export (MODEL_DIR/export/executorch-fp32). Prints one JSON document to stdout;
// errors go to stderr as one line. Exit status: 0 done, 2 a mistake in the arguments or inputs (bad
// option, unreadable image, text or count the SDK refuses), 1 anything else (a refused model, an engine failure).
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "xvlm_edge/xvlm_edge.hpp"

namespace {

constexpr const char* kUsage =
    "usage: xvlm-lamp check IMAGE STATEMENT --model DIR [--threshold T] [--threads N]\n"
    "       xvlm-lamp caption IMAGE --model DIR [--beams N] [--max-length N] [--threads N]\n"
    "       xvlm-lamp ground IMAGE PHRASE... --model DIR [--threads N]\n"
    "       xvlm-lamp answer IMAGE QUESTION --model DIR [--answers A B ...] [-k N] [--threads N]\n";

struct UsageError {
  std::string message;
};

struct Arguments {
  std::string command, image, model;
  std::vector<std::string> texts;
  std::optional<std::vector<std::string>> answers;  // --answers
  const char* threshold = nullptr;
  int beams = -1, max_length = -1, threads = 0, k = -1;
};

int parse_int(const std::string& option, const char* text) {
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(text, &end, 10);
  if (errno || end == text || *end || value < -1 || value > 1 << 20) throw UsageError{option + " takes an integer, got \"" + text + "\""};
  return static_cast<int>(value);
}

Arguments parse(int argc, char** argv) {
  Arguments a;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) throw UsageError{arg + " needs a value"};
      return argv[++i];
    };
    if (arg == "--model") a.model = value();
    else if (arg == "--threshold") a.threshold = value();
    else if (arg == "--beams") a.beams = parse_int(arg, value());
    else if (arg == "--max-length") a.max_length = parse_int(arg, value());
    else if (arg == "--threads") a.threads = parse_int(arg, value());
    else if (arg == "-k") a.k = parse_int(arg, value());
    else if (arg == "--answers") {
      a.answers.emplace();
      while (i + 1 < argc && std::string(argv[i + 1]).rfind("-", 0) != 0) a.answers->push_back(argv[++i]);
      if (a.answers->empty()) throw UsageError{"--answers needs at least one answer"};
    }
    else if (arg == "-h" || arg == "--help") throw UsageError{""};
    else if (arg.rfind("--", 0) == 0) throw UsageError{"unknown option " + arg};
    else positional.push_back(arg);
  }
  if (positional.size() < 2) throw UsageError{"give a command and an image"};
  a.command = positional[0];
  a.image = positional[1];
  a.texts.assign(positional.begin() + 2, positional.end());
  if (a.model.empty()) throw UsageError{"--model DIR is required (an export: MODEL_DIR/export/executorch-fp32)"};
  const bool one_text = a.command == "check" || a.command == "answer";
  const bool texts_ok = one_text ? a.texts.size() == 1 : a.command == "ground" ? !a.texts.empty() : a.texts.empty();
  if (a.command != "check" && a.command != "caption" && a.command != "ground" && a.command != "answer") throw UsageError{"unknown command " + a.command};
  if (!texts_ok) {
    throw UsageError{a.command == "check" ? "check takes one statement" : a.command == "answer" ? "answer takes one question" : a.command == "ground" ? "ground takes phrases" : "caption takes no text"};
  }
  if ((a.answers || a.k != -1) && a.command != "answer") throw UsageError{"--answers and -k apply to answer"};
  if (a.threshold && a.command != "check") throw UsageError{"--threshold applies to check"};
  if ((a.beams != -1 || a.max_length != -1) && a.command != "caption") throw UsageError{"--beams and --max-length apply to caption"};
  return a;
}

// JSON string literal of UTF-8 text (the SDK hands back valid UTF-8; control characters are escaped).
std::string quoted(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    if (c == '"' || c == '\\') out += '\\', out += static_cast<char>(c);
    else if (c < 0x20) {
      char escape[8];
      std::snprintf(escape, sizeof escape, "\\u%04x", c);
      out += escape;
    } else out += static_cast<char>(c);
  }
  return out + "\"";
}

// Shortest text that reads back as the same double.
std::string number(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.17g", v);
  return text;
}

std::string box_json(const xvlm_box& b) {
  return "{\"xyxy\": [" + number(b.x1) + ", " + number(b.y1) + ", " + number(b.x2) + ", " + number(b.y2) + "], \"cxcywh\": [" + number(b.cx) +
         ", " + number(b.cy) + ", " + number(b.w) + ", " + number(b.h) + "], \"clipped\": " + (b.clipped ? "true" : "false") + "}";
}

std::string run(const Arguments& a) {
  const xvlm::Model model = xvlm::Model::open(a.model, a.threads);
  xvlm::Context context(model);
  const xvlm::Image image = xvlm::Image::from_file(a.image);
  if (a.command == "check") {
    std::optional<double> threshold;
    if (a.threshold) {
      char* end = nullptr;
      threshold = std::strtod(a.threshold, &end);
      if (end == a.threshold || *end) throw UsageError{std::string("--threshold takes a number, got \"") + a.threshold + "\""};
    }
    const xvlm_verdict v = context.check(image, a.texts[0], threshold);
    // The evidence: where the statement points in the picture.
    const xvlm_box evidence = context.ground(image, a.texts).at(0);
    return "{\"statement\": " + quoted(a.texts[0]) + ", \"verdict\": " + (v.verdict ? "true" : "false") + ", \"probability\": " +
           number(v.probability) + ", \"threshold\": " + number(v.threshold) + ", \"evidence\": " + box_json(evidence) + "}";
  }
  if (a.command == "caption") {
    xvlm_caption_options options = xvlm_caption_options_default();
    options.num_beams = a.beams;
    options.max_length = a.max_length;
    const xvlm::Caption c = context.caption(image, options);
    std::string ids;
    for (std::int64_t id : c.token_ids) ids += (ids.empty() ? "" : ", ") + std::to_string(id);
    return "{\"caption\": " + quoted(c.text) + ", \"token_ids\": [" + ids + "], \"logprob\": " + number(c.logprob) + ", \"probability\": " +
           number(c.probability) + ", \"truncated\": " + (c.truncated ? "true" : "false") + "}";
  }
  if (a.command == "answer") {
    const xvlm::Answers found = context.answer(image, a.texts[0], a.answers, a.k);
    const xvlm::Answer& best = found.answers.at(0);
    auto share = [&](const xvlm::Answer& x) { return found.ranked ? number(x.share) : std::string("null"); };
    std::string candidates;
    for (std::size_t i = 0; found.ranked && i < found.answers.size(); ++i) {
      const xvlm::Answer& x = found.answers[i];
      candidates += std::string(i ? ", " : "") + "{\"answer\": " + quoted(x.text) + ", \"probability\": " + number(x.probability) +
                    ", \"logprob\": " + number(x.logprob) + ", \"share\": " + share(x) + "}";
    }
    return "{\"question\": " + quoted(a.texts[0]) + ", \"answer\": " + quoted(best.text) + ", \"probability\": " + number(best.probability) +
           ", \"logprob\": " + number(best.logprob) + ", \"share\": " + share(best) + ", \"ranked\": " + (found.ranked ? "true" : "false") +
           ", \"candidates\": [" + candidates + "]}";
  }
  const std::vector<xvlm_box> boxes = context.ground(image, a.texts);
  std::string out = "{\"width\": " + std::to_string(image.width()) + ", \"height\": " + std::to_string(image.height()) + ", \"boxes\": [";
  for (std::size_t i = 0; i < boxes.size(); ++i) {
    std::string box = box_json(boxes[i]);
    out += (i ? ", " : "") + ("{\"phrase\": " + quoted(a.texts[i]) + ", " + box.substr(1));
  }
  return out + "]}";
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::printf("%s\n", run(parse(argc, argv)).c_str());
    return 0;
  } catch (const UsageError& e) {
    std::fprintf(stderr, "%s%s%s", e.message.empty() ? "" : "xvlm-lamp: ", e.message.c_str(), e.message.empty() ? "" : "\n");
    std::fputs(kUsage, stderr);
    return 2;
  } catch (const xvlm::Error& e) {
    std::fprintf(stderr, "xvlm-lamp: %s: %s\n", xvlm_status_name(e.status()), e.what());
    const xvlm_status s = e.status();
    const bool user_mistake = s == XVLM_ERR_INVALID_ARGUMENT || s == XVLM_ERR_TEXT || s == XVLM_ERR_IMAGE || s == XVLM_ERR_LIMIT;
    return user_mistake ? 2 : 1;
  }
}
