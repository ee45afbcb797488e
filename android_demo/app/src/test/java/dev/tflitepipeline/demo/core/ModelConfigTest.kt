package dev.tflitepipeline.demo.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

class ModelConfigTest {
    private val json = """
        {"format": "tflite_pipeline.model_config/1", "labels_file": "labels.txt", "num_classes": 2,
         "preprocessing": {"normalization": "mean_std", "mean": [0.5], "std": [0.25]},
         "models": [{"file": "models/m_int8.tflite", "outputs_are_probabilities": true,
                     "input": {"shape": [-1, 8, 8, 3], "dtype": "int8", "scale": 0.5, "zero_point": -1},
                     "output": {"shape": [-1, 2], "dtype": "float32", "scale": null, "zero_point": null}}]}
    """

    @Test
    fun parsesTheExportedContract() {
        val config = ModelConfig.parse(json)
        assertEquals("labels.txt", config.labelsFile)
        assertEquals(2, config.numClasses)
        assertEquals("mean_std", config.normalization.kind)
        val entry = config.entryFor("m_int8.tflite")!!
        assertEquals(TensorType.INT8, entry.input.type)
        assertEquals(Triple(8, 8, 3), entry.input.imageSize())
        assertEquals(-1, entry.input.zeroPoint)
        assertEquals(8 * 8 * 3, entry.input.byteCount)
        assertTrue(entry.outputsAreProbabilities)
        assertNull(config.entryFor("other.tflite"))
    }

    @Test
    fun parsesAnInt16x8Model() {
        val int16 = json.replace(""""dtype": "int8", "scale": 0.5, "zero_point": -1""",
            """"dtype": "int16", "scale": 3.0518509447574615e-05, "zero_point": 0""")
            .replace(""""dtype": "float32", "scale": null, "zero_point": null""",
                """"dtype": "int16", "scale": 3.0517578125e-05, "zero_point": 0""")
        val entry = ModelConfig.parse(int16).entryFor("m_int8.tflite")!!
        assertEquals(TensorType.INT16, entry.input.type)
        assertEquals(3.0518509447574615e-05f, entry.input.scale, 0f)
        assertEquals(0, entry.input.zeroPoint)
        assertEquals(8 * 8 * 3 * 2, entry.input.byteCount)
        assertEquals(TensorType.INT16, entry.output.type)
        assertEquals(2 * 2, entry.output.byteCount)
        assertEquals(TensorType.INT16, TensorType.parse("INT16"))
    }

    @Test
    fun anUnsupportedDtypeIsNamed() {
        try {
            ModelConfig.parse(json.replace(""""dtype": "int8"""", """"dtype": "int32""""))
            fail("expected an error")
        } catch (error: IllegalArgumentException) {
            assertTrue(error.message!!, error.message!!.contains("'int32'"))
        }
    }

    @Test
    fun aMissingFieldIsNamed() {
        try {
            ModelConfig.parse(json.replace("\"num_classes\": 2,", ""))
            fail("expected an error")
        } catch (error: IllegalArgumentException) {
            assertTrue(error.message!!, error.message!!.contains("num_classes"))
        }
    }

    @Test
    fun anotherFormatIsRefused() {
        try {
            ModelConfig.parse(json.replace("model_config/1", "model_config/9"))
            fail("expected an error")
        } catch (error: IllegalArgumentException) {
            assertTrue(error.message!!.contains("model_config/9"))
        }
    }
}
