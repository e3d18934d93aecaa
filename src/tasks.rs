//! The background tasks of an instance, watched: whether each still runs, and how it ended.
//!
//! An instance's work is done by a few long-lived tasks (the hub's dispatcher, the heartbeat,
//! the Redis subscriber) that end only when the instance is dropped. One that ends earlier (a
//! panic: a bug) never comes back, and the process goes on answering requests while it
//! delivers no event or no heartbeat; `/health` and `/livez` say so instead, from the state
//! kept here. Each task gets a small watcher task that awaits its `JoinHandle` and records the
//! outcome, logging a panic as an error.

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::task::AbortHandle;

const RUNNING: u8 = 0;
const RETURNED: u8 = 1;
const PANICKED: u8 = 2;
const CANCELLED: u8 = 3;

/// One watched task.
struct Entry {
    name: &'static str,
    state: Arc<AtomicU8>,
    #[cfg_attr(not(test), allow(dead_code))] // tests end a task with it
    abort: AbortHandle,
}

/// The watched tasks of one instance.
#[derive(Default)]
pub(crate) struct Tasks {
    entries: Mutex<Vec<Entry>>,
}

impl Tasks {
    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spawns `task` on the current runtime, watched under `name`.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(task);
        let abort = handle.abort_handle();
        let state = Arc::new(AtomicU8::new(RUNNING));
        let watched = state.clone();
        tokio::spawn(async move {
            let outcome = match handle.await {
                Ok(()) => RETURNED,
                Err(e) if e.is_panic() => {
                    tracing::error!(task = name, "a background task panicked: {e}");
                    PANICKED
                }
                Err(_) => CANCELLED,
            };
            watched.store(outcome, Ordering::Release);
        });
        self.lock().push(Entry { name, state, abort });
    }

    /// The first task that no longer runs, as a sentence: "the heartbeat task panicked".
    pub fn stopped(&self) -> Option<String> {
        self.lock().iter().find_map(|entry| {
            let how = match entry.state.load(Ordering::Acquire) {
                RUNNING => return None,
                PANICKED => "panicked",
                CANCELLED => "was cancelled",
                _ => "returned",
            };
            Some(format!("the {} task {how}", entry.name))
        })
    }

    /// The names of the watched tasks.
    #[cfg(all(test, feature = "redis"))]
    pub fn names(&self) -> Vec<&'static str> {
        self.lock().iter().map(|e| e.name).collect()
    }

    /// Ends the task `name`, as a bug would: only tests do.
    #[cfg(test)]
    pub fn abort(&self, name: &str) {
        let entries = self.lock();
        let entry = entries.iter().find(|e| e.name == name);
        entry.expect("a task of that name").abort.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn until_stopped(tasks: &Tasks) -> String {
        for _ in 0..500 {
            if let Some(why) = tasks.stopped() {
                return why;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no task stopped")
    }

    #[tokio::test]
    async fn a_task_that_ends_is_reported_with_how() {
        let tasks = Tasks::default();
        tasks.spawn("sleeper", std::future::pending());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(tasks.stopped(), None);
        tasks.spawn("faulty", async { panic!("a bug") });
        assert_eq!(until_stopped(&tasks).await, "the faulty task panicked");

        let tasks = Tasks::default();
        tasks.spawn("short", async {});
        assert_eq!(until_stopped(&tasks).await, "the short task returned");

        let tasks = Tasks::default();
        tasks.spawn("sleeper", std::future::pending());
        tasks.abort("sleeper");
        assert_eq!(
            until_stopped(&tasks).await,
            "the sleeper task was cancelled"
        );
    }
}
