"""Filling a GPU, as far as a CPU can tell: the step a CUDA graph captures, the device-side image pool, and the runtime
settings (cuda_graphs, deterministic) that change how a run goes but not what it is.

Only the ``torch.cuda.graph`` wrapper itself is left to a GPU (``benchmarks/gpu_check.py``): the captured function is
an ordinary one over static input buffers, and here it runs eagerly.
"""

from __future__ import annotations

import io
import json
import warnings

import pytest
import torch
import yaml

from conftest import TINY_BASE
from unpaired.config.overrides import merge
from unpaired.config.resolved import resolve_variant
from unpaired.config.spec import SpecError
from unpaired.errors import Notice
from unpaired.plugin_api import TrainingProgress
from unpaired.plugin_api.methods import Runtime
from unpaired.storage.run_folder import RunFolder
from unpaired.training.graphs import WARMUP_STEPS, StepRunner, graph_problem, runtime_problem
from unpaired.training.parts import build_method, runtime_of
from unpaired.training.run import train_run
from unpaired.training.runtime import seed_everything
from unpaired_plugins.image_pools import HistoryParams, HistoryPool

CPU = torch.device("cpu")


def trained_steps(spec: dict, registry, steps: int, through_buffers: bool) -> tuple[list[dict[str, float]], dict]:
    """``steps`` training steps of ``spec`` from seed 0 on the same batches: each step's losses, and the weights after."""
    variant = resolve_variant(spec, registry)
    seed_everything(0)
    method, runtime = build_method(variant, CPU, 32), runtime_of(variant, CPU)
    runner = StepRunner(method, runtime, capture=through_buffers)
    batches = torch.Generator().manual_seed(1)
    losses = []
    for step in range(steps):
        real_A, real_B = (torch.rand(1, 3, 32, 32, generator=batches) * 2 - 1 for _ in range(2))
        progress = TrainingProgress(0, step + 1, steps, 1)
        terms = runner(real_A, real_B, progress) if through_buffers else method.train_step(real_A, real_B, progress)
        losses.append({name: float(value.detach()) for name, value in terms.items()})
    return losses, method.state_dict()


@pytest.mark.parametrize("method", ["cyclegan", "cut", "fastcut"])
def test_the_captured_step_run_eagerly_over_its_static_buffers_gives_the_plain_steps_losses_and_weights(registry, method):
    spec = merge(TINY_BASE, {"method": {"name": method}} if method != "cyclegan" else {})
    if method != "cyclegan":
        spec["method"] |= {"nce_layers": ["input", "down1", "down2", "block1"], "num_patches": 16}
    steps = WARMUP_STEPS + 4  # warm-up steps, then the function a GPU captures
    plain, plain_state = trained_steps(spec, registry, steps, through_buffers=False)
    buffered, buffered_state = trained_steps(spec, registry, steps, through_buffers=True)
    assert buffered == plain
    for name, weights in plain_state["networks"].items():
        assert all(torch.equal(weights[key], buffered_state["networks"][name][key]) for key in weights), name


def test_the_buffers_take_the_batches_shape_until_the_capture_and_keep_it_after(registry, monkeypatch):
    variant = resolve_variant(TINY_BASE, registry)
    seed_everything(0)
    runner = StepRunner(build_method(variant, CPU, 32), runtime_of(variant, CPU), capture=True)
    progress = TrainingProgress(0, 1, 1, 1)
    runner(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32), progress)  # a resume just before an epoch's smaller last batch
    runner(torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 32, 32), progress)
    assert runner.inputs is not None and runner.inputs[0].shape == (2, 3, 32, 32)
    monkeypatch.setattr(runner, "graph", object())  # as if captured (a CPU has no graphs)
    terms = runner(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32), progress)  # an epoch's smaller last batch: eager
    assert set(terms) == set(runner.method.loss_terms) and runner.inputs[0].shape == (2, 3, 32, 32)


