"""Pictures sent to the API: data URIs and bare base64, or http(s) URLs where allowed."""
from __future__ import annotations

import base64
import binascii
import hashlib
import urllib.request
from dataclasses import dataclass

from PIL import Image

from api.errors import bad_request
from vision.preprocess import MAX_BYTES, ImageError, load_image

FETCH_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Picture:
    image: Image.Image
    digest: str  # of the file's bytes: the same picture sent twice is one picture


def picture_from_base64(data: str, param: str) -> Picture:
    if len(data) > MAX_BYTES * 4 // 3 + 4:
        raise bad_request(f"The image is over {MAX_BYTES // 2**20} MB; smaller pictures are accepted.", param,
                          "image_too_large")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("The image is not valid base64.", param, "invalid_image") from None
    return _picture(raw, param)


def picture_from_url(url: str, param: str, allow_remote: bool) -> Picture:
    if url.startswith("data:"):
        header, comma, data = url.partition(",")
        if not comma or not header.endswith(";base64"):
            raise bad_request("An image data URI must look like data:image/png;base64,<data>.", param, "invalid_image")
        return picture_from_base64(data, param)
    if url.startswith(("http://", "https://")):
        if not allow_remote:
            raise bad_request("This server does not fetch image URLs (start it with --allow-image-urls); "
                              "send the picture as a data URI instead.", param, "image_url_not_allowed")
        return _picture(_fetch(url, param), param)
    raise bad_request("image_url.url must be a data: URI or an http(s) URL.", param, "invalid_image")


def _fetch(url: str, param: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
            data = response.read(MAX_BYTES + 1)
    except (OSError, ValueError) as exc:  # URLError, HTTPError and timeouts are OSErrors
        raise bad_request(f"The image could not be fetched from {url}: {exc}.", param, "image_fetch_failed") from None
    if len(data) > MAX_BYTES:
        raise bad_request(f"The image at {url} is over {MAX_BYTES // 2**20} MB.", param, "image_too_large")
    return data


def _picture(raw: bytes, param: str) -> Picture:
    try:
        image = load_image(raw)
    except ImageError as exc:
        raise bad_request(str(exc), param, "invalid_image") from None
    return Picture(image, hashlib.sha256(raw).hexdigest())
