"""TorchServe handler of the plate reader.

Builds the model from pipeline.pth alone (the config travels inside it), on the GPU TorchServe assigns or
the CPU. One batch from TorchServe may mix, request by request:

  original  {"data": "<base64 image>"}                      -> {"response": [plates]}
  raw       image bytes (image/*, application/octet-stream) -> {"response": [plates]}
  KServe v1 {"instances": [{"data"|"b64": "<base64>"}, ...]} -> {"predictions": [{"response": [plates]}, ...]}
  KServe v2 {"inputs": [{"name", "datatype": "BYTES", "shape": [n], "data": ["<base64>", ...]}]}
            -> {"model_name", "id", "outputs": [{"name": "plates", "datatype": "BYTES", "shape": [n],
                                                 "data": ["{\"response\": [...]}", ...]}]}

Every image of every request in the batch goes through the model together. A bad request gets its own
4xx JSON error ({"error": ..., "code": ...}); the rest of its batch is answered and the worker lives on.

KServe: its runtime sets TS_SERVICE_ENVELOPE=kserve|kservev2, and TorchServe's stock envelopes answer only
the first request of a batch (503 "number of batch response mismatched" under load). This handler speaks
v1 and v2 itself, per request; the config.properties we write leaves enable_envvars_config off, so the
env var cannot switch a stock envelope on.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import time
from dataclasses import dataclass

from .images import BadImage, decoded_bytes, image_header, load_image

logger = logging.getLogger(__name__)
MAX_JSON_DEPTH = 16        # a v2 request is 4 levels deep
MAX_NUMBER_DIGITS = 32     # requests carry base64 strings; a number is never long
LIMITS_FILE = "limits.json"  # in the .mar (platepipe archive, from the serving section)


@dataclass
class Limits:
    """What one request may ask of the worker (serving.max_images_per_request, max_request_pixels,
    max_request_decoded_mb); beyond them the request is answered 413 and nothing of it is decoded."""

    images: int = 16
    pixels: int = 64_000_000
    decoded_mb: int = 512

    @classmethod
    def from_file(cls, path: str) -> "Limits":
        if not os.path.isfile(path):
            return cls()
        with open(path) as f:
            values = json.load(f)
        return cls(**{k: int(values[k]) for k in ("images", "pixels", "decoded_mb") if k in values})

    def check(self, sizes: list[tuple[int, int, str]]) -> None:
        pixels = sum(w * h for w, h, _ in sizes)
        if pixels > self.pixels:
            raise RequestError(f"the request's {len(sizes)} image(s) hold {pixels:,} pixels; at most {self.pixels:,} "
                               f"per request (serving.max_request_pixels): send fewer or smaller images", 413)
        decoded = sum(decoded_bytes(*size) for size in sizes)
        if decoded > self.decoded_mb * 2**20:
            raise RequestError(f"the request's {len(sizes)} image(s) need {decoded / 2**20:,.0f} MB decoded; at most "
                               f"{self.decoded_mb:,} MB per request (serving.max_request_decoded_mb): send fewer "
                               f"or smaller images", 413)


LIMITS = Limits()


class RequestError(ValueError):
    def __init__(self, message: str, code: int = 400):
        super().__init__(message)
        self.code = code


_WHITESPACE = str.maketrans("", "", " \t\r\n")


def _b64(value, where: str) -> bytes:
    if isinstance(value, dict) and "b64" in value:
        value = value["b64"]
    if not isinstance(value, str):
        raise RequestError(f"{where}: expected a base64 string, got {type(value).__name__}")
    try:  # line breaks and spaces are allowed (the `base64` tool wraps its output at 76 characters)
        return base64.b64decode(value.translate(_WHITESPACE), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{where}: not valid base64") from None


def _number(text: str) -> int | float:
    if len(text) > MAX_NUMBER_DIGITS:
        raise RequestError(f"a JSON number of {len(text):,} characters; at most {MAX_NUMBER_DIGITS} "
                           f"(requests carry base64 strings, not numbers)")
    return float(text) if any(c in text for c in ".eE") else int(text)


def _constant(name: str):
    raise RequestError(f"{name} is not JSON (send numbers as numbers, images as base64 strings)")


def loads(text: bytes | str):
    """JSON with bounds: numbers of at most MAX_NUMBER_DIGITS characters, nesting at most MAX_JSON_DEPTH deep
    (Python's recursion limit bounds the parser first), no NaN/Infinity; RequestError otherwise."""
    try:
        value = json.loads(text, parse_int=_number, parse_float=_number, parse_constant=_constant)
    except RecursionError:
        raise RequestError(f"JSON nested too deeply (at most {MAX_JSON_DEPTH} levels)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RequestError("request body is not valid JSON") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise RequestError(f"JSON nested too deeply (at most {MAX_JSON_DEPTH} levels)")
    return value


def _depth(value) -> int:
    """Nesting depth of a parsed JSON value (stops counting past MAX_JSON_DEPTH)."""
    depth, level = 0, [value]
    while level and depth <= MAX_JSON_DEPTH:
        depth += 1
        level = [v for item in level for v in (item.values() if isinstance(item, dict) else
                                               item if isinstance(item, list) else ())
                 if isinstance(v, (dict, list))]
    return depth


def parse_request(body, content_type: str | None) -> tuple[str, list[bytes]]:
    """(protocol, image bytes) of one request; RequestError for anything malformed."""
    if isinstance(body, str):  # TorchServe decodes text/* bodies unless TS_DECODE_INPUT_REQUEST=false
        body = body.encode()
    if isinstance(body, (bytes, bytearray)):
        body = bytes(body)
        if not body:
            raise RequestError("empty request body: send an image or JSON")
        looks_json = body.lstrip()[:1] in (b"{", b"[") or (content_type or "").startswith("application/json")
        if not looks_json and (content_type or "").startswith("text/"):
            raise RequestError(f"a text body ({content_type}) that is not JSON: send JSON (Content-Type: "
                               f"application/json) or the image itself (image/jpeg, image/png)", 415)
        if not looks_json:
            return "original", [body]
        body = loads(body)
    if isinstance(body, str):
        raise RequestError("request body is a JSON string: send {\"data\": \"<base64 image>\"}")
    if not isinstance(body, dict):
        raise RequestError('wrong JSON shape: expected {"data": ...}, {"instances": [...]} or {"inputs": [...]}')
    if "data" in body:
        return "original", [_b64(body["data"], "data")]
    if "instances" in body:
        items = body["instances"]
        if not isinstance(items, list) or not items:
            raise RequestError("instances: expected a non-empty list")
        _check_count(len(items))
        images = []
        for i, item in enumerate(items):
            if isinstance(item, dict):
                key = next((k for k in ("data", "b64", "image_bytes") if k in item), None)
                if key is None:
                    raise RequestError(f"instances[{i}]: expected {{\"data\": \"<base64>\"}} or {{\"b64\": ...}}")
                images.append(_b64(item[key], f"instances[{i}].{key}"))
            else:
                images.append(_b64(item, f"instances[{i}]"))
        return "v1", images
    if "inputs" in body:
        inputs = body["inputs"]
        if not isinstance(inputs, list) or not inputs:
            raise RequestError("inputs: expected a non-empty list")
        images = []
        for i, item in enumerate(inputs):
            if not isinstance(item, dict) or item.get("datatype", "BYTES") != "BYTES" or not isinstance(item.get("data"), list):
                raise RequestError(f"inputs[{i}]: expected {{\"datatype\": \"BYTES\", \"data\": [\"<base64>\", ...]}}")
            images += [_b64(v, f"inputs[{i}].data[{j}]") for j, v in enumerate(item["data"])]
        if not images:
            raise RequestError("inputs: no images (every data list is empty)")
        _check_count(len(images))
        return "v2", images
    raise RequestError('wrong JSON shape: expected {"data": ...}, {"instances": [...]} or {"inputs": [...]}')


def _check_count(n: int) -> None:
    if n > LIMITS.images:
        raise RequestError(f"{n} images in one request; at most {LIMITS.images} (serving.max_images_per_request): "
                           f"split the request", 413)


def read_request(body, content_type: str | None) -> tuple[str, list]:
    """(protocol, decoded BGR images) of one request, within LIMITS; RequestError for anything wrong with it."""
    protocol, raw = parse_request(body, content_type)

    def each(read) -> list:
        out = []
        for i, blob in enumerate(raw):
            try:
                out.append(read(blob))
            except BadImage as exc:
                raise RequestError(f"image {i}: {exc}" if len(raw) > 1 else str(exc)) from None
        return out

    LIMITS.check(each(image_header))  # from the headers: nothing is decoded beyond the budget
    return protocol, each(load_image)


def _refusal(idx: int, exc: Exception) -> RequestError:
    """The answer to a request that could not be read: its own RequestError, else a 413 for memory, else 400."""
    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, MemoryError):
        return RequestError("the request's images do not fit in the worker's memory: send fewer or smaller images",
                            413)
    logger.exception("request %d of the batch could not be read", idx)
    return RequestError(f"the request could not be read ({type(exc).__name__}: {str(exc)[:200]})")


def format_response(protocol: str, results: list[list[dict]], model_name: str, request_id: str | None):
    if protocol == "original":
        return {"response": results[0]}
    if protocol == "v1":
        return {"predictions": [{"response": plates} for plates in results]}
    return {"model_name": model_name, "id": request_id or "",
            "outputs": [{"name": "plates", "datatype": "BYTES", "shape": [len(results)],
                         "data": [json.dumps({"response": plates}) for plates in results]}]}


class PlateHandler:
    def __init__(self):
        self.reader = None
        self.model_name = "pipeline"

    def initialize(self, context) -> None:
        import torch

        from .reader import PlateReader

        props = context.system_properties
        model_dir = props.get("model_dir", ".")
        gpu = props.get("gpu_id")
        device = f"cuda:{gpu}" if torch.cuda.is_available() and gpu is not None else "cpu"
        self.model_name = getattr(context, "model_name", None) or self.model_name
        global LIMITS
        LIMITS = Limits.from_file(os.path.join(model_dir, LIMITS_FILE))
        started = time.monotonic()
        self.reader = PlateReader.from_file(os.path.join(model_dir, "pipeline.pth"), device=device)
        logger.info("plate reader on %s ready in %.1f s", device, time.monotonic() - started)

    def handle(self, data: list, context) -> list:
        parsed, images, errors = [], [], {}
        for idx, request in enumerate(data):
            body = request.get("body") if request.get("body") is not None else request.get("data")
            try:
                content_type = context.get_request_header(idx, "Content-Type") if context else None
            except (AttributeError, KeyError, IndexError, TypeError):
                content_type = None
            try:
                protocol, decoded = read_request(body, content_type)
            except Exception as exc:  # whatever reading one request raises stays that request's answer
                errors[idx] = _refusal(idx, exc)
                parsed.append(None)
                continue
            parsed.append((protocol, len(images), len(decoded)))
            images += decoded
        logger.info("batch of %d request(s), %d image(s), %d refused", len(data), len(images), len(errors))
        results = self.reader.predict(images) if images else []
        responses = []
        for idx, item in enumerate(parsed):
            if item is None:
                exc = errors[idx]
                if context is not None:
                    context.set_response_status(exc.code, str(exc), idx)
                responses.append({"error": str(exc), "code": exc.code})
                continue
            protocol, start, count = item
            plates = [r.plates for r in results[start:start + count]]
            request_id = context.get_request_id(idx) if context is not None else None
            responses.append(format_response(protocol, plates, self.model_name, request_id))
        return responses


_service = PlateHandler()


def handle(data, context):
    """TorchServe's entry point."""
    if _service.reader is None:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
