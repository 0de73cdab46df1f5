//! The Skiff scheduler: watches for pods with no node, finds the nodes that
//! fit, picks the best and binds the pod — through the SDK only.
//!
//! - [`binder`]: bindings sent in batches.
//! - [`cache`]: nodes and what their pods request, with assumed pods.
//! - [`queue`]: pending pods by priority, unschedulable ones with backoff.
//! - [`framework`]: filters, scores, and the search over nodes.
//! - [`interpod`]: pod (anti-)affinity and topology spread constraints.
//! - [`preemption`]: evicting lower-priority pods for a pod that fits nowhere.
//! - [`scheduler`]: the loop tying them together.

mod binder;
pub mod cache;
pub mod framework;
pub mod interpod;
pub mod preemption;
pub mod queue;
pub mod resources;
pub mod scheduler;
pub mod volumes;

pub use framework::Weights;
pub use scheduler::{SchedulerConfig, SchedulerStats, run, schedule};
