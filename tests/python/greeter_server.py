#!/usr/bin/env python3
"""A foreign greeter: a gRPC service written in Python (grpcio), not with micro.

Serves `hello.v1.Hello` with gRPC server reflection (v1alpha), so a client that knows nothing
of its proto (micro's gateway, grpcurl) can find and call its methods:

    rpc Greet(GreetRequest) returns (GreetReply);          // "Hi <name>"
    rpc Count(CountRequest) returns (stream CountReply);   // n = 1..=count (at most 10000)

No generated code (grpcio-tools is not needed): the proto's FileDescriptorProto is built here
at run time, added to a descriptor pool of its own, and the message classes come from that
pool; reflection answers from the same pool.

Usage: greeter_server.py [PORT]   (PORT 0 or absent: a free port)
Listens on 127.0.0.1 and prints exactly one line to stdout when ready,
`listening on 127.0.0.1:<port>`, then serves until killed (SIGTERM, SIGINT: stops at once).

Needs the pip packages grpcio and grpcio-reflection (scripts/setup installs them).
"""

import signal
import sys
from concurrent import futures

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection

PACKAGE = "hello.v1"
SERVICE = f"{PACKAGE}.Hello"
MAX_COUNT = 10000

_FIELD = descriptor_pb2.FieldDescriptorProto


def _file_descriptor():
    """The FileDescriptorProto of `hello/v1/hello.proto`, as protoc would write it."""
    file = descriptor_pb2.FileDescriptorProto(
        name="hello/v1/hello.proto", package=PACKAGE, syntax="proto3"
    )
    for message, field, kind in [
        ("GreetRequest", "name", _FIELD.TYPE_STRING),
        ("GreetReply", "message", _FIELD.TYPE_STRING),
        ("CountRequest", "count", _FIELD.TYPE_UINT32),
        ("CountReply", "n", _FIELD.TYPE_UINT32),
    ]:
        file.message_type.add(name=message).field.add(
            name=field, number=1, type=kind, label=_FIELD.LABEL_OPTIONAL, json_name=field
        )
    service = file.service.add(name="Hello")
    service.method.add(
        name="Greet",
        input_type=f".{PACKAGE}.GreetRequest",
        output_type=f".{PACKAGE}.GreetReply",
    )
    service.method.add(
        name="Count",
        input_type=f".{PACKAGE}.CountRequest",
        output_type=f".{PACKAGE}.CountReply",
        server_streaming=True,
    )
    return file


POOL = descriptor_pool.DescriptorPool()
POOL.Add(_file_descriptor())


def _message(name):
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


GreetRequest = _message("GreetRequest")
GreetReply = _message("GreetReply")
CountRequest = _message("CountRequest")
CountReply = _message("CountReply")


def greet(request, _context):
    return GreetReply(message=f"Hi {request.name}")


def count(request, context):
    if request.count > MAX_COUNT:
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"count must be at most {MAX_COUNT}, got {request.count}",
        )
    for n in range(1, request.count + 1):
        if not context.is_active():
            return
        yield CountReply(n=n)


def _handler():
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Greet": grpc.unary_unary_rpc_method_handler(
                greet,
                request_deserializer=GreetRequest.FromString,
                response_serializer=GreetReply.SerializeToString,
            ),
            "Count": grpc.unary_stream_rpc_method_handler(
                count,
                request_deserializer=CountRequest.FromString,
                response_serializer=CountReply.SerializeToString,
            ),
        },
    )


def main(argv):
    if len(argv) > 2:
        print(f"usage: {argv[0]} [PORT]", file=sys.stderr)
        return 2
    try:
        wanted = int(argv[1]) if len(argv) == 2 else 0
    except ValueError:
        print(f"{argv[0]}: not a port: {argv[1]!r}", file=sys.stderr)
        return 2
    # grpcio sets SO_REUSEPORT by default: a second server would "bind" a port in use and share
    # its connections. A busy port must be an error instead.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 0)]
    )
    server.add_generic_rpc_handlers((_handler(),))
    reflection.enable_server_reflection((SERVICE, reflection.SERVICE_NAME), server, pool=POOL)
    try:
        port = server.add_insecure_port(f"127.0.0.1:{wanted}")
    except RuntimeError as e:  # grpcio >= 1.49 raises when it cannot bind
        print(f"{argv[0]}: cannot listen on 127.0.0.1:{wanted}: {e}", file=sys.stderr)
        return 1
    if port == 0:  # older grpcio answers 0 instead
        print(f"{argv[0]}: cannot listen on 127.0.0.1:{wanted}", file=sys.stderr)
        return 1
    server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    # Stop at once on SIGTERM as on SIGINT: in-flight calls are cancelled.
    signal.signal(signal.SIGTERM, lambda *_: server.stop(None))
    signal.signal(signal.SIGINT, lambda *_: server.stop(None))
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
