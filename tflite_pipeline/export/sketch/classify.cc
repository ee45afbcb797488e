// classify.cc: see classify.h. Nothing model-specific lives here: every constant comes from the generated headers.
#include "classify.h"

#include "labels.h"
#include "model_data.h"
#include "model_ops.h"
#include "model_settings.h"
#include "tensorflow/lite/micro/micro_log.h"
#include "tensorflow/lite/schema/schema_generated.h"

tflite::MicroInterpreter* SetUpClassifier(uint8_t* arena, size_t arena_size) {
  const tflite::Model* model = tflite::GetModel(kModelData);
  if (model->version() != TFLITE_SCHEMA_VERSION) {
    MicroPrintf("The model has schema version %d; this TFLM reads %d.", static_cast<int>(model->version()),
                TFLITE_SCHEMA_VERSION);
    return nullptr;
  }
  static ModelOpResolver resolver;
  if (RegisterModelOps(resolver) != kTfLiteOk) {
    MicroPrintf("Registering the model's ops failed.");
    return nullptr;
  }
  static tflite::MicroInterpreter interpreter(model, resolver, arena, arena_size);
  if (interpreter.AllocateTensors() != kTfLiteOk) {
    MicroPrintf("AllocateTensors failed in a %u-byte arena (the export measured what it needs: kTensorArenaSize).",
                static_cast<unsigned>(arena_size));
    return nullptr;
  }
  MicroPrintf("Tensor arena: %u of %u bytes used.", static_cast<unsigned>(interpreter.arena_used_bytes()),
              static_cast<unsigned>(arena_size));
  return &interpreter;
}

static int32_t OutputValue(const TfLiteTensor* output, int index) {
  switch (output->type) {
    case kTfLiteInt8: return output->data.int8[index];
    case kTfLiteUInt8: return output->data.uint8[index];
    case kTfLiteInt16: return output->data.i16[index];
    default: return 0;
  }
}

Classification Classify(tflite::MicroInterpreter* interpreter, const uint8_t* pixels) {
  TfLiteTensor* input = interpreter->input(0);
  InputType* values = reinterpret_cast<InputType*>(input->data.raw);
  const int count = kInputHeight * kInputWidth * kInputChannels;
  for (int i = 0; i < count; ++i) {
    values[i] = kPixelToInput[i % kInputChannels][pixels[i]];  // normalize + quantize, as the parity check did
  }
  if (interpreter->Invoke() != kTfLiteOk) return {-1, 0.0f};
  const TfLiteTensor* output = interpreter->output(0);
  int best = 0;
  for (int c = 1; c < kNumClasses; ++c) {
    if (OutputValue(output, c) > OutputValue(output, best)) best = c;  // ties: the lower index, like argmax
  }
  return {best, static_cast<float>(OutputValue(output, best) - kOutputZeroPoint) * kOutputScale};
}
