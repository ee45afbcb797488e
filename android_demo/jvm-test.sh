#!/usr/bin/env bash
# Compile the app's pure-Kotlin logic (app/src/main/java/.../core) and its JUnit tests with a plain
# Kotlin compiler and run them on the JVM: no Android SDK, no Gradle. Used by the Python test suite
# (tests/test_android.py) with Debian's kotlin 1.3, junit4 and libandroid-json-org-java packages.
#
#   android_demo/jvm-test.sh [GOLDEN_DIR [ASSETS_DIR]]
#
# GOLDEN_DIR / ASSETS_DIR default to the app's own exported assets; when given, golden vectors are
# required (a missing golden.json fails instead of skipping).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
golden="${1:-$here/app/src/androidTest/assets/golden}"
assets="${2:-$here/app/src/main/assets}"
required=$([ $# -ge 1 ] && echo true || echo false)
jars=/usr/share/java
classpath="$jars/junit4.jar:$jars/hamcrest-core.jar:$jars/json-android.jar"
for jar in ${classpath//:/ }; do
  [ -f "$jar" ] || { echo "missing $jar: apt-get install kotlin junit4 libandroid-json-org-java" >&2; exit 2; }
done
command -v kotlinc >/dev/null || { echo "missing kotlinc: apt-get install kotlin" >&2; exit 2; }

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
core="$here/app/src/main/java/dev/tflitepipeline/demo/core"
tests="$here/app/src/test/java/dev/tflitepipeline/demo/core"
kotlinc "$core"/*.kt "$tests"/*.kt -cp "$classpath" -d "$out" 2>&1 | grep -v -e "^OpenJDK.*deprecated" -e "^warning:" || true
[ -n "$(ls "$out"/dev/tflitepipeline/demo/core/*Test.class 2>/dev/null)" ] || { echo "compilation failed" >&2; exit 1; }
classes=$(cd "$out" && ls dev/tflitepipeline/demo/core/*Test.class | sed 's/\.class$//; s#/#.#g')
exec java -Dfixtures.dir="$here/app/src/test/resources" -Dgolden.dir="$golden" -Dassets.dir="$assets" -Dgolden.required="$required" \
  -cp "$out:$classpath:$jars/kotlin-stdlib.jar" org.junit.runner.JUnitCore $classes
