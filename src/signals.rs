//! Signals as a file descriptor (signalfd(2)): a process blocks the signals it handles and
//! reads them from an fd it polls with its other fds, instead of handlers and global flags.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sys::signal::SigSet;
pub use nix::sys::signal::Signal;
use nix::sys::signalfd::SfdFlags;
pub use nix::sys::signalfd::SignalFd;

/// Blocks `signals` in the calling thread (threads started afterwards inherit the mask,
/// so call it before starting any) and returns a non-blocking, close-on-exec signalfd
/// that is readable while one of them is pending.
pub fn block(signals: &[Signal]) -> io::Result<SignalFd> {
    let mut mask = SigSet::empty();
    for s in signals {
        mask.add(*s);
    }
    mask.thread_block()?;
    Ok(SignalFd::with_flags(
        &mask,
        SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
    )?)
}

/// [`block`] for SIGTERM and SIGINT: the stop signals of every long-running part.
pub fn block_termination() -> io::Result<SignalFd> {
    block(&[Signal::SIGTERM, Signal::SIGINT])
}

/// The next pending signal of `fd` (consumed), None when none is pending.
pub fn next(fd: &SignalFd) -> Option<Signal> {
    loop {
        match fd.read_signal() {
            Ok(Some(info)) => match Signal::try_from(info.ssi_signo as i32) {
                Ok(s) => return Some(s),
                Err(_) => continue,
            },
            _ => return None,
        }
    }
}

/// An eventfd: a stop switch for the data path when it runs in-process (the benchmark), polled like a signalfd.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd with constant flags.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes an eventfd readable.
pub fn signal_eventfd(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writing 8 bytes to an eventfd.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}
