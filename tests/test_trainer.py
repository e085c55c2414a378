"""Trainer: end to end on a small real-file dataset, resume after a crash, run-folder safety, CLI contract."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import crossan.trainer as trainer
from crossan.cli import main
from crossan.config import load_config
from crossan.data import DataError
from crossan.precision import cpu_has_bf16
from crossan.trainer import RESULT_KEYS, RunError, rescore, train

METRICS = {"HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR"}


def _cfg(data: Path, *extra: str):
    return load_config([], [f"data.path={data}", "train.epochs=4", "train.batch_size=32", "device=cpu", *extra])


def test_train_writes_results_contract(small_data: Path, tmp_path: Path) -> None:
    res = train(_cfg(small_data), tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(RESULT_KEYS) <= set(saved)
    assert set(saved["valid"]) == METRICS and set(saved["test"]) == METRICS
    assert 1 <= saved["best_epoch"] <= 4 and saved["trainable_params"] == saved["total_params"] > 0
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "best.safetensors").is_file()
    glibc = (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    assert saved["malloc"] == ("retain" if glibc else "system")  # train.malloc=auto on a CPU
    assert saved["compute_dtype"] == ("bfloat16" if cpu_has_bf16() else "float32")  # precision=auto, resolved
    # the structured toy data is learnable: well above the same model untrained (measured NDCG@10 0.164 vs 0.065)
    untrained = train(_cfg(small_data, "train.epochs=0"), tmp_path / "untrained", progress=False)
    assert res["test"]["NDCG@10"] > 2 * untrained["test"]["NDCG@10"]
    again = rescore(tmp_path / "run", device="cpu")
    assert again["test"] == pytest.approx(res["test"])


def _crash_at_epoch(epoch: int, small_data: Path, run: Path, monkeypatch, *extra: str) -> None:
    """Train ``_cfg(small_data, *extra)`` into ``run`` until a simulated crash as ``epoch`` starts (the
    checkpoint of the epoch before stays), then restore the batch maker."""
    real_batches = trainer._batches

    def crashing(n, bs, seed, e):
        if e == epoch:
            raise KeyboardInterrupt("simulated crash")
        return real_batches(n, bs, seed, e)

    monkeypatch.setattr(trainer, "_batches", crashing)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(small_data, *extra), run, progress=False)
    monkeypatch.setattr(trainer, "_batches", real_batches)


def test_resume_accepts_another_train_compile(small_data: Path, tmp_path: Path, monkeypatch) -> None:
    """A run started as crossan 0.1.19 wrote it (``compile: false``) resumes under 0.1.20's default (``auto``):
    compiling changes how a step is computed, not the run (``runs.EXECUTION_KEYS``). It was refused as "--resume
    with a different configuration: train.compile: False → 'auto'"."""
    full = train(_cfg(small_data), tmp_path / "full", progress=False)
    _crash_at_epoch(3, small_data, tmp_path / "run", monkeypatch, "train.compile=false")
    assert "compile: false" in (tmp_path / "run" / "config.yaml").read_text()
    resumed = train(_cfg(small_data), tmp_path / "run", resume=True, progress=False)
    assert resumed["test"] == full["test"] and resumed["train_compiled"] is False  # ID-SASRec: nothing to compile
    with pytest.raises(RunError, match="different configuration: train.lr"):  # other keys are still compared
        train(_cfg(small_data, "train.lr=0.5"), tmp_path / "run", resume=True, progress=False)


