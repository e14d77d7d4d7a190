//! Struct member offsets from the DWARF of a `vmlinux` (kernel-debuginfo on vz7, Debian's
//! -dbg package, the tree `build-kernel` leaves), for kernels without BTF.
//!
//! A distribution vmlinux carries hundreds of MB of `.debug_info`: the file is mapped, not
//! read, and only `DW_TAG_structure_type` entries have their attributes parsed; the walk ends
//! at the first unit after which every wanted struct has been seen, so the pages after it are
//! never touched.

use std::{borrow::Cow, collections::BTreeMap, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use gimli::{
    AttributeValue, DwTag, EndianSlice, Operation, RunTimeEndian, Unit, UnitOffset, constants,
};
use object::{Object as _, ObjectSection as _};

type R<'a> = EndianSlice<'a, RunTimeEndian>;

/// A read-only mapping of a file, for readers that touch a small part of a large one.
pub struct Mapped(memmap2::Mmap);

impl Mapped {
    pub fn open(path: &Path) -> Result<Self> {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: the mapping is private and read-only; a vmlinux changed under a running
        // read is the one hazard, and nobody rewrites debuginfo in place.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("mapping {}", path.display()))?;
        Ok(Mapped(map))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The GNU build id of an ELF file (`.note.gnu.build-id`), lower-case hex.
pub fn build_id(obj: &object::File<'_>) -> Result<Option<String>> {
    Ok(obj.build_id().map_err(|e| anyhow!("reading the build id note: {e}"))?.map(hex))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The release in the kernel's banner (`linux_banner`, "Linux version 6.1.0-28-amd64 (...").
pub fn banner_release(obj: &object::File<'_>) -> Option<String> {
    const BANNER: &[u8] = b"Linux version ";
    let rodata = obj.section_by_name(".rodata")?.data().ok()?;
    memchr::memmem::find_iter(rodata, BANNER).find_map(|at| {
        let rest = &rodata[at + BANNER.len()..];
        let end = rest.iter().position(|&b| b == b' ' || b == 0)?;
        let rel = std::str::from_utf8(&rest[..end]).ok()?;
        // The banner is also quoted in format strings ("Linux version %s"): skip those.
        (!rel.is_empty() && !rel.contains('%')).then(|| rel.to_string())
    })
}

/// Byte offsets of `wanted` (struct, member) pairs, keyed `struct.member`; a pair whose
/// struct or member is not in the DWARF is left out.
pub fn member_offsets(
    obj: &object::File<'_>,
    wanted: &[(&str, &str)],
) -> Result<BTreeMap<String, u64>> {
    if obj.kind() == object::ObjectKind::Relocatable {
        // Its DWARF's string and type references wait for relocations that only a link
        // applies: read as they are, every name would be the first string.
        bail!("a relocatable object (.o): its DWARF is not relocated; give the linked vmlinux");
    }
    let endian = if obj.is_little_endian() { RunTimeEndian::Little } else { RunTimeEndian::Big };
    let sections = gimli::DwarfSections::load(|id| -> Result<Cow<'_, [u8]>> {
        match obj.section_by_name(id.name()) {
            // object decompresses SHF_COMPRESSED and .zdebug_* sections here.
            Some(s) => s.uncompressed_data().map_err(|e| anyhow!("reading {}: {e}", id.name())),
            None => Ok(Cow::Borrowed(&[][..])),
        }
    })?;
    if obj.section_by_name(".debug_info").is_none() {
        bail!(
            "no DWARF (.debug_info is missing): a stripped vmlinux; the debuginfo package has \
             the one with DWARF"
        );
    }
    let dwarf = sections.borrow(|s| EndianSlice::new(s, endian));
    let mut todo: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for &(st, member) in wanted {
        todo.entry(st).or_default().push(member);
    }
    let mut found = BTreeMap::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let mut raw = unit.entries_raw(None)?;
        while !raw.is_empty() {
            let offset = raw.next_offset();
            let Some(abbrev) = raw.read_abbreviation()? else { continue };
            if abbrev.tag() != constants::DW_TAG_structure_type {
                raw.skip_attributes(abbrev.attributes())?;
                continue;
            }
            let (mut name, mut declaration) = (None, false);
            for spec in abbrev.attributes() {
                let attr = raw.read_attribute(*spec)?;
                match attr.name() {
                    constants::DW_AT_name => name = Some(attr.value()),
                    constants::DW_AT_declaration => declaration = true,
                    _ => {}
                }
            }
            if declaration || !abbrev.has_children() {
                continue;
            }
            // A name in a dwz supplementary file (DW_FORM_GNU_strp_alt) cannot be read here.
            let Some(Ok(name)) = name.map(|n| dwarf.attr_string(&unit, n)) else { continue };
            let Some(st) = std::str::from_utf8(name.slice()).ok().filter(|n| todo.contains_key(n))
            else {
                continue;
            };
            let st = st.to_string();
            for member in todo.remove(st.as_str()).expect("checked above") {
                if let Some(off) = find_member(&dwarf, &unit, offset, member)
                    .with_context(|| format!("struct {st}"))?
                {
                    found.insert(format!("{st}.{member}"), off);
                }
            }
            if todo.is_empty() {
                return Ok(found);
            }
        }
    }
    if let Some(alt) = obj.section_by_name(".gnu_debugaltlink") {
        // dwz moved shared types into a supplementary file: say so rather than "not found".
        let data = alt.data().unwrap_or_default();
        let file = String::from_utf8_lossy(data.split(|&b| b == 0).next().unwrap_or_default());
        bail!(
            "struct {} not found: this DWARF was compressed by dwz and its shared types are in              {file}, which is not read; give a vmlinux without .gnu_debugaltlink, or --btf",
            todo.keys().copied().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(found)
}

/// Offset of `member` in the struct or union at `at`, looking through anonymous members.
fn find_member(
    dwarf: &gimli::Dwarf<R<'_>>,
    unit: &Unit<R<'_>>,
    at: UnitOffset,
    member: &str,
) -> Result<Option<u64>> {
    let mut tree = unit.entries_tree(Some(at))?;
    let mut children = tree.root()?.children();
    while let Some(child) = children.next()? {
        let e = child.entry();
        if e.tag() != constants::DW_TAG_member {
            continue;
        }
        let name = match e.attr_value(constants::DW_AT_name) {
            Some(v) => Some(dwarf.attr_string(unit, v)?),
            None => None,
        };
        let location = member_location(e, unit)?;
        match name {
            Some(n) if n.slice() == member.as_bytes() => {
                if e.attr(constants::DW_AT_bit_size).is_some() {
                    bail!("{member} is a bitfield");
                }
                return Ok(Some(location));
            }
            Some(_) => {}
            None => {
                let Some(ty) = e.attr_value(constants::DW_AT_type) else { continue };
                let (tag, ty) = skip_modifiers(unit, type_ref(unit, ty)?)?;
                if (tag == constants::DW_TAG_structure_type || tag == constants::DW_TAG_union_type)
                    && let Some(inner) = find_member(dwarf, unit, ty, member)?
                {
                    return Ok(Some(location + inner));
                }
            }
        }
    }
    Ok(None)
}

/// `DW_AT_data_member_location`: a constant (DWARF 4+), or `DW_OP_plus_uconst N` (DWARF 2
/// and 3, which gcc still writes for some members); absent in a union: 0.
fn member_location(e: &gimli::DebuggingInformationEntry<R<'_>>, unit: &Unit<R<'_>>) -> Result<u64> {
    let Some(v) = e.attr_value(constants::DW_AT_data_member_location) else { return Ok(0) };
    if let Some(n) = v.udata_value() {
        return Ok(n);
    }
    let expr = match v {
        AttributeValue::Exprloc(x) => x,
        AttributeValue::Block(b) => gimli::Expression(b),
        other => bail!("unexpected data_member_location {other:?}"),
    };
    let mut ops = expr.0;
    let op = Operation::parse(&mut ops, unit.encoding())?;
    match op {
        Operation::PlusConstant { value } if ops.is_empty() => Ok(value),
        other => bail!("data_member_location is a computed expression ({other:?})"),
    }
}

fn type_ref(unit: &Unit<R<'_>>, v: AttributeValue<R<'_>>) -> Result<UnitOffset> {
    match v {
        AttributeValue::UnitRef(o) => Ok(o),
        AttributeValue::DebugInfoRef(o) => o
            .to_unit_offset(&unit.header)
            .ok_or_else(|| anyhow!("a type in another unit (LTO or dwz DWARF is not read)")),
        other => bail!("unexpected type reference {other:?}"),
    }
}

/// Follows typedef, const and volatile to the type they name: (its tag, its offset).
fn skip_modifiers(unit: &Unit<R<'_>>, mut at: UnitOffset) -> Result<(DwTag, UnitOffset)> {
    // A cycle cannot happen in sane DWARF; the bound keeps a broken file from hanging us.
    for _ in 0..64 {
        let mut cursor = unit.entries_at_offset(at)?;
        let e = cursor.next_dfs()?.ok_or_else(|| anyhow!("no entry at {at:?}"))?;
        let tag = e.tag();
        let modifier = [
            constants::DW_TAG_typedef,
            constants::DW_TAG_const_type,
            constants::DW_TAG_volatile_type,
        ]
        .contains(&tag);
        match e.attr_value(constants::DW_AT_type) {
            Some(v) if modifier => at = type_ref(unit, v)?,
            _ => return Ok((tag, at)),
        }
    }
    bail!("typedef chain too long at {at:?}")
}
