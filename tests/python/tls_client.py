#!/usr/bin/env python3
"""A gRPC client no one here wrote (grpcio) calling greeter.v1.Greeter/SayHello over TLS.

Usage: tls_client.py ADDRESS NAME --ca CA.pem [--cert CERT.pem --key KEY.pem]

Verifies the server against CA.pem (for the name `localhost`, which the test certificates
carry) and presents CERT/KEY when given (mutual TLS). No generated code: the one-field
request and reply are encoded by hand.

Prints the reply's message and exits 0, or prints `CODE: details` and exits 1.
"""

import argparse
import sys

import grpc


def encode_name(name: str) -> bytes:
    data = name.encode()
    # field 1, wire type 2 (length-delimited); names here are shorter than 128 bytes
    return bytes([0x0A, len(data)]) + data


def decode_message(reply: bytes) -> str:
    if not reply:
        return ""
    assert reply[0] == 0x0A and reply[1] < 128, reply
    return reply[2 : 2 + reply[1]].decode()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("name")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    with open(args.ca, "rb") as f:
        ca = f.read()
    cert = key = None
    if args.cert:
        with open(args.cert, "rb") as f:
            cert = f.read()
        with open(args.key, "rb") as f:
            key = f.read()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(args.address, credentials, options=options) as channel:
        call = channel.unary_unary(
            "/greeter.v1.Greeter/SayHello",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        try:
            reply = call(encode_name(args.name), timeout=10)
        except grpc.RpcError as e:
            print(f"{e.code().name}: {e.details()}")
            return 1
    print(decode_message(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