def test_resume_gives_the_same_final_metrics(small_data: Path, tmp_path: Path, monkeypatch) -> None:
    full = train(_cfg(small_data), tmp_path / "full", progress=False)
    _crash_at_epoch(3, small_data, tmp_path / "resumed", monkeypatch)
    assert not (tmp_path / "resumed" / "results.json").exists()
    saved = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)["state"]
    assert saved["epoch"] == 2 and saved["peak_memory_bytes"] > 0 and saved["peak_rss_bytes"] > 0
    ckpts = tmp_path / "resumed" / "checkpoints"  # what a process killed mid-write leaves (a checkpoint each)
    (ckpts / ".last.pt.0123456789ab.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "resumed" / ".best.pending-epoch-2.safetensors.0123456789ab.tmp").write_bytes(b"half")
    (ckpts / "notes.tmp").write_text("the user's own file")
    resumed = train(_cfg(small_data), tmp_path / "resumed", resume=True, progress=False)
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.pt", "notes.tmp"]
    assert not list((tmp_path / "resumed").glob(".*.tmp"))
    assert resumed["best_epoch"] == full["best_epoch"]
    assert resumed["test"] == full["test"] and resumed["valid"] == full["valid"]
    # the memory figures cover the epochs of the crashed process too (they covered the resumed one only)
    assert resumed["peak_memory_bytes"] >= saved["peak_memory_bytes"]
    assert resumed["peak_rss_bytes"] >= saved["peak_rss_bytes"]
    assert resumed["resumed_after_epochs"] == [2] and "resumed_after_epochs" not in full
    lines = (tmp_path / "resumed" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]


@pytest.mark.parametrize("earlier", [None, ["0.1.9"]])
def test_a_run_resumed_across_crossan_versions_records_both(small_data: Path, tmp_path: Path, monkeypatch,
                                                            earlier: list[str] | None) -> None:
    """A checkpoint recorded no crossan version: a run resumed by another crossan said only the new one in
    results.json, and a suite reused it without a note."""
    import crossan

    _crash_at_epoch(3, small_data, tmp_path / "run", monkeypatch)
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    ck = torch.load(path, weights_only=True)
    assert ck["state"]["versions"] == [crossan.__version__]
    if earlier is None:  # a checkpoint of crossan before 0.1.16
        del ck["state"]["versions"]
    else:
        ck["state"]["versions"] = earlier
    torch.save(ck, path)
    resumed = train(_cfg(small_data), tmp_path / "run", resume=True, progress=False)
    assert resumed["trained_by_versions"] == [*(earlier or ["before 0.1.16"]), crossan.__version__]
    assert "were trained by crossan" in (tmp_path / "run" / "train.log").read_text()
    _crash_at_epoch(3, small_data, tmp_path / "same", monkeypatch)  # one version: nothing added
    assert "trained_by_versions" not in train(_cfg(small_data), tmp_path / "same", resume=True, progress=False)


def test_run_folder_is_never_clobbered(small_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_cfg(small_data, "train.epochs=1"), run, progress=False)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(RunError, match="already holds files"):
        train(_cfg(small_data, "train.epochs=1"), run, progress=False)
    with pytest.raises(RunError, match="different configuration: train.epochs"):
        train(_cfg(small_data, "train.epochs=2"), run, resume=True, progress=False)
    (small_data / "users.tsv").write_text("u1\tnot-an-item\n")
    with pytest.raises(DataError):
        train(_cfg(small_data, "train.epochs=1"), run, resume=True, progress=False)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_cli_train_and_errors(small_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    assert main(["train", "--data", str(small_data), "--out", str(out), "--quiet", "train.epochs=1",
                 "device=cpu"]) == 0
    assert json.loads((out / "results.json").read_text())["method"] == "id"
    assert main(["train", "--data", str(small_data), "--out", str(tmp_path / "x"), "train.epochs=abc"]) == 2
    assert "train.epochs: expected an integer" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nothing")]) == 2
    assert "nothing: no such run folder" in capsys.readouterr().err  # checked as serving checks it
    assert not (tmp_path / "x").exists()
    # --data and a data.path= override naming another folder: the override won in silence
    assert main(["train", "--data", str(small_data), "--out", str(tmp_path / "x"), "train.epochs=1",
                 f"data.path={tmp_path / 'other'}"]) == 2
    assert f"--data {small_data} and data.path={tmp_path / 'other'} name two datasets" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["train", "--data", str(small_data), "--out", str(tmp_path / "x"), "data.path"]) == 2  # no "="
    assert "override 'data.path' is not of the form key=value" in capsys.readouterr().err  # was an IndexError
    assert main(["train", "--data", str(small_data), "--out", str(tmp_path / "x"), "--quiet", "train.epochs=1",
                 "device=cpu", f"data.path={small_data}/"]) == 0  # the same folder, spelt otherwise


def test_bce_loss_trains(small_data: Path, tmp_path: Path) -> None:
    res = train(_cfg(small_data, "train.loss=bce"), tmp_path / "bce", progress=False)
    untrained = train(_cfg(small_data, "train.loss=bce", "train.epochs=0"), tmp_path / "untrained", progress=False)
    assert res["test"]["NDCG@10"] > 1.5 * untrained["test"]["NDCG@10"]  # measured 0.145 vs 0.065


def test_missing_cache_fails_before_the_run_folder_exists(small_data: Path, tmp_path: Path) -> None:
    from crossan.cache import CacheMissingError

    cfg = _cfg(small_data, "method=frozen", f"cache.dir={tmp_path / 'no-cache'}")
    with pytest.raises(CacheMissingError, match="crossan cache"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("n, bs", [(100, 32), (96, 32), (1, 64), (65, 64)])
def test_step_count_matches_the_batches(n: int, bs: int) -> None:
    assert trainer._num_batches(n, bs) == len(trainer._batches(n, bs, seed=1, epoch=1))


def test_gradients_are_freed_after_each_step() -> None:
    """A CUDA audit: gradients were set to None just before each backward, so the last step's stayed alive
    through the next forward (beside its activations: a higher peak) and after the epoch; the side-network
    benchmark's memory figure then missed them. They are now freed right after each optimiser step."""

    class Step(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(50, 16)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(self.emb(x).mean(1) @ self.emb.weight.T, y)

    torch.manual_seed(0)
    model = Step()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    inputs, targets = torch.randint(1, 50, (64, 5)), torch.randint(1, 50, (64,))
    before = model.emb.weight.detach().clone()
    seen: list[bool] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(module.emb.weight.grad is None))
    loss = trainer.train_epoch(model, opt, list(torch.arange(64).split(16)), inputs, targets, torch.device("cpu"),
                               progress=False)
    assert loss > 0 and not torch.equal(model.emb.weight, before)  # it trained
    assert seen == [True] * 4  # no gradient beside any forward
    assert model.emb.weight.grad is None


def test_history_cut_short_by_a_crash_is_truncated(tmp_path: Path) -> None:
    from crossan.runs import truncate_history

    path = tmp_path / "history.jsonl"
    path.write_text('{"epoch": 1, "loss": 2.0}\n{"epoch": 2, "loss": 1.5}\n{"epoch": 3, "lo')
    truncate_history(path, 2)
    assert [json.loads(x)["epoch"] for x in path.read_text().splitlines()] == [1, 2]


def test_a_crash_before_the_checkpoint_keeps_the_best_weights_it_knows(small_data: Path, tmp_path: Path,
                                                                       monkeypatch) -> None:
    """Epoch 3 is a new best but the process dies before its checkpoint: best.safetensors must still hold the
    checkpoint's best epoch (2), not epoch 3's weights (the resumed epoch 3 may train to other weights on a
    GPU); the resumed run then ends as an uninterrupted one."""
    from safetensors.torch import load_file

    full = train(_cfg(small_data), tmp_path / "full", progress=False)
    real_save = trainer.save_checkpoint

    def die_at_epoch_3(path, model, opt, state, *rest):
        if state.epoch == 3:
            raise KeyboardInterrupt("simulated crash")
        real_save(path, model, opt, state, *rest)

    monkeypatch.setattr(trainer, "save_checkpoint", die_at_epoch_3)
    out = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(small_data), out, progress=False)
    assert (out / "best.pending-epoch-3.safetensors").is_file()  # epoch 3 was a new best
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["state"]["epoch"] == 2 and ckpt["state"]["best_epoch"] == 2
    best = load_file(str(out / "best.safetensors"))
    assert all(torch.equal(best[k], v) for k, v in ckpt["model"].items())
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    resumed = train(_cfg(small_data), out, resume=True, progress=False)
    assert resumed["test"] == full["test"] and not list(out.glob("best.pending-*"))


def test_resume_before_the_first_checkpoint_says_it_starts_over(small_data: Path, tmp_path: Path,
                                                                monkeypatch) -> None:
    """Killed after epoch 1's history line but before its checkpoint: ``--resume`` started again from epoch
    1 without a word. It now says so in the log; the history holds each epoch once and the run ends as an
    uninterrupted one."""
    full = train(_cfg(small_data, "train.epochs=2"), tmp_path / "full", progress=False)
    real_save = trainer.save_checkpoint

    def die(*args, **kwargs):
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(trainer, "save_checkpoint", die)
    out = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(small_data, "train.epochs=2"), out, progress=False)
    assert not (out / "checkpoints" / "last.pt").exists() and (out / "history.jsonl").read_text()
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    resumed = train(_cfg(small_data, "train.epochs=2"), out, resume=True, progress=False)
    assert ("has no checkpoint (training stopped before its first epoch was saved, or last.pt was removed); "
            "starting from epoch 1") in (out / "train.log").read_text()
    epochs = [json.loads(line)["epoch"] for line in (out / "history.jsonl").read_text().splitlines()]
    assert epochs == [1, 2] and resumed["test"] == full["test"]


