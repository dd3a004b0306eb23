/* The xvlm_edge SDK: X-VLM's homework checking, matching, grounding, captioning and question answering on an ExecuTorch export
 * (`xvlm-edge export MODEL_DIR --target executorch`), for firmware without Python.
 *
 * Handles. A model (xvlm_model) is an export directory opened and verified once; it is read-only afterwards
 * and may be shared by any number of threads. A context (xvlm_context) is one thread's working memory: run
 * tasks on it from one thread at a time, and give each thread its own. An image (xvlm_image) is decoded
 * pixels, read-only once made. Every create/open has its destroy/close; destroying NULL does nothing.
 *
 * Errors. Every call returns an xvlm_status. When `error` is not NULL, a failed call stores a message naming
 * the argument or file and the problem in *error (free it with xvlm_error_free), and a successful one
 * stores NULL. Outputs are written only on success. No call aborts or throws on bad input.
 *
 * Results with a variable size (match, ground, caption, answer) are allocated by the SDK and freed by the caller
 * with the matching *_free function. Text crosses as NUL-terminated UTF-8.
 */
#ifndef XVLM_EDGE_H
#define XVLM_EDGE_H

#include <stddef.h>
#include <stdint.h>

#if defined(XVLM_EDGE_BUILDING_LIBRARY)
#define XVLM_EDGE_API __attribute__((visibility("default")))
#else
#define XVLM_EDGE_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on any incompatible change of this header. Compare with xvlm_api_version() at start-up. */
#define XVLM_EDGE_API_VERSION 1

typedef enum xvlm_status {
  XVLM_OK = 0,
  XVLM_ERR_INVALID_ARGUMENT = 1, /* a NULL handle or pointer, a bad size, stride, option or format */
  XVLM_ERR_TEXT = 2,             /* text that is not UTF-8, or nothing left after cleaning */
  XVLM_ERR_IMAGE = 3,            /* an image that cannot be read, decoded, or is too large */
  XVLM_ERR_LIMIT = 4,            /* a count past the export's bounds or the SDK's limits */
  XVLM_ERR_MODEL = 5,            /* the export directory is refused: manifest, hashes, files, shapes */
  XVLM_ERR_ENGINE = 6,           /* the inference engine failed while running */
  XVLM_ERR_OUT_OF_MEMORY = 7,
  XVLM_ERR_INTERNAL = 8 /* a bug in the SDK: please report the message */
} xvlm_status;

typedef struct xvlm_model xvlm_model;
typedef struct xvlm_context xvlm_context;
typedef struct xvlm_image xvlm_image;

/* The XVLM_EDGE_API_VERSION the library was built with, and its release ("0.1.0"). */
XVLM_EDGE_API int xvlm_api_version(void);
XVLM_EDGE_API const char* xvlm_version(void);
/* "XVLM_OK", "XVLM_ERR_TEXT", ...; "unknown status" for any other value. Static storage. An int, so any
 * value may be asked about (a C++ caller cannot hold an enum value outside its range). */
XVLM_EDGE_API const char* xvlm_status_name(int status);
XVLM_EDGE_API void xvlm_error_free(char* error);

/* ---- model and contexts ------------------------------------------------------------------------------ */

/* Opens `export_dir` (MODEL_DIR/export/executorch-fp32 or -int8) and verifies it: manifest format and
 * target, the sha256 of every file, the graphs the tasks need and their shapes. threads: CPU threads of the
 * engine (a process-wide pool: the last model opened decides; changing it while another model's context
 * runs is not safe) and of image resizing; 0 keeps the pool's count (one per core at first). */
XVLM_EDGE_API xvlm_status xvlm_model_open(const char* export_dir, int threads, xvlm_model** model, char** error);
XVLM_EDGE_API void xvlm_model_close(xvlm_model* model); /* after every context of the model is destroyed */

XVLM_EDGE_API xvlm_status xvlm_context_create(const xvlm_model* model, xvlm_context** context, char** error);
XVLM_EDGE_API void xvlm_context_destroy(xvlm_context* context);

/* ---- images -------------------------------------------------------------------------------------------- */

typedef enum xvlm_pixel_format {
  XVLM_PIXEL_RGB = 0,  /* 3 bytes a pixel */
  XVLM_PIXEL_BGR = 1,
  XVLM_PIXEL_RGBA = 2, /* 4 bytes a pixel; alpha ignored */
  XVLM_PIXEL_BGRA = 3,
  XVLM_PIXEL_GRAY = 4, /* 1 byte a pixel */
  XVLM_PIXEL_NV12 = 5  /* Y plane then interleaved UV at half resolution, both at `stride`; even sizes */
} xvlm_pixel_format;

/* A copy of a raw buffer of `size` bytes: `height` rows `stride` bytes apart (stride >= width x bytes per
 * pixel; the last row needs only its pixels). `format` is an xvlm_pixel_format, passed as an int so that a
 * wrong value is refused with a status rather than being undefined behaviour in the library. */
XVLM_EDGE_API xvlm_status xvlm_image_from_buffer(const uint8_t* data, size_t size, int width, int height, size_t stride, int format,
                                                 xvlm_image** image, char** error);
