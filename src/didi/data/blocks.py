"""Token blocks: packing tokenized documents into fixed-length blocks, the ``.npy`` files of the token cache (and
how a cached file is checked against its manifest), and which blocks every process reads at every step.

Packing (``--packing``, see :func:`pack_blocks`):

* ``wrap`` (MDLM's, the default for text): every document's ids plus EOS are concatenated and cut into chunks of
  ``seq_len - 2`` tokens; each block is ``[BOS] chunk [EOS]`` and the final partial chunk is dropped;
* ``crop`` (the default for proteins): one whole document per block, ``[BOS] doc [EOS] [PAD] ...``. A document of
  more than ``seq_len - 2`` tokens keeps its *start* (``[BOS]`` and its first ``seq_len - 1`` tokens, no EOS: it
  does not end there), so every block begins at a document's beginning (a protein's N-terminus) and cropping
  needs no random numbers. PAD is an ordinary token to the diffusion model: it is masked and predicted like any
  other, so the model learns where a sequence ends and a sample's length is where its first EOS/PAD falls.

Storage: :func:`write_token_cache` tokenizes and packs a split straight into an ``.npy`` file (never all in
memory); :func:`didi.data.corpora.prepare_data` keeps a manifest beside it (stats and
:func:`didi.runtime.integrity.file_record`) and :func:`token_cache_problem` tells whether the file still matches it
(size, ``.npy`` header, digest), so a truncated or overwritten entry is rebuilt instead of trained on.

Batches: :class:`BatchSchedule` (the global batch of a step, a pure function of ``(seed, step)``) and
:func:`shard` (a process's contiguous share of it).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, option_error, require
from ..runtime.checkpoint import atomic_write
from ..runtime.integrity import check_file
from ..runtime.progress import Progress
from .tokenizer import Tokenizer

PACKINGS = ("auto", "wrap", "crop")

class BlockPacker:
    """Streaming wrap packing: :meth:`add` takes documents and returns the blocks they complete."""

    def __init__(self, *, bos_id: int, eos_id: int, seq_len: int):
        require(seq_len >= 3, "seq_len", f"must be >= 3 to hold BOS, a token and EOS (got {seq_len})")
        self.bos_id, self.eos_id, self.seq_len = bos_id, eos_id, seq_len
        self._eos = np.array([eos_id], dtype=np.int32)
        self._carry = np.empty(0, dtype=np.int32)

    def add(self, token_lists: Iterable[Sequence[int]]) -> np.ndarray:
        pieces = [self._carry]
        for ids in token_lists:
            pieces += [np.asarray(ids, dtype=np.int32), self._eos]
        stream = np.concatenate(pieces)
        chunk = self.seq_len - 2
        n = len(stream) // chunk
        self._carry = stream[n * chunk:]
        blocks = np.empty((n, self.seq_len), dtype=np.int32)
        blocks[:, 0] = self.bos_id
        blocks[:, 1:-1] = stream[:n * chunk].reshape(n, chunk)
        blocks[:, -1] = self.eos_id
        return blocks


def pack_documents(token_lists: Iterable[Sequence[int]], *, bos_id: int, eos_id: int, seq_len: int) -> np.ndarray:
    """MDLM wrap packing: ``(N, seq_len)`` int32 blocks ``[BOS] chunk [EOS]`` over the stream ``doc EOS doc EOS...``
    cut into chunks of ``seq_len - 2`` (the last partial chunk is dropped)."""
    return BlockPacker(bos_id=bos_id, eos_id=eos_id, seq_len=seq_len).add(token_lists)


def crop_documents(token_lists: Iterable[Sequence[int]], *, bos_id: int, eos_id: int, pad_id: int,
                   seq_len: int) -> np.ndarray:
    """Crop packing: one ``(seq_len,)`` int32 block per document, ``[BOS] doc [EOS] [PAD] ...``.

    A document of more than ``seq_len - 2`` tokens is cut to its first ``seq_len - 1`` and gets no EOS (it does
    not end there).
    """
    require(seq_len >= 3, "seq_len", f"must be >= 3 to hold BOS, a token and EOS (got {seq_len})")
    token_lists = list(token_lists)
    blocks = np.full((len(token_lists), seq_len), pad_id, dtype=np.int32)
    blocks[:, 0] = bos_id
    for row, ids in zip(blocks, token_lists):
        kept = np.asarray(ids[:seq_len - 1], dtype=np.int32)
        row[1:1 + len(kept)] = kept
        if len(ids) <= seq_len - 2:
            row[1 + len(kept)] = eos_id
    return blocks


def resolve_packing(packing: str, tokenizer: Tokenizer) -> str:
    """``auto`` is ``crop`` for protein tokenizers (whole proteins per block) and ``wrap`` otherwise."""
    require(packing in PACKINGS, "packing", f"must be one of {', '.join(PACKINGS)} (got {packing!r})")
    if packing == "auto":
        return "crop" if tokenizer.kind == "protein" else "wrap"
    return packing


def pack_blocks(token_lists: Sequence[Sequence[int]], tokenizer: Tokenizer, *, packing: str, seq_len: int,
                packer: BlockPacker | None = None) -> np.ndarray:
    """Blocks of ``token_lists`` packed as ``packing`` (``auto`` resolved by :func:`resolve_packing`).

    ``wrap`` goes through ``packer`` when given (streaming: its carry continues into the next call). ``crop``
    pads with the tokenizer's PAD, or with EOS for a tokenizer without one (text BPEs).
    """
    if resolve_packing(packing, tokenizer) == "crop":
        pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
        return crop_documents(token_lists, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=pad_id,
                              seq_len=seq_len)
    packer = packer or BlockPacker(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, seq_len=seq_len)
    return packer.add(token_lists)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _write_npy_header(fh: Any, rows: int, seq_len: int) -> None:
    np.lib.format.write_array_header_1_0(fh, {"descr": "<i4", "fortran_order": False, "shape": (rows, seq_len)})


class TokenBlocks:
    """``(N, L)`` packed token blocks, in memory or memory-mapped from an ``.npy`` file."""

    def __init__(self, array: np.ndarray):
        if array.ndim != 2 or array.dtype.kind not in "iu":
            raise ValueError(f"token blocks must be a 2-D integer array (got {array.dtype} {array.shape})")
        self.array = array

    @property
    def num_blocks(self) -> int:
        return self.array.shape[0]

    @property
    def seq_len(self) -> int:
        return self.array.shape[1]

    def __len__(self) -> int:
        return self.num_blocks

    def batch(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Rows ``indices`` as a ``(len(indices), L)`` LongTensor."""
        return torch.from_numpy(np.asarray(self.array[np.asarray(indices, dtype=np.int64)], dtype=np.int64))

    def save(self, path: str | Path) -> None:
        """Write an ``.npy`` file atomically."""
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(self.array))

        atomic_write(Path(path), write)

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True) -> TokenBlocks:
        path = Path(path)
        try:
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except FileNotFoundError:
            raise DataError(f"{path}: file not found") from None
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(f"{path}: not a readable .npy file ({_first_line(exc)}); a token-cache entry is rebuilt "
                            "after `didi cache clear`") from None
        if array.ndim != 2 or array.dtype.kind not in "iu":
            raise DataError(f"{path}: expected 2-D integer token blocks (got {array.dtype} {array.shape})")
        return cls(array)


