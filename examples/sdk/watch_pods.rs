//! Watches pods and keeps a store of them, printing changes.
//!
//! Run against a cluster: `cargo run --example watch_pods -- [NAMESPACE]`
//! (the server comes from ~/.skiff/config, SKIFF_CONFIG, or 127.0.0.1:6443).

use futures::StreamExt;
use skiff::Resource as _;
use skiff::api::core::v1::Pod;
use skiff::client::{Client, Config};
use skiff::runtime::{Event, WatcherConfig, Writer, reflector, watcher};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let namespace = std::env::args().nth(1).unwrap_or_default();
    let mut config = Config::load_default()?;
    if config.servers().is_empty() {
        config.server = Some("127.0.0.1:6443".into());
    }
    let client = Client::connect(&config).await?;
    let writer = Writer::<Pod>::new();
    let store = writer.store();
    let events = reflector(
        writer,
        watcher(client.pods(&namespace), WatcherConfig::default()),
    );
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        match event? {
            Event::InitDone => println!("listed {} pods", store.len()),
            Event::Apply(p) => println!("changed {}/{}", p.namespace(), p.name()),
            Event::Delete(p) => println!("deleted {}/{}", p.namespace(), p.name()),
            _ => {}
        }
    }
    Ok(())
}
