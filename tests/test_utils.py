"""Measurement helpers used by the benchmarks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import load_benchmark
from crossan.precision import cpu_has_bf16
from crossan.utils import cpu_allocation_peak, state_bytes


def test_cpu_allocation_peak_follows_allocations_and_frees() -> None:
    before = torch.ones(1_000_000)  # 4 MB that exist before: neither counted nor their release

    def work() -> None:
        nonlocal before
        a = torch.ones(2_000_000)  # 8 MB
        b = a * 2  # +8 MB: peak 16 MB
        del a, b
        c = torch.ones(500_000)  # 2 MB after the peak
        del c
        before = None

    peak = cpu_allocation_peak(work)
    assert 16_000_000 <= peak < 16_500_000, peak


def test_state_bytes_counts_parameters_buffers_and_adam_moments() -> None:
    lin = torch.nn.Linear(10, 5)  # 55 parameters
    lin.register_buffer("scale", torch.zeros(3))
    opt = torch.optim.Adam(lin.parameters())
    assert state_bytes(lin) == (55 + 3) * 4
    lin(torch.randn(2, 10)).sum().backward()
    opt.step()  # exp_avg and exp_avg_sq per parameter, plus a scalar step count each
    assert state_bytes(lin, opt) == (55 + 3) * 4 + 2 * 55 * 4 + sum(
        s["step"].numel() * s["step"].element_size() for s in opt.state.values())


_FAULTS = """
import resource, sys, torch
from crossan.utils import configure_malloc
mode = configure_malloc(sys.argv[1], "cpu")
for _ in range(10):  # settle: the first frees leave holes that small allocations then split
    x = torch.empty(10 * 2**20).fill_(1.0)  # 40 MiB: above glibc's largest mmap threshold, so mmap'd by default
    del x
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    x = torch.empty(10 * 2**20).fill_(1.0)  # every page touched
    del x
print(mode, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _faults(setting: str) -> tuple[str, int]:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FAULTS, setting], capture_output=True, text=True, check=True)
    mode, faults = out.stdout.split()
    return mode, int(faults)


def test_retained_memory_takes_no_fresh_pages_per_allocation() -> None:
    """``train.malloc=retain`` against glibc's defaults, each in a fresh process: twenty 40 MiB tensors,
    allocated, written and freed in turn (after ten such to settle), fault in 10,240 fresh pages each by
    default and none once freed memory is retained."""
    import os

    import pytest

    if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
        pytest.skip("glibc's allocator only")
    mode, default = _faults("system")
    assert mode == "system" and default > 20 * 10_240 * 0.9, default  # the measured baseline: fresh pages each time
    mode, retained = _faults("retain")
    assert mode == "retain" and retained < 2_000, retained


def test_malloc_setting_is_checked() -> None:
    import pytest

    from crossan.utils import configure_malloc

    with pytest.raises(ValueError, match="train.malloc"):
        configure_malloc("never", "cpu")


def test_cache_benchmarks_build_on_the_cpu_they_measure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA audit: both cache benchmarks built with `device=auto`, so on a machine with a GPU the build ran
    there while the forwards, matmul peaks and machine line beside it were the CPU's. With CUDA reported
    available (this CPU build of torch cannot run it: a build on `cuda` fails) they still build on the CPU."""
    import sys

    import crossan.encoders as encoders

    built_on: list[str] = []
    real_build = encoders.build_encoder

    def recording(modality, spec, device="cpu"):
        built_on.append(str(device))
        return real_build(modality, spec, device="cpu")  # this torch cannot build on a GPU

    monkeypatch.setattr(encoders, "build_encoder", recording)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    load_benchmark("bench_cache").main(["--preset", "tiny", "--modalities", "text", "--batch-sizes", "4",
                                        "--items", "8", "--build", "--precision", "fp32,bf16",
                                        "--out", str(tmp_path / "a")])
    rows = json.loads((tmp_path / "a" / "bench_cache.json").read_text())["rows"]
    # build_cache is timed at each listed precision (it was timed at the config's only, 2026-12-02)
    assert sorted(r["precision"] for r in rows if r.get("build_items_per_s")) == ["bf16", "fp32"], rows
    monkeypatch.setattr(sys, "argv", ["cache_precision.py", "--preset", "tiny", "--items", "8", "--batch-size",
                                      "4", "--rounds", "1", "--precisions", "fp32", "--out", str(tmp_path / "b")])
    load_benchmark("cache_precision").main()
    assert list((tmp_path / "b").iterdir())
    assert built_on and set(built_on) == {"cpu"}, built_on  # the builds, as every forward beside them


def test_step_phases_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A docs review (2026-12-02): the script crashed on every run since a list took the name of its timer
    helper, which the wrapped methods look up at call time."""
    import sys

    out = tmp_path / "phases.json"
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))  # it imports side_network_epoch
    monkeypatch.setattr(sys, "argv", ["step_phases.py", "--users", "600", "--items", "300", "--steps", "2",
                                      "--warmup", "1", "--probe-size", "256", "--out", str(out)])
    load_benchmark("step_phases").main()
    figures = json.loads(out.read_text())
    assert figures and "backward" in json.dumps(figures)
    assert figures["probe_size"] == 256 and min(figures["matmul_gflops_before"].values()) > 0


