//! Errnos in one vocabulary. The kernel returns `-errno` (the probes record it as an `i64`),
//! user space sees the positive number in `errno`; both are an [`Errno`], named as the kernel
//! names it, 524 included (`ENOTSUPP`, kernel-internal, which libc has no name for).

use std::fmt;

/// An errno: the positive number user space sees; the kernel returns it negated.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Errno(i32);

impl Errno {
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const E2BIG: Errno = Errno(libc::E2BIG);
    pub const ENOMEM: Errno = Errno(libc::ENOMEM);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const EFAULT: Errno = Errno(libc::EFAULT);
    pub const EBUSY: Errno = Errno(libc::EBUSY);
    pub const ENODEV: Errno = Errno(libc::ENODEV);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const ENOTTY: Errno = Errno(libc::ENOTTY);
    pub const ETIMEDOUT: Errno = Errno(libc::ETIMEDOUT);
    /// The kernel-internal `ENOTSUPP` of `include/linux/errno.h` (the ploop ABI's number).
    pub const ENOTSUPP: Errno = Errno(ploop_common::ploop_if::ENOTSUPP);

    /// `MAX_ERRNO`: kernel returns in `-4095..=-1` are errnos (`IS_ERR_VALUE`).
    const MAX: i64 = 4095;

    /// A user-space errno, as `errno` or `io::Error::raw_os_error` has it.
    pub const fn from_raw(errno: i32) -> Errno {
        Errno(errno)
    }

    /// A kernel return value: `Some` for `-4095..=-1`, `None` for success, a pointer or any
    /// other number.
    pub const fn from_ret(ret: i64) -> Option<Errno> {
        if ret < 0 && ret >= -Self::MAX { Some(Errno(-ret as i32)) } else { None }
    }

    /// The errno of the last failed libc call of this thread.
    pub fn last() -> Errno {
        Errno(nix::errno::Errno::last_raw())
    }

    /// The positive number.
    pub const fn raw(self) -> i32 {
        self.0
    }

    /// As the kernel returns it: `-errno`.
    pub const fn ret(self) -> i64 {
        -(self.0 as i64)
    }

    /// `NAME (errno N)`, for people who may look the number up.
    pub fn numbered(self) -> String {
        format!("{self} (errno {})", self.0)
    }
}

/// The kernel's name: `EINVAL`, `ENOTSUPP`; `E<n>` for a number without one.
impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Errno::ENOTSUPP {
            return f.write_str("ENOTSUPP");
        }
        match nix::errno::Errno::from_raw(self.0) {
            nix::errno::Errno::UnknownErrno => write!(f, "E{}", self.0),
            e => write!(f, "{e:?}"),
        }
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<nix::errno::Errno> for Errno {
    fn from(e: nix::errno::Errno) -> Self {
        Errno(e as i32)
    }
}

/// A kernel return as the checker writes it: `-ENAME` for an errno, else the number.
pub fn ret_name(ret: i64) -> String {
    match Errno::from_ret(ret) {
        Some(e) => format!("-{e}"),
        None => ret.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_kernels() {
        assert_eq!(Errno::ENOTSUPP.to_string(), "ENOTSUPP");
        assert_eq!(Errno::from_raw(524), Errno::ENOTSUPP);
        assert_eq!(Errno::EINVAL.to_string(), "EINVAL");
        assert_eq!(Errno::ENODEV.to_string(), "ENODEV");
        assert_eq!(Errno::from_raw(4000).to_string(), "E4000");
        assert_eq!(format!("{:?}", Some(Errno::EBUSY)), "Some(EBUSY)");
        assert_eq!(Errno::ENOTSUPP.numbered(), "ENOTSUPP (errno 524)");
    }

    #[test]
    fn kernel_returns_are_negative_errnos() {
        assert_eq!(Errno::from_ret(-22), Some(Errno::EINVAL));
        assert_eq!(Errno::from_ret(Errno::ENOTSUPP.ret()), Some(Errno::ENOTSUPP));
        assert_eq!(Errno::from_ret(-4095), Some(Errno::from_raw(4095)));
        for not in [0, 7, -4096, i64::MIN, 0xffff_8880_1234_5678u64 as i64] {
            assert_eq!(Errno::from_ret(not), None, "{not}");
        }
        assert_eq!(Errno::from(nix::errno::Errno::EBADF), Errno::EBADF);
    }

    #[test]
    fn kernel_returns_are_named_like_the_ioctl_errors() {
        assert_eq!(ret_name(-9), "-EBADF");
        assert_eq!(ret_name(-524), "-ENOTSUPP");
        assert_eq!(ret_name(-22), "-EINVAL");
        assert_eq!(ret_name(0), "0");
        assert_eq!(ret_name(7), "7");
    }
}
