//! The on-demand headend.

pub mod directory;
pub mod http;
pub mod icy;
pub mod playlist;
pub mod source;
