"""A Python client of the Widget kind, generated from the server's own
description of it:

    skiff get resourcedefinition widgets.acme.example.com -o proto > gen/acme/v1/widget.proto
    python3 -m grpc_tools.protoc -I gen -I proto --python_out gen --grpc_python_out gen \
        acme/v1/widget.proto skiff/meta/v1/meta.proto
    PYTHONPATH=gen python3 examples/widgets/client.py 127.0.0.1:6443

(`proto/` is Skiff's; it holds skiff/meta/v1/meta.proto.) It creates a
widget, lists by a field selector, and watches the namespace.
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
