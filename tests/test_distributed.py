"""torchrun on CPU (gloo, 2 processes on loopback): training completes, its checkpoint loads in one process,
and 2-process evaluation gives exactly the single-process metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crossan.trainer import rescore

pytestmark = [pytest.mark.distributed, pytest.mark.subprocess]


def torchrun(args: list[str], nproc: int = 2, timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_process_training_and_exact_evaluation(small_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    torchrun(["-m", "crossan", "train", "--data", str(small_data), "--out", str(out), "--quiet", "device=cpu",
              "train.epochs=4", "train.batch_size=32", "eval.batch_size=16"])
    res = json.loads((out / "results.json").read_text())
    assert res["world_size"] == 2 and res["best_epoch"] >= 1
    # the checkpoint loads and evaluates in a single process, with exactly the metrics the 2 ranks computed
    single = rescore(out, device="cpu")
    assert single["test"] == res["test"]
    assert single["valid"] == res["valid"]
    # it learned: well above the same model untrained (one process, 4 epochs: NDCG@10 0.164 vs 0.065)
    from crossan.config import load_config
    from crossan.trainer import train

    untrained = train(load_config([], [f"data.path={small_data}", "device=cpu", "train.epochs=0"]),
                      tmp_path / "untrained", progress=False)
    assert res["test"]["NDCG@10"] > 2 * untrained["test"]["NDCG@10"]


def test_resume_needs_the_same_world_size(small_data: Path, tmp_path: Path) -> None:
    from crossan.config import load_config
    from crossan.trainer import RunError, train

    out = tmp_path / "ddp"
    torchrun(["-m", "crossan", "train", "--data", str(small_data), "--out", str(out), "--quiet", "device=cpu",
              "train.epochs=1"])
    cfg = load_config([], [f"data.path={small_data}", "device=cpu", "train.epochs=1"])
    with pytest.raises(RunError, match="same world size"):
        train(cfg, out, resume=True, progress=False)


def test_two_process_cache_equals_single_process_cache(tmp_path: Path) -> None:
    from crossan.cache import build_cache
    from crossan.config import load_config
    from crossan.data import prepare
    from crossan.data.synth import generate

    data_dir = generate(tmp_path / "data", size="tiny", seed=5, progress=False)
    mods = ["text", "image", "audio"]
    common = [f"data.path={data_dir}", "encoders.preset=tiny", "encoders.batch_size=8", "device=cpu"]
    cfg = load_config([], [*common, f"cache.dir={tmp_path / 'single'}"])
    build_cache(cfg, prepare(cfg.data), mods, progress=False)
    torchrun(["-m", "crossan", "cache", "--data", str(data_dir), "--modalities", ",".join(mods),
              "encoders.preset=tiny", "encoders.batch_size=8", "device=cpu", f"cache.dir={tmp_path / 'ddp'}"])
    for m in mods:
        for name in ("states.npy", "present.npy"):
            a = (tmp_path / "single" / m / name).read_bytes()
            b = (tmp_path / "ddp" / m / name).read_bytes()
            assert a == b, f"{m}/{name} differs"


def test_two_process_momef_statistics_cover_every_item_and_one_summary_is_printed(tmp_path: Path) -> None:
    """The router statistics in results.json are the catalogue's (each rank embeds only its chunks of the
    item table; they used to be rank 0's chunks only), the history's loss is the mean over both ranks, and
    the JSON summary is printed once, not once per rank."""
    from crossan.cache import build_cache
    from crossan.config import load_config
    from crossan.data import prepare
    from crossan.data.synth import generate
    from crossan.runs import load_run

    data_dir = generate(tmp_path / "data", size="tiny", seed=5, progress=False)
    common = [f"data.path={data_dir}", "encoders.preset=tiny", "device=cpu", f"cache.dir={tmp_path / 'cache'}",
              "method=crossan", "modalities=text,image,audio", "eval.batch_size=16", "train.epochs=1"]
    cfg = load_config([], common)
    data = prepare(cfg.data)
    build_cache(cfg, data, cfg.modalities, progress=False)
    out = tmp_path / "ddp"
    proc = torchrun(["-m", "crossan", "train", "--data", str(data_dir), "--out", str(out), "--quiet", *common])
    assert proc.stdout.count('"method"') == 1
    res = json.loads((out / "results.json").read_text())
    assert res["world_size"] == 2 and data.num_items > 16
    assert res["tower"]["router_items"] == data.num_items
    _, _, model = load_run(out, device="cpu")  # the same weights in one process give the same statistics
    model.tower.reset_stats()
    model.tower.embed_all(16)
    single = model.tower.stats()
    assert single["router_items"] == data.num_items
    for m, w in single["router_weight"].items():
        assert res["tower"]["router_weight"][m] == pytest.approx(w, abs=1e-6)


def test_verify_is_refused_under_torchrun(tmp_path: Path) -> None:
    from crossan.data.synth import generate

    data_dir = generate(tmp_path / "data", size="tiny", seed=5, progress=False)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "crossan",
           "cache", "--data", str(data_dir), "--modalities", "text", "--preset", "tiny", "--verify",
           f"cache.dir={tmp_path / 'cache'}", "device=cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0 and "--verify checks a completed cache in one process" in proc.stderr
    assert not (tmp_path / "cache" / "text").exists()  # nothing was built


_GRAD_SCRIPT = '''
import sys, torch
import crossan.recommender as R
from crossan import distributed as dist
from crossan.config import load_config
from crossan.data import prepare
from crossan.trainer import build_model, training_rows
from crossan.utils import seed_everything

def fixed_negatives(inputs, targets, num_items):  # no sampling: the loss is a sum over positions
    return torch.where(targets > 0, (targets * 7 + 3) % num_items + 1, torch.zeros_like(targets))

R.sample_negatives = fixed_negatives
data_path, out, ranks = sys.argv[1], sys.argv[2], int(sys.argv[3])
# fp32: under bf16 autocast (``precision=auto`` on a CPU with bf16 units) two ranks' half batches round differently
# from one process's whole batch, beyond this test's tolerance; the weighting it checks is exact in fp32
cfg = load_config([], [f"data.path={data_path}", "device=cpu", "method=id", "train.loss=bce", "user.dropout=0",
                       "precision=fp32"])
data = prepare(cfg.data)
device = dist.init_from_env(torch.device("cpu"))
seed_everything(cfg.seed)
model = build_model(cfg, data, device).train()
inputs, targets = training_rows(data)
batch = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(0))[:31]  # odd: unequal shares
mine = batch[dist.rank()::dist.world_size()]
step = torch.nn.parallel.DistributedDataParallel(model) if ranks > 1 else model
step(inputs[mine], targets[mine]).backward()
if dist.rank() == 0:
    torch.save({n: p.grad for n, p in model.named_parameters() if p.grad is not None}, out)
dist.shutdown()
'''


def test_two_process_gradient_equals_the_single_process_gradient(small_data: Path, tmp_path: Path) -> None:
    """With the negatives fixed and no dropout, the BCE loss is a mean over positions: 2 ranks must give the
    gradient of one process on the same global batch. Each rank's mean over its own positions, averaged by
    DDP, weighed a position on the rank with fewer positions more (up to 5% off)."""
    import torch

    script = tmp_path / "grad.py"
    script.write_text(_GRAD_SCRIPT)
    torchrun([str(script), str(small_data), str(tmp_path / "two.pt"), "2"])
    one = subprocess.run([sys.executable, str(script), str(small_data), str(tmp_path / "one.pt"), "1"],
                         capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr[-2000:]
    two, ref = torch.load(tmp_path / "two.pt"), torch.load(tmp_path / "one.pt")
    assert set(two) == set(ref)
    for name in ref:
        torch.testing.assert_close(two[name], ref[name], rtol=1e-4, atol=1e-7, msg=name)


_EXIT_SCRIPT = """
import sys
sys.setswitchinterval(30)  # the main thread keeps the GIL while it runs Python: the race below, every time
import torch
from crossan import distributed as dist
dist.init_from_env(torch.device("cpu"))
step = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 8))
x = torch.randn(4, 8, requires_grad=True)
x.register_hook(lambda g: torch.distributed.all_reduce(g.clone(), async_op=True) and None)  # still in flight
step(x).sum().backward()
dist.shutdown()
"""


def test_leaving_the_group_right_after_a_step_does_not_abort(tmp_path: Path) -> None:
    """A gloo worker drops a finished collective only after the rank's wait returned, and a collective started
    inside ``backward`` needs the GIL for that drop. A rank that went from its last step to interpreter exit
    without handing the GIL over was aborted by the C++ runtime at exit (SIGABRT; one CI run failed so, in the
    gradient test above: 2 runs in about 135). Here an all-reduce is still in flight when the rank leaves, which
    makes the race likely: without the GIL hand-over in :func:`crossan.distributed.shutdown` this test failed 3
    runs of 3 (a rank aborted within the first three pairs); with it, 4 runs of 4 passed."""
    import socket

    script = tmp_path / "exit.py"
    script.write_text(_EXIT_SCRIPT)
    for attempt in range(4):
        with socket.socket() as s:  # a free port for this pair's rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        procs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2",
                                                  "RANK": str(r), "LOCAL_RANK": str(r),
                                                  "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
                 for r in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        for r, (p, (_, err)) in enumerate(zip(procs, outs)):
            assert p.returncode == 0, f"pair {attempt}, rank {r}: exit {p.returncode}\n{err[-2000:]}"


def test_cache_under_torchrun_waits_for_the_slowest_shard_beyond_training_s_timeout(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    """Under torchrun a rank that finished its cache shard waited at a barrier for the slowest one, and rank 0's
    join held the others at a second barrier, both within the process group's 30 minutes: shards of a build of
    many hours can end further apart, and a timed-out barrier failed the job (and each rerun of its last
    shards). ``crossan cache`` joins the group with :data:`~crossan.distributed.CACHE_TIMEOUT`; training keeps
    30 minutes."""
    import datetime

    from crossan import distributed
    from crossan.cli import main
    from crossan.data.synth import generate

    class Joined(Exception):
        pass

    timeouts: list[datetime.timedelta] = []

    def init_process_group(backend: str, timeout: datetime.timedelta) -> None:
        timeouts.append(timeout)
        raise Joined

    data_dir = generate(tmp_path / "data", size="tiny", seed=5, progress=False)
    monkeypatch.setattr(distributed.dist, "init_process_group", init_process_group)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(Joined):
        main(["cache", "--data", str(data_dir), "--modalities", "text", "encoders.preset=tiny", "device=cpu",
              f"cache.dir={tmp_path / 'c'}"])
    with pytest.raises(Joined):
        main(["train", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--quiet", "device=cpu",
              "method=id", "train.epochs=1"])
    assert timeouts == [datetime.timedelta(hours=24), datetime.timedelta(minutes=30)]


_SLOW_HASH_SCRIPT = '''
import datetime, json, os, sys, time
import torch.distributed as tdist
import crossan.cache.integrity as integrity
from crossan import distributed as dist
from crossan.config import load_config
from crossan.trainer import train

joined, real_init = [], tdist.init_process_group

def init_process_group(backend, timeout):  # 4 s stand in for TIMEOUT's 30 minutes: rank 0's hashing takes longer
    joined.append(timeout)
    real_init(backend, timeout=datetime.timedelta(seconds=4))

tdist.init_process_group = init_process_group
rank, hashed, real_hash = int(os.environ["RANK"]), [], integrity._hash_file

def slow_hash(path):  # a large catalogue: on rank 0 the hashing outlasts the group's timeout
    if rank == 0 and not hashed:
        time.sleep(9)
    hashed.append(str(path))
    return real_hash(path)

integrity._hash_file = slow_hash
synth, out = sys.argv[1], sys.argv[2]
cfg = load_config([], [f"data.path={synth}", "method=fft", "modalities=[text,image]", "encoders.preset=tiny",
                       "train.epochs=1", "train.max_steps_per_epoch=1", "train.batch_size=8", "user.dim=32",
                       "device=cpu", "precision=fp32"])
try:
    res = train(cfg, out, progress=False)
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"joined_s": [t.total_seconds() for t in joined], "hashed": len(hashed),
                   "content_sources": res.get("content_sources")}, f)
finally:
    dist.shutdown()
'''


def test_ranks_share_the_media_hashing_and_do_not_wait_for_it_within_the_training_timeout(tmp_path: Path) -> None:
    """An end-to-end run (fft) records the digest of the media it reads (``content_sources``). Rank 0 hashed
    every file while the other ranks waited at the first barrier, whose 30-minute timeout a large catalogue
    outlasted (the job failed). Here the timeout is 4 s and rank 0's hashing takes 9 s: before, rank 1 failed
    at that barrier ("Timed out waiting 4000ms"). Now every rank hashes its share, the shares are gathered over
    a group that waits up to ``CACHE_TIMEOUT``, and both ranks record the single-process digests."""
    from crossan.config import load_config
    from crossan.data import prepare
    from crossan.data.synth import generate
    from crossan.runs import content_digests

    synth = generate(tmp_path / "synth", size="tiny", seed=5, progress=False)
    script, out = tmp_path / "slow_hash.py", tmp_path / "run"
    script.write_text(_SLOW_HASH_SCRIPT)
    torchrun([str(script), str(synth), str(out)])
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    cfg = load_config([], [f"data.path={synth}", "method=fft", "modalities=[text,image]", "encoders.preset=tiny"])
    data = prepare(cfg.data)
    single = content_digests(cfg, data)
    assert set(single) == {"text", "image"}
    images = sum(1 for r in data.catalogue if r.image)
    for r in ranks:
        assert r["joined_s"] == [1800.0]  # training's TIMEOUT, made 4 s above
        assert r["content_sources"] == single  # byte for byte the single-process record
        assert 0 < r["hashed"] < images  # a share each, not every file on rank 0
    assert sum(r["hashed"] for r in ranks) == images
    assert json.loads((out / "results.json").read_text())["content_sources"] == single


_ONE_RANK_SCRIPT = '''
import faulthandler, json, os, sys
from crossan import distributed as dist
from crossan.coldstart import embed_items
from crossan.config import load_config
from crossan.export import export_run
from crossan.runs import evaluate_run
from crossan.serve import load_recommender
from crossan.trainer import train

data, out, new = sys.argv[1], sys.argv[2], sys.argv[3]
rank = int(os.environ["RANK"])
cfg = load_config([], [f"data.path={data}", "method=frozen", "modalities=[text]", "encoders.preset=tiny",
                       "cached=false", "train.epochs=1", "train.batch_size=32", "user.dim=32", "eval.batch_size=16",
                       "device=cpu", "precision=fp32"])
report = {}
try:
    train(cfg, out, progress=False)
    faulthandler.dump_traceback_later(60, exit=True)  # what follows takes seconds: a hang fails the rank
    if rank == 0:  # what a researcher writes after training; rank 1 goes on to the barrier
        report["evaluate"] = evaluate_run(out, device="cpu")["test"]
        embed_items(out, new, device="cpu")
        rec = load_recommender(out, device="cpu")
        report["recommend"] = [r.item_id for r in rec.recommend(rec.item_ids[3:6], k=5)]
        export_run(out, f"{out}-export", device="cpu")
    dist.barrier()
    report["every_rank"] = evaluate_run(out, device="cpu")["test"]  # every rank alone: the same figures
    with open(f"{out}-rank{rank}.json", "w") as f:
        json.dump(report, f)
    faulthandler.cancel_dump_traceback_later()
finally:
    dist.shutdown()
'''


def test_a_run_folder_is_used_on_one_rank_after_training(tmp_path: Path) -> None:
    """A torchrun script that trains and then, on rank 0 only, evaluates the run, embeds a new item, serves
    and exports it. Each of these tools computed the item table, the users' ranks or the content digests with
    collectives of the group ``train()`` had joined, which rank 1 never joins: rank 0 waited until the group's
    30-minute timeout (here a 60 s watchdog fails it). Now they compute in the calling process; called on
    every rank, each rank gets the figures training recorded."""
    from crossan.data.synth import generate

    synth = generate(tmp_path / "synth", size="tiny", seed=5, progress=False)
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "items.tsv").write_text("item_id\ttitle\nnew-1\tA brand new title\n")
    script, out = tmp_path / "one_rank.py", tmp_path / "run"
    script.write_text(_ONE_RANK_SCRIPT)
    torchrun([str(script), str(synth), str(out), str(tmp_path / "new" / "items.tsv")])
    trained = json.loads((out / "results.json").read_text())
    ranks = [json.loads((tmp_path / f"run-rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["evaluate"] == trained["test"]
    assert ranks[0]["every_rank"] == ranks[1]["every_rank"] == trained["test"]
    assert len(ranks[0]["recommend"]) == 5
    assert json.loads((tmp_path / "run-export" / "export.json").read_text())["num_extra_items"] == 1
    assert json.loads((out / "evaluation.json").read_text())["test"] == trained["test"]
