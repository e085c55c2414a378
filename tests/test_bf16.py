"""The ``precision`` switch (crossan.precision): hardware detection, and bf16 against fp32 on tiny models.

bf16 keeps 8 significant bits (fp32: 24, the fp16 cache: 11), so states and scores computed under bf16
autocast differ from fp32 by about 2^-8 of their scale. The bounds below are 3-5 times the differences
measured on these models (noted beside each); each test also checks that bf16 actually ran (the outputs
are not the fp32 ones) and that what leaves the model (states, scores, losses, master weights, gradients,
optimiser moments) is float32.
"""

from __future__ import annotations

import os
import platform
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch

from crossan.cache import build_cache, open_cache
from crossan.cache.features import TensorFeatures
from crossan.config import Config, ConfigError, load_config
from crossan.precision import BF16_CPU_FLAGS, autocast, compute_dtype, cpu_flags, cpu_has_bf16
from crossan.recommender import Recommender
from crossan.towers.base import TowerContext, build_tower
from crossan.utils import cpu_description
from media_helpers import make_dataset

MODS = ["text", "image"]
N, K, DS, D = 40, 3, 32, 16


# --------------------------------------------------------------------------------------------- the switch
def test_cpu_flags_read_from_cpuinfo(tmp_path: Path):
    with_bf16 = tmp_path / "zen4"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n\n"
                         "processor\t: 1\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n")
    without = tmp_path / "old"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    assert cpu_flags(with_bf16) & BF16_CPU_FLAGS == {"avx512_bf16"}
    assert not cpu_flags(without) & BF16_CPU_FLAGS
    assert cpu_flags(tmp_path / "absent") == frozenset()
    assert cpu_has_bf16() == bool(cpu_flags() & BF16_CPU_FLAGS)  # this machine, from the real file


def test_cpu_description_names_model_and_widest_unit(tmp_path: Path):
    """Figures name the CPU: its model and its widest matrix/vector unit, read from cpuinfo."""
    sapphire = tmp_path / "spr"
    sapphire.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                        "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    zen1 = tmp_path / "zen1"
    zen1.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx avx2 fma\n"
                    "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16\n")
    cores = f"{len(os.sched_getaffinity(0))} cores"  # the CPUs this process may use (taskset, cgroups)
    assert cpu_description(sapphire) == f"Intel(R) Xeon(R) Platinum 8480+ ({platform.machine()}, {cores}, AMX-BF16)"
    assert cpu_description(zen1) == f"AMD EPYC ({platform.machine()}, {cores}, AVX2)"  # first processor's lines
    assert cpu_description(arm).endswith(f"{cores}, Arm BF16)")
    assert "vector units unknown" in cpu_description(tmp_path / "absent")


def test_compute_dtype():
    assert compute_dtype("fp32", "cpu") is None
    assert compute_dtype("bf16", "cpu") is torch.bfloat16
    assert compute_dtype("auto", "cpu") is (torch.bfloat16 if cpu_has_bf16() else None)
    assert compute_dtype("auto", "meta") is None  # no autocast for other device kinds
    with pytest.raises(ValueError, match="precision: bf16 runs on cpu and cuda devices, not meta"):
        compute_dtype("bf16", "meta")  # it ran fp32 in silence
    with pytest.raises(ValueError, match="precision"):
        compute_dtype("fp16", "cpu")


@pytest.mark.parametrize("capability, expected", [((7, 0), None), ((7, 5), None), ((8, 0), torch.bfloat16),
                                                  ((9, 0), torch.bfloat16)])
def test_auto_on_a_gpu_needs_bf16_units(monkeypatch: pytest.MonkeyPatch, capability, expected):
    """A V100 or T4 (capability 7.x) emulates bf16: ``auto`` stays fp32 there, although torch's
    ``is_bf16_supported()`` says yes; the capability asked is that of the device the run names."""
    asked: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: asked.append(d) or capability)
    assert compute_dtype("auto", "cuda:1") is expected
    assert asked == [torch.device("cuda:1")]
    assert compute_dtype("bf16", "cuda:1") is torch.bfloat16  # asked for: used whatever the GPU


def test_config_key():
    assert Config().precision == "auto"
    assert load_config([], ["precision=bf16"]).precision == "bf16"
    with pytest.raises(ConfigError, match="precision"):
        load_config([], ["precision=fp16"])


