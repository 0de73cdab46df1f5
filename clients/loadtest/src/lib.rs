//! Streaming load and density tests for Skiff.
