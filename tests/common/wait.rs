//! The one way a test waits for something to become true: [`Wait`], a
//! bounded poll (by time and by number of tries) that stops by itself and
//! panics naming what it waited for, in a blocking and an async form.
//! Also [`blocking`], which runs blocking harness code from async tests
//! without stalling the runtime.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// Run blocking `f`: through `block_in_place` inside a multi-thread
/// runtime (so the runtime's other tasks go on), directly anywhere else
/// (plain threads, a current-thread runtime, the benchmark's `main`).
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// What a check returns: done (with a value), or not yet (with what it
/// saw, for the timeout message).
pub trait Check {
    type Out;
    fn check(self) -> Result<Self::Out, Option<String>>;
}

impl<T> Check for Option<T> {
    type Out = T;
    fn check(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl Check for bool {
    type Out = ();
    fn check(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

/// `Err(e)`: not yet; the last `e` is in the timeout message.
impl<T, E: Display> Check for Result<T, E> {
    type Out = T;
    fn check(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(e.to_string()))
    }
}

/// A bounded wait: `what` (named in the panic), at most `limit`, a try
/// every `every` (so at most `limit / every + 1` tries), then it gives up.
#[must_use = "a Wait does nothing until `until`, `attempt` or their async forms"]
pub struct Wait {
    what: String,
    limit: Duration,
    every: Duration,
}

/// [`Wait`] for `what`, at most `limit`, a try every 250 ms.
pub fn wait(what: impl Into<String>, limit: Duration) -> Wait {
    Wait {
        what: what.into(),
        limit,
        every: Duration::from_millis(250),
    }
}

impl Wait {
    /// Try every `every` instead of every 250 ms.
    pub fn every(mut self, every: Duration) -> Self {
        self.every = every.max(Duration::from_millis(1));
        self
    }

    fn max_tries(&self) -> u128 {
        self.limit.as_millis() / self.every.as_millis().max(1) + 2
    }

    fn timed_out(&self, last: Option<String>) -> ! {
        match last {
            Some(last) => panic!(
                "timed out after {:?} waiting for {}; last: {last}",
                self.limit, self.what
            ),
            None => panic!("timed out after {:?} waiting for {}", self.limit, self.what),
        }
    }

    /// Try `f` (which blocks) until it is done: its value, or `Err` with the
    /// last thing it saw once the time or the tries are up.
    pub fn attempt<C: Check>(&self, mut f: impl FnMut() -> C) -> Result<C::Out, Option<String>> {
        let deadline = Instant::now() + self.limit;
        let mut last = None;
        for _ in 0..self.max_tries() {
            match f().check() {
                Ok(v) => return Ok(v),
                Err(seen) => last = seen.or(last),
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(self.every);
        }
        Err(last)
    }

    /// Blocking form: try `f` until it is done; panics naming what it
    /// waited for when the time or the tries are up.
    pub fn until<C: Check>(self, f: impl FnMut() -> C) -> C::Out {
        match self.attempt(f) {
            Ok(v) => v,
            Err(last) => self.timed_out(last),
        }
    }

    /// Async form: `f` may block (it runs through [`blocking`]); the pause
    /// between tries is a `tokio` sleep.
    pub async fn until_async<C: Check>(self, f: impl FnMut() -> C) -> C::Out {
        match self.attempt_async(f).await {
            Ok(v) => v,
            Err(last) => self.timed_out(last),
        }
    }

    /// Async form of [`Wait::attempt`]: its value, or `Err` with the last
    /// thing `f` saw.
    pub async fn attempt_async<C: Check>(
        &self,
        mut f: impl FnMut() -> C,
    ) -> Result<C::Out, Option<String>> {
        let deadline = Instant::now() + self.limit;
        let mut last = None;
        for _ in 0..self.max_tries() {
            match blocking(&mut f).check() {
                Ok(v) => return Ok(v),
                Err(seen) => last = seen.or(last),
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(self.every).await;
        }
        Err(last)
    }
}