def test_resume_refuses_a_checkpoint_trained_on_other_data(small_data: Path, tmp_path: Path, monkeypatch) -> None:
    """The same configuration can name a dataset folder whose content changed since the crash: continuing
    its epochs on the new data would mix two datasets in one run. The checkpoint records the data's
    fingerprints and --resume compares them."""
    _crash_at_epoch(2, small_data, tmp_path / "run", monkeypatch)
    users = small_data / "users.tsv"
    lines = users.read_text().splitlines()
    users.write_text("\n".join(lines[:-1]) + "\n")  # one user fewer: other splits, same items
    with pytest.raises(RunError, match=r"trained on other data than the dataset holds now \(split_fingerprint"):
        train(_cfg(small_data), tmp_path / "run", resume=True, progress=False)
    users.write_text("\n".join(lines) + "\n")  # the data it was trained on: resumes
    assert train(_cfg(small_data), tmp_path / "run", resume=True, progress=False)["best_epoch"] >= 1


def test_resume_refuses_a_checkpoint_trained_on_another_cache(tmp_path: Path, monkeypatch) -> None:
    """A cover changed and the cache was updated between the crash and ``--resume``: the item ids, and so the
    data fingerprints, are the same, and the run continued its epochs on other states than its first ones,
    reporting only the new cache. The checkpoint now records the cache's digests, compared on resume."""
    from PIL import Image

    from crossan.cache import build_cache
    from crossan.data import prepare
    from crossan.data.synth import generate

    synth = generate(tmp_path / "synth", size="tiny", progress=False)
    extra = ["method=frozen", "modalities=[text,image]", "encoders.preset=tiny", f"cache.dir={tmp_path / 'cache'}",
             "user.dim=32", "precision=fp32"]
    build_cache(_cfg(synth, *extra), prepare(_cfg(synth, *extra).data), ["text", "image"], progress=False)
    _crash_at_epoch(2, synth, tmp_path / "run", monkeypatch, *extra)
    record = next(r for r in prepare(_cfg(synth, *extra).data).catalogue if r.image)
    cover = synth / record.image
    original = cover.read_bytes()
    Image.new("RGB", (24, 24), (255, 0, 255)).save(cover)
    build_cache(_cfg(synth, *extra), prepare(_cfg(synth, *extra).data), ["text", "image"], progress=False)
    changed = (r"last.pt was trained on other inputs than the run reads now \(the cache or the item content "
               r"changed\) \(cache_states.image: [0-9a-f]{64} → [0-9a-f]{64}\)")
    with pytest.raises(RunError, match=changed):
        train(_cfg(synth, *extra), tmp_path / "run", resume=True, progress=False)
    cover.write_bytes(original)  # the cover it was trained on, the cache rebuilt: resumes
    build_cache(_cfg(synth, *extra), prepare(_cfg(synth, *extra).data), ["text", "image"], progress=False)
    assert train(_cfg(synth, *extra), tmp_path / "run", resume=True, progress=False)["best_epoch"] >= 1


