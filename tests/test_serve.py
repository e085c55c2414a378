"""Serving: recommendations equal the evaluator's ranking, cold-start items, export without crossan, bad input."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import random_dataset
from crossan.cli import main
from crossan.config import load_config
from crossan.evaluation import rank_split, strict_ranks
from crossan.runs import RunError, UnfinishedRunWarning
from crossan.serve import (
    EXTRA_DIR,
    ServeError,
    UnknownItemError,
    embed_items,
    load_recommender,
    read_extra_items,
    version_compatible,
)
from crossan.trainer import load_run, train


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def id_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("id")
    data = random_dataset(root / "data", n_users=60, n_items=30)
    cfg = load_config([], [f"data.path={data}", "train.epochs=2", "train.batch_size=32", "device=cpu",
                           "user.dim=32", "data.max_seq_len=6"])
    train(cfg, root / "run", progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def content_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crossan.cache import build_cache
    from crossan.data import prepare
    from crossan.data.synth import generate

    root = tmp_path_factory.mktemp("content")
    synth = generate(root / "synth", size="tiny", progress=False)
    cfg = load_config([], [f"data.path={synth}", "method=frozen", "modalities=[text,image]", "encoders.preset=tiny",
                           f"cache.dir={root / 'cache'}", "train.epochs=1", "train.batch_size=64", "user.dim=32",
                           "device=cpu", "precision=fp32"])  # bf16 encoders differ by an ulp across batches
    data = prepare(cfg.data)
    build_cache(cfg, data, cfg.modalities, progress=False)
    train(cfg, root / "run", data=data, progress=False)
    return root / "run"


def _copy(run: Path, tmp_path: Path, name: str = "run") -> Path:
    return Path(shutil.copytree(run, tmp_path / name))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _test_histories(data) -> list[list[str]]:
    return [[data.item_ids[r] for r in row if r > 0] for row in data.test.history]


# --------------------------------------------------------------------------------------------- recommend
@pytest.mark.parametrize("which", ["id_run", "content_run"])
def test_recommendations_are_the_evaluators_top_k(which: str, request: pytest.FixtureRequest) -> None:
    run = request.getfixturevalue(which)
    rec = load_recommender(run, device="cpu")
    cfg, data, model = load_run(run, "cpu")
    table = model.tower.embed_all(cfg.eval.batch_size)
    torch.testing.assert_close(rec.item_table, table)
    assert rec.item_ids == data.item_ids and len(rec.titles) == len(rec.item_ids)

    # the evaluator's scores for the test split: user vectors of its input windows, history masked
    inputs = torch.as_tensor(data.test.inputs)
    history = torch.as_tensor(data.test.history)
    with torch.no_grad():
        scores = model.user_vectors(inputs, table) @ table.T
    scores[:, 0] = -torch.inf
    scores.scatter_(1, history, -torch.inf)
    k = 10
    top_s, top_i = torch.topk(scores, k, dim=1)

    histories = _test_histories(data)
    batched = rec.recommend_many(histories, k=k, batch_size=17)  # several batches
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a caller's autocast changes nothing: float32 scores
        assert rec.recommend_many(histories, k=k, batch_size=17) == batched
    for u, (items, hist) in enumerate(zip(batched, histories)):
        assert [r.item_id for r in items] == [data.item_ids[i] for i in top_i[u].tolist()]
        assert [r.score for r in items] == pytest.approx(top_s[u].tolist(), rel=1e-5, abs=1e-5)
        assert not set(r.item_id for r in items) & set(hist)  # history never recommended
        assert [r.title for r in items] == [data.catalogue[r.item_id].text for r in items]
    single = rec.recommend(histories[3], k=k)
    assert [r.item_id for r in single] == [r.item_id for r in batched[3]]
    by_user = rec.recommend_many({"a": histories[0], "b": histories[1]}, k=3)
    assert list(by_user) == ["a", "b"] and [r.item_id for r in by_user["b"]] == [r.item_id for r in batched[1][:3]]

    # the served scores rank the test targets exactly as the evaluator does
    # (the evaluator never excludes the target itself, even when the user had it before: mask by its rule)
    ranks = strict_ranks(rec.scores(histories, exclude_history=False), torch.as_tensor(data.test.targets), history)
    expected = rank_split(lambda x: model.user_vectors(x, table), table, data.test.inputs, data.test.targets,
                          data.test.history)
    assert torch.equal(ranks, expected)

    # without exclusion the history may come back; the padding row never does
    everything = rec.recommend(histories[0], k=rec.num_candidates + 5, exclude_history=False)
    assert len(everything) == data.num_items and "" not in {r.item_id for r in everything}
    assert len(rec.recommend(histories[0], k=10_000)) == data.num_items - len(set(histories[0]))


def test_long_history_reads_the_last_max_seq_len_items(id_run: Path) -> None:
    rec = load_recommender(id_run, device="cpu")
    L = rec.max_seq_len
    long = [rec.item_ids[r] for r in range(1, 2 * L + 4)]
    torch.testing.assert_close(rec.user_vectors([long]), rec.user_vectors([long[-L:]]))
    # ... but every history item is excluded, not just the last L
    assert not {r.item_id for r in rec.recommend(long, k=50)} & set(long)


def test_cli_recommend_history_and_users_file(id_run: Path, tmp_path: Path, capsys) -> None:
    rec = load_recommender(id_run, device="cpu")
    hist = rec.item_ids[1:5]
    assert main(["recommend", str(id_run), "--history", *hist, "--k", "4", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    expected = rec.recommend(hist, k=4)
    assert len(lines) == 5 and [ln.split()[1] for ln in lines[1:]] == [r.item_id for r in expected]

    users = tmp_path / "users.tsv"
    histories = {"alice": rec.item_ids[1:4], "bob": rec.item_ids[10:12], "carol": rec.item_ids[20:21]}
    users.write_text("".join(f"{u}\t{' '.join(h)}\n" for u, h in histories.items()))
    out = tmp_path / "out" / "recs.csv"
    assert main(["recommend", str(id_run), "--users", str(users), "--out", str(out), "--k", "3",
                 "--device", "cpu"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["user"] for r in rows] == ["alice"] * 3 + ["bob"] * 3 + ["carol"] * 3
    want = rec.recommend_many(histories, k=3)
    for r in rows:
        hit = want[r["user"]][int(r["rank"]) - 1]
        assert r["item_id"] == hit.item_id and float(r["score"]) == pytest.approx(hit.score, rel=1e-4)
    assert [p.name for p in out.parent.iterdir()] == ["recs.csv"]  # no temporary left


# --------------------------------------------------------------------------------------------- cold start
def _new_catalogue(folder: Path, synth: Path, rows: list[tuple[str, str, str | None]]) -> Path:
    """items.tsv with (id, title, image copied from the synth dataset or None)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["item_id\ttitle\timage"]
    for item, title, image in rows:
        cell = ""
        if image:
            (folder / "covers").mkdir(exist_ok=True)
            shutil.copyfile(synth / image, folder / "covers" / f"{item}.png")
            cell = f"covers/{item}.png"
        lines.append(f"{item}\t{title}\t{cell}")
    (folder / "items.tsv").write_text("\n".join(lines) + "\n")
    return folder


