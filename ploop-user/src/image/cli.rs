//! `ploop-verify image info|check|cat`: the image reader from the command line.

use std::{
    fs::File,
    io::{self, IsTerminal as _},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand, ValueEnum};

use super::{
    BlockRead, ErrorKind, ImageError, Locate, SECTOR, Stack,
    crypt::CryptTable,
    delta::{DeltaFormat, Expect, RawHeld},
    ext4::{self, Verdict},
    gpt::{self, Gpt},
    ploop1::{self, SIGNATURE_DISK_CLOSED_V21, SIGNATURE_DISK_IN_USE},
};

/// `image --help`: what a user needs to read a stack (main.rs hangs it on the subcommand).
pub const ABOUT: &str = "\
Read ploop images offline: raw and ploop1 deltas, stacked bottom first.

A ploop device shows a stack of delta files: the base (raw or ploop1) at the bottom, a ploop1 \
delta for each snapshot above it, the top one written to. Each block is read from the highest \
delta that holds it: a ploop1 delta holds the clusters its BAT maps, a raw base every block. \
Give the deltas bottom first, e.g. in the order of DiskDescriptor.xml's snapshots. Every delta \
above the base must be ploop1 (snapshot deltas always are); the base is ploop1 when it has the \
signature, raw otherwise, and refused when its first bytes look like a damaged ploop1 header \
(`--format raw` reads it as raw anyway).

Inside the device, in this order as on the stack of the patch's commit: a GPT (`--part 1` is \
ploopNp1), dm-crypt (`--crypt-table FILE`, holding the line `dmsetup table --showkeys NAME` \
prints), dm-linear (`--offset SECTORS`, the last field of its table).

Examples:
  ploop-verify image info root.hdd root.hdd.1 root.hdd.2   # deltas, partitions, ext4 state
  ploop-verify image check root.hdd.2                      # validate a ploop1 file
  ploop-verify image cat --part 1 root.hdd root.hdd.1 > fs.img && e2fsck -fn fs.img

Exit status: 0 fine; 1 `check` found problems; 2 unreadable or damaged input (the error names \
the file and the byte offset); 64 bad usage. Memory is bounded by the files, not by what their \
headers claim.";

#[derive(Subcommand, Debug)]
pub enum Image {
    /// Describe each delta (format, version, sizes, cluster, allocated clusters, m_DiskInUse),
    /// the logical device, its GPT partitions, and ext4's state where the filesystem is.
    ///
    /// The last line is X1's question: does ext4's superblock there carry needs_recovery
    /// (the old snapshot cannot be mounted read-only without a journal replay)?
    ///
    /// Exit status: 0 every delta was read (whatever the filesystem's state, and also when
    /// there is no GPT or no ext4 there); 2 a delta refused (damaged or truncated, named with
    /// its byte offset), unreadable, a damaged GPT, or the filesystem's place unreadable;
    /// 64 bad usage.
    ///
    /// Example: ploop-verify image info --part 1 root.hdd root.hdd.1
    Info(InfoArgs),
    /// Validate ploop1 files: the signature, every header field (m_Type, m_Sectors, m_Size
    /// against m_SizeInSectors, m_FirstBlockOffset past the BAT, m_DiskInUse, m_Flags,
    /// m_FormatExtensionOffset), and every BAT entry (inside the file, past the header and BAT,
    /// aligned, no two overlapping). Each problem is printed with its byte offset.
    ///
    /// At most 1000 problems are printed per file; the rest are counted.
    ///
    /// Exit status: 0 no problem; 1 problems (including no ploop1 signature, a truncated
    /// file); 2 a file could not be read at all; 64 bad usage.
    ///
    /// Example: ploop-verify image check root.hdd.1 root.hdd.2
    Check(CheckArgs),
    /// Write the logical device (or one partition, decrypted, from an offset) to stdout,
    /// streaming: memory stays bounded whatever the size. Holes read as zeros.
    ///
    /// Exit status: 0 written (a reader closing the pipe early, as `head` does, included);
    /// 2 a delta refused (damaged or truncated, named with its byte offset), unreadable, a
    /// partition or offset outside the device, a failed write, or stdout a terminal; 64 bad
    /// usage. Data written before a damaged cluster was reached stays written.
    ///
    /// Example: ploop-verify image cat --part 1 --crypt-table t.txt --offset 2048 root.hdd
    /// root.hdd.1 > fs.img && dumpe2fs -h fs.img
    Cat(CatArgs),
}

