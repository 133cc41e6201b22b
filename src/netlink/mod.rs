//! Links and addresses over rtnetlink. A [`Netlink`] is bound to the namespace its socket
//! was opened in (on a throwaway thread), so no call depends on the caller's namespace.

pub mod links;

pub use links::LinkWatch;

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth};

use crate::mac::Mac;
use crate::ns::{self, NsError};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{op} {object}: {errno}")]
    Kernel {
        op: &'static str,
        object: String,
        errno: nix::Error,
    },
    #[error("{op} {object}: {message}")]
    Netlink {
        op: &'static str,
        object: String,
        message: String,
    },
    #[error("opening a netlink socket in {0}: {1}")]
    Socket(String, std::io::Error),
    #[error(transparent)]
    Ns(#[from] NsError),
}

/// Duplicate address detection of one IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dad {
    /// Still being checked: the address cannot be used yet.
    Tentative,
    /// Another host on the link has it.
    Failed,
    /// Usable.
    Done,
}

impl NetError {
    /// The errno the kernel answered, if any.
    pub fn errno(&self) -> Option<nix::Error> {
        match self {
            NetError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

fn nl(op: &'static str, object: &str) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let object = object.to_string();
    move |e| match &e {
        rtnetlink::Error::NetlinkError(m) if m.code.is_some() => NetError::Kernel {
            op,
            object,
            errno: nix::Error::from_raw(-m.raw_code()),
        },
        _ => NetError::Netlink {
            op,
            object,
            message: e.to_string(),
        },
    }
}

/// True for the answers that mean "already so" when making or removing a thing.
pub fn already(e: &NetError) -> bool {
    matches!(
        e.errno(),
        Some(nix::Error::EEXIST | nix::Error::ENOENT | nix::Error::ENODEV)
    )
}

/// A netlink handle bound to one network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
    /// The namespace, for messages.
    pub place: String,
}

impl Netlink {
    /// A handle for the caller's own namespace.
    pub fn host() -> Result<Netlink, NetError> {
        let fd = ns::on_thread("netlink", open_socket).map_err(NetError::Ns)?;
        Ok(Self::from_fd(fd, "the host"))
    }

    /// A handle for a namespace held as an fd.
    pub fn in_netns(netns: &OwnedFd, place: &str) -> Result<Netlink, NetError> {
        let fd = ns::in_netns(place, netns, open_socket)?;
        Ok(Self::from_fd(fd, place))
    }

    fn from_fd(fd: OwnedFd, place: &str) -> Netlink {
        // SAFETY: the fd is a netlink socket we own; TokioSocket takes it over.
        let sock = unsafe { rtnetlink::sys::TokioSocket::from_raw_fd(fd.into_raw_fd()) };
        let (conn, handle, _) = rtnetlink::from_socket(sock);
        tokio::spawn(conn);
        Netlink {
            handle,
            place: place.to_string(),
        }
    }

    /// Index of the link `name`, or None if there is none.
    pub async fn index(&self, name: &str) -> Result<Option<u32>, NetError> {
        Ok(self.link(name).await?.map(|m| m.header.index))
    }

    /// The link `name`, or None if there is none.
    pub async fn link(&self, name: &str) -> Result<Option<LinkMessage>, NetError> {
        let r = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await
            .map_err(nl("looking up link", &format!("{name} in {}", self.place)));
        match r {
            Ok(m) => Ok(m),
            Err(e) if already(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Names of every link in the namespace.
    pub async fn link_names(&self) -> Result<Vec<String>, NetError> {
        let mut s = self.handle.link().get().execute();
        let mut names = vec![];
        while let Some(m) = s
            .try_next()
            .await
            .map_err(nl("listing links in", &self.place))?
        {
            names.extend(link_name(&m));
        }
        Ok(names)
    }

    pub async fn add_bridge(&self, name: &str) -> Result<(), NetError> {
        self.handle
            .link()
            .add(LinkBridge::new(name).up().build())
            .execute()
            .await
            .map_err(nl("adding bridge", name))
    }

    /// Creates the veth `host` with its peer `peer` made directly inside the namespace
    /// `netns` (so the peer's name never meets the host's names), both with their MACs.
    pub async fn add_veth(
        &self,
        host: &str,
        host_mac: Mac,
        peer: &str,
        peer_mac: Option<Mac>,
        netns: RawFd,
    ) -> Result<(), NetError> {
        let mut p = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .setns_by_fd(netns);
        if let Some(m) = peer_mac {
            p = p.address(m.0.to_vec());
        }
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_string())
            .address(host_mac.0.to_vec())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(p.build())))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl("adding veth", &format!("{host} (peer {peer})")))
    }

    /// Joins `link` to `bridge` and brings it up.
    pub async fn attach_up(
        &self,
        link: u32,
        name: &str,
        bridge: u32,
        bname: &str,
    ) -> Result<(), NetError> {
        self.handle
            .link()
            .change(
                LinkUnspec::new_with_index(link)
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("adding veth", &format!("{name} to bridge {bname}")))
    }

    /// Sets a link's MAC.
    pub async fn set_mac(&self, link: u32, name: &str, mac: Mac) -> Result<(), NetError> {
        self.handle
            .link()
            .change(
                LinkUnspec::new_with_index(link)
                    .address(mac.0.to_vec())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("setting MAC of", &format!("{name} in {}", self.place)))
    }

    pub async fn set_up(&self, link: u32, name: &str) -> Result<(), NetError> {
        self.handle
            .link()
            .change(LinkUnspec::new_with_index(link).up().build())
            .execute()
            .await
            .map_err(nl("bringing up", &format!("{name} in {}", self.place)))
    }

    /// Adds an address; one that is there already is fine.
    pub async fn add_address(
        &self,
        link: u32,
        name: &str,
        addr: IpAddr,
        prefix: u8,
    ) -> Result<(), NetError> {
        let r = self
            .handle
            .address()
            .add(link, addr, prefix)
            .execute()
            .await
            .map_err(nl(
                "adding address",
                &format!("{addr}/{prefix} to {name} in {}", self.place),
            ));
        match r {
            Err(e) if e.errno() == Some(nix::Error::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// The IPv6 addresses of a link and where duplicate address detection stands for each.
    pub async fn ipv6_dad(
        &self,
        link: u32,
        name: &str,
    ) -> Result<Vec<(IpAddr, u8, Dad)>, NetError> {
        use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link)
            .execute();
        let mut out = vec![];
        while let Some(m) = s.try_next().await.map_err(nl(
            "listing addresses of",
            &format!("{name} in {}", self.place),
        ))? {
            // IFA_FLAGS carries all 32 bits; the header's byte only the low 8.
            let mut flags = AddressFlags::from_bits_retain(m.header.flags.bits() as u32);
            let mut addr = None;
            for a in &m.attributes {
                match a {
                    AddressAttribute::Flags(f) => flags = *f,
                    AddressAttribute::Address(IpAddr::V6(v6)) => addr = Some(IpAddr::V6(*v6)),
                    _ => {}
                }
            }
            let Some(addr) = addr else { continue };
            let dad = if flags.contains(AddressFlags::Dadfailed) {
                Dad::Failed
            } else if flags.contains(AddressFlags::Tentative) {
                Dad::Tentative
            } else {
                Dad::Done
            };
            out.push((addr, m.header.prefix_len, dad));
        }
        Ok(out)
    }

    /// Deletes the link `name`; one that is not there is already deleted.
    pub async fn del_link(&self, name: &str) -> Result<bool, NetError> {
        let Some(i) = self.index(name).await? else {
            return Ok(false);
        };
        match self
            .handle
            .link()
            .del(i)
            .execute()
            .await
            .map_err(nl("deleting link", &format!("{name} in {}", self.place)))
        {
            Ok(()) => Ok(true),
            Err(e) if already(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn open_socket() -> Result<OwnedFd, NsError> {
    let io = |source| NsError::Io {
        op: "opening",
        object: "a netlink socket".into(),
        source,
    };
    let s = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE).map_err(io)?;
    // netlink-sys's Socket closes its fd when dropped: keep a duplicate of our own.
    // SAFETY: dup returns a new fd that nothing else owns (checked below).
    let fd = unsafe { libc::dup(s.as_raw_fd()) };
    if fd < 0 {
        return Err(io(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is the new, valid (checked) duplicate, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The name of a link message.
pub fn link_name(m: &LinkMessage) -> Option<String> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// The MAC of a link message.
pub fn link_mac(m: &LinkMessage) -> Option<Mac> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) if b.len() == 6 => {
            let mut a = [0u8; 6];
            a.copy_from_slice(b);
            Some(Mac(a))
        }
        _ => None,
    })
}
