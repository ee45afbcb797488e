// host_main.cc: the demo sketch's logic as a desktop program, to build an export folder against TFLM on the host
// (micro_demo/host_build.sh) and check that it prints the class the export proved (kSampleExpected).
#include <cstdio>

#include "classify.h"
#include "labels.h"
#include "model_data.h"
#include "sample_image.h"

alignas(16) static uint8_t tensor_arena[kTensorArenaSize];

int main() {
  tflite::MicroInterpreter* interpreter = SetUpClassifier(tensor_arena, kTensorArenaSize);
  if (interpreter == nullptr) return 1;
  const Classification result = Classify(interpreter, kSampleImage);
  if (result.label < 0) {
    std::printf("Invoke failed\n");
    return 1;
  }
  std::printf("top class: %d %s (score %.3f); expected %d %s; label %d %s\n", result.label, kLabels[result.label],
              static_cast<double>(result.score), kSampleExpected, kLabels[kSampleExpected], kSampleLabel, kLabels[kSampleLabel]);
  return result.label == kSampleExpected ? 0 : 2;
}
