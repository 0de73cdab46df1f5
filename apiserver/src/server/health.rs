//! The gRPC health service (`grpc.health.v1.Health`): statuses kept by
//! tonic-health's reporter, served through the API's own generated server
//! so that requests decode with the codec every service uses (bytes that
//! do not decode are INVALID_ARGUMENT, as for the rest of the API).

use std::pin::Pin;

use futures::{Stream, StreamExt};
use skiff::api::health::v1::health_server::{Health, HealthServer};
use skiff::api::health::v1::{HealthCheckRequest, HealthCheckResponse};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_server::Health as _;
use tonic_health::server::{HealthReporter, HealthService};

/// The health service answering from `reporter`'s statuses.
pub fn service(reporter: HealthReporter) -> HealthServer<Statuses> {
    HealthServer::new(Statuses(HealthService::from_health_reporter(reporter)))
}

/// Serves the statuses a [`HealthReporter`] sets.
#[derive(Debug)]
pub struct Statuses(HealthService);

fn ask(request: Request<HealthCheckRequest>) -> Request<tonic_health::pb::HealthCheckRequest> {
    let (metadata, extensions, message) = request.into_parts();
    Request::from_parts(
        metadata,
        extensions,
        tonic_health::pb::HealthCheckRequest {
            service: message.service,
        },
    )
}

fn answer(r: tonic_health::pb::HealthCheckResponse) -> HealthCheckResponse {
    HealthCheckResponse { status: r.status }
}

#[tonic::async_trait]
impl Health for Statuses {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let r = self.0.check(ask(request)).await?;
        Ok(Response::new(answer(r.into_inner())))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let statuses = self.0.watch(ask(request)).await?.into_inner();
        Ok(Response::new(Box::pin(statuses.map(|r| r.map(answer)))))
    }
}
