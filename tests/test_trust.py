"""Numbers a reviewer can trust (issue 12): the ranking mask never depends on the target, non-finite values
never become results, bad config values stop before any work."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import crossan.trainer as trainer
from conftest import write_iisan
from crossan.cli import main
from crossan.config import ConfigError, load_config
from crossan.data import prepare
from crossan.evaluation import mean_metrics, repeat_targets, strict_ranks
from crossan.trainer import NonFiniteError, check_finite_table, train, training_rows


# --------------------------------------------------------------------------------------------- the mask
def _case(seed: int, B: int = 64, N: int = 40, H: int = 8):
    rng = np.random.default_rng(seed)
    scores = torch.tensor(rng.normal(size=(B, N + 1)), dtype=torch.float32)
    history = torch.tensor(rng.integers(1, N + 1, size=(B, H)))
    targets = torch.tensor(rng.integers(1, N + 1, size=B))
    targets[::3] = history[::3, 2]  # a third of the targets repeat a history item
    return scores, targets, history


@pytest.mark.parametrize("seed", [0, 1])
def test_boosting_history_items_gains_nothing(seed: int) -> None:
    """The exploit of a target-dependent mask: score history items high. Under the default mask the ranks of
    every target are exactly those of the un-boosted scores, repeated targets included."""
    scores, targets, history = _case(seed)
    boosted = scores.clone()
    boosted.scatter_(1, history, 1e6)
    plain = strict_ranks(scores, targets, history)
    assert torch.equal(strict_ranks(boosted, targets, history), plain)
    repeated = (history == targets[:, None]).any(1)
    assert repeated.any() and torch.isinf(plain[repeated]).all() and torch.isfinite(plain[~repeated]).all()
    # the same boost under the old, target-dependent rule puts every repeated target first: the bug this fixes
    old_rule = strict_ranks(boosted, targets, history, mask_history=False)
    assert (old_rule[repeated] <= history.shape[1]).all()


def test_no_mask_keeps_history_in_ranking() -> None:
    scores = torch.tensor([[0.0, 5.0, 4.0, 3.0, 2.0]])
    # target 3, history {1}: masked → 1 item above (item 2) → rank 2; unmasked → items 1, 2 above → rank 3
    assert strict_ranks(scores, torch.tensor([3]), torch.tensor([[1]])).item() == 2
    assert strict_ranks(scores, torch.tensor([3]), torch.tensor([[1]]), mask_history=False).item() == 3
    assert strict_ranks(scores, torch.tensor([1]), torch.tensor([[1]]), mask_history=False).item() == 1
    assert torch.isinf(strict_ranks(scores, torch.tensor([1]), torch.tensor([[1]])))


def test_masked_target_scores_exactly_zero() -> None:
    ranks = torch.tensor([float("inf")] * 5)
    assert all(v == 0.0 for v in mean_metrics(ranks, [5, 10, 20]).values())
    assert repeat_targets(np.array([3, 4]), np.array([[0, 3], [1, 2]])) == 1


def test_dataset_whose_test_targets_all_repeat_scores_zero(tmp_path: Path) -> None:
    """Every user's last item repeats one of their earlier items → every test metric is exactly 0."""
    rng = np.random.default_rng(0)
    items = {f"i{k}": f"item {k}" for k in range(30)}
    users = {}
    for u in range(80):
        seq = [f"i{k}" for k in rng.choice(30, size=7, replace=False)]
        users[f"u{u}"] = seq + [seq[int(rng.integers(0, 6))]]  # the test target repeats a training item
    data = write_iisan(tmp_path / "rep", users, items)
    cfg = load_config([], [f"data.path={data}", "method=id", "train.epochs=2", "device=cpu"])
    res = train(cfg, tmp_path / "run", progress=False)
    assert res["splits"]["test"]["targets_repeating_history"] == 80 and res["splits"]["test"]["share"] == 1.0
    assert all(v == 0.0 for v in res["test"].values()), res["test"]
    ranks = np.load(tmp_path / "run" / "per_user.npz")["test_ranks"]
    assert ranks.shape == (80,) and np.isinf(ranks).all()
    # with the history left in the ranking the same run can hit: the option is honoured
    cfg2 = load_config([], [f"data.path={data}", "method=id", "train.epochs=2", "device=cpu",
                            "eval.mask_history=false"])
    res2 = train(cfg2, tmp_path / "run2", progress=False)
    assert res2["test"]["MRR"] > 0


