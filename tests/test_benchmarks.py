"""The training benchmark runs end to end on a tiny setting and reports consistent numbers (timings are not asserted)."""

from __future__ import annotations

import importlib
import json
import statistics
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from unpaired_plugins.cyclegan import CycleGAN

REFERENCE = REPO.parent / "shared" / "bench" / "reference_cyclegan.py"


@pytest.mark.slow
@pytest.mark.skipif(not REFERENCE.is_file(), reason=f"the reference step is not at {REFERENCE}")
def test_bench_train_reports_per_round_ratios_against_the_reference(tmp_path):
    out = tmp_path / "bench.json"
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "bench_train.py"),
        "--size",
        "32",
        "--blocks",
        "1",
        "--iters",
        "1",
        "--warmup",
        "1",
        "--rounds",
        "3",
        "--settings",  # a second setting that every CPU runs natively (bf16 is emulated, 10x slower, on CPUs without AVX512-BF16)
        "fp32",
        "fp32+cl",
        "--methods",
        "cyclegan",
        "cut",
        "--device",
        "cpu",
        "--with-data",
        "--loader",
        "--json",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert [(row["method"], row["setting"]) for row in report["engine"]] == [
        ("cyclegan", "fp32"),
        ("cyclegan", "fp32+cl"),
        ("cut", "fp32"),
        ("cut", "fp32+cl"),
    ]
    assert len(report["rounds"]) == 3
    assert report["reference_s_per_iter"] == statistics.median(r["reference"] for r in report["rounds"])
    for row in report["engine"]:
        name = f"{row['method']} {row['setting']}"
        ratios = [r["reference"] / r[name] for r in report["rounds"]]
        assert row["speedup"] == pytest.approx(statistics.median(ratios))
        assert row["speedup_range"] == pytest.approx([min(ratios), max(ratios)])
        against = statistics.median(r[name] / r[f"cyclegan {row['setting']}"] for r in report["rounds"])
        assert row["time_vs_cyclegan"] == pytest.approx(against) and (row["method"] != "cyclegan" or against == 1)
        terms = len(CycleGAN.loss_terms) if row["method"] == "cyclegan" else len(("G_adv", "NCE", "NCE_idt", "D", "D_reg"))
        assert len(row["losses"]) == terms and all(v == v and abs(v) < 1e3 for v in row["losses"])  # finite, sane
    assert report["matmul_gflops"]["fp32"] > 0 and report["matmul_gflops"]["bf16"] > 0
    assert report["engine_with_data"] is True and report["loader"]["pairs_per_s"]["cached"] > 0
    assert "speedup" in result.stdout and "fp32" in result.stdout


