"""A Python client of the Widget kind, generated from the server's own
description of it:

    skiff get resourcedefinition widgets.acme.example.com -o proto > gen/acme/v1/widget.proto
    python3 -m grpc_tools.protoc -I gen -I proto --python_out gen --grpc_python_out gen \
        acme/v1/widget.proto skiff/meta/v1/meta.proto
    PYTHONPATH=gen python3 examples/widgets/client.py 127.0.0.1:6443

(`proto/` is Skiff's; it holds skiff/meta/v1/meta.proto.) It creates a
widget, lists by a field selector, reads it, updates it (a stale update is
refused with ABORTED), writes its status, creates and deletes another,
watches what changed since its creation, and watches the namespace.
"""

import sys

import grpc

from acme.v1 import widget_pb2, widget_pb2_grpc
from skiff.meta.v1 import meta_pb2


def main(address: str) -> None:
    stub = widget_pb2_grpc.WidgetServiceStub(grpc.insecure_channel(address))
    created = stub.CreateWidget(
        widget_pb2.CreateWidgetRequest(
            widget=widget_pb2.Widget(
                metadata=meta_pb2.ObjectMeta(
                    name="from-python", namespace="default", labels={"tier": "silver"}
                ),
                spec=widget_pb2.WidgetSpec(size=2, color="red"),
            )
        )
    )
    print("created", created.widget.metadata.name, created.widget.metadata.resource_version)
    listed = stub.ListWidgets(
        widget_pb2.ListWidgetsRequest(namespace="default", field_selector="spec.color=red")
    )
    print("listed", " ".join(w.metadata.name for w in listed.widgets))
    got = stub.GetWidget(widget_pb2.GetWidgetRequest(namespace="default", name="from-python"))
    print("got", got.widget.metadata.name, got.widget.spec.size)

    # Updates are compare-and-swap on metadata.resource_version.
    first = created.widget
    bigger = widget_pb2.Widget()
    bigger.CopyFrom(first)
    bigger.spec.size = 4
    updated = stub.UpdateWidget(widget_pb2.UpdateWidgetRequest(widget=bigger))
    print("updated", updated.widget.metadata.name, updated.widget.spec.size)
    try:
        stub.UpdateWidget(widget_pb2.UpdateWidgetRequest(widget=bigger))
        print("stale update accepted")
    except grpc.RpcError as e:
        print("stale update refused", e.code())

    # The status is written only through its own method.
    ready = widget_pb2.Widget()
    ready.CopyFrom(updated.widget)
    ready.status.phase = "Ready"
    status = stub.UpdateWidgetStatus(widget_pb2.UpdateWidgetStatusRequest(widget=ready))
    print("status", status.widget.status.phase)

    temp = stub.CreateWidget(
        widget_pb2.CreateWidgetRequest(
            widget=widget_pb2.Widget(
                metadata=meta_pb2.ObjectMeta(name="py-temp", namespace="default"),
                spec=widget_pb2.WidgetSpec(size=1, color="blue"),
            )
        )
    )
    stub.DeleteWidget(widget_pb2.DeleteWidgetRequest(namespace="default", name="py-temp"))
    print("deleted", temp.widget.metadata.name)

    # Everything since the first create, in order.
    since = stub.WatchWidgets(
        widget_pb2.WatchWidgetsRequest(
            namespace="default",
            resource_version=first.metadata.resource_version,
            timeout_seconds=2,
        )
    )
    for event in since:
        print(
            "since",
            meta_pb2.EventType.Name(event.type),
            event.object.metadata.name,
            event.object.spec.size,
        )

    events = stub.WatchWidgets(
        widget_pb2.WatchWidgetsRequest(namespace="default", timeout_seconds=2)
    )
    for event in events:
        print(
            "event",
            meta_pb2.EventType.Name(event.type),
            event.object.metadata.name,
            event.object.spec.color,
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:6443")
