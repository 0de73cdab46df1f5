//! The runtime for building controllers on the SDK, as small stages over
//! plain streams: [`watcher`] → [`store::reflector`] → [`informer`]s shared
//! per process → [`controller`] with a [`queue::WorkQueue`]; plus
//! [`leader`] election.

pub mod controller;
pub mod events;
pub mod informer;
pub mod leader;
pub mod queue;
pub mod store;
pub mod watcher;

pub use controller::{Action, Controller, ControllerConfig, ReconcileError, Request, Trigger};
pub use events::Recorder;
pub use informer::{Informer, InformerFactory};
pub use leader::{LeaderElectionConfig, LeaderElector};
pub use queue::WorkQueue;
pub use store::{Change, ObjectKey, Store, Writer, reflector};
pub use watcher::{Backoff, Event, WatcherConfig, watcher};
