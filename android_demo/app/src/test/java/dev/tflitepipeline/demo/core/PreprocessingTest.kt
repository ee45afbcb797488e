package dev.tflitepipeline.demo.core

import java.nio.ByteBuffer
import java.nio.ByteOrder
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

class PreprocessingTest {
    private val int8 = TensorSpec(intArrayOf(1, 1, 2, 3), TensorType.INT8, 1f / 127.5f, -1)
    private val int16Scale = 3.0518509447574615e-05f  // an int16x8 model's input scale for [-1, 1] (1 / 32767)

    private fun argb(r: Int, g: Int, b: Int): Int = (0xFF shl 24) or (r shl 16) or (g shl 8) or b

    @Test
    fun quantizeRoundsHalfUpLikeThePipeline() {
        assertEquals(1, Preprocessing.quantize(0.5f, 1f, 0, TensorType.INT8))
        assertEquals(0, Preprocessing.quantize(-0.5f, 1f, 0, TensorType.INT8))
        assertEquals(-1, Preprocessing.quantize(-0.51f, 1f, 0, TensorType.INT8))
    }

    @Test
    fun quantizeGivesEveryTiedPixelTheIntegerTensorFlowsFakeQuantGives() {
        // minus_one_to_one with a [-1, 1] input range (scale 2/255, zero point 0): x / scale = p - 127.5 exactly,
        // and tf.quantization.fake_quant_with_min_max_vars gives p - 127 (saturated); x / scale in float32 does not
        val minusOneToOne = Normalization("minus_one_to_one")
        for (p in 0..255) {
            assertEquals("pixel $p", minOf(p - 127, 127),
                Preprocessing.quantize(minusOneToOne.apply(p, 0), 2f / 255f, 0, TensorType.INT8))
        }
    }

    @Test
    fun quantizeClampsToTheTypeRange() {
        assertEquals(127, Preprocessing.quantize(1000f, 1f, 0, TensorType.INT8))
        assertEquals(-128, Preprocessing.quantize(-1000f, 1f, 0, TensorType.INT8))
        assertEquals(255, Preprocessing.quantize(1000f, 1f, 0, TensorType.UINT8))
        assertEquals(0, Preprocessing.quantize(-1000f, 1f, 0, TensorType.UINT8))
    }

    @Test
    fun quantizeSaturatesInt16() {
        assertEquals(32767, Preprocessing.quantize(2f, int16Scale, 0, TensorType.INT16))
        assertEquals(-32768, Preprocessing.quantize(-2f, int16Scale, 0, TensorType.INT16))
        // far enough out that the steps overflow an Int: still saturated, not wrapped
        assertEquals(32767, Preprocessing.quantize(1e6f, int16Scale, 0, TensorType.INT16))
        assertEquals(-32768, Preprocessing.quantize(-1e6f, int16Scale, 0, TensorType.INT16))
    }

    @Test
    fun quantizeRoundsInt16HalfUpLikeThePipeline() {
        // numpy: tflite_pipeline.tflite.interpreter.quantize(np.float32(x), np.float32(3.0518509447574615e-05), 0, np.int16)
        assertEquals(-32767, Preprocessing.quantize(-1f, int16Scale, 0, TensorType.INT16))
        assertEquals(32767, Preprocessing.quantize(1f, int16Scale, 0, TensorType.INT16))
        assertEquals(16384, Preprocessing.quantize(0.5f, int16Scale, 0, TensorType.INT16))    // 16383.5: up
        assertEquals(-16383, Preprocessing.quantize(-0.5f, int16Scale, 0, TensorType.INT16))  // -16383.5: up
        assertEquals(0, Preprocessing.quantize(1.5e-5f, int16Scale, 0, TensorType.INT16))
        assertEquals(1, Preprocessing.quantize(1.52e-5f, int16Scale, 0, TensorType.INT16))    // 0.498 steps in float32
        assertEquals(6, Preprocessing.quantize(0.5f, 1f, 5, TensorType.INT16))
        assertEquals(4, Preprocessing.quantize(-0.51f, 1f, 5, TensorType.INT16))
    }

    @Test
    fun lumaMatchesPillowsIntegerFormula() {
        assertEquals(0, Preprocessing.luma(0, 0, 0))
        assertEquals(255, Preprocessing.luma(255, 255, 255))
        assertEquals(76, Preprocessing.luma(255, 0, 0))   // Pillow: Image.new("RGB", (1, 1), (255, 0, 0)).convert("L")
        assertEquals(150, Preprocessing.luma(0, 255, 0))
        assertEquals(29, Preprocessing.luma(0, 0, 255))
    }

