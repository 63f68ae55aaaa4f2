"""The tabular MLP and its training loop, in plain torch.

Shared by the ``local_torch`` plugin, the DDP worker and the benchmarks' bare baseline, so the
baseline measures exactly the same model and loop without the platform around it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import torch
from torch import nn

MEMORY_FRACTION_ENV = "MLX_GPU_MEMORY_FRACTION"


class TabularMLP(nn.Module):
    """Numeric inputs plus one embedding per categorical column, then an MLP to one logit."""

    def __init__(
        self,
        n_numeric: int,
        cardinalities: Sequence[int],
        hidden: Sequence[int],
        embedding_dim: int = 8,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
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
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        parts = [numeric]
        parts += [emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)]
        return self.mlp(torch.cat(parts, dim=1)).squeeze(1)


@dataclass
class Preprocessor:
    """Standardisation and category vocabularies, fitted on the training frame only."""

    numeric: list[str]
    categorical: list[str]
    means: list[float] = field(default_factory=list)
    stds: list[float] = field(default_factory=list)
    vocab: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def fit(
        cls, df: pl.DataFrame, numeric: Sequence[str], categorical: Sequence[str]
    ) -> Preprocessor:
        stats = (
            df.select(
                *[pl.col(c).cast(pl.Float64).mean().alias(f"m_{c}") for c in numeric],
                *[pl.col(c).cast(pl.Float64).std().alias(f"s_{c}") for c in numeric],
            ).row(0)
            if numeric
            else ()
        )
        k = len(numeric)
        means = [float(x) if x is not None else 0.0 for x in stats[:k]]
        stds = [float(x) if x and x > 0 else 1.0 for x in stats[k:]]
        vocab = {
            c: sorted(v for v in df.get_column(c).drop_nulls().unique().cast(pl.String).to_list())
            for c in categorical
        }
        return cls(list(numeric), list(categorical), means, stds, vocab)

    def to_dict(self) -> dict[str, object]:
        return {
            "numeric": self.numeric,
            "categorical": self.categorical,
            "means": self.means,
            "stds": self.stds,
            "vocab": self.vocab,
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Preprocessor:
        return cls(**d)  # type: ignore[arg-type]

    @property
    def cardinalities(self) -> list[int]:
        return [len(self.vocab[c]) for c in self.categorical]

    def transform(self, df: pl.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        """Polars to tensors in columnar bulk: one numpy buffer per block, no Python row loop.

        Unknown categories and nulls map to index 0; numeric nulls to the mean (0 after scaling).
        """
        num = (
            df.select(
                ((pl.col(c).cast(pl.Float32) - m) / s).fill_null(0.0).fill_nan(0.0).alias(c)
                for c, m, s in zip(self.numeric, self.means, self.stds, strict=True)
            ).to_numpy(order="c")
            if self.numeric
            else np.zeros((df.height, 0), np.float32)
        )
        cat = (
            df.select(
                pl.col(c)
                .cast(pl.String)
                .replace_strict(
                    self.vocab[c],
                    list(range(1, len(self.vocab[c]) + 1)),
                    default=0,
                    return_dtype=pl.Int64,
                )
                for c in self.categorical
            ).to_numpy(order="c")
            if self.categorical
            else np.zeros((df.height, 0), np.int64)
        )
        return torch.from_numpy(np.ascontiguousarray(num, np.float32)), torch.from_numpy(
            np.ascontiguousarray(cat, np.int64)
        )


def pick_device(requested: str = "auto") -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def apply_memory_fraction(device: torch.device) -> float | None:
    """Cap this process's share of GPU memory, as the run launcher asked (seed: memory limit)."""
    raw = os.environ.get(MEMORY_FRACTION_ENV)
    if device.type != "cuda" or not raw:
        return None
    fraction = float(raw)
    if not 0 < fraction <= 1:
        raise ValueError(f"{MEMORY_FRACTION_ENV}={raw!r} must be in (0, 1]")
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


def bf16_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def train_loop(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    valid: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    cfg: LoopConfig,
    device: torch.device,
    on_epoch: Callable[[EpochResult], None] | None = None,
    *,
    distributed_sampler: tuple[int, int] | None = None,
) -> list[EpochResult]:
    """Train with AdamW and BCE. Data sits on the device once; each epoch is a seeded permutation.

    ``distributed_sampler=(rank, world)`` takes every world-th shuffled batch row for DDP.
    """
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    x_num, x_cat, y = (to_device(t, device) for t in train)
    v_num, v_cat, v_y = (to_device(t, device) for t in valid)
    model = model.to(device)
    step_model: nn.Module = torch.compile(model) if cfg.compile else model  # type: ignore[assignment]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    use_bf16 = cfg.bf16 and bf16_supported(device)
    n = y.shape[0]
    history: list[EpochResult] = []
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=gen).to(device)
        if distributed_sampler is not None:
            rank, world = distributed_sampler
            perm = perm[rank::world]
        total, seen = torch.zeros((), device=device), 0
        for i in range(0, perm.shape[0], cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = step_model(x_num[idx], x_cat[idx])
                loss = loss_fn(logits.float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * idx.shape[0]
            seen += idx.shape[0]
        valid_loss = evaluate_loss(model, v_num, v_cat, v_y, cfg.batch_size * 4, use_bf16)
        train_loss = float(total) / max(seen, 1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        result = EpochResult(epoch, train_loss, valid_loss, seconds, seen / max(seconds, 1e-9))
        history.append(result)
        if on_epoch is not None:
            on_epoch(result)
    return history


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    x_num: torch.Tensor,
    x_cat: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    use_bf16: bool = False,
) -> float:
    if y.shape[0] == 0:
        return math.nan
    model.eval()
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    total = 0.0
    for i in range(0, y.shape[0], batch_size):
        with torch.autocast(x_num.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(x_num[i : i + batch_size], x_cat[i : i + batch_size])
        total += float(loss_fn(logits.float(), y[i : i + batch_size]))
    return total / y.shape[0]


@torch.no_grad()
def predict_logits(
    model: nn.Module, x_num: torch.Tensor, x_cat: torch.Tensor, batch_size: int = 65536
) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    out = [
        model(x_num[i : i + batch_size].to(device), x_cat[i : i + batch_size].to(device))
        .float()
        .cpu()
        for i in range(0, x_num.shape[0], batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def target_tensor(df: pl.DataFrame, target: str) -> torch.Tensor:
    return torch.from_numpy(df.get_column(target).cast(pl.Float32).to_numpy().copy())
