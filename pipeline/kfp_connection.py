"""The connection to a Kubeflow Pipelines (KFP 2.x) API server: host, token, namespace, health check, request
limits, and every server error turned into one KfpError sentence that says what to do.

Authentication: a bearer token (`token=` or KF_PIPELINES_TOKEN, e.g. a Kubernetes service-account token on
Kubeflow 1.9+), else whatever kfp.Client finds itself: the in-cluster service account, the kube config
(through the API server's proxy to ml-pipeline), the IAP variables KF_PIPELINES_IAP_OAUTH2_CLIENT_ID etc.,
and ~/.config/kfp/context.json (namespace, client_authentication_cookie).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import socket
import ssl
import urllib.error
import urllib.request
import warnings
from typing import Any, Callable, Optional


ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"
TOKEN_ENV = "KF_PIPELINES_TOKEN"
UI_ENV = "KF_PIPELINES_UI_ENDPOINT"
PORT_FORWARD = "kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80"
REQUEST_TIMEOUT_S = 120.0  # one API request (an upload included); a server that stops answering is an error


class KfpError(RuntimeError):
    """A KFP call failed; the message says why and what to do."""


@dataclasses.dataclass
class Kfp:
    """A connected kfp.Client and what we know about where it points."""

    client: Any                       # kfp.Client
    host: Optional[str]               # API base URL; None when kfp.Client found it (in-cluster, kube config)
    namespace: Optional[str] = None   # Kubeflow profile namespace (multi-user); None on single-user KFP
    ui: Optional[str] = None          # UI base URL for links
    multi_user: Optional[bool] = None

    @property
    def where(self) -> str:
        return self.host or "the KFP API"

    def link(self, fragment: str) -> str:
        return f"{self.ui.rstrip('/')}/#/{fragment}" if self.ui else f"(Kubeflow UI) #/{fragment}"


def normalise_host(host: str) -> str:
    """`localhost:8080` -> http://localhost:8080 (a port-forward); other hosts without a scheme get https://."""
    host = host.strip().rstrip("/")
    if not re.match(r"^https?://", host):
        local = re.match(r"^(localhost|127\.\d+\.\d+\.\d+|\[::1\])(:\d+)?(/|$)", host)
        host = ("http://" if local else "https://") + host
    return host


def connect(host: Optional[str] = None, namespace: Optional[str] = None, token: Optional[str] = None, *,
            timeout_s: float = 15.0, request_timeout_s: float = REQUEST_TIMEOUT_S) -> Kfp:
    """A kfp.Client for HOST (else KF_PIPELINES_ENDPOINT, else the in-cluster service or the kube config),
    with bearer TOKEN (else KF_PIPELINES_TOKEN) and NAMESPACE (multi-user Kubeflow). The server is asked
    for /apis/v2beta1/healthz first, so that a wrong host or missing credentials fail at once, clearly; every
    later request gives up after request_timeout_s."""
    host = host or os.environ.get(ENDPOINT_ENV) or None
    token = token or os.environ.get(TOKEN_ENV) or None
    health: dict = {}
    if host:
        host = normalise_host(host)
        health = _healthz(host, token, timeout_s)
    elif not (os.environ.get("KUBERNETES_SERVICE_HOST") or _kubeconfig_exists()):
        raise KfpError(f"no KFP host: pass --host URL, set kfp.host, or export {ENDPOINT_ENV} "
                       f"(e.g. http://localhost:8080 after `{PORT_FORWARD}`)")
    import kfp
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later"
        try:
            # kfp.Client's namespace is where KFP itself runs (in-cluster DNS name, kube proxy path): leave it
            # at "kubeflow"; the profile namespace goes with each call that takes one.
            client = kfp.Client(host=host, existing_token=token)
        except TimeoutError as exc:  # kfp.Client's own healthz, tried 5 times
            raise KfpError(f"{host or 'the KFP API'} did not answer /apis/v2beta1/healthz ({exc}): check the host "
                           f"and its credentials (--token, --namespace)") from None
        except Exception as exc:  # kube config, TLS: all about reaching the server
            raise _translate(exc, host, "connecting") from None
    _limit_requests(client, timeout_s, request_timeout_s)
    namespace = namespace or client.get_user_namespace() or None
    multi_user = health.get("multi_user")
    if multi_user and not namespace:
        raise KfpError(f"{host} is a multi-user Kubeflow: pass --namespace with your profile namespace "
                       f"(e.g. kubeflow-user-example-com)")
    ui = os.environ.get(UI_ENV) or host
    return Kfp(client=client, host=host, namespace=namespace, ui=normalise_host(ui) if ui else None,
               multi_user=multi_user)


