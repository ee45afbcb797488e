package dev.tflitepipeline.demo.core

/**
 * Pure Kotlin (no Android imports): compiled and unit-tested on the JVM, and kept within Kotlin 1.3 so
 * the project's CI can also run it with Debian's compiler against the pipeline's golden vectors.
 */

/** The tensor element types the app feeds and reads. */
enum class TensorType(val label: String, val bytesPerElement: Int) {
    FLOAT32("float32", 4), INT8("int8", 1), UINT8("uint8", 1), INT16("int16", 2);

    val isQuantized: Boolean get() = this != FLOAT32

    /** Clamp range of an integer type. */
    val minValue: Int get() = when (this) { INT8 -> -128; INT16 -> -32768; else -> 0 }
    val maxValue: Int get() = when (this) { INT8 -> 127; INT16 -> 32767; else -> 255 }

    companion object {
        /** "float32" / "int8" / "uint8" / "int16" (any case), as in model_config.json and the pipeline's reports. */
        fun parse(name: String): TensorType = values().firstOrNull { it.label.equals(name, ignoreCase = true) }
            ?: throw IllegalArgumentException(
                "Unsupported tensor type '$name'; the app runs float32, int8, uint8 and int16 models.")
    }
}

/** Shape, type and affine quantization of one tensor, read from the interpreter (or model_config.json). */
class TensorSpec(shape: IntArray, val type: TensorType, val scale: Float, val zeroPoint: Int) {
    /** The shape with a dynamic batch (-1) read as 1. */
    val shape: IntArray = IntArray(shape.size) { i -> if (shape[i] < 0) 1 else shape[i] }

    init {
        require(!type.isQuantized || scale > 0f) {
            "A ${type.label} tensor needs a positive quantization scale; received $scale."
        }
    }

    val elementCount: Int get() = shape.fold(1) { product, dim -> product * dim }
    val byteCount: Int get() = elementCount * type.bytesPerElement

    /** Height, width and channels of an NHWC image input, or an error naming the shape. */
    fun imageSize(): Triple<Int, Int, Int> {
        require(shape.size == 4 && shape[0] == 1 && (shape[3] == 1 || shape[3] == 3)) {
            "Expected an image input [1, height, width, 1 or 3]; the model's input is ${shape.contentToString()}."
        }
        return Triple(shape[1], shape[2], shape[3])
    }
}
