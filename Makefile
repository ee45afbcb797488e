# Two commands on a fresh machine (Python 3.11 with venv):
#   make demo   set up, train + convert + verify on the bundled dataset -> models/demo/, export to android_demo/
#   make test   set up and run the test suite (what CI runs); make test-fast: the tests that build no model
# Setup makes these: .venv (the package, with tflite-micro: TFLM's interpreter for export-micro), .venv-tflite2.14
# (an older TFLite runtime that exported models must load in; it needs numpy 1.x, hence its own venv),
# .venv-mediapipe (MediaPipe Tasks, the consumer check-tasks proves the models in; it pins absl-py) and, through
# apt when missing, the Kotlin 1.3 compiler, JUnit 4 and Android's org.json that run the app's pure-Kotlin logic on
# the JVM, and the ARM cross compiler that checks the microcontroller export builds for a Cortex-M.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LEGACY := .venv-tflite2.14
LEGACY_STAMP := $(LEGACY)/.installed
MEDIAPIPE := .venv-mediapipe
MEDIAPIPE_STAMP := $(MEDIAPIPE)/.installed
JVM_JARS := /usr/share/java/junit4.jar /usr/share/java/hamcrest-core.jar /usr/share/java/json-android.jar

.PHONY: setup legacy-runtime mediapipe jvm-tools arm-toolchain demo lint test test-fast test-slow clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --disable-pip-version-check -c constraints.txt -e '.[test]'
	@touch $(STAMP)

$(LEGACY_STAMP):
	@test -x $(LEGACY)/bin/python || $(PYTHON) -m venv $(LEGACY)
	@$(LEGACY)/bin/python -m pip install -qq --disable-pip-version-check "tflite-runtime==2.14.0" "numpy<2" \
	  && touch $(LEGACY_STAMP) \
	  || echo "warning: tflite-runtime 2.14.0 has no wheel for this Python/platform; the TFLite 2.14 check is skipped"

legacy-runtime: $(LEGACY_STAMP)

# MediaPipe Tasks (check-tasks, the metadata read-back tests): it pins absl-py~=2.3, which tfmot's venv cannot hold
$(MEDIAPIPE_STAMP):
	@test -x $(MEDIAPIPE)/bin/python || $(PYTHON) -m venv $(MEDIAPIPE)
	@$(MEDIAPIPE)/bin/python -m pip install -qq --disable-pip-version-check "mediapipe==1.2.2" \
	  && touch $(MEDIAPIPE_STAMP) \
	  || echo "warning: mediapipe 1.2.2 has no wheel for this Python/platform; the MediaPipe Tasks checks are skipped"

mediapipe: $(MEDIAPIPE_STAMP)

jvm-tools:
	@if command -v kotlinc >/dev/null && for jar in $(JVM_JARS); do test -f $$jar || exit 1; done; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kotlin junit4 libandroid-json-org-java >/dev/null; \
	else echo "warning: install Debian's kotlin, junit4 and libandroid-json-org-java to run the app's Kotlin tests"; fi

arm-toolchain:
	@if command -v arm-none-eabi-g++ >/dev/null && test -f /usr/lib/arm-none-eabi/include/stdint.h; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-arm-none-eabi \
	    libnewlib-arm-none-eabi >/dev/null; \
	else echo "warning: install Debian's gcc-arm-none-eabi and libnewlib-arm-none-eabi to cross-compile the micro export"; fi

setup: $(STAMP) legacy-runtime mediapipe jvm-tools arm-toolchain

demo: setup
	$(BIN)/tflite-pipeline run --recipe default --run-name demo --overwrite
	$(BIN)/tflite-pipeline export-android models/demo
	@if test -f $(MEDIAPIPE_STAMP); then $(BIN)/tflite-pipeline check-tasks models/demo; fi

lint: $(STAMP)
	$(BIN)/ruff check tflite_pipeline tests benchmarks examples

# lint, then two workers (the machine's 2 cores); a module's tests stay together so its fixtures are built once,
# modules handed out in conftest.SLOWEST_FIRST order (xdist would otherwise sort them by test count)
test: setup lint
	$(BIN)/python -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -q -m fast $(PYTEST_ARGS)

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) $(LEGACY) $(MEDIAPIPE) build *.egg-info
