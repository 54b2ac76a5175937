"""Keep-masks held bit-packed: 8 weights per byte instead of a bool tensor's 1 byte per weight.

A whole model's keep-masks held as bool tensors cost 1 byte per prunable weight (2.8 GB for a 3B model, issue 29);
`PackedMasks` holds them packed (1/8 byte per weight) and unpacks one mask when it is read, so a caller that walks
the masks one module at a time (applying, evaluating, measuring, writing a file) never holds them all unpacked.

The bits are those of ``numpy.packbits`` of the flattened mask (big-endian: the first weight is the byte's highest
bit, the last byte zero-padded), the layout of the exported ``masks.safetensors`` (`mask_files`), computed with
torch ops on the mask's own device (no numpy round trip, so a GPU mask packs on the GPU).
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import NamedTuple

import torch

#: Weight of each bit within a byte, first element highest (numpy.packbits' default "big" bit order).
_SHIFTS = torch.arange(7, -1, -1, dtype=torch.uint8)


def packed_length(count: int) -> int:
    """Bytes that hold `count` bits (ceil(count / 8))."""
    return (int(count) + 7) // 8


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Bit-pack a keep-mask of any shape (nonzero = kept) into a 1-D uint8 tensor of ceil(numel / 8) bytes, on
    the mask's device. Working memory: about 2 bytes per element of this one mask."""
    flat = mask.detach().reshape(-1)
    flat = flat if flat.dtype == torch.bool else flat != 0
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    bits = flat.view(torch.uint8).reshape(-1, 8)  # bool storage is one 0/1 byte per element
    return (bits << _SHIFTS.to(bits.device)).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of `pack_bits`: the bool tensor of `shape`, on the packed tensor's device. The caller checks that
    `packed` has `packed_length(prod(shape))` bytes."""
    count = 1
    for size in shape:
        count *= int(size)
    bits = (packed.reshape(-1, 1) >> _SHIFTS.to(packed.device)) & 1
    return bits.reshape(-1)[:count].to(torch.bool).reshape(tuple(shape))


class _Entry(NamedTuple):
    packed: torch.Tensor  # 1-D uint8, ceil(numel / 8) bytes
    shape: torch.Size
    dtype: torch.dtype


class PackedMasks(MutableMapping):
    """Qualified module name -> keep-mask, held bit-packed; reading a name unpacks that one mask.

    Behaves as the dict of masks it replaces: ``masks[name]`` is a tensor of the shape, dtype and device it was
    stored with (a bool mask comes back bool; a 0/1 mask of another dtype comes back in it, its nonzeros kept);
    iteration keeps insertion order. Each read unpacks afresh (the caller owns the returned tensor), so read a
    name once per use. `shape` and `packed` answer without unpacking; `packed_bytes` is what they occupy.
    """

    def __init__(self, masks=None) -> None:
        self._entries: dict[str, _Entry] = {}
        if masks is not None:
            self.update(masks)

    def __setitem__(self, name: str, mask: torch.Tensor) -> None:
        self._entries[name] = _Entry(pack_bits(mask), mask.shape, mask.dtype)

    def __getitem__(self, name: str) -> torch.Tensor:
        entry = self._entries[name]
        mask = unpack_bits(entry.packed, tuple(entry.shape))
        return mask if entry.dtype == torch.bool else mask.to(entry.dtype)

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"PackedMasks({len(self)} masks, {self.packed_bytes} packed bytes)"

    def shape(self, name: str) -> torch.Size:
        """The shape of `name`'s mask, without unpacking it."""
        return self._entries[name].shape

    def packed(self, name: str) -> torch.Tensor:
        """`name`'s packed bits (1-D uint8, `pack_bits` layout; not a copy: do not write into it)."""
        return self._entries[name].packed

    def move_packed(self, name: str, move) -> None:
        """Replace `name`'s packed bits by ``move(bits)`` (e.g. sent to another device): 1/8 of the bytes the
        unpacked mask would move."""
        entry = self._entries[name]
        self._entries[name] = entry._replace(packed=move(entry.packed))

    @property
    def packed_bytes(self) -> int:
        """Bytes the packed masks occupy (1/8 byte per weight, rounded up per mask)."""
        return sum(entry.packed.numel() for entry in self._entries.values())


def mask_shape(masks, name: str) -> torch.Size:
    """The shape of `masks[name]`, without unpacking it when `masks` is a `PackedMasks`."""
    return masks.shape(name) if isinstance(masks, PackedMasks) else masks[name].shape
