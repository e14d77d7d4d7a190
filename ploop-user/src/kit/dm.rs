//! Device-mapper control through its ioctls (`/dev/mapper/control`), enough to stack linear
//! and crypt targets and to suspend/resume them: suspend with lock_fs is one of the kernel's
//! own callers of `freeze_bdev`.

use std::{fs, os::fd::AsRawFd, path::PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};

const DM_CONTROL: &str = "/dev/mapper/control";
const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
const DM_MAX_TYPE_NAME: usize = 16;

const DM_DEV_CREATE: u8 = 3;
const DM_DEV_REMOVE: u8 = 4;
const DM_DEV_SUSPEND: u8 = 6;
const DM_DEV_STATUS: u8 = 7;
const DM_TABLE_LOAD: u8 = 9;
const DM_TABLE_STATUS: u8 = 12;

/// Suspend (set) or resume (clear) in `DM_DEV_SUSPEND`.
const DM_SUSPEND_FLAG: u32 = 1 << 1;
/// `DM_TABLE_LOAD`: a read-only table (dm opens the devices under it for reading only).
const DM_READONLY_FLAG: u32 = 1 << 0;
/// `DM_TABLE_STATUS`: the table, not the status.
const DM_STATUS_TABLE_FLAG: u32 = 1 << 4;
/// Set by the kernel when the answer did not fit.
const DM_BUFFER_FULL_FLAG: u32 = 1 << 8;
/// Not set by us: without it, suspend freezes the filesystem on the device.
#[allow(dead_code)]
const DM_SKIP_LOCKFS_FLAG: u32 = 1 << 10;

/// `struct dm_ioctl` from `<linux/dm-ioctl.h>`.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; DM_NAME_LEN],
    uuid: [u8; DM_UUID_LEN],
    data: [u8; 7],
}
const _: () = assert!(std::mem::size_of::<DmIoctl>() == 312);

/// `struct dm_target_spec`.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    next: u32,
    target_type: [u8; DM_MAX_TYPE_NAME],
}
const _: () = assert!(std::mem::size_of::<DmTargetSpec>() == 40);

/// `_IOWR(0xfd, cmd, struct dm_ioctl)`.
const fn request(cmd: u8) -> libc::Ioctl {
    nix::request_code_readwrite!(0xfd, cmd, std::mem::size_of::<DmIoctl>())
}

fn header(name: &str, data_size: usize) -> Result<DmIoctl> {
    if name.is_empty() || name.len() >= DM_NAME_LEN || name.contains('/') {
        bail!("invalid device-mapper name {name:?}");
    }
    // SAFETY: all-zero is a valid `DmIoctl`.
    let mut h: DmIoctl = unsafe { std::mem::zeroed() };
    h.version = [4, 0, 0];
    h.data_size = data_size as u32;
    h.data_start = std::mem::size_of::<DmIoctl>() as u32;
    h.name[..name.len()].copy_from_slice(name.as_bytes());
    Ok(h)
}

fn call(cmd: u8, buf: &mut [u8], what: &str) -> Result<DmIoctl> {
    let ctl = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(DM_CONTROL)
        .with_context(|| format!("opening {DM_CONTROL} (is dm-mod loaded?)"))?;
    // SAFETY: `buf` starts with a `DmIoctl` and is `data_size` long, as the kernel expects.
    let rc = unsafe { libc::ioctl(ctl.as_raw_fd(), request(cmd), buf.as_mut_ptr()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| what.to_string());
    }
    // SAFETY: the kernel wrote a `DmIoctl` back at the start of `buf`.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<DmIoctl>()) })
}

fn simple(cmd: u8, name: &str, flags: u32, what: &str) -> Result<DmIoctl> {
    let mut h = header(name, std::mem::size_of::<DmIoctl>())?;
    h.flags = flags;
    let mut buf = bytes_of(&h).to_vec();
    call(cmd, &mut buf, what)
}

