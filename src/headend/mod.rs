//! The on-demand headend.

pub mod icy;
pub mod playlist;
