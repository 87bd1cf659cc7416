//! Learned locations shared with other Envoys (and ext_proc routers) through a network store,
//! without ever blocking a worker thread: a [`Remote`] does its I/O on its own thread and calls
//! back from there; the stream then wakes itself through Envoy's scheduler. The in-process memory
//! store stays the first place every lookup goes, as in the ext_proc service.

use responses_router_core::affinity::Location;

/// A callback run on the remote's own thread.
pub type Done<T> = Box<dyn FnOnce(T) + Send>;

/// A shared store reached off the worker threads.
pub trait Remote: Send + Sync {
    /// Looks `id` up; `done` gets what the shared store knows (`None` also when it could not
    /// answer within its budget).
    fn lookup(&self, id: &str, done: Done<Option<Location>>);

    /// Shares where `id` was served (the caller has put it in its own memory already); `done`
    /// runs once the write finished or gave up.
    fn record(&self, id: &str, location: &Location, done: Done<()>);
}
