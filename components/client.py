"""Client of the plate reader endpoint (local TorchServe or KServe): original, v1 or v2 protocol.

Images that would make the request larger than the server accepts are shrunk first (re-encoded as JPEG,
scaled down step by step), as the original client kept payloads under 6 MB. 503 answers (TorchServe's
queue full, KServe scaling up) are retried with exponential backoff.
"""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

DEFAULT_MAX_BYTES = 6 * 1024 * 1024
RETRY_CODES = (502, 503, 504)


class ClientError(RuntimeError):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass
class Endpoint:
    url: str                  # base URL, e.g. http://127.0.0.1:8085
    model: str = "pipeline"
    protocol: str = "original"  # original | v1 | v2
    token: str | None = None
    host: str | None = None   # Host header (KServe behind an ingress gateway)

    def path(self) -> str:
        return {"original": f"/predictions/{self.model}", "v1": f"/v1/models/{self.model}:predict",
                "v2": f"/v2/models/{self.model}/infer"}[self.protocol]


def shrink(data: bytes, max_bytes: int) -> tuple[bytes, float]:
    """The image re-encoded (and scaled down as needed) so that its base64 form fits in max_bytes, and the
    scale applied (1.0 when it already fit)."""
    from PIL import Image, ImageOps

    budget = int(max_bytes * 3 / 4) - 1024  # base64 grows data by 4/3; leave room for the JSON around it
    if len(data) <= budget:
        return data, 1.0
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    quality, scale = 90, 1.0
    while True:
        size = (max(1, int(img.width * scale)), max(1, int(img.height * scale)))
        out = io.BytesIO()
        img.resize(size, Image.LANCZOS).save(out, "JPEG", quality=quality)
        if out.tell() <= budget or size == (1, 1):
            return out.getvalue(), scale
        if quality > 75:
            quality -= 10
        else:
            scale *= 0.8


def body_for(endpoint: Endpoint, images: list[bytes]) -> bytes:
    encoded = [base64.b64encode(i).decode() for i in images]
    if endpoint.protocol == "original":
        if len(encoded) != 1:
            raise ClientError("the original protocol takes one image per request: use v1 or v2 for several")
        return json.dumps({"data": encoded[0]}).encode()
    if endpoint.protocol == "v1":
        return json.dumps({"instances": [{"data": e} for e in encoded]}).encode()
    return json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [len(encoded)],
                                   "data": encoded}]}).encode()


def plates_of(endpoint: Endpoint, answer: dict) -> list[list[dict]]:
    """The plates of each image, whatever the protocol's envelope."""
    if endpoint.protocol == "original":
        return [answer["response"]]
    if endpoint.protocol == "v1":
        return [p["response"] for p in answer["predictions"]]
    out = answer["outputs"][0]["data"]
    return [json.loads(d)["response"] for d in out]


def explain_status(code: int, message: str) -> str:
    """A server's error answer, with what to do where the answer alone does not say it."""
    message = message.strip()[:300]
    if code == 401 or (code == 400 and "token" in message.lower()):  # TorchServe answers a wrong token with 400
        return f"{message or 'unauthorised'} (token auth is on: pass --token or --token-file)"
    if code == 413 and not message:  # TorchServe's own refusal, before our handler, has no body
        return ("request body too large for the server (TorchServe's max_request_size, serving.max_request_size_mb): "
                "send fewer or smaller images")
    return message or "(no message)"


def post(endpoint: Endpoint, body: bytes, timeout: float = 60, retries: int = 5, backoff: float = 0.5,
         sleep=time.sleep) -> dict:
    headers = {"Content-Type": "application/json"}
    if endpoint.token:
        headers["Authorization"] = f"Bearer {endpoint.token}"
    if endpoint.host:
        headers["Host"] = endpoint.host
    url = endpoint.url.rstrip("/") + endpoint.path()
    for attempt in range(retries + 1):
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            if exc.code in RETRY_CODES and attempt < retries:
                sleep(backoff * 2 ** attempt)
                continue
            try:
                message = json.loads(text).get("error") or json.loads(text).get("message") or text
            except (json.JSONDecodeError, AttributeError):
                message = text
            raise ClientError(f"{url} answered {exc.code}: {explain_status(exc.code, str(message))}", exc.code) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            if attempt < retries:
                sleep(backoff * 2 ** attempt)
                continue
            raise ClientError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
    raise AssertionError("unreachable")


def request(endpoint: Endpoint, images: list[bytes], max_bytes: int = DEFAULT_MAX_BYTES, **kwargs) -> list[list[dict]]:
    """Send images (raw file bytes) and return the plates of each."""
    per_image = max_bytes // max(1, len(images))
    shrunk = [shrink(i, per_image) for i in images]
    answer = plates_of(endpoint, post(endpoint, body_for(endpoint, [data for data, _ in shrunk]), **kwargs))
    return [[_rescale(p, 1 / scale) for p in plates] if scale != 1.0 else plates
            for plates, (_, scale) in zip(answer, shrunk)]


def _rescale(plate: dict, factor: float) -> dict:
    """A plate read on a shrunk image, in the original image's pixels."""
    out = dict(plate)
    out["bbox"] = [round(v * factor, 1) for v in plate["bbox"]]
    out["board_center_p"] = [round(v * factor) for v in plate["board_center_p"]]
    out["width"], out["height"] = round(plate["width"] * factor), round(plate["height"] * factor)
    return out