/// Where the filesystem lies inside the logical device.
#[derive(Args, Debug, Clone)]
pub struct LocateArgs {
    /// GPT partition N of the logical device (1 is ploopNp1, where a container's filesystem,
    /// or its dm-crypt, lives).
    #[arg(long = "part", value_name = "N")]
    pub part: Option<u32>,
    /// A dm-crypt table to decrypt with (after --part): a file holding what `dmsetup table
    /// --showkeys NAME` prints. aes-xts-plain64 and aes-xts-plain. Its offset field is used;
    /// its device field is taken to be what --part selects (not checked).
    #[arg(long = "crypt-table", value_name = "FILE")]
    pub crypt_table: Option<PathBuf>,
    /// A dm-linear offset in 512-byte sectors (the last field of `0 LEN linear DEV OFFSET`),
    /// applied last.
    #[arg(long, value_name = "SECTORS")]
    pub offset: Option<u64>,
}

impl LocateArgs {
    pub fn locate(&self) -> Result<Locate> {
        let crypt = match &self.crypt_table {
            Some(f) => {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("reading the crypt table {}", f.display()))?;
                Some(
                    CryptTable::parse(&text)
                        .with_context(|| format!("crypt table {}", f.display()))?,
                )
            }
            None => None,
        };
        Ok(Locate { partition: self.part, crypt, linear_offset: self.offset })
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.part {
            parts.push(format!("partition {n}"));
        }
        if self.crypt_table.is_some() {
            parts.push("dm-crypt".into());
        }
        if let Some(o) = self.offset {
            parts.push(format!("offset {o} sectors"));
        }
        if parts.is_empty() { "the whole device".into() } else { parts.join(", ") }
    }
}

/// The base delta's format, for `--format`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseFormat {
    /// ploop1 with the signature, raw without, refused when it looks like a damaged ploop1
    /// header.
    Auto,
    /// Raw, whatever its first bytes hold.
    Raw,
    /// ploop1: refused without the signature.
    Ploop1,
}

/// The deltas of a stack, and how to take the base.
#[derive(Args, Debug, Clone)]
pub struct StackArgs {
    /// The base (bottom) delta's format; every delta above it is ploop1.
    #[arg(long, value_enum, default_value = "auto", value_name = "FORMAT")]
    pub format: BaseFormat,
    /// Delta files, bottom (base) first.
    #[arg(required = true, value_name = "DELTA")]
    pub deltas: Vec<PathBuf>,
}

impl StackArgs {
    pub fn open(&self) -> Result<Stack> {
        let base = match self.format {
            BaseFormat::Auto => Expect::Detect,
            BaseFormat::Raw => Expect::Raw,
            BaseFormat::Ploop1 => Expect::Ploop1,
        };
        Stack::open_with(&self.deltas, base).map_err(|mut e| {
            // the base refused for its first bytes: the user may know it is a raw disk
            let base_named = e.file.as_deref() == Some(&*self.deltas[0].display().to_string());
            if self.format == BaseFormat::Auto
                && base_named
                && e.kind == ErrorKind::Damaged
                && e.offset == Some(0)
            {
                e.msg.push_str(" (if it is a raw disk image, say so: --format raw)");
            }
            e.into()
        })
    }
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub locate: LocateArgs,
    #[command(flatten)]
    pub stack: StackArgs,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// ploop1 delta files to validate.
    #[arg(required = true, value_name = "DELTA")]
    pub deltas: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CatArgs {
    #[command(flatten)]
    pub locate: LocateArgs,
    #[command(flatten)]
    pub stack: StackArgs,
}

pub fn run(cmd: Image) -> Result<ExitCode> {
    match cmd {
        Image::Info(a) => info(&a),
        Image::Check(a) => check(&a),
        Image::Cat(a) => cat(&a),
    }
}

/// Sizes as people read them: "64.0 MiB".
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

fn disk_in_use(v: u32) -> &'static str {
    match v {
        0 => "closed",
        SIGNATURE_DISK_CLOSED_V21 => "closed, v2.1",
        SIGNATURE_DISK_IN_USE => "IN USE",
        _ => "unknown value",
    }
}

