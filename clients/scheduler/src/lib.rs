//! Skiff scheduler: binds pending pods to nodes.
