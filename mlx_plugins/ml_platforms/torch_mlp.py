"""The tabular MLP and its training loop, in plain torch.

Shared by the ``local_torch`` plugin, the DDP worker and the benchmarks' bare baseline, so the
baseline measures exactly the same model and loop without the platform around it.
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import torch
from torch import nn

from mlx_plugins.ml_platforms.base import (
    Task,
    TrainingDataError,
    TrainingDivergedError,
    TrainingSpec,
    check_labels,
)

MEMORY_FRACTION_ENV = "MLX_GPU_MEMORY_FRACTION"
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def n_outputs(spec: TrainingSpec) -> int:
    """Width of the output layer for ``spec.task``: ``k`` logits for multiclass, else one
    (a binary logit, or the standardised regression value)."""
    return len(spec.classes) if spec.task == "multiclass" else 1


class TabularMLP(nn.Module):
    """Numeric inputs plus one embedding per categorical column, then an MLP to ``n_outputs``
    values: shape ``(rows,)`` for one output (a binary logit or a standardised regression
    value), ``(rows, n_outputs)`` for more (multiclass logits)."""

    def __init__(
        self,
        n_numeric: int,
        cardinalities: Sequence[int],
        hidden: Sequence[int],
        embedding_dim: int = 8,
        dropout: float = 0.0,
        n_outputs: int = 1,
    ) -> None:
        super().__init__()
        if n_outputs < 1:
            raise ValueError(f"n_outputs must be at least 1, not {n_outputs}")
        self.n_outputs = n_outputs
        self.embeddings = nn.ModuleList(
            nn.Embedding(card + 1, min(embedding_dim, card + 1)) for card in cardinalities
        )
        width = n_numeric + sum(e.embedding_dim for e in self.embeddings)
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, n_outputs))
        self.mlp = nn.Sequential(*layers)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        parts = [numeric]
        parts += [emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)]
        out = self.mlp(torch.cat(parts, dim=1))
        return out.squeeze(1) if self.n_outputs == 1 else out


def dense_parameter_count(model: nn.Module) -> int:
    """Parameters of the Linear layers: what the 6 * params * samples FLOP estimate counts."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return sum(p.numel() for m in linears for p in m.parameters())


def _column_block(frame: pl.DataFrame, dtype: torch.dtype, pin_memory: bool) -> torch.Tensor:
    """A ``(rows, columns)`` tensor over one column-major buffer: exactly one copy out of polars.

    Each polars column is a contiguous Arrow buffer, so a column-major block is a memcpy per
    column (``to_numpy(order="fortran")``), where a row-major one would interleave. The tensor
    is the transposed view of that buffer (strides ``(1, rows)``); ``.contiguous()`` on the GPU
    makes it row-major at device bandwidth. With ``pin_memory`` the columns are copied straight
    into page-locked memory, so the host-to-device copy can be asynchronous.
    """
    rows, cols = frame.height, frame.width
    if pin_memory:
        buf = torch.empty((cols, rows), dtype=dtype, pin_memory=True)
        view = buf.numpy()
        for j, series in enumerate(frame.iter_columns()):
            view[j] = series.to_numpy()  # zero-copy read of a null-free column
        return buf.T
    arr = frame.to_numpy(order="fortran", writable=True)  # copies only a lone read-only column
    out = torch.from_numpy(arr)
    if out.dtype != dtype:  # pragma: no cover - the expressions fix the dtype
        raise TypeError(f"expected {dtype}, polars produced {out.dtype}")
    return out


