"""The bench stage: batch-1 latency, size and peak memory of .tflite files. No timing comparisons:
the CPU is shared, so tests check that numbers are well-formed, never that one model is faster."""

import json
import os
import platform

import numpy as np
import pytest

import tflite_pipeline as tp
from tflite_pipeline.cli import main
from tflite_pipeline.data.folders import ImageFolder
from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.tflite.bench import (
    bench_models,
    cpu_description,
    format_table,
    measure_latency,
    measure_peak_memory,
    ratio_sentence,
)
from tflite_pipeline.tflite.interpreter import LiteRTClassifier

FAST = {"runs": 3, "warmup": 1}


@pytest.fixture(scope="module")
def tiny_files(tiny_run):
    return tiny_run.tflite_path("float32"), tiny_run.tflite_path("int8")


def test_latency_result_is_well_formed(tiny_files):
    result = measure_latency(tiny_files[1], threads=1, runs=5, warmup=2)
    assert result.runs == 5 and result.warmup == 2 and result.batch == 1 and result.threads == 1
    assert 0 < result.min_ms <= result.median_ms <= result.p90_ms
    assert result.min_ms <= result.mean_ms and result.kernels == "xnnpack"


def test_latency_accepts_model_bytes(tiny_files):
    result = measure_latency(tiny_files[0].read_bytes(), **FAST)
    assert result.file == "<bytes>" and result.median_ms > 0


def test_table_states_cpu_and_the_int8_float32_ratio(tiny_files):
    log = []
    benchmarks = bench_models(tiny_files, threads=(1,), memory=False, log=log.append, **FAST)
    assert [b.precision for b in benchmarks] == ["float32", "int8"]
    assert [b.input_dtype for b in benchmarks] == ["float32", "int8"]
    for b in benchmarks:
        assert b.size_bytes > b.gzip_bytes > 0 and b.parameters > 0 and b.macs > 0
        assert b.peak_memory_bytes is None and "--no-memory" in b.memory_note
        assert b.latency(1).median_ms <= b.latency(1).p90_ms
    cpu = cpu_description()
    table = format_table(benchmarks, cpu)
    assert cpu["summary"] in table and f"os.cpu_count() = {os.cpu_count()}" in table
    assert "| mobilenet_v2_int8 | int8 | int8 |" in table
    assert "- 1 thread: mobilenet_v2_int8 vs mobilenet_v2_float32: int8 is " in table
    assert "than float32 here (ISA " in table or "as fast as float32 here" in table
    assert log and "timing 2 model(s)" in log[0]


def test_no_ratio_line_without_both_precisions(tiny_files):
    benchmarks = bench_models(tiny_files[1:], threads=(1,), memory=False, log=lambda _: None, **FAST)
    assert "int8 vs float32" not in format_table(benchmarks, cpu_description())


def test_more_threads_than_cores_is_called_oversubscription(tiny_files):
    over = (os.cpu_count() or 1) + 1
    benchmarks = bench_models(tiny_files[1:], threads=(1, over), memory=False, log=lambda _: None, **FAST)
    assert [r.threads for r in benchmarks[0].latencies] == [1, over]
    assert "oversubscribe the cores" in format_table(benchmarks, cpu_description())


def test_ratio_sentence_never_claims_an_unmeasured_speed_up():
    assert ratio_sentence(1.5, "x86_64 AVX2+FMA, no VNNI") == \
        "int8 is 1.50× slower than float32 here (ISA x86_64 AVX2+FMA, no VNNI)"
    assert ratio_sentence(0.5, "isa").startswith("int8 is 2.00× faster")
    assert ratio_sentence(1.001, "isa").startswith("int8 is as fast as float32")


def test_cpu_description_names_the_machine_and_its_isa():
    cpu = cpu_description()
    assert cpu["machine"] == platform.machine() and cpu["summary"].startswith(platform.machine())
    assert cpu["logical_cpus"] == os.cpu_count() and cpu["usable_cpus"] >= 1


