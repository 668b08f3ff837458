#!/usr/bin/python3
"""Example tokenservice.v1 client in Python (grpcio).

Stores a user's token set, reads a token back by session id and by user and
provider (and the id_token, when one was given), logs the session out, and
checks that the session is gone.

Tokens come from the environment, never from argv (argv is visible in ps):
  ACCESS_TOKEN (required), REFRESH_TOKEN, ID_TOKEN, EXPIRES_IN (seconds).

  ./generate.sh
  ACCESS_TOKEN=... REFRESH_TOKEN=... /usr/bin/python3 client.py \
      --target 127.0.0.1:50051 --user alice --provider corp

Exit status: 0 when every step gave the expected answer, 1 otherwise,
2 for bad usage.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT_SECONDS = 10


def parse_args():
    p = argparse.ArgumentParser(description="tokenservice.v1 example client (grpcio)")
    p.add_argument("--target", default="127.0.0.1:50051", help="host:port of the service")
    p.add_argument("--user", required=True, help="the user's id")
    p.add_argument("--provider", required=True, help="a provider id from the service's configuration")
    p.add_argument("--bearer-env", metavar="NAME",
                   help="name of an environment variable holding a caller credential, "
                        "sent as 'authorization: Bearer ...'")
    p.add_argument("--gen-dir", default=os.path.join(HERE, "gen"),
                   help="where generate.sh wrote the stubs (default: gen/ beside this file)")
    return p.parse_args()


def preview(secret):
    """Length and the first 8 characters: enough to recognise a token, never the token."""
    return "%d chars, starts %r" % (len(secret), secret[:8])


def short_id(session_id):
    return "%s… (%d chars)" % (session_id[:8], len(session_id))


def when(ts):
    return ts.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ") if ts.seconds else "unknown"


class StepFailed(Exception):
    pass


def main():
    args = parse_args()

    access_token = os.environ.get("ACCESS_TOKEN", "")
    refresh_token = os.environ.get("REFRESH_TOKEN", "")
    id_token = os.environ.get("ID_TOKEN", "")
    expires_in_text = os.environ.get("EXPIRES_IN", "")
    if not access_token:
        print("ACCESS_TOKEN must be set in the environment", file=sys.stderr)
        return 2
    try:
        expires_in = int(expires_in_text) if expires_in_text else 0
    except ValueError:
        print("EXPIRES_IN must be a whole number of seconds", file=sys.stderr)
        return 2
    metadata = []
    if args.bearer_env:
        credential = os.environ.get(args.bearer_env, "")
        if not credential:
            print("--bearer-env %s: that environment variable is empty or unset" % args.bearer_env,
                  file=sys.stderr)
            return 2
        metadata.append(("authorization", "Bearer " + credential))

    # The generated stubs import each other as "tokenservice.v1....", so their
    # root goes on the path.
    sys.path.insert(0, args.gen_dir)
    try:
        import grpc
        from tokenservice.v1 import token_service_pb2 as pb
        from tokenservice.v1 import token_service_pb2_grpc as pb_grpc
    except ImportError as e:
        print("cannot import grpc or the stubs (%s): run generate.sh, and use Debian's "
              "/usr/bin/python3 with python3-grpcio and python3-protobuf" % e, file=sys.stderr)
        return 2

    print("target %s, user %r, provider %r%s" % (
        args.target, args.user, args.provider, ", with a caller credential" if metadata else ""))

    # Plaintext, as for a service on loopback or behind a mesh that provides
    # TLS. With TLS: grpc.secure_channel(target, grpc.ssl_channel_credentials(ca_pem)).
    with grpc.insecure_channel(args.target) as channel:
        stub = pb_grpc.TokenServiceStub(channel)
        opts = {"timeout": TIMEOUT_SECONDS, "metadata": metadata}

        def call(step, method, request):
            try:
                return method(request, **opts)
            except grpc.RpcError as e:
                raise StepFailed("%s failed: %s: %s" % (step, e.code().name, e.details()))

        try:
            # 1. StoreSession: what an auth gateway does once, at login.
            stored = call("StoreSession", stub.StoreSession, pb.StoreSessionRequest(
                user_id=args.user,
                provider=args.provider,
                tokens=pb.TokenSet(access_token=access_token, refresh_token=refresh_token,
                                   id_token=id_token, expires_in=expires_in),
            ))
            session_id = stored.session_id
            if not session_id:
                raise StepFailed("StoreSession returned no session id")
            print("1. StoreSession: ok, session %s, access token expires %s" % (
                short_id(session_id), when(stored.expires_at)))

            # 2. GetToken by session id: what any backend service does per request.
            got = call("GetToken (by session id)", stub.GetToken,
                       pb.GetTokenRequest(user_id=args.user, session_id=session_id, min_valid_seconds=30))
            if not got.token:
                raise StepFailed("GetToken (by session id) returned no token")
            print("2. GetToken (by session id): ok, %s token, %s, %s, expires %s%s" % (
                got.token_type, preview(got.token),
                "the stored one" if got.token == access_token else "refreshed by the service",
                when(got.expires_at), ", scope %r" % got.scope if got.scope else ""))

            # 3. GetToken by user and provider: for a background job without a session id.
            by_user = call("GetToken (by user and provider)", stub.GetToken,
                           pb.GetTokenRequest(user_id=args.user, provider=args.provider))
            if by_user.session_id != session_id:
                raise StepFailed("GetToken (by user and provider) answered from another session, %s"
                                 % short_id(by_user.session_id))
            print("3. GetToken (by user and provider): ok, session %s, %s" % (
                short_id(by_user.session_id), preview(by_user.token)))

            # 4. The id_token, when the login produced one.
            if id_token:
                got_id = call("GetToken (id_token)", stub.GetToken, pb.GetTokenRequest(
                    user_id=args.user, session_id=session_id, kind=pb.TOKEN_KIND_ID))
                if not got_id.token or got_id.token_type != "N_A":
                    raise StepFailed("GetToken (id_token) returned token type %r" % got_id.token_type)
                print("4. GetToken (id_token): ok, %s, expires %s" % (
                    preview(got_id.token), when(got_id.expires_at)))
            else:
                print("4. GetToken (id_token): skipped, no ID_TOKEN given")

            # 5. RevokeSession: logout, here and at the provider.
            call("RevokeSession", stub.RevokeSession,
                 pb.RevokeSessionRequest(user_id=args.user, session_id=session_id))
            print("5. RevokeSession: ok")

            # 6. The session is gone: NOT_FOUND.
            try:
                stub.GetToken(pb.GetTokenRequest(user_id=args.user, session_id=session_id), **opts)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:
                    raise StepFailed("GetToken after RevokeSession: expected NOT_FOUND, got %s: %s"
                                     % (e.code().name, e.details()))
                print("6. GetToken after RevokeSession: NOT_FOUND, as expected (%s)" % e.details())
            else:
                raise StepFailed("GetToken after RevokeSession: expected NOT_FOUND, got a token")
        except StepFailed as e:
            print("FAILED: %s" % e, file=sys.stderr)
            return 1

    print("all steps passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
