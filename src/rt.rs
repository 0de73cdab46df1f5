//! The async runtime Skiff's programs run on.
//!
//! A multi-threaded tokio runtime with its LIFO slot turned off. With the
//! slot, every watch stream that queues an event wakes its HTTP/2
//! connection task straight into that slot, so the connection flushes one
//! frame at a time: an event sent to a thousand watches became a thousand
//! socket writes. Without it, the connection runs after the streams that
//! woke it and writes their frames together. (tokio offers the switch only
//! with `--cfg tokio_unstable`, which `.cargo/config.toml` sets; a build
//! without it keeps the slot.)

/// A multi-threaded runtime with every driver enabled and no LIFO slot.
pub fn multi_thread() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}
