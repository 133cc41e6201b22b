//! The process exit codes of every subcommand (the contract in `docs/contract.md`).
//!
//! One small module below everything, so any layer (the CLI, the supervisor's pure
//! decisions, a part run alone) names the same codes without importing the CLI.

/// Something failed (`up`/`down`, a part run alone); `status`: something is unhealthy.
pub const EXIT_FAILED: u8 = 1;
/// An invalid site (`check`, `plan`, a part given a site); also clap's code for bad usage.
pub const EXIT_INVALID: u8 = 2;
/// `status` and control requests: no site (or part) runs there.
pub const EXIT_NOT_RUNNING: u8 = 3;
/// A subcommand whose part is not built yet; the supervisor does not restart it.
pub const EXIT_NOT_BUILT: u8 = 69;
