package dev.tflitepipeline.demo

import android.content.res.AssetManager
import android.graphics.Bitmap
import android.os.SystemClock
import dev.tflitepipeline.demo.core.Labels
import dev.tflitepipeline.demo.core.ModelConfig
import dev.tflitepipeline.demo.core.ModelContract
import dev.tflitepipeline.demo.core.Normalization
import dev.tflitepipeline.demo.core.Postprocessing
import dev.tflitepipeline.demo.core.Prediction
import dev.tflitepipeline.demo.core.Preprocessing
import dev.tflitepipeline.demo.core.TensorSpec
import dev.tflitepipeline.demo.core.TensorType
import dev.tflitepipeline.demo.core.TfliteMetadata
import java.io.Closeable
import java.io.FileInputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.MappedByteBuffer
import java.nio.channels.FileChannel
import org.tensorflow.lite.DataType
import org.tensorflow.lite.Interpreter
import org.tensorflow.lite.Tensor

/** One classification: top-3, the interpreter's time and the whole bitmap-to-answer time. */
class Classification(val top: List<Prediction>, val inferenceMs: Double, val totalMs: Double)

/**
 * A `.tflite` from `assets/models/` in the LiteRT interpreter (XNNPACK on the CPU, `threads` threads; XNNPACK
 * takes no int16 ops, so an int16x8 model runs on LiteRT's builtin kernels).
 * Everything about the input comes from the model: shape, dtype, scale and zero point are read from the
 * input tensor and the buffer is sized from its byte count; only normalization and labels come from the
 * exported model_config.json and labels.txt, or, for a model without a config entry, from its own TFLite
 * metadata (`ModelContract.resolve`). Not thread-safe: use it from one background thread, and close it
 * before loading another model.
 */
class Classifier(
    assets: AssetManager,
    val fileName: String,
    config: ModelConfig?,
    configLabels: List<String>?,
    threads: Int
) : Closeable {
    private val interpreter: Interpreter
    val input: TensorSpec
    val output: TensorSpec
    private val normalization: Normalization
    private val labels: List<String>
    private val outputsAreProbabilities: Boolean
    /** Where the normalization and labels came from: model_config.json or the model's TFLite metadata. */
    val contractSource: String
    private val inputBuffer: ByteBuffer
    private val outputBuffer: ByteBuffer

    init {
        interpreter = Interpreter(mapAsset(assets, "$MODELS_DIR/$fileName"), Interpreter.Options().setNumThreads(threads))
        try {
            input = spec(interpreter.getInputTensor(0))
            output = spec(interpreter.getOutputTensor(0))
            input.imageSize() // fails here, with the shape, for a model that does not take an image
            val contract = ModelContract.resolve(fileName, input.type, config, configLabels) {
                TfliteMetadata.read(assets.open("$MODELS_DIR/$fileName").use { it.readBytes() })
            }
            normalization = contract.normalization
            labels = contract.labels
            outputsAreProbabilities = contract.outputsAreProbabilities
            contractSource = contract.source
            Labels.check(labels, output.elementCount)?.let { throw IllegalArgumentException(it) }
            inputBuffer = ByteBuffer.allocateDirect(interpreter.getInputTensor(0).numBytes()).order(ByteOrder.nativeOrder())
            outputBuffer = ByteBuffer.allocateDirect(interpreter.getOutputTensor(0).numBytes()).order(ByteOrder.nativeOrder())
        } catch (error: RuntimeException) {
            interpreter.close()
            throw error
        }
    }

    /** Input height and width: what the bitmap is scaled to. */
    val inputSize: Pair<Int, Int> get() = input.imageSize().let { Pair(it.first, it.second) }

    fun classify(bitmap: Bitmap): Classification {
        val start = SystemClock.elapsedRealtimeNanos()
        val (height, width, _) = input.imageSize()
        // Stretch to the input size with bilinear filtering (model_config.json: resize_policy "stretch").
        val scaled = if (bitmap.width == width && bitmap.height == height) bitmap
        else Bitmap.createScaledBitmap(bitmap, width, height, true)
        val pixels = IntArray(width * height)
        scaled.getPixels(pixels, 0, width, 0, 0, width, height)
        return classifyPixels(pixels, start)
    }

    /** Classify ARGB pixels already at the input size (the golden tests call this directly). */
    fun classifyPixels(argb: IntArray, start: Long = SystemClock.elapsedRealtimeNanos()): Classification {
        Preprocessing.fillInput(argb, input, normalization, inputBuffer)
        outputBuffer.rewind()
        val before = SystemClock.elapsedRealtimeNanos()
        interpreter.run(inputBuffer, outputBuffer)
        val after = SystemClock.elapsedRealtimeNanos()
        val scores = Postprocessing.scores(outputBuffer, output)
        val top = Postprocessing.predictions(scores, labels, 3, outputsAreProbabilities)
        val end = SystemClock.elapsedRealtimeNanos()
        return Classification(top, (after - before) / 1e6, (end - start) / 1e6)
    }

    /** The bytes the model was last fed (for the golden tests). */
    fun lastInputBytes(): ByteArray = copyOf(inputBuffer)

    /** The raw output tensor of the last run. */
    fun lastOutputBytes(): ByteArray = copyOf(outputBuffer)

    private fun copyOf(buffer: ByteBuffer): ByteArray {
        val copy = ByteArray(buffer.capacity())
        buffer.rewind()
        buffer.get(copy)
        buffer.rewind()
        return copy
    }

    override fun close() = interpreter.close()

    companion object {
        const val MODELS_DIR = "models"
        const val CONFIG_FILE = ModelConfig.FILE_NAME

        private fun spec(tensor: Tensor): TensorSpec {
            val type = when (tensor.dataType()) {
                DataType.FLOAT32 -> TensorType.FLOAT32
                DataType.INT8 -> TensorType.INT8
                DataType.UINT8 -> TensorType.UINT8
                DataType.INT16 -> TensorType.INT16
                else -> throw IllegalArgumentException(
                    "Tensor '${tensor.name()}' is ${tensor.dataType()}; the app runs float32, int8, uint8 and int16 models.")
            }
            val quantization = tensor.quantizationParams()
            return TensorSpec(tensor.shape(), type, quantization.scale, quantization.zeroPoint)
        }

        /** Memory-map an uncompressed asset (build.gradle.kts sets noCompress for .tflite). */
        private fun mapAsset(assets: AssetManager, path: String): MappedByteBuffer =
            assets.openFd(path).use { fd ->
                FileInputStream(fd.fileDescriptor).use { stream ->
                    stream.channel.map(FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength)
                }
            }
    }
}
