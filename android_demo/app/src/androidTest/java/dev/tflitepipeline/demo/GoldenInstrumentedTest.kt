package dev.tflitepipeline.demo

import android.graphics.BitmapFactory
import androidx.test.ext.junit.runners.AndroidJUnit4
import androidx.test.platform.app.InstrumentationRegistry
import dev.tflitepipeline.demo.core.Labels
import dev.tflitepipeline.demo.core.ModelConfig
import dev.tflitepipeline.demo.core.Postprocessing
import dev.tflitepipeline.demo.core.TensorType
import java.nio.ByteBuffer
import java.nio.ByteOrder
import org.json.JSONObject
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test
import org.junit.runner.RunWith

/**
 * On a device: every golden image (androidTest assets, written by `tflite-pipeline export-android`) through
 * the real Classifier and LiteRT. The input bytes must equal the pipeline's exactly; the top-1 must match
 * and every top-3 score may differ from the pipeline's x86 LiteRT by at most two output steps (ARM kernels
 * may round differently by one unit in the last place).
 */
@RunWith(AndroidJUnit4::class)
class GoldenInstrumentedTest {
    private val instrumentation = InstrumentationRegistry.getInstrumentation()
    private val appAssets = instrumentation.targetContext.assets
    private val testAssets = instrumentation.context.assets

    private fun text(assets: android.content.res.AssetManager, path: String): String =
        assets.open(path).bufferedReader().use { it.readText() }

    private fun bytes(path: String): ByteArray = testAssets.open("golden/$path").use { it.readBytes() }

    @Test
    fun goldenImagesClassifyAsInThePipeline() {
        val config = ModelConfig.parse(text(appAssets, Classifier.CONFIG_FILE))
        val labels = Labels.parse(text(appAssets, config.labelsFile))
        val cases = JSONObject(text(testAssets, "golden/golden.json")).getJSONArray("cases")
        assertTrue("no golden cases", cases.length() > 0)
        for (i in 0 until cases.length()) {
            val case = cases.getJSONObject(i)
            val what = "${case.getString("model")} on ${case.getString("image")}"
            Classifier(appAssets, case.getString("model"), config, labels, 1).use { classifier ->
                val bitmap = BitmapFactory.decodeStream(testAssets.open("golden/${case.getString("image")}"))
                val (height, width) = classifier.inputSize
                assertEquals("golden image size for $what", Pair(width, height), Pair(bitmap.width, bitmap.height))
                val pixels = IntArray(width * height)
                bitmap.getPixels(pixels, 0, width, 0, 0, width, height)
                val answer = classifier.classifyPixels(pixels)
                assertArrayEquals("input bytes of $what", bytes(case.getString("input")), classifier.lastInputBytes())
                assertEquals("top-1 of $what", case.getJSONArray("top3").getInt(0), answer.top[0].index)

                val output = classifier.output
                val mine = Postprocessing.scores(ByteBuffer.wrap(classifier.lastOutputBytes()).order(ByteOrder.nativeOrder()), output)
                val expected = Postprocessing.scores(ByteBuffer.wrap(bytes(case.getString("output"))).order(ByteOrder.LITTLE_ENDIAN), output)
                val step = if (output.type == TensorType.FLOAT32) 1e-4f else output.scale
                val top3 = case.getJSONArray("top3")
                for (k in 0 until top3.length()) {
                    val index = top3.getInt(k)
                    assertEquals("score of class $index for $what", expected[index], mine[index], 2 * step)
                }
            }
        }
    }
}
