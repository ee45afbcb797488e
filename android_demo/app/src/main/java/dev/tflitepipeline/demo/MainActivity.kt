package dev.tflitepipeline.demo

import android.graphics.Bitmap
import android.graphics.ImageDecoder
import android.net.Uri
import android.os.Build
import android.os.Bundle
import android.provider.MediaStore
import android.view.View
import android.widget.AdapterView
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.ImageView
import android.widget.Spinner
import android.widget.TextView
import androidx.activity.ComponentActivity
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import dev.tflitepipeline.demo.core.Labels
import dev.tflitepipeline.demo.core.ModelConfig
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors

/**
 * Pick a model from assets/models/ and a thread count, pick an image, see the top-3 with scores, the
 * inference time and the end-to-end time. Inference runs on one background thread; switching the model
 * or the thread count closes the old interpreter before the new one is made. model_config.json is optional: a
 * model without an entry runs from its TFLite metadata. Errors (neither config nor metadata, a labels count that
 * does not match the model, a model that does not take an image) are shown, not thrown.
 */
class MainActivity : ComponentActivity() {
    private val worker: ExecutorService = Executors.newSingleThreadExecutor()
    private var classifier: Classifier? = null          // touched on the worker thread only
    private var config: ModelConfig? = null
    private var labels: List<String>? = null
    private var bitmap: Bitmap? = null
    private lateinit var info: TextView
    private lateinit var result: TextView
    private lateinit var modelSpinner: Spinner
    private lateinit var threadsSpinner: Spinner

    private val pickImage = registerForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri ->
        if (uri != null) showAndClassify(uri)
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        info = findViewById(R.id.model_info)
        result = findViewById(R.id.result)
        modelSpinner = findViewById(R.id.model_spinner)
        threadsSpinner = findViewById(R.id.threads_spinner)
        findViewById<Button>(R.id.pick_button).setOnClickListener {
            pickImage.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly))
        }

        val models = (assets.list(Classifier.MODELS_DIR) ?: emptyArray()).filter { it.endsWith(".tflite") }.sorted()
        if (models.isEmpty()) {
            info.setText(R.string.no_models)
            return
        }
        if (Classifier.CONFIG_FILE in (assets.list("") ?: emptyArray())) {
            try {  // without it, each model must carry TFLite metadata
                val parsed = ModelConfig.parse(assets.open(Classifier.CONFIG_FILE).bufferedReader().use { it.readText() })
                config = parsed
                labels = Labels.parse(assets.open(parsed.labelsFile).bufferedReader().use { it.readText() })
            } catch (error: Exception) {
                info.text = "Cannot read ${Classifier.CONFIG_FILE} or the labels: ${error.message}"
                return
            }
        }
        modelSpinner.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, models)
        threadsSpinner.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, THREADS)
        val reload = object : AdapterView.OnItemSelectedListener {
            override fun onItemSelected(parent: AdapterView<*>?, view: View?, position: Int, id: Long) = loadModel()
            override fun onNothingSelected(parent: AdapterView<*>?) = Unit
        }
        modelSpinner.onItemSelectedListener = reload
        threadsSpinner.onItemSelectedListener = reload
    }

    private fun loadModel() {
        val name = modelSpinner.selectedItem as String
        val threads = threadsSpinner.selectedItem as Int
        worker.execute {
            classifier?.close()
            classifier = null
            val message = try {
                val loaded = Classifier(assets, name, config, labels, threads)
                classifier = loaded
                "$name: input ${loaded.input.shape.contentToString()} ${loaded.input.type.label}" +
                    (if (loaded.input.type.isQuantized) " (scale ${loaded.input.scale}, zero point ${loaded.input.zeroPoint})" else "") +
                    ", output ${loaded.output.shape.contentToString()} ${loaded.output.type.label}, $threads thread(s)" +
                    "; labels and normalization from ${loaded.contractSource}"
            } catch (error: Exception) {
                "Cannot use $name: ${error.message}"
            }
            runOnUiThread { info.text = message }
            bitmap?.let { classifyOnWorker(it) }
        }
    }

    private fun showAndClassify(uri: Uri) {
        val decoded = try {
            decode(uri)
        } catch (error: Exception) {
            result.text = "Cannot read that image: ${error.message}"
            return
        }
        bitmap = decoded
        findViewById<ImageView>(R.id.image).setImageBitmap(decoded)
        result.text = "…"
        worker.execute { classifyOnWorker(decoded) }
    }

    private fun classifyOnWorker(image: Bitmap) {
        val current = classifier ?: return
        val text = try {
            val answer = current.classify(image)
            answer.top.joinToString("\n") { "${it.label}  ${"%.3f".format(it.score)}" } +
                "\n\ninference ${"%.1f".format(answer.inferenceMs)} ms, end-to-end ${"%.1f".format(answer.totalMs)} ms"
        } catch (error: Exception) {
            "Classification failed: ${error.message}"
        }
        runOnUiThread { result.text = text }
    }

    /** A software ARGB_8888 bitmap (getPixels needs one), EXIF rotation applied by the decoder. */
    private fun decode(uri: Uri): Bitmap =
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.P) {
            ImageDecoder.decodeBitmap(ImageDecoder.createSource(contentResolver, uri)) { decoder, _, _ ->
                decoder.allocator = ImageDecoder.ALLOCATOR_SOFTWARE
            }.copy(Bitmap.Config.ARGB_8888, false)
        } else {
            @Suppress("DEPRECATION")
            MediaStore.Images.Media.getBitmap(contentResolver, uri).copy(Bitmap.Config.ARGB_8888, false)
        }

    override fun onDestroy() {
        worker.execute { classifier?.close(); classifier = null }
        worker.shutdown()
        super.onDestroy()
    }

    companion object {
        val THREADS = listOf(1, 2, 4)
    }
}
