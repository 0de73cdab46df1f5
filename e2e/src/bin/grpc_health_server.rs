//! A gRPC server that only answers the health protocol, for probe tests
//! inside containers: SERVING for `--serving-for` seconds after it starts,
//! NOT_SERVING after that (for the server as a whole and for `--service`).
//!
//! Usage: skiff-test-grpc-health --listen 0.0.0.0:9555 --serving-for 3 [--service NAME]

use std::net::SocketAddr;
use std::time::Duration;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let listen: SocketAddr = arg(&args, "--listen")
        .unwrap_or_else(|| "0.0.0.0:9555".into())
        .parse()?;
    // Without --serving-for: SERVING for as long as it runs.
    let serving_for: Option<Duration> = arg(&args, "--serving-for")
        .map(|s| s.parse::<f64>())
        .transpose()?
        .map(Duration::from_secs_f64);
    let service = arg(&args, "--service").unwrap_or_default();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    reporter
        .set_service_status(&service, tonic_health::ServingStatus::Serving)
        .await;
    println!("serving health on {listen} for {serving_for:?}");
    tokio::spawn(async move {
        let Some(serving_for) = serving_for else {
            return;
        };
        tokio::time::sleep(serving_for).await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        reporter
            .set_service_status(&service, tonic_health::ServingStatus::NotServing)
            .await;
        println!("now NOT_SERVING");
    });
    tonic::transport::Server::builder()
        .add_service(health)
        .serve(listen)
        .await?;
    Ok(())
}