def test_quick_times_bf16_only_where_the_device_runs_it_natively():
    """Without native bf16 (no AVX512-BF16 or AMX) it is emulated many times slower: --quick took 42 minutes there."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_train", REPO / "benchmarks" / "bench_train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert bench.native_settings(cpu, {"fp32": 300.0, "bf16": 40.0}) == ["fp32"]
    assert bench.native_settings(cpu, {"fp32": 300.0, "bf16": 1800.0}) == ["fp32", "bf16"]
    assert bench.native_settings(gpu, {"fp32": 50_000.0, "bf16": 40_000.0}) == ["fp32", "bf16"]


def test_bench_report_times_a_made_up_study_and_reports_its_figures(tmp_path):
    out = tmp_path / "report-bench.json"
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "bench_report.py"),
        "--variants",
        "2",
        "--seeds",
        "2",
        "--size",
        "32",
        "--epochs",
        "3",
        "--json",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert figures["runs"] == 4 and figures["variants"] == 2 and figures["html_mib"] > 0
    assert all(figures[key] > 0 for key in ("html_s", "markdown_s", "visual_comparison_rebuilding_s"))
    assert "HTML report" in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(not REFERENCE.is_file(), reason=f"the reference step is not at {REFERENCE}")
def test_the_gpu_check_runs_its_harness_on_the_cpu_where_every_fp32_comparison_is_exact(tmp_path):
    """The GPU check compares the device under test with the CPU; on a CPU it compares the CPU with itself, so fp32
    must agree exactly, resume must be bit-exact and FID identical: what makes its findings on a GPU trustworthy."""
    out = tmp_path / "gpu.json"
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--quick", "--device", "cpu", "--json", str(out)]
    command += ["--budget", "840"]  # its 6 minutes are an H200's; this is the harness on a shared CPU (232 s seen)
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    checks = {row["check"]: row for row in report["checks"]}
    assert checks["step fp32 (TF32 off)"]["measured"] == 0 and checks["step fp32 (PyTorch's defaults)"]["measured"] == 0
    assert set(checks["step on the CPU (expected)"]["terms"]) == set(CycleGAN.loss_terms)
    assert 0 < checks["step bf16"]["measured"] <= 0.05 and "step fp16" not in checks  # fp16 autocast: a GPU path
    for mode in ("defaults", "deterministic"):
        assert checks[f"resume bit-exact ({mode})"]["passed"] and checks[f"rerun identical ({mode})"]["passed"]
    assert "resume bit-exact (graphs, deterministic)" not in checks  # CUDA graphs: a GPU path
    assert all(checks[f"graphs vs eager, {method}"]["measured"] == 0 for method in ("cyclegan", "cut", "fastcut"))  # both eager here
    assert all(checks[f"{column} on the device vs the CPU"]["measured"] == 0 for column in ("fid_a2b", "fid_b2a", "kid_a2b", "kid_b2a"))
    assert checks["study with --jobs 2"]["passed"] and all(device.startswith("cpu") for device in checks["study with --jobs 2"]["devices"])
    measured = report["measurements"]
    assert [row["setting"] for row in measured["bench_train"]["engine"]] == ["fp32"] and measured["fid_time"]["seconds"] > 0
    packed = measured["bench_study"]["jobs_2"]
    assert "mps_jobs_2" not in measured["bench_study"]  # packing through CUDA MPS: a GPU path
    assert len(packed["run_it_per_s"]) == 4 and packed["aggregate_it_per_s"] == pytest.approx(2 * statistics.fmean(packed["run_it_per_s"]))
    profiled = measured["profile"]["fp32"]
    assert profiled["captured"] is False and profiled["device_busy"] is None  # a CPU: operators, not kernels
    assert profiled["entries_per_step"] > 100 and 0 < profiled["busy_ms_per_step"] <= 3 * profiled["wall_ms_per_step"]
    assert max(profiled["by_kind_ms_per_step"], key=profiled["by_kind_ms_per_step"].get) == "convolution / matmul"
    assert "compiled" not in measured and "profile fp32: " in result.stdout  # compiled inside a captured step: a GPU part
    assert report["skipped"] == [] and "resume bit-exact (defaults)" in result.stdout and "FAILED" not in result.stdout


@pytest.mark.parametrize(
    "name, kind",
    [
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_warpgroupsize1x1x1_cudnn", "convolution / matmul"),
        ("nvjet_hsh_128x64_64x4_1x2_h_bz_coopA_NNT", "convolution / matmul"),
        (
            "void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16, __nv_bfloat16, float, false, true, (cudnnKernelDataType_t)0>",
            "copy / layout",
        ),
        ("void cudnn::bn_fw_tr_1C11_singleread_specialized<__nv_bfloat16, float, 512, 1, 2, 0>", "normalisation"),
        ("void at::native::batch_norm_collect_statistics_kernel<at::native::Var, float, float, float, int>", "normalisation"),
        ("void at::native::(anonymous namespace)::reflection_pad2d_out_kernel<c10::BFloat16>", "padding"),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::leaky_relu_kernel(at::TensorIteratorBase&)>", "element-wise"),
        ("void at::native::elementwise_kernel<128, 2, at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)>", "copy / layout"),
        ("void at::native::multi_tensor_apply_kernel<at::native::FusedAdamMathFunctor<float, 4, ADAM_MODE::ORIGINAL, false>>", "optimiser"),
        ("triton_per_fused__native_batch_norm_legit_functional_leaky_relu_0", "normalisation"),
        ("triton_poi_fused_add_tanh_3", "element-wise"),
        ("aten::mkldnn_convolution", "convolution / matmul"),
    ],
)
def test_the_step_profile_sorts_kernels_by_what_they_do(monkeypatch, name, kind):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    profile_step = importlib.import_module("profile_step")
    assert profile_step.kind_of(name) == kind


def test_the_step_profile_sums_per_step_and_shares_of_the_busy_time(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    profile_step = importlib.import_module("profile_step")
    events = [("sm90_xmma_fprop_implicit_gemm", 300.0), ("triton_poi_fused_relu_0", 100.0)] * 4 + [("reflection_pad2d_out_kernel", 400.0)]
    found = profile_step.summary(events, wall_s=0.004, steps=2, on_device=True)
    assert found["entries_per_step"] == 4.5 and found["busy_ms_per_step"] == pytest.approx(1.0) and found["device_busy"] == pytest.approx(0.25)
    assert found["by_kind_ms_per_step"] == pytest.approx({"convolution / matmul": 0.6, "element-wise": 0.2, "padding": 0.2})
    assert [(row["name"], row["calls_per_step"]) for row in found["top"]] == [
        ("sm90_xmma_fprop_implicit_gemm", 2),
        ("triton_poi_fused_relu_0", 2),
        ("reflection_pad2d_out_kernel", 0.5),
    ]
    assert found["top"][0]["share"] == pytest.approx(0.6)


def test_the_gpu_check_names_each_way_of_packing_and_why_one_was_not_measured(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    gpu_check = importlib.import_module("gpu_check")
    study = {
        "runs": 4,
        "serial": {"aggregate_it_per_s": 40.0},
        "jobs_4": {"aggregate_it_per_s": 41.0, "aggregate_speedup": 1.025},
        "mps_jobs_4": {"error": "RuntimeError: nvidia-cuda-mps-control is not on PATH: MPS cannot be measured on this machine"},
    }
    assert gpu_check.packing_lines(study) == [
        "4 runs one at a time: 25.0 ms per iteration",
        "--jobs 4 packed: 24.4 ms per iteration together, 1.02x one at a time",
        "--jobs 4 packed through MPS: not measured (RuntimeError: nvidia-cuda-mps-control is not on PATH: MPS cannot be measured on this machine)",
    ]