# --------------------------------------------------------------------------------------------- states
@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, np.ndarray]]:
    """The tiny preset's text and image caches of the same items built in fp32 and in bf16."""
    data = make_dataset(tmp_path_factory.mktemp("bf16_data"), n=8)
    out = {}
    for precision in ("fp32", "bf16"):
        cfg = Config()
        cfg.encoders.preset = "tiny"
        cfg.precision = precision
        cfg.cache.dir = str(tmp_path_factory.mktemp(f"cache_{precision}"))
        build_cache(cfg, data, MODS, progress=False)
        feats = open_cache(cfg, data, MODS)
        out[precision] = {m: feats.gather(torch.arange(len(data.item_ids)))[m][0].numpy() for m in MODS}
    return out


@pytest.mark.parametrize("modality", MODS)
def test_cache_states_bf16_close_to_fp32(caches, modality):
    """Measured: max error 0.04% (text), 0.4% (image) of the largest state; cosine >= 0.99999 per item and tap."""
    a, b = caches["fp32"][modality], caches["bf16"][modality]
    assert a.dtype == b.dtype and a.shape == b.shape
    assert not np.array_equal(a, b)  # bf16 did run
    scale = np.abs(a).max()
    assert np.abs(a - b).max() <= 0.02 * scale
    rows = np.abs(a).sum((1, 2)) > 0  # present items (absent rows are zeros in both)
    x, y = a[rows].reshape(-1, a.shape[2]), b[rows].reshape(-1, a.shape[2])
    cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    assert cos.min() > 0.9995


# --------------------------------------------------------------------------------------------- scores
def make_model(method: str, precision: str) -> Recommender:
    g = torch.Generator().manual_seed(0)
    states = {m: torch.randn(N + 1, K, DS, generator=g).half() for m in MODS}
    present = {m: torch.ones(N + 1, dtype=torch.bool) for m in MODS}
    for m in MODS:
        present[m][0] = False
    present["image"][3] = False
    cfg = Config(method=method, modalities=MODS, precision=precision)
    getattr(cfg, method).side_dim, getattr(cfg, method).bottleneck = DS, 8
    cfg.user.dim = D
    torch.manual_seed(0)
    ctx = TowerContext(cfg, N, [""] + [f"i{i}" for i in range(N)], extras={"features": TensorFeatures(states, present)})
    model = Recommender(build_tower(ctx), cfg, torch.arange(N + 1) % 7)
    with torch.no_grad():  # move every parameter off its initial value (zero biases, 0.5 gates)
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def windows(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, N + 1, (16, 11), generator=g)
    seq[:3, :4] = 0  # left padding
    inputs = seq[:, :-1]
    return inputs, torch.where(inputs > 0, seq[:, 1:], 0)  # as the data pipeline makes them


@pytest.mark.parametrize("method", ["crossan", "iisan"])
def test_training_forward_bf16_close_to_fp32(method):
    """What a training step computes under bf16 (item embeddings, user states, their scores, the loss) against
    fp32. Measured: largest score error 5.0% (CROSSAN) and 2.5% (IISAN) of the scores' standard deviation,
    loss within 0.21%, every user's top item still ranked first."""
    fp32, bf16 = make_model(method, "fp32"), make_model(method, "bf16")
    bf16.load_state_dict(fp32.state_dict())
    inputs, targets = windows()
    out = {}
    for name, model in (("fp32", fp32), ("bf16", bf16)):
        model.eval()  # no dropout: both compute the same function
        with torch.no_grad():
            with autocast(model.precision, "cpu"):  # as Recommender.loss does
                table = torch.cat([torch.zeros(1, D), model.tower(torch.arange(1, N + 1)).float()])
                users = model.user(table[inputs], inputs)[:, -1]
            loss = model.loss(inputs, targets)
        assert loss.dtype == torch.float32
        out[name] = (users.float() @ table.T, loss)
    (s32, l32), (s16, l16) = out["fp32"], out["bf16"]
    assert not torch.equal(s32, s16)  # bf16 did run
    spread = s32[:, 1:].std()
    assert (s16 - s32)[:, 1:].abs().max() <= 0.12 * spread
    assert abs(l16.item() - l32.item()) <= 0.01 * abs(l32.item())
    top = s32[:, 1:].argmax(1, keepdim=True)  # each user's top item: still in bf16's top 3
    rank16 = (s16[:, 1:] > s16[:, 1:].gather(1, top)).sum(1)
    assert rank16.max() <= 2


_LOW = (torch.bfloat16, torch.float16)


