//! Facts from the executable's DWARF, when it has some (`-ldflags=-w` or `-s` leave none).
//!
//! Go's linker writes (`src/cmd/link/internal/ld/dwarf.go`, read in Go 1.19.8 and 1.27.3):
//! - every type as a top-level entry of a unit, a struct's fields as `DW_TAG_member`
//!   children with a constant `DW_AT_data_member_location`;
//! - every constant of a package as a top-level `DW_TAG_constant` named with its package
//!   (`runtime.waitReasonChanReceive`), with `DW_AT_type` and `DW_AT_const_value`;
//! - the debug sections compressed with zlib since Go 1.11 (`SHF_COMPRESSED` since 1.12,
//!   `.zdebug_*` before), which `object` decompresses.

use std::{borrow::Cow, collections::HashMap};

use anyhow::Result;
use gimli::{AttributeValue, DebugInfoOffset, EndianSlice, LittleEndian, UnitOffset};
use object::{Object as _, ObjectSection as _};

use super::GOffsets;

type Reader<'a> = EndianSlice<'a, LittleEndian>;

/// What the DWARF says.
#[derive(Debug, Default)]
pub struct DwarfFacts {
    /// `None` when `runtime.g` or `runtime.m` or one of the fields is not described.
    pub offsets: Option<GOffsets>,
    /// The `runtime.waitReason*` constants of type `runtime.waitReason`: (name without the
    /// package, value), e.g. `("waitReasonChanReceive", 14)`.
    pub wait_reasons: Vec<(String, u8)>,
}

/// The structs whose fields are wanted, and the fields.
const STRUCTS: [(&str, &[&str]); 2] = [
    ("runtime.g", &["goid", "m", "schedlink"]),
    ("runtime.m", &["curg"]),
];
const WAIT_REASON_TYPE: &[u8] = b"runtime.waitReason";
const WAIT_REASON_PREFIX: &str = "runtime.waitReason";

/// `Ok(None)` when the executable has no DWARF.
pub fn read(file: &object::File) -> Result<Option<DwarfFacts>> {
    if file.section_by_name(".debug_info").is_none() {
        return Ok(None);
    }
    let sections = gimli::DwarfSections::load(|id| load_section(file, id.name()))?;
    let dwarf = sections.borrow(|data| EndianSlice::new(data, LittleEndian));
    let mut walk = Walk::default();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        walk.unit(&dwarf, &unit)?;
    }
    Ok(Some(walk.facts()))
}

/// A section's contents, decompressed; empty when the file does not have it.
fn load_section<'f>(file: &object::File<'f>, name: &str) -> Result<Cow<'f, [u8]>> {
    match file.section_by_name(name) {
        Some(section) => Ok(section.uncompressed_data()?),
        None => Ok(Cow::Borrowed(&[])),
    }
}

/// What one pass over the units' top-level entries collects.
#[derive(Default)]
struct Walk {
    /// Struct name → field name → offset, for [`STRUCTS`].
    fields: HashMap<&'static str, HashMap<String, u64>>,
    /// Where the `runtime.waitReason` type is described.
    wait_reason_types: Vec<DebugInfoOffset>,
    /// `runtime.waitReason*` constants: name, where their type is described, value.
    constants: Vec<(String, Option<DebugInfoOffset>, i64)>,
}

impl Walk {
    fn unit(&mut self, dwarf: &gimli::Dwarf<Reader>, unit: &gimli::Unit<Reader>) -> Result<()> {
        let mut tree = unit.entries_tree(None)?;
        let mut children = tree.root()?.children();
        while let Some(node) = children.next()? {
            let entry = node.entry();
            let Some(name) = entry.attr_value(gimli::DW_AT_name) else {
                continue;
            };
            let name = dwarf.attr_string(unit, name)?.slice();
            match entry.tag() {
                gimli::DW_TAG_structure_type => {
                    if let Some((struct_name, wanted)) =
                        STRUCTS.iter().find(|(s, _)| s.as_bytes() == name)
                    {
                        let fields = struct_fields(dwarf, unit, node, wanted)?;
                        self.fields.insert(struct_name, fields);
                    }
                }
                gimli::DW_TAG_constant => {
                    let Ok(name) = std::str::from_utf8(name) else {
                        continue;
                    };
                    if !name.starts_with(WAIT_REASON_PREFIX) {
                        continue;
                    }
                    let value = entry
                        .attr(gimli::DW_AT_const_value)
                        .and_then(|a| a.sdata_value());
                    if let Some(value) = value {
                        let type_at = reference(unit, entry.attr_value(gimli::DW_AT_type));
                        self.constants.push((name.to_string(), type_at, value));
                    }
                }
                _ if name == WAIT_REASON_TYPE => {
                    self.wait_reason_types
                        .extend(entry.offset().to_debug_info_offset(&unit.header));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn facts(self) -> DwarfFacts {
        let field =
            |s: &str, f: &str| -> Option<u32> { u32::try_from(*self.fields.get(s)?.get(f)?).ok() };
        let offsets = (|| {
            Some(GOffsets {
                g_goid: field("runtime.g", "goid")?,
                g_m: field("runtime.g", "m")?,
                m_curg: field("runtime.m", "curg")?,
                g_schedlink: field("runtime.g", "schedlink")?,
            })
        })();
        let wait_reasons = self
            .constants
            .into_iter()
            .filter(|(_, type_at, _)| type_at.is_some_and(|t| self.wait_reason_types.contains(&t)))
            .filter_map(|(name, _, value)| {
                let name = name.strip_prefix("runtime.")?.to_string();
                Some((name, u8::try_from(value).ok()?))
            })
            .collect();
        DwarfFacts {
            offsets,
            wait_reasons,
        }
    }
}

/// The offsets of a struct's `wanted` fields.
fn struct_fields(
    dwarf: &gimli::Dwarf<Reader>,
    unit: &gimli::Unit<Reader>,
    node: gimli::EntriesTreeNode<Reader>,
    wanted: &[&str],
) -> Result<HashMap<String, u64>> {
    let mut fields = HashMap::new();
    let mut members = node.children();
    while let Some(member) = members.next()? {
        let entry = member.entry();
        if entry.tag() != gimli::DW_TAG_member {
            continue;
        }
        let Some(name) = entry.attr_value(gimli::DW_AT_name) else {
            continue;
        };
        let name = dwarf.attr_string(unit, name)?.slice();
        let Some(name) = wanted.iter().find(|w| w.as_bytes() == name) else {
            continue;
        };
        let location = entry
            .attr(gimli::DW_AT_data_member_location)
            .and_then(|a| a.udata_value());
        if let Some(location) = location {
            fields.insert(name.to_string(), location);
        }
    }
    Ok(fields)
}

/// Where a reference attribute points, as an offset in `.debug_info` (Go refers to types in
/// other units with `DW_FORM_ref_addr`).
fn reference(
    unit: &gimli::Unit<Reader>,
    value: Option<AttributeValue<Reader>>,
) -> Option<DebugInfoOffset> {
    match value? {
        AttributeValue::DebugInfoRef(offset) => Some(offset),
        AttributeValue::UnitRef(offset) => UnitOffset::to_debug_info_offset(&offset, &unit.header),
        _ => None,
    }
}
