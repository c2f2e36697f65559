//! Reload hooks: what the server re-reads when the operator asks (`SIGHUP` to the binary, which
//! calls [`crate::Server::reload`]).
//!
//! A part of the server whose configuration lives in files it must re-read without a restart
//! (authentication keys, for one) registers a hook with [`Reloads::register`] (or, from outside
//! the library, [`crate::Server::on_reload`]) when the server starts. A reload runs every hook
//! in registration order on the caller's thread (the binary's main thread: never a request or
//! stream thread), logs each outcome, and goes on past a failing one: a hook that fails must
//! leave what it had in place (the old keys stay valid), so a bad file never takes the server
//! down.
//!
//! The log file is not a hook: it belongs to the binary, which reopens it itself before calling
//! [`crate::Server::reload`].

use std::sync::Arc;

use parking_lot::Mutex;

/// A hook: re-reads what it is about; `Err(why)` leaves the previous state in place.
pub type ReloadHook = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The outcome of one hook in a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// What the hook reloads, as it registered (`jwt-keys`): the `what=` of its log line.
    pub what: &'static str,
    /// `Err(why)` if it failed (and kept what it had).
    pub result: Result<(), String>,
}

/// The registered hooks. Cheap to clone (shared).
#[derive(Clone, Default)]
pub(crate) struct Reloads {
    hooks: Arc<Mutex<Vec<(&'static str, ReloadHook)>>>,
}

impl Reloads {
    /// Adds a hook that reloads `what` (a short stable word for logs: `jwt-keys`).
    pub(crate) fn register(&self, what: &'static str, hook: ReloadHook) {
        self.hooks.lock().push((what, hook));
    }

    /// Runs every hook in registration order; logs `reloaded what=…` or
    /// `reload failed what=… error=…` for each.
    pub(crate) fn run(&self) -> Vec<Reloaded> {
        // Copied out: a hook reads files, and the lock guards only the list.
        let hooks: Vec<(&'static str, ReloadHook)> = self.hooks.lock().clone();
        log::info!("reload started hooks={}", hooks.len());
        hooks
            .into_iter()
            .map(|(what, hook)| {
                let result = hook();
                match &result {
                    Ok(()) => log::info!("reloaded what={what}"),
                    Err(e) => log::error!("reload failed what={what} error={e:?}"),
                }
                Reloaded { what, result }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_hook_runs_in_order_and_a_failing_one_does_not_stop_the_rest() {
        let reloads = Reloads::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        reloads.register(
            "keys",
            Arc::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
        );
        reloads.register("broken", Arc::new(|| Err("no such file".into())));
        let r = runs.clone();
        reloads.register(
            "more",
            Arc::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
        );
        let done = reloads.run();
        assert_eq!(
            done,
            vec![
                Reloaded {
                    what: "keys",
                    result: Ok(())
                },
                Reloaded {
                    what: "broken",
                    result: Err("no such file".into())
                },
                Reloaded {
                    what: "more",
                    result: Ok(())
                },
            ]
        );
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(reloads.run().len(), 3, "again on the next reload");
    }
}
