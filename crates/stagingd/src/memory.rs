//! Giving freed memory back to the system after big operations.
//!
//! A scan builds a manifest of the whole tree while the previous one is still
//! served, a sync holds a plan and its target, a stat-cache save encodes the
//! manifest: each frees tens of megabytes at the end. glibc keeps freed memory
//! in its arenas (one per thread that allocated it: rayon's and tokio's workers
//! each have one) and returns it to the kernel only from the top of a heap, so a
//! daemon's resident size kept the high-water mark of every such operation.
//! `malloc_trim(0)` releases the free pages of every arena, and the daemon uses
//! one arena: per-thread caches keep small allocations lock-free anyway, and
//! measured on the 150,000-file tree one arena left 51 MB resident after the
//! first scan where glibc's default (eight per core) left 70 MB, with the same
//! scan time (1.29–1.34 s either way; see BENCHMARKS.md).

/// Limits glibc to one malloc arena. Call first thing in `main`, before any
/// thread is started.
pub fn one_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt takes no pointers; called before other threads exist.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
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
