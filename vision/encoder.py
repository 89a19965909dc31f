"""Picture -> prefix embeddings in the backend, via the `vision` net, with a cache.

The cache is keyed by the preprocessed pixels, so asking a follow-up question about the
same picture (or uploading it again) does not run the vision net again.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from PIL import Image

from runtime.backend import Backend, Tensor
from vision.preprocess import model_sized, to_pixels


CACHE_SIZE = 32  # pictures whose rows stay in the backend


@dataclass(frozen=True)
class EncodedImage:
    embeds: Tensor  # [1,Q,H] in the backend
    key: str  # digest of the pixels the net saw: the same picture, the same key
    cached: bool  # the rows came from the cache, not from the net


class VisionEncoder:
    def __init__(self, backend: Backend, cache_size: int = CACHE_SIZE):
        self.backend, self.cache_size = backend, cache_size
        spec = backend.nets()["vision"]
        self._input, self._output = spec.inputs[0], spec.outputs[0]
        self.image_size = self._input.shape[-1]
        self.rows = self._output.shape[1]  # Q: prefix embeddings per image
        self._pixels = backend.alloc(self._input.shape, self._input.dtype)
        self._cache: OrderedDict[str, Tensor] = OrderedDict()

    def shrink(self, image: Image.Image) -> Image.Image:
        """What is worth keeping of a picture between questions: encode() gives the same rows."""
        return model_sized(image, self.image_size)

    def encode(self, image: Image.Image) -> EncodedImage:
        """The image's embeddings in the backend, from the cache when it holds them."""
        pixels = to_pixels(image, self.image_size)
        key = hashlib.sha256(pixels.tobytes()).hexdigest()
        if key in self._cache:
            self._cache.move_to_end(key)
            return EncodedImage(self._cache[key], key, True)
        embeds = self.backend.alloc(self._output.shape, self._output.dtype)
        self.backend.write(self._pixels, pixels)
        self.backend.run("vision", [self._pixels], [embeds])
        self._cache[key] = embeds
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return EncodedImage(embeds, key, False)

    def clear_cache(self) -> None:
        self._cache.clear()
