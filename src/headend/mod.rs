//! The on-demand headend: a receiver's MLD/IGMP join starts a stream, SAP is the menu, the
//! last leave stops it.

pub mod announce;
pub mod directory;
pub mod http;
pub mod icy;
pub mod listen;
pub mod membership;
pub mod playlist;
pub mod relay;
pub mod rtcp;
pub mod run;
pub mod service;
pub mod source;
pub mod wire;

pub use run::{HeadendError, main};
