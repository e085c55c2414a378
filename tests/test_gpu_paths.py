"""The GPU paths of a training step, checked without a GPU.

No machine here has one, so two stand-ins are used, each for a *decision* of the code, never for a GPU result:

- the ``meta`` device runs the non-CPU branches (``device.type != "cpu"``) with shapes only and refuses any
  operation whose output depends on the data (``nonzero``, ``bincount``, ``unique``, ``.item()``): what runs
  there runs on a GPU without waiting for the device;
- :class:`HostReads` lists the operations of a code path that read tensor data back to the host, which on a
  GPU each wait for the device (a synchronisation per step).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.test_side_networks import make_features, make_tower
from torch.utils._python_dispatch import TorchDispatchMode

from crossan.config import Config
from crossan.recommender import Recommender, _own_masked_softmax_loss, slots_softmax_loss
from crossan.towers.base import TowerContext, build_tower

HOST_READING_OPS = frozenset({"_local_scalar_dense", "nonzero", "bincount", "_unique2", "unique_dim",
                              "unique_consecutive", "masked_select", "equal", "is_nonzero"})
"""aten operations that read a tensor's values back to the host (on a GPU: wait for the device)."""


class HostReads(TorchDispatchMode):
    """Records, in order, the aten operations run inside it that read tensor data back to the host: those of
    :data:`HOST_READING_OPS`, and indexing with a boolean mask (a ``nonzero`` inside ``index``)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = func.overloadpacket.__name__
        if name in HOST_READING_OPS:
            self.ops.append(name)
        elif name in ("index", "index_put", "index_put_", "_index_put_impl_") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or [])):
            self.ops.append(f"{name}[bool mask]")
        return func(*args, **(kwargs or {}))


def _slots_batch(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A batch of 6 windows of length 5 over 20 items (left padding, items repeating across users) as
    :meth:`Recommender.loss` hands it to :func:`slots_softmax_loss`: states, unique rows and their embeddings,
    slots, valid positions, log-popularity."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, 21, (6, 6), generator=g)
    seq[:2, :2] = 0
    inputs, targets = seq[:, :-1], torch.where(seq[:, :-1] > 0, seq[:, 1:], 0)
    L = inputs.shape[1]
    uniq, inv = torch.unique(torch.cat([inputs, targets], 1), return_inverse=True)
    slots = torch.cat([inv[:, :L], inv[:, 2 * L - 1:]], 1)
    states, emb = torch.randn(6, L, 8, generator=g), torch.randn(len(uniq), 8, generator=g)
    return states, emb, uniq, slots, targets > 0, torch.randn(len(uniq), generator=g)


def test_slots_loss_reads_back_only_its_valid_positions() -> None:
    """``train.negatives=slots`` (the default) counted each item's slots with ``bincount``, which on a GPU
    reads its input's min and max back to the host at every step; the counts now come from ``index_add_``.
    The one read left is the valid positions (``nonzero``: only their logits are formed). The loss is the
    one the bincount counts gave, bit for bit."""
    states, emb, uniq, slots, valid, log_pop = _slots_batch()
    with HostReads() as reads:
        loss = slots_softmax_loss(states, emb, uniq, slots, valid, log_pop)
    assert reads.ops == ["nonzero"]
    own = torch.zeros(len(slots), len(uniq), dtype=torch.bool).scatter_(1, slots, True)
    log_count = torch.bincount(slots.reshape(-1), minlength=len(uniq)).float().log()
    expected = _own_masked_softmax_loss(states, emb, uniq, own, slots[:, 1:], valid, log_pop, log_count)
    assert torch.equal(loss, expected)


def _id_model() -> Recommender:
    cfg = Config(method="id")
    cfg.user.dim = 8
    torch.manual_seed(0)
    tower = build_tower(TowerContext(cfg, 20, [""] + [f"i{i}" for i in range(20)]))
    return Recommender(tower, cfg, torch.arange(21) % 5)


@pytest.mark.parametrize("padded", [True, False])
def test_embed_unique_reads_back_one_scalar_besides_unique(padded: bool) -> None:
    """Each step embeds the batch's distinct items: ``unique`` reads back (its size), then whether padding is
    among them. The real rows were taken with a boolean mask, ``uniq[uniq > 0]``, a second read back on a GPU
    at every step; they are a slice now (``uniq`` is sorted, padding first). Same embeddings."""
    model = _id_model().eval()
    ids = torch.tensor([[0, 0, 3, 7], [7, 2, 9, 3]] if padded else [[1, 4, 3, 7], [7, 2, 9, 3]])
    with HostReads() as reads:
        uniq, emb, inv = model.embed_unique(ids)
    assert reads.ops == ["_unique2", "_local_scalar_dense"]
    with torch.no_grad():
        expected = model.tower(uniq[uniq > 0])
    assert torch.equal(uniq[inv], ids)
    if padded:
        assert uniq[0] == 0 and torch.equal(emb[0], torch.zeros(8))
    assert torch.equal(emb[int(padded):], expected)


@pytest.mark.parametrize("method", ["crossan", "iisan", "frozen"])
@pytest.mark.parametrize("training", [True, False])
def test_content_towers_run_on_a_non_cpu_device_without_reading_back(method: str, training: bool) -> None:
    """The side networks' forward and backward on a device other than the CPU (the cache in device memory,
    as ``cache.on_device`` places it on a GPU) read no tensor data back: on ``meta`` every data-dependent
    operation fails. The standardised inputs' missing rows were zeroed at ``(~present).nonzero()``, a wait
    for the GPU per modality at every step; off the CPU they are now zeroed by one masked pass."""
    feats = make_features(4, missing={"image": [2, 5], "audio": [1]})
    tower = make_tower(method, 4, feats)
    if method != "frozen":
        tower.standardize_inputs()
    tower.to("meta").train(training)
    feats.to_memory("meta")
    out = tower(torch.arange(1, 9, device="meta"))
    assert out.shape == (8, 8) and out.device.type == "meta"
    if training:
        out.sum().backward()
        assert all(p.grad is not None for p in tower.parameters() if p.requires_grad)


def test_step_syncs_script_lists_the_reads_back_per_line(tmp_path, monkeypatch) -> None:
    """benchmarks/step_syncs.py (run by benchmarks/device_check.sh on a lent GPU) runs here in its stand-in
    mode: the batch's ``unique`` in ``embed_unique`` reads back once per step."""
    import json

    from tests.conftest import load_benchmark

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))  # it imports side_network_epoch
    load_benchmark("step_syncs").main(["--device", "cpu", "--methods", "crossan", "--users", "400", "--items",
                                       "200", "--width", "16", "--taps", "2", "--steps", "2",
                                       "--out", str(tmp_path)])
    (row,) = json.loads((tmp_path / "step_syncs.json").read_text())["rows"]
    assert row["steps"] == 2 and row["reads_per_step"] > 0
    unique = [n for line, n in row["where"].items() if "recommender.py" in line and "_unique2" in line]
    assert unique == [2], row["where"]


