//! Skiff node agent and its container runtimes.
