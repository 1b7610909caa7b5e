"""A Python client of skiff's gRPC automation API, generated here from proto/ with grpcio-tools.

Usage: grpc_python_client.py PORT CA_PEM TOKEN PROTO_DIR OUT_DIR
Run by skiff/tests/apiserver_grpc.rs; prints OK on success.
"""
import json
import sys

from grpc_tools import protoc
import grpc

port, ca_path, token, proto_dir, out_dir = sys.argv[1:6]
rc = protoc.main([
    "protoc", f"-I{proto_dir}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
    "skiff/api.proto",
])
assert rc == 0, f"protoc failed: {rc}"
sys.path.insert(0, out_dir)
from skiff import api_pb2, api_pb2_grpc  # noqa: E402

creds = grpc.ssl_channel_credentials(root_certificates=open(ca_path, "rb").read())
channel = grpc.secure_channel(
    f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "localhost")])
stub = api_pb2_grpc.ResourcesStub(channel)
md = [("authorization", f"Bearer {token}")]


def ref(name=""):
    return api_pb2.ObjectRef(api_version="v1", kind="ConfigMap", namespace="py", name=name)


stub.Create(api_pb2.CreateRequest(json=json.dumps(
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "py"}}).encode()), metadata=md)
cm = {"apiVersion": "v1", "kind": "ConfigMap",
      "metadata": {"name": "from-python", "namespace": "py", "labels": {"lang": "py"}},
      "data": {"k": "v"}}
created = stub.Create(api_pb2.CreateRequest(json=json.dumps(cm).encode()), metadata=md)
assert created.kind == "ConfigMap" and created.labels["lang"] == "py", created

got = stub.Get(api_pb2.GetRequest(ref=ref("from-python")), metadata=md)
assert json.loads(got.json)["data"] == {"k": "v"}
listed = stub.List(api_pb2.ListRequest(ref=ref(), label_selector="lang=py"), metadata=md)
assert [o.name for o in listed.items] == ["from-python"], listed

watch = stub.Watch(api_pb2.WatchRequest(ref=ref(), resource_version=listed.resource_version),
                   metadata=md, timeout=30)
doc = json.loads(got.json)
doc["data"]["k"] = "v2"
updated = stub.Update(api_pb2.UpdateRequest(json=json.dumps(doc).encode()), metadata=md)
try:
    stub.Update(api_pb2.UpdateRequest(json=json.dumps(doc).encode()), metadata=md)
    raise AssertionError("a stale update succeeded")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.ABORTED, e
event = next(iter(watch))
assert event.type == "MODIFIED" and event.object.resource_version == updated.resource_version, event
watch.cancel()

try:
    stub.Get(api_pb2.GetRequest(ref=ref("from-python")))
    raise AssertionError("no token but not refused")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e
print("OK")