fn bytes_of<T>(v: &T) -> &[u8] {
    // SAFETY: viewing a `repr(C)` value without padding holes as bytes.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// One line of a table: `start length type params`, in 512-byte sectors.
#[derive(Clone, Debug)]
pub struct Target {
    pub start: u64,
    pub length: u64,
    pub kind: String,
    pub params: String,
}

/// The live table of `name`, as `dmsetup table --showkeys` shows it: the kernel's
/// `DM_TABLE_STATUS` with `DM_STATUS_TABLE_FLAG` (dm-crypt prints its key there in hex; only
/// dmsetup hides it without `--showkeys`). Devices are named `major:minor` in the params.
pub fn table(name: &str) -> Result<Vec<Target>> {
    // Tables here are a line or two; a crypt line with a 512-bit key is under 300 bytes.
    let size = std::mem::size_of::<DmIoctl>() + 16 * 1024;
    let mut h = header(name, size)?;
    h.flags = DM_STATUS_TABLE_FLAG;
    let mut buf = bytes_of(&h).to_vec();
    buf.resize(size, 0);
    let out = call(DM_TABLE_STATUS, &mut buf, &format!("reading the table of {name}"))?;
    if out.flags & DM_BUFFER_FULL_FLAG != 0 {
        bail!("the table of {name} does not fit in {size} bytes");
    }
    parse_status(&buf, out.data_start as usize, out.target_count as usize)
        .with_context(|| format!("the table of {name}"))
}

/// The targets the kernel wrote after `data_start`: each a `dm_target_spec`, its params as a
/// C string, and `next` the offset of the next spec from `data_start` (dm-ioctl.c
/// `retrieve_status`).
fn parse_status(buf: &[u8], data_start: usize, count: usize) -> Result<Vec<Target>> {
    let spec_len = std::mem::size_of::<DmTargetSpec>();
    let data =
        buf.get(data_start..).ok_or_else(|| anyhow!("data_start {data_start} past the end"))?;
    let mut at = 0usize;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let raw = data
            .get(at..at + spec_len)
            .ok_or_else(|| anyhow!("target {i} at {at} lies past the end"))?;
        // SAFETY: `raw` is `spec_len` bytes; `DmTargetSpec` is plain old data.
        let spec = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast::<DmTargetSpec>()) };
        let rest = &data[at + spec_len..];
        let end = memchr::memchr(0, rest).ok_or_else(|| anyhow!("target {i}: unterminated"))?;
        let kind_end = spec.target_type.iter().position(|&b| b == 0).unwrap_or(DM_MAX_TYPE_NAME);
        out.push(Target {
            start: spec.sector_start,
            length: spec.length,
            kind: String::from_utf8_lossy(&spec.target_type[..kind_end]).into_owned(),
            params: String::from_utf8_lossy(&rest[..end]).into_owned(),
        });
        if (spec.next as usize) <= at && i + 1 < count {
            bail!("target {i}: next {} does not move forward", spec.next);
        }
        at = spec.next as usize;
    }
    Ok(out)
}

impl std::fmt::Display for Target {
    /// One line as `dmsetup table` prints it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {} {}", self.start, self.length, self.kind, self.params)
    }
}

/// Creates device `name` with `table` and resumes it (makes the table live).
/// Returns the new block device node.
pub fn create(name: &str, table: &[Target]) -> Result<PathBuf> {
    create_with(name, table, false)
}

/// [`create`], read-only when `read_only` (a device over a read-only disk, such as an old
/// snapshot's deltas attached read-only).
pub fn create_with(name: &str, table: &[Target], read_only: bool) -> Result<PathBuf> {
    simple(DM_DEV_CREATE, name, 0, &format!("creating dm device {name}"))?;
    let flags = if read_only { DM_READONLY_FLAG } else { 0 };
    let loaded = load_table(name, table, flags).and_then(|_| resume(name));
    if let Err(e) = loaded {
        // Nothing half-done: a device without a live table is removed again.
        let _ = remove(name);
        return Err(e);
    }
    node(name).inspect(|n| link_mapper(name, n))
}

