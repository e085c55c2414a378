"""Cold start reads and embeds new items as training read and embedded the training items: the run's
data settings (title cut, media roots), and for end-to-end towers the run's corrupt-media policy, chunk by
chunk."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from crossan.cache import build_cache
from crossan.config import load_config
from crossan.data import prepare
from crossan.data.media import MediaError
from crossan.data.synth import generate
from crossan.serve import EXTRA_DIR, embed_items, load_recommender, read_extra_items
from crossan.towers.base import TowerContext, build_tower
from crossan.towers.endtoend import EndToEndTower
from crossan.trainer import train
from media_helpers import make_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

CUT = 12
"""data.max_text_chars of the content run."""


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("synth") / "tiny", size="tiny", progress=False)


@pytest.fixture(scope="module")
def cut_run(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A frozen text+image run whose titles were cut at CUT characters and whose media may also lie in the
    folder ``../shared_media`` (a relative data.media_roots entry: relative to the dataset root)."""
    root = tmp_path_factory.mktemp("cut")
    data_dir = Path(shutil.copytree(synth, root / "data"))
    shared = root / "shared_media"
    shared.mkdir()
    shutil.copyfile(data_dir / "images" / "i00002.png", shared / "cover.png")
    cfg = load_config([], [f"data.path={data_dir}", "method=frozen", "modalities=[text,image]",
                           "encoders.preset=tiny", f"cache.dir={root / 'cache'}", "train.epochs=1",
                           "train.batch_size=64", "user.dim=32", "device=cpu", "precision=fp32",
                           f"data.max_text_chars={CUT}", "data.media_roots=[../shared_media]"])
    data = prepare(cfg.data)
    build_cache(cfg, data, cfg.modalities, progress=False)
    train(cfg, root / "run", data=data, progress=False)
    return root / "run"


def _full_title(synth: Path, item: str) -> str:
    for line in (synth / "items.tsv").read_text().splitlines()[1:]:
        parts = line.split("\t")
        if parts[0] == item:
            return parts[1]
    raise AssertionError(item)


def test_new_titles_are_cut_as_the_training_titles_were(cut_run: Path, synth: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(cut_run, tmp_path / "run"))
    rec = load_recommender(run, device="cpu")
    item = rec.item_ids[1]
    title = _full_title(synth, item)
    assert len(title) > CUT and rec.titles[1] == title[:CUT]  # training read the title cut
    new = tmp_path / "new"
    (new / "covers").mkdir(parents=True)
    shutil.copyfile(synth / rec.data.catalogue[item].image, new / "covers" / "dup.png")
    (new / "items.tsv").write_text(f"item_id\ttitle\timage\ndup\t{title}\tcovers/dup.png\n")
    embed_items(run, new, device="cpu")
    extra = read_extra_items(run)
    assert extra.records[0]["title"] == title[:CUT]
    # the same content as training item 1, read the same way: its embedding (up to float32 summation order)
    torch.testing.assert_close(extra.embeddings[0], rec.item_table[1], rtol=1e-5, atol=1e-5)


def test_new_media_may_lie_in_the_runs_media_roots(cut_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(cut_run, tmp_path / "run"))
    shared = cut_run.parent / "shared_media" / "cover.png"
    new = tmp_path / "deeper" / "new"  # no ../shared_media here: relative roots are the training root's
    new.mkdir(parents=True)
    (new / "items.tsv").write_text(f"item_id\ttitle\timage\nshared\tShared cover\t{shared}\n")
    assert embed_items(run, new, device="cpu") == ["shared"]
    assert read_extra_items(run).records[0]["image"] == str(shared.resolve())
    # a path outside the catalogue folder and the run's media roots is still refused
    outside = tmp_path / "elsewhere.png"
    shutil.copyfile(shared, outside)
    (new / "items.tsv").write_text(f"item_id\ttitle\timage\nlost\tLost cover\t{outside}\n")
    with pytest.raises(MediaError, match="data.media_roots"):
        embed_items(run, new, device="cpu")


