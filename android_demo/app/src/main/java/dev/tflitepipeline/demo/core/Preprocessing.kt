package dev.tflitepipeline.demo.core

import java.nio.ByteBuffer
import kotlin.math.floor

/** Pixel normalization, as written by the pipeline in model_config.json (`preprocessing.normalization`). */
class Normalization(val kind: String, val mean: FloatArray = FloatArray(0), val std: FloatArray = FloatArray(0)) {
    init {
        require(kind in KINDS) { "Unknown normalization '$kind'; expected one of $KINDS." }
        require(kind != "mean_std" || (mean.isNotEmpty() && mean.size == std.size)) {
            "mean_std needs as many std values as mean values; received ${mean.size} and ${std.size}."
        }
    }

    /** One 0..255 channel value -> model input, in float32 exactly like the pipeline's numpy code. */
    fun apply(pixel: Int, channel: Int): Float = when (kind) {
        "minus_one_to_one" -> pixel / 127.5f - 1f
        "zero_to_one" -> pixel / 255f
        "raw" -> pixel.toFloat()
        else -> {
            val c = if (mean.size == 1) 0 else channel
            (pixel / 255f - mean[c]) / std[c]
        }
    }

    companion object {
        val KINDS = listOf("minus_one_to_one", "zero_to_one", "raw", "mean_std")
    }
}

object Preprocessing {
    /**
     * Float -> integer tensor value: round_half_up(x / scale) + zeroPoint, clamped to the type. Computed in
     * float32 as TensorFlow's fake quantization (and the pipeline's `tflite_pipeline.tflite.interpreter.quantize`) does, shifting by the
     * range's low end and multiplying by levels / range, so that pixels on an exact tie (all of them under
     * minus_one_to_one with scale 2/255) get the integer the QAT model trained with.
     */
    fun quantize(x: Float, scale: Float, zeroPoint: Int, type: TensorType): Int {
        val levels = (type.maxValue - type.minValue).toFloat()
        val perStep = levels / (scale * levels)
        val nudgedLow = (type.minValue - zeroPoint) * scale
        val q = floor((x - nudgedLow) * perStep + 0.5f) + type.minValue  // clamped as a float, as numpy does
        return q.coerceIn(type.minValue.toFloat(), type.maxValue.toFloat()).toInt()
    }

    /** Pillow's gray conversion in integers: L = (19595 R + 38470 G + 7471 B + 32768) >> 16. */
    fun luma(r: Int, g: Int, b: Int): Int = (r * 19595 + g * 38470 + b * 7471 + 0x8000) shr 16

    /**
     * Write `argb` pixels (Android's Bitmap.getPixels layout, row-major, already at the input's width and
     * height) into `out` as the input tensor: NHWC, RGB or gray, normalized, quantized when the tensor is
     * integer. `out` must hold exactly `input.byteCount` bytes in native order; it is rewound.
     */
    fun fillInput(argb: IntArray, input: TensorSpec, normalization: Normalization, out: ByteBuffer) {
        val (height, width, channels) = input.imageSize()
        require(argb.size == height * width) {
            "Expected ${width}x$height = ${height * width} pixels for the model input; received ${argb.size}."
        }
        require(out.capacity() == input.byteCount) {
            "The input buffer holds ${out.capacity()} bytes; the input tensor needs ${input.byteCount}."
        }
        out.rewind()
        for (pixel in argb) {
            val r = (pixel shr 16) and 0xFF
            val g = (pixel shr 8) and 0xFF
            val b = pixel and 0xFF
            if (channels == 1) {
                put(out, normalization.apply(luma(r, g, b), 0), input)
            } else {
                put(out, normalization.apply(r, 0), input)
                put(out, normalization.apply(g, 1), input)
                put(out, normalization.apply(b, 2), input)
            }
        }
        out.rewind()
    }

    private fun put(out: ByteBuffer, x: Float, input: TensorSpec) {
        when (input.type) {
            TensorType.FLOAT32 -> out.putFloat(x)
            TensorType.INT16 -> out.putShort(quantize(x, input.scale, input.zeroPoint, input.type).toShort())
            else -> out.put(quantize(x, input.scale, input.zeroPoint, input.type).toByte())
        }
    }
}