/// Like [`create`], with a dm uuid set at `DM_DEV_CREATE`. cryptsetup gives its crypt
/// devices uuids that start with `CRYPT-`; the ploop snapshot autodetection looks for that
/// prefix among the holders of the ploop device.
pub fn create_with_uuid(name: &str, uuid: &str, table: &[Target]) -> Result<PathBuf> {
    if uuid.is_empty() || uuid.len() >= DM_UUID_LEN || uuid.contains('\0') {
        bail!("invalid device-mapper uuid {uuid:?} (1 to {} bytes)", DM_UUID_LEN - 1);
    }
    let mut h = header(name, std::mem::size_of::<DmIoctl>())?;
    h.uuid[..uuid.len()].copy_from_slice(uuid.as_bytes());
    let mut buf = bytes_of(&h).to_vec();
    call(DM_DEV_CREATE, &mut buf, &format!("creating dm device {name} (uuid {uuid})"))?;
    let loaded = load_table(name, table, 0).and_then(|_| resume(name));
    if let Err(e) = loaded {
        let _ = remove(name);
        return Err(e);
    }
    node(name).inspect(|n| link_mapper(name, n))
}

/// A dm-crypt table over all of `device` (`sectors` long): `aes-xts-plain64` with `key_hex`,
/// IV offset 0, data from sector 0. Plain mode: no header on the device.
pub fn crypt_table(device: &std::path::Path, sectors: u64, key_hex: &str) -> Result<Target> {
    if !(key_hex.len() == 64 || key_hex.len() == 128)
        || !key_hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        bail!("the aes-xts key must be 64 or 128 hex digits (256 or 512 bits)");
    }
    Ok(Target {
        start: 0,
        length: sectors,
        kind: "crypt".into(),
        params: format!("aes-xts-plain64 {key_hex} 0 {} 0", device.display()),
    })
}

fn load_table(name: &str, table: &[Target], flags: u32) -> Result<()> {
    let mut body = Vec::new();
    for t in table {
        if t.kind.is_empty() || t.kind.len() >= DM_MAX_TYPE_NAME {
            bail!("invalid target type {:?}", t.kind);
        }
        let mut params = t.params.as_bytes().to_vec();
        params.push(0);
        let len = std::mem::size_of::<DmTargetSpec>() + params.len();
        let padded = len.div_ceil(8) * 8;
        let mut spec = DmTargetSpec {
            sector_start: t.start,
            length: t.length,
            status: 0,
            next: padded as u32,
            target_type: [0; DM_MAX_TYPE_NAME],
        };
        spec.target_type[..t.kind.len()].copy_from_slice(t.kind.as_bytes());
        body.extend_from_slice(bytes_of(&spec));
        body.extend_from_slice(&params);
        body.resize(body.len() + (padded - len), 0);
    }
    let mut h = header(name, std::mem::size_of::<DmIoctl>() + body.len())?;
    h.target_count = table.len() as u32;
    h.flags = flags;
    let mut buf = bytes_of(&h).to_vec();
    buf.extend_from_slice(&body);
    call(DM_TABLE_LOAD, &mut buf, &format!("loading the table of {name}")).map(|_| ())
}

/// Suspends `name`, freezing the filesystem on it (lock_fs).
pub fn suspend(name: &str) -> Result<()> {
    simple(DM_DEV_SUSPEND, name, DM_SUSPEND_FLAG, &format!("suspending {name}")).map(|_| ())
}

/// Resumes `name`, thawing what suspend froze.
pub fn resume(name: &str) -> Result<()> {
    simple(DM_DEV_SUSPEND, name, 0, &format!("resuming {name}")).map(|_| ())
}

pub fn remove(name: &str) -> Result<()> {
    simple(DM_DEV_REMOVE, name, 0, &format!("removing {name}"))?;
    let link = PathBuf::from("/dev/mapper").join(name);
    if fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
        let _ = fs::remove_file(&link);
    }
    Ok(())
}

/// `/dev/mapper/NAME` -> `../dm-N`, as udev's rules make it. Clients name dm devices by that
/// path (libploop opens `/dev/mapper/CRYPT-...` for its sync fd); where no udev runs (a
/// guest's init) nothing else makes it. Where udev made it already, it stays as it is.
fn link_mapper(name: &str, node: &std::path::Path) {
    let link = PathBuf::from("/dev/mapper").join(name);
    if fs::symlink_metadata(&link).is_err()
        && let Some(dm) = node.file_name()
    {
        let _ = std::os::unix::fs::symlink(PathBuf::from("..").join(dm), &link);
    }
}

