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
        const val FILE_NAME = "model_config.json"

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

/**
 * What the app needs beside the model file: its input normalization, the labels and whether the output is softmax
 * probabilities, with where they came from. A model's model_config.json entry wins; a model without one takes them
 * from its TFLite metadata; a model with neither takes the config's preprocessing and labels, its output read as logits.
 */
class ModelContract(
    val normalization: Normalization,
    val labels: List<String>,
    val outputsAreProbabilities: Boolean,
    val source: String
) {
    companion object {
        /**
         * The contract of `fileName` (an asset file name) whose input tensor is `inputType`; `config` and
         * `configLabels` are null when the app has no model_config.json, `metadata` reads the model's own.
         * Throws IllegalArgumentException saying what is missing.
         */
        fun resolve(fileName: String, inputType: TensorType, config: ModelConfig?, configLabels: List<String>?,
                    metadata: () -> TfliteMetadata?): ModelContract {
            val entry = config?.entryFor(fileName)
            if (config != null && configLabels != null && entry != null) {
                return ModelContract(config.normalizationFor(fileName), configLabels, entry.outputsAreProbabilities,
                    ModelConfig.FILE_NAME)
            }
            val own = metadata()
            if (own != null && own.labels.isNotEmpty()) {
                val normalization = own.normalization ?: if (inputType.isQuantized) Normalization("raw") else
                    throw IllegalArgumentException("$fileName has a float32 input but its TFLite metadata states no " +
                        "normalization (NormalizationOptions): export it with tflite-pipeline, or add the metadata.")
                return ModelContract(normalization, own.labels, own.outputsAreProbabilities, "TFLite metadata")
            }
            if (config != null && configLabels != null) {
                return ModelContract(config.normalization, configLabels, false, "${ModelConfig.FILE_NAME} defaults")
            }
            throw IllegalArgumentException("$fileName has no ${ModelConfig.FILE_NAME} entry and no TFLite metadata " +
                "with labels: export it with tflite-pipeline export-android, or embed metadata (tflite-pipeline " +
                "convert writes it).")
        }
    }
}
