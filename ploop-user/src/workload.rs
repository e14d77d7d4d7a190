//! The command a session watches: started once, then awaited together with the events. It
//! ends the session when it exits, when --duration passes, or at Ctrl-C.

use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::{
    process::Child,
    signal::unix::{Signal, SignalKind, signal},
    time::Instant,
};

/// A clap parser for durations and limits: a finite number above zero.
pub fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

pub enum Stopped {
    /// The workload exited with this status (128 + signal when killed).
    Exited(i32),
    Deadline,
    Interrupted,
}

pub struct Workload {
    child: Option<Child>,
    deadline: Option<Instant>,
    /// Installed before the workload starts, so no Ctrl-C is missed between polls.
    sigint: Signal,
}

impl Workload {
    /// Starts `command` (none: wait for the deadline or Ctrl-C).
    pub fn start(command: &[String], duration: Option<f64>) -> Result<Self> {
        let sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let child = match command.split_first() {
            Some((prog, rest)) => Some(
                tokio::process::Command::new(prog)
                    .args(rest)
                    .kill_on_drop(true)
                    .spawn()
                    .with_context(|| format!("starting {prog}"))?,
            ),
            None => None,
        };
        let deadline = duration.map(|d| Instant::now() + Duration::from_secs_f64(d));
        Ok(Workload { child, deadline, sigint })
    }

    /// Resolves at the first of: the workload exits, the deadline, Ctrl-C. Cancel-safe, for
    /// use in `select!` next to the event stream.
    pub async fn stopped(&mut self) -> Result<Stopped> {
        let child = async {
            match self.child.as_mut() {
                Some(c) => c.wait().await,
                None => std::future::pending().await,
            }
        };
        let deadline = async {
            match self.deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            st = child => {
                let st = st.context("waiting for the workload")?;
                let signal = std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0);
                Ok(Stopped::Exited(st.code().unwrap_or(128 + signal)))
            }
            _ = deadline => Ok(Stopped::Deadline),
            _ = self.sigint.recv() => Ok(Stopped::Interrupted),
        }
    }

    /// After Ctrl-C: the workload got the same SIGINT from the terminal; give it time to
    /// finish what it is doing (a snapshot ioctl completes in the kernel), then kill it.
    pub async fn wind_down(&mut self) {
        if let Some(c) = self.child.as_mut()
            && tokio::time::timeout(Duration::from_secs(5), c.wait()).await.is_err()
        {
            let _ = c.kill().await;
        }
    }
}

impl Stopped {
    /// The workload's exit status, if it exited.
    pub fn status(&self) -> Option<i32> {
        match self {
            Stopped::Exited(code) => Some(*code),
            Stopped::Deadline | Stopped::Interrupted => None,
        }
    }
}
