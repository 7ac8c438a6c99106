"""The server's API key: compared in constant time, accepted from headers only, and never put
in a URL. Image URLs carry an expiring HMAC signature instead, so an ``<img>`` can show them."""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode


class ApiKeys:
    """Checks requests against ``api_key`` ("" = no key: everything is open) and signs image
    URLs for ``url_seconds``."""

    def __init__(self, api_key: str, url_seconds: int = 3600):
        self.key = api_key.encode()
        self.url_seconds = url_seconds
        # a key of its own for URL signatures, so a signature says nothing about the API key
        self._signing_key = hashlib.sha256(b"fractalflow image URLs\0" + self.key).digest()

    def accepts(self, *offered: str | None) -> bool:
        """True if there is no key, or one of the ``offered`` values is it."""
        if not self.key:
            return True
        matches = [hmac.compare_digest(self.key, value.encode()) for value in offered if value is not None]
        return any(matches)

    def _signature(self, image_id: str, expires: int) -> str:
        return hmac.new(self._signing_key, f"{image_id}:{expires}".encode(), hashlib.sha256).hexdigest()

    def image_url(self, image_id: str) -> str:
        """The image's path under /v1, signed when the server has a key."""
        path = f"/v1/images/{image_id}.png"
        if not self.key:
            return path
        expires = int(time.time()) + self.url_seconds
        return path + "?" + urlencode({"expires": expires, "signature": self._signature(image_id, expires)})

    def signed(self, image_id: str, expires: int | None, signature: str | None) -> bool:
        """True if ``signature`` is this server's, for this image, and has not expired."""
        if not self.key or expires is None or signature is None or expires < time.time():
            return False
        return hmac.compare_digest(self._signature(image_id, expires).encode(), signature.encode())
