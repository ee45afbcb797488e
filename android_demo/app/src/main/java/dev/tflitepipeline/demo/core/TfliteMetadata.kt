package dev.tflitepipeline.demo.core

import java.util.zip.Inflater

/**
 * The TFLite metadata of an image classifier `.tflite` (metadata_schema.fbs, as MediaPipe Tasks reads it): names,
 * image size, normalization, whether the output is softmax probabilities, and the labels from the `labels.txt`
 * packed into the file (a zip archive appended to the flatbuffer). With it the app runs a model that has no
 * model_config.json entry. Pure Kotlin: the flatbuffers and the zip are read here, with every offset checked.
 */
class TfliteMetadata(
    val name: String,
    val description: String,
    val version: String,
    val height: Int,
    val width: Int,
    val channels: Int,
    /** The input's normalization, or null when the metadata states none (raw pixels for an integer input). */
    val normalization: Normalization?,
    val labels: List<String>,
    val outputsAreProbabilities: Boolean,
    val associatedFiles: List<String>
) {
    companion object {
        private const val METADATA_NAME = "TFLITE_METADATA"
        private const val IMAGE_PROPERTIES = 2      // ContentProperties union
        private const val NORMALIZATION_OPTIONS = 1 // ProcessUnitOptions union
        private const val GRAYSCALE = 2             // ColorSpaceType
        private const val TENSOR_AXIS_LABELS = 2    // AssociatedFileType

        // Field offsets of a zip central-directory header (PKWARE APPNOTE 4.3.12), in hex as in zip dumps.
        private const val CENTRAL_METHOD = 0x0A
        private const val CENTRAL_PACKED_SIZE = 0x14
        private const val CENTRAL_UNPACKED_SIZE = 0x18
        private const val CENTRAL_NAME_LENGTH = 0x1C
        private const val CENTRAL_EXTRA_LENGTH = 0x1E
        private const val CENTRAL_COMMENT_LENGTH = 0x20
        private const val CENTRAL_LOCAL_OFFSET = 0x2A
        private const val CENTRAL_HEADER_SIZE = 0x2E

        /** The metadata of a `.tflite`'s bytes, or null when it has none; IllegalArgumentException when damaged. */
        fun read(model: ByteArray): TfliteMetadata? {
            val flat = Flatbuffer(model, "the model")
            require(flat.identifier() == "TFL3") { "Not a TFLite model: the file identifier is not 'TFL3'." }
            val root = flat.root()
            val entry = root.tables(6).firstOrNull { it.string(0) == METADATA_NAME } ?: return null
            val buffers = root.tables(4)
            val index = entry.uint(1)
            require(index < buffers.size) { damaged("its metadata points at buffer $index of ${buffers.size}") }
            val meta = Flatbuffer(buffers[index].bytes(0), "the TFLite metadata")
            require(meta.identifier() == "M001") { damaged("the metadata buffer lacks the 'M001' identifier") }
            val graph = root.tables(2).firstOrNull() ?: throw IllegalArgumentException(damaged("it has no subgraph"))
            val tensors = graph.tables(0)
            val input = graph.ints(1).firstOrNull()?.let { tensors.getOrNull(it) }
                ?: throw IllegalArgumentException(damaged("its input tensor is missing"))
            val shape = input.ints(0)
            require(shape.size == 4) { "Expected an image input [1, height, width, channels]; the model's input is $shape." }

            val metadata = meta.root()
            val subgraph = metadata.tables(3).firstOrNull()
                ?: throw IllegalArgumentException(damaged("the metadata has no subgraph entry"))
            val image = subgraph.tables(2).firstOrNull()
            val scores = subgraph.tables(3).firstOrNull()
            val properties = image?.table(3)?.takeIf { it.byte(0) == IMAGE_PROPERTIES }?.table(1)
            val size = properties?.table(1)
            val normalization = image?.tables(4)
                ?.firstOrNull { it.byte(0) == NORMALIZATION_OPTIONS }?.table(1)
                ?.let { fromMetadata(it.floats(0), it.floats(1)) }
            val files = archive(model)
            val labelsFile = scores?.tables(6)?.firstOrNull { it.byte(2) == TENSOR_AXIS_LABELS }?.string(0)
            val labels = labelsFile?.let { name ->
                val text = files[name] ?: throw IllegalArgumentException(
                    "The TFLite metadata names '$name' as the labels, but the model carries no such file.")
                Labels.parse(String(text, Charsets.UTF_8))
            } ?: emptyList()
            val stats = scores?.table(5)
            return TfliteMetadata(
                metadata.string(0), metadata.string(1), metadata.string(2),
                size?.uint(1)?.takeIf { it > 0 } ?: shape[1], size?.uint(0)?.takeIf { it > 0 } ?: shape[2],
                if (properties?.byte(0) == GRAYSCALE) 1 else shape[3],
                normalization, labels,
                stats != null && stats.floats(0).toList() == listOf(1f),
                files.keys.sorted())
        }

        /** The app's normalization for the schema's `(pixel - mean) / std` on the 0-255 scale, as the pipeline maps it. */
        fun fromMetadata(mean: FloatArray, std: FloatArray): Normalization {
            require(mean.isNotEmpty() && (std.size == mean.size || std.size == 1)) {
                "TFLite metadata normalization needs mean and std values; received ${mean.size} and ${std.size}."
            }
            if (mean.toSet().size == 1 && std.toSet().size == 1) {
                when (Pair(mean[0], std[0])) {
                    Pair(127.5f, 127.5f) -> return Normalization("minus_one_to_one")
                    Pair(0f, 255f) -> return Normalization("zero_to_one")
                    Pair(0f, 1f) -> return Normalization("raw")
                }
            }
            return Normalization("mean_std", FloatArray(mean.size) { mean[it] / 255f },
                FloatArray(mean.size) { (if (std.size == 1) std[0] else std[it]) / 255f })
        }

        /**
         * The files of the zip archive appended to a `.tflite` (offsets from the file's start, as the metadata
         * populators write them), by name; empty when there is none. Stored and deflated entries are read.
         */
        fun archive(bytes: ByteArray): Map<String, ByteArray> {
            val end = (bytes.size - 22 downTo maxOf(0, bytes.size - 65557)).firstOrNull { le32(bytes, it) == 0x06054b50 }
                ?: return emptyMap()
            val count = le16(bytes, end + 10)
            var at = le32(bytes, end + 16)
            val files = LinkedHashMap<String, ByteArray>()
            repeat(count) {
                require(at in 0..bytes.size - CENTRAL_HEADER_SIZE && le32(bytes, at) == 0x02014b50) { damaged("its zip directory is cut") }
                val method = le16(bytes, at + CENTRAL_METHOD)
                val packed = le32(bytes, at + CENTRAL_PACKED_SIZE)
                val unpacked = le32(bytes, at + CENTRAL_UNPACKED_SIZE)
                val nameLength = le16(bytes, at + CENTRAL_NAME_LENGTH)
                val local = le32(bytes, at + CENTRAL_LOCAL_OFFSET)
                val name = String(slice(bytes, at + CENTRAL_HEADER_SIZE, nameLength), Charsets.UTF_8)
                require(local in 0..bytes.size - 30 && le32(bytes, local) == 0x04034b50) { damaged("'$name' is not in its zip") }
                val data = slice(bytes, local + 30 + le16(bytes, local + 26) + le16(bytes, local + 28), packed)
                files[name] = when (method) {
                    0 -> data
                    8 -> inflate(data, unpacked, name)
                    else -> throw IllegalArgumentException("The model's '$name' is zipped with method $method; stored and deflated are read.")
                }
                at += CENTRAL_HEADER_SIZE + nameLength + le16(bytes, at + CENTRAL_EXTRA_LENGTH) + le16(bytes, at + CENTRAL_COMMENT_LENGTH)
            }
            return files
        }

        private fun inflate(data: ByteArray, size: Int, name: String): ByteArray {
            val inflater = Inflater(true)
            try {
                inflater.setInput(data)
                val out = ByteArray(size)
                require(inflater.inflate(out) == size) { damaged("'$name' does not inflate to $size bytes") }
                return out
            } finally {
                inflater.end()
            }
        }

        private fun le16(b: ByteArray, at: Int): Int {
            require(at >= 0 && at + 2 <= b.size) { damaged("an offset ($at) points past its end") }
            return (b[at].toInt() and 0xff) or ((b[at + 1].toInt() and 0xff) shl 8)
        }

        private fun le32(b: ByteArray, at: Int): Int = le16(b, at) or (le16(b, at + 2) shl 16)

        private fun slice(b: ByteArray, at: Int, length: Int): ByteArray {
            require(at >= 0 && length >= 0 && at.toLong() + length <= b.size) { damaged("a field points past its end") }
            return b.copyOfRange(at, at + length)
        }

        internal fun damaged(what: String) = "The model has damaged TFLite metadata: $what."
    }

    /** Bounds-checked reading of one flatbuffer (little endian; tables, strings, vectors by slot number). */
    private class Flatbuffer(val bytes: ByteArray, val what: String) {
        fun identifier(): String = if (bytes.size < 8) "" else String(bytes, 4, 4, Charsets.ISO_8859_1)
        fun root(): Table = Table(this, offset(0))

        fun int(at: Int): Int = le32(bytes, at)
        fun short(at: Int): Int = le16(bytes, at)
        fun byte(at: Int): Int {
            require(at in bytes.indices) { damaged("$what points past its end") }
            return bytes[at].toInt()
        }

        /** The position a uoffset at `at` points to. */
        fun offset(at: Int): Int {
            val target = at.toLong() + (int(at).toLong() and 0xffffffffL)
            require(target < bytes.size) { damaged("$what points past its end") }
            return target.toInt()
        }

        fun vector(at: Int): Pair<Int, Int> {
            val start = offset(at)
            val count = int(start)
            require(count >= 0 && count <= (bytes.size - start - 4)) { damaged("a vector in $what is longer than the file") }
            return Pair(start + 4, count)
        }
    }

    private class Table(val flat: Flatbuffer, val position: Int) {
        private val vtable: Int = position - flat.int(position)

        /** The absolute position of a field, or 0 when it is absent. */
        private fun field(slot: Int): Int {
            val entry = 4 + 2 * slot
            if (entry >= flat.short(vtable)) return 0
            val relative = flat.short(vtable + entry)
            return if (relative == 0) 0 else position + relative
        }

        fun byte(slot: Int): Int = field(slot).let { if (it == 0) 0 else flat.byte(it) }
        fun uint(slot: Int): Int = field(slot).let { if (it == 0) 0 else flat.int(it) }
        fun table(slot: Int): Table? = field(slot).let { if (it == 0) null else Table(flat, flat.offset(it)) }

        fun string(slot: Int): String {
            val at = field(slot)
            if (at == 0) return ""
            val (start, length) = flat.vector(at)
            return String(slice(flat.bytes, start, length), Charsets.UTF_8)
        }

        fun bytes(slot: Int): ByteArray {
            val at = field(slot)
            if (at == 0) return ByteArray(0)
            val (start, length) = flat.vector(at)
            return slice(flat.bytes, start, length)
        }

        fun tables(slot: Int): List<Table> {
            val at = field(slot)
            if (at == 0) return emptyList()
            val (start, count) = flat.vector(at)
            return (0 until count).map { Table(flat, flat.offset(start + 4 * it)) }
        }

        fun ints(slot: Int): List<Int> {
            val at = field(slot)
            if (at == 0) return emptyList()
            val (start, count) = flat.vector(at)
            return (0 until count).map { flat.int(start + 4 * it) }
        }

        fun floats(slot: Int): FloatArray = ints(slot).map { java.lang.Float.intBitsToFloat(it) }.toFloatArray()
    }
}