def pool_outputs(pool: HistoryPool, start: int, queries: int) -> list[torch.Tensor]:
    """What ``pool`` returns for fakes numbered ``start`` .. (each image filled with its number), two per query."""
    return [
        pool.query(torch.arange(2 * q, 2 * q + 2, dtype=torch.float32).view(2, 1, 1, 1).expand(2, 3, 4, 4) + 0.0)
        for q in range(start, start + queries)
    ]


def test_the_device_pool_makes_the_same_decisions_after_a_checkpoint_as_before_it():
    pool = HistoryPool(HistoryParams(size=6), seed=3)
    pool_outputs(pool, 0, 10)  # filled, and already swapping
    saved = io.BytesIO()
    torch.save(pool.state_dict(), saved)
    ahead = pool_outputs(pool, 10, 20)
    saved.seek(0)
    resumed = HistoryPool(HistoryParams(size=6), seed=3)
    resumed.load_state_dict(torch.load(saved, weights_only=True))  # what a checkpoint holds, read as checkpoints are
    assert all(torch.equal(a, b) for a, b in zip(ahead, pool_outputs(resumed, 10, 20)))
    other_seed = HistoryPool(HistoryParams(size=6), seed=4)
    other_seed.load_state_dict(resumed.state_dict())  # the generator's state, not the seed, decides from here on
    assert all(torch.equal(a, b) for a, b in zip(pool_outputs(resumed, 30, 5), pool_outputs(other_seed, 30, 5)))


def test_the_device_pool_fills_first_then_returns_a_stored_fake_for_half_the_queries():
    pool = HistoryPool(HistoryParams(size=50), seed=0)
    returned = [int(image[0, 0, 0]) for batch in pool_outputs(pool, 0, 2000) for image in batch]
    numbers = range(len(returned))
    assert returned[:50] == list(numbers[:50])  # the first 50 fill the pool and pass through
    older = [got < number for got, number in zip(returned[50:], numbers[50:])]
    assert all(got <= number for got, number in zip(returned, numbers))  # only the fake itself or an earlier one
    assert sum(older) / len(older) == pytest.approx(0.5, abs=0.03)  # the paper's pool: a stored fake half the time
    assert len(set(returned[50:])) > 1500  # the stored ones are spread over the past, not one slot


def test_a_pool_saved_by_unpaired_0_1_resumes_with_its_images():
    pool = HistoryPool(HistoryParams(size=4), seed=0)
    stored = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 3, 2, 2).clone()
    pool.load_state_dict({"images": stored, "filled": 3, "rng": (3, (0,) * 625, None)})
    first = pool.query(torch.full((1, 3, 2, 2), 7.0))
    assert float(first[0, 0, 0, 0]) == 7.0 and pool.state_dict()["seen"] == 4  # the fourth slot fills
    assert torch.equal(pool.state_dict()["images"][:3], stored)


def test_cyclegan_and_cut_are_capturable_and_say_which_parts_are_not(registry):
    for method in ("cyclegan", "cut", "fastcut"):
        spec = merge(TINY_BASE, {"method": {"name": method, **({"nce_layers": ["input", "down1"]} if method != "cyclegan" else {})}})
        assert build_method(resolve_variant(spec, registry), CPU, 32).capture_problem() is None, method
    decaying = build_method(resolve_variant(merge(TINY_BASE, {"loss_weights": {"name": "identity_decay"}}), registry), CPU, 32)
    assert decaying.capture_problem() is None  # its weights change per epoch: a new capture then (its capture key)
    assert decaying.capture_key(TrainingProgress(0, 1, 3, 4)) != decaying.capture_key(TrainingProgress(1, 4, 3, 4))
    eager = build_method(resolve_variant(merge(TINY_BASE, {"train": {"cuda_graphs": "on"}}), registry), CPU, 32)
    runtime = Runtime(CPU)
    assert "CUDA device" in (graph_problem(eager, runtime, "auto") or "")