fn verdict_line(r: &ext4::Report) -> String {
    match (&r.verdict, &r.superblock) {
        (Verdict::NotExt4 { reason }, _) => format!("not ext4: {reason}"),
        (v, Some(sb)) => format!(
            "ext4 {}{}, state {:#x}, incompat {:#x}{}",
            v.as_str(),
            if sb.label.is_empty() { String::new() } else { format!(" (label {:?})", sb.label) },
            sb.state,
            sb.feature_incompat,
            match v {
                Verdict::NeedsRecovery => {
                    ": the journal must be replayed before a read-only mount (X1 fails)"
                }
                _ if sb.has_journal() => ": mountable read-only without a journal replay",
                _ => ": no journal",
            }
        ),
        (v, None) => v.as_str().to_string(),
    }
}

fn info(a: &InfoArgs) -> Result<ExitCode> {
    let locate = a.locate.locate()?;
    let stack = a.stack.open()?;
    let mut damaged = false;
    for d in stack.deltas() {
        let name = d.path().display();
        match d.format() {
            DeltaFormat::Raw => {
                let held = match (d.raw_held(), std::ptr::eq(d, &stack.deltas()[0])) {
                    (_, true) => "base: holds every block".to_string(),
                    (RawHeld::All, _) => "holds every block".into(),
                    (RawHeld::Extents(x), _) => format!(
                        "holds {} in {} extents",
                        human(x.iter().map(|(s, e)| e - s).sum()),
                        x.len()
                    ),
                    (RawHeld::NonZero, _) => "holds its non-zero 4 KiB blocks".into(),
                };
                println!(
                    "{name}: raw, {} ({} sectors), {held}",
                    human(d.size()),
                    d.size() / SECTOR
                );
            }
            DeltaFormat::Ploop1(h) => {
                let allocated = d.allocated_clusters()?.unwrap_or(0);
                println!(
                    "{name}: ploop1 v{}, {} ({} sectors), cluster {} ({} sectors), BAT {} \
                     entries, {allocated} allocated ({}), data from sector {}, m_DiskInUse \
                     {:#x} ({}), m_Flags {:#x}, file {}",
                    h.version.number(),
                    human(h.device_bytes()),
                    h.m_SizeInSectors,
                    human(h.cluster_bytes()),
                    h.m_Sectors,
                    h.m_Size,
                    human(allocated.saturating_mul(h.cluster_bytes())),
                    h.m_FirstBlockOffset,
                    h.m_DiskInUse,
                    disk_in_use(h.m_DiskInUse),
                    h.m_Flags,
                    human(d.file_size()),
                );
            }
        }
    }
    println!(
        "logical device: {} ({} sectors), {} delta{}",
        human(stack.size()),
        stack.size() / SECTOR,
        stack.deltas().len(),
        if stack.deltas().len() == 1 { "" } else { "s" }
    );
    match Gpt::read(&stack) {
        Ok(None) => println!("partitions: none (no GPT)"),
        Ok(Some(g)) => {
            println!(
                "partitions: GPT {} ({} header{}), usable sectors {}..={}",
                gpt::guid_string(&g.disk_guid),
                if g.header_lba == 1 { "primary" } else { "backup" },
                g.primary_problem.as_ref().map_or(String::new(), |p| format!("; primary: {p}")),
                g.first_usable,
                g.last_usable
            );
            for p in &g.partitions {
                let fs = Locate { partition: Some(p.number), ..Locate::default() }
                    .open(&stack)
                    .and_then(|dev| ext4::superblock_verdict(&dev));
                println!(
                    "  {:>3}  sectors {}..={} ({})  {}  {:?}  {}",
                    p.number,
                    p.first_lba,
                    p.last_lba,
                    human(p.len_bytes()),
                    gpt::type_name(&p.type_guid)
                        .map_or_else(|| gpt::guid_string(&p.type_guid), str::to_string),
                    p.name,
                    match fs {
                        Ok(r) => verdict_line(&r),
                        Err(e) => format!("unreadable: {e}"),
                    }
                );
            }
        }
        Err(e) => {
            damaged = true;
            println!("partitions: damaged GPT: {e}");
        }
    }
    let at = a.locate.describe();
    match locate.open(&stack).and_then(|dev| ext4::superblock_verdict(&dev)) {
        Ok(r) => println!("filesystem at {at}: {}", verdict_line(&r)),
        Err(e) => {
            damaged = true;
            println!("filesystem at {at}: unreadable: {e}");
        }
    }
    Ok(ExitCode::from(if damaged { 2 } else { 0 }))
}

