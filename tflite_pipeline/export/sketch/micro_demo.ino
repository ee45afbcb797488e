// The demo sketch of `tflite-pipeline export-micro`: classifies the exported sample image (a validation image the
// export ran through TFLM and LiteRT) every two seconds and prints the top class, its score and the time taken.
// A starting point: replace kSampleImage with your camera's pixels, resized to kInputWidth x kInputHeight.
//
// Needs a TFLM Arduino library (e.g. Chirale_TensorFlowLite, or the tflite-micro-arduino-examples library):
// its headers are included as "tensorflow/lite/...". docs/micro.md has the steps.
#include "classify.h"
#include "labels.h"
#include "model_data.h"
#include "sample_image.h"

alignas(16) static uint8_t tensor_arena[kTensorArenaSize];
static tflite::MicroInterpreter* interpreter = nullptr;

void setup() {
  Serial.begin(115200);
  const unsigned long wait_start = millis();
  while (!Serial && millis() - wait_start < 5000) {
  }
  interpreter = SetUpClassifier(tensor_arena, kTensorArenaSize);
  if (interpreter == nullptr) Serial.println("Setup failed (see the message above).");
}

void loop() {
  if (interpreter == nullptr) {
    delay(1000);
    return;
  }
  const unsigned long start = micros();
  const Classification result = Classify(interpreter, kSampleImage);
  const unsigned long elapsed = micros() - start;
  if (result.label < 0) {
    Serial.println("Invoke failed.");
  } else {
    Serial.print("top class: ");
    Serial.print(kLabels[result.label]);
    Serial.print(" (score ");
    Serial.print(result.score, 3);
    Serial.print(", ");
    Serial.print(elapsed / 1000.0, 1);
    Serial.print(" ms); expected ");
    Serial.println(kLabels[kSampleExpected]);
  }
  delay(2000);
}
