"""The client against a loopback HTTP server that answers like the plate reader: shrinking big images to fit
the request limit (and mapping plates back to the original pixels), retrying 503, clear errors."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from stubs import Stub

from platepipe.components import client


def _noise_png(w: int, h: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def test_small_image_is_sent_unchanged():
    data = _noise_png(64, 48)
    assert client.shrink(data, 1024 * 1024) == (data, 1.0)


def test_big_image_is_shrunk_under_the_limit_and_still_decodes():
    data = _noise_png(1600, 1200)  # ~5.8 MB of incompressible pixels
    limit = 1024 * 1024
    small, scale = client.shrink(data, limit)
    assert len(base64.b64encode(small)) < limit < len(data)
    assert 0 < scale < 1
    img = Image.open(io.BytesIO(small))
    assert img.size == (int(1600 * scale), int(1200 * scale))


@pytest.mark.parametrize("protocol", ["original", "v1", "v2"])
def test_plates_of_a_shrunk_image_come_back_in_original_pixels(protocol):
    data = _noise_png(1600, 1200)
    with Stub() as stub:
        ep = client.Endpoint(stub.url, protocol=protocol, host="plates.example.com", token="t0k")
        plates = client.request(ep, [data], max_bytes=1024 * 1024, timeout=10)[0]
    sent = stub.requests[0]
    assert sent["size"] < 1024 * 1024
    assert sent["path"] == ep.path()
    assert sent["headers"]["Host"] == "plates.example.com"
    assert sent["headers"]["Authorization"] == "Bearer t0k"
    (plate,) = plates
    assert plate["bbox"] == pytest.approx([400, 300, 1200, 900], abs=3)
    assert plate["board_center_p"] == pytest.approx([800, 600], abs=3)
    assert (plate["width"], plate["height"]) == pytest.approx((800, 600), abs=3)
    assert plate["sub_text"] == [1, 2, "A"] and plate["main_text"] == [3, 4, 5, 6]


def test_several_images_share_the_limit():
    images = [_noise_png(800, 600), _noise_png(64, 48)]
    with Stub() as stub:
        answer = client.request(client.Endpoint(stub.url, protocol="v1"), images, max_bytes=1024 * 1024, timeout=10)
    assert stub.requests[0]["size"] < 1024 * 1024
    assert answer[1][0]["bbox"] == [16, 12, 48, 36]
    assert answer[0][0]["bbox"] == pytest.approx([200, 150, 600, 450], abs=3)


def test_503_is_retried_with_growing_backoff():
    waits = []
    with Stub(fail_first=3) as stub:
        plates = client.request(client.Endpoint(stub.url), [_noise_png(64, 48)], timeout=10, backoff=0.1,
                                sleep=waits.append)[0]
    assert len(stub.requests) == 4 and len(plates) == 1
    assert waits == [0.1, 0.2, 0.4]


def test_503_gives_up_after_the_retries():
    with Stub(fail_first=100) as stub:
        with pytest.raises(client.ClientError, match="503.*queue full") as err:
            client.request(client.Endpoint(stub.url), [_noise_png(64, 48)], timeout=10, retries=2,
                           sleep=lambda s: None)
    assert err.value.status == 503 and len(stub.requests) == 3


def test_4xx_is_not_retried_and_names_the_problem():
    with Stub(fail_first=1, fail_code=401) as stub:
        with pytest.raises(client.ClientError, match="401.*--token") as err:
            client.request(client.Endpoint(stub.url), [_noise_png(64, 48)], timeout=10, sleep=lambda s: None)
    assert err.value.status == 401 and len(stub.requests) == 1


def test_unreachable_server_is_a_clear_error():
    with Stub() as stub:
        url = stub.url
    waits = []
    with pytest.raises(client.ClientError, match="cannot reach"):
        client.request(client.Endpoint(url), [_noise_png(64, 48)], timeout=2, retries=2, sleep=waits.append)
    assert len(waits) == 2


def test_original_protocol_takes_one_image():
    with pytest.raises(client.ClientError, match="one image per request"):
        client.body_for(client.Endpoint("http://x"), [b"a", b"b"])