def test_a_run_restarted_from_its_first_epoch_drops_the_results_of_its_old_weights(small_data: Path,
                                                                                   tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """A finished run whose checkpoint was deleted (as the checkpoint errors advise) and resumed from epoch 1
    kept its old results.json and per_user.npz until the new run ended: killed before that, the folder read as
    finished (a suite reused it) with weights that no longer matched its results. They now go when training
    resumes, and come back when it ends."""
    full = train(_cfg(small_data, "train.epochs=2"), tmp_path / "run", progress=False)
    (tmp_path / "run" / "checkpoints" / "last.pt").unlink()
    real_batches = trainer._batches

    def crash_in_epoch_2(n, bs, seed, e):
        if e == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_batches(n, bs, seed, e)

    monkeypatch.setattr(trainer, "_batches", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(small_data, "train.epochs=2"), tmp_path / "run", resume=True, progress=False)
    assert not (tmp_path / "run" / "results.json").exists() and not (tmp_path / "run" / "per_user.npz").exists()
    log_text = (tmp_path / "run" / "train.log").read_text()
    assert "removed results.json: the resumed run writes its results again" in log_text
    monkeypatch.setattr(trainer, "_batches", real_batches)
    again = train(_cfg(small_data, "train.epochs=2"), tmp_path / "run", resume=True, progress=False)
    assert again["test"] == full["test"] and (tmp_path / "run" / "per_user.npz").is_file()


def test_a_folder_left_by_a_kill_while_writing_config_yaml_takes_a_new_run(small_data: Path,
                                                                           tmp_path: Path) -> None:
    """Killed while config.yaml was being written, a run folder held only the writer's temporary file: a new
    run said "already holds files; pass --resume", and --resume "nothing to resume". The temporary file holds
    no run: a new run now starts there and removes it."""
    run = tmp_path / "run"
    run.mkdir()
    (run / ".config.yaml.0123456789ab.tmp").write_text("method: i")
    assert train(_cfg(small_data, "train.epochs=1"), run, progress=False)["best_epoch"] == 1
    assert not (run / ".config.yaml.0123456789ab.tmp").exists() and (run / "config.yaml").is_file()
    (run / ".results.json.0123456789ab.tmp").write_text("{")
    with pytest.raises(RunError, match="already holds files"):  # beside a run: the run is what counts
        train(_cfg(small_data, "train.epochs=1"), run, progress=False)


def test_resume_accepts_a_dataset_moved_to_another_folder(small_data: Path, tmp_path: Path, monkeypatch) -> None:
    """The same files in another folder (a run copied to another machine): ``--resume`` refused "a different
    configuration (data.path …)" although the checkpoint's fingerprints are the check on the data. It now
    resumes, ends as the uninterrupted run, and config.yaml names the new folder."""
    import shutil

    import yaml

    full = train(_cfg(small_data, "train.epochs=3"), tmp_path / "full", progress=False)
    first = Path(shutil.copytree(small_data, tmp_path / "first"))
    _crash_at_epoch(2, first, tmp_path / "run", monkeypatch, "train.epochs=3")
    moved = Path(shutil.move(first, tmp_path / "moved"))
    resumed = train(_cfg(moved, "train.epochs=3"), tmp_path / "run", resume=True, progress=False)
    assert resumed["test"] == full["test"]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["path"] == str(moved.resolve())
    assert f"resumed from another folder, data.path: '{first.resolve()}' → '{moved.resolve()}'" in (
        tmp_path / "run" / "train.log").read_text()


def test_resume_refuses_a_checkpoint_of_another_run(small_data: Path, tmp_path: Path, monkeypatch) -> None:
    """A last.pt copied in from another run folder (here another seed) matched this folder's config.yaml
    and was continued in silence, giving a results.json labelled with this run's seed."""
    import shutil

    _crash_at_epoch(3, small_data, tmp_path / "seed4", monkeypatch, "seed=4")
    _crash_at_epoch(2, small_data, tmp_path / "seed3", monkeypatch, "seed=3")
    shutil.copy(tmp_path / "seed4" / "checkpoints" / "last.pt", tmp_path / "seed3" / "checkpoints" / "last.pt")
    with pytest.raises(RunError, match=r"last.pt was written by a run of another configuration than this "
                                       r"folder's config\.yaml \(seed: 4 → 3; the checkpoint's value → "
                                       r"config\.yaml's\): if config\.yaml was edited, restore"):
        train(_cfg(small_data, "seed=3"), tmp_path / "seed3", resume=True, progress=False)
    assert train(_cfg(small_data, "seed=4"), tmp_path / "seed4", resume=True, progress=False)["best_epoch"] >= 1


_MEMORY_SCRIPT = """
import json, sys
if sys.argv[3] == "preimported":  # what a long-lived process has loaded before it trains
    import torch
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], fused=True)
    import crossan.towers.id  # noqa: F401
from crossan.config import load_config
from crossan.trainer import train
cfg = load_config([], [f"data.path={sys.argv[1]}", "train.epochs=1", "device=cpu", "method=id"])
print(json.dumps(train(cfg, sys.argv[2], progress=False)["peak_memory_bytes"]))
"""


@pytest.mark.subprocess
def test_the_memory_figure_holds_the_method_not_the_libraries_it_imports(small_data: Path, tmp_path: Path) -> None:
    """The idle baseline is taken after the libraries the run will import are loaded (the optimiser's first use
    alone loads about 70 MiB of modules): a fresh process and one that had imported them report the same peak
    (measured: 30 and 29 MiB for this ID run; 103 and 32 before the baseline moved)."""
    import subprocess
    import sys

    peaks = {}
    for mode in ("fresh", "preimported"):
        proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(small_data), str(tmp_path / mode), mode],
                              capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        peaks[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert abs(peaks["fresh"] - peaks["preimported"]) < 20 * 2**20, peaks


def test_a_capped_epoch_extrapolates_from_its_steps_after_the_first(small_data: Path, tmp_path: Path,
                                                                    monkeypatch) -> None:
    """One-off work in the first step (torch.compile, tables built on first use) is timed apart: multiplied
    by the full epoch's step count it made a 2-step capped run report 1,140 s per epoch for a 1 s epoch."""
    import time as _time

    from crossan.recommender import Recommender

    real_forward, calls = Recommender.forward, []

    def slow_first_step(self, *args, **kwargs):
        if not calls:
            _time.sleep(4.0)  # stands in for compilation
        calls.append(1)
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(Recommender, "forward", slow_first_step)
    train(_cfg(small_data, "train.epochs=1", "train.batch_size=8", "train.max_steps_per_epoch=3"),
          tmp_path / "run", progress=False)
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert record["steps"] == 3 and record["full_epoch_steps"] >= 10
    assert record["first_step_s"] >= 4.0
    steady = record["train_time_s"] / record["full_epoch_steps"]  # per step, from steps 2 and 3
    assert steady < 1.2, record  # with the first step in: at least 4.0 / 3 per step (a step here: ~0.1 s)

    # a one-step cap has nothing after the first step: the history says which step the figure came from
    calls.clear()
    train(_cfg(small_data, "train.epochs=1", "train.batch_size=8", "train.max_steps_per_epoch=1"),
          tmp_path / "one", progress=False)
    (record,) = [json.loads(line) for line in (tmp_path / "one" / "history.jsonl").read_text().splitlines()]
    assert record["steps"] == 1 and record["first_step_s"] >= 4.0
    assert record["train_time_s"] == pytest.approx(record["first_step_s"] * record["full_epoch_steps"])


def test_any_eval_ks_logs_without_a_cut_off_of_10(small_data: Path, tmp_path: Path) -> None:
    """eval.ks without 10: the epoch and final log lines show the cut-off evaluated (here 20) and
    train.metric; they used to read HR@10 (a KeyError at the end of training, nan per epoch)."""
    cfg = _cfg(small_data, "train.epochs=1", "eval.ks=[5,20]", "train.metric=NDCG@20")
    res = train(cfg, tmp_path / "run", progress=False)
    assert set(res["test"]) == {"HR@5", "HR@20", "NDCG@5", "NDCG@20", "MRR"}
    log = (tmp_path / "run" / "train.log").read_text()
    t, v = res["test"], res["valid"]
    assert (f"valid HR@20 {v['HR@20']:.4f} NDCG@20 {v['NDCG@20']:.4f} MRR {v['MRR']:.4f} *") in log
    assert (f"best epoch 1 | test HR@20 {t['HR@20']:.4f} NDCG@20 {t['NDCG@20']:.4f} MRR {t['MRR']:.4f} | "
            f"{tmp_path / 'run' / 'results.json'}") in log
    assert "nan" not in log
    from crossan.trainer import metrics_line

    metrics = {"HR@5": 0.5, "HR@10": 0.25, "NDCG@5": 0.125, "NDCG@10": 0.0625, "MRR": 0.03125}
    assert (metrics_line(metrics, load_config([], ["eval.ks=[5,10]"]))
            == "HR@10 0.2500 NDCG@10 0.0625 MRR 0.0312")
    assert (metrics_line(metrics, load_config([], ["eval.ks=[5]", "train.metric=HR@5"]))
            == "HR@5 0.5000 NDCG@5 0.1250 MRR 0.0312")


def test_resume_refuses_another_compute_dtype(small_data: Path, tmp_path: Path, monkeypatch) -> None:
    """precision=auto resolves by hardware: a run started in float32 and resumed where the CPU has bf16 units
    would switch dtype halfway. The checkpoint records the dtype; the resume is refused, naming both dtypes
    and the precision that forces the one it started with, which is then accepted."""
    import crossan.precision as precision

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    run = tmp_path / "run"
    _crash_at_epoch(2, small_data, run, monkeypatch, "train.epochs=2")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)  # "another machine"
    with pytest.raises(RunError) as e:
        train(_cfg(small_data, "train.epochs=2"), run, resume=True, progress=False)
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["compute_dtype"] == "float32"
    assert ("last.pt was trained with compute dtype float32, but this run would continue in bfloat16 "
            "(precision=auto on this machine and device), and a run must not switch dtype halfway: resume "
            "with precision=fp32 to continue in float32") in str(e.value)
    res = train(_cfg(small_data, "train.epochs=2", "precision=fp32"), run, resume=True, progress=False)
    assert res["compute_dtype"] == "float32" and res["epochs_run"] == 2
    # only the precision may differ from config.yaml; the other keys still must agree
    with pytest.raises(RunError, match=r"different configuration: train\.lr: 0\.0002 → 0\.001 \(.*config\.yaml's value → this command's;"):
        train(_cfg(small_data, "train.epochs=2", "precision=fp32", "train.lr=1e-3"), run, resume=True,
              progress=False)
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    del ck["compute_dtype"]  # as an older crossan wrote it: a change of precision cannot be checked
    torch.save(ck, run / "checkpoints" / "last.pt")
    with pytest.raises(RunError, match=r"records no compute dtype .* resume with precision=auto as in its"):
        train(_cfg(small_data, "train.epochs=2", "precision=fp32"), run, resume=True, progress=False)