def test_cpu_description_reads_x86_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Test CPU\nflags\t\t: sse4_1 avx avx2 fma avx512f avx512_vnni\n"
                       "model name\t: Test CPU\nflags\t\t: sse4_1 avx avx2 fma avx512f avx512_vnni\n")
    cpu = cpu_description(cpuinfo)
    assert cpu["model"] == "Test CPU" and cpu["features"] == ["sse4_1", "avx", "avx2", "fma", "avx512f", "avx512_vnni"]
    assert cpu["summary"] == f"{platform.machine()} AVX-512+FMA, VNNI"


def test_cpu_description_without_proc_cpuinfo_degrades(tmp_path):
    cpu = cpu_description(tmp_path / "missing")
    assert cpu["machine"] == platform.machine() and cpu["features"] == [] and cpu["source"] is None
    assert "ISA features unknown" in cpu["summary"]


def test_peak_memory_is_the_childs_not_this_process(tiny_files):
    peak, note = measure_peak_memory(tiny_files[1])
    if peak is None:
        assert note.startswith("not measured: ")
    else:
        # this test process holds TensorFlow (~1 GB); ru_maxrss in a child would report that instead
        assert 0 < peak < 200 * 2**20 and "child process" in note


@pytest.mark.parametrize("settings, match", [({"threads": 0}, r"Received threads=\[0\]; expected one or more"),
                                              ({"runs": 0}, r"Received runs=0; expected an integer >= 1"),
                                              ({"kernels": "gpu"}, r"Received kernels='gpu'")])
def test_bad_settings_raise_recipe_error(tiny_files, settings, match):
    with pytest.raises(tp.RecipeError, match=match):
        measure_latency(tiny_files[1], **{**FAST, **settings})


def test_truncated_or_missing_file_raises_tflite_file_error(tiny_files, tmp_path):
    data = tiny_files[1].read_bytes()
    with pytest.raises(tp.TFLiteFileError, match="truncated or damaged"):
        measure_latency(data[:len(data) // 2], **FAST)
    with pytest.raises(tp.TFLiteFileError, match="Cannot read"):
        bench_models([tiny_files[0], tmp_path / "missing.tflite"], log=lambda _: None, **FAST)


def test_cli_bench_prints_the_table_and_writes_json(tiny_files, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", *map(str, tiny_files), "--threads", "1", "--runs", "3", "--warmup", "1", "--json", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "| model | precision |" in captured.out and "int8 is " in captured.out
    assert "timing 2 model(s)" in captured.err and "| model |" not in captured.err
    report = json.loads(out.read_text())
    assert report["cpu"]["machine"] == platform.machine() and len(report["models"]) == 2
    assert [r["threads"] for r in report["int8_vs_float32"]] == [1] and report["int8_vs_float32"][0]["ratio"] > 0
    int8 = report["models"][1]
    assert int8["latencies"][0]["runs"] == 3
    assert int8["peak_memory_bytes"] is None or int8["peak_memory_bytes"] > 0


def test_cli_bench_of_a_non_tflite_file_exits_with_its_code(tiny_files, tmp_path, capsys):
    bad = tmp_path / "notes.tflite"
    bad.write_text("not a model")
    out = tmp_path / "bench.json"
    assert main(["bench", str(tiny_files[1]), str(bad), "--runs", "2", "--json", str(out)]) == \
        tp.TFLiteFileError.exit_code
    assert "not a TFLite model" in capsys.readouterr().err and not out.exists()


def test_parallel_interpreters_score_like_one(tiny_run, tiny_data):
    # LiteRTClassifier runs num_threads single-threaded interpreters on separate chunks (for throughput)
    spec = PreprocessSpec(32, 32)
    images, _ = next(ImageFolder.scan(tiny_data / "validation").batches(spec, 50))
    for variant in ("float32", "int8"):
        one = LiteRTClassifier(tiny_run.tflite_path(variant), num_threads=1).predict(images)
        for threads, batch in ((2, 64), (3, 7)):
            many = LiteRTClassifier(tiny_run.tflite_path(variant), num_threads=threads, batch_size=batch)
            np.testing.assert_array_equal(many.predict(images), one)
            np.testing.assert_array_equal(many.predict(images[:1]), one[:1])
        assert many.predict(images[:0]).shape == (0, 10)
