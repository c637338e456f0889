"""A real OAuth 2.0 authorization server (Authlib on Flask) and the API it protects, for the tests of `docket connect` and the gateway's upstream tokens.

Authorization code with PKCE (S256 required), refresh tokens rotated on every use
(the old one revoked), RFC 7009 revocation, confidential client with HTTP Basic auth.
Every token it issues carries the canary marker given on the command line, so the
tests can show that no upstream secret reaches the ledger, its exports or its logs.

The browser's part is played by the test: GET /authorize signs in as --user and
redirects at once. Test hooks under /__: revoke everything of a user (the user revoking
the app at the provider), an outage of the token endpoint, and what was seen.

Prints its port on stdout, then serves on 127.0.0.1 until killed.
"""

import os

os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"

import argparse
import logging
import secrets
import socket
import sys
import threading
import time

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from flask import Flask, jsonify, request

parser = argparse.ArgumentParser()
parser.add_argument("--client-id", required=True)
parser.add_argument("--client-secret", required=True)
parser.add_argument("--user", required=True, help="who signs in at /authorize")
parser.add_argument("--canary", required=True, help="marker carried by every token")
parser.add_argument("--expires-in", type=int, default=3600)
args = parser.parse_args()

lock = threading.Lock()
codes = {}  # code -> AuthCode
tokens = []  # every Token issued
stats = {"authorize": 0, "code_exchanges": 0, "refreshes": 0, "revocations": 0, "api_calls": 0, "outage_refusals": 0}
outage = {"on": False}


class User:
    def __init__(self, name):
        self.name = name

    def get_user_id(self):
        return self.name


class Client:
    client_id = args.client_id
    client_secret = args.client_secret

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return None

    def get_allowed_scope(self, scope):
        return scope

    def check_redirect_uri(self, redirect_uri):
        # A loopback redirect on any port (RFC 8252 section 7.3).
        return redirect_uri.startswith("http://127.0.0.1:") or redirect_uri.startswith("http://[::1]:")

    def check_client_secret(self, client_secret):
        return secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method, endpoint):
        return method == "client_secret_basic"

    def check_response_type(self, response_type):
        return response_type == "code"

    def check_grant_type(self, grant_type):
        return grant_type in ("authorization_code", "refresh_token")


CLIENT = Client()


class AuthCode:
    def __init__(self, code, user, redirect_uri, scope, challenge, method):
        self.code = code
        self.user = user
        self.redirect_uri = redirect_uri
        self.scope = scope
        self.code_challenge = challenge
        self.code_challenge_method = method
        self.nonce = None
        self.auth_time = time.time()

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope

    def get_nonce(self):
        return None

    def get_auth_time(self):
        return self.auth_time


class Token:
    def __init__(self, data, user):
        self.access_token = data["access_token"]
        self.refresh_token = data.get("refresh_token")
        self.scope = data.get("scope", "")
        self.expires_at = time.time() + data.get("expires_in", args.expires_in)
        self.user = user
        self.revoked = False

    def check_client(self, client):
        return client.client_id == CLIENT.client_id

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return int(self.expires_at - time.time())

    def is_revoked(self):
        return self.revoked

    def is_expired(self):
        return time.time() >= self.expires_at

    def get_user(self):
        return self.user

    def get_client_id(self):
        return CLIENT.client_id


def query_client(client_id):
    return CLIENT if client_id == CLIENT.client_id else None


def save_token(data, req):
    with lock:
        tokens.append(Token(data, req.user))


def token_value(kind):
    return lambda *a, **k: f"{args.canary}-{kind}-{secrets.token_urlsafe(24)}"


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic"]

    def save_authorization_code(self, code, req):
        with lock:
            codes[code] = AuthCode(
                code,
                req.user,
                req.payload.redirect_uri,
                req.payload.scope,
                req.payload.data.get("code_challenge"),
                req.payload.data.get("code_challenge_method"),
            )

    def query_authorization_code(self, code, client):
        with lock:
            return codes.get(code)

    def delete_authorization_code(self, authorization_code):
        with lock:
            codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code):
        with lock:
            stats["code_exchanges"] += 1
        return authorization_code.user


class RefreshTokenGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic"]
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token):
        with lock:
            for t in tokens:
                if t.refresh_token == refresh_token and not t.revoked:
                    return t
        return None

    def authenticate_user(self, credential):
        with lock:
            stats["refreshes"] += 1
        return credential.user

    def revoke_old_credential(self, credential):
        # Rotation: the refresh token just used is spent, with its access token.
        with lock:
            credential.revoked = True


class Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = ["client_secret_basic"]

    def query_token(self, token_string, token_type_hint):
        with lock:
            for t in tokens:
                if token_string in (t.access_token, t.refresh_token):
                    return t
        return None

    def revoke_token(self, token, req):
        with lock:
            stats["revocations"] += 1
            token.revoked = True


app = Flask(__name__)
app.config["OAUTH2_ACCESS_TOKEN_GENERATOR"] = token_value("at")
app.config["OAUTH2_REFRESH_TOKEN_GENERATOR"] = token_value("rt")
app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {
    "authorization_code": args.expires_in,
    "refresh_token": args.expires_in,
}
server = AuthorizationServer(app, query_client=query_client, save_token=save_token)
server.register_grant(AuthorizationCodeGrant, [CodeChallenge(required=True)])
server.register_grant(RefreshTokenGrant)
server.register_endpoint(Revocation)


@app.route("/authorize")
def authorize():
    with lock:
        stats["authorize"] += 1
    # The user signs in and consents at once: the test plays the browser.
    return server.create_authorization_response(grant_user=User(args.user))


@app.route("/token", methods=["POST"])
def issue_token():
    if outage["on"]:
        with lock:
            stats["outage_refusals"] += 1
        return "the provider is down", 503
    return server.create_token_response()


@app.route("/revoke", methods=["POST"])
def revoke():
    return server.create_endpoint_response(Revocation.ENDPOINT_NAME)


def bearer_token():
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Bearer "):
        return None
    value = auth[len("Bearer "):]
    with lock:
        for t in tokens:
            if t.access_token == value:
                return t
    return None


@app.route("/api/<path:rest>", methods=["GET", "POST"])
def api(rest):
    """The protected API: it answers only to a live access token, and says whose."""
    with lock:
        stats["api_calls"] += 1
    t = bearer_token()
    if t is None or t.revoked or t.is_expired():
        why = "no token" if t is None else ("revoked" if t.revoked else "expired")
        return jsonify(error="invalid_token", why=why), 401
    with lock:
        index = tokens.index(t)
    return jsonify(user=t.user.name, path=rest, token_index=index, scope=t.scope)


@app.route("/__revoke_user", methods=["POST"])
def revoke_user():
    """The user revokes this app at the provider: every grant of theirs ends."""
    name = request.args["user"]
    with lock:
        for t in tokens:
            if t.user.name == name:
                t.revoked = True
    return jsonify(ok=True)


@app.route("/__outage", methods=["POST"])
def set_outage():
    outage["on"] = request.args.get("on") == "1"
    return jsonify(ok=True, on=outage["on"])


@app.route("/__seen")
def seen():
    with lock:
        return jsonify(
            stats=stats,
            tokens=[
                {"access_token": t.access_token, "refresh_token": t.refresh_token, "revoked": t.revoked, "user": t.user.name}
                for t in tokens
            ],
        )


sock = socket.socket()
sock.bind(("127.0.0.1", 0))
port = sock.getsockname()[1]
sock.close()
print(port, flush=True)
# The test stops reading after the port: Flask's banner must not meet a closed pipe.
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
logging.getLogger("werkzeug").setLevel(logging.ERROR)
app.run(host="127.0.0.1", port=port, threaded=True)
