//! The thread that forks every child, inside a PID namespace of the site's own.
//!
//! dbus-daemon and avahi-daemon switch user after exec, and the kernel clears
//! PR_SET_PDEATHSIG when credentials change: they would outlive a supervisor killed with
//! SIGKILL. So the children are forked into a PID namespace whose init (a forked copy of
//! the supervisor that only reaps) has PR_SET_PDEATHSIG=SIGKILL: when the supervisor
//! dies, init dies, and the kernel kills everything in the namespace.
//!
//! `unshare(CLONE_NEWPID)` changes where the calling thread's children go and forbids it
//! to make threads, so it happens on this dedicated thread, which only forks.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, Command};
use std::sync::mpsc;

use tracing::warn;

struct Job {
    cmd: Command,
    reply: mpsc::Sender<std::io::Result<Child>>,
}

pub struct Spawner {
    jobs: mpsc::Sender<Job>,
    /// The PID namespace's init, as seen from here (None: no PID namespace).
    pub init: Option<u32>,
}

impl Spawner {
    pub fn start() -> Spawner {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (init_tx, init_rx) = mpsc::channel::<Option<u32>>();
        let supervisor = std::process::id() as libc::pid_t;
        std::thread::Builder::new()
            .name("spawner".into())
            .spawn(move || {
                let init = match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID) {
                    Ok(()) => fork_init(supervisor),
                    Err(e) => {
                        warn!("no PID namespace for the children ({e}): a child that drops root outlives a killed supervisor until `down`");
                        None
                    }
                };
                let _ = init_tx.send(init);
                for mut job in rx {
                    let _ = job.reply.send(job.cmd.spawn());
                }
            })
            .expect("spawner thread");
        let init = init_rx.recv().unwrap_or(None);
        Spawner { jobs, init }
    }

    /// Forks and execs `cmd` on the spawner thread.
    pub fn spawn(&self, cmd: Command) -> std::io::Result<Child> {
        let (reply, r) = mpsc::channel();
        self.jobs
            .send(Job { cmd, reply })
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
        r.recv()
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
    }

    /// True if the children's getppid() is 0 (their parent is outside their namespace).
    pub fn in_pid_ns(&self) -> bool {
        self.init.is_some()
    }

    /// Kills the PID namespace's init (and so whatever is left inside) and reaps it.
    pub fn stop(&mut self) {
        if let Some(pid) = self.init.take() {
            // SAFETY: kill and waitpid take plain integers; `pid` is our own child, not yet
            // reaped (only this call reaps it), so the pid cannot have been reused.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
                libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
            }
        }
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A pidfd of process `pid` (pidfd_open(2)): it polls readable once the process exited,
/// whatever PID namespace the poller is in.
fn pidfd_open(pid: libc::pid_t) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes plain integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is the new, valid (checked) pidfd, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// True once the process of `pidfd` has exited. Async-signal-safe (one poll(2), no
/// allocation), so a forked child may call it.
fn exited(pidfd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd: pidfd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd, count 1, no wait.
    unsafe { libc::poll(&mut p, 1, 0) == 1 && p.revents & libc::POLLIN != 0 }
}

/// Forks the namespace's init: it dies with the supervisor and reaps orphans.
fn fork_init(supervisor: libc::pid_t) -> Option<u32> {
    // Inside the new PID namespace getppid() is 0 whoever the parent is, so the init
    // watches the supervisor through a pidfd taken before the fork.
    let watch = pidfd_open(supervisor)
        .map_err(|e| {
            warn!(
                "pidfd_open of the supervisor: {e}; its death before the init's prctl goes unseen"
            )
        })
        .ok();
    // -1: poll(2) ignores it, and `exited` says no.
    let watch_fd = watch.as_ref().map_or(-1, |w| w.as_raw_fd());
    // SAFETY: the child only makes async-signal-safe calls (prctl, poll, signal, wait,
    // pause, _exit) on values computed before the fork, and never returns.
    match unsafe { libc::fork() } {
        0 => unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // The supervisor died between fork and prctl: nothing would kill us later.
            if exited(watch_fd) {
                libc::_exit(0);
            }
            if watch_fd >= 0 {
                libc::close(watch_fd);
            }
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            loop {
                if libc::wait(std::ptr::null_mut()) < 0 {
                    libc::pause();
                }
            }
        },
        pid if pid > 0 => Some(pid as u32),
        _ => {
            warn!(
                "forking the PID namespace's init: {}",
                std::io::Error::last_os_error()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_watch_sees_a_process_exit() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let fd = pidfd_open(child.id() as libc::pid_t).expect("pidfd_open");
        assert!(!exited(fd.as_raw_fd()), "a live process reads as exited");
        child.kill().expect("kill");
        child.wait().expect("wait");
        assert!(exited(fd.as_raw_fd()), "an exited process reads as alive");
        let me = pidfd_open(std::process::id() as libc::pid_t).expect("pidfd_open self");
        assert!(!exited(me.as_raw_fd()));
    }
}
