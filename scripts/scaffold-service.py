#!/usr/bin/env python3
"""Print the standard service .proto for a kind (a starting point to edit).

Usage: scripts/scaffold-service.py GROUP KIND PLURAL_CAMEL TYPES_FILE [--cluster] [--no-status]
Example: scripts/scaffold-service.py core Pod Pods skiff/core/v1/pod.proto \
           > proto/skiff/core/v1/pod_service.proto

The generated shape is the contract build.rs checks: Create/Get/List/Update/
[UpdateStatus]/Delete/Watch with the request and response fields it expects.
"""
import re
import sys


def snake(name):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    flags = {a for a in argv if a.startswith("--")}
    group, kind, plural, types_file = args
    namespaced = "--cluster" not in flags
    status = "--no-status" not in flags
    obj = snake(kind)
    objs = snake(plural)
    ns_field = "  // Namespace of the object.\n  string namespace = 1;\n" if namespaced else ""
    n = 2 if namespaced else 1
    where = "in a namespace" if namespaced else ""
    out = []
    w = out.append
    w('syntax = "proto3";\n')
    w(f"package skiff.{group}.v1;\n")
    w(f'import "{types_file}";')
    w('import "skiff/meta/v1/meta.proto";\n')
    w(f"// {kind}Service manages {kind} objects.")
    w(f"service {kind}Service {{")
    w(f"  // Creates a {kind}.")
    w(f"  rpc Create{kind}(Create{kind}Request) returns (Create{kind}Response);")
    w(f"  // Reads one {kind} by name.")
    w(f"  rpc Get{kind}(Get{kind}Request) returns (Get{kind}Response);")
    w(f"  // Lists {plural}, filtered by selectors, a page at a time.")
    w(f"  rpc List{plural}(List{plural}Request) returns (List{plural}Response);")
    w(f"  // Replaces a {kind}'s spec and metadata (compare-and-swap on resource_version).")
    w(f"  rpc Update{kind}(Update{kind}Request) returns (Update{kind}Response);")
    if status:
        w(f"  // Replaces a {kind}'s status only.")
        w(f"  rpc Update{kind}Status(Update{kind}StatusRequest) returns (Update{kind}StatusResponse);")
    w(f"  // Deletes a {kind} (or marks it for deletion while finalizers remain).")
    w(f"  rpc Delete{kind}(Delete{kind}Request) returns (Delete{kind}Response);")
    w(f"  // Streams changes to {plural} after a resource_version.")
    w(f"  rpc Watch{plural}(Watch{plural}Request) returns (stream Watch{plural}Response);")
    w("}\n")
    w(f"// Create{kind}Request carries the {kind} to create.")
    w(f"message Create{kind}Request {{\n  // The object; metadata.name or generate_name is required.\n  {kind} {obj} = 1;\n}}\n")
    w(f"// Create{kind}Response returns the created {kind}.")
    w(f"message Create{kind}Response {{\n  // The object as stored.\n  {kind} {obj} = 1;\n}}\n")
    w(f"// Get{kind}Request names the {kind} to read.")
    w(f"message Get{kind}Request {{\n{ns_field}  // Name of the object.\n  string name = {n};\n"
      f"  // Empty: latest; \"0\": any cached state; N: not older than N.\n  string resource_version = {n + 1};\n}}\n")
    w(f"// Get{kind}Response returns the {kind}.")
    w(f"message Get{kind}Response {{\n  // The object.\n  {kind} {obj} = 1;\n}}\n")
    list_ns = ("  // Namespace to list; empty lists every namespace.\n  string namespace = 1;\n"
               if namespaced else "")
    w(f"// List{plural}Request selects the {plural} to list.")
    w(f"message List{plural}Request {{\n{list_ns}"
      f"  // Label selector, Kubernetes syntax (\"app=web,tier!=db\").\n  string label_selector = {n};\n"
      f"  // Field selector, Kubernetes syntax (\"spec.nodeName=n1\").\n  string field_selector = {n + 1};\n"
      f"  // Empty: consistent read; \"0\": any cached state; N: not older than N.\n  string resource_version = {n + 2};\n"
      f"  // Maximum number of items to return; 0 means all.\n  int32 page_size = {n + 3};\n"
      f"  // next_page_token of the previous page.\n  string page_token = {n + 4};\n}}\n")
    w(f"// List{plural}Response returns a page of {plural}.")
    w(f"message List{plural}Response {{\n  // Revision and paging of the list.\n  skiff.meta.v1.ListMeta metadata = 1;\n"
      f"  // The objects.\n  repeated {kind} {objs} = 2;\n}}\n")
    w(f"// Update{kind}Request carries the new {kind}.")
    w(f"message Update{kind}Request {{\n  // The object; metadata.resource_version must be current if set.\n  {kind} {obj} = 1;\n}}\n")
    w(f"// Update{kind}Response returns the updated {kind}.")
    w(f"message Update{kind}Response {{\n  // The object as stored.\n  {kind} {obj} = 1;\n}}\n")
    if status:
        w(f"// Update{kind}StatusRequest carries the {kind} whose status is written.")
        w(f"message Update{kind}StatusRequest {{\n  // The object; only its status is written.\n  {kind} {obj} = 1;\n}}\n")
        w(f"// Update{kind}StatusResponse returns the updated {kind}.")
        w(f"message Update{kind}StatusResponse {{\n  // The object as stored.\n  {kind} {obj} = 1;\n}}\n")
    w(f"// Delete{kind}Request names the {kind} to delete.")
    w(f"message Delete{kind}Request {{\n{ns_field}  // Name of the object.\n  string name = {n};\n"
      f"  // Conditions the object must meet.\n  skiff.meta.v1.Preconditions preconditions = {n + 1};\n"
      f"  // Background (default), Foreground or Orphan.\n  string propagation_policy = {n + 2};\n"
      f"  // Seconds before forced termination; unset uses the object's default.\n  optional int64 grace_period_seconds = {n + 3};\n}}\n")
    w(f"// Delete{kind}Response returns the deleted (or terminating) {kind}.")
    w(f"message Delete{kind}Response {{\n  // The object as last stored.\n  {kind} {obj} = 1;\n}}\n")
    w(f"// Watch{plural}Request selects the changes to stream.")
    w(f"message Watch{plural}Request {{\n{list_ns}"
      f"  // Label selector, Kubernetes syntax.\n  string label_selector = {n};\n"
      f"  // Field selector, Kubernetes syntax.\n  string field_selector = {n + 1};\n"
      f"  // Stream changes after this version; empty or \"0\": start with the current state.\n  string resource_version = {n + 2};\n"
      f"  // Send periodic BOOKMARK events carrying the current resource_version.\n  bool allow_bookmarks = {n + 3};\n"
      f"  // Send the current state first, then a BOOKMARK marking its end.\n  bool send_initial_events = {n + 4};\n"
      f"  // End the stream cleanly after this many seconds; 0 means never.\n  int64 timeout_seconds = {n + 5};\n}}\n")
    w(f"// Watch{plural}Response is one change to a {kind}.")
    w(f"message Watch{plural}Response {{\n  // What happened.\n  skiff.meta.v1.EventType type = 1;\n"
      f"  // The object after the change (before it, for DELETED).\n  {kind} object = 2;\n}}")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1:])