def test_a_run_saved_before_precision_existed_resumes_in_float32(tmp_path: Path, monkeypatch) -> None:
    """A precision review (2026-12-02): a config.yaml without ``precision`` (every run before the key ran in
    float32) took today's default, auto, so on a CPU with bf16 units the old run would continue in bf16
    unchecked (its checkpoint records no dtype). It now reads as fp32: refused under auto there, naming
    precision=fp32; accepted where auto is float32 anyway."""
    import yaml

    import crossan.precision as precision
    from crossan.config import to_dict
    from crossan.runs import _check_compute_dtype, check_run_dir

    cfg = load_config([], ["device=cpu"])
    saved = to_dict(cfg)
    del saved["precision"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    changed_from = check_run_dir(tmp_path, cfg, resume=True).precision_from
    assert changed_from == "fp32"
    ck = tmp_path / "last.pt"
    for has_bf16, refused in ((True, True), (False, False)):
        monkeypatch.setattr(precision, "cpu_has_bf16", lambda v=has_bf16: v)
        now = precision.dtype_name(precision.compute_dtype(cfg.precision, "cpu"))
        if refused:
            with pytest.raises(RunError, match=r"records no compute dtype .* resume with precision=fp32 as in"):
                _check_compute_dtype(ck, None, now, cfg.precision, changed_from, "fresh")
        else:
            _check_compute_dtype(ck, None, now, cfg.precision, changed_from, "fresh")


# ------------------------------------------------------------------------ model selection (fixed validation)
def _fixed_validation(monkeypatch: pytest.MonkeyPatch, values: list[float]) -> None:
    """Validation returns ``values[e - 1]`` for every metric at epoch e; training and test run for real."""
    from crossan.config import metric_names

    calls: list[float] = []

    def fake(model, data, split, cfg, item_table=None, where="", collective=False, progress=False):
        calls.append(values[len(calls)])
        return {name: calls[-1] for name in metric_names(cfg.eval.ks)}

    monkeypatch.setattr(trainer, "evaluate", fake)


def test_early_stopping_waits_patience_epochs_and_tests_the_best(small_data: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation testing (2026-12-02): never counting a bad epoch, stopping one epoch late, preferring a later
    tied epoch, testing the last epoch's weights instead of the best's and skipping the last epoch's
    validation all went unnoticed (on the toy data the last epoch was usually the best)."""
    _fixed_validation(monkeypatch, [0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    res = train(_cfg(small_data, "train.epochs=6", "train.patience=2"), tmp_path / "stop", progress=False)
    assert res["epochs_run"] == 3 and res["best_epoch"] == 1

    _fixed_validation(monkeypatch, [0.5, 0.5, 0.4])
    assert train(_cfg(small_data, "train.epochs=3"), tmp_path / "tie", progress=False)["best_epoch"] == 1

    _fixed_validation(monkeypatch, [0.5, 0.1, 0.1])
    res = train(_cfg(small_data, "train.epochs=3"), tmp_path / "best", progress=False)
    monkeypatch.undo()
    assert res["best_epoch"] == 1
    assert rescore(tmp_path / "best", device="cpu")["test"] == pytest.approx(res["test"])  # epoch 1's weights


def test_the_last_epoch_is_validated_off_the_eval_grid(small_data: Path, tmp_path: Path) -> None:
    train(_cfg(small_data, "train.epochs=3", "train.eval_every=2"), tmp_path / "run", progress=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [("valid" in x) for x in lines] == [False, True, True]


def test_a_failed_run_stops_its_memory_sampling_thread(small_data: Path, tmp_path: Path, monkeypatch) -> None:
    """The memory monitor's thread (a wake-up every 20 ms) was stopped only by a run that reached its test: a
    run that diverged (NonFiniteError) or failed to build (a missing cache) left it polling for the rest of
    the process, preempting the training threads of every later run there (a sweep in a notebook)."""
    from crossan.errors import CacheMissingError, NonFiniteError

    monitors: list[trainer.PeakRSSMonitor] = []

    class Recorded(trainer.PeakRSSMonitor):
        def start(self) -> trainer.PeakRSSMonitor:
            monitors.append(self)
            return super().start()

    monkeypatch.setattr(trainer, "PeakRSSMonitor", Recorded)
    with pytest.raises(NonFiniteError):
        train(_cfg(small_data, "train.epochs=1", "train.lr=1e30"), tmp_path / "diverged", progress=False)
    with pytest.raises(CacheMissingError):  # a missing cache: fails in build_model, after the monitor started
        train(_cfg(small_data, "method=frozen", "modalities=[text]", "encoders.preset=tiny",
                   f"cache.dir={tmp_path / 'no-cache'}"), tmp_path / "uncached", progress=False)
    assert len(monitors) == 2 and not any(m._thread.is_alive() for m in monitors)


def test_a_run_detaches_its_log_when_it_ends(small_data: Path, tmp_path: Path) -> None:
    """A run's train.log handler stayed on the "crossan" logger after ``train`` returned (or failed), so what
    a later step of the process logged — another dataset's reader, a cache build — was appended to that run's
    train.log, and the file stayed open."""
    import logging

    from crossan.errors import NonFiniteError

    crossan_log = logging.getLogger("crossan")
    train(_cfg(small_data, "method=id", "train.epochs=1"), tmp_path / "done", progress=False)
    with pytest.raises(NonFiniteError):
        train(_cfg(small_data, "method=id", "train.epochs=1", "train.lr=1e30"), tmp_path / "diverged",
              progress=False)
    assert crossan_log.handlers == [] and crossan_log.propagate
    crossan_log.warning("a later step's message")
    for run in ("done", "diverged"):
        text = (tmp_path / run / "train.log").read_text()
        assert text and "a later step's message" not in text


def test_a_run_ended_by_its_epoch_cap_before_its_patience_warns(small_data: Path, tmp_path: Path) -> None:
    """A run that train.epochs stopped before train.patience ran out says so at its end, in train.log (a suite
    report flags it as capped and claims nothing on it): one whose best epoch is the last (before, the only
    case), and one whose best is earlier with fewer than `patience` validations after it (not warned before).
    A run that early stopping ended does not warn, nor a cost run capped by max_steps_per_epoch (capped on
    purpose) or a run of 0 epochs (it tests its initial weights). ``train.lr=1e-12``: no epoch improves on the
    first, so the best epoch is 1."""
    def warned(name: str) -> bool:
        return "before train.patience=" in (tmp_path / name / "train.log").read_text()

    assert train(_cfg(small_data, "train.epochs=1"), tmp_path / "one", progress=False)["best_epoch"] == 1
    assert warned("one")
    flat = ("train.lr=1e-12", "train.lr_adapter=1e-12", "train.epochs=3")  # steps below fp32 rounding
    out = train(_cfg(small_data, *flat, "train.patience=5"), tmp_path / "early_best", progress=False)
    assert (out["best_epoch"], out["epochs_run"]) == (1, 3) and warned("early_best")
    assert "ended the run 2 validation(s) after its best epoch 1" in (tmp_path / "early_best" / "train.log").read_text()
    out = train(_cfg(small_data, *flat, "train.patience=2"), tmp_path / "patience", progress=False)
    assert (out["best_epoch"], out["epochs_run"]) == (1, 3) and not warned("patience")  # stopped on both at 3
    out = train(_cfg(small_data, *flat, "train.patience=1"), tmp_path / "stopped", progress=False)
    assert (out["best_epoch"], out["epochs_run"]) == (1, 2) and not warned("stopped")
    train(_cfg(small_data, "train.epochs=1", "train.max_steps_per_epoch=2"), tmp_path / "cost", progress=False)
    assert not warned("cost")
    zero = train(_cfg(small_data, "train.epochs=0"), tmp_path / "zero", progress=False)
    assert zero["best_epoch"] == 0 and zero["train_time_per_epoch_s"] is None  # no epoch, no time (was 0.0)
    assert not (tmp_path / "zero" / "train.log").is_file() or not warned("zero")


@pytest.mark.parametrize(("epochs", "patience", "every", "capped"), [
    (2, 1, 3, True),    # validated only at the last epoch, 2: the best, and nothing after it
    (4, 1, 3, False),   # validated at 3 (best) and 4: patience 1 ran out at the cap
    (4, 2, 3, True),    # one validation after the best, fewer than 2
])
def test_a_suite_report_flags_as_capped_what_the_trainer_warns_of(small_data: Path, tmp_path: Path, epochs: int,
                                                                   patience: int, every: int, capped: bool) -> None:
    """The report's rule (``_capped``, from the run's config.yaml and best epoch) and the trainer's warning
    (from its loop state) agree on real runs with ``eval_every`` > 1 (``train.lr=1e-12``: no epoch improves on
    the first validated one). The report missed the first until it stopped counting the last epoch as a validation
    after a best epoch at the last epoch."""
    from crossan.reports.table import _capped, _train_setting

    flat = ("train.lr=1e-12", "train.lr_adapter=1e-12")
    run = tmp_path / "run"
    out = train(_cfg(small_data, *flat, f"train.epochs={epochs}", f"train.patience={patience}",
                     f"train.eval_every={every}"), run, progress=False)
    warned = "before train.patience=" in (run / "train.log").read_text()
    seed = {"best_epoch": out["best_epoch"],
            **{name: _train_setting(str(run), key) for name, key in
               (("epochs_allowed", "epochs"), ("patience", "patience"), ("eval_every", "eval_every"))}}
    assert warned is capped and _capped(seed) is capped


def test_only_rank_0_warns_of_a_capped_run(small_data: Path, tmp_path: Path, monkeypatch, capfd) -> None:
    """Under torchrun the other ranks' "crossan" logger keeps WARNING with no handler, so a warning of theirs
    reaches stderr (Python's last-resort handler): the capped warning, the same on every rank, was printed once
    per rank. Simulated here: from the test of the best weights on, this process is a rank other than 0."""
    real_load = trainer.load_weights

    def load_as_another_rank(*args, **kwargs):
        real_load(*args, **kwargs)
        monkeypatch.setattr(trainer.dist, "is_main", lambda: False)
        trainer._setup_logging(tmp_path / "run")  # the logger as a rank other than 0 sets it up

    monkeypatch.setattr(trainer, "load_weights", load_as_another_rank)
    capfd.readouterr()
    assert train(_cfg(small_data, "train.epochs=1"), tmp_path / "run", progress=False)["best_epoch"] == 1
    assert "before train.patience=" not in capfd.readouterr().err


_TRAIN_FOREVER = """
import sys
from crossan.config import load_config
from crossan.trainer import train
cfg = load_config([], [f"data.path={sys.argv[1]}", "train.epochs=100000", "train.patience=100000",
                       "train.batch_size=32", "device=cpu", "method=id"])
train(cfg, sys.argv[2], progress=False)
"""


@pytest.mark.subprocess
def test_a_folder_that_another_process_trains_into_is_refused(small_data: Path, tmp_path: Path) -> None:
    """Nothing stopped a ``--resume`` of a run that still trained, or a second ``train`` of one ``--out``: both
    processes wrote history.jsonl (epochs 4, 4, 5, 5, …), the checkpoints and results.json. The training
    process now holds a lock on its folder from its checks to its end; the kernel drops it when it dies."""
    import subprocess
    import sys
    import time

    from crossan.runs import lock_run_folder, unlock_run_folder

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", _TRAIN_FOREVER, str(small_data), str(run)])
    try:
        deadline = time.monotonic() + 120
        while not (run / "history.jsonl").is_file() or not (run / "history.jsonl").read_text():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        cfg = _cfg(small_data, "train.epochs=100000", "train.patience=100000", "method=id")
        with pytest.raises(RunError, match="another crossan process is training into this folder"):
            train(cfg, run, resume=True, progress=False)
        with pytest.raises(RunError, match="another crossan process is training into this folder"):
            lock_run_folder(run)
    finally:
        proc.kill()
        proc.wait()
    unlock_run_folder(lock_run_folder(run))  # released by the kernel with the killed process
    # a new run into a folder locked before it holds anything is refused too (the lock is taken before the checks)
    empty = tmp_path / "empty"
    empty.mkdir()
    fd = lock_run_folder(empty)
    try:
        with pytest.raises(RunError, match="another crossan process is training into this folder"):
            train(_cfg(small_data), empty, progress=False)
    finally:
        unlock_run_folder(fd)
    assert not any(empty.iterdir())
    assert train(_cfg(small_data, "train.epochs=1"), empty, progress=False)["best_epoch"] == 1


def test_a_train_log_that_cannot_be_written_is_said_once_and_hides_no_error(tmp_path: Path, capsys) -> None:
    """On a full disk every later log line printed logging's "--- Logging error ---" traceback, and closing the
    log (its flush) raised ENOSPC in the trainer's `finally`, which replaced the run's own error (the file it
    could not write) with a bare "[Errno 28]"."""
    import errno
    import logging

    class FullDisk:
        def write(self, text: str) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            self.flush()

    trainer._setup_logging(tmp_path)
    try:
        handler = next(h for h in trainer.log.handlers if isinstance(h, logging.FileHandler))
        logging.getLogger("crossan.plugin").info("step %d", "one")  # a record's own error: the file goes on
        trainer.log.info("after it")
        handler.flush()
        assert "after it" in (tmp_path / "train.log").read_text() and "cannot write" not in capsys.readouterr().err
        handler.stream = FullDisk()
        for k in range(3):
            trainer.log.info("line %d", k)
        err = capsys.readouterr().err
        assert "Logging error" not in err and "Traceback" not in err, err
        assert err.count("cannot write") == 1 and f"cannot write {tmp_path / 'train.log'} (No space left" in err
        assert "line 2" in err  # the log goes on on stderr
    finally:
        with pytest.raises(RuntimeError, match="the run's own error"):
            try:
                raise RuntimeError("the run's own error")
            finally:
                trainer._end_logging()
    assert trainer.log.handlers == [] and trainer.log.propagate


def test_a_cache_updated_while_the_run_opened_it_is_refused(small_data: Path, tmp_path: Path, monkeypatch) -> None:
    """The cache's digest was read after the model had loaded the states: a `crossan cache` update in between
    made results.json record a cache the run never read (and evaluate then scored the new one without a word)."""
    from crossan.errors import CacheError

    digests = iter([{"image": "a" * 64}, {"image": "b" * 64}])  # before and after the model read the cache
    monkeypatch.setattr(trainer, "cache_states_digests", lambda cfg, data: next(digests))
    with pytest.raises(CacheError, match=r"^the layer-state cache of image changed while this run opened it"):
        train(_cfg(small_data, "modalities=[image]"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
