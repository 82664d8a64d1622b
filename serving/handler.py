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
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.isdir(os.path.join(_HERE, "serving")):  # inside a .mar: use the archive's own copy of the package
    sys.path.insert(0, _HERE)

from serving.images import BadImage, load_image  # noqa: E402

logger = logging.getLogger(__name__)
MAX_IMAGES_PER_REQUEST = int(os.environ.get("PLATEPIPE_MAX_IMAGES_PER_REQUEST", "16"))


class RequestError(ValueError):
    def __init__(self, message: str, code: int = 400):
        super().__init__(message)
        self.code = code


def _b64(value, where: str) -> bytes:
    if isinstance(value, dict) and "b64" in value:
        value = value["b64"]
    if not isinstance(value, str):
        raise RequestError(f"{where}: expected a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{where}: not valid base64") from None


def parse_request(body, content_type: str | None) -> tuple[str, list[bytes]]:
    """(protocol, image bytes) of one request; RequestError for anything malformed."""
    if isinstance(body, (bytes, bytearray)):
        body = bytes(body)
        if not body:
            raise RequestError("empty request body: send an image or JSON")
        looks_json = body[:1] in (b"{", b"[") or (content_type or "").startswith("application/json")
        if not looks_json:
            return "original", [body]
        try:
            body = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError("request body is not valid JSON") from None
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
        _check_count(len(images))
        return "v2", images
    raise RequestError('wrong JSON shape: expected {"data": ...}, {"instances": [...]} or {"inputs": [...]}')


def _check_count(n: int) -> None:
    if n > MAX_IMAGES_PER_REQUEST:
        raise RequestError(f"{n} images in one request; at most {MAX_IMAGES_PER_REQUEST} (split the request)", 413)


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

        from serving.reader import PlateReader

        props = context.system_properties
        model_dir = props.get("model_dir", ".")
        gpu = props.get("gpu_id")
        device = f"cuda:{gpu}" if torch.cuda.is_available() and gpu is not None else "cpu"
        self.model_name = getattr(context, "model_name", None) or self.model_name
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
                protocol, raw = parse_request(body, content_type)
                decoded = []
                for i, blob in enumerate(raw):
                    try:
                        decoded.append(load_image(blob))
                    except BadImage as exc:
                        raise RequestError(f"image {i}: {exc}" if len(raw) > 1 else str(exc)) from None
                parsed.append((protocol, len(images), len(decoded)))
                images += decoded
            except RequestError as exc:
                errors[idx] = exc
                parsed.append(None)
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
