//! The on-demand headend: receivers' MLD/IGMP joins start streams (see issue 10).

pub mod listen;
pub mod membership;
pub mod wire;