@dataclass
class Preprocessor:
    """Standardisation and category vocabularies, fitted on the training frame only.

    For regression also the target's mean and standard deviation (target units, from the
    training frame): the network learns ``(y - target_mean) / target_std`` and predictions are
    mapped back. None for classification (and then left out of :meth:`to_dict`, so a binary
    model's record is what it was before tasks existed).
    """

    numeric: list[str]
    categorical: list[str]
    means: list[float] = field(default_factory=list)
    stds: list[float] = field(default_factory=list)
    vocab: dict[str, list[str]] = field(default_factory=dict)
    target_mean: float | None = None
    target_std: float | None = None

    @classmethod
    def fit(
        cls, df: pl.DataFrame, numeric: Sequence[str], categorical: Sequence[str]
    ) -> Preprocessor:
        """Means and standard deviations of the ``numeric`` columns and sorted vocabularies
        of the ``categorical`` ones, from ``df``.

        Null, NaN and +/-inf are missing values: they are left out of the statistics (and
        become the mean, 0 after scaling, in :meth:`transform`). Raises
        :class:`TrainingDataError` for a numeric column whose dtype is not a number or
        boolean, or whose finite values are too large to standardise (mean or std overflow).
        """
        check_numeric_features(df, numeric)

        def clean(c: str) -> pl.Expr:  # NaN and inf are missing, like null: no poisoned stats
            x = pl.col(c).cast(pl.Float64)
            return pl.when(x.is_finite()).then(x)

        stats = (
            df.select(
                *[clean(c).mean().alias(f"m_{c}") for c in numeric],
                *[clean(c).std().alias(f"s_{c}") for c in numeric],
            ).row(0)
            if numeric
            else ()
        )
        k = len(numeric)
        means = [float(x) if x is not None else 0.0 for x in stats[:k]]
        stds = [float(x) if x and x > 0 else 1.0 for x in stats[k:]]
        for c, m, s in zip(numeric, means, stds, strict=True):
            if not (math.isfinite(m) and math.isfinite(s)):
                raise TrainingDataError(
                    f"numeric feature {c!r} cannot be standardised: its finite values are too "
                    f"large (mean {m}, std {s} overflow float64). fix: rescale the column "
                    "(e.g. a log or a unit change) in the feature asset"
                )
        vocab = {
            c: sorted(v for v in df.get_column(c).drop_nulls().unique().cast(pl.String).to_list())
            for c in categorical
        }
        return cls(list(numeric), list(categorical), means, stds, vocab)

    def fit_target(self, df: pl.DataFrame, target: str) -> Preprocessor:
        """Record the mean and standard deviation of the regression target ``target`` of
        ``df`` (the training frame; a constant or single-row target gets std 1.0)."""
        col = df.get_column(target).cast(pl.Float64)
        mean, std = col.mean(), col.std()
        self.target_mean = float(mean) if isinstance(mean, float) else 0.0
        self.target_std = float(std) if isinstance(std, float) and std > 0 else 1.0
        return self

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "numeric": self.numeric,
            "categorical": self.categorical,
            "means": self.means,
            "stds": self.stds,
            "vocab": self.vocab,
        }
        if self.target_mean is not None:
            out["target_mean"] = self.target_mean
            out["target_std"] = self.target_std
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Preprocessor:
        return cls(**d)  # type: ignore[arg-type]

    @property
    def cardinalities(self) -> list[int]:
        return [len(self.vocab[c]) for c in self.categorical]

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def _category_codes(self, c: str) -> pl.Expr:
        # Casting to an Enum of the vocabulary is a hash lookup per row; unknown values become
        # null (non-strict), so index 0 means null or unseen. The vocabulary is sorted, so the
        # Enum's physical index + 1 is the position in ``vocab[c]`` + 1.
        if not self.vocab[c]:
            return pl.repeat(0, pl.len(), dtype=pl.Int64).alias(c)
        return (
            (
                pl.col(c)
                .cast(pl.String)
                .cast(pl.Enum(self.vocab[c]), strict=False)
                .to_physical()
                .cast(pl.Int64)
                + 1
            )
            .fill_null(0)
            .alias(c)
        )

    def transform(
        self, df: pl.DataFrame, *, pin_memory: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Polars to ``(numeric float32, categorical int64)`` tensors, one bulk copy each.

        Unknown categories and nulls map to index 0; numeric nulls, NaN, +/-inf (and values
        too large for float32) to the mean (0 after scaling). The tensors are column-major
        views (see ``_column_block``); values equal the row-major result. ``pin_memory``
        (CUDA only) puts them in page-locked host memory.
        """
        pin = pin_memory and torch.cuda.is_available()
        n = df.height
        num = (
            _column_block(
                df.select(
                    _finite_or_zero((pl.col(c).cast(pl.Float32) - m) / s).alias(c)
                    for c, m, s in zip(self.numeric, self.means, self.stds, strict=True)
                ),
                torch.float32,
                pin,
            )
            if self.numeric
            else torch.zeros((n, 0), dtype=torch.float32)
        )
        cat = (
            _column_block(
                df.select(self._category_codes(c) for c in self.categorical), torch.int64, pin
            )
            if self.categorical
            else torch.zeros((n, 0), dtype=torch.int64)
        )
        return num, cat


def _finite_or_zero(x: pl.Expr) -> pl.Expr:
    return pl.when(x.is_finite()).then(x).otherwise(0.0)


def _numeric_dtype(dtype: pl.DataType) -> bool:
    return dtype.is_numeric() or dtype in (pl.Boolean, pl.Null)


def check_numeric_features(df: pl.DataFrame, numeric: Sequence[str]) -> None:
    """Raise :class:`TrainingDataError` naming every numeric feature whose dtype is not a
    number or boolean (a string or date column listed as numeric)."""
    bad = {c: str(df.schema[c]) for c in numeric if not _numeric_dtype(df.schema[c])}
    if bad:
        raise TrainingDataError(
            f"numeric features with a non-numeric dtype: {bad}. fix: cast them to a number in "
            "the feature asset, or list them as categorical features"
        )


def non_finite_counts(df: pl.DataFrame, numeric: Sequence[str]) -> dict[str, int]:
    """``{column: rows}`` of the numeric features holding NaN or +/-inf (float columns only;
    columns without any are left out). Training treats these values as missing."""
    floats = [c for c in numeric if df.schema[c].is_float()]
    if not floats or df.height == 0:
        return {}
    row = df.select(
        (~pl.col(c).is_finite()).sum().alias(c)  # nulls are not counted (is_finite is null)
        for c in floats
    ).row(0)
    return {c: int(n) for c, n in zip(floats, row, strict=True) if n}


def check_target(
    df: pl.DataFrame,
    target: str,
    frame: str = "training",
    *,
    task: Task = "binary",
    classes: Sequence[str] = (),
) -> None:
    """Raise :class:`TrainingDataError` unless every label of ``target`` in ``df`` fits
    ``task`` (binary: 0 or 1, numbers or booleans; multiclass: an integer class index in
    ``0..len(classes)-1``; regression: a finite number): names the frame, the column, the
    count of nulls, NaN, +/-inf or out-of-range labels, examples, and the fix
    (:func:`mlx_plugins.ml_platforms.base.check_labels`)."""
    check_labels(df, target, frame, task=task, classes=classes)


def pick_device(requested: str = "auto") -> torch.device:
    """The torch device for ``requested``, with a clear error when it cannot be used here."""
    if not DEVICE_PATTERN.match(requested):
        raise ValueError(
            f"device {requested!r} is not one of 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'"
        )
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {requested!r} was asked for but torch sees no CUDA GPU "
                f"(torch {torch.__version__}, CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); use device='auto' or 'cpu'"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise RuntimeError(
                f"device {requested!r} does not exist: this process sees {count} GPU(s) "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})"
            )
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise RuntimeError("device 'mps' was asked for but torch sees no Apple GPU")
    return device


def memory_fraction_from_env(environ: Mapping[str, str] | None = None) -> float | None:
    """``MLX_GPU_MEMORY_FRACTION`` as a float in (0, 1], None when unset or empty."""
    raw = (os.environ if environ is None else environ).get(MEMORY_FRACTION_ENV, "").strip()
    if not raw:
        return None
    try:
        fraction = float(raw)
    except ValueError:
        raise ValueError(
            f"{MEMORY_FRACTION_ENV}={raw!r} is not a number; the run launcher sets it to a "
            "fraction in (0, 1] of the GPU's memory"
        ) from None
    if not 0 < fraction <= 1:  # also rejects nan
        raise ValueError(f"{MEMORY_FRACTION_ENV}={raw!r} must be in (0, 1]")
    return fraction


def apply_memory_fraction(device: torch.device) -> float | None:
    """Cap this process's share of GPU memory, as the run launcher asked (seed: memory limit)."""
    if device.type != "cuda":
        return None
    fraction = memory_fraction_from_env()
    if fraction is None:
        return None
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    valid_loss: float
    seconds: float
    samples_per_second: float


@dataclass
class LoopConfig:
    hidden: tuple[int, ...] = (64, 32)
    epochs: int = 6
    batch_size: int = 2048
    learning_rate: float = 3e-3
    weight_decay: float = 1e-5
    seed: int = 0
    bf16: bool = True
    compile: bool = False
    cuda_graphs: bool = False


def bf16_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Row-major copy of ``t`` on ``device``.

    On CUDA the host buffer goes over as it lies (asynchronously when it is pinned: no extra
    host copy is made to pin it) and the transpose to row-major runs on the GPU.
    """
    if device.type == "cuda":
        return t.to(device, non_blocking=t.is_pinned()).contiguous()
    return t.to(device).contiguous()


def make_optimizer(
    model: nn.Module, cfg: LoopConfig, device: torch.device, *, capturable: bool = False
) -> torch.optim.AdamW:
    """AdamW; the fused single-kernel step on CUDA (no host sync, fewer launches)."""
    fused = device.type == "cuda"
    return torch.optim.AdamW(
        model.parameters(),
        lr=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        fused=fused,
        capturable=capturable and fused,
    )


def epoch_permutation(
    n: int,
    gen: torch.Generator,
    device: torch.device,
    shard: tuple[int, int] | None = None,
) -> torch.Tensor:
    """A seeded permutation of ``range(n)``, drawn on ``device``; ``shard=(rank, world)`` keeps
    every world-th entry after padding to a multiple of ``world`` (wrapping around), so every
    rank gets the same number of rows: DDP ranks then take the same number of steps."""
    perm = torch.randperm(n, generator=gen, device=device)
    if shard is None:
        return perm
    rank, world = shard
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside a world of {world}")
    pad = (-n) % world
    if pad:
        perm = torch.cat([perm, perm[torch.arange(pad, device=device) % n]])
    return perm[rank::world]


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class FlatGradients:
    """Every gradient as a view of one buffer: zeroed by one kernel, averaged over the data
    parallel ranks by one all-reduce, and at fixed addresses (what a CUDA graph needs)."""

    def __init__(self, model: nn.Module, world: int = 1) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        self.flat = torch.zeros(
            sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device
        )
        offset = 0
        for p in params:
            p.grad = self.flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        self.world = world

    def zero(self) -> None:
        self.flat.zero_()

    def all_reduce(self) -> None:
        if self.world > 1:
            torch.distributed.all_reduce(self.flat)
            self.flat.div_(self.world)


def broadcast_parameters(model: nn.Module, src: int = 0) -> None:
    """Start every rank from rank ``src``'s weights."""
    for p in model.parameters():
        torch.distributed.broadcast(p.data, src)


def replica_divergence(model: nn.Module) -> float:
    """Largest absolute weight difference between this rank and any other (0: in sync)."""
    vec = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    gathered = [torch.empty_like(vec) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(gathered, vec)
    return max(float((g - vec).abs().max()) for g in gathered)


WARMUP_STEPS = 3
"""Eager steps before a CUDA graph is captured (optimizer state, cuBLAS and NCCL set-up)."""

Step = Callable[[torch.Tensor, int], None]


def _capture_step(step: Step, static_idx: torch.Tensor, batch: int) -> Callable[[], None]:
    """Record one full-batch step as a CUDA graph; the returned callable replays it."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(static_idx, batch)
    return graph.replay


def _graphs_available(device: torch.device) -> bool:
    return device.type == "cuda"


class GraphedStep:
    """A full-batch training step replayed from a CUDA graph: per step the host copies the
    batch's indices into a static buffer and launches the graph, two calls instead of ~100."""

    def __init__(self, step: Step, batch: int, device: torch.device) -> None:
        self.static_idx = torch.zeros(batch, dtype=torch.long, device=device)
        self.replay = _capture_step(step, self.static_idx, batch)

    def __call__(self, idx: torch.Tensor) -> None:
        self.static_idx.copy_(idx)
        self.replay()


def _try_graph(step: Step, batch: int, device: torch.device, ddp: bool) -> GraphedStep | None:
    """Capture the step, or None (train eagerly) if any rank could not."""
    graphed: GraphedStep | None = None
    try:
        graphed = GraphedStep(step, batch, device)
    except RuntimeError as exc:
        warnings.warn(f"CUDA graph capture failed, training eagerly: {exc}", stacklevel=2)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    if ddp:  # every rank must take the same path, or the collectives would not match
        ok = torch.tensor([1.0 if graphed is not None else 0.0], device=device)
        torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
        if ok.item() < 1.0:
            return None
    return graphed


def _warm_up(step: Step, perm: torch.Tensor, batch: int, device: torch.device) -> int:
    """The epoch's first full batches, eagerly, on a side stream (as capture requires)."""
    if device.type != "cuda":
        for k in range(WARMUP_STEPS):
            step(perm[k * batch : (k + 1) * batch], batch)
        return WARMUP_STEPS
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for k in range(WARMUP_STEPS):
            step(perm[k * batch : (k + 1) * batch], batch)
    torch.cuda.current_stream(device).wait_stream(side)
    return WARMUP_STEPS


def loss_function(task: Task = "binary", reduction: str = "mean") -> nn.Module:
    """The training loss of ``task``: BCE with logits (binary, in nats), cross-entropy over the
    classes (multiclass, in nats; targets are int64 class indices) or the mean squared error
    (regression, on the standardised target)."""
    if task == "binary":
        return nn.BCEWithLogitsLoss(reduction=reduction)
    if task == "multiclass":
        return nn.CrossEntropyLoss(reduction=reduction)
    if task == "regression":
        return nn.MSELoss(reduction=reduction)
    raise ValueError(f"unknown task {task!r}; one of 'binary', 'multiclass', 'regression'")


def train_loop(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    valid: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    cfg: LoopConfig,
    device: torch.device,
    on_epoch: Callable[[EpochResult], None] | None = None,
    *,
    distributed_sampler: tuple[int, int] | None = None,
    task: Task = "binary",
) -> list[EpochResult]:
    """Train with AdamW and the loss of ``task`` (:func:`loss_function`: BCE, cross-entropy or
    MSE on the standardised target). Data sits on the device once; each epoch is a seeded
    permutation.

    The steps never wait for the host: the loss is summed on the device and read once an epoch.
    ``distributed_sampler=(rank, world)`` gives this process a disjoint, equal-sized shard of
    each epoch's permutation (see :func:`epoch_permutation`). When a process group is
    initialised the ranks start from rank 0's weights and average their gradients with one
    all-reduce per step (data-parallel, like DistributedDataParallel with one bucket); the
    validation set is sharded too and the reported losses and throughput are over all ranks.
    ``cfg.cuda_graphs`` replays full-batch steps from a CUDA graph (CUDA only, not with
    ``compile``); if capture fails the loop warns and stays eager.
    """
    if train[2].shape[0] == 0:
        raise ValueError("the training set is empty")
    x_num, x_cat, y = (to_device(t, device) for t in train)
    v_num, v_cat, v_y = (to_device(t, device) for t in valid)
    model = model.to(device)
    ddp = distributed_sampler is not None and _dist_ready()
    world, valid_rows = 1, v_y.shape[0]
    if ddp:
        rank, world = distributed_sampler  # type: ignore[misc]
        v_num, v_cat, v_y = v_num[rank::world], v_cat[rank::world], v_y[rank::world]
        broadcast_parameters(model)
    grads = FlatGradients(model, world)
    step_model: nn.Module = torch.compile(model) if cfg.compile else model  # type: ignore[assignment]
    use_graphs = cfg.cuda_graphs and not cfg.compile and _graphs_available(device)
    opt = make_optimizer(model, cfg, device, capturable=use_graphs)
    loss_fn = loss_function(task)
    use_bf16 = cfg.bf16 and bf16_supported(device)
    total = torch.zeros((), device=device)

    def step(idx: torch.Tensor, rows: int) -> None:
        # no autocast weight cache: each weight is cast once per step anyway, and graphs need it
        with torch.autocast(
            device.type, dtype=torch.bfloat16, enabled=use_bf16, cache_enabled=False
        ):
            logits = step_model(x_num[idx], x_cat[idx])
            loss = loss_fn(logits.float(), y[idx])
        grads.zero()
        loss.backward()
        grads.all_reduce()
        opt.step()
        total.add_(loss.detach(), alpha=rows)

    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    n, batch = y.shape[0], cfg.batch_size
    graphed: GraphedStep | None = None
    history: list[EpochResult] = []
    perm = epoch_permutation(n, gen, device, distributed_sampler)
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        model.train()
        total.zero_()
        rows = perm.shape[0]
        full = rows // batch
        first = 0
        if use_graphs and graphed is None and full > WARMUP_STEPS:
            first = _warm_up(step, perm, batch, device)
            graphed = _try_graph(step, batch, device, ddp)
            use_graphs = graphed is not None
        for i in range(first * batch, full * batch, batch):
            if graphed is not None:
                graphed(perm[i : i + batch])
            else:
                step(perm[i : i + batch], batch)
        if rows > full * batch:
            step(perm[full * batch :], rows - full * batch)
        if epoch < cfg.epochs:  # queued behind this epoch's steps, before the host waits
            perm = epoch_permutation(n, gen, device, distributed_sampler)
        sums = torch.stack(
            [
                total,
                _valid_loss_sum(model, v_num, v_cat, v_y, cfg.batch_size * 4, use_bf16, task),
            ]
        )
        if ddp:
            torch.distributed.all_reduce(sums)
        train_sum, valid_sum = sums.tolist()  # the epoch's one host sync
        seen = rows * world  # every rank trains on the same number of rows
        _check_losses(epoch, train_sum / seen, valid_sum / valid_rows if valid_rows else 0.0, cfg)
        seconds = time.perf_counter() - start
        result = EpochResult(
            epoch,
            train_sum / seen,
            valid_sum / valid_rows if valid_rows else math.nan,
            seconds,
            seen / max(seconds, 1e-9),
        )
        history.append(result)
        if on_epoch is not None:
            on_epoch(result)
    return history


def _check_losses(epoch: int, train_loss: float, valid_loss: float, cfg: LoopConfig) -> None:
    """Raise :class:`TrainingDivergedError` when either mean loss of the epoch is not finite."""
    for name, value in (("training", train_loss), ("validation", valid_loss)):
        if not math.isfinite(value):
            raise TrainingDivergedError(
                f"epoch {epoch} of {cfg.epochs}: the {name} loss is {value}; training stopped "
                "and no model was saved. fix: look for extreme values in the features (or the "
                f"labels), or lower learning_rate (now {cfg.learning_rate:g})"
            )


@torch.no_grad()
def _valid_loss_sum(
    model: nn.Module,
    x_num: torch.Tensor,
    x_cat: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    use_bf16: bool = False,
    task: Task = "binary",
) -> torch.Tensor:
    """Summed loss of ``task`` over the rows, left on the device (no host sync)."""
    total = torch.zeros((), device=y.device)
    if y.shape[0] == 0:
        return total
    model.eval()
    loss_fn = loss_function(task, reduction="sum")
    for i in range(0, y.shape[0], batch_size):
        with torch.autocast(y.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(x_num[i : i + batch_size], x_cat[i : i + batch_size])
        total += loss_fn(logits.float(), y[i : i + batch_size])
    return total


def evaluate_loss(
    model: nn.Module,
    x_num: torch.Tensor,
    x_cat: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    use_bf16: bool = False,
    task: Task = "binary",
) -> float:
    """Mean loss of ``task`` (BCE by default) of ``model`` on the given rows; NaN when there
    are none."""
    if y.shape[0] == 0:
        return math.nan
    return float(_valid_loss_sum(model, x_num, x_cat, y, batch_size, use_bf16, task)) / y.shape[0]


@torch.no_grad()
def predict_logits(
    model: nn.Module, x_num: torch.Tensor, x_cat: torch.Tensor, batch_size: int = 65536
) -> np.ndarray:
    """The raw outputs, float32: shape ``(rows,)`` for one output, ``(rows, k)`` for ``k``."""
    model.eval()
    device = next(model.parameters()).device
    out = [
        model(x_num[i : i + batch_size].to(device), x_cat[i : i + batch_size].to(device))
        .float()
        .cpu()
        for i in range(0, x_num.shape[0], batch_size)
    ]
    if out:
        return torch.cat(out).numpy()
    k = getattr(model, "n_outputs", 1)
    return np.zeros((0,) if k == 1 else (0, k), np.float32)


def target_tensor(
    df: pl.DataFrame,
    target: str,
    *,
    pin_memory: bool = False,
    task: Task = "binary",
    classes: Sequence[str] = (),
    scale: tuple[float, float] | None = None,
) -> torch.Tensor:
    """The target column as the loss of ``task`` wants it, after :func:`check_target` (a bad
    label raises :class:`TrainingDataError`).

    binary: float32 0/1, shape ``(rows,)``. multiclass: int64 class indices. regression:
    float32 ``(y - mean) / std`` with ``scale=(mean, std)`` (the training target's, see
    :meth:`Preprocessor.fit_target`), the raw values without it.
    """
    check_target(df, target, task=task, classes=classes)
    col = df.get_column(target)
    if task == "multiclass":
        values = col.cast(pl.Int64).to_numpy()
    elif task == "regression" and scale is not None:
        mean, std = scale
        values = ((col.cast(pl.Float64) - mean) / std).cast(pl.Float32).to_numpy()
    else:
        values = col.cast(pl.Float32).to_numpy()
    dtype = torch.int64 if task == "multiclass" else torch.float32
    if pin_memory and torch.cuda.is_available():
        out = torch.empty(values.shape[0], dtype=dtype, pin_memory=True)
        out.numpy()[:] = values
        return out
    return torch.from_numpy(values.copy())  # polars hands out a read-only view


def outputs_to_predictions(
    outputs: np.ndarray, task: Task = "binary", pre: Preprocessor | None = None
) -> np.ndarray:
    """The network's raw outputs as predictions, float64: binary P(class 1) (sigmoid), shape
    ``(rows,)``; multiclass class probabilities (softmax), shape ``(rows, k)``, rows summing to
    1; regression values in target units (``outputs * target_std + target_mean`` of ``pre``)."""
    x = outputs.astype(np.float64)
    if task == "binary":
        return np.asarray(1.0 / (1.0 + np.exp(-x)))
    if task == "multiclass":
        z = np.exp(x - x.max(axis=1, keepdims=True)) if x.size else x
        return np.asarray(z / z.sum(axis=1, keepdims=True)) if x.size else x
    if pre is None or pre.target_mean is None or pre.target_std is None:
        raise ValueError(
            "a regression model needs the training target's mean and std (target_mean, "
            "target_std in its preprocessing); this artifact has none: retrain it"
        )
    return np.asarray(x * pre.target_std + pre.target_mean)
