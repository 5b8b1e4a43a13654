"""A minimal OpenID Connect identity provider for the tests: the client-credentials grant
at POST /token and the signing keys at GET /jwks.json, as a real provider publishes them.

    python idp.py <port> <client id> <client secret>

Tokens are RS256 JWTs (`iss` = this provider's URL, `sub` = the client id, `aud` =
mlops-kafka, `iat`, `exp` in an hour, `scope`), signed with an RSA key made at start; the
secured Kafka broker validates them against the JWKS.
"""

import base64
import json
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

PORT, CLIENT_ID, CLIENT_SECRET = int(sys.argv[1]), sys.argv[2], sys.argv[3]
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KID = "test-key-1"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint(n: int) -> str:
    return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


PUBLIC = KEY.public_key().public_numbers()
JWKS = {"keys": [{"kty": "RSA", "kid": KID, "use": "sig", "alg": "RS256",
                  "n": uint(PUBLIC.n), "e": uint(PUBLIC.e)}]}


def token(subject: str, scope: str) -> str:
    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT", "kid": KID}
    claims = {"iss": f"http://127.0.0.1:{PORT}", "sub": subject, "aud": "mlops-kafka",
              "iat": now, "exp": now + 3600, "scope": scope}
    signing_input = ".".join(
        b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims))
    signature = KEY.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url(signature)


class Provider(BaseHTTPRequestHandler):
    def answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (the standard library's name)
        if self.path == "/jwks.json":
            self.answer(200, JWKS)
        else:
            self.answer(404, {"error": "not_found"})

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("content-length", "0"))
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        client_id = form.get("client_id", [None])[0]
        client_secret = form.get("client_secret", [None])[0]
        authorization = self.headers.get("authorization", "")
        if authorization.lower().startswith("basic "):
            decoded = base64.b64decode(authorization[6:]).decode()
            client_id, _, client_secret = decoded.partition(":")
            client_id = urllib.parse.unquote(client_id)
            client_secret = urllib.parse.unquote(client_secret)
        if self.path != "/token" or form.get("grant_type") != ["client_credentials"]:
            self.answer(400, {"error": "unsupported_grant_type"})
        elif (client_id, client_secret) != (CLIENT_ID, CLIENT_SECRET):
            self.answer(401, {"error": "invalid_client"})
        else:
            scope = form.get("scope", [""])[0]
            self.answer(200, {"access_token": token(client_id, scope),
                              "token_type": "bearer", "expires_in": 3600})

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Provider).serve_forever()