def test_compiled_networks_are_captured_with_the_step_only_when_cuda_graphs_is_on(registry):
    """``auto`` keeps a compiled run eager until a GPU has measured the combination; ``on`` captures it (no GPU is used
    here: the runtime is only described)."""
    gpu = torch.device("cuda")
    for setting, captured in (("on", True), ("auto", False), ("off", False)):
        variant = resolve_variant(merge(TINY_BASE, {"train": {"compile": True, "precision": "bf16", "cuda_graphs": setting}}), registry)
        assert runtime_of(variant, gpu).cuda_graphs is captured, setting
    assert "train.cuda_graphs: on captures it" in (runtime_problem(Runtime(gpu, "bf16", compile=True), "auto") or "")
    assert runtime_problem(Runtime(gpu, "bf16", compile=True), "on") in (None, runtime_problem(Runtime(gpu, "bf16"), "on"))


def test_graphs_and_determinism_are_runtime_settings_that_leave_the_run_id_alone(registry):
    plain = resolve_variant(TINY_BASE, registry)
    for train in ({"cuda_graphs": "on"}, {"cuda_graphs": "off"}, {"deterministic": True}):
        assert resolve_variant(merge(TINY_BASE, {"train": train}), registry).run_id == plain.run_id, train
    with pytest.raises(SpecError, match="cuda_graphs: on cannot replay fp16"):
        resolve_variant(merge(TINY_BASE, {"train": {"cuda_graphs": "on", "precision": "fp16"}}), registry)
    for written, meant in (("on", "on"), ("off", "off"), ("auto", "auto")):  # YAML reads a bare on/off as a boolean
        train = yaml.safe_load(f"cuda_graphs: {written}")
        assert resolve_variant(merge(TINY_BASE, {"train": train}), registry).train.cuda_graphs == meant


def test_on_a_cpu_auto_trains_eagerly_without_a_word_and_the_result_records_determinism(registry, tmp_path):
    variant = resolve_variant(merge(TINY_BASE, {"train": {"deterministic": True}}), registry)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = train_run(variant, RunFolder(tmp_path / "run"), registry, show_progress=False)
    assert outcome.outcome == "trained", outcome.detail
    assert not [w for w in caught if issubclass(w.category, Notice)]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["deterministic"] is True and result["cuda_graphs"] is False
    assert not torch.are_deterministic_algorithms_enabled()  # as it was before the run


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_graphs_on_without_a_gpu_is_refused_by_validation_or_fails_the_run_saying_so(registry, tmp_path):
    """Validation refuses graphs on a device that is not CUDA; where ``auto`` finds no GPU (known only where the run
    trains), the run fails saying why (the local executor says so before any run starts: test_executors)."""
    with pytest.raises(SpecError, match=r"cuda_graphs: on needs a CUDA device, and device is 'cpu'; use device: cuda \(or auto\)"):
        resolve_variant(merge(TINY_BASE, {"train": {"cuda_graphs": "on", "device": "cpu"}}), registry)
    variant = resolve_variant(merge(TINY_BASE, {"train": {"cuda_graphs": "on"}}), registry)
    outcome = train_run(variant, RunFolder(tmp_path / "run"), registry, show_progress=False)
    assert outcome.outcome == "failed"
    assert "train.cuda_graphs is on, but CUDA graphs need a CUDA device, and this run trains on cpu" in (outcome.detail or "")


def test_an_optimiser_saved_with_a_device_learning_rate_resumes_where_it_is_a_float():
    parameters = [torch.nn.Parameter(torch.ones(3))]
    graphs = Runtime(CPU, cuda_graphs=True)
    saved = graphs.adam(parameters, 2e-4, (0.5, 0.999)).state_dict()
    assert isinstance(saved["param_groups"][0]["lr"], torch.Tensor)
    optimizer = torch.optim.Adam(parameters, lr=1.0, foreach=True)
    optimizer.load_state_dict(saved)
    Runtime(CPU).adopt(optimizer)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-4) and optimizer.param_groups[0]["capturable"] is False
    parameters[0].grad = torch.ones(3)
    optimizer.step()  # a capturable, tensor-lr group would refuse to step on a CPU
    assert float(parameters[0].detach()[0]) == pytest.approx(1 - 2e-4, rel=1e-3)
