"""``fusionserve healthcheck``: the container's own probe, whatever the transport.

Kubernetes ``httpGet`` probes and a plain ``urllib`` call break as soon as
the server speaks TLS, and cannot present a client certificate under mTLS.
This probe runs inside the container (an ``exec`` probe or a compose
healthcheck), reads the same ``FUSIONSERVE_*`` settings as the server and
asks ``/health/ready`` (or ``/health/live``) on the loopback address: over
HTTPS when TLS is on, with ``probe_cert_file``/``probe_key_file`` as its
client certificate when client certificates are required. It does not verify
the server's certificate: it only ever talks to its own container.
"""

from __future__ import annotations

import ssl

import httpx

from fusionserve.service.config import Settings


def probe_url(settings: Settings, *, live: bool = False) -> str:
    host = settings.host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if settings.tls_cert_file else "http"
    return f"{scheme}://{host}:{settings.http_port}/health/{'live' if live else 'ready'}"


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # loopback to its own container (module docstring)
    if settings.probe_cert_file is not None:
        context.load_cert_chain(settings.probe_cert_file, settings.probe_key_file)
    return context


def probe(settings: Settings, *, live: bool = False, timeout_s: float = 4.0) -> tuple[bool, str]:
    """(ok, what was seen): ok when the endpoint answers 200."""
    url = probe_url(settings, live=live)
    verify: ssl.SSLContext | bool = _ssl_context(settings) if settings.tls_cert_file else True
    try:
        answer = httpx.get(url, timeout=timeout_s, verify=verify)
    except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
        hint = ""
        if settings.tls_client_ca_file is not None and settings.probe_cert_file is None:
            hint = " (client certificates are required: set FUSIONSERVE_PROBE_CERT_FILE/_KEY_FILE)"
        return False, f"{url}: {type(exc).__name__}: {exc}{hint}"
    return answer.status_code == 200, f"{url}: {answer.status_code} {answer.text[:200]}"
