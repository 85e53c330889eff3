//! Reading the executable's initialized data by virtual address, as the loaded program would
//! see it before it runs.

use std::collections::HashMap;

use object::{Object as _, ObjectSegment as _, RelocationTarget};

pub struct Memory<'f> {
    file: &'f object::File<'f>,
    /// Pointers that the dynamic loader writes (position-independent executables): address
    /// → value. The file holds zero there; the relocation's addend is the pointer (the
    /// executable is linked at the address it names, so no base is added here).
    relocated: HashMap<u64, u64>,
}

impl<'f> Memory<'f> {
    pub fn new(file: &'f object::File<'f>) -> Self {
        let relocated = file
            .dynamic_relocations()
            .into_iter()
            .flatten()
            .filter(|(_, r)| matches!(r.target(), RelocationTarget::Absolute))
            .filter_map(|(address, r)| Some((address, u64::try_from(r.addend()).ok()?)))
            .collect();
        Memory { file, relocated }
    }

    /// `len` bytes at `address`, from the segment that holds them in the file.
    pub fn bytes(&self, address: u64, len: u64) -> Option<&'f [u8]> {
        if len == 0 {
            return Some(&[]);
        }
        self.file
            .segments()
            .find_map(|segment| segment.data_range(address, len).ok().flatten())
    }

    /// The 8-byte pointer at `address`.
    pub fn pointer(&self, address: u64) -> Option<u64> {
        if let Some(value) = self.relocated.get(&address) {
            return Some(*value);
        }
        let bytes = self.bytes(address, 8)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }

    /// The Go string header (pointer, length) at `address`, and its bytes as UTF-8.
    pub fn go_string(&self, address: u64) -> Option<&'f str> {
        let data = self.pointer(address)?;
        let len = self.pointer(address + 8)?;
        if len == 0 {
            return Some("");
        }
        std::str::from_utf8(self.bytes(data, len)?).ok()
    }
}
