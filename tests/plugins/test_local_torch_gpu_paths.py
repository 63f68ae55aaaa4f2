"""The GPU code paths of ``local_torch`` that run without a GPU: device choice, the memory
fraction contract, DDP planning and sharding, and the polars-to-tensor transform."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch

from mlx_plugins.ml_platforms import torch_mlp as tm
from mlx_plugins.ml_platforms.local_torch import (
    DDPJob,
    LocalTorchPlatform,
    _ForwardingHandler,
    torchrun_command,
)


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this process sees ``n`` CUDA GPUs (no CUDA call is made)."""

    def set_count(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return set_count


# -- memory fraction (the run launcher's contract) ---------------------------------------------
@pytest.mark.parametrize("raw", ["", "  "])
def test_memory_fraction_unset_is_none(raw):
    assert tm.memory_fraction_from_env({}) is None
    assert tm.memory_fraction_from_env({tm.MEMORY_FRACTION_ENV: raw}) is None


@pytest.mark.parametrize("raw, value", [("0.5", 0.5), ("1", 1.0), (" 0.25 ", 0.25)])
def test_memory_fraction_parses(raw, value):
    assert tm.memory_fraction_from_env({tm.MEMORY_FRACTION_ENV: raw}) == value


@pytest.mark.parametrize(
    "raw, message",
    [
        ("half", "is not a number"),
        ("0", r"must be in \(0, 1\]"),
        ("1.5", r"must be in \(0, 1\]"),
        ("-0.2", r"must be in \(0, 1\]"),
        ("nan", r"must be in \(0, 1\]"),
    ],
)
def test_memory_fraction_rejects(raw, message):
    with pytest.raises(ValueError, match=message) as err:
        tm.memory_fraction_from_env({tm.MEMORY_FRACTION_ENV: raw})
    assert tm.MEMORY_FRACTION_ENV in str(err.value)


def test_apply_memory_fraction_caps_the_cuda_device(monkeypatch):
    calls = []
    monkeypatch.setattr(
        torch.cuda, "set_per_process_memory_fraction", lambda f, d: calls.append((f, d))
    )
    monkeypatch.setenv(tm.MEMORY_FRACTION_ENV, "0.25")
    device = torch.device("cuda", 1)
    assert tm.apply_memory_fraction(device) == 0.25
    assert calls == [(0.25, device)]
    # CPU training ignores the variable; a bad value fails before anything is capped
    assert tm.apply_memory_fraction(torch.device("cpu")) is None
    monkeypatch.setenv(tm.MEMORY_FRACTION_ENV, "2")
    with pytest.raises(ValueError, match="must be in"):
        tm.apply_memory_fraction(device)
    assert len(calls) == 1


# -- device choice ---------------------------------------------------------------------------
def test_pick_device_auto_prefers_cuda(gpus):
    gpus(0)
    assert tm.pick_device("auto").type in ("cpu", "mps")
    gpus(2)
    assert tm.pick_device("auto") == torch.device("cuda")


def test_pick_device_explains_a_missing_gpu(gpus, monkeypatch):
    gpus(0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(RuntimeError, match=r"sees no CUDA GPU.*CUDA_VISIBLE_DEVICES="):
        tm.pick_device("cuda")
    gpus(2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    with pytest.raises(RuntimeError, match=r"sees 2 GPU\(s\).*CUDA_VISIBLE_DEVICES=4,5"):
        tm.pick_device("cuda:2")
    assert tm.pick_device("cuda:1") == torch.device("cuda", 1)


def test_device_strings_are_validated():
    with pytest.raises(ValueError, match="not one of"):
        tm.pick_device("gpu")
    with pytest.raises(Exception, match="device"):
        LocalTorchPlatform(device="gpu0")


def test_batch_size_follows_the_device():
    p = LocalTorchPlatform(batch_size=512, gpu_batch_size=8192)
    assert p.loop_config("cuda").batch_size == 8192
    assert p.loop_config("cpu").batch_size == 512
    assert (
        LocalTorchPlatform(batch_size=512, gpu_batch_size=None).loop_config("cuda").batch_size
        == 512
    )


# -- DDP planning ----------------------------------------------------------------------------
CONTEXT = SimpleNamespace()  # ddp_world_size only checks that a context was passed


def test_auto_uses_ddp_only_with_several_gpus_and_a_context(gpus):
    gpus(2)
    assert LocalTorchPlatform().ddp_world_size(CONTEXT) == 2
    assert LocalTorchPlatform().ddp_world_size(None) is None
    assert LocalTorchPlatform(nproc_per_node=1).ddp_world_size(CONTEXT) is None
    assert LocalTorchPlatform(nproc_per_node=8).ddp_world_size(CONTEXT) == 2
    assert LocalTorchPlatform(device="cuda:1").ddp_world_size(CONTEXT) is None
    assert LocalTorchPlatform(device="cpu").ddp_world_size(CONTEXT) is None
    assert LocalTorchPlatform(distributed="off").ddp_world_size(CONTEXT) is None
    gpus(1)
    assert LocalTorchPlatform().ddp_world_size(CONTEXT) is None


def test_auto_keeps_small_trainings_in_process(gpus):
    gpus(2)
    p = LocalTorchPlatform(ddp_min_samples=1_000)
    assert p.ddp_world_size(CONTEXT, samples=999) is None
    assert p.ddp_world_size(CONTEXT, samples=1_000) == 2
    always = LocalTorchPlatform(distributed="always", ddp_min_samples=1_000)
    assert always.ddp_world_size(CONTEXT, samples=10) == 2  # 'always' means always


def test_always_explains_what_it_needs(gpus):
    gpus(2)
    with pytest.raises(ValueError, match="needs the asset's context"):
        LocalTorchPlatform(distributed="always").ddp_world_size(None)
    with pytest.raises(ValueError, match=r"nproc_per_node=3 but this run sees 2 GPU"):
        LocalTorchPlatform(distributed="always", nproc_per_node=3).ddp_world_size(CONTEXT)
    assert LocalTorchPlatform(distributed="always").ddp_world_size(CONTEXT) == 2
    gpus(0)
    with pytest.raises(ValueError, match="needs nproc_per_node"):
        LocalTorchPlatform(distributed="always", device="cpu").ddp_world_size(CONTEXT)
    with pytest.raises(RuntimeError, match="no GPU is visible"):
        LocalTorchPlatform(distributed="always", device="cuda").ddp_world_size(CONTEXT)
    cpu = LocalTorchPlatform(distributed="always", device="cpu", nproc_per_node=3)
    assert cpu.ddp_world_size(CONTEXT) == 3


def test_train_without_context_refuses_always(gpus):
    gpus(0)
    frame = pl.DataFrame({"x": [0.0, 1.0], "y": [0, 1]})
    spec = tm_spec(("x",), (), "y")
    with pytest.raises(ValueError, match="needs the asset's context"):
        LocalTorchPlatform(distributed="always", nproc_per_node=2, device="cpu").train(
            frame, frame, spec
        )


def tm_spec(numeric, categorical, target):
    from mlx_plugins.ml_platforms.base import TrainingSpec

    return TrainingSpec(
        numeric_features=numeric,
        categorical_features=categorical,
        target=target,
        artifact_dir="/nonexistent",
    )


def test_torchrun_command_is_single_node():
    cmd = torchrun_command(4)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc-per-node=4" in cmd
    assert cmd[-1] == "mlx_plugins.ml_platforms.ddp_worker"


def test_ddp_job_rejects_unknown_fields():
    fields = dict(
        train_path="t",
        valid_path="v",
        target="y",
        artifact_dir="a",
        preprocessing={},
        loop={"hidden": [8], "epochs": 1, "batch_size": 8, "seed": 0},
        embedding_dim=4,
        device="cpu",
    )
    assert DDPJob.model_validate(fields).device == "cpu"
    with pytest.raises(Exception, match="extra"):
        DDPJob.model_validate({**fields, "surprise": 1})
    with pytest.raises(Exception, match="device"):
        DDPJob.model_validate({**fields, "device": "tpu"})


def test_forwarding_handler_survives_a_failing_callback():
    handled, seen, warnings = [], [], []

    class Inner:
        _context = SimpleNamespace(log=SimpleNamespace(warning=warnings.append))

        def handle_message(self, message):
            handled.append(message["method"])

        def report_pipes_framework_exception(self, *a):
            return "delegated"

    def on_message(payload):
        seen.append(payload["kind"])
        if payload["kind"] == "boom":
            raise RuntimeError("callback bug")

    h = _ForwardingHandler(Inner(), on_message)
    h.handle_message({"method": "log", "params": {"message": "hi"}})
    h.handle_message({"method": "report_custom_message", "params": {"payload": {"kind": "epoch"}}})
    h.handle_message({"method": "report_custom_message", "params": {"payload": {"kind": "boom"}}})
    assert handled == ["log", "report_custom_message", "report_custom_message"]
    assert seen == ["epoch", "boom"]
    assert len(warnings) == 1 and "callback bug" in warnings[0]
    assert h.report_pipes_framework_exception() == "delegated"


# -- sharding ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n, world", [(12, 2), (13, 2), (10, 3), (3, 4), (1, 2)])
def test_epoch_shards_are_equal_disjoint_and_cover_everything(n, world):
    shards = [
        tm.epoch_permutation(n, torch.Generator().manual_seed(7), torch.device("cpu"), (r, world))
        for r in range(world)
    ]
    sizes = {len(s) for s in shards}
    assert sizes == {math.ceil(n / world)}, "every rank must take the same number of steps"
    flat = torch.cat(shards).tolist()
    assert set(flat) == set(range(n))
    assert len(flat) - len(set(flat)) == (-n) % world  # only the padding repeats
    full = torch.randperm(n, generator=torch.Generator().manual_seed(7)).tolist()
    assert shards[0].tolist()[: len(full[::world])] == full[::world][: len(shards[0])]


def test_epoch_permutation_rejects_a_bad_rank():
    with pytest.raises(ValueError, match="outside a world"):
        tm.epoch_permutation(4, torch.Generator(), torch.device("cpu"), (2, 2))


def test_train_loop_with_a_shard_but_no_process_group_trains_on_its_shard():
    torch.manual_seed(0)
    n = 64
    x = torch.randn(n, 2)
    y = (x[:, 0] > 0).float()
    cat = torch.zeros((n, 0), dtype=torch.int64)
    model = tm.TabularMLP(2, [], [4])
    cfg = tm.LoopConfig(hidden=(4,), epochs=2, batch_size=8)
    hist = tm.train_loop(
        model, (x, cat, y), (x, cat, y), cfg, torch.device("cpu"), distributed_sampler=(1, 4)
    )
    assert [h.epoch for h in hist] == [1, 2]
    assert all(math.isfinite(h.train_loss) and math.isfinite(h.valid_loss) for h in hist)


# -- polars to tensors -----------------------------------------------------------------------
def naive_transform(pre: tm.Preprocessor, df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Row by row in Python: the meaning of Preprocessor.transform, spelled out."""
    num = np.zeros((df.height, len(pre.numeric)), np.float32)
    cat = np.zeros((df.height, len(pre.categorical)), np.int64)
    for i, row in enumerate(df.iter_rows(named=True)):
        for j, (c, m, s) in enumerate(zip(pre.numeric, pre.means, pre.stds, strict=True)):
            v = row[c]
            ok = v is not None and not (isinstance(v, float) and math.isnan(v))
            num[i, j] = (np.float32(v) - np.float32(m)) / np.float32(s) if ok else 0.0
        for j, c in enumerate(pre.categorical):
            v = row[c]
            vocab = pre.vocab[c]
            cat[i, j] = vocab.index(str(v)) + 1 if v is not None and str(v) in vocab else 0
    return num, cat


def frame(seed: int, n: int, carriers: list[str]) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.normal(10, 3, n)
    a[rng.random(n) < 0.1] = np.nan  # NaN and null both count as missing
    c = pl.Series(rng.normal(size=n)).scatter(np.flatnonzero(rng.random(n) < 0.2), None)
    carrier = pl.Series(rng.choice(carriers, n)).scatter(np.flatnonzero(rng.random(n) < 0.1), None)
    return pl.DataFrame(
        {
            "a": a,
            "b": pl.Series(rng.integers(0, 100, n)).cast(pl.Int32),
            "c": c,
            "carrier": carrier,
            "flag": rng.integers(0, 3, n),  # integers used as a category
            "empty": pl.Series([None] * n, dtype=pl.String),  # no vocabulary at all
        }
    )


def test_transform_matches_a_naive_reference_with_nulls_and_unseen_categories():
    train = frame(0, 300, ["AA", "B6", "DL"])
    test = frame(1, 200, ["AA", "DL", "ZZ", "UA"])  # ZZ, UA unseen
    pre = tm.Preprocessor.fit(train, ["a", "b", "c"], ["carrier", "flag", "empty"])
    assert pre.vocab["empty"] == []
    assert all(math.isfinite(m) for m in pre.means), "NaN and null must not poison the stats"
    for df in (train, test):
        num, cat = pre.transform(df)
        ref_num, ref_cat = naive_transform(pre, df)
        assert num.dtype == torch.float32 and cat.dtype == torch.int64
        assert num.shape == ref_num.shape and cat.shape == ref_cat.shape
        np.testing.assert_allclose(num.numpy(), ref_num, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(cat.numpy(), ref_cat)
        # the device copy is row-major with the same values
        dev = tm.to_device(num, torch.device("cpu"))
        assert dev.is_contiguous() and torch.equal(dev, num)
    unseen = test["carrier"].is_in(["ZZ", "UA"]).fill_null(False).to_numpy()
    assert unseen.any() and (pre.transform(test)[1].numpy()[unseen, 0] == 0).all()


def test_transform_of_an_empty_frame_and_of_no_columns():
    pre = tm.Preprocessor.fit(frame(0, 50, ["AA"]), ["a"], ["carrier"])
    num, cat = pre.transform(frame(0, 50, ["AA"]).head(0))
    assert num.shape == (0, 1) and cat.shape == (0, 1)
    bare = tm.Preprocessor.fit(frame(0, 5, ["AA"]), [], [])
    num, cat = bare.transform(frame(0, 5, ["AA"]))
    assert num.shape == (5, 0) and cat.shape == (5, 0)


def test_target_tensor_rejects_missing_labels():
    df = pl.DataFrame({"y": [1, None, 0]}, schema={"y": pl.Int8})
    with pytest.raises(ValueError, match="1 null"):
        tm.target_tensor(df, "y")
    out = tm.target_tensor(df.drop_nulls(), "y")
    assert out.dtype == torch.float32 and out.tolist() == [1.0, 0.0]
    out[0] = 5.0  # writable: not a view of polars memory


def test_dense_parameter_count_counts_linear_layers_only():
    model = tm.TabularMLP(3, [10], [4, 2], embedding_dim=5)
    # (3 + 5) * 4 + 4 + 4 * 2 + 2 + 2 * 1 + 1; the 11 x 5 embedding is not counted
    assert tm.dense_parameter_count(model) == 36 + 10 + 3


# -- the step machinery: flat gradients and graph replay (faked on the CPU) --------------------
def toy_data(n: int = 200, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    cat = torch.randint(0, 4, (n, 1), generator=g)
    y = ((x[:, 0] + (cat[:, 0] == 1).float()) > 0.5).float()
    return x, cat, y


def trained_weights(cfg: tm.LoopConfig) -> tuple[torch.Tensor, list[tm.EpochResult]]:
    torch.manual_seed(0)
    model = tm.TabularMLP(3, [4], [8])
    data = toy_data()
    hist = tm.train_loop(model, data, data, cfg, torch.device("cpu"))
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach(), hist


def test_flat_gradients_are_views_that_match_autograd():
    torch.manual_seed(0)
    model = tm.TabularMLP(3, [4], [8])
    x, cat, y = toy_data()
    reference = torch.autograd.grad(
        nn_loss(model, x, cat, y), list(model.parameters()), retain_graph=False
    )
    grads = tm.FlatGradients(model)
    grads.zero()
    nn_loss(model, x, cat, y).backward()
    start, end = grads.flat.data_ptr(), grads.flat.data_ptr() + grads.flat.numel() * 4
    for p, ref in zip(model.parameters(), reference, strict=True):
        assert start <= p.grad.data_ptr() < end, "backward replaced the gradient buffer"
        torch.testing.assert_close(p.grad, ref)
    grads.zero()
    assert all(float(p.grad.abs().sum()) == 0.0 for p in model.parameters())


def nn_loss(model, x, cat, y):
    return torch.nn.functional.binary_cross_entropy_with_logits(model(x, cat), y)


def test_graph_replay_trains_exactly_like_eager(monkeypatch):
    cfg = tm.LoopConfig(hidden=(8,), epochs=3, batch_size=32, cuda_graphs=True)
    eager, eager_hist = trained_weights(tm.LoopConfig(hidden=(8,), epochs=3, batch_size=32))
    replays = []

    def fake_capture(step, static_idx, batch):  # "replay" = run the step on the static buffer
        def replay():
            replays.append(static_idx.clone())
            step(static_idx, batch)

        return replay

    monkeypatch.setattr(tm, "_graphs_available", lambda device: True)
    monkeypatch.setattr(tm, "_capture_step", fake_capture)
    graphed, graphed_hist = trained_weights(cfg)
    torch.testing.assert_close(graphed, eager, rtol=0, atol=0)
    assert [h.train_loss for h in graphed_hist] == [h.train_loss for h in eager_hist]
    full = 200 // 32  # 6 full batches an epoch, the 8-row rest runs eagerly
    assert len(replays) == 3 * full - tm.WARMUP_STEPS
    assert all(len(r) == 32 for r in replays)


def test_failed_capture_warns_and_trains_eagerly(monkeypatch):
    def broken_capture(step, static_idx, batch):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(tm, "_graphs_available", lambda device: True)
    monkeypatch.setattr(tm, "_capture_step", broken_capture)
    eager, _ = trained_weights(tm.LoopConfig(hidden=(8,), epochs=2, batch_size=32))
    with pytest.warns(UserWarning, match="capture failed, training eagerly"):
        fallback, _ = trained_weights(
            tm.LoopConfig(hidden=(8,), epochs=2, batch_size=32, cuda_graphs=True)
        )
    torch.testing.assert_close(fallback, eager, rtol=0, atol=0)


def test_cuda_graphs_reach_the_loop_config():
    assert LocalTorchPlatform().loop_config("cuda").cuda_graphs is True
    assert LocalTorchPlatform(cuda_graphs=False).loop_config("cuda").cuda_graphs is False
    assert tm.LoopConfig().cuda_graphs is False  # the shared loop stays eager unless asked


def test_isolated_training_matches_in_process_and_reports_child_errors(tmp_path):
    """isolation='process' trains in a child: same model as in-process, errors come back whole."""
    from mlx_plugins.ml_platforms.base import TrainingSpec
    from mlx_plugins.ml_platforms.local_torch import LocalTorchPlatform
    from mlx_plugins.testing.contracts import _learnable_frame

    train, valid = _learnable_frame(1500, 1), _learnable_frame(300, 2)
    preds, epochs = {}, {}
    for mode in ("process", "none"):
        spec = TrainingSpec(
            numeric_features=("x", "noise"),
            categorical_features=("cat",),
            target="y",
            artifact_dir=str(tmp_path / mode),
        )
        plugin = LocalTorchPlatform(
            epochs=2, hidden=[8], isolation=mode, num_threads=1, device="cpu"
        )
        seen: list[int] = []
        with plugin.session():
            model = plugin.train(train, valid, spec, on_epoch=lambda e, s=seen: s.append(e.epoch))
            preds[mode] = plugin.predict_proba(model, valid).tolist()
        epochs[mode] = seen
    assert preds["process"] == preds["none"]
    assert epochs["process"] == epochs["none"] == [1, 2]  # epochs streamed from the child

    bad = LocalTorchPlatform(epochs=1, hidden=[8], isolation="process", device="cuda:7")
    spec = TrainingSpec(numeric_features=("x",), target="y", artifact_dir=str(tmp_path / "bad"))
    with (
        pytest.raises(RuntimeError, match="training failed in the child process") as info,
        bad.session(),
    ):
        bad.train(train, valid, spec)
    assert "cuda" in str(info.value).lower()