def write_token_cache(path: Path, documents: Sequence[str], tokenizer: Tokenizer, seq_len: int, packing: str, *,
                      what: str, progress: bool, encode_batch: int = 256) -> dict[str, int]:
    """Tokenize and pack ``documents`` straight into an ``.npy`` file, atomically (blocks never all held in memory);
    the tokenizer gets ``encode_batch`` documents per call. Returns the stats of :class:`~.corpora.PreparedData`."""
    stats = {"documents": 0, "tokens": 0, "blocks": 0, **({"cropped": 0} if packing == "crop" else {})}

    def write(tmp: Path) -> None:
        packer = BlockPacker(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, seq_len=seq_len)
        with open(tmp, "wb") as fh, Progress(len(documents), f"tokenizing {what}", unit="doc",
                                             enabled=progress) as bar:
            _write_npy_header(fh, 0, seq_len)
            data_start = fh.tell()
            for start in range(0, len(documents), encode_batch):
                ids = tokenizer.encode_batch(list(documents[start:start + encode_batch]))
                blocks = pack_blocks(ids, tokenizer, packing=packing, seq_len=seq_len, packer=packer)
                fh.write(blocks.astype("<i4", copy=False).tobytes())
                stats["documents"] += len(ids)
                stats["tokens"] += sum(len(i) + 1 for i in ids)
                stats["blocks"] += len(blocks)
                if packing == "crop":
                    stats["cropped"] += sum(len(i) > seq_len - 2 for i in ids)
                bar.update(len(ids))
            if stats["blocks"] == 0:
                raise DataError(f"{what}: {stats['tokens']} tokens are too few for one block of --seq-len {seq_len}"
                                f" ({seq_len - 2} tokens plus BOS/EOS); lower --seq-len or add text")
            fh.seek(0)
            _write_npy_header(fh, stats["blocks"], seq_len)  # numpy pads headers so the row count can grow in place
            if fh.tell() != data_start:
                raise RuntimeError("numpy changed the .npy header size; cannot finalise the token cache")

    atomic_write(path, write)
    return stats


