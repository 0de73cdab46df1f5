//! The apiserver.
