package dev.tflitepipeline.demo.core

import java.io.File
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

/**
 * The metadata reader on the pipeline's fixture (tests/export/test_metadata.py writes it and checks its bytes):
 * a graph without operators whose metadata names it "fixture", 4x4 RGB in [-1, 1], labels cat/dog/bird, softmax.
 */
class TfliteMetadataTest {
    private fun fixture(): ByteArray {
        val dir = System.getProperty("fixtures.dir") ?: "src/test/resources"
        val file = File(dir, "metadata_only.tflite")
        if (!file.isFile) fail("missing fixture $file (set -Dfixtures.dir)")
        return file.readBytes()
    }

    private fun refused(bytes: ByteArray): String = try {
        TfliteMetadata.read(bytes)
        fail("damaged bytes were read")
        ""
    } catch (error: IllegalArgumentException) {
        error.message ?: ""
    }

    private fun indexOf(bytes: ByteArray, text: String): Int {
        val needle = text.toByteArray(Charsets.ISO_8859_1)
        return (0..bytes.size - needle.size).first { at -> needle.indices.all { bytes[at + it] == needle[it] } }
    }

    @Test
    fun readsNamesImageSizeNormalizationLabelsAndSoftmaxFromTheModelAlone() {
        val metadata = TfliteMetadata.read(fixture())!!
        assertEquals("fixture", metadata.name)
        assertEquals("A graph without operators: metadata only.", metadata.description)
        assertEquals("1", metadata.version)
        assertEquals(listOf(4, 4, 3), listOf(metadata.height, metadata.width, metadata.channels))
        assertEquals("minus_one_to_one", metadata.normalization!!.kind)
        assertEquals(listOf("cat", "dog", "bird"), metadata.labels)
        assertTrue(metadata.outputsAreProbabilities)
        assertEquals(listOf("labels.txt"), metadata.associatedFiles)
    }

    @Test
    fun schemaNormalizationMapsToTheAppsKindsAsThePipelineMapsIt() {
        assertEquals("minus_one_to_one", TfliteMetadata.fromMetadata(floatArrayOf(127.5f), floatArrayOf(127.5f)).kind)
        assertEquals("zero_to_one", TfliteMetadata.fromMetadata(floatArrayOf(0f, 0f, 0f), floatArrayOf(255f, 255f, 255f)).kind)
        assertEquals("raw", TfliteMetadata.fromMetadata(floatArrayOf(0f), floatArrayOf(1f)).kind)
        val imagenet = TfliteMetadata.fromMetadata(floatArrayOf(123.675f, 116.28f, 103.53f), floatArrayOf(58.395f, 57.12f, 57.375f))
        assertEquals("mean_std", imagenet.kind)
        assertArrayEquals(floatArrayOf(0.485f, 0.456f, 0.406f), imagenet.mean, 1e-6f)
        assertArrayEquals(floatArrayOf(0.229f, 0.224f, 0.225f), imagenet.std, 1e-6f)
    }

    @Test
    fun aFileThatIsNotATfliteIsRefused() {
        assertTrue(refused("not a model at all".toByteArray()).contains("TFL3"))
    }

    @Test
    fun damagedMetadataIsAClearErrorNeverAnIndexOutOfBounds() {
        val bytes = fixture()
        val identifier = bytes.copyOf()
        identifier[indexOf(bytes, "M001")] = 'X'.toByte()
        assertTrue(refused(identifier).contains("M001"))
        for (length in listOf(bytes.size / 2, bytes.size / 4, 40)) {
            assertTrue(refused(bytes.copyOf(length)).startsWith("The model has damaged TFLite metadata"))
        }
    }

    @Test
    fun labelsNamedByTheMetadataButNotPackedInAreAClearError() {
        val bytes = fixture()
        val noArchive = bytes.copyOf()
        val end = (bytes.size - 22 downTo 0).first { at ->
            bytes[at] == 0x50.toByte() && bytes[at + 1] == 0x4b.toByte() && bytes[at + 2] == 5.toByte() && bytes[at + 3] == 6.toByte()
        }
        noArchive[end] = 0
        assertTrue(refused(noArchive).contains("'labels.txt' as the labels"))
    }

    private val config = ModelConfig.parse("""
        {"format": "tflite_pipeline.model_config/1", "labels_file": "labels.txt", "num_classes": 3,
         "preprocessing": {"normalization": "zero_to_one"},
         "models": [{"file": "models/listed.tflite", "outputs_are_probabilities": true,
                     "input": {"shape": [1, 4, 4, 3], "dtype": "float32", "scale": null, "zero_point": null},
                     "output": {"shape": [1, 3], "dtype": "float32", "scale": null, "zero_point": null}}]}
    """)
    private val configLabels = listOf("a", "b", "c")

    @Test
    fun aModelWithoutAConfigEntryRunsFromItsMetadata() {
        for (withConfig in listOf(true, false)) {
            val contract = ModelContract.resolve("other.tflite", TensorType.UINT8, config.takeIf { withConfig },
                configLabels.takeIf { withConfig }) { TfliteMetadata.read(fixture()) }
            assertEquals("TFLite metadata", contract.source)
            assertEquals(listOf("cat", "dog", "bird"), contract.labels)
            assertEquals("minus_one_to_one", contract.normalization.kind)
            assertTrue(contract.outputsAreProbabilities)
        }
    }

    @Test
    fun aConfigEntryWinsOverTheMetadataAndWithNeitherTheErrorSaysWhatToDo() {
        val listed = ModelContract.resolve("listed.tflite", TensorType.FLOAT32, config, configLabels) {
            fail("the metadata was read for a model with a config entry")
            null
        }
        assertEquals(ModelConfig.FILE_NAME, listed.source)
        assertEquals(configLabels, listed.labels)
        assertEquals("zero_to_one", listed.normalization.kind)
        val unlisted = ModelContract.resolve("plain.tflite", TensorType.FLOAT32, config, configLabels) { null }
        assertEquals(false, unlisted.outputsAreProbabilities)  // shown as logits -> softmax, as before
        try {
            ModelContract.resolve("plain.tflite", TensorType.FLOAT32, null, null) { null }
            fail("a model with neither config nor metadata was accepted")
        } catch (error: IllegalArgumentException) {
            assertTrue(error.message!!.contains("no model_config.json entry and no TFLite metadata"))
        }
    }
}
