//! One module per subcommand; `render` and `stream` are the shared view and
//! driver of the `SyncEvent` stream behind `sync`, `diff` and `rollback`.

pub mod diff;
pub mod history;
pub mod manifest;
pub mod pool;
pub mod render;
pub mod replication;
pub mod rollback;
pub mod status;
pub mod stream;
pub mod sync;
pub mod verify;
