package dev.tflitepipeline.demo.core

import java.nio.ByteBuffer
import kotlin.math.exp

/** One class in a top-k answer: output index, label and score (probability when the model has softmax). */
class Prediction(val index: Int, val label: String, val score: Float) {
    override fun toString(): String = "$label (${"%.3f".format(score)})"
}

object Postprocessing {
    /** Raw output tensor bytes -> float scores: (q - zeroPoint) * scale for integer tensors. */
    fun scores(raw: ByteBuffer, output: TensorSpec): FloatArray {
        require(raw.capacity() == output.byteCount) {
            "The output buffer holds ${raw.capacity()} bytes; the output tensor has ${output.byteCount}."
        }
        raw.rewind()
        val values = FloatArray(output.elementCount) {
            when (output.type) {
                TensorType.FLOAT32 -> raw.float
                TensorType.INT8 -> (raw.get().toInt() - output.zeroPoint) * output.scale
                TensorType.UINT8 -> ((raw.get().toInt() and 0xFF) - output.zeroPoint) * output.scale
                TensorType.INT16 -> (raw.short.toInt() - output.zeroPoint) * output.scale
            }
        }
        raw.rewind()
        return values
    }

    /** Indices of the k highest scores, best first; ties go to the lower index (as the pipeline's numpy). */
    fun topK(scores: FloatArray, k: Int): IntArray {
        val order = scores.indices.sortedWith(compareByDescending<Int> { scores[it] }.thenBy { it })
        return order.take(minOf(k, scores.size)).toIntArray()
    }

    fun softmax(logits: FloatArray): FloatArray {
        val peak = logits.fold(Float.NEGATIVE_INFINITY) { best, x -> if (x > best) x else best }
        val e = DoubleArray(logits.size) { exp((logits[it] - peak).toDouble()) }
        val sum = e.sum()
        return FloatArray(logits.size) { (e[it] / sum).toFloat() }
    }

    /** Top-k with labels; scores are probabilities (softmax applied unless the model already ends in one). */
    fun predictions(scores: FloatArray, labels: List<String>, k: Int, areProbabilities: Boolean): List<Prediction> {
        Labels.check(labels, scores.size)?.let { throw IllegalArgumentException(it) }
        val probabilities = if (areProbabilities) scores else softmax(scores)
        return topK(scores, k).map { Prediction(it, labels[it], probabilities[it]) }
    }
}

object Labels {
    /** One class name per line in output-index order; blank lines are ignored. */
    fun parse(text: String): List<String> = text.lines().map { it.trim() }.filter { it.isNotEmpty() }

    /** An error message when the labels cannot name the model's outputs, else null. */
    fun check(labels: List<String>, numClasses: Int): String? = when {
        labels.size != numClasses ->
            "labels.txt has ${labels.size} names but the model outputs $numClasses scores; export the labels " +
                "with the model (tflite-pipeline export-android)."
        labels.toSet().size != labels.size -> "labels.txt repeats a class name; names must be unique."
        else -> null
    }
}