def token_cache_problem(path: Path, manifest: dict[str, Any], seq_len: int) -> str | None:
    """Why the cached blocks at ``path`` cannot be used as described by ``manifest`` (the ``.json`` written beside
    them: ``stats`` and, since manifests carry it, ``file``, a :func:`~didi.runtime.integrity.file_record`), or
    ``None`` when they can. Cheap on large files: the size, the ``.npy`` header and a digest that reads at most
    64 MiB (see :mod:`didi.runtime.integrity`)."""
    try:
        blocks = int(manifest["stats"]["blocks"])
    except (KeyError, TypeError, ValueError):
        return "its manifest is unreadable"
    problem = check_file(path, manifest["file"]) if isinstance(manifest.get("file"), dict) else None
    if problem:
        return problem
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)
            data_start = fh.tell()
    except (OSError, ValueError, SyntaxError) as exc:
        return f"{path.name} has no readable .npy header ({_first_line(exc)})"
    if shape != (blocks, seq_len) or fortran or dtype != np.dtype("<i4"):
        return f"{path.name} holds {dtype} {shape}, its manifest says int32 {(blocks, seq_len)}"
    size = path.stat().st_size
    if size != data_start + blocks * seq_len * 4:
        return f"{path.name} has {size} bytes, {data_start + blocks * seq_len * 4} expected (truncated)"
    return None


# ------------------------------------------------------------------------------------------------------ batches

class BatchSchedule:
    """Which blocks form the global batch of each step: a pure function of ``(seed, step)``.

    The blocks are read as a stream of epochs, epoch ``e`` in the order of a permutation seeded by ``(seed, e)``
    (or in storage order without ``shuffle``); step ``s`` (counted from 0) takes positions
    ``[s * B, (s + 1) * B)`` of that stream, so a batch may straddle two epochs and resuming needs only the step.
    """

    def __init__(self, num_blocks: int, global_batch_size: int, seed: int = 0, shuffle: bool = True):
        if num_blocks < 1:
            raise DataError("no training blocks to draw batches from")
        require(global_batch_size >= 1, "global_batch_size", f"must be >= 1 (got {global_batch_size})")
        require(seed >= 0, "seed", f"must be >= 0 (got {seed})")
        self.num_blocks, self.global_batch_size, self.seed, self.shuffle = num_blocks, global_batch_size, seed, shuffle
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) >= 2:  # batches move forward: keep the current and the next epoch only
                self._orders.pop(min(self._orders))
            rng = np.random.default_rng([self.seed, epoch])
            self._orders[epoch] = rng.permutation(self.num_blocks) if self.shuffle else np.arange(self.num_blocks)
        return self._orders[epoch]

    def indices(self, step: int) -> np.ndarray:
        """Block indices of the global batch of ``step``."""
        positions = np.arange(step * self.global_batch_size, (step + 1) * self.global_batch_size)
        epochs, offsets = np.divmod(positions, self.num_blocks)
        out = np.empty(len(positions), dtype=np.int64)
        for epoch in np.unique(epochs):
            where = epochs == epoch
            out[where] = self._order(int(epoch))[offsets[where]]
        return out

    def epoch(self, step: int) -> float:
        """Epochs completed before ``step`` (fractional)."""
        return step * self.global_batch_size / self.num_blocks


def shard(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """The contiguous, equal share of a global batch that process ``rank`` of ``world_size`` reads."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    if len(indices) % world_size:
        raise option_error("global_batch_size", f"{len(indices)} is not divisible by the world size {world_size}")
    per_rank = len(indices) // world_size
    return indices[rank * per_rank:(rank + 1) * per_rank]
