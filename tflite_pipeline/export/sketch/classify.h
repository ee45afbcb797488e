// classify.h: the portable part of the demo sketch (copied by `tflite-pipeline export-micro` beside the generated
// files): set up TFLM on the exported model, quantize an image with the exported table, pick the top class.
#ifndef TFLITE_PIPELINE_CLASSIFY_H_
#define TFLITE_PIPELINE_CLASSIFY_H_

#include <stddef.h>
#include <stdint.h>

#include "tensorflow/lite/micro/micro_interpreter.h"

// The interpreter on the exported model, its tensors allocated in `arena` (kTensorArenaSize bytes, 16-byte
// aligned); nullptr, with the reason through MicroPrintf, when the model cannot be set up.
tflite::MicroInterpreter* SetUpClassifier(uint8_t* arena, size_t arena_size);

struct Classification {
  int label;    // index into kLabels, -1 when Invoke failed
  float score;  // the top class's dequantized score
};

// `pixels`: kInputHeight x kInputWidth x kInputChannels uint8 values (HWC), already resized to the model's input;
// a gray model takes gray pixels (see model_settings.h).
Classification Classify(tflite::MicroInterpreter* interpreter, const uint8_t* pixels);

#endif  // TFLITE_PIPELINE_CLASSIFY_H_
