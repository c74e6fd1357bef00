"""Registering a compute client with a Dendro 0.6 service, as dendro 0.6.22's `register_compute_client` does:
the user opens the service's registration page, registers there (signed in), and the page shows a code, base64
of `{computeClientName, computeClientId, computeClientPrivateKey}`."""

from __future__ import annotations

import base64
import binascii
import json
from urllib.parse import quote

from ..models import ProtocolError, parse
from .models import RegistrationCode


def registration_page(api_url: str, service_name: str, compute_client_name: str) -> str:
    return f"{api_url.rstrip('/')}/register_compute_client/{quote(service_name)}/{quote(compute_client_name)}"


def read_registration_code(text: str) -> RegistrationCode:
    """The code as the page shows it (padding optional, as the original accepts it)."""
    text = text.strip()
    try:
        document = json.loads(base64.b64decode(text + "=" * (-len(text) % 4), validate=True).decode())
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ProtocolError("malformed registration code: not base64 of JSON (paste the code the page shows)") from None
    return parse(RegistrationCode, document, "registration code")
