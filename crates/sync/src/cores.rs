//! Work after the last byte has arrived, spread over the cores.
//!
//! The apply's passes over every op (the staging check, the journal, the
//! verify) run while the fetch's threads are gone and the other cores idle.
//! Each slice keeps its items' order, so a directory cursor per slice still
//! walks directories in turn.

/// Items below which [`on_every_core`] does the work on the calling thread.
const PARALLEL_MIN_ITEMS: usize = 4096;

/// `work` over `items` in contiguous slices, one per core (at most four), on
/// scoped threads; the results in the order of `items`. The first error (in
/// item order) wins.
pub fn on_every_core<T: Sync, R: Send, E: Send>(
    items: &[T],
    work: impl Fn(&[T]) -> Result<Vec<R>, E> + Sync,
) -> Result<Vec<R>, E> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from).min(4);
    if cores == 1 || items.len() < PARALLEL_MIN_ITEMS {
        return work(items);
    }
    let slices: Vec<Result<Vec<R>, E>> = std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> =
            items.chunks(items.len().div_ceil(cores)).map(|slice| scope.spawn(move || work(slice))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    });
    let mut out = Vec::with_capacity(items.len());
    for slice in slices {
        out.extend(slice?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_order_of_the_items_on_one_thread_or_many() {
        for len in [0, 10, PARALLEL_MIN_ITEMS * 3 + 7] {
            let items: Vec<usize> = (0..len).collect();
            let doubled = on_every_core(&items, |slice| Ok::<_, ()>(slice.iter().map(|i| i * 2).collect())).unwrap();
            assert_eq!(doubled, items.iter().map(|i| i * 2).collect::<Vec<_>>(), "{len} items");
        }
    }

    #[test]
    fn the_first_error_in_item_order_wins() {
        let items: Vec<usize> = (0..PARALLEL_MIN_ITEMS * 4).collect();
        let failed = on_every_core(&items, |slice| match slice.iter().find(|&&i| i % 5000 == 4999) {
            Some(&bad) => Err(bad),
            None => Ok(slice.to_vec()),
        });
        assert_eq!(failed, Err(4999));
    }
}
