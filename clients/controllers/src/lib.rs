//! Skiff controller manager.
