//! One module per subcommand.

pub mod manifest;
pub mod pool;
pub mod status;