def _limit_requests(client: Any, connect_s: float, read_s: float) -> None:
    """kfp.Client sends every request with no timeout: a server that accepts and never answers would hang
    the command. Give each request of its REST client (shared by all its APIs) a connect and read limit."""
    rest = client._run_api.api_client.rest_client
    original = rest.request

    def request(*args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return original(*args, _request_timeout=_request_timeout or (connect_s, read_s), **kwargs)

    rest.request = request


def _kubeconfig_exists() -> bool:
    paths = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    return any(p and os.path.isfile(p) for p in paths.split(os.pathsep))


def _auth_hint() -> str:
    return (f"authenticate with --token TOKEN or {TOKEN_ENV} (on Kubeflow, e.g. `kubectl create token "
            f"default-editor -n YOUR_NAMESPACE`) and pass your profile namespace with --namespace")


def _unreachable(host: Optional[str], why: str) -> KfpError:
    return KfpError(f"cannot reach the KFP API at {host or '(kube config)'} ({why}): check --host, kfp.host or "
                    f"{ENDPOINT_ENV}; without an ingress, run `{PORT_FORWARD}` and use --host http://localhost:8080")


def _healthz(host: str, token: Optional[str], timeout_s: float) -> dict:
    url = f"{host}/apis/v2beta1/healthz"
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as resp:
            body, ctype = resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        message = _message_of(exc.read())
        if exc.code in (401, 403):
            raise KfpError(f"{host} refused the request ({exc.code} {exc.reason}"
                           f"{': ' + message if message else ''}): {_auth_hint()}") from None
        if exc.code == 404:
            raise KfpError(f"{url} answered 404: {host} is not a KFP 2.x API; point --host at the "
                           f"ml-pipeline-ui service or at https://YOUR-KUBEFLOW/pipeline") from None
        raise KfpError(f"{url} answered {exc.code} {exc.reason}{': ' + message if message else ''}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLError):
            raise KfpError(f"TLS to {host} failed ({reason}): use the right https:// URL, or http:// for a "
                           f"port-forward") from None
        raise _unreachable(host, _why(reason)) from None
    except (TimeoutError, socket.timeout):
        raise _unreachable(host, f"no answer within {timeout_s:g} s") from None
    except (OSError, ValueError) as exc:
        raise _unreachable(host, _why(exc)) from None
    try:
        health = json.loads(body)
        if not isinstance(health, dict):
            raise ValueError
    except ValueError:
        page = "a web page (a login page?)" if "html" in ctype or body.lstrip()[:1] == b"<" else "something else"
        raise KfpError(f"{host} answered with {page} instead of the KFP API: {_auth_hint()}") from None
    return health


def _why(reason: Any) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return "unknown host name"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "timed out"
    text = str(getattr(reason, "reason", None) or reason)
    if "refused" in text.lower():
        return "connection refused"
    return text.split("\n")[0][:200]


def _message_of(body: Any) -> str:
    """The server's own words from an error body: grpc-gateway {"error", "code", "message"} or the upload
    handler's {"error_message", "error_details"}; plain text as it is."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not body:
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        return "" if body.lstrip().startswith("<") else body.strip()[:300]
    if isinstance(data, dict):
        for key in ("message", "error_message", "error", "error_details"):
            if data.get(key):
                return str(data[key]).strip()[:300]
    return ""


def _translate(exc: BaseException, host: Optional[str], doing: str, conflict: str = "") -> Exception:
    """One clear KfpError for whatever kfp.Client raised."""
    import kfp_server_api
    import urllib3
    if isinstance(exc, KfpError):
        return exc
    if isinstance(exc, kfp_server_api.ApiException):
        status, message = exc.status, _message_of(getattr(exc, "body", None))
        where = host or "the KFP API"
        if status in (401, 403):
            return KfpError(f"{doing}: {where} refused the request ({status} {exc.reason}"
                            f"{': ' + message if message else ''}): {_auth_hint()}")
        if not status:  # TLS failure or a request the client could not build
            return KfpError(f"{doing}: cannot talk to {where}: {str(exc.reason).splitlines()[0]}")
        if status == 409 or "already exist" in message.lower():
            return KfpError(f"{doing}: {message or 'it already exists'}{'; ' + conflict if conflict else ''}")
        return KfpError(f"{doing}: {where} answered {status} {exc.reason}{': ' + message if message else ''}")
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return _unreachable(host, _why(getattr(exc, "reason", None) or exc))
    if isinstance(exc, (OSError, TimeoutError)):
        return _unreachable(host, _why(exc))
    return KfpError(f"{doing}: {exc}")


def _call(kfp: Kfp, doing: str, fn: Callable, *args: Any, conflict: str = "", **kwargs: Any) -> Any:
    """Call a kfp.Client method quietly (it prints links of its own) with its errors translated."""
    import kfp_server_api
    import urllib3
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return fn(*args, **kwargs)
    except (kfp_server_api.ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise _translate(exc, kfp.host, doing, conflict) from None


def _name_filter(name: str) -> str:
    """A v2beta1 filter on display_name, written as kfp.Client writes its own."""
    return json.dumps({"predicates": [{"operation": 1, "key": "display_name", "stringValue": name}]})
