//! Deadlines for sleeps, operation timeouts and lingering closes.
//!
//! An ordered map keyed by (deadline, sequence): insertion, cancellation and popping the
//! earliest are all O(log n), and a cancelled timer leaves nothing behind (a lazily-deleted
//! heap would keep every completed operation's timeout until its deadline passed).

use std::collections::BTreeMap;
use std::time::Instant;

/// Identifies one armed timer, for cancelling it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimerKey {
    deadline_ms: u64,
    seq: u64,
}

impl TimerKey {
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }
}

/// What an expired timer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Wake task `task` if it is still in wait number `wait`.
    Task { task: u32, wait: u32 },
    /// Give up flushing a closed socket and drop it.
    Linger { socket: usize, generation: u32 },
}

pub struct Timers {
    epoch: Instant,
    next_seq: u64,
    /// Each timer, and whether it is a background one (it does not keep `run` going).
    armed: BTreeMap<TimerKey, (Expiry, bool)>,
    foreground: usize,
}

impl Timers {
    pub fn new() -> Self {
        Timers { epoch: Instant::now(), next_seq: 0, armed: BTreeMap::new(), foreground: 0 }
    }

    /// Milliseconds since the loop was created (monotonic).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The deadline `ms` from now. Armed from the current millisecond rounded up and fired
    /// when the clock rounded down reaches it, so a timer never fires early.
    pub fn deadline_after(&self, ms: u64) -> u64 {
        let elapsed = self.epoch.elapsed();
        let ceil = elapsed.as_millis() as u64 + u64::from(!elapsed.subsec_nanos().is_multiple_of(1_000_000));
        ceil.saturating_add(ms)
    }

    pub fn now_seconds(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    pub fn arm_at(&mut self, deadline_ms: u64, what: Expiry) -> TimerKey {
        self.arm(deadline_ms, what, false)
    }

    /// Arms a timer; a `background` one does not keep the loop running by itself.
    pub fn arm(&mut self, deadline_ms: u64, what: Expiry, background: bool) -> TimerKey {
        let key = TimerKey { deadline_ms, seq: self.next_seq };
        self.next_seq += 1;
        self.armed.insert(key, (what, background));
        if !background {
            self.foreground += 1;
        }
        key
    }

    fn forget(&mut self, entry: Option<(Expiry, bool)>) -> Option<Expiry> {
        let (what, background) = entry?;
        if !background {
            self.foreground -= 1;
        }
        Some(what)
    }

    pub fn cancel(&mut self, key: TimerKey) {
        let entry = self.armed.remove(&key);
        self.forget(entry);
    }

    /// Whether any timer that keeps the loop running is armed.
    pub fn has_foreground(&self) -> bool {
        self.foreground > 0
    }

    pub fn len(&self) -> usize {
        self.armed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.armed.is_empty()
    }

    /// The earliest deadline, if any.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.armed.keys().next().map(|k| k.deadline_ms)
    }

    /// Removes and returns one timer whose deadline is at or before `now_ms`.
    pub fn pop_expired(&mut self, now_ms: u64) -> Option<Expiry> {
        let first = *self.armed.keys().next()?;
        if first.deadline_ms > now_ms {
            return None;
        }
        let entry = self.armed.remove(&first);
        self.forget(entry)
    }
}

impl Default for Timers {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(n: usize) -> Expiry {
        Expiry::Task { task: n as u32, wait: 0 }
    }

    #[test]
    fn expire_in_deadline_order_then_insertion_order() {
        let mut t = Timers::new();
        t.arm_at(30, task(3));
        t.arm_at(10, task(1));
        t.arm_at(10, task(2));
        t.arm_at(20, task(4));
        assert_eq!(t.next_deadline_ms(), Some(10));
        let mut got = vec![];
        while let Some(e) = t.pop_expired(25) {
            got.push(e);
        }
        assert_eq!(got, vec![task(1), task(2), task(4)]);
        assert_eq!(t.pop_expired(29), None);
        assert_eq!(t.pop_expired(30), Some(task(3)));
        assert!(t.is_empty());
    }

    #[test]
    fn a_deadline_is_never_early() {
        let t = Timers::new();
        for _ in 0..200 {
            let start = Instant::now();
            let deadline = t.deadline_after(2);
            while t.now_ms() < deadline {
                std::hint::spin_loop();
            }
            assert!(start.elapsed() >= std::time::Duration::from_millis(2), "{:?}", start.elapsed());
        }
    }

    #[test]
    fn background_timers_do_not_count_as_foreground() {
        let mut t = Timers::new();
        let bg = t.arm(10, task(1), true);
        assert!(!t.has_foreground());
        let fg = t.arm(20, task(2), false);
        assert!(t.has_foreground());
        t.cancel(fg);
        assert!(!t.has_foreground());
        assert_eq!(t.next_deadline_ms(), Some(10), "a background timer still sets the poll timeout");
        t.cancel(bg);
        assert!(t.is_empty());
    }

    #[test]
    fn cancelled_timers_leave_nothing_behind() {
        let mut t = Timers::new();
        let keys: Vec<_> = (0..1000).map(|i| t.arm_at(1_000_000 + i, task(i as usize))).collect();
        for k in &keys[..999] {
            t.cancel(*k);
        }
        assert_eq!(t.len(), 1);
        assert_eq!(t.pop_expired(u64::MAX), Some(task(999)));
    }

    #[test]
    fn hundred_thousand_timers_are_cheap() {
        let mut t = Timers::new();
        let start = Instant::now();
        for i in 0..100_000u64 {
            t.arm_at(i % 5000, task(i as usize));
        }
        let mut n = 0;
        while t.pop_expired(5000).is_some() {
            n += 1;
        }
        assert_eq!(n, 100_000);
        // Generous bound: the point is O(log n), not a benchmark.
        assert!(start.elapsed().as_millis() < 2000, "took {:?}", start.elapsed());
    }
}