def _cuda_float32_ops() -> set:
    """Ops that CUDA's autocast runs in float32 and the CPU's does not all do (a subset of torch's lists, at the
    level of the Python functions crossan calls)."""
    import torch.nn.functional as F

    T = torch.Tensor
    return {torch.softmax, T.softmax, F.softmax, torch.log_softmax, T.log_softmax, F.log_softmax, F.layer_norm,
            torch.layer_norm, torch.logsumexp, T.logsumexp, torch.exp, T.exp, torch.log, T.log, torch.log1p, T.log1p,
            torch.pow, T.pow, T.__pow__, torch.cumsum, T.cumsum, torch.norm, T.norm, torch.linalg.vector_norm,
            F.mse_loss, F.nll_loss, F.binary_cross_entropy_with_logits, F.cross_entropy, F.softplus, torch.rsqrt,
            T.rsqrt, torch.reciprocal, T.reciprocal, F.cosine_similarity, torch.prod, T.prod}


class _CudaAutocastRules(torch.overrides.TorchFunctionMode):
    """CUDA's autocast rules on a CPU: under autocast, a sum of a bf16/fp16 tensor with no dtype given comes out
    float32, and the float32 ops (:func:`_cuda_float32_ops`) take their bf16/fp16 inputs as float32. CPU tests
    never see what those float32 results then meet; a GPU's first bf16 step does."""

    def __init__(self) -> None:
        super().__init__()
        self.float32_ops = _cuda_float32_ops()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if not torch.is_autocast_enabled("cpu"):
            return func(*args, **kwargs)
        low = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.dtype in _LOW]
        if func in (torch.sum, torch.Tensor.sum) and kwargs.get("dtype") is None and low and args[0] is low[0]:
            kwargs = {**kwargs, "dtype": torch.float32}
        elif func in self.float32_ops and low:
            def up(a):  # noqa: ANN001, ANN202
                return a.float() if isinstance(a, torch.Tensor) and a.dtype in _LOW else a

            args, kwargs = tuple(up(a) for a in args), {k: up(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


@pytest.mark.parametrize("method, options", [
    ("frozen", {}), ("iisan", {}), ("iisan", {"inter": "single"}), ("iisan", {"recipe": "official"}),
    ("crossan", {}), ("crossan", {"fusion": "concat"}), ("crossan", {"fusion": "mean"}),
    ("crossan", {"exchange": "inputs"}), ("crossan", {"exchange": "none"}), ("id", {})])
def test_a_training_step_under_cudas_autocast_rules(method: str, options: dict) -> None:
    """``iisan.inter=single``'s chain summed its modalities in float32 under CUDA's autocast, and the next depth's
    lerp then met bf16 inputs: "expected dtype float for 'end' but got dtype BFloat16" at the first bf16 step on
    a GPU, never on a CPU (whose autocast keeps sum in bf16). Every cached method's training step (loss and
    backward) runs here under CUDA's rules, three modalities, one item without an image."""
    mods = ["text", "image", "audio"]
    cfg = Config(method=method, modalities=mods, precision="bf16")
    if method in ("iisan", "crossan"):
        section = getattr(cfg, method)
        section.side_dim, section.bottleneck = DS, 8
        for key, value in options.items():
            setattr(section, key, value)
    cfg.user.dim = D
    g = torch.Generator().manual_seed(0)
    states = {m: torch.randn(N + 1, K, DS, generator=g).half() for m in mods}
    present = {m: torch.arange(N + 1) > 0 for m in mods}
    present["image"][4] = False
    ctx = TowerContext(cfg, N, [""] + [f"i{i}" for i in range(N)], extras={"features": TensorFeatures(states, present)})
    model = Recommender(build_tower(ctx), cfg, torch.arange(N + 1) % 7).train()
    inputs, targets = windows()
    rules = _CudaAutocastRules()
    with rules:
        loss = model.loss(inputs, targets)
        loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    # the rules act (where a step has a bf16 sum: MOMEF's and the mean fusion's)
    with rules, torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.ones(3, dtype=torch.bfloat16).sum().dtype == torch.float32


@pytest.mark.parametrize("method", ["crossan", "iisan"])
def test_evaluation_is_fp32_whatever_the_precision(method):
    """Evaluation and serving embed and score in float32 (Recommender's docstring): a bf16 run scores exactly
    as an fp32 one with the same weights."""
    fp32, bf16 = make_model(method, "fp32"), make_model(method, "bf16")
    bf16.load_state_dict(fp32.state_dict())
    inputs, _ = windows()
    scores = []
    for model in (fp32, bf16):
        model.eval()
        with torch.no_grad():
            table = model.tower.embed_all(batch_size=16)
            users = model.user_vectors(inputs, table)
        assert table.dtype == users.dtype == torch.float32
        scores.append(users @ table.T)
    assert torch.equal(scores[0], scores[1])


def test_bf16_training_keeps_fp32_master_state():
    """A bf16 step: weights, gradients and Adam moments stay fp32, and the step follows the fp32 one."""
    fp32, bf16 = make_model("crossan", "fp32"), make_model("crossan", "bf16")
    bf16.load_state_dict(fp32.state_dict())
    inputs, targets = windows()
    steps = {}
    for name, model in (("fp32", fp32), ("bf16", bf16)):
        model.eval()  # no dropout: both see the same function
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        model.loss(inputs, targets).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        opt.step()
        assert all(p.dtype == torch.float32 for p in model.parameters())
        # (a leaf's gradient always has the leaf's dtype, so fp32 parameters imply fp32 gradients; what bf16
        # changes in them is their values, checked against the fp32 step below)
        assert all(v.dtype == torch.float32 for s in opt.state.values() for v in s.values() if v.is_floating_point())
        steps[name] = (grads, {n: p.detach() - before[n] for n, p in model.named_parameters()})
    g32, g16 = steps["fp32"][0], steps["bf16"][0]
    assert g32.keys() == g16.keys()
    flat32 = torch.cat([g.flatten() for g in g32.values()])
    flat16 = torch.cat([g16[n].flatten() for n in g32])
    assert not torch.equal(flat32, flat16)
    cos = torch.nn.functional.cosine_similarity(flat32, flat16, dim=0)
    assert cos > 0.999  # measured 0.99984


def test_live_standardisation_statistics_are_those_of_the_states_read(tmp_path: Path):
    """The third audit: with live encoders (no cache) the statistics were gathered outside the run's autocast,
    from fp32 states, while every forward reads bf16 ones under precision=bf16, so the standardised inputs
    were off centre (median 0.014 std, up to 0.24 on real MiniLM). Gathered under the same autocast, the
    inputs the tower reads have mean 0 over the items."""
    from crossan.cache.features import LiveFeatures
    from crossan.encoders import build_encoder, resolve_specs
    from crossan.towers.frozen import FrozenTower

    data = make_dataset(tmp_path / "media", n=12, words=6)
    cfg = load_config([], ["encoders.preset=tiny", "modalities=[text]"])
    live = LiveFeatures({"text": build_encoder("text", resolve_specs(cfg, ["text"])["text"])}, data.catalogue,
                        data.item_ids)
    tower = FrozenTower(live, ["text"], data.num_items, 8)
    tower.precision = "bf16"
    tower.standardize_inputs(min_rel_std=0.0)
    items = torch.arange(1, data.num_items + 1)
    with autocast("bf16", torch.device("cpu")):
        states, present = live.gather(items)["text"]
    assert states.dtype == torch.float32 and present.sum() >= 8
    z = (states[present].double() - tower.input_mean_text.double()) * tower.input_inv_std_text.double()
    kept = tower.input_inv_std_text > 0
    assert kept[1:].all() and not kept[0].any()  # tap 0: the embedding layer's CLS, the same for every item
    assert z.mean(0)[kept].abs().max().item() < 1e-3, z.mean(0)[kept].abs().max().item()


def test_standardisation_statistics_use_the_runs_device_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA audit: the statistics pass took its autocast from the CPU index tensor, so live encoders on a
    GPU computed them in fp32 while every forward (CUDA autocast) read bf16 states. The run's device, which
    the tower context passes on, now chooses it (recorded here: a CUDA autocast cannot run on this CPU)."""
    import crossan.towers.content as content
    from crossan.towers.frozen import FrozenTower

    class Feats:
        modalities, dims, num_taps = ["text"], {"text": 4}, 2

        def gather(self, items: torch.Tensor):
            g = torch.Generator().manual_seed(int(items[0]))
            return {"text": (torch.randn(len(items), 2, 4, generator=g), torch.ones(len(items), dtype=torch.bool))}

    seen: list[str] = []
    monkeypatch.setattr(content, "autocast", lambda precision, device: seen.append(str(device)) or nullcontext())
    tower = FrozenTower(Feats(), ["text"], 30, 8)
    tower.precision = "bf16"
    tower.standardize_inputs(batch_size=16, min_rel_std=0.0, device="cuda:0")
    assert seen == ["cuda:0", "cuda:0"]
    cfg = load_config([], ["method=frozen", "modalities=[text]", "precision=bf16"])
    ctx = TowerContext(cfg, 30, ["", *(f"i{k}" for k in range(30))], None, Feats(), "cuda:1")
    seen.clear()
    content.finish(FrozenTower(Feats(), ["text"], 30, 8), ctx)
    assert seen and set(seen) == {"cuda:1"}


def test_routing_and_exchange_weights_are_float32_under_bf16():
    """A precision review (2026-12-02): under CPU bf16 autocast MOMEF's router softmax stayed bf16 (rows summing
    to 1 ± 0.006, top-k choices changed by rounding and ties, the balance loss rounded), and CROSSAN's exchange
    denominator ran as a bf16 matmul. Routing now runs in float32: under autocast it gives exactly the weights
    of a float32 forward on the same inputs, and the exchange coefficients are those of float32."""
    from crossan.towers.crossan import Exchange
    from crossan.towers.momef import MOMEF

    torch.manual_seed(0)
    M, d, U = 4, 16, 512
    e = torch.randn(U, M, d).bfloat16()  # what the heads give under autocast
    present = torch.rand(U, M) > 0.2
    for top_k in (0, 2):
        mo = MOMEF([f"m{i}" for i in range(M)], d, top_k=top_k, load_balance_weight=0.01)
        p32_all, p32 = mo._route(e.float(), present)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pb_all, pb = mo._route(e, present)
            mo._record(pb_all, pb, present)
        assert pb_all.dtype == pb.dtype == torch.float32 and mo.aux_loss().dtype == torch.float32
        assert torch.equal(pb_all, p32_all) and torch.equal(pb, p32)
    mo3 = MOMEF(["a", "b", "c"], d)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # nothing present: exactly uniform
        _, p = mo3._route(torch.randn(2, 3, d).bfloat16(), torch.zeros(2, 3, dtype=torch.bool))
    assert torch.equal(p, torch.full((2, 3), 1 / 3))
    ex = Exchange(2, M)
    with torch.no_grad():
        ex.logits.normal_()
    a = (torch.rand(M, U, 1) > 0.3).float()
    want = ex.coefficients(a, 1, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ex.coefficients(a.bfloat16(), 1, torch.bfloat16)
    torch.testing.assert_close(got[2].float(), want[2].bfloat16().float(), rtol=0, atol=0)


def test_a_loaded_run_computes_at_the_dtype_it_trained_at(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A precision review (2026-12-03): serving and ``crossan evaluate`` resolved ``precision=auto`` again on the
    machine that loads the run, so a run with live frozen encoders (``cached=false``) trained in float32 and
    loaded on a CPU with bf16 units computed its item table from bf16 states (2% of its largest entry off
    here). A loaded run now runs at the dtype results.json records, where that dtype can run."""
    import crossan.precision as precision
    from crossan.data.synth import generate
    from crossan.serve import load_recommender
    from crossan.trainer import train

    synth = generate(tmp_path / "tiny", size="tiny", progress=False)
    cfg = load_config([], [f"data.path={synth}", "method=frozen", "modalities=[text]", "encoders.preset=tiny",
                           "cached=false", "train.epochs=1", "train.batch_size=64", "user.dim=32", "device=cpu",
                           "precision=auto"])
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)  # trained where auto is float32
    train(cfg, tmp_path / "run", progress=False)
    here = load_recommender(tmp_path / "run", device="cpu")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)  # loaded where auto is bf16
    there = load_recommender(tmp_path / "run", device="cpu")
    assert torch.equal(there.item_table, here.item_table)
    assert there.cfg.precision == "fp32"

    from crossan.runs import trained_precision

    cpu, mps = torch.device("cpu"), torch.device("mps")
    assert trained_precision("auto", "bfloat16", cpu) == "auto"  # auto is bf16 here now: kept
    assert trained_precision("bf16", "bfloat16", cpu) == "bf16"
    assert trained_precision("fp32", "bfloat16", cpu) == "bf16"
    assert trained_precision("auto", None, cpu) == "auto"  # not recorded (older run): as configured
    assert trained_precision("auto", "bfloat16", mps) == "auto"  # bf16 cannot run on an Apple GPU
