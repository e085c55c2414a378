"""A missing C++ compiler named before ``train.compile`` fails inside torch; a discarded partial cache build says
what it discards."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from crossan.cache import build_cache
from crossan.config import Config
from media_helpers import make_dataset


def test_compiling_without_a_cpp_compiler_names_the_key(tmp_path: Path) -> None:
    """Without a C++ compiler inductor failed at the first compiled step, deep inside torch, with a long
    traceback; the run now stops at once naming ``train.compile``."""
    from torch._inductor import config as inductor_config

    from crossan.errors import ConfigError
    from crossan.towers.base import TowerContext
    from crossan.towers.content import finish
    from crossan.utils import require_cpp_compiler

    require_cpp_compiler("train.compile")  # this machine has one
    cfg = Config()
    cfg.train.compile = True
    with (inductor_config.patch({"cpp.cxx": (None, str(tmp_path / "no-such-g++"))}),
          pytest.raises(ConfigError, match=r"train.compile=true .* C\+\+ compiler .*no-such-g\+\+.* "
                                           r"train.compile=false")):
        finish(SimpleNamespace(), TowerContext(config=cfg, num_items=0, item_ids=[""]))  # type: ignore[arg-type]
    cfg.train.compile = False  # off: no compiler needed
    cfg.cache.standardize = False  # (finish() would standardise the stand-in tower's inputs)
    with inductor_config.patch({"cpp.cxx": (None, str(tmp_path / "no-such-g++"))}):
        finish(SimpleNamespace(), TowerContext(config=cfg, num_items=0, item_ids=[""]))  # type: ignore[arg-type]


def test_a_discarded_partial_build_says_how_far_it_had_come(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A partial build started under other settings is discarded (no cache mixes rows computed two ways); the
    message now says how many batches that throws away, so that the user can rerun under the old settings."""
    data = make_dataset(tmp_path / "data", n=10)

    class Stop(Exception):
        pass

    def stop_after_first(modality: str, batch: int) -> None:
        raise Stop

    cfg = Config()
    cfg.encoders.preset = "tiny"
    cfg.precision = "fp32"
    cfg.cache.dir = str(tmp_path / "cache")
    cfg.encoders.batch_size = 4
    with pytest.raises(Stop):
        build_cache(cfg, data, ["text"], progress=False, on_batch=stop_after_first)
    capsys.readouterr()
    cfg.encoders.batch_size = 2
    build_cache(cfg, data, ["text"], progress=False)
    out = capsys.readouterr().out
    assert "started under other settings (encoders.batch_size 4 then, 2 now;" in out and "1/3 batches done)" in out


@pytest.mark.parametrize("epochs,patience,eval_every,expected", [
    (100, 10, 1, 11 * 1563),  # early stopping can end it after patience + 1 validations
    (5, 10, 1, 5 * 1563),  # fewer epochs than that
    (100, 10, 3, 33 * 1563),  # one validation every 3 epochs
    (0, 10, 1, 0),  # train.epochs=0 trains nothing
])
def test_fewest_training_steps(epochs: int, patience: int, eval_every: int, expected: int) -> None:
    from crossan.config import TrainConfig
    from crossan.towers.content import fewest_training_steps

    train = TrainConfig(epochs=epochs, patience=patience, eval_every=eval_every)
    assert fewest_training_steps(train, 1563) == expected


def test_compile_auto_decides_from_method_device_length_and_compiler(tmp_path: Path) -> None:
    """``train.compile=auto``: on only for a side network (IISAN, CROSSAN) trained on a CPU for at least
    COMPILE_AUTO_MIN_STEPS steps with a C++ compiler at hand; each refusal says why."""
    from torch import nn
    from torch._inductor import config as inductor_config

    from crossan.towers.content import COMPILE_AUTO_MIN_STEPS, auto_compile

    side, plain = SimpleNamespace(compilable=True), nn.Linear(2, 2)
    assert auto_compile(side, "cpu", COMPILE_AUTO_MIN_STEPS) == (True, "at least 10,000 training steps on a CPU")
    on, why = auto_compile(side, "cpu", COMPILE_AUTO_MIN_STEPS - 1)
    assert not on and "as few as 9,999 steps, under 10,000" in why
    assert auto_compile(side, "cuda", 10**6) == (False, "training on cuda (compiled on CPUs only)")
    assert auto_compile(plain, "cpu", 10**6) == (False, "this method has no compiled side network")
    with inductor_config.patch({"cpp.cxx": (None, str(tmp_path / "no-such-g++"))}):
        on, why = auto_compile(side, "cpu", 10**6)
    assert not on and "no C++ compiler" in why and "no-such-g++" in why
