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

/// Forks the namespace's init: it dies with the supervisor and reaps orphans.
fn fork_init(supervisor: libc::pid_t) -> Option<u32> {
    // SAFETY: the child only makes async-signal-safe calls (prctl, getppid, wait, pause,
    // _exit) and never returns.
    match unsafe { libc::fork() } {
        0 => unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // Its parent is outside the namespace: getppid() is 0 while it lives.
            if libc::getppid() != 0 && libc::getppid() != supervisor {
                libc::_exit(0);
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
