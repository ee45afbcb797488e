package dev.tflitepipeline.demo.core

import java.nio.ByteBuffer
import java.nio.ByteOrder
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

class PostprocessingTest {
    @Test
    fun scoresDequantizeInt8WithScaleAndZeroPoint() {
        val spec = TensorSpec(intArrayOf(1, 3), TensorType.INT8, 1f / 256f, -128)
        val values = Postprocessing.scores(ByteBuffer.wrap(byteArrayOf(-128, 0, 127)), spec)
        assertArrayEquals(floatArrayOf(0f, 0.5f, 255f / 256f), values, 0f)
    }

    @Test
    fun scoresDequantizeUint8AsUnsigned() {
        val spec = TensorSpec(intArrayOf(1, 2), TensorType.UINT8, 0.5f, 0)
        assertArrayEquals(floatArrayOf(0f, 127.5f), Postprocessing.scores(ByteBuffer.wrap(byteArrayOf(0, -1)), spec), 0f)
    }

    @Test
    fun scoresDequantizeInt16InTheBuffersOrder() {
        val spec = TensorSpec(intArrayOf(1, 4), TensorType.INT16, 3.0517578125e-05f, 0)  // an int16x8 softmax: 2^-15
        assertEquals(8, spec.byteCount)
        val raw = ByteBuffer.allocate(spec.byteCount).order(ByteOrder.LITTLE_ENDIAN)
        for (q in intArrayOf(-32768, 0, 16384, 32767)) raw.putShort(q.toShort())
        assertArrayEquals(floatArrayOf(-1f, 0f, 0.5f, 32767f / 32768f), Postprocessing.scores(raw, spec), 0f)
        val shifted = TensorSpec(intArrayOf(1, 1), TensorType.INT16, 0.5f, 3)
        val one = ByteBuffer.allocate(2).order(ByteOrder.nativeOrder()).putShort(-1)
        assertArrayEquals(floatArrayOf(-2f), Postprocessing.scores(one, shifted), 0f)
    }

    @Test
    fun scoresReadFloat32() {
        val spec = TensorSpec(intArrayOf(1, 2), TensorType.FLOAT32, 0f, 0)
        val raw = ByteBuffer.allocate(8).order(ByteOrder.nativeOrder())
        raw.putFloat(0.25f).putFloat(0.75f)
        assertArrayEquals(floatArrayOf(0.25f, 0.75f), Postprocessing.scores(raw, spec), 0f)
    }

    @Test
    fun topKBreaksTiesTowardsTheLowerIndex() {
        assertArrayEquals(intArrayOf(1, 3, 0), Postprocessing.topK(floatArrayOf(0.1f, 0.4f, 0.1f, 0.4f), 3))
        assertArrayEquals(intArrayOf(0), Postprocessing.topK(floatArrayOf(1f), 3))
    }

    @Test
    fun softmaxSumsToOneAndKeepsTheOrder() {
        val p = Postprocessing.softmax(floatArrayOf(1f, 3f, 2f))
        assertEquals(1.0, p.sum().toDouble(), 1e-6)
        assertArrayEquals(intArrayOf(1, 2, 0), Postprocessing.topK(p, 3))
    }

    @Test
    fun predictionsNameTheLabels() {
        val top = Postprocessing.predictions(floatArrayOf(0.2f, 0.7f, 0.1f), listOf("a", "b", "c"), 2, true)
        assertEquals(listOf("b", "a"), top.map { it.label })
        assertEquals(0.7f, top[0].score, 0f)
    }

    @Test
    fun aLabelCountThatDoesNotMatchTheOutputIsAnErrorMessage() {
        assertTrue(Labels.check(listOf("a", "b"), 3)!!.contains("2 names but the model outputs 3 scores"))
        assertNull(Labels.check(listOf("a", "b", "c"), 3))
        try {
            Postprocessing.predictions(floatArrayOf(1f, 2f, 3f), listOf("a"), 3, false)
            fail("expected an error")
        } catch (error: IllegalArgumentException) {
            assertTrue(error.message!!.contains("1 names"))
        }
    }

    @Test
    fun labelsSkipBlankLinesAndTrim() {
        assertEquals(listOf("cat", "dog"), Labels.parse(" cat \n\ndog\r\n"))
    }
}
