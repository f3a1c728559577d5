"""Data for the experiments: the LIS task (generated on the fly) and byte-level text corpora.

- :func:`lis_batch`: random integer sequences and the length of their longest strictly increasing
  subsequence, the classification target.
- :func:`stdlib_corpus`: the offline default corpus, the installed Python standard library's
  source text (sorted files, a fixed byte budget), byte-level (vocabulary 256), split into a
  training and a validation part. Every machine with Python has it; its exact bytes depend on
  the Python version, so runs record ``corpus_sha256``.
- :func:`minipile_corpus`: MiniPile through the ``datasets`` package (imported lazily), when the
  Hugging Face hub is reachable.
"""

from __future__ import annotations

import functools
import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

PAD = 64          # LIS: values are 0..63, the padding token is 64 (vocabulary 65)
LIS_VOCAB = 65


def lis_length(x: Tensor) -> Tensor:
    """Length of the longest strictly increasing subsequence of each row, by the O(N^2) DP
    :math:`L_t = 1 + \\max_{i < t,\\, x_i < x_t} L_i`, vectorised over the batch.

    x: (B, N) integers -> (B,) int64. Entries equal to ``PAD`` are ignored (left padding).
    """
    if x.dim() != 2:
        raise ValueError(f"x must have shape (B, N), got {tuple(x.shape)}")
    B, n = x.shape
    L = torch.zeros(B, n, dtype=torch.int64)
    real = x != PAD
    for t in range(n):
        smaller = (x[:, :t] < x[:, t:t + 1]) & real[:, :t]
        best = (L[:, :t] * smaller).amax(1) if t else torch.zeros(B, dtype=torch.int64)
        L[:, t] = torch.where(real[:, t], best + 1, torch.zeros_like(best))
    return L.amax(1)


def lis_batch(generator: torch.Generator, batch: int, min_len: int = 16, max_len: int = 32,
              n_values: int = 64) -> tuple[Tensor, Tensor]:
    """A batch of LIS problems: sequences of length U{min_len..max_len}, values U{0..n_values-1},
    left-padded with ``PAD`` to ``max_len`` (so the last token is always real).

    Returns idx (B, max_len) int64 and the LIS lengths (B,) int64 (the class, 1..max_len).
    """
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    if not 1 <= n_values <= PAD:
        raise ValueError(f"n_values must lie in [1, {PAD}], got {n_values}")
    values = torch.randint(0, n_values, (batch, max_len), generator=generator)
    lengths = torch.randint(min_len, max_len + 1, (batch,), generator=generator)
    pad = torch.arange(max_len).unsqueeze(0) < (max_len - lengths).unsqueeze(1)
    idx = values.masked_fill(pad, PAD)
    return idx, lis_length(idx)


@dataclass(frozen=True)
class Corpus:
    """A byte-level corpus: train and validation token ids (int64, values 0..255)."""

    name: str
    train: Tensor
    val: Tensor
    sha256: str


def _bytes_to_ids(data: bytes) -> Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)


def _split(name: str, data: bytes, val_fraction: float) -> Corpus:
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    ids = _bytes_to_ids(data)
    cut = int(len(ids) * (1 - val_fraction))
    return Corpus(name, ids[:cut], ids[cut:], hashlib.sha256(data).hexdigest())


@functools.lru_cache(maxsize=4)
def stdlib_corpus(n_bytes: int = 2_000_000, val_fraction: float = 0.1) -> Corpus:
    """The first ``n_bytes`` of the standard library's ``.py`` files (sorted by relative path,
    ``site-packages`` excluded), concatenated; the last ``val_fraction`` is the validation split.
    """
    if n_bytes < 1000:
        raise ValueError(f"n_bytes must be >= 1000, got {n_bytes}")
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py")
                   if "site-packages" not in p.parts and "dist-packages" not in p.parts)
    chunks, total = [], 0
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        chunks.append(data)
        total += len(data)
        if total >= n_bytes:
            break
    data = b"".join(chunks)[:n_bytes]
    if len(data) < n_bytes:
        raise RuntimeError(f"the standard library at {root} has only {len(data)} bytes of .py source")
    return _split("stdlib", data, val_fraction)


def minipile_corpus(n_bytes: int = 2_000_000, val_bytes: int = 200_000) -> Corpus:
    """MiniPile (``JeanKaddour/minipile``) through ``datasets``, streamed: ``n_bytes`` of the train
    split and ``val_bytes`` of the validation split, UTF-8 bytes. Raises a RuntimeError that says
    what to do when ``datasets`` is missing or the hub cannot be reached."""
    try:
        import datasets  # noqa: PLC0415 - optional dependency, imported only when asked for
    except ImportError as err:
        raise RuntimeError("the MiniPile corpus needs the 'datasets' package (pip install datasets) and "
                           "access to the Hugging Face hub; use --corpus stdlib offline") from err

    def take(split: str, budget: int) -> bytes:
        out, total = [], 0
        for row in datasets.load_dataset("JeanKaddour/minipile", split=split, streaming=True):
            b = row["text"].encode("utf-8") + b"\n"
            out.append(b)
            total += len(b)
            if total >= budget:
                break
        return b"".join(out)[:budget]

    try:
        train, val = take("train", n_bytes), take("validation", val_bytes)
    except Exception as err:  # network, hub or dataset-format errors: one clear message
        raise RuntimeError(f"MiniPile could not be loaded from the Hugging Face hub ({err!r}); "
                           f"use --corpus stdlib offline") from err
    digest = hashlib.sha256(train + val).hexdigest()
    return Corpus("minipile", _bytes_to_ids(train), _bytes_to_ids(val), digest)


def load_corpus(name: str, n_bytes: int) -> Corpus:
    """``"stdlib"`` (offline default) or ``"minipile"``."""
    if name == "stdlib":
        return stdlib_corpus(n_bytes)
    if name == "minipile":
        return minipile_corpus(n_bytes, max(1000, n_bytes // 10))
    raise ValueError(f"corpus must be 'stdlib' or 'minipile', got {name!r}")


def lm_batch(data: Tensor, generator: torch.Generator, batch: int, seq_len: int) -> tuple[Tensor, Tensor]:
    """Random windows of ``seq_len + 1`` bytes: inputs (B, seq_len) and next-byte targets."""
    if len(data) <= seq_len + 1:
        raise ValueError(f"the corpus split has {len(data)} tokens, too few for seq_len={seq_len}")
    start = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=generator)
    win = torch.stack([data[s:s + seq_len + 1] for s in start.tolist()])
    return win[:, :-1], win[:, 1:]


def lm_eval_windows(data: Tensor, n: int, seq_len: int) -> tuple[Tensor, Tensor]:
    """``n`` evenly spaced fixed windows of the validation split (the same in every run)."""
    if len(data) <= seq_len + 1:
        raise ValueError(f"the corpus split has {len(data)} tokens, too few for seq_len={seq_len}")
    starts = torch.linspace(0, len(data) - seq_len - 1, n).long()
    win = torch.stack([data[s:s + seq_len + 1] for s in starts.tolist()])
    return win[:, :-1], win[:, 1:]