# --------------------------------------------------------------------------------------------- non-finite
def test_non_finite_scores_rank_last() -> None:
    nan, inf = float("nan"), float("inf")
    scores = torch.tensor([[0.0, 1.0, 2.0, nan, 0.5, inf]])
    # target 4 (0.5): item 1 and 2 beat it; NaN and +inf rank last, so they don't → rank 3
    assert strict_ranks(scores, torch.tensor([4])).item() == 3
    # a NaN target ranks last among the 5 candidates (ties with the other non-finite rows count against it)
    assert strict_ranks(scores, torch.tensor([3])).item() == 5
    assert strict_ranks(scores, torch.tensor([5])).item() == 5
    all_nan = torch.full((1, 6), nan)
    assert strict_ranks(all_nan, torch.tensor([2])).item() == 5  # never rank 1


def test_check_finite_table_names_rows() -> None:
    table = torch.zeros(5, 3)
    check_finite_table(table, ["", "a", "b", "c", "d"], "x")
    table[3, 1] = float("nan")
    with pytest.raises(NonFiniteError, match=r"epoch 7.*rows 3 \('c'\)"):
        check_finite_table(table, ["", "a", "b", "c", "d"], "epoch 7")


def test_exploding_learning_rate_stops_with_a_clear_error(small_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    rc = main(["train", "--data", str(small_data), "--out", str(out), "--quiet", "train.lr=1e6",
               "train.epochs=3", "device=cpu", "method=id"])
    err = capsys.readouterr().err
    assert rc == 2 and "epoch 1" in err and "not finite" in err, err
    assert not (out / "results.json").exists() and not (out / "best.safetensors").exists()


@pytest.mark.parametrize("override, key", [
    ("train.lr=.nan", "train.lr"), ("train.lr=.inf", "train.lr"), ("train.lr=0", "train.lr"),
    ("train.lr_adapter=-1e-4", "train.lr_adapter"), ("user.n_heads=0", "user.n_heads"),
    ("user.n_heads=3", "user.n_heads"), ("train.eval_every=0", "train.eval_every"),
    ("eval.ks=[-5,10]", "eval.ks"), ("eval.ks=[]", "eval.ks"), ("train.max_steps_per_epoch=-1", "max_steps_per_epoch"),
    ("device=gpu7", "device"), ("user.dropout=1.5", "user.dropout"),
])
def test_bad_values_are_refused_naming_the_key(override: str, key: str, small_data: Path, tmp_path: Path,
                                               capsys) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config([], [f"data.path={small_data}", override])
    rc = main(["train", "--data", str(small_data), "--out", str(tmp_path / "r"), "--quiet", override])
    assert rc == 2 and key in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_evaluate_and_recommend_refuse_non_finite_weights(small_data: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    train(load_config([], [f"data.path={small_data}", "method=id", "train.epochs=1", "device=cpu"]), run,
          progress=False)
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    weights = load_file(str(bad / "best.safetensors"))
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, str(bad / "best.safetensors"), metadata={"crossan_version": json.loads(
        (run / "results.json").read_text())["crossan_version"]})
    assert main(["evaluate", str(bad), "--device", "cpu"]) == 2
    assert "non-finite" in capsys.readouterr().err
    assert main(["recommend", str(bad), "--history", "i1", "i2", "--device", "cpu"]) == 2
    assert "non-finite" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--device", "cpu"]) == 0  # the good run still evaluates


def test_data_stats_reports_repeated_targets(tmp_path: Path, capsys) -> None:
    items = {f"i{k}": f"item {k}" for k in range(10)}
    users = {"a": ["i1", "i2", "i3", "i4", "i1"], "b": ["i1", "i2", "i3", "i4", "i5"], "c": ["i5", "i6", "i7", "i6", "i8"]}
    data = write_iisan(tmp_path / "d", users, items)
    assert main(["data", "stats", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "test targets repeating a history item: 1 of 3" in out  # user a
    assert "valid targets repeating a history item: 1 of 3" in out  # user c (i6 before its validation i6)


def _standardised_frozen_tower(states: torch.Tensor, min_rel_std: float):
    """A frozen-features tower over ``states`` [N + 1, K, D] of one modality (row 0, the padding item, set to
    zeros and absent), built as a run builds it: standardised with ``cache.standardize_min_rel_std``."""
    from crossan.cache.features import TensorFeatures
    from crossan.config import Config
    from crossan.towers.base import TowerContext, build_tower

    n = states.shape[0] - 1
    states[0] = 0
    present = torch.ones(n + 1, dtype=torch.bool)
    present[0] = False
    cfg = Config(method="frozen", modalities=["text"])
    cfg.cache.standardize_min_rel_std = min_rel_std
    feats = TensorFeatures({"text": states}, {"text": present})
    return build_tower(TowerContext(cfg, n, [""] + [f"i{i}" for i in range(n)], features=feats))


@pytest.mark.parametrize("min_rel_std, zeroed", [(0.05, True), (0.0, False)])
def test_standardisation_drop_rule_is_a_setting(min_rel_std: float, zeroed: bool) -> None:
    """cache.standardize_min_rel_std: a dimension whose spread over the items is tiny next to its magnitude
    (std 0.01 around 10: 0.1% of its RMS) is zeroed under the default 5% rule and scaled up under 0."""
    N, K, D = 30, 3, 8
    g = torch.Generator().manual_seed(0)
    states = torch.randn(N + 1, K, D, generator=g)
    states[:, :, 0] = 10.0 + 0.01 * torch.randn(N + 1, K, generator=g)  # a near-constant offset dimension
    tower = _standardised_frozen_tower(states, min_rel_std)
    inv = tower.input_inv_std_text
    assert (inv[:, 1:] > 0).all()  # ordinary dimensions are always scaled
    assert bool((inv[:, 0] == 0).all()) is zeroed


@pytest.mark.parametrize("min_rel_std, zeroed", [(0.05, True), (0.0, False)])
def test_standardisation_zeroes_fp16_rounding_noise(min_rel_std: float, zeroed: bool) -> None:
    """The third audit: a dimension holding only the fp16 subnormals ±6e-8 (what a real MiniLM tap held)
    passed the relative rule (its std equals its RMS) and was scaled to unit variance, rounding noise as a
    feature. It is under 16 fp16 steps, so the default zeroes it (cache.standardize_min_rel_std=0 still
    keeps everything that varies). A channel firing on one item only is a real activation and is kept: that
    item's standardised value is sqrt(N - 1), as method.md §3 says."""
    N, K, D = 60, 2, 8
    g = torch.Generator().manual_seed(1)
    states = torch.randn(N + 1, K, D, generator=g).half()
    sign = torch.randint(0, 2, (N + 1, K), generator=g) * 2 - 1
    states[:, :, 0] = sign * torch.tensor(5.96e-8, dtype=torch.float16)  # fp16 subnormals around 0
    states[:, :, 1] = 0
    states[7, :, 1] = 0.002  # fires on one item only
    tower = _standardised_frozen_tower(states, min_rel_std)
    inv = tower.input_inv_std_text
    assert (inv[:, 1:] > 0).all()
    assert bool((inv[:, 0] == 0).all()) is zeroed
    z = (states[1:, :, 1].float() - tower.input_mean_text[:, 1]) * inv[:, 1]
    torch.testing.assert_close(z[6], torch.full((K,), (N - 1) ** 0.5), rtol=1e-3, atol=0)


def test_config_differences_resolve_paths_and_fill_new_keys(small_data: Path, tmp_path: Path, monkeypatch) -> None:
    """A saved config.yaml with a relative data.path and without a key added later is the same run; a real
    change is still named."""
    import os

    from crossan.config import config_differences, to_dict

    cfg = load_config([], [f"data.path={small_data}", "train.lr=3e-4"])
    saved = to_dict(cfg)
    monkeypatch.chdir(small_data.parent)
    saved["data"]["path"] = os.path.relpath(small_data)
    del saved["cache"]["standardize_min_rel_std"]  # written before the key existed
    assert config_differences(saved, cfg) == []
    saved["train"]["lr"] = 1e-3
    assert config_differences(saved, cfg) == ["train.lr: 0.001 → 0.0003"]


def test_local_model_paths_are_stored_resolved_and_name_one_cache(tmp_path: Path, monkeypatch) -> None:
    """``encoders.text.model=models/bert`` (a folder relative to the working folder) was stored in config.yaml as
    given, so serving and ``crossan evaluate`` from any other folder took it for a hub id ("not a local folder,
    and the model hub is unreachable"), and the folder spelt absolute named another cache folder. Local paths
    (a checkpoint folder, ``efficientnet-lite0:FILE``, a config string's ``tokenizer=``) are now resolved."""
    from crossan.cache.layout import preset_folder
    from crossan.config import config_differences, resolve_model_spec, to_dict
    from crossan.encoders import resolve_specs
    from crossan.runs import resolve_paths

    (tmp_path / "models" / "bert").mkdir(parents=True)
    (tmp_path / "tok").mkdir()
    (tmp_path / "w.pt").write_bytes(b"weights")
    monkeypatch.chdir(tmp_path)
    given = {"models/bert": str(tmp_path / "models" / "bert"),
             "efficientnet-lite0:w.pt": f"efficientnet-lite0:{tmp_path / 'w.pt'}",
             "config:bert:hidden_size=64,tokenizer=tok,num_hidden_layers=2":
                 f"config:bert:hidden_size=64,tokenizer={tmp_path / 'tok'},num_hidden_layers=2",
             "bert-base-uncased": "bert-base-uncased", "org/absent": "org/absent", "efficientnet-lite0": "efficientnet-lite0"}
    assert {v: resolve_model_spec(v) for v in given} == given
    (tmp_path / "efficientnet-lite0").mkdir()  # the packaged weights by name, whatever the working folder holds
    for unchanged in ("efficientnet-lite0", "config:efficientnet", " bert-base-uncased ", "~nouser/x"):
        assert resolve_model_spec(unchanged) == unchanged  # nothing resolved: as given (the cache folder's name)
    relative = load_config([], ["encoders.text.model=models/bert"])
    absolute = load_config([], [f"encoders.text.model={tmp_path / 'models' / 'bert'}"])
    assert preset_folder(relative, "text") == preset_folder(absolute, "text")
    assert resolve_specs(relative, ["text"])["text"].model == str(tmp_path / "models" / "bert")
    saved = to_dict(relative)  # what a run of an older crossan stored
    assert resolve_paths(relative).encoders.text.model == str(tmp_path / "models" / "bert")
    assert config_differences(saved, relative) == []  # its --resume from the same folder is the same run


def test_users_with_no_training_target_are_left_out_of_training(tmp_path: Path) -> None:
    """With data.min_interactions=3 a 3-item user has an all-padding window; a batch of only such users used
    to give a NaN loss (the mean over no position) and abort the run."""
    rng = np.random.default_rng(0)
    items = {f"i{k}": f"item {k}" for k in range(30)}
    users = {f"u{u}": [f"i{int(k)}" for k in rng.integers(0, 30, 8)] for u in range(40)}
    users["short"] = ["i1", "i2", "i3"]  # with batch size 1 this user is a batch of its own every epoch
    root = write_iisan(tmp_path / "d", users, items)
    cfg = load_config([], [f"data.path={root}", "data.min_interactions=3", "train.batch_size=1",
                           "train.epochs=2", "device=cpu", "method=id"])
    data = prepare(cfg.data)
    inputs, targets = training_rows(data)
    assert len(inputs) == 40 and data.num_users == 41 and bool(targets.ne(0).any(1).all())
    res = train(cfg, tmp_path / "run", data=data, progress=False)
    assert math.isfinite(res["test"]["NDCG@10"])


def test_an_adam_state_that_overflowed_stops_training_though_the_weights_are_finite(
        small_data: Path, tmp_path: Path, monkeypatch) -> None:
    """A gradient of 1e30 (``crossan.gate_temperature=1e-30`` made one) squares to an infinite ``exp_avg_sq``:
    the step divides by its square root, so the parameter stays finite and never moves again, and the guard,
    which read the parameters only, let the run finish with frozen gates. The optimiser's state is read too."""
    real_epoch, calls = trainer.train_epoch, []

    def overflow_in_epoch_2(step_model, opt, *args, **kwargs):
        loss = real_epoch(step_model, opt, *args, **kwargs)
        calls.append(loss)
        if len(calls) == 2:
            p = next(p for p in step_model.parameters() if p.requires_grad)
            opt.state[p]["exp_avg_sq"].view(-1)[0] = float("inf")
            assert bool(torch.isfinite(p).all())
        return loss

    monkeypatch.setattr(trainer, "train_epoch", overflow_in_epoch_2)
    cfg = load_config([], [f"data.path={small_data}", "train.epochs=3", "device=cpu", "method=id"])
    with pytest.raises(NonFiniteError, match=r"epoch 2: the optimiser's exp_avg_sq of \S+ of method='id' holds "
                                             r"non-finite values after training; nothing of this epoch was saved"):
        train(cfg, tmp_path / "run", progress=False)
    lin = torch.nn.Linear(3, 3)
    opt = torch.optim.Adam(lin.parameters())
    lin.weight.grad, lin.bias.grad = torch.full((3, 3), 1e30), torch.zeros(3)
    opt.step()  # the real overflow: (1 − β2)·1e60 is inf in float32, the update 0
    assert bool(torch.isfinite(lin.weight).all())
    assert trainer.first_non_finite(lin) is None
    assert trainer.first_non_finite(lin, opt) == "the optimiser's exp_avg_sq of weight"


def test_data_where_no_user_has_a_training_target_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """Every user of 3 interactions (``data.min_interactions=3``) keeps only its validation and test targets:
    training ran zero steps per epoch, logged "loss 0.0000", and wrote results of the untrained weights with a
    time per epoch of a millisecond, which a suite ranked as the cheapest run."""
    from conftest import write_iisan
    from crossan.data import DataError

    data = write_iisan(tmp_path / "d", {f"u{i}": [f"x{(i + k) % 9}" for k in range(3)] for i in range(20)},
                       {f"x{k}": f"title {k}" for k in range(9)})
    cfg = load_config([], [f"data.path={data}", "data.min_interactions=3", "train.epochs=2", "device=cpu",
                           "method=id"])
    with pytest.raises(DataError, match=r"d: none of its 20 users has a training target \(a user needs 4 "):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    cfg.train.epochs = 0  # testing the initial weights needs no training target
    assert train(cfg, tmp_path / "zero", progress=False)["best_epoch"] == 0


def test_non_finite_weights_are_never_checkpointed(small_data: Path, tmp_path: Path, monkeypatch) -> None:
    """An overflow on an epoch's last step leaves a finite loss but NaN weights: the epoch must not be saved."""
    real_epoch, calls = trainer.train_epoch, []

    def poison_in_epoch_2(step_model, *args, **kwargs):
        loss = real_epoch(step_model, *args, **kwargs)
        calls.append(loss)
        if len(calls) == 2:
            with torch.no_grad():
                next(p for p in step_model.parameters() if p.requires_grad).view(-1)[0] = float("nan")
        return loss

    monkeypatch.setattr(trainer, "train_epoch", poison_in_epoch_2)
    cfg = load_config([], [f"data.path={small_data}", "train.epochs=3", "device=cpu", "method=id"])
    with pytest.raises(NonFiniteError, match=r"epoch 2: parameter \S+ of method='id' holds non-finite values "
                                             r"after training; nothing of this epoch was saved\. epoch 1 stays "
                                             r"in this folder, but --resume would only repeat this epoch; train "
                                             r"again into a new folder with lower learning rates"):
        train(cfg, tmp_path / "run", progress=False)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["state"]["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())


def test_batch_smaller_than_the_world_is_refused(small_data: Path, tmp_path: Path, monkeypatch) -> None:
    """Under torchrun each rank takes every W-th example of a batch: with batch_size < W no step could run."""
    from crossan import distributed as dist

    monkeypatch.setattr(dist, "world_size", lambda: 4)
    cfg = load_config([], [f"data.path={small_data}", "train.batch_size=3", "device=cpu", "train.epochs=1"])
    with pytest.raises(ConfigError, match=r"train\.batch_size: 3 is smaller than the 4 processes"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
