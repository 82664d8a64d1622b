"""A loopback HTTP server that answers like the plate reader (original, KServe v1 and v2 bodies), shared by
the client and smoke test tests. Import it as `from stubs import Stub` (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from PIL import Image


class Stub:
    """Answers each image with `answer(image bytes)` (a list of plates); by default one plate covering its
    middle half, in the received image's pixels. The first `fail_first` requests get `fail_code`."""

    def __init__(self, fail_first: int = 0, fail_code: int = 503, answer: Callable[[bytes], list] | None = None):
        self.fail_first, self.fail_code = fail_first, fail_code
        self.answer = answer or (lambda data: [self.plate(Image.open(io.BytesIO(data)).size)])
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                stub.requests.append({"path": self.path, "size": len(body), "headers": dict(self.headers)})
                if len(stub.requests) <= stub.fail_first:
                    return self._send(stub.fail_code, {"code": stub.fail_code, "message": "queue full"})
                req = json.loads(body)
                if "data" in req:
                    images = [req["data"]]
                elif "instances" in req:
                    images = [i["data"] for i in req["instances"]]
                else:
                    images = req["inputs"][0]["data"]
                answers = [{"response": stub.answer(base64.b64decode(i))} for i in images]
                if "data" in req:
                    return self._send(200, answers[0])
                if "instances" in req:
                    return self._send(200, {"predictions": answers})
                return self._send(200, {"model_name": "pipeline", "outputs": [
                    {"name": "plates", "datatype": "BYTES", "shape": [len(answers)],
                     "data": [json.dumps(a) for a in answers]}]})

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def plate(size):
        w, h = size
        return {"type": "l_board", "board_center_p": [w // 2, h // 2], "width": w // 2, "height": h // 2,
                "bbox": [w / 4, h / 4, 3 * w / 4, 3 * h / 4], "sub_text": [1, 2, "A"], "main_text": [3, 4, 5, 6]}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
