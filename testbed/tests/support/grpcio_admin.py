"""The admin API through Python's grpcio (gRPC's C core), for testbed/tests/admin_grpcio.rs.

Usage: grpcio_admin.py SOCKET PROTO_DIR STUB_DIR

Generates the API's stubs from PROTO_DIR into STUB_DIR (grpc_tools.protoc, as a user
would), then calls every RPC of outrider.admin.v1.Admin, the health service and server
reflection on the unix socket with grpcio's defaults (no channel option: the C core sends
the socket's path, percent-encoded, as :authority), and ListWorkloads again with the
authorities other clients send. Prints one JSON object: per call, its gRPC status code
and what it returned. It fails (exit status 1) only if it cannot run at all; judging the
answers is the test's job.
"""

import json
import pathlib
import sys

import grpc
import grpc_tools
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_tools import protoc

TIMEOUT = 10  # seconds, per call

POLICY = """apiVersion: security.outrider.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: grpcio-dry-run, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {ports: ["7000"]}}]}]
"""


def generate(protos, out):
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{protos}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "outrider/admin/v1/admin.proto",
        ]
    )
    if status != 0:
        sys.exit(f"grpc_tools.protoc failed ({status})")
    sys.path.insert(0, str(out))


def call(fn):
    try:
        return {"code": "OK", "value": fn()}
    except grpc.RpcError as error:
        return {"code": error.code().name, "details": error.details()}


def watch(admin, pb):
    """A server stream: its response headers show the call reached the API."""
    stream = admin.WatchConnections(pb.WatchConnectionsRequest(), timeout=TIMEOUT)
    stream.initial_metadata()
    stream.cancel()
    return "headers received"


def admin_calls(admin, pb):
    def log_level():
        level = admin.GetLogLevel(pb.GetLogLevelRequest(), timeout=TIMEOUT).level
        # Set to what it is: proves the call, changes nothing.
        req = pb.SetLogLevelRequest(level=level)
        return admin.SetLogLevel(req, timeout=TIMEOUT).level == level

    workload = pb.GetWorkloadRequest(namespace="shop", name="client")
    service = pb.GetServiceRequest(namespace="shop", name="client")
    no_policy = pb.DeletePolicyRequest(namespace="shop", name="no-such-policy")
    dry_run = pb.ApplyPoliciesRequest(yaml=POLICY, dry_run=True)
    return {
        "GetVersion": lambda: admin.GetVersion(pb.GetVersionRequest(), timeout=TIMEOUT).node_name,
        "ListWorkloads": lambda: [
            w.name
            for w in admin.ListWorkloads(pb.ListWorkloadsRequest(), timeout=TIMEOUT).workloads
        ],
        "GetWorkload": lambda: admin.GetWorkload(workload, timeout=TIMEOUT).identity,
        "ListServices": lambda: [
            s.name
            for s in admin.ListServices(pb.ListServicesRequest(), timeout=TIMEOUT).services
        ],
        "GetService": lambda: admin.GetService(service, timeout=TIMEOUT).fqdn,
        "ListConnections": lambda: len(
            admin.ListConnections(pb.ListConnectionsRequest(), timeout=TIMEOUT).connections
        ),
        "WatchConnections": lambda: watch(admin, pb),
        "GetConfig": lambda: json.loads(
            admin.GetConfig(pb.GetConfigRequest(), timeout=TIMEOUT).json
        )["nodeName"],
        "ListPolicies": lambda: len(
            admin.ListPolicies(pb.ListPoliciesRequest(), timeout=TIMEOUT).policies
        ),
        "ApplyPolicies": lambda: [
            a.outcome for a in admin.ApplyPolicies(dry_run, timeout=TIMEOUT).applied
        ],
        "DeletePolicy": lambda: admin.DeletePolicy(no_policy, timeout=TIMEOUT) and "deleted",
        "ListCertificates": lambda: admin.ListCertificates(
            pb.ListCertificatesRequest(), timeout=TIMEOUT
        ).trust_domain,
        "GetLogLevel": lambda: admin.GetLogLevel(pb.GetLogLevelRequest(), timeout=TIMEOUT).level,
        "SetLogLevel": log_level,
    }


def main():
    socket, protos, out = sys.argv[1:4]
    generate(protos, out)
    from outrider.admin.v1 import admin_pb2 as pb
    from outrider.admin.v1 import admin_pb2_grpc as pb_grpc

    target = f"unix:{socket}"
    result = {"methods": [m.name for m in pb.DESCRIPTOR.services_by_name["Admin"].methods]}
    with grpc.insecure_channel(target) as channel:
        admin = pb_grpc.AdminStub(channel)
        result["calls"] = {name: call(fn) for name, fn in admin_calls(admin, pb).items()}
        health = health_pb2_grpc.HealthStub(channel)
        for service in ["", "outrider.admin.v1.Admin"]:
            request = health_pb2.HealthCheckRequest(service=service)
            result[f"health {service}"] = call(
                lambda: health_pb2.HealthCheckResponse.ServingStatus.Name(
                    health.Check(request, timeout=TIMEOUT).status
                )
            )
        reflection = ProtoReflectionDescriptorDatabase(channel)
        result["reflection services"] = call(lambda: sorted(reflection.get_services()))
        result["reflection file"] = call(
            lambda: reflection.FindFileContainingSymbol("outrider.admin.v1.Admin").name
        )
    # grpc-go's default on unix sockets, and grpc-java's (the path as it is).
    for name, authority in [("localhost", "localhost"), ("raw path", socket)]:
        options = [("grpc.default_authority", authority)]
        with grpc.insecure_channel(target, options=options) as channel:
            admin = pb_grpc.AdminStub(channel)
            result[f"authority {name}"] = call(admin_calls(admin, pb)["ListWorkloads"])
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
