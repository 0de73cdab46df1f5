//! A small controller: every pod gets the label `seen-by=example`.
//! Runs with leader election, so several copies can run safely.
//!
//! `cargo run --example label_pods`

use std::sync::Arc;

use skiff::Resource;
use skiff::api::core::v1::Pod;
use skiff::client::{Api, Client, Error};
use skiff::runtime::{
    Action, Controller, ControllerConfig, InformerFactory, LeaderElectionConfig, LeaderElector,
    Request,
};

async fn reconcile(api: Arc<Client>, req: Request<Pod>) -> Result<Action, Error> {
    let Some(pod) = req.object else {
        return Ok(Action::Done);
    };
    if pod.meta().labels.get("seen-by").map(String::as_str) == Some("example") {
        return Ok(Action::Done);
    }
    let mut pod = (*pod).clone();
    pod.meta_mut()
        .labels
        .insert("seen-by".into(), "example".into());
    let pods: Api<Pod> = api.pods(&req.key.namespace);
    pods.update(&pod).await?;
    Ok(Action::Done)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Arc::new(Client::connect_to("127.0.0.1:6443").await?);
    let identity = format!("label-pods-{}", std::process::id());
    let elector = LeaderElector::new(
        client.leases("default"),
        LeaderElectionConfig::new("default", "label-pods", &identity),
    );
    elector
        .run(|mut lost| async move {
            let factory = InformerFactory::new((*client).clone());
            let controller = Controller::new(ControllerConfig::new(factory.all::<Pod>()));
            let c = client.clone();
            controller
                .run(move |req| reconcile(c.clone(), req), async move {
                    let _ = lost.wait_for(|l| *l).await;
                })
                .await;
        })
        .await?;
    Ok(())
}