# --------------------------------------------------------------------------------------------- end-to-end
def test_end_to_end_embed_content_runs_in_chunks_with_the_corrupt_policy(tmp_path: Path, monkeypatch) -> None:
    data = make_dataset(tmp_path / "media", n=5)
    cfg = load_config([], ["method=fft", "modalities=[text,image]", "encoders.preset=tiny", "device=cpu",
                           "encoders.batch_size=2"])
    tower = build_tower(TowerContext(cfg, data.num_items, data.item_ids, data.catalogue))
    assert isinstance(tower, EndToEndTower) and tower.batch_size == 2
    tower.eval()
    sizes: list[int] = []
    for encoder in tower.encoders.values():
        real = encoder.prepare

        def counted(records, catalogue, on_corrupt="error", _real=real):  # the real preparation, counted
            sizes.append(len(records))
            return _real(records, catalogue, on_corrupt)

        monkeypatch.setattr(encoder, "prepare", counted)
    records = [data.catalogue[i] for i in data.item_ids[1:]]
    with torch.no_grad():
        expected = tower(torch.arange(1, 6))
    got = tower.embed_content(records, data.catalogue)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert sizes and max(sizes) <= 2  # never all five items' media at once

    # a corrupt image: an error by default (the tower's policy), absent with on_corrupt=missing
    from crossan.data.catalogue import ItemRecord

    (tmp_path / "media" / "img" / "bad.jpg").write_bytes(b"not an image at all")
    bad = ItemRecord("bad", records[0].text, "img/bad.jpg")
    plain = ItemRecord("plain", records[0].text)
    with pytest.raises(MediaError, match="bad"):
        tower.embed_content([bad], data.catalogue)
    torch.testing.assert_close(tower.embed_content([bad], data.catalogue, on_corrupt="missing"),
                               tower.embed_content([plain], data.catalogue), atol=1e-6, rtol=1e-6)