/* A PNG or JPEG file, decoded as the Python package decodes it. */
XVLM_EDGE_API xvlm_status xvlm_image_from_file(const char* path, xvlm_image** image, char** error);
XVLM_EDGE_API xvlm_status xvlm_image_size(const xvlm_image* image, int* width, int* height, char** error);
XVLM_EDGE_API void xvlm_image_destroy(xvlm_image* image);

/* ---- tasks ----------------------------------------------------------------------------------------------- */

/* Whether a statement holds: probability = the ITM head's match probability; verdict = probability >=
 * threshold (the model's calibrated threshold when `threshold` is NULL, else *threshold in [0, 1]). */
typedef struct xvlm_verdict {
  int verdict;
  double probability;
  double threshold;
} xvlm_verdict;
XVLM_EDGE_API xvlm_status xvlm_check(xvlm_context* context, const xvlm_image* image, const char* statement, const double* threshold,
                                     xvlm_verdict* verdict, char** error);

/* The match probability of each of `count` texts (1 to 128). */
typedef struct xvlm_probabilities {
  size_t count;
  double* values;
} xvlm_probabilities;
XVLM_EDGE_API xvlm_status xvlm_match(xvlm_context* context, const xvlm_image* image, const char* const* texts, size_t count,
                                     xvlm_probabilities** probabilities, char** error);
XVLM_EDGE_API void xvlm_probabilities_free(xvlm_probabilities* probabilities);

/* The box of each of `count` phrases (1 to 128): x1, y1, x2, y2 in pixels of the image, clipped to it; the
 * same box normalised as (cx, cy, w, h); clipped = 1 when the predicted box reached past the image. */
typedef struct xvlm_box {
  double x1, y1, x2, y2;
  double cx, cy, w, h;
  int clipped;
} xvlm_box;
typedef struct xvlm_boxes {
  size_t count;
  xvlm_box* boxes;
} xvlm_boxes;
XVLM_EDGE_API xvlm_status xvlm_ground(xvlm_context* context, const xvlm_image* image, const char* const* phrases, size_t count,
                                      xvlm_boxes** boxes, char** error);
XVLM_EDGE_API void xvlm_boxes_free(xvlm_boxes* boxes);

/* Captioning. -1 in a field means the model's default (config.json's tasks). num_beams 1 is greedy
 * decoding, more is beam search (at most 128); max_length counts the prompt's tokens and is at most the
 * export's decoder_tokens bound; min_length (beam search only) holds eos back below that length. */
typedef struct xvlm_caption_options {
  int num_beams;
  int max_length;
  int min_length;
} xvlm_caption_options;
XVLM_EDGE_API xvlm_caption_options xvlm_caption_options_default(void);

/* text: the caption without the prompt. token_ids: prompt + generated ids (eos included when it fits).
 * logprob: greedy, the mean log-probability of the generated tokens; beams, the length-normalised beam
 * score. probability = exp(logprob). truncated = 1 when decoding hit max_length before eos. */
typedef struct xvlm_caption {
  char* text;
  int64_t* token_ids;
  size_t token_count;
  double logprob;
  double probability;
  int truncated;
} xvlm_caption;
XVLM_EDGE_API xvlm_status xvlm_caption_image(xvlm_context* context, const xvlm_image* image, const xvlm_caption_options* options,
                                             xvlm_caption** caption, char** error);
XVLM_EDGE_API void xvlm_caption_free(xvlm_caption* caption);

/* Visual question answering, as xvlm_edge's Model.answer (the official X-VLM VQA model). Needs an export of
 * a checkpoint with the vqa head (its multimodal and answer_* graphs); any other export refuses with
 * XVLM_ERR_MODEL, "... has no answer decoder". The question is cleaned as the official pre_question.
 *
 * Ranked: `answers` (count 1 to 65536 strings, used as given) or, with answers NULL and count 0, the
 * export's answer list (answer_list.json). The k candidates whose first token the model finds most probable
 * are re-scored on all their tokens (the official rank_answer); k is 1 to 128 (more than the candidates:
 * all of them), or -1 for the model's default (config.json tasks.vqa_k_test). An answer too long for the
 * export's decoder_tokens bound is XVLM_ERR_LIMIT.
 * Generated: with answers NULL and count 0 and no answer list in the export, the answer is generated
 * greedily from [CLS] until [SEP], at most tasks.answer_max_length tokens; k must then be -1. */
typedef struct xvlm_ranked_answer {
  char* text;
  double probability; /* exp(logprob), in [0, 1] */
  double logprob;     /* ranked: the summed log-probability of the answer's tokens and [SEP];
                         generated: the mean log-probability of the generated tokens ([SEP] included) */
  double share;       /* ranked: the official ranking score, a softmax over the k re-scored candidates
                         (they sum to 1); generated: -1 */
} xvlm_ranked_answer;
/* answers[0] is the answer. Ranked: the k candidates, largest share first (ranked = 1). Generated: one
 * entry (ranked = 0). */
typedef struct xvlm_answers {
  size_t count;
  xvlm_ranked_answer* answers;
  int ranked;
} xvlm_answers;
XVLM_EDGE_API xvlm_status xvlm_answer(xvlm_context* context, const xvlm_image* image, const char* question, const char* const* answers,
                                      size_t count, int k, xvlm_answers** out, char** error);
XVLM_EDGE_API void xvlm_answers_free(xvlm_answers* answers);

#ifdef __cplusplus
}
#endif

#endif /* XVLM_EDGE_H */