def test_embed_items_duplicate_content_gets_the_same_embedding(content_run: Path, tmp_path: Path, capsys) -> None:
    run = _copy(content_run, tmp_path)
    cfg, data, _ = load_run(run, "cpu")
    synth = Path(cfg.data.path)
    original = data.item_ids[1]
    rec0 = data.catalogue[original]
    new = _new_catalogue(tmp_path / "new", synth, [("new-dup", rec0.text, rec0.image),
                                                  ("new-other", "A completely novel title", None)])
    assert main(["embed-items", str(run), "--data", str(new), "--device", "cpu"]) == 0
    assert "embedded 2 new items" in capsys.readouterr().out
    assert sorted(p.name for p in (run / EXTRA_DIR).iterdir()) == ["embeddings.safetensors", "items.json"]

    rec = load_recommender(run, device="cpu")
    assert rec.item_ids[-2:] == ["new-dup", "new-other"] and rec.titles[-2] == rec0.text
    assert rec.item_table.shape[0] == data.num_items + 3
    a, b = rec.item_table[1], rec.item_table[rec.item_ids.index("new-dup")]
    # the cache stores fp16 states and the live states of a new item are rounded through fp16 the same way:
    # equal up to float32 summation order (without the rounding they differ by ~3.5e-4)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(rec.item_table[rec.item_ids.index("new-other")], a, atol=1e-2)
    hist = data.item_ids[5:9]
    scores = rec.scores([hist])[0]
    assert float(scores[rec.item_ids.index("new-dup")]) == pytest.approx(float(scores[1]), rel=1e-3, abs=1e-3)
    everything = {r.item_id for r in rec.recommend(hist, k=rec.num_candidates)}
    assert {"new-dup", "new-other"} <= everything
    assert "new-dup" not in {r.item_id for r in rec.recommend(["new-dup", *hist], k=rec.num_candidates)}

    # again: a replaced item keeps its place, a new one is appended
    _new_catalogue(tmp_path / "more", synth, [("new-other", "Another title entirely", data.catalogue[data.item_ids[7]].image),
                                             ("new-3", "Third", None)])
    capsys.readouterr()
    assert main(["embed-items", str(run), "--data", str(tmp_path / "more" / "items.tsv"), "--device", "cpu"]) == 0
    # the command said "2 new items" of one new and one replaced
    assert "embedded 1 new item and 1 replacing stored item of the same id" in capsys.readouterr().out
    extra = read_extra_items(run)
    assert extra.ids == ["new-dup", "new-other", "new-3"] and extra.records[1]["title"] == "Another title entirely"
    torch.testing.assert_close(extra.embeddings[0], rec.item_table[-2])
    assert not torch.allclose(extra.embeddings[1], rec.item_table[-1])

    # an id that is a training item is refused; nothing changes
    before = _snapshot(run)
    _new_catalogue(tmp_path / "clash", synth, [(data.item_ids[2], "whatever", None), ("new-4", "x", None)])
    assert main(["embed-items", str(run), "--data", str(tmp_path / "clash"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert data.item_ids[2] in err and "training items" in err
    # a referenced media file that does not exist names the file; nothing changes
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "items.tsv").write_text("item_id\ttitle\timage\nnew-5\tt\tcovers/missing.png\n")
    assert main(["embed-items", str(run), "--data", str(tmp_path / "broken"), "--device", "cpu"]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert _snapshot(run) == before


def test_id_run_refuses_embed_items(id_run: Path, tmp_path: Path, capsys) -> None:
    new = tmp_path / "new"
    new.mkdir()
    (new / "items.tsv").write_text("fresh\tA fresh item\n")
    before = _snapshot(id_run)
    assert main(["embed-items", str(id_run), "--data", str(new), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "method=id" in err and "no content" in err
    assert _snapshot(id_run) == before and not (id_run / EXTRA_DIR).exists()


# --------------------------------------------------------------------------------------------- export
def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def numpy_user_vector(W: dict[str, np.ndarray], table: np.ndarray, rows: np.ndarray, spec: dict) -> np.ndarray:
    """SASRec in numpy from model.safetensors + export.json only (the reference in docs/serving.md)."""
    L, H, eps = len(rows), spec["n_heads"], spec["layer_norm_eps"]
    valid = rows > 0
    x = _layer_norm(table[rows] + W["user.pos.weight"][:L], W["user.ln.weight"], W["user.ln.bias"], eps)
    x = x * valid[:, None]
    mask = (np.tril(np.ones((L, L), bool)) & valid[None, :]) | np.eye(L, dtype=bool)
    for i in range(spec["n_layers"]):
        p = f"user.blocks.{i}."
        D = x.shape[1]
        qkv = (x @ W[p + "qkv.weight"].T + W[p + "qkv.bias"]).reshape(L, 3, H, D // H).transpose(1, 2, 0, 3)
        q, k, v = qkv
        att = q @ k.transpose(0, 2, 1) / math.sqrt(D // H)
        att = np.where(mask[None], att, -np.inf)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        a = (att @ v).transpose(1, 0, 2).reshape(L, D)
        x = _layer_norm(x + a @ W[p + "proj.weight"].T + W[p + "proj.bias"], W[p + "ln1.weight"], W[p + "ln1.bias"], eps)
        h = _gelu(x @ W[p + "ffn.0.weight"].T + W[p + "ffn.0.bias"]) @ W[p + "ffn.3.weight"].T + W[p + "ffn.3.bias"]
        x = _layer_norm(x + h, W[p + "ln2.weight"], W[p + "ln2.bias"], eps)
    return x[-1]


def test_export_reloads_without_crossan(id_run: Path, tmp_path: Path, capsys) -> None:
    from safetensors.numpy import load_file

    out = tmp_path / "exports" / "v1"
    assert main(["export", str(id_run), "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["v1"]  # renamed into place, no temporary left
    desc = json.loads((out / "export.json").read_text())
    table = np.load(out / "item_embeddings.npy")
    ids = json.loads((out / "item_ids.json").read_text())
    W = load_file(str(out / "model.safetensors"))
    assert desc["method"] == "id" and desc["scoring"]["rule"] == "dot_product" and desc["padding_row"] == 0
    assert table.shape == (desc["rows"], desc["dim"]) == tuple(desc["files"]["item_embeddings.npy"]["shape"])
    assert len(ids) == desc["rows"] == desc["num_items"] + 1 and ids[0] == "" and not table[0].any()
    np.testing.assert_array_equal(load_file(str(out / "item_embeddings.safetensors"))["item_embeddings"], table)

    rec = load_recommender(id_run, device="cpu")
    np.testing.assert_allclose(table, rec.item_table.numpy(), rtol=0, atol=0)
    assert ids == rec.item_ids
    row = {item: r for r, item in enumerate(ids)}
    L = desc["max_seq_len"]
    for hist in (ids[3:6], ids[1:15], [ids[9]]):
        rows = np.zeros(L, dtype=np.int64)
        last = [row[i] for i in hist][-L:]
        rows[L - len(last):] = last
        u = numpy_user_vector(W, table, rows, desc["user_encoder"])
        np.testing.assert_allclose(u, rec.user_vectors([hist])[0].numpy(), rtol=1e-4, atol=1e-4)
        scores = table @ u
        scores[0] = -np.inf
        scores[[row[i] for i in hist]] = -np.inf
        top = np.argsort(-scores, kind="stable")[:5]
        served = rec.recommend(hist, k=5)
        assert [ids[i] for i in top] == [r.item_id for r in served]
        np.testing.assert_allclose(scores[top], [r.score for r in served], rtol=1e-4, atol=1e-4)

    # an existing folder is kept unless --force
    before = _snapshot(out)
    assert main(["export", str(id_run), "--out", str(out), "--device", "cpu"]) == 2
    assert "already exists" in capsys.readouterr().err and _snapshot(out) == before
    assert main(["export", str(id_run), "--out", str(out), "--device", "cpu", "--force"]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["v1"]


def test_export_includes_extra_items(content_run: Path, tmp_path: Path) -> None:
    from crossan.export import export_run

    run = _copy(content_run, tmp_path)
    cfg, data, _ = load_run(run, "cpu")
    _new_catalogue(tmp_path / "new", Path(cfg.data.path), [("cold-1", "A brand new item", None)])
    embed_items(run, tmp_path / "new", device="cpu")
    out = export_run(run, tmp_path / "export", device="cpu")
    desc = json.loads((out / "export.json").read_text())
    ids = json.loads((out / "item_ids.json").read_text())
    assert desc["num_extra_items"] == 1 and ids[-1] == "cold-1" and desc["rows"] == data.num_items + 2
    assert desc["item_tower"]["frozen_encoders"]["preset"] == "tiny"
    table = np.load(out / "item_embeddings.npy")
    np.testing.assert_array_equal(table[-1], read_extra_items(run).embeddings[0].numpy())
    out2 = export_run(run, tmp_path / "export-no-extra", device="cpu", include_extra=False)
    assert json.loads((out2 / "export.json").read_text())["rows"] == data.num_items + 1


# --------------------------------------------------------------------------------------------- bad input
def test_nan_and_infinite_scores_rank_last_as_the_evaluator_ranks_them(id_run: Path) -> None:
    """torch.topk puts NaN (and +inf) first: a finite but huge item row (3e38, whose products overflow) was
    served as the top item with score inf, and weights giving a NaN user vector served k arbitrary items
    scored nan, exit 0, where the evaluator ranks such scores last. Now they rank last with a warning, and a
    history whose every score is so is an error."""
    rec = load_recommender(id_run, device="cpu")
    history = [rec.item_ids[1], rec.item_ids[2]]
    top = rec.recommend(history, k=3)
    user = rec.user_vectors([history])[0]
    first = rec.item_ids.index(top[0].item_id)
    with torch.no_grad():
        rec.item_table[first] = torch.sign(user) * 3e38  # finite, but its score overflows to +inf
    with pytest.warns(RuntimeWarning, match=r"1 score\(s\) of 1 history\(ies\) were NaN or infinite"):
        again = rec.recommend(history, k=3)
    assert top[0].item_id not in [r.item_id for r in again]
    assert [r.item_id for r in again[:2]] == [r.item_id for r in top[1:]]
    # ranked last, not dropped (a second reader, 2026-12-04: 57 of 59 candidates came back, and "only 57 … are
    # not in the history"); an overflow to -inf was dropped without a warning
    other = rec.item_ids.index(top[1].item_id)
    with torch.no_grad():
        rec.item_table[other] = -torch.sign(user) * 3e38  # its score overflows to -inf
    with pytest.warns(RuntimeWarning, match=r"2 score\(s\) of 1 history\(ies\) were NaN or infinite"):
        every = rec.recommend(history, k=rec.num_candidates)
    assert len(every) == rec.num_candidates - 2
    assert {r.item_id for r in every[-2:]} == {top[0].item_id, top[1].item_id}
    assert all(math.isnan(r.score) for r in every[-2:]) and all(math.isfinite(r.score) for r in every[:-2])
    with pytest.warns(RuntimeWarning):
        scores = rec.scores([history])
    assert scores[0, first] == scores[0, other] == -torch.inf  # the score table: -inf, as documented
    rec.model.user_vectors = lambda inputs, table: torch.full((len(inputs), table.shape[1]), float("nan"))
    with pytest.raises(ServeError, match="^history: the model scores all .* candidates NaN or infinite"):
        rec.recommend(history, k=3)  # one history is "history", as its other errors say (was "history 0")
    with pytest.raises(ServeError, match="^history 0: the model scores all .* candidates NaN or infinite"):
        rec.recommend_many([history, history], k=3)


def test_unknown_and_empty_histories(id_run: Path, tmp_path: Path, capsys) -> None:
    rec = load_recommender(id_run, device="cpu")
    good = rec.item_ids[1]
    with pytest.raises(UnknownItemError, match="'nope'.*'zilch'") as e:
        rec.recommend([good, "nope", "zilch", "nope"])
    assert e.value.unknown == ["nope", "zilch"]
    with pytest.raises(ServeError, match="empty"):
        rec.recommend([])
    with pytest.raises(ServeError, match="history 1: unknown item id 'x'"):
        rec.recommend_many([[good], ["x"]])
    for k in (0, 2.5, "3", True):  # a float or string k was torch's TypeError from topk
        with pytest.raises(ServeError, match=f"k must be an integer of at least 1, got {k!r}"):
            rec.recommend([good], k=k)
    assert len(rec.recommend([good], k=np.int64(2))) == 2

    assert main(["recommend", str(id_run), "--history", good, "ghost", "--device", "cpu"]) == 2
    assert "ghost" in capsys.readouterr().err
    users = tmp_path / "users.tsv"
    users.write_text(f"u1\t{good}\nu2\t{good} phantom\n")
    out = tmp_path / "recs.csv"
    assert main(["recommend", str(id_run), "--users", str(users), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{users}:2" in err and "u2" in err and "phantom" in err
    users.write_text(f"u1\t{good}\nu2\t\n")
    assert main(["recommend", str(id_run), "--users", str(users), "--out", str(out), "--device", "cpu"]) == 2
    assert "empty history" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == [users]


def _break(run: Path, how: str) -> str:
    """Damage a run folder; return what the error must mention."""
    if how == "no-weights":
        (run / "best.safetensors").unlink()
        return "best.safetensors is missing"
    if how == "no-config":
        (run / "config.yaml").unlink()
        return "config.yaml is missing"
    if how == "corrupt-config":
        (run / "config.yaml").write_text("method: [unclosed\n  : :\n")
        return "config.yaml: not valid YAML"
    if how == "unknown-key":
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["train"]["warp_drive"] = 3
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        return "unknown config key 'train.warp_drive'"
    if how == "corrupt-weights":
        (run / "best.safetensors").write_bytes(b"not a safetensors file")
        return "best.safetensors: not a readable safetensors file"
    results = json.loads((run / "results.json").read_text())
    if how == "no-version":
        del results["crossan_version"]
        (run / "results.json").write_text(json.dumps(results))
        return "results.json: no crossan_version"
    assert how == "future-version"
    results["crossan_version"] = "7.0.0"
    (run / "results.json").write_text(json.dumps(results))
    return "written by crossan 7.0.0"


@pytest.mark.parametrize("how", ["no-weights", "no-config", "corrupt-config", "unknown-key", "corrupt-weights",
                                 "no-version", "future-version"])
def test_broken_run_folders_are_clear_errors_and_write_nothing(how: str, id_run: Path, tmp_path: Path,
                                                               capsys) -> None:
    run = _copy(id_run, tmp_path)
    needle = _break(run, how)
    with pytest.raises(ServeError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        load_recommender(run, device="cpu")
    before = _snapshot(run)
    some_item = load_recommender(id_run, device="cpu").item_ids[1]
    for argv in (["recommend", str(run), "--history", some_item],
                 ["export", str(run), "--out", str(tmp_path / "export")],
                 ["embed-items", str(run), "--data", str(tmp_path / "nothing")],
                 ["evaluate", str(run)]):  # evaluate checked the folder less than serving: wrote evaluation.json
        assert main([*argv, "--device", "cpu"]) == 2, argv
        assert needle in capsys.readouterr().err
    assert _snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no export folder, no temporary


def test_an_embed_items_that_fails_midway_leaves_the_stored_items_as_they_were(content_run: Path, tmp_path: Path,
                                                                              monkeypatch) -> None:
    """The two files of the extra items were written one after the other: a second ``embed-items`` that failed
    between them (disk full, Ctrl-C) left a pair that did not match, and every later use, a new
    ``embed-items`` included, was refused until the folder was deleted by hand. The embeddings file now
    carries the records and is written last: a failure at either write leaves the items stored before."""
    import crossan.coldstart as coldstart

    run = _copy(content_run, tmp_path)
    cfg, _, _ = load_run(run, "cpu")
    _new_catalogue(tmp_path / "a", Path(cfg.data.path), [("cold-a", "First new item", None)])
    _new_catalogue(tmp_path / "b", Path(cfg.data.path), [("cold-b", "Second new item", None)])
    embed_items(run, tmp_path / "a", device="cpu")
    before = read_extra_items(run)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    for writer in ("atomic_write_json", "atomic_save_safetensors"):
        with monkeypatch.context() as m:
            m.setattr(coldstart, writer, disk_full)
            with pytest.raises(OSError, match="No space left"):
                embed_items(run, tmp_path / "b", device="cpu")
        after = read_extra_items(run)
        assert after.ids == ["cold-a"] and torch.equal(after.embeddings, before.embeddings), writer
    assert embed_items(run, tmp_path / "b", device="cpu") == ["cold-b"]
    assert read_extra_items(run).ids == ["cold-a", "cold-b"]
    assert json.loads((run / EXTRA_DIR / "items.json").read_text())["items"][1]["item_id"] == "cold-b"


def test_stale_or_torn_extra_items_are_refused(content_run: Path, tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    run = _copy(content_run, tmp_path)
    cfg, _, _ = load_run(run, "cpu")
    _new_catalogue(tmp_path / "new", Path(cfg.data.path), [("cold-1", "New", None)])
    embed_items(run, tmp_path / "new", device="cpu")
    emb = run / EXTRA_DIR / "embeddings.safetensors"
    with safe_open(str(emb), framework="pt") as f:
        meta = {k: v for k, v in (f.metadata() or {}).items() if k != "items"}
    save_file(load_file(str(emb)), str(emb), metadata=meta)  # a pair as crossan before 0.1.5 wrote it
    items = json.loads((run / EXTRA_DIR / "items.json").read_text())
    items["generation"] = "something-else"  # as if the second write of an update never happened
    (run / EXTRA_DIR / "items.json").write_text(json.dumps(items))
    with pytest.raises(ServeError, match="do not match"):
        load_recommender(run, device="cpu")
    shutil.rmtree(run / EXTRA_DIR)
    embed_items(run, tmp_path / "new", device="cpu")
    weights = run / "best.safetensors"  # the run's weights change (e.g. retrained): extras are stale
    from safetensors.torch import load_file, save_file

    t = load_file(str(weights))
    save_file(t, str(weights), metadata={"crossan_version": "0.1.0", "changed": "yes"})
    with pytest.raises(ServeError, match="other weights"):
        load_recommender(run, device="cpu")


def test_version_rule() -> None:
    assert version_compatible("0.1.0", "0.1.3") and version_compatible("0.1.5", "0.1.5")
    assert not version_compatible("0.2.0", "0.1.0")  # newer
    assert not version_compatible("0.0.9", "0.1.0")  # 0.x: minor must match
    assert version_compatible("1.0.0", "1.4.0") and not version_compatible("1.0.0", "2.0.0")
    assert not version_compatible("garbage", "0.1.0")


# --------------------------------------------------------------------------------------------- run integrity
def _dataset_copy(run: Path, tmp_path: Path, how: str) -> Path:
    """A copy of the run's training dataset with its items reordered, or with 6 more items."""
    src = Path(yaml.safe_load((run / "config.yaml").read_text())["data"]["path"])
    out = Path(shutil.copytree(src, tmp_path / f"data-{how}"))
    lines = (out / "items.tsv").read_text().splitlines()
    if how == "reordered":
        (out / "items.tsv").write_text("\n".join(reversed(lines)) + "\n")
    else:
        assert how == "more-items"
        extra = [f"z{k}" for k in range(6)]
        (out / "items.tsv").write_text("\n".join(lines + [f"{z}\tnew item {z}" for z in extra]) + "\n")
        with (out / "users.tsv").open("a") as f:
            f.write(f"uz\t{' '.join(extra)}\n")
    return out


@pytest.mark.parametrize(("how", "needle"), [("reordered", "same number of items (30) but other item ids"),
                                             ("more-items", "it has 36 items, the run was trained on 30")])
def test_a_dataset_other_than_the_training_one_is_refused(how: str, needle: str, id_run: Path, tmp_path: Path,
                                                          capsys) -> None:
    results = json.loads((id_run / "results.json").read_text())
    assert results["data"]["items"] == 30 and results["item_fingerprint"]
    other = _dataset_copy(id_run, tmp_path, how)
    with pytest.raises(RunError) as e:
        load_recommender(id_run, device="cpu", data_path=str(other))
    msg = str(e.value)
    assert str(id_run) in msg and str(other) in msg and needle in msg and "--run-data" in msg
    some_item = load_recommender(id_run, device="cpu").item_ids[1]  # the training dataset still serves
    for argv in (["recommend", str(id_run), "--history", some_item],
                 ["export", str(id_run), "--out", str(tmp_path / "export")]):
        assert main([*argv, "--device", "cpu", "--run-data", str(other)]) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and str(other) in err
    # crossan evaluate reads the dataset of config.yaml: a run whose data.path now holds other items
    run = _copy(id_run, tmp_path)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["path"] = str(other)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["evaluate", str(run), "--device", "cpu"]) == 2
    assert needle in capsys.readouterr().err and not (run / "evaluation.json").exists()
    assert not (tmp_path / "export").exists()


def test_a_run_whose_dataset_moved_says_how_to_point_it_there(id_run: Path, tmp_path: Path, capsys) -> None:
    """The training dataset moved away: recommend, evaluate and export said only "DATA: no such file or
    folder", not that the run can be pointed at the dataset's new place (--run-data); they say so now, and
    --run-data serves it from there."""
    run = _copy(id_run, tmp_path)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    moved = Path(shutil.copytree(cfg["data"]["path"], tmp_path / "moved"))
    cfg["data"]["path"] = str(tmp_path / "gone")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    item = load_recommender(id_run, device="cpu").item_ids[1]
    for argv in (["recommend", str(run), "--history", item], ["evaluate", str(run)],
                 ["export", str(run), "--out", str(tmp_path / "export")]):
        assert main([*argv, "--device", "cpu"]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(tmp_path / "gone") in err and "--run-data PATH" in err, err
    assert not (run / "evaluation.json").exists() and not (tmp_path / "export").exists()
    assert main(["recommend", str(run), "--history", item, "--device", "cpu", "--run-data", str(moved)]) == 0


def test_older_run_without_fingerprint_and_weights_that_do_not_fit(id_run: Path, tmp_path: Path,
                                                                   capsys) -> None:
    run = _copy(id_run, tmp_path)
    results = json.loads((run / "results.json").read_text())
    del results["item_fingerprint"]  # as written before the field existed: read as before
    (run / "results.json").write_text(json.dumps(results))
    assert load_recommender(run, device="cpu").item_ids == load_recommender(id_run, device="cpu").item_ids
    # another number of items: the ID table's shape differs; a RunError naming the weights file, no traceback
    other = _dataset_copy(id_run, tmp_path, "more-items")
    with pytest.raises(RunError, match=r"best\.safetensors does not fit this model \(size mismatch"):
        load_recommender(run, device="cpu", data_path=str(other))
    assert main(["recommend", str(run), "--history", "i1", "--device", "cpu", "--run-data", str(other)]) == 2
    assert f"{run / 'best.safetensors'} does not fit" in capsys.readouterr().err


def test_unfinished_run_is_served_with_a_warning_and_not_exported(id_run: Path, tmp_path: Path,
                                                                  capsys) -> None:
    run = _copy(id_run, tmp_path)
    (run / "results.json").unlink()  # training stopped before the test split was scored
    with pytest.warns(UnfinishedRunWarning, match="unfinished run") as caught:
        rec = load_recommender(run, device="cpu")
    assert str(run) in str(caught[0].message)
    hist = rec.item_ids[1:4]
    assert [r.item_id for r in rec.recommend(hist, k=3)] == [
        r.item_id for r in load_recommender(id_run, device="cpu").recommend(hist, k=3)]
    assert main(["recommend", str(run), "--history", *hist, "--k", "3", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert f"crossan: warning: {run}: unfinished run" in captured.err and len(captured.out.splitlines()) == 4
    before = _snapshot(run)
    assert main(["export", str(run), "--out", str(tmp_path / "export"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{run}: unfinished run" in err and "results.json" in err
    assert not (tmp_path / "export").exists() and _snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary export folder
    from crossan.runs import evaluate_run

    with pytest.warns(UnfinishedRunWarning, match="unfinished run"):  # re-scoring says so too
        evaluate_run(run, device="cpu")


# --------------------------------------------------------------------------------------------- history rule
def test_history_exclusion_follows_the_runs_mask_history(id_run: Path, tmp_path: Path, capsys) -> None:
    from crossan.export import export_run

    masked = load_recommender(id_run, device="cpu")
    assert masked.mask_history is True
    desc = json.loads((export_run(id_run, tmp_path / "masked", device="cpu") / "export.json").read_text())
    assert desc["mask_history"] is True and "the items of the user's history" in desc["scoring"]["exclude"]

    run = _copy(id_run, tmp_path)  # a run trained and evaluated with eval.mask_history=false
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["eval"]["mask_history"] = False
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    results = json.loads((run / "results.json").read_text())
    results["mask_history"] = False
    (run / "results.json").write_text(json.dumps(results))
    rec = load_recommender(run, device="cpu")
    assert rec.mask_history is False
    hist = rec.item_ids[1:6]
    everything = rec.recommend(hist, k=rec.num_candidates)
    assert len(everything) == rec.num_candidates and set(hist) <= {r.item_id for r in everything}
    assert everything == rec.recommend(hist, k=rec.num_candidates, exclude_history=False)
    excluded = rec.recommend(hist, k=rec.num_candidates, exclude_history=True)
    assert not set(hist) & {r.item_id for r in excluded}
    assert torch.isfinite(rec.scores([hist])[0, 1:]).all()

    argv = ["recommend", str(run), "--history", *hist, "--k", str(rec.num_candidates), "--device", "cpu"]
    assert main(argv) == 0
    assert set(hist) <= {ln.split()[1] for ln in capsys.readouterr().out.splitlines()[1:]}
    assert main([*argv, "--exclude-history"]) == 0
    assert not set(hist) & {ln.split()[1] for ln in capsys.readouterr().out.splitlines()[1:]}

    desc = json.loads((export_run(run, tmp_path / "unmasked", device="cpu") / "export.json").read_text())
    assert desc["mask_history"] is False and desc["scoring"]["exclude"] == ["row 0 (padding)"]
    assert "mask_history=false" in desc["scoring"]["history"]


# --------------------------------------------------------------------------------------------- users file
def test_users_file_is_decoded_as_the_readers_decode(id_run: Path, tmp_path: Path, capsys) -> None:
    rec = load_recommender(id_run, device="cpu")
    users = tmp_path / "users.tsv"
    out = tmp_path / "recs.csv"
    users.write_bytes(b"\xef\xbb\xbf" + f"alice\t{rec.item_ids[1]}\r\nbob\t{rec.item_ids[2]}\r\n".encode())
    assert main(["recommend", str(id_run), "--users", str(users), "--out", str(out), "--k", "2",
                 "--device", "cpu"]) == 0
    assert [r["user"] for r in csv.DictReader(out.open(encoding="utf-8"))] == ["alice"] * 2 + ["bob"] * 2
    out.unlink()
    users.write_bytes(f"alice\t{rec.item_ids[1]}\n".encode() + b"b\xffb\t" + rec.item_ids[2].encode() + b"\n")
    assert main(["recommend", str(id_run), "--users", str(users), "--out", str(out), "--device", "cpu"]) == 2
    assert f"{users}:2: not valid UTF-8" in capsys.readouterr().err and not out.exists()


def test_an_end_to_end_run_scored_on_changed_media_says_so(tmp_path: Path) -> None:
    """An end-to-end run reads titles and media itself; its item ids (``item_fingerprint``) did not see a
    cover replaced under the same path, so re-scoring printed other figures than results.json without a word.
    It records ``content_sources`` and warns, naming the modality; a file touched with the same bytes and
    an unchanged run stay silent."""
    import os
    import warnings

    from PIL import Image

    from crossan.data import prepare
    from crossan.data.synth import generate
    from crossan.runs import ContentChangedWarning, RunWarning, content_digests, evaluate_run

    synth = generate(tmp_path / "synth", size="tiny", progress=False)
    cfg = load_config([], [f"data.path={synth}", "method=adapter", "modalities=[text,image]",
                           "encoders.preset=tiny", "train.epochs=1", "user.dim=32", "device=cpu", "precision=fp32"])
    data = prepare(cfg.data)
    res = train(cfg, tmp_path / "run", data=data, progress=False)
    assert set(res["content_sources"]) == {"text", "image"} and "cache_states" not in res
    assert res["content_sources"] == content_digests(cfg, data)
    record = next(r for r in data.catalogue if r.image)
    cover = synth / record.image
    os.utime(cover, ns=(1, 1))  # same bytes, another mtime: the same input
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunWarning)
        assert evaluate_run(tmp_path / "run")["test"] == res["test"]

    Image.new("RGB", (24, 24), (255, 0, 255)).save(cover)
    with pytest.warns(ContentChangedWarning, match=r"the item content of image changed since it trained"):
        evaluate_run(tmp_path / "run")


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crossan.data.synth import generate

    return generate(tmp_path_factory.mktemp("tiny") / "synth", size="tiny", progress=False)


@pytest.mark.parametrize(("method", "cached", "recorded"), [
    ("id", True, False), ("frozen", True, False), ("crossan", True, False),  # nothing, or the cache's states
    ("frozen", False, True), ("iisan", False, True),  # live encoders read the media themselves
    ("fft", True, True), ("adapter", True, True), ("lora", True, True),
])
def test_runs_fingerprint_the_content_they_read_themselves(tiny_synth: Path, tmp_path: Path, method: str,
                                                          cached: bool, recorded: bool) -> None:
    """``content_digests``: per modality for the methods that read titles and media themselves (end-to-end,
    ``cached=false``); none for ``id`` and for the cache's readers (``cache_states`` covers them). A title
    edit changes the text digest only; a cover touched with the same bytes changes nothing."""
    import os
    import shutil

    from crossan.data import prepare
    from crossan.runs import content_digests

    synth = Path(shutil.copytree(tiny_synth, tmp_path / "synth"))  # edited below
    cfg = load_config([], [f"data.path={synth}", f"method={method}", "modalities=[text,image]",
                           f"cached={str(cached).lower()}", "encoders.preset=tiny"])
    data = prepare(cfg.data)
    before = content_digests(cfg, data)
    assert set(before) == ({"text", "image"} if recorded else set())
    if not recorded:
        return
    cover = synth / next(r for r in data.catalogue if r.image).image
    os.utime(cover, ns=(1, 1))
    assert content_digests(cfg, prepare(cfg.data)) == before
    items = synth / "items.tsv"
    text = items.read_text()
    first = text.splitlines()[1].split("\t")
    items.write_text(text.replace(first[1], first[1] + " (edited)", 1))
    after = content_digests(cfg, prepare(cfg.data))
    assert after["image"] == before["image"] and after["text"] != before["text"]


def test_a_run_scored_on_a_changed_cache_says_so(tmp_path: Path) -> None:
    """A cached method's run records the SHA-256 of the states it read (``cache_states``). Re-scoring it after
    a cover changed and the cache was updated printed other figures than results.json without a word; it
    now warns, naming the modality. Unchanged, it stays silent."""
    import warnings

    from PIL import Image

    from crossan.cache import build_cache
    from crossan.cache.layout import STATES, modality_folder
    from crossan.cache.manifest import read_manifest
    from crossan.cache.read import CacheMissingError
    from crossan.data import prepare
    from crossan.data.synth import generate
    from crossan.runs import CacheChangedWarning, evaluate_run

    synth = generate(tmp_path / "synth", size="tiny", progress=False)
    cfg = load_config([], [f"data.path={synth}", "method=frozen", "modalities=[text,image]", "encoders.preset=tiny",
                           f"cache.dir={tmp_path / 'cache'}", "train.epochs=1", "user.dim=32", "device=cpu",
                           "precision=fp32"])
    data = prepare(cfg.data)
    build_cache(cfg, data, cfg.modalities, progress=False)
    res = train(cfg, tmp_path / "run", data=data, progress=False)
    assert res["cache_states"] == {m: read_manifest(modality_folder(cfg, data, m))["checksums"][STATES]["sha256"]
                                   for m in ("text", "image")}
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheChangedWarning)
        scored = evaluate_run(tmp_path / "run")
    assert scored["test"] == res["test"]
    assert scored["cache_states"] == res["cache_states"]  # evaluation.json says which cache it scored

    record = next(r for r in data.catalogue if r.image)
    Image.new("RGB", (24, 24), (255, 0, 255)).save(synth / record.image)
    build_cache(cfg, prepare(cfg.data), cfg.modalities, progress=False)  # re-encodes the changed item
    with pytest.warns(CacheChangedWarning, match=r"the layer-state cache of image changed since it trained"):
        scored = evaluate_run(tmp_path / "run")
    now = read_manifest(modality_folder(cfg, data, "image"))["checksums"][STATES]["sha256"]
    assert scored["cache_states"] == {"text": res["cache_states"]["text"], "image": now} != res["cache_states"]
    assert json.loads((tmp_path / "run" / "evaluation.json").read_text())["cache_states"]["image"] == now
    # a cache that is not there is no changed cache: the error naming the command that builds it, no warning
    shutil.rmtree(tmp_path / "cache")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheChangedWarning)
        with pytest.raises(CacheMissingError, match=r"no layer-state cache for text, image "):
            evaluate_run(tmp_path / "run")


# --------------------------------------------------------------------------------------------- a review's findings
def test_top_k_orders_equal_scores_by_item_row() -> None:
    """``torch.topk`` ordered equal scores arbitrarily, differently from one history to the next (a cold-start
    twin of a training item ties with it exactly). ``top_k`` gives a stable sort's order: best first, equal
    scores by item row, across the k-th place too."""
    from crossan.serve import top_k

    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        k = int(torch.randint(1, 41, (), generator=gen))
        scores = torch.randint(0, 5, (6, 40), generator=gen).float()
        scores[1, :7] = float("-inf")  # excluded history
        vals, idx = top_k(scores, k)
        ref = torch.sort(scores, dim=1, descending=True, stable=True)
        assert torch.equal(idx, ref.indices[:, :k]) and torch.equal(vals, ref.values[:, :k])


def test_a_cold_start_twin_is_ranked_right_after_its_training_item(content_run: Path, tmp_path: Path) -> None:
    run = _copy(content_run, tmp_path)
    cfg, data, _ = load_run(run, "cpu")
    twin_of = data.item_ids[3]
    record = data.catalogue[twin_of]
    _new_catalogue(tmp_path / "new", Path(cfg.data.path), [("twin", record.text, record.image)])
    embed_items(run, tmp_path / "new", device="cpu")
    rec = load_recommender(run, device="cpu")
    with torch.no_grad():  # equal to ~1e-7 (float32 summation order); made exact, as a tie can be
        rec.item_table[rec.item_ids.index("twin")] = rec.item_table[3]
    lists = rec.recommend_many([[i] for i in data.item_ids[5:25]], k=rec.num_candidates)
    for ranked in lists:
        names = [r.item_id for r in ranked]
        at = names.index(twin_of)
        assert names[at + 1] == "twin" and ranked[at].score == ranked[at + 1].score


def test_export_force_that_fails_puts_the_old_export_back(id_run: Path, tmp_path: Path, monkeypatch) -> None:
    import os

    import crossan.export as export

    out = tmp_path / "v1"
    assert main(["export", str(id_run), "--out", str(out), "--device", "cpu"]) == 0
    before = _snapshot(out)
    real_rename, calls = os.rename, []

    def second_fails(src, dst):
        calls.append(src)
        if len(calls) == 2:  # the new folder into place
            raise OSError(5, "Input/output error")
        return real_rename(src, dst)

    monkeypatch.setattr(export.os, "rename", second_fails)
    monkeypatch.setattr(export, "exchange_paths", lambda a, b: False)  # a system without an exchange: two renames
    assert main(["export", str(id_run), "--out", str(out), "--device", "cpu", "--force"]) != 0
    monkeypatch.setattr(export.os, "rename", real_rename)
    assert _snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["v1"]


def test_a_forced_export_swaps_the_folders_in_one_step(id_run: Path, tmp_path: Path, monkeypatch) -> None:
    """`--force` moved the old export aside, then the new one into place: a process killed between the two
    renames left no export at --out, the old and new ones beside it under hidden names."""
    import crossan.export as export
    from crossan.utils import exchange_paths

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("a")
    if not exchange_paths(a, b):
        pytest.skip("this system cannot exchange two paths in one step")
    assert (b / "f").read_text() == "a" and not list(a.iterdir())
    out = tmp_path / "v1"
    assert main(["export", str(id_run), "--out", str(out), "--device", "cpu"]) == 0
    (out / "export.json").write_text((out / "export.json").read_text().replace('"format"', '"format" ', 1))
    stale = (out / "export.json").read_bytes()
    monkeypatch.setattr(export.os, "rename", lambda *args: pytest.fail("renamed in two steps"))
    assert main(["export", str(id_run), "--out", str(out), "--device", "cpu", "--force"]) == 0
    assert (out / "export.json").read_bytes() != stale
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "v1"]  # nothing hidden left beside it


def test_an_export_on_a_full_disk_is_one_line_naming_the_folder(id_run: Path, tmp_path: Path, monkeypatch,
                                                                capsys) -> None:
    """On a full disk the export ended in safetensors' traceback (exit 1), or numpy's "3904 requested and 992
    written", naming no file."""
    import errno

    from safetensors import SafetensorError

    import crossan.export as export

    out = tmp_path / "v1"
    for fail in (SafetensorError("Error while serializing: No space left on device (os error 28)"),
                 OSError(errno.ENOSPC, "No space left on device")):
        def full(*args, fail=fail, **kwargs):
            raise fail

        monkeypatch.setattr(export, "save_file", full)
        assert main(["export", str(id_run), "--out", str(out), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1] == (f"crossan: error: {out}: cannot write the export (no space left on "
                                                "the device); nothing was written there"), err
        assert "Traceback" not in err and sorted(p.name for p in tmp_path.iterdir()) == []


def test_recommend_refuses_an_out_it_would_not_write_or_that_is_its_input(id_run: Path, tmp_path: Path,
                                                                         capsys) -> None:
    item = load_recommender(id_run, device="cpu").item_ids[1]
    out = tmp_path / "r.csv"
    assert main(["recommend", str(id_run), "--history", item, "--out", str(out), "--device", "cpu"]) == 2
    assert "with --history the list is printed" in capsys.readouterr().err and not out.exists()
    users = tmp_path / "users.tsv"
    users.write_text(f"u1\t{item}\n")
    assert main(["recommend", str(id_run), "--users", str(users), "--out", str(users), "--device", "cpu"]) == 2
    assert "is the --users file itself" in capsys.readouterr().err and users.read_text() == f"u1\t{item}\n"
    assert main(["recommend", str(id_run), "--users", str(tmp_path), "--out", str(out), "--device", "cpu"]) == 2
    assert f"{tmp_path}: is a folder; --users takes a file" in capsys.readouterr().err


def test_new_items_with_whitespace_in_their_ids_or_a_bad_row_are_refused_with_the_right_advice(
        content_run: Path, tmp_path: Path) -> None:
    from crossan.data.readers import DataError

    run = _copy(content_run, tmp_path)
    cfg, _, _ = load_run(run, "cpu")
    _new_catalogue(tmp_path / "ctrl", Path(cfg.data.path), [("blue\x1fshirt", "A shirt", None)])
    with pytest.raises(DataError, match=r"item ids \['blue\\x1fshirt'\] contain a tab, line break or other ASCII"):
        embed_items(run, tmp_path / "ctrl", device="cpu")
    _new_catalogue(tmp_path / "twice", Path(cfg.data.path), [("x1", "A", None), ("x1", "B", None)])
    with pytest.raises(DataError) as e:
        embed_items(run, tmp_path / "twice", device="cpu")
    assert "on_bad_rows" not in str(e.value) and "a new item's row is never dropped" in str(e.value)
    assert not (run / EXTRA_DIR).exists()
    # an id with spaces can be named: by --history, and in a --users file whose items are separated by tabs
    _new_catalogue(tmp_path / "spaced", Path(cfg.data.path), [("blue shirt", "A shirt", None)])
    assert embed_items(run, tmp_path / "spaced", device="cpu") == ["blue shirt"]
    users, out = tmp_path / "users.tsv", tmp_path / "recs.csv"
    users.write_text("u1\tblue shirt\t\n")
    assert main(["recommend", str(run), "--users", str(users), "--out", str(out), "--k", "2", "--device", "cpu"]) == 0


def test_evaluate_finds_a_moved_dataset_with_run_data(id_run: Path, tmp_path: Path, capsys) -> None:
    run = _copy(id_run, tmp_path)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    moved = Path(shutil.copytree(cfg["data"]["path"], tmp_path / "moved"))
    cfg["data"]["path"] = str(tmp_path / "gone")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["evaluate", str(run), "--device", "cpu", "--run-data", str(moved)]) == 0
    results = json.loads((run / "results.json").read_text())
    printed = capsys.readouterr()
    assert json.loads(printed.out)["test"] == results["test"]
    assert "warning" not in printed.err  # the same users: nothing to say


def test_evaluate_says_when_the_users_histories_changed_since_training(id_run: Path, tmp_path: Path,
                                                                         capsys) -> None:
    """``crossan evaluate`` refused other items but scored other users' histories in silence: a users.tsv
    edited since training gave evaluation.json figures of other data beside results.json's."""
    run = _copy(id_run, tmp_path)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    changed = Path(shutil.copytree(cfg["data"]["path"], tmp_path / "changed"))
    lines = (changed / "users.tsv").read_text().splitlines()
    user, items = lines[0].split("\t")
    seq = items.split()
    lines[0] = user + "\t" + " ".join(seq[:-2] + seq[:-3:-1])  # the last two swapped: the same items
    (changed / "users.tsv").write_text("\n".join(lines) + "\n")
    assert main(["evaluate", str(run), "--device", "cpu", "--run-data", str(changed)]) == 0
    err = capsys.readouterr().err
    assert "crossan: warning: " in err and "are not those the run was trained and tested on" in err
    results = json.loads((run / "results.json").read_text())
    written = json.loads((run / "evaluation.json").read_text())
    assert written["split_fingerprint"] != results["split_fingerprint"]



def test_two_embed_items_at_once_keep_both_sets_of_items(content_run: Path, tmp_path: Path, monkeypatch) -> None:
    """``embed-items`` read the stored items when it started and wrote them back with its own when it ended:
    a second one that stored its items in between (two commands at once) lost them without a word. The merge
    now re-reads the stored items under a lock in the run folder."""
    import crossan.coldstart as coldstart

    run = _copy(content_run, tmp_path)
    cfg, _, _ = load_run(run, "cpu")
    _new_catalogue(tmp_path / "a", Path(cfg.data.path), [("cold-a", "First new item", None)])
    _new_catalogue(tmp_path / "b", Path(cfg.data.path), [("cold-b", "Second new item", None)])
    embed_new = coldstart._embed_new
    calls = []

    def meanwhile(*args, **kwargs):  # the other command stores its item while this one embeds
        if not calls:
            calls.append(1)
            assert embed_items(run, tmp_path / "b", device="cpu") == ["cold-b"]
        return embed_new(*args, **kwargs)

    monkeypatch.setattr(coldstart, "_embed_new", meanwhile)
    assert embed_items(run, tmp_path / "a", device="cpu") == ["cold-a"]
    extra = read_extra_items(run)
    assert extra.ids == ["cold-b", "cold-a"] and extra.embeddings.shape[0] == 2
    rec = load_recommender(run, device="cpu")
    assert rec.item_ids[-2:] == ["cold-b", "cold-a"] and rec.titles[-2:] == ["Second new item", "First new item"]


def test_an_export_folder_that_appears_while_exporting_is_not_replaced_without_force(id_run: Path, tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """``export`` checked ``--out`` when it started, then swapped whatever stood there at the end for its own
    folder: one that appeared meanwhile (another export to the same ``--out``) was deleted without ``--force``.
    It is now kept, and the export fails naming it, leaving no temporary."""
    import crossan.export as export

    out = tmp_path / "exports" / "v1"
    load = export.load_recommender

    def meanwhile(*args, **kwargs):
        rec = load(*args, **kwargs)
        out.mkdir(parents=True)
        (out / "export.json").write_text("{}")  # the other export's folder
        return rec

    monkeypatch.setattr(export, "load_recommender", meanwhile)
    with pytest.raises(ServeError, match="was created while the export ran"):
        export.export_run(id_run, out, device="cpu")
    assert (out / "export.json").read_text() == "{}" and sorted(p.name for p in out.parent.iterdir()) == ["v1"]
    monkeypatch.setattr(export, "load_recommender", load)
    export.export_run(id_run, out, device="cpu", force=True)  # --force replaces it, as before
    assert json.loads((out / "export.json").read_text())["method"] == "id"


def test_a_first_embed_items_that_fails_midway_leaves_the_run_servable(content_run: Path, tmp_path: Path,
                                                                       monkeypatch) -> None:
    """A first ``embed-items`` that failed between its two writes (disk full, Ctrl-C) left a lone items.json:
    ``recommend``, ``export`` and ``embed-items`` itself then refused the run ("embeddings.safetensors is
    missing; rerun crossan embed-items", which refused the same way). The embeddings file is the commit point:
    without it there are no stored items. Damaged files are refused with advice that works (remove them)."""
    import crossan.coldstart as coldstart

    run = _copy(content_run, tmp_path)
    cfg, data, _ = load_run(run, "cpu")
    _new_catalogue(tmp_path / "a", Path(cfg.data.path), [("cold-a", "First new item", None)])

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(coldstart, "atomic_save_safetensors", disk_full)
        with pytest.raises(OSError, match="No space left"):
            embed_items(run, tmp_path / "a", device="cpu")
    assert sorted(p.name for p in (run / EXTRA_DIR).iterdir()) == ["items.json"]
    assert len(read_extra_items(run)) == 0
    assert load_recommender(run, device="cpu").item_ids == data.item_ids  # served as before, no extra item
    assert embed_items(run, tmp_path / "a", device="cpu") == ["cold-a"] and read_extra_items(run).ids == ["cold-a"]

    emb = run / EXTRA_DIR / "embeddings.safetensors"
    emb.write_bytes(emb.read_bytes()[:100])  # damaged: embed-items cannot mend it, so it is not the advice
    with pytest.raises(ServeError, match=rf"cannot read the extra items .*; remove {run / EXTRA_DIR} and embed"):
        load_recommender(run, device="cpu")


def test_unknown_items_can_be_skipped(id_run: Path, tmp_path: Path, capsys) -> None:
    """A dataset's own users.tsv can hold ids the run never embedded (the protocol drops items seen only before
    every kept window), and ``recommend --users`` refused the whole file. ``--unknown-items skip`` leaves them
    out: a history scores as its known items, a user with none gets no rows, and a note says so."""
    rec = load_recommender(id_run, device="cpu")
    good, other = rec.item_ids[1], rec.item_ids[2]
    assert rec.known([good, "ghost", other, "ghost"]) == ([good, other], ["ghost"])
    users = tmp_path / "users.tsv"
    users.write_text(f"u1\t{good}\nu2\t{good} phantom {other}\nu3\tghost\n")
    out = tmp_path / "recs.csv"
    args = ["recommend", str(id_run), "--users", str(users), "--out", str(out), "--device", "cpu"]
    assert main([*args, "--unknown-items", "skip"]) == 0
    err = capsys.readouterr().err
    assert "skipped 2 history entries" in err and "'u3' (line 3)" in err
    rows = list(csv.DictReader(out.open()))
    assert sorted({r["user"] for r in rows}) == ["u1", "u2"]
    expected = [r.item_id for r in rec.recommend([good, other], k=10, exclude_history=rec.mask_history)]
    assert [r["item_id"] for r in rows if r["user"] == "u2"] == expected
    assert main(["recommend", str(id_run), "--history", "ghost", good, "--device", "cpu",
                 "--unknown-items", "skip"]) == 0
    assert "skipped 1 unknown item id(s): 'ghost'" in capsys.readouterr().err
    assert main(["recommend", str(id_run), "--history", "ghost", "--device", "cpu", "--unknown-items", "skip"]) == 2
    assert "no item id of the history is known" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- a run that trains on
def _newer_best(run: Path, tmp_path: Path) -> Path:
    """The weights a still-training run's next best epoch would write: every float tensor of best.safetensors
    moved (same keys and shapes), saved aside as the trainer saves a pending best."""
    from safetensors.torch import load_file, save_file

    from crossan import __version__

    tensors = {k: v + 0.05 if v.is_floating_point() else v for k, v in load_file(str(run / "best.safetensors")).items()}
    path = tmp_path / "best.pending-epoch-2.safetensors"
    save_file(tensors, str(path), metadata={"crossan_version": __version__})
    return path


def _promote_when_loaded(monkeypatch, newer: Path, calls: list[str]) -> None:
    """The trainer promotes a new best (``os.replace``, atomic, as ``settle_best_weights`` does) while a reader
    is between its reads of the run folder: just before the model's weights are loaded."""
    import os

    import crossan.runs as runs

    real = runs.load_weights

    def promote(model, weights):
        if not calls:
            calls.append("promoted")
            target = Path(getattr(weights, "path", weights))
            os.replace(newer, target)
        return real(model, weights)

    monkeypatch.setattr(runs, "load_weights", promote)


def _twin_run(content_run: Path, tmp_path: Path) -> tuple[Path, Path, int]:
    """A copy of the content run with an extra item "twin" holding training row 3's content; returns the run,
    the new catalogue, and the row."""
    run = _copy(content_run, tmp_path)
    cfg, data, _ = load_run(run, "cpu")
    record = data.catalogue[data.item_ids[3]]
    new = _new_catalogue(tmp_path / "new", Path(cfg.data.path), [("twin", record.text, record.image)])
    return run, new, 3


def test_a_best_epoch_written_while_loading_is_not_served_beside_older_extra_items(
        content_run: Path, tmp_path: Path, monkeypatch) -> None:
    """``load_recommender`` hashed best.safetensors to check the extra items, then read the file again to load
    the model: a run that still trains and promoted a new best epoch in between was served with the new
    weights and extra rows embedded by the old ones (the twin of row 3 then lay ~0.3 off its training
    item). The file is now read once: the model is built from the bytes the extra items were checked against."""
    from crossan.utils import file_sha256

    run, new, row = _twin_run(content_run, tmp_path)
    embed_items(run, new, device="cpu")
    (run / "results.json").unlink()  # the run still trains
    old_sha = file_sha256(run / "best.safetensors")
    calls: list[str] = []
    _promote_when_loaded(monkeypatch, _newer_best(run, tmp_path), calls)
    with pytest.warns(UnfinishedRunWarning):
        rec = load_recommender(run, device="cpu")
    assert calls == ["promoted"] and file_sha256(run / "best.safetensors") != old_sha
    torch.testing.assert_close(rec.item_table[rec.item_ids.index("twin")], rec.item_table[row], rtol=1e-5,
                               atol=1e-5)
    assert rec.weights_sha256 == old_sha  # the checkpoint served is the one the extra items came from
    # loaded afterwards, the new best is refused beside the old extra items, naming both files and why
    with pytest.warns(UnfinishedRunWarning), pytest.raises(ServeError) as err:
        load_recommender(run, device="cpu")
    message = str(err.value)
    assert str(run / EXTRA_DIR / "embeddings.safetensors") in message and str(run / "best.safetensors") in message
    assert "still trains" in message and old_sha[:12] in message and "embed them again" in message


def test_embed_items_stamps_the_weights_that_embedded_them(content_run: Path, tmp_path: Path,
                                                           monkeypatch) -> None:
    """``embed-items`` hashed best.safetensors, then loaded the model from a second read: a new best promoted in
    between embedded the items with the new weights under the old weights' digest, so they were served beside
    the old weights (and refused beside the new ones they came from). The digest is now of the bytes that
    embedded them."""
    import os

    run, new, row = _twin_run(content_run, tmp_path)
    (run / "results.json").unlink()
    original = tmp_path / "original.safetensors"
    shutil.copyfile(run / "best.safetensors", original)
    calls: list[str] = []
    _promote_when_loaded(monkeypatch, _newer_best(run, tmp_path), calls)
    with pytest.warns(UnfinishedRunWarning):
        assert embed_items(run, new, device="cpu") == ["twin"]
    assert calls == ["promoted"]
    monkeypatch.undo()
    with pytest.warns(UnfinishedRunWarning), pytest.raises(ServeError, match="other weights"):
        load_recommender(run, device="cpu")  # embedded before the promotion: stale beside the newer best
    os.replace(original, run / "best.safetensors")  # the weights that embedded them
    with pytest.warns(UnfinishedRunWarning):
        rec = load_recommender(run, device="cpu")
    torch.testing.assert_close(rec.item_table[rec.item_ids.index("twin")], rec.item_table[row], rtol=1e-5,
                               atol=1e-5)


def test_extra_items_replaced_while_read_are_read_from_one_file(content_run: Path, tmp_path: Path,
                                                               monkeypatch) -> None:
    """read_extra_items took the ids and records from one read of embeddings.safetensors and the rows from a
    second: an ``embed-items`` that stored its items in between (an atomic rename) paired the old items with
    the new rows, unnoticed when their number was the same. The file is now read once."""
    import os

    from safetensors.torch import load_file

    import crossan.coldstart as coldstart

    run, new, _ = _twin_run(content_run, tmp_path)
    embed_items(run, new, device="cpu")
    emb = run / EXTRA_DIR / "embeddings.safetensors"
    first = read_extra_items(run)
    kept = tmp_path / "first.safetensors"
    shutil.copyfile(emb, kept)
    _new_catalogue(tmp_path / "other", tmp_path / "new", [("twin", "An unrelated title", None)])
    embed_items(run, tmp_path / "other", device="cpu")  # the same id, other content: one row, other values
    second = tmp_path / "second.safetensors"
    shutil.copyfile(emb, second)
    assert not torch.allclose(load_file(str(second))["embeddings"], first.embeddings, atol=1e-3)
    os.replace(kept, emb)
    calls: list[str] = []

    def storing_meanwhile(real):
        def call(*args, **kwargs):
            if not calls:
                calls.append("stored")
                shutil.copyfile(second, tmp_path / "pending")
                os.replace(tmp_path / "pending", emb)
            return real(*args, **kwargs)
        return call

    for name in ("load_file", "safetensors_metadata"):  # the read after the first, in the old code and now
        real = getattr(coldstart, name, None)
        if real is not None:
            monkeypatch.setattr(coldstart, name, storing_meanwhile(real))
    got = read_extra_items(run)
    assert calls == ["stored"]
    assert got.records == first.records and torch.equal(got.embeddings, first.embeddings)


def test_evaluate_and_export_record_the_weights_they_read(id_run: Path, tmp_path: Path) -> None:
    from crossan import __version__
    from crossan.export import export_run
    from crossan.runs import evaluate_run
    from crossan.utils import file_sha256, safetensors_metadata

    run = _copy(id_run, tmp_path)
    sha = file_sha256(run / "best.safetensors")
    assert evaluate_run(run, device="cpu")["weights_sha256"] == sha
    assert json.loads((run / "evaluation.json").read_text())["weights_sha256"] == sha
    out = export_run(run, tmp_path / "export", device="cpu")
    assert json.loads((out / "export.json").read_text())["source_weights_sha256"] == sha
    assert load_recommender(run, device="cpu").weights_sha256 == sha
    raw = (run / "best.safetensors").read_bytes()
    assert safetensors_metadata(raw) == {"crossan_version": __version__}
    for bad in (b"", raw[:6], (10**9).to_bytes(8, "little") + b"{}"):
        with pytest.raises(ValueError, match="not a safetensors file"):
            safetensors_metadata(bad)


def test_the_weights_read_once_are_not_kept_while_the_catalogue_is_embedded_and_scored(
        id_run: Path, tmp_path: Path, monkeypatch) -> None:
    """``load_recommender`` and ``evaluate_run`` read best.safetensors into memory once (:func:`read_weights`)
    and load the model from those bytes, but kept the bytes until they returned: through embedding the whole
    catalogue (a content tower's frozen encoders) and scoring both splits, a second copy of the checkpoint in
    memory, which the path-based load they replaced never held. Only its digest is kept now."""
    import gc
    import weakref

    import crossan.ranking as ranking
    import crossan.runs as runs
    import crossan.serve as serve
    from crossan.runs import evaluate_run
    from crossan.utils import file_sha256

    run = _copy(id_run, tmp_path)
    read: list[weakref.ref] = []
    alive: list[bool] = []

    real_read = runs.read_weights

    def read_weights(path):
        weights = real_read(path)
        read.append(weakref.ref(weights))
        return weights

    def still_held() -> None:
        gc.collect()
        alive.append(read[-1]() is not None)

    monkeypatch.setattr(runs, "read_weights", read_weights)
    monkeypatch.setattr(serve, "read_weights", read_weights)
    real_init, real_evaluate = serve.TrainedRecommender.__init__, ranking.evaluate

    def init(self, *args, **kwargs):  # embeds the catalogue
        still_held()
        real_init(self, *args, **kwargs)

    def evaluate(*args, **kwargs):
        still_held()
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(serve.TrainedRecommender, "__init__", init)
    monkeypatch.setattr(ranking, "evaluate", evaluate)
    sha = file_sha256(run / "best.safetensors")
    assert load_recommender(run, device="cpu").weights_sha256 == sha
    assert evaluate_run(run, device="cpu")["weights_sha256"] == sha
    assert len(read) == 2 and alive == [False, False, False]  # before: [True, True, True]


def test_serving_odd_batches_and_empty_requests(id_run: Path) -> None:
    """A second reader (2026-12-04): ``recommend_many(..., batch_size=-1)`` answered ``[]``; ``scores([])`` and
    ``user_vectors([])`` raised "max() arg is an empty sequence"."""
    rec = load_recommender(id_run, device="cpu")
    histories = [[rec.item_ids[1], rec.item_ids[2]], [rec.item_ids[3]]]
    for bad in (-1, 0, True, 2.5):
        with pytest.raises(ServeError, match=f"batch_size must be an integer of at least 1 .*got {bad!r}"):
            rec.recommend_many(histories, k=3, batch_size=bad)
    one, both = rec.recommend_many(histories, k=3, batch_size=1), rec.recommend_many(histories, k=3)
    assert [[r.item_id for r in h] for h in one] == [[r.item_id for r in h] for h in both]
    # the batch changes the matrix products' summation order: scores agree to their last bits only
    assert [r.score for h in one for r in h] == pytest.approx([r.score for h in both for r in h], rel=1e-5)
    assert tuple(rec.scores([]).shape) == (0, len(rec.item_ids))
    assert tuple(rec.user_vectors([]).shape) == (0, rec.item_table.shape[1])
    assert rec.recommend_many([], k=3) == []


def test_one_long_history_does_not_cost_its_length_times_the_batch(id_run: Path) -> None:
    """History exclusion built a [batch, longest history] table: 511 short histories beside one of 300,000
    items took 1.5 GB (0.28 GB without it). Exclusion now scatters the histories' entries as they are."""
    from crossan.utils import cpu_allocation_peak

    rec = load_recommender(id_run, device="cpu")
    short = [rec.item_ids[1], rec.item_ids[2]]
    long = [rec.item_ids[1 + i % 20] for i in range(100_000)]
    rows = [rec.rows(h) for h in [short] * 255 + [long]]
    expected = rec._scores_rows(rows[-1:], True)
    peak = cpu_allocation_peak(lambda: rec._scores_rows(rows, True))
    assert peak < 16 * 100_000 * 8  # the old table alone: 256 × 100,000 × 8 bytes = 205 MB; measured 4.9 MB now
    assert torch.equal(rec._scores_rows(rows, True)[-1:].isinf(), expected.isinf())


def test_recommendations_for_a_users_file_are_written_a_chunk_at_a_time(id_run: Path, tmp_path: Path,
                                                                        monkeypatch) -> None:
    """`recommend --users` built every row, then the whole CSV in one string: memory grew with users × k (a
    second reader measured 0.67 GB for 100,000 users at k = 10). The CSV is streamed now, chunk by chunk, and
    the same bytes come out whatever the chunk."""
    import tracemalloc

    import crossan.cli_serving

    rec = load_recommender(id_run, device="cpu")
    rng = np.random.default_rng(0)
    lines = [f"u{u}\t" + " ".join(rec.item_ids[1 + j] for j in rng.integers(0, 29, 5)) for u in range(20_000)]
    users = tmp_path / "users.tsv"
    users.write_text("\n".join(lines) + "\n")

    def run(out: Path) -> int:
        tracemalloc.start()
        assert main(["recommend", str(id_run), "--users", str(users), "--out", str(out), "--k", "20",
                     "--device", "cpu"]) == 0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    whole = run(tmp_path / "a.csv")  # 20,000 users in 5 chunks of 4,096: batches of eval.batch_size = 512
    assert crossan.cli_serving.USERS_PER_CHUNK % load_recommender(id_run).cfg.eval.batch_size == 0
    # chunks of one batch score the same batches (the summation order of the products, and so the last bits of
    # the scores and the order of near-ties, depend on the batch: docs/serving.md)
    monkeypatch.setattr(crossan.cli_serving, "USERS_PER_CHUNK", 512)
    run(tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert len((tmp_path / "a.csv").read_text().splitlines()) == 1 + 20_000 * 20
    assert whole < 60e6  # the same 20,000 users on a 60-item run: 31 MB streamed, 97 MB with every row held


def test_item_ids_with_spaces_are_given_by_tabs_in_a_users_file(tmp_path: Path, capsys) -> None:
    """A CSV dataset's ids may hold spaces ("prod 3"): such a run trained and served `--history "prod 3"`, but a
    `--users` file split every history on spaces, so "prod 3" was 'prod', '3' and unknown. Items separated by
    tabs keep their spaces, and an unknown id of such a run says how to write them."""
    rng = np.random.default_rng(0)
    rows = ["user,item,timestamp"] + [f"u{u},prod {int(i)},{t}" for u in range(40)
                                      for t, i in enumerate(rng.choice(15, 6, replace=False))]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "inter.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "d" / "inter.csv"), "--out", str(run), "--quiet", "method=id",
                 "train.epochs=1", "device=cpu", "user.dim=16"]) == 0
    users = tmp_path / "users.tsv"
    users.write_text("a\tprod 3\tprod 7\nb\tprod 1\t\n")  # a history of one such item ends with a tab
    out = tmp_path / "recs.csv"
    assert main(["recommend", str(run), "--users", str(users), "--out", str(out), "--k", "3", "--device", "cpu"]) == 0
    got = list(csv.DictReader(out.open()))
    rec = load_recommender(run, device="cpu")
    assert [r["item_id"] for r in got if r["user"] == "a"] == [r.item_id for r in rec.recommend(["prod 3", "prod 7"], 3)]
    users.write_text("a\tprod 3 prod 7\n")
    assert main(["recommend", str(run), "--users", str(users), "--out", str(out), "--device", "cpu"]) == 2
    assert "this run's item ids hold spaces, so separate a history's items by tabs" in capsys.readouterr().err
    # skipping unknown ids says it too ('prod 3 prod 7' read as four ids, none known)
    users.write_text("a\tprod 3 prod 7\nb\tprod 1\tprod 2\n")
    assert main(["recommend", str(run), "--users", str(users), "--out", str(out), "--device", "cpu",
                 "--unknown-items", "skip"]) == 0
    assert "with an unknown item id; this run's item ids hold spaces" in capsys.readouterr().err


def test_a_users_file_splits_items_where_the_dataset_readers_do(tmp_path: Path) -> None:
    """A second reader (2026-12-04): training reads `a<NBSP>b` as one item id (users.tsv splits at ASCII
    whitespace), but `recommend --users` split it at every Unicode space, so with `--unknown-items skip` the
    history held item `a` instead. A tab-separated history strips only ASCII whitespace from its ids too."""
    from crossan.cli_serving import read_users_file

    users = tmp_path / "users.tsv"
    users.write_text("u1\ta\xa0b c\u3000d\x85e\n u2 \t\xa0x\xa0\tplain \n", encoding="utf-8")
    assert read_users_file(users) == [("u1", ["a\xa0b", "c\u3000d\x85e"], 1), ("u2", ["\xa0x\xa0", "plain"], 2)]
    # tabs separate items only for a run whose ids hold spaces: a trailing or stray tab changed nothing before
    users.write_text("u1\ti1 i2 i3\t\nu2\ti1 i2\ti3\n")
    assert [items for _, items, _ in read_users_file(users)] == [["i1", "i2", "i3"], ["i1", "i2", "i3"]]
    assert [items for _, items, _ in read_users_file(users, tabs=True)] == [["i1 i2 i3"], ["i1 i2", "i3"]]


def test_recommendations_never_replace_a_file_of_the_run(id_run: Path, tmp_path: Path, capsys) -> None:
    """`recommend --out RUN/best.safetensors` wrote the CSV over the run's weights, exit 0; the run could not be
    served or evaluated any more (config.yaml likewise)."""
    run = _copy(id_run, tmp_path)
    users = tmp_path / "users.tsv"
    users.write_text(f"u1\t{load_recommender(run).item_ids[1]}\n")
    for name in ("best.safetensors", "config.yaml", "results.json"):
        before = (run / name).read_bytes()
        assert main(["recommend", str(run), "--users", str(users), "--out", str(run / name), "--device", "cpu"]) == 2
        assert f"is a file of the run folder {run}" in capsys.readouterr().err
        assert (run / name).read_bytes() == before
    assert main(["recommend", str(run), "--users", str(users), "--out", str(run / "recs.csv"), "--device", "cpu"]) == 0


def test_an_out_name_too_long_for_its_temporary_is_refused_before_scoring(id_run: Path, tmp_path: Path,
                                                                          capsys) -> None:
    """A second reader (2026-12-04): `recommend --out` of a 245-byte name scored every history and then failed
    with "File name too long" on the temporary file written beside it; `export --out` of 250 bytes likewise."""
    users = tmp_path / "users.tsv"
    users.write_text(f"u1\t{load_recommender(id_run).item_ids[1]}\n")
    out = tmp_path / ("r" * 241 + ".csv")
    assert main(["recommend", str(id_run), "--users", str(users), "--out", str(out), "--device", "cpu"]) == 2
    assert "the file name is too long (245 bytes; at most 237 here" in capsys.readouterr().err
    ok = tmp_path / ("r" * 233 + ".csv")
    assert main(["recommend", str(id_run), "--users", str(users), "--out", str(ok), "--device", "cpu"]) == 0
    assert main(["export", str(id_run), "--out", str(tmp_path / ("e" * 250)), "--device", "cpu"]) == 2
    assert "the folder name is too long for --out (at most 241 bytes here" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- mutation survivors
def test_serving_checks_that_mutation_testing_found_untested(id_run: Path, content_run: Path, tmp_path: Path,
                                                             monkeypatch) -> None:
    """Mutation testing (2026-12-04) removed each of these checks without a test failing."""
    from crossan.coldstart import ExtraItems, _write_extra_items
    from crossan.runs import read_weights

    rec = load_recommender(id_run, device="cpu")
    with pytest.raises(UnknownItemError):  # the padding row has the id "" and is no item
        rec.recommend([""])
    # an excluded history item that scores NaN is no candidate: not served last, not warned about
    history = [rec.item_ids[1], rec.item_ids[2]]
    table, encode = rec.item_table.clone(), rec.model.user_vectors
    monkeypatch.setattr(rec.model, "user_vectors", lambda inputs, _: encode(inputs, table))  # a finite user
    with torch.no_grad():
        rec.item_table[1] = float("nan")  # item 1 scores NaN
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        served = rec.recommend(history, k=rec.num_candidates, exclude_history=True)
    assert rec.item_ids[1] not in [r.item_id for r in served] and len(served) == rec.num_candidates - 2
    # batch_size is the number of histories per user-encoder call
    calls = []
    monkeypatch.setattr(rec.model, "user_vectors", lambda inputs, _: calls.append(len(inputs)) or encode(inputs, table))
    rec.recommend_many([history] * 3, k=2, batch_size=1)
    assert calls == [1, 1, 1]
    # stored extra items that are training items, or of another width, are refused when the run is loaded
    run = _copy(content_run, tmp_path)
    cfg, _, model = load_run(run, "cpu")
    sha = read_weights(run / "best.safetensors").sha256
    train_id = load_recommender(run).item_ids[1]
    for ids, width, says in (([train_id], model.tower.dim, "are also training items"),
                             (["new"], model.tower.dim + 1, "embeddings of width")):
        _write_extra_items(run, ExtraItems(ids, [{"item_id": i, "title": "t"} for i in ids],
                                           torch.zeros(1, width), sha), cfg)
        with pytest.raises(ServeError, match=says):
            load_recommender(run, device="cpu")


def test_an_export_into_the_run_folder_is_refused(id_run: Path) -> None:
    """A second reader: ``crossan export RUN --out RUN/extra_items`` succeeded where that folder did not exist yet;
    the run's cold-start items then went missing from ``recommend`` and ``embed-items`` wrote beside the export."""
    from crossan.errors import ServeError
    from crossan.export import export_run

    before = sorted(p.relative_to(id_run) for p in id_run.rglob("*"))
    for out in (id_run / "extra_items", id_run / "a" / "b", id_run, id_run / ".." / id_run.name / "exp"):
        with pytest.raises(ServeError, match=r"--out lies inside the run folder .* choose a folder outside it"):
            export_run(id_run, out)
    assert sorted(p.relative_to(id_run) for p in id_run.rglob("*")) == before  # nothing written


def test_the_python_api_refuses_histories_and_flags_that_would_mislead(id_run: Path) -> None:
    """A second reader: ``exclude_history="false"`` excluded (a truthy string), a set of ids was scored in its
    arbitrary order (the user vector depends on it, so the answer changed between processes), a generator failed
    with a bare ``TypeError: … has no len()``; and one ``recommend`` history was called "history 0"."""
    from crossan.errors import ServeError
    from crossan.serve import load_recommender

    rec = load_recommender(id_run, device="cpu")
    item = rec.item_ids[1]
    with pytest.raises(ServeError, match=r"exclude_history must be True, False or None, got 'false'"):
        rec.recommend([item], exclude_history="false")
    for bad, kind in (({item}, "set"), (frozenset({item}), "frozenset"), ((i for i in [item]), "generator")):
        with pytest.raises(ServeError, match=rf"history: expected a list of item ids, oldest first .* got {kind}"):
            rec.recommend(bad)
    assert rec.recommend((item,), k=3) == rec.recommend([item], k=3)  # a tuple is an ordered sequence
    assert rec.recommend([item], exclude_history=np.bool_(True), k=3) == rec.recommend([item], k=3,
                                                                                       exclude_history=True)


def test_a_k_beyond_the_catalogue_says_so_and_not_that_the_history_took_the_rest(id_run: Path, capsys) -> None:
    """A second reader: with ``--include-history`` (nothing excluded) and a k above the catalogue, the note read
    "only 63 of the 63 candidate items are not in the history"."""
    from crossan.serve import load_recommender

    rec = load_recommender(id_run, device="cpu")
    item, n = rec.item_ids[1], rec.num_candidates
    assert main(["recommend", str(id_run), "--history", item, "--include-history", "--k", str(n + 5),
                 "--device", "cpu"]) == 0
    assert f"note: --k {n + 5} is more than the run's {n} candidate items: all are shown" in capsys.readouterr().err
    assert main(["recommend", str(id_run), "--history", item, "--k", str(n + 5), "--device", "cpu"]) == 0
    assert f"note: only {n - 1} of the {n} candidate items are not in the history" in capsys.readouterr().err


def test_non_finite_scores_are_one_crossan_warning_line(id_run: Path, tmp_path: Path, capsys) -> None:
    """A second reader: candidates scoring ±inf or NaN were warned of with a raw Python RuntimeWarning pointing into
    torch's no_grad wrapper; the command line now prints it as one ``crossan: warning:`` line (and Python code
    still sees a RuntimeWarning)."""
    from safetensors.torch import load_file, save_file

    run = _copy(id_run, tmp_path)
    weights = load_file(run / "best.safetensors")
    weights["tower.embedding.weight"][5] = 3.4e38  # its score overflows to ±inf
    import crossan

    save_file(weights, str(run / "best.safetensors"), metadata={"crossan_version": crossan.__version__})
    rec = load_recommender(run, device="cpu")
    history = [rec.item_ids[1]]
    capsys.readouterr()
    assert main(["recommend", str(run), "--history", *history, "--k", "3", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "crossan: warning: 1 score(s) of 1 history(ies) were NaN or infinite" in err, err
    assert "RuntimeWarning" not in err and "_contextlib" not in err
    weights["tower.embedding.weight"] = load_file(id_run / "best.safetensors")["tower.embedding.weight"] * 1e15
    save_file(weights, str(run / "best.safetensors"), metadata={"crossan_version": crossan.__version__})
    assert main(["recommend", str(run), "--history", *history, "--k", "3", "--device", "cpu"]) == 0
    scores = [line.split()[2] for line in capsys.readouterr().out.splitlines()[1:]]
    assert len(scores) == 3 and all("e+" in x and len(x) <= 10 for x in scores), scores  # not 20-digit numbers
    with pytest.warns(RuntimeWarning, match="were NaN or infinite"):
        rec.recommend(history, k=3)