def test_embed_items_passes_the_runs_corrupt_policy_to_end_to_end_towers(synth: Path, tmp_path: Path) -> None:
    cfg = load_config([], [f"data.path={synth}", "method=fft", "modalities=[text,image]",
                           "encoders.preset=tiny", "device=cpu", "train.epochs=1",
                           "train.max_steps_per_epoch=2", "train.batch_size=16", "user.dim=32",
                           "encoders.batch_size=2", "cache.on_corrupt=missing"])
    train(cfg, tmp_path / "run", progress=False)
    new = tmp_path / "new"
    (new / "covers").mkdir(parents=True)
    (new / "covers" / "bad.png").write_bytes(b"truncated")
    shutil.copyfile(synth / "images" / "i00003.png", new / "covers" / "good.png")
    rows = [("bad", "A corrupt cover", "covers/bad.png"), ("plain", "A corrupt cover", ""),
            ("good", "Good one", "covers/good.png"), ("four", "Fourth", ""), ("five", "Fifth", "")]
    lines = "".join(f"{a}\t{b}\t{c}\n" for a, b, c in rows)
    (new / "items.tsv").write_text("item_id\ttitle\timage\n" + lines)
    assert embed_items(tmp_path / "run", new, device="cpu") == [r[0] for r in rows]
    extra = read_extra_items(tmp_path / "run")
    # the corrupt cover counts as absent (cache.on_corrupt=missing), as it would have in training
    torch.testing.assert_close(extra.embeddings[0], extra.embeddings[1], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(extra.embeddings[2], extra.embeddings[3], atol=1e-3)


def test_new_items_are_encoded_at_the_precision_each_cache_was_built_with(synth: Path, tmp_path: Path) -> None:
    """A precision review (2026-12-02): a run may read a cache built at another precision than its own (the
    states are float16 either way), but embed-items encoded new items at the run's precision, so a new item
    with a training item's content got an embedding about 1% off that item's. Here the text cache is built in
    bf16, the image cache in fp32, and the run trains in fp32."""
    base = [f"data.path={synth}", "method=frozen", "modalities=[text,image]", "encoders.preset=tiny",
            f"cache.dir={tmp_path / 'cache'}", "train.epochs=1", "train.batch_size=64", "user.dim=32", "device=cpu"]
    cfg = load_config([], [*base, "precision=fp32"])
    data = prepare(cfg.data)
    build_cache(load_config([], [*base, "precision=bf16"]), data, ["text"], progress=False)
    build_cache(cfg, data, ["image"], progress=False)
    train(cfg, tmp_path / "run", data=data, progress=False)
    rec = load_recommender(tmp_path / "run", device="cpu")
    item = rec.item_ids[1]
    new = tmp_path / "new"
    (new / "covers").mkdir(parents=True)
    shutil.copyfile(synth / rec.data.catalogue[item].image, new / "covers" / "dup.png")
    (new / "items.tsv").write_text(f"item_id\ttitle\timage\ndup\t{_full_title(synth, item)}\tcovers/dup.png\n")
    embed_items(tmp_path / "run", new, device="cpu")
    torch.testing.assert_close(read_extra_items(tmp_path / "run").embeddings[0], rec.item_table[1],
                               rtol=1e-5, atol=1e-5)


def test_serving_and_cold_start_embed_in_float32_inside_a_callers_autocast(cut_run: Path, synth: Path,
                                                                         tmp_path: Path) -> None:
    """A precision review (2026-12-03): the item table (``embed_all``: serving, evaluation) and ``embed-items``
    ran the tower under whatever autocast the caller had entered, so a Recommender built inside a bf16
    autocast served a table computed in bf16, not the evaluator's, and new items were embedded off their
    training twins. Both are float32 now, equal to what they are outside it."""
    run = Path(shutil.copytree(cut_run, tmp_path / "run"))
    plain = load_recommender(run, device="cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = load_recommender(run, device="cpu")
    assert inside.item_table.dtype == torch.float32
    assert torch.equal(inside.item_table, plain.item_table)
    item = plain.item_ids[1]
    new = tmp_path / "new"
    (new / "covers").mkdir(parents=True)
    shutil.copyfile(synth / plain.data.catalogue[item].image, new / "covers" / "dup.png")
    (new / "items.tsv").write_text(f"item_id\ttitle\timage\ndup\t{_full_title(synth, item)}\tcovers/dup.png\n")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embed_items(run, new, device="cpu")
    torch.testing.assert_close(read_extra_items(run).embeddings[0], plain.item_table[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["frozen", "fft"])
def test_a_new_item_whose_every_file_is_corrupt_is_not_embedded_from_nothing(synth: Path, tmp_path: Path,
                                                                             method: str) -> None:
    """A second reader (2026-12-04): under `cache.on_corrupt=missing`, a new item with no title and a corrupt
    cover was embedded from nothing (a constant vector), stored and ranked like any candidate, exit 0. It is
    refused now, and nothing is stored; an item with a title beside its corrupt cover is still embedded."""
    from crossan.errors import ServeError

    cfg = load_config([], [f"data.path={synth}", f"method={method}", "modalities=[text,image]",
                           "encoders.preset=tiny", "device=cpu", "train.epochs=1", "train.max_steps_per_epoch=2",
                           "train.batch_size=16", "user.dim=32", f"cache.dir={tmp_path / 'cache'}",
                           "cache.on_corrupt=missing"])
    if method == "frozen":
        build_cache(cfg, prepare(cfg.data), ["text", "image"], progress=False)
    train(cfg, tmp_path / "run", progress=False)
    new = tmp_path / "new"
    (new / "covers").mkdir(parents=True)
    (new / "covers" / "bad.png").write_bytes(b"truncated")
    (new / "items.tsv").write_text("item_id\ttitle\timage\ntitled\tA title\tcovers/bad.png\n"
                                   "blank\t\tcovers/bad.png\n")
    with pytest.raises(ServeError, match=r"items.tsv: items \['blank'\] have no readable content of the run's"):
        embed_items(tmp_path / "run", new, device="cpu")
    assert not (tmp_path / "run" / EXTRA_DIR).exists()
    (new / "items.tsv").write_text("item_id\ttitle\timage\ntitled\tA title\tcovers/bad.png\n")
    assert embed_items(tmp_path / "run", new, device="cpu") == ["titled"]
