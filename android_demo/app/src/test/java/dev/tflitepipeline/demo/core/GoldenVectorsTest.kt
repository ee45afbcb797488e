package dev.tflitepipeline.demo.core

import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import org.json.JSONObject
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.fail
import org.junit.Assume.assumeTrue
import org.junit.Test

/**
 * The pipeline's golden vectors (written by `tflite-pipeline export-android`): for the same pixels, the
 * Kotlin input bytes must equal Python's byte for byte, and the Kotlin top-3 of the raw output Python's.
 * Reads `golden.dir` (default src/androidTest/assets/golden) and `assets.dir` (default src/main/assets).
 */
class GoldenVectorsTest {
    private val goldenDir = File(System.getProperty("golden.dir") ?: "src/androidTest/assets/golden")
    private val assetsDir = File(System.getProperty("assets.dir") ?: "src/main/assets")

    private fun golden(): JSONObject {
        val file = File(goldenDir, "golden.json")
        if (!file.isFile) {
            val message = "no golden vectors at $file; run `tflite-pipeline export-android RUN_DIR` first"
            if (System.getProperty("golden.required") == "true") fail(message)
            assumeTrue(message, false)
        }
        return JSONObject(file.readText())
    }

    @Test
    fun kotlinInputBytesEqualThePipelinesAndTop3Agrees() {
        val golden = golden()
        val config = ModelConfig.parse(File(assetsDir, "model_config.json").readText())
        val labels = Labels.parse(File(assetsDir, config.labelsFile).readText())
        assertNull(Labels.check(labels, config.numClasses))
        val cases = golden.getJSONArray("cases")
        assertEquals(true, cases.length() > 0)
        var pixelCases = 0
        var metadataCases = 0
        for (i in 0 until cases.length()) {
            val case = cases.getJSONObject(i)
            val entry = config.entryFor(case.getString("model")) ?: throw AssertionError("no config for $case")
            val what = "${case.getString("model")} on ${case.getString("image")}"

            val rgb = File(goldenDir, case.getString("pixels")).readBytes()
            val argb = IntArray(rgb.size / 3) { p ->
                (0xFF shl 24) or ((rgb[3 * p].toInt() and 0xFF) shl 16) or
                    ((rgb[3 * p + 1].toInt() and 0xFF) shl 8) or (rgb[3 * p + 2].toInt() and 0xFF)
            }
            val input = ByteBuffer.allocate(entry.input.byteCount).order(ByteOrder.LITTLE_ENDIAN)
            val normalization = config.normalizationFor(entry.name)
            Preprocessing.fillInput(argb, entry.input, normalization, input)
            assertArrayEquals("input bytes of $what", File(goldenDir, case.getString("input")).readBytes(), input.array())
            // The same bytes from the model file alone (its metadata), as for a model without a config entry.
            val model = File(assetsDir, entry.file)
            val metadata = if (model.isFile) TfliteMetadata.read(model.readBytes()) else null
            if (metadata != null) {
                assertEquals("labels in $what's metadata", labels, metadata.labels)
                assertEquals("softmax or logits in $what's metadata", entry.outputsAreProbabilities,
                    metadata.outputsAreProbabilities)
                val fromFile = ByteBuffer.allocate(entry.input.byteCount).order(ByteOrder.LITTLE_ENDIAN)
                Preprocessing.fillInput(argb, entry.input, metadata.normalization!!, fromFile)
                assertArrayEquals("input bytes of $what from its metadata", input.array(), fromFile.array())
                metadataCases++
            }
            if (entry.input.type == TensorType.UINT8 && entry.input.scale == 1f && entry.input.zeroPoint == 0 &&
                normalization.kind == "raw") {
                assertArrayEquals("the pixels variant's input is the RGB bytes as they are ($what)", rgb, input.array())
                pixelCases++
            }

            val raw = ByteBuffer.wrap(File(goldenDir, case.getString("output")).readBytes()).order(ByteOrder.LITTLE_ENDIAN)
            val scores = Postprocessing.scores(raw, entry.output)
            val expected = case.getJSONArray("top3")
            val top3 = Postprocessing.topK(scores, 3)
            assertArrayEquals("top-3 of $what", IntArray(expected.length()) { expected.getInt(it) }, top3)
            val expectedScores = case.getJSONArray("top3_scores")
            for (k in top3.indices) {
                assertEquals("score $k of $what", expectedScores.getDouble(k).toFloat(), scores[top3[k]], 0f)
            }
            val predictions = Postprocessing.predictions(scores, labels, 3, entry.outputsAreProbabilities)
            assertEquals(case.getJSONArray("top3_labels").getString(0), predictions[0].label)
        }
        val pixelModels = config.models.count {
            it.input.type == TensorType.UINT8 && it.input.scale == 1f && it.input.zeroPoint == 0 &&
                config.normalizationFor(it.name).kind == "raw"
        }
        assertEquals("golden cases of the pixels variant (a byte copy)", pixelModels > 0, pixelCases > 0)
        println("golden vectors: ${cases.length()} cases, $pixelCases of the pixels variant, $metadataCases read from metadata")
    }
}
