"""The combined per-element scores across domains, kept in bounded memory.

The combined score of an element is sum_d w_d * mean_d^2 / (its module's sum of mean_d^2): one
value per trainable element, as large as the model. A domain's term is only known once the domain
ends (the module sums need its whole mean gradient), and the next domain needs a fresh running
sum of gradients, also as large as the model. Holding both in memory would cost a third
model-sized buffer; instead, while more domains follow, the finished terms are added into a
temporary file (float32, one region per parameter, written and read in chunks of at most
`CHUNK` elements), and the last domain's term is added to the file's contents in place of that
domain's own buffer. With a single domain no file is made.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

#: Elements per read or write: bounds the host buffer of one transfer (16 MiB of float32).
CHUNK = 1 << 22


class CombinedScores:
    """Per-parameter float32 scores, summed over domains, for tensors of `shapes` (this
    process's local shapes) on `device`; the file (if any) goes to `directory`."""

    def __init__(self, shapes: list[torch.Size], device: torch.device, directory: str | Path | None = None) -> None:
        self.shapes = shapes
        self.device = device
        self.offsets = [0]
        for shape in shapes:
            self.offsets.append(self.offsets[-1] + shape.numel())
        self.directory = directory
        self._file: BinaryIO | None = None
        self._stored = [False] * len(shapes)
        self.tensors: list[torch.Tensor | None] | None = None  # the final scores, once finished

    @property
    def spilled(self) -> bool:
        """Whether a temporary file holds terms of earlier domains."""
        return self._file is not None

    def _region(self, j: int, start: int) -> int:
        return (self.offsets[j] + start) * 4

    def spill(self, j: int, term: torch.Tensor | None) -> None:
        """Add parameter j's term of a finished domain (more domains follow) to the file."""
        if term is None:
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile(dir=self.directory)  # noqa: SIM115 - closed in close()
        flat = term.detach().reshape(-1)
        for start in range(0, flat.numel(), CHUNK):
            chunk = flat[start : start + CHUNK].to("cpu", torch.float32)
            if self._stored[j]:
                chunk = chunk + self._read(j, start, chunk.numel())
            self._file.seek(self._region(j, start))
            self._file.write(chunk.contiguous().numpy().tobytes())
        self._stored[j] = True

    def _read(self, j: int, start: int, count: int) -> torch.Tensor:
        assert self._file is not None
        self._file.seek(self._region(j, start))
        data = self._file.read(count * 4)
        return torch.from_numpy(np.frombuffer(data, dtype=np.float32).copy())

    def finish(self, terms: list[torch.Tensor | None]) -> None:
        """The last domain's terms plus everything spilled become the final scores, in place of
        `terms` (float32 tensors, or None for a parameter no domain reached); closes the file.
        Finishing again adds the new terms to the earlier final scores."""
        final: list[torch.Tensor | None] = []
        earlier = self.tensors or [None] * len(terms)
        for j, term in enumerate(terms):
            if (self._stored[j] or earlier[j] is not None) and term is None:
                term = torch.zeros(self.shapes[j], dtype=torch.float32, device=self.device)
            before = earlier[j]
            if term is not None and before is not None:
                term.add_(before)
            if term is not None and self._stored[j]:
                flat = term.view(-1)
                for start in range(0, flat.numel(), CHUNK):
                    part = flat[start : start + CHUNK]
                    part.add_(self._read(j, start, part.numel()).to(part.device))
            final.append(term)
        self.tensors = final
        self._stored = [False] * len(self.shapes)
        self.close()

    def close(self) -> None:
        """Delete the temporary file (if any)."""
        if self._file is not None:
            self._file.close()
            self._file = None
