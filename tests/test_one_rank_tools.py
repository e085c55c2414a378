"""The tools that read a finished run folder (evaluate, serve, embed-items, export) compute everything in the
calling process, even where a torchrun script has joined a process group: ``if rank == 0: evaluate_run(out)``
after :func:`crossan.trainer.train` used to wait forever in the item table's all-gather, which the other ranks
never joined. Here the group is simulated in one process (rank 0 of 2) with collectives that fail; the real
2-process job is ``test_distributed.py::test_a_run_folder_is_used_on_one_rank_after_training``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from crossan.config import load_config
from crossan.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")

COLLECTIVES = ("all_gather", "all_gather_object", "all_reduce", "all_to_all", "barrier", "broadcast",
               "broadcast_object_list", "gather", "reduce", "reduce_scatter", "scatter")


def _join_two_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, this process is rank 0 of a joined group of 2 whose other rank never takes part: any
    collective fails at once (under torchrun it would wait for that rank until the group's timeout)."""
    import torch.distributed as tdist

    def collective(*args: object, **kwargs: object) -> None:
        raise AssertionError("a collective was called on one rank (under torchrun: a hang)")

    monkeypatch.setattr(tdist, "is_initialized", lambda: True)
    monkeypatch.setattr(tdist, "get_rank", lambda group=None: 0)
    monkeypatch.setattr(tdist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(tdist, "get_backend", lambda group=None: "gloo")
    for name in COLLECTIVES:
        monkeypatch.setattr(tdist, name, collective)


@pytest.fixture(scope="module")
def live_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A frozen text run that reads its titles itself (``cached=false``): loading it hashes them
    (``content_sources``), beside the item table and the users' ranks."""
    from crossan.data.synth import generate

    root = tmp_path_factory.mktemp("live")
    synth = generate(root / "synth", size="tiny", seed=5, progress=False)
    cfg = load_config([], [f"data.path={synth}", "method=frozen", "modalities=[text]", "encoders.preset=tiny",
                           "cached=false", "train.epochs=1", "train.batch_size=32", "user.dim=32",
                           "eval.batch_size=16", "device=cpu", "precision=fp32"])
    train(cfg, root / "run", progress=False)
    return root / "run"


def test_a_run_folder_is_evaluated_served_and_exported_on_one_rank(live_run: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, the first collective (the content digests' gather in ``load_run``, then the item table's) was
    called on rank 0 alone; now the figures are those training recorded, computed in this process."""
    from crossan.coldstart import embed_items
    from crossan.export import export_run
    from crossan.runs import evaluate_run
    from crossan.serve import load_recommender

    trained = json.loads((live_run / "results.json").read_text())
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "items.tsv").write_text("item_id\ttitle\nnew-1\tA brand new title\n")
    single = load_recommender(live_run, device="cpu")  # in a plain process, before the group
    _join_two_ranks(monkeypatch)
    out = evaluate_run(live_run, device="cpu")
    assert out["test"] == trained["test"] and out["valid"] == trained["valid"]
    rec = load_recommender(live_run, device="cpu")
    assert torch.equal(rec.item_table, single.item_table)
    history = rec.item_ids[3:6]
    assert rec.recommend(history, k=5) == single.recommend(history, k=5)
    assert embed_items(live_run, tmp_path / "new" / "items.tsv", device="cpu") == ["new-1"]
    exported = export_run(live_run, tmp_path / "export", device="cpu")
    assert json.loads((exported / "export.json").read_text())["num_extra_items"] == 1


def test_content_digests_and_the_item_table_are_one_process_s_unless_collective(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only training asks for the collective forms (``collective=True``); the defaults never gather."""
    from crossan.data import prepare
    from crossan.data.synth import generate
    from crossan.evaluation import rank_split
    from crossan.model import build_model
    from crossan.runs import content_digests

    synth = generate(tmp_path / "synth", size="tiny", seed=5, progress=False)
    cfg = load_config([], [f"data.path={synth}", "method=fft", "modalities=[text,image]", "encoders.preset=tiny"])
    data = prepare(cfg.data)
    digests = content_digests(cfg, data)
    id_cfg = load_config([], [f"data.path={synth}", "device=cpu", "user.dim=32"])
    model = build_model(id_cfg, data, torch.device("cpu")).eval()
    table = model.tower.embed_all(7)
    ranks = rank_split(lambda x: model.user_vectors(x, table), table, data.test.inputs, data.test.targets,
                       data.test.history, batch_size=16)
    _join_two_ranks(monkeypatch)
    assert content_digests(cfg, data) == digests
    assert torch.equal(model.tower.embed_all(7), table)
    assert torch.equal(rank_split(lambda x: model.user_vectors(x, table), table, data.test.inputs,
                                  data.test.targets, data.test.history, batch_size=16), ranks)
    with pytest.raises(AssertionError, match="collective was called"):  # training's form still gathers
        model.tower.embed_all(7, collective=True)