    @Test
    fun minusOneToOneMapsTheEndsOfTheRange() {
        val n = Normalization("minus_one_to_one")
        assertEquals(-1f, n.apply(0, 0), 0f)
        assertEquals(1f, n.apply(255, 0), 0f)
    }

    @Test
    fun meanStdUsesOneValuePerChannel() {
        val n = Normalization("mean_std", floatArrayOf(0.5f, 0.25f, 0f), floatArrayOf(0.5f, 0.25f, 1f))
        assertEquals(1f, n.apply(255, 0), 1e-6f)
        assertEquals(3f, n.apply(255, 1), 1e-6f)
        assertEquals(0f, n.apply(0, 2), 0f)
    }

    @Test
    fun fillInputWritesNhwcRgbQuantized() {
        val out = ByteBuffer.allocate(int8.byteCount).order(ByteOrder.nativeOrder())
        Preprocessing.fillInput(intArrayOf(argb(0, 255, 128), argb(255, 0, 127)), int8,
            Normalization("minus_one_to_one"), out)
        val bytes = ByteArray(6)
        out.get(bytes)
        // numpy: tflite_pipeline.tflite.interpreter.quantize(p / np.float32(127.5) - 1, np.float32(1 / 127.5), -1, np.int8); x / scale is a
        // tie for every pixel here (255 -> 127.5 - 1), and ties round up
        assertArrayEquals(byteArrayOf(-128, 127, 0, 127, -128, -1), bytes)
    }

    @Test
    fun fillInputConvertsToGrayForOneChannelModels() {
        val gray = TensorSpec(intArrayOf(1, 1, 1, 1), TensorType.UINT8, 1f, 0)
        val out = ByteBuffer.allocate(1)
        Preprocessing.fillInput(intArrayOf(argb(255, 0, 0)), gray, Normalization("raw"), out)
        assertEquals(76, out.get(0).toInt() and 0xFF)
    }

    @Test
    fun fillInputWritesFloat32InNativeOrder() {
        val spec = TensorSpec(intArrayOf(-1, 1, 1, 3), TensorType.FLOAT32, 0f, 0)
        val out = ByteBuffer.allocate(spec.byteCount).order(ByteOrder.nativeOrder())
        Preprocessing.fillInput(intArrayOf(argb(0, 255, 51)), spec, Normalization("zero_to_one"), out)
        assertEquals(0f, out.getFloat(0), 0f)
        assertEquals(1f, out.getFloat(4), 0f)
        assertEquals(0.2f, out.getFloat(8), 1e-7f)
    }

    @Test
    fun fillInputWritesInt16InTheBuffersOrder() {
        val spec = TensorSpec(intArrayOf(1, 1, 2, 3), TensorType.INT16, int16Scale, 0)
        assertEquals(12, spec.byteCount)
        val pixels = intArrayOf(argb(0, 255, 128), argb(127, 1, 51))
        // numpy: quantize(p / np.float32(127.5) - 1, np.float32(3.0518509447574615e-05), 0, np.int16)
        val expected = shortArrayOf(-32767, 32767, 129, -128, -32510, -19660)
        val native = ByteBuffer.allocate(spec.byteCount).order(ByteOrder.nativeOrder())
        Preprocessing.fillInput(pixels, spec, Normalization("minus_one_to_one"), native)
        assertArrayEquals(expected, ShortArray(expected.size) { native.getShort(2 * it) })
        // little-endian bytes, as .tobytes() writes the golden input on x86 and ARM
        val little = ByteBuffer.allocate(spec.byteCount).order(ByteOrder.LITTLE_ENDIAN)
        Preprocessing.fillInput(pixels, spec, Normalization("minus_one_to_one"), little)
        assertArrayEquals(byteArrayOf(1, -128, -1, 127, -127, 0, -128, -1, 2, -127, 52, -77), little.array())
    }

    @Test
    fun fillInputRejectsAWrongPixelCount() {
        try {
            Preprocessing.fillInput(IntArray(3), int8, Normalization("raw"), ByteBuffer.allocate(int8.byteCount))
            fail("expected an error")
        } catch (error: IllegalArgumentException) {
            assertTrue(error.message!!.contains("2x1 = 2 pixels"))
        }
    }

    @Test
    fun imageSizeRejectsANonImageInput() {
        try {
            TensorSpec(intArrayOf(1, 10), TensorType.FLOAT32, 0f, 0).imageSize()
            fail("expected an error")
        } catch (error: IllegalArgumentException) {
            assertTrue(error.message!!.contains("[1, 10]"))
        }
    }
}