def test_side_network_bench_runs_the_trainers_step_with_its_overrides(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A benchmark review (2026-12-02): ``--set train.grad_clip=…`` was recorded in the results but never applied
    (the timed step skipped the clipping the trainer does), and ``--set train.batch_size=…`` was recorded while
    the batches came from ``--batch-size``. Now the clip is applied and the batch override is refused."""
    import sys

    calls = []
    real_clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: calls.append(a[1]) or real_clip(*a, **k))
    bench = load_benchmark("side_network_epoch")
    common = ["side_network_epoch.py", "--device", "cpu", "--users", "300", "--items", "200", "--width", "16",
              "--taps", "2", "--modality-counts", "1", "--methods", "crossan", "--max-steps", "2",
              "--flops-steps", "0", "--memory-steps", "1", "--probe-size", "256", "--warmup-steps", "3",
              "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", [*common, "--set", "train.grad_clip=1.0"])
    bench.main()
    assert calls and set(calls) == {1.0}, calls  # warm-up, timed and memory steps all clipped
    meta = json.loads((tmp_path / "results.json").read_text())["meta"]
    assert meta["memory_steps"] == 1 and meta["warmup_steps"] == 3
    # the host's speed around the timed rounds, recorded without --flops-steps too
    dtype = "bfloat16" if cpu_has_bf16() else "float32"
    assert meta["probe_size"] == 256 and set(meta["matmul_gflops_before"]) == set(meta["matmul_gflops_after"]) == {dtype}
    assert min(meta["matmul_gflops_before"][dtype], meta["matmul_gflops_after"][dtype]) > 0
    monkeypatch.setattr(sys, "argv", [*common, "--set", "train.batch_size=128"])
    with pytest.raises(SystemExit):
        bench.main()
    # the compiled column says what trains compiled: nothing under exchange=inputs, even with train.compile=true
    # (a second reader: it said "yes" from the flag alone); and auto stays eager on data this small
    for overrides in (["train.compile=true", "crossan.exchange=inputs"], []):
        monkeypatch.setattr(sys, "argv", [*common, "--set", *overrides] if overrides else common)
        bench.main()
        (row,) = json.loads((tmp_path / "results.json").read_text())["rows"]
        assert row["compiled"] is False and row["warmup_s"] > 0


def test_side_network_epoch_times_each_model_in_a_process_of_its_own(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Timed in one process after the others, CROSSAN M = 2 read 64.0–80.8 s per epoch where a process of its own
    read 54.9–55.2 s (docs/results.md §3x), so by default each model runs in a child process of its own and the
    parent gathers the rows and the ratios."""
    import sys

    bench = load_benchmark("side_network_epoch")
    common = ["side_network_epoch.py", "--device", "cpu", "--users", "300", "--items", "200", "--width", "16",
              "--taps", "2", "--modality-counts", "1", "--methods", "crossan,iisan", "--max-steps", "2",
              "--flops-steps", "0", "--memory-steps", "1", "--probe-size", "256", "--warmup-steps", "1"]
    monkeypatch.setattr(sys, "argv", [*common, "--out", str(tmp_path / "per")])
    bench.main()
    got = json.loads((tmp_path / "per" / "results.json").read_text())
    assert [r["method"] for r in got["rows"]] == ["crossan", "iisan"] and got["meta"]["process"] == "per-model"
    children = [json.loads((tmp_path / "per" / f"{m}_M1_auto" / "results.json").read_text()) for m in ("crossan", "iisan")]
    assert [c["rows"] for c in children] == [[got["rows"][0]], [got["rows"][1]]]  # each child timed its own model
    assert all(c["meta"]["process"] == "per-model" for c in children)  # each alone in its process
    assert [m["method"] for m in got["meta"]["per_model"]] == ["crossan", "iisan"]
    (ratio,) = got["ratios"]
    assert ratio["time_per_epoch_ratio"] == round(got["rows"][0]["time_per_epoch_s"] / got["rows"][1]["time_per_epoch_s"], 3)
    # two precisions (a second reader: the table's probes mixed dtypes and crashed); each dtype's probes kept
    monkeypatch.setattr(sys, "argv", [*common, "--methods", "crossan", "--modality-counts", "1,2", "--precision",
                                      "fp32,auto", "--out", str(tmp_path / "per")])
    bench.main()
    got = json.loads((tmp_path / "per" / "results.json").read_text())
    assert [(r["modalities"], r["precision"]) for r in got["rows"]] == [(1, "fp32"), (2, "fp32"), (1, "auto"), (2, "auto")]
    dtypes = {"float32", "bfloat16" if cpu_has_bf16() else "float32"}
    assert set(got["meta"]["matmul_gflops_before"]) == set(got["meta"]["matmul_gflops_after"]) == dtypes
    # an unknown method fails before any model is timed: no child runs, the earlier table is left as it was
    table = (tmp_path / "per" / "results.json").read_text()
    monkeypatch.setattr(sys, "argv", [*common, "--methods", "iisan,nosuchmethod", "--modality-counts", "3",
                                      "--out", str(tmp_path / "per")])
    with pytest.raises(Exception, match="nosuchmethod"):
        bench.main()
    assert (tmp_path / "per" / "results.json").read_text() == table and not (tmp_path / "per" / "iisan_M3_auto").exists()
    # --process shared: both in this process, no child folders
    monkeypatch.setattr(sys, "argv", [*common, "--process", "shared", "--out", str(tmp_path / "shared")])
    bench.main()
    shared = json.loads((tmp_path / "shared" / "results.json").read_text())
    assert [r["method"] for r in shared["rows"]] == ["crossan", "iisan"] and shared["meta"]["process"] == "shared"
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["results.csv", "results.json"]


def test_only_a_failed_write_is_reported_as_one_even_on_a_nearly_full_disk(tmp_path: Path, monkeypatch) -> None:
    """`crossan export` and `data synth` reported any error — a bug, even Ctrl-C — as "no space left on the
    device" whenever the folder had under 64 KiB free."""
    import errno
    import os
    from collections import namedtuple

    from crossan import utils

    real = os.statvfs
    stat = namedtuple("stat", "f_bavail f_frsize")
    monkeypatch.setattr(utils.os, "statvfs", lambda path: stat(1, 4096))
    assert utils.write_failure(ValueError("a bug"), tmp_path) is None
    assert utils.write_failure(KeyboardInterrupt(), tmp_path) is None
    assert utils.write_failure(OSError(errno.EIO, "Input/output error"), tmp_path) == "no space left on the device"
    torch_says = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert utils.write_failure(torch_says, tmp_path) == "no space left on the device"
    monkeypatch.setattr(utils.os, "statvfs", real)
    assert utils.write_failure(OSError(errno.EROFS, "Read-only file system"), tmp_path) == "Read-only file system"
    assert utils.write_failure(RuntimeError("safetensors: No space left on device (os error 28)"),
                               tmp_path) == "no space left on the device"


def test_a_writers_own_error_on_a_nearly_full_disk_is_not_called_a_full_disk(tmp_path: Path, monkeypatch) -> None:
    """A review (2026-12-04): `recommend --users` scores while it streams its CSV, inside atomic_write, which took
    any failure on a disk with under 64 KiB free for "no space left" (a history scored non-finite became a
    WriteError). crossan's own errors pass through; an operating-system error there is still the full disk."""
    import os
    from types import SimpleNamespace

    from crossan.errors import ServeError, WriteError
    from crossan.utils import atomic_write

    monkeypatch.setattr(os, "statvfs", lambda folder: SimpleNamespace(f_bavail=1, f_frsize=4096))

    def scoring_fails(tmp: Path) -> None:
        tmp.write_text("user,rank\n")
        raise ServeError("history 3: the model scores all 9 candidates NaN or infinite")

    with pytest.raises(ServeError, match="history 3"):
        atomic_write(tmp_path / "recs.csv", scoring_fails)

    def bug(tmp: Path) -> None:  # not a write's failure either (a second review: still "no space left")
        raise KeyError("i9")

    with pytest.raises(KeyError, match="i9"):
        atomic_write(tmp_path / "recs.csv", bug)

    def disk_fails(tmp: Path) -> None:
        raise OSError(5, "Input/output error")

    with pytest.raises(WriteError, match="no space left on the device"):
        atomic_write(tmp_path / "recs.csv", disk_fails)
    assert list(tmp_path.iterdir()) == []
