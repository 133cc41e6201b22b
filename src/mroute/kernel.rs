//! The kernel's multicast routing API (`linux/mroute.h`, `linux/mroute6.h`): neither libc
//! nor nix defines it, so the structs are written here by hand and their sizes checked.

#![allow(non_camel_case_types)]

use libc::{in_addr, in6_addr, sockaddr_in6};

/// The kernel has this many VIFs (MAXVIFS) and MIFs (MAXMIFS).
pub const MAXVIFS: usize = 32;

pub const MRT_INIT: libc::c_int = 200;
pub const MRT_DONE: libc::c_int = 201;
pub const MRT_ADD_VIF: libc::c_int = 202;
pub const MRT_DEL_VIF: libc::c_int = 203;
pub const MRT_ADD_MFC: libc::c_int = 204;
pub const MRT_DEL_MFC: libc::c_int = 205;
pub const MRT_ASSERT: libc::c_int = 207;
pub const MRT_TABLE: libc::c_int = 209;
pub const MRT_FLUSH: libc::c_int = 212;
/// MRT6_* use the same numbers on level IPPROTO_IPV6.
pub const MRT6_INIT: libc::c_int = MRT_INIT;
pub const MRT6_ADD_MIF: libc::c_int = MRT_ADD_VIF;
pub const MRT6_DEL_MIF: libc::c_int = MRT_DEL_VIF;
pub const MRT6_ADD_MFC: libc::c_int = MRT_ADD_MFC;
pub const MRT6_DEL_MFC: libc::c_int = MRT_DEL_MFC;
pub const MRT6_ASSERT: libc::c_int = MRT_ASSERT;
pub const MRT6_TABLE: libc::c_int = MRT_TABLE;

pub const VIFF_USE_IFINDEX: u8 = 0x8;

/// Upcall types (IGMPMSG_* and MRT6MSG_* share them).
pub const MSG_NOCACHE: u8 = 1;
pub const MSG_WRONGVIF: u8 = 2;
pub const MSG_WHOLEPKT: u8 = 3;

pub const SIOCPROTOPRIVATE: libc::c_ulong = 0x89E0;
pub const SIOCGETSGCNT: libc::c_ulong = SIOCPROTOPRIVATE + 1;
pub const SIOCGETSGCNT_IN6: libc::c_ulong = SIOCPROTOPRIVATE + 1;

/// `ICMP6_FILTER` on level IPPROTO_ICMPV6.
pub const ICMP6_FILTER: libc::c_int = 1;

/// A TTL threshold of 255 in `mfcc_ttls` means "not an output".
pub const TTL_NOT_OUTPUT: u8 = 255;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct vifctl {
    pub vifc_vifi: u16,
    pub vifc_flags: u8,
    pub vifc_threshold: u8,
    pub vifc_rate_limit: u32,
    /// `vifc_lcl_addr` or, with VIFF_USE_IFINDEX, `vifc_lcl_ifindex`.
    pub vifc_lcl_ifindex: libc::c_int,
    pub vifc_rmt_addr: in_addr,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct mfcctl {
    pub mfcc_origin: in_addr,
    pub mfcc_mcastgrp: in_addr,
    pub mfcc_parent: u16,
    pub mfcc_ttls: [u8; MAXVIFS],
    pub mfcc_pkt_cnt: u32,
    pub mfcc_byte_cnt: u32,
    pub mfcc_wrong_if: u32,
    pub mfcc_expire: libc::c_int,
}

/// An upcall as read from the IGMP socket: it overlays an IP header, `im_mbz` sits where
/// the protocol number would be, so a real IGMP packet never has it zero.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct igmpmsg {
    pub unused1: u32,
    pub unused2: u32,
    pub im_msgtype: u8,
    pub im_mbz: u8,
    pub im_vif: u8,
    pub im_vif_hi: u8,
    pub im_src: in_addr,
    pub im_dst: in_addr,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct sioc_sg_req {
    pub src: in_addr,
    pub grp: in_addr,
    pub pktcnt: libc::c_ulong,
    pub bytecnt: libc::c_ulong,
    pub wrong_if: libc::c_ulong,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct mif6ctl {
    pub mif6c_mifi: u16,
    pub mif6c_flags: u8,
    pub vifc_threshold: u8,
    pub mif6c_pifi: u16,
    pub vifc_rate_limit: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct if_set {
    /// IF_SETSIZE (256) bits.
    pub ifs_bits: [u32; 8],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct mf6cctl {
    pub mf6cc_origin: sockaddr_in6,
    pub mf6cc_mcastgrp: sockaddr_in6,
    pub mf6cc_parent: u16,
    pub mf6cc_ifset: if_set,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct mrt6msg {
    pub im6_mbz: u8,
    pub im6_msgtype: u8,
    pub im6_mif: u16,
    pub im6_pad: u32,
    pub im6_src: in6_addr,
    pub im6_dst: in6_addr,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct sioc_sg_req6 {
    pub src: sockaddr_in6,
    pub grp: sockaddr_in6,
    pub pktcnt: libc::c_ulong,
    pub bytecnt: libc::c_ulong,
    pub wrong_if: libc::c_ulong,
}

/// `struct group_req` / `group_source_req` of MCAST_JOIN_GROUP / MCAST_JOIN_SOURCE_GROUP.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct group_req {
    pub gr_interface: u32,
    pub gr_group: libc::sockaddr_storage,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct group_source_req {
    pub gsr_interface: u32,
    pub gsr_group: libc::sockaddr_storage,
    pub gsr_source: libc::sockaddr_storage,
}

pub const MCAST_JOIN_GROUP: libc::c_int = 42;
pub const MCAST_LEAVE_GROUP: libc::c_int = 45;
pub const MCAST_JOIN_SOURCE_GROUP: libc::c_int = 46;
pub const MCAST_LEAVE_SOURCE_GROUP: libc::c_int = 47;

/// All-zero value of a plain-old-data kernel struct.
pub fn zeroed<T: Copy>() -> T {
    // SAFETY: only used with the `#[repr(C)]` integer-only structs of this module (and
    // libc's sockaddr types), for which all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn struct_sizes_match_the_kernel() {
        assert_eq!(size_of::<vifctl>(), 16);
        assert_eq!(size_of::<mfcctl>(), 60);
        assert_eq!(size_of::<igmpmsg>(), 20);
        assert_eq!(size_of::<mif6ctl>(), 12);
        assert_eq!(size_of::<mf6cctl>(), 92);
        assert_eq!(size_of::<mrt6msg>(), 40);
        assert_eq!(size_of::<sioc_sg_req>(), 32);
        assert_eq!(size_of::<sioc_sg_req6>(), 80);
        assert_eq!(size_of::<group_req>(), 136);
        assert_eq!(size_of::<group_source_req>(), 264);
    }
}