def test_suite_machine_line_names_the_devices_the_runs_trained_on(monkeypatch) -> None:
    """A suite's report named GPU 0 as its machine on any machine with a GPU, also when its runs trained on
    the CPU (``device=cpu``) or on another GPU: the cost columns then read as GPU figures. It now names the
    devices the costed rows record (results.json ``device``), and this machine only when no row records one."""
    from crossan.reports.suite import machine_description

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "GPU zero")
    cpu = "cpu (AMD EPYC (x86_64, 2 cores, AVX2), torch threads 2)"
    line = machine_description([{"device": cpu}, {"device": cpu}, {"status": "failed"}])
    assert line.startswith(f"{cpu}; ") and "GPU zero" not in line and f"torch {torch.__version__}" in line
    two = machine_description([{"device": "cuda (GPU one)"}, {"device": cpu}])
    assert two.startswith(f"{cpu}; cuda (GPU one); ")
    assert machine_description([]) == f"GPU zero; torch {torch.__version__}"


def test_a_group_joined_before_crossan_gets_the_long_gloo_group(monkeypatch) -> None:
    """Media digests are gathered over a gloo side group (``_long_group``), made when crossan joins the process
    group. A group the caller had joined itself (``init_process_group("nccl")`` before ``train``; with
    ``mp.spawn``, WORLD_SIZE unset) was kept without one, and the gather then sent CPU tensors over the NCCL
    default group, which fails. The side group is now made over a group found joined, once."""
    from crossan import distributed

    made: list[tuple[str, object]] = []
    monkeypatch.setattr(distributed, "_long_group", None)
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed.dist, "new_group", lambda backend, timeout: made.append((backend, timeout)) or
                        "side group")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    device = torch.device("cuda", 1)
    assert distributed.init_from_env(device) == device
    assert distributed.init_from_env(device) == device
    assert made == [("gloo", distributed.CACHE_TIMEOUT)] and distributed._long_group == "side group"
