//! Giving freed memory back to the system after big operations.
//!
//! A scan builds a manifest of the whole tree while the previous one is still
//! served, a sync holds a plan and its target, a stat-cache save encodes the
//! manifest: each frees tens of megabytes at the end. glibc keeps freed memory
//! in its arenas (one per thread that allocated it: rayon's and tokio's workers
//! each have one) and returns it to the kernel only from the top of a heap, so a
//! daemon's resident size kept the high-water mark of every such operation.
//! `malloc_trim(0)` releases the free pages of every arena, and the daemon caps
//! the arenas at one per core instead of glibc's eight. With one arena in all,
//! a restart's rescan of the 150,000-file tree took 0.53–0.56 s, its scanning
//! threads queueing on the arena's lock; with one per core (two here) it takes
//! 0.31–0.34 s, and the daemon is as big afterwards (333–338 bytes/file resident
//! either way; glibc's default left 287–384). See BENCHMARKS.md.

/// Caps glibc's malloc arenas at one per core. Call first thing in `main`,
/// before any thread is started.
pub fn arena_per_core() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt takes no pointers; called before other threads exist.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Returns the allocator's free pages to the kernel. Call after an operation
/// that freed a lot (a full scan, a sync); it costs a walk of the free lists,
/// a few milliseconds for a daemon of a few hundred megabytes.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointers and only walks glibc's own free
        // lists under the allocator's locks; it is safe to call from any thread.
        #[allow(unsafe_code)]
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// [`release_freed`], at most once a second however many threads ask: after
/// each content stream a peer fetched from us or we fetched from a peer (a
/// few megabytes of buffers freed each, many streams a second). At 1,000,000
/// files a serving daemon's resident size otherwise crept up by ~50 MB over a
/// full copy.
pub fn release_freed_now_and_then() {
    static EVERY_SECOND: Throttle = Throttle::new(std::time::Duration::from_secs(1));
    if EVERY_SECOND.ready() {
        release_freed();
    }
}

/// Lets an action through at most once per interval, whichever thread asks:
/// for [`release_freed`] after work that frees a few megabytes many times a
/// second (each content stream a peer fetches), where trimming after every
/// one would cost more than it saves.
#[derive(Debug)]
pub struct Throttle {
    every_millis: u64,
    /// When the action last went through, in milliseconds since the process's
    /// first `ready` plus one; 0 for never.
    last: std::sync::atomic::AtomicU64,
}

impl Throttle {
    pub const fn new(every: std::time::Duration) -> Self {
        Self { every_millis: every.as_millis() as u64, last: std::sync::atomic::AtomicU64::new(0) }
    }

    /// True if the action may go now (and is counted as gone).
    pub fn ready(&self) -> bool {
        use std::sync::atomic::Ordering;
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let now = START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        // Another thread may have gone between our clock read and this load:
        // its later time then counts as not yet due.
        (last == 0 || now.saturating_sub(last) >= self.every_millis)
            && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_throttle_lets_the_first_call_through_and_then_none_until_its_interval_is_over() {
        let hourly = Throttle::new(Duration::from_secs(3600));
        assert!(hourly.ready());
        assert!(!hourly.ready());
        assert!(!hourly.ready());
        let always = Throttle::new(Duration::ZERO);
        assert!(always.ready() && always.ready());
    }
}
