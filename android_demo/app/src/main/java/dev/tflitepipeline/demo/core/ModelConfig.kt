package dev.tflitepipeline.demo.core

import org.json.JSONException
import org.json.JSONObject

/** One exported model: its asset path and the I/O contract the pipeline verified. */
class ModelEntry(
    val file: String,
    val input: TensorSpec,
    val output: TensorSpec,
    val outputsAreProbabilities: Boolean,
    /** This model's own normalization (the pixels variant: raw), or null to use the config's. */
    val normalization: Normalization? = null
) {
    val name: String get() = file.substringAfterLast('/')
}

/**
 * model_config.json, written by `tflite-pipeline export-android`: preprocessing, labels file and the
 * exported models. org.json is part of Android (and a plain jar on the JVM), so this stays testable.
 */
class ModelConfig(
    val labelsFile: String,
    val numClasses: Int,
    val normalization: Normalization,
    val models: List<ModelEntry>
) {
    /** The entry for an asset file name ("mobilenet_v2_int8.tflite"), or null for a model not exported. */
    fun entryFor(fileName: String): ModelEntry? = models.firstOrNull { it.name == fileName }

    /** The normalization a model's input takes: its entry's own, else the config's. */
    fun normalizationFor(fileName: String): Normalization = entryFor(fileName)?.normalization ?: normalization

    companion object {
        const val FORMAT = "tflite_pipeline.model_config/1"

        /** Parse the JSON text; throws IllegalArgumentException naming the missing or wrong field. */
        fun parse(text: String): ModelConfig = try {
            val root = JSONObject(text)
            val format = root.optString("format")
            require(format == FORMAT) { "model_config.json has format '$format'; this app reads '$FORMAT'." }
            val normalization = normalization(root.getJSONObject("preprocessing"))
            val models = root.getJSONArray("models")
            val entries = (0 until models.length()).map { i ->
                val model = models.getJSONObject(i)
                ModelEntry(model.getString("file"), tensor(model.getJSONObject("input")),
                    tensor(model.getJSONObject("output")), model.optBoolean("outputs_are_probabilities", false),
                    model.optJSONObject("preprocessing")?.let { normalization(it) })
            }
            ModelConfig(root.getString("labels_file"), root.getInt("num_classes"), normalization, entries)
        } catch (error: JSONException) {
            throw IllegalArgumentException("model_config.json is not valid: ${error.message}", error)
        }

        private fun normalization(pre: JSONObject): Normalization =
            Normalization(pre.getString("normalization"), floats(pre, "mean"), floats(pre, "std"))

        private fun floats(obj: JSONObject, key: String): FloatArray {
            val array = obj.optJSONArray(key) ?: return FloatArray(0)
            return FloatArray(array.length()) { array.getDouble(it).toFloat() }
        }

        private fun tensor(obj: JSONObject): TensorSpec {
            val shape = obj.getJSONArray("shape")
            val type = TensorType.parse(obj.getString("dtype"))
            return TensorSpec(IntArray(shape.length()) { shape.getInt(it) }, type,
                if (obj.isNull("scale")) 0f else obj.getDouble("scale").toFloat(),
                if (obj.isNull("zero_point")) 0 else obj.getInt("zero_point"))
        }
    }
}