fn check(a: &CheckArgs) -> Result<ExitCode> {
    let mut problems = 0u64;
    let mut unreadable = false;
    for path in &a.deltas {
        let name = path.display();
        let report = File::open(path).map_err(ImageError::open).and_then(|f| ploop1::check(&f));
        match report {
            Ok(r) => {
                let h = &r.header;
                println!(
                    "{name}: ploop1 v{}, {} ({} sectors), cluster {} sectors, BAT {} entries, \
                     {} allocated, file {} bytes",
                    h.version.number(),
                    human(h.device_bytes()),
                    h.m_SizeInSectors,
                    h.m_Sectors,
                    h.m_Size,
                    r.allocated,
                    r.file_size
                );
                for p in &r.problems {
                    println!("{name}: at byte {} ({:#x}): {}", p.offset, p.offset, p.msg);
                }
                if r.more > 0 {
                    println!("{name}: ... and {} more (counted, not listed)", r.more);
                }
                let n = r.total();
                problems += n;
                println!("{name}: {}", if n == 0 { "ok".to_string() } else { count(n) });
            }
            Err(e) if matches!(e.kind, ErrorKind::Damaged | ErrorKind::Truncated) => {
                problems += 1;
                println!("{}", e.in_file(&name));
                println!("{name}: 1 problem");
            }
            Err(e) => {
                unreadable = true;
                eprintln!("ploop-verify: error: {}", e.in_file(&name));
            }
        }
    }
    Ok(ExitCode::from(if unreadable {
        2
    } else if problems > 0 {
        1
    } else {
        0
    }))
}

/// "1 problem", "2 problems".
fn count(n: u64) -> String {
    format!("{n} problem{}", if n == 1 { "" } else { "s" })
}

/// Bytes per read and write of `cat`: large enough for throughput, small enough to be
/// bounded memory.
pub const CAT_CHUNK: usize = 4 << 20;

/// Streams `dev` into `out`; returns the bytes written. A closed pipe ends it quietly (`cat
/// | head` is not an error).
pub fn copy_device(dev: &dyn BlockRead, out: &mut dyn io::Write) -> Result<u64> {
    let mut buf = vec![0u8; CAT_CHUNK.min(dev.size() as usize)];
    let mut off = 0u64;
    while off < dev.size() {
        let n = buf.len().min((dev.size() - off) as usize);
        dev.read_at(off, &mut buf[..n])?;
        match out.write_all(&buf[..n]) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(off),
            Err(e) => return Err(e).context("writing to stdout"),
        }
        off += n as u64;
    }
    match out.flush() {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(off),
    }
}

fn cat(a: &CatArgs) -> Result<ExitCode> {
    let locate = a.locate.locate()?;
    let stdout = io::stdout();
    if stdout.is_terminal() {
        bail!("image cat writes binary data: redirect stdout to a file or a pipe");
    }
    let stack = a.stack.open()?;
    let dev = locate.open(&stack)?;
    copy_device(&dev, &mut stdout.lock())?;
    Ok(ExitCode::SUCCESS)
}