/// `/dev/dm-N` of `name`, from the `dev` the kernel reports.
pub fn node(name: &str) -> Result<PathBuf> {
    let st = simple(DM_DEV_STATUS, name, 0, &format!("status of {name}"))?;
    // `dev` is huge_encode_dev(): the user-space encoding.
    let dev = crate::kernel::KDev::from_user(st.dev);
    let (major, minor) = (dev.major(), dev.minor());
    for entry in fs::read_dir("/sys/block").context("reading /sys/block")? {
        let entry = entry?;
        let dev = fs::read_to_string(entry.path().join("dev")).unwrap_or_default();
        if dev.trim() == format!("{major}:{minor}") {
            return Ok(PathBuf::from("/dev").join(entry.file_name()));
        }
    }
    Err(anyhow!("dm device {name} ({major}:{minor}) has no node in /sys/block"))
}

/// Size of a block device in 512-byte sectors, from sysfs.
pub fn sectors(dev: &std::path::Path) -> Result<u64> {
    let name = dev.file_name().ok_or_else(|| anyhow!("{} is not a device path", dev.display()))?;
    let path = PathBuf::from("/sys/class/block").join(name).join("size");
    let s = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    s.trim().parse().with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two targets laid out as dm-ioctl.c's retrieve_status writes them (`next` from the
    /// data start, 8-byte aligned), and a damaged one.
    #[test]
    fn table_status_is_parsed_as_the_kernel_lays_it_out() {
        let mut data = Vec::new();
        for (start, len, kind, params) in
            [(0u64, 100u64, "linear", "253:1 8"), (100, 28, "crypt", "aes-xts-plain64 00 0 7:0 0")]
        {
            let at = data.len();
            let mut spec = DmTargetSpec {
                sector_start: start,
                length: len,
                status: 0,
                next: 0,
                target_type: [0; DM_MAX_TYPE_NAME],
            };
            spec.target_type[..kind.len()].copy_from_slice(kind.as_bytes());
            data.extend_from_slice(bytes_of(&spec));
            data.extend_from_slice(params.as_bytes());
            data.push(0);
            data.resize(data.len().div_ceil(8) * 8, 0);
            let next = data.len() as u32;
            data[at + 20..at + 24].copy_from_slice(&next.to_ne_bytes());
        }
        let mut buf = vec![0u8; 312];
        buf.extend_from_slice(&data);
        let t = parse_status(&buf, 312, 2).unwrap();
        assert_eq!(t[0].to_string(), "0 100 linear 253:1 8");
        assert_eq!((t[1].start, t[1].kind.as_str()), (100, "crypt"));
        assert!(parse_status(&buf, 312, 3).is_err(), "a third target past the end");
        assert!(parse_status(&buf[..330], 312, 1).is_err(), "a truncated spec");
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_header() {
        // DM_DEV_CREATE = _IOWR(0xfd, 3, struct dm_ioctl) = 0xc138fd03
        assert_eq!(request(DM_DEV_CREATE) as u64 & 0xffff_ffff, 0xc138_fd03);
        assert_eq!(request(DM_DEV_SUSPEND) as u64 & 0xffff_ffff, 0xc138_fd06);
        assert_eq!(request(DM_TABLE_LOAD) as u64 & 0xffff_ffff, 0xc138_fd09);
    }

    #[test]
    fn bad_names_are_refused_before_any_ioctl() {
        assert!(header("", 312).is_err());
        assert!(header("a/b", 312).is_err());
        assert!(header(&"x".repeat(128), 312).is_err());
        assert!(header("ok", 312).is_ok());
    }

    #[test]
    fn crypt_tables() {
        let key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let t = crypt_table(std::path::Path::new("/dev/ploop0"), 2048, key).unwrap();
        assert_eq!(t.kind, "crypt");
        assert_eq!(t.params, format!("aes-xts-plain64 {key} 0 /dev/ploop0 0"));
        assert!(crypt_table(std::path::Path::new("/dev/x"), 1, "abc").is_err());
        assert!(crypt_table(std::path::Path::new("/dev/x"), 1, &"g".repeat(64)).is_err());
    }
}
